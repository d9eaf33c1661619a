"""The demo: every registered method appears in its results, table and plot (short run); its figures and takeaway
checked through their data on synthetic results (no training)."""

from __future__ import annotations

import json

import numpy as np
from PIL import Image

from connprune import methods
from connprune.experiments.demo import draw_figures, run_demo, settings, write_report


def test_demo_covers_every_method(tmp_path):
    report = run_demo(tmp_path, epochs=2, progress=False)
    results = json.loads((tmp_path / "results.json").read_text())
    assert {row["method"] for row in results["pruning"]} == set(methods.names())
    assert len(results["pruning"]) == sum(len(settings(name)[1]) for name in methods.names())
    text = report.read_text()
    assert all(f"| {name} |" in text for name in methods.names())
    assert text.startswith("# connprune demo") and "**Takeaway.** On lenet5 at " in text
    for png in ("training_curves.png", "shift_accuracy.png", "accuracy_vs_sparsity.png", "shift_pruned_vs_dense.png"):
        image = np.asarray(Image.open(tmp_path / png).convert("L"))
        assert image.shape[1] > 100 and len(np.unique(image)) > 10  # a real picture, not a blank


def pruned(method: str, model: str, sparsity: float | str, acc: float, shifted: float) -> dict:
    return {"method": method, "kind": "trained", "model": model, "target_sparsity": sparsity,
            "achieved_sparsity": 0.5 if sparsity == "auto" else sparsity, "nonzero_weights": 100, "params_after": 900,
            "macs_after": 1800, "acc_pruned": 0.5, "acc_after": acc, "shift_acc_after": {"fog:1": shifted,
                                                                                        "mean": shifted},
            "prune_seconds": 0.1}


def dense(accuracy: float, shifted: float) -> dict:
    return {"accuracy": accuracy, "loss": 0.2, "params": 1000, "macs": 2000, "train_seconds": 1.0,
            "shift": {"fog:1": shifted, "mean": shifted}, "shift_per_corruption": {"fog": shifted, "mean": shifted}}


SYNTHETIC = {"data": "digits", "seed": 0, "train_samples": 1437, "test_samples": 360,
             "models": {"mlp": dense(0.95, 0.70), "lenet5": dense(0.97, 0.75)},
             "pruning": [pruned("magnitude", "lenet5", 0.5, 0.96, 0.74), pruned("magnitude", "lenet5", 0.9, 0.93, 0.78),
                         pruned("random", "lenet5", 0.5, 0.90, 0.60), pruned("random", "lenet5", 0.9, 0.80, 0.50),
                         pruned("network-slimming", "resnet20", 0.5, 0.85, 0.55),
                         pruned("layer-sparsity", "mlp", "auto", 0.91, 0.66)]}
HISTORIES = {name: [{"epoch": 1, "train_loss": 1.0, "test_accuracy": 0.8}, {"epoch": 2, "train_loss": 0.5,
                                                                            "test_accuracy": 0.9}]
             for name in ("mlp", "lenet5")}


def test_demo_figures_show_pruned_against_dense_under_shift(tmp_path):
    drawn = draw_figures(SYNTHETIC, HISTORIES, tmp_path)
    [versus] = drawn["shift_pruned_vs_dense.png"].axes
    # rows in results order; the dense model of each row's model (resnet20 has none in the demo)
    assert versus.series["dense model"].tolist() == [[0.75, 0], [0.75, 1], [0.75, 2], [0.75, 3], [0.70, 5]]
    assert versus.series["sparsity 0.5"].tolist() == [[0.74, 0], [0.60, 2], [0.55, 4]]
    assert versus.series["sparsity 0.9"].tolist() == [[0.78, 1], [0.50, 3]]
    assert versus.series["sparsity auto"].tolist() == [[0.66, 5]]
    assert not versus.legend_box.overlaps(versus.axes_box)
    [curves] = drawn["accuracy_vs_sparsity.png"].axes
    assert curves.series["magnitude"].tolist() == [[0.5, 0.96], [0.9, 0.93]]
    assert set(curves.series) == {"magnitude", "random"} and curves.references == {"dense": 0.97}
    assert curves.xscale == "logit" and curves.ylim[0] < 0.80 < 0.97 < curves.ylim[1] < 1.0


def test_demo_takeaway_is_computed_from_the_results(tmp_path):
    text = write_report(SYNTHETIC, tmp_path, epochs=2).read_text()
    assert text.split("\n\n")[1] == (
        "**Takeaway.** On lenet5 at 0.9 sparsity, the highest that both methods reached, magnitude keeps the most "
        "accuracy: 0.9300 after fine-tuning, -0.0400 against the dense model's 0.9700 (next: random, 0.8000). Under "
        "distribution shift at that sparsity the pruned models reach 0.5000 to 0.7800 mean accuracy against the dense "
        "model's 0.7500: 1 of 2 match or beat it (magnitude).")
    flipped = {**SYNTHETIC, "pruning": [dict(r, acc_after=1.0 - r["acc_after"]) for r in SYNTHETIC["pruning"]]}
    assert "0.9 sparsity, the highest that both methods reached, random keeps the most accuracy: 0.2000" in \
        write_report(flipped, tmp_path, epochs=2).read_text()
