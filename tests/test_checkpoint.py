"""Checkpoints: bit-exact round trips, shrunk widths, masks, and clear errors on damaged files."""

from __future__ import annotations

import json

import pytest
import torch
from torch import nn

from connprune import checkpoint, models
from connprune.errors import UserError


@pytest.mark.parametrize("name,config", [("mlp", {"input_size": 8}), ("resnet20", {}), ("mobilenetv2", {})])
def test_round_trip_is_bit_exact(tmp_path, name, config):
    torch.manual_seed(0)
    model = models.create(name, **config)
    for m in model.modules():  # make BN statistics non-trivial
        if isinstance(m, nn.BatchNorm2d):
            m.running_mean.uniform_(-1, 1)
            m.running_var.uniform_(0.5, 2)
    checkpoint.save(model, tmp_path / "ck", data_info={"name": "digits"}, metrics={"accuracy": 0.5})
    loaded = checkpoint.load_checkpoint(tmp_path / "ck")
    assert not loaded.model.training and loaded.metrics == {"accuracy": 0.5}
    for (key, a), (key_b, b) in zip(model.state_dict().items(), loaded.model.state_dict().items()):
        assert key == key_b and torch.equal(a, b)
    x = torch.randn(2, *((1, 8, 8) if name == "mlp" else (3, 32, 32)))
    assert torch.equal(model.eval()(x), loaded.model(x))
    assert not any(p.name.endswith(".tmp") for p in tmp_path.iterdir())


def test_shrunk_widths_and_masks_are_rebuilt(tmp_path):
    model = models.create("mlp", input_size=8, widths=[32, 16])
    layers = [name for name, m in model.named_modules() if isinstance(m, nn.Linear)]
    first, second = (model.get_submodule(n) for n in layers[:2])
    parent0, _, child0 = layers[0].rpartition(".")
    parent1, _, child1 = layers[1].rpartition(".")
    setattr(model.get_submodule(parent0) if parent0 else model, child0, nn.Linear(first.in_features, 20))
    setattr(model.get_submodule(parent1) if parent1 else model, child1, nn.Linear(20, second.out_features))
    mask = torch.rand_like(model.get_submodule(layers[0]).weight) > 0.5
    checkpoint.save(model, tmp_path / "ck", masks={f"{layers[0]}.weight": mask})
    meta = json.loads((tmp_path / "ck" / "model.json").read_text())
    assert meta["widths"][layers[0]] == [64, 20]
    loaded = checkpoint.load(tmp_path / "ck")
    weight = loaded.get_submodule(layers[0]).weight
    assert weight.shape == (20, 64) and torch.all(weight[~mask] == 0)
    assert checkpoint.load_checkpoint(tmp_path / "ck").masks[f"{layers[0]}.weight"].dtype == torch.bool


def test_damaged_checkpoints_give_clear_errors(tmp_path):
    model = models.create("mlp", input_size=8)
    directory = checkpoint.save(model, tmp_path / "ck")
    with pytest.raises(UserError, match="does not exist"):
        checkpoint.load(tmp_path / "nowhere")
    weights = directory / "model.safetensors"
    blob = weights.read_bytes()
    weights.write_bytes(blob[: len(blob) // 2])
    with pytest.raises(UserError, match="truncated or corrupt"):
        checkpoint.load(directory)
    weights.unlink()
    with pytest.raises(UserError, match="model.safetensors is missing"):
        checkpoint.load(directory)


def test_checkpoint_from_another_architecture_is_refused(tmp_path):
    checkpoint.save(models.create("resnet20"), tmp_path / "ck")
    meta_path = tmp_path / "ck" / "model.json"
    meta = json.loads(meta_path.read_text())
    meta["architecture"], meta["widths"] = "resnet32", {}
    meta_path.write_text(json.dumps(meta))
    with pytest.raises(UserError, match="does not match architecture 'resnet32'"):
        checkpoint.load(tmp_path / "ck")


def test_only_zoo_models_can_be_saved(tmp_path):
    with pytest.raises(UserError, match="connprune.models.create"):
        checkpoint.save(nn.Linear(2, 2), tmp_path / "ck")


def test_a_bias_added_by_surgery_survives_the_round_trip(tmp_path):
    model = models.create("resnet20")
    conv = model.get_submodule("conv1")
    assert conv.bias is None  # the architecture has none: surgery folding a constant unit may create one
    conv.bias = nn.Parameter(torch.randn(conv.out_channels))
    checkpoint.save(model, tmp_path / "ck")
    loaded = checkpoint.load(tmp_path / "ck")
    assert torch.equal(loaded.get_submodule("conv1").bias, conv.bias.detach())
    assert loaded.get_submodule("layer1.0.conv1").bias is None
