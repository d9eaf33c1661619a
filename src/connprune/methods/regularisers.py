"""Group penalties and their proximal steps, shared by the methods that train with a sparsity penalty
(``l1-reg``, ``group-l1``, ``layer-sparsity``), and :class:`RegularisedMethod`, their common
:class:`~connprune.methods.base.TrainingMethod` base.

A penalty is a list of :class:`PenaltyGroup` s, ``Σ_j λ_j · value(group_j)``. After every optimiser step one of two
solvers takes the penalty's step on each group (η = the learning rate of the step just taken):

- ``proximal``: the proximal operator of ``η·λ_j·value`` — soft-thresholding for the lasso (:func:`prox_l1`), the
  group soft-threshold for row groups (:func:`prox_row_groups`) and for a layer's negative part
  (:func:`prox_negative_part`, docs/methods/layer-sparsity.md §2), so groups reach exactly zero;
- ``subgradient``: a plain (sub)gradient step ``p ← p − η·λ_j·∂value/∂p``.

Both happen in :meth:`RegularisedMethod.on_step` (so a user's own loop gets them by calling it after
``optimizer.step()``); the loss term of these methods is zero.
"""

from __future__ import annotations

from abc import abstractmethod
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Literal

import torch
from torch import nn

from connprune.methods.base import PruneData, PruningResult, Sparsity, TrainingMethod, split_epochs
from connprune.train.trainer import Trainer, TrainHook

Prox = Callable[[Sequence[torch.Tensor], float], None]
Value = Callable[[Sequence[torch.Tensor]], torch.Tensor]
Solver = Literal["proximal", "subgradient"]


@dataclass
class PenaltyGroup:
    """One group of the penalty: the tensors it covers and its weight ``λ_j``."""

    name: str
    params: list[nn.Parameter]
    weight: float


# ------------------------------------------------------------------------------------------------- the penalties


def l1_norm(params: Sequence[torch.Tensor]) -> torch.Tensor:
    """``Σ |w|`` over the tensors."""
    return sum(p.abs().sum() for p in params)


@torch.no_grad()
def prox_l1(params: Sequence[torch.Tensor], threshold: float) -> None:
    """Soft-thresholding, the proximal step of ``threshold·‖·‖_1`` (in place)."""
    for p in params:
        p.copy_(p.sign() * (p.abs() - threshold).clamp(min=0))


def _rows(params: Sequence[torch.Tensor]) -> torch.Tensor:
    return torch.cat([p.reshape(p.shape[0], -1) for p in params], dim=1)


def row_norms(params: Sequence[torch.Tensor]) -> torch.Tensor:
    """``‖row_i‖_2`` of every output unit over the tensors (weight rows and biases side by side)."""
    return torch.linalg.vector_norm(_rows(params), dim=1)


def row_group_norm(params: Sequence[torch.Tensor]) -> torch.Tensor:
    """``Σ_i ‖row_i‖_2``: each output unit's weights (and bias) are one group."""
    return row_norms(params).sum()


@torch.no_grad()
def prox_row_groups(params: Sequence[torch.Tensor], threshold: float) -> None:
    """Row-wise group soft-threshold, the proximal step of ``threshold·Σ_i ‖row_i‖_2`` (in place)."""
    norms = row_norms(params)
    factor = (1.0 - threshold / norms.clamp(min=1e-30)).clamp(min=0)
    for p in params:
        p.mul_(factor.view(-1, *([1] * (p.dim() - 1))))


def negative_part_norm(params: Sequence[torch.Tensor]) -> torch.Tensor:
    """``‖[neg(W), neg(b)]‖_F`` over the tensors of one group (docs/methods/layer-sparsity.md §2); its gradient is 0
    on positive entries."""
    squares = sum((p.clamp(max=0) ** 2).sum() for p in params)
    return torch.sqrt(squares) if bool(squares > 0) else squares  # sqrt'(0) is undefined: the 0 branch has grad 0


@torch.no_grad()
def prox_negative_part(params: Sequence[torch.Tensor], threshold: float) -> None:
    """Proximal step of ``threshold·‖neg(·)‖_F`` (docs/methods/layer-sparsity.md §2, "proximal step"), in place:
    positive entries are kept, the negative entries ``v`` become ``v·max(0, 1 − threshold/‖v‖)``, exactly 0 when
    ``‖v‖ ≤ threshold``."""
    norm = float(negative_part_norm(params))
    if norm == 0.0:
        return
    factor = max(0.0, 1.0 - threshold / norm)
    for p in params:
        p.copy_(p.clamp(min=0) + factor * p.clamp(max=0))


def penalty_value(groups: Sequence[PenaltyGroup], value: Value = negative_part_norm) -> torch.Tensor:
    """``Σ_j λ_j · value(group_j)`` (differentiable)."""
    total = torch.zeros(())
    for group in groups:
        if group.weight:
            total = total + group.weight * value(group.params)
    return total


def penalty_step(groups: Sequence[PenaltyGroup], lr: float, solver: Solver = "proximal",
                 prox: Prox = prox_negative_part, value: Value = negative_part_norm) -> None:
    """The penalty's step after an optimiser step of learning rate ``lr``: a proximal step (``threshold = lr·λ_j``)
    or a (sub)gradient step ``p ← p − lr·λ_j·∂value/∂p``. λ = 0 leaves a group untouched."""
    for group in groups:
        if group.weight == 0:
            continue
        if solver == "proximal":
            prox(group.params, lr * group.weight)
            continue
        with torch.enable_grad():
            grads = torch.autograd.grad(value(group.params), group.params, allow_unused=True)
        with torch.no_grad():
            for p, g in zip(group.params, grads):
                if g is not None:
                    p.sub_(lr * group.weight * g)


class PenaltyHook(TrainHook):
    """A trainer hook taking :func:`penalty_step` after every optimiser step (η = the learning rate of that step)."""

    def __init__(self, groups: Sequence[PenaltyGroup], solver: Solver = "proximal",
                 prox: Prox = prox_negative_part, value: Value = negative_part_norm) -> None:
        self.groups, self.solver, self.prox, self.value = list(groups), solver, prox, value

    def after_step(self, trainer: Trainer) -> None:
        penalty_step(self.groups, float(trainer.optimizer.param_groups[0]["lr"]), self.solver, self.prox, self.value)


# -------------------------------------------------------------------------------------------------------- the base


class RegularisedMethod(TrainingMethod):
    """Train with a group penalty (its step after every optimiser step), then refit without it.

    Subclasses give the groups (:meth:`penalty_groups`), the penalty (:attr:`prox`, :attr:`value`) and
    :meth:`~connprune.methods.base.TrainingMethod.finalize`; ``params`` must have ``solver`` and ``refit_epochs``.
    The recipe's epochs split into ``epochs − refit`` penalised and ``refit`` (default a third) refit epochs, the
    post-lasso refit (docs/methods/layer-sparsity.md §2 "Refitting").
    """

    prox: Prox = staticmethod(prox_negative_part)
    value: Value = staticmethod(negative_part_norm)

    @abstractmethod
    def penalty_groups(self, model: nn.Module) -> list[PenaltyGroup]:
        """The groups the penalty acts on (called by :meth:`start`, after the graph is known)."""

    def training_epochs(self, epochs: int) -> tuple[int, int]:
        return split_epochs(self.name, epochs, self.params.refit_epochs)

    def start(self, model: nn.Module, sparsity: Sparsity, data: PruneData | None = None, **schedule: int) -> None:
        super().start(model, sparsity, data, **schedule)
        self.groups = self.penalty_groups(model)

    def _prune(self, model: nn.Module, sparsity: Sparsity, data: PruneData) -> PruningResult:
        result = super()._prune(model, sparsity, data)
        result.info.setdefault("refit_epochs", result.train_after)
        return result

    def on_step(self, step: int, model: nn.Module, optimizer: torch.optim.Optimizer) -> None:
        penalty_step(self.groups, float(optimizer.param_groups[0]["lr"]), self.params.solver, self.prox, self.value)

    def description(self) -> str:
        return f"{self.name} λ={self.groups[0].weight if getattr(self, 'groups', None) else self.params.lam:g}"


__all__ = ["PenaltyGroup", "PenaltyHook", "RegularisedMethod", "l1_norm", "negative_part_norm", "penalty_step",
           "penalty_value", "prox_l1", "prox_negative_part", "prox_row_groups", "row_group_norm", "row_norms"]
