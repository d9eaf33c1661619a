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
    """Map uint8 images in [0, 255] (or float in [0, 1]) to float32 normalised with the data set's mean and std;
    a set without mean and std (float inputs of :func:`connprune.data.from_tensors`) is used as given."""
    if not info.mean:
        return images.to(torch.float32)
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

    Data-parallel sharding (``world_size > 1``): ``batch_size`` is the *global* batch and must be divisible by
    ``world_size``. Every rank draws the same permutation from the same seeded generator each epoch (the
    ``DistributedSampler`` rule), cuts it into the same consecutive global batches as a single process with
    ``batch_size`` would, and yields the strided share ``global_batch[rank::world_size]`` of each
    (``batch_size // world_size`` samples). Within full batches this is exactly ``DistributedSampler``'s shard
    ``perm[rank::world_size]`` chunked into local batches, and the union of the ranks' local batches is the single
    process's batch, so batch boundaries line up. Nothing is padded or repeated: the last, partial global batch is
    split as evenly as the stride gives (ranks may differ by one sample; :attr:`global_size` tells the trainer the
    global count so it can weight the loss exactly), and it is dropped only when it has fewer samples than there are
    ranks (so that no rank gets an empty batch). Augmentation is drawn for the whole global batch on every rank
    before slicing, so the generator stream - and therefore every crop and flip - is identical on all ranks and to
    the single-process run. With ``world_size == 1`` (the default) behaviour and generator stream are unchanged.
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
        rank: int = 0,
        world_size: int = 1,
    ) -> None:
        if batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {batch_size}")
        if world_size < 1 or not 0 <= rank < world_size:
            raise ValueError(f"need 0 <= rank < world_size, got rank {rank} of {world_size}")
        if batch_size % world_size:
            raise ValueError(f"the global batch_size {batch_size} is not divisible by the {world_size} processes")
        self.rank, self.world_size = rank, world_size
        self.global_size = 0
        """Samples in the global batch the last yielded local batch belongs to."""
        self.device = torch.device(device)
        self.info = data.info
        source = data.images if images is None else images
        self.images = source.to(self.device, non_blocking=True)
        self.labels = data.labels.to(self.device, non_blocking=True)
        self.batch_size = batch_size
        self.shuffle = shuffle
        self.augment = augment and data.info.augment
        self.generator = generator if generator is not None else torch.Generator().manual_seed(0)

    @property
    def local_batch_size(self) -> int:
        """Samples per full batch on this rank: ``batch_size // world_size``."""
        return self.batch_size // self.world_size

    def __len__(self) -> int:
        n = len(self.labels)
        full, tail = divmod(n, self.batch_size)
        return full + (tail >= self.world_size if self.world_size > 1 else tail > 0)

    def __iter__(self) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        if self.world_size > 1:
            yield from self._sharded()
            return
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
            self.global_size = len(y)
            yield normalize(x, self.info), y

    def _sharded(self) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        n, world, rank = len(self.labels), self.world_size, self.rank
        order = torch.randperm(n, generator=self.generator).to(self.device) if self.shuffle else None
        for start in range(0, n, self.batch_size):
            stop = min(start + self.batch_size, n)
            if stop - start < world:
                break  # fewer samples than ranks: dropped (see the class doc)
            idx = torch.arange(start, stop, device=self.device) if order is None else order[start:stop]
            if self.augment:  # draw for the whole global batch so every rank's generator stays in step
                x = random_crop_flip(self.images[idx], self.info.crop_padding, self.generator)[rank::world]
            else:
                x = self.images[idx[rank::world]]
            y = self.labels[idx[rank::world]]
            self.global_size = stop - start
            yield normalize(x, self.info), y
