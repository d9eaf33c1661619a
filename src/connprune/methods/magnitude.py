"""Magnitude pruning (Han et al., "Learning both Weights and Connections for Efficient Neural Networks", NeurIPS
2015): remove the weights of smallest |w|, over all layers at once (``global``) or the same fraction in every layer
(``layer``)."""

from __future__ import annotations

from typing import Literal

from torch import nn

from connprune.measure import importance
from connprune.measure.sparsity import prunable_weights
from connprune.methods import register
from connprune.methods.base import Kind, MethodParams, PruneData, PruningMethod, PruningResult, Sparsity


class MagnitudeParams(MethodParams):
    scope: Literal["global", "layer"] = "global"


@register
class Magnitude(PruningMethod):
    name = "magnitude"
    kind = Kind.UNSTRUCTURED
    paper = "Han et al., Learning both Weights and Connections for Efficient Neural Networks, NeurIPS 2015"
    summary = "remove the smallest-|w| weights, globally or per layer"
    Params = MagnitudeParams

    def prune(self, model: nn.Module, sparsity: Sparsity, data: PruneData) -> PruningResult:
        sparsity = self.check_sparsity(sparsity)
        scores = importance.magnitude(prunable_weights(model))
        return PruningResult(masks=importance.keep_top(scores, sparsity, self.params.scope))
