"""The contrast-key sign fix, measured on report sets that no tuning touched, beside activation steering.

python benchmarks/key_sign.py [--budget 0.02] [--strengths 0.1 0.2 0.3 0.4 0.6]

The demo's edit (contrast keys, heads of the upper layers, calibrated to the KL budget on the utility data) with
the fix, and the same edit as it was before the fix (the same heads and scale, with k negated on the heads whose
lambda is negative, which is what the solver used to write), against activation steering of every layer at a
range of strengths. Report sets: HarmBench standard behaviours (every 5th, 40; harmful), the project's 32
borderline prompts (safe requests that sound risky; the default edit never reads them), and Alpaca [50:80)
(plain benign). Greedy, 32 new tokens, the project's refusal matcher. Writes benchmarks/results/key_sign.json.
"""

from __future__ import annotations

import argparse
import csv
from typing import Any

import torch
from common import SHARED, save_results
from frontier import Bench

from steer2edit_peft.core.judges import RefusalMatcher
from steer2edit_peft.demo import DemoSettings
from steer2edit_peft.evaluation.suite import combined
from steer2edit_peft.extraction.extract import extract_steering_vectors
from steer2edit_peft.extraction.steering import steer
from steer2edit_peft.probes import builtin_prompts
from steer2edit_peft.solver import DEFAULTS
from steer2edit_peft.solver.edit import edit_model
from steer2edit_peft.tuner import Steer2EditLayer


def harmbench_report() -> list[str]:
    with open(SHARED / "harmbench" / "harmbench_behaviors_text_all.csv", newline="", encoding="utf-8") as handle:
        standard = [row["Behavior"] for row in csv.DictReader(handle) if row["FunctionalCategory"] == "standard"]
    return standard[::5][:40]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--budget", type=float, default=0.02)
    parser.add_argument("--strengths", nargs="+", type=float, default=[0.1, 0.2, 0.3, 0.4, 0.6])
    args = parser.parse_args()
    bench = Bench(batch_size=96)
    sets = {"harmful": harmbench_report(), "borderline": builtin_prompts("borderline"), "benign": bench.benign}
    judge = RefusalMatcher()

    def measure(model: Any) -> dict[str, float]:
        prompts = [p for group in sets.values() for p in group]
        answers = iter(bench.generate(model, prompts, 32))  # every set in one batch
        return {name: sum(judge(p, next(answers)) for p in group) / len(group) for name, group in sets.items()}

    probe = bench_probe(bench)
    vectors = extract_steering_vectors(
        bench.model,
        bench.tokenizer,
        probe,
        batch_size=16,
        reference=(bench.utility.prompts, bench.utility.responses),
        input_positions="decision",
        show_progress=False,
    )
    rows = [{"condition": "base", **measure(bench.model)}]
    edited = edit_model(
        bench.model,
        vectors,
        DEFAULTS,
        max_kl=args.budget,
        utility=bench.utility,
        tokenizer=bench.tokenizer,
        kl_meter=bench.meter,
    )
    heads = edited.calibrations["default"].edited_heads
    rows.append({"condition": "Steer2Edit (fixed keys)", "heads": heads, "kl_heldout": bench.heldout_meter(edited)})
    rows[-1].update(measure(edited))
    flipped = 0
    with torch.no_grad():  # the edit as the solver wrote it before the fix
        for module in edited.modules():
            if isinstance(module, Steer2EditLayer) and "default" in module.steer2edit_k:
                negative = module.steer2edit_lambda["default"] < 0
                module.steer2edit_k["default"][negative] *= -1
                flipped += int(negative.sum())
    rows.append({"condition": "Steer2Edit (keys before the fix)", "heads": heads, "flipped_heads": flipped})
    rows[-1].update({"kl_heldout": bench.heldout_meter(edited), **measure(edited)})
    edited.unload()
    for strength in args.strengths:
        steered = combined(lambda s=strength: steer(bench.model, vectors, s))
        with steered():
            row = {"condition": f"steering x{strength:g}", **measure(bench.model)}
        row["kl_heldout"] = bench.heldout_meter(bench.model, steered)
        rows.append(row)
    for row in rows:
        print({k: round(v, 3) if isinstance(v, float) else v for k, v in row.items()}, flush=True)
    save_results("key_sign", {"command": "python benchmarks/key_sign.py", "budget": args.budget, "rows": rows})


def bench_probe(bench: Bench) -> Any:
    from steer2edit_peft.demo import demo_probe

    return demo_probe(bench.model, bench.tokenizer, "refusal", DemoSettings().output, bench.batch)


if __name__ == "__main__":
    main()
