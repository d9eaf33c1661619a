"""N2NSkip (Subramaniam & Sharma, "N2NSkip: Learning Highly Sparse Networks using Neuron-to-Neuron Skip
Connections", BMVC 2020, arXiv 2208.03662) and its ResNet-style comparison "ResSkip" (Section 4.1).

``n2nskip`` (Section 3.1, Eq. 2): at initialisation, prune the sequential weights with random pruning (RP) or SNIP
(CSP, Lee et al. 2019), then add sparse neuron-to-neuron skip branches ``a^{l+k} = g(z^{l+k} + g(conv_s(a^l)))``
(:mod:`connprune.surgery.skips`) so that the *total* number of non-zero weights equals that of the plain pruned
network at the same sparsity: ``nnz(sequential) + nnz(skip) = nnz(plain)``, split ``1 − skip_fraction`` /
``skip_fraction`` (the paper: 50/50, e.g. 10 % density = 5 % sequential + 5 % skip). The network is then trained
from scratch with masks fixed (``connprune prune`` trains ``--epochs`` after surgery, :class:`MaskEnforcer` keeping
both sequential and skip masks).

Budget arithmetic (docs/methods/n2nskip.md, "Algorithm" steps 3–5; exact, not ± rounding):

1. ``T`` = the plain method's kept count: ``N − round(s·N)`` (global) or ``Σ_l n_l − round(s·n_l)`` (per layer), as
   :func:`connprune.measure.importance.keep_top` keeps it.
2. Skip connections: every skip tensor gets the same connection density ``ρ = round(skip_fraction·T) / Σ numel``
   (capped at 1; reconstructed default, the paper does not say), rounded to whole unit pairs ``(j, i)``, each
   carrying its ``f×f`` kernel slice: ``S = Σ pairs·f²``. Within a tensor the pairs are spread with the same fan-in
   per target unit (``layout=fan-in``, the code release) or uniformly (``layout=uniform``).
3. Sequential weights: ``T − S`` kept, by SNIP saliency (global top, as SNIP: exactly), or at random: by default
   channel-level with constant fan-in and the first conv and classifier dense (``rp=channel``, the paper's RP,
   :func:`constant_fan_in`; up to ``T − S`` in steps of one input unit per output row, the method's budget unit),
   or element-wise (``rp=element``: exactly, per layer with largest-remainder quotas, or global).
   So ``nnz_seq + nnz_skip == T`` exactly; with ``rp=channel`` short of ``T`` by less than one step of a layer
   (more only where a layer's floor of one input unit per row overshoots the budget).

Biases and BatchNorm parameters are not counted (reconstructed). ``sparsity`` in ``metrics.json`` counts the
sequential weights only (skips are not prunable weights); ``info`` reports ``nonzero_weights`` including skips.

``resskip`` (Eq. 1): the same base pruning at the full budget ``T`` plus dense parameter-free skips at the same sites
(average-pool + zero-padded channels; sites whose source is wider than the target are left out).

Training recipe of the paper (the paper's Section 4; docs/methods/n2nskip.md §4): SGD, momentum 0.9, lr 0.05, ×0.5 every
30 epochs, 300 epochs, batch 128, weight decay 5e-4 — :func:`paper_recipe` expresses it as a
:class:`~connprune.train.recipes.TrainConfig` (a step schedule with milestones every 30/300 of the run); configs pass it
as ``train:``.
"""

from __future__ import annotations

import math
from typing import Any, ClassVar, Literal

import torch
from pydantic import Field
from torch import nn

from connprune.errors import UserError
from connprune.graph import build
from connprune.measure import importance
from connprune.measure.sparsity import prunable_weights
from connprune.methods import register
from connprune.methods.base import Kind, MethodParams, PruneData, PruningMethod, PruningResult
from connprune.methods.budget import excluded_scores
from connprune.methods.snip import Snip
from connprune.surgery import skips as skip_surgery
from connprune.train.recipes import TrainConfig

PAPER = ("Subramaniam & Sharma, N2NSkip: Learning Highly Sparse Networks using Neuron-to-Neuron Skip Connections, "
         "BMVC 2020")


PAPER_RECIPE: dict[str, Any] = {"batch_size": 128, "optimizer": "sgd", "lr": 0.05, "momentum": 0.9,
                                 "weight_decay": 5e-4, "schedule": "step", "gamma": 0.5,
                                 "milestones": [m / 300 for m in range(30, 300, 30)]}
"""The paper's recipe (the paper's Section 4; docs/methods/n2nskip.md §4) as TrainConfig overrides, milestones as
fractions of a 300-epoch run (×0.5 at every tenth of the run for other lengths)."""


def paper_recipe(epochs: int = 300, **overrides: Any) -> TrainConfig:
    """The paper's training recipe (the paper's Section 4; docs/methods/n2nskip.md §4): SGD 0.05, momentum 0.9, wd
    5e-4, batch 128, lr ×0.5 every 30 epochs (for ``epochs`` other than 300 the milestones stay at every 30 epochs, so
    short runs may have none)."""
    milestones = [m / epochs for m in range(30, epochs, 30)] if epochs > 0 else []
    return TrainConfig(**{**PAPER_RECIPE, "epochs": epochs, "milestones": milestones, **overrides})


class SkipParams(MethodParams):
    base: Literal["random", "snip"] = "snip"
    """Preliminary pruning at initialisation: ``random`` (the paper's RP) or ``snip`` (CSP)."""
    rp: Literal["channel", "element"] = "channel"
    """Random pruning's granularity (``base=random``): ``channel`` (the paper's RP, §3.3 of docs/methods/n2nskip.md:
    every output unit of a layer keeps the same number of randomly chosen input units, whole kernel slices; first
    conv and classifier dense) or ``element`` (uniform random weights, per ``scope``)."""
    scope: Literal["auto", "global", "layer"] = "auto"
    """Element-wise random pruning per layer or globally (``auto``: per layer for random, global for SNIP)."""
    span: int = Field(3, ge=2)
    """k: weight layers a chain skip spans (the paper's Fig. 2: 3)."""
    placement: skip_surgery.Placement = "auto"
    """Skip sites: ``chain`` (one per k-layer block, the code release's VGG layout), ``blocks`` (one per residual
    block), ``every`` (one starting at every layer, overlapping), ``auto`` (``blocks`` for residual networks, else
    ``chain``: one skip per block)."""
    batch_size: int = Field(128, ge=1)
    """SNIP's mini-batch."""


class N2NSkipParams(SkipParams):
    skip_fraction: float = Field(0.5, ge=0.0, lt=1.0)
    """Share of the non-zero budget given to skip weights (the paper: 0.5)."""
    layout: skip_surgery.Layout = "fan-in"
    """How each skip's connections are drawn: ``fan-in`` (the same number per target unit, the code release's rule,
    so every target unit gets one once a skip holds ``out_units`` connections) or ``uniform`` over all unit pairs."""
    bridge: skip_surgery.Bridge = "conv-pool"
    """Where a chain skip that crosses pooling layers is pooled: ``conv-pool`` (the code release: the sparse conv at
    the source's resolution, then a max-pool to the target's size) or ``pool-conv`` (ours: max-pool first, the conv at
    the target's resolution, so its MACs follow the target's positions; docs/methods/n2nskip.md, "Algorithm" step 2)."""
    kernel_size: int | None = Field(None, ge=1)
    """Skip convs' kernel (``None``: the source layer's kernel: 3 in VGG chains, 1 in bottleneck blocks)."""


def plain_kept(weights: dict[str, torch.Tensor], sparsity: float, scope: str) -> int:
    """Weights the plain method keeps at ``sparsity``, counted as :func:`importance.keep_top` keeps them."""
    if scope == "layer":
        return sum(w.numel() - round(sparsity * w.numel()) for w in weights.values())
    total = sum(w.numel() for w in weights.values())
    return total - round(sparsity * total)


def constant_fan_in(weights: dict[str, torch.Tensor], keep: int, dense: set[str], seed: int) \
        -> tuple[dict[str, torch.Tensor], dict[str, int]]:
    """The paper's channel-level random pruning (docs/methods/n2nskip.md §3 step 3; the code release, after Deep
    Expander Networks): the layers in ``dense`` (the method passes the classifier and a first conv layer; an MLP's
    first layer, usually its largest, is pruned: reconstructed) stay dense; every other layer keeps, for
    each output unit, the same number ``F_l`` of randomly chosen input units with their whole kernel slices
    (constant fan-in), so its mask is constant over kernel positions.

    ``F_l`` spreads the ``keep − Σ dense`` weights left over the pruned layers at one density ``ρ``: ``⌊ρ·in_l⌋``
    (at least 1, so no layer is cut), then one more, by largest remainder, in layers whose step ``out_l·f_l²`` still
    fits: the kept count is at most ``keep`` and misses it by less than the largest step unless the floor of 1
    forces more. Slices that an earlier pruning zeroed entirely are chosen last (a slice it thinned counts whole,
    so after an element-wise earlier pruning of a conv the kept count falls short). Returns masks and ``F_l``."""
    pruned = {name: w for name, w in weights.items() if name not in dense}
    left = keep - sum(int(torch.count_nonzero(weights[name])) for name in dense)  # an earlier pruning's zeros stay
    if left < 0 or not pruned:
        raise UserError(f"rp=channel keeps the first conv and the classifier dense ({keep - left} weights), more "
                        f"than the budget of {keep} weights; use rp=element or a lower sparsity")
    density = left / sum(w.numel() for w in pruned.values())
    ideal = {name: density * w.shape[1] for name, w in pruned.items()}
    fan_in = {name: min(w.shape[1], max(1, math.floor(ideal[name]))) for name, w in pruned.items()}
    step = {name: w.numel() // w.shape[1] for name, w in pruned.items()}  # out · f²: one more input unit per row
    left -= sum(fan_in[name] * step[name] for name in pruned)
    for name in sorted(pruned, key=lambda n: ideal[n] - math.floor(ideal[n]), reverse=True):
        if step[name] <= left and fan_in[name] == math.floor(ideal[name]) < pruned[name].shape[1]:
            fan_in[name] += 1
            left -= step[name]
    generator = torch.Generator().manual_seed(seed)
    masks = {}
    for name, w in weights.items():
        if name in dense:
            masks[name] = torch.ones(w.shape, dtype=torch.bool)
            continue
        scores = torch.rand(w.shape[:2], generator=generator)
        alive = w.detach().reshape(*w.shape[:2], -1).ne(0).any(dim=2).cpu()
        scores = torch.where(alive, scores, scores - 1)
        ranks = scores.argsort(dim=1, descending=True).argsort(dim=1)
        kept = ranks < fan_in[name]
        masks[name] = kept.view(*w.shape[:2], *([1] * (w.dim() - 2))).expand(w.shape).clone()
    return masks, fan_in


def keep_exactly(scores: dict[str, torch.Tensor], count: int, scope: str) -> dict[str, torch.Tensor]:
    """Masks keeping exactly ``count`` weights of highest score: globally, or per layer in proportion to its size
    (largest-remainder quotas, so the per-layer densities are equal up to one weight)."""
    total = sum(s.numel() for s in scores.values())
    if not 0 <= count <= total:
        raise UserError(f"cannot keep {count} of {total} weights")
    if scope == "global":
        return importance.keep_top(scores, (total - count) / total, "global")
    shares = {name: count * s.numel() / total for name, s in scores.items()}
    quotas = {name: math.floor(share) for name, share in shares.items()}
    by_remainder = sorted(shares, key=lambda name: shares[name] - quotas[name], reverse=True)
    for name in by_remainder[:count - sum(quotas.values())]:
        quotas[name] += 1
    return {name: importance.keep_top({name: s}, (s.numel() - quotas[name]) / s.numel(), "global")[name]
            for name, s in scores.items()}


class _SkipMethod(PruningMethod):
    """Shared: base pruning at initialisation and skip planning."""

    kind = Kind.UNSTRUCTURED
    paper = PAPER
    needs_trained = False
    needs_data = True
    recipe_overrides: ClassVar[dict[str, Any]] = PAPER_RECIPE
    """The training recipe the paper uses for these networks (``prune_model`` starts from it; a config's
    ``train:`` overrides it)."""

    def _scope(self) -> str:
        if self.params.base == "snip":
            if self.params.scope == "layer":
                raise UserError("base=snip keeps the global top saliencies (SNIP); scope=layer is for base=random")
            return "global"
        return "layer" if self.params.scope == "auto" else self.params.scope

    def _base_masks(self, model: nn.Module, keep: int, data: PruneData) -> tuple[dict[str, torch.Tensor], int]:
        """Sequential masks of the base method (RP or CSP) at initialisation keeping ``keep`` weights — exactly,
        except channel-level RP, which keeps up to ``keep`` in steps of one input unit per row — and that step
        (the budget unit, weights)."""
        weights = prunable_weights(model)
        total = sum(w.numel() for w in weights.values())
        if self.params.base == "snip":
            snip = Snip(seed=self.params.seed, batch_size=self.params.batch_size)
            return snip.prune(model, (total - keep) / total, data).masks, 1
        if self.params.rp == "channel":
            graph = build(model, data.example_inputs)
            first = next(iter(graph.layers))
            dense = {f"{layer}.weight" for layer in graph.output_layers}  # the classifier, and a first conv
            dense |= {f"{first}.weight"} if isinstance(model.get_submodule(first), nn.Conv2d) else set()
            masks, _ = constant_fan_in(weights, keep, dense, self.params.seed)
            return masks, max(w.numel() // w.shape[1] for name, w in weights.items() if name not in dense)
        earlier = {name: w == 0 for name, w in weights.items()}  # an earlier pruning's zeros go first
        scores = excluded_scores(importance.random_scores(weights, self.params.seed), earlier)
        return keep_exactly(scores, keep, self._scope()), 1

    def _sites(self, model: nn.Module, data: PruneData, kernel_size: int | None) -> list[skip_surgery.SkipSite]:
        return skip_surgery.plan(model, data.example_inputs, span=self.params.span, placement=self.params.placement,
                                 kernel_size=kernel_size)

    def _require(self, data: PruneData) -> None:
        """Training data only for SNIP's saliencies (``base=snip``); random pruning needs none."""
        self._scope()  # validates scope against base
        if self.params.base == "snip":
            super()._require(data)


@register
class N2NSkip(_SkipMethod):
    name = "n2nskip"
    summary = "prune at init (random/SNIP), then spend half the non-zero budget on sparse layer-to-layer skips"
    Params = N2NSkipParams

    def _prune(self, model: nn.Module, sparsity: float, data: PruneData) -> PruningResult:
        weights = prunable_weights(model)
        reference = sum(w.numel() for w in weights.values())
        budget = plain_kept(weights, sparsity, self._scope())
        sites = self._sites(model, data, self.params.kernel_size) if self.params.skip_fraction > 0 else []
        capacity = sum(site.pairs * site.kernel_area for site in sites)
        wanted = round(self.params.skip_fraction * budget)
        density = min(1.0, wanted / capacity) if capacity else 0.0
        pairs = [min(site.pairs, round(density * site.pairs)) for site in sites]
        skip_nonzero = sum(p * site.kernel_area for p, site in zip(pairs, sites))
        masks, unit = self._base_masks(model, budget - skip_nonzero, data)
        sequential = sum(int(m.sum()) for m in masks.values())
        specs = [site.spec(str(i), "n2n", connections=p, seed=self.params.seed * 1000 + i, layout=self.params.layout,
                           bridge=self.params.bridge) for i, (site, p) in enumerate(zip(sites, pairs)) if p > 0]
        info = {
            "nonzero_weights": sequential + skip_nonzero, "nonzero_sequential": sequential,
            "nonzero_skip": skip_nonzero, "plain_nonzero_weights": budget, "reference_weights": reference,
            "total_density": (sequential + skip_nonzero) / reference, "skip_density": density,
            "skip_capacity": capacity, "skip_budget_capped": wanted > capacity,
            "budget_unit": max(unit, len(weights)),
            "skips": [{"source": s["source"], "target": s["target"], "span": s["span"],
                       "connections": s["connections"]} for s in specs],
        }
        return PruningResult(masks=masks, skips=specs, info=info)


@register
class ResSkip(_SkipMethod):
    name = "resskip"
    summary = "prune at init (random/SNIP) and add dense parameter-free ResNet-style skips at N2NSkip's sites"
    Params = SkipParams

    def _prune(self, model: nn.Module, sparsity: float, data: PruneData) -> PruningResult:
        weights = prunable_weights(model)
        budget = plain_kept(weights, sparsity, self._scope())
        sites = self._sites(model, data, None)
        usable = [site for site in sites if site.in_units <= site.out_units]
        if not usable:
            raise UserError("resskip: every skip site maps more units onto fewer (e.g. a narrowing MLP), which a "
                            "parameter-free skip cannot do; use n2nskip or another placement")
        masks, unit = self._base_masks(model, budget, data)
        specs = [site.spec(str(i), "res") for i, site in enumerate(usable)]
        info = {"nonzero_weights": sum(int(m.sum()) for m in masks.values()), "plain_nonzero_weights": budget,
                "budget_unit": max(unit, len(weights)),
                "skips": [{"source": s["source"], "target": s["target"], "span": s["span"]} for s in specs],
                "sites_left_out": [f"{s.source}->{s.target}" for s in sites if s not in usable]}
        return PruningResult(masks=masks, skips=specs, info=info)
