"""SNACS (``shared/specs/snacs.md`` §7): ACMI, normalisation, sensitivity, protection, operating constraints, caps,
counter parity, ranking, determinism; plus the exactness of the constraint re-evaluation and shrink equivalence."""

from __future__ import annotations

import copy
import json
import math
import time

import numpy as np
import pytest
import torch
from scipy.stats import spearmanr
from torch import nn

from connprune import methods, models, surgery
from connprune.graph import build
from connprune.measure import activations as acts
from connprune.measure.mutual_information import edge_cmi_matrix, mst_cmi_matrix
from connprune.measure.sparsity import count_prunable, prunable_weights
from connprune.measure.sparsity import sparsity as sparsity_of
from connprune.methods import PruneData
from connprune.methods import snacs as snacs_module
from connprune.methods.mint import group_labels, plan_children, score_children, select_cells
from connprune.methods.snacs import (cell_weight_means, limit_from_curve, normalised_weights, phi_values,
                                     protected_groups, sensitivity)

FAST = dict(samples_per_class=30, groups=4)


def digits_model(name: str, **config) -> nn.Module:
    torch.manual_seed(0)
    return models.create(name, num_classes=10, in_channels=1, input_size=8, **config)


def scored(model, digits_train, **params):
    method = methods.create("snacs", **{**FAST, **params})
    return method.score(model, PruneData(train=digits_train))


# --------------------------------------------------------------------------------------------- ACMI (§7.1, §7.2)
def test_phi_one_is_the_cmi_and_phi_weight_the_product(digits_train):
    model = digits_model("lenet5")
    plain = scored(model, digits_train, phi="one", limits="fixed", protect_fraction=0.0)
    children = plain.children
    cmi = score_children(children, plain.activations, seed=0)
    assert all(torch.equal(plain.scores[c.name], cmi[c.name]) for c in children)
    weighted = scored(model, digits_train, phi="weight", limits="fixed", protect_fraction=0.0)
    normalised = normalised_weights(model, "magnitude")
    for child in children:
        expected = cell_weight_means(normalised[child.weight_name], child) * cmi[child.name]
        assert torch.allclose(weighted.scores[child.name], expected, atol=1e-12, rtol=0)


def test_cell_weight_means_average_every_weight_of_the_cell():
    model = nn.Sequential(nn.Conv2d(4, 6, 3), nn.Flatten(), nn.Linear(6 * 16, 2))
    child = plan_children(model, build(model, (4, 6, 6)), groups=2, prune_input_layer=True)[0]
    normalised = torch.rand(6, 4, 3, 3, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    means = cell_weight_means(normalised, child)
    assert means.shape == (2, 2)
    assert means[1, 0].item() == pytest.approx(normalised[3:6, 0:2].mean().item(), abs=1e-12)


@pytest.mark.parametrize("norm", ["magnitude", "signed"])
def test_normalisation_and_phi_ranges(norm):
    model = digits_model("lenet5")
    normalised = normalised_weights(model, norm)
    values = torch.cat([w.reshape(-1) for w in normalised.values()])
    assert values.min() == 0.0 and values.max() == pytest.approx(1.0)
    w = values.double()
    for phi in ("weight", "weight_sq"):
        assert phi_values(w, phi).min() >= 0 and phi_values(w, phi).max() <= 1
    exp = phi_values(w, "exp_weight")
    assert exp.min() >= math.exp(-0.5) - 1e-12 and exp.max() <= 1
    assert torch.equal(phi_values(w, "one"), torch.ones_like(w))


# ------------------------------------------------------------------------------------------- sensitivity (§7.3)
def test_sensitivity_is_a_distribution_and_finds_the_only_strong_filter():
    child = _first_child()
    grandchild = torch.rand(5, 8, 3, 3, generator=torch.Generator().manual_seed(1))
    s = sensitivity([(grandchild, 1)], child)
    assert s.sum().item() == pytest.approx(1.0, abs=1e-9)
    only = torch.zeros(5, 8, 3, 3)
    only[:, 3] = 1.0  # child filter 3's outgoing weights are the only non-minimal ones
    single = _first_child(groups=8)
    s = sensitivity([(only, 1)], single)
    assert s[3].item() == pytest.approx(1.0) and s.sum().item() == pytest.approx(1.0)
    assert torch.equal(sensitivity([], single), torch.ones(8, dtype=torch.float64))


def _first_child(groups: int = 4):
    """The first conv of conv(3→8) → conv(8→5), as a child (its input as parent), its 8 filters in ``groups``."""
    model = nn.Sequential(nn.Conv2d(3, 8, 3), nn.Conv2d(8, 5, 3))
    return plan_children(model, build(model, (3, 8, 8)), groups=groups, prune_input_layer=True)[0]


def test_sensitivity_rows_sum_to_one_for_several_grandchildren():
    child = _first_child()
    generator = torch.Generator().manual_seed(4)
    s = sensitivity([(torch.rand(5, 8, 3, 3, generator=generator), 1),
                     (torch.rand(7, 8 * 4, generator=generator), 4)], child)
    assert s.sum().item() == pytest.approx(1.0, abs=1e-9) and len(s) == 4


# -------------------------------------------------------------------------------------------- protection (§7.4)
def test_protected_set_is_the_highest_sensitivity_groups():
    s = torch.tensor([0.1, 0.4, 0.05, 0.3, 0.15], dtype=torch.float64)
    assert protected_groups(s, 0.4).tolist() == [False, True, False, True, False]
    assert protected_groups(s, 0.4, "lowest").tolist() == [True, False, True, False, False]
    assert int(protected_groups(s, 0.5).sum()) == round(0.5 * 5)


def test_protected_filters_keep_every_incoming_connection(digits_train):
    model = digits_model("lenet5")
    state = scored(model, digits_train, protect_fraction=0.25)
    assert state.protected and all(int(p.sum()) == round(0.25 * len(p)) for p in state.protected.values())
    method = methods.create("snacs", protect_fraction=0.25, remove_filters="none", **FAST)
    removing = methods.create("snacs", protect_fraction=0.25, **FAST)  # remove_filters="unconnected"
    for level in (0.3, 0.7, 1.0):
        masks, _ = method.masks_for(model, state, None, level)
        cut, info = removing.masks_for(model, state, None, level)
        for child in state.children:
            if child.name not in state.protected:
                continue
            rows = state.protected[child.name][child.child_labels]  # protected child filters
            assert masks[child.weight_name][rows].all()
            # with filter removal they lose only the inputs cut from every child filter (the removed filters)
            mask = cut[child.weight_name].reshape(*cut[child.weight_name].shape[:2], -1).all(dim=2)
            dead = ~mask[~rows].any(dim=0)
            assert torch.equal(mask[rows], (~dead).expand_as(mask[rows]))
            assert info["cut_parent_groups"][child.name] * (len(child.parent_labels) // child.shape[1]) == \
                int(dead.sum())
    # the protected groups are the most sensitive ones
    for child in state.children:
        if child.name in state.protected:
            consumers = [p.child for p in state.graph.pairs if p.parent == child.name]
            normalised = normalised_weights(model)
            s = sensitivity([(normalised[f"{c}.weight"], next(p.features_per_channel for p in state.graph.pairs
                                                             if p.parent == child.name and p.child == c))
                             for c in consumers], child)
            assert torch.equal(state.protected[child.name], protected_groups(s, 0.25))


# ---------------------------------------------------------------------------------- operating constraints (§7.5)
def test_limit_from_a_synthetic_accuracy_curve():
    grid = list(range(1, 98, 2))
    curve = [0.9 if q <= 41 else 0.9 - 0.8 * (q - 41) / (97 - 41) for q in grid]
    assert limit_from_curve(grid, curve, 0.7) == 79
    assert limit_from_curve(grid, [2.5 * a for a in curve], 0.7) == 79  # scale invariant
    assert limit_from_curve(grid, [0.5] * len(grid), 0.7) == 97  # flat curve: prune up to the grid's end


def test_constraint_reevaluation_equals_a_forward_pass_of_the_masked_layer(digits_train):
    """The patch-mean shortcut gives exactly the spatially averaged output of the masked child (any mask)."""
    model = digits_model("resnet20").eval()
    names = ["layer2.0.conv1", "layer2.0.downsample.0", "fc"]
    found = acts.collect(model, digits_train, outputs=names, patch_means=names, indices=torch.arange(40))
    generator = torch.Generator().manual_seed(0)
    for name in names:
        module = model.get_submodule(name)
        assert torch.allclose(acts.masked_mean_output(found.patch_means[name], module), found.outputs[name],
                              atol=1e-5)
        keep = torch.rand(module.weight.shape, generator=generator) > 0.5
        pruned = copy.deepcopy(model)
        with torch.no_grad():
            pruned.get_submodule(name).weight.mul_(keep)
        reference = acts.collect(pruned, digits_train, outputs=[name], indices=torch.arange(40)).outputs[name]
        shortcut = acts.masked_mean_output(found.patch_means[name], module, module.weight * keep)
        assert torch.allclose(shortcut, reference, atol=1e-5)


def test_constraint_limits_curves_and_cache(digits_train, tmp_path, monkeypatch):
    model = digits_model("lenet5")
    snacs_module._CURVE_CACHE.clear()
    state = scored(model, digits_train, cache_dir=str(tmp_path))
    curves = state.info["constraint_curves"]
    for child in state.children:
        curve = curves[child.name]
        assert len(curve) == len(curves["levels"]) and all(0 <= a <= 1 for a in curve)
        assert state.limits[child.name] == limit_from_curve(curves["levels"], curve, 0.7)
    assert len(list(tmp_path.glob("snacs-curve-*.json"))) == len(state.children)
    assert json.loads(next(tmp_path.glob("*.json")).read_text())["levels"] == curves["levels"]
    calls = []
    monkeypatch.setattr(snacs_module, "constraint_curve", lambda *a, **k: calls.append(1) or [])
    again = scored(model, digits_train, cache_dir=str(tmp_path))  # in-process cache
    snacs_module._CURVE_CACHE.clear()
    from_files = scored(model, digits_train, cache_dir=str(tmp_path))  # file cache
    assert not calls and again.limits == state.limits == from_files.limits


# --------------------------------------------------------------------------------------------------- caps (§7.6)
def test_caps_hold_and_single_shot_reaches_each_limit(digits_train):
    model = digits_model("lenet5")
    result = methods.create("snacs", protect_fraction=0.0, **FAST).prune(model, "auto",
                                                                         PruneData(train=digits_train))
    state = scored(model, digits_train, protect_fraction=0.0)
    for child in state.children:
        cells = child.shape[0] * child.shape[1]
        limit, fraction = result.info["layer_limits"][child.name], result.info["layer_pruned_cells"][child.name]
        assert abs(fraction - limit) <= 1 / cells + 1e-9
    assert result.info["mode"] == "single_shot"
    for key in ("seconds_activations", "seconds_cmi", "seconds_constraints", "seconds_masks"):
        assert result.info[key] >= 0


def test_numeric_sparsity_within_limits_and_exact(digits_train):
    model = digits_model("lenet5")
    result = methods.create("snacs", **FAST).prune(model, 0.4, PruneData(train=digits_train))
    removed = sum(int((~m).sum()) for m in result.masks.values())
    children = plan_children(model, build(model, (1, 8, 8)), groups=FAST["groups"])
    target = round(0.4 * count_prunable(model))
    assert target <= removed < target + max(c.cell_weights() for c in children)
    if "limits_relaxed_by" not in result.info:
        for child in children:
            cells = child.shape[0] * child.shape[1]
            assert result.info["layer_pruned_cells"][child.name] <= result.info["layer_limits"][child.name] + \
                1 / cells + 1e-9


# ------------------------------------------------------------------------------------------ counter parity (§7.8)
def test_counter_parity_with_snacs_vgg16_percentages():
    widths = [64, 64, 128, 128, 256, 256, 256, 512, 512, 512, 512, 512, 512]
    layers, previous = [], 3
    for width in widths:
        layers.append(nn.Conv2d(previous, width, 3, padding=1, bias=False))
        previous = width
    vgg = nn.Sequential(*layers, nn.Linear(512, 512), nn.Linear(512, 10))
    percent = [0, 0, 0, 21.04, 51.04, 71.04, 86.05, 87.25, 91.04, 96.04, 91.04, 91.04, 66.04, 93.35, 0.15]
    masks = {}
    for (name, weight), p in zip(prunable_weights(vgg).items(), percent, strict=True):
        keep = torch.ones(weight.numel(), dtype=torch.bool)
        keep[: round(p / 100 * weight.numel())] = False
        masks[name] = keep.reshape(weight.shape)
    assert 100 * sparsity_of(vgg, masks) == pytest.approx(84.46, abs=0.01)


# ------------------------------------------------------------------------------------------ ranking sanity (§7.9)
def test_acmi_ranks_parents_by_their_weight_and_prunes_the_weakest_first():
    generator = np.random.default_rng(0)
    n, parents = 10_000, 16
    a = np.linspace(0.0, 1.5, parents)
    parent = generator.standard_normal((n, parents))
    child = parent @ a + generator.standard_normal(n)
    rho = edge_cmi_matrix(child[:, None], parent, torch.zeros(1, dtype=torch.int64), torch.arange(parents))[0]
    assert spearmanr(rho.numpy(), np.abs(a)).statistic >= 0.85
    pruned = select_cells({"x": rho[None, :]}, {"x": 1.0}, prune_level=0.25)["x"][0]
    kept_min = np.abs(a)[~pruned.numpy()].min()
    assert pruned.sum() >= 1 and np.abs(a)[pruned.numpy()].max() <= np.sort(np.abs(a))[int(pruned.sum()) + 1]
    assert kept_min > 0


# ---------------------------------------------------------------------------------------- determinism (§7.10)
def test_deterministic_and_no_training_inside(digits_train):
    model = digits_model("lenet5")
    before = {k: v.clone() for k, v in model.state_dict().items()}
    first = methods.create("snacs", **FAST).prune(model, "auto", PruneData(train=digits_train))
    snacs_module._CURVE_CACHE.clear()
    from connprune.methods import score_cache

    score_cache.clear()
    second = methods.create("snacs", **FAST).prune(copy.deepcopy(model), "auto", PruneData(train=digits_train))
    assert all(torch.equal(first.masks[k], second.masks[k]) for k in first.masks)
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())


# ----------------------------------------------------------------------------------------- shrink equivalence
@pytest.mark.parametrize("name,params", [
    ("resnet20", dict(limits="fixed", upper_limit=0.95, protect_fraction=0.0, keep_connected=False)),
    ("vgg11", dict(protect_fraction=0.25, keep_connected=False)),
])
def test_shrunk_model_equals_masked_model(digits_train, name, params):
    model = digits_model(name).eval()
    result = methods.create("snacs", groups=4, samples_per_class=10, **params).prune(
        model, "auto", PruneData(train=digits_train))
    masked, _ = surgery.apply(copy.deepcopy(model), result, shrink=False)
    shrunk, _ = surgery.apply(copy.deepcopy(model), result, shrink=True)
    assert count_prunable(shrunk) < count_prunable(model)
    x = torch.randn(6, 1, 8, 8, generator=torch.Generator().manual_seed(0))
    masked.eval(), shrunk.eval()
    with torch.no_grad():
        assert torch.allclose(masked(x), shrunk(x), atol=1e-5)


def test_registered_with_auto():
    described = methods.get("snacs").describe()
    assert described["kind"] == "connection" and described["supports_auto"] and described["needs_data"]
    assert described["parameters"]["phi"] == "weight" and described["parameters"]["mode"] == "single_shot"


# --------------------------------------------------------------------------------------------------- speed (§7.7)
@pytest.mark.slow
def test_hash_acmi_is_at_least_10x_faster_than_mst_on_a_vgg16_pair():
    """One 512×512 pair, 2,000 samples, 64 groups: the MST reference is timed on 64 of the 4,096 cells and
    extrapolated (its cost is the same for every cell); hash ACMI on all cells."""
    generator = torch.Generator().manual_seed(0)
    parent = torch.randn(2000, 512, generator=generator)
    child = parent[:, torch.randperm(512, generator=generator)] * 0.5 + torch.randn(2000, 512, generator=generator)
    labels = group_labels(512, 64)
    started = time.perf_counter()
    edge_cmi_matrix(child, parent, labels, labels)
    edge_seconds = time.perf_counter() - started
    started = time.perf_counter()
    mst_cmi_matrix(child[:, :8], parent, labels[:8], labels)  # 1 child group × 64 parent groups
    mst_seconds = (time.perf_counter() - started) * 64
    ratio = mst_seconds / edge_seconds
    print(f"\nEDGE {edge_seconds:.1f} s, MST {mst_seconds:.1f} s (extrapolated), ratio {ratio:.1f}x")
    assert mst_seconds >= 10 * edge_seconds


# ------------------------------------------------------------------------------------- filter removal (§3 step 7)
@pytest.mark.parametrize("name", ["resnet20", "vgg11"])
def test_defaults_remove_filters_and_lower_macs(digits_train, name):
    """At its defaults (κ = 0.1 protected, keep_connected) SNACS's masks alone keep every filter of a protected
    layer connected, so the shrunk model keeps (nearly) the dense MACs (remove_filters="none": only the classifier's
    unprotected inputs can go); the default remove_filters="unconnected" cuts the filters left unconnected to the
    unprotected groups, and the MACs fall further ("lowest" further still). The shrunk model equals the masked one.
    The operating constraints run in their fast setting (bisected search, 3 EDGE members, 300 samples): they set the
    limits, not what the removal rule does with them."""
    from connprune.measure import cost

    model = digits_model(name).eval()
    dense = cost(model, (1, 8, 8))
    macs = {}
    fast = dict(constraint_search="bisect", n_estimators=3, constraint_samples=300)
    for mode in ("none", "unconnected", "lowest"):
        result = methods.create("snacs", samples_per_class=20, remove_filters=mode, **fast).prune(
            model, "auto", PruneData(train=digits_train))
        shrunk, masks = surgery.apply(copy.deepcopy(model), result, shrink=True)
        macs[mode] = cost(shrunk, (1, 8, 8)).macs
        if mode != "none":
            assert sum(result.info["cut_parent_groups"].values()) > 0
            masked, _ = surgery.apply(copy.deepcopy(model), result, shrink=False)
            x = torch.randn(4, 1, 8, 8, generator=torch.Generator().manual_seed(0))
            with torch.no_grad():
                assert torch.allclose(masked.eval()(x), shrunk.eval()(x), atol=1e-4)
    assert macs["lowest"] <= macs["unconnected"] < macs["none"] <= dense.macs


def test_single_shot_reaches_every_limit_with_protection(digits_train):
    """§7 item 6 with κ = 0.25 and keep_connected: limits above what protection leaves prunable are lowered to it
    (info["limits_clipped"]), and every layer reaches its limit within one cell."""
    model = digits_model("lenet5")
    result = methods.create("snacs", protect_fraction=0.25, upper_limit=0.95, limits="fixed", **FAST).prune(
        model, "auto", PruneData(train=digits_train))
    assert result.info["limits_clipped"]
    for name, limit in result.info["layer_limits"].items():
        cells = np.prod(result.info["groups"][name])
        assert abs(result.info["layer_pruned_cells"][name] - limit) <= 1 / cells + 1e-9
        if name in result.info["limits_clipped"]:
            assert limit < 0.95 and result.info["limits_clipped"][name][0] == 0.95


def test_bisected_constraint_search_lands_near_the_grid_limit(digits_train):
    """``constraint_search="bisect"`` evaluates the two ends and about log2(levels) more; on LeNet-5's real curves its
    limits are within one grid step of the full grid's (equal wherever the curve falls monotonically)."""
    model = digits_model("lenet5")
    snacs_module._CURVE_CACHE.clear()
    full = scored(model, digits_train)
    snacs_module._CURVE_CACHE.clear()
    fast = scored(model, digits_train, constraint_search="bisect")
    levels = full.info["constraint_curves"]["levels"]
    for name, limit in full.limits.items():
        evaluated = [a for a in fast.info["constraint_curves"][name] if a is not None]
        assert len(evaluated) <= 2 + math.ceil(math.log2(len(levels)))
        assert abs(fast.limits[name] - limit) <= levels[1] - levels[0] + 1e-9, (name, limit, fast.limits[name])
        curve = full.info["constraint_curves"][name]
        if all(a >= b for a, b in zip(curve, curve[1:])):
            assert fast.limits[name] == limit
