"""Data-parallel training with PyTorch's own engine: ``torchrun`` + ``DistributedDataParallel``.

Launch any training command under ``torchrun`` (``torchrun --standalone --nproc_per_node=N -m connprune train ...``);
:func:`init_from_env` reads the variables torchrun sets (``RANK``, ``WORLD_SIZE``, ``LOCAL_RANK``, ``MASTER_ADDR``,
``MASTER_PORT``) and joins the process group: NCCL when CUDA is present (one GPU per process, picked by the local
rank), Gloo on the CPU. Without those variables (a plain ``python``/``connprune`` run) it does nothing and every
helper here answers as for a single process, so code can call them unconditionally.

The :class:`~connprune.train.Trainer` notices an initialised process group with more than one rank by itself: it
wraps the model in ``DistributedDataParallel``, shards every global batch over the ranks and lets only rank 0 show
progress and write state. See :class:`~connprune.data.pipeline.Batches` for the sharding rule.
"""

from __future__ import annotations

import atexit
import os
from datetime import timedelta

import torch
import torch.distributed as dist
from torch import nn

__all__ = ["barrier", "broadcast_module", "gather_tensors", "init_from_env", "is_distributed", "is_main",
           "local_rank", "rank", "world_size"]


def is_distributed() -> bool:
    """Whether a process group with more than one rank is running."""
    return dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1


def rank() -> int:
    """This process's global rank (0 without a process group)."""
    return dist.get_rank() if dist.is_available() and dist.is_initialized() else 0


def world_size() -> int:
    """The number of processes (1 without a process group)."""
    return dist.get_world_size() if dist.is_available() and dist.is_initialized() else 1


def local_rank() -> int:
    """This process's rank on its node (torchrun's ``LOCAL_RANK``; 0 without one)."""
    return int(os.environ.get("LOCAL_RANK", "0"))


def is_main() -> bool:
    """True on rank 0 (and in a single process): the one that prints and writes files."""
    return rank() == 0


def barrier() -> None:
    """Wait for every rank (a no-op in a single process)."""
    if is_distributed():
        dist.barrier()


def _destroy() -> None:
    """At exit: wait for every rank, then leave the group. Without the barrier a rank that leaves first closes its
    Gloo connections while a peer is still using them, and that peer aborts (SIGABRT)."""
    if dist.is_available() and dist.is_initialized():
        try:
            dist.barrier()
        finally:
            dist.destroy_process_group()


def init_from_env(backend: str | None = None, timeout_s: float = 1800.0) -> bool:
    """Join the process group described by torchrun's environment; returns whether one is running.

    Does nothing (returns False) when ``WORLD_SIZE`` is unset or 1, and nothing more when the group is already
    initialised. ``backend`` defaults to ``nccl`` when CUDA is available, else ``gloo``. With CUDA, the process's
    device becomes ``cuda:LOCAL_RANK`` so that ``torch.device("cuda")`` means this rank's GPU.
    """
    if dist.is_available() and dist.is_initialized():
        return dist.get_world_size() > 1
    if int(os.environ.get("WORLD_SIZE", "1")) <= 1 or not dist.is_available():
        return False
    cuda = torch.cuda.is_available()
    if backend is None:
        backend = "nccl" if cuda else "gloo"
    if cuda and backend == "nccl":
        torch.cuda.set_device(local_rank() % torch.cuda.device_count())
    dist.init_process_group(backend, timeout=timedelta(seconds=timeout_s))
    atexit.register(_destroy)
    return dist.get_world_size() > 1


@torch.no_grad()
def broadcast_module(module: nn.Module, src: int = 0) -> None:
    """Copy ``module``'s parameters and buffers from rank ``src`` to every rank (DDP does this at construction)."""
    if not is_distributed():
        return
    for tensor in [*module.parameters(), *module.buffers()]:
        dist.broadcast(tensor.data, src)


def gather_tensors(tensor: torch.Tensor) -> torch.Tensor:
    """Every rank's ``tensor`` concatenated along dim 0 in rank order, on every rank.

    The first dimension may differ between ranks (e.g. the activations of each rank's shard of a scoring pass);
    the other dimensions, dtype and device must agree. Returns ``tensor`` itself in a single process.
    """
    if not is_distributed():
        return tensor
    size = torch.tensor([tensor.shape[0]], dtype=torch.long, device=tensor.device)
    sizes = [torch.zeros_like(size) for _ in range(world_size())]
    dist.all_gather(sizes, size)
    counts = [int(s.item()) for s in sizes]
    longest = max(counts)
    padded = tensor.new_zeros((longest, *tensor.shape[1:]))
    padded[: tensor.shape[0]] = tensor
    parts = [torch.empty_like(padded) for _ in counts]
    dist.all_gather(parts, padded.contiguous())
    return torch.cat([part[:count] for part, count in zip(parts, counts)], dim=0)
