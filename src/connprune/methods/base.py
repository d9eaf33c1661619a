"""One interface for every pruning method, in the spirit of scikit-learn estimators.

A method is a class with a name, a kind, the paper it implements, a pydantic model of its parameters (validated at
construction: unknown or ill-typed parameters are user errors naming the parameter) and one entry point,
:meth:`PruningMethod.prune`, which takes a model, a target sparsity and the data it needs and returns a
:class:`PruningResult`. The result says *what* to prune; :func:`connprune.surgery.apply` does it.

Result kinds, one per family of methods:

- ``masks``: boolean keep-masks over weight tensors (unstructured: magnitude, SNIP, GC-Net, N2NSkip; connection masks
  over whole kernel slices ``W[j, i, :, :]``: MINT, SNACS);
- ``remove``: output units (channels or neurons) of conv/linear layers to remove physically (L1-filter, K-FAC);
- ``merge``: consecutive layers to merge into one (layer sparsity);
- ``skips``: connections to add (N2NSkip);
- ``model``: methods that train while they prune return the trained model they pruned.

``sparsity`` means one thing everywhere: the fraction of prunable weights (conv and linear weights, not biases, BN or
added skips) that are zero or removed (see ``measure.sparsity``).
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from dataclasses import dataclass, field
from enum import Enum
from typing import Any, ClassVar, Literal

import torch
from pydantic import BaseModel, ConfigDict, ValidationError
from torch import nn

from connprune.data import ImageData
from connprune.errors import UserError
from connprune.train.recipes import TrainConfig

Sparsity = float | Literal["auto"]


class Kind(str, Enum):
    """What a method produces (the ``kind`` column of ``connprune methods``)."""

    UNSTRUCTURED = "unstructured"
    CONNECTION = "connection"
    STRUCTURED = "structured"
    DURING_TRAINING = "during-training"
    LAYER = "layer"


class MethodParams(BaseModel):
    """Base of every method's parameters: unknown keys are errors."""

    model_config = ConfigDict(extra="forbid")

    seed: int = 0


@dataclass
class PruneData:
    """The data and recipes a method may use. Methods declare which they need; the rest may be ``None``."""

    train: ImageData | None = None
    test: ImageData | None = None
    recipe: TrainConfig | None = None
    """The training recipe for methods that prune while training (``needs_training``)."""
    device: torch.device = field(default_factory=lambda: torch.device("cpu"))
    progress: bool = False


@dataclass
class PruningResult:
    """What to prune. Mask keys and ``remove`` keys are parameter and module names of the pruned model."""

    masks: dict[str, torch.Tensor] = field(default_factory=dict)
    """Parameter name → boolean mask of the same shape (True = keep)."""
    remove: dict[str, list[int]] = field(default_factory=dict)
    """Conv/linear module name → indices of its output units to remove (coupled layers follow via graph/)."""
    merge: list[list[str]] = field(default_factory=list)
    """Runs of consecutive layer names to merge into one (layer sparsity)."""
    skips: list[dict[str, Any]] = field(default_factory=list)
    """Connections to add (N2NSkip); each a JSON-serialisable description used by ``surgery.skips``."""
    model: nn.Module | None = None
    """For methods that train while they prune: the trained model the result applies to."""
    train_after: int | None = None
    """Epochs to train after surgery with the masks enforced (``None``: the caller's fine-tune/training epochs;
    methods that train while they prune set 0, or their refit epochs)."""
    info: dict[str, Any] = field(default_factory=dict)
    """Extra numbers for ``metrics.json`` (stage timings, per-layer limits, chosen ratios, ...)."""


class PruningMethod(ABC):
    """Base class. Subclasses set the class attributes and implement :meth:`prune`."""

    name: ClassVar[str]
    kind: ClassVar[Kind]
    paper: ClassVar[str]
    summary: ClassVar[str]
    Params: ClassVar[type[MethodParams]] = MethodParams
    needs_trained: ClassVar[bool] = True
    """Prunes a trained model (``False``: prunes at initialisation)."""
    needs_data: ClassVar[bool] = False
    """Needs training data (activations, gradients)."""
    needs_training: ClassVar[bool] = False
    """Trains while it prunes: takes ``PruneData.recipe`` (its ``epochs`` are the whole training budget) and
    returns the trained model in ``PruningResult.model``."""
    supports_auto: ClassVar[bool] = False
    """Accepts ``sparsity="auto"`` and chooses its own budget."""
    recipe_overrides: ClassVar[dict[str, Any]] = {}
    """The paper's training recipe where it differs from the data set's default (e.g. N2NSkip's SGD 0.05); the
    user's recipe settings override it."""

    def __init__(self, **params: Any) -> None:
        try:
            self.params = self.Params(**params)
        except ValidationError as exc:
            problems = "; ".join(_describe(error) for error in exc.errors())
            allowed = ", ".join(f"{k}={v.get_default(call_default_factory=True)!r}"
                                for k, v in self.Params.model_fields.items())
            raise UserError(f"method {self.name!r}: {problems}; its parameters are: {allowed}") from None

    @abstractmethod
    def prune(self, model: nn.Module, sparsity: Sparsity, data: PruneData) -> PruningResult:
        """Decide what to prune in ``model`` to reach ``sparsity``; does not modify ``model``'s weights."""

    def training_inputs(self, data: PruneData) -> tuple[ImageData, TrainConfig]:
        """The training data and recipe of a method that trains while it prunes (a UserError naming the fix when
        either is missing)."""
        if data.train is None or data.recipe is None:
            raise UserError(f"method {self.name!r} trains while it prunes: it needs training data and a recipe; run "
                            f"connprune prune --method {self.name} --model NAME --data NAME --epochs N")
        return data.train, data.recipe

    def check_sparsity(self, sparsity: Sparsity) -> Sparsity:
        """Validate a requested sparsity: a number in [0, 1), or ``"auto"`` for methods that choose their own."""
        if sparsity == "auto":
            if not self.supports_auto:
                raise UserError(f"method {self.name!r} needs a numeric --sparsity in [0, 1); 'auto' is for methods "
                                "that choose their own budget")
            return sparsity
        if isinstance(sparsity, bool) or not isinstance(sparsity, (int, float)) or not 0.0 <= sparsity < 1.0:
            raise UserError(f"sparsity must be a number in [0, 1) (the fraction of prunable weights removed), "
                            f"got {sparsity!r}")
        return float(sparsity)

    @classmethod
    def describe(cls) -> dict[str, Any]:
        """Name, kind, paper, parameters with defaults and needs, for ``connprune methods``."""
        return {
            "name": cls.name, "kind": cls.kind.value, "paper": cls.paper, "summary": cls.summary,
            "parameters": {k: v.get_default(call_default_factory=True) for k, v in cls.Params.model_fields.items()},
            "needs_trained": cls.needs_trained, "needs_data": cls.needs_data, "needs_training": cls.needs_training,
            "supports_auto": cls.supports_auto,
        }


def _describe(error: dict[str, Any]) -> str:
    where = ".".join(str(p) for p in error["loc"]) or "parameters"
    if error["type"] == "extra_forbidden":
        return f"unknown parameter {where!r}"
    return f"parameter {where!r}: {error['msg']}"
