"""Take a model out of Python: ONNX and ``torch.export`` (``.pt2``) files, and an ONNX Runtime session to run them.

>>> from connprune.measure.runtime import OnnxSession, to_onnx, to_pt2
>>> to_onnx(model, torch.randn(2, 3, 32, 32), "model.onnx")          # doctest: +SKIP
>>> OnnxSession("model.onnx", threads=2)(x)                            # doctest: +SKIP
>>> program = to_pt2(model, torch.randn(2, 3, 32, 32), "model.pt2")   # doctest: +SKIP

- **ONNX** (:func:`to_onnx`) through :func:`torch.onnx.export`. Two exporters exist in torch 2.13 and both give the
  same outputs (to ~1e-6) on the zoo's models, pruned and shrunk ones included: ``exporter="torchscript"`` (the
  default here: ``dynamo=False``, tracing with ``torch.jit``; ~1 s for a ResNet-20, one self-contained file, needs
  only ``onnx`` for the check) and ``exporter="dynamo"`` (``torch.export`` then onnxscript; ~8 s, needs
  ``onnxscript``, torch's default since 2.9 and the one that will remain: torch warns that the TorchScript exporter
  is deprecated). Both export a dynamic batch dimension, eval mode, weights inside the file (``external_data=False``),
  and the written model passes :func:`onnx.checker.check_model`.
- **pt2** (:func:`to_pt2`): :func:`torch.export.export` (non-strict) with a dynamic batch, saved with
  :func:`torch.export.save`; returns the :class:`~torch.export.ExportedProgram`, so a caller can check what it computes
  before trusting the file. connprune never *loads* ``.pt2`` files: :func:`torch.export.load` may unpickle.
- **ONNX Runtime** (:class:`OnnxSession`): a CPU ``InferenceSession`` with all graph optimisations (it fuses
  Conv+BN+ReLU itself), a fixed number of intra-op threads and sequential execution, called with torch tensors.

Outputs are written under a temporary name beside the target and renamed into place, so an interrupted export never
leaves a half-written file; an existing file is only replaced with ``overwrite=True`` (:func:`check_output`).
``onnx``, ``onnxruntime`` and ``onnxscript`` are the optional extra ``connprune[export]``; without them the ONNX
functions raise a :class:`~connprune.errors.UserError` that names it.
"""

from __future__ import annotations

import contextlib
import importlib
import os
import tempfile
import warnings
from collections.abc import Iterator, Sequence
from pathlib import Path
from types import ModuleType
from typing import Any, Literal

import torch
from torch import nn

from connprune.errors import UserError

__all__ = ["EXPORT_EXTRA", "OnnxSession", "check_output", "eval_mode", "published", "relative_error", "require",
           "to_onnx", "to_pt2"]

EXPORT_EXTRA = "pip install 'connprune[export]'"
Exporter = Literal["torchscript", "dynamo"]


def require(module: str, purpose: str) -> ModuleType:
    """Import an optional dependency of the ``export`` extra, or a UserError naming the extra to install."""
    try:
        return importlib.import_module(module)
    except ImportError as exc:
        raise UserError(f"{purpose} needs the {module!r} package, which is not installed; install the export "
                        f"extra: {EXPORT_EXTRA}") from exc


@contextlib.contextmanager
def eval_mode(model: nn.Module) -> Iterator[nn.Module]:
    """``model`` in eval mode inside the block; every submodule's ``training`` flag is restored afterwards."""
    modes = [(module, module.training) for module in model.modules()]
    model.eval()
    try:
        yield model
    finally:
        for module, training in modes:
            module.training = training


def relative_error(reference: torch.Tensor, other: torch.Tensor) -> float:
    """max |reference − other| / max |reference| (the measure every export check reports; 0 for equal tensors)."""
    reference, other = reference.detach().double().cpu(), other.detach().double().cpu()
    if reference.shape != other.shape:
        raise ValueError(f"outputs differ in shape: {tuple(reference.shape)} vs {tuple(other.shape)}")
    return float((reference - other).abs().max() / reference.abs().max().clamp_min(1e-30))


def check_output(path: str | os.PathLike[str], overwrite: bool) -> Path:
    """``path`` as a Path, or a UserError when it exists (a directory always; a file unless ``overwrite``)."""
    path = Path(path)
    if path.is_dir():
        raise UserError(f"{path} is a directory; pass a file name for the exported model")
    if path.exists() and not overwrite:
        raise UserError(f"{path} already exists; choose another --out or pass --overwrite to replace it")
    return path


@contextlib.contextmanager
def published(path: str | os.PathLike[str], overwrite: bool) -> Iterator[Path]:
    """A temporary file beside ``path``, moved onto it when the block succeeds and removed when it fails.

    Never clobbers without ``overwrite``: the existence check comes first, and the final no-overwrite move is a hard
    link, which fails if ``path`` appeared meanwhile (a rename after a second check where the file system has no
    hard links).
    """
    path = check_output(path, overwrite)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, name = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.close(fd)
    tmp = Path(name)
    try:
        yield tmp
        if overwrite:
            os.replace(tmp, path)
        else:
            try:
                os.link(tmp, path)
            except FileExistsError as exc:
                raise UserError(f"{path} appeared while exporting; pass --overwrite to replace it") from exc
            except OSError:  # no hard links here (some network and FUSE file systems)
                check_output(path, overwrite)
                os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


def _inputs(example_inputs: torch.Tensor | Sequence[torch.Tensor]) -> tuple[torch.Tensor, ...]:
    inputs = (example_inputs,) if isinstance(example_inputs, torch.Tensor) else tuple(example_inputs)
    if not inputs or not all(isinstance(x, torch.Tensor) and x.dim() >= 1 for x in inputs):
        raise UserError("example inputs must be one or more batched tensors, e.g. torch.randn(2, 3, 32, 32)")
    return tuple(x.detach() for x in inputs)


def _batch_dims(inputs: tuple[torch.Tensor, ...]) -> tuple[dict[int, Any], ...]:
    """``torch.export`` dynamic shapes: dimension 0 of every input is the (dynamic) batch."""
    return tuple({0: torch.export.Dim.DYNAMIC} for _ in inputs)


def to_onnx(model: nn.Module, example_inputs: torch.Tensor | Sequence[torch.Tensor], path: str | os.PathLike[str],
            *, exporter: Exporter = "torchscript", opset: int | None = None, dynamic_batch: bool = True,
            overwrite: bool = False) -> Path:
    """Write ``model`` (run in eval mode) as an ONNX file at ``path``; see the module docstring.

    ``example_inputs``: a batch (or a tuple of batches) of the shape to export; with ``dynamic_batch`` (default)
    the batch dimension is left free, ``opset`` defaults to torch's. Returns ``path``.
    """
    if exporter not in ("torchscript", "dynamo"):
        raise UserError(f"unknown ONNX exporter {exporter!r}; choose torchscript or dynamo")
    onnx = require("onnx", "ONNX export")
    if exporter == "dynamo":
        require("onnxscript", "ONNX export with exporter='dynamo'")
    inputs = _inputs(example_inputs)
    names = [f"input{i}" if i else "input" for i in range(len(inputs))]
    options: dict[str, Any] = {"input_names": names, "output_names": ["output"], "opset_version": opset}
    if exporter == "torchscript":
        options.update(dynamo=False, dynamic_axes={n: {0: "batch"} for n in [*names, "output"]} if dynamic_batch
                       else None)
    else:
        options.update(dynamo=True, external_data=False, verbose=False,
                       dynamic_shapes=_batch_dims(inputs) if dynamic_batch else None)
    path = Path(path)
    with published(path, overwrite) as tmp, eval_mode(model), warnings.catch_warnings():
        warnings.simplefilter("ignore")  # the TorchScript exporter's deprecation notice; tracer warnings
        with torch.no_grad(), open(os.devnull, "w") as devnull, contextlib.redirect_stdout(devnull):
            torch.onnx.export(model, inputs, str(tmp), **options)  # (stdout: the dynamo exporter's progress lines)
        try:
            onnx.checker.check_model(str(tmp), full_check=True)
        except onnx.checker.ValidationError as exc:
            raise UserError(f"the exported ONNX model is not valid ({exc}); try exporter='dynamo'") from exc
    return path


def to_pt2(model: nn.Module, example_inputs: torch.Tensor | Sequence[torch.Tensor], path: str | os.PathLike[str],
           *, dynamic_batch: bool = True, overwrite: bool = False) -> torch.export.ExportedProgram:
    """Export ``model`` (eval mode) with :func:`torch.export.export` and save it at ``path``; returns the program.

    Non-strict export (the default of ``torch.export`` since 2.7), batch dimension dynamic unless
    ``dynamic_batch=False``. ``program.module()`` runs the exported graph in Python.
    """
    inputs = _inputs(example_inputs)
    path = Path(path)
    check_output(path, overwrite)
    with eval_mode(model), warnings.catch_warnings():
        warnings.simplefilter("ignore")
        program = torch.export.export(model, inputs, dynamic_shapes=_batch_dims(inputs) if dynamic_batch else None)
    with published(path, overwrite) as tmp:
        torch.export.save(program, str(tmp))
    return program


class OnnxSession:
    """An ONNX Runtime CPU session for one ONNX file, called like a module: ``session(x) -> torch.Tensor``.

    ``threads``: intra-op threads (default ``torch.get_num_threads()``, so torch and ONNX Runtime timings compare at
    the same count); one inter-op thread and sequential execution (a CNN is a chain). ``spin``: whether idle
    worker threads busy-wait for the next op (ONNX Runtime's default); off by default, because spinning threads keep
    burning the cores after a call and slow whatever runs next on a shared or interleaved machine.
    """

    def __init__(self, path: str | os.PathLike[str], *, threads: int | None = None, spin: bool = False,
                 optimization: Literal["all", "extended", "basic", "none"] = "all") -> None:
        ort = require("onnxruntime", "running ONNX models")
        levels = {"all": ort.GraphOptimizationLevel.ORT_ENABLE_ALL,
                  "extended": ort.GraphOptimizationLevel.ORT_ENABLE_EXTENDED,
                  "basic": ort.GraphOptimizationLevel.ORT_ENABLE_BASIC,
                  "none": ort.GraphOptimizationLevel.ORT_DISABLE_ALL}
        if optimization not in levels:
            raise UserError(f"unknown optimization level {optimization!r}; choose one of {', '.join(levels)}")
        options = ort.SessionOptions()
        options.intra_op_num_threads = int(threads) if threads is not None else torch.get_num_threads()
        options.inter_op_num_threads = 1
        options.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
        options.graph_optimization_level = levels[optimization]
        options.add_session_config_entry("session.intra_op.allow_spinning", "1" if spin else "0")
        options.log_severity_level = 3
        self.path = Path(path)
        self.threads = options.intra_op_num_threads
        self.session = ort.InferenceSession(str(self.path), sess_options=options, providers=["CPUExecutionProvider"])
        self.input_names = [i.name for i in self.session.get_inputs()]

    def __call__(self, *inputs: torch.Tensor) -> torch.Tensor:
        if len(inputs) != len(self.input_names):
            raise ValueError(f"{self.path} takes {len(self.input_names)} inputs, got {len(inputs)}")
        feed = {name: x.detach().cpu().contiguous().numpy() for name, x in zip(self.input_names, inputs)}
        return torch.from_numpy(self.session.run(None, feed)[0])
