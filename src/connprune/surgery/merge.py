"""Exact merging of inactive ReLU layers into their successors (layer sparsity: Hebiri & Lederer, "Layer Sparsity
in Neural Networks", arXiv 2006.15604, 2020; the merge identity below is the one in
docs/methods/layer-sparsity.md §2, reconstructed: the paper's full text was not available).

If a hidden layer ``j``'s weights and bias are non-negative and its input is non-negative (a ReLU output), its
pre-activation is non-negative, the ReLU after it is the identity and (docs/methods/layer-sparsity.md §2, "merge
identity")::

    W^{j+1} σ(W^j h + b^j) + b^{j+1} = (W^{j+1} W^j) h + (W^{j+1} b^j + b^{j+1})

so the two layers are one. A run ``[l_0, ..., l_m]`` of consecutive layers whose first ``m`` are inactive collapses
into one layer, folded left to right in float64 and cast back.

Patterns that merge (anything else is refused with a :class:`~connprune.errors.UserError` naming the module in the
way):

* ``Linear → [BatchNorm1d] → [ReLU] → Linear``;
* ``Conv2d → [BatchNorm2d] → [ReLU] → Conv2d`` with ``groups=1``, ``dilation=1``, zero padding mode, and **no
  padding on the second conv** (its zero padding of the intermediate map is not an affine function of the input, so
  no single conv reproduces the border outputs). Kernels compose as ``k = k1 + s1·(k2 − 1)`` (3×3 then 3×3 at
  stride 1 → 5×5), strides multiply, the padding is the first conv's. 1×1 convs are the special case ``k = k1``.
* ``nn.Identity`` modules (left by earlier merges) may sit anywhere in between.

BatchNorm (eval mode, running statistics) after a merged-away layer is folded into that layer first; a BatchNorm after
the *last* layer of a run stays where it is. Pooling, dropout, flatten, functional activations, residual reads of an
intermediate value (an output used twice) and modules called twice per forward pass are refused.

The edit (``"merge"``, allow-listed in :mod:`connprune.surgery.edits`, spec ``{"op": "merge", "layers": [...]}``)
replaces the first layer of the run by the merged layer and every later layer of the run, and every module between
them, by ``nn.Identity``, so module names of the rest of the model do not change and
:func:`connprune.checkpoint.load` rebuilds the merged architecture by replaying the edit on a fresh model. The edit
itself is purely structural (a replay runs it on freshly initialised weights, which are then overwritten): whether
the merge is *exact* depends on the inner layers being inactive, which :func:`merge_layers` checks with
``require_inactive=True`` (the default for direct callers) and :func:`inactive_violations` reports.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

import torch
import torch.fx
from torch import nn

from connprune.errors import UserError

WEIGHT_LAYERS = (nn.Linear, nn.Conv2d)
_BATCHNORMS = (nn.BatchNorm1d, nn.BatchNorm2d)
_NONNEGATIVE_PRESERVING = (nn.Identity, nn.MaxPool2d, nn.AvgPool2d, nn.AdaptiveAvgPool2d, nn.Flatten, nn.Dropout)
_FLATTEN_FUNCTIONS = (torch.flatten,)
_RESHAPE_METHODS = ("view", "reshape", "flatten")


@dataclass
class Link:
    """How layer ``layer``'s output reaches the next weight layer, and whether that step can be merged."""

    layer: str
    successor: str | None = None
    """The next conv/linear layer reading this layer's output (``None``: none, e.g. the output layer)."""
    batchnorm: str | None = None
    """A BatchNorm directly after ``layer`` (folded into it when merged)."""
    relu: str | None = None
    """The ``nn.ReLU`` module between ``layer`` and ``successor`` (the activation a merge removes)."""
    between: list[str] = field(default_factory=list)
    """Every module between ``layer`` and ``successor`` (BN, ReLU, identities), replaced by ``nn.Identity``."""
    refusal: str | None = None
    """Why this step cannot be merged exactly (``None``: it can)."""


def depth(model: nn.Module) -> int:
    """Number of weight layers (``nn.Linear`` and ``nn.Conv2d`` modules) — the depth layer sparsity reduces."""
    return sum(isinstance(m, WEIGHT_LAYERS) for m in model.modules())


# ------------------------------------------------------------------------------------------------ the layer chain


def _trace(model: nn.Module) -> torch.fx.GraphModule:
    try:
        return torch.fx.symbolic_trace(model)
    except Exception as exc:  # fx raises many kinds of errors on data-dependent control flow
        raise UserError(f"cannot trace {type(model).__name__} with torch.fx ({exc}); layer merging needs a model "
                        "whose forward pass is a static chain of modules") from exc


def _module_nodes(graph: torch.fx.GraphModule) -> dict[str, list[torch.fx.Node]]:
    calls: dict[str, list[torch.fx.Node]] = {}
    for node in graph.graph.nodes:
        if node.op == "call_module":
            calls.setdefault(str(node.target), []).append(node)
    return calls


def _describe(node: torch.fx.Node, model: nn.Module) -> str:
    if node.op == "call_module":
        return f"{type(model.get_submodule(str(node.target))).__name__} {node.target!r}"
    if node.op == "output":
        return "the model output"
    return f"{node.op} {getattr(node.target, '__name__', node.target)!s}"


def _walk(model: nn.Module, calls: dict[str, list[torch.fx.Node]], layer: str) -> Link:
    """Follow ``layer``'s output through the modules after it to the next weight layer (see the module docstring)."""
    link = Link(layer)
    nodes = calls.get(layer, [])
    if len(nodes) != 1:
        link.refusal = f"{layer!r} is called {len(nodes)} times per forward pass (shared or unused weights)"
        return link
    node, seen_other = nodes[0], False
    while True:
        users = list(node.users)
        if len(users) != 1:
            if not users or users[0].op == "output":
                return link
            link.refusal = (f"the output of {_describe(node, model)} is read by {len(users)} operations "
                            f"({', '.join(_describe(u, model) for u in users)}): a residual or skip read would "
                            "change if the layers were merged")
            return link
        user = users[0]
        if user.op == "output":
            return link
        if user.op != "call_module":
            hint = " (use an nn.ReLU module, not functional relu)" if "relu" in str(user.target) else ""
            link.refusal = (f"{_describe(user, model)} follows {layer!r}: only nn.BatchNorm, nn.ReLU and nn.Identity "
                            f"modules may sit between merged layers{hint}")
            return link
        name = str(user.target)
        module = model.get_submodule(name)
        if len(calls[name]) != 1:
            link.refusal = f"module {name!r} is called {len(calls[name])} times per forward pass (shared module)"
            return link
        if isinstance(module, WEIGHT_LAYERS):
            link.successor = name
            if type(module) is not type(model.get_submodule(layer)):
                link.refusal = (f"{layer!r} ({type(model.get_submodule(layer)).__name__}) feeds {name!r} "
                                f"({type(module).__name__}): only Linear→Linear and Conv2d→Conv2d merge")
            elif isinstance(module, nn.Conv2d):
                link.refusal = _conv_refusal(model.get_submodule(layer), layer) or _conv_refusal(module, name, True)
            return link
        if isinstance(module, nn.Identity):
            pass
        elif isinstance(module, _BATCHNORMS) and link.batchnorm is None and link.relu is None and not seen_other:
            if not module.track_running_stats:
                link.refusal = f"BatchNorm {name!r} has no running statistics, so it is not an affine map to fold"
                return link
            link.batchnorm = name
        elif isinstance(module, nn.ReLU) and link.relu is None:
            link.relu = name
        else:
            why = "pooling between layers forbids an exact merge" if "Pool" in type(module).__name__ else \
                "only one BatchNorm (directly after the layer), one ReLU and identities may sit between merged layers"
            link.refusal = f"{type(module).__name__} {name!r} follows {layer!r}: {why}"
            return link
        seen_other = seen_other or not isinstance(module, nn.Identity)
        link.between.append(name)
        node = user


def _conv_refusal(conv: nn.Conv2d, name: str, second: bool = False) -> str | None:
    if conv.groups != 1:
        return f"conv {name!r} has groups={conv.groups}: only ordinary (groups=1) convs merge"
    if tuple(conv.dilation) != (1, 1):
        return f"conv {name!r} has dilation {tuple(conv.dilation)}: only dilation 1 merges"
    if isinstance(conv.padding, str):
        return f"conv {name!r} has padding {conv.padding!r}: give it an explicit integer padding"
    if conv.padding_mode != "zeros":
        return f"conv {name!r} has padding_mode {conv.padding_mode!r}: only zero padding merges"
    if second and tuple(conv.padding) != (0, 0):
        return (f"conv {name!r} pads its input by {tuple(conv.padding)}: zero padding of the intermediate map is "
                "not an affine function of the network input, so no single conv reproduces the borders "
                "(only a second conv with padding 0 merges exactly)")
    return None


def chain(model: nn.Module) -> list[Link]:
    """Every conv/linear layer of ``model`` in execution order with the link to its successor."""
    graph = _trace(model)
    calls = _module_nodes(graph)
    order = [str(n.target) for n in graph.graph.nodes
             if n.op == "call_module" and isinstance(model.get_submodule(str(n.target)), WEIGHT_LAYERS)]
    seen: set[str] = set()
    links = []
    for name in order:
        if name not in seen:
            seen.add(name)
            links.append(_walk(model, calls, name))
    return links


def input_is_nonnegative(model: nn.Module, layer: str) -> bool:
    """Whether ``layer``'s input is a ReLU output (possibly through pooling, flatten, dropout or identities), so
    non-negative for every network input — the condition under which a non-negative layer is inactive
    (docs/methods/layer-sparsity.md §2)."""
    graph = _trace(model)
    nodes = _module_nodes(graph).get(layer, [])
    if len(nodes) != 1:
        return False
    node = nodes[0].args[0] if nodes[0].args else None
    while isinstance(node, torch.fx.Node):
        if node.op == "call_module":
            module = model.get_submodule(str(node.target))
            if isinstance(module, nn.ReLU):
                return True
            if not isinstance(module, _NONNEGATIVE_PRESERVING):
                return False
        elif node.op == "call_function":
            if node.target in (torch.relu, nn.functional.relu):
                return True
            if node.target not in _FLATTEN_FUNCTIONS:
                return False
        elif node.op == "call_method":
            if node.target == "relu":
                return True
            if node.target not in _RESHAPE_METHODS:
                return False
        else:  # the network input itself: nothing before it rectifies it
            return False
        node = node.args[0] if node.args else None
    return False


def _links_for_run(model: nn.Module, layers: list[str]) -> list[Link]:
    if len(layers) < 2:
        raise UserError(f"a merge needs at least two consecutive layers, got {layers!r}")
    for name in layers:
        try:
            module = model.get_submodule(name)
        except AttributeError:
            raise UserError(f"cannot merge {name!r}: {type(model).__name__} has no such module") from None
        if not isinstance(module, WEIGHT_LAYERS):
            raise UserError(f"cannot merge {name!r}: it is a {type(module).__name__}, not an nn.Linear or nn.Conv2d")
    by_layer = {link.layer: link for link in chain(model)}
    links = []
    for first, second in zip(layers, layers[1:]):
        link = by_layer[first]
        if link.successor != second and not (link.refusal is not None and link.successor is None):
            raise UserError(f"cannot merge {first!r} into {second!r}: they are not consecutive (the layer after "
                            f"{first!r} is {link.successor!r}); list consecutive layers")
        if link.refusal is not None:
            raise UserError(f"cannot merge {first!r} into {second!r}: {link.refusal}")
        links.append(link)
    return links


# ------------------------------------------------------------------------------------------------- the algebra


def fold_batchnorm(layer: nn.Module, batchnorm: nn.Module | None) -> tuple[torch.Tensor, torch.Tensor]:
    """``layer``'s weight and bias (float64) with the eval-mode BatchNorm after it folded in:
    ``W' = W·γ/√(var+ε)`` per output unit, ``b' = (b − μ)·γ/√(var+ε) + β``."""
    weight = layer.weight.detach().double()
    bias = layer.bias.detach().double() if layer.bias is not None else weight.new_zeros(weight.shape[0])
    if batchnorm is None:
        return weight, bias
    scale = 1.0 / torch.sqrt(batchnorm.running_var.detach().double() + batchnorm.eps)
    shift = -batchnorm.running_mean.detach().double() * scale
    if batchnorm.affine:
        gamma, beta = batchnorm.weight.detach().double(), batchnorm.bias.detach().double()
        scale, shift = scale * gamma, shift * gamma + beta
    shape = (-1,) + (1,) * (weight.dim() - 1)
    return weight * scale.view(shape), bias * scale + shift


def compose_linear(w1: torch.Tensor, b1: torch.Tensor, w2: torch.Tensor, b2: torch.Tensor
                   ) -> tuple[torch.Tensor, torch.Tensor]:
    """docs/methods/layer-sparsity.md §2 merge identity: ``W' = W2 W1``, ``b' = W2 b1 + b2``."""
    return w2 @ w1, w2 @ b1 + b2


def compose_conv(w1: torch.Tensor, b1: torch.Tensor, stride1: tuple[int, int], w2: torch.Tensor, b2: torch.Tensor
                 ) -> tuple[torch.Tensor, torch.Tensor]:
    """One conv equal to conv(w1, stride ``stride1``) followed by conv(w2, padding 0), on the same padded input.

    ``K[:, :, s·u + i, s·v + j] += W2[:, :, u, v] · W1[:, :, i, j]`` (a matrix product over the middle channels), so
    the kernel is ``k1 + s1·(k2 − 1)`` wide; the bias is ``b2 + Σ_u W2[:, :, u] b1``.
    """
    out_ch, _, k2h, k2w = w2.shape
    _, in_ch, k1h, k1w = w1.shape
    sh, sw = stride1
    kernel = w1.new_zeros(out_ch, in_ch, k1h + sh * (k2h - 1), k1w + sw * (k2w - 1))
    for u in range(k2h):
        for v in range(k2w):
            kernel[:, :, sh * u : sh * u + k1h, sw * v : sw * v + k1w] += torch.einsum("om,mihw->oihw",
                                                                                       w2[:, :, u, v], w1)
    return kernel, b2 + w2.sum(dim=(2, 3)) @ b1


def inactive_violations(model: nn.Module, layer: str, batchnorm: str | None = None) -> int:
    """Negative entries of ``layer``'s (BN-folded) weight and bias: 0 means the ReLU after it is the identity on
    non-negative inputs (docs/methods/layer-sparsity.md §2, inactive layer)."""
    bn = model.get_submodule(batchnorm) if batchnorm else None
    weight, bias = fold_batchnorm(model.get_submodule(layer), bn)
    return int((weight < 0).sum() + (bias < 0).sum())


def _set_module(model: nn.Module, name: str, module: nn.Module) -> None:
    parent_name, _, child = name.rpartition(".")
    setattr(model.get_submodule(parent_name) if parent_name else model, child, module)


@torch.no_grad()
def merge_layers(model: nn.Module, layers: list[str], masks: dict[str, torch.Tensor] | None = None, *,
                 require_inactive: bool = True, nonnegative_input: bool = False) -> dict[str, torch.Tensor]:
    """Collapse the run ``layers`` into one layer in place (see the module docstring); returns ``masks`` without the
    entries of the replaced parameters (the merged layer is dense).

    With ``require_inactive`` every layer of the run but the last must have non-negative (BN-folded) weights and
    bias and, if followed by a ReLU, a non-negative input (a ReLU output, or the network input when the caller
    declares ``nonnegative_input``); otherwise the merge would change the function and is refused.
    """
    layers = list(layers)
    links = _links_for_run(model, layers)
    if require_inactive:
        for index, link in enumerate(links):
            if link.relu is None:
                continue  # no activation in between: the product is exact whatever the signs
            negatives = inactive_violations(model, link.layer, link.batchnorm)
            if negatives:
                raise UserError(f"cannot merge {link.layer!r}: it has {negatives} negative (BN-folded) weights or "
                                "biases, so the ReLU after it is not the identity; only inactive layers merge")
            if index == 0 and not (nonnegative_input or input_is_nonnegative(model, link.layer)):
                raise UserError(f"cannot merge {link.layer!r}: its input is not a ReLU output, so it may be "
                                "negative; pass nonnegative_input=True only if the network input is >= 0")
    first = model.get_submodule(layers[0])
    weight, bias = fold_batchnorm(first, model.get_submodule(links[0].batchnorm) if links[0].batchnorm else None)
    stride, padding = (tuple(first.stride), tuple(first.padding)) if isinstance(first, nn.Conv2d) else (None, None)
    for index, name in enumerate(layers[1:], start=1):
        layer = model.get_submodule(name)
        batchnorm = links[index].batchnorm if index < len(links) else None
        w2, b2 = fold_batchnorm(layer, model.get_submodule(batchnorm) if batchnorm else None)
        if isinstance(layer, nn.Conv2d):
            weight, bias = compose_conv(weight, bias, stride, w2, b2)
            stride = (stride[0] * layer.stride[0], stride[1] * layer.stride[1])
        else:
            weight, bias = compose_linear(weight, bias, w2, b2)
    if isinstance(first, nn.Conv2d):
        merged: nn.Module = nn.Conv2d(weight.shape[1], weight.shape[0], tuple(weight.shape[2:]), stride=stride,
                                      padding=padding, bias=True)
    else:
        merged = nn.Linear(weight.shape[1], weight.shape[0], bias=True)
    merged = merged.to(device=first.weight.device, dtype=first.weight.dtype)
    merged.weight.copy_(weight.to(first.weight.dtype))
    merged.bias.copy_(bias.to(first.weight.dtype))
    merged.train(first.training)
    replaced = [layers[0]] + [n for link in links for n in link.between] + layers[1:]
    _set_module(model, layers[0], merged)
    for name in replaced[1:]:
        _set_module(model, name, nn.Identity())
    prefixes = tuple(f"{name}." for name in replaced)
    return {k: v for k, v in (masks or {}).items() if not k.startswith(prefixes)}


def merge_edit(model: nn.Module, spec: Mapping[str, Any], masks: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """The ``{"op": "merge", "layers": [...]}`` structural edit (replayed by checkpoints; see the module docstring).

    Structural only: it checks the pattern, not the signs (a checkpoint replays it on freshly initialised weights);
    methods verify inactivity before they ask for a merge (:func:`inactive_violations`)."""
    layers = spec.get("layers")
    if not isinstance(layers, (list, tuple)) or not all(isinstance(n, str) for n in layers):
        raise UserError(f"merge edit needs 'layers': a list of layer names, got {layers!r}")
    return merge_layers(model, list(layers), masks, require_inactive=False)


__all__ = ["Link", "chain", "compose_conv", "compose_linear", "depth", "fold_batchnorm", "inactive_violations",
           "input_is_nonnegative", "merge_edit", "merge_layers"]
