"""connprune.surgery.shrink: physical removal equals the masked model; dead units; folding; errors."""

from __future__ import annotations

import copy

import pytest
import torch
from torch import nn

from connprune import checkpoint, graph, models
from connprune.errors import UserError
from connprune.measure.sparsity import count_prunable
from connprune.surgery.shrink import dead_units, fold_constant_units, remove_units, shrink

ZOO = {
    "mlp": (1, 8), "lenet300-100": (1, 8), "mlp-500-300": (1, 8), "lenet5": (1, 28),
    "vgg11": (3, 32), "vgg13": (3, 32), "vgg16": (3, 32), "vgg19": (3, 32),
    "resnet20": (3, 32), "resnet32": (3, 32), "resnet56": (3, 32), "resnet110": (3, 32),
    "resnet18": (3, 32), "resnet50": (3, 32), "mobilenetv2": (3, 32),
}


def zoo_model(name: str) -> tuple[nn.Module, tuple[int, int, int]]:
    channels, size = ZOO[name]
    config = {"input_size": size}
    if name in ("resnet18", "resnet50"):
        config["small_input"] = True
    model = models.create(name, **config)
    randomise_batchnorm(model)
    return model.eval(), (channels, size, size)


@torch.no_grad()
def randomise_batchnorm(model: nn.Module) -> None:
    """Non-trivial BN statistics and affine parameters, so a removed channel's BN constant matters."""
    for module in model.modules():
        if isinstance(module, (nn.BatchNorm1d, nn.BatchNorm2d)):
            module.running_mean.uniform_(-0.5, 0.5)
            module.running_var.uniform_(0.5, 1.5)
            module.weight.uniform_(0.5, 1.5)
            module.bias.uniform_(-0.5, 0.5)


@torch.no_grad()
def masked_reference(model: nn.Module, masks: dict[str, torch.Tensor], remove: dict[str, list[int]],
                     shape) -> nn.Module:
    """Weights × masks, and the consumers' input slices of removed units zeroed (what removal computes: a removed
    channel's BN still emits a constant, which removal drops)."""
    reference = copy.deepcopy(model).eval()
    parameters = dict(reference.named_parameters())
    for name, mask in masks.items():
        parameters[name].mul_(mask)
    g = graph.build(reference, shape)
    modules = dict(reference.named_modules())
    for layer, indices in remove.items():
        group = g.group_of(layer)
        for pair in g.pairs:
            if pair.parent in group.producers and pair.child in group.consumers and \
                    not graph.is_depthwise(modules[pair.child]):
                block = pair.features_per_channel
                columns = [i * block + k for i in indices for k in range(block)]
                modules[pair.child].weight[:, columns] = 0.0
    return reference


@torch.no_grad()
def max_diff(a: nn.Module, b: nn.Module, shape, dtype=torch.float64) -> float:
    """Max abs output difference, relative to the output scale where it exceeds 1 (deep ResNets with random BN
    statistics reach outputs of 1e6, where float32 rounding alone is far above 1e-5)."""
    x = torch.randn(3, *shape, generator=torch.Generator().manual_seed(1), dtype=dtype)
    a, b = copy.deepcopy(a).to(dtype).eval(), copy.deepcopy(b).to(dtype).eval()
    expected = b(x)
    return (a(x) - expected).abs().max().item() / max(1.0, expected.abs().max().item())


def random_removal(g: graph.ModelGraph, fraction: float = 0.3) -> dict[str, list[int]]:
    """~``fraction`` of each group's channels, keyed by a random producer of the group."""
    generator = torch.Generator().manual_seed(0)
    remove = {}
    for group in g.groups:
        count = max(1, int(fraction * group.channels)) if group.channels > 1 else 0
        key = group.producers[int(torch.randint(len(group.producers), (1,), generator=generator))]
        remove[key] = torch.randperm(group.channels, generator=generator)[:count].tolist()
    return remove


@pytest.mark.parametrize("name", list(ZOO))
def test_zoo_structured_removal_equals_masked(name, tmp_path):
    torch.manual_seed(0)
    model, shape = zoo_model(name)
    g = graph.build(model, shape)
    remove = random_removal(g)
    reference = masked_reference(model, {}, remove, shape)
    before = count_prunable(model)
    shrunk, masks = shrink(model, {}, shape, remove=remove)
    assert shrunk is model and masks == {}
    assert count_prunable(shrunk) < before
    assert max_diff(shrunk, reference, shape) < 1e-12  # the surgery itself is exact (float64)
    assert max_diff(shrunk, reference, shape, torch.float32) < 1e-5
    shrunk_graph = graph.build(shrunk, shape)
    for group in g.groups:
        removed = next(len(v) for k, v in remove.items() if k in group.producers)
        assert shrunk_graph.group_of(group.root).channels == group.channels - removed
    checkpoint.save(shrunk, tmp_path / "ckpt")
    loaded = checkpoint.load(tmp_path / "ckpt")
    x = torch.randn(2, *shape)
    with torch.no_grad():
        assert torch.equal(loaded(x), shrunk.eval()(x))


def test_float32_equivalence_and_masks_reindexed():
    torch.manual_seed(0)
    model, shape = zoo_model("resnet20")
    g = graph.build(model, shape)
    remove = random_removal(g)
    masks = {f"{name}.weight": torch.rand(model.get_submodule(name).weight.shape) > 0.3 for name in g.layers}
    reference = masked_reference(model, masks, remove, shape)
    shrunk, left = shrink(model, masks, shape, remove=remove)
    x = torch.randn(4, *shape)
    with torch.no_grad():
        assert (shrunk(x) - reference(x)).abs().max().item() < 1e-5
    parameters = dict(shrunk.named_parameters())
    assert set(left) == set(masks)
    for name, mask in left.items():
        assert mask.shape == parameters[name].shape and mask.dtype == torch.bool
        assert not parameters[name][~mask].any()  # masked weights stayed zero and line up with their masks


# ------------------------------------------------------------------------------------------------------ dead units


class MLP(nn.Module):
    def __init__(self):
        super().__init__()
        self.flatten = nn.Flatten()
        self.fc1 = nn.Linear(16, 12)
        self.relu1 = nn.ReLU()
        self.fc2 = nn.Linear(12, 10)
        self.relu2 = nn.ReLU()
        self.fc3 = nn.Linear(10, 3)

    def forward(self, x):
        return self.fc3(self.relu2(self.fc2(self.relu1(self.fc1(self.flatten(x))))))


def full_masks(model: nn.Module) -> dict[str, torch.Tensor]:
    return {n: torch.ones_like(p, dtype=torch.bool) for n, p in model.named_parameters() if n.endswith("weight")
            and p.dim() > 1}


def check_shrink(model: nn.Module, masks, shape, expected_dead, tolerance=1e-5):
    """dead_units == expected; shrink equals the masked model; re-indexed masks match."""
    model.eval()
    assert dead_units(model, masks, shape) == expected_dead
    reference = masked_reference(model, masks, {}, shape)
    before = {n: p.shape for n, p in model.named_parameters()}
    shrunk, left = shrink(model, masks, shape)
    x = torch.randn(4, *shape)
    with torch.no_grad():
        assert (shrunk(x) - reference(x)).abs().max().item() < tolerance
    for name, mask in left.items():
        assert mask.shape == dict(shrunk.named_parameters())[name].shape
    return before, shrunk


def test_mlp_dead_units_unread_and_constant():
    torch.manual_seed(0)
    model = MLP()
    with torch.no_grad():
        model.fc1.bias.uniform_(0.1, 0.5)  # constant units emit relu(bias) > 0: they must be folded
    masks = full_masks(model)
    masks["fc2.weight"][:, [1, 4]] = False  # (a) fc1 units 1 and 4 are never read
    masks["fc1.weight"][[2, 7]] = False  # (b) fc1 units 2 and 7 emit relu(bias): folded into fc2's bias
    masks["fc2.weight"][3] = False  # (b) fc2 unit 3 emits relu(bias) too
    masks["fc3.weight"][:, 5] = False  # (a) fc2 unit 5 is never read
    bias_before = model.fc3.bias.clone()
    _, shrunk = check_shrink(model, masks, (1, 4, 4), {"fc1": [1, 2, 4, 7], "fc2": [3, 5]})
    assert shrunk.fc1.out_features == 8 and shrunk.fc2.in_features == 8 and shrunk.fc2.out_features == 8
    assert not torch.equal(shrunk.fc3.bias, bias_before)  # fc2 unit 3's constant went into fc3's bias


def test_mlp_dead_units_cascade():
    torch.manual_seed(0)
    model = MLP()
    masks = full_masks(model)
    masks["fc2.weight"][:, 3:] = False  # fc1 units 3.. unread
    masks["fc2.weight"][0, :3] = False  # then fc2 unit 0 reads only removed fc1 units: all its weights masked
    masks["fc1.weight"][:3] = False  # fc1 units 0..2 constant → fc2 units all constant → everything folds...
    # ...but a group is never emptied: one channel stays (exact either way)
    _, shrunk = check_shrink(model, masks, (1, 4, 4), {"fc1": list(range(12)), "fc2": list(range(10))})
    assert shrunk.fc1.out_features == 1 and shrunk.fc2.out_features == 1


def test_a_dead_group_keeps_a_constant_channel():
    torch.manual_seed(0)
    model = MLP()
    with torch.no_grad():
        model.fc1.bias.uniform_(0.1, 0.5)
    masks = full_masks(model)
    masks["fc1.weight"][:] = False  # every fc1 unit emits relu(bias): all constant, none unread (so is fc2)
    _, shrunk = check_shrink(model, masks, (1, 4, 4), {"fc1": list(range(12)), "fc2": list(range(10))})
    assert shrunk.fc1.out_features == 1 and shrunk.fc2.in_features == 1 and shrunk.fc2.out_features == 10


class SmallCNN(nn.Module):
    """conv1 (bias, pad 1) → bn → relu → conv2 (no bias, pad 0) → bn → relu → conv3 (pad 1) → bn → relu → pool →
    flatten → fc."""

    def __init__(self):
        super().__init__()
        self.conv1 = nn.Conv2d(2, 6, 3, padding=1)
        self.bn1 = nn.BatchNorm2d(6)
        self.relu1 = nn.ReLU()
        self.conv2 = nn.Conv2d(6, 8, 3, padding=0, bias=False)
        self.bn2 = nn.BatchNorm2d(8)
        self.relu2 = nn.ReLU()
        self.conv3 = nn.Conv2d(8, 5, 3, padding=1, bias=False)
        self.bn3 = nn.BatchNorm2d(5)
        self.relu3 = nn.ReLU()
        self.pool = nn.MaxPool2d(2)
        self.flatten = nn.Flatten()
        self.fc = nn.Linear(5 * 3 * 3, 4)

    def forward(self, x):
        x = self.relu1(self.bn1(self.conv1(x)))
        x = self.relu2(self.bn2(self.conv2(x)))
        x = self.pool(self.relu3(self.bn3(self.conv3(x))))
        return self.fc(self.flatten(x))


def small_cnn() -> SmallCNN:
    torch.manual_seed(0)
    model = SmallCNN()
    randomise_batchnorm(model)
    with torch.no_grad():
        model.bn2.bias[[1, 2]] = torch.tensor([2.0, -5.0])  # conv2 unit 1: constant > 0; unit 2: relu → exactly 0
        model.bn2.running_mean.zero_()
        model.bn3.bias[4] = 3.0
        model.bn1.bias[0] = 3.0
    return model.eval()


def test_cnn_dead_units_fold_rules():
    model = small_cnn()
    masks = full_masks(model)
    masks["conv1.weight"][0] = False  # constant map into conv2 (padding 0): folded into bn2 (conv2 has no bias)
    masks["conv2.weight"][:, 3] = False  # conv1 unit 3 never read
    masks["conv2.weight"][1] = False  # constant > 0 into conv3 with padding 1: NOT foldable, stays
    masks["conv2.weight"][2] = False  # relu(negative) = exactly 0 into the padded conv3: removable
    masks["conv3.weight"][4] = False  # constant through pool + flatten into fc: folded into fc's bias
    mean_before = model.bn2.running_mean.clone()
    fc_bias_before = model.fc.bias.clone()
    _, shrunk = check_shrink(model, masks, (2, 8, 8), {"conv1": [0, 3], "conv2": [2], "conv3": [4]})
    assert shrunk.conv1.out_channels == 4 and shrunk.conv2.in_channels == 4 and shrunk.conv2.out_channels == 7
    assert shrunk.conv2.bias is None and not torch.equal(shrunk.bn2.running_mean, mean_before[[0, 1, 3, 4, 5, 6, 7]])
    assert shrunk.fc.in_features == 4 * 9 and not torch.equal(shrunk.fc.bias, fc_bias_before)


def test_fold_constant_units_creates_a_bias_when_needed():
    model = nn.Sequential(nn.Linear(4, 3), nn.ReLU(), nn.Linear(3, 2, bias=False), nn.ReLU(), nn.Linear(2, 2))
    torch.manual_seed(0)
    with torch.no_grad():
        model[0].weight[1] = 0.0
        model[0].bias[1] = 0.7
    x = torch.randn(5, 1, 2, 2)
    flat = nn.Sequential(nn.Flatten(), model)
    with torch.no_grad():
        expected = flat(x)
    fold_constant_units(flat, {"1.0": [1]}, (1, 2, 2))
    assert flat[1][2].bias is not None
    remove_units(flat, {"1.0": [1]}, (1, 2, 2))
    with torch.no_grad():
        assert (flat(x) - expected).abs().max() < 1e-6
    with pytest.raises(UserError, match="does not reach '1.2' as a constant"):
        fold_constant_units(flat, {"1.0": [0]}, (1, 2, 2))


def test_fold_into_batchnorm1d_running_mean():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Flatten(), nn.Linear(4, 3), nn.ReLU(), nn.Linear(3, 2, bias=False), nn.BatchNorm1d(2),
                          nn.ReLU(), nn.Linear(2, 2))
    randomise_batchnorm(model)
    model.eval()
    masks = full_masks(model)
    masks["1.weight"][1] = False
    with torch.no_grad():
        model[1].bias[1] = 0.7
    mean = model[4].running_mean.clone()
    _, shrunk = check_shrink(model, masks, (1, 2, 2), {"1": [1]})
    assert shrunk[3].bias is None and shrunk[3].in_features == 2
    assert not torch.allclose(shrunk[4].running_mean, mean)


def test_wrong_input_shape_is_a_user_error():
    with pytest.raises(UserError, match=r"cannot run on inputs of shape \(3, 8, 8\).*\(channels, height, width\)"):
        graph.build(models.create("mlp", input_size=8), (3, 8, 8))


def test_residual_streams_need_every_consumer():
    torch.manual_seed(0)
    model, shape = zoo_model("resnet20")
    g = graph.build(model, shape)
    stream = g.group_of("conv1")
    masks = full_masks(model)
    for consumer in stream.consumers[:-1]:
        masks[f"{consumer}.weight"][:, 5] = False
    masks["conv1.weight"][7] = False  # a producer row of the stream: never a constant (other producers add in)
    for producer in stream.producers:
        masks[f"{producer}.weight"][9] = False  # even all producers dead: residual streams are not folded
    assert "conv1" not in dead_units(model, masks, shape)
    masks[f"{stream.consumers[-1]}.weight"][:, 5] = False  # now every consumer agrees
    before, shrunk = check_shrink(model, masks, shape, {"conv1": [5]})
    assert shrunk.conv1.out_channels == 15 and shrunk.layer1[2].conv2.out_channels == 15


def test_depthwise_dead_kernel_folds_into_projection():
    torch.manual_seed(0)
    model = models.create("mobilenetv2", width_mult=0.25)
    randomise_batchnorm(model)
    model.eval()
    masks = full_masks(model)
    masks["layers.1.dw_conv.weight"][[0, 5]] = False  # constant maps into the 1×1 projection: folded into its BN
    masks["layers.1.project_conv.weight"][:, 7] = False  # channel 7 never read
    _, shrunk = check_shrink(model, masks, (3, 16, 16), {"layers.1.expand_conv": [0, 5, 7]})
    assert shrunk.layers[1].dw_conv.groups == 45 and shrunk.layers[1].expand_conv.out_channels == 45


STRESS = [("lenet5", {"input_size": 28}, (1, 28, 28)), ("resnet20", {}, (3, 16, 16)),
          ("mobilenetv2", {"width_mult": 0.25}, (3, 16, 16)), ("vgg11", {}, (3, 16, 16))]


@pytest.mark.parametrize("name, config, shape", STRESS, ids=[s[0] for s in STRESS])
def test_heavy_masks_shrink_equals_masked(name, config, shape):
    """Whole rows and columns masked at random on top of unstructured masks: many unread and constant units,
    cascades and non-foldable padded cases; shrinking must stay exact and must remove something."""
    torch.manual_seed(0)
    model = models.create(name, **config)
    randomise_batchnorm(model)
    model.eval()
    masks = {}
    for layer in graph.build(model, shape).layers:
        weight = model.get_submodule(layer).weight
        mask = torch.rand(weight.shape) > 0.5
        mask[torch.rand(weight.shape[0]) < 0.3] = False
        if weight.shape[1] > 1:
            mask[:, torch.rand(weight.shape[1]) < 0.3] = False
        masks[f"{layer}.weight"] = mask
    reference = masked_reference(model, masks, {}, shape)
    before = count_prunable(model)
    dead = dead_units(model, masks, shape)
    shrunk, left = shrink(model, masks, shape)
    assert dead and count_prunable(shrunk) < before
    x = torch.randn(4, *shape)
    with torch.no_grad():
        expected = reference(x)
        assert (shrunk(x) - expected).abs().max().item() < 1e-5 * max(1.0, expected.abs().max().item())
    parameters = dict(shrunk.named_parameters())
    assert all(mask.shape == parameters[n].shape for n, mask in left.items())
    assert not any(mask.all() for mask in left.values())


# ---------------------------------------------------------------------------------------------------------- errors


def test_removal_errors():
    model, shape = zoo_model("resnet20")
    with pytest.raises(UserError, match="removing all 16 output channels of 'layer1.0.conv1' would disconnect"):
        remove_units(model, {"layer1.0.conv1": list(range(16))}, shape)
    with pytest.raises(UserError, match="removing all 16 .*'conv1' and 'layer1.1.conv2' \\(coupled with"):
        remove_units(model, {"conv1": list(range(8)), "layer1.1.conv2": list(range(8, 16))}, shape)
    with pytest.raises(UserError, match="'fc' produces the model's output"):
        remove_units(model, {"fc": [0]}, shape)
    with pytest.raises(UserError, match="unknown layer 'layer9.conv'"):
        remove_units(model, {"layer9.conv": [0]}, shape)
    with pytest.raises(UserError, match="unit index 16 is out of range for layer 'layer1.0.conv1', which has 16"):
        remove_units(model, {"layer1.0.conv1": [3, 16]}, shape)
    with pytest.raises(UserError, match="unit index -1 is out of range"):
        remove_units(model, {"layer1.0.conv1": [-1]}, shape)
    with pytest.raises(UserError, match="not an integer"):
        remove_units(model, {"layer1.0.conv1": [1.5]}, shape)
    assert model.layer1[0].conv1.out_channels == 16 and model.conv1.out_channels == 16  # nothing half-done
    with pytest.raises(UserError, match="removing all 6"):
        shrink(models.create("lenet5"), {}, (1, 28, 28), remove={"conv1": list(range(6))})


def test_remove_units_with_a_graph_and_duplicates():
    torch.manual_seed(0)
    model, shape = zoo_model("lenet5")
    g = graph.build(model, shape)
    reference = masked_reference(model, {}, {"conv2": [1, 3]}, shape)
    remove_units(model, {"conv2": [3, 1, 3]}, shape, graph=g)
    assert model.conv2.out_channels == 14 and model.fc1.in_features == 14 * 25
    assert max_diff(model, reference, shape) < 1e-9
    remove_units(model, {"fc1": [0]}, shape, graph=g)  # the stale graph is rebuilt
    assert model.fc1.out_features == 119 and model.fc2.in_features == 119
