"""Batched greedy generation with left padding."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
from tqdm.auto import tqdm

from ..data import encode_prompt, pad_token_id
from ..extraction import input_device


@torch.no_grad()
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
    pad_id = pad_token_id(tokenizer)
    encoded = [encode_prompt(tokenizer, prompt, system_prompt) for prompt in prompts]
    device = input_device(model)
    responses: list[str] = []
    for start in tqdm(range(0, len(encoded), batch_size), desc="generating", unit="batch", disable=not show_progress):
        batch = encoded[start : start + batch_size]
        width = max(len(ids) for ids in batch)
        input_ids = torch.tensor([[pad_id] * (width - len(ids)) + ids for ids in batch], device=device)
        attention_mask = torch.tensor([[0] * (width - len(ids)) + [1] * len(ids) for ids in batch], device=device)
        output = model.generate(
            input_ids=input_ids,
            attention_mask=attention_mask,
            max_new_tokens=max_new_tokens,
            do_sample=False,
            pad_token_id=pad_id,
        )
        responses += [tokenizer.decode(row[width:], skip_special_tokens=True).strip() for row in output]
    return responses
