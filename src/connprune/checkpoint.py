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
from safetensors import SafetensorError, safe_open
from safetensors.torch import load_file, save_file
from torch import nn
from torch.overrides import TorchFunctionMode

from connprune import models
from connprune.errors import UserError
from connprune.surgery import edits, skips
from connprune.utils.io import atomic_dir, recover_dir

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
        value = json.loads(path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise UserError(f"{path} is not valid JSON ({exc}); the checkpoint is damaged, re-create it") from exc
    if not isinstance(value, dict):
        raise UserError(f"{path} holds a JSON {type(value).__name__}, not an object; the checkpoint is damaged, "
                        "re-create it")
    return value


MAX_UNITS = 1 << 24
"""The largest integer a ``model.json`` may give a width, a config key or a skip's size (16,777,216): far above any
real layer, far below a size whose allocation would exhaust memory. Anything larger is refused before any module is
built."""

_UNBOUNDED_KEYS = frozenset({"seed", "connections"})
"""Integers of ``model.json`` not bounded by :data:`MAX_UNITS` (a seed; a skip's connection count, which is checked
against its weight's shape instead)."""

_DTYPE_KINDS = {"BOOL": "bool", "U8": "int", "I8": "int", "I16": "int", "I32": "int", "I64": "int",
                "F16": "float", "BF16": "float", "F32": "float", "F64": "float"}


def _checkpoint_directory(directory: str | Path) -> Path:
    """``directory`` as a Path once it holds the files of a checkpoint (put back first if a save was killed after
    moving the old checkpoint aside; see :func:`connprune.utils.io.recover_dir`)."""
    directory = Path(directory)
    if not directory.is_dir():
        recover_dir(directory)
    if not directory.is_dir():
        raise UserError(f"checkpoint directory {directory} does not exist; pass a directory written by "
                        "`connprune train` or `connprune prune`")
    for required in (WEIGHTS, MODEL_JSON):
        if not (directory / required).is_file():
            raise UserError(f"{directory} is not a connprune checkpoint: {required} is missing; pass a directory "
                            "written by `connprune train` or `connprune prune`")
    return directory


def _check_bounds(value: Any, where: str, path: Path) -> None:
    """Refuse integers above :data:`MAX_UNITS` (and below 0) anywhere in ``value``, naming where they are."""
    if isinstance(value, dict):
        for key, item in value.items():
            if key not in _UNBOUNDED_KEYS:
                _check_bounds(item, f"{where}.{key}" if where else str(key), path)
    elif isinstance(value, (list, tuple)):
        for index, item in enumerate(value):
            _check_bounds(item, f"{where}[{index}]", path)
    elif isinstance(value, int) and not isinstance(value, bool) and not 0 <= value <= MAX_UNITS:
        raise UserError(f"{path}: {where} is {value:,}, outside 0 to {MAX_UNITS:,}; model.json was damaged or "
                        "edited, re-create the checkpoint")


def _read_meta(directory: Path) -> dict[str, Any]:
    """``model.json``, checked for its format, the types of its parts and absurd sizes."""
    path = directory / MODEL_JSON
    meta = _read_json(path)
    if meta.get("format") != FORMAT:
        raise UserError(f"{path} has format {meta.get('format')!r}; this connprune reads format {FORMAT}")
    kinds = {"architecture": str, "config": dict, "widths": dict, "biases": list, "edits": list}
    for key, kind in kinds.items():
        if key in meta and not isinstance(meta[key], kind) or key in ("architecture", "config") and key not in meta:
            raise UserError(f"{path}: {key!r} must be a JSON {kind.__name__.replace('str', 'string')}; the "
                            "checkpoint is damaged, re-create it")
    for name, width in meta.get("widths", {}).items():
        if not isinstance(width, list) or not 1 <= len(width) <= 3 or \
                not all(isinstance(v, int) and not isinstance(v, bool) and v >= 1 for v in width):
            raise UserError(f"{path}: layer {name!r} has width {width!r}; a width is 1 to 3 positive integers, "
                            "re-create the checkpoint")
    for key in ("config", "widths", "edits"):
        _check_bounds(meta.get(key, {}), key, path)
    return meta


def _header(path: Path) -> dict[str, tuple[str, tuple[int, ...]]]:
    """``name → (dtype, shape)`` of every tensor in a safetensors file, read from its header: no tensor is loaded
    (safetensors checks that the header's offsets cover the file exactly, so these shapes are what loading costs)."""
    try:
        with safe_open(str(path), framework="pt") as handle:
            return {name: (handle.get_slice(name).get_dtype(), tuple(handle.get_slice(name).get_shape()))
                    for name in handle.keys()}
    except (SafetensorError, OSError) as exc:
        raise UserError(f"{path} is truncated or corrupt ({exc}); re-create the checkpoint") from exc


def _check_skips(meta: dict[str, Any], header: dict[str, tuple[str, tuple[int, ...]]], path: Path) -> None:
    """A sparse skip's recorded size must be its weight's, before the skip is built (it draws a mask of
    ``out_units · in_units`` pairs)."""
    for edit in meta.get("edits", []):
        if not isinstance(edit, dict) or edit.get("op") != "skip" or edit.get("kind") != "n2n":
            continue
        key = f"{skips.CONTAINER}.{edit.get('name')}.conv.weight"
        recorded = [edit.get("out_units"), edit.get("in_units")]
        stored = list(header[key][1][:2]) if key in header else None
        if stored != recorded:
            raise UserError(f"{path}: skip {edit.get('name')!r} records {recorded[0]} × {recorded[1]} units but "
                            f"model.safetensors holds {'no ' + key if stored is None else stored}; the weights and "
                            "model.json come from different models")


class _NoRandomFill(TorchFunctionMode):
    """Skip random initialisation of meta tensors: there are no values to fill, and torch routes a meta
    ``normal_`` (every conv's Kaiming init) through a reference implementation whose first use imports torch._dynamo
    (seconds per process)."""

    FILLS = frozenset({torch.Tensor.normal_, torch.Tensor.log_normal_, torch.Tensor.exponential_,
                       torch.Tensor.cauchy_, torch.Tensor.geometric_, torch.Tensor.bernoulli_, torch.Tensor.random_})

    def __torch_function__(self, func: Any, types: Any, args: tuple = (), kwargs: dict | None = None) -> Any:
        if func in self.FILLS and args and isinstance(args[0], torch.Tensor) and args[0].is_meta:
            return args[0]
        return func(*args, **(kwargs or {}))


def _build_on_meta(meta: dict[str, Any], path: Path) -> nn.Module:
    """The model ``model.json`` describes, on the meta device: every shape, no memory."""
    try:
        with torch.device("meta"), _NoRandomFill():
            model = models.create(meta["architecture"], **meta["config"])
            edits.replay(model, meta.get("edits", []))
            apply_widths(model, meta.get("widths", {}))
            add_biases(model, meta.get("biases", []))
    except (RuntimeError, ValueError, TypeError, KeyError, IndexError, AttributeError) as exc:
        raise UserError(f"{path} describes a model that cannot be built ({type(exc).__name__}: {exc}); "
                        "model.json was damaged or edited, re-create the checkpoint") from exc
    return model


def _kind(dtype: torch.dtype) -> str:
    return "bool" if dtype == torch.bool else "float" if dtype.is_floating_point else "int"


def _check_against_header(model: nn.Module, meta: dict[str, Any], header: dict[str, tuple[str, tuple[int, ...]]],
                          path: Path) -> None:
    """Every tensor the rebuilt model needs is in the file with its shape and kind of dtype, and nothing else is
    (masks: boolean, shaped like their parameter). A mismatch names the layer."""
    expected = {k: (_kind(v.dtype), tuple(v.shape)) for k, v in model.state_dict().items()}
    state = {k: v for k, v in header.items() if not k.startswith(MASK_PREFIX)}
    missing, unexpected = sorted(set(expected) - set(state)), sorted(set(state) - set(expected))
    if missing or unexpected:
        detail = f"missing {missing[:3]}" if missing else f"unexpected {unexpected[:3]}"
        raise UserError(f"{path} does not match architecture {meta['architecture']!r} ({detail}); the weights and "
                        "model.json come from different models")
    for key, (dtype, shape) in sorted(state.items()):
        kind, want = expected[key]
        if shape != want or _DTYPE_KINDS.get(dtype) != kind:
            layer = key.rpartition(".")[0] or key
            raise UserError(f"layer {layer!r}: model.json builds {key} as {kind} {list(want)} but {path.name} holds "
                            f"{dtype} {list(shape)}; the weights and model.json come from different models (or "
                            "model.json was edited), re-create the checkpoint")
    for key, (dtype, shape) in sorted(header.items()):
        if key.startswith(MASK_PREFIX):
            target = expected.get(key[len(MASK_PREFIX):])
            if target is None or dtype != "BOOL" or shape != target[1]:
                raise UserError(f"{path.name}: mask {key[len(MASK_PREFIX):]!r} ({dtype} {list(shape)}) does not fit "
                                "a parameter of the model; the checkpoint is damaged, re-create it")


def _fill(model: nn.Module, path: Path) -> tuple[nn.Module, dict[str, torch.Tensor]]:
    """Load the (checked) tensors and make them the meta model's parameters and buffers; returns the masks."""
    try:
        tensors = load_file(str(path))
    except (SafetensorError, OSError) as exc:
        raise UserError(f"{path} is truncated or corrupt ({exc}); re-create the checkpoint") from exc
    masks = {k[len(MASK_PREFIX):]: v for k, v in tensors.items() if k.startswith(MASK_PREFIX)}
    expected = model.state_dict()
    state = {k: v.to(expected[k].dtype) for k, v in tensors.items() if not k.startswith(MASK_PREFIX)}
    model.load_state_dict(state, assign=True)  # the loaded tensors become the model's: no second copy
    left = [name for name, t in [*model.named_parameters(), *model.named_buffers()] if t.is_meta]
    if left:
        raise RuntimeError(f"{left[:3]} are not saved in checkpoints, so they cannot be restored")
    return model, masks


def load_checkpoint(directory: str | Path) -> Checkpoint:
    """Rebuild the model saved in ``directory`` and return it with its masks and metrics.

    Untrusted files cost no more than their weights: ``model.json`` is checked (types, sizes) and the model it
    describes is built on the meta device and compared with the safetensors header (shapes and dtypes, read without
    loading a tensor) before any memory is allocated; a mismatch is a UserError naming the layer. Nothing from the
    files is executed.
    """
    directory = _checkpoint_directory(directory)
    meta = _read_meta(directory)
    header = _header(directory / WEIGHTS)
    _check_skips(meta, header, directory / MODEL_JSON)
    model = _build_on_meta(meta, directory / MODEL_JSON)
    _check_against_header(model, meta, header, directory / WEIGHTS)
    model, masks = _fill(model, directory / WEIGHTS)
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
