"""Cost: parameter counts and MACs (FlopCounterMode // 2), mode restoring, reference numbers."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from connprune import models
from connprune.measure import Cost, cost, count_params


def test_resnet20_cost():
    measured = cost(models.create("resnet20"), (3, 32, 32))
    assert measured == Cost(params=272_474, macs=measured.macs)
    assert measured.macs == pytest.approx(41e6, rel=0.03)  # He et al.'s ResNet-20: ≈ 41 M MACs


def test_resnet18_cost_at_224():
    measured = cost(models.create("resnet18"), (3, 224, 224))
    assert measured.params == 11_689_512
    assert measured.macs == pytest.approx(1.82e9, rel=0.01)  # torchvision: 1.81 GMACs


def test_exact_macs_of_linear_and_conv_layers():
    assert cost(models.create("lenet300-100"), (1, 28, 28)) == Cost(params=266_610, macs=784 * 300 + 300 * 100 + 1000)
    conv = nn.Conv2d(3, 8, 3, padding=1)  # bias and activations are not counted
    assert cost(nn.Sequential(conv, nn.ReLU()), (3, 10, 10)) == Cost(params=8 * 3 * 9 + 8, macs=8 * 3 * 9 * 100)
    depthwise = nn.Conv2d(8, 8, 3, padding=1, groups=8, bias=False)
    assert cost(depthwise, (8, 10, 10)).macs == 8 * 9 * 100
    assert cost(nn.Sequential(nn.Flatten(), nn.BatchNorm1d(12)), (3, 2, 2)).macs == 0


def test_training_flags_are_restored():
    model = models.create("resnet20").train()
    model.layer1.eval()  # mixed modes come back as they were
    running_mean = model.bn1.running_mean.clone()
    cost(model, (3, 32, 32))
    assert model.training and model.layer2.training and not model.layer1.training
    assert not any(m.training for m in model.layer1.modules())
    assert torch.equal(model.bn1.running_mean, running_mean)  # eval mode: BN statistics untouched
    assert all(p.grad is None for p in model.parameters())


def test_flags_restored_when_forward_fails():
    model = models.create("lenet5").train()
    with pytest.raises(RuntimeError):
        cost(model, (1, 10, 10))  # fc1 expects 28×28 inputs
    assert all(m.training for m in model.modules())


def test_count_params_counts_shared_parameters_once():
    shared = nn.Linear(4, 4)
    model = nn.Sequential(shared, nn.ReLU(), shared)
    assert count_params(model) == 20
    assert cost(nn.Flatten(), (1, 2, 2)) == Cost(params=0, macs=0)
    frozen = nn.Linear(3, 2)
    frozen.requires_grad_(False)
    assert count_params(frozen) == 8  # all parameters, trainable or not
