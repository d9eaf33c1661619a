"""What ``sparsity`` means everywhere: the fraction of prunable weights that are zero or physically removed.

Prunable weights are the weights of ``nn.Conv2d`` and ``nn.Linear`` layers — not biases, BatchNorm, nor the skip
branches a method adds (:class:`connprune.surgery.skips.SkipBranch` modules, recognised by type). An equal-budget
comparison of a network with skip branches counts the branches' non-zero weights too (``include_skips``), so
N2NSkip and plain pruning compare at the same number of non-zero weights.
"""

from __future__ import annotations

from collections.abc import Mapping

import torch
from torch import nn

from connprune.surgery.skips import skip_module_names

PRUNABLE_LAYERS = (nn.Conv2d, nn.Linear)


def prunable_weights(model: nn.Module, include_skips: bool = False) -> dict[str, torch.nn.Parameter]:
    """Parameter name → weight of every conv/linear layer that counts towards sparsity (skips excluded unless
    ``include_skips``)."""
    skipped = set() if include_skips else skip_module_names(model)
    found = {}
    for name, module in model.named_modules():
        if isinstance(module, PRUNABLE_LAYERS) and name not in skipped:
            found[f"{name}.weight" if name else "weight"] = module.weight
    return found


def count_prunable(model: nn.Module) -> int:
    """Number of prunable weights (zeros included)."""
    return sum(w.numel() for w in prunable_weights(model).values())


def count_nonzero(model: nn.Module, masks: Mapping[str, torch.Tensor] | None = None,
                  include_skips: bool = False) -> int:
    """Non-zero prunable weights, after applying ``masks`` (parameter name → keep-mask) if given; with
    ``include_skips`` the weights of added skip branches count too (N2NSkip's equal-budget comparisons)."""
    total = 0
    for name, weight in prunable_weights(model, include_skips).items():
        kept = weight.detach() != 0
        if masks is not None and name in masks:
            kept &= masks[name].to(kept.device, torch.bool)
        total += int(kept.sum())
    return total


def sparsity(model: nn.Module, masks: Mapping[str, torch.Tensor] | None = None,
             reference_count: int | None = None, include_skips: bool = False) -> float:
    """Fraction of prunable weights that are zero or removed.

    ``reference_count`` is the dense model's prunable weight count; give it for a physically shrunk model so that
    removed weights count as pruned. ``include_skips`` counts the non-zero weights of skip branches as kept (the
    equal-budget count of N2NSkip).
    """
    reference = reference_count if reference_count is not None else count_prunable(model)
    return 1.0 - count_nonzero(model, masks, include_skips) / max(reference, 1)


__all__ = ["PRUNABLE_LAYERS", "count_nonzero", "count_prunable", "prunable_weights", "sparsity"]
