"""Module inputs read token by token: at each prompt's last token (where the answer is decided), and at every token
of a set of answers that predicts the next answer token. Selectivity tables and fitted gate detectors read them."""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator, Sequence
from contextlib import contextmanager, suppress
from typing import Any

import torch
from torch import nn
from tqdm.auto import tqdm

from .architectures import StopForward, decoder_model, input_device
from .likelihood import response_batches
from .tokens import EncodedExample, collate, encode_prompt, pad_token_id


@contextmanager
def _reading(
    model: nn.Module, modules: Sequence[str], select: Callable[[torch.Tensor], torch.Tensor]
) -> Iterator[dict[str, list[torch.Tensor]]]:
    """Hooks that keep ``select(input)`` of every module (float32, on the CPU) and stop the forward pass once each
    module has been read: the layers after the last one are not run."""
    named = dict(decoder_model(model).named_modules())
    captured: dict[str, list[torch.Tensor]] = {name: [] for name in modules}

    def hook(name: str) -> Callable[..., None]:
        def read(module: nn.Module, args: tuple[Any, ...]) -> None:
            captured[name].append(select(args[0]).float().cpu())
            if len({len(values) for values in captured.values()}) == 1:  # every module read for this batch
                raise StopForward

        return read

    handles = [named[name].register_forward_pre_hook(hook(name)) for name in modules]
    try:
        yield captured
    finally:
        for handle in handles:
            handle.remove()


def _run(model: nn.Module, batches: Iterable[tuple[torch.Tensor, ...]], before: Callable[[Any], None]) -> None:
    device = input_device(model)
    for batch in batches:
        before(batch)
        input_ids, attention_mask, position_ids = (tensor.to(device) for tensor in batch[:3])
        with suppress(StopForward):
            model(input_ids=input_ids, attention_mask=attention_mask, position_ids=position_ids)


@torch.no_grad()
def last_token_inputs(
    model: nn.Module,
    tokenizer: Any,
    prompts: Sequence[str],
    modules: Sequence[str],
    system_prompt: str | None = None,
    batch_size: int = 16,
    show_progress: bool = False,
) -> dict[str, torch.Tensor]:
    """Each module's input at the last prompt token (where the answer is decided), [prompts, in], float32."""
    encoded = [EncodedExample(ids, len(ids)) for ids in (encode_prompt(tokenizer, p, system_prompt) for p in prompts)]
    pad = pad_token_id(tokenizer)
    batches = (
        collate(encoded[start : start + batch_size], pad, "left") for start in range(0, len(encoded), batch_size)
    )
    total = -(-len(encoded) // batch_size)
    with _reading(model, modules, lambda x: x[:, -1]) as captured:
        progress = tqdm(batches, total=total, desc="reading prompts", unit="batch", disable=not show_progress)
        _run(model, progress, lambda batch: None)
    return {name: torch.cat(values) for name, values in captured.items()}


@torch.no_grad()
def answer_inputs(
    model: nn.Module,
    tokenizer: Any,
    prompts: Sequence[str],
    responses: Sequence[str],
    modules: Sequence[str],
    system_prompt: str | None = None,
    batch_size: int = 16,
    show_progress: bool = False,
) -> tuple[dict[str, torch.Tensor], dict[str, torch.Tensor]]:
    """Each module's input at every token that predicts an answer token (each prompt's last token and the answer
    but its last token), [tokens, in] float32; and, from the same pass, its rows at each prompt's last token (where
    the answer is decided), [prompts, in]."""
    predicting: dict[str, torch.Tensor] = {}
    decisions: list[torch.Tensor] = []  # per batch: which of the rows read are a prompt's last token

    def mark(batch: tuple[torch.Tensor, ...]) -> None:
        answer = batch[3]
        mask = torch.cat([answer[:, 1:], torch.zeros_like(answer[:, :1])], 1).bool()
        predicting["mask"] = mask
        decisions.append((mask & (mask.cumsum(1) == 1))[mask])

    batches = response_batches(tokenizer, prompts, responses, batch_size, system_prompt)
    total = -(-len(prompts) // batch_size)
    with _reading(model, modules, lambda x: x[predicting["mask"].to(x.device)]) as captured:
        progress = tqdm(batches, total=total, desc="reading answers", unit="batch", disable=not show_progress)
        _run(model, progress, mark)
    answers = {name: torch.cat(values) for name, values in captured.items()}
    first = torch.cat(decisions) if decisions else torch.zeros(0, dtype=torch.bool)
    return answers, {name: rows[first] for name, rows in answers.items()}
