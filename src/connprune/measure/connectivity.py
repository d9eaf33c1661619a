"""Connectivity between the units of consecutive layers, the "ghost" weights of GC-Net.

Paper: Wisell & Yasaei Sekeh, "Ghost-Connect Net: A Generalization-Enhanced Guidance For Sparse Deep Networks Under
Distribution Shifts", arXiv 2411.09199 (2024); spec docs/methods/gcnet.md. The full text was not available, so the
measure is **reconstructed** (docs/methods/gcnet.md §2, §3 steps 2–5) from the same lab's public code for
connectivity-based continual learning (Andle & Sekeh, arXiv 2204.12010, ``Sekeh-Lab/InformationFlow-CL``). Every choice
below that the docs/methods/gcnet.md marks "(reconstructed: not confirmed from the paper)" is an option here, not the
paper's:

- **measure** ``"pearson"`` (default, lab code): ``conn(i, j) = (1/|C|) Σ_c |ρ_c(a_i, a_j)|``, the per-class absolute
  Pearson correlation between unit ``i`` of the parent layer and unit ``j`` of the child layer over the probe samples of
  class ``c``, averaged over classes (docs/methods/gcnet.md §2 "Connectivity"). Guard: a term is 0 when either unit's
  (population) standard deviation on the class is below ``std_guard`` (1e-3 in the lab code), so dead units get 0 and no
  NaN. ``"mi"``: EDGE mutual information (:func:`connprune.measure.mutual_information.edge_mi_batched`) per class,
  mapped to [0, 1] by Linfoot's informational coefficient of correlation ``sqrt(1 - exp(-2 I))`` (which is |ρ| for
  Gaussian pairs, so both measures share a scale), averaged over classes (docs/methods/gcnet.md §8 names MI as the open
  alternative).
- **site** of a unit's activation (docs/methods/gcnet.md §2 "Unit activations"; per-sample spatial mean for conv
  layers): ``"post"`` (default): what the next layer *reads* — the parent's activation for a child is the child's own
  input (after BN, ReLU, pooling, and for a residual block the stream after the add and ReLU, docs/methods/gcnet.md §3
  step 5), reduced per channel (a flatten's ``H·W`` columns averaged back into their channel); a child's activation is
  the input its own first consumer reads (the classifier, with no consumer, uses its logits). ``"module"``: the
  conv/linear module outputs (the lab code's older hook site); a residual child then uses its latest parent (the block's
  last conv).
- **Layer pairs** come from :mod:`connprune.graph` (``LayerPair``: conv→conv, conv→linear through flatten or pooling,
  residual summands). There is one ghost matrix per *child* layer, ``G[j, i]`` for output unit ``j`` of the child and
  its input channel ``i`` — the channel-level view ``W[:, :, ...]`` of the child's weight (docs/methods/gcnet.md §2
  "Ghost network"); for a residual child the channels are those of the stream, whose producers are its parents.

Memory (docs/methods/gcnet.md §3 step 3): activations are reduced to per-sample channel means inside the forward hooks,
batch by batch, and the probe set is run one class at a time, so for the Pearson measure only streaming sums for the
current class are kept (``Σa``, ``Σb``, ``Σa²``, ``Σb²``, ``Σ b aᵀ`` in float64, shifted by the first batch's means for
numerical stability): ``n_child × n_parent`` numbers per pair, never the activations. The MI measure needs the samples:
it keeps the current class's reduced activations only (``N_c × Σ n_l`` numbers).
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field
from typing import Any, Literal

import torch
from torch import nn

from connprune.data import ImageData
from connprune.data.pipeline import Batches
from connprune.errors import UserError
from connprune.graph import ModelGraph, is_depthwise
from connprune.measure import mutual_information

Measure = Literal["pearson", "mi"]
Site = Literal["post", "module"]

STD_GUARD = 1e-3
"""Standard deviation below which a unit counts as constant on a class (lab code)."""
_MI_CHUNK_ELEMENTS = 1 << 21
"""Pairs × samples per EDGE call in the MI measure (bounds its memory)."""


# ----------------------------------------------------------------------------------------------------- layer pairs
@dataclass(frozen=True)
class GhostLayer:
    """A child layer with a ghost parent: its ghost matrix is ``(out units, input channels)``."""

    child: str
    """The conv/linear module whose connections the ghost matrix guides."""
    parents: tuple[str, ...]
    """Producers of the channels the child reads (several for a residual stream), forward order."""
    channels: int
    """Input channels of the child (``in_channels``, or ``in_features / features_per_channel``)."""
    units: int
    """Output units of the child."""
    features_per_channel: int
    """Child input features per channel (1 conv→conv; ``H·W`` conv→flatten→linear)."""
    residual: bool
    """The channels are a residual stream."""
    shortcut: bool
    """A projection shortcut: reads the residual stream and writes into it (1×1 downsample convs)."""


def ghost_layers(graph: ModelGraph, *, include_shortcuts: bool = False,
                 include_classifier: bool = True) -> list[GhostLayer]:
    """Child layers that get a ghost matrix, in forward order (docs/methods/gcnet.md §3 step 5).

    Every conv/linear with at least one :class:`~connprune.graph.LayerPair` parent, except depthwise convs (one input
    channel per unit: no connections to choose between) and other grouped convs (a unit reads only its group's
    channels, so a full unit × channel ghost does not map onto the weight; they are pruned directly, as shortcuts
    are), projection shortcuts unless ``include_shortcuts``
    (docs/methods/gcnet.md §3 step 5: "1×1 downsample shortcuts … fall under direct magnitude pruning") and output
    layers (the classifier) unless ``include_classifier``. The first layer never has a ghost parent.
    """
    modules = dict(graph.model.named_modules())
    residual_producers = {p for g in graph.groups if g.residual for p in g.producers}
    by_child: dict[str, list[Any]] = {}
    for pair in graph.pairs:
        by_child.setdefault(pair.child, []).append(pair)
    found = []
    for name in graph.layers:
        pairs = by_child.get(name)
        module = modules[name]
        if not pairs or is_depthwise(module) or getattr(module, "groups", 1) > 1:
            continue
        if not include_classifier and name in graph.output_layers:
            continue
        features = {p.features_per_channel for p in pairs}
        if len(features) != 1:  # pragma: no cover - one input tensor per layer, so one layout
            raise UserError(f"layer {name!r} reads its parents with different layouts {sorted(features)}; GC-Net "
                            "needs one input tensor per layer")
        per_channel = features.pop()
        width = module.in_channels if isinstance(module, nn.Conv2d) else module.in_features
        reads_stream = any(p.residual for p in pairs)
        shortcut = reads_stream and name in residual_producers
        if shortcut and not include_shortcuts:
            continue
        found.append(GhostLayer(child=name, parents=tuple(p.parent for p in pairs), channels=width // per_channel,
                                units=module.weight.shape[0], features_per_channel=per_channel,
                                residual=reads_stream, shortcut=shortcut))
    return found


# ------------------------------------------------------------------------------------------- pure estimators (N, n)
class MomentSums:
    """Streaming per-class sums for the Pearson correlation of every (child unit, parent unit) pair.

    ``update`` takes one batch of reduced activations (``parent (B, n_p)``, ``child (B, n_c)``); values are shifted
    by the first batch's means (the "shifted data" algorithm) and summed in float64, so the correlation is exact to
    float64 rounding without storing the samples.
    """

    def __init__(self, parent_units: int, child_units: int, device: torch.device | str = "cpu", *,
                 parent_cross: bool = False) -> None:
        self.count = 0
        self.shift_parent: torch.Tensor | None = None
        self.shift_child: torch.Tensor | None = None
        dtype = torch.float64
        self.sum_parent = torch.zeros(parent_units, dtype=dtype, device=device)
        self.sum_child = torch.zeros(child_units, dtype=dtype, device=device)
        self.square_parent = torch.zeros(parent_units, dtype=dtype, device=device)
        self.square_child = torch.zeros(child_units, dtype=dtype, device=device)
        self.cross = torch.zeros(child_units, parent_units, dtype=dtype, device=device)
        self.parent_cross = (torch.zeros(parent_units, parent_units, dtype=dtype, device=device) if parent_cross
                             else None)
        """``Σ a aᵀ`` over the parent units, for :meth:`parent_correlation` (only when asked for)."""

    def update(self, parent: torch.Tensor, child: torch.Tensor) -> None:
        parent, child = parent.to(torch.float64), child.to(torch.float64)
        if parent.shape[0] != child.shape[0]:
            raise ValueError(f"parent and child batches differ in size: {parent.shape[0]} vs {child.shape[0]}")
        if parent.shape[0] == 0:
            return
        if self.shift_parent is None:
            self.shift_parent, self.shift_child = parent.mean(0), child.mean(0)
        parent = parent - self.shift_parent
        child = child - self.shift_child
        self.count += parent.shape[0]
        self.sum_parent += parent.sum(0)
        self.sum_child += child.sum(0)
        self.square_parent += (parent * parent).sum(0)
        self.square_child += (child * child).sum(0)
        self.cross += child.T @ parent
        if self.parent_cross is not None:
            self.parent_cross += parent.T @ parent

    def correlation(self, std_guard: float = STD_GUARD) -> torch.Tensor:
        """``(n_c, n_p)`` Pearson correlations; 0 where either unit's std is below ``std_guard`` (no NaN)."""
        n = max(self.count, 1)
        mean_parent, mean_child = self.sum_parent / n, self.sum_child / n
        covariance = self.cross / n - mean_child[:, None] * mean_parent[None, :]
        return _correlate(covariance, self._std(self.square_parent, mean_parent),
                          self._std(self.square_child, mean_child), std_guard)

    def parent_correlation(self, std_guard: float = STD_GUARD) -> torch.Tensor:
        """``(n_p, n_p)`` Pearson correlations among the parent units (``parent_cross=True``), guarded alike: the
        second moment of the standardised parent activations, with 0 rows and columns for constant units."""
        if self.parent_cross is None:
            raise ValueError("parent_correlation needs MomentSums(..., parent_cross=True)")
        n = max(self.count, 1)
        mean = self.sum_parent / n
        std = self._std(self.square_parent, mean)
        return _correlate(self.parent_cross / n - mean[:, None] * mean[None, :], std, std, std_guard)

    def _std(self, square: torch.Tensor, mean: torch.Tensor) -> torch.Tensor:
        return (square / max(self.count, 1) - mean**2).clamp_min(0.0).sqrt()


def _correlate(covariance: torch.Tensor, std_columns: torch.Tensor, std_rows: torch.Tensor,
               std_guard: float) -> torch.Tensor:
    """``covariance[r, c] / (std_rows[r] · std_columns[c])``, 0 where either std is below ``std_guard``."""
    live = (std_rows >= std_guard)[:, None] & (std_columns >= std_guard)[None, :]
    denominator = torch.where(live, std_rows[:, None] * std_columns[None, :], torch.ones_like(covariance))
    return torch.where(live, covariance / denominator, torch.zeros_like(covariance)).clamp(-1.0, 1.0)


def _classes(labels: torch.Tensor) -> list[int]:
    return sorted(int(c) for c in torch.unique(labels))


def pearson_connectivity(parent: torch.Tensor, child: torch.Tensor, labels: torch.Tensor, *,
                         std_guard: float = STD_GUARD, batch_size: int | None = None) -> torch.Tensor:
    """``G[j, i] = mean_c |ρ_c(parent_i, child_j)|`` for reduced activations ``parent (N, n_p)``, ``child (N, n_c)``.

    docs/methods/gcnet.md §2 "Connectivity" (reconstructed from the lab code). Classes with fewer than 2 samples are
    skipped. ``batch_size`` streams the samples through :class:`MomentSums` in chunks (the result does not depend on it
    beyond float64 rounding). Returns float64 ``(n_c, n_p)`` in [0, 1].
    """
    def one_class(index: torch.Tensor) -> torch.Tensor:
        sums = MomentSums(parent.shape[1], child.shape[1], parent.device)
        step = batch_size or index.numel()
        for start in range(0, index.numel(), step):
            chunk = index[start : start + step]
            sums.update(parent[chunk], child[chunk])
        return sums.correlation(std_guard).abs()

    return _class_mean(labels, one_class)


def _class_mean(labels: torch.Tensor, per_class: Callable[[torch.Tensor], torch.Tensor]) -> torch.Tensor:
    """The mean of ``per_class(sample indices of class c)`` over the classes with at least 2 samples."""
    values = [per_class(index) for c in _classes(labels)
              if (index := torch.nonzero(labels == c).view(-1)).numel() >= 2]
    if not values:
        raise UserError("connectivity needs at least 2 probe samples of some class; give a larger probe set")
    return torch.stack(values).mean(dim=0)


def linfoot(mi_nats: torch.Tensor) -> torch.Tensor:
    """Linfoot's informational coefficient of correlation ``sqrt(1 - exp(-2 I))`` ∈ [0, 1] (|ρ| for Gaussians)."""
    return torch.sqrt((1.0 - torch.exp(-2.0 * mi_nats.clamp_min(0.0))).clamp_min(0.0))


def _mi_class(parent: torch.Tensor, child: torch.Tensor, std_guard: float, seed: int,
              options: Mapping[str, Any]) -> torch.Tensor:
    """``(n_c, n_p)`` Linfoot coefficients of the EDGE MI for one class's samples (dead units → 0)."""
    parent, child = parent.to(torch.float64), child.to(torch.float64)
    n, n_p, n_c = parent.shape[0], parent.shape[1], child.shape[1]
    result = torch.zeros(n_c, n_p, dtype=torch.float64, device=parent.device)
    live_p = torch.nonzero(parent.std(0, unbiased=False) >= std_guard).view(-1)
    live_c = torch.nonzero(child.std(0, unbiased=False) >= std_guard).view(-1)
    if live_p.numel() == 0 or live_c.numel() == 0:
        return result
    jj, ii = torch.meshgrid(live_c, live_p, indexing="ij")
    jj, ii = jj.reshape(-1), ii.reshape(-1)
    per_call = max(1, _MI_CHUNK_ELEMENTS // n)
    values = []
    for start in range(0, jj.numel(), per_call):
        j, i = jj[start : start + per_call], ii[start : start + per_call]
        xs = parent[:, i].T.unsqueeze(-1)  # (P, N, 1)
        ys = child[:, j].T.unsqueeze(-1)
        values.append(mutual_information.edge_mi_batched(xs, ys, seed=seed, **options))
    result[jj, ii] = linfoot(torch.cat(values).to(result.device))
    return result


def mi_connectivity(parent: torch.Tensor, child: torch.Tensor, labels: torch.Tensor, *,
                    std_guard: float = STD_GUARD, seed: int = 0,
                    options: Mapping[str, Any] | None = None) -> torch.Tensor:
    """The MI variant of :func:`pearson_connectivity`: per-class EDGE MI → Linfoot coefficient, class mean."""
    return _class_mean(labels, lambda index: _mi_class(parent[index], child[index], std_guard, seed, options or {}))


def train_ghost(initial: torch.Tensor, cross: torch.Tensor, parent: torch.Tensor, steps: int,
                rate: float = 0.5) -> torch.Tensor:
    """Train a ghost matrix from its initial connectivities; returns ``|G_T|`` (docs/methods/gcnet.md §2 "Training
    the ghost", **reconstructed**: the abstracts call the connectivities the ghost's *initial* weights, the
    objective is not known).

    Objective: the ghost layer as a linear map between the per-class standardised activations of consecutive
    layers, ``L(G) = (1/|C|) Σ_c E_{s ∈ P_c} ‖z_s − G x_s‖²`` (``x``: parent units, ``z``: child units, each
    standardised within class c with the std guard), whose gradient needs only ``R̄ = mean_c ρ_c(z, x)``
    (``cross``) and ``P̄ = mean_c ρ_c(x, x)`` (``parent``): ``∇L = 2 (G P̄ − R̄)``. ``steps`` steps of gradient
    descent from ``G_0 = initial`` with step ``rate / (2 λ_max(P̄))`` (stable for ``0 < rate < 2``); the magnitude
    pruning then reads ``|G_T|``. ``steps = 0`` returns ``initial``.
    """
    if steps < 0 or not 0.0 < rate < 2.0:
        raise UserError(f"ghost training needs steps ≥ 0 and 0 < rate < 2, got steps={steps}, rate={rate}; pass "
                        "e.g. --param ghost_steps=50 --param ghost_rate=0.5")
    ghost = initial.to(torch.float64).clone()
    if steps == 0:
        return ghost
    cross, parent = cross.to(torch.float64), parent.to(torch.float64)
    largest = float(torch.linalg.eigvalsh(parent).max()) if parent.numel() else 0.0
    if largest <= 0.0:  # every parent unit constant: the objective does not depend on G
        return ghost.abs()
    step = rate / largest
    for _ in range(steps):
        ghost -= step * (ghost @ parent - cross)
    return ghost.abs()


# ------------------------------------------------------------------------------------------------- the probe set
def probe_indices(labels: torch.Tensor, per_class: int, seed: int = 0) -> dict[int, torch.Tensor]:
    """Class → ``min(per_class, available)`` sample indices drawn without replacement (seeded, sorted).

    docs/methods/gcnet.md §3 step 2: ``N_probe`` samples per class from the *training* set.
    """
    if per_class < 2:
        raise UserError(f"probe set: per_class must be at least 2 (a correlation needs 2 samples), got {per_class}")
    generator = torch.Generator().manual_seed(seed)
    drawn = {}
    labels = labels.cpu()
    for c in _classes(labels):
        index = torch.nonzero(labels == c).view(-1)
        order = torch.randperm(index.numel(), generator=generator)[:per_class]
        drawn[c] = index[order].sort().values
    return drawn


# ------------------------------------------------------------------------------------------ activations of a model
def _reduce(tensor: torch.Tensor, features_per_channel: int) -> torch.Tensor:
    """Per-sample channel means: ``(B, C, H, W)`` → mean over H, W; ``(B, T, C)`` tokens → mean over T; ``(B, C·k)``
    flatten → mean over each block."""
    if tensor.dim() == 4:
        return tensor.mean(dim=(2, 3))
    if tensor.dim() == 3:
        return tensor.mean(dim=1)
    if tensor.dim() == 2:
        if features_per_channel == 1:
            return tensor
        return tensor.reshape(tensor.shape[0], -1, features_per_channel).mean(dim=2)
    raise UserError(f"connectivity supports conv (B, C, H, W), token (B, T, C) and linear (B, F) activations, got a "
                    "tensor of shape "
                    f"{tuple(tensor.shape)}")


@dataclass(frozen=True)
class _Site:
    """Where one activation is read: the input (pre-hook) or the output (hook) of a module."""

    module: str
    where: Literal["input", "output"]
    features_per_channel: int = 1
    channels: tuple[int, ...] | None = None
    """The reduced channels to keep, in order (a reader that also reads other producers, e.g. a concatenation)."""


def _sites(graph: ModelGraph, layers: list[GhostLayer], site: Site) -> dict[str, tuple[_Site, _Site]]:
    """Child → (parent activation site, child activation site)."""
    sites = {}
    for layer in layers:
        if site == "post":
            parent = _Site(layer.child, "input", layer.features_per_channel)
            readers = graph.reads_of(layer.child)  # what the child's first reader sees of it
            reader = next((name for name in graph.layers if name in readers), None)
            if reader is None:
                child = _Site(layer.child, "output")
            else:
                columns = readers[reader]
                block = len(columns[0])
                child = _Site(reader, "input", block, tuple(per_channel[0] // block for per_channel in columns))
        elif site == "module":
            parent = _Site(layer.parents[-1], "output")
            child = _Site(layer.child, "output")
        else:
            raise UserError(f"activation site must be 'post' or 'module', got {site!r}")
        sites[layer.child] = (parent, child)
    return sites


class _Recorder:
    """Forward (pre-)hooks that keep the current batch's reduced activations at every site."""

    def __init__(self, model: nn.Module, sites: set[_Site]) -> None:
        self.values: dict[_Site, torch.Tensor] = {}
        self.handles = []
        modules = dict(model.named_modules())
        for s in sites:
            module = modules[s.module]
            if s.where == "input":
                self.handles.append(module.register_forward_pre_hook(self._pre(s)))
            else:
                self.handles.append(module.register_forward_hook(self._post(s)))

    def _pre(self, s: _Site):  # noqa: ANN202 - hook factory
        def hook(module: nn.Module, args: tuple[torch.Tensor, ...]) -> None:
            reduced = _reduce(args[0].detach(), s.features_per_channel).to(torch.float64)
            self.values[s] = reduced if s.channels is None else reduced[:, list(s.channels)]
        return hook

    def _post(self, s: _Site):  # noqa: ANN202 - hook factory
        def hook(module: nn.Module, args: object, output: torch.Tensor) -> None:
            self.values[s] = _reduce(output.detach(), s.features_per_channel).to(torch.float64)
        return hook

    def close(self) -> None:
        for handle in self.handles:
            handle.remove()


@dataclass
class ConnectivityResult:
    """Ghost matrices and how they were measured."""

    ghosts: dict[str, torch.Tensor]
    """Child layer → ``G (units, channels)`` float64 on the CPU, values in [0, 1]."""
    layers: list[GhostLayer]
    probe_per_class: dict[int, int]
    """Class → probe samples used."""
    seconds: float
    forward_seconds: float = 0.0
    """Of which: model forward passes over the probe set (the rest is the reduction and correlation)."""
    settings: dict[str, Any] = field(default_factory=dict)
    cross: dict[str, torch.Tensor] = field(default_factory=dict)
    """With ``moments``: child layer → ``R̄ = mean_c ρ_c (units, channels)``, signed Pearson correlations."""
    parent_moments: dict[str, torch.Tensor] = field(default_factory=dict)
    """With ``moments``: child layer → ``P̄ = mean_c`` correlation matrix of its input channels ``(channels,
    channels)`` (1 on the diagonal of live channels, 0 for constant ones)."""


def _class_batches(data: ImageData, index: torch.Tensor, batch_size: int,
                   device: torch.device | str) -> Iterator[torch.Tensor]:
    subset = ImageData(data.images[index], data.labels[index], data.info, data.split)
    for x, _ in Batches(subset, batch_size, shuffle=False, device=device):
        yield x


def network_connectivity(
    model: nn.Module,
    data: ImageData,
    graph: ModelGraph,
    *,
    layers: list[GhostLayer] | None = None,
    per_class: int = 100,
    site: Site = "post",
    measure: Measure = "pearson",
    std_guard: float = STD_GUARD,
    batch_size: int = 256,
    seed: int = 0,
    device: torch.device | str | None = None,
    mi_options: Mapping[str, Any] | None = None,
    moments: bool = False,
) -> ConnectivityResult:
    """Ghost matrices of every layer in ``layers`` (default :func:`ghost_layers`) on a probe set of ``data``.

    docs/methods/gcnet.md §3 steps 2–4: ``per_class`` training samples per class (seeded), ``model.eval()``, no
    gradients, one pass over the probe set class by class; activations are reduced to channel means in the hooks and
    folded into per-class streaming sums (Pearson) or kept for the current class only (MI). ``moments`` also
    returns the class means of the signed child–parent and the parent–parent correlations (for
    :func:`train_ghost`; ``n_p × n_p`` more numbers per layer).
    """
    if measure not in ("pearson", "mi"):
        raise UserError(f"connectivity measure must be 'pearson' or 'mi', got {measure!r}")
    started = time.perf_counter()
    layers = ghost_layers(graph) if layers is None else layers
    if device is None:
        reference = next(iter(model.parameters()), None)
        device = reference.device if reference is not None else torch.device("cpu")
    sites = _sites(graph, layers, site)
    recorder = _Recorder(model, {s for pair in sites.values() for s in pair})
    probe = probe_indices(data.labels, per_class, seed)
    totals = {layer.child: torch.zeros(layer.units, layer.channels, dtype=torch.float64, device=device)
              for layer in layers}
    cross = {layer.child: torch.zeros_like(totals[layer.child]) for layer in layers} if moments else {}
    parents = {layer.child: torch.zeros(layer.channels, layer.channels, dtype=torch.float64, device=device)
               for layer in layers} if moments else {}
    used = 0
    forward_seconds = 0.0
    was_training = model.training
    model.eval()
    try:
        for c, index in probe.items():
            if index.numel() < 2:
                continue
            sums = {layer.child: MomentSums(layer.channels, layer.units, device, parent_cross=moments)
                    for layer in layers}
            kept: dict[str, list[tuple[torch.Tensor, torch.Tensor]]] = {layer.child: [] for layer in layers}
            for x in _class_batches(data, index, batch_size, device):
                tick = time.perf_counter()
                with torch.no_grad():
                    model(x)
                forward_seconds += time.perf_counter() - tick
                for layer in layers:
                    parent_site, child_site = sites[layer.child]
                    parent, child = recorder.values[parent_site], recorder.values[child_site]
                    _check_widths(layer, parent, child)
                    if measure == "pearson" or moments:
                        sums[layer.child].update(parent, child)
                    if measure == "mi":
                        kept[layer.child].append((parent, child))
                recorder.values.clear()
            for layer in layers:
                _add_class(layer.child, sums[layer.child], kept[layer.child], (totals, cross, parents), measure,
                           std_guard, seed, mi_options or {})
            used += 1
    finally:
        recorder.close()
        model.train(was_training)
    if used == 0:
        raise UserError("connectivity needs at least 2 probe samples of some class; the probe data has fewer")
    ghosts = {name: (total / used).cpu() for name, total in totals.items()}
    return ConnectivityResult(
        ghosts=ghosts, layers=layers, probe_per_class={c: int(i.numel()) for c, i in probe.items()},
        seconds=time.perf_counter() - started, forward_seconds=forward_seconds,
        cross={name: (total / used).cpu() for name, total in cross.items()},
        parent_moments={name: (total / used).cpu() for name, total in parents.items()},
        settings={"measure": measure, "site": site, "std_guard": std_guard, "per_class": per_class, "seed": seed})


def _add_class(child: str, sums: MomentSums, kept: list[tuple[torch.Tensor, torch.Tensor]],
               accumulators: tuple[dict[str, torch.Tensor], ...], measure: Measure, std_guard: float, seed: int,
               mi_options: Mapping[str, Any]) -> None:
    """Add one class's connectivity of layer ``child`` to the running totals (and, where ``moments`` asked for
    them, i.e. ``cross`` holds the layer, its signed child–parent and parent–parent correlations)."""
    totals, cross, parents = accumulators
    signed = sums.correlation(std_guard) if measure == "pearson" or child in cross else None
    if measure == "pearson":
        totals[child] += signed.abs()
    else:
        parent = torch.cat([p for p, _ in kept])
        activations = torch.cat([q for _, q in kept])
        totals[child] += _mi_class(parent, activations, std_guard, seed, mi_options)
    if child in cross:
        cross[child] += signed
        parents[child] += sums.parent_correlation(std_guard)


def _check_widths(layer: GhostLayer, parent: torch.Tensor, child: torch.Tensor) -> None:
    if parent.shape[1] != layer.channels or child.shape[1] != layer.units:
        raise UserError(f"layer {layer.child!r}: measured activations of widths {parent.shape[1]} → "
                        f"{child.shape[1]} but the layer connects {layer.channels} channels to {layer.units} "
                        "units; with site='module' the parent's output must be what the layer reads — use "
                        "site='post'")


__all__ = ["STD_GUARD", "ConnectivityResult", "GhostLayer", "Measure", "MomentSums", "Site", "ghost_layers",
           "linfoot", "mi_connectivity", "network_connectivity", "pearson_connectivity", "probe_indices", "train_ghost"]
