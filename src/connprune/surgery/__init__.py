"""Apply a pruning result to a model: masks, physical shrinking, merging and skips.

>>> model, masks = surgery.apply(model, result, shrink=True, example_inputs=x)      # doctest: +SKIP

With ``shrink=True`` removed units and units the masks leave dead are cut out physically through torch-pruning, so
the model really gets smaller and faster; the masks that remain (unstructured zeros inside kept units) are returned
re-indexed for the smaller model. With ``shrink=False`` removals are expressed as masks instead (the "masked model").
Merges (``result.merge``) and skips (``result.skips``) are structural edits (:mod:`connprune.surgery.edits`), done
after shrinking and recorded on the model so that checkpoints rebuild them. A model that gets skip branches keeps
its full width (its sparsity stays unstructured): the skip plan is made for the unshrunk layers.

``example_inputs`` (a tensor, a tuple of tensors, or a shape ``(C, H, W)``) is what the model is traced on; zoo
models fill it from their config.
"""

from __future__ import annotations

import copy

import torch
from torch import nn

from connprune import models
from connprune.errors import UserError
from connprune.graph import ExampleInputs, ModelGraph, build, probe
from connprune.plan import PruningResult
from connprune.surgery import edits
from connprune.surgery.masks import MaskEnforcer, apply_masks, check_masks, combine
from connprune.surgery.shrink import shrink as shrink_model


def removal_masks(model: nn.Module, remove: dict[str, list[int]], example_inputs: ExampleInputs, *,
                  exact_only: bool = True, graph: ModelGraph | None = None) -> dict[str, torch.Tensor]:
    """Express unit removals as masks: zero the removed units' input slices in every consumer, and their rows in
    every producer (depthwise convs included).

    Zeroing what the consumers read is what makes the masked model compute what physical removal computes (a
    removed channel's BN still emits a constant, which removal drops and the consumer-side mask drops too); zeroing
    the producers' rows as well makes the masked model hold exactly the non-zero weights the shrunk one keeps.
    UserError for channels coupled by a normalisation over them (LayerNorm, GroupNorm): removing those changes the
    statistics of the channels that stay, which no mask expresses (``exact_only=False``: mask them anyway, for
    counting weights). ``graph``: ``model``'s graph when the caller has built it already.
    """
    graph = graph or build(model, example_inputs)
    parameters = dict(model.named_parameters())
    masks: dict[str, torch.Tensor] = {}

    def mask_of(layer: str) -> torch.Tensor:
        name = f"{layer}.weight"
        return masks.setdefault(name, torch.ones_like(parameters[name], dtype=torch.bool))

    for layer, indices in remove.items():
        group = graph.group_of(layer)
        if exact_only and not group.exact:
            raise UserError(f"the channels of {layer!r} are normalised together by {', '.join(group.coupled)}: "
                            "removing some changes what the others compute, so there is no masked equivalent; "
                            "apply the removal with shrink=True (drop --no-shrink)")
        for producer in group.producers:
            mask_of(producer)[list(indices)] = False
        for tied in group.tied:
            mask_of(tied)[list(indices)] = False
            mask_of(tied)[:, list(indices)] = False
        for consumer, per_channel in graph.consumer_slices(group.root).items():
            mask_of(consumer)[:, sorted(i for index in indices for i in per_channel[index])] = False
    return masks


@torch.no_grad()
def _outputs(model: nn.Module, inputs: tuple[torch.Tensor, ...], masks: dict[str, torch.Tensor] | None = None
             ) -> torch.Tensor:
    """The model's output (eval mode) on ``inputs`` with ``masks`` multiplied in temporarily."""
    parameters, saved = dict(model.named_parameters()), {}
    modes = {module: module.training for module in model.modules()}
    try:
        for name, mask in (masks or {}).items():
            saved[name] = parameters[name].detach().clone()
            parameters[name].mul_(mask.to(parameters[name].device, parameters[name].dtype))
        output = model.eval()(*inputs)
        return output[0] if isinstance(output, (tuple, list)) else output
    finally:
        for name, value in saved.items():
            parameters[name].copy_(value)
        for module, mode in modes.items():
            module.training = mode


def _shrunk_checked(model: nn.Module, masks: dict[str, torch.Tensor], remove: dict[str, list[int]],
                    example_inputs: ExampleInputs) -> tuple[nn.Module, dict[str, torch.Tensor]]:
    """Shrink a copy of ``model`` and check it before handing it back: where every removed channel has a masked
    equivalent the copy must compute what the masked model computes (relative error at most 1e-5 on probe inputs);
    elsewhere (channels coupled by a LayerNorm/GroupNorm) it must run and keep the output's shape. UserError
    otherwise, and ``model`` is left as it was."""
    graph = build(model, example_inputs)
    probe_inputs = probe(graph.example_inputs, batch=2, seed=1)
    exact = all(graph.group_of(layer).exact for layer in remove)
    reference = _outputs(model, probe_inputs, combine(masks, removal_masks(model, remove, example_inputs, graph=graph))
                         if exact else masks)
    shrunk = copy.deepcopy(model)
    try:
        shrunk, remaining = shrink_model(shrunk, masks, example_inputs, remove=remove)
        output = _outputs(shrunk, probe_inputs)
    except (RuntimeError, ValueError, IndexError) as exc:
        first = (str(exc).strip().splitlines() or [type(exc).__name__])[0]
        raise UserError(f"shrinking the model breaks its forward pass ({first}), so the removal was refused and "
                        "the model is unchanged (Torch-Pruning's trace coupled dimensions that the model does not "
                        "couple, e.g. a token dimension of the channels' size); prune with --no-shrink") from exc
    if output.shape != reference.shape:
        raise UserError(f"shrinking changes the output's shape from {tuple(reference.shape)} to "
                        f"{tuple(output.shape)}; prune with --no-shrink")
    error = float((output - reference).abs().max() / reference.abs().max().clamp(min=1e-12))
    if exact and error > 1e-5:
        raise UserError(f"the shrunk model differs from the masked one (relative error {error:.1e} > 1e-5), so the "
                        "surgery was refused; prune with --no-shrink and report the model")
    return shrunk, remaining


def apply(model: nn.Module, result: PruningResult, shrink: bool = True,
          example_inputs: ExampleInputs | None = None) -> tuple[nn.Module, dict[str, torch.Tensor]]:
    """Apply ``result`` to ``model``; returns the pruned model and its remaining masks.

    ``shrink=True`` works on a copy, checked against the masked model before it is returned (see
    :func:`_shrunk_checked`), so ``model`` itself is not changed; ``shrink=False`` (or a result that adds skips)
    masks ``model`` in place. Merges and skips are then recorded on the returned model.
    """
    if result.model is not None:
        model = result.model
    example_inputs = models.example_inputs(model, example_inputs)
    masks = check_masks(model, result.masks)
    if shrink and not result.skips:
        model, masks = _shrunk_checked(model, masks, result.remove, example_inputs)
    else:
        if result.remove:
            masks = combine(masks, removal_masks(model, result.remove, example_inputs))
        apply_masks(model, masks)
    for run in result.merge:
        masks = edits.perform(model, {"op": "merge", "layers": list(run)}, masks)
    for skip in result.skips:
        masks = edits.perform(model, {"op": "skip", **skip}, masks)
    if result.merge or result.skips:
        apply_masks(model, masks)
    return model, masks


__all__ = ["MaskEnforcer", "apply", "apply_masks", "check_masks", "combine", "edits", "removal_masks"]
