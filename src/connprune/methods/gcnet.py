"""GC-Net, Ghost-Connect Net (Wisell & Yasaei Sekeh, "Ghost-Connect Net: A Generalization-Enhanced Guidance For
Sparse Deep Networks Under Distribution Shifts", arXiv 2411.09199, 2024; Neural Processing Letters 57(5), 2025).

Spec: docs/methods/gcnet.md. The full paper was not available; what is confirmed (from the abstracts) is the
scheme: build a companion "ghost" network whose weights are connectivity measurements between the units of
consecutive layers, magnitude-prune the ghost, map the pruned ghost locations back to connections of the original
network, and hybridise — direct magnitude pruning in the early layers, GC-Net guidance in the later ones. Everything
else is **reconstructed** (docs/methods/gcnet.md §2–§4) and exposed as a parameter:

1. Connectivity ``G^l[j, i]`` (docs/methods/gcnet.md §2): :mod:`connprune.measure.connectivity` — per-class |Pearson|
   averaged over classes (``measure="pearson"``, default) or an EDGE mutual-information variant (``measure="mi"``), at
   the post-activation site (``site="post"``) or the module outputs (``site="module"``), on ``probe_per_class`` training
   samples per class, std guard ``std_guard``. With ``ghost_steps > 0`` the ghost is then trained from these
   initial weights (docs/methods/gcnet.md §2 "Training the ghost", reconstructed objective:
   :func:`connprune.measure.connectivity.train_ghost`).
2. Ghost pruning (docs/methods/gcnet.md §2 "Pruning the ghost network", §3 step 6): per ghost layer keep the
   ``numel(G) − round(s · numel(G))`` largest entries (``ghost_scope="layer"``), ties kept at the earliest index;
   or one threshold over all ghost layers (``ghost_scope="global"``), cut where the weights the pruned entries stand
   for reach ``round(s · Σ weights)``.
3. Mapping (docs/methods/gcnet.md §2 "Mapping back"): conv child ``M[j, i, :, :] = Γ[j, i]``; linear child reading a
   flatten ``M[j, i·HW:(i+1)·HW] = Γ[j, i]``; linear child ``M[j, i] = Γ[j, i]``.
4. Hybrid (docs/methods/gcnet.md §2 "Hybrid"): the first ``b`` prunable layers (forward order) get element-wise
   magnitude masks at sparsity ``s``; later layers with a ghost parent get ghost masks; layers without one (projection
   shortcuts unless ``include_shortcuts``, depthwise convs, the classifier if ``include_classifier=False``) get
   magnitude masks. ``hybrid_split``: an integer ``b`` with ``1 ≤ b ≤ L``, or a fraction in (0, 1) of the depth (``b =
   max(1, round(fraction · L))``). ``b = L`` is layer-wise magnitude pruning bit for bit.
5. Exact total (``match_total=True``): a ghost layer can only prune whole kernel slices / column blocks, so its
   weight sparsity is ``s`` up to half a block; the direct-magnitude layers absorb the difference (by layer size,
   largest remainders first) so the total matches layer-wise magnitude pruning at ``s``.
6. Path-aware selection (``path_aware=True``, ours; docs/methods/gcnet.md §2 "Path-aware selection"): the ghost
   layers keep the same counts, chosen so that every unit they keep lies on an input-to-output path
   (:func:`path_keep`).
7. Structured extension (docs/methods/gcnet.md §3 step 10, ours): the masks are returned as they are; ``surgery.apply``
   with ``shrink=True`` removes units left with no live inputs (constant outputs, folded into the next layer's bias) or
   no live outputs, exactly (:mod:`connprune.surgery.shrink`). ``info`` reports how many such units the ghost masks
   made.

Fine-tuning with the masks enforced is the caller's (``connprune prune --finetune-epochs``), as for every method
that prunes a trained model; the iterative schedule (docs/methods/gcnet.md §3 step 8) is
:func:`connprune.methods.iterative.prune_in_steps` (``connprune prune --steps K``).
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass
from typing import Literal

import torch
from pydantic import Field
from torch import nn

from connprune.errors import UserError
from connprune.graph import build
from connprune.measure import importance
from connprune.measure.connectivity import STD_GUARD, GhostLayer, ghost_layers, network_connectivity, train_ghost
from connprune.measure.sparsity import prunable_weights
from connprune.methods import register
from connprune.methods.base import Kind, MethodParams, PruneData, PruningMethod, PruningResult, Reads, Sparsity
from connprune.methods.budget import excluded_scores, fit_to_surgery, per_layer_scale


class GCNetParams(MethodParams):
    hybrid_split: float = 0.33
    """``b``: the first ``b`` prunable layers are pruned directly by magnitude. An integer ≥ 1 is a count
    (1 = GC-Net wherever a ghost parent exists; L = pure magnitude), a value in (0, 1) a fraction of the depth."""
    measure: Literal["pearson", "mi", "block_l1"] = "pearson"
    """Connectivity measure (reconstructed): per-class |Pearson| (lab code) or EDGE MI as a Linfoot coefficient;
    ``block_l1`` is a control, not GC-Net: the ghost entry is the mean |w| of the connection's weights, i.e.
    magnitude pruning at GC-Net's granularity (kernel slices / column blocks) with the same split and budget."""
    site: Literal["post", "module"] = "post"
    """Activation site (reconstructed): what the next layer reads (after BN/ReLU/pooling) or the module outputs."""
    probe_per_class: int = Field(100, ge=2)
    """Probe samples per class drawn from the training data (docs/methods/gcnet.md §4: 100; at least 30 advised)."""
    std_guard: float = Field(STD_GUARD, ge=0.0)
    """A unit with a per-class standard deviation below this counts as constant (connectivity 0)."""
    ghost_scope: Literal["layer", "global"] = "layer"
    """Magnitude pruning of the ghost network per layer (default) or with one threshold over all ghost layers."""
    include_classifier: bool = True
    """The classifier is the child of the last pair (docs/methods/gcnet.md §4); False prunes it by magnitude."""
    include_shortcuts: bool = False
    """Give 1×1 projection shortcuts a ghost parent (docs/methods/gcnet.md §3 step 5 prunes them by magnitude)."""
    match_total: bool = True
    """Direct layers absorb the ghost layers' rounding so the total sparsity equals layer-wise magnitude's."""
    batch_size: int = Field(256, ge=1)
    """Probe batch size."""
    ghost_steps: int = Field(0, ge=0)
    """Reconstructed (docs/methods/gcnet.md §2 "Training the ghost"): gradient steps that train the ghost from its
    initial connectivities as a linear map between consecutive layers' per-class standardised activations (the
    objective is not known); 0 = the connectivities themselves (the paper as far as the abstracts say)."""
    ghost_rate: float = Field(0.5, gt=0.0, lt=2.0)
    """Step of the ghost training as a fraction of ``1 / λ_max`` of the parent correlation (stable below 2)."""
    path_aware: bool = False
    """Ours, not the paper's (docs/methods/gcnet.md §2 "Path-aware selection"): choose the ghost layers' masks in
    forward order so that every unit they keep has an input from a kept unit of its parent and an output to a kept
    unit of its child, as many units as the budgets of both layers allow; the paper prunes each ghost layer alone."""


def resolve_split(hybrid_split: float, depth: int) -> int:
    """``b`` from a count (integer ≥ 1) or a fraction in (0, 1) of ``depth`` prunable layers; UserError otherwise."""
    value = float(hybrid_split)
    if 0.0 < value < 1.0:
        return min(depth, max(1, round(value * depth)))
    if value.is_integer() and 1 <= value <= depth:
        return int(value)
    raise UserError(f"hybrid_split={hybrid_split!r} is neither a layer count in [1, {depth}] (this model has "
                    f"{depth} prunable layers; {depth} = pure magnitude pruning) nor a fraction in (0, 1) of the "
                    "depth; pass e.g. --param hybrid_split=0.33 or --param hybrid_split=2")


def ghost_keep(ghost: torch.Tensor, sparsity: float) -> torch.Tensor:
    """Layer-wise ghost mask Γ: keep the ``numel − round(s·numel)`` largest entries, ties to the earliest index."""
    n = ghost.numel()
    return importance.keep_mask(ghost.reshape(-1), n - round(sparsity * n)).view(ghost.shape)


def ghost_keep_global(ghosts: dict[str, torch.Tensor], block: dict[str, int],
                      sparsity: float) -> dict[str, torch.Tensor]:
    """One threshold over all ghost layers: prune the smallest entries (stable: value, then layer order and index)
    until the weights they stand for (``block`` weights each) reach ``round(s · Σ weights)``."""
    names = list(ghosts)
    values = torch.cat([ghosts[n].reshape(-1).to(torch.float64) for n in names])
    sizes = torch.cat([torch.full((ghosts[n].numel(),), block[n], dtype=torch.int64) for n in names])
    target = round(sparsity * int(sizes.sum()))
    order = torch.sort(values, stable=True).indices  # ascending, position breaks ties
    cumulative = torch.cumsum(sizes[order], 0)
    # the shortest prefix that reaches the target, or the prefix that stays closest to it
    reach = int(torch.searchsorted(cumulative, torch.tensor(target, dtype=torch.int64)))
    count = reach
    if reach < len(order):
        under = int(cumulative[reach - 1]) if reach > 0 else 0
        over = int(cumulative[reach])
        count = reach + 1 if over - target <= target - under else reach
    keep = torch.ones(values.numel(), dtype=torch.bool)
    keep[order[:count]] = False
    masks, offset = {}, 0
    for n in names:
        masks[n] = keep[offset : offset + ghosts[n].numel()].view(ghosts[n].shape)
        offset += ghosts[n].numel()
    return masks


def block_magnitude(weight: torch.Tensor, channels: int) -> torch.Tensor:
    """The block-L1 control's ghost (units, channels): mean |w| over each connection's weights (docs/methods/gcnet.md
    §2 "Mapping back": a conv kernel slice, or the ``H·W`` columns of a flattened channel)."""
    return weight.detach().abs().reshape(weight.shape[0], channels, -1).mean(dim=2).to(torch.float64).cpu()


def _top(values: torch.Tensor, count: int) -> torch.Tensor:
    """Indices of the ``count`` largest finite ``values`` (ties to the earliest index), largest first."""
    order = torch.sort(-values.to(torch.float64), stable=True).indices
    return order[torch.isfinite(values[order])][: max(count, 0)]


def path_keep(ghost: torch.Tensor, count: int, live: torch.Tensor | None = None, cap: int | None = None
              ) -> torch.Tensor:
    """Path-aware ghost mask Γ (docs/methods/gcnet.md §2 "Path-aware selection", ours) keeping at most ``count``
    entries of ``ghost`` (units × channels; ``-inf`` = unavailable): only channels in ``live`` (the parent's kept
    units; all when None) are read, and the kept entries

    1. cover ``r = min(units, count, cap)`` units, those with the largest best entry (``cap``: what the child can
       read) and at most ``count`` channels, those with the largest best entry into these units;
    2. by an edge cover of that block — a greedy matching on the entries in descending order, then each unmatched
       unit or channel by its largest entry: ``max(r, c)`` entries when the block is complete;
    3. and the rest of ``count`` goes to the largest remaining entries of the block.
    """
    available = torch.isfinite(ghost)
    if live is not None:
        available &= live.to(available.device)[None, :]
    values = ghost.to(torch.float64).masked_fill(~available, float("-inf"))
    limit = min(count, cap) if cap is not None else count
    rows = torch.zeros(ghost.shape[0], dtype=torch.bool)
    rows[_top(values.max(dim=1).values, limit)] = True
    values = values.masked_fill(~rows[:, None], float("-inf"))
    columns = torch.zeros(ghost.shape[1], dtype=torch.bool)
    columns[_top(values.max(dim=0).values, count)] = True
    values = values.masked_fill(~columns[None, :], float("-inf"))
    keep = torch.zeros(ghost.shape, dtype=torch.bool)
    unmatched_rows = set(torch.nonzero((values > float("-inf")).any(dim=1)).view(-1).tolist())
    unmatched_columns = set(torch.nonzero((values > float("-inf")).any(dim=0)).view(-1).tolist())
    for flat in _top(values.reshape(-1), values.numel()).tolist():  # greedy matching
        if not (unmatched_rows and unmatched_columns):
            break
        j, i = divmod(flat, ghost.shape[1])
        if j in unmatched_rows and i in unmatched_columns:
            keep[j, i] = True
            unmatched_rows.discard(j)
            unmatched_columns.discard(i)
    for j in sorted(unmatched_rows):
        keep[j, int(values[j].argmax())] = True
    for i in sorted(unmatched_columns):
        keep[int(values[:, i].argmax()), i] = True
    if int(keep.sum()) > count:  # an incomplete block (forced entries): keep the largest of the cover
        kept = values.masked_fill(~keep, float("-inf")).reshape(-1)
        keep = torch.zeros(ghost.numel(), dtype=torch.bool)
        keep[_top(kept, count)] = True
        return keep.view(ghost.shape)
    rest = values.masked_fill(keep, float("-inf")).reshape(-1)
    keep.view(-1)[_top(rest, count - int(keep.sum()))] = True
    return keep


def map_to_weights(ghost_mask: torch.Tensor, weight: torch.Tensor, features_per_channel: int) -> torch.Tensor:
    """Weight keep-mask of a child from its ghost mask Γ (units, channels) (docs/methods/gcnet.md §2 "Mapping back");
    the same for any per-connection values (each weight gets its connection's)."""
    if weight.dim() == 4:
        return ghost_mask[:, :, None, None].expand(weight.shape).clone()
    if weight.dim() == 2:
        return ghost_mask.repeat_interleave(features_per_channel, dim=1)
    raise UserError(f"GC-Net maps ghost masks onto conv (4-D) and linear (2-D) weights, got shape "
                    f"{tuple(weight.shape)}")


def _distribute(extra: int, capacity: dict[str, tuple[int, int]]) -> dict[str, int]:
    """Split ``extra`` (signed) weights over layers ``name → (pruned, size)`` by size, largest remainders first,
    keeping each layer's pruned count within [0, size]."""
    adjust = {name: 0 for name in capacity}
    remaining = extra
    for _ in range(len(capacity) + 1):
        if remaining == 0:
            break
        room = {name: (size - pruned - adjust[name]) if remaining > 0 else (pruned + adjust[name])
                for name, (pruned, size) in capacity.items()}
        open_layers = {name: r for name, r in room.items() if r > 0}
        if not open_layers:
            break
        total = sum(capacity[n][1] for n in open_layers)
        shares = {n: abs(remaining) * capacity[n][1] / total for n in open_layers}
        whole = {n: min(open_layers[n], math.floor(shares[n])) for n in open_layers}
        left = abs(remaining) - sum(whole.values())
        for n in sorted(open_layers, key=lambda n: (-(shares[n] - math.floor(shares[n])), n)):
            if left == 0:
                break
            if whole[n] < open_layers[n]:
                whole[n] += 1
                left -= 1
        sign = 1 if remaining > 0 else -1
        for n, v in whole.items():
            adjust[n] += sign * v
        remaining = sign * left
    return adjust


@dataclass
class _GhostState:
    """What GC-Net measured before selecting: layer order, the ghost layers and their connectivity."""

    weights: dict[str, torch.Tensor]
    order: list[str]
    split: int
    guided: list[GhostLayer]
    ghosts: dict[str, torch.Tensor]
    block: dict[str, int]
    seconds: float
    readers: dict[str, list[str]]
    """Layer → the layers that read its output (the graph's pairs)."""


def _cells_forced(forced: torch.Tensor | None, ghost: torch.Tensor, weight: torch.Tensor, block: int) -> torch.Tensor:
    """Ghost entries (child unit, parent channel) whose whole kernel slice / input block is forced."""
    if forced is None:
        return torch.zeros(ghost.shape, dtype=torch.bool)
    if weight.dim() == 4:
        return forced.flatten(2).all(dim=2).cpu()
    return forced.reshape(forced.shape[0], -1, block).all(dim=2).cpu()


def _path_masks(state: _GhostState, ghosts: dict[str, torch.Tensor], counts: dict[str, int],
                live_units: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """:func:`path_keep` on every ghost layer in forward order, each keeping the entries its scope gave it
    (``counts``): a child with one plain parent reads only the units that parent kept (a ghost layer's kept rows,
    a direct layer's units with a kept weight, ``live_units``), and a layer read only by such children keeps at
    most as many units as they keep entries."""
    guided = {g.child: g for g in state.guided}
    kept = dict(live_units)
    masks: dict[str, torch.Tensor] = {}
    for g in state.guided:
        parent = g.parents[0] if len(g.parents) == 1 and not g.residual else None
        live = kept.get(parent) if parent is not None else None
        live = live if live is not None and live.numel() == g.channels else None
        readers = state.readers.get(g.child, [])
        chained = bool(readers) and all(r in guided and guided[r].parents == (g.child,) and not guided[r].residual
                                        for r in readers)
        cap = sum(counts[r] for r in readers) if chained else None
        masks[g.child] = path_keep(ghosts[g.child], counts[g.child], live, cap)
        kept[g.child] = masks[g.child].any(dim=1)
    return masks


@register
class GCNet(PruningMethod):
    name = "gcnet"
    kind = Kind.CONNECTION
    paper = ("Wisell & Yasaei Sekeh, Ghost-Connect Net: A Generalization-Enhanced Guidance For Sparse Deep Networks "
             "Under Distribution Shifts, arXiv 2411.09199, 2024 (measure reconstructed, see docs/methods/gcnet.md)")
    summary = ("connections (kernel slices) of later layers from a magnitude-pruned ghost network of per-class "
               "|Pearson| connectivities between consecutive layers; single weights by magnitude on the first b")
    Params = GCNetParams
    needs_data = True

    def reads(self, sparsity: Sparsity) -> Reads:
        return Reads(per_class=self.params.probe_per_class, why="probe_per_class")

    def _prune(self, model: nn.Module, sparsity: float, data: PruneData) -> PruningResult:
        started = time.perf_counter()
        state = self._measure(model, sparsity, data)
        # what the surgery takes anyway counts as pruned; if that does not settle, the surplus is trimmed from the
        # weakest entries, each layer's scores on its own scale: |w| in the direct layers, the ghost entry of the
        # connection in the ghost layers (whole connections first, so blocks stay whole but for the last one)
        guided = {f"{g.child}.weight": g for g in state.guided}
        repair = per_layer_scale({
            key: map_to_weights(state.ghosts[guided[key].child], w, guided[key].features_per_channel).float()
            if key in guided else importance.magnitude({key: w})[key] for key, w in state.weights.items()}, "layer")
        masks, rounds = fit_to_surgery(lambda level, forced: self._select(state, level, forced)[0], sparsity, model,
                                       data.example_inputs, scores=repair)
        _, modes, residual = self._select(state, sparsity, {})
        info = self._info(state, masks, modes, residual)
        info.update(gcnet_seconds=time.perf_counter() - started, budget_rounds=rounds,
                    budget_unit=max(state.block.values(), default=1) + len(state.order))
        return PruningResult(masks=masks, info=info)

    def _measure(self, model: nn.Module, sparsity: float, data: PruneData) -> _GhostState:
        """docs/methods/gcnet.md §3 steps 1–5: layer order, the hybrid split, ghost layers and their connectivity."""
        p = self.params
        graph = build(model, data.example_inputs)
        weights = {key: w.detach() for key, w in prunable_weights(model).items()}
        order = [f"{layer}.weight" for layer in graph.layers if f"{layer}.weight" in weights]
        split = resolve_split(p.hybrid_split, len(order))
        if p.measure == "block_l1" and p.ghost_steps:
            raise UserError("ghost_steps trains a connectivity ghost; the block_l1 control has none: drop "
                            "--param ghost_steps or use measure=pearson")
        direct_part = set(order[:split])
        guided = [g for g in ghost_layers(graph, include_shortcuts=p.include_shortcuts,
                                          include_classifier=p.include_classifier)
                  if f"{g.child}.weight" not in direct_part and f"{g.child}.weight" in weights]
        ghosts: dict[str, torch.Tensor] = {}
        seconds = 0.0
        if guided and sparsity > 0 and p.measure == "block_l1":
            ghosts = {g.child: block_magnitude(weights[f"{g.child}.weight"], g.channels) for g in guided}
        elif guided and sparsity > 0:
            assert data.train is not None
            connectivity = network_connectivity(
                model, data.train, graph, layers=guided, per_class=p.probe_per_class, site=p.site, measure=p.measure,
                std_guard=p.std_guard, batch_size=p.batch_size, seed=p.seed, device=data.device,
                moments=p.ghost_steps > 0)
            ghosts, seconds = connectivity.ghosts, connectivity.seconds
            if p.ghost_steps:
                ghosts = {name: train_ghost(g, connectivity.cross[name], connectivity.parent_moments[name],
                                            p.ghost_steps, p.ghost_rate) for name, g in ghosts.items()}
        block = {g.child: weights[f"{g.child}.weight"][0, 0].numel() * g.features_per_channel
                 if weights[f"{g.child}.weight"].dim() == 4 else g.features_per_channel for g in guided}
        readers: dict[str, list[str]] = {}
        for pair in graph.pairs:
            readers.setdefault(pair.parent, []).append(pair.child)
        return _GhostState(weights=weights, order=order, split=split, guided=guided if ghosts else [],
                           ghosts=ghosts, block=block, seconds=seconds, readers=readers)

    def _select(self, state: _GhostState, sparsity: float, forced: dict[str, torch.Tensor]
                ) -> tuple[dict[str, torch.Tensor], dict[str, str], int]:
        """Masks at ``sparsity`` with the ``forced`` entries pruned and counted (docs/methods/gcnet.md §3 steps
        6–9): ghost masks mapped to the ghost layers' kernel slices, magnitude on the direct layers, the direct
        layers absorbing the difference (``match_total``); with ``path_aware`` the ghost layers then choose, with
        the same counts, entries on input-to-output paths through the direct layers' kept units. Returns the masks,
        each layer's mode and that difference."""
        p, weights = self.params, state.weights
        ghosts = self._ghosts(state, forced)
        ghost_masks = self._ghost_masks(state, ghosts, sparsity)
        masks = self._mapped(state, ghost_masks, forced)
        modes = {key: "gcnet" for key in masks}
        direct = [key for key in state.order if key not in masks]
        modes.update({key: "magnitude" for key in direct})
        pruned = {key: round(sparsity * weights[key].numel()) for key in direct}
        residual = 0
        if masks:
            if p.ghost_scope == "layer":
                wanted = sum(round(sparsity * weights[k].numel()) for k in masks)
            else:
                wanted = round(sparsity * sum(weights[k].numel() for k in masks))
            residual = wanted - sum(int((~m).sum()) for m in masks.values())
            if p.match_total and residual:
                adjust = _distribute(residual, {k: (pruned[k], weights[k].numel()) for k in direct})
                pruned = {k: pruned[k] + adjust[k] for k in direct}
        scores = excluded_scores(importance.magnitude({key: weights[key] for key in direct}), forced)

        def select_direct() -> None:
            for key in direct:
                n = weights[key].numel()
                masks[key] = importance.keep_mask(scores[key].reshape(-1), n - pruned[key]).view(weights[key].shape)

        select_direct()
        if p.path_aware and ghost_masks:
            counts = {name: int((m & torch.isfinite(ghosts[name])).sum()) for name, m in ghost_masks.items()}
            live = {key.removesuffix(".weight"): masks[key].reshape(masks[key].shape[0], -1).any(dim=1)
                    for key in direct}
            before = sum(int(masks[key].sum()) for key in masks if key not in direct)
            masks.update(self._mapped(state, _path_masks(state, ghosts, counts, live), forced))
            # entries the paths could not place (a block smaller than the count) go to the direct layers
            short = before - sum(int(masks[key].sum()) for key in masks if key not in direct)
            if p.match_total and short > 0:
                adjust = _distribute(-short, {k: (pruned[k], weights[k].numel()) for k in direct})
                pruned = {k: pruned[k] + adjust[k] for k in direct}
                select_direct()
        masks = {key: masks[key].to(weights[key].device) for key in weights if key in masks}
        for key in weights:  # modules outside the traced graph (never called) keep everything
            masks.setdefault(key, torch.ones_like(weights[key], dtype=torch.bool))
        return masks, modes, residual

    @staticmethod
    def _ghosts(state: _GhostState, forced: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        """The ghost matrices with the cells whose whole connection is forced at ``-inf`` (pruned first)."""
        ghosts = {}
        for g in state.guided:
            key = f"{g.child}.weight"
            cells = _cells_forced(forced.get(key), state.ghosts[g.child], state.weights[key], g.features_per_channel)
            ghosts[g.child] = state.ghosts[g.child].masked_fill(cells, float("-inf"))
        return ghosts

    def _ghost_masks(self, state: _GhostState, ghosts: dict[str, torch.Tensor], sparsity: float
                     ) -> dict[str, torch.Tensor]:
        """Ghost masks Γ: each ghost magnitude-pruned at ``sparsity`` (per layer or with one global threshold)."""
        if not ghosts:
            return {}
        if self.params.ghost_scope == "layer":
            return {name: ghost_keep(ghost, sparsity) for name, ghost in ghosts.items()}
        return ghost_keep_global(ghosts, state.block, sparsity)

    @staticmethod
    def _mapped(state: _GhostState, ghost_masks: dict[str, torch.Tensor], forced: dict[str, torch.Tensor]
                ) -> dict[str, torch.Tensor]:
        """The ghost layers' weight masks from their ghost masks, forced entries pruned."""
        masks = {}
        for g in state.guided:
            if g.child not in ghost_masks:
                continue
            key = f"{g.child}.weight"
            mask = map_to_weights(ghost_masks[g.child], state.weights[key], g.features_per_channel)
            masks[key] = mask & ~forced[key].to(mask.device) if key in forced else mask
        return masks

    def _info(self, state: _GhostState, masks: dict[str, torch.Tensor], modes: dict[str, str],
              residual: int) -> dict[str, object]:
        """GC-Net's numbers for ``metrics.json``: split, modes, per-layer sparsity, units the ghost cut off."""
        ghost_masks = {g.child: (masks[f"{g.child}.weight"].reshape(masks[f"{g.child}.weight"].shape[0],
                                                                    state.ghosts[g.child].shape[1], -1).any(dim=2))
                       for g in state.guided}
        info: dict[str, object] = {
            "gcnet_split": state.split, "gcnet_depth": len(state.order),
            "gcnet_ghost_layers": [g.child for g in state.guided], "gcnet_layer_modes": modes,
            "gcnet_layer_sparsity": {k: 1.0 - float(m.float().mean()) for k, m in masks.items()},
            "gcnet_ghost_residual_weights": int(residual),
            "gcnet_units_without_inputs": {c: int((~m).all(dim=1).sum()) for c, m in ghost_masks.items()},
            "gcnet_channels_unread": {c: int((~m).all(dim=0).sum()) for c, m in ghost_masks.items()},
            "gcnet_connectivity_seconds": state.seconds,
        }
        if state.ghosts:
            info["gcnet_connectivity_mean"] = {name: float(g.mean()) for name, g in state.ghosts.items()}
        return info
