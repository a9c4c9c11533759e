"""Evaluation: batched greedy generation, attribute metrics (refusal, length, TruthfulQA MC) and utility (KL, perplexity),
jailbreak-style wrappers of report prompts."""

from ..core.generation import Sampling, generate_responses, sample_responses
from ..core.judges import ReferenceRefusalMatcher, RefusalMatcher
from .metrics import mean_token_kl, perplexity, refusal_rate, response_lengths, truthfulqa_mc
from .wrappers import JAILBREAK_FORMS, wrap

__all__ = [
    "JAILBREAK_FORMS",
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
    "wrap",
]
