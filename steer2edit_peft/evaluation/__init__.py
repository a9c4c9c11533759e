"""Evaluation: batched greedy generation, attribute metrics (refusal, length, TruthfulQA MC) and utility (KL, perplexity)."""

from ..core.generation import Sampling, generate_responses, sample_responses
from ..core.judges import ReferenceRefusalMatcher, RefusalMatcher
from .metrics import mean_token_kl, perplexity, refusal_rate, response_lengths, truthfulqa_mc

__all__ = [
    "ReferenceRefusalMatcher",
    "RefusalMatcher",
    "Sampling",
    "generate_responses",
    "mean_token_kl",
    "perplexity",
    "refusal_rate",
    "response_lengths",
    "sample_responses",
    "truthfulqa_mc",
]
