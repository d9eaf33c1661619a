"""One interface for every pruning method, in the spirit of scikit-learn estimators.

A method is a class with a name, a kind, the paper it implements, a pydantic model of its parameters (validated at
construction: unknown or ill-typed parameters are user errors naming the parameter) and one entry point,
:meth:`PruningMethod.prune`, which takes a model, a target sparsity and the data it needs and returns a
:class:`~connprune.plan.PruningResult`. The result says *what* to prune; :func:`connprune.surgery.apply` does it.

``prune`` is a template method: the base validates the sparsity, checks that the data the method declares it needs
(``needs_data``, ``needs_training``) is there, resolves the example inputs the model is traced on (given, or the
zoo model's own input shape, or the training data's), calls the subclass's :meth:`PruningMethod._prune`, keeps the
masks an already pruned model carries (``PruneData.masks``) and checks the result's masks against the model.

Methods that train while they prune derive from :class:`TrainingMethod`, which exposes the pieces a user's own
training loop needs (:meth:`~TrainingMethod.start`, :meth:`~TrainingMethod.penalty`,
:meth:`~TrainingMethod.on_step`, :meth:`~TrainingMethod.on_epoch_end`, :meth:`~TrainingMethod.finalize`);
connprune's own trainer calls exactly these through its public hooks (:class:`MethodHook`).
"""

from __future__ import annotations

import math
import warnings
from abc import ABC, abstractmethod
from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from typing import Any, ClassVar

import torch
from pydantic import BaseModel, ConfigDict, ValidationError
from torch import nn

from connprune import models
from connprune.data import DataSource, ImageData
from connprune.data.sources import check_source, first_inputs, read
from connprune.errors import UserError
from connprune.graph import ExampleInputs, for_model
from connprune.measure.sparsity import count_prunable
from connprune.methods import budget
from connprune.plan import Kind, PruningResult, Sparsity
from connprune.surgery.masks import MaskEnforcer, check_masks, combine
from connprune.train.recipes import TrainConfig
from connprune.train.trainer import Trainer, TrainHook


class MethodParams(BaseModel):
    """Base of every method's parameters: unknown keys are errors; each field's docstring is its description
    (shown by ``connprune methods NAME``)."""

    model_config = ConfigDict(extra="forbid", use_attribute_docstrings=True)

    seed: int = 0
    """Seed of every random choice the method makes."""


@dataclass
class PruneData:
    """What a method may read besides the model. Methods declare what they need; the rest may be ``None``."""

    train: DataSource | None = None
    """Training data (activations, gradients, probe samples, or the data a training method trains on): a built-in
    set (:func:`connprune.data.load`), tensors (:func:`connprune.data.from_tensors`) or any iterable of
    ``(inputs, targets)`` batches such as a ``DataLoader``, of which a method reads only what it needs
    (:meth:`PruningMethod.reads`)."""
    test: DataSource | None = None
    """Test data (methods that train report test accuracy per epoch)."""
    recipe: TrainConfig | None = None
    """The training recipe for methods that prune while training (``needs_training``)."""
    example_inputs: ExampleInputs | None = None
    """What the model is traced on: a tensor with a batch dimension, a tuple of tensors, or a shape ``(C, H, W)``.
    ``None``: a zoo model's own input shape, else one sample of ``train``."""
    masks: dict[str, torch.Tensor] | None = None
    """Keep-masks of an already pruned model: the result keeps them (a weight pruned before stays pruned) and they
    count toward the sparsity."""
    device: torch.device = field(default_factory=lambda: torch.device("cpu"))
    progress: bool = False


def resolve_example_inputs(model: nn.Module, data: PruneData) -> ExampleInputs:
    """The example inputs of ``data``, else the zoo model's input shape, else the training data's input shape."""
    if data.example_inputs is not None:
        return data.example_inputs
    if models.is_zoo_model(model):
        return models.input_shape(model)
    if data.train is not None:
        return tuple(data.train.info.input_shape) if isinstance(data.train, ImageData) else first_inputs(data.train)
    raise UserError(f"{type(model).__name__} is not a zoo model, so connprune cannot tell what it takes as input; "
                    "pass PruneData(example_inputs=torch.randn(1, C, H, W)) (as for Torch-Pruning)")


@dataclass(frozen=True)
class Reads:
    """How much of an iterable of training batches a method reads: ``samples`` samples, or ``per_class`` samples of
    every class (the model's output width), in the iterable's order; ``why`` names the parameter that sets it. Both
    ``None``: all of it, into memory."""

    samples: int | None = None
    per_class: int | None = None
    why: str = ""


class PruningMethod(ABC):
    """Base class. Subclasses set the class attributes and implement :meth:`_prune`."""

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

    # -- the template ------------------------------------------------------------------------------------------
    def prune(self, model: nn.Module, sparsity: Sparsity, data: PruneData | None = None) -> PruningResult:
        """Decide what to prune in ``model`` to reach ``sparsity``; does not change ``model``'s structure.

        Validates ``sparsity`` and the data the method needs, resolves the example inputs, runs the method
        (:meth:`_prune`), keeps ``data.masks`` and checks the result's masks against the model.
        """
        data = PruneData() if data is None else data
        sparsity = self.check_sparsity(sparsity)
        self._require(data)
        data = replace(data, example_inputs=resolve_example_inputs(model, data))
        data = self._read_train(model, sparsity, data)
        reference = count_prunable(model)
        result = self._prune(model, sparsity, data)
        pruned = result.model if result.model is not None else model
        result.masks = check_masks(pruned, result.masks)
        if data.masks:
            earlier = {k: v for k, v in check_masks(model, data.masks).items()
                       if pruned is model or k in dict(pruned.named_parameters())}
            result.masks = combine(earlier, result.masks)
        self._check_budget(model, sparsity, result, data, reference)
        return result

    def _check_budget(self, model: nn.Module, sparsity: Sparsity, result: PruningResult, data: PruneData,
                      reference: int) -> None:
        """Record the sparsity before and after the surgery ``result`` implies; where it misses ``sparsity`` by more
        than the method's selection unit (``info["budget_unit"]``, weights), say by how much and why, in ``info``
        and as a warning (stderr)."""
        counted = budget.count(model, result, data.example_inputs, reference=reference)
        result.info.update(masked_sparsity=counted.masked_sparsity, expected_sparsity=counted.sparsity)
        if sparsity == "auto" or getattr(self.params, "budget", "weights") == "neurons":
            return  # a budget of its own, or of neurons (K-FAC's, network slimming's budget="neurons")
        off = (reference - counted.nonzero_after) - round(sparsity * reference)
        unit = int(result.info.get("budget_unit", 1))
        if abs(off) <= unit:
            return
        why = result.info.get("budget_reason") or (
            "the surgery removes units that no selection at this budget keeps alive (a layer is cut off)"
            if off > 0 else "the method's limits or protected units leave too few weights to prune")
        note = (f"{self.name}: --sparsity {sparsity} ends at {counted.sparsity:.4f} after surgery ({off:+d} weights, "
                f"more than its selection unit of {unit}): {why}; this is the nearest sparsity it reaches")
        result.info["budget_note"] = note
        warnings.warn(note, stacklevel=3)

    def reads(self, sparsity: Sparsity) -> Reads | None:
        """What the method reads of training data given as an iterable (see :class:`Reads`); ``None``: it streams
        the iterable itself (training) or reads none."""
        return None

    def _read_train(self, model: nn.Module, sparsity: Sparsity, data: PruneData) -> PruneData:
        """``data`` with an iterable ``train`` read into memory as far as :meth:`reads` says."""
        needed = self.reads(sparsity)
        if data.train is None or isinstance(data.train, ImageData) or needed is None:
            return data
        classes = output_width(model, data.example_inputs) if needed.per_class is not None else None
        return replace(data, train=read(data.train, samples=needed.samples, per_class=needed.per_class,
                                        num_classes=classes, who=self.name, why=needed.why))

    @abstractmethod
    def _prune(self, model: nn.Module, sparsity: Sparsity, data: PruneData) -> PruningResult:
        """The method's own step: ``sparsity`` is validated and ``data.example_inputs`` is set."""

    def _require(self, data: PruneData) -> None:
        """UserError naming the fix when data the method declares it needs is missing."""
        if self.needs_training and (data.train is None or data.recipe is None):
            raise UserError(f"method {self.name!r} trains while it prunes: it needs training data and a recipe; run "
                            f"connprune prune --method {self.name} --model NAME --data NAME --epochs N (or pass "
                            "PruneData(train=..., recipe=TrainConfig(...)))")
        if self.needs_data and data.train is None:
            raise UserError(f"method {self.name!r} needs training data; pass --data NAME (or a checkpoint that "
                            "records its data set), or PruneData(train=...) in Python")
        for part in ("train", "test"):
            if getattr(data, part) is not None:
                check_source(getattr(data, part), f"PruneData.{part}")

    def check_sparsity(self, sparsity: Sparsity) -> Sparsity:
        """Validate a requested sparsity: a number in [0, 1), or ``"auto"`` for methods that choose their own."""
        if sparsity == "auto":
            if not self.supports_auto:
                raise UserError(f"method {self.name!r} needs a numeric --sparsity in [0, 1); 'auto' is for methods "
                                "that choose their own budget")
            return sparsity
        if isinstance(sparsity, bool) or not isinstance(sparsity, (int, float)) or not 0.0 <= sparsity < 1.0 \
                or math.isnan(sparsity):
            raise UserError(f"sparsity must be a number in [0, 1) (the fraction of prunable weights removed), "
                            f"got {sparsity!r}")
        return float(sparsity)

    @classmethod
    def describe(cls) -> dict[str, Any]:
        """Name, kind, paper, parameters with defaults and descriptions, and needs, for ``connprune methods``."""
        fields = cls.Params.model_fields
        return {
            "name": cls.name, "kind": cls.kind.value, "paper": cls.paper, "summary": cls.summary,
            "parameters": {k: v.get_default(call_default_factory=True) for k, v in fields.items()},
            "descriptions": {k: " ".join((v.description or "").split()) for k, v in fields.items()},
            "needs_trained": cls.needs_trained, "needs_data": cls.needs_data, "needs_training": cls.needs_training,
            "supports_auto": cls.supports_auto,
        }


class TrainingMethod(PruningMethod):
    """A method that trains while it prunes, usable from connprune's trainer or from a user's own loop::

        method.start(model, sparsity, PruneData(train=..., example_inputs=x), optimizer=opt, steps_per_epoch=n,
                     epochs=E)
        for epoch in range(1, E + 1):
            for step, (x, y) in enumerate(loader, ...):
                out = model(x)
                loss = F.cross_entropy(out, y) + method.penalty(model, out, y)
                opt.zero_grad(); loss.backward(); opt.step()
                method.on_step(global_step, model, opt)
            method.on_epoch_end(epoch, model, opt)
        result = method.finalize(model)               # a PruningResult for surgery.apply

    :meth:`_prune` (what :meth:`prune` runs) does exactly that with connprune's :class:`Trainer` for the method's
    share of the recipe's epochs (:meth:`training_epochs`) and returns the result with the trained model.
    """

    needs_trained = False
    needs_data = True
    needs_training = True

    def start(self, model: nn.Module, sparsity: Sparsity, data: PruneData | None = None, *,
              optimizer: torch.optim.Optimizer | None = None, steps_per_epoch: int | None = None,
              epochs: int | None = None) -> None:
        """Prepare to train ``model`` toward ``sparsity`` (schedules, statistics, masks). ``data`` gives example
        inputs (and training data for methods that measure on it); ``optimizer`` is the one the loop steps (for
        methods that keep masks enforced); ``steps_per_epoch`` and ``epochs`` size schedules."""
        data = PruneData() if data is None else data
        self.sparsity = self.check_sparsity(sparsity)
        self.data = replace(data, example_inputs=resolve_example_inputs(model, data))
        self.optimizer, self.steps_per_epoch, self.epochs = optimizer, steps_per_epoch, epochs

    def penalty(self, model: nn.Module, outputs: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        """The term to add to the loss of this step (zero for methods whose regularisation is a proximal step in
        :meth:`on_step`)."""
        return outputs.new_zeros(())

    def on_step(self, step: int, model: nn.Module, optimizer: torch.optim.Optimizer) -> None:
        """After every optimiser step (``step`` counts steps taken, from 1)."""

    def on_epoch_end(self, epoch: int, model: nn.Module, optimizer: torch.optim.Optimizer) -> None:
        """After every epoch (``epoch`` counts from 1)."""

    @abstractmethod
    def finalize(self, model: nn.Module) -> PruningResult:
        """What to prune now that training is over."""

    def training_epochs(self, epochs: int) -> tuple[int, int]:
        """``(epochs trained with the method, epochs trained after surgery)`` out of the recipe's ``epochs``."""
        return epochs, 0

    def _prune(self, model: nn.Module, sparsity: Sparsity, data: PruneData) -> PruningResult:
        return self.train(model, sparsity, data)

    def train(self, model: nn.Module, sparsity: Sparsity, data: PruneData,
              hooks: list[TrainHook] | None = None) -> PruningResult:
        """Train ``model`` with this method in connprune's trainer (``hooks`` run after the method's own) and return
        :meth:`finalize`'s result with the trained model and the epochs left for after surgery."""
        if data.train is None or data.recipe is None:
            raise UserError(f"method {self.name!r} trains: it needs PruneData(train=..., recipe=...)")
        during, after = self.training_epochs(data.recipe.epochs)
        trainer = Trainer(model, data.train, data.test, data.recipe.model_copy(update={"epochs": during}),
                          hooks=[MethodHook(self), *(hooks or [])], progress=data.progress, device=data.device,
                          description=self.description())
        self.start(model, sparsity, data, optimizer=trainer.optimizer, steps_per_epoch=len(trainer.batches),
                   epochs=during)
        earlier = MaskEnforcer(model, data.masks, trainer.optimizer) if data.masks else None  # old zeros stay zero
        fit = trainer.fit()
        if earlier is not None:
            earlier.detach()
        result = self.finalize(model)
        result.model = model
        result.train_after = after if result.train_after is None else result.train_after
        result.info.setdefault("train_seconds", fit.seconds)
        return result

    def description(self) -> str:
        """What the progress bar says while the method trains."""
        return self.name


class MethodHook(TrainHook):
    """Connects a :class:`TrainingMethod` to connprune's :class:`Trainer` through its public hooks."""

    def __init__(self, method: TrainingMethod) -> None:
        self.method = method

    def loss_term(self, trainer: Trainer, outputs: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        return self.method.penalty(trainer.model, outputs, targets)

    def after_step(self, trainer: Trainer) -> None:
        self.method.on_step(trainer.step, trainer.model, trainer.optimizer)

    def on_epoch_end(self, trainer: Trainer, epoch: int, metrics: dict[str, float]) -> None:
        self.method.on_epoch_end(epoch, trainer.model, trainer.optimizer)


@torch.no_grad()
def output_width(model: nn.Module, example_inputs: ExampleInputs) -> int:
    """The number of classes ``model`` predicts: the last dimension of its output on ``example_inputs``."""
    was_training = model.training
    try:
        output = model.eval()(*for_model(model, example_inputs))
    finally:
        model.train(was_training)
    if not isinstance(output, torch.Tensor):
        raise UserError(f"{type(model).__name__} returns a {type(output).__name__}; connprune's methods need a model "
                        "that returns class logits (batch, classes)")
    return int(output.shape[-1])


def train_with_masks(model: nn.Module, train: DataSource, test: DataSource | None, recipe: TrainConfig,
                     masks: Mapping[str, torch.Tensor], *, description: str, device: torch.device | str | None = None,
                     progress: bool = False) -> float:
    """Train ``model`` for ``recipe.epochs`` in connprune's trainer with ``masks`` held at zero (a
    :class:`~connprune.surgery.MaskEnforcer` on its optimiser): fine-tuning after pruning. Returns the seconds."""
    trainer = Trainer(model, train, test, recipe, device=device, progress=progress, description=description)
    MaskEnforcer(model, dict(masks), trainer.optimizer)
    return trainer.fit().seconds


def split_epochs(method: str, total: int, after: int | None, default_after: int | None = None) -> tuple[int, int]:
    """``(epochs with the penalty, refit epochs)``: ``after`` refit epochs (default a third of ``total``) and the
    rest penalised; UserError if none are left to penalise."""
    after = (total // 3 if default_after is None else default_after) if after is None else after
    penalised = total - after
    if penalised < 1:
        raise UserError(f"{method}: {total} epochs leave {penalised} for the penalised training after {after} refit "
                        "epochs; pass more --epochs or a smaller --param refit_epochs")
    return penalised, after


def _describe(error: dict[str, Any]) -> str:
    where = ".".join(str(p) for p in error["loc"]) or "parameters"
    if error["type"] == "extra_forbidden":
        return f"unknown parameter {where!r}"
    return f"parameter {where!r}: {error['msg']}"


__all__ = ["Kind", "MethodHook", "MethodParams", "PruneData", "PruningMethod", "PruningResult", "Reads", "Sparsity",
           "TrainingMethod", "output_width", "resolve_example_inputs", "split_epochs"]
