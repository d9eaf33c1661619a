"""L1-norm filter pruning (Li, Kadav, Durdanovic, Samet & Graf, "Pruning Filters for Efficient ConvNets",
ICLR 2017): rank the filters of each layer by the sum of their absolute kernel weights, Σ|F_j| (§3.1), and remove
the smallest together with their feature maps and the kernels that read them, then fine-tune.

Coupled layers (residual streams, depthwise convs) are pruned as one group, scored by the sum of their producers'
filter norms. The fraction of filters removed is the same in every group and chosen so the removed fraction of
prunable weights meets ``sparsity`` (see :mod:`connprune.methods.channel_budget`).
"""

from __future__ import annotations

import torch
from torch import nn

from connprune.graph import ChannelGroup, ModelGraph
from connprune.methods import register
from connprune.methods.base import Kind, PruneData, PruningMethod, PruningResult, Sparsity
from connprune.methods.channel_budget import ChannelBudgetParams, structured_removal


def filter_l1(group: ChannelGroup, graph: ModelGraph) -> torch.Tensor:
    """Σ over the group's producers of each output filter's L1 norm (Li et al. 2017, §3.1)."""
    total = torch.zeros(group.channels)
    for name in group.producers:
        weight = graph.model.get_submodule(name).weight.detach()
        total += weight.abs().reshape(weight.shape[0], -1).sum(1).cpu()
    return total


@register
class L1Filter(PruningMethod):
    name = "l1-filter"
    kind = Kind.STRUCTURED
    paper = "Li, Kadav, Durdanovic, Samet & Graf, Pruning Filters for Efficient ConvNets, ICLR 2017"
    summary = "remove the filters/neurons of smallest L1 norm; physically smaller model"
    Params = ChannelBudgetParams

    def prune(self, model: nn.Module, sparsity: Sparsity, data: PruneData) -> PruningResult:
        sparsity = self.check_sparsity(sparsity)
        return structured_removal(model, sparsity, data, self.params, filter_l1)
