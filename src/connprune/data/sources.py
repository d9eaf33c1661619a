"""Data from anywhere: a built-in set, tensors in memory, or any iterable of ``(inputs, targets)`` batches.

connprune's own data sets are :class:`~connprune.data.ImageData` (uint8 images in memory, normalised per batch).
A user's data is one more source: :func:`from_tensors` wraps tensors already in memory, and every function that
reads training data also takes an iterable of ``(inputs, targets)`` batches, such as a
``torch.utils.data.DataLoader``. Methods read only what they need from an iterable (:func:`read`: a number of
samples, or a number per class) and say so when it gives too little; training iterates it once per epoch
(:func:`batches`).

>>> loader = torch.utils.data.DataLoader(dataset, batch_size=64, shuffle=True)    # doctest: +SKIP
>>> probe = read(loader, per_class=8, num_classes=10, who="gcnet", why="probe_per_class")   # doctest: +SKIP
"""

from __future__ import annotations

import sys
import warnings
from collections.abc import Iterable, Iterator, Sequence
from typing import Any, Union

import torch

from connprune.data.datasets import DatasetInfo, ImageData
from connprune.data.pipeline import Batches
from connprune.errors import UserError

Batch = tuple[torch.Tensor, torch.Tensor]
DataSource = Union[ImageData, Iterable[Batch]]
"""An :class:`ImageData` or any iterable of ``(inputs, targets)`` batches (a ``DataLoader`` included)."""

CUSTOM = "custom"
"""The data set name of data that is not a registered set."""


def from_tensors(inputs: torch.Tensor, targets: torch.Tensor, *, num_classes: int | None = None,
                 mean: Sequence[float] | None = None, std: Sequence[float] | None = None, name: str = CUSTOM,
                 class_names: Sequence[str] = (), split: str = "train") -> ImageData:
    """Tensors in memory as an :class:`ImageData`.

    ``inputs`` are either uint8 images ``(N, C, H, W)`` in [0, 255] with the per-channel ``mean`` and ``std`` of
    [0, 1] images (normalised per batch as the built-in sets are, and the ``--shift`` corruptions apply to them),
    or float inputs of any shape used exactly as given (``mean``/``std`` left ``None``). ``num_classes`` defaults
    to the largest target + 1.
    """
    if not isinstance(inputs, torch.Tensor) or not isinstance(targets, torch.Tensor):
        raise UserError(f"from_tensors takes two tensors (inputs, targets), got {type(inputs).__name__} and "
                        f"{type(targets).__name__}")
    if inputs.shape[0] != targets.shape[0] or targets.dim() != 1 or targets.is_floating_point():
        raise UserError(f"from_tensors: targets must be class indices of shape (N,) with N = {inputs.shape[0]} "
                        f"inputs, got {targets.dtype} {list(targets.shape)}")
    if (mean is None) != (std is None) or mean is not None and inputs.dtype != torch.uint8:
        raise UserError("from_tensors: give mean and std together, with uint8 images (N, C, H, W); float inputs "
                        "are used as given (no mean/std)")
    if mean is not None and (inputs.dim() != 4 or len(mean) != inputs.shape[1] or len(std or ()) != inputs.shape[1]):
        raise UserError(f"from_tensors: uint8 images must be (N, C, H, W) with one mean and std per channel, got "
                        f"{list(inputs.shape)}, {len(mean)} means and {len(std or ())} stds")
    classes = int(num_classes if num_classes is not None else int(targets.max()) + 1 if len(targets) else 0)
    info = DatasetInfo(name=name, num_classes=classes, input_shape=tuple(inputs.shape[1:]),  # type: ignore[arg-type]
                       mean=tuple(float(v) for v in mean or ()), std=tuple(float(v) for v in std or ()),
                       augment=False, crop_padding=0, class_names=tuple(class_names))
    stored = inputs.contiguous() if inputs.dtype == torch.uint8 else inputs.to(torch.float32).contiguous()
    return ImageData(images=stored, labels=targets.to(torch.int64), info=info, split=split)


def _batch(item: Any, who: str) -> Batch:
    """One ``(inputs, targets)`` batch, checked."""
    if not isinstance(item, (tuple, list)) or len(item) != 2 or not all(isinstance(t, torch.Tensor) for t in item):
        got = type(item).__name__ if not isinstance(item, (tuple, list)) else \
            f"a {type(item).__name__} of {len(item)} ({', '.join(type(t).__name__ for t in item)})"
        raise UserError(f"{who}: the data must yield (inputs, targets) batches of two tensors, got {got}; wrap the "
                        "loader so that it does (e.g. a generator `((x, y) for x, y, *_ in loader)`)")
    inputs, targets = item
    if targets.dim() != 1 or targets.is_floating_point() or targets.shape[0] != inputs.shape[0]:
        raise UserError(f"{who}: targets must be class indices, one per input (shape (B,), integer), got "
                        f"{targets.dtype} {list(targets.shape)} for inputs {list(inputs.shape)}")
    return inputs, targets


def check_source(source: object, what: str = "data") -> DataSource:
    """``source`` if it is an :class:`ImageData` or an iterable; else a UserError naming what is accepted."""
    if isinstance(source, ImageData):
        return source
    if isinstance(source, torch.Tensor) or not isinstance(source, Iterable):
        raise UserError(f"{what} must be an ImageData (connprune.data.load or data.from_tensors) or an iterable of "
                        f"(inputs, targets) batches such as a DataLoader, got {type(source).__name__}")
    return source


def first_inputs(source: DataSource, who: str = "data") -> torch.Tensor:
    """One input with its batch dimension (an example input): the first sample of ``source``."""
    if isinstance(source, ImageData):
        return next(iter(Batches(source.subset(torch.arange(min(1, len(source)))), 1)))[0]
    for item in check_source(source, who):
        return _batch(item, who)[0][:1].detach().cpu()
    raise UserError(f"{who}: the data yielded no batch; pass a non-empty loader")


def read(source: DataSource, *, samples: int | None = None, per_class: int | None = None,
         num_classes: int | None = None, who: str = "data", why: str = "") -> ImageData:
    """What a method reads, in memory: an :class:`ImageData` as it is (the method selects from it, seeded); from an
    iterable, batches in its order until ``samples`` samples, or ``per_class`` of each of ``num_classes`` classes,
    have been read (neither: all of it), as float inputs used as given.

    When the iterable ends first, a warning says what ``who`` wanted (``why``: the parameter that sets it) and what
    it got; an iterable that gives nothing is a UserError.
    """
    if isinstance(source, ImageData):
        return source
    if samples is not None and per_class is not None or per_class is not None and not num_classes:
        raise ValueError("read() takes samples, or per_class with num_classes, or neither")
    wanted = int(per_class if per_class is not None else samples if samples is not None else sys.maxsize)
    counts = torch.zeros(int(num_classes) if per_class is not None else 1, dtype=torch.int64)  # type: ignore
    inputs, targets = [], []
    for item in check_source(source, who):
        x, y = _batch(item, who)
        x, y = x.detach().cpu(), y.detach().cpu().to(torch.int64)
        if per_class is not None:
            if len(y) and (int(y.max()) >= len(counts) or int(y.min()) < 0):
                raise UserError(f"{who}: a target is {int(y.max())}, outside the model's {num_classes} classes")
            keep = _rank_within_class(y, counts) < wanted
            x, y = x[keep], y[keep]
            counts += torch.bincount(y, minlength=len(counts))
        else:
            x, y = x[: wanted - int(counts[0])], y[: wanted - int(counts[0])]
            counts[0] += len(y)
        inputs.append(x)
        targets.append(y)
        if bool((counts >= wanted).all()):
            break
    if not inputs or int(counts.sum()) == 0:
        raise UserError(f"{who}: the data yielded no samples; pass a non-empty loader")
    if wanted < sys.maxsize and not bool((counts >= wanted).all()):
        short = f"{int(counts[0])} samples" if per_class is None else ", ".join(
            f"{int(c)} of class {k}" for k, c in enumerate(counts.tolist()) if c < wanted)
        warnings.warn(f"{who} reads {wanted} samples{' per class' if per_class else ''}"
                      f"{f' ({why})' if why else ''} but the data gave only {short}; it goes on with what there is "
                      "(give it more data, or lower that setting)", stacklevel=2)
    return from_tensors(torch.cat(inputs).to(torch.float32), torch.cat(targets), num_classes=num_classes)


def _rank_within_class(labels: torch.Tensor, already: torch.Tensor) -> torch.Tensor:
    """For each sample, how many of its class came before it (earlier batches included)."""
    one_hot = torch.nn.functional.one_hot(labels, len(already))
    seen = one_hot.cumsum(0) - one_hot
    return (seen * one_hot).sum(1) + already[labels]


class LoaderBatches:
    """An iterable of ``(inputs, targets)`` batches moved to ``device``, iterated afresh per epoch; its length is the
    loader's. Under torchrun the loader shards itself (a ``DistributedSampler``); the global batch is taken to be
    ``world_size`` equal shares."""

    def __init__(self, source: Iterable[Batch], *, device: torch.device | str = "cpu", world_size: int = 1,
                 who: str = "data") -> None:
        self.source, self.device, self.world_size, self.who = source, torch.device(device), world_size, who
        self.global_size = 0

    def __len__(self) -> int:
        try:
            return len(self.source)  # type: ignore[arg-type]
        except TypeError:
            raise UserError(f"{self.who}: connprune's trainer plans its learning-rate schedule from the number of "
                            f"batches per epoch, and a {type(self.source).__name__} has no len(); pass a DataLoader "
                            "(or any iterable with __len__)") from None

    def __iter__(self) -> Iterator[Batch]:
        for item in self.source:
            x, y = _batch(item, self.who)
            self.global_size = len(y) * self.world_size
            yield x.to(self.device, non_blocking=True), y.to(self.device, non_blocking=True)


def batches(source: DataSource, batch_size: int, *, shuffle: bool = False, augment: bool = False,
            generator: torch.Generator | None = None, device: torch.device | str = "cpu", rank: int = 0,
            world_size: int = 1, who: str = "data") -> Batches | LoaderBatches:
    """Batches of ``source`` on ``device``: an :class:`ImageData` through :class:`~connprune.data.pipeline.Batches`
    (``batch_size``, shuffling, augmentation, sharding); an iterable as it batches itself (those options are the
    loader's own)."""
    if isinstance(source, ImageData):
        return Batches(source, batch_size, shuffle=shuffle, augment=augment, generator=generator, device=device,
                       rank=rank, world_size=world_size)
    return LoaderBatches(check_source(source, who), device=device, world_size=world_size, who=who)
