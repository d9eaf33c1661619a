"""SNACS: Slimming Neural networks using Adaptive Connectivity Scores (Ganesh, Blanchard, Corso & Yasaei Sekeh,
arXiv 2006.12463).

Follows docs/methods/snacs.md. SNACS keeps MINT's connection scores (:mod:`connprune.methods.mint`) and adds
three things, all computed once, before any training (single shot):

1. **Adaptive CMI** (docs/methods/snacs.md §2 "Weight scaling φ", "ACMI"): ``ρ̃_{c,p} = φ(w̄_{c,p}) · Î(A_c; A_p |
   A_{−p})`` with the fast hash-based (EDGE) CMI and ``w̄_{c,p}`` the mean min–max-normalised weight of the cell; φ ∈
   {1, w̄, w̄², exp(−w̄²/2)} (``phi = one | weight | weight_sq | exp_weight``). Normalisation over all conv/linear
   weights: of ``|w|`` (``weight_norm="magnitude"``, connprune's default) or of signed w (``"signed"``, the reference
   code's, which favours positive weights; docs/methods/snacs.md §8).
2. **Per-layer upper limits from operating constraints** (docs/methods/snacs.md §2, reference
   ``gamma_sensitivity5.py``): for every child layer and every level q of a grid Q, prune only that layer at q (quantile
   of its unique ACMI values, no protection), recompute the child's spatially averaged activations on the scoring set
   (exactly, from patch means: :func:`connprune.measure.activations.masked_mean_output` — one matrix product per q
   instead of a forward pass), clip at 0, and score an RBF ``sklearn.svm.SVC(tol=1e-5, random_state=0)`` trained on the
   unpruned activations against the labels: ``acc_l(q)`` (on a seeded subset of ``constraint_samples`` scoring samples,
   default 1,000, to bound the SVM's quadratic cost; the reference uses all). Then ``u_l = max{q : acc_l(q) ≥ max acc −
   0.7·(max acc − min acc)}``. Curves are cached per (layer weights, scores, samples, grid), in memory and optionally as
   JSON files in ``cache_dir``. Layers are independent (the paper's "jointly" is not specified; docs/methods/snacs.md
   §8).
3. **Protection of critical filters** (docs/methods/snacs.md §2 "Sensitivity", reference ``retrain_stage3_sens.py``):
   with V the kernel-averaged normalised weights of the grandchild layer(s), ``imp[k, j] = V̂[k, j] / Σ_j' V̂[k, j']``
   and ``s_c = mean_k Σ_{j∈c} imp[k, j]``; the ``round(κ·G)`` child groups of highest s keep every incoming connection
   (``protect_order="lowest"`` reproduces the reference script's ascending sort). The model's output layer has no
   grandchild (s = 1 for all groups) and gets no protection.

Masks (docs/methods/snacs.md §3 step 7): ``mode="single_shot"`` (default; *reconstructed*) prunes every layer to its
limit u_l (MINT's rule with π = 1); ``mode="sweep"`` is the reference's π grid with fine-tuning and a validation pick
(:func:`connprune.methods.level_sweep.sweep_prune_levels`). A numeric ``sparsity`` uses the limits as caps on a global
ACMI order (as MINT). ``result.info`` carries the wall time of each stage — ``seconds_activations``, ``seconds_cmi``,
``seconds_constraints``, ``seconds_sensitivity``, ``seconds_masks`` — and the chosen limits.
"""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any, Literal

import numpy as np
import torch
from pydantic import Field
from torch import nn

from connprune.errors import UserError
from connprune.graph import is_grouped
from connprune.measure.activations import masked_mean_output
from connprune.measure.sparsity import prunable_weights
from connprune.methods import register
from connprune.methods.base import PruneData
from connprune.methods.mint import (ChildLayer, ConnectivityParams, ConnectivityPruning, ScoringState, _eligible,
                                   select_cells)
from connprune.methods.score_cache import fingerprint
from connprune.utils.io import write_json

__all__ = ["Snacs", "SnacsParams", "cell_weight_means", "constraint_curve", "limit_from_curve", "normalised_weights",
           "phi_values", "protected_groups", "sensitivity"]

Phi = Literal["one", "weight", "weight_sq", "exp_weight"]
DEFAULT_GRID = [q / 100 for q in range(1, 97, 5)]  # 1, 6, …, 96 % (docs/methods/snacs.md §4)


# -------------------------------------------------------------------------------------------------- weight scaling
def normalised_weights(model: nn.Module, norm: Literal["magnitude", "signed"] = "magnitude"
                       ) -> dict[str, torch.Tensor]:
    """``ŵ = (w − w_min)/(w_max − w_min)`` per prunable weight tensor, min and max over all of them
    (docs/methods/snacs.md §2 φ step 1); ``magnitude`` normalises ``|w|``."""
    weights = {name: w.detach().float().cpu() for name, w in prunable_weights(model).items()}
    if norm == "magnitude":
        weights = {name: w.abs() for name, w in weights.items()}
    low = min(float(w.min()) for w in weights.values())
    high = max(float(w.max()) for w in weights.values())
    span = high - low if high > low else 1.0
    return {name: (w - low) / span for name, w in weights.items()}


def _unit_connection_means(normalised: torch.Tensor, block: int) -> torch.Tensor:
    """(C_out, C_in_units): mean of ŵ over each connection's kernel (conv) or input block (linear)."""
    if normalised.dim() == 4:
        return normalised.mean(dim=(2, 3))
    return normalised.reshape(normalised.shape[0], -1, block).mean(dim=2)


def _group_mean(matrix: torch.Tensor, labels: torch.Tensor, dim: int) -> torch.Tensor:
    groups = int(labels.max()) + 1
    summed = torch.zeros(*(groups if d == dim else s for d, s in enumerate(matrix.shape)), dtype=matrix.dtype)
    summed.index_add_(dim, labels, matrix)
    counts = torch.bincount(labels, minlength=groups).to(matrix.dtype)
    return summed / (counts[:, None] if dim == 0 else counts[None, :])


def cell_weight_means(normalised: torch.Tensor, child: ChildLayer) -> torch.Tensor:
    """``w̄_{c,p}`` (G_child × G_parent): the mean of ŵ over all weights of cell (c, p) (docs/methods/snacs.md §2 φ
    steps 2–3, averaging over every child filter of the group, not the reference's group-number indexing)."""
    units = _unit_connection_means(normalised, child.block).double()
    return _group_mean(_group_mean(units, child.child_labels, 0), child.parent_labels, 1)


def phi_values(mean_weights: torch.Tensor, phi: Phi) -> torch.Tensor:
    """φ(w̄) (docs/methods/snacs.md §2 φ step 4): ``one`` → 1, ``weight`` → w̄, ``weight_sq`` → w̄², ``exp_weight`` →
    exp(−w̄²/2)."""
    if phi == "one":
        return torch.ones_like(mean_weights)
    if phi == "weight":
        return mean_weights
    if phi == "weight_sq":
        return mean_weights**2
    if phi == "exp_weight":
        return torch.exp(-(mean_weights**2) / 2)
    raise UserError(f"unknown phi {phi!r}; choose one, weight, weight_sq or exp_weight")


# ----------------------------------------------------------------------------------------------------- sensitivity
def _read_columns(weight: torch.Tensor, columns: list[list[int]]) -> torch.Tensor:
    """A consumer's weight restricted to the input columns that read one producer's channels, in its channel order."""
    return weight[:, [index for per_channel in columns for index in per_channel]]


def sensitivity(grandchild_weights: list[tuple[torch.Tensor, int]], child: ChildLayer) -> torch.Tensor:
    """``s_c`` per child group (docs/methods/snacs.md §2 "Sensitivity"): ``imp[k, j] = V̂[k, j] / Σ_j' V̂[k, j']`` over
    the rows k of every grandchild (normalised weights, kernel/block-averaged to one value per child unit j), and ``s_c
    = mean_k Σ_{j∈c} imp[k, j]``. Sums to 1 over the groups. Without grandchildren: all ones."""
    groups = int(child.child_labels.max()) + 1
    if not grandchild_weights:
        return torch.ones(groups, dtype=torch.float64)
    rows = torch.cat([_unit_connection_means(w, block).double() for w, block in grandchild_weights])
    totals = rows.sum(dim=1, keepdim=True)
    importance = torch.where(totals > 0, rows / torch.where(totals > 0, totals, torch.ones_like(totals)),
                             torch.full_like(rows, 1.0 / rows.shape[1]))
    per_group = torch.zeros(rows.shape[0], groups, dtype=torch.float64)
    per_group.index_add_(1, child.child_labels, importance)
    return per_group.mean(dim=0)


def protected_groups(scores: torch.Tensor, fraction: float, order: Literal["highest", "lowest"] = "highest"
                     ) -> torch.Tensor:
    """Bool mask of the ``round(fraction·G)`` groups of highest (or lowest) sensitivity (ties: lower index)."""
    count = min(len(scores), max(0, round(fraction * len(scores))))
    ranking = torch.argsort(-scores if order == "highest" else scores, stable=True)
    chosen = torch.zeros(len(scores), dtype=torch.bool)
    chosen[ranking[:count]] = True
    return chosen


# ------------------------------------------------------------------------------------------ operating constraints
def limit_from_curve(levels: list[float], accuracies: list[float | None], factor: float = 0.7) -> float:
    """``u = max{q : acc(q) ≥ max acc − factor·(max acc − min acc)}`` over the evaluated levels (None: not evaluated)
    (docs/methods/snacs.md §2, reference ``gamma_sensitivity5.py``)."""
    pairs = [(q, float(a)) for q, a in zip(levels, accuracies, strict=True) if a is not None]
    acc = np.asarray([a for _, a in pairs], dtype=np.float64)
    threshold = acc.max() - factor * (acc.max() - acc.min())
    return float(max(q for q, a in pairs if a >= threshold))


def constraint_curve(module: nn.Module, child: ChildLayer, acmi: torch.Tensor, patch_means: torch.Tensor,
                     labels: torch.Tensor, levels: list[float], *, search: Literal["grid", "bisect"] = "grid",
                     factor: float = 0.7) -> list[float | None]:
    """``acc_l(q)`` for the levels q (docs/methods/snacs.md §2 steps 1–2): the layer alone pruned at q over its unique
    ACMI values, child activations recomputed exactly from ``patch_means`` and clipped at 0, scored by an RBF SVC
    fitted on the unpruned (clipped) activations. ``grid``: every level; ``bisect``: the two ends and a bisection
    for the last level above the threshold, assuming accuracy does not rise with q (about log2 of the levels;
    unevaluated levels are None)."""
    from sklearn.svm import SVC

    features = masked_mean_output(patch_means.double(), module, module.weight.detach().double()).clamp(min=0)
    y = labels.numpy()
    svm = SVC(tol=1e-5, random_state=0).fit(features.numpy(), y)
    weight = module.weight.detach().double()

    def accuracy(level: float) -> float:
        pruned = select_cells({child.name: acmi}, {child.name: 1.0}, prune_level=level)[child.name]
        units = pruned[child.child_labels][:, child.parent_labels]
        keep = (~units)[:, :, None, None].expand_as(weight) if weight.dim() == 4 else \
            (~units).repeat_interleave(child.block, dim=1)
        masked = masked_mean_output(patch_means.double(), module, weight * keep).clamp(min=0)
        return float(svm.score(masked.numpy(), y))

    if search == "grid":
        return [accuracy(level) for level in levels]
    curve: list[float | None] = [None] * len(levels)
    curve[0], curve[-1] = accuracy(levels[0]), accuracy(levels[-1])
    threshold = curve[0] - factor * (curve[0] - min(curve[0], curve[-1]))
    low, high = 0, len(levels) - 1  # curve[low] ≥ threshold; the answer lies in [low, high]
    while high - low > 1 and curve[high] < threshold:
        middle = (low + high) // 2
        curve[middle] = accuracy(levels[middle])
        low, high = (middle, high) if curve[middle] >= threshold else (low, middle)
    return curve


# ------------------------------------------------------------------------------------------------------ the method
class SnacsParams(ConnectivityParams):
    phi: Phi = "weight"
    """Weight scaling of the CMI (ACMI)."""
    weight_norm: Literal["magnitude", "signed"] = "magnitude"
    """Min–max normalisation of |w| (connprune) or of signed w (reference code)."""
    limits: Literal["constraints", "fixed"] = "constraints"
    """Per-layer limits from operating constraints (SVM curves) or ``upper_limit``/``layer_limits`` as given."""
    constraint_grid: list[float] = Field(default_factory=lambda: list(DEFAULT_GRID))
    """Levels q (fractions of a layer's cells) of the operating-constraint curves."""
    constraint_samples: int | None = Field(1000, ge=20)
    """Scoring samples the SVM curves use (a seeded subset; None: all, as the reference). The SVM's cost grows
    about quadratically with the samples and the curves are computed for every layer."""
    constraint_factor: float = Field(0.7, ge=0.0, le=1.0)
    """Share of the accuracy range a layer may lose at its limit."""
    constraint_search: Literal["grid", "bisect"] = "grid"
    """Evaluate every level of ``constraint_grid`` (the reference's rule) or bisect for the limit (about log2 of the
    levels; assumes the accuracy does not rise as more of the layer is pruned)."""
    protect_fraction: float = Field(0.1, ge=0.0, le=1.0)
    """κ: share of each layer's child groups protected from losing any incoming connection."""
    protect_order: Literal["highest", "lowest"] = "highest"
    """Protect the most sensitive groups (paper's intent) or the least (reference script's sort)."""
    mode: Literal["single_shot", "sweep"] = "single_shot"
    """``sparsity=auto``: prune every layer to its limit, or sweep π with fine-tuning (reference)."""
    cache_dir: str | None = None
    """Folder for the constraint-curve cache (JSON); None: in-process cache only."""
    remove_filters: Literal["none", "unconnected", "lowest"] = "unconnected"
    """What becomes physical filter removal (docs/methods/snacs.md §3 step 7): ``none`` — connection masks only
    (protected groups and each group's best input keep every filter connected, so on CNNs nothing is removed and
    MACs stay dense); ``unconnected`` — a filter whose connections to all unprotected child groups are pruned is cut
    from its protected consumers too, so the surgery removes it with its incoming kernels; ``lowest`` — also the
    filters of lowest kept outgoing ACMI, up to ``filter_fraction`` of each scored layer's input groups. Applies to
    ``sparsity=auto``; a numeric sparsity is met with connection masks (the surgery still removes what they
    disconnect)."""
    filter_fraction: float = Field(0.5, ge=0.0, lt=1.0)
    """With ``remove_filters=lowest``: the share of every scored layer's input (parent) groups removed."""


_CURVE_CACHE: dict[str, list[float]] = {}


@register
class Snacs(ConnectivityPruning):
    name = "snacs"
    paper = ("Ganesh, Blanchard, Corso & Yasaei Sekeh, Slimming Neural Networks using Adaptive Connectivity "
             "Scores (arXiv 2006.12463)")
    summary = ("single-shot: weight-scaled hash CMI of filter-group connections, per-layer limits from SVM "
               "operating constraints, critical filters protected; disconnected filters removed")
    Params = SnacsParams
    needs_patch_means = True
    default_prune_level = 1.0
    default_pi_grid = (0.5, 0.6, 0.7, 0.8, 0.9, 1.0)

    def adapt(self, model: nn.Module, state: ScoringState, data: PruneData) -> None:
        params = self.params
        normalised = normalised_weights(model, params.weight_norm)
        for child in state.children:
            cmi = state.scores[child.name]
            state.scores[child.name] = phi_values(cell_weight_means(normalised[child.weight_name], child),
                                                  params.phi) * cmi
        started = time.perf_counter()
        if params.limits == "constraints":
            curves, limits = {}, {}
            for child in state.children:
                curve = self._curve(model, child, state)
                curves[child.name] = curve
                limits[child.name] = params.layer_limits.get(
                    child.name, limit_from_curve(params.constraint_grid, curve, params.constraint_factor))
            state.limits = limits
            state.info["constraint_curves"] = {"levels": list(params.constraint_grid), **curves}
        state.seconds["constraints"] = time.perf_counter() - started
        started = time.perf_counter()
        protected = {}
        for child in state.children:
            # each grandchild's columns that read this child's channels, in channel order (through concatenations)
            grandchildren = [(_read_columns(normalised[f"{name}.weight"], columns), len(columns[0]))
                             for name, columns in state.graph.reads_of(child.name).items()
                             if f"{name}.weight" in normalised and not is_grouped(model.get_submodule(name))]
            if not grandchildren or params.protect_fraction == 0:
                continue
            protected[child.name] = protected_groups(sensitivity(grandchildren, child), params.protect_fraction,
                                                     params.protect_order)
        state.protected = protected
        state.info["protected_groups"] = {n: int(p.sum()) for n, p in protected.items()}
        self._clip_limits(state)
        state.seconds["sensitivity"] = time.perf_counter() - started

    def _clip_limits(self, state: ScoringState) -> None:
        """Lower each limit to what protection and ``keep_connected`` leave prunable, so that the single shot reaches
        every layer's limit (docs/methods/snacs.md §7 item 6); the clipped ones are recorded in ``info``."""
        clipped = {}
        for name, rho in state.scores.items():
            eligible = _eligible(rho, state.protected.get(name), self.params.keep_connected)
            reachable = int(eligible.sum()) / rho.numel()
            if state.limits[name] > reachable:
                clipped[name] = [state.limits[name], reachable]
                state.limits[name] = reachable
        state.info["limits_clipped"] = clipped

    def refine_cells(self, state: ScoringState, pruned: dict[str, torch.Tensor],
                     info: dict[str, Any]) -> dict[str, torch.Tensor]:
        """``remove_filters``: cut the parent groups left unconnected (or of lowest kept ACMI) from every child group
        of the layer, protected ones included, so the surgery removes those filters (docs/methods/snacs.md §3)."""
        mode = self.params.remove_filters
        if mode == "none":
            return pruned
        refined, cut = {}, {}
        for name, cells in pruned.items():
            protected = state.protected.get(name)
            rows = ~protected if protected is not None else torch.ones(cells.shape[0], dtype=torch.bool)
            if not bool(rows.any()):
                refined[name] = cells
                continue
            dead = cells[rows].all(dim=0)
            if mode == "lowest":
                dead = self._lowest_columns(state.scores[name], cells, rows, dead)
            refined[name] = cells | dead[None, :]
            cut[name] = int(dead.sum())
        info["cut_parent_groups"] = cut
        info["layer_cut_cells"] = {n: float(p.float().mean()) for n, p in refined.items()}
        return refined

    def _lowest_columns(self, acmi: torch.Tensor, cells: torch.Tensor, rows: torch.Tensor,
                        dead: torch.Tensor) -> torch.Tensor:
        """``dead`` plus the parent groups of lowest ACMI still kept toward unprotected child groups, up to
        ``filter_fraction`` of the groups (never all of them)."""
        count = min(acmi.shape[1] - 1, round(self.params.filter_fraction * acmi.shape[1]))
        kept = (acmi * (~cells & rows[:, None])).sum(dim=0)
        order = torch.argsort(kept.masked_fill(dead, float("-inf")), stable=True)
        chosen = dead.clone()
        chosen[order[: max(count, int(dead.sum()))]] = True
        return chosen

    def _curve(self, model: nn.Module, child: ChildLayer, state: ScoringState) -> list[float]:
        params = self.params
        module = model.get_submodule(child.name)
        labels = state.activations.labels
        if labels is None:
            raise UserError("snacs needs labelled training data for its operating constraints")
        patches = state.activations.patch_means[child.name]
        if params.constraint_samples is not None and params.constraint_samples < len(labels):
            rows = torch.randperm(len(labels), generator=torch.Generator().manual_seed(params.seed))
            rows = rows[: params.constraint_samples].sort().values
            labels, patches = labels[rows], patches[rows]
        search = [] if params.constraint_search == "grid" else [torch.tensor([params.constraint_factor])]
        key = fingerprint(module.weight, state.scores[child.name], patches, labels,
                          torch.tensor(params.constraint_grid, dtype=torch.float64), *search)
        if key in _CURVE_CACHE:
            return _CURVE_CACHE[key]
        path = Path(params.cache_dir) / f"snacs-curve-{key}.json" if params.cache_dir else None
        if path is not None and path.exists():
            curve = json.loads(path.read_text())["accuracies"]
        else:
            curve = constraint_curve(module, child, state.scores[child.name], patches, labels,
                                     params.constraint_grid, search=params.constraint_search,
                                     factor=params.constraint_factor)
            if path is not None:
                write_json(path, {"layer": child.name, "levels": params.constraint_grid, "accuracies": curve})
        _CURVE_CACHE[key] = curve
        return curve

    def auto_masks(self, model: nn.Module, state: ScoringState, data: PruneData
                   ) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
        if self.params.mode == "single_shot":
            masks, info = self.masks_for(model, state, None, 1.0)
            return masks, {**info, "mode": "single_shot"}
        masks, info = super().auto_masks(model, state, data)
        return masks, {**info, "mode": "sweep"}
