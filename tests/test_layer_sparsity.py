"""Layer sparsity (methods/layer_sparsity.py, spec layer_sparsity.md §7) and the l1 / group-l1 baselines."""

from __future__ import annotations

import dataclasses
import math

import pytest
import torch
from torch import nn

from connprune import checkpoint, methods, models, surgery
from connprune.data import ImageData
from connprune.errors import UserError
from connprune.experiments.jobs import prune_model
from connprune.methods import PruneData
from connprune.methods.layer_sparsity import layer_groups, merge_runs, penalisable_links
from connprune.methods.regularisers import (PenaltyGroup, PenaltyHook, negative_part_norm, penalty_value, prox_l1,
                                            prox_negative_part, prox_row_groups, row_group_norm)
from connprune.surgery import merge
from connprune.train import Trainer, evaluate
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
    links, skipped = penalisable_links(model, nonnegative_input=False)
    assert [link.layer for link in links] == ["features.2", "features.4"]
    assert "features.0" in skipped and skipped["classifier"] == "output layer"
    links, _ = penalisable_links(model, nonnegative_input=True)
    assert [link.layer for link in links] == ["features.0", "features.2", "features.4"]


def test_conv_nets_penalise_only_mergeable_layers_and_say_why() -> None:
    links, skipped = penalisable_links(models.create("lenet5"), nonnegative_input=False)
    assert [link.layer for link in links] == ["fc1", "fc2"]
    assert "pooling" in skipped["conv1"] and skipped["fc3"] == "output layer"
    links, skipped = penalisable_links(models.create("resnet20"), nonnegative_input=False)
    assert links == [] and "residual" in skipped["conv1"] and "pads its input" in skipped["layer1.0.conv1"]


def test_lambda_zero_is_plain_training_and_lambda_positive_is_not(small_train: ImageData) -> None:
    recipe = RECIPE.model_copy(update={"epochs": 1})
    runs = {}
    for label, lam in (("plain", None), ("zero", 0.0), ("positive", 1.0)):
        model = _mlp([16, 16, 16], small_train.info)
        hooks = []
        if lam is not None:
            links, _ = penalisable_links(model, False)
            hooks = [PenaltyHook(layer_groups(model, links, lam, "none", True))]
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
    links, _ = penalisable_links(loaded, nonnegative_input=False)
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


def test_lambda_path_is_warm_started_and_picks_the_shallowest_good_lambda(small_train: ImageData) -> None:
    model = _mlp([16, 16, 16], small_train.info)
    method = methods.create("layer-sparsity", lambda_path=[20.0, 0.0], epochs_per_lambda=1, path_tolerance=1.0)
    result = method.prune(model, "auto", PruneData(train=small_train, recipe=RECIPE))
    path = result.info["lambda_path"]
    assert [p["lambda"] for p in path] == [0.0, 20.0]
    assert path[1]["active_layers"] == 0 and path[1]["chosen"] and result.info["lambda"] == 20.0
    assert result.info["depth_after"] == 2


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
