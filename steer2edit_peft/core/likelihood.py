"""Teacher-forced likelihoods of responses: per-token log-probabilities, KL from a reference, perplexity.

Cheap (forward passes only, no generation), so calibration and evaluation both measure utility with them.
"""

from __future__ import annotations

import math
import os
from collections.abc import Callable, Iterator, Sequence
from contextlib import AbstractContextManager, contextmanager, nullcontext, suppress
from typing import Any

import torch
from torch import nn

from .architectures import StopForward, decoder_model, input_device
from .errors import Steer2EditError
from .tokens import EncodedExample, Exchange, collate, encode_example, encode_prompt, pad_token_id


def response_batches(
    tokenizer: Any,
    prompts: Sequence[str],
    responses: Sequence[str],
    batch_size: int,
    system_prompt: str | None,
    *,
    by_length: bool = False,
) -> Iterator[tuple[torch.Tensor, ...]]:
    """Right-padded batches of prompt + response, in the given order (``by_length``: similar lengths together, for
    less padding, where only sums over every token are wanted)."""
    pad_id = pad_token_id(tokenizer)
    encoded = [
        encode_example(tokenizer, Exchange(p, r), system_prompt, where=f"pair {i}")
        for i, (p, r) in enumerate(zip(prompts, responses))
    ]
    if by_length:
        encoded.sort(key=lambda item: len(item.input_ids))
    for start in range(0, len(encoded), batch_size):
        yield collate(encoded[start : start + batch_size], pad_id, "right")


def _answer_log_probs(model: Any, batch: tuple[torch.Tensor, ...]) -> torch.Tensor:
    """The log-probability of each answer token of the batch [N]."""
    log_probs, answer, _ = response_log_probs(model, batch)
    return log_probs.gather(-1, answer[:, None]).squeeze(-1)


def response_log_probs(
    model: Any, batch: tuple[torch.Tensor, ...], hidden_states: torch.Tensor | None = None
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Log-distributions predicting each response token [N, vocab], the tokens [N], their rows [N].

    ``hidden_states``: the batch's hidden states where the model's decoder layers begin (see ``_layers_from``),
    fed in place of the token embeddings."""
    input_ids, attention_mask, position_ids, response_mask = batch
    device = input_device(model)
    tokens = {"input_ids": input_ids.to(device)} if hidden_states is None else {"inputs_embeds": hidden_states}
    logits = model(**tokens, attention_mask=attention_mask.to(device), position_ids=position_ids.to(device)).logits
    logits = logits.float()
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


def _departure(tokenizer: Any, prompt_ids: list[int], answer: str, reference: str) -> tuple[EncodedExample, int]:
    """Prompt + answer tokens, and the index of the first answer token that departs from ``reference``. Found in the
    text, not the tokens: an answer re-encoded from text can split what generation wrote as one token. An answer
    that stops where the reference goes on departs at its end (an end-of-sequence token is added)."""
    shared = len(os.path.commonprefix([answer, reference]))
    ids = list(tokenizer(answer, add_special_tokens=False).input_ids)
    if len(answer) <= shared:
        ids.append(tokenizer.eos_token_id if tokenizer.eos_token_id is not None else pad_token_id(tokenizer))
    first = next((end - 1 for end in range(1, len(ids)) if len(tokenizer.decode(ids[:end])) > shared), len(ids) - 1)
    return EncodedExample(prompt_ids + ids, len(prompt_ids)), first


@torch.no_grad()
def departure_ranks(
    model: Any,
    tokenizer: Any,
    prompts: Sequence[str],
    answers: Sequence[str],
    reference_answers: Sequence[str],
    *,
    context: Callable[[], AbstractContextManager[Any]] = nullcontext,
    batch_size: int = 16,
    system_prompt: str | None = None,
) -> list[int]:
    """Per answer, the worst rank ``model`` (inside ``context``) gives a token of the answer from where it departs
    from the reference answer to the same prompt on: 1 for an answer equal to it, k when one of those tokens had
    k - 1 more likely alternatives. A token right after a whitespace-only token is not ranked: re-encoding splits
    whitespace runs that generation wrote as one token ("\n\n" -> "\n", "\n"), which misleads the next prediction."""
    if not (len(prompts) == len(answers) == len(reference_answers)):
        raise ValueError("departure_ranks needs one answer and one reference answer per prompt")
    ranks = [1] * len(answers)
    departing = [i for i, (answer, reference) in enumerate(zip(answers, reference_answers)) if answer != reference]
    pad_id = pad_token_id(tokenizer)
    for start in range(0, len(departing), batch_size):
        rows = departing[start : start + batch_size]
        prompt_ids = [encode_prompt(tokenizer, prompts[i], system_prompt) for i in rows]
        found = [_departure(tokenizer, ids, answers[i], reference_answers[i]) for ids, i in zip(prompt_ids, rows)]
        batch = collate([item for item, _ in found], pad_id, "right")
        with context():
            log_probs, tokens, batch_rows = response_log_probs(model, batch)
        token_ranks = 1 + (log_probs > log_probs.gather(-1, tokens[:, None])).sum(-1)
        for row, (i, (item, first)) in enumerate(zip(rows, found)):
            answer_ids = item.input_ids[item.response_start :]
            ranked = [
                int(rank)
                for j, rank in enumerate(token_ranks[batch_rows == row].tolist())
                if j >= first and not (j > 0 and tokenizer.decode(answer_ids[j - 1 : j]).isspace())
            ]
            ranks[i] = max(ranked, default=1)
    return ranks


def _token_kl(reference_log_probs: torch.Tensor, edited_log_probs: torch.Tensor) -> torch.Tensor:
    edited_log_probs = edited_log_probs.to(reference_log_probs.device)
    return (reference_log_probs.exp() * (reference_log_probs - edited_log_probs)).sum(-1)


def _decoder_layers(model: Any) -> tuple[Any, str] | None:
    """The module holding the decoder layers and the name of their ModuleList, where the model has them."""
    base: Any = decoder_model(model)
    inner = base.get_decoder() if hasattr(base, "get_decoder") else None
    for name in ("layers", "h"):
        if isinstance(getattr(inner, name, None), nn.ModuleList):
            return inner, name
    return None


@contextmanager
def _layers_from(model: Any, first: int) -> Iterator[None]:
    """The model with its decoder layers before ``first`` taken out, so that a forward pass fed the hidden states
    at layer ``first``'s input (as ``inputs_embeds``) runs only the layers from it on."""
    found = _decoder_layers(model)
    assert found is not None
    inner, name = found
    layers = getattr(inner, name)
    setattr(inner, name, nn.ModuleList(list(layers)[first:]))
    try:
        yield
    finally:
        setattr(inner, name, layers)


def _hidden_states_at(model: Any, batch: tuple[torch.Tensor, ...], layer: int) -> torch.Tensor:
    """The hidden states entering decoder layer ``layer`` of ``model`` on one batch."""
    found = _decoder_layers(model)
    assert found is not None
    recorded: list[torch.Tensor] = []

    def record(module: nn.Module, args: tuple[Any, ...], kwargs: dict[str, Any]) -> None:
        recorded.append((args[0] if args else kwargs["hidden_states"]).detach().clone())
        raise StopForward

    handle = getattr(found[0], found[1])[layer].register_forward_pre_hook(record, with_kwargs=True)
    input_ids, attention_mask, position_ids, _ = batch
    device = input_device(model)
    try:
        with suppress(StopForward):
            model(
                input_ids=input_ids.to(device),
                attention_mask=attention_mask.to(device),
                position_ids=position_ids.to(device),
            )
    finally:
        handle.remove()
    return recorded[0]


class KLMeter:
    """``mean_token_kl`` against fixed reference distributions, computed once and reused by every measurement.

    A search that measures many candidate edits (calibration, matching a steering strength) then runs one forward
    pass per candidate instead of two. The distributions are kept when they fit in ``max_cached_bytes`` (float32,
    tokens x vocabulary); otherwise they are recomputed each time, with the same result. Answers of similar lengths
    are batched together (less padding; the mean over tokens does not depend on the order).

    ``meter(model, from_layer=L)`` measures an edit that changes nothing below decoder layer L: the reference's
    hidden states at layer L are recorded once, and each measurement runs the layers from L on. That holds only
    where feeding those hidden states in reproduces the reference's own distributions, which is checked on the
    first batch when they are recorded; where it does not (an architecture that adds positions to its inputs,
    say), the whole model runs, with the same result.
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
        max_cached_bytes: int = 2**33,
    ) -> None:
        self.model, self.reference, self.answers = model, reference, len(prompts)
        self.batches = list(response_batches(tokenizer, prompts, responses, batch_size, system_prompt, by_length=True))
        tokens = sum(int(batch[3][:, 1:].sum()) for batch in self.batches)
        vocabulary = int(model.get_output_embeddings().weight.shape[0])
        self.cached: list[torch.Tensor] | None = None
        self.hidden_states: dict[int, list[torch.Tensor] | None] = {}  # layer -> per batch; None: not exact there
        self.fingerprint: torch.Tensor | None = None  # the first batch's answer-token log-probs, uncached
        with torch.no_grad(), reference():
            if tokens * vocabulary * 4 <= max_cached_bytes:
                self.cached = [response_log_probs(model, batch)[0] for batch in self.batches]
            else:
                self.fingerprint = _answer_log_probs(model, self.batches[0])

    def _reference_log_probs(self, index: int) -> torch.Tensor:
        if self.cached is not None:
            return self.cached[index]
        with self.reference():
            log_probs, answer, _ = response_log_probs(self.model, self.batches[index])
        if index == 0 and self.fingerprint is not None:
            # Uncached, the reference is recomputed on the model as it is now: an adapter added to it in place
            # since (get_peft_model changes the model it wraps) would make it the edit's own, and every KL zero.
            now = log_probs.gather(-1, answer[:, None]).squeeze(-1)
            if not torch.allclose(now, self.fingerprint.to(now.device), atol=1e-4):
                raise Steer2EditError(
                    "the KL meter's reference model has changed since the meter was made (an adapter added to it in "
                    "place?) and its distributions were too large to keep (max_cached_bytes); make the meter with "
                    "reference=peft_model.disable_adapter, or with fewer reference answers"
                )
        return log_probs

    def _hidden_states_from(self, layer: int) -> list[torch.Tensor] | None:
        """The reference's hidden states at ``layer``'s input per batch, once; None where feeding them in does not
        give the reference's distributions back, or where those are not cached (they are computed on the whole
        model)."""
        if layer not in self.hidden_states:
            states: list[torch.Tensor] | None = None
            if self.cached is not None and _decoder_layers(self.model) is not None:
                with self.reference():  # the model as it is now: an edit above ``layer`` may be in place
                    states = [_hidden_states_at(self.model, batch, layer) for batch in self.batches]
                    # Whether feeding them in reproduces the whole model is a property of the architecture (where
                    # positions enter), so one batch tells; the whole model's distributions of every batch would
                    # cost a full pass.
                    whole = response_log_probs(self.model, self.batches[0])
                    with _layers_from(self.model, layer):
                        fed = response_log_probs(self.model, self.batches[0], states[0])
                    if not torch.allclose(fed[0], whole[0], atol=1e-4):
                        states = None
            self.hidden_states[layer] = states
        return self.hidden_states[layer]

    @torch.no_grad()
    def __call__(
        self,
        model: Any | None = None,
        edited: Callable[[], AbstractContextManager[Any]] = nullcontext,
        *,
        from_layer: int = 0,
    ) -> float:
        """Mean per-token KL(reference || ``model`` in the ``edited`` context); ``model`` defaults to the reference's.

        ``from_layer``: the first decoder layer the edit changes (the layers below it must be the reference's)."""
        model = self.model if model is None else model
        states = self._hidden_states_from(from_layer) if from_layer > 0 else None
        total, count = 0.0, 0
        for index, batch in enumerate(self.batches):
            reference = self._reference_log_probs(index)  # outside the edit's context: uncached, it is recomputed
            hidden = states[index] if states is not None else None
            with _layers_from(model, from_layer) if states is not None else nullcontext(), edited():
                edited_log_probs = response_log_probs(model, batch, hidden)[0]
            kl = _token_kl(reference, edited_log_probs)
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
