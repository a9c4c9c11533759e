"""Budget-calibrated edits: the strongest elastic-net edit whose KL from the base model stays within a budget.

The elastic net has two knobs: the threshold ``rho * alpha`` (which components are edited) and the scale
``1 / (rho (1 - alpha))`` (how strongly). Calibration keeps the threshold (so the edit stays as sparse as the
configuration asks, optionally capped at a share of heads and neurons) and searches the scale until the mean
per-token KL from the base model, teacher-forced on benign prompts and the base model's own answers, meets the
budget. The scale found is folded back into (rho, alpha), so the result is a plain elastic-net solution saved
with strength 1.
"""

from __future__ import annotations

import copy
import math
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import torch
from peft import PeftModel

from ..core.errors import Steer2EditError
from ..core.likelihood import KLMeter
from ..extraction.vectors import SteeringVectors
from ..probes.datasets import UtilityData
from ..tuner import Steer2EditConfig
from ..tuner.checkpoint import MAX_STRENGTH
from ..tuner.report import edit_report
from .adapter import solved_adapter
from .scores import solve_edit


class BudgetError(Steer2EditError):
    """No edit of the requested form meets the KL budget."""


@dataclass
class Calibration:
    """What calibration chose and measured."""

    max_kl: float
    kl: float  # measured on the utility data at the chosen scale
    scale: float  # the factor applied to the configured elastic-net scale
    rho_attn: float | None
    rho_mlp: float | None
    alpha: float
    edited_heads: int = 0
    total_heads: int = 0
    edited_neurons: int = 0
    total_neurons: int = 0
    history: list[tuple[float, float]] = field(default_factory=list)  # (scale, KL) of every evaluation

    def summary(self) -> str:
        heads = f"{self.edited_heads}/{self.total_heads} heads ({_share(self.edited_heads, self.total_heads)})"
        neurons = (
            f"{self.edited_neurons}/{self.total_neurons} neurons ({_share(self.edited_neurons, self.total_neurons)})"
        )
        return (
            f"calibrated to KL <= {self.max_kl:g}: KL {self.kl:.4f} at scale x{self.scale:.3g} "
            f"(rho_attn={_fmt(self.rho_attn)}, rho_mlp={_fmt(self.rho_mlp)}, alpha={self.alpha:.4g}); edits "
            f"{heads}, {neurons}; {len(self.history)} KL evaluations"
        )


def _share(part: int, whole: int) -> str:
    return f"{100 * part / whole:.1f}%" if whole else "-"


def _fmt(value: float | None) -> str:
    return "off" if value is None else f"{value:.4g}"


def rescaled(config: Steer2EditConfig, scale: float) -> Steer2EditConfig:
    """The elastic-net settings with the same thresholds rho*alpha and every magnitude multiplied by ``scale``.

    lambda = sign(g) max(|g| - t, 0) * c with t = rho*alpha, c = 1/(rho (1-alpha)); keeping t and using s*c gives
    rho' = t + 1/(s c) and alpha' = t / rho', the same alpha' for both families.
    """
    if not scale > 0 or not math.isfinite(scale):
        raise ValueError(f"scale must be a positive finite number, got {scale}")
    out = copy.deepcopy(config)
    alpha = config.alpha
    out.alpha = alpha / (alpha + (1 - alpha) / scale)
    for name in ("rho_attn", "rho_mlp"):
        rho = getattr(config, name)
        if rho is not None and rho > 0:
            setattr(out, name, rho * alpha + rho * (1 - alpha) / scale)
    return out


def with_sparsity_cap(
    model: Any,
    vectors: SteeringVectors,
    config: Steer2EditConfig,
    max_head_share: float | None,
    max_neuron_share: float | None,
) -> Steer2EditConfig:
    """Raise a family's rho (alpha kept) until it edits at most the given share of its components.

    The threshold rho*alpha then sits at the first |g| left out; the scale of that family drops with it, which
    calibration makes up for.
    """
    if max_head_share is None and max_neuron_share is None:
        return config
    if config.alpha <= 0:
        raise BudgetError("a sparsity cap needs alpha > 0: with alpha = 0 the elastic net keeps every component")
    edits = solve_edit(model, vectors, copy.deepcopy(config))
    out = copy.deepcopy(config)
    for is_attention, share, name in ((True, max_head_share, "rho_attn"), (False, max_neuron_share, "rho_mlp")):
        rho = getattr(config, name)
        if share is None or rho is None or rho <= 0:
            continue
        scores = torch.cat([e.scores.abs() for e in edits if e.is_attention == is_attention] or [torch.zeros(0)])
        scores = torch.sort(scores[torch.isfinite(scores)], descending=True).values
        allowed = int(share * scores.numel())
        if allowed >= scores.numel() or float(scores[allowed]) <= rho * config.alpha:
            continue  # already within the cap
        setattr(out, name, float(scores[allowed]) / config.alpha)
    return out


def first_targeted_layer(config: Steer2EditConfig) -> int:
    """The lowest decoder layer an edit of ``config`` may change (0 when it may change every layer)."""
    layers = config.layers_to_transform
    if layers is None or (isinstance(layers, list) and not layers):
        return 0
    return min(layers) if isinstance(layers, list) else int(layers)


def largest_within(
    measure: Callable[[float], float],
    budget: float,
    *,
    start: float = 1.0,
    max_scale: float = 64.0,
    min_scale: float = 2.0**-10,
    relative_tolerance: float = 0.02,
    max_evaluations: int = 16,
) -> tuple[float, list[tuple[float, float]]]:
    """The largest scale s in [min_scale, max_scale] with ``measure(s) <= budget``, for a cost that grows with s.

    Keeps a bracket (largest scale known within budget, smallest known over it) and proposes the next scale by
    fitting a power law KL = c s^p through the bracket (p = 2 outside it: the KL of a small change is quadratic),
    clamped to the bracket's middle half in log space, so every step shrinks the bracket by a quarter at least however
    poor the fit. Stops
    when the bracket is narrower than ``relative_tolerance``. Returns (scale, history of (scale, KL)); scale is 0
    when even ``min_scale`` is over budget.
    """
    history: list[tuple[float, float]] = []

    def at(scale: float) -> float:
        value = measure(scale)
        if not math.isfinite(value):
            value = math.inf  # a diverging edit is over any budget
        history.append((scale, value))
        return value

    target = 0.97 * budget  # aim a little inside, so most proposals land within the budget
    low, low_value = 0.0, 0.0
    high, high_value = math.inf, math.inf
    scale = min(max(start, min_scale), max_scale)
    while len(history) < max_evaluations:
        value = at(scale)
        if value <= budget:
            low, low_value = scale, value
        else:
            high, high_value = scale, value
        if low >= max_scale or (high <= min_scale and low == 0.0):
            break
        if low > 0 and high < math.inf and high / low <= 1 + relative_tolerance:
            break
        if high == math.inf:  # only scales within budget so far: extrapolate upwards
            guess = low * math.sqrt(target / low_value) if low_value > 0 else 16 * low
            scale = min(max(guess, 1.25 * low), 16 * low, max_scale)
        elif low == 0.0:  # only scales over budget so far: extrapolate downwards
            guess = high * math.sqrt(target / high_value) if math.isfinite(high_value) else high / 16
            scale = max(min(guess, 0.8 * high), high / 16, min_scale)
        else:
            power = math.log(high_value / low_value) / math.log(high / low) if low_value > 0 else 2.0
            guess = low * (target / low_value) ** (1 / power) if low_value > 0 and power > 0 else math.sqrt(low * high)
            span = math.log(high / low)
            scale = math.exp(min(max(math.log(guess), math.log(low) + 0.25 * span), math.log(low) + 0.75 * span))
    return low, history


def calibrate(
    model: Any,
    tokenizer: Any,
    vectors: SteeringVectors,
    config: Steer2EditConfig,
    utility: UtilityData,
    max_kl: float,
    *,
    meter: KLMeter | None = None,
    max_scale: float = MAX_STRENGTH,  # the largest an adapter takes; selective scores near the threshold need room
    min_scale: float = 2.0**-10,
    relative_tolerance: float = 0.02,
    batch_size: int = 16,
) -> tuple[Steer2EditConfig, Calibration]:
    """The config of the strongest edit (largest scale) whose KL on ``utility`` is at most ``max_kl``.

    Searches the scale of the edit that ``config`` solves to (see ``largest_within``). ``meter``: a KLMeter of the
    plain model on ``utility``, reused across calls. ``model`` is left as it came in.
    """
    if not (isinstance(max_kl, (int, float)) and math.isfinite(max_kl) and max_kl > 0):
        raise BudgetError(f"the KL budget must be a positive number, got {max_kl!r}: no edit changes nothing")
    if isinstance(model, PeftModel):
        raise Steer2EditError("calibrate a plain model: merge or unload the PeftModel's adapters first")
    meter = meter or KLMeter(
        model, tokenizer, utility.prompts, utility.responses, batch_size=batch_size, system_prompt=utility.system_prompt
    )
    edited = solved_adapter(model, vectors, config, adapter_name="calibrating")
    first = first_targeted_layer(config)
    try:
        tuner: Any = edited.base_model

        def kl_at(scale: float) -> float:
            tuner.set_strength(scale, "calibrating")
            return meter(edited, from_layer=first)  # the layers below the edit are the base model's

        scale, history = largest_within(
            kl_at, max_kl, max_scale=max_scale, min_scale=min_scale, relative_tolerance=relative_tolerance
        )
        report = edit_report(edited, "calibrating")
    finally:
        edited.unload()  # the model as it came in
    if scale <= 0:
        smallest, cost = min(history)
        raise BudgetError(
            f"no edit of this form meets KL <= {max_kl:g}: even x{smallest:.3g} of the configured scale costs "
            f"{cost:.4f} nats/token; raise the budget, raise rho, or edit fewer layers"
        )
    chosen = rescaled(config, scale)
    measured = next(kl for tried, kl in history if tried == scale)
    counts = {
        name: getattr(report, name) for name in ("edited_heads", "total_heads", "edited_neurons", "total_neurons")
    }
    calibration = Calibration(max_kl, measured, scale, chosen.rho_attn, chosen.rho_mlp, chosen.alpha, **counts)
    calibration.history = history
    return chosen, calibration


__all__ = ["BudgetError", "Calibration", "UtilityData", "calibrate", "largest_within", "rescaled", "with_sparsity_cap"]
