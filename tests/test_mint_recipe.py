"""MINT's MNIST-MLP setting (docs/methods/mint.md §4): ``mlp-500-300`` with dropout 0.2, and the named recipe."""

from __future__ import annotations

import pytest
import torch

from connprune import models
from connprune.errors import UserError
from connprune.train import default_recipe
from connprune.train.recipes import RECIPES
from connprune.train.trainer import learning_rate


def test_mlp_500_300_has_dropout_02_and_the_other_mlps_none():
    mint = models.create("mlp-500-300")
    assert mint.dropout == 0.2 and models.create("mlp").dropout == 0.0
    assert models.create("lenet300-100").dropout == 0.0 and models.create("mlp", dropout=0.5).dropout == 0.5
    x = torch.randn(512, 1, 28, 28, generator=torch.Generator().manual_seed(0))
    mint.train()
    hidden = {}
    mint.classifier.register_forward_pre_hook(lambda _m, args: hidden.setdefault("train", args[0]))
    mint(x)
    zeros = float((hidden["train"] == 0).double().mean())
    relu_zeros = float((mint.features(mint.flatten(x)) == 0).double().mean())
    assert zeros == pytest.approx(relu_zeros + 0.2 * (1 - relu_zeros), abs=0.01)  # 20 % of the survivors dropped
    mint.eval()
    with torch.no_grad():
        assert torch.equal(mint(x), mint(x))  # no dropout when evaluating
    assert sum(p.numel() for p in mint.parameters()) == 545_810
    assert [n for n, _ in mint.named_modules()] == [n for n, _ in models.create("mlp-500-300", dropout=0.0)
                                                    .named_modules()]  # checkpoints keep their keys
    with pytest.raises(UserError, match="dropout"):
        models.create("mlp-500-300", dropout=1.0)


def test_mint_recipe_is_the_papers():
    recipe = default_recipe("mnist", **RECIPES["mint-mnist"])
    assert (recipe.epochs, recipe.batch_size, recipe.lr, recipe.nesterov, recipe.weight_decay) == (30, 256, 0.1,
                                                                                                  True, 1e-4)
    steps_per_epoch = 235  # 60,000 / 256
    total = 30 * steps_per_epoch
    rates = [learning_rate(recipe, epoch * steps_per_epoch, total) for epoch in (0, 9, 10, 19, 20, 29)]
    assert rates == pytest.approx([0.1, 0.1, 0.01, 0.01, 0.001, 0.001])  # ×0.1 after epochs 10 and 20
