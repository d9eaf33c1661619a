"""LeNet-5 (LeCun, Bottou, Bengio & Haffner, "Gradient-Based Learning Applied to Document Recognition",
Proc. IEEE 1998), in its common modern form: ReLU instead of scaled tanh, max pooling instead of trainable
sub-sampling, and a full C3 connection table.

Layout: ``conv1`` (6@5×5, padding 2) → ``relu1`` → ``pool1`` (2×2 max) → ``conv2`` (16@5×5) → ``relu2`` → ``pool2``
(2×2 max) → ``flatten`` → ``fc1`` (120) → ``relu3`` → ``fc2`` (84) → ``relu4`` → ``fc3`` (classes).

Input sizes. conv1's padding 2 makes a 28×28 MNIST digit behave like the paper's 32×32 input. conv2 is unpadded
(as in the paper) when ``input_size >= 12``, giving the classic 16·5·5 = 400 flatten size and 61,706 parameters on
1×28×28. Below 12 an unpadded conv2 would leave nothing to pool, so conv2 gets padding 2 ("same"): on
scikit-learn's 8×8 digits the maps are 8 → 8 → 4 → 4 → 2 and the flatten size is 16·2·2 = 64. The flatten size is
always computed from ``input_size``; the smallest supported input is 4×4.
"""

from __future__ import annotations

import torch
from torch import nn

from connprune.models.registry import init_weights, register

SAME_PADDING_BELOW = 12  # input sizes below this give conv2 padding 2


def conv2_padding(input_size: int) -> int:
    """conv2's padding for ``input_size``: 0 (the paper's) from 12 up, else 2."""
    return 0 if input_size >= SAME_PADDING_BELOW else 2


def flatten_size(input_size: int) -> int:
    """Number of features entering ``fc1`` for a square input of side ``input_size``."""
    side = input_size // 2  # conv1 keeps the size (padding 2), pool1 halves it
    side = side + 2 * conv2_padding(input_size) - 4  # conv2, 5×5
    return 16 * (side // 2) ** 2


class LeNet5(nn.Module):
    """LeNet-5 for square inputs of side ``input_size`` (see the module docstring for the padding rule)."""

    def __init__(self, num_classes: int = 10, in_channels: int = 1, input_size: int = 28) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(in_channels, 6, 5, padding=2)
        self.relu1 = nn.ReLU(inplace=False)
        self.pool1 = nn.MaxPool2d(2)
        self.conv2 = nn.Conv2d(6, 16, 5, padding=conv2_padding(input_size))
        self.relu2 = nn.ReLU(inplace=False)
        self.pool2 = nn.MaxPool2d(2)
        self.flatten = nn.Flatten()
        self.fc1 = nn.Linear(flatten_size(input_size), 120)
        self.relu3 = nn.ReLU(inplace=False)
        self.fc2 = nn.Linear(120, 84)
        self.relu4 = nn.ReLU(inplace=False)
        self.fc3 = nn.Linear(84, num_classes)
        init_weights(self)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.pool1(self.relu1(self.conv1(x)))
        x = self.pool2(self.relu2(self.conv2(x)))
        x = self.flatten(x)
        x = self.relu3(self.fc1(x))
        x = self.relu4(self.fc2(x))
        return self.fc3(x)


register("lenet5", family="lenet", build=LeNet5, num_classes=10, in_channels=1, input_size=28, min_input_size=4,
         description="LeNet-5 (LeCun 1998), ReLU + max pooling")
