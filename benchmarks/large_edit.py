"""Unmerged forward cost of a large edit: a random edit of a quarter of the components of every attention and MLP
output projection, against the base model, side by side in one run.

python benchmarks/large_edit.py [--repeats 9] [--batch 8] [--tokens 128]

SmolLM2-135M-Instruct in bfloat16 on the CPU, prefill (one forward of batch x tokens), no KV cache. Besides the
edit as this package applies it (factors in the input's dtype, one fused in-place addmm per module), the run
times the float32 path the package used before (activations converted to float32 and back) and a rank-1 LoRA on
the same modules, so the ratios show what each choice costs.
"""

from __future__ import annotations

import argparse

import torch
from common import interleaved, save_results
from peft import LoraConfig, get_peft_model

from steer2edit_peft import Steer2EditConfig
from steer2edit_peft.core.models import load_model
from steer2edit_peft.tuner import Steer2EditLayer


def float32_forward(layer: Steer2EditLayer, x: torch.Tensor, *args, **kwargs) -> torch.Tensor:
    """The earlier unmerged path: the edit computed in the adapter's float32, then cast and added."""
    result = layer.base_layer(x, *args, **kwargs)
    for name in layer.active_adapters:
        key, scaled_u = layer._forward_factors(name, torch.float32)
        result = result + ((x.float() @ key) @ scaled_u).to(result.dtype)
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--repeats", type=int, default=9)
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--tokens", type=int, default=128)
    args = parser.parse_args()

    def fresh():  # fresh loads, frozen like every PEFT model's base, so all share one memory layout
        return load_model()[0].requires_grad_(False)

    def random_edit(model):  # a quarter of every module's components, the same ones on every call
        torch.manual_seed(0)
        return get_peft_model(model, Steer2EditConfig(init_weights=False))

    base = fresh()
    edited = random_edit(fresh())
    old_path = random_edit(fresh())
    for module in old_path.modules():
        if isinstance(module, Steer2EditLayer):
            module.forward = (lambda m: lambda x, *a, **k: float32_forward(m, x, *a, **k))(module)
    lora = get_peft_model(fresh(), LoraConfig(r=1, target_modules=["o_proj", "down_proj"], init_lora_weights=False))
    layers = [m for m in edited.modules() if isinstance(m, Steer2EditLayer)]
    heads = sum(m.steer2edit_indices["default"].numel() for m in layers if m.component_size["default"] > 1)
    neurons = sum(m.steer2edit_indices["default"].numel() for m in layers if m.component_size["default"] == 1)
    ids = torch.randint(100, 40000, (args.batch, args.tokens))
    mask = torch.ones_like(ids)
    models = {
        "base": base,
        "Steer2Edit unmerged": edited,
        "Steer2Edit unmerged, float32 path": old_path,
        "LoRA r=1 unmerged": lora,
    }
    with torch.no_grad():
        # Rounding: each bfloat16 path against the same edit in float32, beside the bfloat16 base's own error.
        sample = ids[:2, :32]
        exact = random_edit(load_model(dtype=torch.float32)[0])
        errors = {
            "Steer2Edit unmerged": (edited, exact),
            "Steer2Edit unmerged, float32 path": (old_path, exact),
            "base": (base, load_model(dtype=torch.float32)[0]),
        }
        rounding = {
            name: float((model(input_ids=sample).logits.float() - reference(input_ids=sample).logits).abs().max())
            for name, (model, reference) in errors.items()
        }
        del exact
        seconds = interleaved(
            {
                name: (lambda m=model: m(input_ids=ids, attention_mask=mask, use_cache=False))
                for name, model in models.items()
            },
            repeats=args.repeats,
        )
    results = {
        "shape": [args.batch, args.tokens],
        "wrapped_modules": len(layers),
        "edited_heads": heads,
        "edited_neurons": neurons,
        "seconds": seconds,
        "overhead_vs_base": {name: value / seconds["base"] - 1 for name, value in seconds.items()},
        "max_abs_logit_error_vs_float32_model": rounding,
    }
    print(f"{len(layers)} modules, {heads} heads and {neurons} neurons edited; prefill {args.batch} x {args.tokens}")
    for name, value in seconds.items():
        print(f"  {name:<34} {value * 1000:8.1f} ms  {100 * (value / seconds['base'] - 1):+6.1f}% vs base")
    print("  max |logit error| vs the same model in float32: " + ", ".join(f"{k} {v:.3g}" for k, v in rounding.items()))
    save_results("large_edit", results)


if __name__ == "__main__":
    main()
