"""Batching, normalisation and augmentation as tensor ops.

All data sets here fit in memory as uint8 tensors, so instead of a per-sample ``DataLoader`` the pipeline slices
whole batches out of the stored tensor, augments them with batched tensor ops (random crop with zero padding,
horizontal flip) and normalises them in one fused multiply-add. On a GPU the uint8 data set is moved to the device
once, so nothing crosses the bus per batch; on the CPU this avoids Python work per sample. Shuffling and augmentation
draw from one explicit :class:`torch.Generator`, so a run is reproducible and resumable from the generator's state.
"""

from __future__ import annotations

from collections.abc import Iterator

import torch

from connprune.data.datasets import DatasetInfo, ImageData


def normalize(images: torch.Tensor, info: DatasetInfo) -> torch.Tensor:
    """Map uint8 images in [0, 255] (or float in [0, 1]) to float32 normalised with the data set's mean and std."""
    mean = torch.tensor(info.mean, dtype=torch.float32, device=images.device).view(1, -1, 1, 1)
    std = torch.tensor(info.std, dtype=torch.float32, device=images.device).view(1, -1, 1, 1)
    scale = (1.0 / 255.0 if images.dtype == torch.uint8 else 1.0) / std
    return images.to(torch.float32) * scale - mean / std


def random_crop_flip(images: torch.Tensor, padding: int, generator: torch.Generator) -> torch.Tensor:
    """Random crop after zero padding by ``padding`` pixels, then a random horizontal flip (p = 0.5), per image.

    The standard CIFAR augmentation (He et al. 2016) done on a whole batch with one gather.
    """
    n, _, h, w = images.shape
    if padding > 0:
        padded = torch.nn.functional.pad(images, (padding, padding, padding, padding))
        offsets = torch.randint(0, 2 * padding + 1, (n, 2), generator=generator, device=generator.device)
        offsets = offsets.to(images.device)
        rows = (offsets[:, 0:1] + torch.arange(h, device=images.device)).view(n, 1, h, 1)
        cols = (offsets[:, 1:2] + torch.arange(w, device=images.device)).view(n, 1, 1, w)
        batch = torch.arange(n, device=images.device).view(n, 1, 1, 1)
        channels = torch.arange(images.shape[1], device=images.device).view(1, -1, 1, 1)
        images = padded[batch, channels, rows, cols]
    flip = torch.rand(n, generator=generator, device=generator.device).to(images.device) < 0.5
    return torch.where(flip.view(n, 1, 1, 1), images.flip(3), images)


class Batches:
    """Iterate over ``(inputs, labels)`` batches of an :class:`ImageData`, normalised, optionally shuffled/augmented.

    ``generator`` drives shuffling and augmentation; save ``generator.get_state()`` to resume mid-run exactly.
    """

    def __init__(
        self,
        data: ImageData,
        batch_size: int,
        *,
        shuffle: bool = False,
        augment: bool = False,
        generator: torch.Generator | None = None,
        device: torch.device | str = "cpu",
        images: torch.Tensor | None = None,
    ) -> None:
        if batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {batch_size}")
        self.device = torch.device(device)
        self.info = data.info
        source = data.images if images is None else images
        self.images = source.to(self.device, non_blocking=True)
        self.labels = data.labels.to(self.device, non_blocking=True)
        self.batch_size = batch_size
        self.shuffle = shuffle
        self.augment = augment and data.info.augment
        self.generator = generator if generator is not None else torch.Generator().manual_seed(0)

    def __len__(self) -> int:
        return (len(self.labels) + self.batch_size - 1) // self.batch_size

    def __iter__(self) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        n = len(self.labels)
        if self.shuffle:
            order = torch.randperm(n, generator=self.generator).to(self.device)
        else:
            order = None
        for start in range(0, n, self.batch_size):
            if order is None:
                x = self.images[start : start + self.batch_size]
                y = self.labels[start : start + self.batch_size]
            else:
                idx = order[start : start + self.batch_size]
                x, y = self.images[idx], self.labels[idx]
            if self.augment:
                x = random_crop_flip(x, self.info.crop_padding, self.generator)
            yield normalize(x, self.info), y
