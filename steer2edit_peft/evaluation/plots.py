"""Pictures: what an evaluation measured (metric bars) and trade-off frontiers, beside the edit heatmap.

matplotlib is an optional dependency (``pip install steer2edit-peft[plots]``); every function returns a Figure.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING

from ..core.figures import pyplot, save_figure
from ..tuner.heatmap import plot_edit_heatmap

if TYPE_CHECKING:
    from matplotlib.figure import Figure

    from .suite import EvaluationResult

__all__ = ["plot_edit_heatmap", "plot_frontiers", "plot_metrics", "save_figure"]


def plot_metrics(results: Sequence[EvaluationResult], metrics: Mapping[str, str] | None = None) -> Figure:
    """One bar panel per metric, one bar per condition (base, steering, edit...)."""
    plt = pyplot()
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
    plt = pyplot()
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
