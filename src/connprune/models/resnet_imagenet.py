"""ImageNet ResNet-18 and ResNet-50 (He, Zhang, Ren & Sun, "Deep Residual Learning for Image Recognition",
CVPR 2016), re-implemented by hand in torchvision's exact layout and module names, so parameter counts match
torchvision's (11,689,512 and 25,557,032 at 1000 classes) and state-dict keys line up with torchvision's.

Layout: ``conv1`` (7×7 stride 2) → ``bn1`` → ``relu`` → ``maxpool`` (3×3 stride 2) → ``layer1``…``layer4``
(64/128/256/512 channels; basic blocks [2, 2, 2, 2] for ResNet-18, bottlenecks [3, 4, 6, 3] with expansion 4 for
ResNet-50, the stride in the bottleneck's 3×3 conv as in torchvision's "v1.5") → ``avgpool`` (global) →
``flatten`` → ``fc``. Shortcuts that change shape are 1×1 conv + BN (``downsample.0/1``). Unlike torchvision, each
block has its own ReLU modules (``relu1``, ``relu2``[, ``relu3``]) instead of one reused ``relu``, so forward hooks
on activations fire once per activation; this has no parameters and changes no state-dict key.

``small_input=True`` swaps the stem for small images (32×32 CIFAR, 64×64 Tiny ImageNet): ``conv1`` becomes 3×3
stride 1 and ``maxpool`` an ``nn.Identity``, the usual CIFAR adaptation of these networks.
"""

from __future__ import annotations

import torch
from torch import nn

from connprune.models.registry import boolean, init_weights, register
from connprune.models.resnet_cifar import BasicBlock, projection_shortcut


class Bottleneck(nn.Module):
    """ResNet-50 block: 1×1 reduce, 3×3 (carrying the stride), 1×1 expand (×4), and a shortcut."""

    expansion = 4

    def __init__(self, in_planes: int, planes: int, stride: int = 1) -> None:
        super().__init__()
        out_planes = planes * self.expansion
        self.conv1 = nn.Conv2d(in_planes, planes, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(planes)
        self.relu1 = nn.ReLU(inplace=False)
        self.conv2 = nn.Conv2d(planes, planes, 3, stride=stride, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(planes)
        self.relu2 = nn.ReLU(inplace=False)
        self.conv3 = nn.Conv2d(planes, out_planes, 1, bias=False)
        self.bn3 = nn.BatchNorm2d(out_planes)
        self.downsample = projection_shortcut(in_planes, out_planes, stride)
        self.relu3 = nn.ReLU(inplace=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        identity = x if self.downsample is None else self.downsample(x)
        out = self.relu1(self.bn1(self.conv1(x)))
        out = self.relu2(self.bn2(self.conv2(out)))
        out = self.bn3(self.conv3(out))
        out = out + identity
        return self.relu3(out)


class ImageNetResNet(nn.Module):
    """torchvision-layout ResNet built from ``block`` with ``layers`` blocks per stage."""

    def __init__(self, block: type[BasicBlock] | type[Bottleneck], layers: list[int], num_classes: int = 1000,
                 in_channels: int = 3, small_input: bool = False) -> None:
        super().__init__()
        if small_input:
            self.conv1 = nn.Conv2d(in_channels, 64, 3, stride=1, padding=1, bias=False)
        else:
            self.conv1 = nn.Conv2d(in_channels, 64, 7, stride=2, padding=3, bias=False)
        self.bn1 = nn.BatchNorm2d(64)
        self.relu = nn.ReLU(inplace=False)
        self.maxpool = nn.Identity() if small_input else nn.MaxPool2d(3, stride=2, padding=1)
        self._in_planes = 64
        self.layer1 = self._stage(block, 64, layers[0], stride=1)
        self.layer2 = self._stage(block, 128, layers[1], stride=2)
        self.layer3 = self._stage(block, 256, layers[2], stride=2)
        self.layer4 = self._stage(block, 512, layers[3], stride=2)
        del self._in_planes
        self.avgpool = nn.AdaptiveAvgPool2d(1)
        self.flatten = nn.Flatten()
        self.fc = nn.Linear(512 * block.expansion, num_classes)
        init_weights(self)

    def _stage(self, block, planes: int, blocks: int, stride: int) -> nn.Sequential:
        layers = [block(self._in_planes, planes, stride)]
        self._in_planes = planes * block.expansion
        layers += [block(self._in_planes, planes, 1) for _ in range(blocks - 1)]
        return nn.Sequential(*layers)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.maxpool(self.relu(self.bn1(self.conv1(x))))
        x = self.layer4(self.layer3(self.layer2(self.layer1(x))))
        return self.fc(self.flatten(self.avgpool(x)))


def _builder(block, layers: list[int]):
    def build(*, num_classes: int, in_channels: int, input_size: int, small_input: bool) -> ImageNetResNet:
        del input_size  # the architecture does not depend on it (global average pooling)
        return ImageNetResNet(block, layers, num_classes=num_classes, in_channels=in_channels,
                              small_input=small_input)

    return build


register("resnet18", family="resnet-imagenet", build=_builder(BasicBlock, [2, 2, 2, 2]), num_classes=1000,
         in_channels=3, input_size=224, extra={"small_input": (False, boolean)},
         description="ResNet-18, torchvision ImageNet layout (He et al. 2016); small_input: 3×3 stem, no maxpool")
register("resnet50", family="resnet-imagenet", build=_builder(Bottleneck, [3, 4, 6, 3]), num_classes=1000,
         in_channels=3, input_size=224, extra={"small_input": (False, boolean)},
         description="ResNet-50, torchvision ImageNet layout (He et al. 2016); small_input: 3×3 stem, no maxpool")
