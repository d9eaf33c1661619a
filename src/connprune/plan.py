"""What a pruning method decides, as plain data: the leaf types every layer of the package may use.

A method (:mod:`connprune.methods`) returns a :class:`PruningResult`; :func:`connprune.surgery.apply` carries it
out. Keeping these types here, below both, lets surgery apply a plan without importing the methods that make it.

Result kinds, one per family of methods:

- ``masks``: boolean keep-masks over weight tensors (unstructured: magnitude, SNIP, N2NSkip; connection masks over
  whole kernel slices ``W[j, i, :, :]``: GC-Net, MINT, SNACS);
- ``remove``: output units (channels or neurons) of conv/linear layers to remove physically (L1-filter, K-FAC);
- ``merge``: consecutive layers to merge into one (layer sparsity);
- ``skips``: connections to add (N2NSkip);
- ``model``: methods that train while they prune return the trained model they pruned.

``sparsity`` means one thing everywhere: the fraction of prunable weights (conv and linear weights, not biases, BN or
added skip branches) that are zero or removed, counted after the surgery the plan implies (see
:mod:`connprune.measure.sparsity` and ``docs/methods/index.md``).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from enum import Enum
from typing import Any, Literal

import torch
from torch import nn

Sparsity = float | Literal["auto"]
"""A target sparsity in [0, 1), or ``"auto"`` for methods that choose their own budget."""


class Kind(str, Enum):
    """What a method removes (the ``kind`` column of ``connprune methods``): its selection unit."""

    UNSTRUCTURED = "unstructured"
    """Single weights."""
    CONNECTION = "connection"
    """Connections between units: whole kernel slices ``W[j, i, :, :]`` (or a linear layer's input block)."""
    STRUCTURED = "structured"
    """Whole output units (channels, neurons), removed physically."""
    DURING_TRAINING = "during-training"
    """Trains while it prunes (its unit is given in the method's summary)."""
    LAYER = "layer"
    """Whole layers, merged into their successors."""


@dataclass
class PruningResult:
    """What to prune. Mask keys and ``remove`` keys are parameter and module names of the pruned model."""

    masks: dict[str, torch.Tensor] = field(default_factory=dict)
    """Parameter name → boolean mask of the same shape (True = keep)."""
    remove: dict[str, list[int]] = field(default_factory=dict)
    """Conv/linear module name → indices of its output units to remove (coupled layers follow via graph/)."""
    merge: list[list[str]] = field(default_factory=list)
    """Runs of consecutive layer names to merge into one (layer sparsity)."""
    skips: list[dict[str, Any]] = field(default_factory=list)
    """Connections to add (N2NSkip); each a JSON-serialisable description used by ``surgery.skips``."""
    model: nn.Module | None = None
    """For methods that train while they prune: the trained model the result applies to."""
    train_after: int | None = None
    """Epochs to train after surgery with the masks enforced (``None``: the caller's fine-tune/training epochs;
    methods that train while they prune set 0, or their refit epochs)."""
    info: dict[str, Any] = field(default_factory=dict)
    """Extra numbers for ``metrics.json`` (stage timings, per-layer limits, chosen ratios, ...)."""


__all__ = ["Kind", "PruningResult", "Sparsity"]
