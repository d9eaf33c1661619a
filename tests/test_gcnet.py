"""GC-Net pruning (gcnet.md §7 items 8–15): exact ghost sparsity, masks constant over kernels, conv→linear mapping,
the hybrid split (b = L is layer-wise magnitude bit for bit), sparsity 0, fine-tuning with masks, determinism and
shrunk == masked."""

from __future__ import annotations

import copy

import pytest
import torch

from connprune import methods, models, surgery
from connprune.errors import UserError
from connprune.graph import build
from connprune.measure.connectivity import ghost_layers, network_connectivity, train_ghost
from connprune.measure.sparsity import count_prunable, prunable_weights
from connprune.measure.sparsity import sparsity as sparsity_of
from connprune.methods import PruneData
from connprune.methods import budget
from connprune.methods.gcnet import ghost_keep, ghost_keep_global, map_to_weights, path_keep, resolve_split

LENET = dict(input_size=8)  # digits are 8×8: conv2 → pool → 16 channels × 2×2 into fc1 (4 columns per channel)


def lenet(seed: int = 0) -> torch.nn.Module:
    torch.manual_seed(seed)
    return models.create("lenet5", **LENET).eval()


def prune(model, sparsity, train, **params):
    return methods.create("gcnet", **params).prune(model, sparsity, PruneData(train=train))


def test_registered_with_its_parameters():
    described = methods.get("gcnet").describe()
    assert described["kind"] == "connection" and described["needs_data"] and described["needs_trained"]
    assert described["parameters"]["hybrid_split"] == 0.33
    with pytest.raises(UserError, match="unknown parameter 'split'"):
        methods.create("gcnet", split=2)
    with pytest.raises(UserError, match="needs training data"):
        methods.create("gcnet").prune(lenet(), 0.5, PruneData())


@pytest.mark.parametrize("sparsity", [0.0, 0.3, 0.5, 0.77, 0.9, 0.95])
def test_ghost_sparsity_is_exact_and_keeps_the_largest(sparsity):
    ghost = torch.rand(17, 13, generator=torch.Generator().manual_seed(1), dtype=torch.float64)
    keep = ghost_keep(ghost, sparsity)
    assert int((~keep).sum()) == round(sparsity * ghost.numel())
    if keep.any() and (~keep).any():
        assert ghost[keep].min() > ghost[~keep].max()


def test_ties_are_broken_stably():
    ghost = torch.tensor([[0.5, 0.2, 0.5], [0.5, 0.9, 0.2]])
    keep = ghost_keep(ghost, 0.5)  # keep 3: 0.9 and the two earliest 0.5s
    assert keep.tolist() == [[True, False, True], [False, True, False]]


def test_global_ghost_scope_prunes_weight_budget_over_layers():
    g = torch.Generator().manual_seed(2)
    ghosts = {"a": torch.rand(8, 4, generator=g, dtype=torch.float64),
              "b": torch.rand(6, 5, generator=g, dtype=torch.float64)}
    block = {"a": 9, "b": 1}
    keep = ghost_keep_global(ghosts, block, 0.6)
    pruned = 9 * int((~keep["a"]).sum()) + int((~keep["b"]).sum())
    assert abs(pruned - round(0.6 * (9 * 32 + 30))) <= 4  # within half the largest block
    values = torch.cat([ghosts[n].reshape(-1) for n in ghosts])
    kept = torch.cat([keep[n].reshape(-1) for n in ghosts])
    assert values[kept].min() > values[~kept].max()  # one threshold for all layers


def test_conv_masks_are_constant_over_kernels_and_match_ghost_sparsity(digits_train):
    model = lenet()
    result = prune(model, 0.7, digits_train, hybrid_split=1)
    mask = result.masks["conv2.weight"]
    assert result.info["gcnet_layer_modes"]["conv2.weight"] == "gcnet"
    flat = mask.reshape(mask.shape[0], mask.shape[1], -1)
    assert torch.equal(flat.all(dim=2), flat.any(dim=2))  # M[j, i].min() == M[j, i].max()
    ghost_pruned = int((~flat[:, :, 0]).sum())
    assert ghost_pruned == round(0.7 * 16 * 6)
    assert 1 - mask.float().mean().item() == pytest.approx(ghost_pruned / (16 * 6))


def test_conv_to_linear_mapping_zeroes_the_channel_columns():
    weight = torch.zeros(120, 64)
    ghost = torch.ones(120, 16, dtype=torch.bool)
    ghost[7, 3] = False
    mask = map_to_weights(ghost, weight, 4)
    assert set(map(tuple, torch.nonzero(~mask).tolist())) == {(7, c) for c in range(12, 16)}
    # and those four columns are exactly what channel 3 feeds into fc1 in LeNet-5 on 8×8 inputs
    model = lenet()
    x = torch.randn(2, 1, 8, 8)
    seen = {}
    model.fc1.register_forward_pre_hook(lambda m, a: seen.setdefault("x", a[0]))
    pooled = model.pool2(model.relu2(model.conv2(model.pool1(model.relu1(model.conv1(x))))))
    model(x)
    assert torch.equal(seen["x"][:, 12:16], pooled[:, 3].reshape(2, -1))


def test_conv_to_linear_mapping_in_the_method(digits_train):
    result = prune(lenet(), 0.8, digits_train, hybrid_split=1)
    mask = result.masks["fc1.weight"].reshape(120, 16, 4)
    assert torch.equal(mask.all(dim=2), mask.any(dim=2))  # whole 2×2 column blocks per (unit, channel)
    assert int((~mask[:, :, 0]).sum()) == round(0.8 * 120 * 16)


def test_hybrid_with_b_equal_to_depth_is_layerwise_magnitude_bit_for_bit(digits_train):
    for name, config in [("lenet5", LENET), ("resnet20", dict(in_channels=1, input_size=8))]:
        torch.manual_seed(0)
        model = models.create(name, **config)
        depth = len(prunable_weights(model))
        for sparsity in (0.5, 0.9):
            ours = prune(model, sparsity, digits_train, hybrid_split=depth).masks
            reference = methods.create("magnitude", scope="layer").prune(model, sparsity, PruneData()).masks
            assert set(ours) == set(reference)
            assert all(torch.equal(ours[k], reference[k]) for k in reference)


def test_hybrid_with_b_one_guides_every_layer_with_a_ghost_parent(digits_train):
    torch.manual_seed(0)
    model = models.create("resnet20", in_channels=1, input_size=8)
    result = prune(model, 0.8, digits_train, hybrid_split=1)
    modes = result.info["gcnet_layer_modes"]
    assert modes["conv1.weight"] == "magnitude"  # the stem has no ghost parent
    ghost = [k for k, v in modes.items() if v == "gcnet"]
    assert len(ghost) == len(modes) - 3  # all but the stem and the two 1×1 shortcuts
    assert all("shortcut" not in k and "downsample" not in k for k in ghost)
    for key in ghost:
        mask = result.masks[key]
        if mask.dim() == 4:
            flat = mask.reshape(mask.shape[0], mask.shape[1], -1)
            assert torch.equal(flat.all(dim=2), flat.any(dim=2))


def test_split_as_fraction_and_out_of_range():
    assert resolve_split(0.33, 5) == 2 and resolve_split(0.5, 21) == 10 and resolve_split(0.01, 5) == 1
    assert resolve_split(3, 5) == 3 and resolve_split(5, 5) == 5
    for bad in (0, 6, 2.5, -1, 1.5):
        with pytest.raises(UserError, match="hybrid_split"):
            resolve_split(bad, 5)


def test_split_outside_the_range_is_a_user_error(digits_train):
    with pytest.raises(UserError, match=r"layer count in \[1, 5\]"):
        prune(lenet(), 0.5, digits_train, hybrid_split=6)


@pytest.mark.parametrize("scope", ["layer", "global"])
def test_total_sparsity_matches_layerwise_magnitude(digits_train, scope):
    torch.manual_seed(0)
    model = models.create("resnet20", in_channels=1, input_size=8)
    for split in (1, 0.33):
        result = prune(model, 0.9, digits_train, hybrid_split=split, ghost_scope=scope)
        removed = sum(int((~m).sum()) for m in result.masks.values())
        weights = prunable_weights(model)
        expected = sum(round(0.9 * w.numel()) for w in weights.values()) if scope == "layer" else None
        if expected is not None:
            assert removed == expected
        else:
            assert abs(removed / count_prunable(model) - 0.9) < 1e-4


def test_sparsity_zero_keeps_everything(digits_train):
    model = lenet()
    x = torch.randn(4, 1, 8, 8)
    before = model(x)
    result = prune(model, 0.0, digits_train)
    assert all(m.all() for m in result.masks.values())
    pruned, _ = surgery.apply(copy.deepcopy(model), result)
    assert torch.equal(pruned(x), before)


def test_mutual_information_variant_prunes_exactly(digits_train):
    model = lenet()
    result = prune(model, 0.75, digits_train, hybrid_split=3, measure="mi", probe_per_class=30)
    assert result.info["gcnet_layer_modes"]["fc2.weight"] == "gcnet"
    assert int((~result.masks["fc2.weight"]).sum()) == round(0.75 * 84 * 120)
    magnitude = methods.create("gcnet", hybrid_split=3, probe_per_class=30).prune(model, 0.75,
                                                                                 PruneData(train=digits_train))
    assert not torch.equal(result.masks["fc2.weight"], magnitude.masks["fc2.weight"])


def test_determinism(digits_train):
    first = prune(lenet(), 0.85, digits_train, hybrid_split=1, seed=4).masks
    second = prune(lenet(), 0.85, digits_train, hybrid_split=1, seed=4).masks
    assert all(torch.equal(first[k], second[k]) for k in first)
    other = prune(lenet(), 0.85, digits_train, hybrid_split=1, seed=5, probe_per_class=30).masks
    assert any(not torch.equal(first[k], other[k]) for k in first)  # another probe set gives other masks


def test_finetuning_keeps_masked_weights_zero(digits_train, digits_test):
    from connprune.experiments.jobs import prune_model

    model = lenet()
    reference = {k: v.detach().clone() for k, v in prunable_weights(model).items()}
    method = methods.create("gcnet", hybrid_split=2)
    pruned, masks, metrics = prune_model(model, method, 0.8, digits_train, digits_test, train_epochs=1,
                                         shift="gaussian_noise:2", shrink=False, progress=False)
    weights = prunable_weights(pruned)
    changed = 0
    for key, mask in masks.items():
        assert (weights[key].detach()[~mask] == 0).all()
        changed += int((weights[key].detach()[mask] != reference[key][mask]).sum())
    assert changed > 0
    assert metrics["achieved_sparsity"] == pytest.approx(0.8, abs=2e-3)
    assert "gaussian_noise:2" in metrics["shift_acc_after"] and "relative_robustness_after" in metrics
    assert metrics["gcnet_split"] == 2


@pytest.mark.parametrize("name,config", [("lenet5", LENET), ("resnet20", dict(in_channels=1, input_size=8)),
                                         ("vgg11", dict(in_channels=1, input_size=8, num_classes=10))])
def test_shrunk_model_equals_masked_model(digits_train, name, config):
    torch.manual_seed(0)
    model = models.create(name, **config)
    for module in model.modules():  # non-trivial BN statistics so constant units fold into non-zero biases
        if isinstance(module, torch.nn.BatchNorm2d):
            module.running_mean.uniform_(-0.5, 0.5)
            module.running_var.uniform_(0.5, 2.0)
            module.bias.data.uniform_(-0.3, 0.3)
    model.eval()
    result = prune(model, 0.93, digits_train, hybrid_split=1)
    assert sum(result.info["gcnet_units_without_inputs"].values()) > 0
    masked, _ = surgery.apply(copy.deepcopy(model), result, shrink=False, example_inputs=(1, 8, 8))
    shrunk, masks = surgery.apply(copy.deepcopy(model), result, shrink=True, example_inputs=(1, 8, 8))
    x = torch.randn(16, 1, 8, 8, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        torch.testing.assert_close(shrunk.eval()(x), masked.eval()(x), atol=1e-5, rtol=1e-5)
    assert count_prunable(shrunk) < count_prunable(masked)  # units really left the model
    dense = count_prunable(model)
    # removing a dead unit also drops its still-unmasked (but useless) weights: the shrunk model is sparser
    assert sparsity_of(shrunk, masks, dense) >= sparsity_of(masked, None, dense) - 1e-12


def units_on_paths(masks: dict[str, torch.Tensor], order: list[str]) -> tuple[list[torch.Tensor], list[torch.Tensor]]:
    """Brute-force reachability on a chain's masks: per layer, the units with a kept incoming weight and the units
    on an input-to-output path (reached from the input through kept connections and reaching a logit)."""
    edges = []
    for key, previous in zip(order, [None] + order[:-1]):
        mask = masks[key].reshape(masks[key].shape[0], -1)
        channels = masks[previous].shape[0] if previous else masks[key].shape[1]
        edges.append(mask.reshape(mask.shape[0], channels, -1).any(dim=2))  # (units, parent units)
    forward = [torch.ones(edges[0].shape[1], dtype=torch.bool)]
    for edge in edges:
        forward.append(torch.tensor([bool((edge[j] & forward[-1]).any()) for j in range(edge.shape[0])]))
    backward = [torch.ones(edges[-1].shape[0], dtype=torch.bool)]
    for edge in reversed(edges):
        backward.insert(0, torch.tensor([bool((edge[:, i] & backward[0]).any()) for i in range(edge.shape[1])]))
    with_inputs = [edge.any(dim=1) for edge in edges]
    return with_inputs, [f & b for f, b in zip(forward[1:], backward[1:])]


def test_path_keep_covers_units_and_channels_within_the_count():
    g = torch.Generator().manual_seed(3)
    ghost = torch.rand(9, 7, generator=g, dtype=torch.float64)
    ghost[2, 4] = float("-inf")  # a forced entry
    live = torch.tensor([True, True, False, True, True, True, False])
    for count, cap in [(5, None), (12, None), (12, 4), (30, 20), (40, None)]:
        keep = path_keep(ghost, count, live, cap)
        rows = min(9, count, cap or 9)
        assert int(keep.sum()) == min(count, rows * 5 - (1 if keep[2].any() else 0))
        assert int(keep.any(dim=1).sum()) == rows  # min(units, count, cap) units keep an input
        assert not keep[:, ~live].any() and not keep[2, 4]
        assert int(keep.any(dim=0).sum()) == min(5, count)  # every live channel read while the count allows
    assert torch.equal(path_keep(ghost, 63, None, None), torch.isfinite(ghost))


@pytest.mark.parametrize("split", [1, 2])
def test_path_aware_keeps_every_kept_unit_on_a_path_at_the_budget(digits_train, split):
    model = lenet()
    order = ["conv1.weight", "conv2.weight", "fc1.weight", "fc2.weight", "fc3.weight"]
    sparsity = 0.9
    result = prune(model, sparsity, digits_train, hybrid_split=split, path_aware=True)
    with_inputs, on_paths = units_on_paths(result.masks, order)
    for key, kept, path in zip(order, with_inputs, on_paths):
        assert torch.equal(kept, path), key  # every unit with a kept input lies on an input-to-output path
    # the ghost layers keep as many units as both budgets allow (count of kept cells of the layer and its reader)
    cells = {key: result.masks[key].reshape(result.masks[key].shape[0], -1).shape[1] for key in order}
    blocks = {"conv1.weight": 25, "conv2.weight": 25, "fc1.weight": 4, "fc2.weight": 1, "fc3.weight": 1}
    count = {k: round((1 - sparsity) * result.masks[k].shape[0] * cells[k] / blocks[k]) for k in order}
    for index in range(split, len(order) - 1):
        key, reader = order[index], order[index + 1]
        units = result.masks[key].shape[0]
        assert int(on_paths[index].sum()) == min(units, count[key], count[reader]), key
    counted = budget.count(model, result, (1, 8, 8))
    reference = count_prunable(model)
    assert abs((reference - counted.nonzero_after) - round(sparsity * reference)) <= result.info["budget_unit"]
    plain = prune(model, sparsity, digits_train, hybrid_split=split)
    assert sum(int(p.sum()) for p in units_on_paths(plain.masks, order)[1]) < sum(int(p.sum()) for p in on_paths)


def test_trained_ghost_guides_the_masks_at_the_same_budget(digits_train):
    model = lenet()
    plain = prune(model, 0.8, digits_train, hybrid_split=1, probe_per_class=40)
    trained = prune(model, 0.8, digits_train, hybrid_split=1, probe_per_class=40, ghost_steps=30)
    assert any(not torch.equal(plain.masks[k], trained.masks[k]) for k in ("conv2.weight", "fc1.weight"))
    for result in (plain, trained):
        assert result.info["expected_sparsity"] == pytest.approx(0.8, abs=result.info["budget_unit"] / 21150)
    # the classifier alone guided (b = 4) at 50 %: its mask is the top half of the trained ghost, which the oracle
    # trains again from the network's moments (the surgery forces only direct-layer weights here)
    only_classifier = prune(model, 0.5, digits_train, hybrid_split=4, probe_per_class=40, ghost_steps=30)
    g = build(model, (1, 8, 8))
    layers = [layer for layer in ghost_layers(g) if layer.child == "fc3"]
    measured = network_connectivity(model, digits_train, g, layers=layers, per_class=40, moments=True)
    ghost = train_ghost(measured.ghosts["fc3"], measured.cross["fc3"], measured.parent_moments["fc3"], 30)
    assert torch.equal(only_classifier.masks["fc3.weight"], ghost_keep(ghost, 0.5))
    assert not torch.equal(ghost_keep(ghost, 0.5), ghost_keep(measured.ghosts["fc3"], 0.5))
    with pytest.raises(UserError, match="ghost_rate"):
        methods.create("gcnet", ghost_rate=2.5)


@pytest.mark.parametrize("params", [dict(hybrid_split=1), dict(hybrid_split=0.33, path_aware=True)])
def test_iterative_schedule_reaches_each_step_target(digits_train, params):
    from connprune.methods.iterative import prune_in_steps, step_targets

    model = lenet()
    reference = count_prunable(model)
    seen = []

    def between(current, masks, step):  # stands for the fine-tune: earlier zeros must stay zero and counted
        weights = prunable_weights(current)
        seen.append(sum(int((weights[k].detach() != 0).logical_and(masks.get(k, True)).sum()) for k in weights))

    method = methods.create("gcnet", probe_per_class=40, **params)
    pruned, masks, result = prune_in_steps(method, model, 0.9, PruneData(train=digits_train), steps=3,
                                           between=between)
    weights = prunable_weights(pruned)
    final = sum(int((weights[k].detach() != 0).logical_and(masks.get(k, True)).sum()) for k in weights)
    targets = step_targets(0.9, 3, "cubic")
    unit = result.info["budget_unit"]
    for kept, target in zip(seen + [final], targets):
        assert abs(kept - round((1 - target) * reference)) <= unit
    assert [s["target"] for s in result.info["steps"]] == targets
    split = 2 if params["hybrid_split"] == 0.33 else 1
    modes = result.info["gcnet_layer_modes"]
    assert [modes[k] for k in ("conv1.weight", "conv2.weight", "fc1.weight")] == (
        ["magnitude"] * split + ["gcnet"] * (3 - split))


def test_block_l1_control_prunes_whole_connections_by_their_weights(digits_train):
    model = lenet()
    result = prune(model, 0.5, digits_train, hybrid_split=4, measure="block_l1")
    # a linear child reading a vector has one weight per connection: the control is magnitude on it
    assert torch.equal(result.masks["fc3.weight"], ghost_keep(model.fc3.weight.detach().abs(), 0.5))
    sliced = prune(model, 0.6, digits_train, hybrid_split=1, measure="block_l1").masks["conv2.weight"].flatten(2)
    assert torch.equal(sliced.all(dim=2), sliced.any(dim=2))  # whole kernel slices
    norms = model.conv2.weight.detach().abs().flatten(2).sum(dim=2)
    assert norms[sliced[:, :, 0]].min() > norms[~sliced[:, :, 0]].median()  # kept slices are the heavy ones
    with pytest.raises(UserError, match="block_l1"):
        prune(model, 0.5, digits_train, measure="block_l1", ghost_steps=3)


@pytest.mark.parametrize("measure", ["pearson", "block_l1"])
def test_budget_is_met_when_the_surgery_keeps_cutting_units_off(digits_train, measure):
    model = lenet()
    result = prune(model, 0.95, digits_train, hybrid_split=1, measure=measure)
    assert result.info["budget_rounds"] > budget.MAX_ROUNDS  # the fixed point did not settle: the trim ran
    counted = budget.count(model, result, (1, 8, 8))
    reference = count_prunable(model)
    assert abs((reference - counted.nonzero_after) - round(0.95 * reference)) <= result.info["budget_unit"]
    partial = 0  # the trim takes whole connections, weakest first: at most the last one per layer is split
    for key, block in (("conv2.weight", 25), ("fc1.weight", 4)):
        cells = result.masks[key].reshape(result.masks[key].shape[0], -1, block)
        partial += int((cells.any(dim=2) & ~cells.all(dim=2)).sum())
    assert partial <= 2
