"""MINT: Mutual Information-based Neuron Trimming (Ganesh, Corso & Yasaei Sekeh, arXiv 2003.08472, ICPR 2020).

Follows docs/methods/mint.md (§2 definitions, §3 algorithm). For every layer pair (parent l, child l+1) the filters of
both layers are split into contiguous equal groups, and each (child group c, parent group p) connection gets the score
``ρ^l_{c,p} = I(A_c^{l+1}; A_p^l | A_{−p}^l)``, the conditional MI between the child group's and the parent group's
activations given all other parent filters (docs/methods/mint.md §2). Connections of lowest score are removed by zeroing
the kernel slices ``W^{l+1}[j, i, :, :]`` of every child filter j in c and parent filter i in p (a Linear child after a
flatten: the ``H·W`` input block of parent channel i). Thresholds compare scores made comparable across layers
(``thresholds``: quantiles within each layer by default, :func:`comparable_scores`) with a per-layer upper limit
``u_l`` on the pruned fraction of cells (docs/methods/mint.md §2 "Thresholds"). Filters left with no outgoing (or
no incoming) connection are removed physically by :func:`connprune.surgery.apply`'s shrink (the dead-unit rule of
:mod:`connprune.surgery.shrink`), so the saved model is smaller; residual-stream channels go only when every consumer of
the stream agrees (docs/methods/mint.md §3, dependency-group rule).

connprune's choices (each *reconstructed: not confirmed from the paper*, documented options):

- **Pairs from the traced graph** (:mod:`connprune.graph`): one score matrix per *child layer* (one mask tensor).
  The parent activations are measured at the child's input (forward pre-hook, spatially averaged), i.e. the values
  the connection ``W[j, i]`` really carries: for a residual-stream child that is the sum of all coupled producers
  after the add, for a flattened conv the mean of its ``H·W`` block. The reference measures the parent conv's
  output before BN/ReLU instead (docs/methods/mint.md §2), which is ill-defined for a child with several producers.
  Child activations are the child module's output (spatial mean), as in the reference.
- **First layer** (``prune_input_layer``): the network input can be treated as the parent of the first layer, so
  an MLP's first (and largest) weight matrix can be pruned, pixels being its parent units. ``"auto"`` (default)
  does this for a linear first layer only: a conv's parents would be its 1–3 colour channels, so each pruned cell
  would silence a filter's whole input (with CIFAR images this wrecked accuracy). The paper prunes only hidden
  pairs (MNIST-MLP: "only layer 2").
- **Budget**: ``sparsity`` is connprune's fraction of prunable weights, counted after surgery
  (:func:`~connprune.methods.budget.fit_to_surgery`). Cells are taken in ascending order of their comparable score,
  a layer stopping at ``round(u_l · cells)``, until the masks zero at least ``round(sparsity · weights)`` weights —
  the cells MINT's threshold rule takes, with the level chosen to meet the budget; the overshoot is less than one
  cell. If the limits make the budget unreachable, every limit is raised by the same
  amount (``relax_limits``; recorded in ``info["limits_relaxed_by"]``) or a UserError says so.
- **π** (``sparsity="auto"``): MINT's own rule, ``δ = U[round(π·|U|)]`` over the pooled unique scores (δ = π on
  within-layer quantiles), each layer switching to its local limit when δ would prune more than ``u_l`` (here: its
  ``round(u_l·cells)`` lowest cells). By default π is swept (0.1 … 1.0, docs/methods/mint.md §3 step 8): each π is
  fine-tuned ``sweep_epochs`` on a held-out split of the training data and the most compressed one within
  ``max_accuracy_drop`` of the dense validation accuracy is kept (a validation pick, not the reference's
  best-test-epoch pick, docs/methods/mint.md §8); ``pi_grid`` sets the grid and ``prune_level`` fixes one π.
- **Estimator**: ``"edge"`` (default: the hash-based chain-rule CMI of :func:`~connprune.measure.mutual_information.
  edge_cmi_matrix`, conditioned on the other parents through their ridge predictions, fast), ``"mst"`` (MINT's
  reference MST estimator, O(N²) per cell: small networks only) or ``"random"`` (the random-cell control). Negative
  estimates are clipped to 0.
- **Groups**: ``groups=G`` gives each layer the largest divisor of its width that is ≤ G (``"auto"``: G = 64, so
  single filters up to 64 and 64 groups for 128–512 filters, docs/methods/mint.md §4); ``layer_groups`` sets a layer's
  count exactly (it must divide the width). The classifier is grouped by class.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Any, Literal

import torch
from pydantic import Field
from torch import nn

from connprune.data import ImageData
from connprune.errors import UserError
from connprune.graph import ModelGraph, build, is_depthwise
from connprune.measure import activations as acts
from connprune.measure.mutual_information import edge_cmi_matrix, mst_cmi_matrix
from connprune.measure.sparsity import count_prunable, prunable_weights
from connprune.methods import level_sweep, register, score_cache
from connprune.methods.base import (Kind, MethodParams, PruneData, PruningMethod, PruningResult, Reads, Sparsity,
                                    resolve_example_inputs)
from connprune.methods.budget import fit_to_surgery

Thresholds = Literal["layer", "normalised", "global"]

__all__ = ["ChildLayer", "ConnectivityParams", "Mint", "MintParams", "auto_groups", "cell_masks", "comparable_scores",
           "group_labels",
           "plan_children", "score_children", "select_cells"]

AUTO_MAX_GROUPS = 64


# ------------------------------------------------------------------------------------------------------------ groups
def group_labels(channels: int, groups: int) -> torch.Tensor:
    """Contiguous equal groups by index (docs/methods/mint.md §2 "Groups"): ``repeat(arange(G), C/G)``; UserError if G
    ∤ C."""
    if groups < 1 or channels % groups:
        raise UserError(f"{channels} filters cannot be split into {groups} equal groups; choose a group count "
                        f"that divides {channels} (e.g. --param groups=auto)")
    return torch.arange(groups).repeat_interleave(channels // groups)


def auto_groups(channels: int, requested: int | Literal["auto"] = "auto") -> int:
    """Group count of a layer with ``channels`` units: the largest divisor of C that is at most the requested count
    (``"auto"``: 64, so single filters up to 64 units and 64 groups for 128, 256, 512; docs/methods/mint.md §4
    defaults)."""
    limit = AUTO_MAX_GROUPS if requested == "auto" else int(requested)
    if limit < 1:
        raise UserError(f"the number of groups must be >= 1, got {requested}")
    return max(d for d in range(1, min(limit, channels) + 1) if channels % d == 0)


# ------------------------------------------------------------------------------------------------------ child layers
@dataclass
class ChildLayer:
    """One conv/linear layer whose incoming connections are scored and masked (a "child" of docs/methods/mint.md §2)."""

    name: str
    parents: tuple[str, ...]
    """Producers of the channels it reads (empty: it reads the network input)."""
    in_units: int
    """Parent units (channels) it reads."""
    block: int
    """Input features per parent unit (1; ``H·W`` for a linear after a flatten)."""
    child_labels: torch.Tensor
    parent_labels: torch.Tensor
    kernel: int
    """Weights per (child unit, parent unit) connection: ``k_h·k_w`` (conv) or ``block`` (linear)."""
    residual: bool = False
    output: bool = False
    """Produces the model's output (grouped by class)."""

    @property
    def weight_name(self) -> str:
        return f"{self.name}.weight"

    @property
    def shape(self) -> tuple[int, int]:
        return int(self.child_labels.max()) + 1, int(self.parent_labels.max()) + 1

    def cell_weights(self) -> int:
        """Weights in one (child group, parent group) cell."""
        gc, gp = self.shape
        return (len(self.child_labels) // gc) * (len(self.parent_labels) // gp) * self.kernel


def plan_children(model: nn.Module, graph: ModelGraph, *, groups: int | Literal["auto"] = "auto",
                  layer_groups: dict[str, int] | None = None, prune_input_layer: bool | Literal["auto"] = "auto",
                  exclude: list[str] | None = None) -> list[ChildLayer]:
    """The child layers of ``graph`` in forward order, with their group labels (docs/methods/mint.md §3 steps 2 and 4).

    ``layer_groups[name]`` overrides the group count of layer ``name``'s units (as child and as parent); the input
    units of the first layer use ``groups``. Depthwise and other grouped convs are skipped: the first have no
    cross-channel connections, and in the others a unit reads only its own group's channels, so a score for every
    (child group, parent group) cell has no place on their weights.
    """
    overrides = dict(layer_groups or {})
    excluded = set(exclude or [])
    unknown = (set(overrides) | excluded) - set(graph.layers)
    if unknown:
        raise UserError(f"unknown layer(s) {sorted(unknown)}; name conv/linear layers of the model, e.g. "
                        f"{', '.join(repr(n) for n in graph.layers[:3])}")
    parents_of: dict[str, list] = {}
    for pair in graph.pairs:
        parents_of.setdefault(pair.child, []).append(pair)

    def count(layer: str | None, units: int) -> int:
        if layer in overrides:  # an explicit per-layer count must divide the width
            group_labels(units, overrides[layer])
            return overrides[layer]
        return auto_groups(units, groups)

    children = []
    for name in graph.layers:
        module = model.get_submodule(name)
        if is_depthwise(module) or getattr(module, "groups", 1) > 1 or name in excluded:
            continue
        pairs = parents_of.get(name, [])
        if not pairs and not (prune_input_layer is True
                              or (prune_input_layer == "auto" and isinstance(module, nn.Linear))):
            continue
        block = pairs[0].features_per_channel if pairs else 1
        if isinstance(module, nn.Conv2d):
            in_units, kernel = module.in_channels, module.kernel_size[0] * module.kernel_size[1]
        else:
            in_units, kernel = module.in_features // block, block
        out_units = module.weight.shape[0]
        parent_name = pairs[0].parent if pairs else None
        output = name in graph.output_layers  # the classifier: grouped by class (docs/methods/mint.md §3 step 4)
        children.append(ChildLayer(
            name=name, parents=tuple(p.parent for p in pairs), in_units=in_units, block=block,
            child_labels=group_labels(out_units, out_units if output else count(name, out_units)),
            parent_labels=group_labels(in_units, count(parent_name, in_units)), kernel=kernel,
            residual=any(p.residual for p in pairs), output=output))
    if not children:
        raise UserError("the model has no conv/linear layer with incoming connections to score")
    return children


# ----------------------------------------------------------------------------------------------------------- scoring
def scoring_activations(model: nn.Module, children: list[ChildLayer], data: ImageData, *, samples_per_class: int,
                        seed: int, device: torch.device, batch_size: int = 256,
                        patch_means: bool = False) -> acts.Activations:
    """Child outputs and child inputs (= parent activations) on one class-balanced scoring set (docs/methods/mint.md §3
    step 3); with ``patch_means`` also every child's patch means (SNACS's constraints)."""
    indices = acts.class_balanced_indices(data.labels, samples_per_class, seed=seed)
    names = [c.name for c in children]
    return acts.collect(model, data, outputs=names, inputs=names, patch_means=names if patch_means else (),
                        input_blocks={c.name: c.block for c in children if c.block > 1},
                        indices=indices, batch_size=batch_size, device=device)


def score_children(children: list[ChildLayer], activations: acts.Activations, *,
                   estimator: Literal["edge", "mst", "random"] = "edge", seed: int = 0,
                   **edge: Any) -> dict[str, torch.Tensor]:
    """``ρ`` matrix (G_child × G_parent, float64, CPU) of every child layer (docs/methods/mint.md §2 "Score").
    ``edge`` keywords (``conditioning``, ``z_dim``, ``transform``, ``n_estimators``) go to :func:`edge_cmi_matrix`;
    ``random`` draws uniform scores (a seeded control: random cells under the same thresholds)."""
    scores = {}
    for index, child in enumerate(children):
        x, y = activations.outputs[child.name], activations.inputs[child.name]
        if estimator == "edge":
            rho = edge_cmi_matrix(x, y, child.child_labels, child.parent_labels, seed=seed, **edge)
        elif estimator == "mst":
            rho = mst_cmi_matrix(x, y, child.child_labels, child.parent_labels, seed=seed)
        elif estimator == "random":
            generator = torch.Generator().manual_seed(seed * 1009 + index)
            rho = torch.rand(child.shape, generator=generator, dtype=torch.float64)
        else:
            raise UserError(f"unknown estimator {estimator!r}; choose 'edge', 'mst' or 'random'")
        scores[child.name] = rho.cpu()
    return scores


def comparable_scores(scores: dict[str, torch.Tensor], thresholds: Thresholds) -> dict[str, torch.Tensor]:
    """The scores as the thresholds compare them across layers (docs/methods/mint.md §2 "Thresholds"):

    - ``layer``: each cell's quantile within its layer, ``k/cells`` for the k-th lowest (ties: lower index first), so
      a threshold π prunes the fraction π of every layer's cells (per-layer thresholds);
    - ``normalised``: each score divided by its layer's mean, so a global threshold is the same multiple of every
      layer's mean (layers whose scores spread more lose more);
    - ``global``: as they are (the reference's pooled rule; EDGE scores are not comparable across layers, their scale
      follows the group sizes and the conditioning dimension).
    """
    if thresholds == "global":
        return dict(scores)
    compared = {}
    for name, rho in scores.items():
        flat = rho.reshape(-1).to(torch.float64)
        if thresholds == "layer":
            quantile = torch.empty_like(flat)
            quantile[torch.argsort(flat, stable=True)] = torch.arange(1, len(flat) + 1, dtype=torch.float64) / len(flat)
        elif thresholds == "normalised":
            mean = float(flat.mean())
            quantile = flat / mean if mean > 0 else torch.zeros_like(flat)
        else:
            raise UserError(f"unknown thresholds {thresholds!r}; choose 'layer', 'normalised' or 'global'")
        compared[name] = quantile.reshape(rho.shape)
    return compared


# ---------------------------------------------------------------------------------------------------- thresholding
def _cap_cells(limit: float, cells: int) -> int:
    return min(cells, max(0, round(limit * cells)))


def _lowest(scores: torch.Tensor, count: int, allowed: torch.Tensor) -> torch.Tensor:
    """Bool mask of the ``count`` lowest-scoring allowed cells (ties: lower index)."""
    flat = scores.reshape(-1)
    order = torch.argsort(flat, stable=True)
    order = order[allowed.reshape(-1)[order]][:count]
    chosen = torch.zeros_like(flat, dtype=torch.bool)
    chosen[order] = True
    return chosen.reshape(scores.shape)


def _eligible(rho: torch.Tensor, protected: torch.Tensor | None, keep_connected: bool) -> torch.Tensor:
    """Cells that may be pruned: not in a protected child group, not a child group's best cell (keep_connected)."""
    mask = torch.ones_like(rho, dtype=torch.bool)
    if protected is not None:
        mask[protected.to(torch.bool)] = False
    if keep_connected:
        mask[torch.arange(rho.shape[0]), rho.argmax(dim=1)] = False
    return mask


def _by_prune_level(scores: dict[str, torch.Tensor], eligible: dict[str, torch.Tensor], caps: dict[str, int],
                    prune_level: float, quantiles: bool = False) -> dict[str, torch.Tensor]:
    """MINT's global threshold δ at prune level π (``quantiles``: the scores are within-layer quantiles and δ = π),
    each layer capped at its limit."""
    if not 0.0 <= prune_level <= 1.0:
        raise UserError(f"prune level π must be in [0, 1], got {prune_level}")
    pooled = torch.unique(torch.cat([rho.reshape(-1) for rho in scores.values()]))
    result = {}
    for name, rho in scores.items():
        if prune_level <= 0.0:
            result[name] = torch.zeros_like(rho, dtype=torch.bool)
            continue
        delta = prune_level + 1e-12 if quantiles else pooled[min(round(prune_level * len(pooled)), len(pooled) - 1)]
        below = (rho <= delta) & eligible[name]
        if int(below.sum()) >= caps[name]:
            below = _lowest(rho, caps[name], eligible[name])
        result[name] = below
    return result


def _by_target(scores: dict[str, torch.Tensor], eligible: dict[str, torch.Tensor], caps: dict[str, int],
               cell_weights: dict[str, int | torch.Tensor], target_weights: int) -> dict[str, torch.Tensor] | None:
    """Cells in ascending global score order (ties: layer order, then cell index), each layer stopping at its cap,
    until at least ``target_weights`` weights are pruned; None when the caps cannot reach it."""
    names = list(scores)
    flat_scores, flat_weights, owners, positions = [], [], [], []
    for index, name in enumerate(names):
        where = torch.nonzero(_lowest(scores[name], caps[name], eligible[name]).reshape(-1)).squeeze(1)
        flat_scores.append(scores[name].reshape(-1)[where])
        weights = cell_weights[name]
        weights = torch.as_tensor(weights, dtype=torch.int64).expand(scores[name].shape).reshape(-1)
        flat_weights.append(weights[where])
        owners.append(torch.full((len(where),), index, dtype=torch.int64))
        positions.append(where)
    all_scores, all_weights = torch.cat(flat_scores), torch.cat(flat_weights)
    all_owners, all_positions = torch.cat(owners), torch.cat(positions)
    # ties: layer order, then cell index (lexsort via two stable sorts)
    order = torch.argsort(all_owners * (1 << 32) + all_positions, stable=True)
    order = order[torch.argsort(all_scores[order], stable=True)]
    cumulative = torch.cumsum(all_weights[order], 0)
    if target_weights <= 0:
        take = 0
    elif len(cumulative) == 0 or int(cumulative[-1]) < target_weights:
        return None
    else:
        take = int(torch.searchsorted(cumulative, torch.tensor(target_weights))) + 1
    result = {name: torch.zeros_like(scores[name], dtype=torch.bool) for name in names}
    taken = order[:take]
    owners_taken, positions_taken = all_owners[taken], all_positions[taken]
    for index, name in enumerate(names):
        result[name].view(-1)[positions_taken[owners_taken == index]] = True
    return result


def select_cells(scores: dict[str, torch.Tensor], limits: dict[str, float], *,
                 cell_weights: dict[str, int | torch.Tensor] | None = None, target_weights: int | None = None,
                 prune_level: float | None = None,
                 protected: dict[str, torch.Tensor] | None = None,
                 keep_connected: bool = False, quantiles: bool = False) -> dict[str, torch.Tensor] | None:
    """Which (child group, parent group) cells to prune (True = prune), per layer.

    Exactly one of:

    - ``prune_level`` π ∈ [0, 1] (docs/methods/mint.md §2 "Thresholds"): ``δ = π`` for within-layer quantile scores
      (``quantiles``, :func:`comparable_scores` ``layer``), else ``δ = U[min(round(π·|U|), |U|−1)]`` over
      the pooled sorted unique scores, cells with ``ρ ≤ δ`` pruned; a layer where that reaches its limit (``≥ u_l``
      of its cells) prunes instead its ``round(u_l·cells)`` lowest cells. π = 0 prunes nothing; π = 1 prunes every
      layer to its limit (SNACS's single-shot mode).
    - ``target_weights`` with ``cell_weights`` (weights per cell: one count per layer, or a tensor of the cells'
      shape): cells in ascending global score order (ties: layer order, then cell index), a layer stopping at
      ``round(u_l·cells)``, until at least ``target_weights`` weights are pruned. Returns None when the limits
      cannot reach the target.

    ``protected[layer]`` (bool, G_child) marks child groups that keep all incoming connections (SNACS). Limits count
    all cells of a layer, protected ones included. ``keep_connected`` never prunes the highest-scoring cell of a
    child group, so no child filter loses all of its inputs (connprune's safeguard, not in the papers).
    """
    if (prune_level is None) == (target_weights is None):
        raise ValueError("give exactly one of prune_level and target_weights")
    protected = protected or {}
    eligible = {name: _eligible(rho, protected.get(name), keep_connected) for name, rho in scores.items()}
    caps = {name: _cap_cells(limits.get(name, 1.0), rho.numel()) for name, rho in scores.items()}
    if prune_level is not None:
        return _by_prune_level(scores, eligible, caps, prune_level, quantiles)
    if cell_weights is None:
        raise ValueError("target_weights needs cell_weights")
    return _by_target(scores, eligible, caps, cell_weights, int(target_weights))


def _cell_counts(entries: torch.Tensor | None, child: ChildLayer) -> torch.Tensor | int:
    """How many of ``entries`` (a bool tensor of the child's weight shape) fall in each (child group, parent group)
    cell; 0 without entries."""
    if entries is None:
        return 0
    per_unit = entries.reshape(entries.shape[0], child.in_units, -1).sum(dim=2).to(torch.int64).cpu()
    groups_c, groups_p = child.shape
    by_child = torch.zeros(groups_c, child.in_units, dtype=torch.int64).index_add_(0, child.child_labels, per_unit)
    return torch.zeros(groups_c, groups_p, dtype=torch.int64).index_add_(1, child.parent_labels, by_child)


def cell_scores(model: nn.Module, child: ChildLayer, rho: torch.Tensor) -> torch.Tensor:
    """Each weight of ``child`` gets the score ρ of its (child group, parent group) cell."""
    weight = model.get_submodule(child.name).weight
    units = rho[child.child_labels][:, child.parent_labels].float()  # (C_out, C_in units)
    if weight.dim() == 4:
        return units[:, :, None, None].expand(weight.shape).clone()
    return units.repeat_interleave(child.block, dim=1)


def cell_masks(model: nn.Module, children: list[ChildLayer],
               pruned: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Keep-masks of the child weights (docs/methods/mint.md §2 "Connection mask"): cell (c, p) pruned → ``W[j, i, :,
    :] = 0`` for j ∈ c, i ∈ p (a linear child: its input block of parent unit i)."""
    masks = {}
    for child in children:
        weight = model.get_submodule(child.name).weight
        units = pruned[child.name][child.child_labels][:, child.parent_labels]  # (C_out, C_in)
        if weight.dim() == 4:
            keep = (~units)[:, :, None, None].expand_as(weight)
        else:
            keep = (~units).repeat_interleave(child.block, dim=1)
        masks[child.weight_name] = keep.to(weight.device).clone()
    return masks


# ------------------------------------------------------------------------------------------------------- the method
class ConnectivityParams(MethodParams):
    """Parameters shared by MINT and SNACS."""

    estimator: Literal["edge", "mst", "random"] = "edge"
    """CMI estimator: ``edge`` (hash-based, fast), ``mst`` (MINT's reference, O(N²) per cell) or ``random`` (seeded
    uniform scores: the random-cell control under the same thresholds and limits)."""
    conditioning: Literal["auto", "regression", "random"] = "auto"
    """How ``edge`` conditions on the other parents: their ridge predictions of the child and parent groups
    (``regression``; ``auto`` uses it whenever there are more other parents than the two groups' units) or one random
    projection of them (``random``, the earlier default)."""
    z_dim: int | Literal["auto"] = "auto"
    """Dimension of the conditioning variable (``auto``: the two groups' predictors, up to 4, for ``regression``;
    1 for ``random``)."""
    transform: Literal["none", "rank"] = "none"
    """``rank``: normal scores of every activation before the estimate (invariant to monotone transforms)."""
    n_estimators: int = Field(10, ge=1)
    """EDGE ensemble members (bucket offsets and widths) whose median is each score; the CMI's time is linear in it."""
    thresholds: Thresholds = "layer"
    """How scores are compared across layers: ``layer`` (quantiles within each layer: π prunes the same fraction of
    every layer), ``normalised`` (scores over the layer's mean, one global threshold) or ``global`` (raw pooled
    scores, the reference's rule)."""
    groups: int | Literal["auto"] = "auto"
    """Groups per layer: at most this many (the largest divisor of the width ≤ it); ``auto`` = 64."""
    layer_groups: dict[str, int] = Field(default_factory=dict)
    """Per-layer group counts (layer name → groups)."""
    samples_per_class: int = Field(250, ge=2)
    """Scoring samples per class (drawn once, shared by all layers)."""
    upper_limit: float = Field(0.85, ge=0.0, le=1.0)
    """Per-layer upper limit u_l on the pruned fraction of a layer's cells."""
    layer_limits: dict[str, float] = Field(default_factory=dict)
    """Per-layer overrides of ``upper_limit``."""
    relax_limits: bool = True
    """When the limits cannot reach a numeric sparsity, raise them all by the same amount (else a UserError)."""
    keep_connected: bool = True
    """Never prune a child group's best incoming cell, so no filter is cut off from all its inputs (connprune's
    safeguard; false: the papers' rule)."""
    prune_input_layer: bool | Literal["auto"] = "auto"
    """Also score the first layer, with the network input as parent (reconstructed); ``auto``: if it is linear."""
    exclude: list[str] = Field(default_factory=list)
    """Layers whose incoming connections are never pruned."""
    prune_level: float | None = Field(None, ge=0.0, le=1.0)
    """A fixed π for ``sparsity=auto`` (MINT's threshold level) instead of the method's default."""
    pi_grid: list[float] = Field(default_factory=list)
    """``sparsity=auto`` sweep: fine-tune each π and keep the most compressed within ``max_accuracy_drop`` (empty:
    the method's default grid, unless ``prune_level`` fixes π)."""
    sweep_epochs: int = Field(1, ge=0)
    """Fine-tuning epochs per π of the sweep."""
    max_accuracy_drop: float = Field(0.01, ge=0.0, le=1.0)
    """Sweep target: validation accuracy at least the dense one minus this."""
    validation_fraction: float = Field(0.1, gt=0.0, lt=1.0)
    """Share of the training data held out to choose π in the sweep."""
    batch_size: int = Field(256, ge=1)
    """Batch size of the activation pass."""


class MintParams(ConnectivityParams):
    prune_level: float | None = Field(None, ge=0.0, le=1.0)
    """A fixed π for ``sparsity=auto`` instead of the π sweep (``pi_grid``, default 0.1, 0.2, …, 1.0)."""


@dataclass
class ScoringState:
    """What a connectivity method computed before thresholding (exposed for SNACS, tests and benchmarks)."""

    graph: ModelGraph
    children: list[ChildLayer]
    activations: acts.Activations
    scores: dict[str, torch.Tensor]
    """Connection scores (negative CMI estimates clipped to 0; SNACS: φ-weighted)."""
    limits: dict[str, float]
    protected: dict[str, torch.Tensor] = field(default_factory=dict)
    compared: dict[str, torch.Tensor] = field(default_factory=dict)
    """The scores as the thresholds compare them (:func:`comparable_scores`), set after :meth:`adapt`."""
    seconds: dict[str, float] = field(default_factory=dict)
    info: dict[str, Any] = field(default_factory=dict)


class ConnectivityPruning(PruningMethod):
    """Base of MINT and SNACS: score cells, choose limits, threshold, mask. Subclasses refine :meth:`adapt`."""

    kind = Kind.CONNECTION
    needs_data = True
    supports_auto = True
    default_prune_level: float = 0.5
    default_pi_grid: tuple[float, ...] = ()
    needs_patch_means: bool = False

    # --- steps -----------------------------------------------------------------------------------------------
    def score(self, model: nn.Module, data: PruneData) -> ScoringState:
        """Steps 2–5 of docs/methods/mint.md §3: pairs, activations, groups, CMI scores; then :meth:`adapt`."""
        params = self.params
        self._require(data)
        assert data.train is not None
        seconds: dict[str, float] = {}
        graph = build(model, resolve_example_inputs(model, data))
        children = plan_children(model, graph, groups=params.groups, layer_groups=params.layer_groups,
                                 prune_input_layer=params.prune_input_layer, exclude=params.exclude)
        unknown = set(params.layer_limits) - set(graph.layers)
        if unknown:
            raise UserError(f"layer_limits names unknown layer(s) {sorted(unknown)}; use conv/linear layer names")
        key = score_cache.key(model, data.train, self.name, params.model_dump(include=set(score_cache.FIELDS)))
        cached = score_cache.get(key)
        if cached is None:
            started = time.perf_counter()
            activations = scoring_activations(model, children, data.train,
                                              samples_per_class=params.samples_per_class, seed=params.seed,
                                              device=data.device, batch_size=params.batch_size,
                                              patch_means=self.needs_patch_means)
            seconds["activations"] = time.perf_counter() - started
            started = time.perf_counter()
            scores = score_children(children, activations, estimator=params.estimator, seed=params.seed,
                                    conditioning=params.conditioning, z_dim=params.z_dim, transform=params.transform,
                                    n_estimators=params.n_estimators)
            seconds["cmi"] = time.perf_counter() - started
            score_cache.put(key, (activations, scores, dict(seconds)))
            cache_info = {"scores_from_cache": False}
        else:
            activations, scores, first = cached
            seconds = {"activations": 0.0, "cmi": 0.0}
            cache_info = {"scores_from_cache": True, "first_seconds_activations": first["activations"],
                          "first_seconds_cmi": first["cmi"]}
        limits = {c.name: params.layer_limits.get(c.name, params.upper_limit) for c in children}
        # negative estimates are noise (below rounding: −1e-16 where the plug-in CMI is exactly 0): never above 0
        cache_info["negative_cells"] = {n: float((s < -1e-12).double().mean()) for n, s in scores.items()}
        clipped = {n: s.clamp(min=0.0) for n, s in scores.items()}
        state = ScoringState(graph, children, activations, clipped, limits, seconds=seconds, info=cache_info)
        self.adapt(model, state, data)
        state.compared = comparable_scores(state.scores, params.thresholds)
        return state

    def adapt(self, model: nn.Module, state: ScoringState, data: PruneData) -> None:
        """Hook for SNACS (weight scaling, automatic limits, protection); MINT uses the scores as they are."""

    def refine_cells(self, state: ScoringState, pruned: dict[str, torch.Tensor],
                     info: dict[str, Any]) -> dict[str, torch.Tensor]:
        """Hook for SNACS (filters cut from every consumer) at a prune level (``sparsity="auto"``; a numeric sparsity
        is met with the selected cells alone); MINT masks the cells it selected."""
        return pruned

    def masks_for(self, model: nn.Module, state: ScoringState, sparsity: float | None,
                  prune_level: float | None) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
        """Masks for a numeric ``sparsity`` (counted after surgery, relaxing the limits if allowed) or a prune
        level π."""
        info: dict[str, Any] = {}
        if sparsity is None:
            pruned = select_cells(state.compared, state.limits, prune_level=prune_level, protected=state.protected,
                                  keep_connected=self.params.keep_connected,
                                  quantiles=self.params.thresholds == "layer")
            info["layer_pruned_cells"] = {n: float(p.float().mean()) for n, p in pruned.items()}
            return cell_masks(model, state.children, self.refine_cells(state, pruned, info)), info

        def select(level: float, forced: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
            pruned = self._cells_for_target(model, state, level, forced, info)
            info["layer_pruned_cells"] = {n: float(p.float().mean()) for n, p in pruned.items()}
            masks = cell_masks(model, state.children, pruned)
            for name, entries in forced.items():
                keep = masks.get(name, torch.ones(entries.shape, dtype=torch.bool, device=entries.device))
                masks[name] = keep & ~entries.to(keep.device)
            return masks

        trim = {c.weight_name: cell_scores(model, c, state.compared[c.name]) for c in state.children}
        trim.update({name: torch.full(w.shape, float("-inf")) for name, w in prunable_weights(model).items()
                     if name not in trim})
        masks, info["budget_rounds"] = fit_to_surgery(select, sparsity, model, state.graph.example_inputs,
                                                      scores=trim)
        info["budget_unit"] = max(c.cell_weights() for c in state.children)
        return masks, info

    def _cells_for_target(self, model: nn.Module, state: ScoringState, sparsity: float,
                          forced: dict[str, torch.Tensor], info: dict[str, Any]) -> dict[str, torch.Tensor]:
        """The cells to prune so that, with the ``forced`` weights (which the surgery takes anyway), the pruned
        weights reach ``sparsity``; the limits are raised together when they cannot (``relax_limits``)."""
        total = count_prunable(model)
        target = round(sparsity * total) - sum(int(f.sum()) for f in forced.values())
        cells = {c.name: c.cell_weights() - _cell_counts(forced.get(c.weight_name), c) for c in state.children}

        def pick(limits: dict[str, float]) -> dict[str, torch.Tensor] | None:
            return select_cells(state.compared, limits, cell_weights=cells, target_weights=target,
                                protected=state.protected, keep_connected=self.params.keep_connected)

        pruned = pick(state.limits)
        if pruned is not None:
            return pruned
        if not self.params.relax_limits:
            reachable = self._reachable(state, cells, state.limits) / total
            raise UserError(f"{self.name}: the per-layer limits allow at most {reachable:.4f} sparsity, below the "
                            f"requested {sparsity}; raise --param upper_limit=... or allow --param relax_limits=true")
        unlimited = {n: 1.0 for n in state.limits}
        if pick(unlimited) is None:  # prune all it may; the budget check reports the nearest sparsity and why
            reachable = self._reachable(state, cells, unlimited)
            most = (reachable + sum(int(f.sum()) for f in forced.values())) / total
            info["budget_reason"] = (f"{self.name} may prune at most {most:.4f} of the weights: protected filters "
                                     "(protect_fraction), each child group's best input (keep_connected) and "
                                     "unscored layers stay")
            return select_cells(state.compared, unlimited, cell_weights=cells, target_weights=reachable,
                                protected=state.protected, keep_connected=self.params.keep_connected)
        low, high = 0.0, 1.0
        for _ in range(30):
            middle = (low + high) / 2
            ok = pick({n: min(1.0, u + middle) for n, u in state.limits.items()}) is not None
            low, high = (low, middle) if ok else (middle, high)
        info["limits_relaxed_by"] = high
        return pick({n: min(1.0, u + high) for n, u in state.limits.items()})

    def _reachable(self, state: ScoringState, cells: dict[str, torch.Tensor], limits: dict[str, float]) -> int:
        """Weights the limits let the masks remove (protected groups and, with keep_connected, each group's best
        cell stay)."""
        total = 0
        for name, rho in state.compared.items():
            allowed = _eligible(rho, state.protected.get(name), self.params.keep_connected)
            chosen = _lowest(rho, _cap_cells(limits.get(name, 1.0), rho.numel()), allowed)
            total += int(torch.as_tensor(cells[name]).expand(rho.shape)[chosen].sum())
        return total

    def auto_masks(self, model: nn.Module, state: ScoringState,
                   data: PruneData) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
        """``sparsity="auto"``: the π sweep (``pi_grid``, else the method's default grid unless ``prune_level`` fixes
        π), else one prune level."""
        params = self.params
        grid = params.pi_grid or (() if params.prune_level is not None else self.default_pi_grid)
        if not grid:
            level = params.prune_level if params.prune_level is not None else self.default_prune_level
            masks, info = self.masks_for(model, state, None, level)
            return masks, {**info, "prune_level": level}
        return level_sweep.sweep_prune_levels(model, data, grid,
                                  lambda level: self.masks_for(model, state, None, level),
                                  epochs=params.sweep_epochs, max_drop=params.max_accuracy_drop,
                                  validation_fraction=params.validation_fraction, seed=params.seed)

    def reads(self, sparsity: Sparsity) -> Reads:
        """Scoring reads ``samples_per_class`` of every class; ``sparsity="auto"`` may fine-tune (the π sweep), so it
        reads all of an iterable."""
        return Reads() if sparsity == "auto" else Reads(per_class=self.params.samples_per_class,
                                                        why="samples_per_class")

    def _prune(self, model: nn.Module, sparsity: Sparsity, data: PruneData) -> PruningResult:
        state = self.score(model, data)
        started = time.perf_counter()
        if sparsity == "auto":
            masks, info = self.auto_masks(model, state, data)
        else:
            masks, info = self.masks_for(model, state, float(sparsity), None)
        state.seconds["masks"] = time.perf_counter() - started
        info = {**state.info, **info, "estimator": self.params.estimator, "thresholds": self.params.thresholds,
                "layer_limits": dict(state.limits),
                "groups": {c.name: list(c.shape) for c in state.children},
                "stage_seconds": dict(state.seconds),
                **{f"seconds_{stage}": value for stage, value in state.seconds.items()}}
        return PruningResult(masks=masks, info=info)


@register
class Mint(ConnectivityPruning):
    name = "mint"
    paper = ("Ganesh, Corso & Yasaei Sekeh, MINT: Deep Network Compression via Mutual Information-based Neuron "
             "Trimming, ICPR 2020 (arXiv 2003.08472)")
    summary = ("remove the filter-group connections of least conditional MI given the other parents; thresholds "
               "per layer (quantiles) with per-layer limits, π swept for auto; disconnected filters removed")
    Params = MintParams
    default_pi_grid = tuple(round(0.1 * k, 1) for k in range(1, 11))
