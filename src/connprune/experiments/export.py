"""Export a checkpoint for deployment (``connprune export``): ONNX or ``torch.export`` (``.pt2``), checked on export.

>>> from connprune.experiments.export import export_checkpoint
>>> report = export_checkpoint("runs/r20-l1", "onnx", "r20-l1.onnx")        # doctest: +SKIP
>>> report.max_relative_error                                               # doctest: +SKIP
3.1e-07

What is exported is what the checkpoint computes, made ready for inference:

1. the model rebuilt from the checkpoint (:func:`connprune.checkpoint.load_checkpoint`): physically shrunk widths,
   structural edits (merged layers, skip branches) as recorded, eval mode;
2. its masks multiplied in (as :func:`connprune.checkpoint.load` does), so masked weights are exact zeros;
3. every BatchNorm that directly follows a conv/linear layer folded into it
   (:func:`connprune.surgery.fold.fold_batchnorm`);
4. exported with a dynamic batch dimension (:func:`connprune.measure.runtime.to_onnx` / ``to_pt2``) to a temporary
   file beside ``out_file``.

Then the export is **checked against the checkpoint** on seeded random batches of 1 and ``check_batch`` inputs of
the checkpoint's input shape (``model.json``'s ``data.input_shape``, else the model config's ``in_channels`` ×
``input_size``²): ONNX Runtime's output (ONNX), or the exported program's (pt2), against the PyTorch output of the
masked, unfolded checkpoint model. The measure is max |y_export − y_checkpoint| / max |y_checkpoint| over each batch;
the largest is reported. Above ``tolerance`` (1e-4) the export is refused with a UserError and nothing is written;
otherwise the file is moved to ``out_file`` — never over an existing file unless ``overwrite``.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Literal

import torch
from torch import nn

from connprune.checkpoint import Checkpoint, load_checkpoint
from connprune.errors import UserError
from connprune.measure import cost
from connprune.measure.runtime import OnnxSession, check_output, published, relative_error, to_onnx, to_pt2
from connprune.surgery import apply_masks
from connprune.surgery.fold import fold_batchnorm, foldable_batchnorms

__all__ = ["FORMATS", "TOLERANCE", "ExportReport", "export_checkpoint", "input_shape_of_checkpoint"]

FORMATS = ("onnx", "pt2")
TOLERANCE = 1e-4
"""Largest relative difference between the exported model's outputs and the checkpoint's that is accepted."""


@dataclass
class ExportReport:
    """What :func:`export_checkpoint` wrote and how closely it matches the checkpoint."""

    path: str
    format: str
    input_shape: list[int]
    max_relative_error: float
    """The largest of ``errors``: max |exported − checkpoint| / max |checkpoint| over the checked batches."""
    tolerance: float
    errors: dict[str, float] = field(default_factory=dict)
    """Per check: ``"folded, batch N"`` (the folded PyTorch model) and ``"onnxruntime, batch N"`` /
    ``"exported program, batch N"`` (the exported file's model), each against the checkpoint."""
    batchnorms_folded: int = 0
    batchnorms_kept: list[str] = field(default_factory=list)
    params: int = 0
    macs: int = 0
    bytes: int = 0

    def to_json(self) -> dict[str, Any]:
        return asdict(self)


def input_shape_of_checkpoint(loaded: Checkpoint) -> tuple[int, ...]:
    """The input shape (without batch) recorded in ``model.json``: ``data.input_shape``, else the zoo config's."""
    shape = loaded.meta.get("data", {}).get("input_shape")
    if shape:
        return tuple(int(s) for s in shape)
    config = loaded.meta.get("config", {})
    if "in_channels" in config and "input_size" in config:
        return (int(config["in_channels"]), int(config["input_size"]), int(config["input_size"]))
    raise UserError("model.json records no input shape (data.input_shape); pass input_shape=(C, H, W)")


def _batches(input_shape: tuple[int, ...], sizes: tuple[int, ...], seed: int) -> list[torch.Tensor]:
    generator = torch.Generator().manual_seed(seed)
    return [torch.randn((size, *input_shape), generator=generator) for size in sizes]


def _check(label: str, run: Any, reference: nn.Module, batches: list[torch.Tensor]) -> dict[str, float]:
    """Relative error of ``run(x)`` against ``reference(x)`` for every batch, keyed ``"label, batch N"``."""
    errors = {}
    with torch.no_grad():
        for x in batches:
            errors[f"{label}, batch {x.shape[0]}"] = relative_error(reference(x), run(x))
    return errors


def _write(fmt: str, deployed: nn.Module, reference: nn.Module, example: torch.Tensor, batches: list[torch.Tensor],
           tmp: Path, exporter: str) -> dict[str, float]:
    """Export ``deployed`` to ``tmp`` and check the written model against ``reference``."""
    if fmt == "onnx":
        to_onnx(deployed, example, tmp, exporter=exporter, overwrite=True)  # type: ignore[arg-type]
        return _check("onnxruntime", OnnxSession(tmp), reference, batches)
    program = to_pt2(deployed, example, tmp, overwrite=True)
    return _check("exported program", program.module(), reference, batches)


def export_checkpoint(checkpoint_dir: str | Path, fmt: Literal["onnx", "pt2"], out_file: str | Path, *,
                      overwrite: bool = False, input_shape: tuple[int, ...] | None = None, check_batch: int = 8,
                      tolerance: float = TOLERANCE, exporter: Literal["torchscript", "dynamo"] = "torchscript",
                      seed: int = 0) -> ExportReport:
    """Export the checkpoint in ``checkpoint_dir`` as ``fmt`` to ``out_file``, checked (module docstring).

    ``input_shape``: (C, H, W) without the batch, when ``model.json`` does not record it. ``check_batch``: the
    larger of the two checked batch sizes (the other is 1). ``exporter``: the ONNX exporter
    (:func:`connprune.measure.runtime.to_onnx`). Raises UserError for an unknown format, an existing ``out_file``
    (unless ``overwrite``), a missing ``connprune[export]`` extra (ONNX) or an export off by more than ``tolerance``.
    """
    if fmt not in FORMATS:
        raise UserError(f"unknown export format {fmt!r}; choose one of: {', '.join(FORMATS)}")
    out = check_output(out_file, overwrite)
    loaded = load_checkpoint(checkpoint_dir)
    reference = apply_masks(loaded.model, loaded.masks).eval()
    shape = tuple(int(s) for s in input_shape) if input_shape else input_shape_of_checkpoint(loaded)
    batches = _batches(shape, (1, int(check_batch)), seed)
    example = batches[-1][:2]
    deployed = fold_batchnorm(reference, example)
    errors = _check("folded", deployed, reference, batches)
    with published(out, overwrite) as tmp:
        errors.update(_write(fmt, deployed, reference, example, batches, tmp, exporter))
        worst = max(errors.values())
        if not worst <= tolerance:  # also refuses NaN
            raise UserError(f"the exported model differs from the checkpoint by {worst:.3g} (relative, > "
                            f"{tolerance:g}; {max(errors, key=errors.get)}), so {out} was not written; try "
                            f"{'the other ONNX exporter or ' if fmt == 'onnx' else ''}format "
                            f"{'pt2' if fmt == 'onnx' else 'onnx'}, and report it")
        size = tmp.stat().st_size
    folded, kept = foldable_batchnorms(reference, example)
    measured = cost(deployed, shape)
    return ExportReport(path=str(out), format=fmt, input_shape=list(shape), max_relative_error=worst,
                        tolerance=tolerance, errors=errors, batchnorms_folded=len(folded), batchnorms_kept=kept,
                        params=measured.params, macs=measured.macs, bytes=size)
