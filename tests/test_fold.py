"""connprune.surgery.fold: BatchNorm folded into the preceding conv/linear computes what the unfolded model does."""

from __future__ import annotations

import copy

import pytest
import torch
from torch import nn

from connprune import models
from connprune.errors import UserError
from connprune.surgery.fold import fold_batchnorm, fold_pairs, foldable_batchnorms

BN = nn.modules.batchnorm._BatchNorm


def randomise_batchnorms(model: nn.Module, seed: int = 0) -> nn.Module:
    """Give every BN non-trivial statistics and affine parameters (fresh ones are the identity map)."""
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for module in model.modules():
            if isinstance(module, BN) and module.track_running_stats:
                n = module.num_features
                module.running_mean.copy_(torch.randn(n, generator=generator) * 0.5)
                module.running_var.copy_(torch.rand(n, generator=generator) * 2 + 0.1)
                if module.affine:
                    module.weight.copy_(torch.rand(n, generator=generator) * 2 - 0.5)
                    module.bias.copy_(torch.randn(n, generator=generator) * 0.5)
    return model


def relative(a: torch.Tensor, b: torch.Tensor) -> float:
    return float((a - b).abs().max() / a.abs().max())


@pytest.mark.parametrize("name", ["resnet20", "vgg11", "mobilenetv2"])
def test_folded_zoo_models_compute_the_same(name: str) -> None:
    torch.manual_seed(0)
    model = randomise_batchnorms(models.create(name, num_classes=10)).eval()
    before = copy.deepcopy(model.state_dict())
    folded = fold_batchnorm(model, (3, 32, 32))
    assert not any(isinstance(m, BN) for m in folded.modules())  # every BN of these models follows a conv
    assert any(isinstance(m, BN) for m in model.modules())
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())  # the input is not changed
    x = torch.randn(4, 3, 32, 32)
    with torch.no_grad():
        assert relative(model(x), folded(x)) < 1e-5
    assert not hasattr(folded, "connprune_arch")  # a folded model cannot pass for a rebuildable zoo model


class SharedOutput(nn.Module):
    """conv → BN, but the conv's output is also added back: folding the BN would change the shortcut."""

    def __init__(self) -> None:
        super().__init__()
        self.conv, self.bn = nn.Conv2d(3, 3, 3, padding=1), nn.BatchNorm2d(3)
        self.conv2, self.bn2 = nn.Conv2d(3, 4, 1), nn.BatchNorm2d(4)
        self.fc, self.bn1d = nn.Linear(4, 6), nn.BatchNorm1d(6)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.conv(x)
        z = self.bn2(self.conv2(self.bn(y) + y))
        return self.bn1d(self.fc(z.mean((2, 3))))


def test_only_exclusive_conv_bn_pairs_fold() -> None:
    torch.manual_seed(0)
    model = randomise_batchnorms(SharedOutput()).eval()
    pairs = {(p.layer, p.batchnorm) for p in fold_pairs(model, (3, 8, 8))}
    assert pairs == {("conv2", "bn2"), ("fc", "bn1d")}
    assert foldable_batchnorms(model, (3, 8, 8)) == (["bn2", "bn1d"], ["bn"])
    folded = fold_batchnorm(model, torch.randn(2, 3, 8, 8))
    assert isinstance(folded.bn, nn.BatchNorm2d) and isinstance(folded.bn2, nn.Identity)
    x = torch.randn(5, 3, 8, 8)
    with torch.no_grad():
        assert relative(model(x), folded(x)) < 1e-5


def test_batchnorms_that_are_not_affine_maps_of_their_layer_stay() -> None:
    # Linear acts on the last dimension, BatchNorm1d on dimension 1 of an (N, C, L) tensor: not the same features.
    model = randomise_batchnorms(nn.Sequential(nn.Linear(5, 5), nn.BatchNorm1d(4))).eval()
    assert fold_pairs(model, torch.randn(2, 4, 5)) == []
    # Without running statistics a BN normalises with the batch's, even in eval mode.
    free = nn.Sequential(nn.Linear(5, 6), nn.BatchNorm1d(6, track_running_stats=False)).eval()
    assert fold_pairs(free, (5,)) == []
    # A BN with a hook of its own would lose the hook.
    hooked = randomise_batchnorms(nn.Sequential(nn.Conv2d(2, 3, 1), nn.BatchNorm2d(3))).eval()
    hooked[1].register_forward_hook(lambda module, inputs, output: None)
    assert fold_pairs(hooked, (2, 4, 4)) == []


def test_masks_are_applied_before_folding() -> None:
    torch.manual_seed(0)
    model = randomise_batchnorms(models.create("resnet20", num_classes=10)).eval()
    masks = {name: torch.rand_like(p) > 0.5 for name, p in model.named_parameters()
             if name.endswith("weight") and p.dim() == 4}
    reference = copy.deepcopy(model)
    with torch.no_grad():
        for name, parameter in reference.named_parameters():
            if name in masks:
                parameter.mul_(masks[name])
    folded = fold_batchnorm(model, (3, 32, 32), masks=masks)
    x = torch.randn(3, 3, 32, 32)
    with torch.no_grad():
        assert relative(reference(x), folded(x)) < 1e-5
        assert relative(model(x), folded(x)) > 1e-2  # the masks really changed what it computes
    weights = dict(folded.named_parameters())
    assert all(not weights[name][~mask].any() for name, mask in masks.items())  # masked weights stay zero
    with pytest.raises(UserError, match="does not match a parameter"):
        fold_batchnorm(model, (3, 32, 32), masks={"nope.weight": torch.ones(1, dtype=torch.bool)})


def test_training_flags_of_the_input_are_kept() -> None:
    model = models.create("resnet20", num_classes=10).train()
    folded = fold_batchnorm(model, (3, 32, 32))
    assert all(m.training for m in model.modules()) and not folded.training
