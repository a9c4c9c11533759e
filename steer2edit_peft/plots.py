"""Pictures: where an edit acts (heatmap), what it changed (metric bars), and trade-off frontiers.

matplotlib is an optional dependency (``pip install steer2edit-peft[plots]``); every function returns a Figure.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch

from .errors import Steer2EditError
from .report import EditReport

if TYPE_CHECKING:
    from matplotlib.figure import Figure

    from .evaluation.suite import EvaluationResult


def _pyplot() -> Any:
    try:
        import matplotlib

        matplotlib.use("Agg")  # files only: no display is needed, or wanted on servers
        import matplotlib.pyplot as plt
    except ImportError as error:
        raise Steer2EditError("plots need matplotlib: pip install 'steer2edit-peft[plots]'") from error
    return plt


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
    plt = _pyplot()
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


def plot_metrics(results: Sequence[EvaluationResult], metrics: Mapping[str, str] | None = None) -> Figure:
    """One bar panel per metric, one bar per condition (base, steering, edit...)."""
    plt = _pyplot()
    metrics = metrics or {
        "refusal_rate": "refusal rate (harmful, held out)",
        "over_refusal": "over-refusal (benign)",
        "kl_from_reference": "KL from base (nats/token)",
    }
    figure, axes = plt.subplots(1, len(metrics), figsize=(4 * len(metrics), 3.6), constrained_layout=True)
    axes = [axes] if len(metrics) == 1 else list(axes)
    names = [r.condition for r in results]
    colors = plt.rcParams["axes.prop_cycle"].by_key()["color"]
    for axis, (metric, label) in zip(axes, metrics.items()):
        values = [getattr(r, metric) or 0.0 for r in results]
        bars = axis.bar(range(len(names)), values, color=[colors[i % len(colors)] for i in range(len(names))])
        axis.bar_label(bars, fmt="%.2f" if metric != "kl_from_reference" else "%.3f", fontsize=8)
        axis.set_xticks(range(len(names)), names, rotation=20, ha="right")
        axis.set_title(label, fontsize=10)
    return figure


def plot_frontiers(
    frontiers: Mapping[str, Sequence[tuple[float, float]]],
    x_label: str,
    y_label: str,
    title: str = "",
    points: Mapping[str, Sequence[tuple[float, float]]] | None = None,
) -> Figure:
    """Trade-off curves, one per method: (utility cost, attribute) pairs, sorted by cost; optional scatter points."""
    plt = _pyplot()
    figure, axis = plt.subplots(figsize=(6, 4.2), constrained_layout=True)
    colors = plt.rcParams["axes.prop_cycle"].by_key()["color"]
    for number, (name, pairs) in enumerate(frontiers.items()):
        color = colors[number % len(colors)]
        if points and name in points and points[name]:
            xs, ys = zip(*points[name])
            axis.scatter(xs, ys, color=color, alpha=0.25, s=14)
        if pairs:
            xs, ys = zip(*sorted(pairs))
            axis.step(xs, ys, where="post", color=color, marker="o", label=name)
    axis.set(xlabel=x_label, ylabel=y_label)
    axis.set_title(title, fontsize=10)
    axis.grid(alpha=0.3)
    axis.legend()
    return figure


IMAGE_SUFFIXES = (".png", ".svg", ".pdf")


def save_figure(figure: Figure, path: str | Path) -> Path:
    """Save a figure; the path must name its format (.png, .svg or .pdf), so the file written is the one named."""
    path = Path(path)
    if path.suffix.lower() not in IMAGE_SUFFIXES:
        _pyplot().close(figure)
        raise Steer2EditError(f"{path}: name the image with one of {', '.join(IMAGE_SUFFIXES)}")
    path.parent.mkdir(parents=True, exist_ok=True)
    figure.savefig(path, dpi=120)
    _pyplot().close(figure)
    return path
