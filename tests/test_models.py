"""The model zoo: names, specs, shapes on many inputs, parameter counts, config handling, rebuilds and tracing."""

from __future__ import annotations

import json

import pytest
import torch
import torch.fx
import torch_pruning as tp
from hypothesis import given, settings
from hypothesis import strategies as st
from torch import nn

from connprune import models
from connprune.errors import UserError
from connprune.models.lenet import flatten_size

NAMES = ["mlp", "lenet300-100", "mlp-500-300", "lenet5", "vgg11", "vgg13", "vgg16", "vgg19", "resnet20", "resnet32",
         "resnet56", "resnet110", "resnet18", "resnet50", "mobilenetv2"]
IMAGENET = {"resnet18", "resnet50"}
ALLOWED_MODULES = (nn.Conv2d, nn.Linear, nn.BatchNorm2d, nn.BatchNorm1d, nn.ReLU, nn.ReLU6, nn.MaxPool2d,
                   nn.AdaptiveAvgPool2d, nn.Flatten, nn.Identity, nn.Sequential)


def small(name: str, **config):
    """Config for a quick forward: the ImageNet-layout nets with their small-input stem on 32×32."""
    if name in IMAGENET:
        config = {"small_input": True, "input_size": 32, **config}
    return config


def shape_of(model: nn.Module) -> tuple[int, int, int]:
    config = model.connprune_config
    return (config["in_channels"], config["input_size"], config["input_size"])


def test_names_and_specs():
    assert models.names() == NAMES
    for name in NAMES:
        spec = models.spec(name)
        assert spec.name == name and spec.description and spec.family
        config = spec.default_config
        assert spec.default_input_shape == (config["in_channels"], config["input_size"], config["input_size"])
        assert spec.default_num_classes == config["num_classes"]
        assert json.loads(json.dumps(config)) == config
    assert models.spec("mlp").default_input_shape == (1, 28, 28)
    assert models.spec("lenet5").default_input_shape == (1, 28, 28)
    assert models.spec("vgg16").default_input_shape == (3, 32, 32)
    assert models.spec("resnet18").default_input_shape == (3, 224, 224)
    assert models.spec("resnet50").default_num_classes == 1000
    assert models.spec("mobilenetv2").default_config["width_mult"] == 1.0
    assert models.spec("resnet110").family == "resnet-cifar"


def test_spec_is_a_copy():
    models.spec("mlp").default_config["widths"].append(7)
    assert models.spec("mlp").default_config["widths"] == [256, 128]
    with pytest.raises(AttributeError):
        models.spec("mlp").name = "other"


@pytest.mark.parametrize("name", NAMES)
def test_forward_at_default_size(name):
    torch.manual_seed(0)
    model = models.create(name, **small(name))
    config = model.connprune_config
    out = model(torch.randn(2, *shape_of(model)))
    assert out.shape == (2, config["num_classes"]) and torch.isfinite(out).all()


@pytest.mark.parametrize("name", NAMES)
@pytest.mark.parametrize("in_channels,input_size,num_classes", [(1, 8, 7), (2, 28, 3)])
def test_forward_on_other_inputs_and_classes(name, in_channels, input_size, num_classes):
    """Every model runs on digits' 1×8×8 and on odd sizes (28×28), any class and channel count."""
    model = models.create(name, **small(name, in_channels=in_channels, input_size=input_size,
                                        num_classes=num_classes))
    assert model(torch.randn(2, in_channels, input_size, input_size)).shape == (2, num_classes)


def test_resnet18_at_224():
    model = models.create("resnet18").eval()
    with torch.no_grad():
        assert model(torch.randn(1, 3, 224, 224)).shape == (1, 1000)


def test_vgg_and_resnet_on_64x64():
    for name, config in [("vgg11", {}), ("resnet20", {}), ("resnet18", {"small_input": True})]:
        model = models.create(name, input_size=64, num_classes=200, **config)
        assert model(torch.randn(1, 3, 64, 64)).shape == (1, 200)


def n_params(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


def test_parameter_counts():
    assert n_params(models.create("resnet18")) == 11_689_512  # torchvision's count
    assert n_params(models.create("resnet50")) == 25_557_032  # torchvision's count
    assert n_params(models.create("lenet300-100")) == 266_610  # Han et al. 2015
    assert n_params(models.create("mlp-500-300")) == 545_810
    assert n_params(models.create("lenet5")) == 61_706  # the classic count on 1×28×28
    assert n_params(models.create("resnet20")) == pytest.approx(0.27e6, rel=0.02)
    assert n_params(models.create("resnet56")) == pytest.approx(0.85e6, rel=0.02)
    assert n_params(models.create("resnet110")) == pytest.approx(1.7e6, rel=0.03)
    assert n_params(models.create("vgg16")) == pytest.approx(14.7e6, rel=0.01)
    assert n_params(models.create("mobilenetv2")) == 2_236_682


def test_lenet5_flatten_size_follows_input_size():
    assert flatten_size(28) == 400 and flatten_size(32) == 16 * 6 * 6 and flatten_size(8) == 64
    assert models.create("lenet5", input_size=8).fc1.in_features == 64
    for size in (4, 8, 11, 12, 13, 28, 32):
        assert models.create("lenet5", input_size=size)(torch.randn(1, 1, size, size)).shape == (1, 10)


def test_small_input_stem():
    model = models.create("resnet18", small_input=True)
    assert model.conv1.kernel_size == (3, 3) and model.conv1.stride == (1, 1)
    assert isinstance(model.maxpool, nn.Identity)
    default = models.create("resnet18")
    assert default.conv1.kernel_size == (7, 7) and isinstance(default.maxpool, nn.MaxPool2d)


def test_mlp_widths_and_width_mult():
    model = models.create("mlp", widths=[32, 16], input_size=8, in_channels=2, num_classes=5)
    linears = [m for m in model.modules() if isinstance(m, nn.Linear)]
    assert [(m.in_features, m.out_features) for m in linears] == [(128, 32), (32, 16), (16, 5)]
    assert models.create("mlp", widths=(8,)).connprune_config["widths"] == [8]
    half = models.create("mobilenetv2", width_mult=0.5)
    assert n_params(half) < n_params(models.create("mobilenetv2"))
    assert half(torch.randn(1, 3, 32, 32)).shape == (1, 10)


@settings(max_examples=15, deadline=None)
@given(widths=st.lists(st.integers(1, 40), max_size=3), in_channels=st.integers(1, 3),
       input_size=st.integers(1, 12), num_classes=st.integers(1, 12))
def test_mlp_any_config(widths, in_channels, input_size, num_classes):
    model = models.create("mlp", widths=widths, in_channels=in_channels, input_size=input_size,
                          num_classes=num_classes)
    dims = [in_channels * input_size**2, *widths, num_classes]
    assert n_params(model) == sum(a * b + b for a, b in zip(dims, dims[1:]))
    assert model(torch.randn(3, in_channels, input_size, input_size)).shape == (3, num_classes)


def test_unknown_name_lists_the_names():
    with pytest.raises(UserError, match="unknown model 'resnet21'") as info:
        models.create("resnet21")
    assert all(name in str(info.value) for name in NAMES)
    with pytest.raises(UserError, match="lenet5"):
        models.spec("nope")


def test_unknown_config_key_names_the_key_and_the_allowed_ones():
    with pytest.raises(UserError, match="'depth'") as info:
        models.create("resnet20", depth=32)
    assert all(key in str(info.value) for key in ("num_classes", "in_channels", "input_size"))
    with pytest.raises(UserError, match="'widths'.*allowed keys: num_classes, in_channels, input_size"):
        models.create("lenet300-100", widths=[10])
    with pytest.raises(UserError, match="small_input"):
        models.create("resnet20", small_input=True)


@pytest.mark.parametrize("name,config,key", [
    ("mlp", {"num_classes": 0}, "num_classes"), ("mlp", {"in_channels": True}, "in_channels"),
    ("mlp", {"input_size": "8"}, "input_size"), ("mlp", {"widths": 64}, "widths"),
    ("mlp", {"widths": [64, 0]}, "widths"), ("lenet5", {"input_size": 3}, "input_size"),
    ("resnet18", {"small_input": "yes"}, "small_input"), ("mobilenetv2", {"width_mult": 0}, "width_mult"),
    ("mobilenetv2", {"width_mult": float("nan")}, "width_mult"),
])
def test_invalid_values_are_user_errors(name, config, key):
    with pytest.raises(UserError, match=key):
        models.create(name, **config)


def test_integral_floats_are_accepted_as_ints():
    assert models.create("mlp", num_classes=4.0, input_size=8).connprune_config["num_classes"] == 4


@pytest.mark.parametrize("name", NAMES)
def test_rebuild_from_recorded_config(name):
    torch.manual_seed(0)
    model = models.create(name, **small(name, num_classes=5, in_channels=2))
    assert model.connprune_arch == name
    config = json.loads(json.dumps(model.connprune_config))  # JSON-serialisable, as checkpoints store it
    assert set(config) == set(models.spec(name).default_config)
    torch.manual_seed(0)
    rebuilt = models.create(model.connprune_arch, **config)
    assert rebuilt.connprune_config == model.connprune_config
    a, b = model.state_dict(), rebuilt.state_dict()
    assert list(a) == list(b)
    assert all(a[k].shape == b[k].shape and torch.equal(a[k], b[k]) for k in a)  # same seed → same weights


def test_initialisation_is_seeded():
    torch.manual_seed(1)
    first = models.create("resnet20").state_dict()
    torch.manual_seed(1)
    second = models.create("resnet20").state_dict()
    torch.manual_seed(2)
    third = models.create("resnet20").state_dict()
    assert all(torch.equal(first[k], second[k]) for k in first)
    assert not torch.equal(first["conv1.weight"], third["conv1.weight"])
    conv = models.create("vgg11").features[0]  # Kaiming normal, fan-out: std = sqrt(2 / (64·9))
    assert conv.weight.std().item() == pytest.approx((2 / (64 * 9)) ** 0.5, rel=0.1)


@pytest.mark.parametrize("name", NAMES)
def test_only_plain_modules(name):
    model = models.create(name, **small(name))
    for module_name, module in model.named_modules():
        if module is model or type(module).__module__.startswith("connprune.models"):
            continue
        assert isinstance(module, ALLOWED_MODULES), (module_name, type(module))
        if isinstance(module, (nn.ReLU, nn.ReLU6)):
            assert not module.inplace, module_name


def test_module_names():
    names_of = {name: dict(models.create(name, **small(name)).named_modules()) for name in
                ("mlp", "lenet5", "vgg11", "resnet20", "resnet18", "resnet50", "mobilenetv2")}
    assert {"features.0", "features.2", "classifier"} <= set(names_of["mlp"])
    assert {"conv1", "conv2", "fc1", "fc2", "fc3"} <= set(names_of["lenet5"])
    assert isinstance(names_of["vgg11"]["features.0"], nn.Conv2d) and "classifier" in names_of["vgg11"]
    assert {"conv1", "layer1.0.conv1", "layer2.0.downsample.0", "layer3.2.conv2", "fc"} <= set(names_of["resnet20"])
    assert {"layer4.1.conv2", "layer2.0.downsample.1", "fc"} <= set(names_of["resnet18"])
    assert {"layer4.2.conv3", "layer1.0.downsample.0"} <= set(names_of["resnet50"])
    assert {"layers.0.dw_conv", "layers.1.expand_conv", "layers.16.project_bn", "conv2", "fc"} <= \
        set(names_of["mobilenetv2"])
    assert names_of["mobilenetv2"]["layers.3.dw_conv"].groups == names_of["mobilenetv2"]["layers.3.dw_conv"].in_channels


@pytest.mark.parametrize("name,adds", [("resnet20", 9), ("resnet18", 8), ("mobilenetv2", 10)])
def test_residual_adds_are_visible_to_fx(name, adds):
    graph = torch.fx.symbolic_trace(models.create(name, **small(name))).graph
    found = [n for n in graph.nodes if n.op == "call_function" and "add" in getattr(n.target, "__name__", "")]
    assert len(found) == adds


@pytest.mark.parametrize("name,config", [("mlp", {"input_size": 8}), ("lenet5", {"input_size": 8}), ("vgg11", {}),
                                         ("resnet20", {}), ("resnet18", {"small_input": True, "input_size": 32}),
                                         ("mobilenetv2", {})])
def test_torch_pruning_traces_and_prunes(name, config):
    torch.manual_seed(0)
    model = models.create(name, **config).eval()
    x = torch.randn(1, *shape_of(model))
    graph = tp.DependencyGraph().build_dependency(model, example_inputs=x)
    assert len(list(graph.get_all_groups())) > 0
    classifier = [m for m in model.modules() if isinstance(m, nn.Linear)][-1]
    pruner = tp.pruner.MetaPruner(model, x, importance=tp.importance.MagnitudeImportance(p=1), pruning_ratio=0.5,
                                  ignored_layers=[classifier])
    before = n_params(model)
    pruner.step()
    assert n_params(model) < 0.5 * before
    assert model(x).shape == (1, model.connprune_config["num_classes"])
