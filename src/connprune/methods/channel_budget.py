"""Turning a weight budget into channel removals, for every structured method.

``sparsity`` is a fraction of prunable weights (the contract), but structured methods remove channels. Given a
uniform per-group removal ratio r, the remaining weight count follows exactly from the graph (each conv/linear
layer keeps ``out_kept · in_kept / groups · k_h · k_w`` weights); r is found by bisection so the removed fraction
reaches the asked sparsity. Kept widths can be aligned to a multiple of ``round_to`` channels: oneDNN computes CPU
convolutions in blocks of 8 or 16 channels, so a width like 22 does the work of 32 — aligning turns fewer MACs into
real speed. A group is never rounded down to zero channels (Torch-Pruning's ``round_to`` silently leaves such a group
unpruned with no warning). Here, with ``round_to="auto"``, a group that alignment would leave unpruned (a group
narrower than the block, as in small networks) is pruned unaligned instead; with an explicit ``round_to`` alignment
is strict and the groups it leaves unpruned are counted in the result's ``info["groups_unpruned_by_alignment"]``.
"""

from __future__ import annotations

import warnings
from collections.abc import Callable
from typing import Literal

import torch
from pydantic import Field
from torch import nn

from connprune.graph import ChannelGroup, ExampleInputs, ModelGraph, build, is_depthwise
from connprune.measure.importance import ChannelImportance
from connprune.measure.sparsity import count_prunable, prunable_weights
from connprune.methods import budget
from connprune.methods.base import MethodParams, PruneData
from connprune.plan import PruningResult


class ChannelBudgetParams(MethodParams):
    round_to: int | Literal["auto"] = "auto"
    """Keep a multiple of this many channels per group; ``auto``: 16 on CPUs with AVX-512, 8 on other CPUs and on
    CUDA (tensor-core friendly); 1 disables alignment."""
    prune_residual: bool = True
    """Also prune residual-stream channels (all coupled producers and consumers together)."""
    min_channels: int = Field(1, ge=1)
    """Never keep fewer channels than this in a group."""


def auto_round_to(device: torch.device) -> int:
    """The channel block size that suits ``device``'s convolution kernels."""
    if device.type == "cpu" and "AVX512" in torch.backends.cpu.get_cpu_capability():
        return 16
    return 8


def kept_channels(channels: int, ratio: float, round_to: int, min_channels: int, strict: bool = True) -> int:
    """Channels a group of ``channels`` keeps when a fraction ``ratio`` is removed, aligned to ``round_to``.

    Not ``strict``: where alignment would keep every channel although the ratio removes some, keep the unaligned
    count instead.
    """
    keep = min(channels, max(min_channels, round(channels * (1.0 - ratio))))
    if round_to <= 1:
        return keep
    aligned = min(channels, max(round_to, round_to * round(keep / round_to)))
    return keep if (not strict and aligned == channels > keep) else aligned


def layer_density(graph: ModelGraph) -> dict[str, float]:
    """The non-zero fraction of every layer's weight (below 1 where an earlier pruning left zeros)."""
    weights = {name: graph.model.get_submodule(name).weight.detach() for name in graph.layers}
    return {name: float(w.count_nonzero()) / max(w.numel(), 1) for name, w in weights.items()}


def remaining_weights(graph: ModelGraph, kept: dict[str, int], density: dict[str, float] | None = None) -> float:
    """Prunable weights left when each group (keyed by root) keeps ``kept[root]`` channels: every layer keeps its
    kept output channels times the input columns its input groups keep (through concatenations and flattens),
    divided among a grouped conv's groups (a depthwise conv keeps one input per output). With ``density``
    (:func:`layer_density`) each layer's count is scaled by its non-zero fraction: the expected non-zero weights
    left when the channels to go are not known yet (earlier zeros count toward the budget)."""
    out_group = {layer: group for group in graph.groups for layer in group.producers}
    in_removed: dict[str, int] = {}
    for group in graph.groups:
        gone = group.channels - kept.get(group.root, group.channels)
        for consumer, per_channel in graph.consumer_slices(group.root).items():
            in_removed[consumer] = in_removed.get(consumer, 0) + gone * len(per_channel[0])
    total = 0
    for name in graph.layers:
        layer = graph.model.get_submodule(name)
        kernel = layer.weight[0, 0].numel() if layer.weight.dim() > 2 else 1
        out_kept = kept.get(out_group[name].root, layer.weight.shape[0]) if name in out_group else layer.weight.shape[0]
        scale = 1.0 if density is None else density.get(name, 1.0)
        if is_depthwise(layer):
            total += out_kept * kernel * scale
            continue
        groups = layer.groups if isinstance(layer, nn.Conv2d) else 1
        in_kept = layer.weight.shape[1] * groups - in_removed.get(name, 0)
        total += out_kept * (in_kept // groups) * kernel * scale
    for group in graph.groups:  # attention output projections: kept rows times kept columns
        total += sum(kept.get(group.root, group.channels) ** 2 for _ in group.tied)
    return total


def ratio_bounds(achieved: Callable[[float], float], sparsity: float, steps: int = 40) -> tuple[float, float]:
    """``(low, high)``: the largest removal ratio whose ``achieved(ratio)`` sparsity (non-decreasing in the ratio)
    stays below ``sparsity`` and the smallest that meets it, by bisection; ``(0, 0)`` for ``sparsity <= 0``."""
    if sparsity <= 0:
        return 0.0, 0.0
    low, high = 0.0, 1.0
    for _ in range(steps):
        middle = (low + high) / 2
        low, high = (middle, high) if achieved(middle) < sparsity else (low, middle)
    return low, high


def smallest_ratio(achieved: Callable[[float], float], sparsity: float, steps: int = 40) -> float:
    """The smallest removal ratio in [0, 1] whose ``achieved(ratio)`` sparsity (non-decreasing in the ratio) meets
    ``sparsity``, by bisection; 0 for ``sparsity <= 0``."""
    return ratio_bounds(achieved, sparsity, steps)[1]


def _next_to_drop(kept: dict[str, int], floor: dict[str, int], step: dict[str, int], sizes: dict[str, int],
                  scores: dict[str, torch.Tensor] | None) -> str | None:
    """The group that gives up its next ``step`` channels: the one whose next channel has the lowest score relative
    to its group's mean (scale-free across layers), or without scores the one keeping the largest fraction."""
    best, best_key = None, None
    for root, count in kept.items():
        if count - step[root] < floor[root]:
            continue
        if scores is None:
            key = (-count / sizes[root], root)
        else:
            ordered = torch.sort(scores[root]).values
            mean = float(ordered.abs().mean()) or 1.0
            key = (float(ordered[sizes[root] - count]) / mean, root)  # the kept ones are the highest-scoring
        if best_key is None or key < best_key:
            best, best_key = root, key
    return best


def fit_channels(graph: ModelGraph, kept: dict[str, int], sparsity: float, *, floor: dict[str, int],
                 step: dict[str, int], scores: dict[str, torch.Tensor] | None = None,
                 density: dict[str, float] | None = None) -> dict[str, int]:
    """From ``kept`` (channels per group root, sparser than ``sparsity`` is not yet reached), take channels away
    one selection unit at a time (``step[root]`` channels: 1, or the alignment block) from the group that loses the
    least (:func:`_next_to_drop`) until the weights left meet ``sparsity``: the sparsity then exceeds the target by
    less than one unit's weights (docs/methods/index.md, "What sparsity means")."""
    dense = count_prunable(graph.model)
    kept = dict(kept)
    full = {g.root: g.channels for g in graph.groups}
    while 1.0 - remaining_weights(graph, {**full, **kept}, density) / dense < sparsity:
        root = _next_to_drop(kept, floor, step, full, scores)
        if root is None:
            break  # every group is at its floor: the nearest achievable sparsity
        kept[root] -= step[root]
    return kept


def _aligned(group: ChannelGroup, round_to: int) -> int:
    """Positions per alignment step of a group: ``round_to`` channels, counted in whole positions of its blocks."""
    return max(1, round_to // group.blocks) if round_to % group.blocks == 0 else 1


def position_scores(group: ChannelGroup, scores: torch.Tensor) -> torch.Tensor:
    """Channel scores averaged over the group's blocks (channel ``k·C/b + j`` is position ``j`` of block ``k``, as
    Torch-Pruning lays out grouped convs, GroupNorm and attention heads), repeated back to every channel."""
    if group.blocks == 1:
        return scores
    return scores.view(group.blocks, -1).mean(dim=0).repeat(group.blocks)


def channels_to_remove(group: ChannelGroup, scores: torch.Tensor, count: int) -> list[int]:
    """The ``count`` channels of lowest (position) score, whole positions across the blocks."""
    size = group.channels // group.blocks
    positions = torch.argsort(scores[:size], stable=True)[: count // group.blocks].tolist()
    return sorted(block * size + p for block in range(group.blocks) for p in positions)


def _counting_zeros(plan: Callable[[float], tuple[dict[str, int], dict[str, list[int]]]], sparsity: float,
                    model: nn.Module, example_inputs: ExampleInputs, dense: int
                    ) -> tuple[dict[str, int], dict[str, list[int]]]:
    """The plan whose removal, with the zeros an earlier pruning left (``PruneData.masks``), ends nearest above
    ``sparsity`` counted exactly after surgery: the dense count's target is lowered by bisection (the zeros in the
    removed channels are not known until the channels are)."""
    def exact(target: float) -> float:
        result = PruningResult(remove=plan(target)[1])
        return budget.count(model, result, example_inputs, reference=dense).sparsity

    low, high = 0.0, sparsity
    if exact(high) <= sparsity:
        return plan(high)
    for _ in range(14):
        middle = (low + high) / 2
        low, high = (middle, high) if exact(middle) < sparsity else (low, middle)
    return plan(high)


def structured_removal(model: nn.Module, sparsity: float, data: PruneData, params: ChannelBudgetParams,
                       channel_scores: ChannelImportance) -> PruningResult:
    """Remove the lowest-scoring channels of every group at one uniform ratio, then channel by channel (the group
    that loses the least first) until the removed weights meet ``sparsity`` to within one channel (one alignment
    block with an explicit ``round_to``; a group of equal blocks loses whole positions, one per block)."""
    graph = build(model, data.example_inputs)
    strict = params.round_to != "auto"
    round_to = auto_round_to(data.device) if params.round_to == "auto" else params.round_to
    groups = [g for g in graph.groups if params.prune_residual or not g.residual]
    dense = count_prunable(model)
    full = {g.root: g.channels for g in graph.groups}
    floor_positions = {g.root: -(-params.min_channels // g.blocks) for g in groups}

    def kept_at(ratio: float) -> dict[str, int]:
        return {**full, **{g.root: g.blocks * kept_channels(g.channels // g.blocks, ratio, _aligned(g, round_to),
                                                            floor_positions[g.root], strict) for g in groups}}

    def achieved(ratio: float) -> float:
        return 1.0 - remaining_weights(graph, kept_at(ratio)) / dense

    low, ratio = ratio_bounds(achieved, sparsity)
    aligned = {g.root: strict and _aligned(g, round_to) > 1 for g in groups}
    step = {g.root: g.blocks * (_aligned(g, round_to) if aligned[g.root] else 1) for g in groups}
    scores = {g.root: position_scores(g, channel_scores(g, graph)) for g in groups}
    floor = {g.root: min(g.channels, max(floor_positions[g.root] * g.blocks, step[g.root])) for g in groups}

    def plan(target: float) -> tuple[dict[str, int], dict[str, list[int]]]:
        start = kept_at(low if target == sparsity else ratio_bounds(achieved, target)[0])
        kept = fit_channels(graph, {g.root: start[g.root] for g in groups}, target, floor=floor, step=step,
                            scores=scores) \
            if target > 0 else {g.root: g.channels for g in groups}
        return kept, {g.root: channels_to_remove(g, scores[g.root], g.channels - kept[g.root])
                      for g in groups if kept[g.root] < g.channels}

    kept, remove = plan(sparsity)
    if sparsity > 0 and any(not bool(w.all()) for w in prunable_weights(model).values()):
        kept, remove = _counting_zeros(plan, sparsity, model, data.example_inputs, dense)
    unaligned = {g.root: g.blocks * kept_channels(g.channels // g.blocks, ratio, 1, floor_positions[g.root])
                 for g in groups}
    info = {"channel_ratio": ratio, "round_to": round_to,
            "expected_sparsity": 1.0 - remaining_weights(graph, {**full, **kept}) / dense,
            "budget_unit": max((g.weights_per_channel * step[g.root] for g in groups), default=1),
            "groups_unpruned_by_alignment": sum(kept_at(ratio)[g.root] == g.channels > unaligned[g.root]
                                                for g in groups)}
    if graph.unmapped:  # say which layers no structured method can prune here, and why (never silently)
        info["layers_left_unpruned"] = dict(graph.unmapped)
        warnings.warn(f"{len(graph.unmapped)} layer(s) left unpruned: {next(iter(graph.unmapped.values()))}",
                      stacklevel=3)
    return PruningResult(remove=remove, info=info)
