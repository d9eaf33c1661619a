"""Per-filter / per-neuron activation samples of chosen layers, collected with forward hooks.

The information-theoretic pruning methods (MINT, SNACS, GC-Net) describe each filter of a conv layer by one scalar
per input sample, its spatially averaged map ``a_i(x) = mean_{h,w} f(x)[i, h, w]`` (MINT, arXiv 2003.08472, code
``*/utils/activations``; docs/methods/mint.md §2), and each neuron of a linear layer by its value. This module
collects those samples for many layers in one pass over a data set:

- :func:`class_balanced_indices`: ``n`` sample indices per class (seeded), the "scoring set" shared by all layers so
  that parent and child activations come from the same images (docs/methods/mint.md §3 step 3, §8 "sample
  misalignment").
- :func:`collect`: one batched, eval-mode, no-grad pass; forward hooks reduce every requested tensor to
  ``(batch, channels)`` on the fly (spatial mean for 4-D maps; linear inputs/outputs as they are, or averaged over
  contiguous blocks of ``block`` features, e.g. the ``H·W`` features a flatten gives each conv channel), so memory is
  ``samples × channels`` floats per site, never the feature maps.

Sites: ``outputs`` are module outputs (for a conv/linear: before BN and ReLU, MINT's choice), ``inputs`` are what a
module reads (its forward input: after BN/ReLU/pooling/residual adds — the values a connection ``W[j, i]`` actually
carries). ``patch_means`` are, for a conv, the mean over output positions of every input patch element
(:func:`conv_patch_means`), for a linear its input: since ``mean_{h,w} conv(x)[j] = Σ W[j]·P(x) + b_j`` is linear in
the weight, the spatially averaged output under *any* weight mask is one matrix product away (SNACS's operating
constraints re-evaluate a child layer under many masks, docs/methods/snacs.md §2).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

import torch
from torch import nn

from connprune.data import ImageData
from connprune.data.pipeline import normalize
from connprune.errors import UserError

__all__ = ["Activations", "class_balanced_indices", "collect", "conv_patch_means", "masked_mean_output",
           "reduce_per_channel"]


@dataclass
class Activations:
    """Reduced activations of one pass: ``(N, channels)`` float32 tensors on the CPU, rows in sample order."""

    outputs: dict[str, torch.Tensor] = field(default_factory=dict)
    """Module name → its reduced output."""
    inputs: dict[str, torch.Tensor] = field(default_factory=dict)
    """Module name → its reduced (first positional) input."""
    patch_means: dict[str, torch.Tensor] = field(default_factory=dict)
    """Module name → (N, C_in·k_h·k_w) patch means of a conv (:func:`conv_patch_means`), or a linear's input."""
    labels: torch.Tensor | None = None
    """Class labels of the samples (int64), when the data had labels."""
    indices: torch.Tensor | None = None
    """Indices of the samples in the source data set."""


def class_balanced_indices(labels: torch.Tensor, per_class: int, *, seed: int = 0,
                           replace: bool = False) -> torch.Tensor:
    """``per_class`` indices of every class present in ``labels`` (sorted by class, then by draw), seeded.

    Without ``replace`` a class with fewer samples contributes all it has (the partial CIFAR-10 here has ~500 per
    class); with ``replace`` it is drawn with replacement, as MINT's reference code does.
    """
    if per_class < 1:
        raise UserError(f"samples per class must be >= 1, got {per_class}")
    generator = torch.Generator().manual_seed(seed)
    chosen = []
    for cls in torch.unique(labels).tolist():
        members = torch.nonzero(labels == cls).squeeze(1)
        if replace:
            pick = members[torch.randint(len(members), (per_class,), generator=generator)]
        else:
            pick = members[torch.randperm(len(members), generator=generator)[:per_class]]
        chosen.append(pick)
    return torch.cat(chosen)


def reduce_per_channel(tensor: torch.Tensor, block: int = 1) -> torch.Tensor:
    """(B, C, ...) → (B, C): mean over every dimension after the channel one; (B, F) with ``block`` > 1 →
    (B, F / block), the mean of each contiguous block of ``block`` features."""
    if tensor.dim() > 2:
        return tensor.flatten(2).mean(dim=2)
    if block > 1:
        if tensor.shape[1] % block:
            raise ValueError(f"{tensor.shape[1]} features do not split into blocks of {block}")
        return tensor.reshape(tensor.shape[0], -1, block).mean(dim=2)
    return tensor


def conv_patch_means(x: torch.Tensor, conv: nn.Conv2d) -> torch.Tensor:
    """(B, C_in·k_h·k_w): for every input channel i and kernel offset (a, b), the mean over the conv's output
    positions of the input value that offset reads — ``F.unfold(x, ...).mean(-1)`` without materialising the
    unfolded tensor (k_h·k_w strided slices of the zero-padded input). Then ``mean_{h,w} conv(x)`` equals
    ``P @ W.flatten(1).T + b`` for any weight W of the conv's shape (zero padding, groups = 1)."""
    if conv.groups != 1 or conv.padding_mode != "zeros" or isinstance(conv.padding, str):
        raise ValueError("patch means need a plain zero-padded conv (groups=1, numeric padding)")
    (kh, kw), (sh, sw), (ph, pw), (dh, dw) = conv.kernel_size, conv.stride, conv.padding, conv.dilation
    padded = torch.nn.functional.pad(x, (pw, pw, ph, ph))
    height, width = padded.shape[2], padded.shape[3]
    out_h = (height - dh * (kh - 1) - 1) // sh + 1
    out_w = (width - dw * (kw - 1) - 1) // sw + 1
    columns = []
    for a in range(kh):
        for b in range(kw):
            window = padded[:, :, a * dh : a * dh + sh * (out_h - 1) + 1 : sh,
                            b * dw : b * dw + sw * (out_w - 1) + 1 : sw]
            columns.append(window.mean(dim=(2, 3)))
    return torch.stack(columns, dim=2).flatten(1)  # channel-major, then (a, b): W.flatten(1)'s order


def masked_mean_output(patch_means: torch.Tensor, module: nn.Module, weight: torch.Tensor | None = None
                       ) -> torch.Tensor:
    """Spatially averaged output of ``module`` (conv or linear) with ``weight`` (default: its own) from its patch
    means: ``P @ weight.flatten(1).T + bias`` (exact; see :func:`conv_patch_means`)."""
    weight = module.weight if weight is None else weight
    out = patch_means.to(weight.dtype) @ weight.detach().flatten(1).T.to(patch_means.device)
    if module.bias is not None:
        out = out + module.bias.detach().to(out.device)
    return out


@torch.no_grad()
def collect(model: nn.Module, data: ImageData | torch.Tensor, *, outputs: Sequence[str] = (),
            inputs: Sequence[str] = (), patch_means: Sequence[str] = (), input_blocks: Mapping[str, int] | None = None,
            indices: torch.Tensor | None = None, batch_size: int = 256,
            device: torch.device | str | None = None) -> Activations:
    """Reduced activations of ``outputs`` and ``inputs`` (module names) of ``model`` on ``data``.

    ``data``: an :class:`ImageData` (normalised as for evaluation, no augmentation) or an already normalised float
    tensor ``(N, C, H, W)``; ``indices`` selects samples (e.g. :func:`class_balanced_indices`). The model runs in
    eval mode under ``no_grad`` in batches of ``batch_size`` on ``device`` (default: the model's); its mode is
    restored afterwards. ``input_blocks[name] = k`` averages a linear module's input over blocks of ``k`` features.
    ``patch_means`` (conv or linear modules): see :func:`conv_patch_means`.
    """
    modules = dict(model.named_modules())
    for name in (*outputs, *inputs, *patch_means):
        if name not in modules:
            raise UserError(f"unknown module {name!r}; name a module of the model, e.g. "
                            f"{', '.join(repr(n) for n in list(modules)[1:4])}")
    blocks = dict(input_blocks or {})
    reference = next(iter(model.parameters()), None)
    device = torch.device(device) if device is not None else (reference.device if reference is not None
                                                             else torch.device("cpu"))
    found_out: dict[str, list[torch.Tensor]] = {name: [] for name in outputs}
    found_in: dict[str, list[torch.Tensor]] = {name: [] for name in inputs}
    found_patch: dict[str, list[torch.Tensor]] = {name: [] for name in patch_means}
    handles = []
    for name in patch_means:
        module = modules[name]
        if isinstance(module, nn.Conv2d):
            reduce = lambda args, module=module: conv_patch_means(args[0], module)  # noqa: E731
        elif isinstance(module, nn.Linear):
            reduce = lambda args: args[0]  # noqa: E731
        else:
            raise UserError(f"patch means need a conv or linear module; {name!r} is {type(module).__name__}")
        handles.append(module.register_forward_pre_hook(
            lambda _m, args, name=name, reduce=reduce: found_patch[name].append(reduce(args).float().cpu())))
    for name in outputs:
        handles.append(modules[name].register_forward_hook(
            lambda _m, _i, out, name=name: found_out[name].append(reduce_per_channel(out).float().cpu())))
    for name in inputs:
        handles.append(modules[name].register_forward_pre_hook(
            lambda _m, args, name=name: found_in[name].append(
                reduce_per_channel(args[0], blocks.get(name, 1)).float().cpu())))
    if isinstance(data, ImageData):
        source, labels = data.images, data.labels
    else:
        source, labels = data, None
    if indices is not None:
        indices = torch.as_tensor(indices, dtype=torch.int64)
    n = len(source) if indices is None else len(indices)
    was_training = model.training
    model.eval()
    try:
        for start in range(0, n, batch_size):
            rows = slice(start, start + batch_size) if indices is None else indices[start : start + batch_size]
            batch = source[rows].to(device)
            if isinstance(data, ImageData):
                batch = normalize(batch, data.info)
            model(batch)
    finally:
        for handle in handles:
            handle.remove()
        model.train(was_training)
    chosen_labels = None
    if labels is not None:
        chosen_labels = labels if indices is None else labels[indices]
    return Activations(outputs={k: torch.cat(v) for k, v in found_out.items()},
                       inputs={k: torch.cat(v) for k, v in found_in.items()},
                       patch_means={k: torch.cat(v) for k, v in found_patch.items()},
                       labels=chosen_labels, indices=indices)
