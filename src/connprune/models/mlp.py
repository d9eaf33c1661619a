"""Fully connected networks: a configurable MLP and the two classic pruning benchmarks.

* ``mlp``: ``in_channels·input_size² → widths… → num_classes``, ReLU between layers (default widths [256, 128]).
* ``lenet300-100``: LeNet-300-100 (LeCun et al., Proc. IEEE 1998), the 784-300-100-10 MLP that Han et al.
  (NeurIPS 2015, "Learning both Weights and Connections for Efficient Neural Networks") prune; 266,610 parameters
  on 1×28×28.
* ``mlp-500-300``: the 784-500-300-10 MLP of MINT (Ganesh, Corso & Sekeh, ICPR 2020, "MINT: Deep Network
  Compression via Mutual Information-based Neuron Trimming"); 545,810 parameters on 1×28×28; dropout 0.2 after each
  hidden layer, as in MINT's MNIST run scripts (docs/methods/mint.md §4).

Option ``dropout`` (a probability; default 0 except ``mlp-500-300``'s 0.2): dropout after every hidden ReLU while
training (``F.dropout`` in ``forward``: no extra module, so module names and checkpoints are the same with or without).
All flatten the image first, so they run on any input size (scikit-learn's 8×8 digits included). Module names:
``flatten``, ``features.0``, ``features.1`` (ReLU), ``features.2``, … (hidden ``nn.Linear`` at even indices) and
``classifier`` (the output layer).
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from connprune.errors import UserError
from connprune.models.registry import init_weights, int_list, register


class MLP(nn.Module):
    """Flatten → [Linear → ReLU (→ Dropout)] per hidden width → Linear to the classes."""

    def __init__(self, in_features: int, widths: list[int], num_classes: int, dropout: float = 0.0) -> None:
        super().__init__()
        self.flatten = nn.Flatten()
        layers: list[nn.Module] = []
        previous = in_features
        for width in widths:
            layers += [nn.Linear(previous, width), nn.ReLU(inplace=False)]
            previous = width
        self.features = nn.Sequential(*layers)
        self.classifier = nn.Linear(previous, num_classes)
        self.dropout = dropout
        init_weights(self)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.flatten(x)
        for module in self.features:
            x = module(x)
            if self.dropout and isinstance(module, nn.ReLU):
                x = nn.functional.dropout(x, self.dropout, self.training)
        return self.classifier(x)


def probability(model: str, key: str, value: Any) -> float:
    """A number in [0, 1) (a dropout probability)."""
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0 <= value < 1:
        raise UserError(f"model {model!r}: config key {key!r} must be a number in [0, 1), got {value!r}")
    return float(value)


def _builder(fixed_widths: list[int] | None):
    def build(*, num_classes: int, in_channels: int, input_size: int, widths: list[int] | None = None,
              dropout: float = 0.0) -> MLP:
        chosen = fixed_widths if widths is None else widths
        return MLP(in_channels * input_size * input_size, list(chosen), num_classes, dropout)

    return build


register("mlp", family="mlp", build=_builder(None), num_classes=10, in_channels=1, input_size=28,
         extra={"widths": ([256, 128], int_list), "dropout": (0.0, probability)},
         description="MLP with configurable hidden widths (default 256-128), ReLU")
register("lenet300-100", family="mlp", build=_builder([300, 100]), num_classes=10, in_channels=1, input_size=28,
         extra={"dropout": (0.0, probability)}, description="LeNet-300-100 MLP (LeCun 1998; Han et al. 2015)")
register("mlp-500-300", family="mlp", build=_builder([500, 300]), num_classes=10, in_channels=1, input_size=28,
         extra={"dropout": (0.2, probability)},
         description="784-500-300-10 MLP of MINT (Ganesh et al. 2020), dropout 0.2")
