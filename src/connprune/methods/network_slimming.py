"""Network Slimming (Liu, Li, Shen, Huang, Yan & Zhang, "Learning Efficient Convolutional Networks through Network
Slimming", ICCV 2017), method ``network-slimming``.

§3 of the paper: train with the sparsity-inducing objective ``L = Σ l(f(x), y) + λ Σ_γ |γ|`` (Eq. 1) over the
scaling factors γ of the BatchNorm layers that follow each conv (sub-gradient λ·sign(γ) added to γ's gradient, as
the authors' code does), then remove the channels whose |γ| is smallest under one *global* threshold across layers
(§3, "Channel Pruning and Fine-tuning"), then fine-tune the narrower network. λ = 1e-4 is the paper's value for VGG
on CIFAR (1e-5 for ResNet and DenseNet; §5.2).

Here the method is *during-training* like ``kfac`` (same command: ``--model M --data D --epochs N``): the first
``1 − finetune`` of the epochs train with the L1 term from scratch, the channels are then removed physically by
:func:`connprune.surgery.apply`, and the remaining epochs fine-tune (``result.train_after``). The global threshold
is chosen so the removed fraction of prunable weights reaches ``--sparsity`` (``budget='weights'``, the contract)
or so that ``--sparsity`` of all candidate channels go (``budget='neurons'``). Only channels followed by a
BatchNorm can be slimmed; residual streams are left alone unless ``prune_residual`` (the paper inserts channel
selection layers for ResNets instead, not done here).
"""

from __future__ import annotations

import math
from typing import Literal

import torch
from pydantic import Field
from torch import nn

from connprune.errors import UserError
from connprune.graph import ChannelGroup, ModelGraph, build
from connprune.measure.sparsity import count_prunable
from connprune.methods import register
from connprune.methods.base import Kind, MethodParams, PruneData, PruningMethod, PruningResult, Sparsity
from connprune.methods.channel_budget import remaining_weights
from connprune.methods.kfac import following_batchnorm
from connprune.train.trainer import Trainer


class NetworkSlimmingParams(MethodParams):
    l1: float = Field(1e-4, ge=0)
    """λ of Eq. 1, the L1 weight on BN scaling factors (paper: 1e-4 VGG, 1e-5 ResNet/DenseNet)."""
    finetune: float = Field(0.25, ge=0, lt=1)
    """Fraction of the epochs used to fine-tune after the channels are removed (at least one epoch when > 0 and
    there are 2 or more epochs)."""
    budget: Literal["weights", "neurons"] = "weights"
    """What --sparsity measures: the fraction of prunable weights (contract) or of candidate channels."""
    prune_residual: bool = False
    min_channels: int = Field(1, ge=1)
    """Never keep fewer channels than this in a layer."""


def slimmable_groups(graph: ModelGraph, batchnorm: dict[str, str], prune_residual: bool) -> list[ChannelGroup]:
    """Groups whose every producer is followed by a BatchNorm (the γ that Eq. 1 penalises)."""
    return [g for g in graph.groups if all(p in batchnorm for p in g.producers) and (prune_residual or not g.residual)
            and not graph.details[g.root].depthwise]


def global_removal(graph: ModelGraph, groups: list[ChannelGroup], scores: dict[str, torch.Tensor],
                   sparsity: float, budget: Literal["weights", "neurons"], min_channels: int
                   ) -> dict[str, list[int]]:
    """Remove channels in increasing score order across all groups (one global threshold, Liu et al. §3) until
    the budget is met; a group never drops below ``min_channels``."""
    order = sorted(((float(scores[g.root][i]), position, i, g.root) for position, g in enumerate(groups)
                    for i in range(g.channels)))
    full = {g.root: g.channels for g in graph.groups}
    limit = {g.root: g.channels - min(min_channels, g.channels) for g in groups}

    def take(count: int) -> dict[str, list[int]]:
        chosen: dict[str, list[int]] = {}
        for _, _, index, root in order:
            if count <= 0:
                break
            if len(chosen.get(root, [])) < limit[root]:
                chosen.setdefault(root, []).append(index)
                count -= 1
        return chosen

    total = sum(limit.values())
    if budget == "neurons":
        return take(min(total, math.ceil(sparsity * sum(g.channels for g in groups) - 1e-9)))
    dense = count_prunable(graph.model)

    def achieved(count: int) -> float:
        removed = take(count)
        return 1.0 - remaining_weights(graph, {**full, **{r: full[r] - len(v) for r, v in removed.items()}}) / dense

    if sparsity > 0 and achieved(total) < sparsity:
        raise UserError(f"network-slimming reaches at most {achieved(total):.3f} weight sparsity by removing "
                        f"BN-followed channels of this model; lower --sparsity (or set prune_residual=true)")
    low, high = 0, total  # smallest count whose removal reaches the budget
    while low < high:
        middle = (low + high) // 2
        low, high = (middle + 1, high) if achieved(middle) < sparsity else (low, middle)
    return take(high)


@register
class NetworkSlimming(PruningMethod):
    name = "network-slimming"
    kind = Kind.DURING_TRAINING
    paper = ("Liu, Li, Shen, Huang, Yan & Zhang, Learning Efficient Convolutional Networks through Network "
             "Slimming, ICCV 2017")
    summary = "train with L1 on BatchNorm scales, remove the channels with the smallest |γ| globally, fine-tune"
    Params = NetworkSlimmingParams
    needs_trained = False
    needs_data = True
    needs_training = True

    def prune(self, model: nn.Module, sparsity: Sparsity, data: PruneData) -> PruningResult:
        sparsity = self.check_sparsity(sparsity)
        train, recipe = self.training_inputs(data)
        input_shape = train.info.input_shape
        graph = build(model, input_shape)
        batchnorm = following_batchnorm(model, input_shape)
        groups = slimmable_groups(graph, batchnorm, self.params.prune_residual)
        if not groups:
            raise UserError(f"network-slimming needs BatchNorm after the layers it prunes, and "
                            f"{getattr(model, 'connprune_arch', type(model).__name__)} has no prunable "
                            "BN-followed channels; use a model with BatchNorm (vgg*, resnet*, mobilenetv2)")
        epochs = recipe.epochs
        finetune_epochs = round(self.params.finetune * epochs)
        if self.params.finetune > 0 and epochs >= 2:
            finetune_epochs = max(1, finetune_epochs)  # a fine-tune was asked for: at least one epoch
        sparse_epochs = epochs - finetune_epochs
        if sparse_epochs < 1:
            raise UserError(f"{epochs} epoch(s) leave none for sparsity training; use more --epochs or a smaller "
                            "finetune fraction")
        scales = [model.get_submodule(batchnorm[p]).weight for g in groups for p in g.producers]
        handles = [gamma.register_hook(lambda grad, gamma=gamma: grad + self.params.l1 * torch.sign(gamma.detach()))
                   for gamma in scales]
        try:
            trainer = Trainer(model, train, data.test, recipe.model_copy(update={"epochs": sparse_epochs}),
                              progress=data.progress, device=data.device, description="slimming (L1 on γ)")
            result = trainer.fit()
        finally:
            for handle in handles:
                handle.remove()
        scores = {g.root: sum(model.get_submodule(batchnorm[p]).weight.detach().abs().cpu() for p in g.producers)
                  for g in groups}
        remove = global_removal(graph, groups, scores, sparsity, self.params.budget, self.params.min_channels)
        candidates = sum(g.channels for g in groups)
        removed = sum(len(v) for v in remove.values())
        info = {"neuron_sparsity": removed / candidates, "neurons_before": candidates,
                "neurons_after": candidates - removed, "sparse_train_epochs": sparse_epochs,
                "sparse_train_seconds": result.seconds,
                "gamma_below_1e-2": float(torch.cat(list(scores.values())).lt(1e-2).float().mean())}
        return PruningResult(remove={k: sorted(v) for k, v in remove.items()}, model=model,
                             train_after=finetune_epochs, info=info)
