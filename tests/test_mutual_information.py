"""Mutual-information estimators: EDGE spec (``shared/specs/edge_mi_estimator.md``) §7 and mint.md §7.1–7.3.

Tolerances: EDGE is a biased plug-in estimator; the spec's §7 tolerances are used as stated (they leave room over
the probe errors, e.g. ≤ 0.02 nats observed for the Gaussian closed form vs 0.06 allowed). KSG is nearly unbiased
in 1+1 dimensions, so it gets a tighter band (0.03 nats at N = 10,000; observed ≤ 0.011).
"""

from __future__ import annotations

import time

import numpy as np
import pytest
import torch
from scipy.sparse.csgraph import minimum_spanning_tree
from scipy.stats import spearmanr

from connprune.measure import mutual_information as mi
from connprune.measure.mutual_information import (conditional_mi, edge_base, edge_base_batched, edge_cmi,
                                                  edge_cmi_batched, edge_mi, edge_mi_batched, ensemble_weights,
                                                  gaussian_cmi_linear, gaussian_mi, ksg_cmi, ksg_mi, mst_cmi)


def gaussian_pair(rho: float, n: int, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    x = rng.standard_normal(n)
    return x, rho * x + np.sqrt(1 - rho**2) * rng.standard_normal(n)


def empirical_mi(a: np.ndarray, b: np.ndarray) -> float:
    """Exact plug-in MI Σ p̂(a,b) log p̂(a,b)/(p̂(a)p̂(b)) of discrete label vectors."""
    n = len(a)
    _, ia = np.unique(a, axis=0, return_inverse=True)
    _, ib = np.unique(b, axis=0, return_inverse=True)
    ia, ib = ia.ravel(), ib.ravel()
    joint = np.zeros((ia.max() + 1, ib.max() + 1))
    np.add.at(joint, (ia, ib), 1)
    pj = joint / n
    pa, pb = pj.sum(1, keepdims=True), pj.sum(0, keepdims=True)
    nz = pj > 0
    return float(np.sum(pj[nz] * np.log(pj[nz] / (pa @ pb)[nz])))


def entropy_of_rows(q: np.ndarray) -> float:
    _, counts = np.unique(q, axis=0, return_counts=True)
    p = counts / counts.sum()
    return float(-(p * np.log(p)).sum())


# ------------------------------------------------------------------------------------------- §7.1 independence
@pytest.mark.parametrize(("n", "bound"), [(10_000, 0.05), (50_000, 0.02)])
def test_edge_independence(n, bound):
    x, y = gaussian_pair(0.0, n, seed=1)
    assert abs(edge_mi(x, y)) < bound


def test_ksg_independence():
    x, y = gaussian_pair(0.0, 5_000, seed=1)
    assert abs(ksg_mi(x, y)) < 0.03


# -------------------------------------------------------------------------------------- §7.2 Gaussian closed form
@pytest.mark.parametrize("rho", [0.3, 0.5, 0.7, 0.9])
def test_gaussian_closed_form(rho):
    x, y = gaussian_pair(rho, 10_000, seed=2)
    truth = gaussian_mi(rho)
    assert abs(edge_mi(x, y) - truth) <= 0.06  # spec §7.2 tolerance (EDGE bias)
    assert abs(ksg_mi(x, y) - truth) <= 0.03  # KSG is the tighter oracle


def test_gaussian_mi_closed_form_values():
    assert gaussian_mi(0.0) == 0.0
    assert gaussian_mi(0.9) == pytest.approx(0.8303656, abs=1e-7)
    assert gaussian_cmi_linear(1.0) == pytest.approx(0.5 * np.log(2))


# ------------------------------------------------------------------------------------------------ §7.3 monotone
@pytest.mark.parametrize("aggregate", ["median", "mean"])
def test_monotone_in_dependence(aggregate):
    est = [edge_mi(*gaussian_pair(r, 5_000, seed=3), aggregate=aggregate) for r in (0.0, 0.3, 0.6, 0.9)]
    assert all(a < b for a, b in zip(est, est[1:], strict=False)), est
    k = [ksg_mi(*gaussian_pair(r, 3_000, seed=3)) for r in (0.0, 0.3, 0.6, 0.9)]
    assert all(a < b for a, b in zip(k, k[1:], strict=False)), k


# ---------------------------------------------------------------------------------------------- §7.4 invariances
def test_invariance_swap_with_same_eps_and_offsets():
    rng = np.random.default_rng(4)
    x = rng.standard_normal((3_000, 2))
    y = x @ rng.standard_normal((2, 2)) + rng.standard_normal((3_000, 2))
    b1, b2 = rng.uniform(0, 0.4, 2), rng.uniform(0, 0.4, 2)
    assert edge_base(x, y, 0.4, 0.4, b1, b2) == pytest.approx(edge_base(y, x, 0.4, 0.4, b2, b1), abs=1e-12)


def test_invariance_sample_permutation():
    x, y = gaussian_pair(0.6, 4_000, seed=5)
    perm = np.random.default_rng(0).permutation(len(x))
    assert edge_mi(x[perm], y[perm], seed=7) == pytest.approx(edge_mi(x, y, seed=7), abs=1e-12)


def test_invariance_positive_affine():
    x, y = gaussian_pair(0.6, 4_000, seed=6)
    assert edge_mi(2.5 * x + 3.0, 0.25 * y - 1.0) == pytest.approx(edge_mi(x, y), abs=1e-12)


# ------------------------------------------------------------------------------------- §7.5 deterministic hashing
def test_deterministic_given_seed():
    x, y = gaussian_pair(0.5, 3_000, seed=8)
    assert edge_mi(x, y, seed=3) == edge_mi(x, y, seed=3)  # bit-identical
    assert edge_mi(x, y, seed=3) != edge_mi(x, y, seed=4)
    assert mst_cmi(x[:600], y[:600]) == mst_cmi(x[:600], y[:600])


def test_base_matches_bruteforce_dictionary():
    rng = np.random.default_rng(9)
    x = rng.standard_normal((200, 2))
    y = x[:, :1] + 0.5 * rng.standard_normal((200, 1))
    eps_x, eps_y, bx, by = 0.7, 0.5, np.array([0.1, 0.3]), np.array([0.2])
    nx, ny, nxy = {}, {}, {}
    for xi, yi in zip(x, y, strict=True):
        i = tuple(int(v) for v in np.floor((xi + bx) / eps_x))
        j = tuple(int(v) for v in np.floor((yi + by) / eps_y))
        nx[i] = nx.get(i, 0) + 1
        ny[j] = ny.get(j, 0) + 1
        nxy[(i, j)] = nxy.get((i, j), 0) + 1
    n = len(x)
    brute = sum(c / n * np.log(c * n / (nx[i] * ny[j])) for (i, j), c in nxy.items())
    assert edge_base(x, y, eps_x, eps_y, bx, by) == pytest.approx(brute, abs=1e-12)
    bits = sum(c / n * np.clip(np.log2(c * n / (nx[i] * ny[j])), 0.001, 10) for (i, j), c in nxy.items())
    assert edge_base(x, y, eps_x, eps_y, bx, by, base=2, lo=0.001, U=10) == pytest.approx(bits, abs=1e-12)


# ----------------------------------------------------------------------------------------- §7.6 plug-in identity
@pytest.mark.parametrize("scale", [1.0, 1e12])  # 1e12: integer ranges > 2**31 exercise the unique() fallback path
def test_plugin_identity_discrete(scale):
    rng = np.random.default_rng(10)
    x = rng.integers(0, 5, size=(2_000, 2)).astype(float)
    y = ((x[:, :1] + rng.integers(0, 3, size=(2_000, 1))) % 4).astype(float)
    eps = 0.5 * scale  # one bucket per value: ε below the value spacing, zero offsets
    got = edge_base(x * scale, y * scale, eps, eps)
    assert got == pytest.approx(empirical_mi(x, y), abs=1e-12)


# -------------------------------------------------------------------------------------------------- §7.7 bounds
@pytest.mark.parametrize("eps", [0.05, 0.3, 1.5])
def test_bounds_by_bucket_entropies(eps):
    rng = np.random.default_rng(11)
    x = rng.standard_normal((3_000, 2))
    y = x[:, :1] ** 2 + 0.3 * rng.standard_normal((3_000, 1))
    bx, by = rng.uniform(0, eps, 2), rng.uniform(0, eps, 1)
    est = edge_base(x, y, eps, eps, bx, by)
    hx = entropy_of_rows(np.floor((x + bx) / eps))
    hy = entropy_of_rows(np.floor((y + by) / eps))
    assert -1e-12 <= est <= min(hx, hy) + 1e-12


# ------------------------------------------------------------------------------------------ §7.8 conditional MI
def test_edge_cmi_linear_gaussian():
    rng = np.random.default_rng(12)
    n = 20_000
    est = []
    for a in (0.0, 0.5, 1.0):
        y, z, e = rng.standard_normal((3, n))
        got = edge_cmi(a * y + z + e, y, z)
        assert abs(got - gaussian_cmi_linear(a)) <= 0.1, (a, got)
        est.append(got)
    assert est[0] < est[1] < est[2]


def test_cmi_vanishes_given_common_cause():
    """X = Z + σe, Y = Z + σe': I(X;Y) > 0 but I(X;Y|Z) = 0.

    With σ = 1 (I(X;Z) = 0.35 nats) the chain-rule EDGE CMI is within 0.05 of 0 (observed −0.026). With σ = 0.5
    (I(X;Z) = 0.80) the 3-D term I(X;[Y,Z]) is under-estimated and the difference goes negative (observed −0.10
    at N = 5,000, −0.08 at 20,000): only the contrast with I(X;Y) is asserted there.
    """
    rng = np.random.default_rng(13)
    n = 5_000
    for sigma in (1.0, 0.5):
        z = rng.standard_normal(n)
        x = z + sigma * rng.standard_normal(n)
        y = z + sigma * rng.standard_normal(n)
        truth_mi = gaussian_mi(1 / (1 + sigma**2))
        plain = edge_mi(x, y)
        assert abs(plain - truth_mi) < 0.06 and abs(ksg_mi(x, y) - truth_mi) < 0.05
        cond = edge_cmi(x, y, z)
        assert abs(ksg_cmi(x, y, z)) < 0.03
        if sigma == 1.0:
            assert abs(cond) < 0.05
        else:
            assert abs(cond) < 0.25 * plain


def test_ksg_cmi_linear_gaussian():
    rng = np.random.default_rng(14)
    y, z, e = rng.standard_normal((3, 4_000))
    assert ksg_cmi(y + z + e, y, z) == pytest.approx(gaussian_cmi_linear(1.0), abs=0.05)


# ------------------------------------------------------------------------------------ §7.9 ranking, conditioning
def test_cmi_ranking_with_shared_z_projection():
    rng = np.random.default_rng(15)
    n, k = 10_000, 16
    a = np.linspace(0, 1.5, k)
    parents = rng.standard_normal((n, k))
    x = parents @ a + rng.standard_normal(n)
    others = np.stack([np.delete(parents, p, axis=1) for p in range(k)])  # (16, N, 15)
    xs = np.broadcast_to(x, (k, n))
    for conditioning, z_dim in (("random", 1), ("regression", "auto")):
        est = edge_cmi_batched(xs, parents.T, others, conditioning=conditioning, z_dim=z_dim)
        rho = spearmanr(est.numpy(), gaussian_cmi_linear(a)).statistic
        assert rho >= 0.85, (conditioning, rho, est)


# -------------------------------------------------------------------------------------------- batched == looped
def test_batched_equals_looped():
    rng = np.random.default_rng(16)
    p, n = 5, 2_000
    xs = rng.standard_normal((p, n, 2))
    ys = xs[..., :1] * np.linspace(0, 1, p)[:, None, None] + rng.standard_normal((p, n, 1))
    batched = edge_mi_batched(torch.from_numpy(xs), torch.from_numpy(ys), seed=2)
    looped = [edge_mi(xs[i], ys[i], seed=2) for i in range(p)]
    np.testing.assert_allclose(batched.numpy(), looped, rtol=0, atol=1e-12)
    zs = rng.standard_normal((p, n, 4))
    cb = edge_cmi_batched(xs, ys, zs, seed=1)
    cl = [edge_cmi(xs[i], ys[i], zs[i], seed=1) for i in range(p)]
    np.testing.assert_allclose(cb.numpy(), cl, rtol=0, atol=1e-12)
    eb = edge_base_batched(xs, ys, 0.5, 0.4, 0.1, 0.2)
    np.testing.assert_allclose(eb.numpy(), [edge_base(xs[i], ys[i], 0.5, 0.4, 0.1, 0.2) for i in range(p)], atol=1e-12)


def test_chunked_ensemble_equals_unchunked(monkeypatch):
    x, y = gaussian_pair(0.5, 2_000, seed=17)
    full = edge_mi(x, y)
    monkeypatch.setattr(mi, "_CHUNK_ELEMENTS", 1)  # one ensemble member per pass
    assert edge_mi(x, y) == pytest.approx(full, abs=1e-12)


# ------------------------------------------------------------------------------------------- options & devices
def test_pstable_projection_high_dimensional():
    rng = np.random.default_rng(18)
    n = 4_000
    x = rng.standard_normal((n, 8))
    y_dep = x @ rng.standard_normal((8, 8)) * 0.5 + rng.standard_normal((n, 8))
    y_ind = rng.standard_normal((n, 8))
    dep, ind = edge_mi(x, y_dep), edge_mi(x, y_ind)  # d > 6: automatic p-stable hash
    assert np.isfinite(dep) and dep > ind + 0.1
    assert edge_mi(x[:, :2], y_dep[:, :2], hash_type="pstable", proj_dim=1) >= 0


def test_weights_aggregate_and_constraints():
    ts = np.linspace(1, 1.1, 10)
    w = ensemble_weights(ts, 2).numpy()
    assert w.sum() == pytest.approx(1.0)
    assert (w * ts).sum() == pytest.approx(0.0, abs=1e-8) and (w * ts**2).sum() == pytest.approx(0.0, abs=1e-8)
    x, y = gaussian_pair(0.7, 3_000, seed=19)
    assert np.isfinite(edge_mi(x, y, aggregate="weights"))
    with pytest.raises(ValueError):
        ensemble_weights(ts[:2], 2)
    with pytest.raises(ValueError):
        edge_mi(x, y, aggregate="nope")


def test_output_on_input_device_and_dtype():
    xs = torch.randn(3, 500, 1)
    out = edge_mi_batched(xs, xs.clone(), n_estimators=3)
    assert out.shape == (3,) and out.dtype == torch.float64 and out.device == xs.device


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_cuda_matches_cpu():
    x, y = gaussian_pair(0.5, 3_000, seed=20)
    xs, ys = torch.from_numpy(x)[None], torch.from_numpy(y)[None]
    gpu = edge_mi_batched(xs.cuda(), ys.cuda())
    assert gpu.is_cuda
    assert float(gpu) == pytest.approx(float(edge_mi_batched(xs, ys)), abs=1e-9)


# ------------------------------------------------------------------------------------------ MINT's MST estimator
def test_mst_range_and_dispatch():
    rng = np.random.default_rng(21)
    for _ in range(3):
        x, y, z = rng.standard_normal((3, 300, 2))
        assert 0.0 <= mst_cmi(x, y, z) <= 1.0
    x = rng.standard_normal((300, 1))
    assert 0.0 <= mst_cmi(x, x.copy(), None) <= 1.0  # duplicated coordinates (zero distances) are fine
    assert conditional_mi(x, x, None, method="mst") == mst_cmi(x, x, None)
    assert conditional_mi(x, x, method="ksg") == pytest.approx(ksg_mi(x, x + 0.0))
    with pytest.raises(ValueError):
        conditional_mi(x, x, method="nope")


def test_mst_conditional_independence_vs_dependence():
    """mint.md §7.2: Z ∈ R², n = 1,500, 10 seeds; CI mean < 0.15, strong mean > 0.4, gap > 0.3."""
    ci, strong = [], []
    for seed in range(10):
        rng = np.random.default_rng(100 + seed)
        n = 1_500
        z = rng.standard_normal((n, 2))
        ci.append(mst_cmi(z[:, 0] + rng.standard_normal(n), z[:, 1] + rng.standard_normal(n), z))
        y = rng.standard_normal(n)
        strong.append(mst_cmi(2 * y + z[:, 0] + 0.3 * rng.standard_normal(n), y, z))
    assert np.mean(ci) < 0.15 and np.mean(strong) > 0.4 and np.mean(strong) - np.mean(ci) > 0.3, (ci, strong)


def test_mst_cross_edges_bruteforce():
    """mint.md §7.3: cross-edge count from the MST edge list; 2m − 1 edges on 2m distinct points."""
    rng = np.random.default_rng(22)
    m = 150
    pooled = np.vstack([rng.standard_normal((m, 3)), rng.standard_normal((m, 3)) + 0.5])
    r, n_edges = mi._mst_cross_edges(pooled, m)
    assert n_edges == 2 * m - 1
    d = np.linalg.norm(pooled[:, None] - pooled[None], axis=-1)
    tree = minimum_spanning_tree(d).tocoo()
    brute = sum(1 for a, b in zip(tree.row, tree.col, strict=True) if (a < m) != (b < m))
    assert r == brute


# --------------------------------------------------------------------------------------------------- timing (print)
def test_timing_edge_vs_ksg_printed():
    """Prints EDGE vs KSG wall time at N = 20,000, d = 1+1 (spec §7.10 ratio not asserted: shared CPU)."""
    x, y = gaussian_pair(0.5, 20_000, seed=23)

    def best(fn, reps=3):
        fn()
        times = []
        for _ in range(reps):
            t0 = time.perf_counter()
            fn()
            times.append(time.perf_counter() - t0)
        return min(times)

    te, tk = best(lambda: edge_mi(x, y)), best(lambda: ksg_mi(x, y))
    print(f"\nN=20000 d=1+1: EDGE {te * 1e3:.1f} ms, KSG {tk * 1e3:.1f} ms, KSG/EDGE = {tk / te:.1f}x")
    assert te > 0 and tk > 0


# ------------------------------------------------------------------------------------------- layer-pair matrices
def test_edge_cmi_matrix_equals_per_cell_chain_rule_with_the_shared_projection():
    """``conditioning="random"``: each cell is edge_cmi_batched(A_c, A_p, z_p) with z_p = S·g − S_p·g_p (EDGE spec
    §3.4)."""
    rng = np.random.default_rng(0)
    parent = torch.as_tensor(rng.standard_normal((800, 6)))
    child = torch.as_tensor(parent.numpy() @ rng.standard_normal((6, 4)) + rng.standard_normal((800, 4)))
    cl, pl = torch.tensor([0, 0, 1, 1]), torch.tensor([0, 0, 1, 1, 2, 2])
    matrix = mi.edge_cmi_matrix(child, parent, cl, pl, seed=3, cells_per_call=2, conditioning="random")
    standard = mi._standardise(parent.unsqueeze(0))[0]
    g = torch.randn(6, 1, generator=torch.Generator().manual_seed(3 + 1_000_003), dtype=torch.float64)
    for c in range(2):
        for p in range(3):
            rest = pl != p
            z = standard[:, rest] @ g[rest]
            expected = edge_cmi_batched(child[:, cl == c][None], parent[:, pl == p][None], z[None], z_dim=None,
                                        seed=3)[0]
            assert float(matrix[c, p]) == pytest.approx(float(expected), abs=1e-12)
    single = mi.edge_cmi_matrix(child, parent, cl, torch.zeros(6, dtype=torch.int64))  # nothing to condition on
    for c in range(2):
        assert float(single[c, 0]) == pytest.approx(edge_mi(child[:, cl == c], parent), abs=1e-12)


def test_mst_cmi_matrix_equals_per_cell_estimates():
    rng = np.random.default_rng(1)
    parent = rng.standard_normal((90, 4))
    child = parent[:, :2] + 0.1 * rng.standard_normal((90, 2))
    matrix = mi.mst_cmi_matrix(child, parent, [0, 1], [0, 0, 1, 1], seed=2)
    for c in range(2):
        for p in range(2):
            keep = np.array([0, 0, 1, 1]) == p
            expected = mst_cmi(child[:, [c]], parent[:, keep], parent[:, ~keep], shuffle=True, seed=2)
            assert float(matrix[c, p]) == expected
    assert float(matrix.min()) >= 0 and float(matrix.max()) <= 1


# ---------------------------------------------------------------------------------- runtime (§7.10, slow: CPU)
@pytest.mark.slow
def test_runtime_grows_about_linearly():
    x, y = gaussian_pair(0.5, 200_000, seed=5)

    def best(n: int) -> float:
        edge_mi(x[:n], y[:n])
        times = []
        for _ in range(3):
            t0 = time.perf_counter()
            edge_mi(x[:n], y[:n])
            times.append(time.perf_counter() - t0)
        return min(times)

    assert best(200_000) / best(20_000) < 15


@pytest.mark.slow
def test_edge_faster_than_ksg_at_low_and_moderate_dimension():
    """§7.10: ≥ 5× at d = 1+1 and ≥ 15× at d = 4+4, N = 20,000 (best of 3; needs an otherwise idle CPU)."""
    def best(fn) -> float:
        fn()
        times = []
        for _ in range(3):
            t0 = time.perf_counter()
            fn()
            times.append(time.perf_counter() - t0)
        return min(times)

    x, y = gaussian_pair(0.5, 20_000, seed=6)
    assert best(lambda: ksg_mi(x, y)) >= 5 * best(lambda: edge_mi(x, y))
    rng = np.random.default_rng(7)
    x4 = rng.standard_normal((20_000, 4))
    y4 = 0.5 * x4 + rng.standard_normal((20_000, 4))
    assert best(lambda: ksg_mi(x4, y4)) >= 15 * best(lambda: edge_mi(x4, y4))


def test_edge_cmi_matrix_with_wide_groups_matches_per_cell_estimates():
    """8-unit groups (p-stable projected, huge bucket ranges: dense per-group ranks) agree with the batched path."""
    rng = np.random.default_rng(2)
    parent = torch.as_tensor(rng.standard_normal((600, 16)))
    child = torch.as_tensor(parent.numpy()[:, ::-1] + rng.standard_normal((600, 16)))
    labels = torch.arange(2).repeat_interleave(8)
    matrix = mi.edge_cmi_matrix(child, parent, labels, labels, c=0.5, conditioning="random")
    standard = mi._standardise(parent.unsqueeze(0))[0]
    g = torch.randn(16, 1, generator=torch.Generator().manual_seed(1_000_003), dtype=torch.float64)
    for c in range(2):
        for p in range(2):
            z = standard[:, labels != p] @ g[labels != p]
            expected = edge_cmi_batched(child[:, labels == c][None], parent[:, labels == p][None], z[None],
                                        z_dim=None, c=0.5)[0]
            assert float(matrix[c, p]) == pytest.approx(float(expected), abs=1e-12)
