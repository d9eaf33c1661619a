"""Example inputs: what a model is traced, measured and checked on.

Every function of connprune that runs a model takes its inputs the way Torch-Pruning does: an *example input* (a
tensor with a batch dimension) or a tuple of tensors for models with several inputs. For convenience a plain shape
``(C, H, W)`` of ints stands for a seeded standard-normal batch of that shape (what zoo models are built for).

>>> inputs = as_inputs(torch.randn(1, 3, 32, 32))      # doctest: +SKIP
>>> inputs = as_inputs((3, 32, 32))                     # the same kind of tensor, seeded
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Union

import torch
from torch import nn

from connprune.errors import UserError

ExampleInputs = Union[torch.Tensor, Sequence[torch.Tensor], Sequence[int]]
"""A tensor, a tuple of tensors, or a shape ``(C, H, W)`` (a seeded random batch of one)."""

_SEED = 0


def is_shape(value: object) -> bool:
    """Whether ``value`` is a shape (a non-empty sequence of ints) rather than tensors."""
    return isinstance(value, (tuple, list, torch.Size)) and len(value) > 0 and \
        all(isinstance(v, int) and not isinstance(v, bool) for v in value)


def as_inputs(value: ExampleInputs, *, device: torch.device | None = None,
              dtype: torch.dtype | None = None) -> tuple[torch.Tensor, ...]:
    """The example inputs as a tuple of tensors (a shape becomes a seeded ``randn`` batch of one).

    ``device``/``dtype`` move floating-point inputs (a model's parameters decide where it runs).
    """
    if isinstance(value, torch.Tensor):
        tensors: tuple[torch.Tensor, ...] = (value,)
    elif is_shape(value):
        generator = torch.Generator().manual_seed(_SEED)
        tensors = (torch.randn(1, *(int(v) for v in value), generator=generator),)
    elif isinstance(value, (tuple, list)) and value and all(isinstance(v, torch.Tensor) for v in value):
        tensors = tuple(value)
    else:
        raise UserError(f"example inputs must be a tensor, a tuple of tensors or a shape (C, H, W), got "
                        f"{type(value).__name__}; pass e.g. example_inputs=torch.randn(1, 3, 32, 32)")
    return tuple(t.to(device=device, dtype=dtype if t.is_floating_point() and dtype is not None else t.dtype)
                 if device is not None or dtype is not None else t for t in tensors)


def for_model(model: nn.Module, value: ExampleInputs) -> tuple[torch.Tensor, ...]:
    """:func:`as_inputs` on the device (and floating dtype) of ``model``'s first parameter."""
    reference = next(iter(model.parameters()), None)
    if reference is None:
        reference = next(iter(model.buffers()), None)
    device = reference.device if reference is not None else torch.device("cpu")
    dtype = reference.dtype if reference is not None and reference.is_floating_point() else None
    return as_inputs(value, device=device, dtype=dtype)


def probe(inputs: tuple[torch.Tensor, ...], batch: int = 2, seed: int = 0) -> tuple[torch.Tensor, ...]:
    """``batch`` fresh random samples shaped like the example inputs (per sample), seeded.

    Floating-point inputs get standard-normal values; integer inputs (token ids) get values drawn uniformly between
    their example's minimum and maximum, so probes stay valid indices.
    """
    generator = torch.Generator().manual_seed(seed)
    samples = []
    for tensor in inputs:
        shape = (batch, *tensor.shape[1:])
        if tensor.is_floating_point():
            value = torch.randn(shape, generator=generator, dtype=torch.float32)
        else:
            low, high = int(tensor.min()), int(tensor.max())
            value = torch.randint(low, high + 1, shape, generator=generator)
        samples.append(value.to(tensor.device, tensor.dtype))
    return tuple(samples)


def describe(inputs: tuple[torch.Tensor, ...]) -> str:
    """Shapes of the inputs without the batch dimension, for messages: ``(3, 32, 32)``."""
    shapes = [tuple(t.shape[1:]) for t in inputs]
    return str(shapes[0]) if len(shapes) == 1 else ", ".join(str(s) for s in shapes)


def batch_of(inputs: tuple[torch.Tensor, ...], size: int) -> tuple[torch.Tensor, ...]:
    """The first sample of every input, repeated to a batch of ``size`` (e.g. for timing at batch 64)."""
    return tuple(t[:1].expand(size, *t.shape[1:]).contiguous() for t in inputs)


__all__ = ["ExampleInputs", "as_inputs", "batch_of", "describe", "for_model", "is_shape", "probe"]
