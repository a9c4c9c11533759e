"""Automatic search of the attribute-utility trade-off (optuna, two objectives), for edits and for steering.

Each trial is scored by a ``measure`` that returns (attribute, KL from the base, details); the attribute is
maximised and the KL minimised. The Pareto front, "the strongest setting under a KL budget" and "the attribute
at matched KL" are read from the trials.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

from tqdm.auto import tqdm

from ..core.architectures import num_layers
from ..core.errors import EmptyEditError, Steer2EditError
from ..core.judges import RefusalMatcher
from ..core.settings import DEFAULTS, EVALUATED_BEHAVIOURS, EditSettings
from ..extraction.steering import steer
from ..extraction.vectors import SteeringVectors
from ..solver.edit import edit_model
from ..solver.settings import edit_config_from
from ..tuner import Steer2EditConfig
from .metrics import refusal_rate, response_lengths
from .prompts import EvaluationPrompts
from .suite import Answerer, Condition, kl_between, transformers_answers

# (condition to measure, reference condition) -> (attribute, KL from the reference, details)
Measure = Callable[[Condition, Condition], tuple[float, float, dict[str, Any]]]


@dataclass
class Trial:
    method: str  # "Steer2Edit" or "steering"
    params: dict[str, Any]
    attribute: float
    kl: float
    details: dict[str, Any] = field(default_factory=dict)


def pareto_front(trials: Sequence[Trial]) -> list[Trial]:
    """Trials no other trial beats on both objectives (higher attribute, lower KL), sorted by KL."""
    front = [
        t
        for t in trials
        if not any(
            (o.attribute >= t.attribute and o.kl <= t.kl) and (o.attribute > t.attribute or o.kl < t.kl) for o in trials
        )
    ]
    return sorted(front, key=lambda t: (t.kl, -t.attribute))


def best_under(trials: Sequence[Trial], max_kl: float) -> Trial | None:
    """The trial with the highest attribute whose KL stays at or under ``max_kl`` (ties: the lower KL)."""
    allowed = [t for t in trials if t.kl <= max_kl]
    return max(allowed, key=lambda t: (t.attribute, -t.kl)) if allowed else None


def _suggest_edit(trial: Any, num_layers: int, max_first_layer: int) -> dict[str, Any]:
    families = trial.suggest_categorical("families", ["heads", "neurons", "both"])
    return {
        "first_layer": trial.suggest_int("first_layer", 0, max_first_layer),
        "rho_attn": trial.suggest_float("rho_attn", 0.03, 0.8, log=True) if families != "neurons" else None,
        "rho_mlp": trial.suggest_float("rho_mlp", 0.03, 0.8, log=True) if families != "heads" else None,
        "alpha": trial.suggest_float("alpha", 0.2, 0.95),
    }


def _suggest_steering(trial: Any, max_first_layer: int, max_strength: float) -> dict[str, Any]:
    return {
        "first_layer": trial.suggest_int("first_layer", 0, max_first_layer),
        "strength": trial.suggest_float("strength", 0.02, max_strength, log=True),
    }


def steering_condition(model: Any, vectors: SteeringVectors, params: dict[str, Any], num_layers: int) -> Condition:
    """Activation steering on both families of the layers from ``first_layer`` on."""
    from ..tuner.report import layer_index

    first = int(params.get("first_layer", 0))
    modules = [m for m in vectors.modules if (layer_index(m) or 0) >= first]
    return Condition(
        f"steering x{params['strength']:.3g}", model, lambda: steer(model, vectors, params["strength"], modules)
    )


def _score_edit(
    model: Any, vectors: SteeringVectors, measure: Measure, config: Steer2EditConfig, unchanged: list[Any]
) -> tuple[float, float, dict[str, Any]]:
    """One trial's score; the edit is removed after it. An empty edit scores as the base model (kept in
    ``unchanged``, measured once)."""
    try:
        edited = edit_model(model, vectors, config)
    except EmptyEditError:  # nothing passed the threshold: the model as it is
        if not unchanged:
            unchanged.append(measure(Condition("base", model), Condition("base", model)))
        attribute, kl, details = unchanged[0]
        return attribute, kl, {**details, "edited_heads": 0, "edited_neurons": 0}
    try:
        report = edited.edit_reports["default"]
        attribute, kl, details = measure(
            Condition("Steer2Edit", edited), Condition("base", edited, edited.disable_adapter)
        )
        return attribute, kl, {**details, "edited_heads": report.edited_heads, "edited_neurons": report.edited_neurons}
    finally:
        edited.unload()


def search(
    model: Any,
    vectors: SteeringVectors,
    measure: Measure,
    *,
    method: str = "Steer2Edit",
    trials: int = 20,
    seed: int = 0,
    max_first_layer: int | None = None,
    max_strength: float = 8.0,
    enqueue: Sequence[dict[str, Any]] = (),
    show_progress: bool = True,
    settings: EditSettings = DEFAULTS,
) -> list[Trial]:
    """Run an optuna multi-objective search (TPE, seeded) over Steer2Edit settings or steering settings.

    ``model`` is left as it came in: every edit is removed after its trial. ``enqueue``: settings tried first.
    A trial changes rho_attn, rho_mlp, alpha and the first layer of ``settings`` (keys, positions: as there).
    """
    try:
        import optuna
    except ImportError as error:
        raise Steer2EditError("the sweep needs optuna: pip install 'steer2edit-peft[sweep]'") from error
    if method not in ("Steer2Edit", "steering"):
        raise ValueError(f"method must be 'Steer2Edit' or 'steering', got {method!r}")
    layers = int(vectors.model_signature.get("num_hidden_layers") or num_layers(model))
    max_first = layers - 1 if max_first_layer is None else max_first_layer
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    study = optuna.create_study(directions=["maximize", "minimize"], sampler=optuna.samplers.TPESampler(seed=seed))
    for params in enqueue:
        study.enqueue_trial(params)
    results: list[Trial] = []
    unchanged: list[tuple[float, float, dict[str, Any]]] = []  # the base model's score, for empty edits
    bar = tqdm(total=trials, desc=f"searching {method}", unit="trial", disable=not show_progress)

    def objective(trial: Any) -> tuple[float, float]:
        if method == "steering":
            params = _suggest_steering(trial, max_first, max_strength)
            steering = steering_condition(model, vectors, params, layers)
            attribute, kl, details = measure(steering, Condition("base", model))
        else:
            params = _suggest_edit(trial, layers, max_first)
            attribute, kl, details = _score_edit(
                model, vectors, measure, edit_config_from(params, layers, settings), unchanged
            )
        results.append(Trial(method, params, attribute, kl, details))
        bar.update()
        bar.set_postfix(attribute=f"{attribute:.3f}", kl=f"{kl:.4f}")
        return attribute, kl

    try:
        study.optimize(objective, n_trials=trials)
    finally:
        bar.close()
    return results


def attribute_at_matched_kl(
    trials_by_method: dict[str, Sequence[Trial]], kl_levels: Sequence[float]
) -> list[dict[str, Any]]:
    """For each KL budget, the best attribute each method reaches within it (None when no trial fits)."""
    rows = []
    for level in kl_levels:
        row: dict[str, Any] = {"max_kl": level}
        for method, trials in trials_by_method.items():
            best = best_under(trials, level)
            row[method] = None if best is None else {"attribute": best.attribute, "kl": best.kl, **best.details}
        rows.append(row)
    return rows


def generation_measure(
    behaviour: str,
    tokenizer: Any,
    prompts: EvaluationPrompts,
    reference_benign: list[str],
    *,
    max_new_tokens: int = 32,
    batch_size: int = 16,
    judge: Any = None,
    answer: Answerer | None = None,
) -> Measure:
    """A measure from generated answers: ``refusal`` scores refusal rate minus over-refusal, ``concise`` scores
    1 - mean answer length / the reference's. The KL is taken on ``prompts.benign`` with ``reference_benign``.

    ``answer`` generates (default: greedy transformers generation; ``export.vllm.VllmTrialAnswers`` serves
    each edit from vLLM). The KL stays a teacher-forced transformers measurement either way."""
    if behaviour not in EVALUATED_BEHAVIOURS:
        raise ValueError(f"behaviour must be one of {EVALUATED_BEHAVIOURS}, got {behaviour!r}")
    judge = judge or RefusalMatcher()
    reference_length: list[float] = []

    generate = answer or transformers_answers(
        tokenizer, max_new_tokens=max_new_tokens, batch_size=batch_size, show_progress=False
    )

    def answers(condition: Condition, *prompt_lists: list[str]) -> list[list[str]]:
        return generate(condition, prompt_lists)

    def mean_length(responses: list[str]) -> float:
        lengths = response_lengths(tokenizer, responses)
        return sum(lengths) / len(lengths)

    def measure(condition: Condition, reference: Condition) -> tuple[float, float, dict[str, Any]]:
        kl = kl_between(condition, reference, tokenizer, prompts.benign, reference_benign, batch_size)
        if behaviour == "refusal":  # benign answers only matter for over-refusal
            attribute, benign = answers(condition, prompts.attribute, prompts.benign)
            refusal = refusal_rate(prompts.attribute, attribute, judge)
            over_refusal = refusal_rate(prompts.benign, benign, judge)
            return refusal - over_refusal, kl, {"refusal": refusal, "over_refusal": over_refusal}
        if not reference_length:
            reference_length.append(mean_length(answers(reference, prompts.attribute)[0]))
        length = mean_length(answers(condition, prompts.attribute)[0])
        return 1 - length / reference_length[0], kl, {"mean_length": length, "base_length": reference_length[0]}

    return measure
