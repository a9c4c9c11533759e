"""A refinement that was measured and not kept: contrastive keys made silent on one half of the utility data, and the
edit calibrated on the other half, against the demo's recipe (keys and calibration on all of it).

python benchmarks/split_reference.py [--task truthful] [--budget 0.02]   # writes results/split_reference.json

The question: is the truthful edit's KL on held-out Alpaca prompts (4 times its budget in the frontier) the price of
calibrating on the very data its keys were made orthogonal to?
"""

from __future__ import annotations

import argparse
from typing import Any

from common import save_results
from frontier import Bench

from steer2edit_peft.core.likelihood import KLMeter
from steer2edit_peft.demo import DemoSettings, demo_probe
from steer2edit_peft.extraction.extract import extract_steering_vectors
from steer2edit_peft.probes.datasets import UtilityData
from steer2edit_peft.solver.edit import edit_model
from steer2edit_peft.solver.settings import default_first_layer, edit_config_from


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--task", choices=["refusal", "truthful", "concise"], default="truthful")
    parser.add_argument("--budget", type=float, default=0.02)
    args = parser.parse_args()
    bench = Bench(32)
    probe = demo_probe(bench.model, bench.tokenizer, args.task, DemoSettings().output, 32)
    utility = bench.utility
    half = len(utility.prompts) // 2
    second = UtilityData(utility.prompts[half:], utility.responses[half:])
    variants = {
        "keys and calibration on all the utility data (the demo)": (utility, utility, bench.meter),
        "keys on the first half, calibration on the second": (
            UtilityData(utility.prompts[:half], utility.responses[:half]),
            second,
            KLMeter(bench.model, bench.tokenizer, second.prompts, second.responses, batch_size=32),
        ),
    }
    layers = bench.model.config.num_hidden_layers
    settings = {"rho_attn": 0.3, "rho_mlp": None, "alpha": 0.6, "key_direction": "contrast"}
    config = edit_config_from({**settings, "first_layer": default_first_layer(layers)}, layers)
    results: dict[str, Any] = {"task": args.task, "budget": args.budget}
    for name, (keys_on, calibrate_on, meter) in variants.items():
        vectors = extract_steering_vectors(
            bench.model,
            bench.tokenizer,
            probe,
            batch_size=16,
            reference=(keys_on.prompts, keys_on.responses),
            input_positions="decision",
            show_progress=False,
        )
        edited = edit_model(
            bench.model,
            vectors,
            config,
            max_kl=args.budget,
            utility=calibrate_on,
            tokenizer=bench.tokenizer,
            max_head_share=0.2,
            kl_meter=meter,
        )
        calibration = edited.calibrations["default"]
        results[name] = {
            "kl_calibration": calibration.kl,
            "kl_all_utility": bench.meter(edited),
            "kl_heldout": bench.heldout_meter(edited),
            "heads": calibration.edited_heads,
            **bench.measure(args.task, edited),
        }
        edited.unload()
        print(name, {k: round(v, 4) if isinstance(v, float) else v for k, v in results[name].items()}, flush=True)
    save_results("split_reference", results)


if __name__ == "__main__":
    main()
