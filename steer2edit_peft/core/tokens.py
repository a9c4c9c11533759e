"""Prompt and response tokenisation: through the chat template, with the response tokens known exactly."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Protocol

import torch

from .errors import DataError


class PromptAndResponse(Protocol):
    """Anything with a prompt and a response (a ContrastiveExample, for one)."""

    @property
    def prompt(self) -> str: ...

    @property
    def response(self) -> str: ...


@dataclass(frozen=True)
class Exchange:
    """A prompt and one response to it."""

    prompt: str
    response: str


@dataclass(frozen=True)
class EncodedExample:
    """Token ids of prompt + response, and where the response starts."""

    input_ids: list[int]
    response_start: int


def pad_token_id(tokenizer: Any) -> int:
    """The id used for padding: the tokenizer's pad token, else its end-of-sequence token, else 0."""
    if tokenizer.pad_token_id is not None:
        return int(tokenizer.pad_token_id)
    return int(tokenizer.eos_token_id or 0)


def encode_prompt(tokenizer: Any, prompt: str, system_prompt: str | None = None) -> list[int]:
    """Prompt token ids: through the chat template (with generation prompt) when there is one."""
    if getattr(tokenizer, "chat_template", None):
        messages = ([{"role": "system", "content": system_prompt}] if system_prompt else []) + [
            {"role": "user", "content": prompt}
        ]
        encoded = tokenizer.apply_chat_template(messages, add_generation_prompt=True, tokenize=True)
        if isinstance(encoded, dict) or hasattr(encoded, "keys"):
            encoded = encoded["input_ids"]
        return list(encoded)
    text = f"{system_prompt}\n\n{prompt}" if system_prompt else prompt
    return list(tokenizer(text).input_ids)


def encode_example(
    tokenizer: Any, example: PromptAndResponse, system_prompt: str | None = None, where: str = "example"
) -> EncodedExample:
    """Prompt and response tokenised apart, so the response tokens are known exactly."""
    prompt_ids = encode_prompt(tokenizer, example.prompt, system_prompt)
    response_ids = list(tokenizer(example.response, add_special_tokens=False).input_ids)
    if not response_ids:
        raise DataError(f"{where}: the response {example.response!r} tokenises to nothing")
    return EncodedExample(prompt_ids + response_ids, len(prompt_ids))


def collate(
    batch: list[EncodedExample], pad_id: int, padding_side: str
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """input_ids, attention_mask, position_ids and response_mask [batch, length], padded on one side."""
    length = max(len(item.input_ids) for item in batch)
    shape = (len(batch), length)
    input_ids = torch.full(shape, pad_id, dtype=torch.long)
    attention_mask = torch.zeros(shape, dtype=torch.long)
    response_mask = torch.zeros(shape, dtype=torch.bool)
    for row, item in enumerate(batch):
        size = len(item.input_ids)
        start = length - size if padding_side == "left" else 0
        input_ids[row, start : start + size] = torch.tensor(item.input_ids)
        attention_mask[row, start : start + size] = 1
        response_mask[row, start + item.response_start : start + size] = True
    position_ids = (attention_mask.cumsum(-1) - 1).clamp(min=0)
    return input_ids, attention_mask, position_ids, response_mask
