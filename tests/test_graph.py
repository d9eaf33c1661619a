"""connprune.graph: channel groups, residual streams, depthwise ties, layer pairs, unsupported modules."""

from __future__ import annotations

import copy

import pytest
import torch
from torch import nn

from connprune import graph, methods, models, surgery
from connprune.errors import UserError
from connprune.measure.sparsity import count_prunable
from connprune.surgery.shrink import remove_units

CIFAR = (3, 32, 32)


def names(pairs):
    return [(p.parent, p.child) for p in pairs]


def test_mlp_groups_and_pairs():
    model = models.create("mlp", input_size=8, widths=[20, 12])
    g = graph.build(model, (1, 8, 8))
    assert g.layers == ["features.0", "features.2", "classifier"]
    assert [(x.root, x.producers, x.consumers, x.channels, x.residual) for x in g.groups] == [
        ("features.0", ("features.0",), ("features.2",), 20, False),
        ("features.2", ("features.2",), ("classifier",), 12, False)]
    assert g.groups[0].weights_per_channel == 64 + 12 and g.groups[1].weights_per_channel == 20 + 10
    assert names(g.pairs) == [("features.0", "features.2"), ("features.2", "classifier")]
    assert all(p.features_per_channel == 1 and not p.residual for p in g.pairs)
    assert g.group_of("features.2") is g.groups[1]
    with pytest.raises(UserError, match="'classifier' produces the model's output"):
        g.group_of("classifier")
    with pytest.raises(UserError, match="unknown layer 'nope'.*'features.0'"):
        g.group_of("nope")


@pytest.mark.parametrize("size, spatial", [(28, 25), (8, 4)])
def test_lenet5_flatten_pair(size, spatial):
    g = graph.build(models.create("lenet5", input_size=size), (1, size, size))
    assert g.layers == ["conv1", "conv2", "fc1", "fc2", "fc3"]
    assert [x.root for x in g.groups] == ["conv1", "conv2", "fc1", "fc2"]
    pairs = {(p.parent, p.child): p.features_per_channel for p in g.pairs}
    assert pairs == {("conv1", "conv2"): 1, ("conv2", "fc1"): spatial, ("fc1", "fc2"): 1, ("fc2", "fc3"): 1}
    conv2 = g.group_of("conv2")
    assert conv2.consumers == ("fc1",) and conv2.channels == 16
    assert conv2.weights_per_channel == 6 * 25 + 120 * spatial
    assert g.output_layers == ("fc3",)


def test_vgg11_chain():
    model = models.create("vgg11")
    g = graph.build(model, CIFAR)
    convs = [n for n, m in model.named_modules() if isinstance(m, nn.Conv2d)]
    assert g.layers == convs + ["classifier"]
    assert [x.root for x in g.groups] == convs
    assert names(g.pairs) == list(zip(convs, convs[1:] + ["classifier"]))
    assert all(p.features_per_channel == 1 and not p.residual for p in g.pairs)
    assert all(len(x.producers) == 1 and not x.residual for x in g.groups)


def test_resnet20_residual_streams():
    g = graph.build(models.create("resnet20"), CIFAR)
    stage1 = g.group_of("layer1.1.conv2")
    assert stage1.root == "conv1" and stage1.residual and stage1.channels == 16
    assert stage1.producers == ("conv1", "layer1.0.conv2", "layer1.1.conv2", "layer1.2.conv2")
    assert stage1.consumers == ("layer1.0.conv1", "layer1.1.conv1", "layer1.2.conv1", "layer2.0.downsample.0",
                                "layer2.0.conv1")
    stage2 = g.group_of("layer2.0.downsample.0")
    assert stage2.producers == ("layer2.0.downsample.0", "layer2.0.conv2", "layer2.1.conv2", "layer2.2.conv2")
    assert stage2.residual and g.group_of("layer2.2.conv2") is stage2
    stage3 = g.group_of("layer3.2.conv2")
    assert stage3.consumers[-1] == "fc" and stage3.residual
    inner = g.group_of("layer2.1.conv1")
    assert inner.producers == ("layer2.1.conv1",) and inner.consumers == ("layer2.1.conv2",) and not inner.residual
    assert len(g.groups) == 3 + 9 and g.output_layers == ("fc",)
    pairs = {(p.parent, p.child): p for p in g.pairs}
    assert pairs[("layer1.0.conv1", "layer1.0.conv2")].residual is False
    # the consumer's parents are the summands of the add it reads: block 0's add sums the stem and layer1.0.conv2
    assert {p for p, c in pairs if c == "layer1.1.conv1"} == {"conv1", "layer1.0.conv2"}
    assert {p for p, c in pairs if c == "layer1.2.conv1"} == {"layer1.1.conv2"}
    assert {p for p, c in pairs if c == "layer2.1.conv1"} == {"layer2.0.downsample.0", "layer2.0.conv2"}
    assert {p for p, c in pairs if c == "fc"} == {"layer3.2.conv2"}
    assert pairs[("layer1.2.conv2", "layer2.0.downsample.0")].residual
    assert g.pairs.index(pairs[("conv1", "layer1.0.conv1")]) == 0


def test_mobilenetv2_depthwise_ties():
    g = graph.build(models.create("mobilenetv2"), CIFAR)
    block = g.group_of("layers.1.expand_conv")
    assert g.group_of("layers.1.dw_conv") is block
    assert block.producers == ("layers.1.expand_conv", "layers.1.dw_conv")
    assert block.consumers == ("layers.1.dw_conv", "layers.1.project_conv")
    assert not block.residual and block.channels == 96
    assert block.weights_per_channel == 16 + 9 + 24
    stem = g.group_of("conv1")  # the t=1 block has no expansion: its depthwise conv reads the stem directly
    assert stem.producers == ("conv1", "layers.0.dw_conv") and not stem.residual
    stream = g.group_of("layers.1.project_conv")  # 24 channels: blocks 1 and 2 sum
    assert stream.producers == ("layers.1.project_conv", "layers.2.project_conv") and stream.residual
    pairs = {(p.parent, p.child) for p in g.pairs}
    assert {("layers.1.expand_conv", "layers.1.dw_conv"), ("layers.1.dw_conv", "layers.1.project_conv"),
            ("conv1", "layers.0.dw_conv"), ("layers.1.project_conv", "layers.2.expand_conv")} <= pairs
    assert ("layers.1.expand_conv", "layers.1.project_conv") not in pairs
    assert g.output_layers == ("fc",)


def test_resnet50_bottlenecks():
    g = graph.build(models.create("resnet50", small_input=True, input_size=32), CIFAR)
    stem = g.group_of("conv1")
    assert stem.producers == ("conv1",) and stem.consumers == ("layer1.0.downsample.0", "layer1.0.conv1")
    assert not stem.residual
    stage1 = g.group_of("layer1.0.conv3")
    assert stage1.producers == ("layer1.0.downsample.0", "layer1.0.conv3", "layer1.1.conv3", "layer1.2.conv3")
    assert stage1.residual and stage1.channels == 256
    stage4 = g.group_of("layer4.2.conv3")
    assert stage4.consumers == ("layer4.1.conv1", "layer4.2.conv1", "fc") and stage4.channels == 2048
    for block in ("layer2.1", "layer3.5"):
        first, second = g.group_of(f"{block}.conv1"), g.group_of(f"{block}.conv2")
        assert first.consumers == (f"{block}.conv2",) and second.consumers == (f"{block}.conv3",)
        assert not first.residual and not second.residual
    assert len(g.groups) == 1 + 4 + 2 * 16
    assert len(g.layers) == 54 and g.layers[0] == "conv1" and g.layers[-1] == "fc"


def test_layers_follow_execution_not_definition_order():
    class Reordered(nn.Module):
        def __init__(self):
            super().__init__()
            self.late = nn.Linear(6, 3)
            self.early = nn.Linear(4, 6)

        def forward(self, x):
            return self.late(torch.relu(self.early(x.flatten(1))))

    g = graph.build(Reordered(), (1, 2, 2))
    assert g.layers == ["early", "late"] and g.groups[0].root == "early"


GROUP_SAMPLES = [
    ("lenet5", {"input_size": 28}, (1, 28, 28), None),
    ("resnet20", {}, CIFAR, None),
    ("mobilenetv2", {"width_mult": 0.5}, CIFAR, 8),
    ("vgg11", {}, CIFAR, 4),
    ("resnet50", {"small_input": True, "input_size": 32}, CIFAR, 8),
]


@pytest.mark.parametrize("name, config, shape, limit", GROUP_SAMPLES, ids=[s[0] for s in GROUP_SAMPLES])
def test_weights_per_channel_brute_force(name, config, shape, limit):
    torch.manual_seed(0)
    model = models.create(name, **config)
    g = graph.build(model, shape)
    groups = g.groups if limit is None else \
        [x for x in g.groups if x.residual][:limit // 2] + [x for x in g.groups if not x.residual][:limit // 2]
    total = count_prunable(model)
    for group in groups:
        copy_ = copy.deepcopy(model)
        remove_units(copy_, {group.producers[-1]: [group.channels - 1]}, shape)
        assert total - count_prunable(copy_) == group.weights_per_channel, group.root


class Custom(nn.Module):
    def __init__(self):
        super().__init__()
        self.scale = nn.Parameter(torch.ones(4))

    def forward(self, x):
        return x * self.scale.view(1, -1, 1, 1)


class Wrap(nn.Module):
    def __init__(self, middle: nn.Module):
        super().__init__()
        self.conv = nn.Conv2d(3, 4, 3, padding=1)
        self.middle = middle
        self.fc = nn.Linear(4, 2)

    def forward(self, x):
        x = self.middle(self.conv(x))
        return self.fc(x.mean((2, 3)))


@pytest.mark.parametrize("middle, kind, exact", [
    (nn.GroupNorm(2, 4), "GroupNorm", False), (Custom(), "Custom", True), (nn.PReLU(4), "PReLU", True)])
def test_modules_with_channel_parameters_are_pruned_with_their_channels(middle, kind, exact):
    """Norms, activations with parameters and custom per-channel parameters join the conv's group (Torch-Pruning
    prunes them along); a norm over several channels makes the group inexact (no masked equivalent)."""
    torch.manual_seed(0)
    model = Wrap(middle).eval()
    g = graph.build(model, (3, 8, 8))
    group = g.group_of("conv")
    assert any(name.startswith("middle") for name in group.coupled) and group.exact is exact
    result = methods.create("l1-filter", round_to=1).prune(model, 0.3, methods.PruneData(example_inputs=(3, 8, 8)))
    shrunk, _ = surgery.apply(model, result, example_inputs=(3, 8, 8))
    assert shrunk.conv.out_channels == 4 - len(result.remove["conv"]) < 4
    x = torch.randn(2, 3, 8, 8)
    if exact:  # the shrunk model computes what the masked one does
        masked, _ = surgery.apply(copy.deepcopy(model), result, shrink=False, example_inputs=(3, 8, 8))
        assert torch.allclose(shrunk(x), masked(x), atol=1e-6)
    else:
        with pytest.raises(UserError, match="normalised together"):
            surgery.apply(copy.deepcopy(model), result, shrink=False, example_inputs=(3, 8, 8))


def test_grouped_conv_prunes_whole_positions_and_shared_module_is_refused():
    torch.manual_seed(0)
    model = Wrap(nn.Conv2d(4, 4, 3, padding=1, groups=2)).eval()
    g = graph.build(model, (3, 8, 8))
    assert g.group_of("conv").blocks == 2  # the grouped conv's input groups must stay equal
    result = methods.create("l1-filter", round_to=1).prune(model, 0.3, methods.PruneData(example_inputs=(3, 8, 8)))
    removed = result.remove["conv"]
    assert len(removed) == 2 and removed[1] - removed[0] == 2  # position j of both blocks
    shrunk, _ = surgery.apply(model, result, example_inputs=(3, 8, 8))
    masked, _ = surgery.apply(copy.deepcopy(model), result, shrink=False, example_inputs=(3, 8, 8))
    x = torch.randn(2, 3, 8, 8)
    assert shrunk.middle.in_channels == 2 and torch.allclose(shrunk(x), masked(x), atol=1e-6)

    class Shared(nn.Module):
        def __init__(self):
            super().__init__()
            self.a = nn.Linear(4, 4)
            self.b = nn.Linear(4, 2)

        def forward(self, x):
            return self.b(self.a(self.a(x.flatten(1))))

    with pytest.raises(UserError, match="'a' is called 2 times"):
        graph.build(Shared(), (1, 2, 2))


def test_build_leaves_modes_and_flags_alone():
    model = models.create("resnet20").train()
    model.bn1.eval()  # a frozen BN inside a training model stays frozen
    model.conv1.weight.requires_grad_(False)
    state = {k: v.clone() for k, v in model.state_dict().items()}
    graph.build(model, CIFAR)
    assert model.training and not model.bn1.training
    assert all(m.training for n, m in model.named_modules() if n != "bn1")
    assert not model.conv1.weight.requires_grad and model.fc.weight.requires_grad
    assert all(torch.equal(state[k], v) for k, v in model.state_dict().items())  # BN statistics untouched


def test_input_tied_channels_are_not_a_group():
    class AddInput(nn.Module):
        def __init__(self):
            super().__init__()
            self.conv = nn.Conv2d(3, 3, 3, padding=1)
            self.head = nn.Conv2d(3, 5, 1)
            self.fc = nn.Linear(5, 2)

        def forward(self, x):
            x = x + self.conv(x)
            return self.fc(self.head(x).mean((2, 3)))

    g = graph.build(AddInput(), (3, 8, 8))
    assert [x.root for x in g.groups] == ["head"]
    with pytest.raises(UserError, match="'conv' has its output channels tied to the model's input"):
        g.group_of("conv")
