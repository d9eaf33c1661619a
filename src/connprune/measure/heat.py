"""N2NSkip's heat-diffusion connectivity measure (Subramaniam & Sharma, Section 3.2), for any (masked) network.

The network becomes an undirected graph of units; heat starts on the input units and diffuses along the weights:

- Eq. (3) ``L = D − W`` (unnormalised Laplacian of the symmetric adjacency ``W``);
- Eq. (4)-(5) heat signature ``S(t) = exp(−tL) A``, ``A`` = indicator of the network's input units (heat sources);
- Eq. (6) ``F(t) = ||S_ref(t) − S_prune(t)||_2`` on the same node set;
- Eq. (7) scree ``α(K, t) = Σ_{k=2}^{K+1} e^{−tλ_k} / Σ_{k=2}^{n} e^{−tλ_k}`` (λ ascending).

Node-set rule (the code release's "inputs of every weight layer plus the classes", n = Σ in-units + classes):

- every conv/linear layer (forward order, :func:`connprune.graph.build`) owns one node per *input unit*: an input
  channel for a conv, an input feature for a linear layer. Where a linear layer reads a conv's output through a
  flatten (``LayerPair.features_per_channel`` = H·W > 1) the H·W features of one channel are merged into one node, so
  fc1 of LeNet-5 has 16 input nodes, not 400 (the channel is the unit of a conv net);
- a layer that reads the model input (no producer pair) owns the input units, which are the heat sources (image
  channels for a conv net; the 3072 pixels·channels for an MLP on 3×32×32, which reads the flattened image);
- the output units of the output layer(s) are the class nodes (shared when several layers sum into the output);
- the same activation read by two layers (a block's conv1 and its 1×1 downsample shortcut) gives two node copies,
  one per reader, both wired to the same upstream units — this keeps n = Σ in-units + classes.

Edges: a layer's weight ``W[o, i]`` joins its input node ``i`` to the input node ``o`` of *every* layer that reads
its output channel ``o`` (its children in ``ModelGraph.pairs``; through a residual add the children include the
next block's readers, so identity shortcuts connect the streams), or to class node ``o`` for an output layer.
Edge weight: binary ``1`` if any weight of the (masked) kernel slice / merged feature block is non-zero, or weighted
= the L1 norm of the masked slice (``Σ |w|`` over the kernel taps and merged features). Depthwise convs join input
channel ``c`` to output channel ``c``. Parallel edges (a sequential weight and a skip on the same unit pair) add up
(weighted) or count once (binary).

Skip connections: ``extra_edges`` takes ``(src_layer, dst_layer, weight)``: ``weight`` ``[out, in(, kh, kw)]`` joins
``src_layer``'s input units (``weight``'s dim 1) to ``dst_layer``'s *output* units (dim 0), i.e. N2NSkip's
``a^{l+k} = g(z^{l+k} + g(conv_s(a^l)))`` with ``a^l`` the input of ``src_layer`` and ``z^{l+k}`` the output of
``dst_layer``. Branches added by the ``skip`` edit (:mod:`connprune.surgery.skips`) are found automatically: the
layer graph is traced with them detached (so each residual add is seen once) and each recorded branch becomes such
an extra edge (its masked weight; a parameter-free ResSkip joins unit ``i`` to unit ``i``). Any other conv/linear
module registered under a name with a ``skip`` part that runs in the forward pass adds no nodes: its input nodes are
those of the non-skip layer reading the same producers.

Scale (VGG-19: n = 5,517 nodes, 4.5 M adjacency entries; ResNet-50: n = 24,589, 27.5 M): no n×n matrix is
formed. ``S(t)`` comes from :func:`scipy.sparse.linalg.expm_multiply` or, for large ``t·‖L‖`` (high-degree unit
graphs), from a Lanczos approximation of ``exp(−tL)A`` (:func:`heat_signature`); the full spectrum the scree needs
is exact through the twin-class quotient (:func:`laplacian_spectrum`: a dense reference collapses to a few dozen
classes); :func:`algebraic_connectivity` gets λ_2 alone by ``eigsh``.

Shrunk models: a physically shrunk model has fewer units and the kept indices are not recorded, so
:func:`heat_distance` needs the pruned model at the reference's widths (masked zeros, ``--no-shrink``) and raises a
:class:`~connprune.errors.UserError` otherwise.
"""

from __future__ import annotations

import copy
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from functools import cached_property
from pathlib import Path
from typing import Any, Literal

import numpy as np
import scipy.linalg
import scipy.sparse as sp
import scipy.sparse.csgraph as csgraph
import scipy.sparse.linalg as spla
import torch
from torch import nn

from connprune.errors import UserError
from connprune.graph import ModelGraph, build, is_depthwise
from connprune.surgery import skips as skip_branches
from connprune.surgery.shrink import KEPT_UNITS
from connprune.utils.io import atomic_path

SATURATION = 0.97
"""α level that defines the saturation time t* (the horizontal line of the paper's Fig. 4)."""
K_FRACTION = 0.06
"""K as a fraction of n for the scree α(K, t) (Fig. 4: α(K, 0) ≈ 0.06)."""
DENSE_EIGH_LIMIT = 12_000
"""Largest number of twin classes (:func:`twin_classes`) for which the full spectrum (the scree's input) is computed
by a dense ``eigh`` of the quotient Laplacian."""

ExtraEdge = tuple[str, str, "torch.Tensor | np.ndarray"]


@dataclass
class UnitGraph:
    """The unit graph of a network: symmetric sparse adjacency, named node blocks and the heat sources."""

    adjacency: sp.csr_matrix
    """n×n symmetric, float64 (binary 0/1 or L1-aggregated |w|)."""
    node_names: list[str]
    """One name per node block: ``"<layer>:in"`` for each weight layer's input units, then ``"classes"``."""
    offsets: dict[str, tuple[int, int]]
    """Block name → (first node index, number of nodes)."""
    sources: np.ndarray
    """n-vector ``A``: 1.0 on the network's input units, 0.0 elsewhere."""
    weighted: bool = False
    _eigenvalues: np.ndarray | None = field(default=None, repr=False)

    @property
    def n(self) -> int:
        """Number of nodes."""
        return int(self.adjacency.shape[0])

    def laplacian(self) -> sp.csr_matrix:
        """``L = D − W`` (sparse, float64)."""
        degrees = np.asarray(self.adjacency.sum(axis=1)).ravel()
        return (sp.diags(degrees) - self.adjacency).tocsr()

    def eigenvalues(self) -> np.ndarray:
        """All eigenvalues of ``L``, ascending (exact; cached): :func:`laplacian_spectrum`."""
        if self._eigenvalues is None:
            self._eigenvalues = laplacian_spectrum(self.adjacency)
        return self._eigenvalues

    def block(self, name: str) -> slice:
        """Node indices of block ``name`` as a slice."""
        start, size = self.offsets[name]
        return slice(start, start + size)


def _as_numpy(weight: torch.Tensor | np.ndarray) -> np.ndarray:
    if isinstance(weight, torch.Tensor):
        return weight.detach().to("cpu", torch.float64).numpy()
    return np.asarray(weight, dtype=np.float64)


def _slice_weights(weight: np.ndarray, n_in: int, weighted: bool, taps: str = "all") -> np.ndarray:
    """``[out, n_in]`` edge weights: L1 norm (or any-non-zero) of each kernel slice / merged feature block
    (``taps="first"``: of a conv kernel's ``[0, 0]`` tap only, as the authors' code release reads it)."""
    if taps not in ("all", "first"):
        raise UserError(f"unknown taps {taps!r}; choose all (the whole kernel slice) or first (the [0, 0] tap)")
    if taps == "first" and weight.ndim == 4:
        weight = weight[:, :, :1, :1]
    out = weight.shape[0]
    if weight.ndim == 2:
        if weight.shape[1] % n_in:
            raise UserError(f"a weight with {weight.shape[1]} inputs cannot be split over {n_in} input units")
        blocks = np.abs(weight).reshape(out, n_in, weight.shape[1] // n_in)
    else:
        if weight.shape[1] != n_in:
            raise UserError(f"a conv weight with {weight.shape[1]} input channels cannot join {n_in} input units")
        blocks = np.abs(weight).reshape(out, n_in, -1)
    if weighted:
        return blocks.sum(axis=2)
    return (blocks != 0).any(axis=2).astype(np.float64)


def _effective(module: nn.Module, name: str, masks: Mapping[str, torch.Tensor] | None) -> np.ndarray:
    weight = module.weight.detach()
    key = f"{name}.weight"
    if masks is not None and key in masks:
        weight = weight * masks[key].to(weight.device, torch.bool).to(weight.dtype)
    return _as_numpy(weight)


@dataclass
class _Layout:
    """Node blocks of a unit graph: one block of input units per weight layer, then the classes."""

    offsets: dict[str, tuple[int, int]] = field(default_factory=dict)
    names: list[str] = field(default_factory=list)
    sources: list[tuple[int, int]] = field(default_factory=list)
    total: int = 0

    def add(self, name: str, size: int, source: bool = False) -> None:
        self.offsets[name] = (self.total, size)
        self.names.append(name)
        if source:
            self.sources.append((self.total, size))
        self.total += size


def _layout(graph: ModelGraph, parents: dict[str, list[str]], features: dict[str, int]) -> _Layout:
    """One block per weight layer's input units (``"<layer>:in"``; layers without parents read the model input,
    the heat sources), then ``"classes"``."""
    layout = _Layout()
    modules = dict(graph.model.named_modules())
    for name in graph.layers:
        layout.add(f"{name}:in", _width(modules[name])[0] // features.get(name, 1), source=not parents[name])
    class_sizes = {_width(modules[name])[1] for name in graph.output_layers}
    if len(class_sizes) != 1:
        raise UserError(f"cannot tell the classes: output layers {graph.output_layers} have output widths "
                        f"{sorted(class_sizes)}")
    layout.add("classes", class_sizes.pop())
    return layout


def _width(module: nn.Module) -> tuple[int, int]:
    if isinstance(module, nn.Conv2d):
        return module.in_channels, module.out_channels
    return module.in_features, module.out_features


@dataclass
class _Edges:
    """Coordinate lists of the upper triangle of the adjacency."""

    rows: list[np.ndarray] = field(default_factory=list)
    cols: list[np.ndarray] = field(default_factory=list)
    vals: list[np.ndarray] = field(default_factory=list)

    def connect(self, src_block: tuple[int, int], destinations: list[np.ndarray], edge: np.ndarray,
                what: str) -> None:
        """Edges from the ``src_block`` units (columns of ``edge``) to the nodes each destination maps the edge's
        rows (output units) to."""
        for nodes in destinations:
            if edge.shape[0] != len(nodes):
                raise UserError(f"{what}: {edge.shape[0]} output units but {len(nodes)} reading nodes")
            out_idx, in_idx = np.nonzero(edge)
            self.rows.append(src_block[0] + in_idx)
            self.cols.append(nodes[out_idx])
            self.vals.append(edge[out_idx, in_idx])

    def adjacency(self, total: int, weighted: bool) -> sp.csr_matrix:
        row = np.concatenate(self.rows) if self.rows else np.zeros(0, dtype=np.int64)
        col = np.concatenate(self.cols) if self.cols else np.zeros(0, dtype=np.int64)
        val = np.concatenate(self.vals) if self.vals else np.zeros(0)
        upper = sp.coo_matrix((val, (row, col)), shape=(total, total)).tocsr()
        adjacency = (upper + upper.T).tocsr()
        adjacency.sum_duplicates()
        if not weighted:
            adjacency.data = np.minimum(adjacency.data, 1.0)
        adjacency.eliminate_zeros()
        return adjacency


def _layer_edge(module: nn.Module, weight: np.ndarray, n_in: int, weighted: bool, taps: str) -> np.ndarray:
    """``[out, in]`` edge weights of one layer: its kernel slices, or a diagonal for a depthwise conv."""
    if not is_depthwise(module):
        return _slice_weights(weight, n_in, weighted, taps)
    diag = np.abs(weight[:, :, :1, :1] if taps == "first" else weight).reshape(weight.shape[0], -1)
    return np.diag(diag.sum(axis=1) if weighted else (diag != 0).any(axis=1).astype(np.float64))


def unit_graph(model: nn.Module, input_shape: Sequence[int], masks: Mapping[str, torch.Tensor] | None = None,
               weighted: bool = False, extra_edges: Iterable[ExtraEdge] = (), taps: str = "all") -> UnitGraph:
    """The unit graph of ``model`` (see the module docstring for nodes and edges).

    ``taps``: which kernel taps make a conv edge: ``all`` (the definition of docs/methods/n2nskip.md: any non-zero
    weight of the slice, or its L1 norm) or ``first`` (only the ``[0, 0]`` tap, the shortcut of the authors' code
    release; a sparse element-wise pruned 3×3 conv then has about 9× fewer edges, a channel-level skip mask keeps all
    of its own). ``masks``: parameter name → keep mask, applied to the weights (a masked or exactly-zero weight is no
    edge). ``weighted``: edge weight = L1 norm of the masked kernel slice instead of 1. ``extra_edges``:
    ``(src_layer, dst_layer, weight [out, in(, kh, kw)])`` skip edges from ``src_layer``'s input units to
    ``dst_layer``'s output units (pass masked skip weights). Skip branches added by the ``skip`` edit are found by
    type (:func:`connprune.surgery.skips.branch_edges`) and added as such edges.
    """
    with skip_branches.detached(model):  # the sequential layers' graph; branches are added as extra edges
        graph = build(model, tuple(input_shape))
    extra_edges = [*extra_edges, *skip_branches.branch_edges(model, masks)]
    modules = dict(model.named_modules())
    parents: dict[str, list[str]] = {name: [] for name in graph.layers}
    children: dict[str, list[str]] = {name: [] for name in graph.layers}
    features: dict[str, int] = {}
    for pair in graph.pairs:
        parents[pair.child].append(pair.parent)
        children[pair.parent].append(pair.child)
        features.setdefault(pair.child, pair.features_per_channel)
    layout = _layout(graph, parents, features)

    def output_blocks(layer: str) -> list[np.ndarray]:
        """The nodes ``layer``'s output units are, in each layer that reads them (through concatenations: the
        reader's input columns of each unit) or among the classes."""
        if layer in graph.output_layers:
            start, size = layout.offsets["classes"]
            return [np.arange(start, start + size)]
        if not children[layer]:
            raise UserError(f"layer {layer!r} feeds no other weight layer and not the output; its output units "
                            "have no node")
        reads = graph.reads_of(layer)
        nodes = []
        for child in children[layer]:
            start, size = layout.offsets[f"{child}:in"]
            columns = reads.get(child)
            units = np.arange(size) if columns is None else \
                np.array([per_channel[0] // features.get(child, 1) for per_channel in columns])
            nodes.append(start + units)
        return nodes

    edges = _Edges()
    for name in graph.layers:
        src_block = layout.offsets[f"{name}:in"]
        edge = _layer_edge(modules[name], _effective(modules[name], name, masks), src_block[1], weighted, taps)
        edges.connect(src_block, output_blocks(name), edge, f"layer {name!r}")
    for src, dst, weight in extra_edges:
        for layer in (src, dst):
            if f"{layer}:in" not in layout.offsets:
                raise UserError(f"extra edge names layer {layer!r}, which is not a weight layer of the model; "
                                f"choose from {', '.join(graph.layers[:4])}, ...")
        src_block = layout.offsets[f"{src}:in"]
        edges.connect(src_block, output_blocks(dst), _slice_weights(_as_numpy(weight), src_block[1], weighted, taps),
                      f"extra edge {src}→{dst}")
    indicator = np.zeros(layout.total)
    for start, size in layout.sources:
        indicator[start:start + size] = 1.0
    return UnitGraph(adjacency=edges.adjacency(layout.total, weighted), node_names=layout.names,
                     offsets=layout.offsets, sources=indicator, weighted=weighted)


def from_adjacency(adjacency: sp.spmatrix | np.ndarray, sources: Sequence[int] | np.ndarray) -> UnitGraph:
    """A :class:`UnitGraph` from a symmetric adjacency and the source node indices (hand-built graphs, tests)."""
    matrix = sp.csr_matrix(adjacency, dtype=np.float64)
    if matrix.shape[0] != matrix.shape[1] or (abs(matrix - matrix.T) > 1e-12).nnz:
        raise UserError("the adjacency must be a square symmetric matrix")
    indicator = np.zeros(matrix.shape[0])
    indicator[np.asarray(sources, dtype=np.int64)] = 1.0
    return UnitGraph(adjacency=matrix, node_names=["nodes"], offsets={"nodes": (0, matrix.shape[0])},
                     sources=indicator, weighted=bool(np.any((matrix.data != 0) & (matrix.data != 1))))


def twin_classes(adjacency: sp.spmatrix) -> np.ndarray:
    """Class label per node: nodes with identical adjacency rows (the same neighbours with the same weights, hence
    never adjacent to each other) share a class. In a dense reference network every unit of a layer is such a twin."""
    matrix = sp.csr_matrix(adjacency)
    matrix.sort_indices()
    keys: dict[tuple[bytes, bytes], int] = {}
    labels = np.empty(matrix.shape[0], dtype=np.int64)
    for node in range(matrix.shape[0]):
        lo, hi = matrix.indptr[node], matrix.indptr[node + 1]
        key = (matrix.indices[lo:hi].tobytes(), matrix.data[lo:hi].tobytes())
        labels[node] = keys.setdefault(key, len(keys))
    return labels


def laplacian_spectrum(adjacency: sp.spmatrix, dense_limit: int = DENSE_EIGH_LIMIT) -> np.ndarray:
    """All eigenvalues of ``L = D − W`` (Eq. 3), ascending, exactly, without an n×n eigendecomposition where the
    graph has twins (:func:`twin_classes`).

    For a class C of m twins of degree d, every vector on C summing to zero is an eigenvector of L with eigenvalue
    d (their rows agree and no edge joins them), which gives m − 1 eigenvalues d; the other eigenvalues are those of
    the c×c quotient ``Q = Bᵀ L B``, B the orthonormal class indicators (``1_C / √m``), whose span L leaves
    invariant. Dense reference networks collapse to about one class per layer block, so their full spectrum is
    exact and quick; a pruned network has few twins and needs ``c ≤ dense_limit`` (a dense ``eigh`` of the
    quotient), else a :class:`UserError`.
    """
    matrix = sp.csr_matrix(adjacency, dtype=np.float64)
    n = matrix.shape[0]
    labels = twin_classes(matrix)
    classes = int(labels.max()) + 1 if n else 0
    if classes > dense_limit:
        raise UserError(f"the unit graph has {n} nodes in {classes} twin classes; the scree α(K, t) needs all "
                        f"eigenvalues, computed exactly only up to {dense_limit} classes — pass an explicit t")
    degrees = np.asarray(matrix.sum(axis=1)).ravel()
    laplacian = (sp.diags(degrees) - matrix).tocsr()
    sizes = np.bincount(labels, minlength=classes)
    basis = sp.csr_matrix((1.0 / np.sqrt(sizes[labels]), (np.arange(n), labels)), shape=(n, classes))
    quotient = (basis.T @ laplacian @ basis).toarray()
    values = [scipy.linalg.eigh(0.5 * (quotient + quotient.T), eigvals_only=True)]
    first = np.zeros(classes, dtype=np.int64)
    first[labels[::-1]] = np.arange(n)[::-1]  # a representative node of each class
    values.append(np.repeat(degrees[first], sizes - 1))
    return np.clip(np.sort(np.concatenate(values)), 0.0, None)  # L is PSD; clip round-off below 0


def algebraic_connectivity(graph: UnitGraph, tol: float = 1e-8) -> float:
    """λ_2 of L (the Fiedler value; 0 iff the graph is disconnected) by :func:`scipy.sparse.linalg.eigsh` in
    shift-invert mode just below 0: no full spectrum, for graphs too large for :func:`laplacian_spectrum`."""
    laplacian = graph.laplacian().tocsc()
    if graph.n <= 64:
        return float(np.sort(np.linalg.eigvalsh(laplacian.toarray()))[1].clip(0.0))
    values = spla.eigsh(laplacian, k=2, sigma=-1e-6, which="LM", tol=tol, return_eigenvectors=False)
    return float(np.sort(values)[1].clip(0.0))


def heat_kernel(graph: UnitGraph, t: float) -> np.ndarray:
    """Dense ``H(t) = U exp(−Λt) U^T`` (Eq. 4; small graphs only: n×n)."""
    laplacian = graph.laplacian().toarray()
    values, vectors = scipy.linalg.eigh(laplacian)
    return (vectors * np.exp(-t * np.clip(values, 0.0, None))) @ vectors.T


KRYLOV_ABOVE = 10.0
"""``heat_signature(method="auto")`` uses the Lanczos path when ``t·‖L‖_1`` exceeds this (expm_multiply's cost grows
linearly with ``t·‖L‖_1``, Lanczos' roughly with its square root)."""


def _lanczos_expm(laplacian: sp.csr_matrix, vector: np.ndarray, t: float, tol: float = 1e-12,
                  max_steps: int = 1000) -> np.ndarray:
    """``exp(−tL) v`` by the Lanczos method (Saad 1992; Hochbruck & Lubich 1997): ``β V_m exp(−t T_m) e_1`` on the
    Krylov space ``K_m(L, v)`` with full re-orthogonalisation, grown 16 steps at a time until two successive
    approximations agree to ``tol · ‖v‖`` (or the space is invariant, which makes it exact)."""
    beta = float(np.linalg.norm(vector))
    if beta == 0.0:
        return np.zeros_like(vector)
    n = vector.shape[0]
    limit = min(max_steps, n)
    basis = np.zeros((limit + 1, n))
    basis[0] = vector / beta
    alphas: list[float] = []
    betas: list[float] = []
    previous: np.ndarray | None = None
    for step in range(limit):
        w = laplacian @ basis[step]
        alphas.append(float(basis[step] @ w))
        for _ in range(2):  # full re-orthogonalisation, twice is enough
            w -= basis[: step + 1].T @ (basis[: step + 1] @ w)
        norm = float(np.linalg.norm(w))
        invariant = norm <= 1e-12 * max(1.0, abs(alphas[-1]))
        if invariant or (step + 1) % 16 == 0 or step + 1 == limit:
            values, vectors = scipy.linalg.eigh_tridiagonal(np.array(alphas), np.array(betas))
            small = vectors @ (np.exp(-t * np.clip(values, 0.0, None)) * vectors[0])
            current = beta * (basis[: step + 1].T @ small)
            if invariant or step + 1 == n or (previous is not None and
                                               np.linalg.norm(current - previous) <= tol * beta):
                return current
            previous = current
        betas.append(norm)
        basis[step + 1] = w / norm
    raise UserError(f"the Lanczos heat solver did not converge in {max_steps} steps (t={t}); use "
                    "method='expm_multiply'")


def heat_signature(graph: UnitGraph, t: float, method: str = "auto") -> np.ndarray:
    """``S(t) = exp(−tL) A`` (Eq. 5, n-vector) without an eigendecomposition of L.

    ``method``: ``expm_multiply`` (:func:`scipy.sparse.linalg.expm_multiply`, Al-Mohy & Higham 2011; cost linear in
    ``t·‖L‖_1``), ``lanczos`` (:func:`_lanczos_expm`; about ``√(t·‖L‖)`` sparse products, the fast choice for the
    large, high-degree unit graphs of VGG/ResNet at saturation times) or ``auto`` (Lanczos above
    :data:`KRYLOV_ABOVE`). Both agree with ``U exp(−Λt) Uᵀ A`` to 1e-8 (tests).
    """
    if t < 0:
        raise UserError(f"t must be >= 0, got {t}")
    if method not in ("auto", "expm_multiply", "lanczos"):
        raise UserError(f"unknown heat method {method!r}; choose auto, expm_multiply or lanczos")
    if t == 0:
        return graph.sources.copy()
    laplacian = graph.laplacian()
    if method == "auto":
        norm = float(abs(laplacian).sum(axis=0).max()) if laplacian.nnz else 0.0
        method = "lanczos" if t * norm > KRYLOV_ABOVE else "expm_multiply"
    if method == "lanczos":
        return _lanczos_expm(laplacian.tocsr(), graph.sources, float(t))
    return np.asarray(spla.expm_multiply(-float(t) * laplacian.tocsc(), graph.sources), dtype=np.float64)


def _same_nodes(reference: UnitGraph, pruned: UnitGraph) -> None:
    if reference.offsets != pruned.offsets or not np.array_equal(reference.sources, pruned.sources):
        raise UserError("the two unit graphs have different node sets; F compares networks with the same units "
                        "(a physically shrunk model needs its masked, unshrunk checkpoint: prune with --no-shrink)")


def signature_distance(reference: UnitGraph, pruned: UnitGraph, t: float, method: str = "auto") -> float:
    """``F(t) = ||S_ref(t) − S_prune(t)||_2`` (Eq. 6); the graphs must share the node set and the sources."""
    _same_nodes(reference, pruned)
    return float(np.linalg.norm(heat_signature(reference, t, method) - heat_signature(pruned, t, method)))


def saturated_signature(graph: UnitGraph) -> np.ndarray:
    """``S(∞) = lim_{t→∞} exp(−tL) A`` in closed form: ``exp(−tL)`` tends to the projection onto L's null space,
    spanned by the indicators of the connected components, so ``S_i(∞) = |sources in C(i)| / |C(i)|``
    (the limit of the paper's Eq. 6 signature, derived under "Definitions" in docs/methods/n2nskip.md). Components
    by :func:`scipy.sparse.csgraph.connected_components`; exact, no ``t`` to choose."""
    count, labels = csgraph.connected_components(graph.adjacency, directed=False)
    heat = np.bincount(labels, weights=graph.sources, minlength=count)
    size = np.bincount(labels, minlength=count)
    return heat[labels] / size[labels]


def saturated_distance(reference: UnitGraph, pruned: UnitGraph) -> float:
    """``F(∞) = ||S_ref(∞) − S_prune(∞)||_2``: Eq. (6) at the fully saturated heat distribution the paper evaluates
    Table 3 at (its "large t"). Zero when both graphs are connected; otherwise it measures the units cut off from
    the inputs (and how many sources share their component). The finite-t values :func:`signature_distance` gives
    approach it as t grows."""
    _same_nodes(reference, pruned)
    return float(np.linalg.norm(saturated_signature(reference) - saturated_signature(pruned)))


def _k(graph: UnitGraph, k_fraction: float) -> int:
    if graph.n < 3:
        raise UserError(f"the scree needs at least 3 nodes, the graph has {graph.n}")
    return int(min(max(1, round(k_fraction * graph.n)), graph.n - 1))


def scree_values(eigenvalues: np.ndarray, k: int, ts: Iterable[float]) -> np.ndarray:
    """α(K, t) for each t from ascending Laplacian eigenvalues (λ_1 dropped, as in Eq. (7))."""
    rest = np.sort(np.asarray(eigenvalues, dtype=np.float64))[1:]
    out = []
    for t in ts:
        weights = np.exp(-float(t) * (rest - rest[0]))  # shifted by λ_2: the ratio is unchanged, no underflow
        out.append(weights[:k].sum() / weights.sum())
    return np.asarray(out)


def scree(graph: UnitGraph, k_fraction: float = K_FRACTION, ts: Iterable[float] = (0.0,)) -> np.ndarray:
    """Scree α(K, t) (Eq. 7) at each ``t`` with K = ``k_fraction``·n (rounded, at least 1, at most n−1)."""
    return scree_values(graph.eigenvalues(), _k(graph, k_fraction), ts)


def saturation_time(graph: UnitGraph, k_fraction: float = K_FRACTION, level: float = SATURATION,
                    rtol: float = 1e-6) -> float:
    """Smallest t with α(K, t) ≥ ``level`` (α is non-decreasing in t), by doubling then bisection in log t."""
    values = graph.eigenvalues()
    k = _k(graph, k_fraction)
    alpha = lambda t: float(scree_values(values, k, [t])[0])  # noqa: E731
    if alpha(0.0) >= level:
        return 0.0
    hi = 1e-6
    while alpha(hi) < level:
        hi *= 2.0
        if hi > 1e15:
            raise UserError(f"the scree α(K={k}, t) of this graph never reaches {level} (too many disconnected "
                            "components or all eigenvalues equal); pass an explicit t")
    lo = hi / 2.0 if hi > 1e-6 else 0.0
    while hi - lo > rtol * hi:
        mid = 0.5 * (lo + hi)
        if alpha(mid) >= level:
            hi = mid
        else:
            lo = mid
    return hi


def _widths(model: nn.Module) -> dict[str, tuple[int, ...]]:
    """Weight shapes of the network's own conv/linear layers (skip branches left out)."""
    inside = skip_branches.skip_module_names(model)
    return {name: tuple(m.weight.shape) for name, m in model.named_modules()
            if isinstance(m, (nn.Conv2d, nn.Linear)) and name not in inside}


SETTLED = 1e-6
"""Tolerance that defines the settling time (:func:`settling_time`): the reference's heat is within this fraction
of its saturated distribution."""


def settling_time(graph: UnitGraph, tolerance: float = SETTLED) -> float:
    """``t_sat = ln(1/tolerance) / λ_2``: from then on every non-constant mode of ``exp(−tL)`` has decayed below
    ``tolerance``, so ``||S(t) − S(∞)||_2 ≤ tolerance·||A||_2`` — the graph's heat distribution has saturated.

    Reconstructed (docs/methods/n2nskip.md, "Open questions"; the paper evaluates Table 3 at a "large t" it does not
    state):
    F at the *reference's* settling time compares the pruned network with a saturated reference, while heat in weakly
    connected pruned networks (small λ_2) is still on its way; F(∞) (:func:`saturated_distance`) sees only
    disconnected units. On the zoo's dense VGG-19 (CIFAR input) t_sat ≈ 57 t*, inside the t range of the paper's
    Fig. 4."""
    if not 0.0 < tolerance < 1.0:
        raise UserError(f"the settling tolerance must be in (0, 1), got {tolerance}")
    try:
        fiedler = float(graph.eigenvalues()[1])
    except UserError:  # too many twin classes for the full spectrum: λ_2 alone
        fiedler = algebraic_connectivity(graph)
    if fiedler <= 1e-12 * max(1.0, float(graph.adjacency.sum())):
        raise UserError("the reference graph is disconnected (λ_2 = 0), so its heat never settles to one value; "
                        "pass an explicit t")
    return float(np.log(1.0 / tolerance) / fiedler)


HeatTime = Literal["t_star", "t_sat"] | float
"""Where F is read: the reference's scree saturation time t* (the spec's Table 3 setting, reconstructed: α(K, t*) =
0.97), its settling time t_sat, or a given t."""


def parse_time(text: str) -> HeatTime:
    """``"t_star"``, ``"t_sat"`` or a number t > 0 from text (the CLI's ``--heat-t``)."""
    if text in ("t_star", "t_sat"):
        return text  # type: ignore[return-value]
    try:
        t = float(text)
    except ValueError:
        t = 0.0
    if not t > 0 or t == float("inf"):
        raise UserError(f"--heat-t {text!r}: choose t_star, t_sat or a number t > 0")
    return t


@dataclass
class HeatComparison:
    """A pruned network's unit graph beside its dense reference's, with the two reference times (t*, t_sat)."""

    reference: UnitGraph
    pruned: UnitGraph
    k_fraction: float = K_FRACTION
    tolerance: float = SETTLED

    @cached_property
    def t_star(self) -> float:
        """The reference's scree saturation time (α(K, t*) = 0.97, :func:`saturation_time`)."""
        return saturation_time(self.reference, self.k_fraction)

    @cached_property
    def t_settled(self) -> float:
        """The reference's settling time (:func:`settling_time`): where F is reported by default."""
        return settling_time(self.reference, self.tolerance)

    def time(self, at: HeatTime = "t_sat") -> float:
        """The diffusion time ``at`` names: ``"t_star"`` (:attr:`t_star`), ``"t_sat"`` (:attr:`t_settled`) or a
        given ``t > 0``."""
        if at == "t_star":
            return self.t_star
        if at == "t_sat":
            return self.t_settled
        if isinstance(at, str) or not at > 0:
            raise UserError(f"heat time {at!r}: choose t_star, t_sat or a number t > 0")
        return float(at)

    def distance(self, t: HeatTime | None = None) -> float:
        """F(t) (Eq. 6); ``None``: at :attr:`t_settled`; ``"t_star"`` / ``"t_sat"`` / a number (:meth:`time`)."""
        return signature_distance(self.reference, self.pruned, self.time("t_sat" if t is None else t))

    def summary(self, multiples: Iterable[float] = (1, 10, 100), at: HeatTime = "t_sat") -> dict[str, Any]:
        """``heat_distance`` = F at ``at`` (:meth:`time`), ``heat_t`` its t, ``heat_at`` what ``at`` named,
        ``heat_adjacency`` (``weighted`` or ``binary``), ``heat_t_star``, ``heat_t_sat`` and ``heat_distance_by_t``:
        F at the ``multiples`` of t*, at t_sat and at t = ∞ (closed form)."""
        times = {f"{m:g}t*": m * self.t_star for m in multiples} | {"t_sat": self.t_settled}
        by_t = {name: self.distance(t) for name, t in times.items()}
        by_t["inf"] = saturated_distance(self.reference, self.pruned)
        t = self.time(at)
        headline = next((by_t[name] for name, known in times.items() if known == t), None)
        return {"heat_distance": self.distance(t) if headline is None else headline, "heat_t": t, "heat_at": at,
                "heat_adjacency": "weighted" if self.reference.weighted else "binary", "heat_t_star": self.t_star,
                "heat_t_sat": self.t_settled, "heat_distance_by_t": by_t}


def compare(reference_model: nn.Module, pruned_model: nn.Module, input_shape: Sequence[int],
            masks: Mapping[str, torch.Tensor] | None = None, weighted: bool = False,
            reference_masks: Mapping[str, torch.Tensor] | None = None, extra_edges: Iterable[ExtraEdge] = (),
            k_fraction: float = K_FRACTION, taps: str = "all", tolerance: float = SETTLED) -> HeatComparison:
    """The unit graphs of a reference and a pruned (masked) model (the reference's t* and t_sat on demand).

    ``masks`` apply to ``pruned_model`` and ``reference_masks`` to the reference; ``extra_edges`` are the pruned
    model's skip edges (skip branches added by the ``skip`` edit are found automatically). The pruned model has the
    reference's layer shapes (masked), or was physically shrunk by :func:`connprune.surgery.shrink.shrink`, which
    records the kept units: it is mapped back with :func:`unshrunk` (removed units become isolated nodes).
    """
    ref_widths, pruned_widths = _widths(reference_model), _widths(pruned_model)
    if ref_widths != pruned_widths:
        changed = sorted(k for k in ref_widths if pruned_widths.get(k) != ref_widths[k])
        if not getattr(pruned_model, KEPT_UNITS, None):
            raise UserError(f"the pruned model's layers differ in shape from the reference's "
                            f"({', '.join(changed[:3])}) and it records no kept unit indices; F compares the same "
                            "units, so it needs a masked (unshrunk) model — prune with --no-shrink — or one shrunk "
                            "by this connprune, or a reference of the same architecture")
        pruned_model, masks = unshrunk(reference_model, pruned_model, masks)
    reference = unit_graph(reference_model, input_shape, masks=reference_masks, weighted=weighted, taps=taps)
    pruned = unit_graph(pruned_model, input_shape, masks=masks, weighted=weighted, extra_edges=extra_edges, taps=taps)
    return HeatComparison(reference, pruned, k_fraction, tolerance)


def unshrunk(reference_model: nn.Module, shrunk_model: nn.Module,
             masks: Mapping[str, torch.Tensor] | None = None) -> tuple[nn.Module, dict[str, torch.Tensor]]:
    """A copy of ``reference_model`` holding ``shrunk_model``'s conv/linear weights at the rows and columns they had
    before shrinking (:data:`~connprune.surgery.shrink.KEPT_UNITS`), zero elsewhere, and masks to match (removed
    entries masked): its unit graph has the reference's nodes, removed units with no edges (isolated)."""
    kept = getattr(shrunk_model, KEPT_UNITS, None) or {}
    expanded = copy.deepcopy(reference_model)
    shrunk = dict(shrunk_model.named_modules())
    full_masks: dict[str, torch.Tensor] = {}
    for name, module in expanded.named_modules():
        if not isinstance(module, (nn.Conv2d, nn.Linear)) or name not in shrunk:
            continue
        weight, key = shrunk[name].weight.detach(), f"{name}.weight"
        rows = kept.get(name, {}).get("out", list(range(weight.shape[0])))
        cols = kept.get(name, {}).get("in", list(range(weight.shape[1])))
        inside = all(isinstance(i, int) and 0 <= i < size for indices, size in
                     ((rows, module.weight.shape[0]), (cols, module.weight.shape[1])) for i in indices)
        if (len(rows), len(cols)) != tuple(weight.shape[:2]) or not inside:
            raise UserError(f"layer {name!r}: the recorded kept units ({len(rows)} × {len(cols)}) do not match its "
                            f"weight {tuple(weight.shape)} inside the reference's {tuple(module.weight.shape)}; "
                            "compare with the reference it was pruned from")
        mask = masks.get(key) if masks else None
        block = torch.zeros(module.weight.shape, dtype=torch.bool)
        index = (torch.tensor(rows)[:, None], torch.tensor(cols)[None, :])
        block[index] = True if mask is None else mask.cpu().to(torch.bool)
        with torch.no_grad():
            module.weight.zero_()
            module.weight[index] = weight.to(module.weight.device, module.weight.dtype)
        full_masks[key] = block
    return expanded, full_masks


def heat_distance(reference_model: nn.Module, pruned_model: nn.Module, input_shape: Sequence[int],
                  masks: Mapping[str, torch.Tensor] | None = None, t: HeatTime | None = None, weighted: bool = False,
                  reference_masks: Mapping[str, torch.Tensor] | None = None, extra_edges: Iterable[ExtraEdge] = (),
                  taps: str = "all") -> float:
    """N2NSkip's F = ||S_ref(t) − S_prune(t)||_2 between a reference and a pruned (masked) model (:func:`compare`);
    ``t=None``: at the reference's settling time t_sat (:func:`settling_time`); ``"t_star"`` / ``"t_sat"`` / a number
    as :meth:`HeatComparison.time`. ``weighted``: edge weights |w| (the spec's Table 3) instead of binary (Fig. 3)."""
    return compare(reference_model, pruned_model, input_shape, masks=masks, weighted=weighted,
                   reference_masks=reference_masks, extra_edges=extra_edges, taps=taps).distance(t)


def scree_plot(graphs: Mapping[str, UnitGraph], path: str | Path, t_max: float | None = None,
               k_fraction: float = K_FRACTION, points: int = 200) -> Path:
    """Save the scree diagram α(K, t) of Eq. (7) over t ∈ [0, t_max] for each graph (the paper's Fig. 4), with the
    saturation level :data:`SATURATION` as a horizontal line, as a PNG at ``path`` (written atomically).

    ``t_max=None``: four times the first graph's saturation time. Needs every graph's full spectrum
    (:func:`laplacian_spectrum`)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    if not graphs:
        raise UserError("scree_plot needs at least one unit graph")
    first = next(iter(graphs.values()))
    t_max = float(t_max) if t_max is not None else 4.0 * saturation_time(first, k_fraction)
    if t_max <= 0:
        raise UserError(f"t_max must be > 0, got {t_max}")
    ts = np.linspace(0.0, t_max, points)
    fig, axis = plt.subplots(figsize=(5.5, 4))
    for label, graph in graphs.items():
        axis.plot(ts, scree(graph, k_fraction, ts), label=label)
    axis.axhline(SATURATION, color="grey", linestyle="--", linewidth=0.8)
    axis.set(xlabel="t", ylabel=f"α(K, t), K = {k_fraction:.0%} of n", ylim=(0, 1.02),
             title="Scree diagram (N2NSkip Eq. 7)")
    axis.legend(fontsize=8)
    fig.tight_layout()
    path = Path(path)
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="png", dpi=120)
    plt.close(fig)
    return path
