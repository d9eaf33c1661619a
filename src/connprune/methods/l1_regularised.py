"""The baselines layer sparsity is compared with (Hebiri & Lederer, "Layer Sparsity in Neural Networks", arXiv
2006.15604, 2020, §1: connection sparsity and node sparsity; docs/methods/layer-sparsity.md §1 and §5):

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

Both split the epoch budget like ``layer-sparsity``: ``epochs − refit_epochs`` with the penalty, then ``refit_epochs``
(default a third) without it on the kept support (post-lasso refit; docs/methods/layer-sparsity.md §2 "Refitting").
``solver="subgradient"`` takes a (sub)gradient step on the penalty instead of the proximal step (exact zeros then only
via the thresholding of a numeric ``--sparsity``). ``--param lambda=...`` sets λ.
"""

from __future__ import annotations

from typing import Literal

from pydantic import ConfigDict, Field
from torch import nn

from connprune.graph import build
from connprune.measure import importance
from connprune.measure.importance import filter_l1
from connprune.measure.sparsity import prunable_weights
from connprune.methods import register
from connprune.methods.base import Kind, MethodParams, PruningResult
from connprune.methods.budget import excluded_scores, fit_to_surgery
from connprune.methods.channel_budget import ChannelBudgetParams, structured_removal
from connprune.methods.regularisers import (PenaltyGroup, RegularisedMethod, l1_norm, prox_l1, prox_row_groups,
                                            row_group_norm, row_norms)


class RegularisedParams(MethodParams):
    model_config = ConfigDict(extra="forbid", populate_by_name=True, use_attribute_docstrings=True)

    lam: float = Field(0.003, ge=0, alias="lambda")
    """λ, the penalty's weight (``--param lambda=...``; the proximal step is lr·λ, so λ depends on the recipe:
    0.003–0.01 zero 20–55% of a 6x128 MLP's weights in a few hundred SGD steps at lr 0.05)."""
    solver: Literal["proximal", "subgradient"] = "proximal"
    """Take the penalty's proximal step (exact zeros) or a (sub)gradient step after each optimiser step."""
    refit_epochs: int | None = Field(None, ge=0)
    """Epochs of refitting on the kept support without the penalty (default: a third of the epoch budget)."""


class GroupL1Params(RegularisedParams, ChannelBudgetParams):
    model_config = ConfigDict(extra="forbid", populate_by_name=True, use_attribute_docstrings=True)

    lam: float = Field(0.1, ge=0, alias="lambda")
    """λ (``--param lambda=...``); 0.1–0.3 removes units of a 6x128 MLP in a few hundred SGD steps at lr 0.05."""


@register
class L1Regularised(RegularisedMethod):
    name = "l1-reg"
    kind = Kind.DURING_TRAINING
    paper = "connection sparsity (lasso on weights), the baseline of Hebiri & Lederer, arXiv 2006.15604 (2020)"
    summary = "train with an l1 penalty on all weights (soft-thresholding), keep the nonzero weights, refit"
    Params = RegularisedParams
    supports_auto = True
    prox = staticmethod(prox_l1)
    value = staticmethod(l1_norm)

    def penalty_groups(self, model: nn.Module) -> list[PenaltyGroup]:
        return [PenaltyGroup(name, [w], self.params.lam) for name, w in prunable_weights(model).items()]

    def finalize(self, model: nn.Module) -> PruningResult:
        weights = prunable_weights(model)
        if self.sparsity == "auto":
            masks = {name: w.detach() != 0 for name, w in weights.items()}
        else:
            scores = importance.magnitude(weights)
            masks, _ = fit_to_surgery(
                lambda level, forced: importance.keep_top(excluded_scores(scores, forced), level, "global"),
                self.sparsity, model, self.data.example_inputs, scores=scores)
        zeros = sum(int((w.detach() == 0).sum()) for w in weights.values())
        total = sum(w.numel() for w in weights.values())
        return PruningResult(masks=masks, info={"lambda": self.params.lam, "penalty_zero_fraction": zeros / total})


@register
class GroupL1Regularised(RegularisedMethod):
    name = "group-l1"
    kind = Kind.STRUCTURED
    paper = "node sparsity (row-group lasso), the baseline of Hebiri & Lederer, arXiv 2006.15604 (2020)"
    summary = "train with a group-l1 penalty on the rows (units) of hidden layers, remove zero units, refit"
    Params = GroupL1Params
    supports_auto = True
    prox = staticmethod(prox_row_groups)
    value = staticmethod(row_group_norm)

    def penalty_groups(self, model: nn.Module) -> list[PenaltyGroup]:
        self.graph = build(model, self.data.example_inputs)
        producers = sorted({name for group in self.graph.groups for name in group.producers},
                           key=self.graph.layers.index)
        groups = []
        for name in producers:
            layer = model.get_submodule(name)
            groups.append(PenaltyGroup(name, [layer.weight] + ([layer.bias] if layer.bias is not None else []),
                                       self.params.lam))
        return groups

    def finalize(self, model: nn.Module) -> PruningResult:
        if self.sparsity != "auto":
            result = structured_removal(model, self.sparsity, self.data, self.params, filter_l1)
            result.info.update({"lambda": self.params.lam})
            return result
        params = {g.name: g.params for g in self.groups}
        remove: dict[str, list[int]] = {}
        for group in self.graph.groups:
            norms = sum(row_norms(params[name]).detach().cpu() for name in group.producers)
            dead = (norms == 0).nonzero().flatten()
            if len(dead) == group.channels:  # never empty a layer: keep one (zero) unit
                dead = dead[1:]
            if len(dead):
                remove[group.root] = dead.tolist()
        return PruningResult(remove=remove, info={"lambda": self.params.lam,
                                                  "removed_units": sum(len(v) for v in remove.values())})


__all__ = ["GroupL1Regularised", "L1Regularised"]
