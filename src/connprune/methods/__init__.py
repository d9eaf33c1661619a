"""Pruning methods: a registry and one interface (see :mod:`connprune.methods.base`).

>>> from connprune import methods
>>> method = methods.create("magnitude", scope="global")
>>> result = method.prune(model, 0.9, methods.PruneData())          # doctest: +SKIP
"""

from __future__ import annotations

from typing import Any

from connprune.errors import unknown_name
from connprune.methods.base import Kind, MethodParams, PruneData, PruningMethod, PruningResult, Sparsity

_REGISTRY: dict[str, type[PruningMethod]] = {}


def register(cls: type[PruningMethod]) -> type[PruningMethod]:
    """Class decorator adding a method to the registry under ``cls.name``."""
    _REGISTRY[cls.name] = cls
    return cls


def names() -> list[str]:
    _load_builtin()
    return list(_REGISTRY)


def get(name: str) -> type[PruningMethod]:
    _load_builtin()
    if name not in _REGISTRY:
        raise unknown_name("method", name, list(_REGISTRY))
    return _REGISTRY[name]


def create(name: str, **params: Any) -> PruningMethod:
    """Instantiate method ``name`` with validated ``params``."""
    return get(name)(**params)


def _load_builtin() -> None:
    # Each module registers its method(s) on import; this order is the order `connprune methods` lists them in.
    from connprune.methods import random, magnitude, l1_filter, snip  # noqa: F401  (baselines)
    from connprune.methods import mint, snacs, gcnet, kfac, network_slimming  # noqa: F401
    from connprune.methods import n2nskip, layer_sparsity, l1_regularised  # noqa: F401


__all__ = ["Kind", "MethodParams", "PruneData", "PruningMethod", "PruningResult", "Sparsity", "create", "get",
           "names", "register"]
