"""Checkpoint directories: ``model.safetensors`` + ``model.json`` (+ ``metrics.json``), no pickle anywhere.

``model.json`` holds the architecture name and constructor config, the structural edits (merged layers, skip
branches; see :mod:`connprune.surgery.edits`), the per-layer widths after surgery and, for a physically shrunk model,
the original indices of the units each layer kept (``kept_units``, :data:`connprune.surgery.shrink.KEPT_UNITS`), so
:func:`load` rebuilds the exact (possibly shrunk) module from the registry without executing anything from the file.
Masks, if any, are stored beside the weights as tensors named ``mask::<parameter name>``. Every directory is written
under a temporary name and renamed into place, so a crash never leaves a half-written checkpoint.

Any ``nn.Module`` saves. A model from outside the zoo records its class (``"architecture": null``), or the factory
that builds it (``"architecture": "package.module:factory"`` with its keyword arguments in ``"config"``), and the
attributes surgery changes (``"modules"``: a layer's ``in_channels``, a LayerNorm's ``normalized_shape``, an
attention's ``embed_dim``, ...). Loading it takes the user's freshly built module (``load(dir, model=MyNet())``) or
the factory (``load(dir, model="package.module:factory")``, which imports that code: connprune imports nothing a
file names unless the caller names it too); the recorded attributes, the stored tensor shapes, edits and weights are
then applied to that module.
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
from connprune.surgery.shrink import KEPT_UNITS
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


_PLAIN = (bool, int, float, str, type(None))
CLASS_KEY = "_class"
"""The key of a module's class in ``model.json``'s ``modules`` (never an attribute name: those are public)."""


def _plain(value: Any) -> bool:
    return isinstance(value, _PLAIN) or isinstance(value, (tuple, list)) and all(isinstance(v, _PLAIN) for v in value)


def module_attributes(model: nn.Module) -> dict[str, dict[str, Any]]:
    """The plain public attributes (numbers, strings, tuples of them) of every module that holds parameters or
    buffers itself: what surgery changes beside tensor shapes (``in_channels``, ``normalized_shape``,
    ``embed_dim``, ``num_features``, ...), as JSON."""
    found: dict[str, dict[str, Any]] = {}
    for name, module in model.named_modules():
        if next(module.parameters(recurse=False), None) is None and next(module.buffers(recurse=False), None) is None:
            continue
        attributes = {key: list(value) if isinstance(value, tuple) else value for key, value in vars(module).items()
                      if not key.startswith("_") and key != "training" and _plain(value)}
        found[name] = {CLASS_KEY: _class_name(module), **attributes}
    return found


def _class_name(module: nn.Module) -> str:
    return f"{type(module).__module__}.{type(module).__qualname__}"


def conform(model: nn.Module, attributes: dict[str, dict[str, Any]],
            header: dict[str, tuple[str, tuple[int, ...]]]) -> nn.Module:
    """Give a freshly built ``model`` the recorded module ``attributes`` and the tensor shapes of the checkpoint's
    ``header`` (empty tensors of those shapes; the values are loaded after the check against the header). Only
    attributes the module already has, of the same kind, are set."""
    modules = dict(model.named_modules())
    for name, recorded in attributes.items():
        if name not in modules:
            raise UserError(f"model.json names module {name!r}, which {type(model).__name__} does not have; the "
                            "checkpoint belongs to another model")
        module = modules[name]
        if recorded.get(CLASS_KEY, _class_name(module)) != _class_name(module):
            raise UserError(f"module {name!r} is a {_class_name(module)} but the checkpoint's is a "
                            f"{recorded[CLASS_KEY]}; the checkpoint belongs to another model")
        for key, value in recorded.items():
            current = vars(module).get(key, ...)
            value = tuple(value) if isinstance(current, tuple) and isinstance(value, list) else value
            if current is not ... and (type(value) is type(current) or current is None or value is None):
                setattr(module, key, value)
    state = model.state_dict(keep_vars=True)
    for key, (_, shape) in header.items():
        owner_name, _, attribute = key.rpartition(".")
        owner, current = modules.get(owner_name), state.get(key)
        if key.startswith(MASK_PREFIX) or owner is None or current is not None and tuple(current.shape) == shape:
            continue
        if current is None and attribute == "bias" and getattr(owner, "bias", ...) is None:
            owner.bias = nn.Parameter(torch.empty(shape))  # surgery folded a removed unit into a bias
        elif isinstance(current, nn.Parameter):
            setattr(owner, attribute, nn.Parameter(torch.empty(shape, dtype=current.dtype),
                                                   requires_grad=current.requires_grad))
        elif current is not None:
            owner.register_buffer(attribute, torch.empty(shape, dtype=current.dtype))
    return model


def save(
    model: nn.Module,
    directory: str | Path,
    *,
    data_info: dict[str, Any] | None = None,
    metrics: dict[str, Any] | None = None,
    masks: dict[str, torch.Tensor] | None = None,
    architecture: str | None = None,
    config: dict[str, Any] | None = None,
) -> Path:
    """Write ``model`` as a checkpoint directory, atomically.

    A model built by :func:`connprune.models.create` (a zoo name or a ``"package.module:factory"``) records how it
    was built. Any other module records its class; pass ``architecture="package.module:factory"`` (and the
    factory's keyword arguments as ``config``, JSON values) to record how to build it instead."""
    if architecture is not None and not models.is_factory(architecture):
        raise UserError(f"architecture={architecture!r} is not an importable factory; pass 'package.module:function' "
                        "(a function or class that builds the model from keyword arguments)")
    built_by = getattr(model, "connprune_arch", None) if architecture is None else architecture
    built_with = (getattr(model, "connprune_config", {}) if architecture is None else config) or {}
    try:
        json.dumps(built_with)
    except TypeError as exc:
        raise UserError(f"config must hold JSON values (numbers, strings, lists, dicts): {exc}") from None
    tensors = {k: v.detach().cpu().contiguous() for k, v in model.state_dict().items()}
    for name, mask in (masks or {}).items():
        tensors[MASK_PREFIX + name] = mask.detach().cpu().to(torch.bool).contiguous()
    meta = {
        "format": FORMAT,
        "architecture": built_by,
        "config": built_with,
        **({} if built_by in models.names() else {"class": _class_name(model), "modules": module_attributes(model)}),
        "widths": layer_widths(model),
        "biases": layers_with_bias(model),
        "skips": [e for e in edits.recorded(model) if e["op"] == "skip"],
        "kept_units": getattr(model, KEPT_UNITS, None) or {},
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


def _json_kind(kind: type | tuple[type, ...]) -> str:
    names = {"str": "string", "NoneType": "null", "dict": "object", "list": "array"}
    return " or ".join(names.get(k.__name__, k.__name__) for k in (kind if isinstance(kind, tuple) else (kind,)))


def _read_meta(directory: Path) -> dict[str, Any]:
    """``model.json``, checked for its format, the types of its parts and absurd sizes."""
    path = directory / MODEL_JSON
    meta = _read_json(path)
    if meta.get("format") != FORMAT:
        raise UserError(f"{path} has format {meta.get('format')!r}; this connprune reads format {FORMAT}")
    kinds = {"architecture": (str, type(None)), "config": dict, "widths": dict, "biases": list, "edits": list,
             "kept_units": dict, "modules": dict}
    for key, kind in kinds.items():
        if key in meta and not isinstance(meta[key], kind) or key in ("architecture", "config") and key not in meta:
            raise UserError(f"{path}: {key!r} must be a JSON {_json_kind(kind)}; the checkpoint is damaged, "
                            "re-create it")
    for name, width in meta.get("widths", {}).items():
        if not isinstance(width, list) or not 1 <= len(width) <= 3 or \
                not all(isinstance(v, int) and not isinstance(v, bool) and v >= 1 for v in width):
            raise UserError(f"{path}: layer {name!r} has width {width!r}; a width is 1 to 3 positive integers, "
                            "re-create the checkpoint")
    for key in ("config", "widths", "edits"):
        _check_bounds(meta.get(key, {}), key, path)
    if not all(isinstance(v, dict) for v in meta.get("modules", {}).values()):
        raise UserError(f"{path}: 'modules' must map module names to JSON objects; re-create the checkpoint")
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
        raise UserError(f"{path} does not match architecture {meta['architecture'] or meta.get('class')!r} ({detail}); "
                        "the weights and model.json come from different models")
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


def _build_given(meta: dict[str, Any], model: nn.Module | str | None,
                 header: dict[str, tuple[str, tuple[int, ...]]], path: Path) -> nn.Module:
    """The module ``model`` names (the caller's instance, or built by the factory the caller names), given the
    checkpoint's edits, attributes and tensor shapes (:func:`conform`)."""
    architecture = meta.get("architecture")
    if model is None:
        built_by = f"the factory {architecture!r}" if architecture else f"{meta.get('class', 'a class')} (no factory)"
        how = f"model={architecture!r} (CLI: --model {architecture}) to import it, or " if architecture else ""
        raise UserError(f"{path.parent} holds a model from outside the zoo, built by {built_by}; connprune imports "
                        f"code only when asked: pass {how}model=YourModel() built as it was before pruning")
    if isinstance(model, str):
        if not models.is_factory(model):
            raise UserError(f"model={model!r}: pass a zoo name, 'package.module:factory' or an nn.Module")
        model = models.create(model, **meta["config"])  # imports the code the caller named
    if not isinstance(model, nn.Module):
        raise UserError(f"model must be an nn.Module or 'package.module:factory', got {type(model).__name__}")
    try:
        edits.replay(model, meta.get("edits", []))
        return conform(model, meta.get("modules", {}), header)
    except (RuntimeError, ValueError, TypeError, KeyError, IndexError, AttributeError) as exc:
        raise UserError(f"{path} cannot be applied to {type(model).__name__} ({type(exc).__name__}: {exc}); pass "
                        "the model the checkpoint was saved from, built as it was before pruning") from exc


def load_checkpoint(directory: str | Path, model: nn.Module | str | None = None) -> Checkpoint:
    """Rebuild the model saved in ``directory`` and return it with its masks and metrics.

    ``model``: for a checkpoint of a model from outside the zoo, the freshly built module to load into (the
    recorded edits, attributes, widths and weights are applied to it, in place) or the ``"package.module:factory"``
    that builds it (imported: only when named here). Zoo checkpoints need none.

    Untrusted files cost no more than their weights: ``model.json`` is checked (types, sizes) and a zoo model it
    describes is built on the meta device and compared with the safetensors header (shapes and dtypes, read without
    loading a tensor) before any memory is allocated; a mismatch is a UserError naming the layer. Nothing from the
    files is executed.
    """
    directory = _checkpoint_directory(directory)
    meta = _read_meta(directory)
    header = _header(directory / WEIGHTS)
    _check_skips(meta, header, directory / MODEL_JSON)
    if model is None and meta.get("architecture") in models.names():
        model = _build_on_meta(meta, directory / MODEL_JSON)
    else:
        model = _build_given(meta, model, header, directory / MODEL_JSON)
    _check_against_header(model, meta, header, directory / WEIGHTS)
    model, masks = _fill(model, directory / WEIGHTS)
    if meta.get("kept_units"):
        setattr(model, KEPT_UNITS, meta["kept_units"])
    metrics = _read_json(directory / METRICS_JSON) if (directory / METRICS_JSON).is_file() else {}
    return Checkpoint(model=model.eval(), meta=meta, masks=masks, metrics=metrics)


def load(directory: str | Path, model: nn.Module | str | None = None) -> nn.Module:
    """The model saved in ``directory``, rebuilt (shrunk, with masks applied) and in eval mode; ``model`` as for
    :func:`load_checkpoint`."""
    checkpoint = load_checkpoint(directory, model)
    parameters = dict(checkpoint.model.named_parameters())
    with torch.no_grad():
        for name, mask in checkpoint.masks.items():
            parameters[name].mul_(mask.to(parameters[name].dtype))
    return checkpoint.model
