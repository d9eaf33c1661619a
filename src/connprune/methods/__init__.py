"""Pruning methods: a registry and one interface (see :mod:`connprune.methods.base`).

>>> from connprune import methods
>>> method = methods.create("magnitude", scope="global")
>>> result = method.prune(model, 0.9, methods.PruneData(example_inputs=x))          # doctest: +SKIP
"""

from __future__ import annotations

from typing import Any

from connprune.errors import unknown_name
from connprune.methods.base import Kind, MethodParams, PruneData, PruningMethod, PruningResult, Sparsity, TrainingMethod

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
    from connprune.methods import (  # noqa: F401  (baselines)  # noqa: F401  # noqa: F401
        gcnet,
        kfac,
        l1_filter,
        l1_regularised,
        layer_sparsity,
        magnitude,
        mint,
        n2nskip,
        network_slimming,
        random,
        snacs,
        snip,
    )


__all__ = ["Kind", "MethodParams", "PruneData", "PruningMethod", "PruningResult", "Sparsity", "TrainingMethod",
           "create", "get", "names", "register"]
