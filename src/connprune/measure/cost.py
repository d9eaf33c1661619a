"""Model cost: parameter count and multiply-accumulates (MACs) of one forward pass.

MACs are counted with :class:`torch.utils.flop_counter.FlopCounterMode` on a batch of one, as its FLOP total // 2.
The counter sees only matrix products and convolutions (``mm``, ``addmm``, ``bmm``, ``convolution``, attention), so
the result is the usual MAC convention of papers and tools such as thop/ptflops: every conv and linear layer's
multiply-adds (grouped/depthwise convs counted per group, i.e. correctly), and nothing for biases, BatchNorm,
activations, pooling or residual additions. Masked (zeroed but not removed) weights still count: the cost is that
of the dense computation the model performs; physically shrunk models count less. N2NSkip's sparse skip branches
are the exception: they are counted as run compactly (:func:`connprune.surgery.skips.compact`), i.e. their non-zero
weights × output positions, not as the dense masked convs they run as in training.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn
from torch.utils.flop_counter import FlopCounterMode

from connprune.graph.inputs import ExampleInputs, batch_of, for_model, is_shape
from connprune.surgery import skips


@dataclass(frozen=True)
class Cost:
    """``params``: all parameters (trainable or not); ``macs``: multiply-accumulates of one forward, batch 1."""

    params: int
    macs: int


def count_params(model: nn.Module) -> int:
    """Number of parameters in ``model`` (each shared parameter once; buffers such as BN statistics excluded)."""
    return sum(p.numel() for p in model.parameters())


def count_macs(model: nn.Module, example_inputs: ExampleInputs) -> int:
    """MACs of one forward pass of a single sample; see the module docstring. ``example_inputs``: a shape
    ``(C, H, W)`` (a zero image) or example tensors (their first sample).

    The model runs in eval mode under ``torch.no_grad()`` on the device and dtype of its first parameter (or buffer;
    CPU float32 if it has neither), and every submodule's ``training`` flag is restored afterwards.
    """
    inputs = for_model(model, example_inputs)
    if is_shape(example_inputs):
        inputs = tuple(torch.zeros_like(t) for t in inputs)
    inputs = batch_of(inputs, 1)
    modes = [(module, module.training) for module in model.modules()]
    try:
        model.eval()
        counter = FlopCounterMode(display=False)
        with torch.no_grad(), skips.compact(model), counter:
            model(*inputs)
        return int(counter.get_total_flops()) // 2
    finally:
        for module, training in modes:
            module.training = training


def cost(model: nn.Module, example_inputs: ExampleInputs) -> Cost:
    """Parameters and MACs (batch 1, eval mode, no grad) of ``model`` on ``example_inputs`` (a shape ``(C, H, W)``
    or example tensors)."""
    return Cost(params=count_params(model), macs=count_macs(model, example_inputs))
