"""MINT (``shared/specs/mint.md`` §7 items 4–11) and the connectivity-pruning machinery SNACS shares with it."""

from __future__ import annotations

import copy

import pytest
import torch
from torch import nn

from connprune import methods, models, surgery
from connprune.errors import UserError
from connprune.graph import build
from connprune.measure import activations as acts
from connprune.measure.sparsity import count_prunable, prunable_weights
from connprune.measure.sparsity import sparsity as sparsity_of
from connprune.methods import PruneData, score_cache
from connprune.methods.mint import (ChildLayer, auto_groups, cell_masks, group_labels, plan_children, score_children,
                                    scoring_activations, select_cells)
from connprune.train import Trainer, default_recipe

FAST = dict(samples_per_class=30)


def digits_model(name: str, **config) -> nn.Module:
    torch.manual_seed(0)
    return models.create(name, num_classes=10, in_channels=1, input_size=8, **config)


# ------------------------------------------------------------------------------------------------ groups (§7.4)
def test_group_labels_are_contiguous_equal_groups():
    assert group_labels(6, 3).tolist() == [0, 0, 1, 1, 2, 2]
    assert group_labels(4, 4).tolist() == [0, 1, 2, 3]
    with pytest.raises(UserError, match="cannot be split into 4 equal groups"):
        group_labels(6, 4)


def test_auto_groups_rule():
    assert auto_groups(16) == 16 and auto_groups(64) == 64
    assert auto_groups(512) == 64 and auto_groups(300) == 60 and auto_groups(784) == 56
    assert auto_groups(512, 128) == 128 and auto_groups(10, 64) == 10 and auto_groups(100, 64) == 50
    assert auto_groups(6, 4) == 3 and auto_groups(7, 4) == 1


# ------------------------------------------------------------------------------------------ mask semantics (§7.5)
def _toy_child(name: str, out_units: int, in_units: int, gc: int, gp: int, kernel: int = 9, block: int = 1):
    return ChildLayer(name=name, parents=("p",), in_units=in_units, block=block,
                      child_labels=group_labels(out_units, gc), parent_labels=group_labels(in_units, gp),
                      kernel=kernel)


def test_masks_zero_exactly_the_cells_at_or_below_the_threshold():
    model = nn.Sequential(nn.Conv2d(6, 8, 3), nn.Conv2d(8, 4, 3))
    children = [_toy_child("0", 8, 6, 4, 3), _toy_child("1", 4, 8, 2, 4)]
    generator = torch.Generator().manual_seed(1)
    scores = {c.name: torch.rand(c.shape, generator=generator, dtype=torch.float64) for c in children}
    limits = {"0": 1.0, "1": 1.0}
    level = 0.4
    pruned = select_cells(scores, limits, prune_level=level)
    pooled = torch.unique(torch.cat([s.reshape(-1) for s in scores.values()]))
    delta = pooled[round(level * len(pooled))]
    masks = cell_masks(model, children, pruned)
    for child in children:
        expected = scores[child.name] <= delta
        assert torch.equal(pruned[child.name], expected)
        mask = masks[f"{child.name}.weight"]
        for j in range(mask.shape[0]):
            for i in range(mask.shape[1]):
                cell = expected[child.child_labels[j], child.parent_labels[i]]
                assert bool(mask[j, i].any()) == (not cell) and bool(mask[j, i].all()) == (not cell)
        gc, gp = child.shape
        per_cell = (mask.shape[0] // gc) * (mask.shape[1] // gp) * 9
        assert int((~mask).sum()) == int(expected.sum()) * per_cell == int(expected.sum()) * child.cell_weights()


def test_linear_child_after_flatten_masks_whole_blocks():
    model = nn.Sequential(nn.Linear(12, 4))
    child = _toy_child("0", 4, 3, 2, 3, kernel=4, block=4)  # 3 channels of 2x2 flattened
    pruned = {"0": torch.tensor([[True, False, False], [False, False, True]])}
    mask = cell_masks(model, [child], pruned)["0.weight"]
    assert not mask[:2, 0:4].any() and mask[:2, 4:].all()
    assert not mask[2:, 8:12].any() and mask[2:, :8].all()


# ------------------------------------------------------------------------------------- monotonicity and caps (§7.6–7)
def test_raising_pi_never_unprunes_and_caps_hold():
    generator = torch.Generator().manual_seed(2)
    scores = {"a": torch.rand(8, 6, generator=generator, dtype=torch.float64),
              "b": torch.rand(5, 5, generator=generator, dtype=torch.float64) * 0.5,
              "c": torch.rand(10, 4, generator=generator, dtype=torch.float64)}
    limits = {"a": 0.85, "b": 0.45, "c": 0.3}
    previous = None
    for level in [0.0, 0.05, 0.2, 0.35, 0.5, 0.7, 0.9, 1.0]:
        pruned = select_cells(scores, limits, prune_level=level)
        for name, cells in pruned.items():
            assert cells.float().mean() <= limits[name] + 1.0 / cells.numel() + 1e-12
            if previous is not None:
                assert bool((previous[name] & ~cells).sum() == 0), f"π={level} un-pruned cells of {name}"
        previous = pruned
    assert not any(p.any() for p in select_cells(scores, limits, prune_level=0.0).values())
    full = select_cells(scores, limits, prune_level=1.0)  # every layer at its limit
    assert {n: int(p.sum()) for n, p in full.items()} == {n: round(limits[n] * s.numel()) for n, s in scores.items()}


def test_target_mode_takes_lowest_cells_within_limits():
    scores = {"a": torch.tensor([[0.1, 0.5], [0.2, 0.9]], dtype=torch.float64),
              "b": torch.tensor([[0.05, 0.3, 0.4, 0.6]], dtype=torch.float64)}
    weights = {"a": 10, "b": 3}
    pruned = select_cells(scores, {"a": 0.5, "b": 1.0}, cell_weights=weights, target_weights=20)
    # ascending: b0 .05 (3), a00 .1 (10), a10 .2 (10) → 23 ≥ 20; a's limit (2 cells) is not exceeded
    assert pruned["a"].tolist() == [[True, False], [True, False]] and pruned["b"].tolist() == [[True, False,
                                                                                                  False, False]]
    capped = select_cells(scores, {"a": 0.25, "b": 1.0}, cell_weights=weights, target_weights=20)
    # a stops at 1 cell (10); b fills the rest in order .05, .3, .4, .6: 10 + 4·3 = 22 ≥ 20
    assert capped["a"].tolist() == [[True, False], [False, False]] and capped["b"].all()
    smaller = select_cells(scores, {"a": 0.25, "b": 1.0}, cell_weights=weights, target_weights=19)
    assert smaller["b"].tolist() == [[True, True, True, False]]
    assert select_cells(scores, {"a": 0.25, "b": 0.25}, cell_weights=weights, target_weights=20) is None


def test_protected_groups_are_never_pruned():
    generator = torch.Generator().manual_seed(3)
    scores = {"a": torch.rand(6, 4, generator=generator, dtype=torch.float64)}
    protect = {"a": torch.tensor([True, False, False, True, False, False])}
    for level in (0.3, 0.8, 1.0):
        pruned = select_cells(scores, {"a": 1.0}, prune_level=level, protected=protect)["a"]
        assert not pruned[protect["a"]].any()
    pruned = select_cells(scores, {"a": 1.0}, cell_weights={"a": 1}, target_weights=16, protected=protect)["a"]
    assert not pruned[protect["a"]].any() and int(pruned.sum()) == 16


# ------------------------------------------------------------------------------------------ counter parity (§7.8)
def test_counter_parity_with_mints_vgg16_percentages():
    widths = [64, 64, 128, 128, 256, 256, 256, 512, 512, 512, 512, 512, 512]
    layers, previous = [], 3
    for width in widths:
        layers.append(nn.Conv2d(previous, width, 3, padding=1, bias=False))
        previous = width
    vgg = nn.Sequential(*layers, nn.Linear(512, 512), nn.Linear(512, 10))
    assert count_prunable(vgg) == 14_977_728
    percent = [0, 0, 0, 0, 67.08, 51.80, 58.39, 61.18, 89.91, 93.72, 92.04, 86.25, 91.01, 93.28, 0]
    masks = {}
    for (name, weight), p in zip(prunable_weights(vgg).items(), percent, strict=True):
        keep = torch.ones(weight.numel(), dtype=torch.bool)
        keep[: round(p / 100 * weight.numel())] = False
        masks[name] = keep.reshape(weight.shape)
    assert 100 * sparsity_of(vgg, masks) == pytest.approx(83.46, abs=0.01)


# -------------------------------------------------------------------------------------------- alignment (§7.10)
def test_parent_and_child_activations_come_from_the_same_samples(digits_train):
    probe = nn.Sequential(nn.Flatten(), nn.Linear(64, 64, bias=False), nn.Linear(64, 10))
    with torch.no_grad():
        probe[1].weight.copy_(torch.eye(64))  # child output == its input: every filter is its own parent
    probe.connprune_config = {"in_channels": 1, "input_size": 8}
    graph = build(probe, (1, 8, 8))
    children = plan_children(probe, graph, groups=8)
    found = scoring_activations(probe, children, digits_train, samples_per_class=60, seed=0,
                                device=torch.device("cpu"))
    assert torch.equal(found.outputs["1"], found.inputs["1"])
    rho = score_children(children, found)["1"]
    # every child group shares the most information with its own copy; misaligned rows would make it noise. (8-unit
    # groups are hashed in 5 + 5 + 4 dimensions, where the plug-in saturates: the contrast is 1.44x, not larger.)
    assert torch.equal(rho.argmax(dim=1), torch.arange(8))
    assert rho.diagonal().mean() > 1.3 * rho[~torch.eye(8, dtype=torch.bool)].mean()


def test_class_balanced_indices():
    labels = torch.tensor([0, 1, 2] * 20)
    picked = acts.class_balanced_indices(labels, 5, seed=1)
    assert torch.bincount(labels[picked]).tolist() == [5, 5, 5] and len(set(picked.tolist())) == 15
    assert torch.equal(picked, acts.class_balanced_indices(labels, 5, seed=1))
    assert len(acts.class_balanced_indices(labels, 50, seed=1)) == 60  # without replacement: all there is
    assert len(acts.class_balanced_indices(labels, 50, seed=1, replace=True)) == 150


# ---------------------------------------------------------------------------------------- the method end to end
@pytest.mark.parametrize("sparsity", [0.3, 0.6, 0.8])
def test_numeric_sparsity_is_met_within_one_cell(digits_train, sparsity):
    model = digits_model("mlp", widths=[64, 32])
    result = methods.create("mint", **FAST).prune(model, sparsity, PruneData(train=digits_train))
    total = count_prunable(model)
    removed = sum(int((~m).sum()) for m in result.masks.values())
    target = round(sparsity * total)
    children = plan_children(model, build(model, (1, 8, 8)))
    assert target <= removed < target + max(c.cell_weights() for c in children)
    assert set(result.info) >= {"seconds_activations", "seconds_cmi", "seconds_masks", "layer_limits"}
    for child in children:
        cells = child.shape[0] * child.shape[1]
        fraction = result.info["layer_pruned_cells"][child.name]
        assert fraction <= result.info["layer_limits"][child.name] + 1 / cells + 1e-9


def test_limits_are_respected_or_relaxed_explicitly(digits_train):
    model = digits_model("mlp", widths=[64, 32])
    with pytest.raises(UserError, match="limits allow at most"):
        methods.create("mint", upper_limit=0.3, relax_limits=False, **FAST).prune(model, 0.6,
                                                                                   PruneData(train=digits_train))
    result = methods.create("mint", upper_limit=0.3, **FAST).prune(model, 0.6, PruneData(train=digits_train))
    assert result.info["limits_relaxed_by"] > 0
    assert sum(int((~m).sum()) for m in result.masks.values()) >= round(0.6 * count_prunable(model))


def test_deterministic_and_scores_cached(digits_train):
    score_cache.clear()
    model = digits_model("lenet5")
    first = methods.create("mint", **FAST).prune(model, 0.5, PruneData(train=digits_train))
    second = methods.create("mint", **FAST).prune(copy.deepcopy(model), 0.5, PruneData(train=digits_train))
    assert first.masks.keys() == second.masks.keys()
    assert all(torch.equal(first.masks[k], second.masks[k]) for k in first.masks)
    assert not first.info["scores_from_cache"] and second.info["scores_from_cache"]


def test_mst_estimator_option(digits_train):
    model = digits_model("mlp", widths=[8])
    result = methods.create("mint", estimator="mst", groups=4, samples_per_class=12).prune(
        model, 0.5, PruneData(train=digits_train))
    assert sparsity_of(model, result.masks) >= 0.5
    assert result.info["estimator"] == "mst"


def test_auto_uses_pi_and_sweep_picks_most_compressed_within_drop(digits_train):
    model = digits_model("mlp", widths=[32])
    trained = copy.deepcopy(model)
    Trainer(trained, digits_train, None, default_recipe("digits", epochs=3), progress=False).fit()
    data = PruneData(train=digits_train, recipe=default_recipe("digits", epochs=1))
    fixed = methods.create("mint", prune_level=0.3, **FAST).prune(trained, "auto", data)
    assert fixed.info["prune_level"] == 0.3
    swept = methods.create("mint", pi_grid=[0.02, 0.2, 0.5, 0.9], sweep_epochs=0, max_accuracy_drop=0.05,
                           **FAST).prune(trained, "auto", data)
    rows = swept.info["sweep"]
    dense = swept.info["dense_val_accuracy"]
    ok = [r for r in rows if r["val_accuracy"] >= dense - 0.05]
    assert [r["prune_level"] for r in rows] == [0.02, 0.2, 0.5, 0.9] and ok
    assert swept.info["prune_level"] == max(ok, key=lambda r: r["sparsity"])["prune_level"]
    default = methods.create("mint", sweep_epochs=0, **FAST).prune(trained, "auto", data)  # auto = the π sweep
    assert [r["prune_level"] for r in default.info["sweep"]] == [round(0.1 * k, 1) for k in range(1, 11)]


def test_masked_retraining_keeps_masked_weights_zero(digits_train):
    """§7.9: SGD with momentum 0.9, Nesterov, wd 5e-4 through the core trainer and MaskEnforcer."""
    model = digits_model("mlp", widths=[32])
    result = methods.create("mint", **FAST).prune(model, 0.7, PruneData(train=digits_train))
    pruned, masks = surgery.apply(model, result, shrink=False)
    recipe = default_recipe("digits", epochs=1, nesterov=True, momentum=0.9, weight_decay=5e-4)
    trainer = Trainer(pruned, digits_train, None, recipe, progress=False)
    surgery.MaskEnforcer(pruned, masks, trainer.optimizer)
    trainer.fit()
    weights = dict(pruned.named_parameters())
    assert all(torch.all(weights[k][~m] == 0) for k, m in masks.items())


@pytest.mark.parametrize("name,config", [("resnet20", {}), ("vgg11", {}), ("mlp", {})])
def test_shrunk_model_equals_masked_model(digits_train, name, config):
    """§7.11: fully disconnected filters are removed physically and the outputs do not change."""
    model = digits_model(name, **config).eval()
    result = methods.create("mint", groups=4, samples_per_class=20, upper_limit=0.95, keep_connected=False).prune(
        model, 0.8, PruneData(train=digits_train))
    masked, _ = surgery.apply(copy.deepcopy(model), result, shrink=False)
    shrunk, _ = surgery.apply(copy.deepcopy(model), result, shrink=True)
    assert count_prunable(shrunk) < count_prunable(model)  # filters really went
    x = torch.randn(6, 1, 8, 8, generator=torch.Generator().manual_seed(0))
    masked.eval(), shrunk.eval()
    with torch.no_grad():
        assert torch.allclose(masked(x), shrunk(x), atol=1e-5)


def test_input_layer_is_scored_when_linear_or_asked():
    mlp, lenet = digits_model("mlp", widths=[16]), digits_model("lenet5")
    assert [c.name for c in plan_children(mlp, build(mlp, (1, 8, 8)))][0] == "features.0"
    assert [c.name for c in plan_children(lenet, build(lenet, (1, 8, 8)))][0] == "conv2"
    assert [c.name for c in plan_children(lenet, build(lenet, (1, 8, 8)), prune_input_layer=True)][0] == "conv1"
    assert [c.name for c in plan_children(mlp, build(mlp, (1, 8, 8)), prune_input_layer=False)][0] == "classifier"


def test_explicit_layer_groups_must_divide(digits_train):
    model = digits_model("mlp", widths=[64, 32])
    children = plan_children(model, build(model, (1, 8, 8)), layer_groups={"features.0": 16})
    assert children[1].parent_labels.max() == 15 and children[0].child_labels.max() == 15
    with pytest.raises(UserError, match="cannot be split into 5 equal groups"):
        plan_children(model, build(model, (1, 8, 8)), layer_groups={"features.0": 5})


def test_registered_and_validated(digits_train):
    described = methods.get("mint").describe()
    assert described["kind"] == "connection" and described["needs_data"] and described["supports_auto"]
    with pytest.raises(UserError, match="unknown parameter"):
        methods.create("mint", group=4)
    with pytest.raises(UserError, match="needs training data"):
        methods.create("mint").prune(digits_model("mlp"), 0.5, PruneData())
    with pytest.raises(UserError, match="unknown layer"):
        methods.create("mint", exclude=["nope"]).prune(digits_model("mlp"), 0.5, PruneData(train=digits_train))


def test_low_scores_mark_the_connections_that_matter_least(digits_train, digits_test):
    """On a trained MLP, removing the 80 % lowest-ρ cells of a layer costs less accuracy than removing the 80 %
    highest and than removing 80 % at random (the CMI ranking carries information, mint.md §1). Observed (no
    fine-tuning): lowest 0.79–0.89, random 0.24–0.65, highest 0.11–0.60. The conditional score ranks *unique*
    information: the highest cells of the hidden pair are less decisive (0.60) than under the earlier 1-D random
    conditioning (0.10), whose scores stay close to the unconditional MI (docs/methods/mint.md §6)."""
    from connprune.train import evaluate

    model = digits_model("mlp", widths=[64, 32])
    Trainer(model, digits_train, None, default_recipe("digits", epochs=8), progress=False).fit()
    state = methods.create("mint", samples_per_class=100).score(model, PruneData(train=digits_train))
    for child in state.children:
        rho = state.scores[child.name].reshape(-1)
        count = round(0.8 * len(rho))
        choices = {"low": torch.argsort(rho, stable=True)[:count],
                   "high": torch.argsort(rho, descending=True, stable=True)[:count],
                   "random": torch.randperm(len(rho), generator=torch.Generator().manual_seed(0))[:count]}
        accuracy = {}
        for order, chosen in choices.items():
            pruned = {c.name: torch.zeros(c.shape, dtype=torch.bool) for c in state.children}
            pruned[child.name].view(-1)[chosen] = True
            trial = copy.deepcopy(model)
            surgery.apply_masks(trial, cell_masks(model, state.children, pruned))
            accuracy[order] = evaluate(trial, digits_test)["accuracy"]
        assert accuracy["low"] > max(accuracy["high"], accuracy["random"]) + 0.1, (child.name, accuracy)


def test_keep_connected_leaves_every_child_group_its_best_input():
    generator = torch.Generator().manual_seed(5)
    scores = {"a": torch.rand(6, 5, generator=generator, dtype=torch.float64)}
    pruned = select_cells(scores, {"a": 1.0}, prune_level=1.0, keep_connected=True)["a"]
    assert (~pruned).sum(dim=1).tolist() == [1] * 6
    assert torch.equal(~pruned, torch.nn.functional.one_hot(scores["a"].argmax(1), 5).bool())
    assert select_cells(scores, {"a": 1.0}, prune_level=1.0)["a"].all()


# ------------------------------------------------------------------------------ comparable scores (mint.md §2)
def test_layer_thresholds_prune_the_same_fraction_of_every_layer_whatever_the_scale():
    """EDGE scores of different layers live on different scales (a layer of 0.1-nat cells beside one of 1.5-nat
    cells): pooled raw scores prune only the low-scale layer, per-layer quantiles prune π of each, and normalised
    scores are unchanged by rescaling one layer."""
    from connprune.methods.mint import comparable_scores

    generator = torch.Generator().manual_seed(7)
    scores = {"fc1": 0.1 + 0.3 * torch.rand(20, 25, generator=generator, dtype=torch.float64),
              "fc2": 1.3 + 0.5 * torch.rand(20, 20, generator=generator, dtype=torch.float64),
              "out": 0.1 + 0.3 * torch.rand(10, 20, generator=generator, dtype=torch.float64)}
    limits = dict.fromkeys(scores, 1.0)
    raw = select_cells(scores, limits, prune_level=0.5)
    assert not raw["fc2"].any() and raw["fc1"].float().mean() > 0.5  # the defect of pooled raw scores
    for level in (0.3, 0.5, 0.9):
        per_layer = select_cells(comparable_scores(scores, "layer"), limits, prune_level=level, quantiles=True)
        for name, cells in per_layer.items():
            assert int(cells.sum()) == int(level * cells.numel() + 1e-9), (name, level)
            assert torch.equal(cells, select_cells({name: scores[name]}, {name: level}, prune_level=1.0)[name])
    rescaled = {**scores, "fc2": 7.0 * scores["fc2"]}
    for a, b in zip(comparable_scores(scores, "normalised").values(),
                    comparable_scores(rescaled, "normalised").values(), strict=True):
        assert torch.allclose(a, b, atol=1e-12)
    weights = dict.fromkeys(scores, 1)
    target = select_cells(comparable_scores(scores, "layer"), limits, cell_weights=weights, target_weights=700)
    fractions = [float(cells.float().mean()) for cells in target.values()]
    assert max(fractions) - min(fractions) <= 1 / 200 + 1e-9  # a numeric budget takes every layer alike


def test_negative_estimates_are_clipped_and_counted(digits_train, monkeypatch):
    """The one-partition chain rule never goes negative (each member is an empirical CMI); an estimator that does
    (here: EDGE shifted by −0.02) has its negative cells clipped to 0 before any weighting and counted in info."""
    from connprune.methods import mint as mint_module

    model = digits_model("mlp", widths=[32])
    state = methods.create("mint", **FAST).score(model, PruneData(train=digits_train))
    assert all(float(rho.min()) >= 0 for rho in state.scores.values())
    assert all(v == 0 for v in state.info["negative_cells"].values())
    original = mint_module.edge_cmi_matrix
    monkeypatch.setattr(mint_module, "edge_cmi_matrix", lambda *a, **k: original(*a, **k) - 0.02)
    score_cache.clear()
    shifted = methods.create("mint", **FAST).score(model, PruneData(train=digits_train))
    for child in state.children:
        raw = state.scores[child.name] - 0.02
        assert torch.allclose(shifted.scores[child.name], raw.clamp(min=0), atol=1e-12)
        assert shifted.info["negative_cells"][child.name] == pytest.approx(float((raw < 0).double().mean()))
    score_cache.clear()


def test_random_cell_control_is_seeded_and_uniform(digits_train):
    model = digits_model("mlp", widths=[32])
    first = methods.create("mint", estimator="random", **FAST).score(model, PruneData(train=digits_train))
    again = methods.create("mint", estimator="random", **FAST).score(model, PruneData(train=digits_train))
    other = methods.create("mint", estimator="random", seed=1, **FAST).score(model, PruneData(train=digits_train))
    for name, rho in first.scores.items():
        assert torch.equal(rho, again.scores[name]) and not torch.equal(rho, other.scores[name])
        assert 0 <= float(rho.min()) and float(rho.max()) <= 1
