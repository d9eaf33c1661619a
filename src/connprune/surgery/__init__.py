"""Apply a pruning result to a model: masks, physical shrinking, merging and skips.

>>> model, masks = surgery.apply(model, result, shrink=True)      # doctest: +SKIP

With ``shrink=True`` removed units and units the masks leave dead are cut out physically through torch-pruning, so
the model really gets smaller and faster; the masks that remain (unstructured zeros inside kept units) are returned
re-indexed for the smaller model. With ``shrink=False`` removals are expressed as masks instead (the "masked model").
Merges (``result.merge``) and skips (``result.skips``) are structural edits (:mod:`connprune.surgery.edits`), done
after shrinking and recorded on the model so that checkpoints rebuild them. A model that gets skip branches keeps
its full width (its sparsity stays unstructured): the skip plan is made for the unshrunk layers.
"""

from __future__ import annotations

import torch
from torch import nn

from connprune.graph import build
from connprune.methods.base import PruningResult
from connprune.surgery import edits
from connprune.surgery.masks import MaskEnforcer, apply_masks, check_masks
from connprune.surgery.shrink import shrink as shrink_model


def input_shape_of(model: nn.Module) -> tuple[int, int, int]:
    """(C, H, W) a zoo model was built for, from its recorded config."""
    config = getattr(model, "connprune_config", None)
    if not config or "in_channels" not in config or "input_size" not in config:
        raise ValueError("model was not built by connprune.models.create; pass its input shape explicitly")
    return (config["in_channels"], config["input_size"], config["input_size"])


def removal_masks(model: nn.Module, remove: dict[str, list[int]],
                  input_shape: tuple[int, int, int]) -> dict[str, torch.Tensor]:
    """Express unit removals as masks: zero the removed units' outgoing input slices in every consumer.

    Zeroing what the consumers read (rather than the producers' rows) is exactly what physical removal computes:
    a removed channel's BN still emits a constant, which removal drops and the consumer-side mask drops too.
    """
    graph = build(model, input_shape)
    parameters = dict(model.named_parameters())
    masks: dict[str, torch.Tensor] = {}
    for layer, indices in remove.items():
        group = graph.group_of(layer)
        for pair in graph.pairs:
            if pair.parent in group.producers and pair.child in group.consumers:
                name = f"{pair.child}.weight"
                mask = masks.setdefault(name, torch.ones_like(parameters[name], dtype=torch.bool))
                child = model.get_submodule(pair.child)
                block = pair.features_per_channel
                for index in indices:
                    if isinstance(child, nn.Conv2d) and child.groups > 1:
                        continue  # depthwise consumers are removed with the channel itself
                    mask[:, index * block : (index + 1) * block] = False
    return masks


def apply(model: nn.Module, result: PruningResult, shrink: bool = True,
          input_shape: tuple[int, int, int] | None = None) -> tuple[nn.Module, dict[str, torch.Tensor]]:
    """Apply ``result`` to ``model`` (in place where possible); returns the pruned model and its remaining masks."""
    if result.model is not None:
        model = result.model
    input_shape = input_shape or input_shape_of(model)
    masks = dict(result.masks)
    check_masks(model, masks)
    apply_masks(model, masks)
    if shrink and not result.skips:
        model, masks = shrink_model(model, masks, input_shape, remove=result.remove)
    elif result.remove:
        for name, mask in removal_masks(model, result.remove, input_shape).items():
            masks[name] = masks[name] & mask if name in masks else mask
        apply_masks(model, masks)
    for run in result.merge:
        masks = edits.perform(model, {"op": "merge", "layers": list(run)}, masks)
    for skip in result.skips:
        masks = edits.perform(model, {"op": "skip", **skip}, masks)
    if result.merge or result.skips:
        apply_masks(model, masks)
    return model, masks


__all__ = ["MaskEnforcer", "apply", "edits", "apply_masks", "input_shape_of", "removal_masks"]
