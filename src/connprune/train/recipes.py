"""Training recipes: validated hyper-parameters, a sensible default per data set and named paper recipes
(:data:`RECIPES`)."""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field


class TrainConfig(BaseModel):
    """Hyper-parameters of one training or fine-tuning run (validated; unknown keys are errors)."""

    model_config = ConfigDict(extra="forbid")

    epochs: int = Field(10, ge=0)
    batch_size: int = Field(128, ge=1)
    optimizer: Literal["sgd", "adam"] = "sgd"
    lr: float = Field(0.05, gt=0)
    momentum: float = Field(0.9, ge=0, lt=1)
    nesterov: bool = False
    weight_decay: float = Field(5e-4, ge=0)
    schedule: Literal["none", "step", "cosine"] = "cosine"
    milestones: list[float] = Field(default_factory=lambda: [0.5, 0.75])
    """For ``step``: the fractions of the run after which the learning rate is multiplied by ``gamma``."""
    gamma: float = Field(0.1, gt=0)
    label_smoothing: float = Field(0.0, ge=0, lt=1)
    amp: bool = False
    """Mixed precision (bfloat16 autocast) on CUDA; ignored on CPU."""
    seed: int = 0
    eval_batch_size: int = Field(512, ge=1)


_DEFAULTS: dict[str, dict] = {
    "digits": dict(epochs=30, batch_size=64, optimizer="sgd", lr=0.05, weight_decay=1e-4, schedule="cosine"),
    "mnist": dict(epochs=10, batch_size=128, optimizer="sgd", lr=0.05, weight_decay=1e-4, schedule="cosine"),
    "fashion-mnist": dict(epochs=10, batch_size=128, optimizer="sgd", lr=0.05, weight_decay=5e-4, schedule="cosine"),
    "cifar10": dict(epochs=160, batch_size=128, optimizer="sgd", lr=0.1, weight_decay=5e-4, schedule="cosine"),
    "tiny-imagenet": dict(epochs=90, batch_size=128, optimizer="sgd", lr=0.1, weight_decay=5e-4, schedule="cosine"),
}


def default_recipe(dataset: str, **overrides) -> TrainConfig:
    """The default recipe for ``dataset`` with ``overrides`` applied (the CIFAR one follows He et al. 2016)."""
    return TrainConfig(**{**_DEFAULTS.get(dataset, {}), **overrides})


MINT_RECIPE: dict = dict(epochs=30, batch_size=256, optimizer="sgd", lr=0.1, momentum=0.9, nesterov=True,
                         weight_decay=1e-4, schedule="step", milestones=[1 / 3, 2 / 3], gamma=0.1)
"""MINT's MNIST-MLP recipe (its run scripts, docs/methods/mint.md §4): SGD with Nesterov momentum, 30 epochs, batch
256, lr 0.1 ×0.1 after epochs 10 and 20, weight decay 1e-4 (the model's dropout 0.2 is ``mlp-500-300``'s own)."""

RECIPES: dict[str, dict] = {"mint-mnist": MINT_RECIPE}
"""Named recipes users can pick: ``default_recipe("mnist", **RECIPES["mint-mnist"])``, or the same keys under a
config's ``train:``."""
