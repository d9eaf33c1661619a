"""The method interface and the four baselines: exact sparsity, validation errors, structured budgets."""

from __future__ import annotations

import json

import pytest
import torch

from connprune import methods, models, surgery
from connprune.data.pipeline import Batches
from connprune.errors import UserError
from connprune.measure import importance
from connprune.measure.sparsity import count_prunable, prunable_weights
from connprune.measure.sparsity import sparsity as sparsity_of
from connprune.methods import PruneData
from connprune.surgery.shrink import plan_removal

SMALL = {  # every zoo model at a small input (the ImageNet-layout ones with their small-input stem)
    "mlp": dict(input_size=8), "lenet300-100": {}, "mlp-500-300": {}, "lenet5": dict(input_size=8),
    "vgg11": {}, "vgg13": {}, "vgg16": {}, "vgg19": {}, "resnet20": {}, "resnet32": {}, "resnet56": {},
    "resnet110": {}, "resnet18": dict(small_input=True, input_size=32, num_classes=10),
    "resnet50": dict(small_input=True, input_size=32, num_classes=10), "mobilenetv2": {},
}


def test_every_zoo_model_is_covered():
    assert set(SMALL) == set(models.names())


@pytest.mark.parametrize("name", sorted(SMALL))
def test_unstructured_sparsity_is_exact(name):
    torch.manual_seed(0)
    model = models.create(name, **SMALL[name])
    weights = prunable_weights(model)
    total = count_prunable(model)
    for method in ("magnitude", "random"):
        for scope in ("global", "layer"):
            result = methods.create(method, scope=scope).prune(model, 0.7, PruneData())
            assert set(result.masks) == set(weights)
            removed = {key: int((~mask).sum()) for key, mask in result.masks.items()}
            if scope == "layer":
                assert removed == {key: round(0.7 * w.numel()) for key, w in weights.items()}
            else:
                assert sum(removed.values()) == round(0.7 * total)
            assert sparsity_of(model, result.masks) == pytest.approx(sum(removed.values()) / total, abs=1e-12)


def test_masked_model_reports_its_sparsity():
    torch.manual_seed(0)
    model = models.create("lenet5", input_size=8)
    result = methods.create("magnitude").prune(model, 0.6, PruneData())
    pruned, masks = surgery.apply(model, result, shrink=False)
    assert sparsity_of(pruned) == pytest.approx(0.6, abs=1e-4)  # the zeros are in the weights themselves
    assert all(torch.all(dict(pruned.named_parameters())[k][~m] == 0) for k, m in masks.items())


def test_snip_keeps_the_most_sensitive_weights(digits_train):
    torch.manual_seed(0)
    model = models.create("mlp", input_size=8)
    result = methods.create("snip", batch_size=256, seed=5).prune(model, 0.9, PruneData(train=digits_train))
    removed = sum(int((~m).sum()) for m in result.masks.values())
    assert removed == round(0.9 * count_prunable(model))
    # independent check: |dL/dw * w| on the same first shuffled batch, thresholded over all layers
    x, y = next(iter(Batches(digits_train, 256, shuffle=True, generator=torch.Generator().manual_seed(5))))
    weights = prunable_weights(model)
    grads = torch.autograd.grad(torch.nn.functional.cross_entropy(model(x), y), list(weights.values()))
    # SNIP's global top-k of |dL/dw * w| (the paper's rule), then within the budget counted after surgery: every
    # top-k weight the shrink would not remove stays, the rest of the budget goes to surviving weights
    per_layer = {name: (g * w).abs() for (name, w), g in zip(weights.items(), grads)}
    top = importance.keep_top(per_layer, 0.9, "global")
    survive_top = plan_removal(model, top, (1, 8, 8)).surviving()
    survive = plan_removal(model, result.masks, (1, 8, 8)).surviving()
    for name in weights:
        assert not (top[name] & survive_top[name] & ~result.masks[name]).any(), name
        assert not (result.masks[name] & ~survive[name]).any(), name  # no kept weight is lost to the surgery


def test_sparsity_zero_changes_nothing():
    torch.manual_seed(0)
    model = models.create("resnet20")
    reference = {k: v.clone() for k, v in model.state_dict().items()}
    for name in ("magnitude", "random", "l1-filter"):
        result = methods.create(name).prune(model, 0.0, PruneData())
        pruned, masks = surgery.apply(model, result)
        assert not result.remove and all(m.all() for m in result.masks.values())
        assert all(torch.equal(reference[k], v) for k, v in pruned.state_dict().items())


@pytest.mark.parametrize("name", ["vgg11", "resnet20", "mobilenetv2", "lenet5"])
def test_l1_filter_reaches_the_budget_and_shrinks(name):
    torch.manual_seed(0)
    model = models.create(name, **SMALL[name])
    dense = count_prunable(model)
    result = methods.create("l1-filter", round_to=1).prune(model, 0.5, PruneData())
    pruned, masks = surgery.apply(model, result)
    achieved = sparsity_of(pruned, masks, reference_count=dense)
    assert achieved == pytest.approx(result.info["expected_sparsity"], abs=1e-9)
    assert 0.45 <= achieved <= 0.6


def test_l1_filter_alignment_keeps_multiples():
    torch.manual_seed(0)
    model = models.create("vgg11")
    result = methods.create("l1-filter", round_to=16).prune(model, 0.5, PruneData())
    pruned, _ = surgery.apply(model, result)
    widths = [m.out_channels for m in pruned.modules() if isinstance(m, torch.nn.Conv2d)]
    assert all(w % 16 == 0 for w in widths)


def test_l1_filter_removes_smallest_filters():
    torch.manual_seed(0)
    model = models.create("mlp", input_size=8, widths=[32, 16])
    first_name, first = next(iter(prunable_weights(model).items()))
    with torch.no_grad():
        first[:8].mul_(1e-3)  # the eight weakest neurons of the first hidden layer
    result = methods.create("l1-filter", round_to=1).prune(model, 0.2, PruneData())
    removed = result.remove[first_name.rsplit(".", 1)[0]]
    assert 0 < len(removed) <= 8 and set(removed) <= set(range(8))


@pytest.mark.parametrize("call,needle", [
    (lambda: methods.create("nope"), "unknown method 'nope'; choose one of"),
    (lambda: methods.create("magnitude", scope="everywhere"), "parameter 'scope'"),
    (lambda: methods.create("magnitude", wibble=1), "unknown parameter 'wibble'"),
    (lambda: methods.create("magnitude").check_sparsity(1.0), "sparsity must be a number in [0, 1)"),
    (lambda: methods.create("magnitude").check_sparsity(-0.1), "sparsity must be a number in [0, 1)"),
    (lambda: methods.create("magnitude").check_sparsity("auto"), "needs a numeric --sparsity"),
])
def test_bad_input_gets_clear_errors(call, needle):
    with pytest.raises(UserError) as info:
        call()
    assert needle in str(info.value)


def test_every_method_describes_itself():
    for name in methods.names():
        described = methods.get(name).describe()
        assert described["name"] == name and described["kind"] in {
            "unstructured", "connection", "structured", "during-training", "layer"}
        assert described["paper"] and "seed" in described["parameters"]
        json.dumps(described)  # `connprune methods --json` prints it


def test_kept_channels_never_silently_skips_a_narrow_group():
    from connprune.methods.channel_budget import kept_channels

    assert kept_channels(64, 0.5, 16, 1) == 32
    assert kept_channels(64, 0.6, 16, 1) == 32  # 25.6 rounds to the nearest block
    assert kept_channels(6, 0.5, 16, 1, strict=True) == 6  # strict: alignment leaves it whole (and is reported)
    assert kept_channels(6, 0.5, 16, 1, strict=False) == 3  # auto: pruned unaligned instead
    assert kept_channels(40, 0.99, 16, 1) == 16  # never rounded to zero


def test_auto_alignment_still_reaches_the_budget_on_small_nets():
    torch.manual_seed(0)
    model = models.create("lenet5", input_size=8)
    result = methods.create("l1-filter").prune(model, 0.9, PruneData())
    assert result.info["expected_sparsity"] >= 0.88 and result.info["groups_unpruned_by_alignment"] == 0
    strict = methods.create("l1-filter", round_to=16).prune(model, 0.9, PruneData())
    assert strict.info["groups_unpruned_by_alignment"] > 0
