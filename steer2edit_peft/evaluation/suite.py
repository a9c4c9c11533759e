"""One evaluation, run the same way on several conditions (base, activation steering, edit unmerged, merged)."""

from __future__ import annotations

import json
from collections.abc import Callable, Iterator, Sequence
from contextlib import AbstractContextManager, ExitStack, contextmanager, nullcontext
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ..core.generation import generate_responses, regrouped
from ..core.judges import RefusalJudge, RefusalMatcher
from ..core.likelihood import mean_token_kl, perplexity
from .metrics import changed_share, refusal_rate, response_lengths
from .prompts import EvaluationPrompts


@dataclass
class Condition:
    """A model as it is evaluated: ``model`` used inside ``context()`` (e.g. steering hooks, adapter off)."""

    name: str
    model: Any
    context: Callable[[], AbstractContextManager[Any]] = nullcontext


@contextmanager
def _entered(factories: Sequence[Callable[[], AbstractContextManager[Any]]]) -> Iterator[None]:
    with ExitStack() as stack:
        for factory in factories:
            stack.enter_context(factory())
        yield


def combined(*factories: Callable[[], AbstractContextManager[Any]]) -> Callable[[], AbstractContextManager[None]]:
    """One context factory entering ``factories`` in order (e.g. adapter off, then steering hooks)."""
    return lambda: _entered(factories)


@dataclass
class EvaluationResult:
    """Metrics of one condition. Rates are in [0, 1]; lengths in tokens; KL in nats per token."""

    condition: str
    refusal_rate: float  # on the attribute prompts
    over_refusal: float  # on the benign prompts
    mean_length: float  # of the answers to the attribute prompts
    kl_from_reference: float | None  # on the benign prompts with the reference's own answers (None: not measured)
    perplexity: float | None  # of ``texts``
    borderline_refusal: float | None = None  # on the borderline prompts
    # Shares of benign / borderline answers the reference would not have given (metrics.changed_share)
    benign_changed: float | None = None
    borderline_changed: float | None = None
    attribute_responses: list[str] = field(repr=False, default_factory=list)
    benign_responses: list[str] = field(repr=False, default_factory=list)
    borderline_responses: list[str] = field(repr=False, default_factory=list)


def kl_between(
    condition: Condition,
    reference: Condition,
    tokenizer: Any,
    prompts: Sequence[str],
    responses: Sequence[str],
    batch_size: int = 16,
    system_prompt: str | None = None,
) -> float:
    """Mean per-token KL(reference || condition) on ``responses`` to ``prompts``."""
    return mean_token_kl(
        condition.model,
        tokenizer,
        prompts,
        responses,
        edited=condition.context,
        reference=reference.context,
        reference_model=reference.model,
        batch_size=batch_size,
        system_prompt=system_prompt,
    )


# (condition, lists of prompts) -> its greedy answers to each list
Answerer = Callable[[Condition, Sequence[Sequence[str]]], list[list[str]]]


def transformers_answers(
    tokenizer: Any,
    *,
    max_new_tokens: int = 48,
    batch_size: int = 16,
    system_prompt: str | None = None,
    show_progress: bool = True,
) -> Answerer:
    """Greedy transformers generation, every list in one call (fuller batches, fewer generation loops)."""

    def answer(condition: Condition, prompt_lists: Sequence[Sequence[str]]) -> list[list[str]]:
        flat = [prompt for prompts in prompt_lists for prompt in prompts]
        with condition.context():
            responses = generate_responses(
                condition.model,
                tokenizer,
                flat,
                max_new_tokens=max_new_tokens,
                batch_size=batch_size,
                system_prompt=system_prompt,
                show_progress=show_progress,
            )
        return regrouped(responses, prompt_lists)

    return answer


def _result(
    name: str,
    prompts: EvaluationPrompts,
    answers: tuple[list[str], list[str], list[str]],
    tokenizer: Any,
    judge: RefusalJudge,
    kl: float | None,
    text_perplexity: float | None,
    changed: tuple[float | None, float | None] = (None, None),
) -> EvaluationResult:
    attribute, benign, borderline = answers
    lengths = response_lengths(tokenizer, attribute)
    return EvaluationResult(
        condition=name,
        refusal_rate=refusal_rate(prompts.attribute, attribute, judge),
        over_refusal=refusal_rate(prompts.benign, benign, judge),
        mean_length=sum(lengths) / len(lengths),
        kl_from_reference=kl,
        perplexity=text_perplexity,
        borderline_refusal=refusal_rate(prompts.borderline, borderline, judge) if borderline else None,
        benign_changed=changed[0],
        borderline_changed=changed[1],
        attribute_responses=attribute,
        benign_responses=benign,
        borderline_responses=borderline,
    )


def _teacher_forced(
    condition: Condition,
    reference: Condition,
    tokenizer: Any,
    prompts: EvaluationPrompts,
    answers: Sequence[list[str]],
    reference_answers: Sequence[list[str]],
    batch_size: int,
    system_prompt: str | None,
) -> tuple[float, tuple[float | None, float | None]]:
    """The condition's KL from the reference on the reference's benign answers, and the shares of its benign and
    borderline answers whose meaning changed from the reference's (None: no such prompts)."""
    kl = kl_between(condition, reference, tokenizer, prompts.benign, reference_answers[0], batch_size, system_prompt)
    shares = [
        changed_share(
            reference.model,
            tokenizer,
            asked,
            answered,
            expected,
            context=reference.context,
            batch_size=batch_size,
            system_prompt=system_prompt,
        )
        if asked
        else None
        for asked, answered, expected in zip((prompts.benign, prompts.borderline), answers, reference_answers)
    ]
    return kl, (shares[0], shares[1])


def evaluate_conditions(
    conditions: Sequence[Condition],
    tokenizer: Any,
    prompts: EvaluationPrompts,
    *,
    reference: Condition | None = None,
    reference_result: EvaluationResult | None = None,
    max_new_tokens: int = 48,
    batch_size: int = 16,
    judge: RefusalJudge | None = None,
    system_prompt: str | None = None,
    show_progress: bool = True,
    answer: Answerer | None = None,
    measure_kl: bool = True,
) -> list[EvaluationResult]:
    """Evaluate each condition on the same prompts; KL is measured from ``reference`` (default: the first).

    The reference's greedy benign and borderline answers (``reference_result``'s, or generated here) are what every
    condition is measured against: the KL on the benign ones (identical tokens for all), and the shares whose meaning
    changed (``metrics.changed_share``), both teacher-forced transformers passes (``measure_kl=False``: left out).
    ``answer`` generates (default: ``transformers_answers``; ``export.vllm.VllmTrialAnswers`` serves from vLLM).
    """
    if not conditions:
        raise ValueError("evaluate_conditions needs at least one condition")
    reference = reference or conditions[0]
    judge = judge or RefusalMatcher()
    answer = answer or transformers_answers(
        tokenizer,
        max_new_tokens=max_new_tokens,
        batch_size=batch_size,
        system_prompt=system_prompt,
        show_progress=show_progress,
    )
    references = (
        answer(reference, [prompts.benign, prompts.borderline])
        if reference_result is None
        else [reference_result.benign_responses, reference_result.borderline_responses]
    )
    results = []
    for condition in conditions:
        own = condition is reference
        asked = [prompts.attribute] + ([[], []] if own else [prompts.benign, prompts.borderline])
        attribute, benign, borderline = answer(condition, asked)
        if own:
            benign, borderline = references
        with condition.context():
            text_perplexity = (
                perplexity(condition.model, tokenizer, prompts.texts, batch_size=batch_size) if prompts.texts else None
            )
        measured = (condition, reference, tokenizer, prompts, [benign, borderline], references)
        kl, changed = _teacher_forced(*measured, batch_size, system_prompt) if measure_kl else (None, (None, None))
        answers = (attribute, benign, borderline)
        results.append(_result(condition.name, prompts, answers, tokenizer, judge, kl, text_perplexity, changed))
    return results


_COLUMNS = {
    "refusal_rate": ("refusal", "{:.0%}"),
    "over_refusal": ("over-refusal", "{:.0%}"),
    "borderline_refusal": ("borderline refusal", "{:.0%}"),
    "mean_length": ("length", "{:.1f}"),
    "benign_changed": ("benign changed", "{:.0%}"),
    "borderline_changed": ("borderline changed", "{:.0%}"),
    "kl_from_reference": ("KL", "{:.4f}"),
    "perplexity": ("perplexity", "{:.2f}"),
}


def results_table(results: Sequence[EvaluationResult], columns: Sequence[str] | None = None) -> str:
    """A Markdown table, one row per condition."""
    columns = list(columns or _COLUMNS)
    header = ["condition"] + [_COLUMNS[c][0] for c in columns]
    rows = [
        [r.condition]
        + [
            "n/a" if (value := getattr(r, c)) is None else _COLUMNS[c][1].format(value)  # noqa: RUF027
            for c in columns
        ]
        for r in results
    ]
    widths = [max(len(row[i]) for row in [header, *rows]) for i in range(len(header))]

    def line(cells: list[str]) -> str:
        return "| " + " | ".join(cell.ljust(width) for cell, width in zip(cells, widths)) + " |"

    return "\n".join([line(header), "|" + "|".join("-" * (w + 2) for w in widths) + "|", *map(line, rows)])


def results_markdown(results_json: str | Path) -> str:
    """The results table of a `steer2edit demo`/`eval` results.json, as Markdown for the model card."""
    content = json.loads(Path(results_json).read_text(encoding="utf-8"))
    rows = content["results"] if isinstance(content, dict) else content
    fields = set(EvaluationResult.__dataclass_fields__)
    results = [EvaluationResult(**{k: v for k, v in row.items() if k in fields}) for row in rows]
    return (
        results_table(results)
        + "\n\nRefusal and over-refusal: share of answers a refusal-phrase matcher flags; KL in nats per token."
    )
