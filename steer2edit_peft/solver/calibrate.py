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
from ..core.settings import KL_ANSWERS
from ..extraction.vectors import SteeringVectors
from ..probes.datasets import UtilityData
from ..tuner import Steer2EditConfig
from ..tuner.config_rules import MAX_STRENGTH
from ..tuner.report import edit_report
from .adapter import solved_adapter
from .scores import solve_edit


class BudgetError(Steer2EditError):
    """No edit of the requested form meets the KL budget."""


@dataclass
class Calibration:
    """What calibration chose and measured."""

    max_kl: float
    kl: float  # measured on the meter's reference answers at the chosen scale
    scale: float  # the factor applied to the configured elastic-net scale
    rho_attn: float | None
    rho_mlp: float | None
    alpha: float
    edited_heads: int = 0
    total_heads: int = 0
    edited_neurons: int = 0
    total_neurons: int = 0
    history: list[tuple[float, float]] = field(default_factory=list)  # (scale, KL) of every evaluation
    answers: int = 0  # the reference answers the KL was measured on (see kl_meter)

    def summary(self) -> str:
        heads = f"{self.edited_heads}/{self.total_heads} heads ({_share(self.edited_heads, self.total_heads)})"
        neurons = (
            f"{self.edited_neurons}/{self.total_neurons} neurons ({_share(self.edited_neurons, self.total_neurons)})"
        )
        return (
            f"calibrated to KL <= {self.max_kl:g}: KL {self.kl:.4f} on {self.answers} reference answers at scale x{self.scale:.3g} "
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


def kl_meter(
    model: Any, tokenizer: Any, utility: UtilityData, *, batch_size: int = 16, answers: int = KL_ANSWERS
) -> KLMeter:
    """The KL meter calibration measures with: every k-th answer of ``utility``, k = len // ``answers`` (at least
    1), spread evenly over its prompt sets: from ``answers`` to twice as many, or all where there are fewer."""
    every = max(1, len(utility.prompts) // answers)
    return KLMeter(
        model,
        tokenizer,
        utility.prompts[::every],
        utility.responses[::every],
        batch_size=batch_size,
        system_prompt=utility.system_prompt,
    )


def first_targeted_layer(config: Steer2EditConfig) -> int:
    """The lowest decoder layer an edit of ``config`` may change (0 when it may change every layer)."""
    layers = config.layers_to_transform
    if layers is None or (isinstance(layers, list) and not layers):
        return 0
    return min(layers) if isinstance(layers, list) else int(layers)


def _floor(history: list[tuple[float, float]], budget: float) -> float:
    """The part of the cost that does not grow with the scale (the numerical noise of running the edited model,
    about 0.001 nats/token in bfloat16), fitted as KL = f + c s^2 through the two smallest scales tried; 0 until
    two are known, or where it would reach the budget. Only proposals use it, never the verdict on a scale."""
    tried = sorted((scale, value) for scale, value in history if math.isfinite(value))
    if len(tried) < 2:
        return 0.0
    (s1, v1), (s2, v2) = tried[:2]
    floor = min(max((v1 * s2**2 - v2 * s1**2) / (s2**2 - s1**2), 0.0), 0.99 * v1)
    return floor if floor < budget else 0.0


def _power(first: tuple[float, float], second: tuple[float, float], floor: float) -> float:
    """p of KL = floor + c s^p through two (scale, KL) points above the floor, the second at the larger scale."""
    (s1, v1), (s2, v2) = first, second
    return math.log((v2 - floor) / (v1 - floor)) / math.log(s2 / s1)


def _crossing_from(point: tuple[float, float], power: float, budget: float, floor: float) -> float:
    """Where KL = floor + c s^power through ``point`` (scale, KL) reaches the budget."""
    scale, value = point
    return scale * ((budget - floor) / (value - floor)) ** (1 / power) if power > 0 else scale


def _crossing(low: tuple[float, float], high: tuple[float, float], budget: float, floor: float) -> float:
    """Where the fit through the bracket's ends (scale, KL) crosses the budget; inf where no such fit exists (the
    low end within the floor, or a diverging high end, which says nothing of the shape)."""
    if low[1] <= floor or not math.isfinite(high[1]):
        return math.inf
    return _crossing_from(low, _power(low, high, floor), budget, floor)


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

    Keeps a bracket (largest scale known within budget, smallest known over it) and stops when it is narrower than
    ``relative_tolerance``. Proposals fit KL = f + c s^p and aim half a tolerance below where the fit crosses the
    budget: f is the cost that does not grow with the scale (see ``_floor``); p is 2 at first (the KL of a small
    change is quadratic), then fitted through the last two scales on one side of the budget, or through the
    bracket's ends. Once the crossing is predicted within a few tolerances above the bracket's low end, the next
    scales step up from it by one tolerance (at most three in a row), to close the bracket from below. A fitted
    proposal keeps a margin from the bracket's ends, and one that did not halve the bracket is followed by a
    bisection, so a poor fit costs steps, never the answer: a real edit's KL (noise floor, then quadratic) takes
    about 5 evaluations, against 8 to 10 for plain power-law bisection. Returns (scale, history of (scale, KL));
    scale is 0 when even ``min_scale`` is over budget.
    """
    history: list[tuple[float, float]] = []
    step = 1 + relative_tolerance
    low, low_value = 0.0, 0.0
    high, high_value = math.inf, math.inf
    scale = min(max(start, min_scale), max_scale)
    proposal = "start"  # how the scale about to be measured was chosen
    closings = 0  # closing steps in a row
    while len(history) < max_evaluations:
        span_before = math.log(high / low) if low > 0 and high < math.inf else math.inf
        value = measure(scale)
        value = value if math.isfinite(value) else math.inf  # a diverging edit is over any budget
        history.append((scale, value))
        if value <= budget:
            low, low_value = scale, value
        else:
            high, high_value = scale, value
        if low >= max_scale or (high <= min_scale and low == 0.0) or (low > 0 and high / low <= step):
            break
        floor = _floor(history, budget)
        if high == math.inf or low == 0.0:  # one side of the budget known so far
            scale, proposal = _extrapolated(history, budget, floor, step, min_scale, max_scale), "extrapolated"
            continue
        span = math.log(high / low)
        boundary = _crossing((low, low_value), (high, high_value), budget, floor)
        closings = closings + 1 if proposal == "closing" else 0
        near = boundary <= low * step**3  # the crossing is predicted within a few tolerances of the low end
        if near and closings < 3:
            scale, proposal = _closing_step(low, step), "closing"  # step up until over budget
        elif near or boundary == math.inf or (proposal == "fitted" and span > 0.5 * span_before):
            scale, proposal = math.sqrt(low * high), "bisected"  # the fit missed: halve the bracket instead
        else:
            margin = min(0.5 * math.log(step), 0.25 * span)
            scale = min(max(boundary / math.sqrt(step), low * math.exp(margin)), high * math.exp(-margin))
            proposal = "fitted"
    return low, history


def _power_through(points: list[tuple[float, float]], floor: float) -> float:
    """p of KL = floor + c s^p through two (scale, KL) points, within [0.5, 4]; 2 (quadratic) where undefined."""
    first, second = sorted(points)
    if second[0] <= first[0] or min(first[1], second[1]) <= floor or second[1] <= first[1]:
        return 2.0
    return min(max(_power(first, second, floor), 0.5), 4.0)


def _extrapolated(
    history: list[tuple[float, float]], budget: float, floor: float, step: float, min_scale: float, max_scale: float
) -> float:
    """The next scale while every scale tried is on one side of the budget: half a tolerance below where the fit
    through the last two crosses it, at most 64x up or 16x down at once."""
    last, value = history[-1]
    # Upwards, two points fit the floor alone (quadratically); a power needs a third.
    power = _power_through(history[-2:], floor) if len(history) > (2 if value <= budget else 1) else 2.0
    if value <= budget:  # upwards
        if value <= floor:
            return min(64 * last, max_scale)
        boundary = _crossing_from(history[-1], power, budget, floor)
        if boundary <= last * step:  # the crossing is within tolerance: step just above, to close the bracket
            return min(_closing_step(last, step), max_scale)
        return min(max(boundary / math.sqrt(step), last * step), 64 * last, max_scale)
    if not math.isfinite(value):
        return max(last / 16, min_scale)
    boundary = _crossing_from(history[-1], power, budget, floor)
    return max(min(boundary / math.sqrt(step), 0.8 * last), last / 16, min_scale)


def _closing_step(low: float, step: float) -> float:
    """Just under one tolerance above ``low``: over budget there, the bracket is closed."""
    return low * (1 + 0.99 * (step - 1))


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
    meter = meter or kl_meter(model, tokenizer, utility, batch_size=batch_size)
    edited = solved_adapter(model, vectors, config, adapter_name="calibrating")
    first = first_targeted_layer(config)
    try:
        tuner: Any = edited.base_model

        def kl_at(scale: float) -> float:
            tuner.set_strength(scale, "calibrating")
            return meter(edited, from_layer=first)  # the layers below the edit are the base model's

        max_scale = min(max_scale, tuner.largest_strength("calibrating"))  # within the bound loading enforces
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
    calibration.history, calibration.answers = history, meter.answers
    return chosen, calibration


__all__ = [
    "BudgetError",
    "Calibration",
    "UtilityData",
    "calibrate",
    "kl_meter",
    "largest_within",
    "rescaled",
    "with_sparsity_cap",
]
