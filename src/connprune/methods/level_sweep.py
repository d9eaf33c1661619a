"""MINT's π sweep (docs/methods/mint.md §3 step 8), shared by MINT and SNACS (``mode="sweep"``)."""

from __future__ import annotations

import copy
from collections.abc import Callable
from typing import Any

import torch
from torch import nn

from connprune.data import read
from connprune.errors import UserError
from connprune.measure.sparsity import sparsity as sparsity_of
from connprune.methods.base import PruneData, train_with_masks
from connprune.surgery import apply_masks
from connprune.train import default_recipe, evaluate

Masks = dict[str, torch.Tensor]


def sweep_prune_levels(model: nn.Module, data: PruneData, grid: list[float],
                       masks_at: Callable[[float], tuple[Masks, dict[str, Any]]], *, epochs: int, max_drop: float,
                       validation_fraction: float, seed: int) -> tuple[Masks, dict[str, Any]]:
    """The π sweep with a validation pick: for each π, mask a copy of ``model``, fine-tune it ``epochs`` epochs on
    the training data minus a held-out ``validation_fraction`` (masks enforced, the job's fine-tuning recipe), and
    keep the most compressed π whose validation accuracy is at least the dense model's minus ``max_drop`` (the
    lowest π if none is). The chosen masks apply to the *original* weights; the job's own fine-tuning follows."""
    if data.train is None:
        raise UserError("the π sweep needs training data")
    train = read(data.train, who="the π sweep", why="it holds out validation_fraction of it")  # an iterable: all
    generator = torch.Generator().manual_seed(seed)
    order = torch.randperm(len(train), generator=generator)
    held = max(1, int(len(order) * validation_fraction))
    validation, training = train.subset(order[:held]), train.subset(order[held:])
    dense_accuracy = float(evaluate(model, validation, device=data.device)["accuracy"])
    recipe = data.recipe or default_recipe(train.info.name)
    rows, best = [], None
    for level in sorted(grid):
        masks, info = masks_at(level)
        trial = apply_masks(copy.deepcopy(model), masks)
        if epochs > 0:
            train_with_masks(trial, training, None, recipe.model_copy(update={"epochs": epochs, "seed": seed}), masks,
                             device=data.device, description=f"π={level:.3f}")
        accuracy = float(evaluate(trial, validation, device=data.device)["accuracy"])
        reached = float(sparsity_of(model, masks))
        rows.append({"prune_level": level, "sparsity": reached, "val_accuracy": accuracy})
        if accuracy >= dense_accuracy - max_drop and (best is None or reached > best[0]):
            best = (reached, level, masks, info)
    if best is None:
        level = min(grid)
        masks, info = masks_at(level)
        best = (float(sparsity_of(model, masks)), level, masks, info)
    return best[2], {**best[3], "prune_level": best[1], "sweep": rows, "dense_val_accuracy": dense_accuracy}


__all__ = ["sweep_prune_levels"]
