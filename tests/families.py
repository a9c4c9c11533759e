"""Tiny random models of every causal-LM family transformers ships, built from its own default configs, shrunk.

The family list is transformers' causal-LM mapping, so a family added to transformers is tested as it appears. A
config is shrunk by its keys (sizes, counts, token ids, per-layer lists and overrides); the layer kinds of hybrid
models are kept (two layers: one of each of the first two kinds), and a mixture of experts keeps one MoE layer.
"""

from __future__ import annotations

from typing import Any

import torch
from transformers import AutoConfig, AutoModelForCausalLM
from transformers.models.auto.modeling_auto import MODEL_FOR_CAUSAL_LM_MAPPING_NAMES

LAYERS = 2
VOCAB = 97
SIZES = {
    "hidden_size": 32,
    "intermediate_size": 48,
    "intermediate_size_mlp": 48,
    "moe_intermediate_size": 24,
    "shared_expert_intermediate_size": 24,
    "num_attention_heads": 4,
    "num_key_value_heads": 2,
    "head_dim": 8,
    "global_head_dim": 16,
    "linear_num_value_heads": 4,
    "linear_num_key_heads": 2,
    "linear_key_head_dim": 8,
    "linear_value_head_dim": 8,
    "num_experts": 4,
    "num_local_experts": 4,
    "n_routed_experts": 4,
    "num_experts_per_tok": 2,
    "top_k_experts": 2,
    "n_shared_experts": 1,
    "n_group": 1,
    "topk_group": 1,
    "kv_lora_rank": 16,
    "q_lora_rank": 16,
    "qk_rope_head_dim": 8,
    "qk_nope_head_dim": 8,
    "qk_head_dim": 16,
    "v_head_dim": 8,
    "max_position_embeddings": 128,
    "sliding_window": 16,
    "n_embd": 32,
    "n_head": 4,
    "n_inner": 48,
    "d_model": 32,
    "ffn_dim": 48,
    "hidden_size_per_layer_input": 8,
    "vocab_size_per_layer_input": VOCAB,
    "first_k_dense_replace": 1,
    "decoder_sparse_step": 1,
    "num_nextn_predict_layers": 0,
    "ffn_hidden_size": 48,
    "expert_ffn_hidden_size": 24,
    "zero_expert_num": 2,
    "moe_topk": 2,
    "first_dense_intermediate_size": 48,
    "shared_intermediate_size": 24,
    "mamba_n_heads": 4,
    "mamba_d_head": 16,
    "mamba_d_state": 8,
    "mamba_n_groups": 1,
}
LAYER_COUNTS = ("num_hidden_layers", "num_layers", "n_layer", "decoder_layers")
PER_LAYER_LISTS = (
    "layer_types",
    "layers_block_type",
    "mlp_layer_types",
    "attention_layers",
    "no_rope_layers",
    "moe_layers",
    "mlp_only_layers",
)


def family_types() -> list[str]:
    return sorted(MODEL_FOR_CAUSAL_LM_MAPPING_NAMES)


def _kept_layers(kinds: list[Any]) -> list[int]:
    """Which original layers the two tiny ones copy: the first, and the first of another kind (else the second)."""
    other = next((i for i, kind in enumerate(kinds) if kind != kinds[0]), 1 if len(kinds) > 1 else 0)
    return [0, other]


def shrink(data: dict[str, Any]) -> dict[str, Any]:
    """A config dict made tiny, recursively (sub-configs of multimodal models too)."""
    data = dict(data)
    ungrouped = data.get("num_key_value_heads") is not None and data.get("num_key_value_heads") == data.get(
        "num_attention_heads"
    )
    kept = next(
        (_kept_layers(data[k]) for k in ("layer_types", "layers_block_type") if isinstance(data.get(k), list)), None
    )
    for key, value in list(data.items()):
        if isinstance(value, dict) and key.endswith("config") and key != "per_layer_config":
            data[key] = shrink(value)
        elif key in SIZES and (isinstance(value, int) or (key == "head_dim" and value is None)):
            data[key] = SIZES[key] if not isinstance(value, bool) else value
        elif key in LAYER_COUNTS and isinstance(value, int):
            data[key] = LAYERS
        elif key == "vocab_size" and isinstance(value, int):
            data[key] = VOCAB
        elif key.endswith(("token_id", "token_index")) and isinstance(value, int) and value >= VOCAB:
            data[key] = 2
        elif key.endswith("token_id") and isinstance(value, list):
            data[key] = [v if v < VOCAB else 2 for v in value if isinstance(v, int)]
    if ungrouped:
        data["num_key_value_heads"] = SIZES["num_attention_heads"]  # no grouping in the original: none here either
    for key in PER_LAYER_LISTS:
        value = data.get(key)
        if isinstance(value, list) and value and all(isinstance(v, (str, int)) for v in value):
            if key in ("moe_layers", "mlp_only_layers"):
                data[key] = [1] if key == "moe_layers" else []
            else:
                data[key] = [value[i] for i in (kept or _kept_layers(value))]
    overrides = data.get("per_layer_config")
    if isinstance(overrides, dict) and kept:
        width = len(next(iter(overrides), "00"))
        tiny = {}
        for new, old in enumerate(kept):
            if str(old).zfill(width) in overrides:
                tiny[str(new).zfill(width)] = {
                    k: (2 * SIZES["head_dim"] if k == "head_dim" else v)
                    for k, v in overrides[str(old).zfill(width)].items()
                }
        data["per_layer_config"] = tiny
    return data


def tiny_family_model(model_type: str, seed: int = 0, **overrides: Any) -> Any:
    """A tiny random model of ``model_type`` in float32 and eval mode; raises whatever transformers raises."""
    data = {**shrink(AutoConfig.for_model(model_type).to_dict()), **overrides}
    data.pop("model_type", None)
    config = AutoConfig.for_model(model_type, **data)
    torch.manual_seed(seed)
    return AutoModelForCausalLM.from_config(config, dtype=torch.float32).eval()
