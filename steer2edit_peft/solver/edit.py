"""edit_model: settings -> scores -> calibration -> adapter, the whole solve in one call."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import replace
from typing import Any

from peft import PeftModel
from torch import nn

from ..core.architectures import num_layers
from ..core.errors import Steer2EditError
from ..core.settings import EditSettings, defaults_for
from ..extraction.vectors import SteeringVectors
from ..tuner import Steer2EditConfig
from .adapter import solved_adapter
from .calibrate import calibrate, with_sparsity_cap
from .gates import fit_gates, gate_edits
from .settings import adapter_config


def edit_model(
    model: nn.Module,
    vectors: SteeringVectors,
    config: Steer2EditConfig | EditSettings | None = None,
    adapter_name: str = "default",
    behaviour: str | None = None,
    *,
    max_kl: float | None = None,
    utility: Any = None,
    tokenizer: Any = None,
    max_head_share: float | None = None,
    max_neuron_share: float | None = None,
    kl_meter: Any = None,
    probe_prompts: Sequence[str] | None = None,
    show_progress: bool = False,
) -> PeftModel:
    """Turn steering vectors into a Steer2Edit adapter on ``model`` (a new PeftModel, or a PeftModel's new adapter).

    Scores every attention head and MLP neuron against the steering direction, keeps the elastic-net survivors,
    and writes the rank-1 factors into the adapter. The report is in ``edit_reports[adapter_name]``.

    ``behaviour``: default, the one the vectors record (``steer2edit extract`` writes it).
    ``config``: :class:`EditSettings` (default: ``defaults_for(behaviour)``, the same edit as ``steer2edit edit``), whose KL
    budget and sparsity caps apply unless given here; or a :class:`Steer2EditConfig`, solved exactly as it is
    (calibrated and capped only when ``max_kl`` / the shares are given). Calibrating (``utility``, a
    :class:`UtilityData`, and ``tokenizer`` needed) makes the edit the strongest one of this sparsity whose mean
    per-token KL from the base model on the utility data is at most ``max_kl``; what was chosen is in
    ``calibrations[adapter_name]``. ``kl_meter``: a :class:`~steer2edit_peft.core.likelihood.KLMeter` of the
    plain model on ``utility``, to reuse its reference. Gates (``EditSettings.gate_amount``, e.g. ``GATES``) replace
    the heads (solver/gates.py), fitted on ``probe_prompts`` (default: the vectors') against ``utility``.
    """
    behaviour = behaviour or vectors.behaviour
    if isinstance(config, EditSettings) and config.gate_amount is not None:
        return _gated(model, vectors, config, adapter_name, behaviour, utility, tokenizer, probe_prompts, show_progress)
    if not isinstance(config, Steer2EditConfig):
        overrides: dict[str, Any] = {
            "max_kl": max_kl,
            "max_head_share": max_head_share,
            "max_neuron_share": max_neuron_share,
        }
        settings = replace(config or defaults_for(behaviour), **{k: v for k, v in overrides.items() if v is not None})
        config, max_kl = adapter_config(settings, num_layers(model)), settings.max_kl
        max_head_share, max_neuron_share = settings.max_head_share, settings.max_neuron_share
    if max_head_share is not None or max_neuron_share is not None:
        config = with_sparsity_cap(model, vectors, config, max_head_share, max_neuron_share)
    calibration = None
    if max_kl is not None:
        if utility is None or tokenizer is None:
            raise Steer2EditError(
                f"the edit is calibrated to KL <= {max_kl:g} on benign prompts: pass utility=UtilityData(...) and "
                "the tokenizer, or EditSettings(max_kl=None) to keep the elastic net's own scale"
            )
        config, calibration = calibrate(model, tokenizer, vectors, config, utility, max_kl, meter=kl_meter)
    peft_model = solved_adapter(model, vectors, config, adapter_name, behaviour)
    if calibration is not None:
        calibrations = getattr(peft_model, "calibrations", {})
        calibrations[adapter_name] = calibration
        setattr(peft_model, "calibrations", calibrations)  # noqa: B010  (nn.Module typing rejects new attributes)
    return peft_model


def _gated(
    model: nn.Module,
    vectors: SteeringVectors,
    settings: EditSettings,
    adapter_name: str,
    behaviour: str | None,
    utility: Any,
    tokenizer: Any,
    probe_prompts: Sequence[str] | None,
    show_progress: bool,
) -> PeftModel:
    prompts = probe_prompts or vectors.options.get("probe_prompts")
    if utility is None or tokenizer is None or not prompts:
        raise Steer2EditError(
            "gates are fitted on the probe's prompts against the reference's answers: pass utility=UtilityData(...), "
            "the tokenizer, and probe_prompts (vectors saved before gates existed do not record them)"
        )
    assert settings.gate_amount is not None
    gates = fit_gates(model, tokenizer, prompts, utility, vectors, settings, show_progress=show_progress)
    config = adapter_config(settings, num_layers(model))
    config.layers_to_transform = sorted({gate.mlp.layer for gate in gates})
    config.gates = {gate.mlp.down: gate.record(settings.gate_amount) for gate in gates}
    edits = gate_edits(model, gates, settings.gate_amount)
    return solved_adapter(model, vectors, config, adapter_name, behaviour, edits)
