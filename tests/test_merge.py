"""Exact merging of inactive ReLU layers (connprune.surgery.merge; spec layer_sparsity.md §2, §7 items 6-10, 13)."""

from __future__ import annotations

import copy

import pytest
import torch
from torch import nn

from connprune import checkpoint, models
from connprune.errors import UserError
from connprune.surgery import edits, merge


def _mlp(widths: list[int], seed: int = 0) -> nn.Module:
    torch.manual_seed(seed)
    return models.create("mlp", widths=widths, num_classes=5, in_channels=1, input_size=3).eval()


@torch.no_grad()
def _make_inactive(model: nn.Module, *names: str) -> None:
    for name in names:
        layer = model.get_submodule(name)
        layer.weight.abs_()
        layer.bias.abs_()


def _params(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


def test_linear_merge_follows_the_closed_form_in_the_right_order() -> None:
    model = _mlp([4, 6, 3])
    _make_inactive(model, "features.2", "features.4")
    layers = [model.get_submodule(n) for n in ("features.2", "features.4", "classifier")]
    w = [m.weight.detach().double() for m in layers]
    b = [m.bias.detach().double() for m in layers]
    merge.merge_layers(model, ["features.2", "features.4", "classifier"])
    merged = model.get_submodule("features.2")
    expected_w = w[2] @ w[1] @ w[0]
    expected_b = w[2] @ (w[1] @ b[0] + b[1]) + b[2]
    torch.testing.assert_close(merged.weight.double(), expected_w, rtol=1e-6, atol=1e-7)
    torch.testing.assert_close(merged.bias.double(), expected_b, rtol=1e-6, atol=1e-7)
    assert merged.weight.shape == (5, 4)


def test_merged_mlp_equals_original_on_arbitrary_inputs_and_counts_are_exact() -> None:
    widths = [12, 10, 8, 9, 7]
    model = _mlp(widths)
    _make_inactive(model, "features.2", "features.4", "features.8")  # runs: [2, 4, 6] and [8, classifier]
    x = torch.randn(200, 1, 3, 3) * 3  # arbitrary (negative too): layer 1 is not merged
    reference = model(x)
    merged = copy.deepcopy(model)
    masks = {"features.2.weight": torch.ones(10, 12, dtype=torch.bool),
             "features.0.weight": torch.ones(12, 9, dtype=torch.bool)}
    masks = edits.perform(merged, {"op": "merge", "layers": ["features.2", "features.4", "features.6"]}, masks)
    masks = edits.perform(merged, {"op": "merge", "layers": ["features.8", "classifier"]}, masks)
    assert set(masks) == {"features.0.weight"}  # masks of replaced parameters are dropped
    out = merged(x)
    assert (out - reference).abs().max() <= 1e-5 * reference.abs().max()
    assert merge.depth(model) == 6 and merge.depth(merged) == 6 - 3
    # closed-form parameter count: 9→12, 12→9 (2·4·6 merged), 9→5 (8·classifier merged)
    assert _params(merged) == (9 * 12 + 12) + (12 * 9 + 9) + (9 * 5 + 5)
    assert _params(merged) == sum(p.numel() for p in merged.parameters())
    assert [e["layers"] for e in edits.recorded(merged)] == [["features.2", "features.4", "features.6"],
                                                            ["features.8", "classifier"]]


def test_first_layer_merges_only_when_inputs_are_nonnegative() -> None:
    model = _mlp([6, 4])
    _make_inactive(model, "features.0")
    with pytest.raises(UserError, match="not a ReLU output"):
        merge.merge_layers(copy.deepcopy(model), ["features.0", "features.2"])
    merged = copy.deepcopy(model)
    merge.merge_layers(merged, ["features.0", "features.2"], nonnegative_input=True)
    x = torch.rand(100, 1, 3, 3)
    torch.testing.assert_close(merged(x), model(x), rtol=1e-5, atol=1e-6)
    negative = -torch.rand(100, 1, 3, 3)
    assert (merged(negative) - model(negative)).abs().max() > 1e-3  # identity of the ReLU needs x >= 0


def test_a_single_negative_entry_is_refused_and_forcing_it_is_detectable() -> None:
    model = _mlp([8, 8, 8])
    _make_inactive(model, "features.2")
    with torch.no_grad():
        model.features[2].weight[3, 5] = -5.0
    assert merge.inactive_violations(model, "features.2") == 1
    with pytest.raises(UserError, match="1 negative"):
        merge.merge_layers(copy.deepcopy(model), ["features.2", "features.4"])
    forced = copy.deepcopy(model)
    merge.merge_layers(forced, ["features.2", "features.4"], require_inactive=False)
    x = torch.randn(500, 1, 3, 3) * 3
    assert (forced(x) - model(x)).abs().max() > 1e-3


def _conv_chain(stride1: int = 1, pad1: int = 1, k1: int = 3, k2: int = 3, pad2: int = 0,
                between: nn.Module | None = None) -> nn.Sequential:
    torch.manual_seed(1)
    chain = nn.Sequential(nn.Conv2d(3, 4, 3, padding=1), nn.ReLU(),
                          nn.Conv2d(4, 5, k1, stride=stride1, padding=pad1), nn.BatchNorm2d(5),
                          between or nn.ReLU(), nn.Conv2d(5, 6, k2, padding=pad2), nn.BatchNorm2d(6), nn.ReLU(),
                          nn.Conv2d(6, 2, 1))
    with torch.no_grad():
        for bn in (chain[3], chain[6]):
            bn.running_mean.uniform_(-1, 0)  # so that the BN-folded bias of chain[2] stays >= 0
            bn.running_var.uniform_(0.5, 2)
            bn.weight.uniform_(0.5, 2)
            bn.bias.uniform_(0, 1)
        chain[2].weight.abs_()
        chain[2].bias.abs_()
    return chain.eval()


@pytest.mark.parametrize("stride1, pad1, expected_kernel", [(1, 1, 5), (2, 1, 7), (1, 0, 5)])
def test_conv3x3_then_conv3x3_merges_into_one_exact_conv(stride1: int, pad1: int, expected_kernel: int) -> None:
    chain = _conv_chain(stride1, pad1)
    x = torch.randn(4, 3, 13, 11)
    reference = chain(x)
    merged = copy.deepcopy(chain)
    merge.merge_layers(merged, ["2", "5"])
    conv = merged[2]
    assert conv.kernel_size == (expected_kernel, expected_kernel)
    assert conv.stride == (stride1, stride1) and conv.padding == (pad1, pad1)
    assert isinstance(merged[3], nn.Identity) and isinstance(merged[5], nn.Identity)
    assert isinstance(merged[6], nn.BatchNorm2d)  # the last layer's BN stays
    out = merged(x)
    assert out.shape == reference.shape
    assert (out - reference).abs().max() <= 1e-5 * reference.abs().max()
    assert merge.depth(merged) == merge.depth(chain) - 1


def test_conv_runs_and_1x1_convs_merge_exactly() -> None:
    chain = _conv_chain(k2=1)
    with torch.no_grad():
        chain[5].weight.abs_()
        chain[5].bias.abs_()
        chain[6].running_mean.uniform_(-1, 0)
    x = torch.randn(2, 3, 9, 9)
    merged = copy.deepcopy(chain)
    merge.merge_layers(merged, ["2", "5", "8"])  # 3x3 → 1x1 (+BN) → 1x1: one 3x3 conv
    assert merged[2].kernel_size == (3, 3) and merged[2].out_channels == 2
    torch.testing.assert_close(merged(x), chain(x), rtol=1e-5, atol=1e-5)


def test_batchnorm_folding_preserves_outputs_in_eval_mode() -> None:
    chain = _conv_chain()
    weight, bias = merge.fold_batchnorm(chain[2], chain[3])
    x = torch.randn(3, 4, 8, 8)
    folded = nn.functional.conv2d(x.double(), weight, bias, stride=chain[2].stride, padding=chain[2].padding)
    torch.testing.assert_close(folded.float(), chain[3](chain[2](x)), rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("build, layers, message", [
    (lambda: _conv_chain(pad2=1), ["2", "5"], "pads its input"),
    (lambda: _conv_chain(between=nn.MaxPool2d(2)), ["2", "5"], "pooling"),
    (lambda: _conv_chain(), ["0", "5"], "not consecutive"),
    (lambda: _conv_chain(), ["2"], "at least two"),
    (lambda: _conv_chain(), ["2", "7"], "not an nn.Linear or nn.Conv2d"),
    (lambda: nn.Sequential(nn.Conv2d(1, 2, 3), nn.ReLU(), nn.Flatten(), nn.Linear(2, 3)), ["0", "3"], "Flatten"),
    (lambda: nn.Sequential(nn.Linear(4, 4), nn.ReLU(), nn.Dropout(), nn.Linear(4, 2)), ["0", "3"], "Dropout"),
])
def test_unsupported_patterns_are_refused(build, layers: list[str], message: str) -> None:
    with pytest.raises(UserError, match=message):
        merge.merge_layers(build(), layers, require_inactive=False)


class _Residual(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.first, self.act, self.second = nn.Linear(4, 4), nn.ReLU(), nn.Linear(4, 4)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.act(self.first(x))
        return self.second(h) + h


def test_residual_reads_are_refused() -> None:
    with pytest.raises(UserError, match="residual"):
        merge.merge_layers(_Residual(), ["first", "second"], require_inactive=False)


def test_save_and_load_of_a_merged_model_round_trip(tmp_path) -> None:
    model = _mlp([10, 8, 6])
    _make_inactive(model, "features.2", "features.4")
    edits.perform(model, {"op": "merge", "layers": ["features.2", "features.4", "classifier"]})
    checkpoint.save(model, tmp_path / "merged")
    loaded = checkpoint.load(tmp_path / "merged")
    assert merge.depth(loaded) == 2
    x = torch.randn(20, 1, 3, 3)
    assert torch.equal(loaded(x), model(x))
    assert {k: v.shape for k, v in loaded.state_dict().items()} == {k: v.shape for k, v in model.state_dict().items()}
