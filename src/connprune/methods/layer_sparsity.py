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
  can be merged exactly (see :mod:`connprune.surgery.merge`); the first layer only with ``nonnegative_input=True``
  (the data must then be ≥ 0 — connprune normalises inputs with a mean, so this is checked on the data); the output
  layer never. Layers followed by BatchNorm are not penalised here (the penalty would have to act on BN-folded
  weights whose scale moves with the running statistics); the merge itself folds BN.
* Solver (docs/methods/layer-sparsity.md §3 step 2): ``proximal`` (default) — after every optimiser step, the group
  soft-threshold ``v ← v·max(0, 1 − ηλ_j/‖v‖)`` on each layer's negative entries, η the current learning rate (for Adam
  η is the nominal learning rate, the usual approximation); ``subgradient`` — a plain (sub)gradient step on the penalty
  after each optimiser step, then groups with ``‖neg‖ ≤ τ·‖W‖_F`` (``threshold`` = τ) are projected to zero and the
  change of the training loss this causes is reported.
* λ path (docs/methods/layer-sparsity.md §3 step 8): with ``lambda_path`` (which then replaces ``lambda``) a grid of λ
  is trained in increasing order, warm-started (each λ continues from the previous weights; the optimiser and the
  recipe's learning-rate schedule restart at each λ), ``epochs_per_lambda`` each on 90% of the training data; the kept λ
  has the fewest active layers among those whose held-out accuracy (the other 10%) is within ``path_tolerance`` of the
  best, and the model returns to that λ's weights. docs/methods/layer-sparsity.md §3 step 8 picks by the *refitted*
  validation loss; refitting every λ would multiply the cost, so this picks on the penalised (= merged) model.
* λ scale: the proximal step is ``η·λ`` with η the optimiser's learning rate, so useful λ depend on the recipe. With the
  SGD recipes here (lr 0.05, cosine) λ ≈ 0.3–3 removes layers of 128–256-wide MLPs within a few hundred steps (see
  ``benchmarks/results/layer_sparsity.md``); the grid 1e-5..1e-1 of docs/methods/layer-sparsity.md §4 is far too weak at
  these training lengths. The default 0.5 removes the middle layer of the default MLP on Fashion-MNIST in 2 epochs.
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
from connprune.data.sources import batches
from connprune.errors import UserError
from connprune.measure.cost import cost
from connprune.methods import register
from connprune.methods.base import Kind, MethodParams, PruneData, PruningResult, Sparsity
from connprune.methods.regularisers import (PenaltyGroup, PenaltyHook, RegularisedMethod, negative_part_norm,
                                            penalty_value)
from connprune.models.registry import init_weights
from connprune.surgery import edits, merge
from connprune.train.evaluate import evaluate
from connprune.train.recipes import TrainConfig
from connprune.train.trainer import Trainer


def _norm_of(params: Sequence[torch.Tensor]) -> float:
    with torch.no_grad():
        return float(negative_part_norm(params))


# --------------------------------------------------------------------------------------------- the method


class LayerSparsityParams(MethodParams):
    model_config = ConfigDict(extra="forbid", populate_by_name=True, use_attribute_docstrings=True)

    lam: float = Field(0.5, ge=0, alias="lambda")
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
    refit_epochs: int | None = Field(None, ge=0)
    """Epochs of refitting after the merge (default: a third of the epoch budget); the rest train with the penalty."""
    refit_init: Literal["merged", "fresh"] = "merged"
    """Refit the merged network from its merged weights, or re-initialised."""


def penalisable_links(model: nn.Module, nonnegative_input: bool) -> tuple[list[merge.Link], dict[str, str]]:
    """The hidden layers the penalty acts on, and why each other conv/linear layer is left out
    (docs/methods/layer-sparsity.md §3 step 1)."""
    links = merge.chain(model)
    chosen, skipped = [], {}
    for index, link in enumerate(links):
        if link.refusal is not None:
            skipped[link.layer] = f"not mergeable: {link.refusal}"
        elif link.successor is None:
            skipped[link.layer] = "output layer"
        elif link.relu is None:
            skipped[link.layer] = "no ReLU after it"
        elif link.batchnorm is not None:
            skipped[link.layer] = "BatchNorm after it (penalty on BN-folded weights not implemented)"
        elif not (merge.input_is_nonnegative(model, link.layer) or (nonnegative_input and index == 0)):
            skipped[link.layer] = "input may be negative (first layer: pass nonnegative_input=true if inputs >= 0)"
        else:
            chosen.append(link)
    return chosen, skipped


def layer_groups(model: nn.Module, links: Sequence[merge.Link], lam: float, scale: str, bias: bool
                 ) -> list[PenaltyGroup]:
    groups = []
    for link in links:
        layer = model.get_submodule(link.layer)
        params = [layer.weight] + ([layer.bias] if bias and layer.bias is not None else [])
        size = sum(p.numel() for p in params)
        groups.append(PenaltyGroup(link.layer, params, lam * (math.sqrt(size) if scale == "sqrt" else 1.0)))
    return groups


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
def _min_preactivation(model: nn.Module, layers: Sequence[str], x: torch.Tensor) -> float:
    """The smallest pre-activation of ``layers`` on ``x`` (≥ 0 for inactive layers, docs/methods/layer-sparsity.md §3
    step 4)."""
    found: list[float] = []
    handles = [model.get_submodule(n).register_forward_hook(lambda m, i, o: found.append(float(o.min())))
               for n in layers]
    try:
        model.eval()
        model(x)
    finally:
        for handle in handles:
            handle.remove()
    return min(found) if found else 0.0


PROBE_SAMPLES = 2048
"""Training samples the merge is checked on (and the subgradient solver's small groups projected on)."""


@torch.no_grad()
def _merge_error(model: nn.Module, merged: nn.Module, data_batches: Sequence[torch.Tensor],
                 input_shape: tuple[int, ...], nonnegative_input: bool, seed: int) -> float:
    """docs/methods/layer-sparsity.md §3 step 5: max |merged − original| / max |original| on data batches and on 256
    random inputs (made non-negative when the first layer was penalised); warns above 1e-5."""
    model.eval()
    random_inputs = torch.randn((256, *input_shape), generator=torch.Generator().manual_seed(seed))
    if nonnegative_input:
        random_inputs = random_inputs.abs()
    device = next(model.parameters()).device
    error = 0.0
    for x in [*data_batches, random_inputs.to(device)]:
        reference = model(x)
        error = max(error, float((merged(x) - reference).abs().max() / reference.abs().max().clamp(min=1e-12)))
    if error > 1e-5:
        warnings.warn(f"layer-sparsity: merged and unmerged outputs differ by {error:.2e} (relative); float32 "
                      "round-off of a long product of wide layers", stacklevel=3)
    return error


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
        if p.nonnegative_input and data is not None and data.train is not None:
            low = float(next(iter(batches(data.train, 4096, device=data.device)))[0].min())
            if low < 0:
                raise UserError(f"nonnegative_input=true but the normalised training inputs reach {low:.3f} < 0 "
                                "(the data set is mean-normalised); leave nonnegative_input false")
        self.links, self.skipped = penalisable_links(model, p.nonnegative_input)
        if not self.links:
            raise UserError(f"layer-sparsity found no layer to penalise in {type(model).__name__} "
                            f"({'; '.join(f'{k}: {v}' for k, v in self.skipped.items())}); use a deeper ReLU MLP "
                            "such as --model mlp with several widths")
        self.lam = p.lam
        super().start(model, sparsity, data, **schedule)

    def penalty_groups(self, model: nn.Module) -> list[PenaltyGroup]:
        return layer_groups(model, self.links, self.lam, self.params.group_scale, self.params.penalise_bias)

    def description(self) -> str:
        return f"layer-sparsity λ={self.params.lam:g}"

    def _prune(self, model: nn.Module, sparsity: Sparsity, data: PruneData) -> PruningResult:
        self.path: list[dict[str, Any]] | None = None
        if not self.params.lambda_path:
            result = super()._prune(model, sparsity, data)
        else:
            assert data.recipe is not None
            penalised, refit = self.training_epochs(data.recipe.epochs)
            self.lam, self.path = self._path(model, data, data.recipe.model_copy(update={"epochs": penalised}))
            result = self.finalize(model)
            result.model, result.train_after = model, refit
            result.info["refit_epochs"] = refit
        result.info["penalised_epochs"] = data.recipe.epochs - result.train_after
        return result

    def finalize(self, model: nn.Module) -> PruningResult:
        """Merge the inactive layers (docs/methods/layer-sparsity.md §3 steps 3–6) and report what changed."""
        p = self.params
        assert self.data.train is not None
        depth_before = merge.depth(model)
        example = self.data.example_inputs
        assert example is not None
        cost_before = cost(model, example)
        groups = layer_groups(model, self.links, self.lam, p.group_scale, p.penalise_bias)
        probe = read(self.data.train, samples=PROBE_SAMPLES, who=self.name, why="the merge check's probe")
        probe = probe.subset(torch.arange(min(len(probe), PROBE_SAMPLES)))
        info: dict[str, Any] = {"lambda_path": self.path} if getattr(self, "path", None) else {}
        if p.solver == "subgradient":
            info.update(self._project_small_groups(model, groups, probe, self.data.device))
        inactive = {g.name for g in groups if _norm_of(g.params) == 0.0}
        runs = merge_runs(self.links, inactive)
        x_probe = next(iter(Batches(probe, len(probe), device=self.data.device)))[0]
        min_pre = _min_preactivation(model, sorted(inactive), x_probe)
        if min_pre < 0:
            raise RuntimeError(f"an inactive layer has a negative pre-activation ({min_pre}); this is a bug")
        merged = copy.deepcopy(model).eval()
        for run in runs:
            merge.merge_layers(merged, run, require_inactive=True, nonnegative_input=p.nonnegative_input)
        error = _merge_error(model, merged, [x_probe], tuple(x_probe.shape[1:]), p.nonnegative_input, p.seed)
        cost_after = cost(merged, example)
        info.update({
            "lambda": self.lam, "solver": p.solver, "penalised_layers": [g.name for g in groups],
            "not_penalised": self.skipped, "inactive_layers": sorted(inactive, key=[g.name for g in groups].index),
            "active_layers": len(groups) - len(inactive), "merge_runs": runs,
            "depth_before": depth_before, "depth_after": merge.depth(merged),
            "params_before_merge": cost_before.params, "params_after_merge": cost_after.params,
            "macs_before_merge": cost_before.macs, "macs_after_merge": cost_after.macs,
            "merge_relative_error": error, "min_inactive_preactivation": min_pre if inactive else None,
            "penalty_final": float(penalty_value(groups).detach()), "refit_init": p.refit_init,
        })
        if p.refit_init == "fresh":
            # Merge here so the fresh initialisation is of the merged shapes; edits.perform records the merges on
            # the model, so checkpoints rebuild them as usual.
            for run in runs:
                edits.perform(model, {"op": "merge", "layers": run})
            _reinitialise(model, p.seed)
            runs = []
        return PruningResult(merge=runs, info=info)

    def _path(self, model: nn.Module, data: PruneData, recipe: TrainConfig) -> tuple[float, list[dict[str, Any]]]:
        """docs/methods/layer-sparsity.md §3 step 8: the warm-started λ path on 90% of the training data; returns
        the kept λ and the path (the model is left at the kept λ's weights)."""
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
            groups = layer_groups(model, self.links, lam, p.group_scale, p.penalise_bias)
            Trainer(model, fit_data, None, recipe.model_copy(update={"epochs": epochs}),
                    hooks=[PenaltyHook(groups, p.solver)], progress=data.progress,
                    description=f"layer-sparsity path λ={lam:g}").fit()
            active = sum(_norm_of(g.params) > 0 for g in groups)
            metrics = evaluate(model, validation, device=data.device)
            path.append({"lambda": lam, "active_layers": int(active), "depth": merge.depth(model) - len(groups)
                         + int(active), "validation_accuracy": metrics["accuracy"],
                         "validation_loss": metrics["loss"]})
            states.append(copy.deepcopy(model.state_dict()))
        best = max(point["validation_accuracy"] for point in path)
        eligible = [i for i, point in enumerate(path) if point["validation_accuracy"] >= best - p.path_tolerance]
        chosen = min(eligible, key=lambda i: (path[i]["active_layers"], -path[i]["validation_accuracy"]))
        for i, point in enumerate(path):
            point["chosen"] = i == chosen
        model.load_state_dict(states[chosen])
        return grid[chosen], path

    def _project_small_groups(self, model: nn.Module, groups: Sequence[PenaltyGroup], probe: ImageData,
                              device: torch.device) -> dict[str, Any]:
        """Subgradient solver, docs/methods/layer-sparsity.md §3 step 3: groups with ‖neg‖ ≤ τ·‖W‖_F are set to 0;
        reports the loss change."""
        before = evaluate(model, probe, device=device)["loss"]
        projected = []
        with torch.no_grad():
            for group in groups:
                size = float(torch.sqrt(sum((q ** 2).sum() for q in group.params)))
                if 0 < _norm_of(group.params) <= self.params.threshold * size:
                    for q in group.params:
                        q.clamp_(min=0)
                    projected.append(group.name)
        after = evaluate(model, probe, device=device)["loss"]
        return {"projected_layers": projected, "projection_loss_change": after - before}


__all__ = ["LayerSparsity", "LayerSparsityParams", "layer_groups", "merge_runs", "penalisable_links"]
