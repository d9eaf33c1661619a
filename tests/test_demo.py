"""The demo: every registered method appears in its results, table and plot (short run)."""

from __future__ import annotations

import json

import numpy as np
from PIL import Image

from connprune import methods
from connprune.experiments.demo import run_demo, settings


def test_demo_covers_every_method(tmp_path):
    report = run_demo(tmp_path, epochs=2, progress=False)
    results = json.loads((tmp_path / "results.json").read_text())
    assert {row["method"] for row in results["pruning"]} == set(methods.names())
    assert len(results["pruning"]) == sum(len(settings(name)[1]) for name in methods.names())
    text = report.read_text()
    assert all(f"| {name} |" in text for name in methods.names())
    for png in ("training_curves.png", "shift_accuracy.png", "accuracy_vs_sparsity.png"):
        image = np.asarray(Image.open(tmp_path / png).convert("L"))
        assert image.shape[1] > 100 and len(np.unique(image)) > 10  # a real picture, not a blank
