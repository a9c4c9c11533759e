"""How selective an edit's keys are: per edited module and per edited head, how well its firing ``lambda (k . x)``
at the last prompt token tells prompts it should act on from prompts it should leave alone (AUROC).

A rank-one edit ``y += u (x . k)`` adds in proportion to ``k . x``: it can only refuse harmful requests without
refusing safe ones that sound risky if its keys fire on the first and stay silent on the second. An AUROC of 1 means
every harmful prompt makes the head fire harder than every safe one; 0.5, that the key cannot tell them apart.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from ..core.architectures import decoder_model
from ..core.readings import last_token_inputs
from ..tuner import Steer2EditLayer
from ..tuner.report import gate_modules


def auroc(positive: torch.Tensor, negative: torch.Tensor) -> float:
    """P(a positive score > a negative one), ties counting half (the Mann-Whitney U statistic, normalized)."""
    if not positive.numel() or not negative.numel():
        raise ValueError("AUROC needs at least one positive and one negative score")
    above = positive.double()[:, None] - negative.double()[None, :]  # every pair, a few hundred prompts a side
    return float((above > 0).double().mean() + 0.5 * (above == 0).double().mean())


@dataclass
class HeadSelectivity:
    module: str
    component: int
    magnitude: float  # strength * lambda
    auroc: float
    mean_firing_positive: float  # mean of strength * lambda * (k . x) at the last prompt token
    mean_firing_negative: float


@dataclass
class ModuleSelectivity:
    """A module's edited components together: the edit adds u times their summed firing, so this is what acts."""

    module: str
    components: int
    auroc: float
    mean_firing_positive: float
    mean_firing_negative: float


@dataclass
class KeySelectivity:
    """Per edited module and component of one adapter: how its firing separates the two prompt sets."""

    heads: list[HeadSelectivity]
    num_positive: int
    num_negative: int
    modules: list[ModuleSelectivity]

    @property
    def mean_auroc(self) -> float:
        return sum(h.auroc for h in self.heads) / len(self.heads) if self.heads else float("nan")

    def to_table(self) -> str:
        lines = [
            f"key selectivity: {len(self.modules)} edited modules, {self.num_positive} prompts to act on vs "
            f"{self.num_negative} to leave alone (firing at the last prompt token)",
            f"{'module':<44} {'comps':>5} {'AUROC':>6} {'firing(act)':>12} {'firing(leave)':>13}",
        ]
        for m in self.modules:
            lines.append(
                f"{m.module:<44} {m.components:>5} {m.auroc:>6.3f} "
                f"{m.mean_firing_positive:>12.4f} {m.mean_firing_negative:>13.4f}"
            )
        lines += [
            f"per component ({len(self.heads)}; one key may span a module's heads, so read its module's row): "
            f"mean AUROC {self.mean_auroc:.3f}",
            f"{'module':<44} {'comp':>5} {'lambda':>9} {'AUROC':>6} {'firing(act)':>12} {'firing(leave)':>13}",
        ]
        for h in self.heads:
            lines.append(
                f"{h.module:<44} {h.component:>5} {h.magnitude:>9.3f} {h.auroc:>6.3f} "
                f"{h.mean_firing_positive:>12.4f} {h.mean_firing_negative:>13.4f}"
            )
        return "\n".join(lines)


@dataclass
class GateSelectivity:
    """One gate (solver/gates.py): how its detector, read at the last prompt token, separates the two prompt sets."""

    layer: int
    neuron: int
    auroc: float
    above_positive: float  # share of the prompts to act on read above the threshold (the neuron writes)
    above_negative: float  # share of the prompts to leave alone read above it


def gate_table(gates: Sequence[GateSelectivity], num_positive: int, num_negative: int) -> str:
    lines = [
        f"gate selectivity: {len(gates)} gates, {num_positive} prompts to act on vs {num_negative} to leave alone "
        "(detector read at the last prompt token; above threshold the gate writes)",
        f"{'layer':>5} {'neuron':>6} {'AUROC':>6} {'act on above':>13} {'leave alone above':>18}",
    ]
    lines += [
        f"{g.layer:>5} {g.neuron:>6} {g.auroc:>6.3f} {g.above_positive:>13.1%} {g.above_negative:>18.1%}" for g in gates
    ]
    return "\n".join(lines)


def edited_key_layers(model: nn.Module, adapter_name: str) -> dict[str, Steer2EditLayer]:
    """The adapter's edited modules whose firing is a key's (a gate's modules are read by gate_selectivity)."""
    config = getattr(model, "peft_config", {}).get(adapter_name)
    gated = gate_modules(getattr(config, "gates", {}))
    return {
        name: module
        for name, module in decoder_model(model).named_modules()
        if isinstance(module, Steer2EditLayer) and adapter_name in module.steer2edit_k and name not in gated
    }


@torch.no_grad()
def gate_selectivity(
    model: nn.Module,
    tokenizer: Any,
    act_on: Sequence[str],
    leave_alone: Sequence[str],
    adapter_name: str = "default",
    system_prompt: str | None = None,
    batch_size: int = 16,
    show_progress: bool = False,
) -> list[GateSelectivity]:
    """Per gate of the adapter, its detector (the gate projection's output at the gate's neuron, the adapter active)
    on both prompt sets: the AUROC and the share of each set above threshold."""
    gates = getattr(model, "peft_config", {})[adapter_name].gates
    named = dict(decoder_model(model).named_modules())
    modules = [record["gate_module"] for record in gates.values()]
    prompts = list(act_on) + list(leave_alone)
    inputs = last_token_inputs(model, tokenizer, prompts, modules, system_prompt, batch_size, show_progress)
    table, split = [], len(act_on)
    for record in sorted(gates.values(), key=lambda r: r["layer"]):
        gate = named[record["gate_module"]]
        weight = next(gate.parameters())
        readings = gate(inputs[record["gate_module"]].to(weight))[:, record["neuron"]].float().cpu()
        positive, negative = readings[:split], readings[split:]
        table.append(
            GateSelectivity(
                record["layer"],
                record["neuron"],
                auroc(positive, negative),
                float((positive > 0).float().mean()),
                float((negative > 0).float().mean()),
            )
        )
    return table


def key_selectivity(
    model: nn.Module,
    tokenizer: Any,
    act_on: Sequence[str],
    leave_alone: Sequence[str],
    adapter_name: str = "default",
    system_prompt: str | None = None,
    batch_size: int = 16,
    show_progress: bool = False,
) -> KeySelectivity:
    """The AUROC of every edited component's firing between ``act_on`` (e.g. harmful requests) and ``leave_alone``
    (e.g. safe requests that sound risky), read with the adapter active, as a user runs it."""
    layers = edited_key_layers(model, adapter_name)
    prompts = list(act_on) + list(leave_alone)
    inputs = last_token_inputs(model, tokenizer, prompts, list(layers), system_prompt, batch_size, show_progress)
    heads, modules, split = [], [], len(act_on)
    for name, layer in layers.items():
        keys = layer.steer2edit_k[adapter_name].detach().float().cpu()
        magnitudes = layer.strength[adapter_name] * layer.steer2edit_lambda[adapter_name].detach().float().cpu()
        size = keys.shape[1]
        total = torch.zeros(len(prompts))
        for key, magnitude, index in zip(keys, magnitudes, layer.steer2edit_indices[adapter_name].tolist()):
            firing = magnitude * (inputs[name][:, index * size : (index + 1) * size] @ key)
            total += firing
            positive, negative = firing[:split], firing[split:]
            heads.append(
                HeadSelectivity(
                    name,
                    index,
                    float(magnitude),
                    auroc(positive, negative),
                    float(positive.mean()),
                    float(negative.mean()),
                )
            )
        modules.append(
            ModuleSelectivity(
                name,
                len(keys),
                auroc(total[:split], total[split:]),
                float(total[:split].mean()),
                float(total[split:].mean()),
            )
        )
    return KeySelectivity(heads, len(act_on), len(leave_alone), modules)
