"""Evaluation: batched greedy generation, attribute metrics (refusal, length, TruthfulQA MC) and utility (KL, perplexity)."""

from .generation import generate_responses
from .metrics import (
    RefusalMatcher,
    mean_token_kl,
    perplexity,
    refusal_rate,
    response_lengths,
    truthfulqa_mc,
)

__all__ = [
    "RefusalMatcher",
    "generate_responses",
    "mean_token_kl",
    "perplexity",
    "refusal_rate",
    "response_lengths",
    "truthfulqa_mc",
]
