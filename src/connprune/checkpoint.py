"""Checkpoint directories: ``model.safetensors`` + ``model.json`` (+ ``metrics.json``), no pickle anywhere.

``model.json`` holds the architecture name and constructor config, the structural edits (merged layers, skip
branches; see :mod:`connprune.surgery.edits`) and the per-layer widths after surgery, so
:func:`load` rebuilds the exact (possibly shrunk) module from the registry without executing anything from the file.
Masks, if any, are stored beside the weights as tensors named ``mask::<parameter name>``. Every directory is written
under a temporary name and renamed into place, so a crash never leaves a half-written checkpoint.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file
from torch import nn

from connprune import models
from connprune.errors import UserError
from connprune.surgery import edits
from connprune.utils.io import atomic_dir

FORMAT = 1
MASK_PREFIX = "mask::"
WEIGHTS, MODEL_JSON, METRICS_JSON = "model.safetensors", "model.json", "metrics.json"


@dataclass
class Checkpoint:
    """A loaded checkpoint: the rebuilt model (eval mode), its masks, ``model.json`` and ``metrics.json``."""

    model: nn.Module
    meta: dict[str, Any]
    masks: dict[str, torch.Tensor] = field(default_factory=dict)
    metrics: dict[str, Any] = field(default_factory=dict)


def layer_widths(model: nn.Module) -> dict[str, list[int]]:
    """Per-layer shapes that surgery may change: conv ``[in, out, groups]``, linear ``[in, out]``, BN ``[features]``."""
    widths: dict[str, list[int]] = {}
    for name, module in model.named_modules():
        if isinstance(module, nn.Conv2d):
            widths[name] = [module.in_channels, module.out_channels, module.groups]
        elif isinstance(module, nn.Linear):
            widths[name] = [module.in_features, module.out_features]
        elif isinstance(module, nn.modules.batchnorm._BatchNorm):
            widths[name] = [module.num_features]
    return widths


def _resized(module: nn.Module, width: list[int]) -> nn.Module:
    """A fresh module of ``module``'s kind and hyper-parameters with the recorded ``width``."""
    if isinstance(module, nn.Conv2d):
        in_ch, out_ch, groups = width
        return nn.Conv2d(in_ch, out_ch, module.kernel_size, module.stride, module.padding, module.dilation, groups,
                         module.bias is not None, module.padding_mode)
    if isinstance(module, nn.Linear):
        return nn.Linear(width[0], width[1], bias=module.bias is not None)
    return type(module)(width[0], eps=module.eps, momentum=module.momentum, affine=module.affine,
                        track_running_stats=module.track_running_stats)


def apply_widths(model: nn.Module, widths: dict[str, list[int]]) -> nn.Module:
    """Replace every layer whose recorded width differs from ``model``'s by a module of that width (in place)."""
    current = layer_widths(model)
    for name, width in widths.items():
        if name not in current:
            raise UserError(f"model.json names layer {name!r}, which {type(model).__name__} does not have; "
                            "the checkpoint belongs to another architecture")
        if current[name] != list(width):
            parent_name, _, child = name.rpartition(".")
            parent = model.get_submodule(parent_name) if parent_name else model
            setattr(parent, child, _resized(model.get_submodule(name), list(width)))
    return model


def layers_with_bias(model: nn.Module) -> list[str]:
    """Conv/linear layers that have a bias (surgery may add one when it folds a constant unit into a consumer)."""
    return [name for name, m in model.named_modules() if isinstance(m, (nn.Conv2d, nn.Linear)) and m.bias is not None]


def add_biases(model: nn.Module, names: list[str]) -> nn.Module:
    """Give the named conv/linear layers a (zero) bias where the freshly built architecture has none."""
    for name in names:
        module = model.get_submodule(name)
        if module.bias is None:
            module.bias = nn.Parameter(torch.zeros(module.weight.shape[0]))
    return model


def save(
    model: nn.Module,
    directory: str | Path,
    *,
    data_info: dict[str, Any] | None = None,
    metrics: dict[str, Any] | None = None,
    masks: dict[str, torch.Tensor] | None = None,
) -> Path:
    """Write ``model`` (built by :func:`connprune.models.create`) as a checkpoint directory, atomically."""
    if not hasattr(model, "connprune_arch"):
        raise UserError("this model was not built by connprune.models.create, so it cannot be rebuilt from a "
                        "checkpoint; build it with connprune.models.create(name, ...)")
    tensors = {k: v.detach().cpu().contiguous() for k, v in model.state_dict().items()}
    for name, mask in (masks or {}).items():
        tensors[MASK_PREFIX + name] = mask.detach().cpu().to(torch.bool).contiguous()
    meta = {
        "format": FORMAT,
        "architecture": model.connprune_arch,
        "config": model.connprune_config,
        "widths": layer_widths(model),
        "biases": layers_with_bias(model),
        "skips": [e for e in edits.recorded(model) if e["op"] == "skip"],
        "edits": edits.recorded(model),
        "data": data_info or {},
    }
    directory = Path(directory)
    with atomic_dir(directory) as tmp:
        save_file(tensors, str(tmp / WEIGHTS))
        (tmp / MODEL_JSON).write_text(json.dumps(meta, indent=2) + "\n")
        if metrics is not None:
            (tmp / METRICS_JSON).write_text(json.dumps(metrics, indent=2) + "\n")
    return directory


def _read_json(path: Path) -> dict[str, Any]:
    try:
        return json.loads(path.read_text())
    except json.JSONDecodeError as exc:
        raise UserError(f"{path} is not valid JSON ({exc}); the checkpoint is damaged, re-create it") from exc


def load_checkpoint(directory: str | Path) -> Checkpoint:
    """Rebuild the model saved in ``directory`` and return it with its masks and metrics."""
    directory = Path(directory)
    if not directory.is_dir():
        raise UserError(f"checkpoint directory {directory} does not exist; pass a directory written by "
                        "`connprune train` or `connprune prune`")
    for required in (WEIGHTS, MODEL_JSON):
        if not (directory / required).is_file():
            raise UserError(f"{directory} is not a connprune checkpoint: {required} is missing; pass a directory "
                            "written by `connprune train` or `connprune prune`")
    meta = _read_json(directory / MODEL_JSON)
    if meta.get("format") != FORMAT:
        raise UserError(f"{directory / MODEL_JSON} has format {meta.get('format')!r}; this connprune reads "
                        f"format {FORMAT}")
    try:
        tensors = load_file(str(directory / WEIGHTS))
    except (SafetensorError, OSError) as exc:
        raise UserError(f"{directory / WEIGHTS} is truncated or corrupt ({exc}); re-create the checkpoint") from exc
    model = models.create(meta["architecture"], **meta["config"])
    edits.replay(model, meta.get("edits", []))
    apply_widths(model, meta.get("widths", {}))
    add_biases(model, meta.get("biases", []))
    masks = {k[len(MASK_PREFIX):]: v for k, v in tensors.items() if k.startswith(MASK_PREFIX)}
    state = {k: v for k, v in tensors.items() if not k.startswith(MASK_PREFIX)}
    expected = model.state_dict()
    missing = sorted(set(expected) - set(state))
    unexpected = sorted(set(state) - set(expected))
    wrong = sorted(k for k in set(state) & set(expected) if state[k].shape != expected[k].shape)
    if missing or unexpected or wrong:
        detail = (missing and f"missing {missing[:3]}") or (unexpected and f"unexpected {unexpected[:3]}") or \
            f"shape mismatch in {wrong[:3]}"
        raise UserError(f"{directory / WEIGHTS} does not match architecture {meta['architecture']!r} "
                        f"({detail}); the weights and model.json come from different models")
    model.load_state_dict(state)
    metrics = _read_json(directory / METRICS_JSON) if (directory / METRICS_JSON).is_file() else {}
    return Checkpoint(model=model.eval(), meta=meta, masks=masks, metrics=metrics)


def load(directory: str | Path) -> nn.Module:
    """The model saved in ``directory``, rebuilt (shrunk, with masks applied) and in eval mode."""
    checkpoint = load_checkpoint(directory)
    parameters = dict(checkpoint.model.named_parameters())
    with torch.no_grad():
        for name, mask in checkpoint.masks.items():
            parameters[name].mul_(mask.to(parameters[name].dtype))
    return checkpoint.model
