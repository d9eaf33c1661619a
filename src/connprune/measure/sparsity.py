"""What ``sparsity`` means everywhere: the fraction of prunable weights that are zero or physically removed.

Prunable weights are the weights of ``nn.Conv2d`` and ``nn.Linear`` layers — not biases, BatchNorm, nor the skip
branches a method adds (modules registered under a name containing ``skip``).
"""

from __future__ import annotations

from collections.abc import Mapping

import torch
from torch import nn

SKIP_MARKER = "skip"


def is_skip(name: str) -> bool:
    """Whether module or parameter ``name`` belongs to an added skip branch (not a prunable weight)."""
    return SKIP_MARKER in name


def prunable_weights(model: nn.Module, include_skips: bool = False) -> dict[str, torch.nn.Parameter]:
    """Parameter name → weight of every conv/linear layer that counts towards sparsity (skips excluded unless
    ``include_skips``)."""
    found = {}
    for name, module in model.named_modules():
        if isinstance(module, (nn.Conv2d, nn.Linear)) and (include_skips or not is_skip(name)):
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
             reference_count: int | None = None) -> float:
    """Fraction of prunable weights that are zero or removed.

    ``reference_count`` is the dense model's prunable weight count; give it for a physically shrunk model so that
    removed weights count as pruned.
    """
    reference = reference_count if reference_count is not None else count_prunable(model)
    return 1.0 - count_nonzero(model, masks) / max(reference, 1)


def layer_table(model: nn.Module, masks: Mapping[str, torch.Tensor] | None = None,
                reference: Mapping[str, tuple[int, ...]] | None = None) -> list[dict[str, object]]:
    """Per prunable layer: name, shape, weights, non-zero weights and sparsity (vs ``reference`` shapes if given)."""
    rows = []
    for name, weight in prunable_weights(model).items():
        kept = weight.detach() != 0
        if masks is not None and name in masks:
            kept &= masks[name].to(kept.device, torch.bool)
        dense = int(torch.Size(reference[name]).numel()) if reference and name in reference else weight.numel()
        nonzero = int(kept.sum())
        rows.append({"layer": name, "shape": list(weight.shape), "weights": dense, "nonzero": nonzero,
                     "sparsity": 1.0 - nonzero / max(dense, 1)})
    return rows
