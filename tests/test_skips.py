"""Skip branches as a structural edit (surgery.skips): plans, shapes, masks, hooks, checkpoints (n2nskip.md §3, §7)."""

from __future__ import annotations

import copy
import json

import numpy as np
import pytest
import torch
from torch import nn

from connprune import checkpoint, models
from connprune.errors import UserError
from connprune.measure import heat
from connprune.measure.cost import count_macs
from connprune.measure.sparsity import count_prunable, prunable_weights
from connprune.surgery import MaskEnforcer, edits, skips
from connprune.train import Trainer
from connprune.train.recipes import TrainConfig

DIGITS = (1, 8, 8)


def mlp(seed: int = 0) -> nn.Module:
    torch.manual_seed(seed)
    return models.create("mlp", in_channels=1, input_size=8, widths=[48, 40, 32, 24])


def resnet(seed: int = 0) -> nn.Module:
    torch.manual_seed(seed)
    return models.create("resnet20", in_channels=1, input_size=8)


def add_all(model: nn.Module, shape=DIGITS, fraction: float = 0.3, kind: str = "n2n", **plan) -> dict:
    masks: dict[str, torch.Tensor] = {}
    for i, site in enumerate(skips.plan(model, shape, **plan)):
        masks = edits.perform(model, {"op": "skip", **site.spec(str(i), kind, round(fraction * site.pairs), i)},
                              masks)
    return masks


def test_chain_plan_for_vgg_spans_three_layers_and_pools_to_the_target():
    model = models.create("vgg11", in_channels=3, input_size=32)
    sites = skips.plan(model, (3, 32, 32), placement="chain")
    # VGG-11 layers: features.0, .4, .8, .11, .15, .18, .22, .25, classifier → blocks (0-8), (11-18), (22-classifier
    # is conv→linear: left out)
    assert [(s.source, s.target) for s in sites] == [("features.0", "features.8"), ("features.11", "features.18")]
    first = sites[0]
    assert (first.in_units, first.out_units, first.kernel_size, first.add_to) == (3, 256, 3, "features.10")
    assert first.output_size == (8, 8) and first.stride == 1 and first.kernel_area == 9
    every = skips.plan(model, (3, 32, 32), placement="every")
    assert len(every) == 6 and every[1].source == "features.4"
    assert skips.plan(model, (3, 32, 32)) == sites  # auto: one skip per block in a plain network
    assert {s.span for s in sites + every} == {3}


def test_auto_placement_shortens_the_span_only_where_nothing_fits():
    lenet = models.create("lenet5", input_size=8)
    sites = skips.plan(lenet, DIGITS)  # conv1 conv2 fc1 fc2 fc3: only fc1 → fc3 joins two layers of one kind
    assert [(s.source, s.target, s.span) for s in sites] == [("fc1", "fc3", 3)]
    assert sites[0].in_units == lenet.fc1.in_features and sites[0].spec("0", "n2n")["span"] == 3
    assert skips.plan(lenet, DIGITS, placement="chain") == sites  # the chain moves on past conv2 → fc2
    shortened = skips.plan(lenet, DIGITS, span=4)  # no span-4 site of one kind: auto falls back to span 3
    assert [(s.source, s.target, s.span) for s in shortened] == [("fc1", "fc3", 3)]
    with pytest.raises(UserError, match="no skip fits"):
        skips.plan(lenet, DIGITS, span=4, placement="every")
    with pytest.raises(UserError, match="no skip fits"):
        skips.plan(lenet, DIGITS, span=4, placement="chain")


def test_chain_walk_places_non_overlapping_blocks():
    """Chain: blocks of k layers that never overlap, starting from the first layer; every: one per start layer."""
    model = mlp()  # features.0 .2 .4 .6, classifier: 5 linear layers
    for span in (2, 3, 4):
        chain = skips.plan(model, DIGITS, span=span, placement="chain")
        layers = ["features.0", "features.2", "features.4", "features.6", "classifier"]
        expected = [(layers[i], layers[i + span - 1]) for i in range(0, len(layers) - span + 1, span)]
        assert [(s.source, s.target) for s in chain] == expected
        assert len(skips.plan(model, DIGITS, span=span, placement="every")) == len(layers) - span + 1


def test_block_plan_for_resnets_uses_strides():
    sites = skips.plan(models.create("resnet20"), (3, 32, 32))
    assert len(sites) == 9 and all(s.target.endswith("conv2") and s.add_to.endswith("relu2") for s in sites)
    down = next(s for s in sites if s.source == "layer2.0.conv1")
    assert (down.in_units, down.out_units, down.stride, down.output_size) == (16, 32, 2, (16, 16))
    bottleneck = skips.plan(models.create("resnet50", small_input=True), (3, 32, 32))
    assert len(bottleneck) == 16 and bottleneck[0].kernel_size == 1 and bottleneck[0].target == "layer1.0.conv3"


def test_mlp_plan_and_bad_plans():
    sites = skips.plan(mlp(), DIGITS, placement="chain")
    assert [(s.source, s.target, s.add_to) for s in sites] == [("features.0", "features.4", "features.5")]
    assert [(s.source, s.target, s.add_to) for s in skips.plan(mlp(), DIGITS, span=2, placement="chain")] == \
        [("features.0", "features.2", "features.3"), ("features.4", "features.6", "features.7")]
    last = skips.plan(mlp(), DIGITS, span=5, placement="chain")[0]
    assert last.target == "classifier" and last.add_to == ""  # output layer: added to the model's output
    with pytest.raises(UserError, match="at least 2"):
        skips.plan(mlp(), DIGITS, span=1)
    with pytest.raises(UserError, match="placement=blocks"):
        skips.plan(resnet(), DIGITS, placement="chain")
    with pytest.raises(UserError, match="no residual blocks"):
        skips.plan(mlp(), DIGITS, placement="blocks")


@pytest.mark.parametrize("build", [mlp, resnet])
def test_branch_output_has_the_targets_preactivation_shape(build):
    model = build()
    sites = skips.plan(model, DIGITS)
    add_all(model)
    modules = dict(model.named_modules())
    seen = {}
    handles = [modules[s.add_to].register_forward_pre_hook(
        lambda m, inp, key=s.add_to: seen.__setitem__(key, inp[0].shape)) for s in sites if s.add_to]
    captured = {}
    for name, branch in skips.branches(model).items():
        handles.append(branch.register_forward_hook(lambda m, i, o, key=name: captured.__setitem__(key, o.shape)))
    model(torch.randn(4, *DIGITS))
    for handle in handles:
        handle.remove()
    for i, site in enumerate(sites):
        assert captured[str(i)][1] == site.out_units
        if site.add_to:
            assert captured[str(i)] == seen[site.add_to]


def test_skip_masks_are_constant_over_kernels_and_exact():
    model = resnet()
    masks = add_all(model, fraction=0.25)
    found = skips.skip_masks(model, masks)
    assert len(found) == 9 and not set(found) & set(prunable_weights(model))
    for i, site in enumerate(skips.plan(resnet(), DIGITS)):
        mask = found[f"skips.{i}.conv.weight"]
        per_pair = mask.flatten(2)
        assert torch.equal(per_pair.min(dim=2).values, per_pair.max(dim=2).values)  # §7.3
        assert int(per_pair[..., 0].sum()) == round(0.25 * site.pairs)
        weight = model.skips[str(i)].conv.weight
        assert torch.all(weight[~mask] == 0) and torch.all(weight[mask] != 0)
    assert count_prunable(model) == count_prunable(resnet())  # skips are not prunable weights


@pytest.mark.parametrize("connections", [0, 7, 16, 40, 16 * 9])
def test_fan_in_layout_gives_every_target_the_same_number_of_sources(connections):
    spec = {"name": "0", "connections": connections, "seed": 3, "layout": "fan-in"}
    mask = skips.connection_mask(spec, (16, 9, 3, 3))
    per_pair = mask.flatten(2)
    assert torch.equal(per_pair.min(dim=2).values, per_pair.max(dim=2).values)  # constant over the kernel
    fan_in = per_pair[..., 0].sum(dim=1)
    assert int(fan_in.sum()) == connections  # exact count
    assert set(fan_in.tolist()) <= {connections // 16, connections // 16 + 1}
    if connections >= 16:
        assert int(fan_in.min()) >= 1  # every target unit receives a skip
    assert torch.equal(mask, skips.connection_mask(spec, (16, 9, 3, 3)))  # seeded: replays the same mask
    uniform = skips.connection_mask({**spec, "layout": "uniform"}, (16, 9, 3, 3))
    assert int(uniform.flatten(2)[..., 0].sum()) == connections
    with pytest.raises(UserError, match="layout"):
        skips.connection_mask({**spec, "layout": "rows"}, (16, 9, 3, 3))


@pytest.mark.parametrize("build", [mlp, resnet])
def test_zero_skip_weights_compute_the_sequential_network(build):
    plain, model = build(), build()
    add_all(model)
    x = torch.randn(5, *DIGITS)
    plain.eval(), model.eval()
    assert not torch.allclose(model(x), plain(x))
    with skips.detached(model):
        assert torch.equal(model(x), plain(x))
        assert not any("skip" in name for name, _ in model.named_modules())
    assert any("skip" in name for name, _ in model.named_modules())  # restored
    with torch.no_grad():
        for branch in skips.branches(model).values():
            branch.conv.weight.zero_()
    assert torch.equal(model(x), plain(x))  # §7.8


def test_checkpoint_round_trip_and_deepcopy(tmp_path):
    model = models.create("vgg11", in_channels=1, input_size=8)
    masks = add_all(model, fraction=0.1, placement="chain")
    model.eval()
    x = torch.randn(3, *DIGITS)
    expected = model(x)
    checkpoint.save(model, tmp_path / "ck", masks=masks)
    meta = json.loads((tmp_path / "ck" / "model.json").read_text())
    assert [s["op"] for s in meta["skips"]] == ["skip", "skip"] and meta["skips"][0]["connections"] > 0
    loaded = checkpoint.load_checkpoint(tmp_path / "ck")
    assert torch.equal(loaded.model(x), expected)
    assert set(skips.skip_masks(loaded.model, loaded.masks)) == set(skips.skip_masks(model, masks))
    twin = copy.deepcopy(model)
    with torch.no_grad():
        twin.skips["0"].conv.weight.mul_(2.0)  # the copy's hooks run the copy's branches, not the original's
    assert torch.equal(model(x), expected) and not torch.equal(twin(x), expected)


def test_masked_skip_weights_stay_zero_during_training(digits_train):
    model = mlp()
    masks = add_all(model, fraction=0.2)
    masks.update({name: torch.rand(w.shape, generator=torch.Generator().manual_seed(1)) < 0.3
                  for name, w in prunable_weights(model).items()})
    config = TrainConfig(epochs=1, batch_size=128, lr=0.05, schedule="none")
    before = model.skips["0"].conv.weight.detach().clone()
    trainer = Trainer(model, digits_train, None, config, progress=False)
    MaskEnforcer(model, masks, trainer.optimizer)
    trainer.fit()
    weight = model.skips["0"].conv.weight.detach()
    mask = masks["skips.0.conv.weight"]
    assert torch.all(weight[~mask] == 0) and not torch.equal(weight[mask], before[mask])  # §7.6: trained, masked
    for name, param in model.named_parameters():
        if name in masks:
            assert torch.all(param[~masks[name]] == 0)


@pytest.mark.parametrize("build, placement", [(lambda: models.create("vgg11", in_channels=1, input_size=8), "chain"),
                                              (resnet, "blocks"), (mlp, "every")])
@pytest.mark.parametrize("per_target", [1, 3])
def test_eval_mode_skips_cost_their_nonzeros_times_positions(build, placement, per_target):
    """Sparse branches are counted as run compactly: the counted MACs of the skips are exactly their non-zero weights
    × output positions (brute force: the dense conv's output size, the weight's non-zeros) at constant fan-in, at
    most one kernel slice per target unit and position more otherwise; the compact output is the dense one's."""
    plain, model = build(), build()
    masks: dict[str, torch.Tensor] = {}
    for i, site in enumerate(skips.plan(model, DIGITS, placement=placement)):
        connections = min(site.pairs, per_target * site.out_units + i % 2)  # odd sites: one target with one more
        masks = edits.perform(model, {"op": "skip", **site.spec(str(i), "n2n", connections, i, layout="fan-in")},
                              masks)
    inputs, modules = {}, dict(model.named_modules())
    found = skips.branches(model)
    specs = {str(s["name"]): s for s in edits.recorded(model) if s.get("op") == "skip"}
    handles = [modules[specs[name]["source"]].register_forward_pre_hook(
        lambda m, inp, key=name: inputs.__setitem__(key, inp[0])) for name in found]
    x = torch.randn(1, *DIGITS)
    model.eval()(x)
    for handle in handles:
        handle.remove()
    exact, slack = 0, 0
    for name, branch in found.items():
        positions = branch.conv(inputs[name])[0, 0].numel()  # the dense conv's output positions
        weight = branch.conv.weight
        exact += int(torch.count_nonzero(weight)) * positions
        if int(specs[name]["connections"]) % weight.shape[0]:
            slack += weight[0].numel() // weight.shape[1] * weight.shape[0] * positions  # f² · out · positions
    skip_macs = count_macs(model, DIGITS) - count_macs(plain, DIGITS)
    assert exact <= skip_macs <= exact + slack
    if not slack:
        assert skip_macs == exact
    batch = torch.randn(4, *DIGITS)
    with skips.compact(model):
        compact = model(batch)
    assert not any(branch.compact for branch in found.values())  # restored: training and evaluation run dense
    torch.testing.assert_close(model(batch), compact, rtol=1e-5, atol=1e-5)
    for branch in found.values():
        branch.sources = None  # no compact form: counted dense
    assert count_macs(model, DIGITS) > skip_macs + count_macs(plain, DIGITS)


def test_residual_skips_pad_channels_and_have_no_weights():
    model = resnet()
    plain = resnet()
    sites = skips.plan(model, DIGITS)
    masks = {}
    for i, site in enumerate(sites):
        masks = edits.perform(model, {"op": "skip", **site.spec(str(i), "res")}, masks)
    assert masks == {} and sum(p.numel() for p in model.skips.parameters()) == 0
    branch = model.skips["3"]  # layer2.0: 16 → 32 channels, 8×8 → 4×4
    out = branch(torch.ones(2, 16, 8, 8))
    assert out.shape == (2, 32, 4, 4) and torch.all(out[:, :16] == 1) and torch.all(out[:, 16:] == 0)
    model.eval(), plain.eval()
    x = torch.randn(2, *DIGITS)
    assert not torch.allclose(model(x), plain(x))
    graph = heat.unit_graph(model, DIGITS)
    assert graph.adjacency.nnz > heat.unit_graph(plain, DIGITS).adjacency.nnz  # identity edges u_i → u_i
    with pytest.raises(UserError, match="cannot map"):
        skips.ResidualSkip({"in_units": 8, "out_units": 4})


def test_skip_edges_enter_the_unit_graph():
    model = mlp()
    plain = heat.unit_graph(model, DIGITS)
    masks = add_all(model, fraction=0.1, placement="chain")
    graph = heat.unit_graph(model, DIGITS, masks=masks)
    kept = int(masks["skips.0.conv.weight"].sum())
    # features.0's 64 input pixels → features.4's 32 output units (the 24 input nodes of features.6): new pairs
    assert graph.adjacency.nnz == plain.adjacency.nnz + 2 * kept
    block = graph.adjacency[graph.block("features.0:in"), graph.block("features.6:in")].toarray()
    np.testing.assert_array_equal(block != 0, masks["skips.0.conv.weight"].T.numpy())
    assert graph.eigenvalues()[1] >= plain.eigenvalues()[1] - 1e-9  # §7.15


def test_bad_specs_are_user_errors():
    model = mlp()
    site = skips.plan(model, DIGITS)[0]
    with pytest.raises(UserError, match="missing"):
        edits.perform(model, {"op": "skip", "name": "0"})
    with pytest.raises(UserError, match="not a conv/linear"):
        edits.perform(model, {"op": "skip", **{**site.spec("0", "n2n"), "source": "features.1"}})
    with pytest.raises(UserError, match="unknown skip kind"):
        edits.perform(model, {"op": "skip", **site.spec("0", "dense")})
    with pytest.raises(UserError, match="outside"):
        edits.perform(model, {"op": "skip", **site.spec("0", "n2n", connections=10**9)})
    edits.perform(model, {"op": "skip", **site.spec("0", "n2n", connections=3)})
    with pytest.raises(UserError, match="already has a skip"):
        edits.perform(model, {"op": "skip", **site.spec("0", "n2n", connections=3)})


def test_pool_conv_bridge_pools_first_and_costs_the_targets_positions(tmp_path):
    """``bridge=pool-conv``: the branch is relu(bn(conv_s(maxpool(a^l)))) (oracle: the same ops by hand), its
    counted MACs are its non-zeros × the target's positions (closed form), and the spec survives a checkpoint."""
    plain, model, code_release = (models.create("vgg11", in_channels=3, input_size=16) for _ in range(3))
    shape = (3, 16, 16)
    site = skips.plan(model, shape, placement="chain")[0]  # features.0 (16×16 input) → features.8 (4×4)
    masks = {}
    for net, bridge in ((model, "pool-conv"), (code_release, "conv-pool")):
        spec = site.spec("0", "n2n", connections=2 * site.out_units, seed=3, layout="fan-in", bridge=bridge)
        masks[bridge] = edits.perform(net, {"op": "skip", **spec}, {})
    branch = model.skips["0"].eval()
    x = torch.randn(2, *shape)
    weight = branch.conv.weight * masks["pool-conv"]["skips.0.conv.weight"]
    by_hand = torch.relu(branch.bn(torch.nn.functional.conv2d(
        torch.nn.functional.adaptive_max_pool2d(x, site.output_size), weight, padding=branch.conv.padding)))
    torch.testing.assert_close(branch(x), by_hand)
    nonzero = int(masks["pool-conv"]["skips.0.conv.weight"].sum())
    positions = site.output_size[0] * site.output_size[1]
    assert count_macs(model, shape) - count_macs(plain, shape) == nonzero * positions
    assert count_macs(code_release, shape) - count_macs(plain, shape) == nonzero * shape[1] * shape[2]
    checkpoint.save(model, tmp_path / "ck", masks=masks["pool-conv"])
    loaded = checkpoint.load_checkpoint(tmp_path / "ck").model.eval()
    torch.testing.assert_close(loaded(x), model.eval()(x))
    with pytest.raises(UserError, match="unknown bridge"):
        skips.SparseSkip({**site.spec("1", "n2n", 1, bridge="pool-conv"), "bridge": "sideways"})
