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
        return PruningResult(masks=importance.keep_top(scores, sparsity, self.params.scope))
