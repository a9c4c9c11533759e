"""Where each model family keeps its attention-output and MLP-output projections."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from .errors import UnknownArchitectureError


@dataclass(frozen=True)
class OutputProjections:
    """Module-name suffixes of one family's attention output and MLP output projections."""

    attention: str
    mlp: str


_LLAMA_STYLE = OutputProjections(attention="self_attn.o_proj", mlp="mlp.down_proj")

# model_type -> projections. Suffixes are matched against full module names (PEFT's rule: equal, or
# ending in "." + suffix), so "attn.c_proj" and "mlp.c_proj" stay apart in GPT-2.
OUTPUT_PROJECTIONS: dict[str, OutputProjections] = {
    **{
        model_type: _LLAMA_STYLE
        for model_type in (
            "llama",
            "mistral",
            "qwen2",
            "qwen3",
            "gemma",
            "gemma2",
            "gemma3",
            "gemma3_text",
            "phi3",
            "olmo",
            "olmo2",
            "granite",
            "smollm3",
            "cohere",
        )
    },
    "gpt2": OutputProjections(attention="attn.c_proj", mlp="mlp.c_proj"),
    "gpt_neox": OutputProjections(attention="attention.dense", mlp="mlp.dense_4h_to_h"),
    "starcoder2": OutputProjections(attention="self_attn.o_proj", mlp="mlp.c_proj"),
    "phi": OutputProjections(attention="self_attn.dense", mlp="mlp.fc2"),
}


def text_config(model_config: Any) -> Any:
    """The decoder's config (multimodal wrappers keep it under ``text_config``)."""
    get_text_config = getattr(model_config, "get_text_config", None)
    return get_text_config() if callable(get_text_config) else model_config


def model_text_config(model: nn.Module) -> Any:
    """The decoder config of a model, under any PEFT wrapping; None for a module without one."""
    config = getattr(decoder_model(model), "config", None)
    return None if config is None else text_config(config)


def num_layers(model: nn.Module) -> int:
    """How many decoder layers the model has."""
    layers = model_signature(decoder_model(model).config).get("num_hidden_layers")
    if not layers:
        raise UnknownArchitectureError("the model config names no layer count (num_hidden_layers or n_layer)")
    return int(layers)


def output_projections(model_config: Any) -> OutputProjections:
    """The attention/MLP output projection suffixes for a transformers config."""
    model_type = getattr(text_config(model_config), "model_type", None)
    if model_type not in OUTPUT_PROJECTIONS:
        raise UnknownArchitectureError(
            f"steer2edit does not know where model_type={model_type!r} keeps its output projections. "
            "Pass them by hand, e.g. Steer2EditConfig(attention_modules=['self_attn.o_proj'], "
            "mlp_modules=['mlp.down_proj'], head_dim=64): attention modules are edited per head of "
            "`head_dim` input columns, MLP modules per input column (neuron)."
        )
    return OUTPUT_PROJECTIONS[model_type]


def model_head_dim(model_config: Any) -> int:
    """Width of one attention head's slice of the attention output projection's input."""
    config = text_config(model_config)
    head_dim = getattr(config, "head_dim", None)
    if head_dim:
        return int(head_dim)
    hidden = getattr(config, "hidden_size", None) or getattr(config, "n_embd", None)
    heads = getattr(config, "num_attention_heads", None) or getattr(config, "n_head", None)
    if not hidden or not heads:
        raise UnknownArchitectureError(
            "cannot infer head_dim from the model config; pass Steer2EditConfig(head_dim=...)"
        )
    return int(hidden) // int(heads)


def model_signature(model_config: Any) -> dict[str, Any]:
    """The shape facts an adapter must agree with to be loaded onto a model."""
    config = text_config(model_config)

    def first(*names: str) -> Any:
        for name in names:
            value = getattr(config, name, None)
            if value is not None:
                return value
        return None

    signature = {
        "model_type": getattr(config, "model_type", None),
        "hidden_size": first("hidden_size", "n_embd"),
        "num_hidden_layers": first("num_hidden_layers", "n_layer"),
        "num_attention_heads": first("num_attention_heads", "n_head"),
        "intermediate_size": first("intermediate_size", "n_inner"),
    }
    return {key: value for key, value in signature.items() if value is not None}


class StopForward(Exception):
    """Raised by a hook once what it records is recorded: the rest of the forward pass is not needed."""


def decoder_model(model: nn.Module) -> nn.Module:
    """The transformers model under any PEFT wrapping (adapter layers stay in place)."""
    from peft import PeftModel

    return model.get_base_model() if isinstance(model, PeftModel) else model


def input_device(model: nn.Module) -> torch.device:
    """Where input ids must go: the device of the input embeddings (also under a device_map)."""
    base: Any = decoder_model(model)
    return base.get_input_embeddings().weight.device


def context_length(model: nn.Module) -> int | None:
    text = model_text_config(model)
    if text is None:
        return None
    return getattr(text, "max_position_embeddings", None) or getattr(text, "n_positions", None)
