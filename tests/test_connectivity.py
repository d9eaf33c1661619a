"""GC-Net's connectivity measure (gcnet.md §7 items 1–7): range, affine → 1, independence bound, invariances, dead
units, vectorised == naive ``np.corrcoef`` loop, one class, and the hooks of a real network against a by-hand pass."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from connprune import data, graph, models
from connprune.data import ImageData
from connprune.data.pipeline import normalize
from connprune.errors import UserError
from connprune.measure import connectivity as cn
from connprune.measure.sparsity import prunable_weights


def naive_connectivity(parent: np.ndarray, child: np.ndarray, labels: np.ndarray, guard: float = 1e-3) -> np.ndarray:
    """The test oracle (gcnet.md §3 step 4): a double loop over (i, j) with ``np.corrcoef`` per class."""
    classes = sorted(set(labels.tolist()))
    out = np.zeros((child.shape[1], parent.shape[1]))
    for c in classes:
        a, b = parent[labels == c], child[labels == c]
        for j in range(child.shape[1]):
            for i in range(parent.shape[1]):
                if a[:, i].std() < guard or b[:, j].std() < guard:
                    continue
                out[j, i] += abs(np.corrcoef(a[:, i], b[:, j])[0, 1])
    return out / len(classes)


def random_activations(n: int = 300, n_parent: int = 7, n_child: int = 5, classes: int = 3, seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    parent = torch.randn(n, n_parent, generator=g, dtype=torch.float64)
    mixing = torch.randn(n_parent, n_child, generator=g, dtype=torch.float64)
    child = torch.relu(parent @ mixing) + 0.5 * torch.randn(n, n_child, generator=g, dtype=torch.float64)
    labels = torch.randint(0, classes, (n,), generator=g)
    return parent, child, labels


def test_vectorised_equals_naive_corrcoef_loop_and_streaming_does_not_matter():
    parent, child, labels = random_activations()
    parent[:, 2] = 4.0  # a dead unit on the way
    oracle = naive_connectivity(parent.numpy(), child.numpy(), labels.numpy())
    for batch in (None, 1, 7, 64):
        fast = cn.pearson_connectivity(parent, child, labels, batch_size=batch)
        assert fast.shape == (5, 7)
        np.testing.assert_allclose(fast.numpy(), oracle, atol=1e-10)


def test_values_lie_in_unit_interval_with_layer_shapes(digits_train):
    torch.manual_seed(0)
    model = models.create("lenet5", input_size=8)
    g = graph.build(model, (1, 8, 8))
    result = cn.network_connectivity(model, digits_train, g, per_class=40)
    weights = prunable_weights(model)
    assert set(result.ghosts) == {"conv2", "fc1", "fc2", "fc3"}
    for layer in result.layers:
        ghost = result.ghosts[layer.child]
        w = weights[f"{layer.child}.weight"]
        assert ghost.shape == (w.shape[0], w.shape[1] // layer.features_per_channel)
        assert torch.isfinite(ghost).all() and ghost.min() >= 0.0 and ghost.max() <= 1.0
    assert set(result.probe_per_class.values()) == {40}


@pytest.mark.parametrize("sign", [1.0, -1.0])
def test_exact_affine_relation_gives_one(sign):
    g = torch.Generator().manual_seed(1)
    parent = torch.randn(200, 4, generator=g, dtype=torch.float64)
    labels = torch.arange(200) % 4
    # unit 1 of the child is an exact affine function of unit 3 of the parent, with a different slope per class
    slopes = sign * torch.tensor([0.5, 2.0, 7.0, 0.01], dtype=torch.float64)[labels]
    child = torch.randn(200, 2, generator=g, dtype=torch.float64)
    child[:, 1] = slopes * parent[:, 3] + 3.0 + labels.to(torch.float64)
    conn = cn.pearson_connectivity(parent, child, labels, batch_size=16)
    assert conn[1, 3].item() == pytest.approx(1.0, abs=1e-6)
    assert conn[1, :3].max() < 0.5


def test_independent_units_are_bounded():
    g = torch.Generator().manual_seed(2)
    n_per_class = 2000
    parent = torch.randn(2 * n_per_class, 6, generator=g, dtype=torch.float64)
    child = torch.randn(2 * n_per_class, 6, generator=g, dtype=torch.float64)
    labels = torch.arange(2 * n_per_class) % 2
    conn = cn.pearson_connectivity(parent, child, labels)
    assert conn.max() < 4 / np.sqrt(n_per_class)  # < 0.09 here


def test_invariances():
    parent, child, labels = random_activations(seed=3)
    reference = cn.pearson_connectivity(parent, child, labels)
    scaled = parent.clone()
    scaled[:, 0] *= -3.5
    scaled[:, 4] = scaled[:, 4] * 0.2 + 11.0
    shifted_child = child + torch.arange(5, dtype=torch.float64)
    perm = torch.randperm(len(labels), generator=torch.Generator().manual_seed(4))
    relabel = torch.tensor([2, 0, 1])[labels]  # permute the class order
    for p, c, y in [(scaled, child, labels), (parent, shifted_child, labels),
                    (parent[perm], child[perm], labels[perm]), (parent, child, relabel)]:
        torch.testing.assert_close(cn.pearson_connectivity(p, c, y), reference, atol=1e-12, rtol=0)


def test_dead_unit_gets_zero_without_nan():
    parent, child, labels = random_activations(seed=5)
    parent[:, 1] = 0.0
    child[:, 3] = 2.5 + 1e-5 * torch.randn(len(labels), generator=torch.Generator().manual_seed(0),
                                            dtype=torch.float64)  # std 1e-5 < guard
    conn = cn.pearson_connectivity(parent, child, labels)
    assert torch.isfinite(conn).all()
    assert (conn[:, 1] == 0).all() and (conn[3] == 0).all()
    assert (conn[:3, [0, 2, 3]] > 0).all()
    mi = cn.mi_connectivity(parent[:, :3], child, labels)
    assert torch.isfinite(mi).all() and (mi[:, 1] == 0).all() and (mi[3] == 0).all()


def test_one_class_is_plain_abs_pearson():
    parent, child, _ = random_activations(seed=6)
    labels = torch.zeros(len(parent), dtype=torch.int64)
    conn = cn.pearson_connectivity(parent, child, labels)
    full = np.corrcoef(np.concatenate([child.numpy(), parent.numpy()], axis=1).T)[:5, 5:]
    np.testing.assert_allclose(conn.numpy(), np.abs(full), atol=1e-10)


def test_streaming_sums_are_stable_for_large_offsets():
    g = torch.Generator().manual_seed(7)
    base = torch.randn(500, 1, generator=g, dtype=torch.float64)
    parent = 1e6 + 1e-2 * base  # std 1e-2, mean 1e6: naive raw moments would cancel catastrophically
    child = 3.0 * base
    sums = cn.MomentSums(1, 1)
    for chunk in range(0, 500, 50):
        sums.update(parent[chunk : chunk + 50], child[chunk : chunk + 50])
    assert sums.correlation().item() == pytest.approx(1.0, abs=1e-6)


def test_mi_variant_orders_dependence():
    g = torch.Generator().manual_seed(8)
    parent = torch.randn(600, 2, generator=g, dtype=torch.float64)
    child = torch.stack([parent[:, 0] + 0.1 * torch.randn(600, generator=g, dtype=torch.float64),
                         torch.randn(600, generator=g, dtype=torch.float64)], dim=1)
    labels = torch.arange(600) % 2
    mi = cn.mi_connectivity(parent, child, labels)
    assert mi.min() >= 0 and mi.max() <= 1
    # EDGE's plug-in estimate has a positive bias on independent pairs (~0.4 here after Linfoot's map)
    assert mi[0, 0] > 0.9 and mi[0, 0] > max(mi[1].max(), mi[0, 1]) + 0.4
    assert cn.linfoot(torch.tensor([0.0])).item() == 0.0
    rho = 0.6  # Gaussian closed form: I = -1/2 log(1 - rho^2) → Linfoot coefficient = |rho|
    assert cn.linfoot(torch.tensor([-0.5 * np.log(1 - rho**2)])).item() == pytest.approx(rho)


def test_probe_set_is_drawn_per_class_and_seeded():
    labels = torch.tensor([0] * 50 + [1] * 20 + [2] * 80)
    drawn = cn.probe_indices(labels, 30, seed=1)
    assert {c: len(i) for c, i in drawn.items()} == {0: 30, 1: 20, 2: 30}
    assert all((labels[i] == c).all() for c, i in drawn.items())
    again = cn.probe_indices(labels, 30, seed=1)
    assert all(torch.equal(drawn[c], again[c]) for c in drawn)
    assert not torch.equal(drawn[2], cn.probe_indices(labels, 30, seed=2)[2])
    with pytest.raises(UserError, match="at least 2"):
        cn.probe_indices(labels, 1)


def _by_hand_lenet(model, x):
    """LeNet-5's activations at the 'post' site, computed without hooks."""
    a1 = model.pool1(model.relu1(model.conv1(x)))            # what conv2 reads
    a2 = model.pool2(model.relu2(model.conv2(a1)))           # what fc1 reads (before flatten)
    a3 = model.relu3(model.fc1(model.flatten(a2)))           # what fc2 reads
    a4 = model.relu4(model.fc2(a3))                          # what fc3 reads
    logits = model.fc3(a4)
    return {"conv2": (a1.mean((2, 3)), a2.mean((2, 3))), "fc1": (a2.mean((2, 3)), a3), "fc2": (a3, a4),
            "fc3": (a4, logits)}


def test_network_pass_matches_activations_computed_by_hand(digits_train):
    torch.manual_seed(0)
    model = models.create("lenet5", input_size=8).eval()
    g = graph.build(model, (1, 8, 8))
    result = cn.network_connectivity(model, digits_train, g, per_class=30, batch_size=64, seed=3)
    probe = cn.probe_indices(digits_train.labels, 30, seed=3)
    index = torch.cat(list(probe.values()))
    with torch.no_grad():
        acts = _by_hand_lenet(model, normalize(digits_train.images[index], digits_train.info))
    labels = digits_train.labels[index].numpy()
    for child, (parent_act, child_act) in acts.items():
        oracle = naive_connectivity(parent_act.double().numpy(), child_act.double().numpy(), labels)
        np.testing.assert_allclose(result.ghosts[child].numpy(), oracle, atol=1e-5)


def test_module_site_reads_module_outputs(digits_train):
    torch.manual_seed(0)
    model = models.create("lenet5", input_size=8).eval()
    g = graph.build(model, (1, 8, 8))
    result = cn.network_connectivity(model, digits_train, g, per_class=30, site="module")
    probe = cn.probe_indices(digits_train.labels, 30, seed=0)
    index = torch.cat(list(probe.values()))
    x = normalize(digits_train.images[index], digits_train.info)
    with torch.no_grad():
        fc1_out = model.fc1(model.flatten(model.pool2(model.relu2(model.conv2(model.pool1(model.relu1(
            model.conv1(x))))))))
        fc2_out = model.fc2(model.relu3(fc1_out))
        fc3_out = model.fc3(model.relu4(fc2_out))
    oracle = naive_connectivity(fc2_out.double().numpy(), fc3_out.double().numpy(), digits_train.labels[index].numpy())
    np.testing.assert_allclose(result.ghosts["fc3"].numpy(), oracle, atol=1e-5)
    post = cn.network_connectivity(model, digits_train, g, per_class=30, site="post")
    assert not torch.allclose(post.ghosts["fc3"], result.ghosts["fc3"])  # the two sites do differ


def test_resnet_pairs_follow_the_spec():
    model = models.create("resnet18", small_input=True, input_size=32, num_classes=10)
    g = graph.build(model, (3, 32, 32))
    layers = {layer.child: layer for layer in cn.ghost_layers(g)}
    assert "conv1" not in layers  # the stem has no ghost parent
    assert not any("downsample" in name or "shortcut" in name for name in layers)  # 1×1 shortcuts: magnitude
    assert layers["layer1.0.conv2"].parents == ("layer1.0.conv1",)
    assert layers["layer2.0.conv1"].residual  # reads the previous block's output stream
    assert layers["fc"].channels == 512
    with_shortcuts = {layer.child for layer in cn.ghost_layers(g, include_shortcuts=True)}
    assert {name for name in with_shortcuts - set(layers)} and all(
        layer.shortcut for layer in cn.ghost_layers(g, include_shortcuts=True) if layer.child not in layers)
    assert "fc" not in {layer.child for layer in cn.ghost_layers(g, include_classifier=False)}


def test_resnet_network_pass_runs_and_stays_in_range():
    torch.manual_seed(0)
    model = models.create("resnet20", in_channels=1, input_size=8, num_classes=3)
    g = graph.build(model, (1, 8, 8))
    gen = torch.Generator().manual_seed(0)
    images = torch.randint(0, 256, (90, 1, 8, 8), generator=gen, dtype=torch.uint8)
    probe = ImageData(images, torch.arange(90) % 3, data.info("digits"), "train")
    result = cn.network_connectivity(model, probe, g, per_class=30, batch_size=16)
    for layer in result.layers:
        ghost = result.ghosts[layer.child]
        assert ghost.shape == (layer.units, layer.channels)
        assert torch.isfinite(ghost).all() and 0 <= ghost.min() and ghost.max() <= 1
    with pytest.raises(UserError, match="measure"):
        cn.network_connectivity(model, probe, g, measure="spearman")  # type: ignore[arg-type]


def _standardised(values: torch.Tensor, guard: float = 1e-3) -> torch.Tensor:
    """Zero mean, unit population std per column; constant columns (std < guard) are 0."""
    std = values.std(0, unbiased=False)
    live = std >= guard
    return (values - values.mean(0)) / torch.where(live, std, torch.ones_like(std)) * live


def test_ghost_training_equals_autograd_on_the_raw_activations_and_converges_to_least_squares():
    parent, child, labels = random_activations(n=240)
    parent[:, 2] = 4.0  # a dead unit
    sums = {}
    for c in range(3):
        sums[c] = cn.MomentSums(7, 5, parent_cross=True)
        sums[c].update(parent[labels == c], child[labels == c])
    cross = torch.stack([s.correlation() for s in sums.values()]).mean(0)
    moments = torch.stack([s.parent_correlation() for s in sums.values()]).mean(0)
    initial = cn.pearson_connectivity(parent, child, labels)
    # the oracle: the objective on the per-class standardised samples, its gradient by autograd
    blocks = [(_standardised(parent[labels == c]), _standardised(child[labels == c])) for c in range(3)]
    p_bar = torch.stack([x.T @ x / x.shape[0] for x, _ in blocks]).mean(0)
    np.testing.assert_allclose(moments.numpy(), p_bar.numpy(), atol=1e-12)
    step = 0.7 / (2 * float(torch.linalg.eigvalsh(p_bar).max()))
    ghost = initial.clone()
    for _ in range(25):
        ghost.requires_grad_(True)
        loss = torch.stack([((z - x @ ghost.T) ** 2).sum(1).mean() for x, z in blocks]).mean()
        (grad,) = torch.autograd.grad(loss, ghost)
        ghost = (ghost - step * grad).detach()
    trained = cn.train_ghost(initial, cross, moments, 25, rate=0.7)
    np.testing.assert_allclose(trained.numpy(), ghost.abs().numpy(), atol=1e-10)
    converged = cn.train_ghost(initial, cross, moments, 3000, rate=1.0)
    np.testing.assert_allclose(converged.numpy(), (cross @ torch.linalg.pinv(moments)).abs().numpy(), atol=1e-6)
    assert torch.equal(cn.train_ghost(initial, cross, moments, 0), initial)
    with pytest.raises(UserError, match="0 < rate < 2"):
        cn.train_ghost(initial, cross, moments, 5, rate=2.0)


def test_network_moments_match_the_samples(digits_train):
    torch.manual_seed(0)
    model = models.create("lenet5", input_size=8).eval()
    g = graph.build(model, (1, 8, 8))
    plain = cn.network_connectivity(model, digits_train, g, per_class=30, seed=3)
    result = cn.network_connectivity(model, digits_train, g, per_class=30, seed=3, moments=True)
    assert all(torch.equal(plain.ghosts[k], result.ghosts[k]) for k in plain.ghosts) and not plain.cross
    probe = cn.probe_indices(digits_train.labels, 30, seed=3)
    with torch.no_grad():
        acts = {c: _by_hand_lenet(model, normalize(digits_train.images[i], digits_train.info))["fc2"]
                for c, i in probe.items()}
    def moment(left: torch.Tensor, right: torch.Tensor) -> np.ndarray:  # guarded Pearson, from the samples
        return (_standardised(left.double()).T @ _standardised(right.double()) / left.shape[0]).numpy()

    signed = np.mean([moment(b, a) for a, b in acts.values()], axis=0)
    np.testing.assert_allclose(result.cross["fc2"].numpy(), signed, atol=1e-6)
    parents = np.mean([moment(a, a) for a, _ in acts.values()], axis=0)
    np.testing.assert_allclose(result.parent_moments["fc2"].numpy(), parents, atol=1e-6)
