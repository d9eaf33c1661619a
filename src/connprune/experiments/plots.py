"""Matplotlib figures (PNG, Agg backend) shared by the demo and the reports."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

from connprune.utils.io import atomic_path  # noqa: E402


def save_figure(fig: plt.Figure, path: str | Path) -> Path:
    """Save ``fig`` as a PNG atomically and close it."""
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="png", dpi=120, bbox_inches="tight")
    plt.close(fig)
    return Path(path)


def training_curves(histories: Mapping[str, Sequence[Mapping[str, float]]], path: str | Path) -> Path:
    """Train loss and test accuracy per epoch, one line per run."""
    fig, (ax_loss, ax_acc) = plt.subplots(1, 2, figsize=(10, 4))
    for label, history in histories.items():
        epochs = [h["epoch"] for h in history]
        ax_loss.plot(epochs, [h["train_loss"] for h in history], label=label)
        ax_acc.plot(epochs, [h.get("test_accuracy", float("nan")) for h in history], label=label)
    ax_loss.set(xlabel="epoch", ylabel="train loss", yscale="log", title="training loss")
    ax_acc.set(xlabel="epoch", ylabel="test accuracy", title="test accuracy")
    for ax in (ax_loss, ax_acc):
        ax.grid(alpha=0.3)
        ax.legend()
    return save_figure(fig, path)


def shift_bars(accuracies: Mapping[str, Mapping[str, float]], path: str | Path) -> Path:
    """Grouped bars: clean and per-corruption accuracy (averaged over severities) for each run."""
    runs = list(accuracies)
    keys = list(next(iter(accuracies.values())))
    fig, ax = plt.subplots(figsize=(max(8, 0.6 * len(keys) * len(runs)), 4))
    width = 0.8 / max(len(runs), 1)
    for i, run in enumerate(runs):
        ax.bar([k + i * width for k in range(len(keys))], [accuracies[run][key] for key in keys], width, label=run)
    ax.set_xticks([k + 0.4 - width / 2 for k in range(len(keys))], keys, rotation=45, ha="right")
    ax.set(ylabel="accuracy", ylim=(0, 1), title="accuracy under distribution shift")
    ax.grid(axis="y", alpha=0.3)
    ax.legend()
    return save_figure(fig, path)


def accuracy_vs_sparsity(curves: Mapping[str, Sequence[tuple[float, float]]], path: str | Path, *,
                         dense: float | None = None, title: str = "accuracy vs sparsity") -> Path:
    """One line per method through its (sparsity, accuracy) points; the dense accuracy as a dashed line."""
    fig, ax = plt.subplots(figsize=(6.5, 4.5))
    for label, points in sorted(curves.items()):
        points = sorted(points)
        ax.plot([p[0] for p in points], [p[1] for p in points], marker="o", label=label)
    if dense is not None:
        ax.axhline(dense, color="black", linestyle="--", linewidth=1, label="dense")
    ax.set(xlabel="sparsity (fraction of prunable weights removed)", ylabel="test accuracy", title=title)
    ax.grid(alpha=0.3)
    ax.legend()
    return save_figure(fig, path)


# -- experiment reports (connprune report) ---------------------------------------------------------------------------

def series_colors(labels: Sequence[str]) -> dict[str, tuple]:
    """A fixed colour per label (tab10, then tab20), so one method has one colour in every figure of a report."""
    cmap = plt.get_cmap("tab10" if len(labels) <= 10 else "tab20")
    return {label: cmap(i % cmap.N) for i, label in enumerate(labels)}


def errorbar_curves(curves: Mapping[str, Sequence[tuple[float, float, float]]], path: str | Path, *,
                    xlabel: str, ylabel: str, title: str, reference: float | None = None,
                    reference_label: str = "dense", markers: Mapping[str, Sequence[tuple[float, float]]] | None = None,
                    marker_label: str = "paper", styles: Mapping[str, Mapping[str, object]] | None = None,
                    xscale: str = "linear", ylim: tuple[float, float] | None = None,
                    singles: Mapping[str, tuple[float, float]] | None = None) -> Path:
    """One line per label through its ``(x, mean, std)`` points with error bars (the std over seeds); an optional
    dashed reference line (the dense model), hollow stars per label (the paper's numbers) and single labelled
    black points (``singles``, e.g. the dense model at its MACs)."""
    fig, ax = plt.subplots(figsize=(7.5, 4.8))
    styles = styles or {}
    for label, points in curves.items():
        points = sorted(points)
        if not points:
            continue
        style = {"marker": "o", "capsize": 3, "linewidth": 1.6, "markersize": 5, **styles.get(label, {})}
        ax.errorbar([p[0] for p in points], [p[1] for p in points], yerr=[p[2] for p in points], label=label,
                    **style)
    for label, points in (markers or {}).items():
        color = styles.get(label, {}).get("color")
        ax.scatter([p[0] for p in points], [p[1] for p in points], marker="*", s=120, facecolors="none",
                   edgecolors=color or "black", linewidths=1.4, label=f"{label} ({marker_label})", zorder=5)
    for label, (x, y) in (singles or {}).items():
        ax.scatter([x], [y], marker="D", s=45, color="black", label=label, zorder=6)
    if reference is not None:
        ax.axhline(reference, color="black", linestyle="--", linewidth=1, label=reference_label)
    ax.set(xlabel=xlabel, ylabel=ylabel, title=title, xscale=xscale)
    if ylim is not None:
        ax.set_ylim(*ylim)
    ax.grid(alpha=0.3, which="both")
    ax.legend(fontsize=8, loc="best")
    return save_figure(fig, path)


def heatmap(rows: Sequence[str], columns: Sequence[str], values: Sequence[Sequence[float]], path: str | Path, *,
            title: str, colorbar_label: str = "accuracy", vmin: float = 0.0, vmax: float = 1.0) -> Path:
    """A table of numbers as colours, each cell annotated with its value (``nan`` cells left blank)."""
    import numpy as np

    data = np.array(values, dtype=float)
    fig, ax = plt.subplots(figsize=(max(6.0, 0.75 * len(columns) + 2.5), max(2.5, 0.38 * len(rows) + 1.5)))
    image = ax.imshow(np.ma.masked_invalid(data), cmap="viridis", vmin=vmin, vmax=vmax, aspect="auto")
    ax.set_xticks(range(len(columns)), columns, rotation=40, ha="right", fontsize=8)
    ax.set_yticks(range(len(rows)), rows, fontsize=8)
    for i in range(data.shape[0]):
        for j in range(data.shape[1]):
            if np.isfinite(data[i, j]):
                shade = (data[i, j] - vmin) / max(vmax - vmin, 1e-12)
                ax.text(j, i, f"{data[i, j]:.2f}", ha="center", va="center", fontsize=7,
                        color="black" if shade > 0.55 else "white")
    fig.colorbar(image, ax=ax, label=colorbar_label, fraction=0.046, pad=0.02)
    ax.set_title(title)
    return save_figure(fig, path)


def bars_with_errors(values: Mapping[str, tuple[float, float]], path: str | Path, *, ylabel: str, title: str,
                     colors: Mapping[str, object] | None = None, log: bool = False) -> Path:
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
