"""Jobs shared by the CLI, the demo and experiment grids."""

from __future__ import annotations

import json
import shutil
import time
from pathlib import Path
from typing import Any

import torch
from torch import nn

from connprune import checkpoint, data, methods, models, surgery
from connprune.data import DatasetInfo, ImageData
from connprune.data.shift import robustness
from connprune.errors import UserError
from connprune.measure import cost
from connprune.measure.sparsity import count_nonzero, count_prunable
from connprune.measure.sparsity import sparsity as sparsity_of
from connprune.methods import PruneData
from connprune.surgery import MaskEnforcer, apply_masks
from connprune.train import Trainer, default_recipe, distributed, evaluate, evaluate_shift
from connprune.utils.seed import default_device, seed_everything


def build_model(name: str, info: DatasetInfo, seed: int, **config: Any) -> nn.Module:
    """A fresh, seeded zoo model shaped for data set ``info`` (classes, channels, input size) with constructor
    options ``config``."""
    fixed = sorted(set(config) & {"num_classes", "in_channels", "input_size"})
    if fixed:
        raise UserError(f"model option(s) {', '.join(fixed)} come from the data set ({info.name}); remove them")
    seed_everything(seed)
    channels, size, _ = info.input_shape
    return models.create(name, num_classes=info.num_classes, in_channels=channels, input_size=size, **config)


def train_dense(
    model_name: str,
    data_name: str,
    out_dir: str | Path,
    *,
    data_dir: str | Path | None = None,
    seed: int = 0,
    resume: bool = False,
    progress: bool = True,
    model_config: dict[str, Any] | None = None,
    **recipe: Any,
) -> dict[str, Any]:
    """Train ``model_name`` (built with constructor options ``model_config``, e.g. ``small_input`` or ``widths``)
    on ``data_name`` and save the checkpoint to ``out_dir``; returns its metrics.

    The per-epoch training state lives in a hidden sibling ``.<out>.partial`` until the run finishes, so
    ``out_dir`` only ever holds a complete checkpoint; ``resume`` continues from that state.

    Under ``torchrun`` the run is data-parallel (the recipe's ``batch_size`` is the global batch) and only rank 0
    writes the checkpoint and removes the state directory.
    """
    distributed.init_from_env()
    out_dir = Path(out_dir)
    state_dir = out_dir.parent / f".{out_dir.name}.partial"
    if resume and (out_dir / checkpoint.MODEL_JSON).is_file() and not state_dir.exists():
        return checkpoint.load_checkpoint(out_dir).metrics  # finished before: nothing left to do
    if not resume and state_dir.exists() and distributed.is_main():
        shutil.rmtree(state_dir)
    distributed.barrier()
    info = data.info(data_name)
    if info.shift_only:
        raise UserError(f"{data_name} is a test-only shift set; train on its base set and evaluate with "
                        f"--shift {data_name}")
    train_data = data.load(data_name, "train", data_dir, seed=seed)
    test_data = data.load(data_name, "test", data_dir, seed=seed)
    model = build_model(model_name, info, seed, **(model_config or {}))
    config = default_recipe(data_name, seed=seed, **recipe)
    trainer = Trainer(model, train_data, test_data, config, state_dir=state_dir, progress=progress,
                      description=f"{model_name}/{data_name}")
    result = trainer.fit(resume=resume)
    metrics = {
        "model": model_name, "data": data_name, "seed": seed, "epochs": config.epochs,
        "accuracy": result.final["accuracy"], "loss": result.final["loss"], "samples": result.final["samples"],
        "train_seconds": result.seconds, "recipe": config.model_dump(), "history": result.history,
    }
    if distributed.is_main():
        checkpoint.save(model, out_dir, data_info=info.to_json(), metrics=metrics)
        shutil.rmtree(state_dir, ignore_errors=True)
    distributed.barrier()
    return metrics


def parse_param_values(pairs: list[str], option: str = "--param") -> dict[str, Any]:
    """``["k=v", ...]`` from ``--param`` (or ``option``) into a dict; values parsed as JSON where they can be
    (numbers, bools, lists)."""
    params: dict[str, Any] = {}
    for pair in pairs:
        key, sep, value = pair.partition("=")
        if not sep or not key:
            raise UserError(f"{option} {pair!r} is not of the form key=value (e.g. {option} "
                            f"{'scope=layer' if option == '--param' else 'small_input=true'})")
        try:
            params[key] = json.loads(value)
        except json.JSONDecodeError:
            params[key] = value
    return params


def parse_sparsity(text: str) -> float | str:
    if text == "auto":
        return "auto"
    try:
        return float(text)
    except ValueError:
        raise UserError(f"--sparsity {text!r} is neither a number in [0, 1) nor 'auto'") from None


def _accuracies(model: nn.Module, test_data: ImageData, shift: str, data_dir: Any, seed: int) -> tuple[float, dict]:
    clean = evaluate(model, test_data)["accuracy"]
    return clean, evaluate_shift(model, test_data, shift, data_dir=data_dir, seed=seed)


def prune_model(
    model: nn.Module,
    method: methods.PruningMethod,
    sparsity: float | str,
    train_data: ImageData,
    test_data: ImageData,
    *,
    train_epochs: int = 0,
    shift: str = "none",
    data_dir: str | Path | None = None,
    seed: int = 0,
    shrink: bool = True,
    progress: bool = True,
    recipe_overrides: dict[str, Any] | None = None,
) -> tuple[nn.Module, dict[str, torch.Tensor], dict[str, Any]]:
    """Prune ``model`` with ``method``, then train it ``train_epochs`` with the masks enforced (a fine-tune at a
    tenth of the recipe's learning rate for methods that prune a trained model; full training for methods that
    prune at initialisation). ``recipe_overrides`` change the data set's default recipe (as for the dense model).
    Methods that train while they prune (``needs_training``) get a recipe of ``train_epochs`` epochs and train
    themselves; after surgery they train ``result.train_after`` epochs (e.g. a refit). With a shift, the mean
    corrupted accuracy (over the synthetic corruptions) is reported as ``mca_before/after`` and its ratio to the
    clean accuracy as ``relative_robustness_before/after``.
    Returns the pruned model, its masks, and the contract's ``metrics.json`` fields."""
    sparsity = method.check_sparsity(sparsity)
    info = train_data.info
    device = default_device()
    model.to(device)
    before = cost(model, info.input_shape)
    prunable_before = count_prunable(model)
    acc_before, shift_before = _accuracies(model, test_data, shift, data_dir, seed)
    overrides = {**method.recipe_overrides,
                 **{k: v for k, v in (recipe_overrides or {}).items() if k not in ("epochs", "seed")}}
    recipe = default_recipe(info.name, **overrides, seed=seed, epochs=train_epochs)
    if method.needs_trained:
        recipe = recipe.model_copy(update={"lr": recipe.lr * 0.1})
    started = time.perf_counter()
    result = method.prune(model, sparsity, PruneData(train=train_data, test=test_data, recipe=recipe, device=device,
                                                     progress=progress))
    model, masks = surgery.apply(model, result, shrink=shrink, input_shape=info.input_shape)
    prune_seconds = time.perf_counter() - started
    acc_pruned = evaluate(model, test_data)["accuracy"]
    finetune_seconds = 0.0
    epochs_after = _epochs_after(method, result, train_epochs)
    if epochs_after > 0:
        trainer = Trainer(model, train_data, test_data, recipe.model_copy(update={"epochs": epochs_after}),
                          hooks=[MaskEnforcer(masks)], progress=progress,
                          description=f"{'train' if method.needs_training or not method.needs_trained else 'fine-tune'}"
                                      f" {method.name}")
        finetune_seconds = trainer.fit().seconds
    acc_after, shift_after = _accuracies(model, test_data, shift, data_dir, seed)
    after = cost(model, info.input_shape)
    metrics: dict[str, Any] = {
        "method": method.name, "model": getattr(model, "connprune_arch", type(model).__name__), "data": info.name,
        "seed": seed, "target_sparsity": sparsity,
        "achieved_sparsity": sparsity_of(model, masks, prunable_before),
        "nonzero_weights": count_nonzero(model, masks, include_skips=True),
        "params_before": before.params, "params_after": after.params,
        "macs_before": before.macs, "macs_after": after.macs,
        "acc_before": acc_before, "acc_pruned": acc_pruned, "acc_after": acc_after,
        "prune_seconds": prune_seconds, "finetune_seconds": finetune_seconds,
        "train_epochs": train_epochs, "params": method.params.model_dump(), **result.info,
    }
    if shift != "none":
        metrics["shift_acc_before"], metrics["shift_acc_after"] = shift_before, shift_after
        for when, shifted, clean in (("before", shift_before, acc_before), ("after", shift_after, acc_after)):
            metrics.update({f"{k}_{when}": v for k, v in robustness(shifted, clean).items()})
    return model, masks, metrics


def _epochs_after(method: methods.PruningMethod, result: methods.PruningResult, train_epochs: int) -> int:
    """Epochs of (fine-)tuning after surgery: the method's own choice, else none for methods that train while they
    prune (the recipe's epochs were theirs), else ``train_epochs``."""
    if result.train_after is not None:
        return result.train_after
    return 0 if method.needs_training else train_epochs


def prune_job(
    method_name: str,
    sparsity: float | str,
    out_dir: str | Path,
    *,
    checkpoint_dir: str | Path | None = None,
    model_name: str | None = None,
    data_name: str | None = None,
    epochs: int | None = None,
    params: dict[str, Any] | None = None,
    finetune_epochs: int = 0,
    data_dir: str | Path | None = None,
    shift: str = "none",
    seed: int = 0,
    shrink: bool = True,
    progress: bool = True,
    recipe_overrides: dict[str, Any] | None = None,
    model_config: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """``connprune prune``: prune a trained checkpoint (or, for methods that prune at initialisation or while
    training, a fresh ``model_name`` on ``data_name`` trained ``epochs``), evaluate, and save the pruned (physically
    smaller) model with ``metrics.json`` as the contract describes. Under ``torchrun`` every rank prunes (the
    methods are seeded, so identically), the training runs data-parallel and only rank 0 writes."""
    distributed.init_from_env()
    method = methods.create(method_name, **{"seed": seed, **(params or {})})
    sparsity = method.check_sparsity(sparsity)
    if method.needs_trained:
        if checkpoint_dir is None:
            raise UserError(f"method {method_name!r} prunes a trained model: pass --checkpoint DIR "
                            "(written by `connprune train`)")
        loaded = checkpoint.load_checkpoint(checkpoint_dir)
        model = apply_masks(loaded.model, loaded.masks)
        data_name = data_name or loaded.meta.get("data", {}).get("name")
        if not data_name:
            raise UserError(f"{checkpoint_dir}/model.json does not name its data set; pass --data NAME")
        train_epochs = finetune_epochs
        if model_config:
            raise UserError("--model-param configures a fresh model; a checkpoint's model is rebuilt from its "
                            "model.json, so drop --model-param when pruning --checkpoint")
    else:
        if model_name is None or data_name is None:
            raise UserError(f"method {method_name!r} prunes at initialisation: pass --model NAME --data NAME "
                            "--epochs N instead of --checkpoint")
        model = build_model(model_name, data.info(data_name), seed, **(model_config or {}))
        train_epochs = epochs if epochs is not None else default_recipe(data_name).epochs
    train_data = data.load(data_name, "train", data_dir, seed=seed)
    test_data = data.load(data_name, "test", data_dir, seed=seed)
    model, masks, metrics = prune_model(model, method, sparsity, train_data, test_data, train_epochs=train_epochs,
                                        shift=shift, data_dir=data_dir, seed=seed, shrink=shrink, progress=progress,
                                        recipe_overrides=recipe_overrides)
    if distributed.is_main():
        checkpoint.save(model, out_dir, data_info=train_data.info.to_json(), metrics=metrics, masks=masks)
    distributed.barrier()
    return metrics
