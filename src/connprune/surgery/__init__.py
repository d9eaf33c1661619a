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

import torch
from torch import nn

from connprune import models
from connprune.graph import ExampleInputs, build
from connprune.plan import PruningResult
from connprune.surgery import edits
from connprune.surgery.masks import MaskEnforcer, apply_masks, check_masks, combine
from connprune.surgery.shrink import shrink as shrink_model


def removal_masks(model: nn.Module, remove: dict[str, list[int]],
                  example_inputs: ExampleInputs) -> dict[str, torch.Tensor]:
    """Express unit removals as masks: zero the removed units' input slices in every consumer, and their rows in
    every producer (depthwise convs included).

    Zeroing what the consumers read is what makes the masked model compute what physical removal computes (a
    removed channel's BN still emits a constant, which removal drops and the consumer-side mask drops too); zeroing
    the producers' rows as well makes the masked model hold exactly the non-zero weights the shrunk one keeps.
    """
    graph = build(model, example_inputs)
    parameters = dict(model.named_parameters())
    masks: dict[str, torch.Tensor] = {}

    def mask_of(layer: str) -> torch.Tensor:
        name = f"{layer}.weight"
        return masks.setdefault(name, torch.ones_like(parameters[name], dtype=torch.bool))

    for layer, indices in remove.items():
        group = graph.group_of(layer)
        for producer in group.producers:
            mask_of(producer)[list(indices)] = False
        for consumer, per_channel in graph.consumer_slices(group.root).items():
            mask_of(consumer)[:, sorted(i for index in indices for i in per_channel[index])] = False
    return masks


def apply(model: nn.Module, result: PruningResult, shrink: bool = True,
          example_inputs: ExampleInputs | None = None) -> tuple[nn.Module, dict[str, torch.Tensor]]:
    """Apply ``result`` to ``model`` (in place where possible); returns the pruned model and its remaining masks."""
    if result.model is not None:
        model = result.model
    example_inputs = models.example_inputs(model, example_inputs)
    masks = check_masks(model, result.masks)
    apply_masks(model, masks)
    if shrink and not result.skips:
        model, masks = shrink_model(model, masks, example_inputs, remove=result.remove)
    elif result.remove:
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
