"""Batched generation with left padding: greedy, or sampled with one seeded random stream per (prompt, sample).

Used by probe generation (the model's own responses) and by evaluation. Sampling draws each row's tokens from
its own generator, seeded by the seed, the prompt text and the sample number, so a prompt gets the same samples
whether it is generated alone or in any batch.
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import torch
from tqdm.auto import tqdm

from .architectures import input_device
from .errors import Steer2EditError
from .tokens import encode_prompt, pad_token_id


@dataclass(frozen=True)
class Sampling:
    """Sampled decoding: temperature, nucleus (top_p) and top_k, with a seed."""

    temperature: float = 1.0
    top_p: float = 1.0
    top_k: int = 0  # 0: no top-k cut
    seed: int = 0

    def __post_init__(self) -> None:
        if not self.temperature > 0:
            raise Steer2EditError(f"sampling temperature must be positive, got {self.temperature}")
        if not 0 < self.top_p <= 1:
            raise Steer2EditError(f"top_p must lie in (0, 1], got {self.top_p}")
        if self.top_k < 0:
            raise Steer2EditError(f"top_k must be >= 0, got {self.top_k}")


def row_seed(seed: int, prompt: str, sample: int) -> int:
    """The seed of one (prompt, sample) row: independent of batch composition and order."""
    digest = hashlib.sha256(f"{seed}\0{sample}\0{prompt}".encode()).digest()
    return int.from_bytes(digest[:8], "little") & ((1 << 63) - 1)


NUCLEUS_CANDIDATES = 512  # the nucleus is looked for among this many tokens first; the full sort is the fallback


def sample_next_tokens(scores: torch.Tensor, sampling: Sampling, generators: Sequence[torch.Generator]) -> torch.Tensor:
    """One token per row of ``scores`` [rows, vocab], by inverse-CDF sampling with one uniform draw per row.

    Each row's draw comes from that row's generator, so a row's tokens do not depend on the other rows.
    """
    logits = scores.float() / sampling.temperature
    if sampling.top_k:
        kth = torch.topk(logits, min(sampling.top_k, logits.shape[-1]), dim=-1).values[:, -1:]
        logits = logits.masked_fill(logits < kth, float("-inf"))
    probabilities = torch.softmax(logits, dim=-1)
    uniforms = torch.cat([torch.rand(1, generator=generator) for generator in generators]).to(scores.device)
    if sampling.top_p < 1:
        # Only the smallest set of most likely tokens holding top_p of the mass may be drawn.
        candidates, tokens = probabilities.topk(min(NUCLEUS_CANDIDATES, probabilities.shape[-1]), dim=-1)
        if not bool((candidates.sum(-1) >= sampling.top_p).all()):
            candidates, tokens = probabilities.sort(dim=-1, descending=True)
        before = candidates.cumsum(-1) - candidates  # mass of the more likely tokens
        candidates = candidates.masked_fill(before >= sampling.top_p, 0.0)
    else:
        candidates, tokens = probabilities, None
    cdf = candidates.cumsum(-1)
    picked = torch.searchsorted(cdf, (uniforms * cdf[:, -1])[:, None], right=True).clamp(max=cdf.shape[-1] - 1)
    return (picked if tokens is None else tokens.gather(-1, picked)).squeeze(-1)


class _SeededSampler:
    """A logits processor that samples each row itself and leaves only that token for greedy search to pick."""

    def __init__(self, sampling: Sampling, seeds: Sequence[int]) -> None:
        self.sampling = sampling
        self.generators = [torch.Generator().manual_seed(seed) for seed in seeds]

    def __call__(self, input_ids: torch.Tensor, scores: torch.Tensor) -> torch.Tensor:
        tokens = sample_next_tokens(scores, self.sampling, self.generators)
        forced = torch.full_like(scores, float("-inf"))
        return forced.scatter(-1, tokens[:, None], 0.0)


def _left_padded(rows: list[list[int]], pad_id: int, device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
    width = max(len(ids) for ids in rows)
    input_ids = torch.tensor([[pad_id] * (width - len(ids)) + ids for ids in rows], device=device)
    attention_mask = torch.tensor([[0] * (width - len(ids)) + [1] * len(ids) for ids in rows], device=device)
    return input_ids, attention_mask


@torch.no_grad()
def _generate(
    model: Any,
    tokenizer: Any,
    rows: list[tuple[str, int]],
    *,
    max_new_tokens: int,
    batch_size: int,
    system_prompt: str | None,
    sampling: Sampling | None,
    show_progress: bool,
    description: str,
    response_prefix: str = "",
) -> list[str]:
    from transformers import LogitsProcessorList

    if max_new_tokens < 1 or batch_size < 1:
        raise Steer2EditError(f"max_new_tokens and batch_size must be positive, got {max_new_tokens}, {batch_size}")
    pad_id = pad_token_id(tokenizer)
    prefix = list(tokenizer(response_prefix, add_special_tokens=False).input_ids) if response_prefix else []
    encoded = {prompt: encode_prompt(tokenizer, prompt, system_prompt) + prefix for prompt, _ in rows}
    device = input_device(model)
    responses: list[str] = []
    for start in tqdm(range(0, len(rows), batch_size), desc=description, unit="batch", disable=not show_progress):
        batch = rows[start : start + batch_size]
        input_ids, attention_mask = _left_padded([encoded[prompt] for prompt, _ in batch], pad_id, device)
        processors = LogitsProcessorList()
        if sampling is not None:
            processors.append(_SeededSampler(sampling, [row_seed(sampling.seed, p, s) for p, s in batch]))
        output = model.generate(
            input_ids=input_ids,
            attention_mask=attention_mask,
            max_new_tokens=max_new_tokens,
            do_sample=False,  # sampling, when asked for, happens in the processor above
            num_beams=1,
            logits_processor=processors,
            pad_token_id=pad_id,
        )
        start_of_response = input_ids.shape[1] - len(prefix)  # the prefix is part of the response
        responses += [tokenizer.decode(row[start_of_response:], skip_special_tokens=True).strip() for row in output]
    return responses


def generate_responses(
    model: Any,
    tokenizer: Any,
    prompts: Sequence[str],
    *,
    max_new_tokens: int = 64,
    batch_size: int = 8,
    system_prompt: str | None = None,
    show_progress: bool = True,
) -> list[str]:
    """Greedy responses to ``prompts`` (chat template when the tokenizer has one), in prompt order."""
    return _generate(
        model,
        tokenizer,
        [(prompt, 0) for prompt in prompts],
        max_new_tokens=max_new_tokens,
        batch_size=batch_size,
        system_prompt=system_prompt,
        sampling=None,
        show_progress=show_progress,
        description="generating",
    )


def regrouped(flat: Sequence[str], groups: Sequence[Sequence[Any]]) -> list[list[str]]:
    """``flat`` (answers to every group's prompts, in order) split back into one list per group."""
    answers = iter(flat)
    return [[next(answers) for _ in group] for group in groups]


def sample_responses(
    model: Any,
    tokenizer: Any,
    prompts: Sequence[str],
    *,
    num_samples: int = 1,
    sampling: Sampling | None = None,
    max_new_tokens: int = 64,
    batch_size: int = 8,
    system_prompt: str | None = None,
    response_prefix: str = "",
    show_progress: bool = True,
) -> list[list[str]]:
    """``num_samples`` sampled responses per prompt ([prompt][sample]), reproducible for a given seed.

    ``response_prefix``: every response starts with this text and the model writes the rest.
    """
    if num_samples < 1:
        raise Steer2EditError(f"num_samples must be at least 1, got {num_samples}")
    sampling = sampling or Sampling()
    rows = [(prompt, sample) for prompt in prompts for sample in range(num_samples)]
    flat = _generate(
        model,
        tokenizer,
        rows,
        max_new_tokens=max_new_tokens,
        batch_size=batch_size,
        system_prompt=system_prompt,
        sampling=sampling,
        show_progress=show_progress,
        description="sampling",
        response_prefix=response_prefix,
    )
    return [flat[i * num_samples : (i + 1) * num_samples] for i in range(len(prompts))]
