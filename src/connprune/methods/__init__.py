"""Pruning methods: a registry and one interface (see :mod:`connprune.methods.base`).

>>> from connprune import methods
>>> method = methods.create("magnitude", scope="global")
>>> result = method.prune(model, 0.9, methods.PruneData(example_inputs=x))          # doctest: +SKIP
"""

from __future__ import annotations

import importlib
from typing import Any

from connprune.errors import unknown_name
from connprune.methods.base import Kind, MethodParams, PruneData, PruningMethod, PruningResult, Sparsity, TrainingMethod

_REGISTRY: dict[str, type[PruningMethod]] = {}
_MODULES = ("random", "magnitude", "l1_filter", "snip", "mint", "snacs", "gcnet", "kfac", "network_slimming",
            "n2nskip", "layer_sparsity", "l1_regularised")
"""The built-in method modules, baselines first: the order `connprune methods` lists their methods in."""


def register(cls: type[PruningMethod]) -> type[PruningMethod]:
    """Class decorator adding a method to the registry under ``cls.name``."""
    _REGISTRY[cls.name] = cls
    return cls


def _position(cls: type[PruningMethod]) -> int:
    module = cls.__module__.rpartition(".")[2]
    return _MODULES.index(module) if cls.__module__.startswith(__name__) and module in _MODULES else len(_MODULES)


def names() -> list[str]:
    """Every method name: the built-in ones in :data:`_MODULES` order, then others in registration order."""
    _load_builtin()
    return sorted(_REGISTRY, key=lambda name: _position(_REGISTRY[name]))


def get(name: str) -> type[PruningMethod]:
    _load_builtin()
    if name not in _REGISTRY:
        raise unknown_name("method", name, list(_REGISTRY))
    return _REGISTRY[name]


def create(name: str, **params: Any) -> PruningMethod:
    """Instantiate method ``name`` with validated ``params``."""
    return get(name)(**params)


def _load_builtin() -> None:
    for module in _MODULES:  # each module registers its method(s) on import
        importlib.import_module(f"{__name__}.{module}")


__all__ = ["Kind", "MethodParams", "PruneData", "PruningMethod", "PruningResult", "Sparsity", "TrainingMethod",
           "create", "get", "names", "register"]
