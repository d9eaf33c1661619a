"""Pruning models written outside the zoo: the Python API with example inputs, every structured and connection
method on a user's own network (a residual add, a depthwise conv, a concatenation), one model per coupling kind
Torch-Pruning handles, and refusal (with the model left as it was) where shrinking would break a model.

The oracle for "the surgery is right" is the masked model: removing a channel must compute what zeroing every weight
that reads it computes (relative error ≤ 1e-5), and the weights the shrunk model keeps must be exactly those the
masks keep.
"""

from __future__ import annotations

import copy
import json

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from connprune import checkpoint, graph, methods, models, surgery
from connprune.errors import UserError
from connprune.measure.sparsity import count_nonzero, count_prunable
from connprune.methods import PruneData
from connprune.train import default_recipe

X = torch.randn(1, 1, 8, 8, generator=torch.Generator().manual_seed(0))


class UserNet(nn.Module):
    """A stem, a residual block, a depthwise-separable branch concatenated with a 1x1 branch, a linear head."""

    def __init__(self) -> None:
        super().__init__()
        self.stem = nn.Sequential(nn.Conv2d(1, 16, 3, padding=1, bias=False), nn.BatchNorm2d(16), nn.ReLU())
        self.res1 = nn.Sequential(nn.Conv2d(16, 16, 3, padding=1, bias=False), nn.BatchNorm2d(16), nn.ReLU())
        self.res2 = nn.Sequential(nn.Conv2d(16, 16, 3, padding=1, bias=False), nn.BatchNorm2d(16))
        self.dw = nn.Sequential(nn.Conv2d(16, 16, 3, padding=1, groups=16, bias=False), nn.BatchNorm2d(16),
                                nn.ReLU())
        self.pw = nn.Sequential(nn.Conv2d(16, 24, 1, bias=False), nn.BatchNorm2d(24), nn.ReLU())
        self.side = nn.Sequential(nn.Conv2d(16, 8, 1, bias=False), nn.BatchNorm2d(8), nn.ReLU())
        self.mix = nn.Sequential(nn.Conv2d(32, 32, 3, padding=1, bias=False), nn.BatchNorm2d(32), nn.ReLU())
        self.head = nn.Linear(32 * 4 * 4, 10)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.stem(x)
        x = F.relu(x + self.res2(self.res1(x)))
        y = torch.cat([self.pw(self.dw(x)), self.side(x)], dim=1)
        return self.head(F.max_pool2d(self.mix(y), 2).flatten(1))


def _shrunk_and_masked(model: nn.Module, result: methods.PruningResult) -> tuple[nn.Module, nn.Module, dict]:
    base = result.model if result.model is not None else model
    plain = copy.copy(result)
    plain.model = None
    shrunk, masks = surgery.apply(copy.deepcopy(base), plain, example_inputs=X)
    masked, masked_masks = surgery.apply(copy.deepcopy(base), plain, shrink=False, example_inputs=X)
    return shrunk.eval(), masked.eval(), {"shrunk": masks, "masked": masked_masks}


def _assert_same_function(shrunk: nn.Module, masked: nn.Module) -> None:
    x = torch.randn(8, 1, 8, 8)
    with torch.no_grad():
        expected, got = masked(x), shrunk(x)
    assert float((got - expected).abs().max() / expected.abs().max()) <= 1e-5


METHODS = [("l1-filter", {}), ("random", {"structured": True}), ("group-l1", {}), ("network-slimming", {}),
           ("kfac", {"stat_every": 5, "eig_every": 10}), ("gcnet", {"probe_per_class": 10}),
           ("mint", {"samples_per_class": 20}), ("snacs", {"samples_per_class": 20, "constraint_samples": 100}),
           ("magnitude", {}), ("snip", {})]


@pytest.mark.parametrize("name, params", METHODS, ids=[m[0] for m in METHODS])
def test_a_users_own_model_prunes_with_every_structured_and_connection_method(digits_train, name, params):
    torch.manual_seed(0)
    model = UserNet().eval()
    reference = count_prunable(model)
    data = PruneData(train=digits_train, recipe=default_recipe("digits", epochs=2), example_inputs=X)
    result = methods.create(name, **params).prune(model, 0.5, data)
    shrunk, masked, masks = _shrunk_and_masked(model, result)
    _assert_same_function(shrunk, masked)
    kept = count_nonzero(shrunk, masks["shrunk"])
    assert kept == count_nonzero(masked, masks["masked"])  # the same weights, shrunk or masked
    assert abs((reference - kept) - round(0.5 * reference)) <= int(result.info.get("budget_unit", 1))


def test_the_readme_example_runs_on_a_non_zoo_model():
    torch.manual_seed(0)
    model = UserNet().eval()
    result = methods.create("l1-filter").prune(model, 0.5, methods.PruneData(example_inputs=X))
    smaller, masks = surgery.apply(model, result, example_inputs=X)
    assert sum(p.numel() for p in smaller.parameters()) < sum(p.numel() for p in model.parameters())
    assert smaller(X).shape == (1, 10)


def test_a_model_without_example_inputs_gets_a_clear_error():
    with pytest.raises(UserError, match="example_inputs"):
        methods.create("l1-filter").prune(UserNet(), 0.5, methods.PruneData())


# --------------------------------------------------------------------------------------- one model per coupling


class Fire(nn.Module):
    """SqueezeNet's fire module: two expands concatenated (the old shrink crashed here)."""

    def __init__(self) -> None:
        super().__init__()
        self.stem, self.squeeze = nn.Conv2d(1, 12, 3, padding=1), nn.Conv2d(12, 6, 1)
        self.e1, self.e3 = nn.Conv2d(6, 8, 1), nn.Conv2d(6, 8, 3, padding=1)
        self.out = nn.Conv2d(16, 10, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = F.relu(self.squeeze(F.relu(self.stem(x))))
        return self.out(torch.cat([F.relu(self.e1(x)), F.relu(self.e3(x))], 1)).mean((2, 3))


class Split(nn.Module):
    """A channel split: one half transformed, then concatenated back (``chunk=True``: with ``Tensor.chunk``, whose
    split sizes Torch-Pruning 1.6 reads wrongly)."""

    def __init__(self, chunk: bool = False) -> None:
        super().__init__()
        self.stem, self.branch, self.out = nn.Conv2d(1, 16, 3, padding=1), nn.Conv2d(8, 8, 3, padding=1), \
            nn.Linear(16, 10)
        self.chunk = chunk

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = F.relu(self.stem(x))
        half = self.branch.in_channels  # sizes read from the layers, so the split follows a pruned branch
        left, right = x.chunk(2, dim=1) if self.chunk else torch.split(x, [x.shape[1] - half, half], dim=1)
        return self.out(torch.cat([left, F.relu(self.branch(right))], 1).mean((2, 3)))


def test_channels_the_trace_cannot_map_are_left_unpruned_and_said_so():
    model = Split(chunk=True).eval()
    with pytest.warns(UserWarning, match="left unpruned"):
        result = methods.create("l1-filter", round_to=1).prune(model, 0.4, methods.PruneData(example_inputs=X))
    assert "stem" in result.info["layers_left_unpruned"] and "stem" not in result.remove
    with pytest.raises(UserError, match="permuted or partial order"):
        graph.build(model, X).group_of("stem")


class Grouped(nn.Module):
    """A ResNeXt-style grouped conv with squeeze-and-excitation."""

    def __init__(self) -> None:
        super().__init__()
        self.stem, self.grouped = nn.Conv2d(1, 16, 3, padding=1), nn.Conv2d(16, 16, 3, padding=1, groups=4)
        self.reduce, self.expand, self.out = nn.Conv2d(16, 4, 1), nn.Conv2d(4, 16, 1), nn.Linear(16, 10)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = F.relu(self.grouped(F.relu(self.stem(x))))
        y = y * torch.sigmoid(self.expand(F.relu(self.reduce(y.mean((2, 3), keepdim=True)))))
        return self.out(y.mean((2, 3)))


class LayerScaled(nn.Module):
    """A ConvNeXt-style block: depthwise conv, LayerNorm over permuted channels, MLP, layer scale, residual."""

    def __init__(self) -> None:
        super().__init__()
        self.stem, self.dw = nn.Conv2d(1, 16, 3, padding=1), nn.Conv2d(16, 16, 7, padding=3, groups=16)
        self.norm, self.up, self.down = nn.LayerNorm(16), nn.Linear(16, 32), nn.Linear(32, 16)
        self.gamma, self.out = nn.Parameter(torch.full((16,), 0.5)), nn.Linear(16, 10)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.stem(x)
        y = self.down(F.gelu(self.up(self.norm(self.dw(x).permute(0, 2, 3, 1))))) * self.gamma
        return self.out((x + y.permute(0, 3, 1, 2)).mean((2, 3)))


class Attention(nn.Module):
    """Patch tokens, multi-head attention and an MLP with residual adds."""

    def __init__(self) -> None:
        super().__init__()
        self.patch, self.attn = nn.Conv2d(1, 16, 2, 2), nn.MultiheadAttention(16, 4, batch_first=True)
        self.mlp, self.out = nn.Sequential(nn.Linear(16, 32), nn.GELU(), nn.Linear(32, 16)), nn.Linear(16, 10)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        t = self.patch(x).flatten(2).transpose(1, 2)
        t = t + self.attn(t, t, t, need_weights=False)[0]
        return self.out((t + self.mlp(t)).mean(1))


@pytest.mark.parametrize("build, exact", [(Fire, True), (Split, True), (Grouped, True), (LayerScaled, False),
                                          (Attention, False)],
                         ids=["concat", "split", "grouped-se", "layernorm-layerscale", "attention"])
def test_every_coupling_kind_shrinks_to_what_the_masked_model_computes(build, exact):
    torch.manual_seed(0)
    model = build().eval()
    result = methods.create("l1-filter", round_to=1).prune(model, 0.4, methods.PruneData(example_inputs=X))
    assert result.remove, "nothing was pruned"
    shrunk, _ = surgery.apply(copy.deepcopy(model), result, example_inputs=X)
    assert sum(p.numel() for p in shrunk.parameters()) < sum(p.numel() for p in model.parameters())
    x = torch.randn(4, 1, 8, 8)
    if exact:
        masked, _ = surgery.apply(copy.deepcopy(model), result, shrink=False, example_inputs=X)
        with torch.no_grad():
            assert torch.allclose(shrunk(x), masked(x), rtol=1e-5, atol=1e-6)
    else:  # a LayerNorm over the channels, or fewer dimensions per attention head (their scores' scaling changes):
        # no masked equivalent, so the masked form is refused
        assert not all(g.exact for g in graph.build(model, X).groups)
        with pytest.raises(UserError, match="normalised together"):
            surgery.apply(copy.deepcopy(model), result, shrink=False, example_inputs=X)
        assert shrunk(x).shape == (4, 10)


class TokenMixer(nn.Module):
    """An MLP-Mixer token mix whose token count equals the channel count: Torch-Pruning's trace couples them."""

    def __init__(self) -> None:
        super().__init__()
        self.patch = nn.Conv2d(1, 16, 2, 2)  # 16 tokens of 16 channels
        self.tokens, self.out = nn.Linear(16, 16), nn.Linear(16, 10)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        t = self.patch(x).flatten(2).transpose(1, 2)
        t = t + self.tokens(t.transpose(1, 2)).transpose(1, 2)
        return self.out(t.mean(1))


def test_a_shrink_that_would_break_the_model_is_refused_and_the_model_kept():
    torch.manual_seed(0)
    model = TokenMixer().eval()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    result = methods.create("l1-filter", round_to=1).prune(model, 0.4, methods.PruneData(example_inputs=X))
    try:
        shrunk, _ = surgery.apply(model, result, example_inputs=X)
    except UserError as error:
        assert "refused" in str(error) or "differs" in str(error)
    else:  # where the trace happens to be right, the checked copy computes what the masked model computes
        masked, _ = surgery.apply(copy.deepcopy(model), result, shrink=False, example_inputs=X)
        assert torch.allclose(shrunk(X), masked(X), rtol=1e-5, atol=1e-6)
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())  # untouched either way


@pytest.mark.parametrize("build", [Fire, Split, Grouped, LayerScaled, Attention],
                         ids=["concat", "split", "grouped-se", "layernorm-layerscale", "attention"])
def test_a_shrunk_user_model_round_trips_through_a_checkpoint_into_a_fresh_instance(tmp_path, build):
    torch.manual_seed(0)
    model = build().eval()
    result = methods.create("l1-filter", round_to=1).prune(model, 0.4, methods.PruneData(example_inputs=X))
    shrunk, masks = surgery.apply(copy.deepcopy(model), result, example_inputs=X)
    checkpoint.save(shrunk, tmp_path / "ck", masks=masks)
    loaded = checkpoint.load_checkpoint(tmp_path / "ck", model=build())
    x = torch.randn(4, 1, 8, 8)
    with torch.no_grad():
        assert torch.equal(loaded.model(x), shrunk.eval()(x))
    assert loaded.masks.keys() == masks.keys()


def test_a_factory_named_by_the_caller_rebuilds_the_model(tmp_path, monkeypatch):
    (tmp_path / "user_models.py").write_text(
        "from torch import nn\n"
        "def build(width=8):\n"
        "    return nn.Sequential(nn.Conv2d(1, width, 3), nn.ReLU(), nn.Flatten(), nn.Linear(width * 36, 10))\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    model = models.create("user_models:build", width=12).eval()
    result = methods.create("l1-filter").prune(model, 0.5, methods.PruneData(example_inputs=X))
    shrunk, masks = surgery.apply(model, result, example_inputs=X)
    checkpoint.save(shrunk, tmp_path / "ck", masks=masks)
    meta = json.loads((tmp_path / "ck" / "model.json").read_text())
    assert meta["architecture"] == "user_models:build" and meta["config"] == {"width": 12}
    with pytest.raises(UserError, match="imports code only when asked"):
        checkpoint.load(tmp_path / "ck")
    loaded = checkpoint.load(tmp_path / "ck", model="user_models:build")
    x = torch.randn(3, 1, 8, 8)
    with torch.no_grad():
        assert torch.equal(loaded(x), shrunk(x))
    with pytest.raises(UserError, match="cannot import 'no_such_module'"):
        checkpoint.load(tmp_path / "ck", model="no_such_module:build")


@pytest.mark.parametrize("name, params", [("gcnet", {"probe_per_class": 10}), ("mint", {"samples_per_class": 20}),
                                          ("snacs", {"samples_per_class": 20, "constraint_samples": 100})],
                         ids=["gcnet", "mint", "snacs"])
def test_connection_methods_prune_a_grouped_conv_model(digits_train, name, params):
    """A ResNeXt-style grouped conv: GC-Net prunes it directly (a unit reads only its group's channels, so the
    full ghost matrix has no place on it) and meets the budget; MINT and SNACS leave it unscored and reach what the
    other layers allow, saying so (budget_note). Either way the model shrinks to what the masked one computes."""
    torch.manual_seed(0)
    model = Grouped().eval()
    reference = count_prunable(model)
    result = methods.create(name, **params).prune(model, 0.5, PruneData(train=digits_train, example_inputs=X))
    shrunk, masked, masks = _shrunk_and_masked(model, result)
    _assert_same_function(shrunk, masked)
    kept = count_nonzero(shrunk, masks["shrunk"])
    met = abs((reference - kept) - round(0.5 * reference)) <= int(result.info.get("budget_unit", 1))
    assert met if name == "gcnet" else (met or f"{1 - kept / reference:.4f}" in result.info["budget_note"])
