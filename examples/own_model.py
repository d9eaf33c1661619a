"""Prune your own model with your own data and training loop (the walk-through is docs/tutorial.md).

A residual CNN written here (not in connprune's zoo), scikit-learn's handwritten digits in a plain
``torch.utils.data.DataLoader``, a plain PyTorch training loop; pruned with l1-filter (structured) and SNACS
(connections between filter groups), fine-tuned with the mask enforcer, saved, reloaded in a fresh process, evaluated
under distribution shift and timed. About half a minute on two CPU cores.

    python examples/own_model.py --out runs/own

Then, from this folder (connprune imports ``own_model:build`` only because the command names it):

    connprune eval --checkpoint runs/own/snacs --model own_model:build --data digits --shift all --cost
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from sklearn.datasets import load_digits
from sklearn.model_selection import train_test_split
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

from connprune import checkpoint, data, methods, surgery
from connprune.measure import cost
from connprune.measure.latency import latency
from connprune.train import evaluate, evaluate_shift

HERE = Path(__file__).resolve().parent
INFO = data.info("digits")  # the normalisation connprune uses for this set, so that `connprune eval` agrees


class Block(nn.Module):
    """conv-BN-ReLU-conv-BN plus the input (He et al. 2016), with functional ReLUs."""

    def __init__(self, width: int) -> None:
        super().__init__()
        self.conv1, self.bn1 = nn.Conv2d(width, width, 3, padding=1, bias=False), nn.BatchNorm2d(width)
        self.conv2, self.bn2 = nn.Conv2d(width, width, 3, padding=1, bias=False), nn.BatchNorm2d(width)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.relu(x + self.bn2(self.conv2(F.relu(self.bn1(self.conv1(x))))))


class OwnNet(nn.Module):
    """A small residual CNN for 8×8 grey images."""

    def __init__(self, width: int = 16, num_classes: int = 10) -> None:
        super().__init__()
        self.stem, self.bn = nn.Conv2d(1, width, 3, padding=1, bias=False), nn.BatchNorm2d(width)
        self.block = Block(width)
        self.widen, self.bn_wide = nn.Conv2d(width, 2 * width, 3, stride=2, padding=1, bias=False), \
            nn.BatchNorm2d(2 * width)
        self.head = nn.Linear(2 * width, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.block(F.relu(self.bn(self.stem(x))))
        x = F.relu(self.bn_wide(self.widen(x)))
        return self.head(x.mean(dim=(2, 3)))


def build(width: int = 16, num_classes: int = 10) -> OwnNet:
    """The factory a checkpoint records (``own_model:build``)."""
    return OwnNet(width, num_classes)


def digits() -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """uint8 images (N, 1, 8, 8) and labels, split 75/25 as ``connprune ... --data digits`` splits them."""
    raw = load_digits()
    images = np.round(raw.images * 255.0 / 16.0).astype(np.uint8).reshape(-1, 1, 8, 8)
    train, test = train_test_split(np.arange(len(raw.target)), test_size=0.25, stratify=raw.target, random_state=0)
    as_tensors = [torch.from_numpy(images[train]), torch.from_numpy(raw.target[train]),
                  torch.from_numpy(images[test]), torch.from_numpy(raw.target[test])]
    return tuple(as_tensors)  # type: ignore[return-value]


def normalise(images: torch.Tensor) -> torch.Tensor:
    mean = torch.tensor(INFO.mean).view(1, -1, 1, 1)
    std = torch.tensor(INFO.std).view(1, -1, 1, 1)
    return (images.float() / 255.0 - mean) / std


def fit(model: nn.Module, loader: DataLoader, optimizer: torch.optim.Optimizer, epochs: int) -> None:
    """The user's own training loop: nothing of connprune in it."""
    model.train()
    for _ in range(epochs):
        for inputs, targets in loader:
            optimizer.zero_grad()
            F.cross_entropy(model(inputs), targets).backward()
            optimizer.step()
    model.eval()


def prune_and_fine_tune(model: nn.Module, method: str, params: dict, loader: DataLoader,
                        example: torch.Tensor) -> tuple[nn.Module, dict[str, torch.Tensor], dict]:
    """Prune half the weights, shrink, fine-tune with the pruned weights held at zero."""
    result = methods.create(method, **params).prune(model, 0.5, methods.PruneData(train=loader,
                                                                                   example_inputs=example))
    smaller, masks = surgery.apply(model, result, example_inputs=example)  # a checked, physically smaller copy
    optimizer = torch.optim.SGD(smaller.parameters(), lr=0.01, momentum=0.9)
    surgery.MaskEnforcer(smaller, masks, optimizer)  # weights and momentum of pruned entries stay zero
    fit(smaller, loader, optimizer, epochs=2)
    return smaller, masks, result.info


def reload_in_a_fresh_process(folder: Path) -> float:
    """Load the checkpoint in a new Python process through the factory and return its test accuracy."""
    code = ("import json, sys; from connprune import checkpoint, data; from connprune.train import evaluate; "
            "model = checkpoint.load(sys.argv[1], model='own_model:build'); "
            "print(json.dumps(evaluate(model, data.load('digits', 'test'), device='cpu')))")
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(HERE), os.environ.get("PYTHONPATH", "")])}
    done = subprocess.run([sys.executable, "-c", code, str(folder)], env=env, capture_output=True, text=True,
                          check=True)
    return json.loads(done.stdout.strip().splitlines()[-1])["accuracy"]


def main(out: Path) -> dict[str, dict]:
    torch.manual_seed(0)
    train_images, train_labels, test_images, test_labels = digits()
    loader = DataLoader(TensorDataset(normalise(train_images), train_labels), batch_size=64, shuffle=True,
                        generator=torch.Generator().manual_seed(0))
    test_set = data.from_tensors(test_images, test_labels, mean=INFO.mean, std=INFO.std, split="test")
    example = normalise(train_images[:1])

    model = build().eval()
    fit(model, loader, torch.optim.Adam(model.parameters(), lr=5e-3), epochs=6)
    rows = {"dense": {"accuracy": evaluate(model, test_set, device="cpu")["accuracy"],
                      "params": cost(model, example).params}}
    for method, params in (("l1-filter", {}), ("snacs", {"samples_per_class": 25, "constraint_samples": 150})):
        smaller, masks, info = prune_and_fine_tune(model, method, params, loader, example)
        folder = checkpoint.save(smaller, out / method, masks=masks, architecture="own_model:build",
                                 config={"width": 16}, data_info=INFO.to_json())
        shifted = evaluate_shift(smaller, test_set, "gaussian_noise:3,translation:2", device="cpu")
        rows[method] = {"accuracy": evaluate(smaller, test_set, device="cpu")["accuracy"],
                        "shift_mean": shifted["mean"], "sparsity": info["expected_sparsity"],
                        "params": cost(smaller, example).params,
                        "latency_ms_b64": latency(smaller, (1, 8, 8), 64, min_run_time=0.2).median_ms,
                        "reloaded_accuracy": reload_in_a_fresh_process(folder)}
    rows["dense"]["latency_ms_b64"] = latency(model, (1, 8, 8), 64, min_run_time=0.2).median_ms
    rows["dense"]["shift_mean"] = evaluate_shift(model, test_set, "gaussian_noise:3,translation:2",
                                                 device="cpu")["mean"]
    for name, row in rows.items():
        print(f"{name:10s} " + "  ".join(f"{k} {v:.4g}" for k, v in row.items()))
    return rows


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=Path("runs/own"), help="where the checkpoints go")
    main(parser.parse_args().out)
