"""Equal budgets: ``--sparsity S`` counted after surgery is S to within one selection unit, for every method.

The oracle is a plain count: the non-zero conv/linear weights (skip branches included) of the model that
``surgery.apply`` returns, physically shrunk or masked, against ``round(S·N)`` pruned of the ``N`` the model had.
"""

from __future__ import annotations

import copy

import pytest
import torch

from connprune import methods, models, surgery
from connprune.measure.sparsity import count_nonzero, count_prunable
from connprune.methods import PruneData
from connprune.train import Trainer, default_recipe

SHAPE = (1, 8, 8)
MASK_METHODS = [("magnitude", {}), ("magnitude", {"scope": "layer"}), ("random", {}), ("snip", {}),
                ("gcnet", {"probe_per_class": 10}), ("mint", {"samples_per_class": 20}),
                ("snacs", {"samples_per_class": 20, "constraint_samples": 100, "protect_fraction": 0.0,
                           "keep_connected": False}), ("n2nskip", {"base": "random"})]
STRUCTURED = [("l1-filter", {}), ("random", {"structured": True})]
TRAINING = [("kfac", {"stat_every": 5, "eig_every": 10}), ("group-l1", {}), ("l1-reg", {})]


def _trained(name: str, digits_train) -> torch.nn.Module:
    torch.manual_seed(0)
    model = models.create(name, num_classes=10, in_channels=1, input_size=8)
    Trainer(model, digits_train, None, default_recipe("digits", epochs=1), progress=False, device="cpu").fit()
    return model.eval()


@pytest.fixture(scope="module")
def trained(digits_train) -> dict[str, torch.nn.Module]:
    return {name: _trained(name, digits_train) for name in ("mlp", "resnet20")}


def _achieved(model: torch.nn.Module, result: methods.PruningResult, shrink: bool, reference: int) -> float:
    pruned, masks = surgery.apply(copy.deepcopy(model) if result.model is None else result.model, result,
                                  shrink=shrink, example_inputs=SHAPE)
    return 1.0 - count_nonzero(pruned, masks, include_skips=True) / reference


def _check(method: str, params: dict, model: torch.nn.Module, sparsity: float, data: PruneData) -> None:
    reference = count_prunable(model)
    pruner = methods.create(method, **params)
    result = pruner.prune(model, sparsity, data)
    unit = int(result.info.get("budget_unit", 1))
    for shrink in (True, False):
        if shrink is False and result.model is not None:
            continue  # a trained result is applied once
        achieved = _achieved(model, result, shrink, reference)
        off = round((achieved - sparsity) * reference)
        assert abs(off) <= unit, (method, params, sparsity, shrink, achieved, off, unit, result.info.get("budget_note"))
        assert result.info["expected_sparsity"] == pytest.approx(achieved, abs=0.5 / reference)


@pytest.mark.parametrize("sparsity", [0.5, 0.95])
@pytest.mark.parametrize("method,params", MASK_METHODS + STRUCTURED)
@pytest.mark.parametrize("name", ["mlp", "resnet20"])
def test_achieved_equals_target_within_one_unit(trained, digits_train, name, method, params, sparsity):
    _check(method, params, trained[name], sparsity, PruneData(train=digits_train, example_inputs=SHAPE))


@pytest.mark.parametrize("method,params", TRAINING)
def test_training_methods_meet_the_budget_after_surgery(digits_train, method, params):
    torch.manual_seed(0)
    model = models.create("mlp", num_classes=10, in_channels=1, input_size=8)
    data = PruneData(train=digits_train, recipe=default_recipe("digits", epochs=2), example_inputs=SHAPE)
    _check(method, params, model, 0.8, data)


@pytest.mark.slow
@pytest.mark.parametrize("sparsity", [0.5, 0.8, 0.9, 0.95, 0.98])
@pytest.mark.parametrize("method,params", MASK_METHODS + STRUCTURED)
@pytest.mark.parametrize("name", ["mlp", "lenet5", "vgg11", "resnet20", "mobilenetv2"])
def test_every_method_every_small_zoo_model_every_sparsity(digits_train, name, method, params, sparsity):
    _check(method, params, _trained(name, digits_train), sparsity,
           PruneData(train=digits_train, example_inputs=SHAPE))


def test_an_unreachable_target_is_reported_not_hidden(trained, digits_train):
    """SNACS keeps its protected filters and each child group's best input: at 95 % that leaves too little to
    prune. It prunes all it may, says so (info and a warning) and reports the sparsity it ends at."""
    model = trained["mlp"]
    with pytest.warns(UserWarning, match="nearest sparsity"):
        result = methods.create("snacs", samples_per_class=20, constraint_samples=100).prune(
            model, 0.95, PruneData(train=digits_train, example_inputs=SHAPE))
    assert "protected filters" in result.info["budget_note"] and result.info["expected_sparsity"] < 0.95
    achieved = _achieved(model, result, True, count_prunable(model))
    assert result.info["expected_sparsity"] == pytest.approx(achieved, abs=1e-6)


def test_kind_names_the_selection_unit():
    assert methods.get("gcnet").kind.value == "connection"
    assert methods.get("magnitude").kind.value == "unstructured"
    assert methods.get("l1-filter").kind.value == "structured"
    assert methods.names()[:4] == ["random", "magnitude", "l1-filter", "snip"]  # baselines first
