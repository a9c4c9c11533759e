"""Gates instead of slopes: per layer one MLP neuron repurposed into a detector that stays silent below a threshold.

A rank-one edit ``y += u (x . k)`` fires in proportion to ``k . x`` at every position. A gated MLP neuron writes
``down_n * act(gate_n . x) * (up_n . x)``, and its activation keeps it near zero below its threshold. Per layer:

- the detector: a logistic regression without intercept on the MLP's input, the probe prompts' decision tokens
  against every reference token that predicts an answer token (``fit_detector``);
- a bias in a layer without biases: the direction c with ``c . x = 1`` on the reference's tokens by ridge least
  squares (``constant_direction``) becomes the up row, so the neuron reads ``act(gate_n . x)``, and the detector is
  shifted along c until a share ``gate_quantile`` of the reference's tokens reads below zero, then scaled so the
  probe's median token reads ``gate_sharpness``;
- the down column writes the layer's steering vector times ``gate_amount / gate_sharpness``.

The neuron repurposed is the one that writes least along the reference answers. With ``gate_in_order`` each layer is
fitted on its inputs with the earlier layers' gates written in, since a gate moves what the later layers read. Each of the three changes (a row of
the gate and up projections, a column of the output projection) is rank one, so the edit is a Steer2Edit adapter
like any other: it merges exactly and exports exactly to LoRA.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any, cast

import torch
from torch import nn
from tqdm.auto import tqdm

from ..core.architectures import decoder_layers, decoder_model, find_output_projections
from ..core.errors import Steer2EditError
from ..core.readings import answer_inputs, last_token_inputs
from ..core.settings import GATE_CONSTANT_RIDGE, GATE_RIDGE, GATE_SPREAD_FLOOR, EditSettings
from ..extraction.vectors import SteeringVectors
from .scores import ModuleEdit


@dataclass(frozen=True)
class GatedMLP:
    """Full module names (within the decoder model) of one layer's gated MLP."""

    layer: int
    gate: str
    up: str
    down: str


@dataclass
class Gate:
    """One repurposed neuron: its new rows and column, and how its detector separates the two sets it was fitted on."""

    mlp: GatedMLP
    neuron: int
    gate_row: torch.Tensor  # [hidden] float64
    up_row: torch.Tensor  # [hidden] float64, the constant direction c
    down_column: torch.Tensor  # [hidden] float64, written per unit of gate_amount
    probe_share: float  # share of the probe's decision tokens the gate reads above zero
    reference_share: float  # share of the reference's tokens it reads above zero

    def record(self, amount: float) -> dict[str, Any]:
        """What the adapter config keeps of the gate (``Steer2EditConfig.gates``), for ``steer2edit inspect``."""
        return {
            "layer": self.mlp.layer,
            "neuron": self.neuron,
            "gate_module": self.mlp.gate,
            "up_module": self.mlp.up,
            "row_width": len(self.gate_row),
            "amount": amount,
            "probe_share": round(self.probe_share, 6),
            "reference_share": round(self.reference_share, 6),
        }


def _linear_children(container: nn.Module) -> dict[str, nn.Module]:
    return {
        name: module
        for name, module in container.named_children()
        if isinstance(getattr(module, "weight", None), torch.Tensor) and module.weight.ndim == 2
    }


@torch.no_grad()
def _down_input(mlp: nn.Module, down: nn.Module, x: torch.Tensor) -> torch.Tensor:
    captured: list[torch.Tensor] = []
    handle = down.register_forward_pre_hook(lambda module, args: captured.append(args[0]))
    try:
        mlp(x)
    finally:
        handle.remove()
    return captured[0]


@torch.no_grad()
def gated_mlp(model: nn.Module, layer: int) -> GatedMLP:
    """The gate, up and output projections of a layer's MLP, found by structure: the output projection's two siblings
    that map the hidden size to its input width; the up projection is the one the neuron's output is odd in (its row
    negated negates the neuron exactly), the gate the one behind the activation."""
    prefix, layers = decoder_layers(model)
    block = layers[layer]
    inside = dict(block.named_modules())
    downs = [s for s in find_output_projections(model).mlp if isinstance(inside.get(s), nn.Linear)]
    downs = [s for s in downs if s.rpartition(".")[0]]
    where = f"{prefix}.{layer}"
    if not downs:
        raise Steer2EditError(f"{where}: no MLP output projection inside an MLP module (gates need a gated MLP)")
    parent_name, _, down_name = downs[0].rpartition(".")
    mlp, down = inside[parent_name], inside[downs[0]]
    hidden, width = cast(torch.Tensor, down.weight).shape
    inputs = {
        name: cast(torch.Tensor, module.weight)
        for name, module in _linear_children(mlp).items()
        if name != down_name and tuple(cast(torch.Tensor, module.weight).shape) == (width, hidden)
    }
    if len(inputs) != 2:
        raise Steer2EditError(
            f"{where}.{parent_name}: gates need a gated MLP with separate gate and up projections ({hidden} -> "
            f"{width}); found {sorted(inputs) or 'none'}"
        )
    first, second = inputs
    weight = inputs[first]
    x = torch.randn(4, hidden, generator=torch.Generator().manual_seed(0)).to(weight)
    before = _down_input(mlp, down, x)[:, 0].clone()
    weight[0].neg_()
    try:
        after = _down_input(mlp, down, x)[:, 0]
    finally:
        weight[0].neg_()
    up, gate = (first, second) if torch.equal(after, -before) else (second, first)
    name = f"{where}.{parent_name}"
    return GatedMLP(layer, f"{name}.{gate}", f"{name}.{up}", f"{name}.{down_name}")


def gated_mlps(model: nn.Module, layers: range) -> list[GatedMLP]:
    """The gated MLPs of these layers; a layer without one (a hybrid's mixture-of-experts or recurrent layer) gets no
    gate, and a range without any is refused with the first layer's reason."""
    found, reasons = [], []
    for layer in layers:
        try:
            found.append(gated_mlp(model, layer))
        except Steer2EditError as error:
            reasons.append(str(error))
    if not found:
        raise Steer2EditError(f"no layer of {layers.start}-{layers.stop - 1} can hold a gate: {reasons[0]}")
    return found


def fit_detector(probe: torch.Tensor, reference: torch.Tensor, ridge: float = GATE_RIDGE) -> torch.Tensor:
    """w of a logistic regression without intercept (probe rows 1, reference rows 0, each class weighing the same;
    L2 ``ridge`` on the features scaled by the reference's spread, floored at GATE_SPREAD_FLOOR of its median),
    fitted with L-BFGS in float32."""
    spread = reference.float().std(0)
    spread = spread.clamp(min=GATE_SPREAD_FLOOR * float(spread.median()) + 1e-12)
    positive, negative = probe.float() / spread, reference.float() / spread
    weights = torch.zeros(probe.shape[1], requires_grad=True)
    optimizer = torch.optim.LBFGS([weights], max_iter=300, line_search_fn="strong_wolfe")

    def loss() -> torch.Tensor:
        optimizer.zero_grad()
        value = nn.functional.softplus(-(positive @ weights)).mean() + nn.functional.softplus(negative @ weights).mean()
        value = value + ridge * weights.square().sum()
        value.backward()
        return value

    with torch.enable_grad():
        optimizer.step(loss)
    return weights.detach() / spread


def constant_direction(inputs: torch.Tensor, ridge: float = GATE_CONSTANT_RIDGE) -> torch.Tensor:
    """c minimizing mean (c . x - 1)^2 + ridge m |c|^2 over the rows x of ``inputs`` (m the mean of their second
    moment's diagonal), in float64."""
    rows = inputs.double()
    moment = rows.T @ rows / len(rows)
    penalty = ridge * float(moment.diagonal().mean()) * torch.eye(len(moment), dtype=torch.float64)
    return torch.linalg.solve(moment + penalty, rows.mean(0))


def shifted_detector(detector: torch.Tensor, constant: torch.Tensor, *sets: tuple[torch.Tensor, float]) -> torch.Tensor:
    """The detector minus b c, b the largest over ``sets`` (rows, share) of the ``share`` quantile of
    ``(detector . x) / (c . x)`` over the rows: wherever c . x > 0, at least a share ``share`` of each set's rows
    then reads at or below zero."""
    shifts = []
    for rows, share in sets:
        rows = rows.double()
        shifts.append(float(torch.quantile(rows @ detector.double() / (rows @ constant), share)))
    return detector.double() - max(shifts) * constant


@torch.no_grad()
def neuron_usage(model: nn.Module, mlp: GatedMLP, inputs: torch.Tensor, chunk: int = 4096) -> torch.Tensor:
    """Per neuron, how much it writes on these MLP inputs: mean square input of the output projection times the
    squared norm of its column, [neurons] float64."""
    named = dict(decoder_model(model).named_modules())
    down = named[mlp.down]
    container = named[mlp.down.rpartition(".")[0]]
    weight = down.weight
    total = torch.zeros(weight.shape[1], dtype=torch.float64)
    for start in range(0, len(inputs), chunk):
        read = _down_input(container, down, inputs[start : start + chunk].to(weight))
        total += read.double().square().sum(0).cpu()
    return total / max(len(inputs), 1) * weight.double().norm(dim=0).square().cpu()


def layer_direction(vectors: SteeringVectors, layer: int) -> torch.Tensor:
    """The steering vector a gate of ``layer`` writes: the layer's attention output's, else its MLP's."""
    modules = [m for m in vectors.modules if f".{layer}." in f".{m}."]
    if not modules:
        raise Steer2EditError(f"the steering vectors hold no module of layer {layer}: extract them with that layer")
    return vectors.direction(modules[0]).double()


def _fit_one(
    model: nn.Module,
    mlp: GatedMLP,
    probe: torch.Tensor,
    reference: torch.Tensor,
    direction: torch.Tensor,
    settings: EditSettings,
    decisions: torch.Tensor | None = None,
) -> Gate | None:
    """The gate of one layer from its MLP inputs on the probe's decision tokens and the reference's tokens (and, for
    ``settings.gate_decision_quantile``, the reference prompts' decision tokens)."""
    constant = constant_direction(reference)
    sets = [(reference, settings.gate_quantile)]
    if settings.gate_decision_quantile is not None and decisions is not None:
        sets.append((decisions, settings.gate_decision_quantile))
    detector = shifted_detector(fit_detector(probe, reference), constant, *sets)
    readings = probe.double() @ detector
    median = float(readings.median())
    if median <= 0:
        return None
    return Gate(
        mlp,
        int(neuron_usage(model, mlp, reference).argmin()),
        settings.gate_sharpness / median * detector,
        constant,
        direction / settings.gate_sharpness,
        float((readings > 0).double().mean()),
        float((reference.double() @ detector > 0).double().mean()),
    )


@contextmanager
def gates_written(model: nn.Module, gates: Sequence[Gate], amount: float) -> Iterator[None]:
    """The gates written into the model's weights for the duration, the weights restored exactly after."""
    named = dict(decoder_model(model).named_modules())
    saved = []
    with torch.no_grad():
        try:
            for gate in gates:
                n = gate.neuron
                for view, value in (
                    (named[gate.mlp.gate].weight[n], gate.gate_row),
                    (named[gate.mlp.up].weight[n], gate.up_row),
                    (named[gate.mlp.down].weight[:, n], amount * gate.down_column),
                ):
                    saved.append((view, view.clone()))
                    view.copy_(value.to(view))
            yield
        finally:
            for view, value in reversed(saved):
                view.copy_(value)


def fit_gates(
    model: nn.Module,
    tokenizer: Any,
    probe_prompts: Sequence[str],
    utility: Any,
    vectors: SteeringVectors,
    settings: EditSettings,
    *,
    batch_size: int = 16,
    show_progress: bool = False,
) -> list[Gate]:
    """One gate per layer of ``settings.gated_layers`` (see the module's docstring); a layer whose detector reads
    the probe's median token below zero after the shift gets none. ``utility``: the reference (UtilityData).
    ``settings.gate_in_order``: each layer's detector is fitted on its inputs with the earlier layers' gates in place
    (a pass per layer), instead of all on the base model's inputs (one pass)."""
    if not probe_prompts:
        raise Steer2EditError("gates are fitted on the probe's prompts: none were given")
    layers = settings.gated_layers(len(decoder_layers(model)[1]))
    mlps = gated_mlps(model, layers)
    prompts, amount = list(dict.fromkeys(probe_prompts)), settings.gate_amount or 1.0
    system_prompt = vectors.options.get("system_prompt")

    def read(names: list[str], progress: bool = False) -> tuple[dict[str, torch.Tensor], ...]:
        probe = last_token_inputs(model, tokenizer, prompts, names, system_prompt, batch_size, progress)
        reference, decisions = answer_inputs(  # the decision tokens from the same pass as the answers
            model, tokenizer, utility.prompts, utility.responses, names, utility.system_prompt, batch_size, progress
        )
        return probe, reference, decisions if settings.gate_decision_quantile is not None else {}

    gates: list[Gate] = []
    inputs = None if settings.gate_in_order else read([mlp.gate for mlp in mlps], show_progress)
    for mlp in tqdm(mlps, desc="fitting gates", unit="layer", disable=not show_progress):
        if settings.gate_in_order:
            with gates_written(model, gates, amount):
                inputs = read([mlp.gate])
        assert inputs is not None
        probe, reference, decisions = inputs
        direction = layer_direction(vectors, mlp.layer)
        gate = _fit_one(model, mlp, probe[mlp.gate], reference[mlp.gate], direction, settings, decisions.get(mlp.gate))
        gates += [gate] if gate is not None else []
    if not gates:
        raise Steer2EditError(
            f"no gate: in layers {layers.start}-{layers.stop - 1} no detector reads the probe's median prompt above "
            f"the threshold that {settings.gate_quantile:g} of the reference reads under; lower gate_quantile"
        )
    return gates


def _outer_edit(module: str, output: torch.Tensor, component: int, key: torch.Tensor) -> ModuleEdit:
    """``output key^T`` added on one component's input columns, as one term: u = output / |output|, the component's
    key = key / |key|, magnitude |output| |key|."""
    output, key = output.double(), key.double()
    return ModuleEdit(
        module,
        False,
        output / output.norm(),
        torch.full((1,), float("nan")),
        torch.tensor([component]),
        (key / key.norm())[None],
        (output.norm() * key.norm())[None],
    )


@torch.no_grad()
def gate_edits(model: nn.Module, gates: Sequence[Gate], amount: float) -> list[ModuleEdit]:
    """The rank-one edits (as the solver's ModuleEdit) that turn each gate's neuron into the gate: new gate and up
    rows (u = e_n, the component the whole row: the record's row_width), new output column (``amount`` times the
    gate's column: u along it, the component the column), each the new values less the model's own."""
    named = dict(decoder_model(model).named_modules())
    edits = []
    for gate in gates:
        n = gate.neuron
        gate_weight, up_weight = named[gate.mlp.gate].weight, named[gate.mlp.up].weight
        down_weight = named[gate.mlp.down].weight
        row = torch.zeros(gate_weight.shape[0], dtype=torch.float64)
        row[n] = 1.0
        edits.append(_outer_edit(gate.mlp.gate, row, 0, gate.gate_row - gate_weight[n].double().cpu()))
        edits.append(_outer_edit(gate.mlp.up, row, 0, gate.up_row - up_weight[n].double().cpu()))
        column = amount * gate.down_column - down_weight[:, n].double().cpu()
        edits.append(_outer_edit(gate.mlp.down, column, n, torch.ones(1)))
    return edits
