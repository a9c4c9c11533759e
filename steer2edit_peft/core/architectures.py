"""Where a model keeps its attention-output and MLP-output projections, found by structure, and the shape facts an
adapter checks; every model-structure lookup of the project lives here."""

from __future__ import annotations

import contextlib
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from .errors import UnknownArchitectureError
from .experts import is_fused_experts

# Names that place a module by structure: a linear module called like an output projection (last name part) inside
# an attention-like or MLP-like module (an earlier name part) of a decoder layer. GPT-2's attn.c_proj and mlp.c_proj
# are told apart by the containers, as are GPT-NeoX's attention.dense and Phi's self_attn.dense.
ATTENTION_CONTAINERS = ("attn", "attention")
MLP_CONTAINERS = ("mlp", "feed_forward", "ffn", "moe")
ATTENTION_OUTPUTS = ("o_proj", "out_proj", "dense", "c_proj", "wo", "o")
MLP_OUTPUTS = ("down_proj", "fc2", "c_proj", "dense_4h_to_h", "w2", "wo", "fc_out")
# Attributes an attention module may say its head size in, the width of what its output projection reads per head
# first: the value heads (multi-head latent attention, linear attention), then the heads.
HEAD_SIZE_ATTRIBUTES = ("v_head_dim", "head_v_dim", "head_dim", "head_size")
# Where a multimodal model keeps its text decoder, preferred when another tower has as many layers, and the names of
# its other towers.
TEXT_DECODER_NAMES = ("language_model", "text_model", "decoder")
OTHER_TOWERS = ("vision", "visual", "image", "audio", "speech", "vqmodel")
LAYER_COUNTS = ("num_hidden_layers", "decoder_layers", "n_layer", "num_layers")
BY_HAND = (
    "Pass them by hand, e.g. Steer2EditConfig(attention_modules=['self_attn.o_proj'], mlp_modules=['mlp.down_proj'], "
    "head_dim=64): attention modules are edited per head of `head_dim` input columns, MLP modules per input column "
    "(neuron)."
)


@dataclass(frozen=True)
class OutputProjections:
    """Where a model writes into its residual stream, found by structure: module-name suffixes (within a decoder
    layer) of the attention output projections (edited per head) and of the MLP output projections and fused
    experts (edited per neuron), and the head size of every attention projection, by full module name."""

    attention: tuple[str, ...]
    mlp: tuple[str, ...]
    head_sizes: dict[str, int]


def _is_linear(module: nn.Module) -> bool:
    from transformers.pytorch_utils import Conv1D

    return isinstance(module, (nn.Linear, Conv1D)) or (
        isinstance(getattr(module, "in_features", None), int)
        and isinstance(getattr(module, "weight", None), torch.Tensor)
    )


def _in_features(module: nn.Module) -> int:
    from transformers.pytorch_utils import Conv1D

    if isinstance(module, Conv1D):
        return int(module.weight.shape[0])
    return int(module.in_features)  # type: ignore[arg-type]


def decoder_layers(model: nn.Module) -> tuple[str, nn.ModuleList]:
    """(name, list) of the text decoder's layers: a module list as long as a layer count of the config, not in
    another tower (vision, audio) of a multimodal model."""
    base = decoder_model(model)
    config = getattr(base, "config", None)
    text = text_config(config) if config is not None else None
    counts = {config_value(text, name) for name in LAYER_COUNTS} - {None}
    found = [
        (name, module)
        for name, module in base.named_modules()
        if isinstance(module, nn.ModuleList) and len(module) in counts and ".base_layer" not in f".{name}"
    ]
    text_side = [item for item in found if not any(tower in item[0].lower() for tower in OTHER_TOWERS)]
    if not text_side:
        raise UnknownArchitectureError(
            f"found no list of decoder layers ({' or '.join(map(str, sorted(counts))) or 'no layer count'} long) in "
            f"{type(base).__name__}. {BY_HAND}"
        )
    preferred = [item for item in text_side if any(part in item[0].split(".") for part in TEXT_DECODER_NAMES)]
    return (preferred or text_side)[0]


def attention_head_size(attention: nn.Module, in_features: int, model_config: Any) -> int | None:
    """The input width per head of an attention module's output projection (of ``in_features`` columns)."""
    candidates = [getattr(attention, name, None) for name in HEAD_SIZE_ATTRIBUTES]
    with contextlib.suppress(UnknownArchitectureError):
        candidates.append(model_head_dim(model_config))
    for size in candidates:
        if isinstance(size, int) and not isinstance(size, bool) and size > 0 and in_features % size == 0:
            return size
    return None


def find_output_projections(model: nn.Module) -> OutputProjections:
    """The attention and MLP output projections of every decoder layer, found by structure (see the names above):
    dense, hybrid-attention and mixture-of-experts decoders alike, layers that differ from each other included."""
    base = decoder_model(model)
    config = getattr(base, "config", None)
    prefix, layers = decoder_layers(base)
    attention: set[str] = set()
    mlp: set[str] = set()
    head_sizes: dict[str, int] = {}
    for index, layer in enumerate(layers):
        for name, module in layer.named_modules():
            parts = name.split(".")
            if not name or "base_layer" in parts or _inside_expert_list(parts):
                continue
            containers = [part.lower() for part in parts[:-1]]
            unwrapped = module.get_base_layer() if hasattr(module, "get_base_layer") else module  # an adapter's layer
            if is_fused_experts(unwrapped) and any(t in c for c in [*containers, parts[-1]] for t in MLP_CONTAINERS):
                mlp.add(name)
            elif not _is_linear(module):
                continue
            elif parts[-1] in ATTENTION_OUTPUTS and any(t in c for c in containers for t in ATTENTION_CONTAINERS):
                size = attention_head_size(layer.get_submodule(".".join(parts[:-1])), _in_features(module), config)
                if size is not None:
                    attention.add(name)
                    head_sizes[f"{prefix}.{index}.{name}"] = size
            elif parts[-1] in MLP_OUTPUTS and any(t in c for c in containers for t in MLP_CONTAINERS):
                mlp.add(name)
    if not attention and not mlp:
        model_type = getattr(config and text_config(config), "model_type", None)
        raise UnknownArchitectureError(
            f"steer2edit found no attention or MLP output projection in the decoder layers of "
            f"model_type={model_type!r}. {BY_HAND}"
        )
    return OutputProjections(tuple(sorted(attention)), tuple(sorted(mlp)), head_sizes)


def _inside_expert_list(parts: list[str]) -> bool:
    """A module of one expert in a list of experts (experts.3.down_proj): it sees only the tokens routed to it."""
    return any(part == "experts" and following.isdigit() for part, following in zip(parts, parts[1:]))


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


def config_value(config: Any, *names: str) -> Any:
    """The first of ``names`` the config holds a value for (a whole number or a name), or None. A value that varies
    by layer (transformers' per-layer attributes, which refuse to be read globally) counts as none."""
    for name in names:
        try:
            value = getattr(config, name, None)
        except Exception:  # noqa: BLE001 - transformers' AmbiguousGlobalPerLayerAttributeError and kin
            continue
        if value is not None and not isinstance(value, (list, dict)):
            return value
    return None


def model_head_dim(model_config: Any) -> int:
    """Width of one attention head's slice of the attention output projection's input, by the config (the
    attention modules' own head sizes take precedence: attention_head_size)."""
    config = text_config(model_config)
    head_dim = config_value(config, "head_dim")
    if head_dim:
        return int(head_dim)
    hidden = config_value(config, "hidden_size", "n_embd")
    heads = config_value(config, "num_attention_heads", "n_head")
    if not hidden or not heads:
        raise UnknownArchitectureError(
            "cannot infer head_dim from the model config; pass Steer2EditConfig(head_dim=...)"
        )
    return int(hidden) // int(heads)


def model_signature(model_config: Any) -> dict[str, Any]:
    """The shape facts an adapter must agree with to be loaded onto a model."""
    config = text_config(model_config)
    signature = {
        "model_type": config_value(config, "model_type"),
        "hidden_size": config_value(config, "hidden_size", "n_embd"),
        "num_hidden_layers": config_value(config, "num_hidden_layers", "n_layer"),
        "num_attention_heads": config_value(config, "num_attention_heads", "n_head"),
        "intermediate_size": config_value(config, "intermediate_size", "n_inner"),
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
    return config_value(text, "max_position_embeddings", "n_positions")
