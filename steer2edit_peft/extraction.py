"""Record mean inputs and outputs of the edited modules over response tokens -> SteeringVectors."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager, suppress
from typing import Any

import torch
from peft import PeftModel
from peft.tuners.tuners_utils import check_target_module_exists
from torch import nn
from tqdm.auto import tqdm

from .architectures import model_signature
from .data import ContrastiveDataset, DataError, EncodedExample, encode_example, pad_token_id
from .tuner import Steer2EditConfig
from .tuner.model import resolve_config
from .vectors import SteeringVectors


class _StopForward(Exception):
    """Raised by the last hook: nothing after the last edited module (final layers, logits) is needed."""


def decoder_model(model: nn.Module) -> nn.Module:
    """The transformers model under any PEFT wrapping (adapter layers stay in place)."""
    return model.get_base_model() if isinstance(model, PeftModel) else model


def input_device(model: nn.Module) -> torch.device:
    """Where input ids must go: the device of the input embeddings (also under a device_map)."""
    base: Any = decoder_model(model)
    return base.get_input_embeddings().weight.device


def edited_modules(model: nn.Module, config: Steer2EditConfig | None = None) -> dict[str, nn.Module]:
    """The modules an edit targets, by name, outermost wrapper first: a LoRA or edit on them counts."""
    base = decoder_model(model)
    config = config if config is not None else Steer2EditConfig()
    resolve_config(config, base)
    modules = {
        name: module
        for name, module in base.named_modules()
        if ".base_layer" not in f".{name}" and check_target_module_exists(config, name) and hasattr(module, "weight")
    }
    if not modules:
        raise ValueError(f"no module of the model matches target_modules={config.target_modules!r}")
    return modules


def context_length(model: nn.Module) -> int | None:
    config = getattr(decoder_model(model), "config", None)
    if config is None:
        return None
    text = config.get_text_config() if hasattr(config, "get_text_config") else config
    return getattr(text, "max_position_embeddings", None) or getattr(text, "n_positions", None)


def encode_dataset(
    tokenizer: Any, dataset: ContrastiveDataset, system_prompt: str | None, max_length: int | None
) -> list[EncodedExample]:
    encoded = []
    for number, example in enumerate(dataset):
        item = encode_example(tokenizer, example, system_prompt, where=f"example {number}")
        if max_length is not None and len(item.input_ids) > max_length:
            raise DataError(
                f"example {number}: prompt + response is {len(item.input_ids)} tokens, longer than the model's "
                f"context of {max_length}"
            )
        encoded.append(item)
    return encoded


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


class _Accumulator:
    """Running float32 sums of module inputs/outputs over response tokens, per class."""

    def __init__(self) -> None:
        self.sums: dict[str, dict[str, torch.Tensor]] = {}
        self._rows: dict[str, torch.Tensor] = {}  # class suffix -> flat indices of its response tokens
        self._on_device: dict[tuple[str, torch.device], torch.Tensor] = {}

    def start_batch(self, positive_rows: torch.Tensor, response_mask: torch.Tensor) -> None:
        positive = positive_rows[:, None] & response_mask
        negative = ~positive_rows[:, None] & response_mask
        self._rows = {"pos": positive.flatten().nonzero().squeeze(-1), "neg": negative.flatten().nonzero().squeeze(-1)}
        self._on_device = {}

    def _indices(self, suffix: str, device: torch.device) -> torch.Tensor:
        key = (suffix, device)
        if key not in self._on_device:
            self._on_device[key] = self._rows[suffix].to(device)
        return self._on_device[key]

    def add(self, name: str, statistic: str, values: torch.Tensor) -> None:
        flat = values.reshape(-1, values.shape[-1])  # [batch * length, features]
        sums = self.sums.setdefault(name, {})
        for suffix in ("pos", "neg"):
            # Gather one class's response tokens; reduce in float32 without a float32 copy of the activations.
            total = flat.index_select(0, self._indices(suffix, values.device)).sum(0, dtype=torch.float32)
            key = f"{statistic}_{suffix}"
            sums[key] = sums[key] + total if key in sums else total


@contextmanager
def _recording_hooks(modules: dict[str, nn.Module], accumulator: _Accumulator) -> Iterator[None]:
    last = list(modules)[-1]
    handles = []

    def make_hook(name: str):
        def hook(module: nn.Module, args: tuple[Any, ...], output: Any) -> None:
            accumulator.add(name, "pre", args[0])
            accumulator.add(name, "post", output[0] if isinstance(output, tuple) else output)
            if name == last:
                raise _StopForward

        return hook

    try:
        for name, module in modules.items():
            handles.append(module.register_forward_hook(make_hook(name)))
        yield
    finally:
        for handle in handles:
            handle.remove()


@torch.no_grad()
def extract_steering_vectors(
    model: nn.Module,
    tokenizer: Any,
    dataset: ContrastiveDataset,
    *,
    config: Steer2EditConfig | None = None,
    batch_size: int = 8,
    padding_side: str = "right",
    system_prompt: str | None = None,
    show_progress: bool = True,
) -> SteeringVectors:
    """Mean input ("pre") and output ("post") of every edited module over response tokens, per class.

    Means are over all response tokens of a class (token-weighted), accumulated in float32 running sums,
    so memory does not grow with the data. The forward pass stops after the last edited module.
    """
    if padding_side not in ("left", "right"):
        raise ValueError(f"padding_side must be 'left' or 'right', got {padding_side!r}")
    if batch_size < 1:
        raise ValueError(f"batch_size must be at least 1, got {batch_size}")
    modules = edited_modules(model, config)
    encoded = encode_dataset(tokenizer, dataset, system_prompt, context_length(model))
    pad_id = pad_token_id(tokenizer)
    labels = torch.tensor([example.positive for example in dataset])
    # Similar lengths together: less padding, fewer wasted tokens.
    order = sorted(range(len(encoded)), key=lambda i: len(encoded[i].input_ids))
    device = input_device(model)
    accumulator = _Accumulator()
    was_training = model.training
    model.eval()
    try:
        with _recording_hooks(modules, accumulator):
            batches = range(0, len(order), batch_size)
            for start in tqdm(batches, desc="extracting", unit="batch", disable=not show_progress):
                rows = order[start : start + batch_size]
                input_ids, attention_mask, position_ids, response_mask = collate(
                    [encoded[i] for i in rows], pad_id, padding_side
                )
                accumulator.start_batch(labels[rows], response_mask)
                with suppress(_StopForward):
                    model(
                        input_ids=input_ids.to(device),
                        attention_mask=attention_mask.to(device),
                        position_ids=position_ids.to(device),
                        use_cache=False,
                    )
    finally:
        model.train(was_training)

    token_counts = {"positive": 0, "negative": 0}
    for i, item in enumerate(encoded):
        token_counts["positive" if dataset[i].positive else "negative"] += len(item.input_ids) - item.response_start
    means: dict[str, dict[str, torch.Tensor]] = {s: {} for s in ("post_pos", "post_neg", "pre_pos", "pre_neg")}
    for name in modules:
        for key, total in accumulator.sums[name].items():
            count = token_counts["positive" if key.endswith("pos") else "negative"]
            means[key][name] = (total / count).cpu()
    base: Any = decoder_model(model)
    return SteeringVectors(
        **means,
        model_name=getattr(getattr(base, "config", None), "_name_or_path", None) or None,
        model_signature=model_signature(base.config) if hasattr(base, "config") else {},
        token_counts=token_counts,
        example_counts={"positive": dataset.num_positive, "negative": dataset.num_negative},
        options={
            "batch_size": batch_size,
            "padding_side": padding_side,
            "system_prompt": system_prompt,
            "dtype": str(next(base.parameters()).dtype),
            "probe_data": dataset.description,
        },
    )
