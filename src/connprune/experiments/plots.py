"""Matplotlib figures (PNG, Agg backend) shared by the demo and the reports.

Every figure is scaled to its data: axis limits span the points drawn (error bars and reference lines included) with
a small margin, a sparsity axis crowded towards 1 (0.5, 0.9, 0.99) is drawn on a logit scale so that every point
stands apart, heat maps colour from the data's minimum to its maximum, and legends sit outside the axes, never over a
point. Each drawing function returns a :class:`Drawn`: the PNG's path and what its axes show, read back from
matplotlib after drawing (series, limits, scales, legend and axes boxes, heat-map range and cell texts), so that
tests and callers can check a figure's content against the numbers it was given.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
from matplotlib.axes import Axes  # noqa: E402
from matplotlib.container import BarContainer, ErrorbarContainer  # noqa: E402
from matplotlib.ticker import FuncFormatter, NullLocator  # noqa: E402
from matplotlib.transforms import Bbox  # noqa: E402

from connprune.utils.io import atomic_path  # noqa: E402

MARGIN = 0.06
"""Space left on each side of the data, as a fraction of its span on the axis' scale."""


# -- what a figure shows ---------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class AxesContent:
    """What one set of axes shows, read back from matplotlib once the figure is drawn."""

    title: str
    xlim: tuple[float, float]
    ylim: tuple[float, float]
    xscale: str
    yscale: str
    series: dict[str, np.ndarray]
    """Label → ``(n, 2)`` array of the (x, y) points of each labelled line, error-bar line, scatter or bar set (bars:
    centre, height); horizontal reference lines are in :attr:`references`."""
    references: dict[str, float]
    """Label → y of each labelled horizontal line (``axhline``), or x of each vertical one (``axvline``)."""
    axes_box: Bbox
    legend_box: Bbox | None
    """Display-space boxes of the axes and of their legend (None without one)."""
    color_range: tuple[float, float] | None = None
    """``(vmin, vmax)`` of a heat map's colour scale."""
    texts: list[str] = field(default_factory=list)
    """The texts written inside the axes (a heat map's cell values), in drawing order."""


@dataclass(frozen=True)
class Drawn:
    """A saved figure: its PNG and the content of each of its axes."""

    path: Path
    axes: list[AxesContent]


def _reference(ax: Axes, line: Any) -> float | None:
    """The value of an ``axhline`` (its y) or ``axvline`` (its x); None for other lines."""
    if line.get_transform() is ax.get_yaxis_transform(which="grid"):
        return float(line.get_ydata()[0])
    if line.get_transform() is ax.get_xaxis_transform(which="grid"):
        return float(line.get_xdata()[0])
    return None


def _series(ax: Axes) -> tuple[dict[str, np.ndarray], dict[str, float]]:
    """Labelled data of ``ax``: points per label, and the values of labelled reference lines."""
    series: dict[str, np.ndarray] = {}
    references: dict[str, float] = {}
    inside = set()
    for container in ax.containers:
        if isinstance(container, ErrorbarContainer) and container.lines[0] is not None:
            series[container.get_label()] = np.asarray(container.lines[0].get_xydata(), dtype=float)
            inside.add(container.lines[0])
        elif isinstance(container, BarContainer):
            series[container.get_label()] = np.array([[p.get_x() + p.get_width() / 2, p.get_height()]
                                                      for p in container.patches], dtype=float)
    for line in ax.get_lines():
        label = line.get_label()
        if line in inside or label.startswith("_"):
            continue
        reference = _reference(ax, line)
        if reference is not None:
            references[label] = reference
        else:
            series[label] = np.asarray(line.get_xydata(), dtype=float)
    for collection in ax.collections:
        label = collection.get_label()
        if not label.startswith("_") and hasattr(collection, "get_offsets"):
            series[label] = np.asarray(collection.get_offsets(), dtype=float)
    return series, references


def content(fig: plt.Figure) -> list[AxesContent]:
    """What every axes of ``fig`` shows (drawn first, so that boxes and limits are final). Colour-bar axes are left
    out."""
    fig.canvas.draw()
    renderer = fig.canvas.get_renderer()
    found = []
    for ax in fig.axes:
        if ax.get_label() == "<colorbar>":
            continue
        series, references = _series(ax)
        legend = ax.get_legend()
        images = ax.get_images()
        norm = images[0].norm if images else None
        found.append(AxesContent(
            title=ax.get_title(), xlim=tuple(map(float, ax.get_xlim())), ylim=tuple(map(float, ax.get_ylim())),
            xscale=ax.get_xscale(), yscale=ax.get_yscale(), series=series, references=references,
            axes_box=ax.get_window_extent(renderer),
            legend_box=legend.get_window_extent(renderer) if legend is not None else None,
            color_range=(float(norm.vmin), float(norm.vmax)) if norm is not None else None,
            texts=[t.get_text() for t in ax.texts]))
    return found


def save_figure(fig: plt.Figure, path: str | Path) -> Drawn:
    """Save ``fig`` as a PNG atomically, close it, and return what it shows."""
    shown = content(fig)
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="png", dpi=120, bbox_inches="tight")
    plt.close(fig)
    return Drawn(Path(path), shown)


# -- scaling to the data ---------------------------------------------------------------------------------------------


def _forward(scale: str, values: np.ndarray) -> np.ndarray:
    if scale == "log":
        return np.log10(values)
    if scale == "logit":
        return np.log(values / (1 - values))
    return values


def _inverse(scale: str, values: np.ndarray) -> np.ndarray:
    if scale == "log":
        return 10.0 ** values
    if scale == "logit":
        return 1 / (1 + np.exp(-values))
    return values


def data_limits(values: Iterable[float], scale: str = "linear", margin: float = MARGIN) -> tuple[float, float]:
    """Limits that hold every finite value with ``margin`` of their span on each side, measured on ``scale``
    (``linear``, ``log`` or ``logit``), so that points crowded near 1 on a logit axis get the same room as points
    spread over a linear one. One distinct value gets a fixed window around it."""
    data = np.array([v for v in values if v is not None and math.isfinite(v)], dtype=float)
    if data.size == 0:
        return (0.0, 1.0)
    low, high = _forward(scale, np.array([data.min(), data.max()]))
    span = high - low
    pad = margin * span if span > 0 else (0.5 if scale != "linear" else max(0.05 * abs(low), 0.05))
    limits = _inverse(scale, np.array([low - pad, high + pad]))
    return float(limits[0]), float(limits[1])


def sparsity_scale(values: Iterable[float]) -> str:
    """``logit`` where sparsities crowd towards 1 (the densities ``1 - s`` span a factor of 4 or more, e.g. 0.5 to
    0.9, or 0.9 to 0.99, where a linear axis squeezes the high sparsities together), else ``linear``."""
    data = [v for v in values if v is not None and math.isfinite(v)]
    if not data or min(data) <= 0 or max(data) >= 1:
        return "linear"
    return "logit" if (1 - min(data)) / (1 - max(data)) >= 4 else "linear"


SPARSITY_TICKS = (0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9, 0.95, 0.98, 0.99, 0.995, 0.998, 0.999, 0.9995,
                  0.9998, 0.9999)
"""Where a logit sparsity axis gets its (plain decimal) tick labels."""


def _fit(ax: Axes, xs: Sequence[float], ys: Sequence[float], xscale: str) -> None:
    """Scale ``ax`` to the points (x on ``xscale``; y linear) and put the legend beside it."""
    ax.set_xscale(xscale)
    low, high = data_limits(xs, xscale)
    ax.set_xlim(low, high)
    if xscale == "logit":  # plain decimals (0.9, 0.99) instead of matplotlib's 1-10^-1 notation
        ax.set_xticks([t for t in SPARSITY_TICKS if low <= t <= high])
        ax.xaxis.set_major_formatter(FuncFormatter(lambda value, _: f"{value:g}"))
        ax.xaxis.set_minor_locator(NullLocator())
    ax.set_ylim(*data_limits(ys))
    legend_outside(ax)


def scale_note(label: str, scale: str) -> str:
    """``label`` with "logit scale" added inside its closing parenthesis (or in new ones) when ``scale`` is logit."""
    if scale != "logit":
        return label
    return label[:-1] + "; logit scale)" if label.endswith(")") else label + " (logit scale)"


def legend_outside(ax: Axes, **options: Any) -> None:
    """The legend to the right of the axes, top-aligned, so that it never covers a point."""
    if any(not label.startswith("_") for label in ax.get_legend_handles_labels()[1]):
        ax.legend(loc="upper left", bbox_to_anchor=(1.02, 1.0), borderaxespad=0.0, **{"fontsize": 8, **options})


# -- figures ---------------------------------------------------------------------------------------------------------


def training_curves(histories: Mapping[str, Sequence[Mapping[str, float]]], path: str | Path) -> Drawn:
    """Train loss and test accuracy per epoch, one line per run."""
    fig, (ax_loss, ax_acc) = plt.subplots(1, 2, figsize=(11, 4))
    for label, history in histories.items():
        epochs = [h["epoch"] for h in history]
        ax_loss.plot(epochs, [h["train_loss"] for h in history], label=label)
        ax_acc.plot(epochs, [h.get("test_accuracy", float("nan")) for h in history], label=label)
    ax_loss.set(xlabel="epoch", ylabel="train loss", yscale="log", title="training loss")
    ax_acc.set(xlabel="epoch", ylabel="test accuracy", title="test accuracy")
    ax_acc.set_ylim(*data_limits(h.get("test_accuracy", math.nan) for hs in histories.values() for h in hs))
    for ax in (ax_loss, ax_acc):
        ax.grid(alpha=0.3)
    legend_outside(ax_acc)
    return save_figure(fig, path)


def shift_bars(accuracies: Mapping[str, Mapping[str, float]], path: str | Path) -> Drawn:
    """Grouped bars: clean and per-corruption accuracy (averaged over severities) for each run."""
    runs = list(accuracies)
    keys = list(next(iter(accuracies.values())))
    fig, ax = plt.subplots(figsize=(max(8, 0.6 * len(keys) * len(runs)), 4))
    width = 0.8 / max(len(runs), 1)
    for i, run in enumerate(runs):
        ax.bar([k + i * width for k in range(len(keys))], [accuracies[run][key] for key in keys], width, label=run)
    ax.set_xticks([k + 0.4 - width / 2 for k in range(len(keys))], keys, rotation=45, ha="right")
    ax.set(ylabel="accuracy", title="dense models: accuracy under distribution shift")
    ax.set_ylim(0, data_limits([v for r in accuracies.values() for v in r.values()])[1])
    ax.grid(axis="y", alpha=0.3)
    legend_outside(ax)
    return save_figure(fig, path)


def accuracy_vs_sparsity(curves: Mapping[str, Sequence[tuple[float, float]]], path: str | Path, *,
                         dense: float | None = None, title: str = "accuracy vs sparsity") -> Drawn:
    """One line per method through its (sparsity, accuracy) points; the dense accuracy as a dashed line."""
    fig, ax = plt.subplots(figsize=(7.5, 4.5))
    for label, points in sorted(curves.items()):
        points = sorted(points)
        ax.plot([p[0] for p in points], [p[1] for p in points], marker="o", label=label)
    if dense is not None:
        ax.axhline(dense, color="black", linestyle="--", linewidth=1, label="dense")
    xs = [p[0] for points in curves.values() for p in points]
    scale = sparsity_scale(xs)
    ax.set(xlabel=scale_note("sparsity (fraction of prunable weights removed)", scale), ylabel="test accuracy",
           title=title)
    ax.grid(alpha=0.3, which="both")
    _fit(ax, xs, [p[1] for points in curves.values() for p in points] + ([dense] if dense is not None else []), scale)
    return save_figure(fig, path)


def series_colors(labels: Sequence[str]) -> dict[str, tuple]:
    """A fixed colour per label (tab10, then tab20), so one method has one colour in every figure of a report."""
    cmap = plt.get_cmap("tab10" if len(labels) <= 10 else "tab20")
    return {label: cmap(i % cmap.N) for i, label in enumerate(labels)}


def errorbar_curves(curves: Mapping[str, Sequence[tuple[float, float, float]]], path: str | Path, *,
                    xlabel: str, ylabel: str, title: str, reference: float | None = None,
                    reference_label: str = "dense", markers: Mapping[str, Sequence[tuple[float, float]]] | None = None,
                    marker_label: str = "paper", styles: Mapping[str, Mapping[str, object]] | None = None,
                    xscale: str = "linear", singles: Mapping[str, tuple[float, float]] | None = None) -> Drawn:
    """One line per label through its ``(x, mean, std)`` points with error bars (the std over seeds); an optional
    dashed reference line (the dense model), hollow stars per label (the paper's numbers) and single labelled
    black points (``singles``, e.g. the dense model at its MACs). ``xscale="sparsity"`` picks linear or logit from
    the data (:func:`sparsity_scale`); the axes are fitted to everything drawn."""
    fig, ax = plt.subplots(figsize=(8.5, 4.8))
    styles = styles or {}
    xs: list[float] = []
    ys: list[float] = [reference] if reference is not None else []
    for label, points in curves.items():
        points = sorted(points)
        if not points:
            continue
        style = {"marker": "o", "capsize": 3, "linewidth": 1.6, "markersize": 5, **styles.get(label, {})}
        ax.errorbar([p[0] for p in points], [p[1] for p in points], yerr=[p[2] for p in points], label=label,
                    **style)
        xs += [p[0] for p in points]
        ys += [p[1] - p[2] for p in points] + [p[1] + p[2] for p in points]
    for label, points in (markers or {}).items():
        color = styles.get(label, {}).get("color")
        ax.scatter([p[0] for p in points], [p[1] for p in points], marker="*", s=120, facecolors="none",
                   edgecolors=color or "black", linewidths=1.4, label=f"{label} ({marker_label})", zorder=5)
        xs += [p[0] for p in points]
        ys += [p[1] for p in points]
    for label, (x, y) in (singles or {}).items():
        ax.scatter([x], [y], marker="D", s=45, color="black", label=label, zorder=6)
        xs.append(x)
        ys.append(y)
    if reference is not None:
        ax.axhline(reference, color="black", linestyle="--", linewidth=1, label=reference_label)
    scale = sparsity_scale(xs) if xscale == "sparsity" else xscale
    ax.set(xlabel=scale_note(xlabel, scale), ylabel=ylabel, title=title)
    ax.grid(alpha=0.3, which="both")
    _fit(ax, xs, ys, scale)
    return save_figure(fig, path)


def _cell_digits(data: np.ndarray) -> int:
    """Decimals that tell the cells apart: 2, or 3 where the values span less than 0.1."""
    finite = data[np.isfinite(data)]
    return 3 if finite.size and float(finite.max() - finite.min()) < 0.1 else 2


def heatmap(rows: Sequence[str], columns: Sequence[str], values: Sequence[Sequence[float]], path: str | Path, *,
            title: str, colorbar_label: str = "accuracy") -> Drawn:
    """A table of numbers as colours from the data's minimum to its maximum (so that 0.93 and 0.96 differ), each
    cell annotated with its value (``nan`` cells left blank)."""
    data = np.array(values, dtype=float)
    finite = data[np.isfinite(data)]
    vmin, vmax = (float(finite.min()), float(finite.max())) if finite.size else (0.0, 1.0)
    if vmin == vmax:  # one value: a window around it, so that the colour scale is defined
        vmin, vmax = vmin - 0.005, vmax + 0.005
    digits = _cell_digits(data)
    fig, ax = plt.subplots(figsize=(max(6.0, 0.75 * len(columns) + 2.5), max(2.5, 0.38 * len(rows) + 1.5)))
    image = ax.imshow(np.ma.masked_invalid(data), cmap="viridis", vmin=vmin, vmax=vmax, aspect="auto")
    ax.set_xticks(range(len(columns)), columns, rotation=40, ha="right", fontsize=8)
    ax.set_yticks(range(len(rows)), rows, fontsize=8)
    for i in range(data.shape[0]):
        for j in range(data.shape[1]):
            if np.isfinite(data[i, j]):
                shade = (data[i, j] - vmin) / (vmax - vmin)
                ax.text(j, i, f"{data[i, j]:.{digits}f}", ha="center", va="center", fontsize=7,
                        color="black" if shade > 0.55 else "white")
    fig.colorbar(image, ax=ax, label=colorbar_label + " (scale: the data's range)", fraction=0.046, pad=0.02)
    ax.set_title(title)
    return save_figure(fig, path)


def bars_with_errors(values: Mapping[str, tuple[float, float]], path: str | Path, *, ylabel: str, title: str,
                     colors: Mapping[str, object] | None = None, log: bool = False) -> Drawn:
    """One bar per label: ``(mean, std)``, the std as an error bar; the value printed on each bar."""
    labels = list(values)
    fig, ax = plt.subplots(figsize=(max(5.0, 0.9 * len(labels) + 2), 4))
    means = [values[k][0] for k in labels]
    errors = [values[k][1] for k in labels]
    bars = ax.bar(labels, means, yerr=errors, capsize=4,
                  color=[(colors or {}).get(k, "tab:blue") for k in labels])
    for bar, mean, error in zip(bars, means, errors):  # the value beside the top of its error bar
        ax.annotate(f"{mean:.3g}", (bar.get_x() + bar.get_width() * 0.55, mean + error), ha="left",
                    va="bottom", fontsize=8, xytext=(2, 1), textcoords="offset points")
    ax.set(ylabel=ylabel, title=title)
    if log:
        ax.set_yscale("log")
    ax.tick_params(axis="x", rotation=30)
    ax.grid(axis="y", alpha=0.3, which="both")
    return save_figure(fig, path)


@dataclass(frozen=True)
class Pair:
    """One row of :func:`pruned_vs_dense`: a pruned model's value and its dense model's (None where unknown)."""

    label: str
    value: float
    dense: float | None
    group: str


def pruned_vs_dense(pairs: Sequence[Pair], path: str | Path, *, xlabel: str, title: str,
                    colors: Mapping[str, object] | None = None) -> Drawn:
    """One row per pruned model: a filled dot at its value (coloured by group, e.g. the sparsity) and a hollow dot
    at its dense model's, joined by a line, so that every method's gain or loss against dense reads at a glance.
    Series: ``dense model`` and one per group; a dot's y is its row (0 at the top)."""
    groups = list(dict.fromkeys(p.group for p in pairs))
    colors = dict(colors or series_colors(groups))
    fig, ax = plt.subplots(figsize=(8.5, max(2.8, 0.32 * len(pairs) + 1.4)))
    for row, pair in enumerate(pairs):
        if pair.dense is not None:
            ax.plot([pair.dense, pair.value], [row, row], color="0.7", linewidth=1.5, zorder=1)
    dense_rows = [(p.dense, row) for row, p in enumerate(pairs) if p.dense is not None]
    if dense_rows:
        ax.scatter([d for d, _ in dense_rows], [r for _, r in dense_rows], s=55, facecolors="none",
                   edgecolors="black", linewidths=1.4, label="dense model", zorder=3)
    for group in groups:
        rows = [(p.value, row) for row, p in enumerate(pairs) if p.group == group]
        ax.scatter([v for v, _ in rows], [r for _, r in rows], s=45, color=colors.get(group), label=group, zorder=4)
    ax.set_yticks(range(len(pairs)), [p.label for p in pairs], fontsize=8)
    ax.set(xlabel=xlabel, title=title)
    ax.grid(axis="x", alpha=0.3)
    ax.set_ylim(len(pairs) - 0.5, -0.5)
    ax.set_xlim(*data_limits([p.value for p in pairs] + [p.dense for p in pairs if p.dense is not None]))
    legend_outside(ax)
    return save_figure(fig, path)
