"""Masks compose: pruning an already pruned model keeps its zeros and counts them toward the sparsity.

As ``torch.nn.utils.prune``'s ``default_mask``: the earlier keep-mask multiplies the new one. The oracle is the earlier
mask itself (every weight it zeroed is zero in the result, before and after surgery) and a plain count of the
model's non-zero weights after surgery against the target, which includes the earlier zeros (the new pruning is not
stacked on top of them).
"""

from __future__ import annotations

import copy

import pytest
import torch

from connprune import methods, models, surgery
from connprune.measure.sparsity import count_nonzero, count_prunable, prunable_weights
from connprune.methods import PruneData
from connprune.train import Trainer, default_recipe

SHAPE = (1, 8, 8)
EARLIER = 0.3
ONE_SHOT = [("magnitude", {}), ("random", {}), ("snip", {}), ("gcnet", {"probe_per_class": 10}),
            ("mint", {"samples_per_class": 20}), ("l1-filter", {}), ("random", {"structured": True}),
            ("snacs", {"samples_per_class": 20, "constraint_samples": 100, "protect_fraction": 0.0,
                       "keep_connected": False}), ("n2nskip", {"base": "random"})]
TRAINING = [("kfac", {"stat_every": 5, "eig_every": 10}), ("group-l1", {}), ("l1-reg", {}),
            ("network-slimming", {})]


def _pruned_once(name: str, digits_train) -> tuple[torch.nn.Module, dict[str, torch.Tensor]]:
    """A trained model with 30% of its weights removed by random unstructured pruning (the earlier masks)."""
    torch.manual_seed(0)
    model = models.create(name, num_classes=10, in_channels=1, input_size=8)
    Trainer(model, digits_train, None, default_recipe("digits", epochs=1), progress=False, device="cpu").fit()
    result = methods.create("random", seed=3).prune(model.eval(), EARLIER, PruneData(example_inputs=SHAPE))
    return surgery.apply_masks(model, result.masks), result.masks


@pytest.fixture(scope="module")
def pruned_once(digits_train):
    return _pruned_once("mlp", digits_train)


def _check_kept(model: torch.nn.Module, earlier: dict[str, torch.Tensor], result: methods.PruningResult,
                sparsity: float, reference: int, unit: int) -> None:
    trained = result.model if result.model is not None else copy.deepcopy(model)
    for name, mask in earlier.items():        # every earlier zero is pruned in the new masks
        assert not (result.masks[name] & ~mask).any(), name
    masked = surgery.apply_masks(copy.deepcopy(trained), result.masks)
    weights = prunable_weights(masked)
    for name, mask in earlier.items():
        assert (weights[name][~mask] == 0).all(), name
    smaller, masks = surgery.apply(copy.deepcopy(trained), result, example_inputs=SHAPE)
    off = (reference - count_nonzero(smaller, masks, include_skips=True)) - round(sparsity * reference)
    assert abs(off) <= unit, (off, unit, result.info.get("budget_note"))


@pytest.mark.parametrize("method,params", ONE_SHOT)
def test_one_shot_methods_keep_earlier_zeros_and_count_them(pruned_once, digits_train, method, params):
    model, earlier = pruned_once
    reference = count_prunable(model)
    result = methods.create(method, **params).prune(
        model, 0.6, PruneData(train=digits_train, example_inputs=SHAPE, masks=earlier))
    _check_kept(model, earlier, result, 0.6, reference, int(result.info.get("budget_unit", 1)))


@pytest.mark.parametrize("method,params", TRAINING)
def test_training_methods_keep_earlier_zeros_while_they_train(pruned_once, digits_train, method, params):
    model, earlier = _pruned_once("resnet20", digits_train) if method == "network-slimming" else \
        (copy.deepcopy(pruned_once[0]), pruned_once[1])
    reference = count_prunable(model)
    data = PruneData(train=digits_train, recipe=default_recipe("digits", epochs=2), example_inputs=SHAPE,
                     masks=earlier)
    result = methods.create(method, **params).prune(model, 0.6, data)
    weights = prunable_weights(result.model)
    for name, mask in earlier.items():  # held at zero by the enforcer during training, not only masked at the end
        assert (weights[name][~mask] == 0).all(), name
    _check_kept(model, earlier, result, 0.6, reference, int(result.info.get("budget_unit", 1)))


def test_a_layer_merging_method_keeps_earlier_zeros_of_the_layers_it_keeps(digits_train):
    torch.manual_seed(0)
    model = models.create("mlp", num_classes=10, in_channels=1, input_size=8, widths=[64, 64, 64])
    earlier = methods.create("random", seed=1).prune(model, EARLIER, PruneData(example_inputs=SHAPE)).masks
    surgery.apply_masks(model, earlier)
    data = PruneData(train=digits_train, recipe=default_recipe("digits", epochs=3), example_inputs=SHAPE,
                     masks=earlier)
    result = methods.create("layer-sparsity", lam=0.05).prune(model, "auto", data)
    trained = prunable_weights(result.model)
    kept = [name for name in earlier if name in trained]
    assert kept
    for name in kept:
        assert not (result.masks[name] & ~earlier[name]).any(), name
        assert (trained[name][~earlier[name]] == 0).all(), name
