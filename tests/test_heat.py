"""N2NSkip heat-diffusion connectivity: closed forms, node set, F, scree, saturation, CLI (spec §2, §3.7, §7)."""

from __future__ import annotations

import copy
import json
import sys

import numpy as np
import pytest
import torch
from torch import nn

from connprune import checkpoint, cli, methods, models, surgery
from connprune.errors import UserError
from connprune.measure import heat
from connprune.measure.sparsity import prunable_weights
from connprune.methods import PruneData
from connprune.surgery.shrink import KEPT_UNITS, plan_removal


def two_components() -> heat.UnitGraph:
    """Path 0-1-2-3 (sources 0 and 1) and triangle 4-5-6 (source 4), weighted edges."""
    a = np.zeros((7, 7))
    for i, j, w in [(0, 1, 1.0), (1, 2, 2.0), (2, 3, 0.5), (4, 5, 1.0), (5, 6, 3.0), (4, 6, 1.5)]:
        a[i, j] = a[j, i] = w
    return heat.from_adjacency(a, [0, 1, 4])


def small_mlp(seed: int = 0, widths: tuple[int, ...] = (32, 16)) -> nn.Module:
    torch.manual_seed(seed)
    return models.create("mlp", in_channels=1, input_size=8, widths=list(widths))


def random_masks(model: nn.Module, keep: float, seed: int) -> dict[str, torch.Tensor]:
    generator = torch.Generator().manual_seed(seed)
    return {name: torch.rand(w.shape, generator=generator) < keep for name, w in prunable_weights(model).items()}


# --- closed forms on hand-built graphs ------------------------------------------------------------------------------

def test_heat_kernel_closed_forms():
    graph = two_components()
    np.testing.assert_allclose(heat.heat_kernel(graph, 0.0), np.eye(7), atol=1e-12)
    np.testing.assert_array_equal(heat.heat_signature(graph, 0.0), graph.sources)
    for t in (0.1, 1.0, 7.0):
        h = heat.heat_kernel(graph, t)
        np.testing.assert_allclose(h, h.T, atol=1e-12)
        np.testing.assert_allclose(h.sum(axis=1), 1.0, atol=1e-10)
        s = heat.heat_signature(graph, t)
        assert s.sum() == pytest.approx(graph.sources.sum(), abs=1e-8)  # heat conserved
        np.testing.assert_allclose(s, h @ graph.sources, atol=1e-8)  # expm_multiply == U e^{-Λt} U^T A
    # t → ∞: S_i = |sources in C(i)| / |C(i)|
    np.testing.assert_allclose(heat.heat_signature(graph, 1e3), [0.5] * 4 + [1 / 3] * 3, atol=1e-8)


def test_isolated_nodes_keep_their_heat_and_f_stays_away_from_zero():
    a = np.zeros((5, 5))
    a[1, 2] = a[2, 1] = a[2, 3] = a[3, 2] = 1.0  # 0: isolated source, 4: isolated sink, 1 source on path 1-2-3
    graph = heat.from_adjacency(a, [0, 1])
    for t in (0.5, 5.0, 500.0):
        s = heat.heat_signature(graph, t)
        assert s[0] == pytest.approx(1.0) and s[4] == pytest.approx(0.0)
    full = a.copy()
    full[3, 4] = full[4, 3] = full[0, 1] = full[1, 0] = 1.0  # connected path 0-1-2-3-4
    connected = heat.from_adjacency(full, [0, 1])
    other = full.copy()
    other[0, 4] = other[4, 0] = 2.0  # a different connected graph on the same nodes
    assert heat.signature_distance(connected, heat.from_adjacency(other, [0, 1]), 1e3) < 1e-6
    assert heat.signature_distance(connected, graph, 1e3) > 0.1


def test_saturated_signature_is_the_large_t_limit():
    graph = two_components()
    expected = [0.5] * 4 + [1 / 3] * 3  # |sources in C(i)| / |C(i)|
    np.testing.assert_allclose(heat.saturated_signature(graph), expected, atol=1e-15)
    np.testing.assert_allclose(heat.heat_signature(graph, 1e3), heat.saturated_signature(graph), atol=1e-8)
    a = np.zeros((5, 5))
    a[1, 2] = a[2, 1] = a[2, 3] = a[3, 2] = 1.0
    isolated = heat.from_adjacency(a, [0, 1])  # 0: isolated source, 4: isolated sink
    np.testing.assert_allclose(heat.saturated_signature(isolated), [1.0, 1 / 3, 1 / 3, 1 / 3, 0.0])
    full = a.copy()
    full[3, 4] = full[4, 3] = full[0, 1] = full[1, 0] = 1.0
    other = full.copy()
    other[0, 4] = other[4, 0] = 2.0
    connected, different = heat.from_adjacency(full, [0, 1]), heat.from_adjacency(other, [0, 1])
    assert heat.saturated_distance(connected, different) == pytest.approx(0.0, abs=1e-15)  # both connected
    assert heat.saturated_distance(connected, isolated) == pytest.approx(
        np.linalg.norm(np.full(5, 0.4) - [1.0, 1 / 3, 1 / 3, 1 / 3, 0.0]))
    for t in (1.0, 10.0, 1e3):  # F(t) approaches F(∞)
        assert abs(heat.signature_distance(connected, isolated, t) -
                   heat.saturated_distance(connected, isolated)) <= 1.0 / t
    with pytest.raises(UserError, match="node sets"):
        heat.saturated_distance(connected, two_components())


def test_scree_closed_forms_and_saturation():
    rng = np.random.default_rng(0)
    a = np.triu((rng.random((40, 40)) < 0.2) * 1.0, 1)
    a[np.arange(39), np.arange(1, 40)] = 1.0  # a spanning path: connected
    graph = heat.from_adjacency(a + a.T, [0, 1, 2])
    n = graph.n
    k = round(0.06 * n)
    assert heat.scree(graph, ts=[0.0])[0] == pytest.approx(k / (n - 1))
    alphas = heat.scree(graph, ts=np.linspace(0, 20, 50))
    assert np.all(np.diff(alphas) >= -1e-12) and np.all((alphas >= 0) & (alphas <= 1 + 1e-12))
    assert heat.scree(graph, ts=[1e4])[0] == pytest.approx(1.0)
    by_k = [heat.scree(graph, k_fraction=f, ts=[0.3])[0] for f in (0.05, 0.2, 0.5, 1.0)]
    assert np.all(np.diff(by_k) >= 0) and by_k[-1] == pytest.approx(1.0)
    t_star = heat.saturation_time(graph)
    assert heat.scree(graph, ts=[t_star])[0] >= heat.SATURATION
    assert heat.scree(graph, ts=[t_star * 0.999])[0] < heat.SATURATION


def test_adding_edges_does_not_lower_algebraic_connectivity():
    model = small_mlp()
    masks = random_masks(model, 0.1, 0)
    plain = heat.unit_graph(model, (1, 8, 8), masks=masks)
    skip = torch.randn(10, 64) * (torch.rand(10, 64) < 0.2)  # input pixels → classes (dst = classifier's output)
    skipped = heat.unit_graph(model, (1, 8, 8), masks=masks, extra_edges=[("features.0", "classifier", skip)])
    assert skipped.offsets == plain.offsets
    assert skipped.adjacency.nnz == plain.adjacency.nnz + 2 * int((skip != 0).sum())  # pixels–classes: new pairs
    assert skipped.eigenvalues()[1] >= plain.eigenvalues()[1] - 1e-9
    with pytest.raises(UserError, match="not a weight layer"):
        heat.unit_graph(model, (1, 8, 8), extra_edges=[("nope", "classifier", skip)])


# --- node-set rule --------------------------------------------------------------------------------------------------

def test_mlp_node_count_matches_the_paper():
    model = models.create("mlp", in_channels=3, input_size=32, widths=[512, 256, 128, 64])
    graph = heat.unit_graph(model, (3, 32, 32))
    assert graph.n == 4042 and graph.sources.sum() == 3072
    assert graph.node_names[-1] == "classes" and graph.offsets["classes"] == (4032, 10)
    # dense MLP: every input unit of a layer is joined to every input unit of the next
    degrees = np.asarray((graph.adjacency != 0).sum(axis=1)).ravel()
    assert degrees[0] == 512 and degrees[-1] == 64


def test_lenet_merges_flattened_features_into_channels():
    model = models.create("lenet5")
    graph = heat.unit_graph(model, (1, 28, 28), weighted=True)
    assert graph.offsets["fc1:in"][1] == 16  # 400 flattened features → 16 channel nodes
    assert graph.n == 1 + 6 + 16 + 120 + 84 + 10 and graph.sources.sum() == 1
    w = model.fc1.weight.detach().double().abs().reshape(120, 16, 25).sum(-1)  # L1 of each channel's features
    c, o = graph.offsets["fc1:in"][0], graph.offsets["fc2:in"][0]
    np.testing.assert_allclose(graph.adjacency[c:c + 16, o:o + 120].toarray(), w.T.numpy(), rtol=1e-12)
    k = model.conv2.weight.detach().double().abs().sum((2, 3))  # conv kernel slice L1
    s = graph.offsets["conv2:in"][0]
    np.testing.assert_allclose(graph.adjacency[s:s + 6, c:c + 16].toarray(), k.T.numpy(), rtol=1e-12)


def test_resnet_node_count_and_residual_edges():
    model = models.create("resnet20")
    graph = heat.unit_graph(model, (3, 32, 32))
    expected = sum(m.in_channels for m in model.modules() if isinstance(m, nn.Conv2d)) + model.fc.in_features + 10
    assert graph.n == expected and graph.sources.sum() == 3
    adjacency = graph.adjacency
    image = graph.block("conv1:in")
    # the stem's weights reach block 0's conv1 directly and block 1's conv1 through the identity shortcut
    assert adjacency[image, graph.block("layer1.0.conv1:in")].nnz == 3 * 16
    assert adjacency[image, graph.block("layer1.1.conv1:in")].nnz == 3 * 16
    assert adjacency[image, graph.block("layer1.2.conv1:in")].nnz == 0  # a second add: not a direct parent
    # the downsample reads the same stream as the block's conv1: both copies are fed by layer1.2.conv2
    src = graph.block("layer1.2.conv2:in")
    assert adjacency[src, graph.block("layer2.0.downsample.0:in")].nnz == 16 * 16
    assert adjacency[src, graph.block("layer2.0.conv1:in")].nnz == 16 * 16
    assert abs(adjacency - adjacency.T).max() == 0


def test_binary_vs_weighted_and_masks():
    model = small_mlp()
    masks = random_masks(model, 0.3, 1)
    binary = heat.unit_graph(model, (1, 8, 8), masks=masks)
    weighted = heat.unit_graph(model, (1, 8, 8), masks=masks, weighted=True)
    assert set(np.unique(binary.adjacency.data)) == {1.0}
    assert binary.adjacency.nnz == weighted.adjacency.nnz == 2 * sum(int(m.sum()) for m in masks.values())
    w = (model.features[0].weight.detach().double() * masks["features.0.weight"]).abs()
    block = weighted.adjacency[weighted.block("features.0:in"), weighted.block("features.2:in")].toarray()
    np.testing.assert_allclose(block, w.T.numpy(), rtol=1e-12)


# --- F -------------------------------------------------------------------------------------------------------------

def test_f_is_zero_for_identical_models():
    model = small_mlp()
    twin = small_mlp()
    assert heat.heat_distance(model, twin, (1, 8, 8)) == 0.0
    assert heat.heat_distance(model, twin, (1, 8, 8), t=0.7, weighted=True) == 0.0
    masks = random_masks(model, 0.5, 3)
    assert heat.heat_distance(model, model, (1, 8, 8), masks=masks, reference_masks=masks, t=2.0) == 0.0


def test_f_grows_as_random_pruning_disconnects_units():
    reference = small_mlp(widths=(24, 12))
    means = []
    for keep in (1.0, 0.3, 0.1, 0.03):
        values = [heat.heat_distance(reference, reference, (1, 8, 8), masks=random_masks(reference, keep, seed))
                  for seed in range(3)]
        means.append(np.mean(values))
    assert means[0] == 0.0 and all(b > a for a, b in zip(means, means[1:]))


def test_settling_time_bounds_the_distance_to_saturation():
    graph = heat.unit_graph(small_mlp(), (1, 8, 8))
    for tolerance in (1e-3, 1e-6):
        t = heat.settling_time(graph, tolerance)
        gap = np.linalg.norm(heat.heat_signature(graph, t) - heat.saturated_signature(graph))
        assert gap <= tolerance * np.linalg.norm(graph.sources)
        assert gap > 1e-3 * tolerance * np.linalg.norm(graph.sources)  # not far past saturation either
    assert heat.settling_time(graph, 1e-6) == pytest.approx(2 * heat.settling_time(graph, 1e-3))
    with pytest.raises(UserError, match="disconnected"):
        heat.settling_time(two_components())
    with pytest.raises(UserError, match="tolerance"):
        heat.settling_time(graph, 0.0)
    model = small_mlp()
    comparison = heat.compare(model, model, (1, 8, 8), masks=random_masks(model, 0.1, 0))
    assert comparison.distance() == pytest.approx(comparison.distance(comparison.t_settled))
    assert comparison.summary()["heat_distance"] == pytest.approx(
        heat.heat_distance(model, model, (1, 8, 8), masks=random_masks(model, 0.1, 0)))


def test_f_needs_unshrunk_models():
    with pytest.raises(UserError, match="--no-shrink"):
        heat.heat_distance(small_mlp(), small_mlp(widths=(30, 16)), (1, 8, 8))


# --- CLI ------------------------------------------------------------------------------------------------------------

def test_cli_eval_connectivity(monkeypatch, capsys, tmp_path):
    reference = small_mlp()
    checkpoint.save(reference, tmp_path / "ref", data_info={"name": "digits"})
    pruned = small_mlp()
    checkpoint.save(pruned, tmp_path / "pruned", data_info={"name": "digits"}, masks=random_masks(pruned, 0.05, 0))
    results = {}
    for name in ("ref", "pruned"):
        monkeypatch.setattr(sys, "argv", ["connprune", "eval", "--checkpoint", str(tmp_path / name),
                                          "--connectivity", str(tmp_path / "ref"), "--heat-adjacency", "binary",
                                          "--heat-t", "t_sat", "--json"])
        try:
            cli.main()
        except SystemExit as exc:
            assert not exc.code
        results[name] = json.loads(capsys.readouterr().out)
    assert results["ref"]["heat_distance"] == 0.0
    assert results["pruned"]["heat_distance"] > 0.0 and results["pruned"]["heat_t"] > 0.0
    by_t = results["pruned"]["heat_distance_by_t"]
    assert by_t["t_sat"] == pytest.approx(results["pruned"]["heat_distance"])
    assert set(by_t) == {"1t*", "10t*", "100t*", "t_sat", "inf"} and results["pruned"]["heat_t_star"] > 0.0
    graph = heat.unit_graph(reference, (1, 8, 8))
    assert results["pruned"]["heat_t"] == pytest.approx(np.log(1e6) / graph.eigenvalues()[1])
    assert set(results["ref"]["heat_distance_by_t"].values()) == {0.0}
    monkeypatch.setattr(sys, "argv", ["connprune", "eval", "--checkpoint", str(tmp_path / "pruned"),
                                      "--connectivity", str(tmp_path / "ref"), "--heat-taps", "first",
                                      "--heat-adjacency", "binary", "--heat-t", "t_sat",
                                      "--scree", str(tmp_path / "scree.png"), "--json"])
    try:
        cli.main()
    except SystemExit as exc:
        assert not exc.code
    first = json.loads(capsys.readouterr().out)
    assert first["heat_distance"] == pytest.approx(results["pruned"]["heat_distance"])  # an MLP has one tap
    assert (tmp_path / "scree.png").stat().st_size > 1000 and first["scree"] == str(tmp_path / "scree.png")


def _eigh_signature(graph: heat.UnitGraph, t: float) -> np.ndarray:
    """S(t) = U exp(−Λt) Uᵀ A from a dense eigendecomposition of L = D − W (Eqs. 3–5), independent of heat.py's
    Lanczos / expm_multiply."""
    adjacency = graph.adjacency.toarray()
    values, vectors = np.linalg.eigh(np.diag(adjacency.sum(axis=1)) - adjacency)
    return vectors @ (np.exp(-values * t) * (vectors.T @ graph.sources))


def _eval_json(monkeypatch, capsys, *argv: str) -> dict:
    monkeypatch.setattr(sys, "argv", ["connprune", "eval", *argv, "--json"])
    try:
        cli.main()
    except SystemExit as exc:
        assert not exc.code
    return json.loads(capsys.readouterr().out)


def test_cli_eval_connectivity_defaults_to_weighted_at_t_star_and_takes_a_t(monkeypatch, capsys, tmp_path):
    """The spec's Table 3 setting by default: weighted adjacency (|w|), F at the reference's t* (α(K, t*) = 0.97);
    checked against a dense eigendecomposition; ``--heat-t 0.5`` reads F at t = 0.5."""
    reference, pruned = small_mlp(), small_mlp()
    masks = random_masks(pruned, 0.05, 0)
    checkpoint.save(reference, tmp_path / "ref", data_info={"name": "digits"})
    checkpoint.save(pruned, tmp_path / "pruned", data_info={"name": "digits"}, masks=masks)
    found = _eval_json(monkeypatch, capsys, "--checkpoint", str(tmp_path / "pruned"), "--connectivity",
                       str(tmp_path / "ref"))
    assert (found["heat_adjacency"], found["heat_at"]) == ("weighted", "t_star")
    ref_graph = heat.unit_graph(reference, (1, 8, 8), weighted=True)
    pruned_graph = heat.unit_graph(pruned, (1, 8, 8), masks=masks, weighted=True)
    adjacency = ref_graph.adjacency.toarray()
    values = np.linalg.eigvalsh(np.diag(adjacency.sum(axis=1)) - adjacency)[1:]
    k = round(0.06 * ref_graph.n)
    alpha = np.exp(-found["heat_t"] * values)[:k].sum() / np.exp(-found["heat_t"] * values).sum()
    assert alpha == pytest.approx(0.97, abs=1e-3) and found["heat_t"] == pytest.approx(found["heat_t_star"])
    t = found["heat_t"]
    expected = np.linalg.norm(_eigh_signature(ref_graph, t) - _eigh_signature(pruned_graph, t))
    assert found["heat_distance"] == pytest.approx(expected, rel=1e-6)
    given = _eval_json(monkeypatch, capsys, "--checkpoint", str(tmp_path / "pruned"), "--connectivity",
                       str(tmp_path / "ref"), "--heat-t", "0.5")
    assert given["heat_t"] == 0.5 and given["heat_distance"] == pytest.approx(
        np.linalg.norm(_eigh_signature(ref_graph, 0.5) - _eigh_signature(pruned_graph, 0.5)), rel=1e-6)
    for bad in ("-1", "soon"):
        monkeypatch.setattr(sys, "argv", ["connprune", "eval", "--checkpoint", str(tmp_path / "pruned"),
                                          "--connectivity", str(tmp_path / "ref"), "--heat-t", bad])
        with pytest.raises(SystemExit) as exc:
            cli.main()
        assert exc.value.code == 2 and "--heat-t" in capsys.readouterr().err


def test_depthwise_convs_join_channel_to_channel():
    model = models.create("mobilenetv2")
    graph = heat.unit_graph(model, (3, 32, 32))
    depthwise = next(n for n, m in model.named_modules() if isinstance(m, nn.Conv2d) and m.groups > 1)
    child = next(name for name in graph.node_names if name.startswith(depthwise.rsplit(".", 1)[0]) and
                 name != f"{depthwise}:in" and graph.node_names.index(name) > graph.node_names.index(f"{depthwise}:in"))
    block = graph.adjacency[graph.block(f"{depthwise}:in"), graph.block(child)].toarray()
    np.testing.assert_array_equal(block, np.eye(block.shape[0]))
    assert heat.heat_signature(graph, 0.1).sum() == pytest.approx(3.0)


@pytest.mark.parametrize("method, sparsity", [("snip", 0.97), ("l1-filter", 0.5)])
def test_shrunk_checkpoints_compare_like_their_masked_twins(monkeypatch, capsys, tmp_path, digits_train, method,
                                                             sparsity):
    """A physically shrunk checkpoint records its kept units (model.json ``kept_units``); F to the dense reference
    (removed units mapped back as isolated nodes) equals F of the same pruning left unshrunk, with the removal
    plan's surviving entries as masks (a second derivation of what the shrunk model holds), at t* and t_sat."""
    shape = (1, 8, 8)
    torch.manual_seed(0)
    reference = models.create("lenet5", in_channels=1, input_size=8)
    result = methods.create(method).prune(copy.deepcopy(reference), sparsity, PruneData(train=digits_train))
    masked, masked_masks = surgery.apply(copy.deepcopy(reference), result, shrink=False, example_inputs=shape)
    shrunk, shrunk_masks = surgery.apply(copy.deepcopy(reference), result, shrink=True, example_inputs=shape)
    assert heat._widths(shrunk) != heat._widths(reference)  # units were removed
    surviving = plan_removal(masked, masked_masks, shape).surviving()
    twin_masks = {name: masked_masks.get(name, torch.ones_like(keep)) & keep for name, keep in surviving.items()}
    for name, directory in (("ref", reference), ("shrunk", shrunk)):
        checkpoint.save(directory, tmp_path / name, data_info={"name": "digits"},
                        masks=shrunk_masks if name == "shrunk" else None)
    loaded = checkpoint.load_checkpoint(tmp_path / "shrunk")
    assert getattr(loaded.model, KEPT_UNITS) == json.loads((tmp_path / "shrunk" / "model.json").read_text())[
        "kept_units"] == getattr(shrunk, KEPT_UNITS)
    for weighted in (True, False):
        expected = heat.compare(reference, masked, shape, masks=twin_masks, weighted=weighted)
        found = heat.compare(reference, loaded.model, shape, masks=loaded.masks, weighted=weighted)
        for at in ("t_star", "t_sat"):
            assert found.distance(at) == pytest.approx(expected.distance(at), rel=1e-9, abs=1e-15)
    result_json = _eval_json(monkeypatch, capsys, "--checkpoint", str(tmp_path / "shrunk"), "--connectivity",
                             str(tmp_path / "ref"))
    damaged = copy.deepcopy(loaded.model)
    layer = next(iter(getattr(damaged, KEPT_UNITS)))
    side = next(iter(getattr(damaged, KEPT_UNITS)[layer]))
    getattr(damaged, KEPT_UNITS)[layer][side][0] = -1
    with pytest.raises(UserError, match="recorded kept units"):
        heat.compare(reference, damaged, shape, masks=loaded.masks)
    assert result_json["heat_distance"] == pytest.approx(
        heat.compare(reference, masked, shape, masks=twin_masks, weighted=True).distance("t_star"), rel=1e-9)


def test_kept_units_compose_over_repeated_shrinks():
    """Weights labelled by their original position: after two filter removals each surviving weight sits, in the
    shrunk model, where the recorded kept rows and columns say it came from."""
    shape = (1, 8, 8)
    torch.manual_seed(0)
    reference = models.create("lenet5", in_channels=1, input_size=8)
    with torch.no_grad():
        for w in prunable_weights(reference).values():
            w.copy_(torch.rand(w.shape) + 1)  # distinct, non-zero labels
    model = copy.deepcopy(reference)
    for sparsity in (0.3, 0.5):
        result = methods.create("l1-filter").prune(model, sparsity, PruneData(example_inputs=shape))
        model, _ = surgery.apply(model, result, shrink=True, example_inputs=shape)
    kept = getattr(model, KEPT_UNITS)
    assert kept["conv1"]["out"] == kept["conv2"]["in"] and len(kept["conv1"]["out"]) < 6
    for name, w in prunable_weights(model).items():
        layer = name.rpartition(".")[0]
        original = prunable_weights(reference)[name]
        rows = kept.get(layer, {}).get("out", range(original.shape[0]))
        cols = kept.get(layer, {}).get("in", range(original.shape[1]))
        assert torch.equal(w, original[list(rows)][:, list(cols)])


def test_cli_connectivity_rejects_shrunk_checkpoints(monkeypatch, capsys, tmp_path):
    checkpoint.save(small_mlp(), tmp_path / "ref", data_info={"name": "digits"})
    checkpoint.save(small_mlp(widths=(30, 16)), tmp_path / "shrunk", data_info={"name": "digits"})
    monkeypatch.setattr(sys, "argv", ["connprune", "eval", "--checkpoint", str(tmp_path / "shrunk"),
                                      "--connectivity", str(tmp_path / "ref"), "--json"])
    with pytest.raises(SystemExit) as exc:
        cli.main()
    assert exc.value.code == 2 and "--no-shrink" in capsys.readouterr().err


# --- scalable paths: exact spectrum by twin classes, Lanczos heat, eigsh λ_2 ---------------------------------------

def path_graph(n: int = 30) -> heat.UnitGraph:
    a = np.zeros((n, n))
    a[np.arange(n - 1), np.arange(1, n)] = a[np.arange(1, n), np.arange(n - 1)] = 1.0
    return heat.from_adjacency(a, [0, 1])


def dense_signature(graph: heat.UnitGraph, t: float) -> np.ndarray:
    values, vectors = np.linalg.eigh(graph.laplacian().toarray())
    return vectors @ (np.exp(-t * np.clip(values, 0, None)) * (vectors.T @ graph.sources))


@pytest.mark.parametrize("method", ["expm_multiply", "lanczos", "auto"])
def test_sparse_heat_equals_the_dense_eigendecomposition(method):
    """§7.11: S(t) = U exp(−Λt) Uᵀ A to 1e-8, on a path graph and on a pruned MLP with a skip, small to large t."""
    model = small_mlp(widths=(24, 12))
    masks = random_masks(model, 0.2, 4)
    skip = torch.randn(10, 64) * (torch.rand(10, 64, generator=torch.Generator().manual_seed(0)) < 0.1)
    mlp_graph = heat.unit_graph(model, (1, 8, 8), masks=masks, weighted=True,
                                extra_edges=[("features.0", "classifier", skip)])
    for graph in (path_graph(), mlp_graph, two_components()):
        for t in (1e-3, 0.05, 1.0, 30.0, 1e3):
            np.testing.assert_allclose(heat.heat_signature(graph, t, method), dense_signature(graph, t), atol=1e-8)
    with pytest.raises(UserError, match="unknown heat method"):
        heat.heat_signature(path_graph(), 1.0, "dense")


def test_twin_spectrum_is_exact_and_collapses_dense_networks():
    reference = small_mlp()
    dense = heat.unit_graph(reference, (1, 8, 8))
    # every layer block of a dense MLP is one twin class: pixels, 32 hidden, 16 hidden, 10 classes
    assert int(heat.twin_classes(dense.adjacency).max()) + 1 == 4
    pruned = heat.unit_graph(reference, (1, 8, 8), masks=random_masks(reference, 0.3, 2), weighted=True)
    resnet = heat.unit_graph(models.create("resnet20", in_channels=1, input_size=8), (1, 8, 8))
    for graph in (dense, pruned, resnet, two_components(), path_graph()):
        exact = np.clip(np.linalg.eigvalsh(graph.laplacian().toarray()), 0, None)
        np.testing.assert_allclose(heat.laplacian_spectrum(graph.adjacency), exact, atol=1e-8)
    assert int(heat.twin_classes(resnet.adjacency).max()) + 1 < resnet.n // 10
    with pytest.raises(UserError, match="twin classes"):
        heat.laplacian_spectrum(pruned.adjacency, dense_limit=10)


def test_algebraic_connectivity_by_eigsh():
    rng = np.random.default_rng(1)
    a = np.triu((rng.random((150, 150)) < 0.05) * rng.random((150, 150)), 1)
    a[np.arange(149), np.arange(1, 150)] = 1.0
    graph = heat.from_adjacency(a + a.T, [0])
    assert heat.algebraic_connectivity(graph) == pytest.approx(graph.eigenvalues()[1], rel=1e-7)
    split = heat.from_adjacency(np.kron(np.eye(2), (a + a.T)[:75, :75]), [0])
    assert heat.algebraic_connectivity(split) == pytest.approx(0.0, abs=1e-7)


def test_first_tap_edges_read_only_the_kernel_corner():
    """taps="first": the code release's shortcut (a conv edge iff its [0, 0] tap is kept), the spec's default
    "all": any kept tap of the kernel slice is an edge."""
    model = models.create("lenet5")
    mask = torch.zeros_like(model.conv2.weight, dtype=torch.bool)
    mask[0, 0, 2, 2] = True  # channel 0 → 0 only through the centre tap
    mask[1, 1, 0, 0] = True  # channel 1 → 1 through the corner tap
    masks = {"conv2.weight": mask}
    for taps, expected in (("all", {(0, 0), (1, 1)}), ("first", {(1, 1)})):
        graph = heat.unit_graph(model, (1, 28, 28), masks=masks, taps=taps)
        block = graph.adjacency[graph.block("conv2:in"), graph.block("fc1:in")].toarray()
        assert {(int(i), int(j)) for i, j in zip(*np.nonzero(block))} == expected
    with pytest.raises(UserError, match="unknown taps"):
        heat.unit_graph(model, (1, 28, 28), taps="centre")


def test_scree_plot_is_written(tmp_path):
    model = small_mlp()
    graphs = {"dense": heat.unit_graph(model, (1, 8, 8)),
              "pruned": heat.unit_graph(model, (1, 8, 8), masks=random_masks(model, 0.2, 0))}
    path = heat.scree_plot(graphs, tmp_path / "scree.png")
    assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    with pytest.raises(UserError, match="at least one"):
        heat.scree_plot({}, tmp_path / "none.png")
