"""Masks that stay enforced: multiply them in, and keep masked weights and their optimiser state exactly zero.

Like ``torch.nn.utils.prune`` but without re-parametrising modules (so models stay plain and traceable): the
weights are zeroed in place, and :class:`MaskEnforcer`, attached to any ``torch.optim.Optimizer`` (a post-step
hook), re-zeroes them and their optimiser state (momentum buffers, Adam moments) after every step, so weight decay
or momentum can never revive them. It needs only the model, the masks and the optimizer: use it in connprune's
trainer or in your own loop::

    enforcer = surgery.MaskEnforcer(model, masks, optimizer)   # zeroes now, and after every optimizer.step()
    for x, y in loader:
        optimizer.zero_grad(); loss_fn(model(x), y).backward(); optimizer.step()
    enforcer.detach()                                           # optional: stop enforcing
"""

from __future__ import annotations

from collections.abc import Mapping

import torch
from torch import nn

from connprune.errors import UserError


def check_masks(model: nn.Module, masks: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Every mask names a parameter of ``model`` and has its shape; returns them as boolean tensors."""
    parameters = dict(model.named_parameters())
    checked = {}
    for name, mask in masks.items():
        if name not in parameters:
            raise UserError(f"mask for {name!r}, which the model does not have; masks must be keyed by parameter "
                            f"names such as {next(iter(parameters))!r}")
        if tuple(mask.shape) != tuple(parameters[name].shape):
            raise UserError(f"mask for {name!r} has shape {tuple(mask.shape)}, the parameter "
                            f"{tuple(parameters[name].shape)}")
        checked[name] = mask.detach().to(torch.bool)
    return checked


@torch.no_grad()
def apply_masks(model: nn.Module, masks: Mapping[str, torch.Tensor]) -> nn.Module:
    """Zero every masked weight of ``model`` in place (True in a mask = keep)."""
    parameters = dict(model.named_parameters())
    for name, mask in check_masks(model, masks).items():
        parameters[name].mul_(mask.to(parameters[name].device, parameters[name].dtype))
    return model


def combine(*masks: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """The element-wise AND of several mask dicts (a weight is kept only if every dict that names it keeps it)."""
    combined: dict[str, torch.Tensor] = {}
    for layer_masks in masks:
        for name, mask in layer_masks.items():
            mask = mask.to(torch.bool)
            combined[name] = combined[name] & mask.to(combined[name].device) if name in combined else mask
    return combined


class MaskEnforcer:
    """Keep ``masks`` enforced on ``model``: zero the masked weights now and, once attached to an optimizer, after
    every ``optimizer.step()`` together with the optimizer's per-parameter state of the same shape."""

    def __init__(self, model: nn.Module, masks: Mapping[str, torch.Tensor],
                 optimizer: torch.optim.Optimizer | None = None) -> None:
        self.model = model
        self._handles: list = []
        self._optimizers: list[torch.optim.Optimizer] = []
        self.update(masks)
        if optimizer is not None:
            self.attach(optimizer)

    def update(self, masks: Mapping[str, torch.Tensor]) -> None:
        """Replace the enforced masks (e.g. a schedule that prunes more) and enforce them at once."""
        self.masks = check_masks(self.model, masks)
        parameters = dict(self.model.named_parameters())
        self._pairs = [(parameters[n], m.to(parameters[n].device)) for n, m in self.masks.items()]
        self.enforce()

    def attach(self, optimizer: torch.optim.Optimizer) -> MaskEnforcer:
        """Enforce after every step of ``optimizer`` (a ``register_step_post_hook``; attaching twice is a no-op)."""
        if any(attached is optimizer for attached in self._optimizers):
            return self
        self._handles.append(optimizer.register_step_post_hook(lambda opt, args, kwargs: self.enforce()))
        self._optimizers.append(optimizer)
        self.enforce()
        return self

    def detach(self) -> None:
        """Stop enforcing (the weights stay as they are)."""
        for handle in self._handles:
            handle.remove()
        self._handles, self._optimizers = [], []

    @torch.no_grad()
    def enforce(self) -> None:
        """Zero the masked weights and the matching entries of every attached optimizer's state."""
        for parameter, keep in self._pairs:
            parameter.masked_fill_(~keep, 0.0)
            for optimizer in self._optimizers:
                for value in optimizer.state.get(parameter, {}).values():
                    if isinstance(value, torch.Tensor) and value.shape == parameter.shape:
                        value.masked_fill_(~keep, 0.0)


__all__ = ["MaskEnforcer", "apply_masks", "check_masks", "combine"]
