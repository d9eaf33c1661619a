"""Layer sparsity (methods/layer_sparsity.py, spec layer_sparsity.md §7) and the l1 / group-l1 baselines."""

from __future__ import annotations

import dataclasses
import math

import pytest
import torch
from torch import nn

from connprune import checkpoint, methods, models, surgery
from connprune.data import ImageData
from connprune.data.pipeline import normalize
from connprune.errors import UserError
from connprune.experiments.jobs import prune_model
from connprune.methods import PruneData
from connprune.methods.layer_sparsity import Fold, layer_folds, layer_groups, merge_runs, penalisable_links
from connprune.methods.regularisers import (PenaltyGroup, PenaltyHook, negative_part_norm, penalty_value, prox_l1,
                                            prox_negative_part, prox_row_groups, row_group_norm)
from connprune.surgery import merge
from connprune.train import Trainer, evaluate
from connprune.train.trainer import TrainHook
from connprune.train.recipes import TrainConfig

RECIPE = TrainConfig(epochs=3, batch_size=64, lr=0.05, weight_decay=1e-4, schedule="cosine")


def _mlp(widths: list[int], info, seed: int = 0) -> nn.Module:
    torch.manual_seed(seed)
    channels, size, _ = info.input_shape
    return models.create("mlp", widths=widths, num_classes=info.num_classes, in_channels=channels, input_size=size)


@pytest.fixture(scope="module")
def small_train(digits_train: ImageData) -> ImageData:
    return digits_train.subset(torch.arange(640))


# ------------------------------------------------------------------------------------------------ regulariser


def test_penalty_value_on_a_hand_computed_matrix() -> None:
    weight = torch.tensor([[1.0, -2.0, 3.0], [-4.0, 5.0, 0.0]])
    bias = torch.tensor([-1.0, 2.0])
    assert negative_part_norm([weight, bias]).item() == pytest.approx(math.sqrt(4 + 16 + 1))
    assert negative_part_norm([weight]).item() == pytest.approx(math.sqrt(20))
    assert negative_part_norm([weight.abs(), bias.abs()]).item() == 0.0
    groups = [PenaltyGroup("a", [weight, bias], 0.5), PenaltyGroup("b", [weight.abs()], 7.0)]
    assert penalty_value(groups).item() == pytest.approx(0.5 * math.sqrt(21))


def test_penalty_gradient_is_zero_on_positive_entries() -> None:
    weight = torch.tensor([[1.0, -2.0, 3.0], [-4.0, 5.0, 0.0]], requires_grad=True)
    negative_part_norm([weight]).backward()
    expected = torch.tensor([[0.0, -2.0, 0.0], [-4.0, 0.0, 0.0]]) / math.sqrt(20)
    torch.testing.assert_close(weight.grad, expected)
    zero = torch.ones(2, 2, requires_grad=True)
    negative_part_norm([zero]).backward()
    assert torch.equal(zero.grad, torch.zeros(2, 2))  # no NaN from sqrt at 0


def test_proximal_step_shrinks_negatives_by_the_common_factor() -> None:
    weight = torch.tensor([[1.0, -3.0], [0.5, -4.0]])  # ||neg|| = 5
    bias = torch.tensor([2.0])
    prox_negative_part([weight, bias], 1.0)
    torch.testing.assert_close(weight, torch.tensor([[1.0, -3.0 * 0.8], [0.5, -4.0 * 0.8]]))
    assert torch.equal(bias, torch.tensor([2.0]))


@pytest.mark.parametrize("threshold, zeroed", [(4.999, False), (5.0, True), (7.0, True)])
def test_proximal_step_zeroes_the_group_exactly_iff_norm_at_most_threshold(threshold: float, zeroed: bool) -> None:
    weight = torch.tensor([[1.0, -3.0], [0.5, -4.0]])
    prox_negative_part([weight], threshold)
    assert bool((weight >= 0).all()) is zeroed
    assert weight[0, 0] == 1.0 and weight[1, 0] == 0.5
    assert bool((weight[:, 1] <= 0).all())  # never changes sign


def test_first_layer_only_when_declared_and_output_never(digits_train: ImageData) -> None:
    model = _mlp([8, 8, 8], digits_train.info)
    links, skipped = penalisable_links(model, first_layer=False)
    assert [link.layer for link in links] == ["features.2", "features.4"]
    assert "features.0" in skipped and skipped["classifier"] == "output layer"
    links, _ = penalisable_links(model, first_layer=True)
    assert [link.layer for link in links] == ["features.0", "features.2", "features.4"]


def test_conv_nets_penalise_only_mergeable_layers_and_say_why() -> None:
    links, skipped = penalisable_links(models.create("lenet5"), first_layer=False)
    assert [link.layer for link in links] == ["fc1", "fc2"]
    assert "pooling" in skipped["conv1"] and skipped["fc3"] == "output layer"
    links, skipped = penalisable_links(models.create("resnet20"), first_layer=False)
    assert links == [] and "residual" in skipped["conv1"] and "pads its input" in skipped["layer1.0.conv1"]


def test_lambda_zero_is_plain_training_and_lambda_positive_is_not(small_train: ImageData) -> None:
    recipe = RECIPE.model_copy(update={"epochs": 1})
    runs = {}
    for label, lam in (("plain", None), ("zero", 0.0), ("positive", 1.0)):
        model = _mlp([16, 16, 16], small_train.info)
        hooks = []
        if lam is not None:
            links, _ = penalisable_links(model, False)
            hooks = [PenaltyHook(layer_groups(layer_folds(model, links), lam, "none", True))]
        Trainer(model, small_train, None, recipe, hooks=hooks, progress=False).fit()
        runs[label] = model.state_dict()
    assert all(torch.equal(runs["plain"][k], runs["zero"][k]) for k in runs["plain"])
    assert not all(torch.equal(runs["plain"][k], runs["positive"][k]) for k in runs["plain"])


def test_merge_runs_groups_consecutive_inactive_layers(digits_train: ImageData) -> None:
    model = _mlp([4, 4, 4, 4, 4], digits_train.info)
    links = merge.chain(model)
    assert merge_runs(links, {"features.2", "features.4", "features.8"}) == [
        ["features.2", "features.4", "features.6"], ["features.8", "classifier"]]
    assert merge_runs(links, set()) == []


def _linear(weight: list[list[float]], bias: list[float]) -> nn.Linear:
    layer = nn.Linear(len(weight[0]), len(weight))
    with torch.no_grad():
        layer.weight.copy_(torch.tensor(weight))
        layer.bias.copy_(torch.tensor(bias))
    return layer


def test_input_floor_fold_and_its_proximal_step_by_hand() -> None:
    # W x + b = W (x - lo) + (b + W lo): the penalty sees b' = b + W lo, the bias for inputs shifted to >= 0
    layer = _linear([[1.0, -2.0, 3.0], [-4.0, 5.0, 0.5]], [-1.0, 2.0])
    lo = torch.tensor([-1.0, -0.5, 0.0])
    fold = Fold(layer, floor=lo)
    weight, bias = fold.folded()
    torch.testing.assert_close(bias, torch.tensor([-1.0 + 0.0, 2.0 + 1.5]))  # rows: -1 + 1 + 0, 4 - 2.5 + 0
    assert fold.value(True).item() == pytest.approx(math.sqrt(4 + 16 + 1))
    fold.prox(math.sqrt(21) / 2, True)  # factor 1/2 on the folded negatives (-2, -4 and b'_0 = -1)
    torch.testing.assert_close(layer.weight.detach(), torch.tensor([[1.0, -1.0, 3.0], [-2.0, 5.0, 0.5]]))
    # b = b' - W_new lo: -0.5 - (-1 + 0.5) = 0 and 3.5 - (2 - 2.5) = 4
    torch.testing.assert_close(layer.bias.detach(), torch.tensor([0.0, 4.0]))
    assert not fold.inactive()
    fold.prox(100.0, True)
    assert fold.inactive() and bool((layer.weight >= 0).all())
    x = lo + torch.randn(500, 3, generator=torch.Generator().manual_seed(0)).abs() * 3  # brute force: x >= lo
    out = layer(x)
    torch.testing.assert_close(torch.relu(out), out, atol=1e-6, rtol=0)


def test_batchnorm_fold_penalises_the_folded_weights_by_hand() -> None:
    conv = nn.Conv2d(2, 3, 1)
    bn = nn.BatchNorm2d(3).eval()
    with torch.no_grad():
        conv.weight.copy_(torch.tensor([1.0, -2.0, 3.0, 1.0, -1.0, -1.0]).view(3, 2, 1, 1))
        conv.bias.copy_(torch.tensor([0.5, -1.0, 2.0]))
        bn.running_mean.copy_(torch.tensor([1.0, 0.0, -1.0]))
        bn.running_var.copy_(torch.tensor([4.0, 1.0, 0.25]) - bn.eps)  # sqrt: 2, 1, 0.5
        bn.weight.copy_(torch.tensor([2.0, -1.0, 1.0]))                  # g = 1, -1, 2
        bn.bias.copy_(torch.tensor([0.0, 0.5, -7.0]))
    fold = Fold(conv, bn)
    weight, bias = fold.folded()
    torch.testing.assert_close(weight.flatten(), torch.tensor([1.0, -2.0, -3.0, -1.0, -2.0, -2.0]))
    torch.testing.assert_close(bias, torch.tensor([-0.5, 1.5, -1.0]))  # g (b - mu) + beta: 1(-0.5), -(-1)+.5, 2(3)-7
    fold.prox(100.0, True)
    assert fold.inactive()
    torch.testing.assert_close(conv.weight.flatten(), torch.tensor([1.0, 0.0, 0.0, 0.0, 0.0, 0.0]))  # W'/g
    x = torch.randn(64, 2, 4, 4, generator=torch.Generator().manual_seed(0)).abs()  # a ReLU output
    assert float(bn(conv(x)).detach().min()) >= -1e-6  # the ReLU after the BN is the identity


def test_bn_layers_take_part_and_merge_exactly(small_train: ImageData) -> None:
    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(1, 6, 3, padding=1), nn.ReLU(), nn.Conv2d(6, 6, 1), nn.BatchNorm2d(6), nn.ReLU(),
                          nn.Conv2d(6, 4, 3), nn.ReLU(), nn.Flatten(), nn.Linear(4 * 6 * 6, 10))
    links, skipped = penalisable_links(model, first_layer=False)
    assert [link.layer for link in links] == ["2"] and "input may be negative" in skipped["0"]
    method = methods.create("layer-sparsity", **{"lambda": 20.0}, refit_epochs=0)
    result = method.prune(model, "auto", PruneData(train=small_train, recipe=RECIPE.model_copy(update={"epochs": 2})))
    assert result.merge == [["2", "5"]]
    assert result.info["merge_relative_error"] <= 1e-5
    merged, _ = surgery.apply(model, result, example_inputs=small_train.info.input_shape)
    assert isinstance(merged[2], nn.Conv2d) and merged[2].kernel_size == (3, 3) and isinstance(merged[3], nn.Identity)
    x = torch.randn(32, 1, 8, 8)  # any input: the penalised layers read ReLU outputs
    torch.testing.assert_close(merged.eval()(x), model.eval()(x), rtol=1e-4, atol=1e-5)


# ------------------------------------------------------------------------------------------------ the method


def test_lambda_alias_and_bad_input() -> None:
    assert methods.create("layer-sparsity", **{"lambda": 0.25}).params.lam == 0.25
    assert methods.create("layer-sparsity", lam=0.5).params.lam == 0.5
    with pytest.raises(UserError, match="lambda"):
        methods.create("layer-sparsity", **{"lambda": -1})
    method = methods.create("layer-sparsity")
    with pytest.raises(UserError, match="--sparsity auto"):
        method.prune(nn.Linear(2, 2), 0.5, PruneData())


def test_large_lambda_leaves_one_hidden_relu_layer_and_pipeline_round_trips(
        small_train: ImageData, digits_test: ImageData, tmp_path) -> None:
    model = _mlp([24, 24, 24, 24], small_train.info)
    method = methods.create("layer-sparsity", **{"lambda": 20.0}, refit_epochs=1)
    pruned, masks, metrics = prune_model(model, method, "auto", small_train, digits_test, train_epochs=3,
                                         progress=False)
    assert metrics["inactive_layers"] == ["features.2", "features.4", "features.6"]
    assert metrics["merge_runs"] == [["features.2", "features.4", "features.6", "classifier"]]
    assert metrics["depth_before"] == 5 and metrics["depth_after"] == 2 == merge.depth(pruned)
    assert metrics["merge_relative_error"] <= 1e-5 and metrics["min_inactive_preactivation"] >= 0
    assert metrics["params_after"] == 64 * 24 + 24 + 24 * 10 + 10 == metrics["params_after_merge"]
    assert sum(isinstance(m, nn.ReLU) for m in pruned.modules()) == 1
    checkpoint.save(pruned, tmp_path / "ls", metrics=metrics, masks=masks)
    loaded = checkpoint.load(tmp_path / "ls")
    assert evaluate(loaded, digits_test)["accuracy"] == metrics["acc_after"]
    # idempotent: the merged network has no penalisable layer left, so nothing more merges
    links, _ = penalisable_links(loaded, first_layer=False)
    assert links == []


def test_all_layers_inactive_with_nonnegative_inputs_gives_an_affine_model(small_train: ImageData) -> None:
    raw = dataclasses.replace(small_train.info, mean=(0.0,), std=(1.0,))  # inputs in [0, 1]
    data = ImageData(small_train.images, small_train.labels, raw, "train")
    model = _mlp([16, 16], raw)
    method = methods.create("layer-sparsity", **{"lambda": 20.0}, nonnegative_input=True, refit_epochs=0)
    result = method.prune(model, "auto", PruneData(train=data, recipe=RECIPE))
    assert result.merge == [["features.0", "features.2", "classifier"]]
    assert result.info["depth_after"] == 1 and result.info["merge_relative_error"] <= 1e-5
    with pytest.raises(UserError, match="nonnegative_input"):
        method.prune(_mlp([16, 16], raw), "auto", PruneData(train=small_train, recipe=RECIPE))


def test_input_scaling_penalises_the_first_layer_of_normalised_data_and_merges_exactly(
        small_train: ImageData, digits_test: ImageData) -> None:
    model = _mlp([16, 16], small_train.info)
    method = methods.create("layer-sparsity", **{"lambda": 20.0}, input_scaling="nonneg", refit_epochs=0)
    result = method.prune(model, "auto", PruneData(train=small_train, recipe=RECIPE))
    black = normalize(torch.zeros(1, *small_train.info.input_shape, dtype=torch.uint8), small_train.info)
    torch.testing.assert_close(method.floor, black.flatten())  # lo = the normalised value of pixel 0
    assert result.merge == [["features.0", "features.2", "classifier"]] and result.info["depth_after"] == 1
    merged, _ = surgery.apply(model, result, example_inputs=small_train.info.input_shape)
    x = normalize(digits_test.images, digits_test.info)  # every real image, and the darkest and brightest ones
    x = torch.cat([x, black, normalize(torch.full_like(black, 255, dtype=torch.uint8), small_train.info)])
    reference = model.eval()(x).detach()
    torch.testing.assert_close(merged.eval()(x).detach(), reference, rtol=0, atol=1e-5 * float(reference.abs().max()))
    with pytest.raises(UserError, match="input_scaling"):
        methods.create("layer-sparsity", input_scaling="nonneg").prune(
            models.create("lenet5"), "auto", PruneData(train=small_train, recipe=RECIPE))


def test_input_floor_of_data_without_a_normalisation_is_each_features_training_minimum(small_train: ImageData) -> None:
    info = dataclasses.replace(small_train.info, mean=(), std=())   # float inputs used as given
    images = torch.rand(len(small_train), *info.input_shape, generator=torch.Generator().manual_seed(0))
    lows = -torch.arange(64, dtype=torch.float32) / 10          # feature k reaches exactly -k/10, in sample k
    images.view(len(images), -1)[torch.arange(64), torch.arange(64)] = lows
    data = ImageData(images, small_train.labels, info, "train")
    method = methods.create("layer-sparsity", input_scaling="nonneg")
    method.start(_mlp([8, 8], info), "auto", PruneData(train=data, recipe=RECIPE))
    torch.testing.assert_close(method.floor, lows)


class _LearningRates(TrainHook):
    def __init__(self) -> None:
        self.rates: list[float] = []

    def after_step(self, trainer: Trainer) -> None:
        self.rates.append(float(trainer.optimizer.param_groups[0]["lr"]))


def test_a_run_that_removes_no_layer_says_how_far_it_was(small_train: ImageData) -> None:
    model = _mlp([16, 16], small_train.info)
    method = methods.create("layer-sparsity", **{"lambda": 0.01})
    rates = _LearningRates()
    with pytest.warns(UserWarning, match="no layer became inactive"):
        result = method.train(model, "auto", PruneData(train=small_train, recipe=RECIPE), hooks=[rates])
    left = negative_part_norm([model.features[2].weight, model.features[2].bias]).item()
    message = result.info["no_layer_removed"]
    assert f"features.2, keeps a negative part of norm {left:.3g}" in message
    assert f"total threshold λ·Σlr = {0.01 * sum(rates.rates):.3g}" in message


def test_refit_keeps_the_architecture_and_lowers_the_training_loss(small_train: ImageData) -> None:
    model = _mlp([24, 24, 24], small_train.info)
    method = methods.create("layer-sparsity", **{"lambda": 10.0})
    result = method.prune(model, "auto", PruneData(train=small_train, recipe=RECIPE))
    assert result.merge and result.train_after == 1  # a third of 3 epochs
    merged, masks = surgery.apply(model, result, example_inputs=small_train.info.input_shape)
    shapes = {k: v.shape for k, v in merged.state_dict().items()}
    before = evaluate(merged, small_train)["loss"]
    refit = RECIPE.model_copy(update={"epochs": result.train_after, "lr": 0.01})
    Trainer(merged, small_train, None, refit, progress=False).fit()
    assert {k: v.shape for k, v in merged.state_dict().items()} == shapes
    assert evaluate(merged, small_train)["loss"] <= before


def test_subgradient_solver_projects_small_groups_and_reports_the_loss_change(small_train: ImageData) -> None:
    model = _mlp([16, 16, 16], small_train.info)
    method = methods.create("layer-sparsity", **{"lambda": 0.5}, solver="subgradient", threshold=1.0)
    result = method.prune(model, "auto", PruneData(train=small_train, recipe=RECIPE))
    assert result.info["projected_layers"] == ["features.2", "features.4"]
    assert result.info["inactive_layers"] == ["features.2", "features.4"]
    assert math.isfinite(result.info["projection_loss_change"])


def test_lambda_path_scores_each_lambda_by_its_refitted_merged_network(small_train: ImageData) -> None:
    model = _mlp([16, 16, 16], small_train.info)
    method = methods.create("layer-sparsity", lambda_path=[20.0, 0.0], epochs_per_lambda=1, refit_epochs=1,
                            path_tolerance=1.0)
    result = method.prune(model, "auto", PruneData(train=small_train, recipe=RECIPE))
    path = result.info["lambda_path"]
    assert [p["lambda"] for p in path] == [0.0, 20.0]
    assert path[1]["active_layers"] == 0 and path[1]["chosen"] and result.info["lambda"] == 20.0
    assert result.info["depth_after"] == 2 == path[1]["depth"]
    # replay the kept λ independently: the 90/10 split, the merge of the returned weights, one refit epoch
    order = torch.randperm(len(small_train), generator=torch.Generator().manual_seed(0))
    fit, validation = small_train.subset(order[64:]), small_train.subset(order[:64])
    merged, _ = surgery.apply(result.model, result, example_inputs=small_train.info.input_shape)
    assert evaluate(merged, validation)["accuracy"] == path[1]["penalised_accuracy"]  # the merge is exact
    Trainer(merged, fit, None, RECIPE.model_copy(update={"epochs": 1}), progress=False).fit()
    assert evaluate(merged, validation)["accuracy"] == path[1]["validation_accuracy"]


def test_fresh_refit_merges_in_the_method_and_reinitialises(small_train: ImageData) -> None:
    model = _mlp([16, 16, 16], small_train.info)
    method = methods.create("layer-sparsity", **{"lambda": 20.0}, refit_init="fresh")
    result = method.prune(model, "auto", PruneData(train=small_train, recipe=RECIPE))
    assert result.merge == [] and merge.depth(result.model) == 2
    assert [e["op"] for e in result.model.connprune_edits] == ["merge"]
    assert bool((result.model.features[2].weight < 0).any())  # fresh weights, not the non-negative product


# ------------------------------------------------------------------------------------------------ baselines


def test_l1_and_row_group_proximal_steps() -> None:
    weight = torch.tensor([[0.5, -2.0], [-0.2, 0.1]])
    prox_l1([weight], 0.3)
    torch.testing.assert_close(weight, torch.tensor([[0.2, -1.7], [0.0, 0.0]]))
    rows = torch.tensor([[3.0, 4.0], [0.3, 0.4]])  # row norms 5 and 0.5
    bias = torch.tensor([0.0, 0.0])
    assert row_group_norm([rows, bias]).item() == pytest.approx(5.5)
    prox_row_groups([rows, bias], 1.0)
    torch.testing.assert_close(rows, torch.tensor([[2.4, 3.2], [0.0, 0.0]]))


def test_l1_reg_keeps_exactly_the_support_it_found(small_train: ImageData) -> None:
    model = _mlp([32, 32], small_train.info)
    result = methods.create("l1-reg", **{"lambda": 0.3}).prune(model, "auto",
                                                                   PruneData(train=small_train, recipe=RECIPE))
    zero_fraction = result.info["penalty_zero_fraction"]
    assert 0.1 < zero_fraction < 1.0
    kept = sum(int(m.sum()) for m in result.masks.values())
    total = sum(m.numel() for m in result.masks.values())
    assert kept == total - round(zero_fraction * total)


def test_group_l1_removes_zero_units_exactly(small_train: ImageData) -> None:
    model = _mlp([32, 32], small_train.info)
    result = methods.create("group-l1", **{"lambda": 2.0}).prune(model, "auto",
                                                                    PruneData(train=small_train, recipe=RECIPE))
    assert result.info["removed_units"] > 0
    x = torch.randn(50, *small_train.info.input_shape)
    reference = model.eval()(x)
    dense = sum(p.numel() for p in model.parameters())
    shrunk, _ = surgery.apply(model, result, example_inputs=small_train.info.input_shape)
    assert result.model is model  # the trained model travels in result.model; apply shrinks a checked copy
    widths = [m.out_features for m in shrunk.features if isinstance(m, nn.Linear)]
    assert widths == [32 - len(v) for v in result.remove.values()] and 0 < sum(widths) < 64
    assert sum(p.numel() for p in shrunk.parameters()) < dense
    torch.testing.assert_close(shrunk(x), reference, rtol=1e-5, atol=1e-5)
