"""Structural edits: changes to a model's module structure (merging layers, adding skip branches) that a checkpoint
must replay to rebuild the model.

Each edit is a JSON-serialisable dict ``{"op": NAME, ...}``. :func:`perform` runs it on a model and appends the dict
to ``model.connprune_edits``, which :func:`connprune.checkpoint.save` writes to ``model.json`` and
:func:`connprune.checkpoint.load` replays (in order, before the recorded layer widths are applied) through
:func:`replay`. Nothing from the file is executed: an edit names one of a fixed allow-list of operations
(:data:`OPERATIONS`: ``merge`` — :func:`connprune.surgery.merge.merge_edit`; ``skip`` —
:func:`connprune.surgery.skips.add_skip`) with plain-data arguments.

>>> masks = edits.perform(model, {"op": "merge", "layers": ["features.0", "features.2"]}, masks)   # doctest: +SKIP
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

import torch
from torch import nn

from connprune.errors import UserError

Masks = dict[str, torch.Tensor]
Edit = Callable[[nn.Module, Mapping[str, Any], Masks], Masks]
"""``(model, spec, masks) -> masks``: changes ``model`` in place and returns the masks updated for the new structure
(masks of removed parameters dropped, masks of added parameters included)."""

OPERATIONS = ("merge", "skip")
"""The only edits a ``model.json`` may name."""


def _operation(op: Any) -> Edit:
    """The implementation of allow-listed edit ``op`` (imported here: those modules use this one)."""
    if op == "merge":
        from connprune.surgery.merge import merge_edit

        return merge_edit
    if op == "skip":
        from connprune.surgery.skips import add_skip

        return add_skip
    raise UserError(f"unknown structural edit {op!r}; known edits: {', '.join(OPERATIONS)}")


def perform(model: nn.Module, spec: Mapping[str, Any], masks: Masks | None = None) -> Masks:
    """Run edit ``spec`` on ``model`` (in place), record it on the model and return the updated masks."""
    masks = _operation(spec.get("op"))(model, spec, dict(masks or {}))
    model.connprune_edits = [*recorded(model), dict(spec)]
    return masks


def replay(model: nn.Module, specs: list[Mapping[str, Any]]) -> nn.Module:
    """Re-run recorded edits on a freshly built model (used by checkpoint loading)."""
    for spec in specs:
        perform(model, spec)
    return model


def recorded(model: nn.Module) -> list[dict[str, Any]]:
    """The edits performed on ``model`` so far, in order."""
    return list(getattr(model, "connprune_edits", []))


__all__ = ["OPERATIONS", "Edit", "perform", "recorded", "replay"]
