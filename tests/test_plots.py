"""Figures checked through their data: what matplotlib drew (series, limits, scales, legend placement, colour range,
cell texts) against the numbers given and closed-form limits."""

from __future__ import annotations

import math

import numpy as np
import pytest

from connprune.experiments.plots import (MARGIN, Pair, accuracy_vs_sparsity, errorbar_curves, heatmap,
                                         pruned_vs_dense, training_curves)


def logit(p: float) -> float:
    return math.log(p / (1 - p))


def sigmoid(z: float) -> float:
    return 1 / (1 + math.exp(-z))


def padded(low: float, high: float) -> tuple[float, float]:
    return low - MARGIN * (high - low), high + MARGIN * (high - low)


def assert_holds(axes, points) -> None:
    """Every point lies inside the axes' limits (whatever their direction)."""
    (x0, x1), (y0, y1) = sorted(axes.xlim), sorted(axes.ylim)
    for x, y in points:
        assert x0 <= x <= x1 and y0 <= y <= y1, (x, y, axes.xlim, axes.ylim)


def assert_legend_beside(axes) -> None:
    assert axes.legend_box is not None and not axes.legend_box.overlaps(axes.axes_box)
    assert axes.legend_box.x0 >= axes.axes_box.x1  # to the right of the data area


CROWDED = {  # five methods between 0.9 and 0.99 sparsity: what a 0.1-1.0 axis squeezes into its last tenth
    "magnitude": [(0.9, 0.95), (0.95, 0.93), (0.99, 0.80)],
    "random": [(0.9, 0.91), (0.95, 0.85), (0.99, 0.42)],
    "snip": [(0.9, 0.94), (0.95, 0.92), (0.99, 0.75)],
    "gcnet": [(0.91, 0.95), (0.97, 0.90)],
    "mint": [(0.93, 0.94), (0.985, 0.86)],
}


def test_crowded_sparsities_get_a_logit_axis_fitted_to_them(tmp_path):
    drawn = accuracy_vs_sparsity(CROWDED, tmp_path / "a.png", dense=0.96)
    [axes] = drawn.axes
    assert drawn.path.is_file() and axes.xscale == "logit"
    xs = [x for points in CROWDED.values() for x, _ in points]
    ys = [y for points in CROWDED.values() for _, y in points] + [0.96]
    low, high = padded(logit(min(xs)), logit(max(xs)))
    assert axes.xlim == pytest.approx((sigmoid(low), sigmoid(high)))
    assert axes.ylim == pytest.approx(padded(min(ys), max(ys)))
    assert 0.85 < axes.xlim[0] < 0.9 and 0.99 < axes.xlim[1] < 0.995  # not a fixed 0.1-1.0 axis
    for label, points in CROWDED.items():
        assert axes.series[label].tolist() == [list(p) for p in sorted(points)]
    assert axes.references == {"dense": 0.96}
    assert_holds(axes, [p for points in CROWDED.values() for p in points])
    assert_legend_beside(axes)


def test_spread_sparsities_keep_a_linear_axis(tmp_path):
    curves = {"magnitude": [(0.1, 0.9), (0.3, 0.85), (0.5, 0.7)]}
    [axes] = accuracy_vs_sparsity(curves, tmp_path / "a.png").axes
    assert axes.xscale == "linear"  # densities 0.9 to 0.5: less than a factor of 4
    assert axes.xlim == pytest.approx(padded(0.1, 0.5)) and axes.ylim == pytest.approx(padded(0.7, 0.9))
    assert_legend_beside(axes)


def test_error_bars_and_reference_lie_inside_the_limits(tmp_path):
    curves = {"a": [(0.5, 0.9, 0.02), (0.9, 0.8, 0.05)], "b": [(0.5, 0.85, 0.0), (0.99, 0.6, 0.1)]}
    drawn = errorbar_curves(curves, tmp_path / "e.png", xlabel="achieved sparsity", ylabel="accuracy", title="t",
                            reference=0.97, markers={"a": [(0.9, 0.4)]}, xscale="sparsity")
    [axes] = drawn.axes
    assert axes.xscale == "logit" and axes.references == {"dense": 0.97}
    assert axes.series["a"].tolist() == [[0.5, 0.9], [0.9, 0.8]] and axes.series["a (paper)"].tolist() == [[0.9, 0.4]]
    assert axes.ylim == pytest.approx(padded(0.4, 0.97))  # the paper's star is the lowest thing drawn
    assert_holds(axes, [(x, m - s) for points in curves.values() for x, m, s in points]
                 + [(x, m + s) for points in curves.values() for x, m, s in points])
    assert_legend_beside(axes)


def test_heatmap_colours_span_the_data_and_cells_show_the_values(tmp_path):
    values = [[0.931, 0.945, math.nan], [0.958, 0.962, 0.940]]
    [axes] = heatmap(["dense", "magnitude @ 0.9"], ["clean", "fog", "mean"], values, tmp_path / "h.png",
                     title="t").axes
    assert axes.color_range == (0.931, 0.962)  # not a fixed 0-1 scale that paints these one colour
    assert axes.texts == ["0.931", "0.945", "0.958", "0.962", "0.940"]  # a narrow range gets 3 decimals
    [wide] = heatmap(["a"], ["x", "y"], [[0.2, 0.9]], tmp_path / "w.png", title="t").axes
    assert wide.color_range == (0.2, 0.9) and wide.texts == ["0.20", "0.90"]


def test_pruned_vs_dense_places_each_pair_on_its_row(tmp_path):
    pairs = [Pair("magnitude @ 0.5", 0.71, 0.66, "sparsity 0.5"), Pair("snip @ 0.9", 0.52, 0.66, "sparsity 0.9"),
             Pair("slimming @ 0.5 (resnet20)", 0.40, None, "sparsity 0.5")]
    [axes] = pruned_vs_dense(pairs, tmp_path / "p.png", xlabel="shifted accuracy", title="t").axes
    assert axes.series["dense model"].tolist() == [[0.66, 0.0], [0.66, 1.0]]  # no hollow dot without a dense model
    assert axes.series["sparsity 0.5"].tolist() == [[0.71, 0.0], [0.40, 2.0]]
    assert axes.series["sparsity 0.9"].tolist() == [[0.52, 1.0]]
    assert axes.xlim == pytest.approx(padded(0.40, 0.71))
    assert_holds(axes, [(p.value, row) for row, p in enumerate(pairs)])
    assert_legend_beside(axes)


def test_training_curves_fit_the_accuracies(tmp_path):
    histories = {"mlp": [{"epoch": 1, "train_loss": 1.0, "test_accuracy": 0.90},
                         {"epoch": 2, "train_loss": 0.4, "test_accuracy": 0.95}],
                 "lenet5": [{"epoch": 1, "train_loss": 2.0, "test_accuracy": 0.80},
                            {"epoch": 2, "train_loss": 0.9, "test_accuracy": 0.97}]}
    loss, accuracy = training_curves(histories, tmp_path / "t.png").axes
    assert accuracy.ylim == pytest.approx(padded(0.80, 0.97))
    assert np.array_equal(accuracy.series["lenet5"], [[1, 0.80], [2, 0.97]])
    assert loss.yscale == "log" and loss.legend_box is None
    assert_legend_beside(accuracy)
