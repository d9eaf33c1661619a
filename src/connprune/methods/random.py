"""Random pruning: the control every pruning method must beat. Unstructured (random weights, per layer or global)
or structured (random channels/neurons, the same fraction of every channel group)."""

from __future__ import annotations

from typing import Literal

from torch import nn

from connprune.measure import importance
from connprune.measure.sparsity import prunable_weights
from connprune.methods import register
from connprune.methods.base import Kind, PruneData, PruningMethod, PruningResult
from connprune.methods.budget import excluded_scores, fit_to_surgery, per_layer_scale
from connprune.methods.channel_budget import ChannelBudgetParams, structured_removal


class RandomParams(ChannelBudgetParams):
    scope: Literal["global", "layer"] = "layer"
    """Unstructured: draw the same fraction in every layer (``layer``) or over all weights (``global``)."""
    structured: bool = False
    """Remove whole channels/neurons at random instead of single weights."""


@register
class Random(PruningMethod):
    name = "random"
    kind = Kind.UNSTRUCTURED
    paper = "baseline: uniformly random weights (or channels with structured=true)"
    summary = "random weights per layer/globally, or random channels (structured=true)"
    Params = RandomParams

    def _prune(self, model: nn.Module, sparsity: float, data: PruneData) -> PruningResult:
        if self.params.structured:
            return structured_removal(model, sparsity, data, self.params,
                                      importance.random_channels(self.params.seed))
        scores = importance.random_scores(prunable_weights(model), self.params.seed)
        masks, rounds = fit_to_surgery(
            lambda level, forced: importance.keep_top(excluded_scores(scores, forced), level, self.params.scope),
            sparsity, model, data.example_inputs, scores=per_layer_scale(scores, self.params.scope))
        unit = len(scores) if self.params.scope == "layer" else 1  # a weight of rounding per layer
        return PruningResult(masks=masks, info={"budget_rounds": rounds, "budget_unit": unit})
