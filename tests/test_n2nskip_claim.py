"""benchmarks/n2nskip_claim.py's measurements and verdicts, against hand counts (no training)."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import pytest
import torch
from torch import nn

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def claim():
    spec = importlib.util.spec_from_file_location("n2nskip_claim", ROOT / "benchmarks" / "n2nskip_claim.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_sparse_macs_counts_nonzeros_times_output_positions(claim):
    conv = nn.Conv2d(2, 3, 3, padding=1, bias=False)  # 8×8 output: 64 positions
    linear = nn.Linear(3 * 4 * 4, 5)
    model = nn.Sequential(conv, nn.MaxPool2d(2), nn.Flatten(), linear)
    with torch.no_grad():
        conv.weight.zero_()
        conv.weight[0, 0, 1, 1] = 1.0  # 2 non-zero conv weights
        conv.weight[2, 1, 0, 2] = -1.0
        linear.weight.zero_()
        linear.weight[:, :7] = 0.5  # 5 · 7 = 35 non-zero linear weights, one position
    assert claim.sparse_macs(model, (2, 8, 8)) == 2 * 64 + 35 * 1


def _run(method: str, seed: int, accuracy: float, epoch1: float, nonzero: int = 100) -> dict:
    curve = [0.1, epoch1, accuracy]
    return {"data": "mnist", "model": "lenet5", "density": 0.05, "seed": seed, "method": method,
            "nonzero_weights": nonzero, "macs": 1000 if method == "csp" else 1100, "sparse_macs": 50,
            "F_weighted_t*": 0.1, "accuracy": accuracy, "accuracy_epoch1": epoch1,
            "mean_accuracy": sum(curve[1:]) / 2, "accuracy_per_epoch": curve}


def test_paired_verdicts_win_tie_and_unequal_budgets(claim):
    # N2NSkip higher by 0.05, 0.06, 0.04 (mean 0.05 > std 0.01): a win; after epoch 1 +0.1, -0.1, 0: a tie
    runs = [_run("csp", s, 0.80, 0.50) for s in range(3)]
    runs += [_run("n2nskip-csp", s, 0.80 + d, 0.50 + e) for s, d, e in ((0, 0.05, 0.1), (1, 0.06, -0.1), (2, 0.04, 0))]
    (row,) = claim.summary(runs)
    assert row["equal_nonzero"] and row["macs_ratio"] == pytest.approx(1.1)
    assert row["delta_accuracy"] == pytest.approx(0.05) and row["verdict_accuracy"] == "wins"
    assert row["verdict_accuracy_epoch1"] == "ties"
    lines = claim.verdicts([row])
    assert "**reproduced**" in lines[0] and "wins 1, ties 0, loses 0 of 1" in lines[0]
    assert "ties 1" in lines[1]
    runs[3]["nonzero_weights"] = 101  # a pair off budget is left out of the verdicts
    (row,) = claim.summary(runs)
    assert not row["equal_nonzero"]
    assert "undecided (no cell at equal non-zeros with 2+ seeds)" in claim.verdicts([row])[0]
