"""Mutual-information estimators that SNACS and MINT build on (pure functions).

Estimators
----------
* :func:`edge_mi` / :func:`edge_mi_batched` — EDGE, the hash-based dependence-graph estimator of Noshad, Zeng &
  Hero, "Scalable Mutual Information Estimation using Dependence Graphs" (arXiv 1801.09125, ICASSP 2019), following
  docs/methods/edge-mi.md (EDGE spec) §2–§3: randomly shifted floor hash ``H1`` (optionally after a
  Gaussian "p-stable" projection), hashed plug-in base estimate (paper eq. 9 with g(u) = u log u), ensemble over
  ``ε(t) = ε0·t`` aggregated by the median (reference code default). Torch, vectorised over many variable pairs,
  device-agnostic (the inputs' device is used throughout).
* :func:`edge_cmi` / :func:`edge_cmi_batched` — conditional MI by the chain rule ``I(X;Y|Z) = I(X;[Y,Z]) − I(X;Z)``,
  Z entering both terms as one shared variable: by default the ridge predictions of X and Y from Z
  (:func:`regression_conditioning`, lossless for Gaussians), optionally after a rank (Gaussian-copula) transform
  (:func:`normal_scores`) (docs/methods/edge-mi.md §3.4; *reconstructed: not confirmed from the paper* — EDGE defines
  only MI).
* :func:`ksg_mi` / :func:`ksg_cmi` — Kraskov–Stögbauer–Grassberger estimator, algorithm 1 (Phys. Rev. E 69, 066138,
  2004, eq. 8) and its conditional form by Frenzel & Pompe (PRL 99, 204101, 2007), max-norm, scipy ``cKDTree``.
  Test oracle and benchmark peer.
* :func:`mst_cmi` — MINT's conditional geometric MI estimator (Ganesh, Corso & Yasaei Sekeh, "MINT", arXiv
  2003.08472, ICPR 2020), as in docs/methods/mint.md §2: nearest-neighbour bootstrap surrogate of
  p(x,z)p(y|z), pooled Euclidean MST, Friedman–Rafsky cross-edge count R, ``Î = 1 − R/m`` clipped to [0, 1].
  Cross edges are counted from the true MST edge list (docs/methods/mint.md §8 notes the reference's edge loop differs).
* :func:`edge_cmi_matrix` / :func:`mst_cmi_matrix` — the ``G_child × G_parent`` matrix ``ρ_{c,p} = I(A_c; A_p |
  A_{−p})`` of a layer pair (docs/methods/mint.md §2, docs/methods/snacs.md §2), every cell at once.
* :func:`conditional_mi` — dispatch by option name: ``"edge"`` (fast), ``"mst"`` (MINT reference), ``"ksg"``.
* :func:`gaussian_mi`, :func:`gaussian_cmi_linear`, :func:`gaussian_cmi` — closed forms used by the tests.

Units: nats unless ``base=2`` is given (the EDGE reference code returns bits; docs/methods/edge-mi.md §4, §8).

Choices marked *reconstructed* in docs/methods/edge-mi.md are options here, not the paper's: the ε rule ``ε0 =
c·N^{-1/(2d)}`` with ``c = 3`` in standard-deviation units (docs/methods/edge-mi.md §3.2 step 3), uniform seeded
offsets, the chain-rule CMI and its conditioning variable.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Literal

import numpy as np
import torch
from scipy.sparse.csgraph import minimum_spanning_tree
from scipy.spatial import cKDTree
from scipy.spatial.distance import pdist, squareform
from scipy.special import digamma

__all__ = [
    "ESTIMATORS",
    "conditional_mi",
    "edge_base",
    "edge_base_batched",
    "edge_cmi",
    "edge_cmi_batched",
    "edge_cmi_matrix",
    "edge_mi",
    "edge_mi_batched",
    "ensemble_weights",
    "gaussian_cmi",
    "gaussian_cmi_linear",
    "gaussian_mi",
    "ksg_cmi",
    "ksg_mi",
    "mst_cmi",
    "mst_cmi_matrix",
    "normal_scores",
    "regression_conditioning",
]

Tensorish = torch.Tensor | np.ndarray
HashType = Literal["auto", "floor", "pstable"]
Aggregate = Literal["median", "mean", "weights"]

# Reference switch to the p-stable hash above this many dimensions per variable (docs/methods/edge-mi.md §3.2
# step 2, [code]).
PSTABLE_ABOVE_DIM = 6
# Hash at most this many coordinates (members × pairs × samples × dims) in one vectorised pass.
_CHUNK_ELEMENTS = 1 << 19  # ~4 MiB of int64 codes: stays cache-friendly (200k/20k time ratio 14 -> 10)
# Count with bincount (no sort) when the key space is at most this many times the number of keys.
_DENSE_FACTOR = 8
# Count per-row codes with a bincount while a row's code range is at most this many times N (zeroing a larger table
# costs more than sorting the keys).
_ROW_SPACE_FACTOR = 4


# ----------------------------------------------------------------------------------------------------------- helpers
def _as_batch(a: Tensorish, name: str, *, batched: bool) -> torch.Tensor:
    """float64 tensor shaped (P, N, d); 1-D per-pair inputs become (…, N, 1)."""
    if isinstance(a, np.ndarray) and not a.flags.writeable:
        a = a.copy()  # torch warns on read-only (e.g. broadcast) arrays
    t = torch.as_tensor(a)
    if not torch.is_floating_point(t) or t.dtype != torch.float64:
        t = t.to(torch.float64)
    if batched:
        if t.dim() == 2:
            t = t.unsqueeze(-1)
        if t.dim() != 3:
            raise ValueError(f"{name} must be (P, N, d) or (P, N); got shape {tuple(t.shape)}")
    else:
        if t.dim() == 1:
            t = t.unsqueeze(-1)
        if t.dim() != 2:
            raise ValueError(f"{name} must be (N, d) or (N,); got shape {tuple(t.shape)}")
        t = t.unsqueeze(0)
    return t


def _standardise(t: torch.Tensor) -> torch.Tensor:
    """Zero mean, unit (population) std per pair and coordinate along the sample axis; constants become 0."""
    centred = t - t.mean(dim=-2, keepdim=True)
    std = centred.pow(2).mean(dim=-2, keepdim=True).sqrt()
    return centred / torch.where(std > 0, std, torch.ones_like(std))


def _projection_dim(d: int, n: int) -> int:
    """Reference rule ``r = min(d, floor(log2(N/10)))`` (docs/methods/edge-mi.md §3.2 step 2, [code]), at least 1."""
    return max(1, min(d, int(math.floor(math.log2(max(n / 10.0, 1.0))))))


def _gaussian_matrix(d: int, r: int, gen: torch.Generator, device: torch.device) -> torch.Tensor:
    return torch.randn(d, r, generator=gen, dtype=torch.float64).to(device)


def _dense_ids(q: torch.Tensor) -> tuple[torch.Tensor, int]:
    """Exact, collision-free bucket ids for integer rows ``q`` (P, N, d), distinct across pairs.

    Returns flat ids (P·N,) in ``[0, n_ids)`` and ``n_ids``. Each coordinate is folded in mixed radix and the key
    re-compressed with ``unique`` so it never overflows int64 — the "exact map from integer tuples to ids" that the
    docs/methods/edge-mi.md §2 allows in place of the random hash H2.
    """
    p, n, d = q.shape
    ids = torch.arange(p, device=q.device).repeat_interleave(n)  # pair index keeps pairs apart
    n_ids = p
    for k in range(d):
        v = q[..., k].reshape(-1)
        v = v - v.min()
        radix = int(v.max()) + 1
        if radix > (2**62) // max(n_ids, 1):  # absurd ranges: compress the coordinate first
            v = torch.unique(v, return_inverse=True)[1]
            radix = int(v.max()) + 1
        key = ids * radix + v
        uniq, ids = torch.unique(key, return_inverse=True)
        n_ids = uniq.numel()
    return ids, n_ids


def _floor_hash(t: torch.Tensor, eps: torch.Tensor, offset: torch.Tensor) -> torch.Tensor:
    """H1 of the EDGE paper: ``floor((x + b)/ε)`` per coordinate, int64."""
    return torch.floor((t + offset) / eps).to(torch.int64)


# ------------------------------------------------------------------------------------------------ EDGE base estimate
def edge_base_batched(
    xs: Tensorish,
    ys: Tensorish,
    eps_x: float | Tensorish,
    eps_y: float | Tensorish,
    offset_x: float | Tensorish = 0.0,
    offset_y: float | Tensorish = 0.0,
    *,
    base: float | None = None,
    lo: float | None = None,
    U: float | None = None,
) -> torch.Tensor:
    """Hashed plug-in base estimate ``Î_ε`` for P pairs at once (EDGE paper eq. 9; docs/methods/edge-mi.md §3.1).

    ``Î_ε = Σ_(i,j) (N_ij/N) · clip(log(N_ij N / (N_i M_j)), lo, U)`` where i, j are the floor-hash buckets ``floor((x +
    b)/ε)`` of X and Y. No standardisation here: ε and offsets are in the inputs' units (scalars or per-coordinate
    vectors, shared by all pairs). ``base=2`` gives bits; ``lo``/``U`` clamp the log term (in the chosen base) as the
    reference code does (``lo=0.001, U=10`` in bits, docs/methods/edge-mi.md §4). Returns (P,) float64.
    """
    x = _as_batch(xs, "xs", batched=True)
    y = _as_batch(ys, "ys", batched=True)
    if x.shape[:2] != y.shape[:2]:
        raise ValueError(f"xs and ys must share (P, N); got {tuple(x.shape)} and {tuple(y.shape)}")
    dev = x.device
    kw = {"dtype": torch.float64, "device": dev}
    qx = _floor_hash(x, torch.as_tensor(eps_x, **kw), torch.as_tensor(offset_x, **kw))
    qy = _floor_hash(y, torch.as_tensor(eps_y, **kw), torch.as_tensor(offset_y, **kw))
    return _plugin_from_codes(qx, qy, base=base, lo=lo, U=U)


def _sorted_counts(key: torch.Tensor, space: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Sorted distinct keys in ``[0, space)`` and their counts: ``bincount`` when the key space is small (no sort),
    else ``unique``. Both give identical results."""
    if space <= _DENSE_FACTOR * key.numel() + (1 << 16):
        counts = torch.bincount(key, minlength=space)
        keys = torch.nonzero(counts).squeeze(1)
        return keys, counts[keys]
    return torch.unique(key, return_counts=True)


def _local_codes(q: torch.Tensor) -> tuple[torch.Tensor, int] | None:
    """Mixed-radix code (P·N,) in ``[0, K)`` of each row of ``q`` (P, N, d) relative to its pair's minimum, exact;
    None when K would exceed ``2**31`` (caller falls back to :func:`_dense_ids`)."""
    q = q - q.amin(dim=1, keepdim=True)
    ranges = (q.amax(dim=(0, 1)) + 1).tolist()
    k_total = math.prod(ranges)
    if k_total > 2**31:
        return None
    code = torch.zeros(q.shape[0] * q.shape[1], dtype=torch.int64, device=q.device)
    for k, radix in enumerate(ranges):
        code = code * radix + q[..., k].reshape(-1)
    return code, k_total


def _plugin_from_codes(
    qx: torch.Tensor, qy: torch.Tensor, *, base: float | None, lo: float | None, U: float | None
) -> torch.Tensor:
    """Σ over dependence-graph edges of (N_ij/N)·log(N_ij N/(N_i M_j)) per pair, from integer hash codes."""
    p, n = qx.shape[:2]
    dev = qx.device
    pair = torch.arange(p, device=dev).repeat_interleave(n)
    cx, cy = _local_codes(qx), _local_codes(qy)
    if cx is not None and cy is not None and p * cx[1] * cy[1] < 2**62:
        (ix, kx), (iy, ky) = cx, cy
        xkey, ykey = pair * kx + ix, pair * ky + iy  # marginal bucket keys, distinct across pairs
        edges, n_ij = _sorted_counts(pair * (kx * ky) + ix * ky + iy, p * kx * ky)
        edge_pair, rest = edges // (kx * ky), edges % (kx * ky)
        exkey, eykey = edge_pair * kx + rest // ky, edge_pair * ky + rest % ky
        xs_keys, xs_cnt = _sorted_counts(xkey, p * kx)
        ys_keys, ys_cnt = _sorted_counts(ykey, p * ky)
        count_i = xs_cnt[torch.searchsorted(xs_keys, exkey)]
        count_j = ys_cnt[torch.searchsorted(ys_keys, eykey)]
    else:  # huge integer ranges: exact dense ids via repeated unique
        i, n_i = _dense_ids(qx)
        j, n_j = _dense_ids(qy)
        edges, n_ij = torch.unique(i * n_j + j, return_counts=True)
        ei, ej = edges // n_j, edges % n_j
        pair_of_i = torch.empty(n_i, dtype=torch.int64, device=dev)
        pair_of_i[i] = pair
        edge_pair = pair_of_i[ei]
        count_i = torch.bincount(i, minlength=n_i)[ei]
        count_j = torch.bincount(j, minlength=n_j)[ej]
    n_ij = n_ij.to(torch.float64)
    ratio = n_ij * n / (count_i.to(torch.float64) * count_j.to(torch.float64))
    term = torch.log(ratio)
    if base is not None:
        term = term / math.log(base)
    if lo is not None or U is not None:
        term = term.clamp(min=lo, max=U)
    out = torch.zeros(p, dtype=torch.float64, device=dev)
    return out.index_add_(0, edge_pair, n_ij / n * term)


def edge_base(x: Tensorish, y: Tensorish, eps_x, eps_y, offset_x=0.0, offset_y=0.0, **kwargs) -> float:
    """Single-pair :func:`edge_base_batched` (docs/methods/edge-mi.md §3.1); x (N, dx), y (N, dy). Returns a float."""
    xs = _as_batch(x, "x", batched=False)
    ys = _as_batch(y, "y", batched=False)
    return float(edge_base_batched(xs, ys, eps_x, eps_y, offset_x, offset_y, **kwargs)[0])


# ---------------------------------------------------------------------------------------------------- EDGE ensemble
def ensemble_weights(ts: Tensorish, d: int) -> torch.Tensor:
    """Least-norm ensemble weights (EDGE paper eqs. 12–14, Thm 4.1): ``min ||w||`` s.t. ``Σ w = 1``,
    ``Σ w t^i = 0`` for i = 1..d; closed form ``w = Aᵀ(AAᵀ)⁻¹e₁``. Needs ``len(ts) > d``."""
    t = torch.as_tensor(ts, dtype=torch.float64)
    if t.numel() <= d:
        raise ValueError(f"ensemble weights need more than d={d} values of t, got {t.numel()}")
    a = torch.stack([t**k for k in range(d + 1)])  # row 0: ones
    e1 = torch.zeros(d + 1, dtype=torch.float64)
    e1[0] = 1.0
    return a.T @ torch.linalg.solve(a @ a.T, e1)


def _prepare(
    t: torch.Tensor, hash_type: HashType, gen: torch.Generator, proj_dim: int | None
) -> torch.Tensor:
    """Standardise, then (p-stable) project with a seeded Gaussian matrix shared by all pairs and re-standardise."""
    t = _standardise(t)
    d, n = t.shape[-1], t.shape[-2]
    if hash_type == "pstable" or (hash_type == "auto" and d > PSTABLE_ABOVE_DIM):
        r = proj_dim if proj_dim is not None else _projection_dim(d, n)
        t = _standardise(t @ _gaussian_matrix(d, r, gen, t.device))
    elif hash_type not in ("auto", "floor", "pstable"):
        raise ValueError(f"hash_type must be 'auto', 'floor' or 'pstable'; got {hash_type!r}")
    return t


@dataclass(frozen=True)
class EdgeSettings:
    """The EDGE estimator's settings (docs/methods/edge-mi.md §3.2 and §4); see :func:`edge_mi_batched`."""

    hash_type: HashType = "auto"
    proj_dim: int | None = None
    c: float = 3.0
    eps: float | None = None
    n_estimators: int = 10
    range_factor: float = 0.1
    aggregate: Aggregate = "median"
    seed: int = 0
    base: float | None = None
    lo: float | None = None
    U: float | None = None


@dataclass(frozen=True)
class _Ensemble:
    """The L bucket widths ``ε0·t`` and the random offsets ``b ~ U[0, ε)`` of one EDGE ensemble."""

    ts: torch.Tensor
    widths: torch.Tensor
    offsets_x: torch.Tensor
    offsets_y: torch.Tensor


def _hashing_setup(xs: torch.Tensor, ys: torch.Tensor, settings: EdgeSettings
                   ) -> tuple[torch.Tensor, torch.Tensor, _Ensemble]:
    """Standardised (and projected) variables and the ensemble, all drawn from one seeded generator in the
    reference's order: the projections of X, of Y, then the offsets."""
    gen = torch.Generator().manual_seed(settings.seed)
    x = _prepare(xs, settings.hash_type, gen, settings.proj_dim)
    y = _prepare(ys, settings.hash_type, gen, settings.proj_dim)
    return x, y, _ensemble(settings, xs.shape[1], x.shape[-1], y.shape[-1], gen, x.device)


def _ensemble(settings: EdgeSettings, n: int, dx: int, dy: int, gen: torch.Generator,
              device: torch.device) -> _Ensemble:
    """Widths ``ε0·t``, ``t ∈ linspace(1, 1 + range_factor, L)``, ``ε0 = c·N^{-1/(2d)}`` (or ``eps``), and
    offsets drawn from ``gen`` after the projections."""
    eps0 = float(settings.eps) if settings.eps is not None else settings.c * n ** (-1.0 / (2 * (dx + dy)))
    ts = torch.linspace(1.0, 1.0 + settings.range_factor, settings.n_estimators, dtype=torch.float64)
    widths = (eps0 * ts).to(device)
    u = torch.rand(settings.n_estimators, dx + dy, generator=gen, dtype=torch.float64).to(device)
    return _Ensemble(ts, widths, u[:, :dx] * widths[:, None], u[:, dx:] * widths[:, None])


def _aggregate(stack: torch.Tensor, ensemble: _Ensemble, settings: EdgeSettings, dims: int) -> torch.Tensor:
    """Combine the (L, P) base estimates: median (reference default), mean, or the paper's least-norm weights."""
    if settings.aggregate == "median":
        return torch.quantile(stack, 0.5, dim=0) if settings.n_estimators > 1 else stack[0]
    if settings.aggregate == "mean":
        return stack.mean(dim=0)
    if settings.aggregate == "weights":
        w = ensemble_weights(ensemble.ts, dims).to(stack.device)
        return (w[:, None] * stack).sum(dim=0)
    raise ValueError(f"aggregate must be 'median', 'mean' or 'weights'; got {settings.aggregate!r}")


def edge_mi_batched(xs: Tensorish, ys: Tensorish, **settings: Any) -> torch.Tensor:
    """EDGE estimate of I(X_p; Y_p) for every pair p; xs (P, N, dx), ys (P, N, dy) → (P,) float64 on xs' device.
    ``settings`` are the fields of :class:`EdgeSettings`.

    Algorithm (docs/methods/edge-mi.md §3.2): standardise each coordinate; hash with ``hash_type`` — ``"floor"``
    (the paper's H1, the only variant its theory covers), ``"pstable"`` (Gaussian projection to ``proj_dim``
    dimensions, default ``min(d, floor(log2(N/10)))`` [reference code]) or ``"auto"`` (floor unless a variable has
    > 6 dimensions, the reference's switch); base width ``ε0 = c·N^{-1/(2d)}`` in std units with d the (projected)
    joint dimension (*reconstructed*, c = 3 calibrated by probe) unless ``eps`` fixes it; ``n_estimators`` base
    estimates at ``ε0·t``, ``t ∈ linspace(1, 1 + range_factor, L)`` [reference code], each with fresh offsets
    ``b ~ U[0, ε)`` drawn from ``torch.Generator().manual_seed(seed)``; aggregate by ``"median"`` (reference
    default), ``"mean"`` or ``"weights"`` (paper's least-norm weights, eqs. 12–14). Offsets and projections are
    shared by all pairs, so a batched call equals the per-pair loop. Nats unless ``base`` (e.g. 2) is given;
    ``lo``/``U`` clamp the per-edge log term (reference-faithful mode).
    """
    settings_ = EdgeSettings(**settings)
    x = _as_batch(xs, "xs", batched=True)
    y = _as_batch(ys, "ys", batched=True).to(x.device)
    if x.shape[:2] != y.shape[:2]:
        raise ValueError(f"xs and ys must share (P, N); got {tuple(x.shape)} and {tuple(y.shape)}")
    n = x.shape[1]
    if n < 2:
        raise ValueError("need at least 2 samples")
    x, y, ensemble = _hashing_setup(x, y, settings_)
    dx, dy = x.shape[-1], y.shape[-1]
    e, bx, by = ensemble.widths, ensemble.offsets_x, ensemble.offsets_y
    p = x.shape[0]
    # all L ensemble members are hashed in one pass as L·P "pairs" (member-major), in chunks to bound memory
    per_chunk = max(1, _CHUNK_ELEMENTS // max(1, p * n * (dx + dy)))
    estimates = []
    for start in range(0, settings_.n_estimators, per_chunk):
        sl = slice(start, min(start + per_chunk, settings_.n_estimators))
        ec = e[sl][:, None, None, None]
        qx = torch.floor((x.unsqueeze(0) + bx[sl][:, None, None, :]) / ec).to(torch.int64)
        qy = torch.floor((y.unsqueeze(0) + by[sl][:, None, None, :]) / ec).to(torch.int64)
        est = _plugin_from_codes(qx.reshape(-1, n, dx), qy.reshape(-1, n, dy), base=settings_.base,
                                 lo=settings_.lo, U=settings_.U)
        estimates.append(est.reshape(-1, p))
    return _aggregate(torch.cat(estimates), ensemble, settings_, dx + dy)  # (L, P) → (P,)


def edge_mi(x: Tensorish, y: Tensorish, **kwargs) -> float:
    """EDGE estimate of I(X;Y) in nats (docs/methods/edge-mi.md §3.2) for x (N, dx), y (N, dy) (tensors or arrays; 1-D
    allowed).

    Keyword arguments as :func:`edge_mi_batched` (hash_type, proj_dim, c, eps, n_estimators, range_factor,
    aggregate, seed, base, lo, U).
    """
    return float(edge_mi_batched(_as_batch(x, "x", batched=False), _as_batch(y, "y", batched=False), **kwargs)[0])


# -------------------------------------------------------------------------------------------------- EDGE conditional
Conditioning = Literal["auto", "regression", "random", "none"]
Transform = Literal["none", "rank"]
REGRESSION_Z_DIM = 4
"""``z_dim="auto"`` under regression conditioning: the predictors of X and Y (d_X + d_Y dimensions) are kept whole up
to this many dimensions, else projected to it (docs/methods/edge-mi.md §3.4)."""


def normal_scores(t: torch.Tensor) -> torch.Tensor:
    """Rank (Gaussian-copula) transform along the sample axis (−2) of a (…, N, d) tensor: ``Φ⁻¹(r/(N+1))`` with r the
    mid-rank of each value among its coordinate's N samples (ties share their mean rank, so tied values, e.g. the
    zeros of a ReLU, stay tied). Invariant to any strictly increasing transform of a coordinate
    (docs/methods/edge-mi.md §3.4 ``transform="rank"``)."""
    t = torch.as_tensor(t, dtype=torch.float64)
    n, d = t.shape[-2], t.shape[-1]
    rows = t.transpose(-1, -2).reshape(-1, n)
    values, order = torch.sort(rows, dim=1, stable=True)
    starts = torch.ones_like(values, dtype=torch.bool)
    starts[:, 1:] = values[:, 1:] != values[:, :-1]
    run = torch.cumsum(starts.reshape(-1), 0) - 1  # a run of equal values never spans two rows
    position = torch.arange(1, n + 1, dtype=torch.float64, device=t.device).repeat(rows.shape[0])
    mean_rank = torch.zeros(int(run[-1]) + 1, dtype=torch.float64, device=t.device).index_add_(0, run, position)
    mean_rank = (mean_rank / torch.bincount(run).to(torch.float64))[run].view_as(values)
    ranks = torch.empty_like(mean_rank).scatter_(1, order, mean_rank)
    scores = math.sqrt(2.0) * torch.erfinv(2.0 * ranks / (n + 1) - 1.0)
    return scores.view(*t.shape[:-2], d, n).transpose(-1, -2).contiguous()


def ridge_strength(ridge: float | Literal["auto"], dz: int, n: int) -> float:
    """The ridge λ (in units of the standardised variance) of the regression conditioning: ``ridge``, or ``d_Z/N``
    for ``"auto"`` (mild when N ≫ d_Z, strong where d_Z approaches N)."""
    return dz / n if ridge == "auto" else float(ridge)


def regression_conditioning(xs: torch.Tensor, ys: torch.Tensor, zs: torch.Tensor, *,
                            ridge: float | Literal["auto"] = "auto") -> torch.Tensor:
    """(P, N, d_X + d_Y): the ridge predictions of standardised X and Y from standardised Z,
    ``Ẑ = Z (ZᵀZ/N + λI)⁻¹ Zᵀ[X, Y]/N`` per pair. For jointly Gaussian (X, Y, Z), ``I(X;Y|Ẑ) = I(X;Y|Z)`` (the residuals
    of X and Y are independent of Z), so conditioning on Ẑ loses nothing; docs/methods/edge-mi.md §3.4."""
    z = _standardise(zs)
    n, dz = z.shape[-2], z.shape[-1]
    eye = torch.eye(dz, dtype=z.dtype, device=z.device)
    gram = z.transpose(-1, -2) @ z / n + ridge_strength(ridge, dz, n) * eye
    targets = torch.cat([_standardise(xs), _standardise(ys)], dim=-1)
    return z @ torch.linalg.solve(gram, z.transpose(-1, -2) @ targets / n)


def resolve_conditioning(conditioning: Conditioning, dx: int, dy: int, dz: int) -> str:
    """``auto``: Z itself when it has at most d_X + d_Y dimensions (nothing to gain by projecting), else regression."""
    if conditioning not in ("auto", "regression", "random", "none"):
        raise ValueError(f"conditioning must be 'auto', 'regression', 'random' or 'none'; got {conditioning!r}")
    if conditioning == "auto":
        return "none" if dz <= dx + dy else "regression"
    return conditioning


def _reduce(z: torch.Tensor, r: int | None, seed: int) -> torch.Tensor:
    """Standardise Z and, when ``r`` is below its dimension, project it with the seeded Gaussian matrix shared by both
    chain-rule terms (and by every cell of a layer)."""
    z = _standardise(z)
    if r is not None and r < z.shape[-1]:
        gen = torch.Generator().manual_seed(seed + 1_000_003)
        z = _standardise(z @ _gaussian_matrix(z.shape[-1], int(r), gen, z.device))
    return z


def _target_dim(method: str, z_dim: int | Literal["auto"] | None, width: int) -> int | None:
    """The conditioning variable's dimension: ``random`` → ``z_dim`` (``auto``: 1), ``regression`` → ``z_dim``
    (``auto``: at most :data:`REGRESSION_Z_DIM`), ``none`` → all of Z."""
    if method == "none" or z_dim is None:
        return None
    if z_dim == "auto":
        return 1 if method == "random" else min(width, REGRESSION_Z_DIM)
    return int(z_dim)


def _count_and_rank(codes: torch.Tensor, space: int) -> tuple[torch.Tensor, torch.Tensor, int]:
    """For codes (B, N) in ``[0, space)``: how many samples of its row share each sample's code, each code's rank
    among its row's distinct codes (dense, in ``[0, width)``) and the width (the most distinct codes of a row). A
    bincount while the rows' range is small (:data:`_ROW_SPACE_FACTOR`), else a sort (``unique``)."""
    batch, n = codes.shape
    key = (codes + (torch.arange(batch, device=codes.device) * space)[:, None]).reshape(-1)
    if space <= _ROW_SPACE_FACTOR * n:
        table = torch.bincount(key, minlength=batch * space)
        ids = torch.cumsum(table > 0, 0) - 1  # dense id of every occupied code, rows in order
        first = torch.cat([torch.zeros(1, dtype=ids.dtype, device=ids.device), ids[space - 1 :: space][:-1] + 1])
        last = ids[space - 1 :: space]
        ranks = ids.index_select(0, key).view(batch, n) - first[:, None]  # index_select: 4x faster than ids[key]
        return table.index_select(0, key).view(batch, n), ranks, int((last - first).max()) + 1
    uniq, inverse, counts = torch.unique(key, return_inverse=True, return_counts=True)
    first = torch.searchsorted(uniq, torch.arange(batch, device=codes.device) * space)
    inverse = inverse.view(batch, n)
    widths = torch.diff(torch.cat([first, first.new_tensor([len(uniq)])]))
    return counts[inverse], inverse - first[:, None], int(widths.max())


def _plugin_cmi(cx: torch.Tensor, kx: int, cy: torch.Tensor, ky: int, cz: torch.Tensor, kz: int,
                settings: EdgeSettings) -> torch.Tensor:
    """(B,): ``(1/N) Σ_s log(N_xyz(s)·N_z(s) / (N_xz(s)·N_yz(s)))`` per row from the bucket codes of X, Y and Z
    (B, N) — the plug-in CMI of the hashed variables (EDGE eq. 9 applied to both chain-rule terms on one partition).
    Joint codes are re-ranked densely per row before they are combined further, so every count's key range stays
    within ``kx·N`` of a row."""
    n_z, z_rank, kz = _count_and_rank(cz, kz)
    n_xz, _, _ = _count_and_rank(cx * kz + z_rank, kx * kz)
    n_yz, yz_rank, kyz = _count_and_rank(cy * kz + z_rank, ky * kz)
    n_xyz, _, _ = _count_and_rank(cx * kyz + yz_rank, kx * kyz)
    logs = torch.log(torch.arange(cx.shape[1] + 1, dtype=torch.float64, device=cx.device))  # counts are ≤ N

    def log_of(counts: torch.Tensor) -> torch.Tensor:
        return logs.index_select(0, counts.reshape(-1)).view(counts.shape)

    term = log_of(n_xyz) + log_of(n_z) - log_of(n_xz) - log_of(n_yz)
    if settings.base is not None:
        term = term / math.log(settings.base)
    if settings.lo is not None or settings.U is not None:
        term = term.clamp(min=settings.lo, max=settings.U)
    return term.mean(dim=1)


def _cmi_setup(xs: torch.Tensor, ys: torch.Tensor, zs: torch.Tensor, settings: EdgeSettings
               ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, _Ensemble]:
    """Standardised (each projected if wide: X, Y, Z in that order from one seeded generator) variables and the
    ensemble over their joint dimension; offsets_x of the ensemble covers all coordinates [X, Y, Z]."""
    gen = torch.Generator().manual_seed(settings.seed)
    x = _prepare(xs, settings.hash_type, gen, settings.proj_dim)
    y = _prepare(ys, settings.hash_type, gen, settings.proj_dim)
    z = _prepare(zs, settings.hash_type, gen, settings.proj_dim)
    dims = x.shape[-1] + y.shape[-1] + z.shape[-1]
    return x, y, z, _ensemble(settings, xs.shape[-2], dims, 0, gen, x.device)


def _member_codes(t: torch.Tensor, widths: torch.Tensor, offsets: torch.Tensor) -> list[tuple[torch.Tensor, int]]:
    """Per ensemble member, the per-row codes (:func:`_group_codes`) of ``t`` (G, N, d) hashed at that member's
    width and offsets (L, d)."""
    return [_group_codes(torch.floor((t + offsets[m]) / widths[m]).to(torch.int64)) for m in range(len(widths))]


def _edge_cmi_plugin(xs: torch.Tensor, ys: torch.Tensor, zs: torch.Tensor, settings: EdgeSettings) -> torch.Tensor:
    """The ensemble of one-partition plug-in CMIs (:func:`_plugin_cmi`) for P pairs, aggregated over the members
    (docs/methods/edge-mi.md §3.4)."""
    x, y, z, ensemble = _cmi_setup(xs, ys, zs, settings)
    dx, dy = x.shape[-1], y.shape[-1]
    offsets = ensemble.offsets_x
    columns = ((x, offsets[:, :dx]), (y, offsets[:, dx : dx + dy]), (z, offsets[:, dx + dy :]))
    codes = [_member_codes(t, ensemble.widths, o) for t, o in columns]
    stack = torch.stack([_plugin_cmi(*codes[0][m], *codes[1][m], *codes[2][m], settings)
                         for m in range(settings.n_estimators)])
    return _aggregate(stack, ensemble, settings, offsets.shape[1])


def edge_cmi_batched(
    xs: Tensorish,
    ys: Tensorish,
    zs: Tensorish | None,
    *,
    conditioning: Conditioning = "auto",
    z_dim: int | Literal["auto"] | None = "auto",
    transform: Transform = "none",
    ridge: float | Literal["auto"] = "auto",
    seed: int = 0,
    **kwargs,
) -> torch.Tensor:
    """Chain-rule EDGE CMI ``I(X;Y|Z) = I(X;[Y,Z]) − I(X;Z)`` for every pair (docs/methods/edge-mi.md §3.4,
    *reconstructed*). xs (P, N, dx), ys (P, N, dy), zs (P, N, dz) or None (then plain :func:`edge_mi_batched`).

    Both terms are computed on **one partition** per ensemble member (:func:`_edge_cmi_plugin`): X, Y and Z are
    hashed once, with ε from the joint dimension and the same offsets in both terms, so each base estimate is the
    plug-in CMI ``(1/N) Σ_s log(N_xyz·N_z / (N_xz·N_yz))`` of the hashed variables, never negative. (Two separate EDGE
    estimates at their own ε had a negative offset wherever I(X;Z) is large — as for a layer's child, which the other
    parents nearly determine.)

    ``transform="rank"`` first replaces every coordinate by its normal scores (:func:`normal_scores`), which makes the
    estimate invariant to monotone transforms of each variable. The conditioning set Z enters both terms as one
    shared variable:

    - ``"regression"``: the ridge predictions of X and Y from Z (:func:`regression_conditioning`, d_X + d_Y
      dimensions, exact for Gaussians), projected to ``z_dim`` dimensions (``auto``: at most 4) when wider;
    - ``"random"``: Z projected with a seeded Gaussian matrix to ``z_dim`` (``auto``: 1) dimensions — the earlier
      default, which loses whatever of Z the random direction misses;
    - ``"none"``: Z as it is;
    - ``"auto"`` (default): ``none`` when d_Z ≤ d_X + d_Y, else ``regression``.

    Remaining keywords are :class:`EdgeSettings` fields (``hash_type``, ``c``, ``eps``, ``n_estimators``, …).
    """
    x = _as_batch(xs, "xs", batched=True)
    y = _as_batch(ys, "ys", batched=True).to(x.device)
    if transform not in ("none", "rank"):
        raise ValueError(f"transform must be 'none' or 'rank'; got {transform!r}")
    if transform == "rank":
        x, y = normal_scores(x), normal_scores(y)
    if zs is None or torch.as_tensor(zs).numel() == 0:
        return edge_mi_batched(x, y, seed=seed, **kwargs)
    z = _as_batch(zs, "zs", batched=True).to(x.device)
    z = normal_scores(z) if transform == "rank" else z
    method = resolve_conditioning(conditioning, x.shape[-1], y.shape[-1], z.shape[-1])
    if method == "regression":
        z = regression_conditioning(x, y, z, ridge=ridge)
    z = _reduce(z, _target_dim(method, z_dim, z.shape[-1]), seed)
    return _edge_cmi_plugin(x, y, z, EdgeSettings(seed=seed, **kwargs))


def edge_cmi(x: Tensorish, y: Tensorish, z: Tensorish | None, **kwargs) -> float:
    """Single-triple :func:`edge_cmi_batched` (docs/methods/edge-mi.md §3.4); x (N, dx), y (N, dy), z (N, dz) or None.
    """
    zb = None if z is None else _as_batch(z, "z", batched=False)
    return float(edge_cmi_batched(_as_batch(x, "x", batched=False), _as_batch(y, "y", batched=False), zb, **kwargs)[0])


# ------------------------------------------------------------------------------------------------------------- KSG
def _np2d(a: Tensorish) -> np.ndarray:
    arr = a.detach().cpu().numpy() if isinstance(a, torch.Tensor) else np.asarray(a)
    arr = arr.astype(np.float64, copy=False)
    return arr.reshape(-1, 1) if arr.ndim == 1 else arr


def _count_within(points: np.ndarray, radii: np.ndarray) -> np.ndarray:
    """Number of *other* points strictly closer than ``radii`` (max-norm), per point."""
    tree = cKDTree(points)
    r = np.nextafter(radii, 0)  # strict inequality; query_ball_point counts distance <= r
    return tree.query_ball_point(points, r, p=np.inf, return_length=True) - 1


def ksg_mi(x: Tensorish, y: Tensorish, k: int = 3) -> float:
    """Kraskov–Stögbauer–Grassberger estimator, algorithm 1 (KSG 2004, eq. 8), max-norm, in nats.

    ``Î = ψ(k) + ψ(N) − ⟨ψ(n_x + 1) + ψ(n_y + 1)⟩`` with ε_i the distance to the k-th joint neighbour and n_x, n_y
    the marginal counts strictly within ε_i. Inputs with tied samples should be jittered by the caller.
    """
    xa, ya = _np2d(x), _np2d(y)
    n = xa.shape[0]
    joint = np.hstack([xa, ya])
    dist, _ = cKDTree(joint).query(joint, k=k + 1, p=np.inf)
    eps = dist[:, -1]
    nx = _count_within(xa, eps)
    ny = _count_within(ya, eps)
    return float(digamma(k) + digamma(n) - np.mean(digamma(nx + 1) + digamma(ny + 1)))


def ksg_cmi(x: Tensorish, y: Tensorish, z: Tensorish, k: int = 3) -> float:
    """Frenzel–Pompe conditional KSG (PRL 2007): ``ψ(k) − ⟨ψ(n_xz+1) + ψ(n_yz+1) − ψ(n_z+1)⟩``, max-norm, nats."""
    xa, ya, za = _np2d(x), _np2d(y), _np2d(z)
    joint = np.hstack([xa, ya, za])
    dist, _ = cKDTree(joint).query(joint, k=k + 1, p=np.inf)
    eps = dist[:, -1]
    nxz = _count_within(np.hstack([xa, za]), eps)
    nyz = _count_within(np.hstack([ya, za]), eps)
    nz = _count_within(za, eps)
    return float(digamma(k) - np.mean(digamma(nxz + 1) + digamma(nyz + 1) - digamma(nz + 1)))


# ------------------------------------------------------------------------------------------------------------- MST
def _mst_cross_edges(pooled: np.ndarray, m: int) -> tuple[int, int]:
    """(cross-edge count R, number of MST edges) of the Euclidean MST of ``pooled`` (first m rows: sample A)."""
    dist = squareform(pdist(pooled))
    # csgraph treats 0 as "no edge": make coincident points adjacent at a negligible positive distance
    off = ~np.eye(len(pooled), dtype=bool)
    dist[off & (dist == 0)] = np.finfo(np.float64).tiny
    tree = minimum_spanning_tree(dist)
    a, b = tree.nonzero()
    return int(np.count_nonzero((a < m) != (b < m))), int(a.size)


def mst_cmi(
    x: Tensorish,
    y: Tensorish,
    z: Tensorish | None = None,
    *,
    shuffle: bool = False,
    seed: int = 0,
) -> float:
    """MINT's conditional geometric MI estimate of I(X;Y|Z) ∈ [0, 1] (docs/methods/mint.md §2; MINT, arXiv 2003.08472).

    1. Split the n samples into thirds S1, S2, S3 (in order; ``shuffle=True`` permutes them first with ``seed``).
    2. Surrogate of p(x,z)p(y|z): each S1 sample keeps its (x, z) and takes the y of the S2 sample whose z is its
       Euclidean nearest neighbour (``cKDTree``); with no Z, S2's y in order (a sample of p(x)p(y)).
    3. Pool S3 (m true-joint points) with the m surrogate points in R^{dx+dy+dz}; Euclidean MST
       (``scipy.sparse.csgraph.minimum_spanning_tree`` on the dense distance matrix).
    4. R = MST edges joining a true-joint point to a surrogate point (from the true edge list).
    5. Friedman–Rafsky / Henze–Penrose estimate with equal sizes: ``Î = 1 − min(R, m)/m``.
    ≈ 0 under conditional independence, → 1 with strong dependence. O(n²) memory and time.
    """
    xa, ya = _np2d(x), _np2d(y)
    n = xa.shape[0]
    za = np.zeros((n, 0)) if z is None else _np2d(z)
    if ya.shape[0] != n or za.shape[0] != n:
        raise ValueError("x, y and z must have the same number of samples")
    if shuffle:
        perm = np.random.default_rng(seed).permutation(n)
        xa, ya, za = xa[perm], ya[perm], za[perm]
    m = n // 3
    if m < 2:
        raise ValueError(f"mst_cmi needs at least 6 samples, got {n}")
    s1, s2, s3 = slice(0, m), slice(m, 2 * m), slice(2 * m, 3 * m)
    if za.shape[1] == 0:
        nn = np.arange(m)
    else:
        _, nn = cKDTree(za[s2]).query(za[s1], k=1)
    surrogate = np.hstack([xa[s1], ya[s2][nn], za[s1]])
    true_joint = np.hstack([xa[s3], ya[s3], za[s3]])
    r, _ = _mst_cross_edges(np.vstack([true_joint, surrogate]), m)
    return float(1.0 - min(r, m) / m)


# ------------------------------------------------------------------------------------------------ layer-pair matrices
def _check_labels(labels: torch.Tensor, width: int, what: str) -> tuple[torch.Tensor, int]:
    labels = torch.as_tensor(labels, dtype=torch.int64).reshape(-1)
    if labels.numel() != width:
        raise ValueError(f"{what} group labels have {labels.numel()} entries for {width} units")
    groups = int(labels.max()) + 1 if labels.numel() else 0
    return labels, groups


def _group_codes(q: torch.Tensor) -> tuple[torch.Tensor, int]:
    """Per-group exact codes of integer rows ``q`` (G, N, d) → (G, N) in ``[0, K)``: mixed radix relative to each
    group's minimum when that keeps K ≤ 4N, else dense per-group ranks in ``[0, N)`` (so that per-cell joint keys
    stay below N² and bincounts over G·K stay small)."""
    local = _local_codes(q)
    if local is not None and local[1] <= 4 * q.shape[1]:
        return local[0].view(q.shape[0], q.shape[1]), local[1]
    ids, _ = _dense_ids(q)  # ids of group g are contiguous (the group index is the leading digit)
    ids = ids.view(q.shape[0], q.shape[1])
    return ids - ids.amin(dim=1, keepdim=True), q.shape[1]


def _per_cell_counts(codes: torch.Tensor, space: int) -> torch.Tensor:
    """(B, N): for every sample, how many samples of its own row share its code (codes in ``[0, space)``); a bincount
    when the B·space key range is small, else ``unique``."""
    batch, n = codes.shape
    key = codes + (torch.arange(batch, device=codes.device) * space)[:, None]
    if batch * space <= _DENSE_FACTOR * batch * n + (1 << 16):
        return torch.bincount(key.reshape(-1), minlength=batch * space)[key]
    _, inverse, counts = torch.unique(key.reshape(-1), return_inverse=True, return_counts=True)
    return counts[inverse].view(batch, n)


def _plugin_terms(n_ij: torch.Tensor, n_i: torch.Tensor, m_j: torch.Tensor, settings: EdgeSettings) -> torch.Tensor:
    """Per-sample form of EDGE eq. 9, averaged over the samples: ``(1/N) Σ_s log(N_ij(s)·N / (N_i(s)·M_j(s)))``."""
    n = n_ij.shape[1]
    term = torch.log(n_ij.to(torch.float64) * n / (n_i.to(torch.float64) * m_j.to(torch.float64)))
    if settings.base is not None:
        term = term / math.log(settings.base)
    if settings.lo is not None or settings.U is not None:
        term = term.clamp(min=settings.lo, max=settings.U)
    return term.mean(dim=1)


def _own_counts(codes: torch.Tensor, space: int) -> torch.Tensor:
    """(G, N): samples of the same group sharing each sample's code."""
    offsets = (torch.arange(codes.shape[0], device=codes.device) * space)[:, None]
    counts = torch.bincount((codes + offsets).reshape(-1), minlength=codes.shape[0] * space).view(-1, space)
    return torch.gather(counts, 1, codes)


def _edge_mi_grid(xs: torch.Tensor, ys: torch.Tensor, cells_x: torch.Tensor, cells_y: torch.Tensor,
                  settings: EdgeSettings, cells_per_call: int = 256) -> torch.Tensor:
    """``edge_mi_batched(xs[cells_x], ys[cells_y])`` without repeating the groups: xs (Gx, N, dx), ys (Gy, N, dy)
    are standardised, projected and hashed once per ensemble member (same generator draws as the batched call,
    which standardises per pair and shares projections and offsets across pairs), and each cell's plug-in estimate
    is the per-sample form ``(1/N) Σ_s log(N_ij(s)·N / (N_i(s)·M_j(s)))`` of EDGE eq. 9 (equal to the sum over
    dependence-graph edges up to float rounding)."""
    x, y, ensemble = _hashing_setup(xs, ys, settings)
    e, bx, by = ensemble.widths, ensemble.offsets_x, ensemble.offsets_y
    cells = len(cells_x)
    stack = torch.empty(settings.n_estimators, cells, dtype=torch.float64, device=x.device)
    for member in range(settings.n_estimators):
        cx, kx = _group_codes(torch.floor((x + bx[member]) / e[member]).to(torch.int64))
        cy, ky = _group_codes(torch.floor((y + by[member]) / e[member]).to(torch.int64))
        n_i, m_j = _own_counts(cx, kx), _own_counts(cy, ky)  # (G, N): samples sharing each sample's bucket
        for start in range(0, cells, cells_per_call):
            gx, gy = cells_x[start : start + cells_per_call], cells_y[start : start + cells_per_call]
            n_ij = _per_cell_counts(cx[gx] * ky + cy[gy], kx * ky)  # joint codes in [0, kx·ky), ≤ (4N)²
            stack[member, start : start + len(gx)] = _plugin_terms(n_ij, n_i[gx], m_j[gy], settings)
    return _aggregate(stack, ensemble, settings, x.shape[-1] + y.shape[-1])


@dataclass(frozen=True)
class _RegressionCells:
    """What the conditioning variable ``Ẑ_{c,p} = [X̂_{c|−p}, Ŷ_{p|−p}]`` of every cell is built from: one ridge
    regression on *all* parents and, per parent group p, the block-inverse update that drops p's columns.

    With ``G = SᵀS/N + λI``, ``M = G⁻¹``, ``β = M SᵀX/N`` and ``R_p = (S M)[:, p] M_pp⁻¹``: the prediction of a target T
    from the parents outside p is ``S β_T − R_p β_T[p]``; for the parent group itself it is ``S_p − R_p``. One
    C × C inverse serves every cell (docs/methods/edge-mi.md §3.4)."""

    xhat: torch.Tensor
    """(G_child, N, d_X): predictions of each child group from all parents."""
    correction: torch.Tensor
    """(G_parent, N, d_Y): ``R_p``."""
    coef: torch.Tensor
    """(G_parent, d_Y, G_child, d_X): the rows of p of β, per child group."""
    yhat: torch.Tensor
    """(G_parent, N, d_Y): ``Ŷ_{p|−p}``."""

    @classmethod
    def fit(cls, x: torch.Tensor, parent: torch.Tensor, cl: torch.Tensor, pl: torch.Tensor,
            ridge: float | Literal["auto"]) -> _RegressionCells:
        """``x`` (N, C_child) and ``parent`` (N, C_parent), standardised; equal-size groups by ``cl`` / ``pl``."""
        n, width = parent.shape
        gram = parent.T @ parent / n + ridge_strength(ridge, width, n) * torch.eye(width, dtype=parent.dtype,
                                                                                    device=parent.device)
        inverse = torch.linalg.inv(gram)
        beta = inverse @ (parent.T @ x) / n  # (C_parent, C_child)
        child_cols = torch.stack([torch.nonzero(cl == c).squeeze(1) for c in range(int(cl.max()) + 1)])
        parent_cols = torch.stack([torch.nonzero(pl == p).squeeze(1) for p in range(int(pl.max()) + 1)])
        blocks = inverse[parent_cols[:, :, None], parent_cols[:, None, :]]  # (Gp, dY, dY): M_pp
        correction = torch.linalg.solve(blocks, (parent @ inverse)[:, parent_cols].permute(1, 2, 0)).transpose(1, 2)
        xhat = (parent @ beta)[:, child_cols].permute(1, 0, 2)
        coef = beta[parent_cols][:, :, child_cols]  # (Gp, dY, Gc, dX)
        return cls(xhat, correction, coef, parent[:, parent_cols].permute(1, 0, 2) - correction)

    def cells(self, gx: torch.Tensor, gy: torch.Tensor) -> torch.Tensor:
        """(B, N, d_X + d_Y): ``[X̂_{c|−p}, Ŷ_{p|−p}]`` of the cells (gx[b], gy[b])."""
        coef = self.coef[gy, :, gx, :]  # (B, dY, dX)
        xhat = self.xhat[gx] - torch.bmm(self.correction[gy], coef)
        return torch.cat([xhat, self.yhat[gy]], dim=-1)


def _conditional_cells(x_groups: torch.Tensor, y_groups: torch.Tensor, make_z: Callable, cells_x: torch.Tensor,
                       cells_y: torch.Tensor, settings: EdgeSettings, cells_per_call: int) -> torch.Tensor:
    """:func:`_edge_cmi_plugin` of every cell (X = ``x_groups[gx]``, Y = ``y_groups[gy]``, Z = ``make_z(gx, gy)``)
    without repeating the groups: X and Y are standardised, projected (when wide) and hashed once per group and
    ensemble member, the conditioning variable per cell, with the generator draws of the per-cell call (projections of
    X, Y, Z, then the offsets), so each cell equals :func:`edge_cmi_batched` on its own variables."""
    n = x_groups.shape[1]
    gen = torch.Generator().manual_seed(settings.seed)
    x = _prepare(x_groups, settings.hash_type, gen, settings.proj_dim)
    y = _prepare(y_groups, settings.hash_type, gen, settings.proj_dim)
    dz = make_z(cells_x[:1], cells_y[:1]).shape[-1]
    project = None
    if settings.hash_type == "pstable" or (settings.hash_type == "auto" and dz > PSTABLE_ABOVE_DIM):
        r = settings.proj_dim if settings.proj_dim is not None else _projection_dim(dz, n)
        project = _gaussian_matrix(dz, r, gen, x.device)
    dx, dy = x.shape[-1], y.shape[-1]
    dims = dx + dy + (dz if project is None else project.shape[1])
    ensemble = _ensemble(settings, n, dims, 0, gen, x.device)
    offsets, widths = ensemble.offsets_x, ensemble.widths
    x_codes = _member_codes(x, widths, offsets[:, :dx])
    y_codes = _member_codes(y, widths, offsets[:, dx : dx + dy])
    stack = torch.empty(settings.n_estimators, len(cells_x), dtype=torch.float64, device=x.device)
    for start in range(0, len(cells_x), cells_per_call):
        gx, gy = cells_x[start : start + cells_per_call], cells_y[start : start + cells_per_call]
        z = _standardise(make_z(gx, gy))
        z = z if project is None else _standardise(z @ project)
        for m in range(settings.n_estimators):
            cz, kz = _group_codes(torch.floor((z + offsets[m, dx + dy :]) / widths[m]).to(torch.int64))
            (cx, kx), (cy, ky) = x_codes[m], y_codes[m]
            stack[m, start : start + len(gx)] = _plugin_cmi(cx[gx], kx, cy[gy], ky, cz, kz, settings)
    return _aggregate(stack, ensemble, settings, dims)


def edge_cmi_matrix(
    child: Tensorish,
    parent: Tensorish,
    child_groups: Tensorish,
    parent_groups: Tensorish,
    *,
    seed: int = 0,
    cells_per_call: int = 256,
    conditioning: Conditioning = "auto",
    z_dim: int | Literal["auto"] | None = "auto",
    transform: Transform = "none",
    ridge: float | Literal["auto"] = "auto",
    **kwargs,
) -> torch.Tensor:
    """EDGE chain-rule CMI ``ρ_{c,p} = I(A_c; A_p | A_{−p})`` for every (child group c, parent group p).

    ``child`` (N, C_child) and ``parent`` (N, C_parent) are activations of the same N samples; ``child_groups`` /
    ``parent_groups`` give each unit's group index (0..G−1). Returns (G_child, G_parent) float64 on ``child``'s device.
    Each cell equals :func:`edge_cmi_batched` of (A_c, A_p, A_{−p}) with the same ``conditioning``, ``z_dim``,
    ``transform`` and ``ridge`` (docs/methods/edge-mi.md §3.4), up to float rounding, without materialising the
    conditioning sets:

    - ``regression`` (what ``auto`` gives whenever the other parents outnumber d_X + d_Y): ``Ẑ_{c,p}`` from one ridge
      regression on all parents and a block-inverse update per parent group (:class:`_RegressionCells`; ``ridge``
      ``auto`` = C_parent/N);
    - ``random``: ``z_p = S·g − S_p·g_p`` with one seeded Gaussian matrix g (C_parent × ``z_dim``, ``auto``: 1) over all
      parent units (the earlier default; it misses what g does not point at);
    - ``none``: all other parents, as they are (small layers only).

    Child and parent groups are hashed once per ensemble member, only the conditioning variable per cell
    (:func:`_conditional_cells`, ``cells_per_call`` cells at a time). With one parent group there is nothing to
    condition on and ρ is the plain EDGE MI. Keywords are :class:`EdgeSettings` fields.
    """
    x = _as_batch(child, "child", batched=False)[0]
    y = _as_batch(parent, "parent", batched=False)[0].to(x.device)
    if x.shape[0] != y.shape[0]:
        raise ValueError(f"child and parent need the same samples; got {x.shape[0]} and {y.shape[0]} rows")
    if transform not in ("none", "rank"):
        raise ValueError(f"transform must be 'none' or 'rank'; got {transform!r}")
    if transform == "rank":
        x, y = normal_scores(x), normal_scores(y)
    cl, gc = _check_labels(child_groups, x.shape[1], "child")
    pl, gp = _check_labels(parent_groups, y.shape[1], "parent")
    cl, pl = cl.to(x.device), pl.to(x.device)
    xs, ys = [x[:, cl == c] for c in range(gc)], [y[:, pl == p] for p in range(gp)]
    if len({t.shape[1] for t in xs}) != 1 or len({t.shape[1] for t in ys}) != 1:
        raise ValueError("every group of a layer must have the same number of units")
    x_groups, y_groups = torch.stack(xs), torch.stack(ys)
    cells_x = torch.arange(gc, device=x.device).repeat_interleave(gp)
    cells_y = torch.arange(gp, device=x.device).repeat(gc)
    settings = EdgeSettings(seed=seed, **kwargs)
    if gp == 1:
        return _edge_mi_grid(x_groups, y_groups, cells_x, cells_y, settings, cells_per_call).reshape(gc, gp)
    dx, dy = x_groups.shape[-1], y_groups.shape[-1]
    method = resolve_conditioning(conditioning, dx, dy, y.shape[1] - dy)
    standard = _standardise(y.unsqueeze(0))[0]
    if method == "regression":
        fitted = _RegressionCells.fit(_standardise(x.unsqueeze(0))[0], standard, cl, pl, ridge)
        r = _target_dim(method, z_dim, dx + dy)

        def make_z(gx: torch.Tensor, gy: torch.Tensor) -> torch.Tensor:
            return _reduce(fitted.cells(gx, gy), r, seed)
    else:
        if method == "random":
            gen = torch.Generator().manual_seed(seed + 1_000_003)
            g = _gaussian_matrix(y.shape[1], _target_dim(method, z_dim, y.shape[1]) or 1, gen, y.device)
            total = standard @ g
            z_groups = _standardise(torch.stack([total - standard[:, pl == p] @ g[pl == p] for p in range(gp)]))
        else:
            z_groups = _standardise(torch.stack([standard[:, pl != p] for p in range(gp)]))

        def make_z(gx: torch.Tensor, gy: torch.Tensor) -> torch.Tensor:
            return z_groups[gy]
    return _conditional_cells(x_groups, y_groups, make_z, cells_x, cells_y, settings, cells_per_call).reshape(gc, gp)


def mst_cmi_matrix(
    child: Tensorish,
    parent: Tensorish,
    child_groups: Tensorish,
    parent_groups: Tensorish,
    *,
    seed: int = 0,
    shuffle: bool = True,
) -> torch.Tensor:
    """MINT's reference scores: :func:`mst_cmi` of every (child group, parent group) cell (docs/methods/mint.md §2, §3
    step 5), conditioning on all other parent units. O(N²) per cell; ``shuffle`` permutes the samples (seeded) before
    the thirds split, so class-sorted scoring sets are mixed. Returns (G_child, G_parent) float64 on the CPU."""
    x = _np2d(child)
    y = _np2d(parent)
    cl = np.asarray(_check_labels(torch.as_tensor(np.asarray(child_groups)), x.shape[1], "child")[0])
    pl = np.asarray(_check_labels(torch.as_tensor(np.asarray(parent_groups)), y.shape[1], "parent")[0])
    gc, gp = int(cl.max()) + 1, int(pl.max()) + 1
    out = np.zeros((gc, gp))
    for p in range(gp):
        z = y[:, pl != p] if gp > 1 else None
        for c in range(gc):
            out[c, p] = mst_cmi(x[:, cl == c], y[:, pl == p], z, shuffle=shuffle, seed=seed)
    return torch.from_numpy(out)


# ------------------------------------------------------------------------------------------------------- dispatcher
def _ksg_cond(x, y, z, **kwargs) -> float:
    if z is None or _np2d(z).shape[1] == 0:
        return ksg_mi(x, y, **kwargs)
    return ksg_cmi(x, y, z, **kwargs)


ESTIMATORS: dict[str, Callable[..., float]] = {"edge": edge_cmi, "mst": mst_cmi, "ksg": _ksg_cond}


def conditional_mi(x: Tensorish, y: Tensorish, z: Tensorish | None = None, *, method: str = "edge", **kwargs) -> float:
    """I(X;Y|Z) by option name: ``"edge"`` (EDGE chain rule, fast), ``"mst"`` (MINT's estimator), ``"ksg"``."""
    try:
        fn = ESTIMATORS[method]
    except KeyError:
        raise ValueError(f"unknown estimator {method!r}; choose from {sorted(ESTIMATORS)}") from None
    return fn(x, y, z, **kwargs)


# ------------------------------------------------------------------------------------------------------ closed forms
def gaussian_mi(rho: float | np.ndarray) -> float | np.ndarray:
    """I(X;Y) of a bivariate Gaussian with correlation ρ: ``−½ log(1 − ρ²)`` nats."""
    return -0.5 * np.log1p(-np.square(rho))


def gaussian_cmi_linear(a: float | np.ndarray, noise_var: float = 1.0) -> float | np.ndarray:
    """I(X;Y|Z) for X = aY + Z + e, Y, Z ~ N(0,1), e ~ N(0, noise_var): ``½ log(1 + a²/noise_var)`` nats
    (docs/methods/edge-mi.md §7 item 8)."""
    return 0.5 * np.log1p(np.square(a) / noise_var)


def gaussian_cmi(cov: np.ndarray, x: list[int], y: list[int], z: list[int]) -> float:
    """I(X;Y|Z) of jointly Gaussian variables with covariance ``cov`` (indices of X, Y and Z into it), nats:
    ``½ (log|Σ_XZ| + log|Σ_YZ| − log|Σ_Z| − log|Σ_XYZ|)`` (an empty Z gives the MI)."""
    def logdet(index: list[int]) -> float:
        return float(np.linalg.slogdet(np.asarray(cov)[np.ix_(index, index)])[1]) if index else 0.0

    return 0.5 * (logdet(x + z) + logdet(y + z) - logdet(z) - logdet(x + y + z))
