"""What can be pruned together (channel groups) and what feeds what (layer pairs), from torch-pruning's trace.

:func:`build` traces a model once with torch-pruning's ``DependencyGraph`` (autograd-based, no second tracer here)
and summarises it for the pruning methods:

- ``layers``: conv/linear module names in execution order (forward hooks).
- ``groups``: one :class:`ChannelGroup` per set of coupled channels, i.e. torch-pruning's pruning group of a conv or
  linear layer's output channels. Channels coupled by a residual add form one group with several producers
  (``residual=True``); a depthwise conv ties its input and output channels, so it sits in the group of the layer
  that feeds it, both as a producer (its outputs are these channels) and as a consumer (it reads them). A group that
  reaches the model's output (the classifier's classes) is not a group: those units can never be removed.
- ``pairs``: producer → consumer :class:`LayerPair` s. A consumer's parents are the producers whose outputs reach its
  input through parameter-free ops (BN counts as parameter-free here: it is per-channel) and **at most one residual
  add**: the direct summands of the stream value the consumer reads, not every producer that ever added into the
  stream. In a CIFAR ResNet, ``layer1.1.conv1``'s parents are ``layer1.0.conv2`` and the stem ``conv1`` (the two
  summands of block 0's add) and ``layer1.2.conv1``'s parent is ``layer1.1.conv2`` only (block 0's add is a second
  add on the identity path). This is the chain the connectivity papers use (GC-Net: "the block's output, same
  channels as the block's last conv, is the parent of the next block's first conv") plus the projection shortcuts.
  ``features_per_channel`` is 1 between convs and ``H*W`` through a flatten into a linear layer.

Only ``nn.Conv2d`` (plain or depthwise), ``nn.Linear`` and ``nn.BatchNorm1d/2d`` may carry parameters; anything
else with parameters (LSTM, attention, GroupNorm, LayerNorm, PReLU, a custom module with its own ``nn.Parameter``)
is a :class:`~connprune.errors.UserError`, as are grouped (non-depthwise) convs and modules called twice per
forward pass (shared weights).
"""

from __future__ import annotations

import contextlib
import warnings
from collections.abc import Iterator
from dataclasses import dataclass, field

import torch
import torch_pruning as tp
from torch import nn

from connprune.errors import UserError
from connprune.graph.inputs import ExampleInputs, describe, for_model

PRUNABLE = (nn.Conv2d, nn.Linear)
_BATCHNORM = (nn.BatchNorm1d, nn.BatchNorm2d)
_ADD_OPS = ("addbackward", "subbackward")


@dataclass(frozen=True)
class ChannelGroup:
    """Channels that are pruned together: removing channel ``i`` removes it from every layer listed."""

    root: str
    """A conv/linear module name whose output channels define the group (first producer in forward order)."""
    producers: tuple[str, ...]
    """Conv/linear layers whose OUTPUT channels are these channels (>1 non-depthwise = residual stream)."""
    consumers: tuple[str, ...]
    """Conv/linear layers whose INPUT channels are these channels (through BN, ReLU, pooling, flatten, adds,
    concatenations and splits: :meth:`ModelGraph.consumer_slices` maps each channel to the input columns that read
    it; a grouped conv's column is shared by its groups, channel ``c`` reading column ``c mod in/groups``)."""
    channels: int
    """Number of channels."""
    weights_per_channel: int
    """Prunable conv/linear weights removed with each channel (producers' rows + consumers' input slices)."""
    residual: bool
    """Several producers are summed (residual stream)."""
    blocks: int = 1
    """The channels form this many equal blocks (a grouped conv's groups, a GroupNorm's groups, attention heads)
    that must stay equal: a removal takes the same positions in every block."""
    exact: bool = True
    """Removing a channel computes what zeroing everything that reads it computes; False where a normalisation
    over the channels (LayerNorm, GroupNorm with several channels per group) couples them: a removal then changes
    the statistics of the channels that stay, so it has no masked equivalent (as in Torch-Pruning)."""
    coupled: tuple[str, ...] = ()
    """Other modules (norms, activations with parameters, attention, custom parameters) whose channel dimension
    is these channels: they shrink with the group."""
    tied: tuple[str, ...] = ()
    """Linear layers whose rows AND columns are these channels, called inside another module rather than traced
    as layers (an ``nn.MultiheadAttention``'s ``out_proj``, pruned with its embedding dimension)."""


@dataclass(frozen=True)
class LayerPair:
    """A producer → consumer pair: ``child`` reads ``parent``'s output channels."""

    parent: str
    """Producer conv/linear."""
    child: str
    """Consumer conv/linear reading ``parent``'s output channels."""
    features_per_channel: int
    """Child input features per parent channel (1 conv→conv; H*W conv→flatten→linear)."""
    residual: bool
    """``parent``'s output channels are on a residual stream."""


@dataclass
class _GroupDetail:
    """Per-group index maps (read through :meth:`ModelGraph.consumer_slices` and
    :meth:`ModelGraph.depthwise_members`)."""

    slices: dict[str, list[list[int]]]
    """Non-depthwise consumer → for each group channel, the consumer's input indices that read it."""
    depthwise: tuple[str, ...]
    """Depthwise convs inside the group (producers and consumers at once)."""


@dataclass
class ModelGraph:
    """The traced structure of a model. Build with :func:`build`; rebuild after the model changes shape."""

    model: nn.Module = field(repr=False)
    example_inputs: tuple[torch.Tensor, ...] = field(repr=False)
    """The inputs the model was traced on (batch of one)."""
    dg: tp.DependencyGraph = field(repr=False)
    """torch-pruning's dependency graph of ``model`` (stale once the model is shrunk)."""
    layers: list[str]
    groups: list[ChannelGroup]
    pairs: list[LayerPair]
    output_layers: tuple[str, ...] = ()
    """Conv/linear layers whose outputs reach the model's output (never prunable)."""
    input_layers: tuple[str, ...] = ()
    """Conv/linear layers whose output channels are tied to the model's input channels (never prunable)."""
    unmapped: dict[str, str] = field(default_factory=dict)
    """Conv/linear layers whose channels are coupled in an order connprune does not map → why (never pruned
    structurally; their weights are still prunable one by one)."""
    details: dict[str, _GroupDetail] = field(default_factory=dict, repr=False)
    """Group root → index maps (consumer slices, depthwise members)."""
    widths: dict[str, tuple[int, int]] = field(default_factory=dict, repr=False)
    """Layer → (in, out) width when the graph was built, to tell a stale graph."""
    fingerprint: tuple = field(default=(), repr=False)
    """Every module's name, identity and width when the graph was built (see :func:`build`'s cache)."""
    _by_producer: dict[str, ChannelGroup] = field(default_factory=dict, repr=False)

    def __post_init__(self) -> None:
        for group in self.groups:
            for producer in group.producers:
                self._by_producer[producer] = group

    def group_of(self, layer: str) -> ChannelGroup:
        """The group whose producers include ``layer`` (UserError for unknown names and output layers)."""
        if layer in self._by_producer:
            return self._by_producer[layer]
        if layer in self.output_layers:
            raise UserError(f"layer {layer!r} produces the model's output (its units are the classes), so its "
                            "units cannot be pruned; choose a hidden conv/linear layer")
        if layer in self.input_layers:
            raise UserError(f"layer {layer!r} has its output channels tied to the model's input channels (added "
                            "to the input, or depthwise over it), so they cannot be pruned; choose another layer")
        if layer in self.unmapped:
            raise UserError(f"{self.unmapped[layer]}; choose another layer")
        if layer in self.layers:  # pragma: no cover - every traced layer is a producer or an output layer
            raise UserError(f"layer {layer!r} has no prunable output channels")
        raise UserError(f"unknown layer {layer!r}; name a conv/linear module of the model, e.g. "
                        f"{', '.join(repr(n) for n in self.layers[:3])}")

    def producer_group(self, layer: str) -> ChannelGroup | None:
        """The group whose producers include ``layer``, or None (output layers, unknown names)."""
        return self._by_producer.get(layer)

    def consumer_slices(self, root: str) -> dict[str, list[list[int]]]:
        """Non-depthwise consumer of group ``root`` → for each group channel, the consumer's input indices that read
        it (one index between convs; the ``H*W`` block of a flatten for a linear consumer)."""
        return self.details[root].slices

    def reads_of(self, layer: str) -> dict[str, list[list[int]]]:
        """Consumers of ``layer``'s output channels → for each of its channels, the consumer's input columns that
        read it (through concatenations, flattens and residual adds); empty for an output layer."""
        group = self.producer_group(layer)
        return dict(self.consumer_slices(group.root)) if group is not None else {}

    def depthwise_members(self, root: str) -> tuple[str, ...]:
        """Depthwise convs inside group ``root`` (producers and consumers of its channels at once)."""
        return self.details[root].depthwise

    def batchnorm_after(self, layer: str) -> str | None:
        """The BatchNorm that directly and exclusively normalises ``layer``'s output (its only reader), if any."""
        node = self.dg.module2node.get(self.model.get_submodule(layer))
        if node is None or len(node.outputs) != 1:
            return None
        follower = node.outputs[0]
        if isinstance(follower.module, _BATCHNORM) and len(follower.inputs) == 1:
            return next(name for name, module in self.model.named_modules() if module is follower.module)
        return None

    @property
    def input_shape(self) -> tuple[int, ...]:
        """The (first) example input's shape without the batch dimension."""
        return tuple(self.example_inputs[0].shape[1:])

    def group_by_root(self, root: str) -> ChannelGroup:
        """The group rooted at ``root``."""
        for group in self.groups:
            if group.root == root:
                return group
        raise KeyError(root)

    def is_stale(self) -> bool:
        """Whether the model's layer widths changed since the graph was built."""
        modules = dict(self.model.named_modules())
        return any(name not in modules or _width(modules[name]) != width for name, width in self.widths.items())


def _width(module: nn.Module) -> tuple[int, int]:
    if isinstance(module, nn.Conv2d):
        return (module.in_channels, module.out_channels)
    return (module.in_features, module.out_features)


def is_depthwise(module: nn.Module) -> bool:
    """A conv whose every output channel reads exactly its own input channel (groups = in = out channels)."""
    return isinstance(module, nn.Conv2d) and module.groups > 1 and \
        module.groups == module.in_channels == module.out_channels


def is_grouped(module: nn.Module) -> bool:
    """A conv with ``groups > 1`` (depthwise included): an output channel reads only its group's inputs."""
    return isinstance(module, nn.Conv2d) and module.groups > 1


def check_supported(model: nn.Module) -> None:
    """Whatever Torch-Pruning's ``DependencyGraph`` traces can be described; nothing is refused up front. (Modules
    called twice per forward pass, i.e. shared weights, are refused when the model is traced.)"""


def channel_norm(module: object) -> bool:
    """A normalisation that mixes the channels it normalises: LayerNorm, or GroupNorm with several channels per
    group (one channel per group is per-channel, like BatchNorm)."""
    if isinstance(module, nn.LayerNorm):
        return True
    return isinstance(module, nn.GroupNorm) and module.num_channels != module.num_groups


@contextlib.contextmanager
def _tracing_state(model: nn.Module) -> Iterator[None]:
    """Let torch-pruning trace: grad on, every parameter requiring grad; restore modes and flags afterwards."""
    modes = {module: module.training for module in model.modules()}
    flags = {p: p.requires_grad for p in model.parameters()}
    try:
        for p in flags:
            p.requires_grad_(True)
        with torch.enable_grad():
            yield
    finally:
        for p, flag in flags.items():
            p.requires_grad_(flag)
        for module, mode in modes.items():
            module.training = mode


def _forward_order(model: nn.Module, example: tuple[torch.Tensor, ...]) -> list[str]:
    """Conv/linear names in execution order; UserError for a module called twice (shared weights)."""
    order: list[str] = []
    calls: dict[str, int] = {}
    names = {module: name for name, module in model.named_modules()}

    def hook(module: nn.Module, inputs: object, output: object) -> None:
        name = names[module]
        calls[name] = calls.get(name, 0) + 1
        if calls[name] == 1:
            order.append(name)

    handles = [m.register_forward_hook(hook) for m in model.modules() if isinstance(m, PRUNABLE)]
    modes = {module: module.training for module in model.modules()}
    try:
        model.eval()
        with torch.no_grad():
            model(*example)
    except (RuntimeError, ValueError, IndexError, TypeError) as exc:
        detail = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise UserError(f"the model cannot run on inputs of shape {describe(example)} ({detail}); pass the "
                        "example inputs it was built for: example_inputs=a tensor, or its (channels, height, "
                        "width)") from exc
    finally:
        for module, mode in modes.items():
            module.training = mode
        for handle in handles:
            handle.remove()
    shared = [name for name, count in calls.items() if count > 1]
    if shared:
        raise UserError(f"module {shared[0]!r} is called {calls[shared[0]]} times per forward pass (shared "
                        "weights); connprune can only prune modules used once — give each use its own module")
    return order


def _is_out(dg: tp.DependencyGraph, handler: object) -> bool:
    return dg.is_out_channel_pruning_fn(handler)


def _fingerprint(model: nn.Module) -> tuple:
    """Names, identities and widths of every module: equal fingerprints mean the same structure.

    Identities are safe to compare while the graph that recorded them is alive: it holds the modules, so their ids
    cannot be reused by new objects.
    """
    return tuple((name, id(m), _width(m) if isinstance(m, PRUNABLE) else None) for name, m in model.named_modules())


def _same_inputs(a: tuple[torch.Tensor, ...], b: tuple[torch.Tensor, ...]) -> bool:
    return len(a) == len(b) and all(x.shape == y.shape and x.dtype == y.dtype and x.device == y.device
                                    and torch.equal(x, y) for x, y in zip(a, b))


_last_built: ModelGraph | None = None
"""The most recent graph: a method and the surgery that follows it trace the same model once, not twice."""


def build(model: nn.Module, example_inputs: ExampleInputs) -> ModelGraph:
    """Trace ``model`` on ``example_inputs`` (a tensor, a tuple of tensors, or a shape ``(C, H, W)``; see
    :mod:`connprune.graph.inputs`) and return its :class:`ModelGraph`.

    The last graph built is reused while the model keeps its structure (same modules, same widths; weights may
    change) and the inputs are the same, so a method's trace is not repeated by the surgery that applies its result.
    """
    global _last_built
    example = for_model(model, example_inputs)
    last = _last_built
    if last is not None and last.model is model and _same_inputs(last.example_inputs, example) \
            and last.fingerprint == _fingerprint(model):
        return last
    _last_built = None  # release the previous model before tracing a new one
    _last_built = _trace(model, example)
    return _last_built


@dataclass
class _GroupScan:
    """What one torch-pruning pruning group says about a set of coupled channels."""

    producers: set[str] = field(default_factory=set)
    consumers: dict[str, tuple[list[int], list[int]]] = field(default_factory=dict)
    depthwise: set[str] = field(default_factory=set)
    coupled: set[str] = field(default_factory=set)
    tied: set[str] = field(default_factory=set)
    unmapped: str | None = None
    """Why the group cannot be pruned (producers coupled in an order connprune does not map), if it cannot."""
    blocks: int = 1
    exact: bool = True
    reaches_output: bool = False
    reaches_input: bool = False

    def note_member(self, dg: tp.DependencyGraph, item: tp.GroupItem, name: str | None) -> None:
        """Record a member that is not a conv/linear producer or consumer, and the channel blocks of every member
        (Torch-Pruning's in/out channel groups: grouped convs, GroupNorm, attention heads)."""
        module, handler = item.dep.target.module, item.dep.handler
        if not isinstance(module, nn.Module):
            if isinstance(module, nn.Parameter) and name is not None:
                self.coupled.add(name)
            return
        if name is not None and not isinstance(module, PRUNABLE):
            self.coupled.add(name)
        if name is not None and isinstance(module, nn.MultiheadAttention):
            self.tied.add(f"{name}.out_proj")
            self.blocks = max(self.blocks, module.num_heads)  # the embedding must stay divisible by the heads
            self.exact = False  # fewer dimensions per head change the scaling of the attention scores
        self.exact &= not channel_norm(module)
        if is_depthwise(module):
            return
        pruner = dg.get_pruner_of_module(module)
        if pruner is not None:
            get = pruner.get_out_channel_groups if dg.is_out_channel_pruning_fn(handler) \
                else pruner.get_in_channel_groups
            self.blocks = max(self.blocks, int(get(module)))


def _scan_group(dg: tp.DependencyGraph, root: str, module: nn.Module, names: dict[nn.Module, str],
                position: dict[str, int], modules: dict[str, nn.Module]) -> tuple[int, _GroupScan]:
    """The channels of ``root``'s output and every layer coupled to them (torch-pruning's group of all of them)."""
    pruner = dg.get_pruner_of_module(module)
    channels = pruner.get_out_channels(module)
    scan = _GroupScan()
    for item in dg.get_pruning_group(module, pruner.prune_out_channels, list(range(channels))):
        dep, idxs = item.dep, item.idxs
        target = dep.target
        if target.type == tp.ops.OPTYPE.OUTPUT or (not target.outputs and _is_out(dg, dep.handler)):
            scan.reaches_output = True  # these channels are (part of) the model's output
        if _reads_untraced(target):
            scan.reaches_input = True  # summed with (or depthwise over) the model's input or a constant
        member = names.get(target.module) if isinstance(target.module, nn.Module) else None
        scan.note_member(dg, item, member if member is not None else _parameter_name(dg, target.module))
        if member is None or member not in position:
            continue
        if is_depthwise(modules[member]):
            scan.depthwise.add(member)
            scan.producers.add(member)
        elif _is_out(dg, dep.handler):
            scan.producers.add(member)
            if list(item.root_idxs) != list(idxs) or _width(modules[member])[1] != channels:
                scan.unmapped = (f"Torch-Pruning couples the outputs of {member!r} and {root!r} in a permuted or "
                                 "partial order (a split or shuffle on the channel axis), which connprune does not "
                                 "map, so these channels are left unpruned")
        else:
            scan.consumers[member] = (list(idxs), list(item.root_idxs))
    return channels, scan


def _parameter_name(dg: tp.DependencyGraph, target: object) -> str | None:
    """The name Torch-Pruning gave an unwrapped parameter (layer scale, position embedding), if ``target`` is one."""
    return dg._param_to_name.get(target) if isinstance(target, nn.Parameter) else None


def _consumer_weights(weight: torch.Tensor, module: nn.Module, columns: int) -> int:
    """Weights a consumer loses with one channel that it reads through ``columns`` input columns."""
    per_column = weight.numel() // weight.shape[1]
    if isinstance(module, nn.Conv2d) and module.groups > 1:
        per_column //= module.groups  # a grouped conv's channel is read by its group's outputs only
    return columns * per_column


def _make_group(channels: int, scan: _GroupScan, modules: dict[str, nn.Module],
                position: dict[str, int]) -> tuple[ChannelGroup, _GroupDetail]:
    """A :class:`ChannelGroup` and its index maps from a scanned torch-pruning group."""
    slices: dict[str, list[list[int]]] = {}
    for consumer, (idxs, roots) in scan.consumers.items():
        module = modules[consumer]
        # a grouped conv's weight holds in/groups columns shared by its groups: channel c is column c mod that
        block = module.in_channels // module.groups if isinstance(module, nn.Conv2d) and module.groups > 1 else 0
        per_channel: list[list[int]] = [[] for _ in range(channels)]
        for index, root in zip(idxs, roots):
            per_channel[root].append(index % block if block else index)
        slices[consumer] = [sorted(s) for s in per_channel]
    weights = sum(modules[p].weight.numel() // modules[p].weight.shape[0] for p in scan.producers)
    for consumer, per_channel in slices.items():
        weights += _consumer_weights(modules[consumer].weight, modules[consumer], len(per_channel[0]))
    weights += sum(2 * modules[name].weight.shape[0] - 1 for name in scan.tied)  # a row and a column, once
    producers = tuple(sorted(scan.producers, key=position.__getitem__))
    plain = [p for p in scan.producers if p not in scan.depthwise]
    group = ChannelGroup(root=producers[0], producers=producers,
                         consumers=tuple(sorted(set(scan.consumers) | scan.depthwise, key=position.__getitem__)),
                         channels=channels, weights_per_channel=weights, residual=len(plain) > 1,
                         blocks=scan.blocks if channels % scan.blocks == 0 else 1, exact=scan.exact,
                         coupled=tuple(sorted(scan.coupled)), tied=tuple(sorted(scan.tied)))
    return group, _GroupDetail(slices=slices, depthwise=tuple(sorted(scan.depthwise, key=position.__getitem__)))


def _trace(model: nn.Module, example: tuple[torch.Tensor, ...]) -> ModelGraph:
    check_supported(model)
    layers = _forward_order(model, example)
    modules = dict(model.named_modules())
    names = {module: name for name, module in modules.items()}
    with _tracing_state(model), warnings.catch_warnings():
        # parameters outside a module tp knows (layer scale, position embeddings) are pruned along their last
        # non-singleton dimension, which is what these are shaped by; tp warns about each, we say it in the docs
        warnings.filterwarnings("ignore", message="Unwrapped parameters detected")
        dg = tp.DependencyGraph().build_dependency(model, example_inputs=example, verbose=False)
    layer_set = [name for name in layers if isinstance(modules[name], PRUNABLE)]
    position = {name: i for i, name in enumerate(layer_set)}
    node_of = {name: dg.module2node[modules[name]] for name in layer_set if modules[name] in dg.module2node}
    groups: list[ChannelGroup] = []
    details: dict[str, _GroupDetail] = {}
    outputs: set[str] = set()
    inputs: set[str] = set()
    unmapped: dict[str, str] = {}
    visited: set[str] = set()
    for name in layer_set:
        if name in visited or name not in node_of:
            continue
        channels, scan = _scan_group(dg, name, modules[name], names, position, modules)
        visited.update(scan.producers)
        if scan.reaches_output or scan.reaches_input:
            (outputs if scan.reaches_output else inputs).update(scan.producers)
            continue
        if scan.unmapped is not None:
            unmapped.update({producer: scan.unmapped for producer in scan.producers})
            continue
        group, detail = _make_group(channels, scan, modules, position)
        groups.append(group)
        details[group.root] = detail
    groups.sort(key=lambda g: position[g.root])
    pairs = _pairs(dg, layer_set, position, node_of, groups, details)
    return ModelGraph(model=model, example_inputs=example, dg=dg, layers=layer_set, groups=groups, pairs=pairs,
                      output_layers=tuple(sorted(outputs, key=position.__getitem__)),
                      input_layers=tuple(sorted(inputs, key=position.__getitem__)), details=details,
                      unmapped=unmapped,
                      widths={name: _width(modules[name]) for name in layer_set}, fingerprint=_fingerprint(model))

def _reads_untraced(node: tp.Node) -> bool:
    """A channel-coupling node (add, depthwise conv) one of whose inputs is not traced: the model input or a constant.
    """
    if isinstance(node.module, nn.Conv2d) and is_depthwise(node.module):
        return not node.inputs
    grad_name = node.grad_fn.name().lower() if hasattr(node.grad_fn, "name") else ""
    if any(op in grad_name for op in _ADD_OPS):
        return any(f[0] is None for f in node.grad_fn.next_functions)
    return False


def _parents(node: tp.Node, node_names: dict[tp.Node, str]) -> set[str]:
    """Producers reaching ``node``'s input through parameter-free ops and at most one residual add."""
    found: set[str] = set()
    stack = [(n, 0) for n in node.inputs]
    seen: set[tuple[int, int]] = set()
    while stack:
        current, adds = stack.pop()
        if (id(current), adds) in seen:
            continue
        seen.add((id(current), adds))
        if current in node_names:
            found.add(node_names[current])
            continue
        grad_name = current.grad_fn.name().lower() if hasattr(current.grad_fn, "name") else ""
        if any(op in grad_name for op in _ADD_OPS):
            if adds >= 1:
                continue
            adds += 1
        stack.extend((n, adds) for n in current.inputs)
    return found


def _pairs(dg: tp.DependencyGraph, layers: list[str], position: dict[str, int], node_of: dict[str, tp.Node],
           groups: list[ChannelGroup],
           details: dict[str, _GroupDetail]) -> list[LayerPair]:
    group_of = {p: g for g in groups for p in g.producers}
    node_names = {node: name for name, node in node_of.items()}
    pairs: list[LayerPair] = []
    for child in layers:
        if child not in node_of:
            continue
        for parent in sorted(_parents(node_of[child], node_names), key=position.__getitem__):
            group = group_of.get(parent)
            if group is None or child not in group.consumers:
                continue  # parent's outputs are the model's output, or not channel-coupled to the child
            slices = details[group.root].slices.get(child)
            features = len(slices[0]) if slices else 1
            pairs.append(LayerPair(parent=parent, child=child, features_per_channel=features,
                                   residual=group.residual))
    return pairs
