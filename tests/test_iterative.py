"""Iterative pruning (``--steps K``): K prune steps with training between them reach the target counted on the
original model. Oracles: Zhu & Gupta's cubic schedule in closed form, and a plain count of non-zero weights of the
final, physically shrunk model against the original's."""

from __future__ import annotations

import copy

import pytest
import torch

from connprune import methods, models
from connprune.errors import UserError
from connprune.experiments.config import expand, load_config
from connprune.measure.sparsity import count_nonzero, count_prunable
from connprune.methods import PruneData
from connprune.methods.iterative import prune_in_steps, step_targets
from connprune.surgery import MaskEnforcer
from connprune.train import Trainer, default_recipe

SHAPE = (1, 8, 8)


def test_cubic_and_linear_step_targets_in_closed_form():
    assert step_targets(0.9, 3, "cubic") == pytest.approx([0.9 * (1 - 8 / 27), 0.9 * (1 - 1 / 27), 0.9])
    assert step_targets(0.9, 3, "linear") == pytest.approx([0.3, 0.6, 0.9])
    assert step_targets(0.5, 1) == [0.5]
    with pytest.raises(UserError, match="at least 1"):
        step_targets(0.5, 0)


@pytest.fixture(scope="module")
def trained(digits_train):
    torch.manual_seed(0)
    model = models.create("mlp", num_classes=10, in_channels=1, input_size=8)
    Trainer(model, digits_train, None, default_recipe("digits", epochs=1), progress=False, device="cpu").fit()
    return model.eval()


@pytest.mark.parametrize("method", ["magnitude", "l1-filter", "snip"])
def test_each_step_reaches_its_target_of_the_original_weights(trained, digits_train, method):
    reference = count_prunable(trained)
    calls = []

    def between(model, masks, step):  # a fine-tune: the trained weights move, the masked ones stay zero
        calls.append((step, count_nonzero(model, masks)))
        trainer = Trainer(model, digits_train, None, default_recipe("digits", epochs=1), progress=False, device="cpu")
        MaskEnforcer(model, masks, trainer.optimizer)
        trainer.fit()

    original = copy.deepcopy(trained.state_dict())
    pruned, masks, result = prune_in_steps(methods.create(method), trained, 0.9, PruneData(
        train=digits_train, example_inputs=SHAPE), steps=3, between=between)
    assert all(torch.equal(v, trained.state_dict()[k]) for k, v in original.items())  # the input is left as it was
    unit = int(result.info.get("budget_unit", 1))
    for row, target in zip(result.info["steps"], step_targets(0.9, 3)):
        assert abs(row["achieved"] - target) * reference <= 2 * unit + 1, row
    assert [step for step, _ in calls] == [1, 2]
    final = 1 - count_nonzero(pruned, masks) / reference
    assert abs(final - 0.9) * reference <= unit + 1


def test_methods_with_their_own_schedule_and_auto_are_refused(trained, digits_train):
    with pytest.raises(UserError, match="one-shot"):
        prune_in_steps(methods.create("kfac"), trained, 0.5, PruneData(train=digits_train), steps=2)
    with pytest.raises(UserError, match="numeric --sparsity"):
        prune_in_steps(methods.create("mint"), trained, "auto", PruneData(train=digits_train), steps=2)


def test_a_config_entry_with_steps_is_its_own_run(tmp_path):
    path = tmp_path / "c.yaml"
    path.write_text("models: [mlp]\nmethods:\n  - name: magnitude\n  - name: magnitude\n    label: magnitude-x3\n"
                    "    steps: 3\n    step-spacing: linear\nsparsities: [0.9]\n")
    runs = expand(load_config(path))
    assert [r.schedule for r in runs] == [{}, {"steps": 3, "step_spacing": "linear", "step_epochs": 1}]
    assert runs[0].key != runs[1].key
