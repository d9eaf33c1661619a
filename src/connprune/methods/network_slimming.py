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
from connprune.measure.importance import batchnorm_scale
from connprune.measure.sparsity import count_prunable, prunable_weights
from connprune.methods import register
from connprune.methods.budget import count as budget_count
from connprune.methods.base import Kind, MethodParams, PruneData, PruningResult, Sparsity, TrainingMethod
from connprune.methods.channel_budget import remaining_weights


class NetworkSlimmingParams(MethodParams):
    l1: float = Field(1e-4, ge=0)
    """λ of Eq. 1, the L1 weight on BN scaling factors (paper: 1e-4 VGG, 1e-5 ResNet/DenseNet)."""
    finetune: float = Field(0.25, ge=0, lt=1)
    """Fraction of the epochs used to fine-tune after the channels are removed (at least one epoch when > 0 and
    there are 2 or more epochs)."""
    budget: Literal["weights", "neurons"] = "weights"
    """What --sparsity measures: the fraction of prunable weights (contract) or of candidate channels."""
    prune_residual: bool = False
    """Also slim residual-stream channels (every coupled producer's BatchNorm together)."""
    min_channels: int = Field(1, ge=1)
    """Never keep fewer channels than this in a layer."""


def slimmable_groups(graph: ModelGraph, prune_residual: bool) -> list[ChannelGroup]:
    """Groups whose every producer is followed by a BatchNorm (the γ that Eq. 1 penalises)."""
    return [g for g in graph.groups
            if all(graph.batchnorm_after(p) is not None for p in g.producers)
            and (prune_residual or not g.residual) and not graph.depthwise_members(g.root)]


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
    earlier_zeros = any(not bool(w.all()) for w in prunable_weights(graph.model).values())

    def achieved(count: int) -> float:
        removed = take(count)
        if earlier_zeros:  # an earlier pruning's zeros count toward the budget, exactly after surgery
            counted = budget_count(graph.model, PruningResult(remove=removed), graph.example_inputs, reference=dense)
            return counted.sparsity
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
class NetworkSlimming(TrainingMethod):
    name = "network-slimming"
    kind = Kind.DURING_TRAINING
    paper = ("Liu, Li, Shen, Huang, Yan & Zhang, Learning Efficient Convolutional Networks through Network "
             "Slimming, ICCV 2017")
    summary = "train with L1 on BatchNorm scales, remove the channels with the smallest |γ| globally, fine-tune"
    Params = NetworkSlimmingParams

    def training_epochs(self, epochs: int) -> tuple[int, int]:
        finetune_epochs = round(self.params.finetune * epochs)
        if self.params.finetune > 0 and epochs >= 2:
            finetune_epochs = max(1, finetune_epochs)  # a fine-tune was asked for: at least one epoch
        if epochs - finetune_epochs < 1:
            raise UserError(f"{epochs} epoch(s) leave none for sparsity training; use more --epochs or a smaller "
                            "finetune fraction")
        return epochs - finetune_epochs, finetune_epochs

    def description(self) -> str:
        return "slimming (L1 on γ)"

    def start(self, model: nn.Module, sparsity: Sparsity, data: PruneData | None = None, **schedule: int) -> None:
        super().start(model, sparsity, data, **schedule)
        self.graph = build(model, self.data.example_inputs)
        self.groups = slimmable_groups(self.graph, self.params.prune_residual)
        if not self.groups:
            raise UserError(f"network-slimming needs BatchNorm after the layers it prunes, and "
                            f"{type(model).__name__} has no prunable BN-followed channels; use a model with "
                            "BatchNorm (vgg*, resnet*, mobilenetv2)")
        self.scales = [model.get_submodule(self.graph.batchnorm_after(p)).weight
                       for g in self.groups for p in g.producers]

    def penalty(self, model: nn.Module, outputs: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        """``λ Σ_γ |γ|`` (Eq. 1): its gradient is the paper's sub-gradient ``λ·sign(γ)``."""
        return self.params.l1 * sum(gamma.abs().sum() for gamma in self.scales)

    def finalize(self, model: nn.Module) -> PruningResult:
        scores = {g.root: batchnorm_scale(g, self.graph) for g in self.groups}
        remove = global_removal(self.graph, self.groups, scores, self.sparsity, self.params.budget,
                                self.params.min_channels)
        candidates = sum(g.channels for g in self.groups)
        removed = sum(len(v) for v in remove.values())
        info = {"neuron_sparsity": removed / candidates, "neurons_before": candidates,
                "neurons_after": candidates - removed, "sparse_train_epochs": self.epochs,
                "gamma_below_1e-2": float(torch.cat(list(scores.values())).lt(1e-2).float().mean()),
                "budget_unit": max(g.weights_per_channel for g in self.groups)}
        return PruningResult(remove={k: sorted(v) for k, v in remove.items()}, info=info)
