"""The picture of an edit: the lambda of every head (layers x heads) and the edited neurons of every layer."""

from __future__ import annotations

from typing import TYPE_CHECKING

import torch

from ..core.figures import pyplot
from .report import EditReport

if TYPE_CHECKING:
    from matplotlib.figure import Figure


def edit_matrices(report: EditReport) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Per layer: signed head lambdas [layers, heads] (0 = unedited), edited neuron counts and sum |lambda| [layers]."""
    layered = [m for m in report.modules if m.layer is not None]
    deepest = max((m.layer for m in layered if m.layer is not None), default=-1)
    num_layers = report.num_layers or deepest + 1
    heads = max((m.num_components for m in layered if m.kind == "attention"), default=0)
    head_lambdas = torch.zeros(num_layers, max(heads, 1))
    neuron_counts = torch.zeros(num_layers)
    neuron_mass = torch.zeros(num_layers)
    for m in layered:
        assert m.layer is not None
        for index, value in m.components:
            if m.kind == "attention":
                head_lambdas[m.layer, index] += value
            else:
                neuron_counts[m.layer] += 1
                neuron_mass[m.layer] += abs(value)
    return head_lambdas, neuron_counts, neuron_mass


def plot_edit_heatmap(report: EditReport, title: str | None = None) -> Figure:
    """Left: lambda of every head (layers x heads, signed). Right: edited neurons per layer, and their sum |lambda|."""
    plt = pyplot()
    head_lambdas, neuron_counts, neuron_mass = edit_matrices(report)
    layers = head_lambdas.shape[0]
    figure, (heads_axis, neurons_axis) = plt.subplots(
        1, 2, figsize=(10, max(3.5, 0.18 * layers + 1.5)), gridspec_kw={"width_ratios": [3, 2]}, constrained_layout=True
    )
    limit = float(head_lambdas.abs().max()) or 1.0
    image = heads_axis.imshow(
        head_lambdas.numpy(), cmap="RdBu_r", vmin=-limit, vmax=limit, aspect="auto", interpolation="nearest"
    )
    heads_axis.set(xlabel="attention head", ylabel="layer", title=f"heads: {report.edited_heads} edited")
    figure.colorbar(image, ax=heads_axis, label="lambda")
    rows = torch.arange(layers).numpy()
    neurons_axis.barh(rows, neuron_counts.numpy(), color="tab:orange", label="edited neurons")
    neurons_axis.set(
        ylim=(layers - 0.5, -0.5), xlabel="edited neurons", title=f"MLP neurons: {report.edited_neurons} edited"
    )
    if report.edited_neurons:
        mass_axis = neurons_axis.twiny()
        mass_axis.plot(neuron_mass.numpy(), rows, color="tab:purple", marker=".", linewidth=1, label="sum |lambda|")
        mass_axis.set_xlabel("sum |lambda|", color="tab:purple")
    else:
        neurons_axis.text(0.5, 0.5, "no MLP neuron edited", ha="center", va="center", transform=neurons_axis.transAxes)
    figure.suptitle(title or f"Steer2Edit edit: {report.adapter_name}")
    return figure
