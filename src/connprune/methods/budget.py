"""Equal budgets: ``sparsity`` counted after the surgery a result implies (docs/methods/index.md, "What sparsity
means").

``--sparsity S`` is the fraction of prunable weights that are zero or removed *in the model the user gets*: the
physically shrunk one. Shrinking removes whole units that the masks leave dead (:mod:`connprune.surgery.shrink`),
and with them weights the masks kept; counted after surgery, a selection that keeps exactly ``(1 − S)·N`` weights
can end sparser than asked (magnitude 0.9 on an MLP ended at 0.934 before this module).

So every mask-producing method selects *within the budget counted after surgery*: :func:`fit_to_surgery` runs the
method's own selection, asks the surgery plan which kept weights it would remove anyway (:func:`lost_entries`),
forces those to count as pruned (they are excluded from what the method keeps, and they use up pruning budget) and
selects again, to a fixed point where no kept weight is lost. Then the kept weights are exactly the ones the shrunk
model keeps, and a method that keeps ``K`` entries ends at ``1 − K/N`` after surgery, to within its selection unit.
:func:`count` reports both counts (before and after surgery) for ``metrics.json``.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass

import torch
from torch import nn

from connprune.graph import ExampleInputs
from connprune.measure.sparsity import prunable_weights
from connprune.plan import PruningResult
from connprune.surgery import removal_masks
from connprune.surgery.masks import combine
from connprune.surgery.shrink import plan_removal

Masks = dict[str, torch.Tensor]
MAX_ROUNDS = 10
"""Fixed-point rounds of :func:`fit_to_surgery` before it repairs what is left (two or three usually settle it)."""


def _kept(weight: torch.Tensor, mask: torch.Tensor | None) -> torch.Tensor:
    kept = weight.detach().cpu() != 0
    return kept & mask.cpu().to(torch.bool) if mask is not None else kept


def _surgery_view(model: nn.Module, masks: Mapping[str, torch.Tensor], example_inputs: ExampleInputs
                  ) -> tuple[Masks, Masks, int]:
    """(surviving entries, kept entries the shrink loses, how many kept entries survive) per prunable weight, from
    the surgery plan of ``masks``."""
    surviving = plan_removal(model, masks, example_inputs).surviving()
    lost, survivors = {}, 0
    for name, weight in prunable_weights(model).items():
        kept = _kept(weight, masks.get(name))
        if name in surviving:
            entries = kept & ~surviving[name]
            survivors += int((kept & surviving[name]).sum())
            if bool(entries.any()):
                lost[name] = entries
        else:
            survivors += int(kept.sum())
    return surviving, lost, survivors


def _trim(masks: Masks, surviving: Masks, scores: Mapping[str, torch.Tensor], excess: int) -> Masks:
    """Unkeep the ``excess`` lowest-scoring kept weights whose removal kills no unit: each one's output unit (row)
    and input column keep at least one other live weight in its layer. Entries with a non-finite score are never
    taken (a method's structured part)."""
    trimmed = {name: mask.clone() for name, mask in masks.items()}
    candidates = []
    for name, mask in masks.items():
        live = mask.cpu() & surviving.get(name, torch.ones(mask.shape, dtype=torch.bool))
        score = scores[name].detach().cpu().float()
        where = torch.nonzero(live.reshape(-1) & torch.isfinite(score.reshape(-1))).flatten()
        candidates += [(float(score.reshape(-1)[k]), name, int(k)) for k in where.tolist()]
    candidates.sort()
    rows = {n: (m.cpu() & surviving.get(n, True)).reshape(m.shape[0], -1).sum(dim=1) for n, m in masks.items()}
    cols = {n: (m.cpu() & surviving.get(n, True)).transpose(0, 1).reshape(m.shape[1], -1).sum(dim=1)
            for n, m in masks.items()}
    for _, name, flat in candidates:
        if excess <= 0:
            break
        shape = masks[name].shape
        row, col = flat // (shape.numel() // shape[0]), (flat // (shape.numel() // shape[0] // shape[1])) % shape[1]
        if rows[name][row] > 1 and cols[name][col] > 1:
            trimmed[name].view(-1)[flat] = False
            rows[name][row] -= 1
            cols[name][col] -= 1
            excess -= 1
    return trimmed


def fit_to_surgery(select: Callable[[float, Masks], Masks], sparsity: float, model: nn.Module,
                   example_inputs: ExampleInputs, *, scores: Mapping[str, torch.Tensor] | None = None,
                   rounds: int = MAX_ROUNDS) -> tuple[Masks, int]:
    """Masks of ``select(sparsity, forced)`` (the method's selection, which must prune every ``forced`` entry and
    count it toward its budget) whose kept weights all survive the surgery; returns them and the rounds taken.

    1. Exclusion: the kept weights the surgery would lose are forced and the method selects again, until none are
       lost (usually one to three rounds: units cut off at this budget stay cut off, and their weights go to the
       next-ranked ones).
    2. If that does not settle in ``rounds`` rounds (the method's ranking keeps cutting layers off, e.g. global
       magnitude starving the classifier), the method selects at the largest lower sparsity whose survivors reach
       its kept count (bisection), and with ``scores`` the surplus goes again, lowest-scoring first, taking only
       weights whose unit and input keep another live weight (:func:`_trim`), so the shrunk model keeps exactly
       the method's kept count.
    Weights that are zero already (an earlier pruning's, see ``PruneData.masks``) are forced from the start: they
    count toward the budget instead of being pruned again on top of it.
    Whatever is left is reported by :meth:`connprune.methods.base.PruningMethod.prune`'s budget check.
    """
    forced: Masks = {name: w.detach() == 0 for name, w in prunable_weights(model).items() if not bool(w.all())}
    masks = select(sparsity, forced)
    wanted = sum(int(_kept(w, masks.get(n)).sum()) for n, w in prunable_weights(model).items())
    for taken in range(1, rounds + 1):
        surviving, lost, _ = _surgery_view(model, masks, example_inputs)
        if not lost:
            return masks, taken
        for name, entries in lost.items():
            forced[name] = forced[name] | entries if name in forced else entries
        masks = select(sparsity, forced)
    low, high = 0.0, sparsity  # select(low) keeps enough survivors, select(high) too few
    for _ in range(16):
        middle = (low + high) / 2
        if _surgery_view(model, select(middle, {}), example_inputs)[2] >= wanted:
            low = middle
        else:
            high = middle
    masks = select(low, {})
    surviving, lost, survivors = _surgery_view(model, masks, example_inputs)
    masks = {name: mask & ~lost[name].to(mask.device) if name in lost else mask for name, mask in masks.items()}
    if scores is not None and survivors > wanted:
        masks = _trim(masks, surviving, scores, survivors - wanted)
    return masks, rounds + 16


def per_layer_scale(scores: Mapping[str, torch.Tensor], scope: str) -> dict[str, torch.Tensor]:
    """Scores as a ``scope="layer"`` selection compares them: each layer's divided by its mean (so that trimming
    takes from every layer alike); unchanged for ``global``."""
    if scope != "layer":
        return dict(scores)
    return {name: s / s.detach().float().abs().mean().clamp(min=1e-30) for name, s in scores.items()}


def excluded_scores(scores: Mapping[str, torch.Tensor], forced: Masks) -> dict[str, torch.Tensor]:
    """``scores`` with the forced entries at −∞: a top-k selection prunes them first, within its count."""
    return {name: s.masked_fill(forced[name].to(s.device), float("-inf")) if name in forced else s
            for name, s in scores.items()}


@dataclass(frozen=True)
class BudgetCount:
    """Prunable weights of a result before and after the surgery it implies."""

    reference: int
    """Prunable weights of the model before pruning (the denominator of every sparsity)."""
    nonzero_masked: int
    """Non-zero prunable weights of the masked model (removals as masks; skip branches included)."""
    nonzero_after: int
    """Non-zero prunable weights of the shrunk model (skip branches included)."""

    @property
    def masked_sparsity(self) -> float:
        return 1.0 - self.nonzero_masked / max(self.reference, 1)

    @property
    def sparsity(self) -> float:
        return 1.0 - self.nonzero_after / max(self.reference, 1)


def count(model: nn.Module, result: PruningResult, example_inputs: ExampleInputs, *, shrink: bool = True,
          reference: int | None = None) -> BudgetCount:
    """:class:`BudgetCount` of ``result`` applied to ``model`` (nothing is modified). Skip branches a result adds
    count with their planned non-zero weights; a shrink is planned only where :func:`connprune.surgery.apply` does
    one (no skips)."""
    model = result.model if result.model is not None else model
    weights = prunable_weights(model)
    reference = sum(w.numel() for w in weights.values()) if reference is None else reference
    skip_weights = sum(int(spec.get("connections", 0)) * (int(spec.get("kernel_size") or 1) ** 2
                                                         if spec.get("output_size") else 1)
                       for spec in result.skips if spec.get("kind") == "n2n")
    masks = dict(result.masks)
    if result.remove:
        masks = combine(masks, removal_masks(model, result.remove, example_inputs, exact_only=False))
    masked = sum(int(_kept(w, masks.get(n)).sum()) for n, w in weights.items()) + skip_weights
    if not shrink or result.skips:
        return BudgetCount(reference, masked, masked)
    surviving = plan_removal(model, result.masks, example_inputs, remove=result.remove).surviving()
    after = sum(int((_kept(w, masks.get(n)) & surviving.get(n, torch.ones(w.shape, dtype=torch.bool))).sum())
                for n, w in weights.items())
    return BudgetCount(reference, masked, after + skip_weights)


__all__ = ["BudgetCount", "MAX_ROUNDS", "count", "excluded_scores", "fit_to_surgery", "per_layer_scale"]
