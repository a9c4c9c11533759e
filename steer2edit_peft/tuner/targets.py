"""Which modules of a model an adapter targets, and the shape of every tensor it holds there."""

from __future__ import annotations

import contextlib
from collections import Counter

from peft.tuners.tuners_utils import BaseTunerLayer, check_target_module_exists
from torch import nn
from transformers.pytorch_utils import Conv1D

from ..core.architectures import attention_head_size, find_output_projections, model_head_dim, model_signature
from ..core.errors import AdapterValidationError, UnknownArchitectureError
from ..core.experts import experts_shape, is_fused_experts
from .checkpoint import PEFT_PREFIX
from .config import Steer2EditConfig, was_loaded
from .layer import weight_in_out


def editable(module: nn.Module) -> bool:
    """A module a Steer2Edit layer can wrap: a linear layer (nn.Linear, Conv1D) or transformers' fused experts."""
    return isinstance(module, (nn.Linear, Conv1D)) or is_fused_experts(module)


def base_layer_of(module: nn.Module) -> nn.Module:
    return module.get_base_layer() if isinstance(module, BaseTunerLayer) else module


def in_out_features(module: nn.Module) -> tuple[int, int]:
    base = base_layer_of(module)
    return weight_in_out(base, fan_in_fan_out=isinstance(base, Conv1D))


def resolve_config(config: Steer2EditConfig, model: nn.Module) -> None:
    """Fill families, target modules, head_dim and the model signature from the model, in place."""
    model_config = getattr(model, "config", None)
    if isinstance(config.target_modules, str):
        # A regex made in Python: resolved to the module names it matches now, so a file never holds a pattern.
        config.target_modules = sorted(
            name
            for name, module in model.named_modules()
            if ".base_layer" not in f".{name}"
            and editable(base_layer_of(module))
            and check_target_module_exists(config, name)
        )
    if config.target_modules is None:
        if model_config is None:
            raise ValueError("the model has no transformers config: pass target_modules (and attention_modules)")
        projections = find_output_projections(model)
        config.attention_modules = config.attention_modules or list(projections.attention)
        config.mlp_modules = config.mlp_modules or list(projections.mlp)
        config.target_modules = config.family_targets(config.attention_modules, config.mlp_modules)
    if config.attention_modules and config.head_dim is None:
        _read_head_sizes(config, model)
    if not was_loaded(config):
        config.fused_experts = {
            name: list(experts_shape(base_layer_of(module))[:2])
            for name, module in model.named_modules()
            if ".base_layer" not in f".{name}"
            and is_fused_experts(base_layer_of(module))
            and check_target_module_exists(config, name)
        }
    if model_config is None:
        return
    signature = model_signature(model_config)
    if config.attention_modules:
        with contextlib.suppress(UnknownArchitectureError):
            signature["head_dim"] = model_head_dim(model_config)
    if not config.base_model_signature:
        if was_loaded(config):
            # Only an adapter made for a plain torch module has none; on a transformers model it would switch
            # the base-model check off.
            raise AdapterValidationError(
                "this Steer2Edit adapter records no base_model_signature, so nothing ties it to this model; it was "
                "made for a module without a transformers config (or its signature was removed)"
            )
        config.base_model_signature = signature
        return
    mismatched = {
        key: (value, signature.get(key))
        for key, value in config.base_model_signature.items()
        if signature.get(key) != value
    }
    if mismatched:
        details = ", ".join(f"{key}: adapter {a!r} vs model {b!r}" for key, (a, b) in mismatched.items())
        made_for = f" ({config.base_model_name_or_path})" if config.base_model_name_or_path else ""
        raise AdapterValidationError(f"this Steer2Edit adapter was made for another base model{made_for}: {details}")


def _read_head_sizes(config: Steer2EditConfig, model: nn.Module) -> None:
    """head_dim (the commonest head size of the attention modules) and head_dims (the others), read from each
    attention module's own attributes, so that layers with other heads (hybrid attention) are split right."""
    model_config = getattr(model, "config", None)
    sizes = {}
    for name, module in model.named_modules():
        if ".base_layer" in f".{name}" or not config.is_attention_module(name) or not editable(base_layer_of(module)):
            continue
        parent = model.get_submodule(name.rpartition(".")[0]) if "." in name else model
        size = attention_head_size(parent, in_out_features(module)[0], model_config)
        if size is None:
            raise AdapterValidationError(
                f"{name}: cannot tell its head size ({in_out_features(module)[0]} input columns); pass "
                "Steer2EditConfig(head_dim=...)"
            )
        sizes[name] = size
    if not sizes:
        if model_config is None:
            raise ValueError(
                "attention_modules are set but head_dim is not, and the model has no config to read it from"
            )
        config.head_dim = model_head_dim(model_config)
        return
    config.head_dim = Counter(sizes.values()).most_common(1)[0][0]
    config.head_dims = {name: size for name, size in sorted(sizes.items()) if size != config.head_dim}


def module_shapes(config: Steer2EditConfig, name: str, in_features: int, out_features: int, terms: list[list[int]]):
    size = config.component_size(name)
    if config.gate_row_width(name) not in (None, in_features):
        raise AdapterValidationError(f"{name}: a gate's row_width is {size}, but its rows have {in_features} columns")
    if in_features % size:
        raise AdapterValidationError(f"{name}: {in_features} input columns do not split into components of {size}")
    count = sum(len(term) for term in terms)
    num_components = in_features // size
    bad = sorted({i for term in terms for i in term if not 0 <= i < num_components})
    if bad:
        raise AdapterValidationError(f"{name}: edited component indices {bad[:5]} out of range [0, {num_components})")
    return {
        "steer2edit_u": (len(terms), out_features),
        "steer2edit_k": (count, size),
        "steer2edit_lambda": (count,),
        "steer2edit_indices": (count,),
        "steer2edit_term": (count,),
    }


def expected_tensor_shapes(config: Steer2EditConfig, model: nn.Module) -> dict[str, dict[str, tuple[int, ...]]]:
    """Per targeted module of ``model`` (names as in the base model), the shape each saved tensor must have."""
    shapes: dict[str, dict[str, tuple[int, ...]]] = {}
    for name, module in model.named_modules():
        if ".base_layer" in f".{name}" or not editable(base_layer_of(module)):
            continue
        if not check_target_module_exists(config, name):
            continue
        module_name = name.removeprefix(PEFT_PREFIX)
        base = base_layer_of(module)
        if is_fused_experts(base) and config.fused_experts.get(module_name) != list(experts_shape(base)[:2]):
            raise AdapterValidationError(
                f"{module_name}: fused experts of {list(experts_shape(base)[:2])} [experts, neurons] in the model, "
                f"{config.fused_experts.get(module_name)} in the adapter"
            )
        in_features, out_features = in_out_features(module)
        terms = config.edited_components.get(module_name, [[]])
        shapes[module_name] = module_shapes(config, module_name, in_features, out_features, terms)
    unknown = sorted(set(config.edited_components) - set(shapes))
    if unknown:
        raise AdapterValidationError(
            f"the adapter edits modules this model does not have (or does not target): {unknown[:3]}"
        )
    return shapes
