"""Structural edits: changes to a model's module structure (merging layers, adding skip branches) that a checkpoint
must replay to rebuild the model.

Each edit is a JSON-serialisable dict ``{"op": NAME, ...}``. The module that implements an operation registers it
with :func:`register`; :func:`perform` runs it on a model and appends the dict to ``model.connprune_edits``, which
:func:`connprune.checkpoint.save` writes to ``model.json`` and :func:`connprune.checkpoint.load` replays (in order,
before the recorded layer widths are applied) through :func:`replay`. Nothing from the file is executed: an edit
names a registered operation and its plain-data arguments.

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

_OPERATIONS: dict[str, Edit] = {}


def register(op: str) -> Callable[[Edit], Edit]:
    """Decorator registering the implementation of edit ``op``."""

    def decorate(fn: Edit) -> Edit:
        _OPERATIONS[op] = fn
        return fn

    return decorate


def _load_builtin() -> None:
    # The modules implementing edits register them on import.
    from connprune.surgery import merge, skips  # noqa: F401


def perform(model: nn.Module, spec: Mapping[str, Any], masks: Masks | None = None) -> Masks:
    """Run edit ``spec`` on ``model`` (in place), record it on the model and return the updated masks."""
    _load_builtin()
    op = spec.get("op")
    if op not in _OPERATIONS:
        raise UserError(f"unknown structural edit {op!r}; known edits: {', '.join(sorted(_OPERATIONS))}")
    masks = _OPERATIONS[op](model, spec, dict(masks or {}))
    recorded = list(getattr(model, "connprune_edits", []))
    recorded.append(dict(spec))
    model.connprune_edits = recorded
    return masks


def replay(model: nn.Module, specs: list[Mapping[str, Any]]) -> nn.Module:
    """Re-run recorded edits on a freshly built model (used by checkpoint loading)."""
    for spec in specs:
        perform(model, spec)
    return model


def recorded(model: nn.Module) -> list[dict[str, Any]]:
    """The edits performed on ``model`` so far, in order."""
    return list(getattr(model, "connprune_edits", []))


__all__ = ["Edit", "perform", "recorded", "register", "replay"]
