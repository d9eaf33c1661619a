"""Importance scores (pure functions): of single weights, and of channels as small callables.

**Weights.** Scores are dicts ``parameter name → tensor of the parameter's shape``; higher means more important.
Selection keeps exactly ``round((1 - sparsity) · n)`` entries, per layer or over all layers together, breaking ties
by position so the asked sparsity is met exactly (not approximately, as a threshold on tied scores would).

**Channels.** A :data:`ChannelImportance` is a callable ``(group, graph) -> Tensor[group.channels]`` (higher = keep),
in the shape of Torch-Pruning's importance criteria: every structured method (l1-filter, random channels, group-l1,
network slimming, K-FAC) ranks the channels of a :class:`~connprune.graph.ChannelGroup` through one.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Literal

import torch

from connprune.errors import UserError
from connprune.graph import ChannelGroup, ModelGraph

Scores = Mapping[str, torch.Tensor]
ChannelImportance = Callable[[ChannelGroup, ModelGraph], torch.Tensor]


def magnitude(weights: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """|w| (Han et al., NeurIPS 2015)."""
    return {name: w.detach().abs() for name, w in weights.items()}


def snip(weights: Mapping[str, torch.Tensor], grads: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Connection sensitivity |∂L/∂w ⊙ w| (Lee et al., ICLR 2019, Eq. 6; the normalisation does not change ranks)."""
    return {name: (grads[name] * w.detach()).abs() for name, w in weights.items()}


def random_scores(weights: Mapping[str, torch.Tensor], seed: int) -> dict[str, torch.Tensor]:
    """Uniform random scores: random pruning as a rank order."""
    generator = torch.Generator().manual_seed(seed)
    return {name: torch.rand(w.shape, generator=generator) for name, w in weights.items()}


def keep_mask(flat_scores: torch.Tensor, keep: int) -> torch.Tensor:
    """Exactly ``keep`` True entries at the largest scores; ties at the threshold go to the earliest positions."""
    scores = flat_scores.float().cpu()
    n = scores.numel()
    if keep <= 0:
        return torch.zeros(n, dtype=torch.bool)
    if keep >= n:
        return torch.ones(n, dtype=torch.bool)
    threshold = torch.kthvalue(scores, n - keep + 1).values  # the keep-th largest score, in O(n)
    mask = scores > threshold
    ties = torch.nonzero(scores == threshold).view(-1)
    mask[ties[: keep - int(mask.sum())]] = True
    return mask


def keep_top(scores: Scores, sparsity: float, scope: Literal["global", "layer"] = "global") -> dict[str, torch.Tensor]:
    """Boolean keep-masks removing exactly ``round(sparsity · n)`` weights, globally or in every layer."""
    if scope == "layer":
        return {name: keep_mask(s.reshape(-1), s.numel() - round(sparsity * s.numel())).view(s.shape)
                for name, s in scores.items()}
    flat = torch.cat([s.reshape(-1).float().cpu() for s in scores.values()])
    mask = keep_mask(flat, flat.numel() - round(sparsity * flat.numel()))
    masks, offset = {}, 0
    for name, s in scores.items():
        masks[name] = mask[offset : offset + s.numel()].view(s.shape)
        offset += s.numel()
    return masks


# ------------------------------------------------------------------------------------------------------- channels


def filter_l1(group: ChannelGroup, graph: ModelGraph) -> torch.Tensor:
    """Σ over the group's producers of each output filter's L1 norm (Li et al., ICLR 2017, §3.1)."""
    total = torch.zeros(group.channels)
    for name in group.producers:
        weight = graph.model.get_submodule(name).weight.detach()
        total += weight.abs().reshape(weight.shape[0], -1).sum(1).cpu()
    return total


def random_channels(seed: int) -> ChannelImportance:
    """Uniform random channel scores from one seeded generator (random structured pruning, the control)."""
    generator = torch.Generator().manual_seed(seed)
    return lambda group, graph: torch.rand(group.channels, generator=generator)


def batchnorm_scale(group: ChannelGroup, graph: ModelGraph) -> torch.Tensor:
    """Σ over the group's producers of ``|γ|`` of the BatchNorm right after each (Liu et al., ICCV 2017, §3);
    UserError when a producer has no BatchNorm after it."""
    total = torch.zeros(group.channels)
    for producer in group.producers:
        norm = graph.batchnorm_after(producer)
        if norm is None:
            raise UserError(f"importance by BatchNorm scale needs a BatchNorm after {producer!r}, which has none; "
                            "use a weight-norm importance for models without BatchNorm")
        total += graph.model.get_submodule(norm).weight.detach().abs().cpu()
    return total


def incoming_norm(group: ChannelGroup, graph: ModelGraph) -> torch.Tensor:
    """``‖W_j‖_2`` over the group's producers: each unit's incoming weights and bias."""
    squared = torch.zeros(group.channels)
    for producer in group.producers:
        layer = graph.model.get_submodule(producer)
        squared += layer.weight.detach().reshape(group.channels, -1).pow(2).sum(1).cpu()
        if layer.bias is not None:
            squared += layer.bias.detach().pow(2).cpu()
    return squared.sqrt()


def outgoing_norm(group: ChannelGroup, graph: ModelGraph) -> torch.Tensor:
    """``‖W_next[:, j]‖_2`` over the group's consumers: each unit's outgoing weights (a flatten block counts whole)."""
    squared = torch.zeros(group.channels)
    for consumer, per_channel in graph.consumer_slices(group.root).items():
        weight = graph.model.get_submodule(consumer).weight.detach()
        per_input = weight.transpose(0, 1).reshape(weight.shape[1], -1).pow(2).sum(1).cpu()
        squared += torch.stack([per_input[columns].sum() for columns in per_channel])
    return squared.sqrt()


def in_out_norm(group: ChannelGroup, graph: ModelGraph) -> torch.Tensor:
    """``‖W_j‖·‖W_next[:, j]‖``: a unit matters when it both reads and is read strongly."""
    return incoming_norm(group, graph) * outgoing_norm(group, graph)


__all__ = ["ChannelImportance", "Scores", "batchnorm_scale", "filter_l1", "in_out_norm", "incoming_norm",
           "keep_mask", "keep_top", "magnitude", "outgoing_norm", "random_channels", "random_scores", "snip"]
