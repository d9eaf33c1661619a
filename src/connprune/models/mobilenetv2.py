"""MobileNetV2 (Sandler, Howard, Zhu, Zhmoginov & Chen, "MobileNetV2: Inverted Residuals and Linear Bottlenecks",
CVPR 2018), CIFAR form.

The inverted-residual settings (t, c, n, s) are the paper's Table 2, with the usual 32×32 adaptation: the stem conv
has stride 1 instead of 2 and the second stage (24 channels) stride 1 instead of 2, so a 32×32 image leaves the
last stage at 4×4 (ImageNet: 224 → 7). Channel counts follow torchvision's rounding with ``width_mult`` (multiples
of 8; the last conv has 1280·max(1, width_mult) channels). The classifier is one ``nn.Linear``, without the ImageNet
model's dropout. 2,236,682 parameters at 10 classes and ``width_mult=1``.

Layout: ``conv1`` (3×3, 32) → ``bn1`` → ``relu1`` → ``layers.0``…``layers.16`` (inverted residual blocks) →
``conv2`` (1×1, 1280) → ``bn2`` → ``relu2`` → ``avgpool`` → ``flatten`` → ``fc``. A block ``layers.i`` has
``expand_conv``/``expand_bn``/``expand_relu`` (1×1, absent when t = 1), ``dw_conv``/``dw_bn``/``dw_relu`` (3×3
depthwise: ``nn.Conv2d`` with ``groups`` = channels), ``project_conv``/``project_bn`` (1×1, linear) and, when stride
is 1 and the channel count is kept, the residual add ``out = out + x`` in ``forward``. Activations are ReLU6.
"""

from __future__ import annotations

import torch
from torch import nn

from connprune.models.registry import init_weights, positive_float, register

# t (expansion), c (output channels), n (blocks), s (stride of the first block): Table 2, CIFAR strides.
SETTINGS = [(1, 16, 1, 1), (6, 24, 2, 1), (6, 32, 3, 2), (6, 64, 4, 2), (6, 96, 3, 1), (6, 160, 3, 2),
            (6, 320, 1, 1)]


def make_divisible(value: float, divisor: int = 8) -> int:
    """Round ``value`` to the nearest multiple of ``divisor`` without going 10 % below it (torchvision's rule)."""
    rounded = max(divisor, int(value + divisor / 2) // divisor * divisor)
    if rounded < 0.9 * value:
        rounded += divisor
    return rounded


class InvertedResidual(nn.Module):
    """Expand (1×1) → depthwise 3×3 → linear project (1×1), with a residual add when shapes allow."""

    def __init__(self, in_planes: int, out_planes: int, stride: int, expand_ratio: int) -> None:
        super().__init__()
        hidden = int(round(in_planes * expand_ratio))
        self.use_residual = stride == 1 and in_planes == out_planes
        self.expands = expand_ratio != 1
        if self.expands:
            self.expand_conv = nn.Conv2d(in_planes, hidden, 1, bias=False)
            self.expand_bn = nn.BatchNorm2d(hidden)
            self.expand_relu = nn.ReLU6(inplace=False)
        self.dw_conv = nn.Conv2d(hidden, hidden, 3, stride=stride, padding=1, groups=hidden, bias=False)
        self.dw_bn = nn.BatchNorm2d(hidden)
        self.dw_relu = nn.ReLU6(inplace=False)
        self.project_conv = nn.Conv2d(hidden, out_planes, 1, bias=False)
        self.project_bn = nn.BatchNorm2d(out_planes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = x
        if self.expands:
            out = self.expand_relu(self.expand_bn(self.expand_conv(out)))
        out = self.dw_relu(self.dw_bn(self.dw_conv(out)))
        out = self.project_bn(self.project_conv(out))
        if self.use_residual:
            out = out + x
        return out


class MobileNetV2(nn.Module):
    """MobileNetV2 for 32×32 inputs (runs on any input size thanks to global average pooling)."""

    def __init__(self, num_classes: int = 10, in_channels: int = 3, width_mult: float = 1.0) -> None:
        super().__init__()
        planes = make_divisible(32 * width_mult)
        last = make_divisible(1280 * max(1.0, width_mult))
        self.conv1 = nn.Conv2d(in_channels, planes, 3, stride=1, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(planes)
        self.relu1 = nn.ReLU6(inplace=False)
        blocks: list[nn.Module] = []
        for t, c, n, s in SETTINGS:
            out_planes = make_divisible(c * width_mult)
            for i in range(n):
                blocks.append(InvertedResidual(planes, out_planes, s if i == 0 else 1, t))
                planes = out_planes
        self.layers = nn.Sequential(*blocks)
        self.conv2 = nn.Conv2d(planes, last, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(last)
        self.relu2 = nn.ReLU6(inplace=False)
        self.avgpool = nn.AdaptiveAvgPool2d(1)
        self.flatten = nn.Flatten()
        self.fc = nn.Linear(last, num_classes)
        init_weights(self)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.relu1(self.bn1(self.conv1(x)))
        x = self.layers(x)
        x = self.relu2(self.bn2(self.conv2(x)))
        return self.fc(self.flatten(self.avgpool(x)))


def build(*, num_classes: int, in_channels: int, input_size: int, width_mult: float) -> MobileNetV2:
    del input_size  # the architecture does not depend on it (global average pooling)
    return MobileNetV2(num_classes=num_classes, in_channels=in_channels, width_mult=width_mult)


register("mobilenetv2", family="mobilenetv2", build=build, num_classes=10, in_channels=3, input_size=32,
         extra={"width_mult": (1.0, positive_float)},
         description="MobileNetV2 for CIFAR, stride-1 stem (Sandler et al. 2018)")
