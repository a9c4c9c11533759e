"""Unmerged forward cost of an edit of fused experts, against the base mixture-of-experts forward, side by side.

python benchmarks/moe_edit.py [--repeats 7]

No MoE checkpoint small enough for two CPU cores ships in a package, so the model is a random Qwen3-MoE of a
realistic shape for its size (hidden 512, 8 layers, 32 experts of 256 neurons, 4 routed per token, float32). Edits:
a sparse one like a solved edit (2% of the routed-expert neurons and 8 heads over the upper layers) and a dense
random one (a quarter of every module's components), each unmerged and merged. Shapes: one prefill of 4 x 128
tokens, and one step of 4 x 1 (a decoding step without a KV cache), where per-call work weighs most.
"""

from __future__ import annotations

import argparse

import torch
from common import interleaved, overheads, print_timings, save_results
from peft import get_peft_model
from transformers import AutoConfig, AutoModelForCausalLM

from steer2edit_peft import Steer2EditConfig
from steer2edit_peft.tuner import Steer2EditLayer

SHAPE = dict(
    hidden_size=512,
    num_hidden_layers=8,
    num_attention_heads=8,
    num_key_value_heads=4,
    head_dim=64,
    intermediate_size=1024,
    moe_intermediate_size=256,
    num_local_experts=32,
    num_experts_per_tok=4,
    vocab_size=8192,
)


def model():
    torch.manual_seed(0)
    return AutoModelForCausalLM.from_config(AutoConfig.for_model("qwen3_moe", **SHAPE)).eval().requires_grad_(False)


def sparse_edit(base):
    """A solved-like edit: a few heads and 2% of the routed-expert neurons of the upper layers, random values."""
    edited = {}
    generator = torch.Generator().manual_seed(1)
    neurons = SHAPE["num_local_experts"] * SHAPE["moe_intermediate_size"]
    for layer in range(4, 8):
        edited[f"model.layers.{layer}.self_attn.o_proj"] = [[int(torch.randint(0, 8, (1,), generator=generator))]]
        chosen = torch.randperm(neurons, generator=generator)[: neurons // 50]
        edited[f"model.layers.{layer}.mlp.experts"] = [sorted(chosen.tolist())]
    config = Steer2EditConfig(init_weights=False, target_modules=sorted(edited), edited_components=edited)
    config.attention_modules, config.mlp_modules = ["self_attn.o_proj"], ["mlp.experts"]
    peft_model = get_peft_model(base, config)
    with torch.no_grad():
        for layer in peft_model.modules():
            if isinstance(layer, Steer2EditLayer):
                for tensor in (layer.steer2edit_u, layer.steer2edit_k, layer.steer2edit_lambda):
                    tensor["default"].normal_(generator=generator)
    return peft_model


def dense_edit(base):
    torch.manual_seed(2)
    return get_peft_model(base, Steer2EditConfig(init_weights=False))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--repeats", type=int, default=7)
    args = parser.parse_args()
    base = model()
    sparse, dense = sparse_edit(model()), dense_edit(model())
    sparse_merged, dense_merged = sparse_edit(model()), dense_edit(model())
    sparse_merged.merge_adapter()
    dense_merged.merge_adapter()
    models = {
        "base": base,
        "sparse edit unmerged": sparse,
        "sparse edit merged": sparse_merged,
        "dense edit unmerged": dense,
        "dense edit merged": dense_merged,
    }
    counts = {
        name: sum(m.steer2edit_indices["default"].numel() for m in peft.modules() if isinstance(m, Steer2EditLayer))
        for name, peft in (("sparse", sparse), ("dense", dense))
    }
    shapes = {"prefill": (4, 128), "step": (4, 1)}
    seconds = {}
    with torch.no_grad():
        sample = torch.randint(10, 8000, (2, 16))
        agreement = {
            "sparse": float((sparse(sample).logits - sparse_merged(sample).logits).abs().max()),
            "dense": float((dense(sample).logits - dense_merged(sample).logits).abs().max()),
        }
        for shape_name, shape in shapes.items():
            ids = torch.randint(10, 8000, shape)
            repeats = args.repeats if shape_name == "prefill" else args.repeats * 10
            seconds[shape_name] = interleaved(
                {name: (lambda m=m, i=ids: m(input_ids=i, use_cache=False)) for name, m in models.items()},
                repeats=repeats,
            )
    results = {
        "model": {"family": "qwen3_moe", **SHAPE},
        "edited_components": counts,
        "shapes": {name: list(shape) for name, shape in shapes.items()},
        "seconds": seconds,
        "overhead_vs_base": overheads(seconds),
        "max_abs_logit_diff_unmerged_vs_merged": agreement,
    }
    print(f"edited components: {counts}")
    print_timings(seconds, shapes)
    print(f"max |logit diff| unmerged vs merged: {agreement}")
    save_results("moe_edit", results)


if __name__ == "__main__":
    main()
