"""Teacher-forced likelihoods of responses: per-token log-probabilities, KL from a reference, perplexity.

Cheap (forward passes only, no generation), so calibration and evaluation both measure utility with them.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterator, Sequence
from contextlib import AbstractContextManager, nullcontext
from typing import Any

import torch

from .architectures import input_device
from .tokens import EncodedExample, Exchange, collate, encode_example, pad_token_id


def response_batches(
    tokenizer: Any, prompts: Sequence[str], responses: Sequence[str], batch_size: int, system_prompt: str | None
) -> Iterator[tuple[torch.Tensor, ...]]:
    pad_id = pad_token_id(tokenizer)
    encoded = [
        encode_example(tokenizer, Exchange(p, r), system_prompt, where=f"pair {i}")
        for i, (p, r) in enumerate(zip(prompts, responses))
    ]
    for start in range(0, len(encoded), batch_size):
        yield collate(encoded[start : start + batch_size], pad_id, "right")


def response_log_probs(model: Any, batch: tuple[torch.Tensor, ...]) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Log-distributions predicting each response token [N, vocab], the tokens [N], their rows [N]."""
    input_ids, attention_mask, position_ids, response_mask = batch
    device = input_device(model)
    logits = model(
        input_ids=input_ids.to(device), attention_mask=attention_mask.to(device), position_ids=position_ids.to(device)
    ).logits.float()
    predicted = response_mask[:, 1:].to(device)  # token t is predicted at position t - 1
    log_probs = torch.log_softmax(logits[:, :-1][predicted], dim=-1)
    rows = torch.arange(input_ids.shape[0], device=device)[:, None].expand_as(predicted)[predicted]
    return log_probs, input_ids[:, 1:].to(device)[predicted], rows


@torch.no_grad()
def mean_token_kl(
    model: Any,
    tokenizer: Any,
    prompts: Sequence[str],
    responses: Sequence[str],
    *,
    edited: Callable[[], AbstractContextManager[Any]] = nullcontext,
    reference: Callable[[], AbstractContextManager[Any]] = nullcontext,
    reference_model: Any | None = None,
    batch_size: int = 8,
    system_prompt: str | None = None,
) -> float:
    """Mean over response tokens of KL(reference || edited) between next-token distributions.

    ``edited`` and ``reference`` make the contexts in which ``model`` acts as each, e.g.
    ``reference=peft_model.disable_adapter`` or ``edited=lambda: steer(model, vectors, 4.0)``.
    ``reference_model`` (default: ``model``) is the model the reference distributions come from.
    """
    reference_model = model if reference_model is None else reference_model
    total, count = 0.0, 0
    for batch in response_batches(tokenizer, prompts, responses, batch_size, system_prompt):
        with reference():
            reference_log_probs, _, _ = response_log_probs(reference_model, batch)
        with edited():
            edited_log_probs, _, _ = response_log_probs(model, batch)
        kl = _token_kl(reference_log_probs, edited_log_probs)
        total += float(kl.sum())
        count += kl.numel()
    return total / count


def _token_kl(reference_log_probs: torch.Tensor, edited_log_probs: torch.Tensor) -> torch.Tensor:
    edited_log_probs = edited_log_probs.to(reference_log_probs.device)
    return (reference_log_probs.exp() * (reference_log_probs - edited_log_probs)).sum(-1)


class KLMeter:
    """``mean_token_kl`` against fixed reference distributions, computed once and reused by every measurement.

    A search that measures many candidate edits (calibration, matching a steering strength) then runs one forward
    pass per candidate instead of two. The distributions are kept when they fit in ``max_cached_bytes`` (float32,
    tokens x vocabulary); otherwise they are recomputed each time, with the same result.
    """

    def __init__(
        self,
        model: Any,
        tokenizer: Any,
        prompts: Sequence[str],
        responses: Sequence[str],
        *,
        reference: Callable[[], AbstractContextManager[Any]] = nullcontext,
        batch_size: int = 16,
        system_prompt: str | None = None,
        max_cached_bytes: int = 2**31,
    ) -> None:
        self.model, self.reference = model, reference
        self.batches = list(response_batches(tokenizer, prompts, responses, batch_size, system_prompt))
        tokens = sum(int(batch[3][:, 1:].sum()) for batch in self.batches)
        vocabulary = int(model.get_output_embeddings().weight.shape[0])
        self.cached: list[torch.Tensor] | None = None
        if tokens * vocabulary * 4 <= max_cached_bytes:
            with torch.no_grad(), reference():
                self.cached = [response_log_probs(model, batch)[0] for batch in self.batches]

    @torch.no_grad()
    def __call__(
        self, model: Any | None = None, edited: Callable[[], AbstractContextManager[Any]] = nullcontext
    ) -> float:
        """Mean per-token KL(reference || ``model`` in the ``edited`` context); ``model`` defaults to the reference's."""
        model = self.model if model is None else model
        total, count = 0.0, 0
        for index, batch in enumerate(self.batches):
            if self.cached is not None:
                reference_log_probs = self.cached[index]
            else:
                with self.reference():
                    reference_log_probs = response_log_probs(self.model, batch)[0]
            with edited():
                edited_log_probs = response_log_probs(model, batch)[0]
            kl = _token_kl(reference_log_probs, edited_log_probs)
            total += float(kl.sum())
            count += kl.numel()
        return total / count


@torch.no_grad()
def perplexity(model: Any, tokenizer: Any, texts: Sequence[str], *, batch_size: int = 8) -> float:
    """exp(mean negative log-likelihood) of every token of ``texts`` after the first."""
    pad_id = pad_token_id(tokenizer)
    encoded = [EncodedExample(list(tokenizer(text).input_ids), 1) for text in texts]
    nll, count = 0.0, 0
    for start in range(0, len(encoded), batch_size):
        batch = collate(encoded[start : start + batch_size], pad_id, "right")
        log_probs, targets, _ = response_log_probs(model, batch)
        nll -= float(log_probs.gather(-1, targets[:, None]).sum())
        count += targets.numel()
    return math.exp(nll / count)
