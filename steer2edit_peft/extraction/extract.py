"""Record mean inputs and outputs of the edited modules over response tokens -> SteeringVectors."""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from contextlib import contextmanager, suppress
from typing import Any

import torch
from peft.tuners.tuners_utils import check_target_module_exists
from torch import nn
from tqdm.auto import tqdm

from ..core.architectures import StopForward, context_length, decoder_model, input_device, model_signature
from ..core.errors import DataError
from ..core.experts import expert_input, experts_shape, is_fused_experts
from ..core.settings import DEFAULTS, POSITIONS
from ..core.tokens import EncodedExample, collate, encode_example, pad_token_id
from ..probes.datasets import ContrastiveDataset, ContrastiveExample
from ..tuner import Steer2EditConfig
from ..tuner.targets import base_layer_of, resolve_config
from .vectors import MOMENTS, SteeringVectors


def edited_modules(model: nn.Module, config: Steer2EditConfig | None = None) -> dict[str, nn.Module]:
    """The modules an edit targets, by name, outermost wrapper first: a LoRA or edit on them counts.

    Without a config: every attention and MLP output projection (steering vectors for both families)."""
    base = decoder_model(model)
    config = config if config is not None else Steer2EditConfig(rho_attn=1.0, rho_mlp=1.0)  # both families on
    resolve_config(config, base)
    modules = {
        name: module
        for name, module in base.named_modules()
        if ".base_layer" not in f".{name}"
        and check_target_module_exists(config, name)
        and (hasattr(module, "weight") or is_fused_experts(module))
    }
    if not modules:
        raise ValueError(f"no module of the model matches target_modules={config.target_modules!r}")
    return modules


def encode_dataset(
    tokenizer: Any, dataset: Sequence[ContrastiveExample], system_prompt: str | None, max_length: int | None
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


CLASSES = ("pos", "neg", "ref")


def position_mask(response_mask: torch.Tensor, positions: str) -> torch.Tensor:
    """The positions averaged over, from the mask of response tokens [batch, length]: one of POSITIONS, or
    "after-decision" (the positions that predict a response token, less the last prompt token)."""
    if positions == "response":
        return response_mask
    predicting = torch.cat([response_mask[:, 1:], torch.zeros_like(response_mask[:, :1])], dim=1)  # one earlier
    if positions == "predicting":
        return predicting
    first = predicting & ~torch.cat([torch.zeros_like(predicting[:, :1]), predicting[:, :-1]], dim=1)
    if positions == "after-decision":
        return predicting & ~first  # the answer positions that predict a later response token
    return first  # the last prompt token: the first position that predicts a response token  # wanted, unwanted, reference (utility data: what the edit must leave alone)


class _Accumulator:
    """Running float32 sums of module inputs/outputs over response tokens, per class; and, for attention modules,
    sums of x x^T of the reference inputs (at the input window, and along the answers after it)."""

    def __init__(self, moment_modules: set[str]) -> None:
        self.sums: dict[str, dict[str, torch.Tensor]] = {}
        self.moment_modules = moment_modules  # the attention modules whose reference moments are recorded
        self.moment_counts = {statistic: 0 for statistic in MOMENTS}
        self._rows: dict[tuple[str, str], torch.Tensor] = {}  # (statistic, class) -> flat indices of its positions
        self.recorded: set[str] = set()  # the modules recorded in the current batch
        self._on_device: dict[tuple[str, str, torch.device], torch.Tensor] = {}

    def start_batch(self, classes: list[str], masks: dict[str, torch.Tensor]) -> None:
        """``masks``: statistic ("pre", "post", and the moments' windows) -> the positions [batch, length] it covers."""
        self._rows = {}
        self.recorded = set()  # a block may run its modules in any order: the batch stops once all are recorded
        for name in set(classes):
            rows = torch.tensor([c == name for c in classes])
            for statistic, mask in masks.items():
                if (statistic == "post" and name == "ref") or (statistic in MOMENTS and name != "ref"):
                    continue  # only the reference inputs are used; moments are the reference's alone
                self._rows[statistic, name] = (rows[:, None] & mask).flatten().nonzero().squeeze(-1)
        for statistic in MOMENTS:
            if (statistic, "ref") in self._rows:
                self.moment_counts[statistic] += self._rows[statistic, "ref"].numel()
        self._on_device = {}

    def _indices(self, statistic: str, name: str, device: torch.device) -> torch.Tensor:
        key = (statistic, name, device)
        if key not in self._on_device:
            self._on_device[key] = self._rows[statistic, name].to(device)
        return self._on_device[key]

    def add_routed(self, module: str, experts: nn.Module, states: torch.Tensor, top_k_index: torch.Tensor) -> None:
        """Fused experts' "pre": per expert, the sum of its down projection's input over the tokens routed to it at
        each class's positions, and how many ([experts, neurons] and [experts]; core/experts.py)."""
        count, neurons, _ = experts_shape(experts)
        selections = {name: rows for (statistic, name), rows in self._rows.items() if statistic == "pre"}
        sums = {name: torch.zeros(count, neurons) for name in selections}
        routed = {name: torch.zeros(count) for name in selections}
        for expert in range(count):
            tokens = torch.nonzero((top_k_index == expert).any(-1)).squeeze(-1)
            if not tokens.numel():
                continue
            inputs = expert_input(experts, states[tokens], expert).float().cpu()
            for name, rows in selections.items():
                chosen = torch.isin(tokens.cpu(), rows)
                sums[name][expert] = inputs[chosen].sum(0)
                routed[name][expert] = float(chosen.sum())
        for name in selections:
            self._add_sum(module, f"pre_{name}", sums[name].reshape(-1))
            self._add_sum(module, f"routed_{name}", routed[name])

    def _add_sum(self, module: str, key: str, total: torch.Tensor) -> None:
        sums = self.sums.setdefault(module, {})
        sums[key] = sums[key] + total if key in sums else total

    def add(self, module: str, statistic: str, values: torch.Tensor) -> None:
        flat = values.reshape(-1, values.shape[-1])  # [batch * length, features]
        for kind, name in self._rows:
            if kind != statistic:
                continue
            # Gather one class's positions; reduce in float32 without a float32 copy of the activations.
            total = flat.index_select(0, self._indices(statistic, name, values.device)).sum(0, dtype=torch.float32)
            self._add_sum(module, f"{statistic}_{name}", total)
        if statistic == "pre" and module in self.moment_modules:
            for moment in MOMENTS:
                if (moment, "ref") not in self._rows:
                    continue
                # A batch with no such position (an empty answer) adds a zero moment.
                chosen = flat.index_select(0, self._indices(moment, "ref", values.device)).float()
                self._add_sum(module, moment, chosen.T @ chosen)


@contextmanager
def _evaluating(model: nn.Module) -> Iterator[None]:
    """The model in eval mode, then back in the mode it came in."""
    was_training = model.training
    model.eval()
    try:
        yield
    finally:
        model.train(was_training)


@contextmanager
def _recording_hooks(modules: dict[str, nn.Module], accumulator: _Accumulator) -> Iterator[None]:
    handles = []

    def make_hook(name: str):
        def hook(module: nn.Module, args: tuple[Any, ...], kwargs: dict[str, Any], output: Any) -> None:
            if is_fused_experts(base_layer_of(module)):
                top_k_index = args[1] if len(args) > 1 else kwargs["top_k_index"]
                accumulator.add_routed(name, base_layer_of(module), args[0], top_k_index)
            else:
                accumulator.add(name, "pre", args[0])
            accumulator.add(name, "post", output[0] if isinstance(output, tuple) else output)
            accumulator.recorded.add(name)
            if len(accumulator.recorded) == len(modules):  # the rest of the forward pass records nothing
                raise StopForward

        return hook

    try:
        for name, module in modules.items():
            handles.append(module.register_forward_hook(make_hook(name), with_kwargs=True))
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
    batch_size: int = 16,
    padding_side: str = "right",
    system_prompt: str | None = None,
    reference: tuple[Sequence[str], Sequence[str]] | None = None,
    positions: str = DEFAULTS.positions,
    input_positions: str | None = DEFAULTS.input_positions,
    show_progress: bool = True,
) -> SteeringVectors:
    """Mean input ("pre") and output ("post") of every edited module over response tokens, per class (token-weighted,
    float32 running sums; the forward pass stops after the last edited module).
    ``reference``: (prompts, responses) the edit should leave alone, e.g. benign prompts with the model's own
    answers; their mean inputs are recorded too (``pre_ref``), for the solver's contrastive keys.
    ``positions``: "predicting" (the reference protocol) averages over the positions that predict the response
    tokens, from the last prompt token (where the model decides how to answer) to the one before the last
    response token; "response" averages over the response tokens themselves; "decision" takes the last prompt
    token alone. ``input_positions`` is the window of the mean inputs ("pre") alone, which the solver scores
    components and builds contrastive keys with: "decision" (the default, see EditSettings) describes the inputs at
    the moment the model decides how to answer; None reads them where the outputs are read.
    """
    input_positions = input_positions or positions
    _check_options(positions, input_positions, padding_side, batch_size)
    config = config if config is not None else Steer2EditConfig(rho_attn=1.0, rho_mlp=1.0)  # both families on
    modules = edited_modules(model, config)
    examples, classes = _labelled_examples(dataset, reference)
    encoded = encode_dataset(tokenizer, examples, system_prompt, context_length(model))
    # The reference's moments: at the input window, and along the answer after it (what the edit also reads).
    windows = {"post": positions, "pre": input_positions, MOMENTS[0]: input_positions, MOMENTS[1]: "after-decision"}
    batches = _batches(encoded, classes, pad_token_id(tokenizer), padding_side, batch_size, windows)
    accumulator = _Accumulator(_moment_modules(modules, config) if reference is not None else set())
    with _evaluating(model), _recording_hooks(modules, accumulator):
        device = input_device(model)
        total = -(-len(encoded) // batch_size)
        progress = tqdm(batches, total=total, desc="extracting", unit="batch", disable=not show_progress)
        for batch_classes, masks, inputs in progress:
            accumulator.start_batch(batch_classes, masks)
            with suppress(StopForward):
                model(**{name: tensor.to(device) for name, tensor in inputs.items()}, use_cache=False)
    means, counts = _means(accumulator, modules, classes, encoded, {"post": positions, "pre": input_positions})
    token_counts = {"positive": counts["post", "pos"], "negative": counts["post", "neg"]} | (
        {"reference": counts["pre", "ref"]} if reference else {}
    )
    base: Any = decoder_model(model)
    options = {"batch_size": batch_size, "padding_side": padding_side, "system_prompt": system_prompt}
    options |= {"positions": positions, "input_positions": input_positions, "probe_data": dataset.description}
    options["probe_prompts"] = dataset.positive_prompts  # what gates are fitted on (solver/gates.py)
    return SteeringVectors(
        **means,
        model_name=getattr(getattr(base, "config", None), "_name_or_path", None) or None,
        model_signature=model_signature(base.config) if hasattr(base, "config") else {},
        token_counts=token_counts,
        example_counts={"positive": dataset.num_positive, "negative": dataset.num_negative}
        | ({"reference": len(reference[0])} if reference else {}),
        options=options | {"dtype": str(next(base.parameters()).dtype)},
    )


def _moment_modules(modules: dict[str, nn.Module], config: Steer2EditConfig) -> set[str]:
    """The attention modules, whose reference moments selective keys read."""
    return {name for name in modules if config.is_attention_module(name)}


def _check_options(positions: str, input_positions: str, padding_side: str, batch_size: int) -> None:
    for value in (positions, input_positions):
        if value not in POSITIONS:
            raise ValueError(f"positions must be one of {POSITIONS}, got {value!r}")
    if padding_side not in ("left", "right"):
        raise ValueError(f"padding_side must be 'left' or 'right', got {padding_side!r}")
    if batch_size < 1:
        raise ValueError(f"batch_size must be at least 1, got {batch_size}")


def _labelled_examples(
    dataset: ContrastiveDataset, reference: tuple[Sequence[str], Sequence[str]] | None
) -> tuple[list[ContrastiveExample], list[str]]:
    """Every example with its class: "pos", "neg", or "ref" for the reference data."""
    examples = list(dataset)
    classes = ["pos" if example.positive else "neg" for example in examples]
    if reference is not None:
        prompts, responses = reference
        if len(prompts) != len(responses) or not prompts:
            raise DataError("reference data needs at least one prompt and one response per prompt")
        examples += [ContrastiveExample(p, r, False) for p, r in zip(prompts, responses)]
        classes += ["ref"] * len(prompts)
    return examples, classes


def _batches(
    encoded: list[EncodedExample],
    classes: list[str],
    pad_id: int,
    padding_side: str,
    batch_size: int,
    windows: dict[str, str],
) -> Iterator[tuple[list[str], dict[str, torch.Tensor], dict[str, torch.Tensor]]]:
    """(classes, position masks per statistic, model inputs) of each batch, padded as it is reached (so memory does
    not grow with the data); similar lengths together (less padding)."""
    order = sorted(range(len(encoded)), key=lambda i: len(encoded[i].input_ids))
    for start in range(0, len(order), batch_size):
        rows = order[start : start + batch_size]
        input_ids, attention_mask, position_ids, response_mask = collate(
            [encoded[i] for i in rows], pad_id, padding_side
        )
        masks = {statistic: position_mask(response_mask, window) for statistic, window in windows.items()}
        inputs = {"input_ids": input_ids, "attention_mask": attention_mask, "position_ids": position_ids}
        yield [classes[i] for i in rows], masks, inputs


def _means(
    accumulator: _Accumulator,
    modules: dict[str, nn.Module],
    classes: list[str],
    encoded: list[EncodedExample],
    windows: dict[str, str],
) -> tuple[dict[str, dict[str, torch.Tensor]], dict[tuple[str, str], int]]:
    """The running sums divided by their token counts, and those counts per (statistic, class)."""
    counts = {(statistic, name): 0 for statistic in windows for name in CLASSES}
    for name, item in zip(classes, encoded):
        for statistic, window in windows.items():
            counts[statistic, name] += 1 if window == "decision" else len(item.input_ids) - item.response_start
    means: dict[str, dict[str, torch.Tensor]] = {
        s: {} for s in ("post_pos", "post_neg", "pre_pos", "pre_neg", "pre_ref")
    }
    for name in modules:
        for key, total in accumulator.sums[name].items():
            if key in MOMENTS:
                if accumulator.moment_counts[key]:
                    means.setdefault(key, {})[name] = (total / accumulator.moment_counts[key]).cpu()
                continue
            statistic, _, kind = key.partition("_")
            if statistic == "routed":
                continue
            routed = accumulator.sums[name].get(f"routed_{kind}")
            if statistic == "pre" and routed is not None:  # fused experts: each expert over its own tokens
                per_expert = total.reshape(len(routed), -1) / routed.clamp_min(1)[:, None]
                means[key][name] = per_expert.reshape(-1).cpu()
            else:
                means[key][name] = (total / counts[statistic, kind]).cpu()
            if statistic == "pre" and routed is not None and kind != "ref":
                means.setdefault("routed_tokens", {})
                means["routed_tokens"][name] = means["routed_tokens"].get(name, torch.zeros(len(routed))) + routed
    return means, counts
