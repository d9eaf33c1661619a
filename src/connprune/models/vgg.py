"""VGG-11/13/16/19 (Simonyan & Zisserman, "Very Deep Convolutional Networks for Large-Scale Image Recognition",
ICLR 2015), in the CIFAR form with BatchNorm used throughout the pruning literature (e.g. Li et al., ICLR 2017).

Layout: ``features`` is the conv stack of configurations A/B/D/E — each 3×3 conv (padding 1, no bias) followed by
``nn.BatchNorm2d`` and ReLU, with 2×2 max pooling between stages (``features.0`` is the first conv, ``features.1``
its BN, …). Then ``avgpool`` (global average), ``flatten`` and ``classifier``, a single ``nn.Linear(512, classes)``
instead of the ImageNet model's three fully connected layers. VGG-16 has 14,724,042 parameters at 10 classes.

Choices: the max pools use ``ceil_mode=True``, which changes nothing on 32×32 (every map size is even) but lets the
same network run on odd and small inputs (28×28 MNIST: 28 → 14 → 7 → 4 → 2 → 1; 8×8 digits: 8 → 4 → 2 → 1 → 1 → 1).
The global average pool is an identity on 32×32 inputs (the map is already 1×1) and makes larger inputs (64×64)
work with the same classifier.
"""

from __future__ import annotations

import torch
from torch import nn

from connprune.models.registry import init_weights, register

CONFIGS: dict[str, list[int | str]] = {
    "vgg11": [64, "M", 128, "M", 256, 256, "M", 512, 512, "M", 512, 512, "M"],
    "vgg13": [64, 64, "M", 128, 128, "M", 256, 256, "M", 512, 512, "M", 512, 512, "M"],
    "vgg16": [64, 64, "M", 128, 128, "M", 256, 256, 256, "M", 512, 512, 512, "M", 512, 512, 512, "M"],
    "vgg19": [64, 64, "M", 128, 128, "M", 256, 256, 256, 256, "M", 512, 512, 512, 512, "M", 512, 512, 512, 512, "M"],
}


class VGG(nn.Module):
    """A VGG conv stack (``config``: channel counts and ``"M"`` for max pooling) with a single linear classifier."""

    def __init__(self, config: list[int | str], num_classes: int = 10, in_channels: int = 3) -> None:
        super().__init__()
        layers: list[nn.Module] = []
        channels = in_channels
        for item in config:
            if item == "M":
                layers.append(nn.MaxPool2d(kernel_size=2, stride=2, ceil_mode=True))
            else:
                layers += [nn.Conv2d(channels, int(item), 3, padding=1, bias=False), nn.BatchNorm2d(int(item)),
                           nn.ReLU(inplace=False)]
                channels = int(item)
        self.features = nn.Sequential(*layers)
        self.avgpool = nn.AdaptiveAvgPool2d(1)
        self.flatten = nn.Flatten()
        self.classifier = nn.Linear(channels, num_classes)
        init_weights(self)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.classifier(self.flatten(self.avgpool(self.features(x))))


def _builder(name: str):
    def build(*, num_classes: int, in_channels: int, input_size: int) -> VGG:
        del input_size  # the architecture does not depend on it (global average pooling)
        return VGG(CONFIGS[name], num_classes=num_classes, in_channels=in_channels)

    return build


for _depth, _name in zip((11, 13, 16, 19), CONFIGS):
    register(_name, family="vgg", build=_builder(_name), num_classes=10, in_channels=3, input_size=32,
             description=f"VGG-{_depth} with BatchNorm, CIFAR form (Simonyan & Zisserman 2015)")
