"""K-FAC neuron pruning while training (kfac_pruning.md §7, properties 10-13) and Network Slimming."""

from __future__ import annotations

import json
import math

import pytest
import torch
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

from connprune import methods, models, surgery
from connprune.data.pipeline import Batches
from connprune.errors import UserError
from connprune.experiments.jobs import PruneJob, prune_job
from connprune.graph import build
from connprune.measure.cost import count_params
from connprune.measure.sparsity import count_prunable, sparsity
from connprune.methods.kfac import (KFACParams, NeuronMasks, cubic_schedule, neuron_targets, prunable_groups,
                                    pruning_window, train_and_prune)
from connprune.methods.network_slimming import global_removal
from connprune.train.recipes import default_recipe
from connprune.train.trainer import Trainer, TrainHook


def _mlp(widths: list[int], seed: int = 0) -> nn.Module:
    torch.manual_seed(seed)
    return models.create("mlp", num_classes=10, in_channels=1, input_size=8, widths=widths)


def test_cubic_schedule_is_exact() -> None:
    """§7.11: integer, non-increasing, n before the window, k at and after its end, the cubic formula inside."""
    n, k, start, end = 100, 13, 2, 7
    counts = [cubic_schedule(n, k, e, start, end) for e in range(0, 10)]
    assert counts[: start + 1] == [n] * (start + 1) and counts[end:] == [k] * (10 - end)
    assert all(a >= b for a, b in zip(counts, counts[1:]))
    for e in range(start, end + 1):
        assert counts[e] == k + math.ceil((n - k) * (1 - (e - start) / (end - start)) ** 3 - 1e-9)
    assert pruning_window(10, 0.1, 0.6) == (1, 6) and pruning_window(3, 0.1, 0.6) == (0, 2)
    assert pruning_window(1, 0.1, 0.6) == (0, 1)


class _Observer(TrainHook):
    """Records the active sets after each epoch's pruning and checks masked state after every step."""

    def __init__(self) -> None:
        self.active: list[dict[str, torch.Tensor]] = []
        self.checked_steps = 0

    def on_epoch_end(self, trainer: Trainer, epoch: int, metrics: dict[str, float]) -> None:
        schedule = trainer.hooks[0].method
        self.active.append({r: a.clone() for r, a in schedule.masks.active.items()})

    def after_step(self, trainer: Trainer) -> None:
        schedule = trainer.hooks[0].method
        parameters = dict(trainer.model.named_parameters())
        for name, keep in schedule.enforcer.masks.items():
            assert parameters[name][~keep].abs().sum() == 0.0
            momentum = trainer.optimizer.state.get(parameters[name], {}).get("momentum_buffer")
            if momentum is not None:
                assert momentum[~keep].abs().sum() == 0.0
            self.checked_steps += int(not keep.all())


def test_schedule_followed_and_pruned_neurons_never_return(digits_train, digits_test) -> None:
    """§7.11 in training: active counts follow the schedule, end at k_l, pruned sets only grow, and masked
    weights and their momentum stay exactly 0 after every step."""
    model = _mlp([40, 24])
    params = KFACParams(beta=1e-3, budget="neurons", prune_start=0.0, prune_end=0.75, stat_every=5, eig_every=10)
    observer = _Observer()
    recipe = default_recipe("digits", epochs=4, batch_size=128)
    model, remove, info = train_and_prune(model, digits_train, None, recipe, 0.5, params, hooks=[observer])
    start, end = info["pruning_window_epochs"]
    assert (start, end) == (0, 3)
    targets = {"features.0": 20, "features.2": 12}
    assert info["neuron_targets"] == targets
    widths = {"features.0": 40, "features.2": 24}
    for epoch, active in enumerate(observer.active, start=1):
        for root, keep in active.items():
            assert int(keep.sum()) == cubic_schedule(widths[root], targets[root], epoch, start, end)
    for before, after in zip(observer.active, observer.active[1:]):
        for root in before:
            assert not (after[root] & ~before[root]).any()  # nothing pruned comes back
    assert {r: len(v) for r, v in remove.items()} == {r: widths[r] - targets[r] for r in widths}
    assert observer.checked_steps > 0
    assert info["neuron_sparsity"] == pytest.approx(1 - 32 / 64)
    assert math.isfinite(info["final_spectral_radius"]) and info["final_spectral_radius"] > 0


def test_shrunk_equals_masked_and_parameter_count(digits_train) -> None:
    """§7.12: after physical removal the outputs equal the masked model's (1e-5) and the parameter count is the
    analytic one; the weight budget is met by the removed fraction of prunable weights."""
    model = _mlp([48, 32], seed=1)
    dense_prunable = count_prunable(model)
    params = KFACParams(beta=1e-3, stat_every=5, eig_every=10)
    trained, remove, info = train_and_prune(model, digits_train, None, default_recipe("digits", epochs=2), 0.6,
                                            params)
    trained.eval()
    x = torch.randn(16, 1, 8, 8, generator=torch.Generator().manual_seed(0))
    masked = trained(x)
    result = methods.PruningResult(remove=remove, model=trained, train_after=0)
    shrunk, masks = surgery.apply(trained, result, example_inputs=(1, 8, 8))
    assert torch.allclose(shrunk(x), masked, atol=1e-5)
    h1, h2 = 48 - len(remove["features.0"]), 32 - len(remove["features.2"])
    assert count_params(shrunk) == (64 + 1) * h1 + (h1 + 1) * h2 + (h2 + 1) * 10
    achieved = sparsity(shrunk, masks, dense_prunable)
    assert achieved == pytest.approx(1 - (64 * h1 + h1 * h2 + h2 * 10) / dense_prunable)
    assert 0.6 <= achieved < 0.62  # the smallest uniform neuron ratio that meets the budget (± one neuron)


def test_conv_model_shrinks_exactly(digits_train) -> None:
    """LeNet-5: conv filters and flatten-coupled linear inputs are removed; shrunk == masked; first conv kept."""
    torch.manual_seed(2)
    model = models.create("lenet5", num_classes=10, in_channels=1, input_size=8)
    params = KFACParams(beta=1e-3, importance="norm_in", stat_every=5, eig_every=10, budget="neurons")
    trained, remove, info = train_and_prune(model, digits_train, None, default_recipe("digits", epochs=2), 0.5,
                                            params)
    assert "conv1" not in remove and len(remove["conv2"]) == 8
    trained.eval()
    x = torch.randn(8, 1, 8, 8, generator=torch.Generator().manual_seed(1))
    masked = trained(x)
    shrunk, _ = surgery.apply(trained, methods.PruningResult(remove=remove, model=trained), example_inputs=(1, 8, 8))
    assert shrunk.conv2.out_channels == 8 and shrunk.fc1.in_features == 8 * 2 * 2
    assert torch.allclose(shrunk(x), masked, atol=1e-5)


def test_residual_network_block_internal_only() -> None:
    """ResNet-20: only block-internal channels are prunable by default; masks silence BN outputs exactly."""
    torch.manual_seed(3)
    model = models.create("resnet20", num_classes=10, in_channels=1, input_size=8)
    graph = build(model, (1, 8, 8))
    groups = prunable_groups(graph, prune_first_conv=False, prune_residual=False)
    assert groups and all(not g.residual for g in groups) and len(groups) == 9
    targets = neuron_targets(graph, groups, 0.5, "neurons", 1)
    masks = NeuronMasks(model, graph, groups)
    root = groups[0].root
    masks.active[root][: groups[0].channels - targets[root]] = False
    with torch.no_grad():
        for name, keep in masks.parameter_masks().items():
            dict(model.named_parameters())[name].mul_(keep)
    model.eval()
    x = torch.randn(4, 1, 8, 8)
    masked = model(x)
    shrunk, _ = surgery.apply(model, methods.PruningResult(remove=masks.removed()), example_inputs=(1, 8, 8))
    assert torch.allclose(shrunk(x), masked, atol=1e-5)


def test_penalty_lowers_spectral_radius(digits_train) -> None:
    """§7.10: the same 2-layer MLP from the same seed, ~200 steps: β = 1e-2 ends with a smaller ρ̂ and a smaller
    exact λmax(GGN) than β = 0 (full penalty gradient, no pruning)."""
    results = {}
    for beta in (0.0, 1e-2):
        model = _mlp([32], seed=0)
        params = KFACParams(beta=beta, g_mode="full", stat_every=1, eig_every=5, ema=0.9, exact_eigenvalue=True)
        recipe = default_recipe("digits", epochs=9)  # 1,347 images / 64 → 22 steps an epoch → 198 steps
        _, _, info = train_and_prune(model, digits_train, None, recipe, 0.0, params)
        results[beta] = info
    assert results[1e-2]["final_spectral_radius"] < results[0.0]["final_spectral_radius"]
    assert results[1e-2]["final_exact_ggn_lambda_max"] < results[0.0]["final_exact_ggn_lambda_max"]


def _user_loop(beta: float, digits_train, epochs: int = 9) -> tuple[dict, list[tuple[float, float]]]:
    """A plain PyTorch loop (a DataLoader, torch's SGD, no connprune trainer) with K-FAC's public hooks; returns
    the method's info and, per epoch, the loop's own sums of the penalty term and of the cross-entropy."""
    x, y = next(iter(Batches(digits_train, len(digits_train))))
    loader = DataLoader(TensorDataset(x, y), batch_size=64, shuffle=True, generator=torch.Generator().manual_seed(0))
    model = _mlp([32], seed=0)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9)
    method = methods.create("kfac", beta=beta, g_mode="full", stat_every=1, eig_every=5, ema=0.9,
                            exact_eigenvalue=True)
    step, sums = 0, []
    method.start(model, 0.0, methods.PruneData(train=loader), optimizer=optimizer, steps_per_epoch=len(loader),
                 epochs=epochs)
    for epoch in range(1, epochs + 1):
        model.train()
        penalty_sum = ce_sum = 0.0
        for inputs, targets in loader:
            outputs = model(inputs)
            ce, term = nn.functional.cross_entropy(outputs, targets), method.penalty(model, outputs, targets)
            loss = ce + term
            penalty_sum, ce_sum = penalty_sum + term.item(), ce_sum + ce.item()
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
            step += 1
            method.on_step(step, model, optimizer)
        method.on_epoch_end(epoch, model, optimizer)
        sums.append((penalty_sum, ce_sum))
    return method.finalize(model).info, sums


def test_penalty_lowers_the_exact_ggn_eigenvalue_from_a_plain_user_loop(digits_train) -> None:
    """The same claim as inside connprune's trainer (test above), with the user's own loop, optimiser and
    DataLoader driving :meth:`TrainingMethod.start`/``penalty``/``on_step``/``on_epoch_end``/``finalize``."""
    (plain, _), (penalised, _) = _user_loop(0.0, digits_train), _user_loop(1e-2, digits_train)
    assert penalised["final_exact_ggn_lambda_max"] < plain["final_exact_ggn_lambda_max"]
    assert penalised["final_spectral_radius"] < plain["final_spectral_radius"]


def test_penalty_share_of_the_loss_matches_the_loop(digits_train) -> None:
    """info's ``penalty_share`` (per epoch and over the run) is Σ β_t·ρ̂_t / Σ (CE_t + β_t·ρ̂_t) of the terms the
    user's loop actually added to its loss; zero for the β = 0 ablation."""
    info, sums = _user_loop(0.5, digits_train, epochs=3)
    expected = [penalty / (penalty + ce) for penalty, ce in sums]
    assert info["penalty_share_epochs"] == pytest.approx(expected, rel=1e-4)
    total_penalty, total_ce = (sum(column) for column in zip(*sums))
    assert info["penalty_share"] == pytest.approx(total_penalty / (total_penalty + total_ce), rel=1e-4)
    assert 0 < expected[0] < expected[-1]  # β ramps up over the first epoch
    assert _user_loop(0.0, digits_train, epochs=1)[0]["penalty_share_epochs"] == [0.0]


def test_no_pretraining_needed(tmp_path, digits_test) -> None:
    """§7.13 and the done-when: `connprune prune --method kfac --model M --data D --epochs N` needs no checkpoint;
    metrics.json has accuracy, params, MACs and the final spectral radius; the model is physically smaller."""
    method = methods.get("kfac")
    assert method.needs_trained is False and method.needs_training is True
    metrics = prune_job(PruneJob(method="kfac", sparsity=0.7, out=tmp_path / "out", model="mlp", data="digits",
                                 epochs=2, params={"stat_every": 5, "eig_every": 10}, progress=False))
    saved = json.loads((tmp_path / "out" / "metrics.json").read_text())
    for key in ("acc_after", "params_after", "macs_after", "final_spectral_radius", "neuron_sparsity"):
        assert key in saved
    assert metrics["params_after"] < metrics["params_before"] and metrics["macs_after"] < metrics["macs_before"]
    assert metrics["achieved_sparsity"] >= 0.7
    assert metrics["acc_after"] == pytest.approx(metrics["acc_pruned"])  # train_after = 0: nothing after surgery


def test_bad_parameters_are_user_errors(digits_train) -> None:
    with pytest.raises(UserError, match="prune_end"):
        methods.create("kfac", prune_start=0.5, prune_end=0.4)
    with pytest.raises(UserError, match="g_mode"):
        methods.create("kfac", g_mode="both")
    with pytest.raises(UserError, match="BatchNorm"):
        train_and_prune(_mlp([16]), digits_train, None, default_recipe("digits", epochs=1), 0.5,
                        KFACParams(importance="bn"))
    with pytest.raises(UserError, match="BatchNorm"):
        methods.create("network-slimming").prune(_mlp([16]), 0.5, methods.PruneData(
            train=digits_train, recipe=default_recipe("digits", epochs=2)))


def test_curvature_importance_runs(digits_train) -> None:
    """importance='curvature' ranks by the top eigenvector of G and still meets the schedule."""
    params = KFACParams(importance="curvature", budget="neurons", stat_every=2, eig_every=4)
    _, remove, _ = train_and_prune(_mlp([20]), digits_train, None, default_recipe("digits", epochs=1), 0.25, params)
    assert len(remove["features.0"]) == 5


def test_network_slimming_global_threshold() -> None:
    """The smallest |γ| go first across layers; the weight budget is met by the fewest channels."""
    torch.manual_seed(4)
    model = models.create("vgg11", num_classes=10, in_channels=1, input_size=8)
    graph = build(model, (1, 8, 8))
    groups = [g for g in graph.groups if not g.residual]
    scores = {g.root: torch.rand(g.channels) for g in groups}
    scores[groups[0].root][:3] = -1.0  # the three globally smallest
    removed = global_removal(graph, groups, scores, 0.0, "neurons", 1)
    assert removed == {}
    few = global_removal(graph, groups, scores, 3 / sum(g.channels for g in groups), "neurons", 1)
    assert few == {groups[0].root: [0, 1, 2]}
    many = global_removal(graph, groups, scores, 0.5, "weights", 1)
    from connprune.methods.channel_budget import remaining_weights
    full = {g.root: g.channels for g in graph.groups}
    kept = {**full, **{r: full[r] - len(v) for r, v in many.items()}}
    assert 1 - remaining_weights(graph, kept) / count_prunable(model) >= 0.5
    threshold = max(float(scores[r][i]) for r, v in many.items() for i in v)
    for g in groups:  # every channel below the global threshold is removed (unless its layer is at its minimum)
        below = (scores[g.root] < threshold).nonzero().view(-1).tolist()
        assert set(below) <= set(many.get(g.root, [])) or len(many.get(g.root, [])) == g.channels - 1


def test_network_slimming_trains_prunes_and_fine_tunes(digits_train, digits_test) -> None:
    torch.manual_seed(5)
    model = models.create("vgg11", num_classes=10, in_channels=1, input_size=8, )
    result = methods.create("network-slimming", l1=1e-3, finetune=0.5).prune(
        model, 0.5, methods.PruneData(train=digits_train, test=digits_test,
                                      recipe=default_recipe("digits", epochs=2, batch_size=256)))
    assert result.train_after == 1 and result.model is model and result.remove
    shrunk, masks = surgery.apply(model, result, example_inputs=(1, 8, 8))
    assert count_params(shrunk) < count_params(models.create("vgg11", num_classes=10, in_channels=1, input_size=8))


def test_weight_budget_becomes_neuron_targets() -> None:
    """budget='weights': the per-layer neuron targets remove at least --sparsity of the prunable weights (counted
    analytically for LeNet-5 on 8×8 inputs, flatten block 2×2), and at most one neuron's weights more."""
    torch.manual_seed(6)
    model = models.create("lenet5", num_classes=10, in_channels=1, input_size=8)
    graph = build(model, (1, 8, 8))
    groups = prunable_groups(graph, prune_first_conv=False, prune_residual=False)
    assert [g.root for g in groups] == ["conv2", "fc1", "fc2"]
    dense = count_prunable(model)
    for target in (0.3, 0.7, 0.9):
        k = neuron_targets(graph, groups, target, "weights", 1)
        remaining = 6 * 25 + k["conv2"] * 6 * 25 + k["fc1"] * k["conv2"] * 4 + k["fc2"] * k["fc1"] + 10 * k["fc2"]
        achieved = 1 - remaining / dense
        largest_neuron = max(g.weights_per_channel for g in groups) / dense
        assert target <= achieved < target + largest_neuron


def test_a_neuron_budget_is_not_checked_as_a_weight_budget(digits_train) -> None:
    """budget="neurons": --sparsity is the fraction of hidden neurons removed (here 36 of [32, 16] = 0.75), so the
    weight-budget check after surgery must not warn that the weight sparsity "ends at" something else."""
    import warnings

    method = methods.create("kfac", budget="neurons", stat_every=2, eig_every=4)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # any budget warning fails the test
        result = method.prune(_mlp([32, 16]), 0.75, methods.PruneData(train=digits_train,
                                                                   recipe=default_recipe("digits", epochs=1)))
    assert sum(len(v) for v in result.remove.values()) == 36 and "budget_note" not in result.info
