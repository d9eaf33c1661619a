"""Distribution-shift evaluation sets: parse ``--shift SPEC`` and build the corrupted images.

SPEC is one of, or a comma-separated list of:

* ``none``: no shift (contributes nothing);
* ``NAME:SEVERITY``: corruption NAME (see :mod:`connprune.data.corruptions`) at SEVERITY 1..5,
  e.g. ``gaussian_noise:3``;
* ``NAME``: the same at severity 3, the middle of the range;
* ``NAME:all``: NAME at every severity 1..5;
* ``all``: every corruption that applies to the images' channel count, at every severity 1..5;
* a shift data set, e.g. ``cifar10-neg`` (a test-only set for models trained on ``cifar10``), valid only
  with the base data set it was collected for.

Items keep their order, duplicates are dropped. Names are matched case-insensitively, spaces are ignored.

>>> [item.key for item in parse_shift("gaussian_noise:2, fog", channels=3, base_dataset="cifar10")]
['gaussian_noise:2', 'fog:3']
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from connprune.data import corruptions
from connprune.errors import UserError

DEFAULT_SEVERITY = 3
"""Severity of a corruption named without one (the middle of 1..5)."""

SHIFT_DATASETS: dict[str, str] = {"cifar10-neg": "cifar10"}
"""Shift (test-only) data sets and the base data set whose models they evaluate."""


@dataclass(frozen=True)
class ShiftItem:
    """One evaluation set under shift: a corruption at a severity, or a shift data set."""

    key: str
    corruption: str | None = None
    severity: int | None = None
    dataset: str | None = None


def _forms(channels: int) -> str:
    return ("use 'none', 'all', NAME:SEVERITY (severity 1-5, e.g. gaussian_noise:3), NAME (severity "
            f"{DEFAULT_SEVERITY}), NAME:all, a shift data set ({', '.join(sorted(SHIFT_DATASETS))}), or a "
            f"comma-separated list of these; corruption names for {channels}-channel images: "
            f"{', '.join(corruptions.names(channels))}")


def _corruption_items(name: str, severities: list[int]) -> list[ShiftItem]:
    return [ShiftItem(key=f"{name}:{s}", corruption=name, severity=s) for s in severities]


def _parse_token(token: str, channels: int, base_dataset: str, spec: str) -> list[ShiftItem]:
    if token == "none":
        return []
    if token == "all":
        return [item for name in corruptions.names(channels) for item in _corruption_items(name, [1, 2, 3, 4, 5])]
    if token in SHIFT_DATASETS:
        base = SHIFT_DATASETS[token]
        if base_dataset != base:
            raise UserError(f"shift data set {token!r} is for models trained on {base!r}, not {base_dataset!r}; "
                            f"evaluate a {base} model with it, or use a corruption ('--shift all')")
        return [ShiftItem(key=token, dataset=token)]
    name, sep, severity_text = token.partition(":")
    if name not in corruptions.CORRUPTIONS:
        raise UserError(f"bad --shift {spec!r}: {token!r} is not a corruption or shift data set; {_forms(channels)}")
    if name not in corruptions.names(channels):
        raise UserError(f"bad --shift {spec!r}: corruption {name!r} needs colour images and these have {channels} "
                        f"channel(s); {_forms(channels)}")
    if not sep:
        return _corruption_items(name, [DEFAULT_SEVERITY])
    if severity_text == "all":
        return _corruption_items(name, [1, 2, 3, 4, 5])
    if not severity_text.isdigit() or not 1 <= int(severity_text) <= 5:
        raise UserError(f"bad --shift {spec!r}: severity {severity_text!r} of {name!r} must be an integer from 1 "
                        f"to 5 or 'all'; {_forms(channels)}")
    return _corruption_items(name, [int(severity_text)])


def parse_shift(spec: str, channels: int, base_dataset: str) -> list[ShiftItem]:
    """The evaluation sets named by ``spec`` (see the module docstring) for ``channels``-channel images of
    ``base_dataset``; ``[]`` for ``none``. A bad spec is a :class:`UserError` listing the allowed forms."""
    if not isinstance(spec, str) or not spec.strip():
        raise UserError(f"empty --shift; {_forms(channels)}")
    items: dict[str, ShiftItem] = {}
    for raw in spec.split(","):
        token = "".join(raw.split()).lower()
        if not token:
            raise UserError(f"bad --shift {spec!r}: empty entry in the list; {_forms(channels)}")
        for item in _parse_token(token, channels, base_dataset, spec):
            items.setdefault(item.key, item)
    return list(items.values())


def shifted_images(images: torch.Tensor, item: ShiftItem, seed: int = 0) -> torch.Tensor:
    """``images`` corrupted as ``item`` says (corruption items only; load a data-set item with
    :func:`connprune.data.load`)."""
    if item.corruption is None or item.severity is None:
        raise ValueError(f"shift item {item.key!r} is a data set, not a corruption; load it with "
                         f"connprune.data.load({item.dataset!r}, 'test')")
    return corruptions.corrupt(images, item.corruption, item.severity, seed=seed)


def summarise(accuracies: dict[str, float]) -> dict[str, float]:
    """``accuracies`` plus ``"mean"``, their mean over every key except an existing ``"mean"``; ``{}`` stays ``{}``."""
    values = {k: float(v) for k, v in accuracies.items() if k != "mean"}
    if not values:
        return {}
    return {**values, "mean": sum(values.values()) / len(values)}


def mean_corrupted(accuracies: dict[str, float]) -> float | None:
    """mCA: the mean accuracy over the synthetic corruptions (``"name:severity"`` keys), leaving out natural-shift
    data sets such as CIFAR-10-Neg; ``None`` when no corruption was evaluated."""
    values = [float(v) for k, v in accuracies.items() if ":" in k]
    return sum(values) / len(values) if values else None


def robustness(accuracies: dict[str, float], clean: float) -> dict[str, float]:
    """``{"mca": ..., "relative_robustness": mCA / clean}`` (empty when no corruption was evaluated)."""
    mca = mean_corrupted(accuracies)
    if mca is None:
        return {}
    return {"mca": mca, "relative_robustness": mca / clean if clean > 0 else 0.0}


__all__ = ["DEFAULT_SEVERITY", "SHIFT_DATASETS", "ShiftItem", "mean_corrupted", "parse_shift", "robustness",
           "shifted_images", "summarise"]
