"""The whole pipeline on a mixture-of-experts checkpoint given by path or Hub id: extract (each expert's mean input
over the tokens routed to it), solve with routed-expert neurons among the components, calibrate to a KL budget,
save, reload, merge and export the exact LoRA; it checks every step against the one before and prints a summary.

python examples/moe_edit.py Qwen/Qwen3-30B-A3B --device cuda --dtype bfloat16 --output outputs/moe-edit

No MoE model small enough for a laptop CPU ships in a package: on a CPU, point it at a small checkpoint (the test
suite runs it on a tiny random Qwen3-MoE). The probe is the project's written refusal pairs (not the model's own
answers, which would need sampling first), so the edit shows that the pipeline runs, not how good it is.
"""

from __future__ import annotations

import argparse
import tempfile
from pathlib import Path

import torch
from peft import PeftModel

from steer2edit_peft import ContrastiveDataset, Steer2EditConfig, builtin_probe, edit_model, extract_steering_vectors
from steer2edit_peft.core.models import load_model
from steer2edit_peft.export import to_lora
from steer2edit_peft.probes import builtin_prompts
from steer2edit_peft.probes.generate import generate_utility_data
from steer2edit_peft.tuner.experts import Experts


def main(argv: list[str] | None = None) -> dict[str, float]:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("model", help="a mixture-of-experts checkpoint: folder or Hub id")
    parser.add_argument("--device", default="cpu", help="cpu, cuda, ...")
    parser.add_argument("--dtype", default="auto", help="auto, bfloat16, float32, float16")
    parser.add_argument("--pairs", type=int, default=32, help="probe pairs read")
    parser.add_argument("--reference", type=int, default=16, help="benign reference prompts answered by the model")
    parser.add_argument("--max-kl", type=float, default=0.02)
    parser.add_argument("--output", default=None, help="where the adapter and its LoRA are saved (default: a temp dir)")
    args = parser.parse_args(argv)

    model, tokenizer = load_model(args.model, dtype=args.dtype)
    model.to(args.device)
    whole = builtin_probe("refusal")
    positives = [example for example in whole.examples if example.positive][: args.pairs]
    negatives = [example for example in whole.examples if not example.positive][: args.pairs]
    probe = ContrastiveDataset(positives + negatives, whole.description)
    utility = generate_utility_data(model, tokenizer, builtin_prompts("benign")[: args.reference], batch_size=8)
    vectors = extract_steering_vectors(
        model, tokenizer, probe, batch_size=8, reference=(utility.prompts, utility.responses), show_progress=False
    )
    config = Steer2EditConfig(rho_attn=0.1, rho_mlp=0.05, alpha=0.5, key_direction="weight")
    edited = edit_model(model, vectors, config, behaviour="refusal", max_kl=args.max_kl, utility=utility,
                        tokenizer=tokenizer)  # fmt: skip
    experts = {n: m for n, m in edited.base_model.model.named_modules() if isinstance(m, Experts)}
    expert_neurons = sum(m.steer2edit_indices["default"].numel() for m in experts.values())
    print(edited.edit_reports["default"].to_table(top=3, edited_only=True))

    prompts = builtin_prompts("harmful")[:4]
    encoded = tokenizer(prompts, return_tensors="pt", padding=True).to(args.device)
    with torch.no_grad():
        expected = edited(**encoded).logits.float()
    output = Path(args.output or tempfile.mkdtemp(prefix="moe-edit-"))
    edited.save_pretrained(output / "adapter")
    base = edited.unload()
    reloaded = PeftModel.from_pretrained(base, output / "adapter")
    with torch.no_grad():
        reload_diff = float((reloaded(**encoded).logits.float() - expected).abs().max())
    to_lora(reloaded, output=output / "lora", overwrite=True)
    merged = reloaded.merge_and_unload()
    with torch.no_grad():
        merge_diff = float((merged(**encoded).logits.float() - expected).abs().max())
    summary = {
        "fused_experts_modules": float(len(experts)),
        "edited_expert_neurons": float(expert_neurons),
        "calibrated_kl": float(edited.calibrations["default"].kl) if "default" in edited.calibrations else 0.0,
        "reload_max_abs_logit_diff": reload_diff,
        "merge_max_abs_logit_diff": merge_diff,
    }
    print(f"saved to {output} (adapter/, lora/): {summary}")
    return summary


if __name__ == "__main__":
    main()
