"""The model registry: one table of names → (spec, builder, config schema), config validation, shared init.

Every family module registers its names with :func:`register` when imported; :mod:`connprune.models` imports them
all and exposes :func:`create`, :func:`names` and :func:`spec`.

A config is a flat dict of JSON values. Every model takes ``num_classes``, ``in_channels`` and ``input_size`` (square
inputs, H = W); families add their own keys. :func:`create` fills in defaults, checks each key and value, and
records the resolved config on the model (``model.connprune_config``) so that
``create(model.connprune_arch, **model.connprune_config)`` rebuilds the same architecture.
"""

from __future__ import annotations

import copy
import importlib
import inspect
import math
import re
from collections.abc import Callable
from dataclasses import dataclass, replace
from typing import Any

from torch import nn

from connprune.errors import UserError, unknown_name

Validator = Callable[[str, str, Any], Any]  # (model name, key, value) -> normalised value, or raise UserError


@dataclass(frozen=True)
class ModelSpec:
    """What a zoo name is: its family, a one-line description and its defaults.

    ``default_config`` is the full config :func:`connprune.models.create` uses when given no keys;
    ``default_input_shape`` is ``(C, H, W)`` and agrees with ``default_config['in_channels']`` and
    ``default_config['input_size']``.
    """

    name: str
    family: str
    description: str
    default_config: dict
    default_input_shape: tuple[int, int, int]
    default_num_classes: int


@dataclass(frozen=True)
class _Entry:
    spec: ModelSpec
    build: Callable[..., nn.Module]  # called with the full resolved config as keyword arguments
    validators: dict[str, Validator]


_REGISTRY: dict[str, _Entry] = {}


# ---------------------------------------------------------------------------------------------------------- values


def _describe(value: Any) -> str:
    return f"{value!r} ({type(value).__name__})"


def positive_int(minimum: int = 1) -> Validator:
    """An int ≥ ``minimum`` (bools are refused; integral floats such as 10.0 are accepted and made ints)."""

    def check(model: str, key: str, value: Any) -> int:
        if isinstance(value, float) and value.is_integer():
            value = int(value)
        if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
            raise UserError(f"model {model!r}: config key {key!r} must be an integer >= {minimum}, "
                            f"got {_describe(value)}")
        return int(value)

    return check


def boolean(model: str, key: str, value: Any) -> bool:
    """A bool (strictly: 0/1 and strings are refused so that typos do not pass silently)."""
    if not isinstance(value, bool):
        raise UserError(f"model {model!r}: config key {key!r} must be true or false, got {_describe(value)}")
    return value


def positive_float(model: str, key: str, value: Any) -> float:
    """A finite float > 0."""
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value) or value <= 0:
        raise UserError(f"model {model!r}: config key {key!r} must be a number > 0, got {_describe(value)}")
    return float(value)


def int_list(model: str, key: str, value: Any) -> list[int]:
    """A list (or tuple) of ints ≥ 1, returned as a list."""
    if not isinstance(value, (list, tuple)):
        raise UserError(f"model {model!r}: config key {key!r} must be a list of integers >= 1, "
                        f"got {_describe(value)}")
    check = positive_int(1)
    return [check(model, f"{key}[{i}]", v) for i, v in enumerate(value)]


# -------------------------------------------------------------------------------------------------------- registry


def register(
    name: str,
    *,
    family: str,
    description: str,
    build: Callable[..., nn.Module],
    num_classes: int,
    in_channels: int,
    input_size: int,
    min_input_size: int = 1,
    extra: dict[str, tuple[Any, Validator]] | None = None,
) -> None:
    """Add ``name`` to the zoo.

    ``build(**config)`` receives the full resolved config; ``extra`` maps family-specific keys to
    ``(default, validator)``; ``min_input_size`` is the smallest ``input_size`` the architecture runs on.
    """
    if name in _REGISTRY:
        raise ValueError(f"model {name!r} is registered twice")
    validators: dict[str, Validator] = {
        "num_classes": positive_int(1),
        "in_channels": positive_int(1),
        "input_size": positive_int(min_input_size),
    }
    defaults: dict[str, Any] = {"num_classes": num_classes, "in_channels": in_channels, "input_size": input_size}
    for key, (default, validator) in (extra or {}).items():
        validators[key] = validator
        defaults[key] = default
    for key, value in defaults.items():  # the defaults must pass their own checks
        defaults[key] = validators[key](name, key, value)
    spec = ModelSpec(name=name, family=family, description=description, default_config=defaults,
                     default_input_shape=(in_channels, input_size, input_size), default_num_classes=num_classes)
    _REGISTRY[name] = _Entry(spec=spec, build=build, validators=validators)


def _entry(name: str) -> _Entry:
    if name not in _REGISTRY:
        raise unknown_name("model", name, list(_REGISTRY))
    return _REGISTRY[name]


def names() -> list[str]:
    """The zoo's model names, in registration order (families grouped, small to large)."""
    return list(_REGISTRY)


def spec(name: str) -> ModelSpec:
    """The :class:`ModelSpec` of ``name`` (a copy: changing its ``default_config`` changes nothing)."""
    found = _entry(name).spec
    return replace(found, default_config=copy.deepcopy(found.default_config))


DATA_KEYS = ("num_classes", "in_channels", "input_size")
"""Config keys every model takes and that come from the data set it is trained on, not from ``--model-param``."""


def options(name: str) -> dict[str, Any]:
    """The family-specific config keys of ``name`` (what ``--model-param KEY=VALUE`` sets) with their defaults; the
    :data:`DATA_KEYS` are left out. Nothing is built."""
    return {k: v for k, v in spec(name).default_config.items() if k not in DATA_KEYS}


def resolve_config(name: str, **config: Any) -> dict[str, Any]:
    """The full config for ``name``: defaults filled in, every key checked, values normalised (JSON types)."""
    entry = _entry(name)
    allowed = list(entry.validators)
    for key in config:
        if key not in entry.validators:
            raise UserError(f"model {name!r} has no config key {key!r}; allowed keys: {', '.join(allowed)}")
    resolved = copy.deepcopy(entry.spec.default_config)
    for key, value in config.items():
        resolved[key] = entry.validators[key](name, key, value)
    return resolved


_FACTORY = re.compile(r"^[A-Za-z_][\w]*(\.[A-Za-z_][\w]*)*:[A-Za-z_][\w]*(\.[A-Za-z_][\w]*)*$")


def is_factory(name: str) -> bool:
    """Whether ``name`` names user code that builds a model: ``"package.module:factory"``."""
    return isinstance(name, str) and bool(_FACTORY.match(name))


def _factory(name: str) -> Callable[..., nn.Module]:
    """Import the callable ``"package.module:factory"`` names (user code: only ever on the caller's request)."""
    module_name, _, attribute = name.partition(":")
    try:
        found: Any = importlib.import_module(module_name)
    except ImportError as exc:
        raise UserError(f"cannot import {module_name!r} for model {name!r} ({exc}); install it, or run from the "
                        "folder that holds it (or add that folder to PYTHONPATH)") from None
    for part in attribute.split("."):
        found = getattr(found, part, None)
    if not callable(found):
        raise UserError(f"{module_name!r} has no callable {attribute!r}; --model takes 'package.module:factory', a "
                        "function or class that returns the nn.Module")
    return found


def _from_factory(name: str, config: dict[str, Any]) -> nn.Module:
    """Call the factory with ``config``; the data set's keys (:data:`DATA_KEYS`) only where its signature takes
    them."""
    factory = _factory(name)
    try:
        parameters = inspect.signature(factory).parameters
    except (TypeError, ValueError):
        parameters = {}
    takes_any = any(p.kind is inspect.Parameter.VAR_KEYWORD for p in parameters.values())
    arguments = {k: v for k, v in config.items() if k not in DATA_KEYS or takes_any or k in parameters}
    try:
        model = factory(**arguments)
    except TypeError as exc:
        raise UserError(f"model {name!r} rejected its arguments {sorted(arguments)} ({exc}); pass the factory's "
                        "keyword arguments with --model-param KEY=VALUE") from None
    if not isinstance(model, nn.Module):
        raise UserError(f"model {name!r} returned a {type(model).__name__}, not an nn.Module")
    return model


def create(name: str, **config: Any) -> nn.Module:
    """Build zoo model ``name`` with ``config`` (see :func:`resolve_config`), freshly initialised; or, for
    ``name="package.module:factory"``, import that factory (the user's code) and call it with ``config`` (the data
    set's keys only where it takes them).

    The model records ``connprune_arch`` (the name) and ``connprune_config`` (the full resolved config) so that
    ``create(model.connprune_arch, **model.connprune_config)`` rebuilds the same architecture. Initialisation draws
    from torch's global generator: the same ``torch.manual_seed`` gives the same weights.
    """
    if is_factory(name):
        model = _from_factory(name, config)
        model.connprune_arch, model.connprune_config = name, dict(config)
        return model
    resolved = resolve_config(name, **config)
    model = _entry(name).build(**copy.deepcopy(resolved))
    model.connprune_arch = name
    model.connprune_config = resolved
    return model


def is_zoo_model(model: nn.Module) -> bool:
    """Whether ``model`` was built by :func:`create` (it records its name and config)."""
    return isinstance(getattr(model, "connprune_config", None), dict) and hasattr(model, "connprune_arch")


def input_shape(model: nn.Module) -> tuple[int, int, int]:
    """``(C, H, W)`` a zoo model was built for, from its recorded config (UserError for other models)."""
    config = getattr(model, "connprune_config", None)
    if not is_zoo_model(model) or "in_channels" not in config or "input_size" not in config:
        raise UserError(f"{type(model).__name__} was not built by connprune.models.create, so its input shape is "
                        "unknown; pass example inputs, e.g. example_inputs=torch.randn(1, 3, 32, 32)")
    return (config["in_channels"], config["input_size"], config["input_size"])


def example_inputs(model: nn.Module, given: Any = None) -> Any:
    """``given`` if not None, else the input shape a zoo model was built for (what :mod:`connprune.graph.inputs`
    turns into a seeded batch of one); UserError for a model from outside the zoo without ``given``."""
    return given if given is not None else input_shape(model)


# ------------------------------------------------------------------------------------------------------------ init


def init_weights(model: nn.Module) -> None:
    """The zoo's initialisation: Kaiming-normal convs (fan-out, ReLU gain; He et al., ICCV 2015) with zero bias,
    BatchNorm weight 1 and bias 0, and PyTorch's default for ``nn.Linear`` (left as constructed)."""
    for module in model.modules():
        if isinstance(module, nn.Conv2d):
            nn.init.kaiming_normal_(module.weight, mode="fan_out", nonlinearity="relu")
            if module.bias is not None:
                nn.init.zeros_(module.bias)
        elif isinstance(module, (nn.BatchNorm1d, nn.BatchNorm2d)):
            nn.init.ones_(module.weight)
            nn.init.zeros_(module.bias)
