"""The baselines layer sparsity is compared with (Hebiri & Lederer, "Layer Sparsity in Neural Networks", arXiv
2006.15604, 2020, §1: connection sparsity and node sparsity; spec ``layer_sparsity.md`` §1 and §5):

* ``l1-reg`` — **connection sparsity**: train with ``λ Σ_layers ‖W‖_1`` (the lasso on every prunable weight, biases
  free). Proximal solver (default): soft-thresholding ``w ← sign(w)·max(|w| − ηλ, 0)`` after every optimiser step,
  so weights reach exactly zero; ``--sparsity auto`` keeps the support the penalty found, a number keeps the largest
  ``1 − sparsity`` fraction of weights by magnitude (global). Result: masks.
* ``group-l1`` — **node sparsity**: train with ``λ Σ_{hidden layers} Σ_rows ‖[W_{i·}, b_i]‖_2`` (the ℓ1 norm of the
  rows' ℓ2 norms, i.e. the group lasso with one group per output unit; Scardapane et al., Neurocomputing 2017).
  Proximal solver: row-wise group soft-threshold ``r ← r·max(0, 1 − ηλ/‖r‖)``. ``--sparsity auto`` removes the
  units whose rows (in every coupled producer) are exactly zero; a number removes units by the same uniform-ratio
  budget as ``l1-filter`` (:mod:`connprune.methods.channel_budget`). Result: physical unit removal. The output layer
  (the classes) is never penalised.

Both split the epoch budget like ``layer-sparsity``: ``epochs − refit_epochs`` with the penalty, then
``refit_epochs`` (default a third) without it on the kept support (post-lasso refit; spec §2 "Refitting").
``solver="subgradient"`` takes a (sub)gradient step on the penalty instead of the proximal step (exact zeros then
only via the thresholding of a numeric ``--sparsity``). ``--param lambda=...`` sets λ.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Literal

import torch
from pydantic import ConfigDict, Field
from torch import nn

from connprune.graph import build
from connprune.measure import importance
from connprune.measure.sparsity import prunable_weights
from connprune.methods import register
from connprune.methods.base import Kind, MethodParams, PruneData, PruningMethod, PruningResult, Sparsity
from connprune.methods.channel_budget import ChannelBudgetParams, structured_removal
from connprune.methods.l1_filter import filter_l1
from connprune.methods.layer_sparsity import PenaltyGroup, PenaltyHook, _split_epochs
from connprune.train.trainer import Trainer


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


def row_group_norm(params: Sequence[torch.Tensor]) -> torch.Tensor:
    """``Σ_i ‖row_i‖_2``: each output unit's weights (and bias) are one group."""
    return torch.linalg.vector_norm(_rows(params), dim=1).sum()


@torch.no_grad()
def prox_row_groups(params: Sequence[torch.Tensor], threshold: float) -> None:
    """Row-wise group soft-threshold, the proximal step of ``threshold·Σ_i ‖row_i‖_2`` (in place)."""
    norms = torch.linalg.vector_norm(_rows(params), dim=1)
    factor = (1.0 - threshold / norms.clamp(min=1e-30)).clamp(min=0)
    for p in params:
        p.mul_(factor.view(-1, *([1] * (p.dim() - 1))))


class RegularisedParams(MethodParams):
    model_config = ConfigDict(extra="forbid", populate_by_name=True)

    lam: float = Field(0.003, ge=0, alias="lambda")
    """λ, the penalty's weight (``--param lambda=...``; the proximal step is lr·λ, so λ depends on the recipe:
    0.003–0.01 zero 20–55% of a 6x128 MLP's weights in a few hundred SGD steps at lr 0.05)."""
    solver: Literal["proximal", "subgradient"] = "proximal"
    refit_epochs: int | None = Field(None, ge=0)
    """Epochs of refitting on the kept support without the penalty (default: a third of the epoch budget)."""


class GroupL1Params(RegularisedParams, ChannelBudgetParams):
    model_config = ConfigDict(extra="forbid", populate_by_name=True)

    lam: float = Field(0.1, ge=0, alias="lambda")
    """λ (``--param lambda=...``); 0.1–0.3 removes units of a 6x128 MLP in a few hundred SGD steps at lr 0.05."""


def _train_with(method: PruningMethod, model: nn.Module, data: PruneData, groups: list[PenaltyGroup], solver: str,
                prox, value, refit_epochs: int | None) -> int:
    train, recipe = method.training_inputs(data)
    penalised, refit = _split_epochs(recipe.epochs, refit_epochs)
    Trainer(model, train, data.test, recipe.model_copy(update={"epochs": penalised}),
            hooks=[PenaltyHook(groups, solver, prox=prox, value=value)], progress=data.progress,
            description=f"{method.name} λ={groups[0].weight if groups else 0:g}").fit()
    return refit


@register
class L1Regularised(PruningMethod):
    name = "l1-reg"
    kind = Kind.DURING_TRAINING
    paper = "connection sparsity (lasso on weights), the baseline of Hebiri & Lederer, arXiv 2006.15604 (2020)"
    summary = "train with an l1 penalty on all weights (soft-thresholding), keep the nonzero weights, refit"
    Params = RegularisedParams
    needs_trained = False
    needs_data = True
    needs_training = True
    supports_auto = True

    def prune(self, model: nn.Module, sparsity: Sparsity, data: PruneData) -> PruningResult:
        sparsity = self.check_sparsity(sparsity)
        weights = prunable_weights(model)
        groups = [PenaltyGroup(name, [w], self.params.lam) for name, w in weights.items()]
        refit = _train_with(self, model, data, groups, self.params.solver, prox_l1, l1_norm, self.params.refit_epochs)
        if sparsity == "auto":
            masks = {name: w.detach() != 0 for name, w in weights.items()}
        else:
            masks = importance.keep_top(importance.magnitude(weights), sparsity, "global")
        zeros = sum(int((w.detach() == 0).sum()) for w in weights.values())
        total = sum(w.numel() for w in weights.values())
        return PruningResult(masks=masks, model=model, train_after=refit,
                             info={"lambda": self.params.lam, "penalty_zero_fraction": zeros / total,
                                   "refit_epochs": refit})


@register
class GroupL1Regularised(PruningMethod):
    name = "group-l1"
    kind = Kind.STRUCTURED
    paper = "node sparsity (row-group lasso), the baseline of Hebiri & Lederer, arXiv 2006.15604 (2020)"
    summary = "train with a group-l1 penalty on the rows (units) of hidden layers, remove zero units, refit"
    Params = GroupL1Params
    needs_trained = False
    needs_data = True
    needs_training = True
    supports_auto = True

    def prune(self, model: nn.Module, sparsity: Sparsity, data: PruneData) -> PruningResult:
        sparsity = self.check_sparsity(sparsity)
        train, _ = self.training_inputs(data)
        graph = build(model, train.info.input_shape)
        producers = sorted({name for group in graph.groups for name in group.producers}, key=graph.layers.index)
        groups = []
        for name in producers:
            layer = model.get_submodule(name)
            params = [layer.weight] + ([layer.bias] if layer.bias is not None else [])
            groups.append(PenaltyGroup(name, params, self.params.lam))
        refit = _train_with(self, model, data, groups, self.params.solver, prox_row_groups, row_group_norm,
                            self.params.refit_epochs)
        if sparsity != "auto":
            result = structured_removal(model, sparsity, data, self.params, filter_l1)
            result.model, result.train_after = model, refit
            result.info.update({"lambda": self.params.lam, "refit_epochs": refit})
            return result
        remove: dict[str, list[int]] = {}
        removed_units = 0
        for group in graph.groups:
            norms = torch.zeros(group.channels)
            for name in group.producers:
                norms += torch.linalg.vector_norm(_rows(dict(
                    (g.name, g.params) for g in groups)[name]).detach().cpu(), dim=1)
            dead = (norms == 0).nonzero().flatten()
            if len(dead) == group.channels:  # never empty a layer: keep one (zero) unit
                dead = dead[1:]
            if len(dead):
                remove[group.root] = dead.tolist()
                removed_units += len(dead)
        return PruningResult(remove=remove, model=model, train_after=refit,
                             info={"lambda": self.params.lam, "removed_units": removed_units, "refit_epochs": refit})


__all__ = ["GroupL1Regularised", "L1Regularised", "l1_norm", "prox_l1", "prox_row_groups", "row_group_norm"]
