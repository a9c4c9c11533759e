"""The sanity check an edit must pass before it is shipped: coherent, non-empty answers to ordinary prompts."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from ..core.errors import Steer2EditError
from ..core.generation import generate_responses

MIN_DISTINCT_SHARE = 0.3  # of the tokens of an answer of 16 or more: below it, the answer is a loop
MAX_DEGENERATE_SHARE = 0.25


class DegenerateEditError(Steer2EditError):
    """The edit makes the model answer ordinary prompts with empty or looping text."""


def degeneracy(tokenizer: Any, answer: str) -> str | None:
    """Why an answer is degenerate (empty, or one short pattern repeated), or None."""
    tokens = tokenizer(answer, add_special_tokens=False).input_ids
    if not answer.strip() or not tokens:
        return "empty"
    if len(tokens) >= 16 and len(set(tokens)) / len(tokens) < MIN_DISTINCT_SHARE:
        return "looping"
    return None


def check_sanity(model: Any, tokenizer: Any, prompts: Sequence[str], *, max_new_tokens: int = 32) -> list[str]:
    """Greedy answers of the edited PeftModel to ``prompts``; raises DegenerateEditError when the edit makes over a
    quarter of them degenerate (answers the base model already gets wrong do not count)."""
    answers = generate_responses(model, tokenizer, prompts, max_new_tokens=max_new_tokens, show_progress=False)
    with model.disable_adapter():
        base = generate_responses(model, tokenizer, prompts, max_new_tokens=max_new_tokens, show_progress=False)
    problems = [
        (prompt, answer, degeneracy(tokenizer, answer))
        for prompt, answer, reference in zip(prompts, answers, base)
        if degeneracy(tokenizer, reference) is None
    ]
    bad = [(p, a, why) for p, a, why in problems if why]
    if len(bad) > MAX_DEGENERATE_SHARE * len(prompts):
        prompt, answer, why = bad[0]
        raise DegenerateEditError(
            f"the edit is degenerate: {len(bad)} of {len(prompts)} ordinary prompts get empty or looping answers "
            f"(e.g. {prompt!r} -> {answer[:80]!r}, {why}); lower the KL budget or edit fewer components"
        )
    return answers
