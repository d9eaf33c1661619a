"""SNIP (Lee, Ajanthan & Torr, "SNIP: Single-shot Network Pruning based on Connection Sensitivity", ICLR 2019).

At initialisation, on one mini-batch per class-balanced draw, score every weight by its connection sensitivity
``|∂L/∂w ⊙ w|`` (Eq. 6: the gradient of the loss w.r.t. a multiplicative mask c at c = 1) and keep the global top
``(1 - sparsity)`` fraction; then train the sparse network with the masks fixed.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from pydantic import Field
from torch import nn

from connprune.data.pipeline import Batches
from connprune.measure import importance
from connprune.measure.sparsity import prunable_weights
from connprune.methods import register
from connprune.methods.base import Kind, MethodParams, PruneData, PruningMethod, PruningResult, Reads, Sparsity
from connprune.methods.budget import excluded_scores, fit_to_surgery


class SnipParams(MethodParams):
    batch_size: int = Field(128, ge=1)
    """Samples in the mini-batch the sensitivities are computed on (the paper: one batch)."""
    batches: int = Field(1, ge=1)
    """Mini-batches to accumulate gradients over (1 in the paper)."""


@register
class Snip(PruningMethod):
    name = "snip"
    kind = Kind.UNSTRUCTURED
    paper = "Lee, Ajanthan & Torr, SNIP: Single-shot Network Pruning based on Connection Sensitivity, ICLR 2019"
    summary = "at initialisation, keep the weights of largest |dL/dw * w| on one mini-batch"
    Params = SnipParams
    needs_trained = False
    needs_data = True

    def reads(self, sparsity: Sparsity) -> Reads:
        return Reads(samples=self.params.batches * self.params.batch_size, why="batches × batch_size")

    def _prune(self, model: nn.Module, sparsity: float, data: PruneData) -> PruningResult:
        weights = prunable_weights(model)
        grads = {name: torch.zeros_like(w) for name, w in weights.items()}
        was_training = model.training
        model.train()
        generator = torch.Generator().manual_seed(self.params.seed)
        batches = Batches(data.train, self.params.batch_size, shuffle=True, generator=generator, device=data.device)
        for index, (x, y) in enumerate(batches):
            if index == self.params.batches:
                break
            model.zero_grad(set_to_none=True)
            F.cross_entropy(model(x), y).backward()
            for name, w in weights.items():
                grads[name] += w.grad.detach()
        model.zero_grad(set_to_none=True)
        model.train(was_training)
        scores = importance.snip(weights, grads)
        masks, rounds = fit_to_surgery(
            lambda level, forced: importance.keep_top(excluded_scores(scores, forced), level, "global"),
            sparsity, model, data.example_inputs, scores=scores)
        return PruningResult(masks=masks, info={"budget_rounds": rounds})
