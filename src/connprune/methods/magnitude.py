"""Magnitude pruning (Han et al., "Learning both Weights and Connections for Efficient Neural Networks", NeurIPS
2015): remove the weights of smallest |w|, over all layers at once (``global``) or the same fraction in every layer
(``layer``)."""

from __future__ import annotations

from typing import Literal

from torch import nn

from connprune.measure import importance
from connprune.measure.sparsity import prunable_weights
from connprune.methods import register
from connprune.methods.base import Kind, MethodParams, PruneData, PruningMethod, PruningResult
from connprune.methods.budget import excluded_scores, fit_to_surgery, per_layer_scale


class MagnitudeParams(MethodParams):
    scope: Literal["global", "layer"] = "global"
    """Rank all weights together (``global``) or remove the same fraction of every layer (``layer``)."""


@register
class Magnitude(PruningMethod):
    name = "magnitude"
    kind = Kind.UNSTRUCTURED
    paper = "Han et al., Learning both Weights and Connections for Efficient Neural Networks, NeurIPS 2015"
    summary = "remove the smallest-|w| weights, globally or per layer"
    Params = MagnitudeParams

    def _prune(self, model: nn.Module, sparsity: float, data: PruneData) -> PruningResult:
        scores = importance.magnitude(prunable_weights(model))
        masks, rounds = fit_to_surgery(
            lambda level, forced: importance.keep_top(excluded_scores(scores, forced), level, self.params.scope),
            sparsity, model, data.example_inputs, scores=per_layer_scale(scores, self.params.scope))
        unit = len(scores) if self.params.scope == "layer" else 1  # a weight of rounding per layer
        return PruningResult(masks=masks, info={"budget_rounds": rounds, "budget_unit": unit})
