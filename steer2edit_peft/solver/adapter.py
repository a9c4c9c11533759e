"""A solved edit written into a PEFT adapter: the survivors' rank-1 factors, the config that records them."""

from __future__ import annotations

import copy

import torch
from peft import PeftModel, get_peft_model
from torch import nn

from ..core.architectures import decoder_model
from ..core.errors import EmptyEditError, Steer2EditError
from ..core.quiet import quiet_peft_wrapping
from ..extraction.vectors import SteeringVectors
from ..tuner import Steer2EditConfig, Steer2EditLayer
from ..tuner.checkpoint import MAX_EDIT_MAGNITUDE
from ..tuner.report import edit_report
from .scores import ModuleEdit, solve_edit


def refuse_other_adapter_types(model: nn.Module) -> None:
    """PEFT keeps one adapter type per PeftModel: an edit cannot join a LoRA model's adapters."""
    if isinstance(model, PeftModel) and any(c.peft_type != "STEER2EDIT" for c in model.peft_config.values()):
        kinds = sorted({str(c.peft_type) for c in model.peft_config.values()})
        raise Steer2EditError(
            f"this PeftModel holds {', '.join(kinds)} adapters, and PEFT keeps one adapter type per model: use "
            "steer2edit_peft.export.edit_as_lora to add the edit as a LoRA adapter, or merge the fine-tune first"
        )


def solved_config(
    model: nn.Module,
    vectors: SteeringVectors,
    config: Steer2EditConfig,
    behaviour: str | None,
    edits: list[ModuleEdit] | None = None,
):
    """(the adapter config that records the solved edit, the edit of every module); raises for an empty edit.
    ``edits``: the edit of every module when solved otherwise (gates), else the elastic net's."""
    config = copy.deepcopy(config)
    config.init_weights = True
    config.inference_mode = True  # a solved edit is frozen; load it with is_trainable=True to fine-tune it
    config.edited_components = {}
    edits = solve_edit(model, vectors, config) if edits is None else edits
    config.edited_components = {edit.module: [edit.indices.tolist()] for edit in edits if edit.indices.numel()}
    if not config.edited_components:
        raise EmptyEditError(
            f"the elastic net kept no head or neuron (rho_attn={config.rho_attn}, rho_mlp={config.rho_mlp}, "
            f"alpha={config.alpha}, threshold rho*alpha on |cos|): lower rho or alpha"
        )
    # Only edited modules are wrapped, so the others run at full speed.
    config.target_modules = sorted(config.edited_components)
    config.behaviour = behaviour or config.behaviour
    config.probe_data = config.probe_data or vectors.options.get("probe_data")
    config.positions = config.positions or vectors.options.get("positions")
    config.input_positions = config.input_positions or vectors.options.get("input_positions")
    base = decoder_model(model)
    config.base_model_name_or_path = (
        config.base_model_name_or_path or getattr(base.config, "_name_or_path", None) or None
    )
    return config, edits


def write_factors(peft_model: nn.Module, adapter_name: str, edits: list[ModuleEdit]) -> None:
    """Copy u, k and lambda of every edited module into the adapter's tensors."""
    layers = {
        name: module
        for name, module in decoder_model(peft_model).named_modules()
        if isinstance(module, Steer2EditLayer)
    }
    with torch.no_grad():
        for edit in edits:
            if not edit.indices.numel():
                continue
            layer = layers[edit.module]
            u = layer.steer2edit_u[adapter_name]
            u.copy_(edit.direction.to(u)[None])
            layer.steer2edit_k[adapter_name].copy_(edit.input_directions.to(u))
            layer.steer2edit_lambda[adapter_name].copy_(edit.magnitudes.to(u))


def refuse_oversized(peft_model: nn.Module, adapter_name: str) -> None:
    """A solved edit that loading would refuse (a component moving its weights past MAX_EDIT_MAGNITUDE) is refused
    here, before anything is saved."""
    for name, layer in decoder_model(peft_model).named_modules():
        if isinstance(layer, Steer2EditLayer) and adapter_name in layer.steer2edit_u:
            largest = abs(layer.strength[adapter_name]) * layer.largest_component_magnitude(adapter_name)
            if largest > MAX_EDIT_MAGNITUDE:
                raise Steer2EditError(
                    f"{name}: an edited component moves its weights by {largest:.3g}, above the bound "
                    f"{MAX_EDIT_MAGNITUDE:g} that loading an adapter enforces; the edit would not load"
                )


def solved_adapter(
    model: nn.Module,
    vectors: SteeringVectors,
    config: Steer2EditConfig,
    adapter_name: str = "default",
    behaviour: str | None = None,
    edits: list[ModuleEdit] | None = None,
) -> PeftModel:
    """The edit ``config`` solves to (or ``edits``, solved otherwise), as adapter ``adapter_name`` of a new PeftModel
    (or of ``model``'s own); its report is in ``edit_reports[adapter_name]``."""
    refuse_other_adapter_types(model)
    config, edits = solved_config(model, vectors, config, behaviour, edits)
    with quiet_peft_wrapping():
        if isinstance(model, PeftModel):
            model.add_adapter(adapter_name, config)
            peft_model = model
        else:
            peft_model = get_peft_model(model, config, adapter_name=adapter_name)
    write_factors(peft_model, adapter_name, edits)
    refuse_oversized(peft_model, adapter_name)
    reports = getattr(peft_model, "edit_reports", {})
    reports[adapter_name] = edit_report(peft_model, adapter_name)
    setattr(peft_model, "edit_reports", reports)  # noqa: B010  (nn.Module typing rejects new attributes)
    return peft_model
