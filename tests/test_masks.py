"""Masks stay enforced through fine-tuning: masked weights and their optimiser state stay exactly zero."""

from __future__ import annotations

import pytest
import torch

from connprune import methods
from connprune.errors import UserError
from connprune.experiments.jobs import build_model
from connprune.methods import PruneData
from connprune.surgery import MaskEnforcer, apply, apply_masks
from connprune.train import Trainer, default_recipe


@pytest.mark.parametrize("optimizer", ["sgd", "adam"])
def test_masked_weights_stay_zero_after_finetuning(digits_train, digits_test, optimizer):
    model = build_model("lenet5", digits_train.info, seed=0)
    result = methods.create("magnitude").prune(model, 0.8, PruneData())
    model, masks = apply(model, result, shrink=False)
    recipe = default_recipe("digits", epochs=2, optimizer=optimizer, weight_decay=1e-3,
                            lr=0.01 if optimizer == "adam" else 0.05)
    trainer = Trainer(model, digits_train, digits_test, recipe, progress=False)
    MaskEnforcer(model, masks, trainer.optimizer)
    trainer.fit()
    parameters = dict(model.named_parameters())
    for name, mask in masks.items():
        assert torch.all(parameters[name][~mask] == 0), name
        for state in trainer.optimizer.state[parameters[name]].values():
            if isinstance(state, torch.Tensor) and state.shape == mask.shape:
                assert torch.all(state[~mask] == 0), name
        assert parameters[name][mask].abs().sum() > 0


def test_bad_masks_are_refused(digits_train):
    model = build_model("mlp", digits_train.info, seed=0)
    with pytest.raises(UserError, match="does not have"):
        apply_masks(model, {"nope.weight": torch.ones(2)})
    name, weight = next(iter(model.named_parameters()))
    with pytest.raises(UserError, match="has shape"):
        apply_masks(model, {name: torch.ones(3)})
