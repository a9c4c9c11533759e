"""Unmerged forward cost of a large edit: a random edit of a quarter of the components of every attention and MLP
output projection, against the base model, side by side in one run.

python benchmarks/large_edit.py [--repeats 9] [--batch 8] [--tokens 128]

SmolLM2-135M-Instruct in bfloat16 on the CPU, no KV cache: one prefill (batch x tokens) and one step of batch x 1
token, the shape of a decoding step, where per-call work weighs most. Besides the edit as this package applies it
(factors built from the adapter's tensors at every call, an out-of-place addmm), the run times the forward the
package used before issue #36 (factors cached per dtype and keyed on version counters, the base output updated in
place) and a rank-1 LoRA on the same modules, so the ratios show what each choice costs.
"""

from __future__ import annotations

import argparse

import torch
from common import interleaved, overheads, print_timings, save_results
from peft import LoraConfig, get_peft_model

from steer2edit_peft import Steer2EditConfig
from steer2edit_peft.core.models import load_model
from steer2edit_peft.tuner import Steer2EditLayer


def cached_in_place_forward(layer: Steer2EditLayer, cache: dict, x: torch.Tensor, *args, **kwargs) -> torch.Tensor:
    """The forward before #36: thin factors cached until a version counter moved, the output updated in place."""
    result = layer.base_layer(x, *args, **kwargs)
    for name in layer.active_adapters:
        tensors = [getattr(layer, t)[name] for t in ("steer2edit_u", "steer2edit_k", "steer2edit_lambda")]
        stamp = (*(t._version for t in tensors), layer.strength[name], x.dtype)
        if cache.get(name, (None,))[0] != stamp:
            key = layer.key_matrix(name).T.to(x.dtype).contiguous()
            cache[name] = (stamp, key, (layer.strength[name] * tensors[0]).to(x.dtype).contiguous())
        _, key, scaled_u = cache[name]
        rows = x.reshape(-1, x.shape[-1])
        scores = torch.mv(rows, key[:, 0]).unsqueeze(1) if key.shape[1] == 1 else rows @ key
        result.view(-1, result.shape[-1]).addmm_(scores, scaled_u)
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
    before = random_edit(fresh())
    for module in before.modules():
        if isinstance(module, Steer2EditLayer):
            module.forward = (lambda m, c: lambda x, *a, **k: cached_in_place_forward(m, c, x, *a, **k))(module, {})
    lora = get_peft_model(fresh(), LoraConfig(r=1, target_modules=["o_proj", "down_proj"], init_lora_weights=False))
    layers = [m for m in edited.modules() if isinstance(m, Steer2EditLayer)]
    heads = sum(m.steer2edit_indices["default"].numel() for m in layers if m.component_size["default"] > 1)
    neurons = sum(m.steer2edit_indices["default"].numel() for m in layers if m.component_size["default"] == 1)
    models = {
        "base": base,
        "Steer2Edit unmerged": edited,
        "Steer2Edit unmerged, before #36 (cached, in place)": before,
        "LoRA r=1 unmerged": lora,
    }
    shapes = {"prefill": (args.batch, args.tokens), "step": (args.batch, 1)}
    seconds = {}
    with torch.no_grad():
        sample = torch.randint(100, 40000, (2, 32))
        exact = random_edit(load_model(dtype=torch.float32)[0])(input_ids=sample).logits
        same = torch.equal(edited(input_ids=sample).logits, before(input_ids=sample).logits)
        rounding = float((edited(input_ids=sample).logits.float() - exact).abs().max())
        for shape_name, shape in shapes.items():
            ids = torch.randint(100, 40000, shape)
            mask = torch.ones_like(ids)
            repeats = args.repeats if shape_name == "prefill" else args.repeats * 20
            seconds[shape_name] = interleaved(
                {
                    name: (lambda m=model, i=ids, a=mask: m(input_ids=i, attention_mask=a, use_cache=False))
                    for name, model in models.items()
                },
                repeats=repeats,
            )
    results = {
        "shapes": {name: list(shape) for name, shape in shapes.items()},
        "wrapped_modules": len(layers),
        "edited_heads": heads,
        "edited_neurons": neurons,
        "seconds": seconds,
        "overhead_vs_base": overheads(seconds),
        "same_logits_before_and_after": same,
        "max_abs_logit_error_vs_float32": rounding,
    }
    print(f"{len(layers)} modules, {heads} heads and {neurons} neurons edited")
    print_timings(seconds, shapes)
    print(f"bit-identical logits before and after #36: {same}; max |logit error| vs float32 {rounding:.3g}")
    save_results("large_edit", results)


if __name__ == "__main__":
    main()
