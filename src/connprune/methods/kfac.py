"""Neuron pruning while training toward flat minima with a K-FAC spectral-radius penalty (method ``kfac``).

Paper: A. Ebrahimi & D. Klabjan, "Neuron-based Pruning of Deep Neural Networks with Better Generalization using
Kronecker Factored Curvature Approximation", arXiv 2111.08577 (2021), IJCNN 2023. Confirmed from the abstract: whole
neurons/filters are pruned, the network is trained from scratch while it is pruned, and the parameters are steered
toward a flat minimum through the spectral radius of the Hessian approximated with K-FAC.

Everything else here is **reconstructed (not confirmed from the paper)**, following docs/methods/kfac.md; each choice is
a parameter:

- objective ``CE + β·ρ̂`` (docs/methods/kfac.md §2) with ρ̂ = max_l (``reduce='max'``) or Σ_l (``'sum'``) of
  λmax(A_{l-1})·λmax(G_l) from EMA K-FAC factors (:mod:`connprune.measure.curvature`), its gradient by eigenvalue
  perturbation with the eigenvectors held fixed (``g_mode='A_only'``: only the activation side; ``'full'``: both, by
  double backprop); β ramps linearly from 0 over the first ``warmup`` fraction of training;
- a pruning window (epochs ``prune_start``..``prune_end`` of training, as fractions) in which the active neurons of
  every prunable layer follow the cubic schedule ``n(e) = k + (n − k)(1 − (e − E_s)/(E_e − E_s))³`` (Zhu & Gupta
  2017's gradual schedule applied to neuron counts), removing the lowest-``importance`` active neurons at each epoch
  end; pruned neurons never return (their weights, bias, BN scale/shift, consumer input slices and optimiser state
  stay exactly 0, so they emit exactly 0 and K-FAC's factor rows for them are zeroed);
- after the window, training continues with the penalty (the "flat" fine-tuning phase); the masked neurons are then
  removed physically by :func:`connprune.surgery.apply` (``result.remove``).

Budget: with ``budget='weights'`` (default) ``--sparsity`` is the contract's fraction of prunable weights and the
per-layer neuron targets k_l come from one uniform neuron-removal ratio found by bisection on the exact remaining weight
count (:func:`connprune.methods.channel_budget.remaining_weights`); with ``budget='neurons'`` ``--sparsity`` is the
fraction of neurons removed in every prunable layer, ``k_l = ceil((1 − s)·n_l)`` (docs/methods/kfac.md §3 step 2). By
default the first conv layer, the classifier's outputs and residual-stream channels are not pruned.

β = 0 is the ablation without flatness (the same schedule and importance).
"""

from __future__ import annotations

import math
import time
from typing import Any, Literal

import torch
from pydantic import Field, model_validator
from torch import nn
from torch.nn import functional as F

from connprune.data import DataSource, read
from connprune.data.pipeline import Batches
from connprune.errors import UserError
from connprune.graph import ChannelGroup, ModelGraph, build
from connprune.measure import curvature, importance
from connprune.measure.sparsity import count_prunable
from connprune.methods import register
from connprune.methods.base import Kind, MethodParams, PruneData, PruningResult, Sparsity, TrainingMethod
from connprune.methods.channel_budget import (fit_channels, kept_channels, layer_density, ratio_bounds,
                                              remaining_weights)
from connprune.surgery import MaskEnforcer, removal_masks
from connprune.train import distributed
from connprune.train.recipes import TrainConfig
from connprune.train.trainer import TrainHook

Importance = Literal["norm_in", "norm_inout", "bn", "curvature"]


class KFACParams(MethodParams):
    beta: float = Field(1e-3, ge=0)
    """β_max, the weight of the spectral-radius penalty; 0 is the ablation without flatness."""
    reduce: Literal["max", "sum"] = "max"
    """Network estimate: the largest layer term (a lower bound) or their sum (an upper bound)."""
    fisher: Literal["mc", "empirical", "exact"] = "mc"
    """Backpropagated targets for G: one sampled label, the true label, or the exact expectation (C backwards)."""
    g_mode: Literal["A_only", "full"] = "A_only"
    """Penalty gradient through the activations only (cheap) or through G too (double backprop)."""
    ema: float = Field(0.95, ge=0, lt=1)
    """EMA decay of the K-FAC factors."""
    stat_every: int = Field(10, ge=1)
    """T_stat: update the factors every this many steps."""
    eig_every: int = Field(50, ge=1)
    """T_eig: recompute the top eigenpairs every this many steps."""
    eigh_max_dim: int = Field(512, ge=1)
    """Factors up to this size get an exact ``eigh``; larger ones warm-started power iteration (20 steps). The value of
    docs/methods/kfac.md §4 is 2048; 512 is the default here because one 785×785 ``eigh`` (the MLP's input factor)
    takes ~26 ms on one CPU thread, which alone put the MLP's per-epoch overhead above 1.5×."""
    warmup: float = Field(0.1, ge=0, le=1)
    """Fraction of training over which β ramps linearly from 0 to ``beta``."""
    importance: Importance = "norm_inout"
    """Neuron score: ‖W_j‖ (norm_in), ‖W_j‖·‖W_next[:, j]‖ (norm_inout), |γ_j| of the next BN (bn), or minus the
    neuron's share of G's top eigenvector (curvature: sharpest neurons go first)."""
    prune_start: float = Field(0.1, ge=0, lt=1)
    """Start of the pruning window, as a fraction of the epochs."""
    prune_end: float = Field(0.6, gt=0, le=1)
    """End of the pruning window (targets reached), as a fraction of the epochs."""
    budget: Literal["weights", "neurons"] = "weights"
    """What --sparsity measures: the fraction of prunable weights (contract) or of neurons per prunable layer."""
    prune_first_conv: bool = False
    """Also prune the output channels of the network's first convolution (left whole by default)."""
    prune_residual: bool = False
    """Also prune residual-stream channels (all coupled producers drop the same channel)."""
    min_neurons: int = Field(1, ge=1)
    """Fewest neurons (channels) every pruned layer keeps."""
    diagnostic_samples: int = Field(256, ge=1)
    """Training images on which the final ρ̂ (exact-expectation Fisher, eval mode) is measured."""
    exact_eigenvalue: bool = False
    """Also report the exact top GGN eigenvalue on the diagnostic samples (Lanczos; small models)."""

    @model_validator(mode="after")
    def _window(self) -> KFACParams:
        if self.prune_end <= self.prune_start:
            raise ValueError(f"prune_end ({self.prune_end}) must be after prune_start ({self.prune_start})")
        return self


# ------------------------------------------------------------------------------------------------- schedule, budget


def pruning_window(epochs: int, start: float, end: float) -> tuple[int, int]:
    """(E_s, E_e) in completed epochs: pruning happens at the ends of epochs E_s + 1 … E_e."""
    first = math.floor(start * epochs)
    last = max(first + 1, min(epochs, round(end * epochs)))
    if last > epochs:
        raise UserError(f"{epochs} epoch(s) leave no room for a pruning window from {start} to {end} of training; "
                        "use more --epochs or an earlier prune_start")
    return first, last


def cubic_schedule(channels: int, target: int, epoch: int, start: int, end: int) -> int:
    """Active neurons after ``epoch`` completed epochs: ``k + ⌈(n − k)(1 − (e − E_s)/(E_e − E_s))³⌉``, clipped to
    the window (n before it, k after it): integer, non-increasing, n at E_s and exactly k at E_e."""
    progress = min(1.0, max(0.0, (epoch - start) / (end - start)))
    return target + math.ceil((channels - target) * (1.0 - progress) ** 3 - 1e-9)


def prunable_groups(graph: ModelGraph, prune_first_conv: bool, prune_residual: bool) -> list[ChannelGroup]:
    """Channel groups the method may prune: not residual streams (unless asked), not the first conv (unless
    asked); the classifier's outputs are never in a group. Depthwise groups are left alone."""
    first = graph.layers[0] if graph.layers else None
    groups = []
    for group in graph.groups:
        if group.residual and not prune_residual:
            continue
        if not prune_first_conv and first in group.producers and isinstance(graph.model.get_submodule(first),
                                                                            nn.Conv2d):
            continue
        if graph.depthwise_members(group.root):
            continue
        groups.append(group)
    return groups


def neuron_targets(graph: ModelGraph, groups: list[ChannelGroup], sparsity: float,
                   budget: Literal["weights", "neurons"], min_neurons: int) -> dict[str, int]:
    """k_l per group root. ``neurons``: ⌈(1 − s)·n_l⌉. ``weights``: the uniform neuron ratio that comes closest
    below ``sparsity`` on the exact remaining prunable-weight count, then one neuron at a time from the group that
    keeps the largest fraction, until the budget is met to within one neuron
    (:mod:`~connprune.methods.channel_budget`)."""
    full = {g.root: g.channels for g in graph.groups}
    if budget == "neurons":
        return {g.root: max(min_neurons, min(g.channels, math.ceil((1.0 - sparsity) * g.channels - 1e-9)))
                for g in groups}
    dense = count_prunable(graph.model)

    def kept_at(ratio: float) -> dict[str, int]:
        return {g.root: kept_channels(g.channels, ratio, 1, min_neurons) for g in groups}

    density = layer_density(graph)  # an earlier pruning's zeros count, at each layer's density

    def achieved(ratio: float) -> float:
        return 1.0 - remaining_weights(graph, {**full, **kept_at(ratio)}, density) / dense

    if achieved(1.0) < sparsity:
        raise UserError(f"a weight sparsity of {sparsity} cannot be reached by removing neurons of the prunable "
                        f"layers (at most {achieved(1.0):.3f}); lower --sparsity, or allow more layers "
                        "(prune_first_conv=true, prune_residual=true)")
    low, _ = ratio_bounds(achieved, sparsity)
    return fit_channels(graph, kept_at(low), sparsity, floor={g.root: min(min_neurons, g.channels) for g in groups},
                        step={g.root: 1 for g in groups}, density=density)


# ------------------------------------------------------------------------------------------------------ the masks


class NeuronMasks:
    """Which neurons of each prunable group are active, and the parameter masks that silence the others."""

    def __init__(self, model: nn.Module, graph: ModelGraph, groups: list[ChannelGroup]) -> None:
        self.model, self.graph = model, graph
        self.groups = {g.root: g for g in groups}
        self.active = {g.root: torch.ones(g.channels, dtype=torch.bool) for g in groups}

    def counts(self) -> dict[str, int]:
        return {root: int(keep.sum()) for root, keep in self.active.items()}

    def removed(self) -> dict[str, list[int]]:
        """Group root → indices of pruned neurons (what ``surgery.apply`` removes physically)."""
        return {root: torch.nonzero(~keep).view(-1).tolist() for root, keep in self.active.items() if not keep.all()}

    def parameter_masks(self) -> dict[str, torch.Tensor]:
        """Keep-masks: producers' rows and biases, their BN scale and shift, and every consumer's input slice."""
        parameters = dict(self.model.named_parameters())
        masks: dict[str, torch.Tensor] = {}
        removed = self.removed()
        for root, indices in removed.items():
            for producer in self.groups[root].producers:
                norm = self.graph.batchnorm_after(producer)
                for owner in [producer] + ([norm] if norm is not None else []):
                    for suffix in ("weight", "bias"):
                        name = f"{owner}.{suffix}"
                        if name in parameters:
                            mask = masks.setdefault(name, torch.ones_like(parameters[name], dtype=torch.bool))
                            mask[indices] = False
        if removed:
            for name, mask in removal_masks(self.model, removed, self.graph.example_inputs).items():
                masks[name] = masks[name] & mask if name in masks else mask
        return masks


def neuron_scores(kind: Importance, masks: NeuronMasks, group: ChannelGroup, kfac: curvature.KFAC) -> torch.Tensor:
    """Importance of each neuron of ``group`` (higher = keep); see :class:`KFACParams.importance`."""
    if kind == "curvature":
        score = torch.zeros(group.channels)
        for producer in group.producers:
            state = kfac.layers.get(producer)
            if state is not None and state.vec_g is not None:
                score -= state.vec_g.detach().cpu().float().pow(2)
        return score
    if kind == "bn":
        return importance.batchnorm_scale(group, masks.graph)
    if kind == "norm_in":
        return importance.incoming_norm(group, masks.graph)
    return importance.in_out_norm(group, masks.graph)


def penalty_share(sums: torch.Tensor) -> float:
    """β·ρ̂'s share of the training loss, ``Σ β_t·ρ̂_t / Σ (CE_t + β_t·ρ̂_t)`` over the steps whose sums (penalty,
    cross-entropy) are ``sums``; ρ̂_t is the surrogate's value on step t's batch (docs/methods/kfac.md §2)."""
    penalty, ce = (float(v) for v in sums)
    return penalty / (penalty + ce) if penalty + ce > 0 else 0.0


def diagnostic_batch(data: DataSource, samples: int, device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
    """The first ``samples`` training samples, normalised, in a fixed order (the ρ̂ / exact λmax diagnostics)."""
    held = read(data, samples=samples, who="kfac", why="diagnostic_samples")
    return next(iter(Batches(held, min(samples, len(held)), device=device)))


def final_curvature(model: nn.Module, x: torch.Tensor, y: torch.Tensor, layers: list[str], reduce: str,
                    exact: bool) -> dict[str, Any]:
    """ρ̂ with exact-expectation factors on a fixed batch in eval mode, per layer, and optionally exact λmax(GGN)."""
    was_training = model.training
    model.eval()
    try:
        factors = curvature.collect_factors(model, [(x, y)], layers=layers, fisher="exact")
        info: dict[str, Any] = {"spectral_radius": factors.spectral_radius(reduce),
                                "spectral_radius_layers": factors.layer_radii()}
        if exact:
            info["exact_ggn_lambda_max"] = curvature.top_hessian_eigenvalue(model, x, y, kind="ggn", steps=30)
    finally:
        model.train(was_training)
    return info


# ----------------------------------------------------------------------------------------------------- the method


@register
class KFACPruning(TrainingMethod):
    name = "kfac"
    kind = Kind.DURING_TRAINING
    paper = ("Ebrahimi & Klabjan, Neuron-based Pruning of Deep Neural Networks with Better Generalization using "
             "Kronecker Factored Curvature Approximation, arXiv 2111.08577 (IJCNN 2023); design reconstructed")
    summary = ("neurons: train from scratch with CE + β·K-FAC spectral radius, prune neurons on a cubic schedule, "
               "remove them")
    Params = KFACParams

    def description(self) -> str:
        return f"kfac β={self.params.beta}"

    def start(self, model: nn.Module, sparsity: Sparsity, data: PruneData | None = None, *,
              optimizer: torch.optim.Optimizer | None = None, steps_per_epoch: int | None = None,
              epochs: int | None = None) -> None:
        """Targets, pruning window, neuron masks and K-FAC statistics (hooks on the layers) for ``epochs`` epochs of
        ``steps_per_epoch`` steps."""
        super().start(model, sparsity, data, optimizer=optimizer, steps_per_epoch=steps_per_epoch, epochs=epochs)
        p = self.params
        if epochs is None or epochs < 1 or steps_per_epoch is None:
            raise UserError("the kfac method trains while it prunes: pass --epochs N with N >= 1 (in Python: "
                            "start(..., steps_per_epoch=S, epochs=N))")
        if distributed.is_distributed() and distributed.world_size() > 1:
            raise UserError("the kfac method trains on one process; run it without torchrun")
        graph = build(model, self.data.example_inputs)
        groups = prunable_groups(graph, p.prune_first_conv, p.prune_residual)
        if not groups:
            raise UserError("this model has no prunable neurons under the current options (first conv and residual "
                            "streams excluded); set prune_first_conv=true or prune_residual=true")
        self.targets = neuron_targets(graph, groups, float(self.sparsity), p.budget, p.min_neurons)
        self.window = pruning_window(epochs, p.prune_start, p.prune_end)
        self.masks = NeuronMasks(model, graph, groups)
        self.enforcer = MaskEnforcer(model, self.masks.parameter_masks(), optimizer)
        self.layers = [name for name in graph.layers if not curvature.is_grouped_conv(model.get_submodule(name))]
        self.kfac = curvature.KFAC(model, self.layers, ema=p.ema, fisher=p.fisher, seed=p.seed,
                                   eigh_max_dim=p.eigh_max_dim)
        self.kfac.recording = False
        self._recorder = model.register_forward_pre_hook(self._record)
        self.total_steps, self.steps = epochs * steps_per_epoch, 0
        self.radius_trace: list[dict[str, Any]] = []
        self.history: list[dict[str, Any]] = []
        self.penalty_seconds = 0.0
        device = next(model.parameters()).device  # sums stay there: no host sync per step
        self.share_sums = torch.zeros(2, device=device)  # this epoch's Σ β_t·ρ̂_t and Σ CE_t, read at epoch ends
        self.share_totals = torch.zeros(2, device=device)
        self.penalty_shares: list[float] = []

    def _record(self, module: nn.Module, inputs: Any) -> None:
        """K-FAC caches the layer inputs of training forward passes only (not evaluation)."""
        self.kfac.recording = module.training and torch.is_grad_enabled()

    def beta_now(self) -> float:
        """β ramps linearly from 0 to ``beta`` over the first ``warmup`` fraction of the steps."""
        ramp = self.params.warmup * self.total_steps
        return self.params.beta * (1.0 if ramp <= 0 else min(1.0, self.steps / ramp))

    def penalty(self, model: nn.Module, outputs: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        """``β·ρ̂`` (docs/methods/kfac.md §2), updating the K-FAC factors every ``stat_every`` steps and their top
        eigenpairs every ``eig_every`` steps."""
        p = self.params
        self.kfac.recording = False
        started = time.perf_counter()
        if self.steps % p.stat_every == 0:
            self.kfac.update(outputs, targets)
        if self.steps % p.eig_every == 0:
            self.kfac.refresh_eigen()
            self.radius_trace.append({"step": self.steps, "rho": self.kfac.spectral_radius(p.reduce),
                                      "penalised": self.kfac.penalty_layers(p.reduce)})
        beta = self.beta_now()
        term = beta * self.kfac.penalty(p.reduce, p.g_mode, outputs, targets) if beta > 0 else outputs.new_zeros(())
        smoothing = self.data.recipe.label_smoothing if self.data.recipe is not None else 0.0
        ce = F.cross_entropy(outputs.detach().float(), targets, label_smoothing=smoothing)
        self.share_sums += torch.stack([term.detach().float(), ce])
        self.penalty_seconds += time.perf_counter() - started
        return term

    def on_step(self, step: int, model: nn.Module, optimizer: torch.optim.Optimizer) -> None:
        self.kfac.clear_cache()
        self.steps = step
        self.enforcer.attach(optimizer)  # a no-op unless a user's loop gave no optimizer to start()

    def on_epoch_end(self, epoch: int, model: nn.Module, optimizer: torch.optim.Optimizer) -> None:
        """Record the epoch's penalty share of the loss; in the pruning window, deactivate the lowest-importance
        active neurons of every group to reach the cubic schedule; pruned neurons never return."""
        self.penalty_shares.append(penalty_share(self.share_sums))
        self.share_totals += self.share_sums
        self.share_sums = torch.zeros_like(self.share_sums)
        start, end = self.window
        if not start < epoch <= end:
            return
        counts, dropped = {}, False
        for root, group in self.masks.groups.items():
            active = self.masks.active[root]
            drop = int(active.sum()) - cubic_schedule(group.channels, self.targets[root], epoch, start, end)
            if drop > 0:
                scores = neuron_scores(self.params.importance, self.masks, group, self.kfac).clone()
                scores[~active] = float("inf")  # pruned neurons never return (nor are they chosen twice)
                active[torch.argsort(scores, stable=True)[:drop]] = False
                dropped = True
            counts[root] = int(active.sum())
        self.history.append({"epoch": epoch, "active": counts})
        if dropped:
            self.enforcer.update(self.masks.parameter_masks())
            self._mask_factors()
            self.kfac.refresh_eigen()

    def _mask_factors(self) -> None:
        """Zero the K-FAC rows/columns of pruned outputs (G) and of inputs read from pruned neurons (A)."""
        for name, state in self.kfac.layers.items():
            keep = self.enforcer.masks.get(f"{name}.weight")
            if keep is None:
                self.kfac.set_keep(name, None, None)
                continue
            keep_out = keep.reshape(keep.shape[0], -1).any(1)
            keep_in = keep.reshape(keep.shape[0], -1).any(0)
            if state.module.bias is not None:
                keep_in = torch.cat([keep_in, torch.ones(1, dtype=torch.bool)])
            self.kfac.set_keep(name, keep_in, keep_out)

    def finalize(self, model: nn.Module) -> PruningResult:
        """The neurons to remove, the final ρ̂ (on ``diagnostic_samples`` training images, exact-expectation
        factors, eval mode) and the run's diagnostics, among them the penalty's share of the loss over the run and
        per epoch (:func:`penalty_share`)."""
        p = self.params
        self.kfac.refresh_eigen()
        running = self.kfac.spectral_radius(p.reduce)
        self.kfac.close()
        self._recorder.remove()
        channels = sum(g.channels for g in self.masks.groups.values())
        active = sum(self.masks.counts().values())
        info: dict[str, Any] = {
            "final_spectral_radius_ema": running, "neuron_sparsity": 1.0 - active / channels,
            "neurons_before": channels, "neurons_after": active, "neuron_targets": self.targets,
            "pruning_window_epochs": list(self.window), "schedule": self.history,
            "spectral_radius_trace": self.radius_trace, "penalty_seconds": self.penalty_seconds,
            "penalty_share": penalty_share(self.share_totals), "penalty_share_epochs": self.penalty_shares,
        }
        if self.data.train is not None:
            x, y = diagnostic_batch(self.data.train, p.diagnostic_samples, next(model.parameters()).device)
            final = final_curvature(model, x, y, self.layers, p.reduce, p.exact_eigenvalue)
            info.update(final_spectral_radius=final["spectral_radius"],
                        final_spectral_radius_layers=final["spectral_radius_layers"])
            if "exact_ggn_lambda_max" in final:
                info["final_exact_ggn_lambda_max"] = final["exact_ggn_lambda_max"]
        self.enforcer.detach()
        info["budget_unit"] = max((g.weights_per_channel for g in self.masks.groups.values()), default=1)
        return PruningResult(remove=self.masks.removed(), train_after=0, info=info)


def train_and_prune(model: nn.Module, train_data: DataSource, test_data: DataSource | None, recipe: TrainConfig,
                    sparsity: float, params: KFACParams, *, progress: bool = False,
                    device: torch.device | None = None, hooks: list[TrainHook] | None = None
                    ) -> tuple[nn.Module, dict[str, list[int]], dict[str, Any]]:
    """Train ``model`` from its current (random) weights with CE + β·ρ̂ while pruning neurons on the cubic
    schedule; returns the trained masked model, the neurons to remove per group root, and diagnostics.
    ``hooks`` run after the method's own hook (observers: they see each epoch's masks already updated)."""
    method = KFACPruning(**params.model_dump())
    data = PruneData(train=train_data, test=test_data, recipe=recipe, progress=progress,
                     device=device if device is not None else torch.device("cpu"))
    result = method.train(model, sparsity, data, hooks=hooks)
    return model, result.remove, result.info
