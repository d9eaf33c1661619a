"""Evaluation: clean accuracy and accuracy under distribution shift."""

from __future__ import annotations

from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from connprune import data as data_mod
from connprune.data import DataSource, ImageData
from connprune.data.pipeline import Batches
from connprune.data.sources import batches
from connprune.data.shift import ShiftItem, parse_shift, shifted_images, summarise
from connprune.utils.seed import default_device


@torch.no_grad()
def evaluate(
    model: nn.Module,
    data: DataSource,
    *,
    batch_size: int = 512,
    device: torch.device | str | None = None,
    images: torch.Tensor | None = None,
) -> dict[str, float | int]:
    """Top-1 ``accuracy`` (a fraction), mean cross-entropy ``loss`` and ``samples`` of ``model`` on ``data``.

    ``data``: an :class:`ImageData` or any iterable of ``(inputs, targets)`` batches (a ``DataLoader``).
    ``images`` replaces ``data.images`` of an ImageData (e.g. a corrupted copy) keeping labels and normalisation.
    """
    device = torch.device(device) if device is not None else default_device()
    was_training = model.training
    model.eval().to(device)
    correct, loss_sum, n = 0, 0.0, 0
    source = batches(data, batch_size, device=device, who="test data") if images is None else \
        Batches(data, batch_size, device=device, images=images)  # type: ignore[arg-type]
    for x, y in source:
        logits = model(x)
        loss_sum += F.cross_entropy(logits.float(), y, reduction="sum").item()
        correct += (logits.argmax(1) == y).sum().item()
        n += len(y)
    model.train(was_training)
    return {"accuracy": correct / max(n, 1), "loss": loss_sum / max(n, 1), "samples": n}


def shift_items(spec: str, test_data: ImageData) -> list[ShiftItem]:
    """Parse a ``--shift`` spec for the data set of ``test_data``."""
    return parse_shift(spec, channels=test_data.info.input_shape[0], base_dataset=test_data.info.name)


def evaluate_shift(
    model: nn.Module,
    test_data: ImageData,
    spec: str,
    *,
    data_dir: str | Path | None = None,
    seed: int = 0,
    batch_size: int = 512,
    device: torch.device | str | None = None,
) -> dict[str, float]:
    """Accuracy under every shift in ``spec``: ``{key: accuracy, ..., "mean": mean over keys}``; ``{}`` for none."""
    items = shift_items(spec, test_data)
    accuracies: dict[str, float] = {}
    for item in items:
        if item.dataset is not None:
            shifted = data_mod.load(item.dataset, "test", data_dir)
            result = evaluate(model, shifted, batch_size=batch_size, device=device)
        else:
            images = shifted_images(test_data.images, item, seed=seed)
            result = evaluate(model, test_data, batch_size=batch_size, device=device, images=images)
        accuracies[item.key] = float(result["accuracy"])
    return summarise(accuracies) if accuracies else {}
