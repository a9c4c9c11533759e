"""From steering vectors to a Steer2Edit adapter: component scores, elastic-net magnitudes, rank-1 factors."""

from __future__ import annotations

import copy
from dataclasses import dataclass
from typing import Any

import torch
from peft import PeftModel, get_peft_model
from peft.tuners.tuners_utils import BaseTunerLayer
from torch import nn
from transformers.pytorch_utils import Conv1D

from .architectures import decoder_model, model_signature
from .errors import EmptyEditError, Steer2EditError
from .extraction import edited_modules
from .tuner import Steer2EditConfig, Steer2EditLayer
from .vectors import SteeringVectors


@dataclass
class ModuleEdit:
    """The solved edit of one module: ``delta W = sum_c lambda_c u k_c^T`` on component c's columns."""

    module: str
    is_attention: bool
    direction: torch.Tensor  # [out] unit steering direction u = v_hat
    scores: torch.Tensor  # [components] alignment g; NaN where undefined
    indices: torch.Tensor  # [edited] component indices
    input_directions: torch.Tensor  # [edited, component_size] k_hat (heads) or sign(w.v_hat) (neurons)
    magnitudes: torch.Tensor  # [edited] lambda


def default_first_layer(num_layers: int) -> int:
    """The first layer edited by default: the upper 60% of the stack. Heads of the early layers write features
    that everything after them reads, so within a KL budget they buy little behaviour (BENCHMARKS.md: first-layer
    study)."""
    return (2 * num_layers) // 5


def elastic_net_magnitude(scores: torch.Tensor, rho: float, alpha: float) -> torch.Tensor:
    """lambda = sign(g) * max(|g| - rho*alpha, 0) / (rho*(1 - alpha)); undefined (NaN) scores give 0."""
    if not 0.0 <= alpha < 1.0:
        raise ValueError(f"alpha must lie in [0, 1), got {alpha}")
    if rho <= 0:
        raise ValueError(f"rho must be positive, got {rho}")
    shrunk = torch.clamp(scores.abs() - rho * alpha, min=0.0) / (rho * (1.0 - alpha))
    return torch.nan_to_num(torch.sign(scores) * shrunk, nan=0.0)


def _cosine_to(direction: torch.Tensor, vectors: torch.Tensor) -> torch.Tensor:
    """cos(direction, each row of vectors); NaN where a row (or the direction) is zero."""
    norms = vectors.norm(dim=-1) * direction.norm()
    scores = (vectors @ direction) / norms
    return torch.where(norms > 0, scores, torch.full_like(scores, float("nan")))


def head_scores(
    weight: torch.Tensor, mean_input: torch.Tensor, direction: torch.Tensor, head_dim: int
) -> tuple[torch.Tensor, torch.Tensor]:
    """Per head j: g_j = cos(v_hat, W_j x_j) and k_j = W_j^T v_hat. weight is [out, heads*head_dim]."""
    out_features, in_features = weight.shape
    heads = in_features // head_dim
    blocks = weight.view(out_features, heads, head_dim)  # [out, heads, head_dim]
    head_outputs = torch.einsum("ohd,hd->ho", blocks, mean_input.view(heads, head_dim))  # [heads, out]
    keys = torch.einsum("ohd,o->hd", blocks, direction)  # [heads, head_dim]
    return _cosine_to(direction, head_outputs), keys


def contrast_keys(probe_input: torch.Tensor, reference_input: torch.Tensor, head_dim: int) -> torch.Tensor:
    """Per head j: k_j = d_j - (d_j . r_j / |r_j|^2) r_j with d_j = x_j - r_j, unnormalized [heads, head_dim].

    x_j is the head's mean input on the probe, r_j on the reference data: k_j . r_j = 0, so the edit adds
    nothing on the average reference input and grows as the input moves towards the probe's.
    """
    probe, reference = probe_input.view(-1, head_dim), reference_input.view(-1, head_dim)
    difference = probe - reference
    norms = (reference * reference).sum(-1, keepdim=True)
    along = torch.where(norms > 0, (difference * reference).sum(-1, keepdim=True) / norms.clamp_min(1e-30), 0.0)
    return difference - along * reference


def neuron_scores(
    weight: torch.Tensor, mean_input: torch.Tensor, direction: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor]:
    """Per neuron n: g_n = cos(v_hat, w_n x_n) = sign(x_n) cos(v_hat, w_n), and w_n . v_hat. weight is [out, in]."""
    dots = weight.T @ direction  # [in]
    norms = weight.norm(dim=0) * direction.norm() * mean_input.abs()
    scores = torch.where(norms > 0, mean_input * dots / norms, torch.full_like(dots, float("nan")))
    return scores, dots


def effective_weight(module: Any) -> torch.Tensor:
    """The weight the module really applies, [out, in], float32: base plus unmerged active adapters."""
    from accelerate.utils import align_module_device

    base: Any = module.get_base_layer() if isinstance(module, BaseTunerLayer) else module
    with align_module_device(base, torch.device("cpu") if base.weight.device.type == "meta" else None):
        weight = base.weight.detach().to(torch.float32, copy=True)  # offloaded weights are brought in, then copied
    if isinstance(module, BaseTunerLayer):
        for adapter_name in module.active_adapters:
            if adapter_name in module.merged_adapters or not hasattr(module, "get_delta_weight"):
                continue
            if adapter_name in module._get_available_adapters():
                weight = weight + module.get_delta_weight(adapter_name).detach().float().to(weight.device)
    return weight.T if isinstance(base, Conv1D) else weight


def solve_module(
    name: str,
    weight: torch.Tensor,
    vectors: SteeringVectors,
    is_attention: bool,
    rho: float,
    alpha: float,
    head_dim: int,
    key_direction: str = "weight",
) -> ModuleEdit:
    """Scores, elastic-net magnitudes and rank-1 factors for every head (or neuron) of one module."""
    device = weight.device
    steering = vectors.direction(name).to(device)
    mean_input = vectors.pre_mean(name).to(device)
    if steering.shape[0] != weight.shape[0] or mean_input.shape[0] != weight.shape[1]:
        raise Steer2EditError(
            f"{name}: steering vectors of size {steering.shape[0]} / inputs of size {mean_input.shape[0]} do not fit "
            f"a weight of shape {tuple(weight.shape)}; were they extracted on another model?"
        )
    norm = steering.norm()
    direction = steering / norm if norm > 0 else steering
    if is_attention:
        scores, keys = head_scores(weight, mean_input, direction, head_dim)
        if key_direction == "contrast":
            # k . x >= 0 at the mean probe input by construction; a head with g < 0 (lambda < 0) takes -k, so
            # lambda (k . x) >= 0 there and every edited head pushes towards v, as the paper's keys do.
            keys = contrast_keys(mean_input, vectors.reference_mean(name).to(device), head_dim)
            keys = keys * torch.where(scores < 0, -1.0, 1.0).to(keys.dtype)[:, None]
        key_norms = keys.norm(dim=-1, keepdim=True)
        input_directions = torch.where(key_norms > 0, keys / key_norms.clamp_min(1e-30), torch.zeros_like(keys))
        defined = key_norms.squeeze(-1) > 0
    else:
        scores, dots = neuron_scores(weight, mean_input, direction)
        input_directions = torch.sign(dots)[:, None]
        defined = dots != 0
    magnitudes = elastic_net_magnitude(scores, rho, alpha)
    selected = torch.nonzero((magnitudes != 0) & defined).squeeze(-1)
    return ModuleEdit(
        module=name,
        is_attention=is_attention,
        direction=direction.cpu(),
        scores=scores.cpu(),
        indices=selected.cpu(),
        input_directions=input_directions[selected].cpu(),
        magnitudes=magnitudes[selected].cpu(),
    )


def check_vectors_fit(model: nn.Module, vectors: SteeringVectors) -> None:
    """Refuse vectors extracted on a model of another shape."""
    config = getattr(decoder_model(model), "config", None)
    if config is None or not vectors.model_signature:
        return
    signature = model_signature(config)
    mismatched = {
        k: (v, signature[k]) for k, v in vectors.model_signature.items() if k in signature and signature[k] != v
    }
    if mismatched:
        details = ", ".join(f"{k}: vectors {a!r} vs model {b!r}" for k, (a, b) in mismatched.items())
        raise Steer2EditError(f"these steering vectors were extracted on a different model ({details})")


@torch.no_grad()
def solve_edit(model: nn.Module, vectors: SteeringVectors, config: Steer2EditConfig) -> list[ModuleEdit]:
    """Solve every targeted module of ``model`` (config resolved in place); no module is changed."""
    check_vectors_fit(model, vectors)
    modules = edited_modules(model, config)
    missing = [name for name in modules if name not in vectors.post_pos]
    if missing:
        raise Steer2EditError(f"the steering vectors lack {len(missing)} edited module(s), e.g. {missing[0]}")
    edits = []
    for name, module in modules.items():
        is_attention = config.is_attention_module(name)
        rho = config.rho_attn if is_attention else config.rho_mlp
        assert rho is not None and (config.head_dim or not is_attention)
        edits.append(
            solve_module(
                name,
                effective_weight(module),
                vectors,
                is_attention,
                rho,
                config.alpha,
                config.head_dim or 1,
                config.key_direction,
            )
        )
    return edits


def edit_model(
    model: nn.Module,
    vectors: SteeringVectors,
    config: Steer2EditConfig | None = None,
    adapter_name: str = "default",
    behaviour: str | None = None,
    *,
    max_kl: float | None = None,
    utility: Any = None,
    tokenizer: Any = None,
    max_head_share: float | None = None,
    max_neuron_share: float | None = None,
    kl_meter: Any = None,
) -> PeftModel:
    """Turn steering vectors into a Steer2Edit adapter on ``model`` (a new PeftModel, or a PeftModel's new adapter).

    Scores every attention head and MLP neuron against the steering direction, keeps the elastic-net
    survivors, and writes the rank-1 factors into the adapter. The report is in ``edit_reports[adapter_name]``.

    ``max_kl`` (with ``utility``, a :class:`UtilityData`, and ``tokenizer``): calibrate first, so that the edit is
    the strongest one of this sparsity whose mean per-token KL from the base model on the utility data is at most
    ``max_kl`` (see calibration); what was chosen is in ``calibrations[adapter_name]``. ``max_head_share`` /
    ``max_neuron_share`` cap the share of heads / neurons edited. ``kl_meter``: a
    :class:`~steer2edit_peft.likelihood.KLMeter` of the plain model on ``utility``, to reuse its reference.
    """
    from .report import edit_report

    calibration = None
    if max_head_share is not None or max_neuron_share is not None:
        from .calibration import with_sparsity_cap

        config = with_sparsity_cap(model, vectors, config or Steer2EditConfig(), max_head_share, max_neuron_share)
    if max_kl is not None:
        from .calibration import calibrate

        if utility is None or tokenizer is None:
            raise Steer2EditError("edit_model(max_kl=...) needs utility=UtilityData(...) and the tokenizer")
        config, calibration = calibrate(
            model, tokenizer, vectors, config or Steer2EditConfig(), utility, max_kl, meter=kl_meter
        )

    if isinstance(model, PeftModel) and any(c.peft_type != "STEER2EDIT" for c in model.peft_config.values()):
        kinds = sorted({str(c.peft_type) for c in model.peft_config.values()})
        raise Steer2EditError(
            f"this PeftModel holds {', '.join(kinds)} adapters, and PEFT keeps one adapter type per model: use "
            "steer2edit_peft.export.edit_as_lora to add the edit as a LoRA adapter, or merge the fine-tune first"
        )
    config = copy.deepcopy(config) if config is not None else Steer2EditConfig()
    config.init_weights = True
    config.inference_mode = True  # a solved edit is frozen; load it with is_trainable=True to fine-tune it
    config.edited_components = {}
    edits = solve_edit(model, vectors, config)
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
    base = decoder_model(model)
    config.base_model_name_or_path = (
        config.base_model_name_or_path or getattr(base.config, "_name_or_path", None) or None
    )
    if isinstance(model, PeftModel):
        model.add_adapter(adapter_name, config)
        peft_model = model
    else:
        peft_model = get_peft_model(model, config, adapter_name=adapter_name)
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
    reports = getattr(peft_model, "edit_reports", {})
    reports[adapter_name] = edit_report(peft_model, adapter_name)
    setattr(peft_model, "edit_reports", reports)  # noqa: B010  (nn.Module typing rejects new attributes)
    if calibration is not None:
        calibrations = getattr(peft_model, "calibrations", {})
        calibrations[adapter_name] = calibration
        setattr(peft_model, "calibrations", calibrations)  # noqa: B010
    return peft_model
