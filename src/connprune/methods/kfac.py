"""Neuron pruning while training toward flat minima with a K-FAC spectral-radius penalty (method ``kfac``).

Paper: A. Ebrahimi & D. Klabjan, "Neuron-based Pruning of Deep Neural Networks with Better Generalization using
Kronecker Factored Curvature Approximation", arXiv 2111.08577 (2021), IJCNN 2023. Confirmed from the abstract: whole
neurons/filters are pruned, the network is trained from scratch while it is pruned, and the parameters are steered
toward a flat minimum through the spectral radius of the Hessian approximated with K-FAC.

Everything else here is **reconstructed (not confirmed from the paper)**, following ``specs/kfac_pruning.md``; each
choice is a parameter:

- objective ``CE + β·ρ̂`` (§2) with ρ̂ = max_l (``reduce='max'``) or Σ_l (``'sum'``) of λmax(A_{l-1})·λmax(G_l)
  from EMA K-FAC factors (:mod:`connprune.measure.curvature`), its gradient by eigenvalue perturbation with the
  eigenvectors held fixed (``g_mode='A_only'``: only the activation side; ``'full'``: both, by double backprop);
  β ramps linearly from 0 over the first ``warmup`` fraction of training;
- a pruning window (epochs ``prune_start``..``prune_end`` of training, as fractions) in which the active neurons of
  every prunable layer follow the cubic schedule ``n(e) = k + (n − k)(1 − (e − E_s)/(E_e − E_s))³`` (Zhu & Gupta
  2017's gradual schedule applied to neuron counts), removing the lowest-``importance`` active neurons at each epoch
  end; pruned neurons never return (their weights, bias, BN scale/shift, consumer input slices and optimiser state
  stay exactly 0, so they emit exactly 0 and K-FAC's factor rows for them are zeroed);
- after the window, training continues with the penalty (the "flat" fine-tuning phase); the masked neurons are then
  removed physically by :func:`connprune.surgery.apply` (``result.remove``).

Budget: with ``budget='weights'`` (default) ``--sparsity`` is the contract's fraction of prunable weights and the
per-layer neuron targets k_l come from one uniform neuron-removal ratio found by bisection on the exact remaining
weight count (:func:`connprune.methods.channel_budget.remaining_weights`); with ``budget='neurons'`` ``--sparsity`` is
the fraction of neurons removed in every prunable layer, ``k_l = ceil((1 − s)·n_l)`` (spec §3 step 2). By default
the first conv layer, the classifier's outputs and residual-stream channels are not pruned.

β = 0 is the ablation without flatness (the same schedule and importance).
"""

from __future__ import annotations

import math
import time
from typing import Any, Literal

import torch
import torch.nn.functional as F
from pydantic import Field, model_validator
from torch import nn

from connprune.data import ImageData
from connprune.data.pipeline import Batches
from connprune.errors import UserError
from connprune.graph import ChannelGroup, ModelGraph, build
from connprune.measure import curvature
from connprune.measure.sparsity import count_prunable
from connprune.methods import register
from connprune.methods.base import Kind, MethodParams, PruneData, PruningMethod, PruningResult, Sparsity
from connprune.methods.channel_budget import kept_channels, remaining_weights, smallest_ratio
from connprune.surgery import MaskEnforcer, removal_masks
from connprune.train.recipes import TrainConfig
from connprune.train.trainer import Trainer, TrainHook, learning_rate

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
    """Factors up to this size get an exact ``eigh``; larger ones warm-started power iteration (20 steps). The
    spec's value is 2048; 512 is the default here because one 785×785 ``eigh`` (the MLP's input factor) takes
    ~26 ms on one CPU thread, which alone put the MLP's per-epoch overhead above 1.5×."""
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
    prune_residual: bool = False
    """Also prune residual-stream channels (all coupled producers drop the same channel)."""
    min_neurons: int = Field(1, ge=1)
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
        if graph.details.get(group.root) is not None and graph.details[group.root].depthwise:
            continue
        groups.append(group)
    return groups


def neuron_targets(graph: ModelGraph, groups: list[ChannelGroup], sparsity: float,
                   budget: Literal["weights", "neurons"], min_neurons: int) -> dict[str, int]:
    """k_l per group root. ``neurons``: ⌈(1 − s)·n_l⌉. ``weights``: the smallest uniform neuron ratio whose exact
    remaining prunable-weight count meets ``sparsity`` (bisection, as :mod:`~connprune.methods.channel_budget`)."""
    full = {g.root: g.channels for g in graph.groups}
    if budget == "neurons":
        return {g.root: max(min_neurons, min(g.channels, math.ceil((1.0 - sparsity) * g.channels - 1e-9)))
                for g in groups}
    dense = count_prunable(graph.model)

    def kept_at(ratio: float) -> dict[str, int]:
        return {g.root: kept_channels(g.channels, ratio, 1, min_neurons) for g in groups}

    def achieved(ratio: float) -> float:
        return 1.0 - remaining_weights(graph, {**full, **kept_at(ratio)}) / dense

    if achieved(1.0) < sparsity:
        raise UserError(f"a weight sparsity of {sparsity} cannot be reached by removing neurons of the prunable "
                        f"layers (at most {achieved(1.0):.3f}); lower --sparsity, or allow more layers "
                        "(prune_first_conv=true, prune_residual=true)")
    return kept_at(smallest_ratio(achieved, sparsity))


def following_batchnorm(model: nn.Module, input_shape: tuple[int, int, int]) -> dict[str, str]:
    """Conv/linear name → the BatchNorm that directly normalises its output (traced: the BN's input *is* the
    layer's output tensor)."""
    produced: dict[int, str] = {}
    found: dict[str, str] = {}
    handles = []
    for name, module in model.named_modules():
        if isinstance(module, (nn.Linear, nn.Conv2d)):
            handles.append(module.register_forward_hook(
                lambda m, i, o, name=name: produced.__setitem__(id(o), name)))
        elif isinstance(module, (nn.BatchNorm1d, nn.BatchNorm2d)):
            handles.append(module.register_forward_hook(
                lambda m, i, o, name=name: found.__setitem__(produced[id(i[0])], name) if id(i[0]) in produced
                else None))
    was_training = model.training
    parameter = next(model.parameters())
    try:
        model.eval()
        with torch.no_grad():
            model(torch.zeros(2, *input_shape, device=parameter.device, dtype=parameter.dtype))
    finally:
        model.train(was_training)
        for handle in handles:
            handle.remove()
    return found


# ------------------------------------------------------------------------------------------------------ the masks


class NeuronMasks:
    """Which neurons of each prunable group are active, and the parameter masks that silence the others."""

    def __init__(self, model: nn.Module, graph: ModelGraph, groups: list[ChannelGroup],
                 input_shape: tuple[int, int, int]) -> None:
        self.model, self.graph, self.input_shape = model, graph, input_shape
        self.groups = {g.root: g for g in groups}
        self.active = {g.root: torch.ones(g.channels, dtype=torch.bool) for g in groups}
        self.batchnorm = following_batchnorm(model, input_shape)

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
                owners = [producer] + ([self.batchnorm[producer]] if producer in self.batchnorm else [])
                for owner in owners:
                    for suffix in ("weight", "bias"):
                        name = f"{owner}.{suffix}"
                        if name in parameters:
                            mask = masks.setdefault(name, torch.ones_like(parameters[name], dtype=torch.bool))
                            mask[indices] = False
        if removed:
            for name, mask in removal_masks(self.model, removed, self.input_shape).items():
                masks[name] = masks[name] & mask if name in masks else mask
        return masks


class _GrowingMaskEnforcer(MaskEnforcer):
    """:class:`MaskEnforcer` whose masks may grow between epochs (pruned neurons never come back)."""

    def replace(self, trainer: Trainer, masks: dict[str, torch.Tensor]) -> None:
        self.masks = dict(masks)
        self.on_train_start(trainer)


# ----------------------------------------------------------------------------------------------------- training


class FlatPruningTrainer(Trainer):
    """The :class:`~connprune.train.trainer.Trainer` with the K-FAC statistics and ``β·ρ̂`` penalty in each step."""

    def __init__(self, *args: Any, params: KFACParams, layers: list[str], **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        if self.world_size > 1:
            raise UserError("the kfac method trains on one process; run it without torchrun")
        self.params = params
        self.kfac = curvature.KFAC(self.model, layers, ema=params.ema, fisher=params.fisher, seed=params.seed,
                                   eigh_max_dim=params.eigh_max_dim)
        self.kfac.recording = False
        self.radius_trace: list[dict[str, Any]] = []
        self.penalty_seconds = 0.0

    def beta_now(self) -> float:
        ramp = self.params.warmup * self.total_steps
        return self.params.beta * (1.0 if ramp <= 0 else min(1.0, self.step / ramp))

    def _train_step(self, x: torch.Tensor, y: torch.Tensor) -> tuple[float, int]:
        for group in self.optimizer.param_groups:
            group["lr"] = learning_rate(self.config, self.step, self.total_steps)
        self.kfac.recording = True
        logits = self.model(x)
        self.kfac.recording = False
        loss = F.cross_entropy(logits.float(), y, label_smoothing=self.config.label_smoothing)
        started = time.perf_counter()
        if self.step % self.params.stat_every == 0:
            self.kfac.update(logits, y)
        if self.step % self.params.eig_every == 0:
            self.kfac.refresh_eigen()
            self.radius_trace.append({"step": self.step, "rho": self.kfac.spectral_radius(self.params.reduce),
                                      "penalised": self.kfac.penalty_layers(self.params.reduce)})
        beta = self.beta_now()
        total = loss
        if beta > 0:
            total = loss + beta * self.kfac.penalty(self.params.reduce, self.params.g_mode, logits, y)
        self.penalty_seconds += time.perf_counter() - started
        self.optimizer.zero_grad(set_to_none=True)
        total.backward()
        self.kfac.clear_cache()
        self.optimizer.step()
        self.step += 1
        for hook in self.hooks:
            hook.after_step(self)
        return loss.item() * len(y), int((logits.argmax(1) == y).sum().item())


def neuron_scores(kind: Importance, masks: NeuronMasks, group: ChannelGroup, kfac: curvature.KFAC) -> torch.Tensor:
    """Importance of each neuron of ``group`` (higher = keep); see :class:`KFACParams.importance`."""
    model = masks.model
    channels = group.channels
    if kind == "curvature":
        score = torch.zeros(channels)
        for producer in group.producers:
            state = kfac.layers.get(producer)
            if state is not None and state.vec_g is not None:
                score -= state.vec_g.detach().cpu().float().pow(2)
        return score
    if kind == "bn":
        score = torch.zeros(channels)
        for producer in group.producers:
            if producer not in masks.batchnorm:
                raise UserError(f"importance='bn' needs a BatchNorm after {producer!r}, which has none; use "
                                "importance='norm_inout' for models without BatchNorm")
            score += model.get_submodule(masks.batchnorm[producer]).weight.detach().abs().cpu()
        return score
    squared = torch.zeros(channels)
    for producer in group.producers:
        layer = model.get_submodule(producer)
        squared += layer.weight.detach().reshape(channels, -1).pow(2).sum(1).cpu()
        if layer.bias is not None:
            squared += layer.bias.detach().pow(2).cpu()
    score = squared.sqrt()
    if kind == "norm_inout":
        outgoing = torch.zeros(channels)
        for pair in masks.graph.pairs:
            if pair.parent in group.producers and pair.child in group.consumers:
                weight = model.get_submodule(pair.child).weight.detach()
                block = pair.features_per_channel
                per_input = weight.transpose(0, 1).reshape(weight.shape[1], -1).pow(2).sum(1).cpu()
                outgoing += per_input.view(channels, block).sum(1)
        score = score * outgoing.sqrt()
    return score


class _PruneOnSchedule(TrainHook):
    """At the end of each epoch in the window, deactivate the lowest-importance active neurons of every group
    to reach the cubic schedule; keep everything pruned at 0 after every step."""

    def __init__(self, masks: NeuronMasks, targets: dict[str, int], window: tuple[int, int],
                 importance: Importance) -> None:
        self.masks, self.targets, self.window, self.importance = masks, targets, window, importance
        self.enforcer = _GrowingMaskEnforcer({})
        self.history: list[dict[str, Any]] = []

    def on_train_start(self, trainer: Trainer) -> None:
        self.enforcer.replace(trainer, self.masks.parameter_masks())

    def after_step(self, trainer: Trainer) -> None:
        self.enforcer.after_step(trainer)

    def on_epoch_end(self, trainer: Trainer, epoch: int, metrics: dict[str, float]) -> None:
        start, end = self.window
        if not start < epoch <= end:
            return
        kfac = trainer.kfac if isinstance(trainer, FlatPruningTrainer) else None
        counts, dropped = {}, False
        for root, group in self.masks.groups.items():
            active = self.masks.active[root]
            wanted = cubic_schedule(group.channels, self.targets[root], epoch, start, end)
            drop = int(active.sum()) - wanted
            if drop > 0:
                scores = neuron_scores(self.importance, self.masks, group, kfac).clone()
                scores[~active] = float("inf")  # pruned neurons never return (nor are they chosen twice)
                order = torch.argsort(scores, stable=True)[:drop]
                active[order] = False
                dropped = True
            counts[root] = int(active.sum())
        self.history.append({"epoch": epoch, "active": counts})
        if not dropped:
            return
        self.enforcer.replace(trainer, self.masks.parameter_masks())
        if kfac is not None:
            self._mask_factors(kfac)
            kfac.refresh_eigen()

    def _mask_factors(self, kfac: curvature.KFAC) -> None:
        """Zero the K-FAC rows/columns of pruned outputs (G) and of inputs read from pruned neurons (A)."""
        masks = self.enforcer.masks
        for name, state in kfac.layers.items():
            module = state.module
            keep_out = masks.get(f"{name}.weight")
            keep_out = keep_out.reshape(keep_out.shape[0], -1).any(1) if keep_out is not None else None
            keep_in = masks.get(f"{name}.weight")
            if keep_in is not None:
                keep_in = keep_in.reshape(keep_in.shape[0], -1).any(0)
                if module.bias is not None:
                    keep_in = torch.cat([keep_in, torch.ones(1, dtype=torch.bool)])
            kfac.set_keep(name, keep_in, keep_out)


def diagnostic_batch(data: ImageData, samples: int, device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
    """The first ``samples`` training images, normalised, in a fixed order (the ρ̂ / exact λmax diagnostics)."""
    return next(iter(Batches(data, min(samples, len(data)), device=device)))


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


def train_and_prune(model: nn.Module, train_data: ImageData, test_data: ImageData | None, recipe: TrainConfig,
                    sparsity: float, params: KFACParams, *, progress: bool = False,
                    device: torch.device | None = None, hooks: list[TrainHook] | None = None
                    ) -> tuple[nn.Module, dict[str, list[int]], dict[str, Any]]:
    """Train ``model`` from its current (random) weights with CE + β·ρ̂ while pruning neurons on the cubic
    schedule; returns the trained masked model, the neurons to remove per group root, and diagnostics.
    ``hooks`` run after the pruning hook (observers: they see each epoch's masks already updated)."""
    if recipe.epochs < 1:
        raise UserError("the kfac method trains while it prunes: pass --epochs N with N >= 1")
    input_shape = train_data.info.input_shape
    graph = build(model, input_shape)
    groups = prunable_groups(graph, params.prune_first_conv, params.prune_residual)
    if not groups:
        raise UserError("this model has no prunable neurons under the current options (first conv and residual "
                        "streams excluded); set prune_first_conv=true or prune_residual=true")
    targets = neuron_targets(graph, groups, sparsity, params.budget, params.min_neurons)
    window = pruning_window(recipe.epochs, params.prune_start, params.prune_end)
    masks = NeuronMasks(model, graph, groups, input_shape)
    schedule = _PruneOnSchedule(masks, targets, window, params.importance)
    layers = [name for name in graph.layers if not curvature.is_grouped_conv(model.get_submodule(name))]
    trainer = FlatPruningTrainer(model, train_data, test_data, recipe, hooks=[schedule, *(hooks or [])],
                                 progress=progress, description=f"kfac β={params.beta}", device=device,
                                 params=params, layers=layers)
    result = trainer.fit()
    trainer.kfac.refresh_eigen()
    running = trainer.kfac.spectral_radius(params.reduce)
    trainer.kfac.close()
    x, y = diagnostic_batch(train_data, params.diagnostic_samples, trainer.device)
    final = final_curvature(model, x, y, layers, params.reduce, params.exact_eigenvalue)
    channels = sum(g.channels for g in groups)
    active = sum(masks.counts().values())
    info = {
        "final_spectral_radius": final["spectral_radius"],
        "final_spectral_radius_layers": final["spectral_radius_layers"],
        "final_spectral_radius_ema": running,
        "neuron_sparsity": 1.0 - active / channels,
        "neurons_before": channels, "neurons_after": active,
        "neuron_targets": targets, "pruning_window_epochs": list(window),
        "schedule": schedule.history, "spectral_radius_trace": trainer.radius_trace,
        "train_seconds": result.seconds, "penalty_seconds": trainer.penalty_seconds,
        "train_history": result.history,
    }
    if "exact_ggn_lambda_max" in final:
        info["final_exact_ggn_lambda_max"] = final["exact_ggn_lambda_max"]
    return model, masks.removed(), info


@register
class KFACPruning(PruningMethod):
    name = "kfac"
    kind = Kind.DURING_TRAINING
    paper = ("Ebrahimi & Klabjan, Neuron-based Pruning of Deep Neural Networks with Better Generalization using "
             "Kronecker Factored Curvature Approximation, arXiv 2111.08577 (IJCNN 2023); design reconstructed")
    summary = "train from scratch with CE + β·K-FAC spectral radius, prune neurons on a cubic schedule, remove them"
    Params = KFACParams
    needs_trained = False
    needs_data = True
    needs_training = True

    def prune(self, model: nn.Module, sparsity: Sparsity, data: PruneData) -> PruningResult:
        sparsity = self.check_sparsity(sparsity)
        train, recipe = self.training_inputs(data)
        model, remove, info = train_and_prune(model, train, data.test, recipe, sparsity, self.params,
                                              progress=data.progress, device=data.device)
        info.pop("train_history")
        return PruningResult(remove=remove, model=model, train_after=0, info=info)
