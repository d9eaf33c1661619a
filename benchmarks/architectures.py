"""Image classifiers outside connprune's zoo, written after the published definitions of the torchvision and timm
families (torchvision and timm cannot be imported on this machine: their wheels need a CUDA build of torch).

Each is small (a few hundred thousand parameters at most) but keeps the coupling that makes its family hard to
prune: concatenations (DenseNet, Inception, SqueezeNet), channel split and shuffle (ShuffleNetV2), grouped
convolutions (ResNeXt, RegNet), squeeze-and-excitation and hard-swish (MobileNetV3, EfficientNet), GroupNorm
(a GroupNorm ResNet), LayerNorm over permuted channels and layer scale (ConvNeXt), attention, position embeddings
and a class token (ViT), token-mixing MLPs (MLP-Mixer). All take 3×32×32 inputs and return 10 logits.

References: Huang et al., DenseNet (CVPR 2017); Szegedy et al., Inception v1 (CVPR 2015); Iandola et al., SqueezeNet
(arXiv 1602.07360); Xie et al., ResNeXt (CVPR 2017); Radosavovic et al., RegNet (CVPR 2020); Ma et al., ShuffleNetV2
(ECCV 2018); Howard et al., MobileNetV3 (ICCV 2019); Tan & Le, EfficientNet (ICML 2019); Liu et al., ConvNeXt (CVPR
2022); Wu & He, Group Normalization (ECCV 2018); Dosovitskiy et al., ViT (ICLR 2021); Tolstikhin et al., MLP-Mixer
(NeurIPS 2021).
"""

from __future__ import annotations

from collections.abc import Callable

import torch
import torch.nn.functional as F
from torch import nn


def conv_bn(cin: int, cout: int, k: int = 3, stride: int = 1, groups: int = 1, act: bool = True) -> nn.Sequential:
    layers = [nn.Conv2d(cin, cout, k, stride, k // 2, groups=groups, bias=False), nn.BatchNorm2d(cout)]
    return nn.Sequential(*layers, nn.ReLU(inplace=True)) if act else nn.Sequential(*layers)


class Head(nn.Module):
    """Global average pooling and a linear classifier."""

    def __init__(self, channels: int, classes: int = 10) -> None:
        super().__init__()
        self.fc = nn.Linear(channels, classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(F.adaptive_avg_pool2d(x, 1).flatten(1))


# --------------------------------------------------------------------------------------------------- concatenation


class DenseLayer(nn.Module):
    """BN-ReLU-conv1x1-BN-ReLU-conv3x3, its output concatenated to its input (DenseNet-BC)."""

    def __init__(self, cin: int, growth: int) -> None:
        super().__init__()
        self.bn1, self.conv1 = nn.BatchNorm2d(cin), nn.Conv2d(cin, 4 * growth, 1, bias=False)
        self.bn2, self.conv2 = nn.BatchNorm2d(4 * growth), nn.Conv2d(4 * growth, growth, 3, padding=1, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.conv1(F.relu(self.bn1(x)))
        return torch.cat([x, self.conv2(F.relu(self.bn2(out)))], 1)


class DenseNet(nn.Module):
    def __init__(self, growth: int = 8, layers: tuple[int, ...] = (3, 3)) -> None:
        super().__init__()
        channels = 2 * growth
        blocks: list[nn.Module] = [nn.Conv2d(3, channels, 3, padding=1, bias=False)]
        for i, count in enumerate(layers):
            for _ in range(count):
                blocks.append(DenseLayer(channels, growth))
                channels += growth
            if i < len(layers) - 1:  # transition: BN-ReLU-conv1x1-avgpool, halving the channels
                blocks += [nn.BatchNorm2d(channels), nn.ReLU(), nn.Conv2d(channels, channels // 2, 1, bias=False),
                           nn.AvgPool2d(2)]
                channels //= 2
        self.features = nn.Sequential(*blocks, nn.BatchNorm2d(channels), nn.ReLU())
        self.head = Head(channels)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.features(x))


class InceptionBlock(nn.Module):
    """Four branches (1x1; 1x1→3x3; 1x1→5x5; pool→1x1) concatenated (GoogLeNet)."""

    def __init__(self, cin: int, c1: int, c3: tuple[int, int], c5: tuple[int, int], cp: int) -> None:
        super().__init__()
        self.b1 = conv_bn(cin, c1, 1)
        self.b3 = nn.Sequential(conv_bn(cin, c3[0], 1), conv_bn(c3[0], c3[1], 3))
        self.b5 = nn.Sequential(conv_bn(cin, c5[0], 1), conv_bn(c5[0], c5[1], 5))
        self.bp = nn.Sequential(nn.MaxPool2d(3, 1, 1), conv_bn(cin, cp, 1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.cat([self.b1(x), self.b3(x), self.b5(x), self.bp(x)], 1)


class Inception(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.stem = conv_bn(3, 32, 3)
        self.a = InceptionBlock(32, 16, (16, 24), (8, 8), 8)
        self.b = InceptionBlock(56, 24, (24, 32), (8, 16), 16)
        self.head = Head(88)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.b(F.max_pool2d(self.a(self.stem(x)), 2)))


class Fire(nn.Module):
    """squeeze 1x1 → expand 1x1 ‖ expand 3x3, concatenated (SqueezeNet)."""

    def __init__(self, cin: int, squeeze: int, expand: int) -> None:
        super().__init__()
        self.squeeze = nn.Conv2d(cin, squeeze, 1)
        self.expand1 = nn.Conv2d(squeeze, expand, 1)
        self.expand3 = nn.Conv2d(squeeze, expand, 3, padding=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = F.relu(self.squeeze(x))
        return torch.cat([F.relu(self.expand1(x)), F.relu(self.expand3(x))], 1)


class SqueezeNet(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.features = nn.Sequential(nn.Conv2d(3, 32, 3, padding=1), nn.ReLU(), Fire(32, 8, 16), Fire(32, 8, 16),
                                      nn.MaxPool2d(2), Fire(32, 12, 24), Fire(48, 12, 24))
        self.classifier = nn.Sequential(nn.Conv2d(48, 10, 1), nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten())

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.classifier(self.features(x))


# ----------------------------------------------------------------------------------------------------- groups


class Bottleneck(nn.Module):
    """1x1 → grouped 3x3 → 1x1 with a residual add; ``norm`` BatchNorm or GroupNorm; optional SE (RegNetY)."""

    def __init__(self, cin: int, width: int, cout: int, groups: int, stride: int = 1,
                 norm: Callable[[int], nn.Module] = nn.BatchNorm2d, se: bool = False) -> None:
        super().__init__()
        self.conv1, self.n1 = nn.Conv2d(cin, width, 1, bias=False), norm(width)
        self.conv2 = nn.Conv2d(width, width, 3, stride, 1, groups=groups, bias=False)
        self.n2 = norm(width)
        self.se = SqueezeExcite(width, max(4, width // 4)) if se else nn.Identity()
        self.conv3, self.n3 = nn.Conv2d(width, cout, 1, bias=False), norm(cout)
        self.down = nn.Sequential(nn.Conv2d(cin, cout, 1, stride, bias=False), norm(cout)) \
            if stride != 1 or cin != cout else nn.Identity()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = F.relu(self.n1(self.conv1(x)))
        out = self.se(F.relu(self.n2(self.conv2(out))))
        return F.relu(self.n3(self.conv3(out)) + self.down(x))


class ResNeXt(nn.Module):
    """ResNeXt-style (cardinality 8) or, with ``se=True`` and group width 8, a RegNetY-style network."""

    def __init__(self, cardinality: int = 8, se: bool = False) -> None:
        super().__init__()
        self.stem = conv_bn(3, 32)
        self.blocks = nn.Sequential(Bottleneck(32, 32, 64, cardinality, se=se),
                                    Bottleneck(64, 32, 64, cardinality, se=se),
                                    Bottleneck(64, 64, 128, cardinality, 2, se=se))
        self.head = Head(128)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.blocks(self.stem(x)))


class GroupNormResNet(nn.Module):
    """A ResNet with GroupNorm (8 groups) instead of BatchNorm (Wu & He 2018)."""

    def __init__(self) -> None:
        super().__init__()
        gn = lambda c: nn.GroupNorm(8, c)  # noqa: E731
        self.stem = nn.Sequential(nn.Conv2d(3, 32, 3, padding=1, bias=False), gn(32), nn.ReLU())
        self.blocks = nn.Sequential(Bottleneck(32, 16, 32, 1, norm=gn), Bottleneck(32, 32, 64, 1, 2, norm=gn))
        self.head = Head(64)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.blocks(self.stem(x)))


def channel_shuffle(x: torch.Tensor, groups: int) -> torch.Tensor:
    n, c, h, w = x.shape
    return x.view(n, groups, c // groups, h, w).transpose(1, 2).reshape(n, c, h, w)


class ShuffleUnit(nn.Module):
    """ShuffleNetV2 unit: split the channels, transform one half (1x1, depthwise 3x3, 1x1), concat, shuffle."""

    def __init__(self, channels: int) -> None:
        super().__init__()
        half = channels // 2
        self.branch = nn.Sequential(conv_bn(half, half, 1), conv_bn(half, half, 3, groups=half, act=False),
                                    conv_bn(half, half, 1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        left, right = x.chunk(2, dim=1)
        return channel_shuffle(torch.cat([left, self.branch(right)], 1), 2)


class ShuffleNetV2(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.stem = conv_bn(3, 48)
        self.units = nn.Sequential(ShuffleUnit(48), ShuffleUnit(48), nn.MaxPool2d(2), ShuffleUnit(48))
        self.last = conv_bn(48, 96, 1)
        self.head = Head(96)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.last(self.units(self.stem(x))))


# ------------------------------------------------------------------------------------------------ SE, hard-swish


class SqueezeExcite(nn.Module):
    def __init__(self, channels: int, reduced: int, gate: Callable[[torch.Tensor], torch.Tensor] = torch.sigmoid
                 ) -> None:
        super().__init__()
        self.reduce, self.expand, self.gate = nn.Conv2d(channels, reduced, 1), nn.Conv2d(reduced, channels, 1), gate

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x * self.gate(self.expand(F.relu(self.reduce(F.adaptive_avg_pool2d(x, 1)))))


class InvertedResidual(nn.Module):
    """expand 1x1 → depthwise → SE → project 1x1, residual where shapes allow (MobileNetV3, EfficientNet MBConv)."""

    def __init__(self, cin: int, expand: int, cout: int, stride: int, act: type[nn.Module]) -> None:
        super().__init__()
        self.expand = nn.Sequential(nn.Conv2d(cin, expand, 1, bias=False), nn.BatchNorm2d(expand), act())
        self.depthwise = nn.Sequential(nn.Conv2d(expand, expand, 3, stride, 1, groups=expand, bias=False),
                                       nn.BatchNorm2d(expand), act())
        self.se = SqueezeExcite(expand, max(8, expand // 4), F.hardsigmoid if act is nn.Hardswish else torch.sigmoid)
        self.project = nn.Sequential(nn.Conv2d(expand, cout, 1, bias=False), nn.BatchNorm2d(cout))
        self.residual = stride == 1 and cin == cout

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.project(self.se(self.depthwise(self.expand(x))))
        return x + out if self.residual else out


class MobileNetV3(nn.Module):
    def __init__(self, act: type[nn.Module] = nn.Hardswish) -> None:
        super().__init__()
        self.stem = nn.Sequential(nn.Conv2d(3, 16, 3, padding=1, bias=False), nn.BatchNorm2d(16), act())
        self.blocks = nn.Sequential(InvertedResidual(16, 64, 24, 2, act), InvertedResidual(24, 72, 24, 1, act),
                                    InvertedResidual(24, 96, 40, 2, act), InvertedResidual(40, 120, 40, 1, act))
        self.last = nn.Sequential(nn.Conv2d(40, 160, 1, bias=False), nn.BatchNorm2d(160), act())
        self.head = Head(160)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.last(self.blocks(self.stem(x))))


def efficientnet() -> MobileNetV3:
    """An EfficientNet-B0-style network: the same MBConv blocks with SiLU (swish) and sigmoid SE gates."""
    return MobileNetV3(act=nn.SiLU)


# ----------------------------------------------------------------------------------------------- norms over channels


class LayerNorm2d(nn.LayerNorm):
    """LayerNorm over the channels of an NCHW tensor, by permuting to NHWC (timm's ConvNeXt)."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return super().forward(x.permute(0, 2, 3, 1)).permute(0, 3, 1, 2)


class ConvNeXtBlock(nn.Module):
    """depthwise 7x7 → LayerNorm (channels last) → Linear 4× → GELU → Linear → layer scale γ → residual."""

    def __init__(self, channels: int) -> None:
        super().__init__()
        self.dwconv = nn.Conv2d(channels, channels, 7, padding=3, groups=channels)
        self.norm = nn.LayerNorm(channels)
        self.pw1, self.pw2 = nn.Linear(channels, 4 * channels), nn.Linear(4 * channels, channels)
        self.gamma = nn.Parameter(1e-6 * torch.ones(channels))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.norm(self.dwconv(x).permute(0, 2, 3, 1))
        out = self.gamma * self.pw2(F.gelu(self.pw1(out)))
        return x + out.permute(0, 3, 1, 2)


class ConvNeXt(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.stem = nn.Sequential(nn.Conv2d(3, 32, 4, 4), LayerNorm2d(32))
        self.stage1 = nn.Sequential(ConvNeXtBlock(32), ConvNeXtBlock(32))
        self.down = nn.Sequential(LayerNorm2d(32), nn.Conv2d(32, 64, 2, 2))
        self.stage2 = nn.Sequential(ConvNeXtBlock(64))
        self.norm, self.fc = nn.LayerNorm(64), nn.Linear(64, 10)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.stage2(self.down(self.stage1(self.stem(x))))
        return self.fc(self.norm(x.mean((2, 3))))


# --------------------------------------------------------------------------------------------------- tokens


class TransformerBlock(nn.Module):
    def __init__(self, dim: int, heads: int) -> None:
        super().__init__()
        self.norm1, self.attn = nn.LayerNorm(dim), nn.MultiheadAttention(dim, heads, batch_first=True)
        self.norm2 = nn.LayerNorm(dim)
        self.mlp = nn.Sequential(nn.Linear(dim, 2 * dim), nn.GELU(), nn.Linear(2 * dim, dim))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.norm1(x)
        x = x + self.attn(y, y, y, need_weights=False)[0]
        return x + self.mlp(self.norm2(x))


class ViT(nn.Module):
    """Patch embedding (4x4), class token, learned position embeddings, pre-norm transformer blocks."""

    def __init__(self, dim: int = 64, depth: int = 2, heads: int = 4) -> None:
        super().__init__()
        self.patch = nn.Conv2d(3, dim, 4, 4)
        self.cls = nn.Parameter(torch.zeros(1, 1, dim))
        self.pos = nn.Parameter(0.02 * torch.randn(1, 65, dim))
        self.blocks = nn.Sequential(*[TransformerBlock(dim, heads) for _ in range(depth)])
        self.norm, self.fc = nn.LayerNorm(dim), nn.Linear(dim, 10)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        tokens = self.patch(x).flatten(2).transpose(1, 2)
        tokens = torch.cat([self.cls.expand(len(x), -1, -1), tokens], 1) + self.pos
        return self.fc(self.norm(self.blocks(tokens))[:, 0])


class MixerBlock(nn.Module):
    def __init__(self, tokens: int, dim: int) -> None:
        super().__init__()
        self.norm1, self.norm2 = nn.LayerNorm(dim), nn.LayerNorm(dim)
        self.token_mlp = nn.Sequential(nn.Linear(tokens, 2 * tokens), nn.GELU(), nn.Linear(2 * tokens, tokens))
        self.channel_mlp = nn.Sequential(nn.Linear(dim, 2 * dim), nn.GELU(), nn.Linear(2 * dim, dim))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x + self.token_mlp(self.norm1(x).transpose(1, 2)).transpose(1, 2)
        return x + self.channel_mlp(self.norm2(x))


class MLPMixer(nn.Module):
    def __init__(self, dim: int = 64, depth: int = 2) -> None:
        super().__init__()
        self.patch = nn.Conv2d(3, dim, 4, 4)
        self.blocks = nn.Sequential(*[MixerBlock(64, dim) for _ in range(depth)])
        self.norm, self.fc = nn.LayerNorm(dim), nn.Linear(dim, 10)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        tokens = self.patch(x).flatten(2).transpose(1, 2)
        return self.fc(self.norm(self.blocks(tokens)).mean(1))


ARCHITECTURES: dict[str, Callable[[], nn.Module]] = {
    "densenet": DenseNet, "inception": Inception, "squeezenet": SqueezeNet, "resnext": ResNeXt,
    "regnet": lambda: ResNeXt(cardinality=4, se=True), "shufflenetv2": ShuffleNetV2, "mobilenetv3": MobileNetV3,
    "efficientnet": efficientnet, "convnext": ConvNeXt, "groupnorm-resnet": GroupNormResNet, "vit": ViT,
    "mlp-mixer": MLPMixer,
}
"""Name → builder (3×32×32 inputs, 10 classes)."""
