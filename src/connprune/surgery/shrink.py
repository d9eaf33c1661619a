"""Physical removal of output units (channels, neurons) with torch-pruning, and the units masks leave dead.

- :func:`remove_units` cuts given output units out of the model. Keys name any producer of a channel group
  (:mod:`connprune.graph`): the coupled producers of a residual stream, their BatchNorms, depthwise convs and every
  consumer's input slice (flatten blocks included) follow.
- :func:`dead_units` lists the units that masks make removable *exactly* (rule below).
- :func:`fold_constant_units` moves the constant contribution of units into their consumers before removal.
- :func:`shrink` does all of it: dead units ∪ requested removals, fold, remove, and re-index the remaining masks.

The dead-unit rule (one channel ``i`` of a group; "masked" means the keep-mask is False, weights need not be 0):

(a) **Never read**: every (non-depthwise) consumer's input slice for channel ``i`` is fully masked (``W[:, i]``
    for conv/linear, the ``H*W`` block of a flatten for a linear after a conv). Nothing downstream sees the channel,
    so removing it (all producers' rows, BNs, depthwise convs in between) changes no output. For a residual stream
    this requires every consumer of the stream to agree.
(b) **Constant**: some producer of channel ``i`` (the producing conv/linear, or the depthwise conv between it and
    the consumers) has every incoming weight of unit ``i`` masked, so the unit emits a constant (bias → BN →
    activation, in eval mode). It is removed only where the constant can be folded exactly into each consumer:

    - a consumer ``nn.Linear`` (directly or through flatten): its input slice is a fixed vector ``v``; add
      ``W[:, slice] @ v`` to the consumer's bias;
    - a consumer conv whose input slice is spatially constant ``c`` and which has no zero padding (``padding=0``, or
      a non-zero padding mode): add ``c * W[:, i].sum((h, w))``;
    - anything whose input slice is exactly zero (e.g. a ReLU of a negative constant): nothing to fold.

    A zero-padded conv reading a non-zero constant sees zeros at the border, so its output is not a constant shift:
    such units stay (a depthwise conv in between is such a padded conv, unless the constant before it is 0).
    Residual streams are never folded (the other producers keep the channel input-dependent).

The constants are measured, not derived: the masked model runs once in eval mode on two random inputs and each
consumer's input slice must be identical for both (a sanity check of the rule). A consumer without a bias absorbs
the shift in the BatchNorm that directly follows it (``running_mean -= shift``: exact in eval mode, and in training
mode batch statistics cancel a per-channel shift anyway); only when there is no such BatchNorm is a bias created
(checkpoints record which layers have a bias, so a created one survives ``checkpoint.save/load``).

The rules are applied to a fixed point: removed channels count as masked in their consumers and producers, so a
unit whose only live weights read removed constant channels becomes constant too, and a channel read only by
removed rows becomes unread. If the rules would remove every channel of a group, :func:`shrink` keeps one (exact
either way) so the network stays connected: an unread one if any (its value no longer matters), else the lowest
constant one, unfolded. An explicit ``remove`` of every channel of a group is an error.

Equivalence guarantee: in eval mode the shrunk model's outputs equal those of the masked model (weights multiplied
by the masks, and the consumers' input slices of explicitly removed units masked) up to float rounding.
"""

from __future__ import annotations

import operator
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn

from connprune.errors import UserError
from connprune.graph import ChannelGroup, ExampleInputs, ModelGraph, build, for_model, is_depthwise, probe
from connprune.surgery.masks import check_masks

_BATCHNORM = (nn.BatchNorm1d, nn.BatchNorm2d)

KEPT_UNITS = "connprune_kept_units"
"""Attribute :func:`shrink` sets on the model: module name → ``{"out": [...], "in": [...]}``, the indices (in the
model as first built) of the weight rows and columns each shrunk layer still holds; across repeated shrinks they
compose. :mod:`connprune.checkpoint` saves it in ``model.json`` (``kept_units``), and
:func:`connprune.measure.heat.compare` uses it to map a shrunk model's units back onto its unshrunk reference (removed
units become isolated nodes)."""


# ------------------------------------------------------------------------------------------------------------ helpers


def _graph_for(model: nn.Module, example_inputs: ExampleInputs, graph: ModelGraph | None) -> ModelGraph:
    """``graph`` if it describes ``model`` as it is now, else a fresh trace."""
    if graph is None or graph.model is not model or graph.is_stale():
        return build(model, example_inputs)
    return graph


def _indices(layer: str, values: Any, channels: int) -> list[int]:
    """Validated, de-duplicated, sorted unit indices for ``layer`` (UserError for non-integers and out of range)."""
    if isinstance(values, torch.Tensor):
        values = values.flatten().tolist()
    try:
        items = list(values)
    except TypeError:
        raise UserError(f"units to remove from {layer!r} must be a list of integer indices, got {values!r}") from None
    found: set[int] = set()
    for value in items:
        if isinstance(value, bool):
            raise UserError(f"unit index {value!r} for layer {layer!r} is not an integer; give channel indices")
        try:
            index = operator.index(value)
        except TypeError:
            raise UserError(f"unit index {value!r} for layer {layer!r} is not an integer; give channel "
                            "indices") from None
        if not 0 <= index < channels:
            raise UserError(f"unit index {index} is out of range for layer {layer!r}, which has {channels} output "
                            f"units (valid: 0..{channels - 1})")
        found.add(index)
    return sorted(found)


def _plan(graph: ModelGraph, remove: Mapping[str, Any]) -> dict[str, set[int]]:
    """Group root → channels to remove, from ``remove`` (keys: any producer). Validates everything first."""
    if not isinstance(remove, Mapping):
        raise UserError(f"units to remove must be a mapping of layer name → indices, got {type(remove).__name__}")
    plan: dict[str, set[int]] = {}
    named: dict[str, list[str]] = {}
    for layer, values in remove.items():
        group = graph.group_of(layer)
        indices = _indices(layer, values, group.channels)
        if indices:
            plan.setdefault(group.root, set()).update(indices)
            named.setdefault(group.root, []).append(layer)
    for root, channels in plan.items():
        group = graph.group_by_root(root)
        if len(channels) >= group.channels:
            layers = " and ".join(repr(n) for n in named[root])
            coupled = f" (coupled with {', '.join(repr(p) for p in group.producers if p not in named[root])})" \
                if group.residual else ""
            raise UserError(f"removing all {group.channels} output channels of {layers}{coupled} would disconnect "
                            "the network; keep at least one")
    return plan


def _removed_positions(module: nn.Module, side: str, indices: list[int]) -> list[int]:
    """The weight positions along dim 0 (``out``) or dim 1 (``in``) that removing channel ``indices`` takes: the
    channels themselves, except a grouped conv's inputs, whose weight holds one block of ``in / groups`` positions
    that every group shares (Torch-Pruning removes the same positions in every block)."""
    if side == "in" and isinstance(module, nn.Conv2d) and module.groups > 1:
        block = module.in_channels // module.groups
        return sorted({i % block for i in indices})
    return list(indices)


def _prune(graph: ModelGraph, plan: Mapping[str, set[int]]) -> dict[str, dict[str, list[int]]]:
    """Remove the planned channels with torch-pruning, one group at a time: each group is traced on the shapes the
    earlier removals left (a concatenation's offsets move when one of its inputs shrinks). Returns module name →
    {"out"/"in": removed weight positions, counted in the original shapes}."""
    dg, modules = graph.dg, dict(graph.model.named_modules())
    names = {module: name for name, module in modules.items()}
    alive: dict[tuple[str, str], list[int]] = {}
    record: dict[str, dict[str, list[int]]] = {}
    for root, channels in plan.items():
        if not channels:
            continue
        module = modules[root]
        pruner = dg.get_pruner_of_module(module)
        group = dg.get_pruning_group(module, pruner.prune_out_channels, sorted(channels))
        for item in group:
            target = item.dep.target.module
            name = names.get(target) if isinstance(target, nn.Module) else None
            if name is None or not hasattr(target, "weight") or target.weight is None:
                continue
            coupled = isinstance(target, _BATCHNORM) or is_depthwise(target)
            side = "out" if coupled or dg.is_out_channel_pruning_fn(item.dep.handler) else "in"
            dim = 0 if side == "out" else 1
            key = (name, side)
            if key not in alive:
                alive[key] = list(range(target.weight.shape[dim])) if target.weight.dim() > dim else []
            positions = _removed_positions(target, side, [int(i) for i in item.idxs])
            record.setdefault(name, {}).setdefault(side, []).extend(alive[key][p] for p in positions)
            gone = set(positions)
            alive[key] = [original for index, original in enumerate(alive[key]) if index not in gone]
        group.prune()
    return record


def _reindex(masks: Mapping[str, torch.Tensor], record: Mapping[str, Mapping[str, list[int]]],
             parameters: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Masks cut like their parameters were; all-True masks are dropped."""
    result: dict[str, torch.Tensor] = {}
    for name, mask in masks.items():
        module_name, _, _ = name.rpartition(".")
        mask = mask.to(torch.bool)
        removed = record.get(module_name, {})
        for side, dim in (("out", 0), ("in", 1)):
            if removed.get(side) and mask.dim() > dim:
                gone = set(removed[side])
                keep = torch.tensor([i for i in range(mask.shape[dim]) if i not in gone], dtype=torch.long,
                                    device=mask.device)
                mask = mask.index_select(dim, keep)
        if name in parameters and mask.shape != parameters[name].shape:  # pragma: no cover - defensive
            raise RuntimeError(f"re-indexed mask {name!r} has shape {tuple(mask.shape)}, the parameter "
                               f"{tuple(parameters[name].shape)}")
        if not bool(mask.all()):
            result[name] = mask
    return result


@torch.no_grad()
def _capture(model: nn.Module, graph: ModelGraph, consumers: set[str],
             masks: Mapping[str, torch.Tensor] | None = None) -> dict[str, torch.Tensor]:
    """Inputs of ``consumers`` on two random samples, eval mode, with ``masks`` multiplied in temporarily."""
    modules = dict(model.named_modules())
    parameters = dict(model.named_parameters())
    captured: dict[str, torch.Tensor] = {}
    saved = {}
    modes = {module: module.training for module in model.modules()}

    def hook_for(name: str):
        def hook(module: nn.Module, inputs: tuple[torch.Tensor, ...]) -> None:
            captured[name] = inputs[0].detach().clone()
        return hook

    handles = [modules[name].register_forward_pre_hook(hook_for(name)) for name in consumers]
    try:
        for name, mask in (masks or {}).items():
            saved[name] = parameters[name].detach().clone()
            parameters[name].mul_(mask.to(parameters[name].device, parameters[name].dtype))
        model.eval()
        model(*probe(for_model(model, graph.example_inputs), batch=2))
    finally:
        for handle in handles:
            handle.remove()
        for name, value in saved.items():
            parameters[name].copy_(value)
        for module, mode in modes.items():
            module.training = mode
    return captured


def _no_padding(conv: nn.Conv2d) -> bool:
    if conv.padding_mode != "zeros":
        return True  # reflect/replicate/circular padding of a constant map is the same constant
    if isinstance(conv.padding, str):
        return conv.padding == "valid"
    return all(p == 0 for p in conv.padding)


def _contribution(consumer: nn.Module, inputs: torch.Tensor, indices: list[int],
                  dropped_rows: set[int] | frozenset[int] = frozenset()) -> torch.Tensor | None:
    """The consumer's output shift (float64, one value per output unit) caused by its input slice ``indices``, if
    the slice is an input-independent value the consumer's bias can absorb exactly; else None. ``inputs`` holds two
    samples. Output units in ``dropped_rows`` are removed anyway: their shift is 0 and they need not be foldable."""
    weight = consumer.weight.detach()
    rows = torch.ones(weight.shape[0], dtype=torch.bool, device=weight.device)
    if dropped_rows:
        rows[sorted(dropped_rows)] = False
    weight = weight[:, indices] * rows.view(-1, *([1] * (weight.dim() - 1))).to(weight.dtype)
    zero = torch.zeros(weight.shape[0], dtype=torch.float64, device=weight.device)
    if not bool(weight.any()):
        return zero  # the kept units read nothing of it
    part = inputs[:, indices]
    if not torch.equal(part[0], part[1]):
        return None  # depends on the input
    value = part[0]
    if isinstance(consumer, nn.Linear):
        return weight.to(torch.float64) @ value.to(torch.float64)
    if not bool(value.any()):
        return zero
    if not _no_padding(consumer) or not bool((value == value.flatten()[0]).all()):
        return None  # zero padding meets a non-zero value: the border differs, no bias can absorb it
    constants = value.flatten(1)[:, 0].to(torch.float64)  # value: [len(indices), H, W], each map constant
    return (weight.to(torch.float64).sum(dim=(2, 3)) * constants).sum(dim=1)


@torch.no_grad()
def _absorb(graph: ModelGraph, name: str, shift: torch.Tensor) -> None:
    """Add ``shift`` (per output unit) to layer ``name``'s output: bias, else the following BN, else a new bias."""
    consumer = graph.model.get_submodule(name)
    if consumer.bias is not None:
        consumer.bias.add_(shift.to(consumer.bias.dtype))
        return
    norm_name = graph.batchnorm_after(name)
    norm = graph.model.get_submodule(norm_name) if norm_name is not None else None
    if norm is not None:
        if norm.running_mean is not None:
            norm.running_mean.sub_(shift.to(norm.running_mean.dtype))
        return  # without running statistics, batch statistics cancel a per-channel shift
    weight = consumer.weight
    consumer.bias = nn.Parameter(shift.to(weight.device, weight.dtype).clone())


# -------------------------------------------------------------------------------------------------------- dead units


def _live_columns(mask: torch.Tensor) -> torch.Tensor:
    """For each input column (dim 1) of a weight-shaped mask: whether any entry of it is set."""
    live = mask.any(dim=0)
    return live.flatten(1).any(dim=1) if live.dim() > 1 else live


def _channels_read(mask: torch.Tensor, per_channel: list[list[int]]) -> torch.Tensor:
    """For each group channel: whether any live (unmasked) weight of the consumer reads it."""
    live_columns = _live_columns(mask)
    if any(not s for s in per_channel):  # pragma: no cover - a channel without columns: count it as read
        return torch.tensor([not s or bool(live_columns[s].any()) for s in per_channel], dtype=torch.bool)
    if len({len(s) for s in per_channel}) == 1:
        return live_columns[torch.tensor(per_channel, dtype=torch.long)].any(dim=1)
    return torch.tensor([bool(live_columns[s].any()) for s in per_channel], dtype=torch.bool)


def _foldable_channels(consumer: nn.Module, inputs: torch.Tensor, per_channel: list[list[int]]) -> torch.Tensor:
    """For each channel: whether ``consumer`` can absorb what it reads of it exactly (the vectorised test of
    :func:`_contribution`: the same value on both probe samples; for a conv also zero, or spatially constant without
    zero padding). ``inputs`` holds the consumer's input on two samples."""
    weight = consumer.weight.detach()
    found = torch.zeros(len(per_channel), dtype=torch.bool)
    by_size: dict[int, list[int]] = {}
    for channel, columns in enumerate(per_channel):
        by_size.setdefault(len(columns), []).append(channel)
    for size, channels in by_size.items():
        if size == 0:
            found[channels] = True
            continue
        index = torch.tensor([per_channel[c] for c in channels], dtype=torch.long, device=inputs.device)
        part = inputs[:, index]  # (2, channels, size, *spatial)
        flat = part.flatten(2)
        ok = (flat[0] == flat[1]).all(dim=1)
        if not isinstance(consumer, nn.Linear):
            zero = ~flat[0].any(dim=1)
            uniform = (flat[0] == flat[0][:, :1]).all(dim=1)
            ok &= zero | (uniform & _no_padding(consumer))
        reads = _live_columns(weight != 0).cpu()[index.cpu()].any(dim=1)
        found[channels] = ok.cpu() | ~reads
    return found


class _DeadUnits:
    """The fixed-point search of :func:`_dead` over per-layer live-weight masks (``effective``)."""

    def __init__(self, model: nn.Module, masks: Mapping[str, torch.Tensor], graph: ModelGraph,
                 captured: dict[str, torch.Tensor], probe_masks: Mapping[str, torch.Tensor] | None,
                 foldable: dict[str, torch.Tensor]) -> None:
        self.model, self.graph, self.captured = model, graph, captured
        self.probe_masks = masks if probe_masks is None else probe_masks
        modules = dict(model.named_modules())
        self.modules = modules
        self.effective = {layer: masks[f"{layer}.weight"].to(torch.bool).cpu().clone() if f"{layer}.weight" in masks
                          else torch.ones(modules[layer].weight.shape, dtype=torch.bool) for layer in graph.layers}
        self.removed = {g.root: torch.zeros(g.channels, dtype=torch.bool) for g in graph.groups}
        self._foldable = foldable
        """Per (group, consumer): which channels the consumer can absorb (depends on the captured inputs only)."""

    def drop(self, group: ChannelGroup, channels: list[int]) -> None:
        """Mark ``channels`` removed: their producers' rows and consumers' columns count as masked."""
        self.removed[group.root][channels] = True
        rows = torch.tensor(channels, dtype=torch.long)
        for producer in group.producers:
            self.effective[producer].index_fill_(0, rows, False)
        for consumer, per_channel in self.graph.consumer_slices(group.root).items():
            columns = torch.tensor([i for c in channels for i in per_channel[c]], dtype=torch.long)
            self.effective[consumer].index_fill_(1, columns, False)

    def foldable(self, group: ChannelGroup, live_reads: dict[str, torch.Tensor]) -> torch.Tensor:
        """Per channel: every consumer whose live weights read it can absorb its constant value."""
        if not self.captured:
            consumers = {c for g in self.graph.groups if not g.residual for c in self.graph.consumer_slices(g.root)}
            self.captured.update(_capture(self.model, self.graph, consumers, self.probe_masks))
        result = torch.ones(group.channels, dtype=torch.bool)
        for consumer, per_channel in self.graph.consumer_slices(group.root).items():
            key = f"{group.root}→{consumer}"
            if key not in self._foldable:
                self._foldable[key] = _foldable_channels(self.modules[consumer], self.captured[consumer], per_channel)
            result &= self._foldable[key] | ~live_reads[consumer]
        return result

    def step(self, group: ChannelGroup, unread: set[int], constant: set[int]) -> bool:
        """Mark the group's newly unread and constant channels; whether any were. Groups of equal blocks (a
        removal must take the same positions in every block) and groups coupled by a normalisation over their
        channels (a removal changes what the others compute) lose no dead unit: theirs stay as masked zeros."""
        if group.blocks > 1 or not group.exact:
            return False
        live_reads = {consumer: _channels_read(self.effective[consumer], per_channel)
                      for consumer, per_channel in self.graph.consumer_slices(group.root).items()}
        read = torch.zeros(group.channels, dtype=torch.bool)
        for value in live_reads.values():
            read |= value
        newly_unread = torch.nonzero(~read & ~self.removed[group.root]).flatten().tolist()
        if newly_unread:
            unread.update(newly_unread)
            self.drop(group, newly_unread)
        if group.residual:
            return bool(newly_unread)
        silent = torch.zeros(group.channels, dtype=torch.bool)
        for producer in group.producers:
            silent |= ~self.effective[producer].flatten(1).any(dim=1)
        candidates = silent & ~self.removed[group.root]
        if not bool(candidates.any()):
            return bool(newly_unread)
        if newly_unread:  # the dropped channels changed what the consumers read live
            live_reads = {consumer: _channels_read(self.effective[consumer], per_channel)
                          for consumer, per_channel in self.graph.consumer_slices(group.root).items()}
        folded = torch.nonzero(candidates & self.foldable(group, live_reads)).flatten().tolist()
        if folded:
            constant.update(folded)
            self.drop(group, folded)
        return bool(newly_unread or folded)


def _dead(model: nn.Module, masks: Mapping[str, torch.Tensor], graph: ModelGraph, captured: dict[str, torch.Tensor],
          seed: Mapping[str, set[int]] | None = None,
          protect: Mapping[str, set[int]] | None = None,
          ghost: Mapping[str, set[int]] | None = None,
          probe_masks: Mapping[str, torch.Tensor] | None = None,
          foldable: dict[str, torch.Tensor] | None = None) -> tuple[dict[str, set[int]], dict[str, set[int]]]:
    """(never-read, constant) channels per group root, by the rule in the module docstring, to a fixed point.

    ``captured``: consumer inputs of the masked model (:func:`_capture`, with ``probe_masks`` if given), filled
    lazily when empty. ``seed``: channels removed anyway (explicit removals; the captured inputs must reflect them),
    which count as masked from the start. ``protect``: channels never to mark. ``ghost``: channels kept although
    nothing reads them: they count as removed (their rows read nothing) but are not reported.
    """
    search = _DeadUnits(model, masks, graph, captured, probe_masks, {} if foldable is None else foldable)
    unread: dict[str, set[int]] = {g.root: set() for g in graph.groups}
    constant: dict[str, set[int]] = {g.root: set() for g in graph.groups}
    for root, channels in (protect or {}).items():
        search.removed[root][sorted(channels)] = True  # never considered (they are not dropped either)
    for kept in (seed, ghost):
        for root, channels in (kept or {}).items():
            if channels:
                search.drop(graph.group_by_root(root), sorted(channels))
    changed = True
    while changed:  # marking a channel only changes other groups' vectors, so each group is checked at once
        changed = False
        for group in graph.groups:
            if graph.consumer_slices(group.root):
                changed |= search.step(group, unread[group.root], constant[group.root])
    return unread, constant


def _fold(model: nn.Module, graph: ModelGraph, units: Mapping[str, set[int]], captured: dict[str, torch.Tensor],
          plan: Mapping[str, set[int]] | None = None) -> None:
    """Add the contribution of ``units`` (group root → channels) to their consumers, from ``captured`` inputs.
    Consumer output units removed by ``plan`` (group root → channels) are skipped."""
    modules = dict(model.named_modules())
    shifts: dict[str, torch.Tensor] = {}
    for root, channels in units.items():
        for consumer, per_channel in graph.consumer_slices(root).items():
            owner = graph.producer_group(consumer)
            dropped = (plan or {}).get(owner.root, set()) if owner is not None else set()
            for channel in sorted(channels):
                shift = _contribution(modules[consumer], captured[consumer], per_channel[channel], dropped)
                if shift is None:
                    raise UserError(f"unit {channel} of {root!r} does not reach {consumer!r} as a constant it can "
                                    "absorb (it depends on the input, or meets zero padding with a non-zero "
                                    "value); fold only units listed by dead_units, after applying the masks")
                shifts[consumer] = shifts[consumer] + shift if consumer in shifts else shift
    for consumer, shift in shifts.items():
        _absorb(graph, consumer, shift)


def dead_units(model: nn.Module, masks: Mapping[str, torch.Tensor], example_inputs: ExampleInputs, *,
               graph: ModelGraph | None = None) -> dict[str, list[int]]:
    """Output units that ``masks`` make removable exactly (module docstring: never read, or constant and foldable).

    Keys are group roots (a producer name, usable as a ``remove`` key); the model is not modified. A group may be
    listed whole; :func:`shrink` then keeps one of its channels.
    """
    graph = _graph_for(model, example_inputs, graph)
    masks = check_masks(model, masks)
    unread, constant = _dead(model, masks, graph, {})
    return {root: sorted(unread[root] | constant[root]) for root in unread if unread[root] | constant[root]}


def fold_constant_units(model: nn.Module, units: Mapping[str, Any], example_inputs: ExampleInputs, *,
                        graph: ModelGraph | None = None) -> None:
    """Add the constant contribution of ``units`` (producer → output unit indices) to their consumers.

    Call it on the masked model, before the units are removed: each unit's value at every consumer's input must not
    depend on the model's input, and must be foldable (see the module docstring); otherwise UserError. The shift goes
    into the consumer's bias, else into the BatchNorm directly after it, else into a newly created bias.
    """
    graph = _graph_for(model, example_inputs, graph)
    plan: dict[str, set[int]] = {}
    for layer, values in units.items():
        group = graph.group_of(layer)
        plan.setdefault(group.root, set()).update(_indices(layer, values, group.channels))
    consumers = {c for root in plan for c in graph.consumer_slices(root)}
    _fold(model, graph, plan, _capture(model, graph, consumers))


# ------------------------------------------------------------------------------------------------------ entry points


def remove_units(model: nn.Module, remove: Mapping[str, Any], example_inputs: ExampleInputs, *,
                 graph: ModelGraph | None = None) -> nn.Module:
    """Physically remove output units (in place; returns ``model``). Keys: any producer of a channel group.

    UserError for an unknown layer, the classifier (the model's output), indices out of range, or removing every
    channel of a group. ``graph``, if given, must describe ``model`` as it is now (it is rebuilt otherwise); after
    the call it is stale.
    """
    graph = _graph_for(model, example_inputs, graph)
    _prune(graph, _plan(graph, remove))
    return model


@dataclass
class RemovalPlan:
    """What :func:`shrink` will remove, decided without touching the model (:func:`plan_removal`)."""

    graph: ModelGraph
    requested: dict[str, set[int]]
    """Group root → channels removed because the result asked for them."""
    remove: dict[str, set[int]]
    """Group root → every channel that goes (requested ∪ never read ∪ constant, one channel of each group kept)."""
    fold: dict[str, set[int]]
    """Group root → the constant channels whose contribution is folded into their consumers first."""
    unread: dict[str, set[int]] = field(default_factory=dict)
    """Group root → the removed channels no consumer reads (rule (a) of the module docstring)."""
    captured: dict[str, torch.Tensor] = field(default_factory=dict, repr=False)
    """Consumer inputs of the masked model (two probe samples), measured while planning."""

    def unread_rows(self) -> dict[str, torch.Tensor]:
        """Conv/linear weight name → bool tensor of the rows (all incoming weights) of its removed unread units."""
        found = {}
        for root, channels in self.unread.items():
            for producer in self.graph.group_by_root(root).producers:
                weight = self.graph.model.get_submodule(producer).weight
                rows = torch.zeros(weight.shape, dtype=torch.bool)
                rows[sorted(channels)] = True
                found[f"{producer}.weight"] = rows
        return found

    def surviving(self) -> dict[str, torch.Tensor]:
        """Conv/linear weight name → bool tensor of its shape: the entries the shrunk model still has (rows of kept
        output units, columns of kept input channels). Entries of layers outside the graph all survive."""
        graph, found = self.graph, {}
        for layer in graph.layers:
            weight = graph.model.get_submodule(layer).weight
            keep = torch.ones(weight.shape, dtype=torch.bool)
            group = graph.producer_group(layer)
            if group is not None and self.remove.get(group.root):
                keep[sorted(self.remove[group.root])] = False
            found[f"{layer}.weight"] = keep
        for root, channels in self.remove.items():
            for tied in graph.group_by_root(root).tied:
                weight = graph.model.get_submodule(tied).weight
                keep = found.setdefault(f"{tied}.weight", torch.ones(weight.shape, dtype=torch.bool))
                keep[sorted(channels)] = False
                keep[:, sorted(channels)] = False
            for consumer, per_channel in graph.consumer_slices(root).items():
                columns = sorted(i for channel in channels for i in per_channel[channel])
                found[f"{consumer}.weight"][:, columns] = False
        return found


def _requested_columns(graph: ModelGraph, requested: Mapping[str, set[int]],
                       masks: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """``masks`` with the consumer columns of explicitly removed channels masked too (what removal computes)."""
    combined = dict(masks)
    modules = dict(graph.model.named_modules())
    for root, channels in requested.items():
        for consumer, per_channel in graph.consumer_slices(root).items():
            name = f"{consumer}.weight"
            mask = combined.get(name, torch.ones(modules[consumer].weight.shape, dtype=torch.bool)).clone()
            mask[:, sorted(i for channel in channels for i in per_channel[channel])] = False
            combined[name] = mask
    return combined


def plan_removal(model: nn.Module, masks: Mapping[str, torch.Tensor], example_inputs: ExampleInputs, *,
                 remove: Mapping[str, Any] | None = None, graph: ModelGraph | None = None) -> RemovalPlan:
    """The channels :func:`shrink` removes for ``masks`` and ``remove`` (module docstring), without modifying the
    model: dead units to a fixed point, and never a whole group (one channel kept, exact either way)."""
    masks = check_masks(model, masks)
    graph = _graph_for(model, example_inputs, graph)
    requested = _plan(graph, remove or {})
    captured: dict[str, torch.Tensor] = {}
    protect: dict[str, set[int]] = {}
    ghost: dict[str, set[int]] = {}
    probe_masks = _requested_columns(graph, requested, masks) if requested else masks
    foldable: dict[str, torch.Tensor] = {}
    while True:
        unread, constant = _dead(model, masks, graph, captured, seed=requested, protect=protect, ghost=ghost,
                                 probe_masks=probe_masks, foldable=foldable)
        emptied = [g for g in graph.groups
                   if len(requested.get(g.root, set()) | unread[g.root] | constant[g.root]) >= g.channels]
        if not emptied:
            break
        # never empty a group: keep one channel of every emptied group (exact either way) and redo, since a kept
        # channel may keep later groups alive. An unread channel is kept as a ghost: nobody reads it, so its value
        # does not matter and it blocks no other removal; else a constant one stays as it is.
        for group in emptied:
            allowed = set(range(group.channels)) - requested.get(group.root, set())
            if allowed & unread[group.root]:
                ghost.setdefault(group.root, set()).add(min(allowed & unread[group.root]))
            else:
                protect.setdefault(group.root, set()).add(min(allowed))
    plan = {g.root: requested.get(g.root, set()) | unread[g.root] | constant[g.root] for g in graph.groups}
    fold = {root: channels - requested.get(root, set()) for root, channels in constant.items()}
    return RemovalPlan(graph=graph, requested=requested, remove={r: c for r, c in plan.items() if c},
                       fold={r: c for r, c in fold.items() if c}, captured=captured,
                       unread={r: c - requested.get(r, set()) for r, c in unread.items()
                               if c - requested.get(r, set())})


def shrink(model: nn.Module, masks: Mapping[str, torch.Tensor], example_inputs: ExampleInputs, *,
           remove: Mapping[str, Any] | None = None) -> tuple[nn.Module, dict[str, torch.Tensor]]:
    """Multiply ``masks`` in, remove dead units (see module docstring) and ``remove``, fold constants, cut.

    Returns the model (modified in place) and the masks re-indexed for the smaller tensors, all-True masks dropped.
    In eval mode the result computes what the masked model computes (``remove``'s units dropped) up to rounding.
    """
    masks = check_masks(model, masks)
    plan = plan_removal(model, masks, example_inputs, remove=remove)
    graph = plan.graph
    parameters = dict(model.named_parameters())
    with torch.no_grad():
        for name, mask in _requested_columns(graph, plan.requested, masks).items():
            parameters[name].mul_(mask.to(parameters[name].device, parameters[name].dtype))
    if plan.fold:
        _fold(model, graph, plan.fold, plan.captured, plan.remove)
    record = _prune(graph, plan.remove)
    _record_kept(model, record)
    return model, _reindex(masks, record, dict(model.named_parameters()))


def _record_kept(model: nn.Module, record: Mapping[str, Mapping[str, list[int]]]) -> None:
    """Update the model's :data:`KEPT_UNITS` with one :func:`_prune` record (removed positions of this shrink)."""
    kept: dict[str, dict[str, list[int]]] = getattr(model, KEPT_UNITS, None) or {}
    modules = dict(model.named_modules())
    for name, removed in record.items():
        weight = modules[name].weight
        for side, dim in (("out", 0), ("in", 1)):
            if not removed.get(side) or weight.dim() <= dim:
                continue
            before = weight.shape[dim] + len(set(removed[side]))
            earlier = kept.get(name, {}).get(side, list(range(before)))
            gone = set(removed[side])
            kept.setdefault(name, {})[side] = [index for position, index in enumerate(earlier) if position not in gone]
    setattr(model, KEPT_UNITS, kept)
