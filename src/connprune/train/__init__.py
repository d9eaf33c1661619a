"""Training and evaluation shared by every method."""

from connprune.train.evaluate import evaluate, evaluate_shift
from connprune.train.recipes import TrainConfig, default_recipe
from connprune.train.trainer import Trainer, TrainHook, TrainResult, train

__all__ = ["TrainConfig", "TrainHook", "TrainResult", "Trainer", "default_recipe", "evaluate", "evaluate_shift",
           "train"]
