"""Masks that stay enforced: multiply them in, and keep masked weights and their optimiser state exactly zero.

Like ``torch.nn.utils.prune`` but without re-parametrising modules (so models stay plain and traceable): the
weights are zeroed in place and :class:`MaskEnforcer`, a trainer hook, re-zeroes them and their optimiser state
(momentum buffers, Adam moments) after every step, so weight decay or momentum can never revive them.
"""

from __future__ import annotations

from collections.abc import Mapping

import torch
from torch import nn

from connprune.errors import UserError
from connprune.train.trainer import Trainer, TrainHook


def check_masks(model: nn.Module, masks: Mapping[str, torch.Tensor]) -> None:
    """Every mask names a parameter of ``model`` and has its shape."""
    parameters = dict(model.named_parameters())
    for name, mask in masks.items():
        if name not in parameters:
            raise UserError(f"mask for {name!r}, which the model does not have; masks must be keyed by parameter "
                            f"names such as {next(iter(parameters))!r}")
        if mask.shape != parameters[name].shape:
            raise UserError(f"mask for {name!r} has shape {tuple(mask.shape)}, the parameter "
                            f"{tuple(parameters[name].shape)}")


@torch.no_grad()
def apply_masks(model: nn.Module, masks: Mapping[str, torch.Tensor]) -> nn.Module:
    """Zero every masked weight of ``model`` in place (True in a mask = keep)."""
    check_masks(model, masks)
    parameters = dict(model.named_parameters())
    for name, mask in masks.items():
        parameters[name].mul_(mask.to(parameters[name].device, parameters[name].dtype))
    return model


class MaskEnforcer(TrainHook):
    """Trainer hook: after every optimiser step, zero the masked weights and their optimiser state."""

    def __init__(self, masks: Mapping[str, torch.Tensor]) -> None:
        self.masks = dict(masks)
        self._pairs: list[tuple[nn.Parameter, torch.Tensor]] = []

    def on_train_start(self, trainer: Trainer) -> None:
        check_masks(trainer.model, self.masks)
        parameters = dict(trainer.model.named_parameters())
        self._pairs = [(parameters[n], m.to(parameters[n].device, torch.bool)) for n, m in self.masks.items()]
        self._enforce(trainer)

    def after_step(self, trainer: Trainer) -> None:
        self._enforce(trainer)

    @torch.no_grad()
    def _enforce(self, trainer: Trainer) -> None:
        for parameter, keep in self._pairs:
            parameter.masked_fill_(~keep, 0.0)
            for value in trainer.optimizer.state.get(parameter, {}).values():
                if isinstance(value, torch.Tensor) and value.shape == parameter.shape:
                    value.masked_fill_(~keep, 0.0)
