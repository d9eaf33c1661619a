"""Skip branches as a structural edit: N2NSkip's sparse neuron-to-neuron skips and ResNet-style dense skips.

Subramaniam & Sharma, "N2NSkip: Learning Highly Sparse Networks using Neuron-to-Neuron Skip Connections", BMVC 2020
(arXiv 2208.03662), Section 3.1:

- N2NSkip, Eq. (2): ``a^{l+k} = g(z^{l+k} + g(conv_s(a^l)))``, ``conv_s`` a *sparse* convolution (a sparse linear
  map in an MLP) with its own trainable weights. The branch here is ``conv_s → BN → ReLU (→ max-pool)`` as in the
  code release's ``vggskip16``; its mask is chosen at channel level (a kept connection ``i → j`` keeps the whole
  kernel slice ``W_s[j, i, :, :]``), so it is constant over kernel positions, and stays fixed during training.
- ResSkip, Eq. (1): ``a^{l+k} = g(z^{l+k} + a^l)``, dense and parameter-free (the paper's comparison, Section 4.1).
  Shape mismatches (reconstructed: not stated in the paper) are bridged without parameters: average pooling to the
  target's spatial size and zero-padding of the channels (option A of He et al. 2016); a site whose source has more
  units than its target cannot be bridged this way and is left out by :func:`plan`.

A branch reads ``a^l``, the *input* of its source layer, and is added to ``z^{l+k}``, the pre-activation of its
target layer (after the target's BatchNorm, where it has one). The edit spec (plain JSON, recorded on the model and
replayed by :func:`connprune.checkpoint.load`) is::

    {"op": "skip", "name": "0", "kind": "n2n" | "res", "source": LAYER, "target": LAYER,
     "add_to": MODULE | "", "in_units": C_in, "out_units": C_out, "kernel_size": f, "stride": s,
     "output_size": [H, W] | null, "connections": n_pairs, "seed": seed,
     "layout": "uniform" | "fan-in", "bridge": "conv-pool" | "pool-conv"}

(a spec without ``bridge``, as older checkpoints hold, is ``conv-pool``).

``add_to`` names the activation module (a ``nn.ReLU``) whose *input* receives the branch (a forward pre-hook, so
that in a residual block the branch is summed with the identity shortcut before the block's last ReLU), or ``""``
when the target is the network's output layer (the branch is added to the model's output). The branch modules are
:class:`SkipBranch` instances in ``model.skips`` (an ``nn.ModuleDict``); :func:`skip_module_names` finds them by type
(never by name), so :mod:`connprune.measure.sparsity` leaves them out of the prunable weights and
:mod:`connprune.measure.heat` adds their edges to the unit graph. Hooks are bound methods of the branch
modules, so ``copy.deepcopy`` of the model keeps them pointing at the copied branches.

Placement (:func:`plan`; reconstructed where the paper is silent, see docs/methods/n2nskip.md §3 step 2):

- ``chain`` (the default when the graph has no residual adds: plain conv nets and MLPs; one skip per block, the
  paper's Fig. 2 — a skip across three conv layers — and the code release's one skip per VGG block): walking the
  weight layers in forward order, a skip is placed from a layer's input to the pre-activation of the layer k − 1
  further on (``span`` = k, default 3) where both are convs or both linear layers, and the next block starts after
  it; where none fits (a conv → linear boundary) the walk moves on one layer. With ``auto`` only, a network too
  short for any span-k site gets the longest shorter span that places one; the span used is in every site (and
  spec). ``every``: one skip starting at every weight layer (overlapping spans), an option: on VGG-19 with SNIP at
  5 % density it reaches every layer (binary F 1.1e-4 at t_sat vs chain's 1.9e-2, plain SNIP's 8.5e-3; weighted F
  at t* 0.011 vs 0.026 and 0.016; ``benchmarks/results/reproduce_n2nskip.md``) but holds about 3× as many skip
  tensors.
- ``blocks`` (the default for residual networks): one skip per residual block, from the block input (the input of
  its ``conv1``) to its last conv (``conv2`` of a basic block, ``conv3`` of a bottleneck), summed with the identity
  shortcut before the block's final ReLU; the spatial reduction is done by the branch conv's stride.

Spatial mismatches in chains (VGG's max-pools inside a span) are bridged as in the code release:
``pool(relu(bn(conv_s(a^l))))`` with a max-pool to the target's size (spec ``"bridge": "conv-pool"``, the default).
``"bridge": "pool-conv"`` (ours, an option) max-pools ``a^l`` to the target's size first and runs ``conv_s`` there:
``relu(bn(conv_s(pool(a^l))))``, so the branch's multiply-adds follow the target's positions, not the source's
(a skip from a VGG's 32×32 input to its 8×8 third stage costs 16× less).
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Literal, get_args

import torch
import torch.nn.functional as F
from torch import nn

from connprune.errors import UserError
from connprune.graph import ExampleInputs, build, for_model, probe
from connprune.surgery import edits

CONTAINER = "skips"
"""Attribute of the model holding the branches (an ``nn.ModuleDict`` of :class:`SkipBranch` modules)."""

Placement = Literal["auto", "chain", "every", "blocks"]
Layout = Literal["uniform", "fan-in"]
"""How a sparse branch's connections are spread over its unit pairs (:func:`connection_mask`)."""
Bridge = Literal["conv-pool", "pool-conv"]
"""Where a chain branch crossing pools is pooled: after ``conv_s`` (the code release) or before it (ours)."""
BRIDGES = get_args(Bridge)
LAYOUTS: tuple[str, ...] = get_args(Layout)


@dataclass(frozen=True)
class SkipSite:
    """Where one skip goes and the shapes it bridges (the part of an edit spec that :func:`plan` decides)."""

    source: str
    """Weight layer whose input is the skip's input ``a^l``."""
    target: str
    """Weight layer whose pre-activation ``z^{l+k}`` receives the skip."""
    add_to: str
    """Activation module whose input receives the branch; ``""`` = the model's output."""
    in_units: int
    out_units: int
    kernel_size: int
    """Branch conv kernel (1 for linear branches)."""
    stride: int
    output_size: tuple[int, int] | None
    """Target's spatial size (``None`` for linear branches)."""
    conv: bool
    span: int = 3
    """Weight layers the skip spans (k)."""

    @property
    def kernel_area(self) -> int:
        """Weights per connection (kept unit pair): ``f·f`` for a conv branch, 1 for a linear one."""
        return self.kernel_size * self.kernel_size if self.conv else 1

    @property
    def pairs(self) -> int:
        """Unit pairs (connections) the branch could hold: ``out_units · in_units``."""
        return self.in_units * self.out_units

    def spec(self, name: str, kind: Literal["n2n", "res"], connections: int = 0, seed: int = 0,
             layout: Layout = "uniform", bridge: Bridge = "conv-pool") -> dict[str, Any]:
        """The JSON edit spec for this site (without ``op``, as :attr:`PruningResult.skips` holds it)."""
        return {"name": name, "kind": kind, "source": self.source, "target": self.target, "add_to": self.add_to,
                "in_units": self.in_units, "out_units": self.out_units, "kernel_size": self.kernel_size,
                "stride": self.stride, "output_size": list(self.output_size) if self.output_size else None,
                "connections": int(connections), "seed": int(seed), "span": self.span, "layout": layout,
                "bridge": bridge}


def _trace(model: nn.Module, example_inputs: ExampleInputs) -> tuple[list[str], dict[str, tuple[int, ...]],
                                                                      dict[str, tuple[int, ...]]]:
    """Leaf modules in execution order with their input and output shapes (one forward pass, batch of 2)."""
    order: list[str] = []
    in_shapes: dict[str, tuple[int, ...]] = {}
    out_shapes: dict[str, tuple[int, ...]] = {}
    handles = []

    def recorder(name: str):
        def hook(module: nn.Module, inputs: tuple, output: torch.Tensor) -> None:
            order.append(name)
            in_shapes[name] = tuple(inputs[0].shape[1:])
            out_shapes[name] = tuple(output.shape[1:])
        return hook

    inside = skip_module_names(model)
    for name, module in model.named_modules():
        if name and not list(module.children()) and name not in inside:
            handles.append(module.register_forward_hook(recorder(name)))
    was_training = model.training
    model.eval()
    try:
        with torch.no_grad():
            model(*probe(for_model(model, example_inputs), batch=2))
    finally:
        for handle in handles:
            handle.remove()
        model.train(was_training)
    return order, in_shapes, out_shapes


def _activation_after(order: list[str], modules: Mapping[str, nn.Module], target: str,
                      output_layers: Sequence[str]) -> str:
    """The ReLU that turns ``target``'s pre-activation into its activation (``""``: target is an output layer)."""
    if target in output_layers:
        return ""
    position = order.index(target) + 1
    if position < len(order) and isinstance(modules[order[position]], nn.modules.batchnorm._BatchNorm):
        position += 1
    if position < len(order) and isinstance(modules[order[position]], nn.ReLU):
        return order[position]
    raise UserError(f"layer {target!r} is not followed by (BatchNorm and) a ReLU module, so a skip cannot be "
                    "added to its pre-activation; choose another span or placement")


def _site(model: nn.Module, source: str, target: str, order: list[str], in_shapes: Mapping[str, tuple[int, ...]],
          out_shapes: Mapping[str, tuple[int, ...]], output_layers: Sequence[str], kernel_size: int | None,
          use_stride: bool, span: int) -> SkipSite | None:
    modules = dict(model.named_modules())
    src, dst = modules[source], modules[target]
    src_shape, dst_shape = in_shapes[source], out_shapes[target]
    if isinstance(src, nn.Conv2d) and isinstance(dst, nn.Conv2d):
        kernel = kernel_size if kernel_size is not None else src.kernel_size[0]
        stride = 1
        if use_stride and src_shape[1] > dst_shape[1]:
            stride = max(1, round(src_shape[1] / dst_shape[1]))
        return SkipSite(source, target, _activation_after(order, modules, target, output_layers), src.in_channels,
                        dst.out_channels, kernel, stride, (dst_shape[1], dst_shape[2]), conv=True, span=span)
    if isinstance(src, nn.Linear) and isinstance(dst, nn.Linear):
        return SkipSite(source, target, _activation_after(order, modules, target, output_layers), src.in_features,
                        dst.out_features, 1, 1, None, conv=False, span=span)
    return None


def plan(model: nn.Module, example_inputs: ExampleInputs, span: int = 3, placement: Placement = "auto",
         kernel_size: int | None = None) -> list[SkipSite]:
    """Skip sites for ``model`` (see the module docstring), derived from its layer graph (:func:`graph.build`).

    ``span``: k, the number of weight layers a ``chain`` skip spans (the paper's Fig. 2: 3). ``kernel_size``:
    the branch convs' kernel (``None``: the source layer's kernel, 3 in VGG, 1 in a bottleneck).
    """
    if span < 2:
        raise UserError(f"a skip must span at least 2 weight layers (span={span}); the paper uses 3")
    with detached(model):
        graph = build(model, example_inputs)
        order, in_shapes, out_shapes = _trace(model, example_inputs)
    layers = list(graph.layers)  # the branches are detached: only the network's own layers
    residual = any(pair.residual for pair in graph.pairs)
    shorter_allowed = placement == "auto"
    if placement == "auto":
        placement = "blocks" if residual else "chain"
    sites: list[SkipSite] = []
    if placement in ("chain", "every"):
        if residual:
            raise UserError("placement='chain'/'every' needs a plain chain of layers; this model has residual adds "
                            "— use placement=blocks")
        spans = range(span, 1, -1) if shorter_allowed else (span,)
        for length in spans:  # auto: the longest span ≤ ``span`` that places at least one skip
            start = 0
            while start + length <= len(layers):
                site = _site(model, layers[start], layers[start + length - 1], order, in_shapes, out_shapes,
                             graph.output_layers, kernel_size, use_stride=False, span=length)
                if site is not None:
                    sites.append(site)
                # chain: the next block starts after this one (or at the next layer where none fits here)
                start += length if site is not None and placement == "chain" else 1
            if sites:
                break
    elif placement == "blocks":
        for name, module in model.named_modules():
            if not (hasattr(module, "downsample") and hasattr(module, "conv1") and hasattr(module, "conv2")):
                continue
            last = "conv3" if hasattr(module, "conv3") else "conv2"
            site = _site(model, f"{name}.conv1", f"{name}.{last}", order, in_shapes, out_shapes,
                         graph.output_layers, kernel_size, use_stride=True, span=3 if last == "conv3" else 2)
            if site is not None:
                sites.append(site)
        if not sites:
            raise UserError("placement='blocks' found no residual blocks (modules with conv1, conv2 and "
                            "downsample, as connprune's ResNets have); "
                            + ("this model has residual adds elsewhere, so no skip site can be chosen for it: "
                               "N2NSkip applies to plain chains of layers and to such residual blocks"
                               if residual else "use placement=chain for plain networks"))
    else:
        raise UserError(f"unknown skip placement {placement!r}; choose auto, chain, every or blocks")
    if not sites:
        raise UserError(f"no skip fits this model with span={span} and placement={placement!r}: a site needs "
                        f"{span} consecutive weight layers starting and ending with the same kind (conv or linear)")
    return sites


# --- the branches -----------------------------------------------------------------------------------------------

class SkipBranch(nn.Module):
    """Base of every skip branch (how connprune tells added branches from the network's own layers). Common part:
    remembers ``a^l`` (pre-hook on the source) and adds the branch output at ``add_to``."""

    def __init__(self) -> None:
        super().__init__()
        self._remembered: torch.Tensor | None = None
        self.attached = True
        """False inside :func:`detached`: the hooks do nothing (the model computes its sequential network)."""

    def remember(self, module: nn.Module, inputs: tuple) -> None:
        """Forward pre-hook on the source layer: keep its input ``a^l`` for this forward pass."""
        if self.attached:
            self._remembered = inputs[0]

    def _take(self) -> torch.Tensor:
        remembered, self._remembered = self._remembered, None
        if remembered is None:
            raise RuntimeError("skip branch ran before its source layer; the skip plan does not match the model")
        return remembered

    def inject(self, module: nn.Module, inputs: tuple) -> tuple:
        """Forward pre-hook on the target's activation: ``z^{l+k} + branch(a^l)``."""
        if not self.attached:
            return None
        return (inputs[0] + self(self._take()),) + tuple(inputs[1:])

    def inject_output(self, module: nn.Module, inputs: tuple, output: torch.Tensor) -> torch.Tensor:
        """Forward hook on the model when the target is the output layer."""
        if not self.attached:
            return None
        return output + self(self._take())


class SparseSkip(SkipBranch):
    """N2NSkip branch ``g(bn(conv_s(a^l)))`` (Eq. 2), max-pooled to the target's size where a chain crosses pools.

    Its weight is stored dense (``conv.weight``, masked) and runs as a dense masked conv in training and evaluation
    (the fastest on a CPU: the compact form below took 1.7–2.5× as long on VGG-19 / VGG-11 here). Inside
    :func:`compact` the branch runs compactly instead, so that its cost follows its non-zeros: each target unit ``j``
    reads only its kept source units (``sources[j]``, padded to the largest fan-in ``F``), gathered from ``a^l`` and
    convolved as a grouped conv with one group per target unit. :func:`connprune.measure.cost.count_macs` counts the
    MACs inside :func:`compact`, so it reports ``out_units · F · f² · positions`` multiply-adds for the branch:
    exactly its non-zero weights × output positions when every target unit has the same fan-in (``layout=fan-in``
    with ``connections`` a multiple of ``out_units``), at most ``out_units · f² · positions`` more otherwise, and the
    dense count when a branch keeps every pair. The compact and the dense computation give the same output (weights
    outside the mask are kept at zero by :class:`connprune.surgery.MaskEnforcer`)."""

    def __init__(self, site_spec: Mapping[str, Any]) -> None:
        super().__init__()
        in_units, out_units = int(site_spec["in_units"]), int(site_spec["out_units"])
        self.output_size = tuple(site_spec["output_size"]) if site_spec.get("output_size") else None
        bridge = site_spec.get("bridge", "conv-pool")
        if bridge not in BRIDGES:
            raise UserError(f"skip {site_spec.get('name')!r}: unknown bridge {bridge!r}; choose {' or '.join(BRIDGES)}")
        self.pool_first = bridge == "pool-conv"
        """Max-pool ``a^l`` to the target's size before ``conv_s`` (``bridge="pool-conv"``) instead of after."""
        if self.output_size is not None:
            kernel = int(site_spec["kernel_size"])
            self.conv = nn.Conv2d(in_units, out_units, kernel, stride=int(site_spec["stride"]), padding=kernel // 2,
                                  bias=False)
            self.bn = nn.BatchNorm2d(out_units)
            nn.init.kaiming_normal_(self.conv.weight, mode="fan_out", nonlinearity="relu")  # as the zoo's convs
        else:
            self.conv = nn.Linear(in_units, out_units, bias=False)
            self.bn = nn.BatchNorm1d(out_units)
        self.relu = nn.ReLU(inplace=False)
        self.sources: torch.Tensor | None = None
        """``[out, F]`` kept source units per target unit (padded); plain tensors, not buffers: derived from the
        spec's mask, never saved, moved to the input's device when used."""
        self.valid: torch.Tensor | None = None
        self.compact = False
        """True inside :func:`compact`: run the compact form."""

    def use_connections(self, mask: torch.Tensor) -> None:
        """Record the kept source units of every target unit from the connection ``mask`` (``[out, in(, f, f)]``),
        for the compact eval-mode computation (none when some target keeps every source, or none is kept)."""
        pairs = mask.reshape(*mask.shape[:2], -1)[..., 0]
        fan = int(pairs.sum(dim=1).max())
        if not 0 < fan < pairs.shape[1]:
            self.sources = self.valid = None
            return
        order = pairs.to(torch.int8).argsort(dim=1, descending=True, stable=True)[:, :fan]  # kept sources first
        self.valid = torch.gather(pairs, 1, order)
        self.sources = torch.where(self.valid, order, torch.zeros_like(order))

    def _compact(self, x: torch.Tensor) -> torch.Tensor:
        """``conv_s(x)`` as a gather of each target's sources and a grouped conv (one group per target unit)."""
        if self.sources.device != x.device:
            self.sources, self.valid = self.sources.to(x.device), self.valid.to(x.device)
        out_units, fan = self.sources.shape
        weight = self.conv.weight[torch.arange(out_units, device=x.device)[:, None], self.sources]
        weight = weight * self.valid.view(out_units, fan, *([1] * (weight.dim() - 2))).to(weight.dtype)
        gathered = x.index_select(1, self.sources.flatten())
        if isinstance(self.conv, nn.Conv2d):
            return F.conv2d(gathered, weight, stride=self.conv.stride, padding=self.conv.padding, groups=out_units)
        return F.conv1d(gathered.unsqueeze(-1), weight.unsqueeze(-1), groups=out_units).squeeze(-1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        compact = self.compact and self.sources is not None
        if self.pool_first and self.output_size is not None and tuple(x.shape[-2:]) != self.output_size:
            x = F.adaptive_max_pool2d(x, self.output_size)
        out = self.relu(self.bn(self._compact(x) if compact else self.conv(x)))
        if self.output_size is not None and tuple(out.shape[-2:]) != self.output_size:
            out = F.adaptive_max_pool2d(out, self.output_size)
        return out


class ResidualSkip(SkipBranch):
    """ResSkip branch (Eq. 1): ``a^l`` itself, average-pooled to the target's size and zero-padded in channels."""

    def __init__(self, site_spec: Mapping[str, Any]) -> None:
        super().__init__()
        self.in_units, self.out_units = int(site_spec["in_units"]), int(site_spec["out_units"])
        if self.in_units > self.out_units:
            raise UserError(f"a parameter-free skip cannot map {self.in_units} units onto {self.out_units}; "
                            "leave this site out or use an N2NSkip branch")
        self.output_size = tuple(site_spec["output_size"]) if site_spec.get("output_size") else None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.output_size is not None and tuple(x.shape[-2:]) != self.output_size:
            x = F.adaptive_avg_pool2d(x, self.output_size)
        pad = self.out_units - self.in_units
        if pad:
            x = F.pad(x, (0, 0, 0, 0, 0, pad) if x.dim() == 4 else (0, pad))
        return x


def connection_mask(site_spec: Mapping[str, Any], weight_shape: Sequence[int]) -> torch.Tensor:
    """The fixed keep-mask of a sparse branch: exactly ``connections`` random (out, in) unit pairs (seeded by the
    spec's ``seed``), each keeping its whole kernel slice, so the mask is constant over kernel positions.

    The spec's ``layout`` spreads them: ``uniform`` (default) draws the pairs uniformly among all ``out · in``;
    ``fan-in`` gives every target unit the same number of source units, ``connections // out`` (the first
    ``connections % out`` targets of a random order one more), as the authors' code release does — so every target
    unit receives a skip as soon as ``connections ≥ out_units``."""
    out_units, in_units = int(weight_shape[0]), int(weight_shape[1])
    connections = int(site_spec.get("connections", 0))
    layout = site_spec.get("layout", "uniform")
    if not 0 <= connections <= out_units * in_units:
        raise UserError(f"skip {site_spec.get('name')!r}: connections={connections} is outside [0, "
                        f"{out_units * in_units}] (out_units × in_units)")
    if layout not in LAYOUTS:
        raise UserError(f"skip {site_spec.get('name')!r}: unknown layout {layout!r}; choose {' or '.join(LAYOUTS)}")
    cpu = torch.device("cpu")  # on the CPU even where a checkpoint is built under torch.device("meta")
    generator = torch.Generator(cpu).manual_seed(int(site_spec.get("seed", 0)))
    if layout == "uniform":
        chosen = torch.randperm(out_units * in_units, generator=generator, device=cpu)[:connections]
        pairs = torch.zeros(out_units * in_units, dtype=torch.bool, device=cpu)
        pairs[chosen] = True
        pairs = pairs.view(out_units, in_units)
    else:
        fan_in = torch.full((out_units,), connections // out_units, device=cpu)
        fan_in[torch.randperm(out_units, generator=generator, device=cpu)[:connections % out_units]] += 1
        ranks = torch.rand(out_units, in_units, generator=generator, device=cpu).argsort(dim=1).argsort(dim=1)
        pairs = ranks < fan_in[:, None]
    return pairs.view(out_units, in_units, *([1] * (len(weight_shape) - 2))).expand(*weight_shape).clone()


_REQUIRED = ("name", "kind", "source", "target", "add_to", "in_units", "out_units")


def add_skip(model: nn.Module, spec: Mapping[str, Any], masks: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Structural edit ``skip``: add one branch (spec in the module docstring) and hook it into the forward pass.

    Returns ``masks`` plus the branch's fixed connection mask (N2NSkip); the masked branch weights are zeroed.
    """
    missing = [key for key in _REQUIRED if key not in spec]
    if missing:
        raise UserError(f"skip edit is missing {', '.join(missing)}; build skip specs with "
                        "connprune.surgery.skips.plan(...)[i].spec(...)")
    modules = dict(model.named_modules())
    for role in ("source", "target"):
        layer = modules.get(spec[role])
        if not isinstance(layer, (nn.Conv2d, nn.Linear)) or spec[role] in skip_module_names(model):
            raise UserError(f"skip {role} {spec[role]!r} is not a conv/linear layer of the model")
    if spec["add_to"] and not isinstance(modules.get(spec["add_to"]), nn.ReLU):
        raise UserError(f"skip add_to {spec['add_to']!r} is not a ReLU module of the model")
    name = str(spec["name"])
    if "." in name or not name:
        raise UserError(f"skip name {name!r} must be a non-empty name without dots")
    container = getattr(model, CONTAINER, None)
    if container is None:
        container = nn.ModuleDict()
        model.add_module(CONTAINER, container)
    elif not isinstance(container, nn.ModuleDict):
        raise UserError(f"the model already has an attribute {CONTAINER!r} that is not a skip container")
    if name in container:
        raise UserError(f"the model already has a skip named {name!r}")
    kind = spec["kind"]
    if kind == "n2n":
        branch: SkipBranch = SparseSkip(spec)
    elif kind == "res":
        branch = ResidualSkip(spec)
    else:
        raise UserError(f"unknown skip kind {kind!r}; choose n2n (sparse, Eq. 2) or res (dense, Eq. 1)")
    source_param = next(modules[spec["source"]].parameters())
    branch.to(device=source_param.device, dtype=source_param.dtype)
    mask = connection_mask(spec, branch.conv.weight.shape) \
        if isinstance(branch, SparseSkip) else None  # validates ``connections`` before the model changes
    container[name] = branch
    modules[spec["source"]].register_forward_pre_hook(branch.remember)
    if spec["add_to"]:
        modules[spec["add_to"]].register_forward_pre_hook(branch.inject)
    else:
        model.register_forward_hook(branch.inject_output)
    masks = dict(masks)
    if mask is not None:
        key = f"{CONTAINER}.{name}.conv.weight"
        with torch.no_grad():
            branch.conv.weight.mul_(mask.to(branch.conv.weight.device, branch.conv.weight.dtype))
        branch.use_connections(mask)
        masks[key] = mask.to(source_param.device)
    return masks


def branches(model: nn.Module) -> dict[str, SkipBranch]:
    """The model's skip branches by name (empty for a model without skips)."""
    container = getattr(model, CONTAINER, None)
    if not isinstance(container, nn.ModuleDict):
        return {}
    return {name: branch for name, branch in container.items() if isinstance(branch, SkipBranch)}


@contextlib.contextmanager
def detached(model: nn.Module) -> Iterator[nn.Module]:
    """Within the block ``model`` is its sequential (pruned) network: the skip hooks do nothing and the branch
    container is taken off the module tree (so :func:`connprune.graph.build` traces, and caches, the sequential
    layers only, each residual add seen once). Used to derive the layer graph of a model that has skips."""
    found = list(branches(model).values())
    if not found:
        yield model
        return
    states = [branch.attached for branch in found]
    container = model._modules.pop(CONTAINER)
    for branch in found:
        branch.attached = False
    try:
        yield model
    finally:
        model._modules[CONTAINER] = container
        for branch, state in zip(found, states):
            branch.attached = state


def branch_edges(model: nn.Module, masks: Mapping[str, torch.Tensor] | None = None) \
        -> list[tuple[str, str, torch.Tensor]]:
    """``(source, target, weight [out, in(, f, f)])`` of every recorded skip, for the ``extra_edges`` of
    :func:`connprune.measure.heat.unit_graph`: a sparse branch's masked weight (its kernel slices are the edges), or
    for a ResSkip the identity map of unit ``i`` onto unit ``i`` (a dense parameter-free connection per unit)."""
    found = branches(model)
    edges = []
    for spec in edits.recorded(model):
        if spec.get("op") != "skip" or str(spec.get("name")) not in found:
            continue
        branch = found[str(spec["name"])]
        if isinstance(branch, SparseSkip):
            weight = branch.conv.weight.detach()
            key = f"{CONTAINER}.{spec['name']}.conv.weight"
            if masks is not None and key in masks:
                weight = weight * masks[key].to(weight.device, weight.dtype)
        else:
            weight = torch.eye(int(spec["out_units"]), int(spec["in_units"]))
        edges.append((str(spec["source"]), str(spec["target"]), weight))
    return edges


@contextlib.contextmanager
def compact(model: nn.Module) -> Iterator[nn.Module]:
    """Within the block every sparse branch of ``model`` runs compactly (:class:`SparseSkip`): the same outputs, at
    a cost of its non-zero weights × output positions (how :func:`connprune.measure.cost.count_macs` counts them)."""
    found = [branch for branch in branches(model).values() if isinstance(branch, SparseSkip)]
    states = [branch.compact for branch in found]
    for branch in found:
        branch.compact = True
    try:
        yield model
    finally:
        for branch, state in zip(found, states):
            branch.compact = state


def skip_module_names(model: nn.Module) -> set[str]:
    """Names of every module inside a :class:`SkipBranch` (the branches themselves included)."""
    roots = [name for name, module in model.named_modules() if isinstance(module, SkipBranch)]
    return {name for name, _ in model.named_modules() if any(name == r or name.startswith(f"{r}.") for r in roots)}


def skip_parameter_names(model: nn.Module) -> set[str]:
    """Names of the parameters of every skip branch."""
    inside = skip_module_names(model)
    return {name for name, _ in model.named_parameters() if name.rpartition(".")[0] in inside}


def skip_masks(model: nn.Module, masks: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """The masks of ``model``'s skip-branch weights among ``masks``."""
    inside = skip_parameter_names(model)
    return {name: mask for name, mask in masks.items() if name in inside}


__all__ = ["CONTAINER", "ResidualSkip", "SkipBranch", "SkipSite", "SparseSkip", "add_skip", "branch_edges",
           "branches", "compact", "connection_mask", "detached", "plan", "skip_masks", "skip_module_names",
           "skip_parameter_names"]
