"""An in-process cache of connection scores (MINT, SNACS).

Scores depend only on the weights, the scoring data and the scoring settings (:data:`FIELDS`): pruning one model at
several sparsities (``connprune demo``, experiment grids in one process) measures and scores once. Bounded
(:data:`SIZE` entries, oldest dropped first), in memory only, no files.
"""

from __future__ import annotations

import hashlib
import json
from typing import Any

import torch
from torch import nn

from connprune.data import ImageData

FIELDS = ("estimator", "conditioning", "z_dim", "transform", "n_estimators", "groups", "layer_groups",
          "samples_per_class", "prune_input_layer", "exclude", "seed", "batch_size")
"""The method parameters the scores depend on."""
SIZE = 2
_CACHE: dict[str, Any] = {}


def fingerprint(*tensors: torch.Tensor) -> str:
    """SHA-1 of the tensors' bytes (shapes and dtypes included)."""
    digest = hashlib.sha1()
    for tensor in tensors:
        value = tensor.detach().cpu().contiguous()
        digest.update(f"{tuple(value.shape)}{value.dtype}".encode())
        digest.update(value.reshape(-1).view(torch.uint8).numpy().tobytes())
    return digest.hexdigest()


def key(model: nn.Module, data: ImageData, method: str, settings: dict[str, Any]) -> str:
    """The cache key of ``method``'s scores of ``model`` on ``data`` with ``settings``."""
    state = model.state_dict()
    weights = fingerprint(*[state[k] for k in sorted(state)])
    return f"{method}|{weights}|{fingerprint(data.images, data.labels)}|{json.dumps(settings, sort_keys=True)}"


def get(cache_key: str) -> Any:
    """The cached value, or None."""
    return _CACHE.get(cache_key)


def put(cache_key: str, value: Any) -> None:
    """Cache ``value``, dropping the oldest entries beyond :data:`SIZE`."""
    _CACHE[cache_key] = value
    while len(_CACHE) > SIZE:
        _CACHE.pop(next(iter(_CACHE)))


def clear() -> None:
    """Forget cached scores (tests, benchmarks that time the scoring)."""
    _CACHE.clear()


__all__ = ["FIELDS", "clear", "fingerprint", "get", "key", "put"]
