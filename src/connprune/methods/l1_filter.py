"""L1-norm filter pruning (Li, Kadav, Durdanovic, Samet & Graf, "Pruning Filters for Efficient ConvNets",
ICLR 2017): rank the filters of each layer by the sum of their absolute kernel weights, Σ|F_j| (§3.1), and remove
the smallest together with their feature maps and the kernels that read them, then fine-tune.

Coupled layers (residual streams, depthwise convs) are pruned as one group, scored by the sum of their producers'
filter norms (:func:`connprune.measure.importance.filter_l1`). The fraction of filters removed is the same in every
group and chosen so the removed fraction of prunable weights meets ``sparsity`` (see
:mod:`connprune.methods.channel_budget`).
"""

from __future__ import annotations

from torch import nn

from connprune.measure.importance import filter_l1
from connprune.methods import register
from connprune.methods.base import Kind, PruneData, PruningMethod, PruningResult
from connprune.methods.channel_budget import ChannelBudgetParams, structured_removal


@register
class L1Filter(PruningMethod):
    name = "l1-filter"
    kind = Kind.STRUCTURED
    paper = "Li, Kadav, Durdanovic, Samet & Graf, Pruning Filters for Efficient ConvNets, ICLR 2017"
    summary = "remove the filters/neurons of smallest L1 norm; physically smaller model"
    Params = ChannelBudgetParams

    def _prune(self, model: nn.Module, sparsity: float, data: PruneData) -> PruningResult:
        return structured_removal(model, sparsity, data, self.params, filter_l1)
