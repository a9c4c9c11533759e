"""Inference overhead: base vs Steer2Edit unmerged vs merged vs activation-steering hooks vs LoRA r=8.

python benchmarks/inference.py [--repeats 5] [--prompt-tokens 128] [--new-tokens 32]

SmolLM2-135M-Instruct in bfloat16 on the CPU. The edit and the LoRA cover the same modules (every o_proj and
down_proj), so this is the worst case for the edit; "demo edit" is the demo's edit (heads of layers 14-29,
16 wrapped modules).
"""

from __future__ import annotations

import argparse

import torch
from common import interleaved, save_results
from peft import LoraConfig, get_peft_model

from steer2edit_peft import Steer2EditConfig, builtin_probe, edit_model, extract_steering_vectors, steer
from steer2edit_peft.core.models import load_model
from steer2edit_peft.solver import DEFAULTS, adapter_config


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--prompt-tokens", type=int, default=128)
    parser.add_argument("--new-tokens", type=int, default=32)
    args = parser.parse_args()
    torch.manual_seed(0)
    base, tokenizer = load_model()
    vectors = extract_steering_vectors(base, tokenizer, builtin_probe("refusal"), show_progress=False)
    # Fresh loads, not deep copies, so every variant has the same memory layout as the base.
    edit = Steer2EditConfig(rho_attn=0.1, rho_mlp=0.3, alpha=0.6)
    edited = edit_model(load_model()[0], vectors, edit)
    report = edited.edit_reports["default"]
    merged = edit_model(load_model()[0], vectors, edit).merge_and_unload()
    demo_edit = edit_model(load_model()[0], vectors, adapter_config(DEFAULTS, 30))
    lora = get_peft_model(
        load_model()[0],
        LoraConfig(r=8, target_modules=["o_proj", "down_proj"], init_lora_weights=False),
    )
    # PEFT freezes the base weights, and on this CPU frozen (requires_grad=False) bfloat16 weights decode
    # markedly slower at batch 8 (a torch kernel-selection effect, seen with plain models too): this base
    # is the fair reference for every PEFT model.
    frozen = load_model()[0].requires_grad_(False)
    models = {
        "base": base,
        "base, frozen weights": frozen,
        "Steer2Edit unmerged": edited,
        "Steer2Edit merged": merged,
        "demo edit unmerged": demo_edit,
        "LoRA r=8 unmerged": lora,
    }

    def steered(run):
        def go():
            with steer(base, vectors, 1.0):
                run(base)

        return go

    demo_report = demo_edit.edit_reports["default"]
    results = {
        "edited_heads": report.edited_heads,
        "edited_neurons": report.edited_neurons,
        "wrapped_modules": len(report.modules),
        "demo_edit": {"edited_heads": demo_report.edited_heads, "wrapped_modules": len(demo_report.modules)},
        "cases": {},
    }
    with torch.no_grad():
        for batch in (1, 8):
            ids = torch.randint(100, 40000, (batch, args.prompt_tokens))
            mask = torch.ones_like(ids)

            def prefill(model, ids=ids, mask=mask):
                model(input_ids=ids, attention_mask=mask, use_cache=False)

            def decode(model, ids=ids, mask=mask):
                model.generate(
                    input_ids=ids[:, :16],
                    attention_mask=mask[:, :16],
                    max_new_tokens=args.new_tokens,
                    min_new_tokens=args.new_tokens,
                    do_sample=False,
                    pad_token_id=tokenizer.pad_token_id,
                )

            for phase, run in (("prefill", prefill), ("decode", decode)):
                candidates = {name: (lambda m=model, r=run: r(m)) for name, model in models.items()}
                candidates["activation steering"] = steered(run)
                seconds = interleaved(candidates, repeats=args.repeats)
                key = f"{phase}, batch {batch}"
                results["cases"][key] = {
                    "seconds": seconds,
                    "overhead_vs_base": {k: v / seconds["base"] - 1 for k, v in seconds.items()},
                    "overhead_vs_frozen_base": {k: v / seconds["base, frozen weights"] - 1 for k, v in seconds.items()},
                }
                print(f"\n{key}")
                for name, value in seconds.items():
                    frozen_overhead = 100 * (value / seconds["base, frozen weights"] - 1)
                    print(
                        f"  {name:<22} {value * 1000:8.1f} ms  {100 * (value / seconds['base'] - 1):+6.1f}% vs base"
                        f"  {frozen_overhead:+6.1f}% vs frozen base"
                    )
        x = torch.randint(100, 40000, (2, 32))
        results["merged_max_abs_logit_diff_vs_unmerged"] = float(
            (merged(x).logits.float() - edited(x).logits.float()).abs().max()
        )
    save_results("inference", results)


if __name__ == "__main__":
    main()
