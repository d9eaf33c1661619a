"""Iterative pruning: reach a sparsity in ``K`` steps with training between them, for any one-shot method.

Step ``k`` of ``K`` prunes to ``s_k`` of the *original* model's prunable weights, with

* cubic spacing (Zhu & Gupta, "To prune, or not to prune", ICLR 2018 workshop, Eq. 1 with ``s_i = 0``):
  ``s_k = s · (1 − (1 − k/K)³)``: large steps first, while the network has redundancy to lose, small ones last;
* linear spacing: ``s_k = s · k / K``.

Each step runs the method on the model the previous step left (physically shrunk, its masks carried as
``PruneData.masks`` so that earlier zeros stay zero and count toward the budget), asking for the sparsity of the
*current* model that leaves ``(1 − s_k)·N₀`` non-zero weights (``N₀``: the original count), then applies the surgery
and calls ``between`` (a fine-tune with the masks enforced) before the next step. ``K = 1`` is the one-shot method.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, replace
from typing import Any, Literal

import torch
from torch import nn

from connprune import surgery
from connprune.errors import UserError
from connprune.measure.sparsity import count_nonzero, count_prunable
from connprune.methods.base import PruneData, PruningMethod, resolve_example_inputs
from connprune.plan import PruningResult

Masks = dict[str, torch.Tensor]
Spacing = Literal["cubic", "linear"]


@dataclass(frozen=True)
class StepSchedule:
    """How many steps, their spacing, and the epochs of training between two steps."""

    steps: int = 1
    spacing: Spacing = "cubic"
    epochs: int = 1


def step_targets(sparsity: float, steps: int, spacing: Spacing = "cubic") -> list[float]:
    """The sparsity after each of ``steps`` steps (of the original weights); the last is ``sparsity``."""
    if steps < 1:
        raise UserError(f"--steps must be at least 1, got {steps}")
    if spacing not in ("cubic", "linear"):
        raise UserError(f"the step spacing is cubic or linear, got {spacing!r}")
    fractions = [k / steps for k in range(1, steps + 1)]
    if spacing == "cubic":
        return [sparsity * (1.0 - (1.0 - f) ** 3) for f in fractions]
    return [sparsity * f for f in fractions]


def prune_in_steps(method: PruningMethod, model: nn.Module, sparsity: float, data: PruneData, *, steps: int,
                   spacing: Spacing = "cubic", between: Callable[[nn.Module, Masks, int], None] | None = None,
                   shrink: bool = True) -> tuple[nn.Module, Masks, PruningResult]:
    """Prune ``model`` to ``sparsity`` in ``steps`` steps of ``method`` (see the module doc); returns the pruned
    model (a new module: ``model`` is left as it was), its masks and the last step's result, whose
    ``info["steps"]`` lists every step's target and the sparsity it reached. ``between(model, masks, step)`` runs
    after every step but the last (fine-tune there, with :class:`connprune.surgery.MaskEnforcer`)."""
    if method.needs_training:
        raise UserError(f"method {method.name!r} prunes while it trains, on its own schedule; --steps is for one-shot "
                        "methods")
    if sparsity == "auto":
        raise UserError("--steps needs a numeric --sparsity: each step prunes toward a fraction of it")
    data = replace(data, example_inputs=resolve_example_inputs(model, data))
    reference = count_prunable(model)
    current, masks = model, dict(data.masks or {})
    history: list[dict[str, Any]] = []
    result = PruningResult()
    for step, target in enumerate(step_targets(sparsity, steps, spacing), start=1):
        local = max(0.0, 1.0 - (1.0 - target) * reference / count_prunable(current))
        result = method.prune(current, local, replace(data, masks=masks or None))
        if result.skips and steps > 1:
            raise UserError(f"method {method.name!r} adds skip connections, which would pile up over steps; run it "
                            "with --steps 1")
        current, masks = surgery.apply(current, result, shrink=shrink, example_inputs=data.example_inputs)
        reached = 1.0 - count_nonzero(current, masks, include_skips=True) / reference
        history.append({"step": step, "target": target, "achieved": reached})
        if step < steps and between is not None:
            between(current, masks, step)
    result.info.update(steps=history, step_spacing=spacing)
    result.info.pop("masked_sparsity", None)  # of the last step's model, not of the original
    return current, masks, result


__all__ = ["Spacing", "StepSchedule", "prune_in_steps", "step_targets"]
