"""Exporting an edit: as a standard PEFT LoRA adapter (exact), loadable where steer2edit_peft is not installed.

Per module the edit is ``delta W = strength * u^T K`` with u [terms, out] and K [terms, in] (zero outside the
edited columns), so a LoRA with ``lora_B = strength * u^T``, ``lora_A = K`` and scaling 1 (lora_alpha = r)
reproduces it to float32 rounding. Ranks are the number of terms (one for a solved edit), or one uniform rank
padded with zeros for servers that need it.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import torch
from peft import LoraConfig
from safetensors.torch import save_file

from ..core.architectures import decoder_model
from ..core.errors import Steer2EditError
from ..core.experts import experts_shape, is_fused_experts
from ..core.files import refuse_existing, staged
from ..solver.scores import ModuleEdit
from ..tuner import Steer2EditLayer
from ..tuner.checkpoint import PEFT_PREFIX, TENSOR_NAMES
from ..tuner.experts import Experts
from ..tuner.layer import component_columns
from ..tuner.lora_equivalent import equivalent_lora_config, experts_lora_factors
from ..tuner.lora_equivalent import lora_factors as lora_factors_of_tensors

LORA_FILES = ("adapter_config.json", "adapter_model.safetensors", "steer2edit_export.json")
# On a model with fused experts PEFT reads a LoRA target_modules entry ending in these names as a per-expert module
# of transformers 4 and moves it onto the experts (peft.utils.transformers_weight_conversion): such layers are
# exported through their weight parameter instead, which it leaves alone.
PEFT_MOE_RENAMED = ("down_proj", "gate_proj", "up_proj", "w1", "w2", "w3")


def lora_factors(layer: Steer2EditLayer, adapter_name: str) -> tuple[torch.Tensor, torch.Tensor]:
    """(lora_A [terms, in], lora_B [out, terms]) in float32, with B @ A equal to the layer's delta W (math layout)."""
    tensors = {name: getattr(layer, name)[adapter_name] for name in TENSOR_NAMES}
    return lora_factors_of_tensors(tensors, layer.strength[adapter_name], layer.in_features)


def edited_layers(model: Any, adapter_name: str) -> dict[str, Steer2EditLayer]:
    """The modules an adapter really edits (at least one component), by base-model name."""
    layers = {
        name: module
        for name, module in decoder_model(model).named_modules()
        if isinstance(module, Steer2EditLayer)
        and adapter_name in module.steer2edit_u
        and module.steer2edit_indices[adapter_name].numel()
    }
    if not layers:
        raise Steer2EditError(f"adapter {adapter_name!r} edits nothing on this model: there is nothing to export")
    return layers


def refuse_fused_experts(layers: dict[str, Steer2EditLayer], target: str, instead: str) -> None:
    """One clear error where an export target cannot carry edits of fused experts."""
    experts = sorted(name for name, layer in layers.items() if isinstance(layer, Experts))
    if experts:
        raise Steer2EditError(
            f"{target} is not checked for edits of fused experts ({experts[0]}, {len(experts)} in all): {instead}"
        )


def edit_terms(model: Any, adapter_name: str = "default") -> int:
    """The largest number of rank-one terms of any edited module: the smallest rank an export can have."""
    return max(layer.steer2edit_u[adapter_name].shape[0] for layer in edited_layers(model, adapter_name).values())


def padded(lora_a: torch.Tensor, lora_b: torch.Tensor, rank: int, name: str) -> tuple[torch.Tensor, torch.Tensor]:
    """(A [rank, in], B [out, rank]) with zero rows/columns added; B @ A is unchanged."""
    terms = lora_a.shape[0]
    if rank < terms:
        raise Steer2EditError(f"{name}: the edit has {terms} rank-one terms, more than the asked rank {rank}")
    lora_a = torch.cat([lora_a, lora_a.new_zeros(rank - terms, lora_a.shape[1])])
    lora_b = torch.cat([lora_b, lora_b.new_zeros(lora_b.shape[0], rank - terms)], dim=1)
    return lora_a, lora_b


def to_lora(
    model: Any,
    adapter_name: str = "default",
    output: str | Path | None = None,
    rank: int | None = None,
    overwrite: bool = False,
) -> tuple[LoraConfig, dict[str, torch.Tensor]]:
    """A LoRA adapter equal to the Steer2Edit adapter ``adapter_name`` of ``model``; saved to ``output`` if given.

    ``rank``: pad every module to this rank (zeros), e.g. for a multi-LoRA server; it must be at least the
    number of terms of every module. Only the adapter's own files are written, each whole (core/files.py); a folder
    that already holds files of those names is refused unless ``overwrite``.
    """
    if output is not None:
        refuse_existing(output, LORA_FILES, overwrite)
    state: dict[str, torch.Tensor] = {}
    ranks: dict[str, int] = {}
    parameters: dict[str, int] = {}
    fan_in_fan_out = set()
    layers = edited_layers(model, adapter_name)
    top = rank or max(layer.steer2edit_u[adapter_name].shape[0] for layer in layers.values())
    has_experts = any(is_fused_experts(module) for module in decoder_model(model).modules())
    for name, layer in layers.items():
        if isinstance(layer, Experts):
            tensors = {tensor: getattr(layer, tensor)[adapter_name] for tensor in TENSOR_NAMES}
            count, neurons, _ = experts_shape(layer.get_base_layer())
            lora_a, lora_b = experts_lora_factors(tensors, layer.strength[adapter_name], count, neurons, top)
            parameters[f"{name}.down_proj"] = top
        else:
            lora_a, lora_b = lora_factors(layer, adapter_name)
            fan_in_fan_out.add(layer.fan_in_fan_out)
            if has_experts and name.rpartition(".")[2] in PEFT_MOE_RENAMED:
                lora_a, lora_b = padded(lora_a, lora_b, top, name)
                parameters[f"{name}.weight"] = top
            else:
                lora_a, lora_b = padded(lora_a, lora_b, rank, name) if rank is not None else (lora_a, lora_b)
                ranks[name] = lora_a.shape[0]
        state[f"{PEFT_PREFIX}{name}.lora_A.weight"] = lora_a.cpu()
        state[f"{PEFT_PREFIX}{name}.lora_B.weight"] = lora_b.cpu()
    if len(fan_in_fan_out) > 1:
        raise Steer2EditError("the edit mixes Conv1D and Linear modules, which one LoRA config cannot describe")
    source = _source_config(model, adapter_name)
    config = equivalent_lora_config(
        ranks,
        fan_in_fan_out.pop() if fan_in_fan_out else False,
        getattr(source, "base_model_name_or_path", None),
        getattr(source, "task_type", None),
        parameters,
    )
    if output is not None:
        provenance = {"exported_from": "steer2edit", "behaviour": getattr(source, "behaviour", None), "ranks": ranks}
        provenance["target_parameters"] = parameters
        write_lora(output, config, state, provenance, overwrite)
    return config, state


def write_lora(
    output: str | Path, config: LoraConfig, state: dict[str, torch.Tensor], provenance: dict, overwrite: bool = False
) -> Path:
    """Save a LoRA adapter's files (config, safetensors, export provenance) into ``output``, each whole, the config
    last; files of those names already there are refused unless ``overwrite``."""
    refuse_existing(output, LORA_FILES, overwrite)
    with staged(output, overwrite) as staging:
        config.save_pretrained(str(staging))
        save_file(state, str(staging / "adapter_model.safetensors"), metadata={"format": "pt"})
        (staging / "steer2edit_export.json").write_text(json.dumps(provenance, indent=2) + "\n")
    return Path(output)


def bundle_for_hotswap(
    models: dict[str, Any],
    output: str | Path,
    rank: int | None = None,
    adapter_name: str = "default",
    overwrite: bool = False,
) -> dict[str, Path]:
    """Export several edits as LoRA adapters that hotswap into one another (PEFT's and vLLM's hotswap need it).

    ``models``: name -> a model holding the Steer2Edit adapter ``adapter_name``. Every export targets the union
    of the edited modules (zeros where an edit leaves a module alone) at one rank (the largest number of terms,
    or ``rank``), so all share one target list and one shape. Returns name -> folder (``output/<name>``).
    """
    factors = {
        name: {
            module: lora_factors(layer, adapter_name) for module, layer in edited_layers(model, adapter_name).items()
        }
        for name, model in models.items()
    }
    shapes: dict[str, tuple[int, int]] = {}
    for per_module in factors.values():
        for module, (lora_a, lora_b) in per_module.items():
            shapes[module] = (lora_a.shape[1], lora_b.shape[0])
    rank = rank or max(a.shape[0] for per_module in factors.values() for a, _ in per_module.values())
    for name in factors:
        refuse_existing(Path(output) / name, LORA_FILES, overwrite)
    folders = {}
    for name, per_module in factors.items():
        state: dict[str, torch.Tensor] = {}
        for module, (in_features, out_features) in sorted(shapes.items()):
            lora_a, lora_b = per_module.get(module, (torch.zeros(1, in_features), torch.zeros(out_features, 1)))
            lora_a, lora_b = padded(lora_a, lora_b, rank, module)
            state[f"{PEFT_PREFIX}{module}.lora_A.weight"] = lora_a.contiguous()
            state[f"{PEFT_PREFIX}{module}.lora_B.weight"] = lora_b.contiguous()
        source = _source_config(models[name], adapter_name)
        config = LoraConfig(
            r=rank,
            lora_alpha=rank,
            target_modules=sorted(shapes),
            lora_dropout=0.0,
            bias="none",
            fan_in_fan_out=bool(getattr(source, "fan_in_fan_out", False)),
            base_model_name_or_path=getattr(source, "base_model_name_or_path", None),
            task_type=getattr(source, "task_type", None),
        )
        provenance = {"exported_from": "steer2edit", "behaviour": getattr(source, "behaviour", None), "bundle": name}
        folders[name] = write_lora(Path(output) / name, config, state, provenance, overwrite)
    return folders


def _source_config(model: Any, adapter_name: str) -> Any:
    configs = getattr(model, "peft_config", {})
    return configs.get(adapter_name)


def _edit_factors(edit: ModuleEdit, in_features: int, component_size: int) -> tuple[torch.Tensor, torch.Tensor]:
    """(lora_A [1, in], lora_B [out, 1]) of one solved module: A holds lambda_c k_c on component c's columns."""
    lora_a = torch.zeros(1, in_features)
    lora_a[0, component_columns(edit.indices, component_size)] = (
        (edit.magnitudes[:, None] * edit.input_directions).reshape(-1).float()
    )
    return lora_a, edit.direction.float()[:, None]


def edit_as_lora(model: Any, vectors: Any, config: Any = None, adapter_name: str = "edit") -> Any:
    """Solve an edit on a LoRA-tuned ``PeftModel`` and add it there as one more LoRA adapter, active with the rest.

    The edit is solved on the effective weights (base plus the active LoRA deltas), its rank-one factors become
    a LoRA adapter of rank one, and both adapters stay unmerged; ``merge_and_unload`` merges them in any order.
    A warning lists the modules the fine-tune and the edit both change, since the two then interact.
    """
    import copy
    import warnings

    from peft import PeftModel

    from ..solver.scores import solve_edit
    from ..tuner import Steer2EditConfig

    if not isinstance(model, PeftModel) or any(c.peft_type != "LORA" for c in model.peft_config.values()):
        raise Steer2EditError("edit_as_lora needs a PeftModel holding LoRA adapters; use edit_model otherwise")
    if adapter_name in model.peft_config:
        raise Steer2EditError(f"adapter {adapter_name!r} already exists")
    config = copy.deepcopy(config) if config is not None else Steer2EditConfig()
    tuner: Any = model.base_model  # the LoraModel
    active = list(tuner.active_adapters)
    edits = [edit for edit in solve_edit(model, vectors, config) if edit.indices.numel()]
    if not edits:
        raise Steer2EditError("the elastic net kept no head or neuron: lower rho or alpha")
    base: Any = decoder_model(model)
    modules: dict[str, Any] = {edit.module: base.get_submodule(edit.module) for edit in edits}
    shared = sorted(name for name, module in modules.items() if any(a in getattr(module, "lora_A", {}) for a in active))
    fan_in_fan_out = {type(getattr(m, "base_layer", m)).__name__ == "Conv1D" for m in modules.values()}
    if len(fan_in_fan_out) > 1:
        raise Steer2EditError("the edit mixes Conv1D and Linear modules, which one LoRA config cannot describe")
    lora_config = LoraConfig(
        r=1,
        lora_alpha=1,
        target_modules=sorted(modules),
        lora_dropout=0.0,
        fan_in_fan_out=fan_in_fan_out.pop(),
        base_model_name_or_path=getattr(model.peft_config[active[0]], "base_model_name_or_path", None),
    )
    model.add_adapter(adapter_name, lora_config)
    with torch.no_grad():
        for edit in edits:
            module = base.get_submodule(edit.module)  # wrapped by add_adapter just now
            size = config.component_size(edit.module)
            lora_a, lora_b = _edit_factors(edit, module.in_features, size)
            module.lora_A[adapter_name].weight.copy_(lora_a)
            module.lora_B[adapter_name].weight.copy_(lora_b)
    tuner.set_adapter([*active, adapter_name])
    for name, parameter in model.named_parameters():
        if f".{adapter_name}." in name:
            parameter.requires_grad_(False)  # training-free
    if shared:
        warnings.warn(
            f"{len(shared)} module(s) carry both the LoRA fine-tune and the edit, which then interact: "
            + ", ".join(shared[:5])
            + (" ..." if len(shared) > 5 else ""),
            stacklevel=2,
        )
    return model
