"""CIFAR ResNets (He, Zhang, Ren & Sun, "Deep Residual Learning for Image Recognition", CVPR 2016, Sec. 4.2):
ResNet-20/32/56/110, i.e. depth 6n + 2 with n basic blocks per stage.

Layout: ``conv1`` (3×3, 16) → ``bn1`` → ``relu`` → ``layer1`` (16 channels, 32×32) → ``layer2`` (32, 16×16) →
``layer3`` (64, 8×8) → ``avgpool`` → ``flatten`` → ``fc``. Each block ``layerS.i`` has ``conv1``/``bn1``/``relu1``/
``conv2``/``bn2``, a ``downsample`` shortcut where the shape changes, the residual add ``out = out + identity`` in
``forward`` and ``relu2``.

Choice: the paper's CIFAR nets use option-A (zero-padding, parameter-free) shortcuts; here the two shortcuts that
change shape are option B (1×1 conv stride 2 + BN, ``layerS.0.downsample.0/1``), so that the whole network is plain
Conv2d/BN modules that torch-pruning traces and prunes consistently. This adds 2,752 parameters and 0.26 M MACs:
ResNet-20 has 272,474 parameters (paper: 0.27 M) and ResNet-56 855,770 (paper: 0.85 M) at 10 classes.
"""

from __future__ import annotations

import torch
from torch import nn

from connprune.models.registry import init_weights, register

DEPTHS = {"resnet20": 20, "resnet32": 32, "resnet56": 56, "resnet110": 110}


def projection_shortcut(in_planes: int, out_planes: int, stride: int) -> nn.Sequential | None:
    """Option-B shortcut (1×1 conv + BN) where the shape changes; ``None`` (identity) otherwise."""
    if stride == 1 and in_planes == out_planes:
        return None
    return nn.Sequential(nn.Conv2d(in_planes, out_planes, 1, stride=stride, bias=False), nn.BatchNorm2d(out_planes))


class BasicBlock(nn.Module):
    """Two 3×3 conv-BN layers with an identity (or 1×1 conv + BN projection) shortcut; also ResNet-18's block."""

    expansion = 1

    def __init__(self, in_planes: int, planes: int, stride: int = 1) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(in_planes, planes, 3, stride=stride, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(planes)
        self.relu1 = nn.ReLU(inplace=False)
        self.conv2 = nn.Conv2d(planes, planes, 3, stride=1, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(planes)
        self.downsample = projection_shortcut(in_planes, planes, stride)
        self.relu2 = nn.ReLU(inplace=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        identity = x if self.downsample is None else self.downsample(x)
        out = self.relu1(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        out = out + identity
        return self.relu2(out)


class CifarResNet(nn.Module):
    """ResNet of depth ``6n + 2`` with 16/32/64 channels for 32×32 inputs (runs on any input size)."""

    def __init__(self, depth: int, num_classes: int = 10, in_channels: int = 3) -> None:
        super().__init__()
        if (depth - 2) % 6 != 0 or depth < 8:
            raise ValueError(f"CIFAR ResNet depth must be 6n + 2 with n >= 1, got {depth}")
        blocks = (depth - 2) // 6
        self.conv1 = nn.Conv2d(in_channels, 16, 3, stride=1, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(16)
        self.relu = nn.ReLU(inplace=False)
        self.layer1 = self._stage(16, 16, blocks, stride=1)
        self.layer2 = self._stage(16, 32, blocks, stride=2)
        self.layer3 = self._stage(32, 64, blocks, stride=2)
        self.avgpool = nn.AdaptiveAvgPool2d(1)
        self.flatten = nn.Flatten()
        self.fc = nn.Linear(64, num_classes)
        init_weights(self)

    @staticmethod
    def _stage(in_planes: int, planes: int, blocks: int, stride: int) -> nn.Sequential:
        layers = [BasicBlock(in_planes, planes, stride)]
        layers += [BasicBlock(planes, planes, 1) for _ in range(blocks - 1)]
        return nn.Sequential(*layers)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.relu(self.bn1(self.conv1(x)))
        x = self.layer3(self.layer2(self.layer1(x)))
        return self.fc(self.flatten(self.avgpool(x)))


def _builder(depth: int):
    def build(*, num_classes: int, in_channels: int, input_size: int) -> CifarResNet:
        del input_size  # the architecture does not depend on it (global average pooling)
        return CifarResNet(depth, num_classes=num_classes, in_channels=in_channels)

    return build


for _name, _depth in DEPTHS.items():
    register(_name, family="resnet-cifar", build=_builder(_depth), num_classes=10, in_channels=3, input_size=32,
             description=f"ResNet-{_depth} for CIFAR, 16/32/64 channels (He et al. 2016), 1×1-conv shortcuts")
