"""Fold every BatchNorm into the convolution or linear layer that directly feeds it (inference only, exact).

>>> from connprune.surgery.fold import fold_batchnorm
>>> deployed = fold_batchnorm(model, (3, 32, 32), masks=masks)   # doctest: +SKIP

In eval mode a BatchNorm is the per-channel affine map ``y = γ (z − μ) / √(σ² + ε) + β`` with its running statistics
``μ, σ²`` (Ioffe & Szegedy 2015, Algorithm 2, "inference"). When ``z = W x + b`` is the output of a convolution or
linear layer and nothing else reads ``z``, the two compose into one layer (Jacob et al., CVPR 2018, Section 3.2;
the same algebra as :func:`torch.nn.utils.fusion.fuse_conv_bn_weights`)::

    s = γ / √(σ² + ε)        W' = s[:, None, ...] · W        b' = s · (b − μ) + β

Folding removes one memory pass over every activation map per BN, which is what deployment runtimes do anyway
(ONNX Runtime fuses Conv+BN itself; PyTorch eager does not). The arithmetic is done in float64 and cast back, so the
folded model equals the original up to float rounding (~1e-6 relative in float32).

Which BN follows which layer is read from autograd, not from module names or forward code: one forward pass with
hooks records each conv/linear output's ``grad_fn`` node and each BN input's, and counts how many graph edges read
every node. A BN is folded when its input node *is* a conv/linear output node that exactly one edge reads (the BN)
— so a conv whose output also feeds a shortcut, an in-place op between the two, a BN called twice, a BN with hooks,
one without running statistics (it normalises with batch statistics even in eval mode) or a linear output that is
not ``(N, features)`` (``BatchNorm1d`` then normalises another dimension) all keep their BN. Everything else about
the model (skip-branch hooks, residual adds) is left as it is: the input is deep-copied, never changed.

The result is an inference model: it is returned in eval mode, and ``connprune_arch`` is removed from it, because a
checkpoint of a folded model could not be rebuilt by :func:`connprune.models.create` (its BNs are gone).
"""

from __future__ import annotations

import copy
from collections import Counter
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import torch
from torch import nn

from connprune.errors import UserError

__all__ = ["FoldPair", "fold_batchnorm", "fold_pairs", "foldable_batchnorms"]

_BN = nn.modules.batchnorm._BatchNorm


@dataclass(frozen=True)
class FoldPair:
    """A BatchNorm (``batchnorm``) that reads only the output of ``layer`` (a conv or linear module name)."""

    layer: str
    batchnorm: str


def _is_layer(module: nn.Module) -> bool:
    """A layer BN can fold into: a (non-transposed) convolution or a linear layer."""
    conv = isinstance(module, nn.modules.conv._ConvNd) and not module.transposed
    return conv or isinstance(module, nn.Linear)


def _example(model: nn.Module, example: torch.Tensor | Sequence[int]) -> torch.Tensor:
    """``example`` itself, or a batch of two random inputs of shape ``example`` on the model's device and dtype (two:
    a BN without running statistics cannot normalise a batch of one)."""
    if isinstance(example, torch.Tensor):
        return example.detach()
    reference = next(iter(model.parameters()), None)
    device = reference.device if reference is not None else torch.device("cpu")
    dtype = reference.dtype if reference is not None and reference.is_floating_point() else torch.float32
    generator = torch.Generator().manual_seed(0)
    return torch.randn((2, *(int(s) for s in example)), generator=generator).to(device, dtype)


def _edge_counts(outputs: object) -> Counter:
    """How many autograd edges read each ``grad_fn`` node of the graph behind ``outputs`` (model outputs count)."""
    roots = [t.grad_fn for t in _tensors(outputs) if t.grad_fn is not None]
    counts: Counter = Counter(roots)
    seen, stack = set(roots), list(roots)
    while stack:
        for child, _ in stack.pop().next_functions:
            if child is None:
                continue
            counts[child] += 1
            if child not in seen:
                seen.add(child)
                stack.append(child)
    return counts


def _tensors(value: object) -> list[torch.Tensor]:
    """Every tensor in a (nested) model output."""
    if isinstance(value, torch.Tensor):
        return [value]
    if isinstance(value, Mapping):
        value = list(value.values())
    if isinstance(value, (list, tuple)):
        return [t for item in value for t in _tensors(item)]
    return []


def fold_pairs(model: nn.Module, example: torch.Tensor | Sequence[int]) -> list[FoldPair]:
    """The (layer, BN) pairs :func:`fold_batchnorm` folds: see the module docstring for the rule.

    ``example``: an input batch, or the input shape without the batch dimension (e.g. ``(3, 32, 32)``). The model
    runs once in eval mode with autograd on (its ``training`` flags are restored afterwards).
    """
    modules = dict(model.named_modules())
    calls: Counter = Counter()
    produced: dict[str, object] = {}  # layer → grad_fn node of its output
    read: dict[str, object] = {}  # BN → grad_fn node of its input
    two_dim: dict[str, bool] = {}

    def hook(name: str):
        def record(module: nn.Module, inputs: tuple, output: torch.Tensor) -> None:
            calls[name] += 1
            if isinstance(module, _BN):
                read[name] = inputs[0].grad_fn
            else:
                produced[name] = output.grad_fn
                two_dim[name] = output.dim() == 2
        return record

    handles = [m.register_forward_hook(hook(n)) for n, m in modules.items() if _is_layer(m) or isinstance(m, _BN)]
    modes = [(m, m.training) for m in modules.values()]
    try:
        model.eval()
        x = _example(model, example).requires_grad_(True)
        with torch.enable_grad():
            counts = _edge_counts(model(x))
    finally:
        for handle in handles:
            handle.remove()
        for module, training in modes:
            module.training = training
    by_node = {node: name for name, node in produced.items() if node is not None and calls[name] == 1}
    pairs = []
    for bn_name, node in read.items():
        layer = by_node.get(node)
        bn = modules[bn_name]
        if layer is None or calls[bn_name] != 1 or counts[node] != 1 or not _foldable(bn):
            continue
        if isinstance(modules[layer], nn.Linear) and not two_dim[layer]:
            continue
        pairs.append(FoldPair(layer=layer, batchnorm=bn_name))
    return pairs


def _foldable(bn: nn.Module) -> bool:
    """Eval-mode BN that is a fixed affine map: running statistics, no hooks of its own."""
    hooks = bn._forward_hooks or bn._forward_pre_hooks or bn._backward_hooks
    return bn.running_mean is not None and bn.running_var is not None and not hooks


def foldable_batchnorms(model: nn.Module, example: torch.Tensor | Sequence[int]) -> tuple[list[str], list[str]]:
    """(BN module names that fold, those that do not) — the second list says what a deployment keeps as BN."""
    folded = {pair.batchnorm for pair in fold_pairs(model, example)}
    names = [name for name, module in model.named_modules() if isinstance(module, _BN)]
    return [n for n in names if n in folded], [n for n in names if n not in folded]


@torch.no_grad()
def _fold_into(layer: nn.Module, bn: nn.Module) -> None:
    """Fold ``bn`` into ``layer``'s weight and bias in place (float64 arithmetic; formula in the module docstring)."""
    weight = layer.weight.detach().double()
    mean, var = bn.running_mean.double(), bn.running_var.double()
    gamma = bn.weight.double() if bn.weight is not None else torch.ones_like(mean)
    beta = bn.bias.double() if bn.bias is not None else torch.zeros_like(mean)
    scale = gamma / torch.sqrt(var + bn.eps)
    bias = layer.bias.double() if layer.bias is not None else torch.zeros_like(mean)
    folded_weight = weight * scale.reshape(-1, *([1] * (weight.dim() - 1)))
    folded_bias = (bias - mean) * scale + beta
    layer.weight.copy_(folded_weight.to(layer.weight.dtype))
    if layer.bias is None:
        layer.bias = nn.Parameter(folded_bias.to(layer.weight.dtype), requires_grad=layer.weight.requires_grad)
    else:
        layer.bias.copy_(folded_bias.to(layer.bias.dtype))


def _apply_masks(model: nn.Module, masks: Mapping[str, torch.Tensor]) -> None:
    """Multiply each named parameter by its keep-mask (True = keep), checking names and shapes."""
    parameters = dict(model.named_parameters())
    for name, mask in masks.items():
        if name not in parameters or tuple(mask.shape) != tuple(parameters[name].shape):
            raise UserError(f"mask {name!r} does not match a parameter of the model (name or shape); pass the masks "
                            "that surgery.apply or checkpoint.load_checkpoint returned for this model")
        with torch.no_grad():
            parameters[name].mul_(mask.to(parameters[name].device, parameters[name].dtype))


def fold_batchnorm(model: nn.Module, example: torch.Tensor | Sequence[int],
                   masks: Mapping[str, torch.Tensor] | None = None) -> nn.Module:
    """A copy of ``model`` with masks applied and every foldable BN folded into its layer (module docstring).

    ``example``: an input batch or the input shape ``(C, H, W)``. ``masks``: keep-masks by parameter name, applied
    to the copy before folding (so masked weights are zero in the result). The input model is not changed; the copy
    is in eval mode, its folded BNs replaced by ``nn.Identity``.
    """
    folded = copy.deepcopy(model).eval()
    if masks:
        _apply_masks(folded, masks)
    for pair in fold_pairs(folded, example):
        _fold_into(folded.get_submodule(pair.layer), folded.get_submodule(pair.batchnorm))
        parent_name, _, child = pair.batchnorm.rpartition(".")
        parent = folded.get_submodule(parent_name) if parent_name else folded
        setattr(parent, child, nn.Identity())
    if hasattr(folded, "connprune_arch"):
        del folded.connprune_arch
    return folded
