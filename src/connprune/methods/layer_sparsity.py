"""Layer sparsity (Hebiri & Lederer, "Layer Sparsity in Neural Networks", arXiv 2006.15604, 2020; journal version
with Taheri, J. Statist. Plann. Inference 2024): train with a penalty that makes whole ReLU layers inactive, collapse
them into their successors, refit the shallower network.

**Reconstructed.** The paper's full text was not available; the regulariser, the merge identity and the refit below
follow docs/methods/layer-sparsity.md (§2–§4), where they are marked "reconstructed: not confirmed from the paper".
Every reconstructed choice is an option here:

* Regulariser (docs/methods/layer-sparsity.md §2): ``Σ_{j∈J} λ_j ‖[neg(W^j), neg(b^j)]‖_F`` with ``neg(M) = min(M, 0)``,
  one group per penalisable hidden layer ``j`` (the norm is not squared, so a whole group reaches exactly zero, like the
  group lasso). ``λ_j = λ`` (``group_scale="none"``, default) or ``λ·√(group size)`` (``"sqrt"``); biases in the group
  by default (``penalise_bias``).
* Penalisable layers ``J``: hidden conv/linear layers whose input is a ReLU output and whose step to the next layer
  can be merged exactly (see :mod:`connprune.surgery.merge`); the output layer never. The first layer only when its
  input is non-negative: ``nonnegative_input=True`` (the data must then be ≥ 0 — checked; connprune normalises inputs
  with a mean, so this fails on its data sets) or ``input_scaling="nonneg"`` (reconstructed;
  docs/methods/layer-sparsity.md §3 step 1): ``W x + b = W (x − lo) + (b + W lo)`` with ``x − lo ≥ 0``, so the
  penalty acts on the first layer's weight and on the bias ``b + W lo`` it has for the shifted input; ``lo`` is the
  normalised value of a black pixel (every image is ≥ it), or the training data's per-feature minimum for data
  without a normalisation. The model keeps taking the normalised inputs; its merges are exact for inputs ≥ ``lo``.
* Layers followed by BatchNorm (docs/methods/layer-sparsity.md §3 "conv networks"): the penalty acts on the BN-folded
  weight and bias (running statistics) — :class:`Fold`. The running statistics move after the last proximal step,
  so such a layer counts as inactive when its folded negative part is at most ``bn_threshold`` of the folded norm,
  and is then projected to 0 (the loss change is reported).
* Solver (docs/methods/layer-sparsity.md §3 step 2): ``proximal`` (default) — after every optimiser step, the group
  soft-threshold ``v ← v·max(0, 1 − ηλ_j/‖v‖)`` on each layer's negative entries, η the current learning rate (for Adam
  η is the nominal learning rate, the usual approximation); ``subgradient`` — a plain (sub)gradient step on the penalty
  after each optimiser step, then groups with ``‖neg‖ ≤ τ·‖W‖_F`` (``threshold`` = τ) are projected to zero and the
  change of the training loss this causes is reported.
* λ path (docs/methods/layer-sparsity.md §3 step 8): with ``lambda_path`` (which then replaces ``lambda``) a grid of λ
  is trained in increasing order, warm-started (each λ continues from the previous weights; the optimiser and the
  recipe's learning-rate schedule restart at each λ), ``epochs_per_lambda`` each on 90% of the training data; the kept λ
  has the fewest active layers among those whose held-out accuracy (the other 10%) is within ``path_tolerance`` of the
  best, and the model returns to that λ's weights. As docs/methods/layer-sparsity.md §3 step 8 says, the held-out
  accuracy is the *refitted* one: each λ's network is merged and refitted ``refit_epochs`` epochs (on the 90%) before
  it is scored, which adds ``refit_epochs`` per λ to the path's cost.
* λ scale: the proximal step is ``η·λ`` with η the optimiser's learning rate, so useful λ depend on the recipe. With
  the SGD recipes here (lr 0.05, cosine) λ ≈ 1–3 removes layers of 128–256-wide MLPs within a few hundred steps (λ = 1
  on the default 256-128 MLP, 3 on a 6×128 one; see ``benchmarks/results/layer_sparsity.md``); the grid 1e-5..1e-1 of
  docs/methods/layer-sparsity.md §4 is far too weak at these training lengths. The default 1 removes the middle layer
  of the default MLP on digits at its default 30 epochs for 0.15 points (3 seeds; docs/methods/layer-sparsity.md §6);
  a run that removes nothing says how far it was. ``input_scaling`` stays off by default: on Fashion-MNIST (3 epochs)
  penalising the first layer too kept the middle one from going (λ = 0.5 and 1), which it does without.
* Refit (docs/methods/layer-sparsity.md §3 step 6): ``result.train_after`` epochs without the penalty on the merged
  network, from the merged weights (``refit_init="merged"``, default) or re-initialised (``"fresh"``).

``--sparsity auto`` only: the penalty decides the depth (``λ`` is the knob). ``result.info`` carries depth, active
layers, parameters and MACs before and after the merge, and the checks (pre-activation minimum of inactive layers on
training data, merged-vs-unmerged output difference).
"""

from __future__ import annotations

import copy
import math
import warnings
from collections.abc import Sequence
from typing import Any, Literal

import torch
from pydantic import ConfigDict, Field
from torch import nn

from connprune.data import ImageData, read
from connprune.data.pipeline import Batches
from connprune.data.sources import DataSource, batches
from connprune.errors import UserError
from connprune.measure.cost import cost
from connprune.methods import register
from connprune.methods.base import Kind, MethodParams, PruneData, PruningResult, Sparsity
from connprune.methods.regularisers import (PenaltyGroup, PenaltyHook, RegularisedMethod, negative_part_norm,
                                            penalty_step, prox_negative_part)
from connprune.models.registry import init_weights
from connprune.surgery import edits, merge
from connprune.train.evaluate import evaluate
from connprune.train.recipes import TrainConfig
from connprune.train.trainer import Trainer


def _norm_of(params: Sequence[torch.Tensor]) -> float:
    with torch.no_grad():
        return float(negative_part_norm(params))


ROUND_OFF = 1e-6
"""A folded layer counts as inactive when ‖neg([W', b'])‖ ≤ ROUND_OFF·‖[W', b']‖: mapping the proximal step back
from the folded to the stored parameters rounds in float32 (an unfolded layer's negative part is exactly 0)."""


class Fold:
    """The affine map from a layer's stored parameters to the weight and bias whose signs decide whether the ReLU
    after it is the identity (docs/methods/layer-sparsity.md §2 "inactive layer", §3 step 1)::

        W' = g ⊙ W,    b' = g ⊙ (b + W·lo) + t

    ``lo`` is the lower bound of the layer's input (first layer with ``input_scaling="nonneg"`` or
    ``nonnegative_input``: ``W x + b = W (x − lo) + (b + W lo)`` with ``x − lo ≥ 0``); ``g = γ/√(var + ε)`` and
    ``t = β − g·μ`` are the eval-mode BatchNorm after the layer (running statistics), or 1 and 0. The penalty and its
    proximal step act on ``[W', b']``; the step is mapped back by ``W = W'/g`` and by shifting the bias carrier (the
    BatchNorm's β if there is one, else the layer's bias) by the change of ``b'``.
    """

    def __init__(self, layer: nn.Module, batchnorm: nn.Module | None = None, floor: torch.Tensor | None = None
                 ) -> None:
        self.layer, self.batchnorm, self.floor = layer, batchnorm, floor
        self.identity = batchnorm is None and floor is None
        affine_bn = batchnorm is not None and batchnorm.affine
        self.carrier: nn.Parameter | None = batchnorm.bias if affine_bn else layer.bias

    def _scale_shift(self) -> tuple[torch.Tensor, torch.Tensor]:
        weight = self.layer.weight
        if self.batchnorm is None:
            return weight.new_ones(weight.shape[0]), weight.new_zeros(weight.shape[0])
        bn = self.batchnorm
        scale = (bn.running_var + bn.eps).rsqrt()
        if bn.affine:
            scale = scale * bn.weight.detach()
        return scale, (bn.bias if bn.affine else 0.0) - scale * bn.running_mean

    def folded(self) -> tuple[torch.Tensor, torch.Tensor]:
        """``(W', b')``, differentiable in the layer's weight and the bias carrier."""
        weight = self.layer.weight
        bias = self.layer.bias if self.layer.bias is not None else weight.new_zeros(weight.shape[0])
        if self.floor is not None:
            bias = bias + weight.flatten(1) @ self.floor
        scale, shift = self._scale_shift()
        return weight * scale.view(-1, *[1] * (weight.dim() - 1)), scale * bias + shift

    def group(self, bias: bool) -> list[torch.Tensor]:
        """The penalty's group: ``[W', b']`` (``[W']`` without the bias or when nothing carries it)."""
        weight, folded_bias = self.folded()
        return [weight, folded_bias] if bias and self.carrier is not None else [weight]

    def params(self, bias: bool) -> list[nn.Parameter]:
        """The stored parameters the group moves."""
        return [self.layer.weight] + ([self.carrier] if bias and self.carrier is not None else [])

    def value(self, bias: bool) -> torch.Tensor:
        return negative_part_norm(self.group(bias))

    @torch.no_grad()
    def prox(self, threshold: float, bias: bool) -> None:
        """The proximal step of ``threshold·‖neg(group)‖_F`` in the folded coordinates, mapped back."""
        if self.identity:
            prox_negative_part(self.params(bias), threshold)
            return
        group = [t.clone() for t in self.group(bias)]
        prox_negative_part(group, threshold)
        scale, _ = self._scale_shift()
        weight = self.layer.weight
        safe = scale.view(-1, *[1] * (weight.dim() - 1))
        weight.copy_(torch.where(safe != 0, group[0] / torch.where(safe != 0, safe, 1), weight))
        if len(group) == 2:
            change = group[1] - self.folded()[1]
            self.carrier.add_(change if self.batchnorm is not None and self.batchnorm.affine else change / scale)

    @torch.no_grad()
    def inactive(self) -> bool:
        """Whether ``[W', b'] ≥ 0`` up to :data:`ROUND_OFF` (exactly, for an unfolded layer)."""
        weight, bias = self.folded()
        negative, total = float(negative_part_norm([weight, bias])), float(torch.sqrt((weight ** 2).sum()
                                                                                       + (bias ** 2).sum()))
        return negative == 0.0 if self.identity else negative <= ROUND_OFF * total


# --------------------------------------------------------------------------------------------- the method


class LayerSparsityParams(MethodParams):
    model_config = ConfigDict(extra="forbid", populate_by_name=True, use_attribute_docstrings=True)

    lam: float = Field(1.0, ge=0, alias="lambda")
    """λ, the penalty's weight (``--param lambda=...``; ``lam`` in Python)."""
    lambda_path: list[float] | None = None
    """A grid of λ trained in increasing order, warm-started; the kept λ is chosen as in the module docstring."""
    epochs_per_lambda: int | None = Field(None, ge=1)
    """Epochs per λ of the path (default: the penalised epochs divided evenly over the grid, at least 1)."""
    path_tolerance: float = Field(0.01, ge=0)
    """Held-out accuracy a shallower λ may lose against the best one on the path."""
    solver: Literal["proximal", "subgradient"] = "proximal"
    """Take the penalty's proximal step (exact zeros) or a (sub)gradient step after each optimiser step."""
    threshold: float = Field(1e-6, ge=0)
    """τ for the subgradient solver: a group with ‖neg‖ ≤ τ·‖W‖_F counts as zero (and is projected to 0)."""
    group_scale: Literal["none", "sqrt"] = "none"
    """λ_j = λ, or λ·√(entries in the group)."""
    penalise_bias: bool = True
    """Put each layer's bias in its penalty group."""
    nonnegative_input: bool = False
    """Declare the network input ≥ 0 so the first layer is penalised too (checked on the training data)."""
    input_scaling: Literal["none", "nonneg"] = "none"
    """``nonneg``: penalise the first (Linear) layer as a map of the shifted input ``x − lo ≥ 0`` (``lo``: the
    normalisation's image of pixel 0, else the training data's per-feature minimum), so it can merge too."""
    bn_threshold: float = Field(0.05, ge=0)
    """A layer followed by BatchNorm counts as inactive when ‖neg([W', b'])‖ ≤ this·‖[W', b']‖ of its BN-folded
    weights at the end; its negatives are then projected to 0 (the running statistics move after the last proximal
    step, by more than the step can clear once the learning rate has decayed)."""
    refit_epochs: int | None = Field(None, ge=0)
    """Epochs of refitting after the merge (default: a third of the epoch budget); the rest train with the penalty."""
    refit_init: Literal["merged", "fresh"] = "merged"
    """Refit the merged network from its merged weights, or re-initialised."""


def penalisable_links(model: nn.Module, first_layer: bool) -> tuple[list[merge.Link], dict[str, str]]:
    """The hidden layers the penalty acts on, and why each other conv/linear layer is left out
    (docs/methods/layer-sparsity.md §3 step 1). ``first_layer``: the first layer's input is (made) non-negative."""
    links = merge.chain(model)
    chosen, skipped = [], {}
    for index, link in enumerate(links):
        if link.refusal is not None:
            skipped[link.layer] = f"not mergeable: {link.refusal}"
        elif link.successor is None:
            skipped[link.layer] = "output layer"
        elif link.relu is None:
            skipped[link.layer] = "no ReLU after it"
        elif not (merge.input_is_nonnegative(model, link.layer) or (first_layer and index == 0)):
            skipped[link.layer] = "input may be negative (first layer: pass input_scaling=nonneg)"
        else:
            chosen.append(link)
    return chosen, skipped


def layer_folds(model: nn.Module, links: Sequence[merge.Link], floor: torch.Tensor | None = None
                ) -> dict[str, Fold]:
    """Each penalisable layer's :class:`Fold` (its BatchNorm; ``floor`` = ``lo`` for the first layer of the model)."""
    first = merge.chain(model)[0].layer
    return {link.layer: Fold(model.get_submodule(link.layer),
                             model.get_submodule(link.batchnorm) if link.batchnorm else None,
                             floor if link.layer == first else None) for link in links}


def layer_groups(folds: dict[str, Fold], lam: float, scale: str, bias: bool) -> list[PenaltyGroup]:
    """One penalty group per penalisable layer, λ_j = λ or λ·√(group size) (docs/methods/layer-sparsity.md §2)."""
    groups = []
    for name, fold in folds.items():
        size = sum(t.numel() for t in fold.group(bias))
        groups.append(PenaltyGroup(name, fold.params(bias), lam * (math.sqrt(size) if scale == "sqrt" else 1.0)))
    return groups


def penalty_hooks(groups: Sequence[PenaltyGroup], folds: dict[str, Fold], solver: str, bias: bool
                  ) -> list[PenaltyHook]:
    """A trainer hook per group whose step acts on the folded weights (:meth:`Fold.prox` / :meth:`Fold.value`)."""
    return [PenaltyHook([group], solver, prox=lambda _, threshold, f=folds[group.name]: f.prox(threshold, bias),
                        value=lambda _, f=folds[group.name]: f.value(bias)) for group in groups]


def merge_runs(links: Sequence[merge.Link], inactive: set[str]) -> list[list[str]]:
    """Runs ``[j, …, m, m+1]``: consecutive inactive layers ``j..m`` and the successor they merge into
    (docs/methods/layer-sparsity.md §2)."""
    by_layer = {link.layer: link for link in links}
    runs, used = [], set()
    for link in links:
        if link.layer in inactive and link.layer not in used:
            run = [link.layer]
            successor = link.successor
            while successor in inactive:
                run.append(successor)
                successor = by_layer[successor].successor
            run.append(successor)
            used.update(run[:-1])
            runs.append(run)
    return runs


@torch.no_grad()
def _min_preactivation(model: nn.Module, layers: Sequence[str], x: torch.Tensor) -> tuple[float, float]:
    """The smallest pre-activation (BatchNorm output where there is one) of ``layers`` on ``x`` and the largest
    |pre-activation| (docs/methods/layer-sparsity.md §3 step 4)."""
    low: list[float] = []
    high: list[float] = []

    def record(module: nn.Module, inputs: Any, output: torch.Tensor) -> None:
        low.append(float(output.min()))
        high.append(float(output.abs().max()))

    handles = [model.get_submodule(n).register_forward_hook(record) for n in layers]
    try:
        model.eval()
        model(x)
    finally:
        for handle in handles:
            handle.remove()
    return (min(low), max(high)) if low else (0.0, 0.0)


PROBE_SAMPLES = 2048
"""Training samples the merge is checked on (and the subgradient solver's small groups projected on)."""


@torch.no_grad()
def _merge_error(model: nn.Module, merged: nn.Module, data_batches: Sequence[torch.Tensor],
                 input_shape: tuple[int, ...], floor: torch.Tensor | None, seed: int) -> float:
    """docs/methods/layer-sparsity.md §3 step 5: max |merged − original| / max |original| on data batches and on 256
    random inputs (``|N(0, 1)| + floor`` when the first layer was penalised: the inputs the merge is exact for);
    warns above 1e-5."""
    model.eval()
    random_inputs = torch.randn((256, *input_shape), generator=torch.Generator().manual_seed(seed))
    if floor is not None:
        random_inputs = random_inputs.abs() + floor.cpu().view(input_shape)
    device = next(model.parameters()).device
    error = 0.0
    for x in [*data_batches, random_inputs.to(device)]:
        reference = model(x)
        error = max(error, float((merged(x) - reference).abs().max() / reference.abs().max().clamp(min=1e-12)))
    if error > 1e-5:
        warnings.warn(f"layer-sparsity: merged and unmerged outputs differ by {error:.2e} (relative); float32 "
                      "round-off of a long product of wide layers", stacklevel=3)
    return error


def input_floor(model: nn.Module, source: DataSource) -> torch.Tensor:
    """``lo`` of ``input_scaling="nonneg"`` (docs/methods/layer-sparsity.md §3 step 1): per input feature of the
    first (Linear) layer, the normalised value of pixel 0, ``−mean_c/std_c`` (every image is ≥ it), for a data set
    with a normalisation; else the training data's minimum of each feature (exact merges then hold for inputs ≥ it)."""
    first = model.get_submodule(merge.chain(model)[0].layer)
    if not isinstance(first, nn.Linear):
        raise UserError(f"input_scaling=nonneg folds the input shift into a Linear first layer; "
                        f"{type(model).__name__}'s first layer is a {type(first).__name__}: use input_scaling=none")
    data = read(source, who="layer-sparsity", why="input_scaling=nonneg takes the inputs' minimum")
    if data.info.mean:
        mean, std = torch.tensor(data.info.mean), torch.tensor(data.info.std)
        floor = (-mean / std).view(-1, 1).expand(-1, data.images[0, 0].numel()).reshape(-1)
    else:
        floor = data.images.flatten(1).min(dim=0).values.float()
    if floor.numel() != first.in_features:
        raise UserError(f"input_scaling=nonneg: the inputs have {floor.numel()} features but the first layer takes "
                        f"{first.in_features}; use input_scaling=none")
    return floor.to(first.weight.device)


def _reinitialise(model: nn.Module, seed: int) -> None:
    torch.manual_seed(seed)
    for module in model.modules():
        if isinstance(module, merge.WEIGHT_LAYERS):
            module.reset_parameters()
    init_weights(model)


@register
class LayerSparsity(RegularisedMethod):
    name = "layer-sparsity"
    kind = Kind.LAYER
    paper = "Hebiri & Lederer, Layer Sparsity in Neural Networks, arXiv 2006.15604 (2020); reconstructed"
    summary = "train with a grouped penalty on each layer's negative part, merge inactive ReLU layers, refit"
    Params = LayerSparsityParams
    supports_auto = True

    def check_sparsity(self, sparsity: Sparsity) -> Sparsity:
        if sparsity != "auto":
            raise UserError("layer-sparsity chooses its own depth: pass --sparsity auto and set the penalty with "
                            "--param lambda=VALUE")
        return sparsity

    def start(self, model: nn.Module, sparsity: Sparsity, data: PruneData | None = None, **schedule: Any) -> None:
        p = self.params
        if p.nonnegative_input and p.input_scaling == "nonneg":
            raise UserError("nonnegative_input=true and input_scaling=nonneg both make the first layer penalisable; "
                            "pass one of them")
        if p.nonnegative_input and data is not None and data.train is not None:
            low = float(next(iter(batches(data.train, 4096, device=data.device)))[0].min())
            if low < 0:
                raise UserError(f"nonnegative_input=true but the normalised training inputs reach {low:.3f} < 0 "
                                "(the data set is mean-normalised); pass input_scaling=nonneg instead")
        self.floor = None
        if p.input_scaling == "nonneg":
            if data is None or data.train is None:
                raise UserError("input_scaling=nonneg reads the training data's range: pass PruneData(train=...)")
            self.floor = input_floor(model, data.train)
        self.links, self.skipped = penalisable_links(model, p.nonnegative_input or self.floor is not None)
        if not self.links:
            raise UserError(f"layer-sparsity found no layer to penalise in {type(model).__name__} "
                            f"({'; '.join(f'{k}: {v}' for k, v in self.skipped.items())}); use a deeper ReLU MLP "
                            "such as --model mlp with several widths")
        self.folds = layer_folds(model, self.links, self.floor)
        self.lam, self.lr_sum = p.lam, 0.0
        super().start(model, sparsity, data, **schedule)

    def penalty_groups(self, model: nn.Module) -> list[PenaltyGroup]:
        groups = layer_groups(self.folds, self.lam, self.params.group_scale, self.params.penalise_bias)
        self.hooks = penalty_hooks(groups, self.folds, self.params.solver, self.params.penalise_bias)
        return groups

    def on_step(self, step: int, model: nn.Module, optimizer: torch.optim.Optimizer) -> None:
        lr = float(optimizer.param_groups[0]["lr"])
        self.lr_sum += lr
        for hook in self.hooks:
            penalty_step(hook.groups, lr, hook.solver, hook.prox, hook.value)

    def _why_none(self, lam_j: dict[str, float]) -> str | None:
        """Why no layer became inactive (docs/methods/layer-sparsity.md §3 step 7): each layer's remaining negative
        part against the total proximal threshold ``λ_j·Σ_t η_t`` the training applied to it."""
        if not self.lr_sum or not self.lam:
            return None
        with torch.no_grad():
            left = {name: float(fold.value(True)) for name, fold in self.folds.items()}
        name = min(left, key=left.get)
        budget = lam_j[name] * self.lr_sum
        return (f"no layer became inactive: the closest, {name}, keeps a negative part of norm {left[name]:.3g} after "
                f"proximal steps of total threshold λ·Σlr = {budget:.3g}; pass a larger --param lambda (at least about "
                f"{self.lam * (1 + left[name] / budget):.2g}) or more --epochs")

    def description(self) -> str:
        return f"layer-sparsity λ={self.params.lam:g}"

    def _prune(self, model: nn.Module, sparsity: Sparsity, data: PruneData) -> PruningResult:
        self.path: list[dict[str, Any]] | None = None
        if not self.params.lambda_path:
            result = super()._prune(model, sparsity, data)
        else:
            assert data.recipe is not None
            penalised, refit = self.training_epochs(data.recipe.epochs)
            self.lam, self.path = self._path(model, data, data.recipe.model_copy(update={"epochs": penalised}), refit)
            result = self.finalize(model)
            result.model, result.train_after = model, refit
            result.info["refit_epochs"] = refit
        result.info["penalised_epochs"] = data.recipe.epochs - result.train_after
        return result

    def _merged(self, model: nn.Module) -> tuple[nn.Module, list[str], list[list[str]]]:
        """A merged copy of ``model`` (docs/methods/layer-sparsity.md §3 steps 3–5), its inactive layers and runs.
        Runs of unfolded layers are merged with :func:`merge.merge_layers`' own sign check; folded ones (BatchNorm,
        input floor) after :meth:`Fold.inactive`'s round-off-tolerant one."""
        inactive = [name for name, fold in self.folds.items() if fold.inactive()]
        runs = merge_runs(self.links, set(inactive))
        merged = copy.deepcopy(model).eval()
        for run in runs:
            exact = all(self.folds[name].identity for name in run[:-1])
            merge.merge_layers(merged, run, require_inactive=exact, nonnegative_input=self.params.nonnegative_input)
        return merged, inactive, runs

    def finalize(self, model: nn.Module) -> PruningResult:
        """Merge the inactive layers (docs/methods/layer-sparsity.md §3 steps 3–6) and report what changed."""
        p = self.params
        assert self.data.train is not None
        depth_before = merge.depth(model)
        example = self.data.example_inputs
        assert example is not None
        cost_before = cost(model, example)
        probe = read(self.data.train, samples=PROBE_SAMPLES, who=self.name, why="the merge check's probe")
        probe = probe.subset(torch.arange(min(len(probe), PROBE_SAMPLES)))
        info: dict[str, Any] = {"lambda_path": self.path} if getattr(self, "path", None) else {}
        info.update(self._project_small_groups(model, probe, self.data.device))
        merged, inactive, runs = self._merged(model)
        by_layer = {link.layer: link for link in self.links}
        x_probe = next(iter(Batches(probe, len(probe), device=self.data.device)))[0]
        min_pre, max_pre = _min_preactivation(model, [by_layer[n].batchnorm or n for n in inactive], x_probe)
        if min_pre < -10 * ROUND_OFF * max(max_pre, 1.0):
            raise RuntimeError(f"an inactive layer has a negative pre-activation ({min_pre}); this is a bug")
        domain = torch.zeros(x_probe[0].numel()) if p.nonnegative_input else self.floor   # inputs ≥ domain
        error = _merge_error(model, merged, [x_probe], tuple(x_probe.shape[1:]), domain, p.seed)
        cost_after = cost(merged, example)
        lam_j = {g.name: g.weight for g in layer_groups(self.folds, self.lam, p.group_scale, p.penalise_bias)}
        with torch.no_grad():
            penalty = sum(lam_j[name] * float(fold.value(p.penalise_bias)) for name, fold in self.folds.items())
        why = None if inactive else self._why_none(lam_j)
        if why:
            info["no_layer_removed"] = why
            warnings.warn(f"layer-sparsity: {why}", stacklevel=2)
        info.update({
            "lambda": self.lam, "solver": p.solver, "input_scaling": p.input_scaling,
            "penalised_layers": list(self.folds), "not_penalised": self.skipped, "inactive_layers": inactive,
            "active_layers": len(self.folds) - len(inactive), "merge_runs": runs,
            "depth_before": depth_before, "depth_after": merge.depth(merged),
            "params_before_merge": cost_before.params, "params_after_merge": cost_after.params,
            "macs_before_merge": cost_before.macs, "macs_after_merge": cost_after.macs,
            "merge_relative_error": error, "min_inactive_preactivation": min_pre if inactive else None,
            "penalty_final": penalty, "refit_init": p.refit_init,
        })
        if p.refit_init == "fresh":
            # Merge here so the fresh initialisation is of the merged shapes; edits.perform records the merges on
            # the model, so checkpoints rebuild them as usual.
            for run in runs:
                edits.perform(model, {"op": "merge", "layers": run})
            _reinitialise(model, p.seed)
            runs = []
        return PruningResult(merge=runs, info=info)

    def _path(self, model: nn.Module, data: PruneData, recipe: TrainConfig, refit: int
              ) -> tuple[float, list[dict[str, Any]]]:
        """docs/methods/layer-sparsity.md §3 step 8: the warm-started λ path on 90% of the training data, each λ's
        merged network refitted ``refit`` epochs on it and scored on the other 10%; returns the kept λ and the path
        (the model is left at the kept λ's penalised weights)."""
        p = self.params
        grid = sorted(p.lambda_path or [])
        if any(lam < 0 for lam in grid):
            raise UserError(f"lambda_path values must be >= 0, got {grid}")
        assert data.train is not None
        self.start(model, "auto", data)
        train = read(data.train, who=self.name, why="the λ path holds out a tenth of it")   # an iterable: all of it
        order = torch.randperm(len(train), generator=torch.Generator().manual_seed(p.seed))
        held = max(1, len(order) // 10)
        fit_data, validation = train.subset(order[held:]), train.subset(order[:held])
        epochs = p.epochs_per_lambda or max(1, recipe.epochs // len(grid))
        path, states = [], []
        for lam in grid:
            groups = layer_groups(self.folds, lam, p.group_scale, p.penalise_bias)
            Trainer(model, fit_data, None, recipe.model_copy(update={"epochs": epochs}),
                    hooks=penalty_hooks(groups, self.folds, p.solver, p.penalise_bias), progress=data.progress,
                    device=data.device, description=f"layer-sparsity path λ={lam:g}").fit()
            self._project_small_groups(model, fit_data.subset(torch.arange(min(len(fit_data), PROBE_SAMPLES))),
                                       data.device)
            merged, inactive, _ = self._merged(model)
            penalised = evaluate(model, validation, device=data.device)
            if refit:
                Trainer(merged, fit_data, None, recipe.model_copy(update={"epochs": refit}), progress=data.progress,
                        device=data.device, description=f"layer-sparsity path refit λ={lam:g}").fit()
            metrics = evaluate(merged, validation, device=data.device)
            path.append({"lambda": lam, "active_layers": len(self.folds) - len(inactive),
                         "depth": merge.depth(merged), "penalised_accuracy": penalised["accuracy"],
                         "validation_accuracy": metrics["accuracy"], "validation_loss": metrics["loss"]})
            states.append(copy.deepcopy(model.state_dict()))
        best = max(point["validation_accuracy"] for point in path)
        eligible = [i for i, point in enumerate(path) if point["validation_accuracy"] >= best - p.path_tolerance]
        chosen = min(eligible, key=lambda i: (path[i]["active_layers"], -path[i]["validation_accuracy"]))
        for i, point in enumerate(path):
            point["chosen"] = i == chosen
        model.load_state_dict(states[chosen])
        return grid[chosen], path

    def _project_small_groups(self, model: nn.Module, probe: ImageData, device: torch.device) -> dict[str, Any]:
        """docs/methods/layer-sparsity.md §3 step 3: groups with ‖neg‖ ≤ τ·‖[W', b']‖_F are set to 0 (in the folded
        coordinates), τ = ``threshold`` for the subgradient solver and ``bn_threshold`` for BN-folded layers; reports
        the layers and the change of the loss on ``probe``."""
        p = self.params
        tolerance = {name: max(p.threshold if p.solver == "subgradient" else 0.0,
                               p.bn_threshold if fold.batchnorm is not None else 0.0)
                     for name, fold in self.folds.items()}
        if not any(tolerance.values()):
            return {}
        before = evaluate(model, probe, device=device)["loss"]
        projected = []
        with torch.no_grad():
            for name, fold in self.folds.items():
                group = fold.group(True)
                size = float(torch.sqrt(sum((q ** 2).sum() for q in group)))
                if 0 < _norm_of(group) <= tolerance[name] * size:
                    fold.prox(math.inf, True)
                    projected.append(name)
        after = evaluate(model, probe, device=device)["loss"]
        return {"projected_layers": projected, "projection_loss_change": after - before}


__all__ = ["Fold", "LayerSparsity", "LayerSparsityParams", "input_floor", "layer_folds", "layer_groups", "merge_runs",
           "penalisable_links", "penalty_hooks"]
