"""Attribute metrics: refusal rate, response length, TruthfulQA MC1/MC2 (KL and perplexity: see likelihood)."""

from __future__ import annotations

import json
from collections.abc import Callable, Sequence
from contextlib import AbstractContextManager, nullcontext
from pathlib import Path
from typing import Any

import torch

from ..core.judges import RefusalJudge, RefusalMatcher
from ..core.likelihood import departure_ranks, mean_token_kl, perplexity, response_batches, response_log_probs

__all__ = ["changed_share", "mean_token_kl", "perplexity", "refusal_rate", "response_lengths", "truthfulqa_mc"]

# An answer's meaning changed when it departs from the base model's answer at a token the base model ranks below its
# first CHANGED_RANK choices: a turn it would not have taken (a refusal, another topic), not a near-tie that rewords.
# Chosen by reading every departure of one edit's answers (BENCHMARKS.md, "Answers whose meaning changed").
CHANGED_RANK = 10


def refusal_rate(prompts: Sequence[str], responses: Sequence[str], judge: RefusalJudge | None = None) -> float:
    """Share of responses the judge calls refusals."""
    if len(prompts) != len(responses) or not responses:
        raise ValueError("refusal_rate needs one response per prompt, and at least one")
    judge = judge or RefusalMatcher()
    return sum(judge(p, r) for p, r in zip(prompts, responses)) / len(responses)


def changed_share(
    reference: Any,
    tokenizer: Any,
    prompts: Sequence[str],
    responses: Sequence[str],
    reference_responses: Sequence[str],
    *,
    context: Callable[[], AbstractContextManager[Any]] = nullcontext,
    batch_size: int = 16,
    system_prompt: str | None = None,
) -> float:
    """Share of ``responses`` whose meaning changed from the ``reference`` model's own ``reference_responses``:
    the response departs from the reference's at a token the reference model (inside ``context``, e.g. its adapter
    disabled) ranks below its first CHANGED_RANK choices. Judges no phrase, so it sees a derailed answer as well as
    a refusal; an answer reworded at a near-tie does not count."""
    if not responses:
        raise ValueError("changed_share needs at least one response")
    ranks = departure_ranks(
        reference,
        tokenizer,
        prompts,
        responses,
        reference_responses,
        context=context,
        batch_size=batch_size,
        system_prompt=system_prompt,
    )
    return sum(rank > CHANGED_RANK for rank in ranks) / len(ranks)


def response_lengths(tokenizer: Any, responses: Sequence[str]) -> list[int]:
    """Length of each response in tokens."""
    return [len(tokenizer(r, add_special_tokens=False).input_ids) for r in responses]


@torch.no_grad()
def truthfulqa_mc(
    model: Any,
    tokenizer: Any,
    mc_task_path: str | Path,
    *,
    questions: Sequence[int] | None = None,
    batch_size: int = 8,
    system_prompt: str | None = None,
) -> dict[str, float]:
    """TruthfulQA multiple choice from ``mc_task.json``: MC1 accuracy and MC2 true-probability mass.

    Each answer is scored by the summed log-probability of its tokens after the question. MC1: the single
    true answer scores highest among the mc1 choices. MC2: normalised probability of the true mc2 answers.
    ``best_vs_first_incorrect``: the reference code's metric, the share of questions whose best answer (mc1's
    true one) scores above the first incorrect mc1 answer. Empty answer choices (the file has a few) cannot be scored and are left out.
    """
    items = json.loads(Path(mc_task_path).read_text(encoding="utf-8"))
    chosen = [
        {
            "question": item["question"],
            **{
                key: {a: label for a, label in item[key].items() if a.strip()} for key in ("mc1_targets", "mc2_targets")
            },
        }
        for item in (items[i] for i in (questions if questions is not None else range(len(items))))
    ]
    pairs = [
        (item["question"], answer) for item in chosen for key in ("mc1_targets", "mc2_targets") for answer in item[key]
    ]
    scores: list[float] = []
    for batch in response_batches(tokenizer, [p for p, _ in pairs], [a for _, a in pairs], batch_size, system_prompt):
        log_probs, targets, rows = response_log_probs(model, batch)
        token_scores = log_probs.gather(-1, targets[:, None]).squeeze(-1)
        sums = torch.zeros(batch[0].shape[0], device=token_scores.device).index_add_(0, rows, token_scores)
        scores += sums.tolist()
    mc1, mc2, paired, position = [], [], [], 0
    for item in chosen:
        for key in ("mc1_targets", "mc2_targets"):
            labels = list(item[key].values())
            values = torch.tensor(scores[position : position + len(labels)], dtype=torch.float64)
            position += len(labels)
            truth = torch.tensor(labels, dtype=torch.bool)
            if key == "mc1_targets":
                mc1.append(float(truth[int(values.argmax())]))
                first_incorrect = int((~truth).nonzero()[0]) if bool((~truth).any()) else None
                if first_incorrect is not None and bool(truth.any()):
                    paired.append(float(values[int(truth.nonzero()[0])] > values[first_incorrect]))
            else:
                probabilities = torch.softmax(values, 0)
                mc2.append(float(probabilities[truth].sum()))
    return {
        "mc1": sum(mc1) / len(mc1),
        "mc2": sum(mc2) / len(mc2),
        "best_vs_first_incorrect": sum(paired) / len(paired) if paired else float("nan"),
        "questions": float(len(chosen)),
    }
