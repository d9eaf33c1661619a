"""Jobs shared by the CLI, the demo and experiment grids: one validated spec per command, one function per spec.

The CLI fills a spec from its flags and the runner from a config row (:class:`TrainJob`, :class:`PruneJob`,
:class:`EvalJob`); :func:`train_dense`, :func:`prune_job` and :func:`evaluate_job` run them. A bad value is a
:class:`~connprune.errors.UserError` naming the option, never a validation traceback.
"""

from __future__ import annotations

import json
import shutil
import time
from pathlib import Path
from typing import Any, Literal

import torch
from pydantic import BaseModel, ConfigDict, Field, ValidationError
from torch import nn

from connprune import checkpoint, data, methods, models, surgery
from connprune.data import DatasetInfo, ImageData
from connprune.data.shift import robustness
from connprune.errors import UserError
from connprune.measure import cost
from connprune.measure.sparsity import count_nonzero, count_prunable
from connprune.measure.sparsity import sparsity as sparsity_of
from connprune.methods import PruneData
from connprune.methods.base import train_with_masks
from connprune.methods.iterative import StepSchedule, prune_in_steps
from connprune.surgery import apply_masks
from connprune.train import TrainConfig, Trainer, default_recipe, distributed, evaluate, evaluate_shift
from connprune.utils.seed import default_device, seed_everything

# --------------------------------------------------------------------------------------------------------- specs


class JobSpec(BaseModel):
    """Base of the job specs: unknown fields are errors; :meth:`build` turns validation errors into UserErrors."""

    model_config = ConfigDict(extra="forbid", frozen=True, arbitrary_types_allowed=True)

    @classmethod
    def build(cls, **fields: Any) -> Any:
        """The validated spec, or a UserError naming the first bad option (``--epochs -1`` → "--epochs ...")."""
        try:
            return cls(**fields)
        except ValidationError as exc:
            raise _option_error(exc) from None


def _option_error(exc: ValidationError) -> UserError:
    """A one-line UserError naming the first invalid option of a validation error."""
    error = exc.errors()[0]
    option = "--" + "-".join(str(p) for p in error["loc"]).replace("_", "-")
    return UserError(f"{option}: {error['msg']} (got {error.get('input')!r}); see --help")


class TrainJob(JobSpec):
    """``connprune train``: a dense model trained on a data set, saved as a checkpoint."""

    model: str
    data: str = "digits"
    out: Path
    data_dir: Path | None = None
    seed: int = 0
    resume: bool = False
    progress: bool = True
    model_options: dict[str, Any] = Field(default_factory=dict)
    recipe: dict[str, Any] = Field(default_factory=dict)
    """Overrides of the data set's default recipe (epochs, batch_size, lr, optimizer, ...)."""


class PruneJob(JobSpec):
    """``connprune prune``: prune a trained checkpoint (or a fresh zoo model, for methods that prune at
    initialisation or while training), evaluate, and save the pruned model with ``metrics.json``."""

    method: str
    sparsity: float | Literal["auto"]
    out: Path
    checkpoint: Path | None = None
    model: str | None = None
    data: str | None = None
    epochs: int | None = Field(None, ge=0)
    params: dict[str, Any] = Field(default_factory=dict)
    finetune_epochs: int = Field(0, ge=0)
    steps: int = Field(1, ge=1)
    """Prune in this many steps (:func:`connprune.methods.iterative.prune_in_steps`), ``step_epochs`` of training
    between them."""
    step_spacing: Literal["cubic", "linear"] = "cubic"
    step_epochs: int = Field(1, ge=0)
    data_dir: Path | None = None
    shift: str = "none"
    seed: int = 0
    shrink: bool = True
    progress: bool = True
    recipe: dict[str, Any] = Field(default_factory=dict)
    """Overrides of the data set's default recipe, as for the dense model (a config's ``train:``)."""
    model_options: dict[str, Any] = Field(default_factory=dict)


class EvalJob(JobSpec):
    """``connprune eval``: clean and shifted accuracy of a checkpoint, its cost and its connectivity."""

    checkpoint: Path
    model: str | None = None
    """``package.module:factory`` that builds a checkpoint of a model from outside the zoo (imports that code)."""
    data: str | None = None
    data_dir: Path | None = None
    shift: str = "none"
    seed: int = 0
    cost: bool = False
    runtime: Literal["torch", "onnxruntime"] = "torch"
    """With ``cost``: where latency is measured (:func:`connprune.measure.latency.prepare`), with ``fold_bn``,
    ``channels_last`` and ``inference_mode``."""
    fold_bn: bool = False
    channels_last: bool = False
    inference_mode: bool = False
    connectivity: Path | None = None
    heat_taps: Literal["all", "first"] = "all"
    heat_adjacency: Literal["weighted", "binary"] = "weighted"
    """Edge weights of F's unit graphs: |w| aggregated per kernel slice (the spec's Table 3) or 0/1 (Fig. 3)."""
    heat_t: str = "t_star"
    """Where F is read: ``t_star`` (the reference's scree saturation time), ``t_sat`` (its settling time) or a
    number t > 0 (:meth:`connprune.measure.heat.HeatComparison.time`)."""
    scree: Path | None = None


# ----------------------------------------------------------------------------------------------------- training


def build_model(name: str, info: DatasetInfo, seed: int, **config: Any) -> nn.Module:
    """A fresh, seeded zoo model shaped for data set ``info`` (classes, channels, input size) with constructor
    options ``config``."""
    fixed = sorted(set(config) & {"num_classes", "in_channels", "input_size"})
    if fixed:
        raise UserError(f"model option(s) {', '.join(fixed)} come from the data set ({info.name}); remove them")
    seed_everything(seed)
    channels, size, _ = info.input_shape
    return models.create(name, num_classes=info.num_classes, in_channels=channels, input_size=size, **config)


def train_dense(job: TrainJob) -> dict[str, Any]:
    """Train ``job.model`` (built with ``job.model_options``, e.g. ``small_input`` or ``widths``) on ``job.data``
    and save the checkpoint to ``job.out``; returns its metrics.

    The per-epoch training state lives in a hidden sibling ``.<out>.partial`` until the run finishes, so
    ``out`` only ever holds a complete checkpoint; ``resume`` continues from that state.

    Under ``torchrun`` the run is data-parallel (the recipe's ``batch_size`` is the global batch) and only rank 0
    writes the checkpoint and removes the state directory.
    """
    distributed.init_from_env()
    out_dir = Path(job.out)
    state_dir = out_dir.parent / f".{out_dir.name}.partial"
    if job.resume and (out_dir / checkpoint.MODEL_JSON).is_file() and not state_dir.exists():
        return checkpoint.load_checkpoint(out_dir).metrics  # finished before: nothing left to do
    if not job.resume and state_dir.exists() and distributed.is_main():
        shutil.rmtree(state_dir)
    distributed.barrier()
    info = data.info(job.data)
    if info.shift_only:
        raise UserError(f"{job.data} is a test-only shift set; train on its base set and evaluate with "
                        f"--shift {job.data}")
    train_data = data.load(job.data, "train", job.data_dir, seed=job.seed)
    test_data = data.load(job.data, "test", job.data_dir, seed=job.seed)
    model = build_model(job.model, info, job.seed, **job.model_options)
    config = _recipe(job.data, seed=job.seed, **job.recipe)
    trainer = Trainer(model, train_data, test_data, config, state_dir=state_dir, progress=job.progress,
                      description=f"{job.model}/{job.data}")
    result = trainer.fit(resume=job.resume)
    metrics = {
        "model": job.model, "data": job.data, "seed": job.seed, "epochs": config.epochs,
        "accuracy": result.final["accuracy"], "loss": result.final["loss"], "samples": result.final["samples"],
        "train_seconds": result.seconds, "recipe": config.model_dump(), "history": result.history,
    }
    if distributed.is_main():
        checkpoint.save(model, out_dir, data_info=info.to_json(), metrics=metrics)
        shutil.rmtree(state_dir, ignore_errors=True)
    distributed.barrier()
    return metrics


def _recipe(dataset: str, **overrides: Any) -> TrainConfig:
    """The data set's default recipe with ``overrides``; a bad value is a UserError naming it."""
    try:
        return default_recipe(dataset, **overrides)
    except ValidationError as exc:
        raise _option_error(exc) from None


# ------------------------------------------------------------------------------------------------------ parsing


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


# ------------------------------------------------------------------------------------------------------ pruning


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
    masks: dict[str, torch.Tensor] | None = None,
    schedule: StepSchedule = StepSchedule(),
) -> tuple[nn.Module, dict[str, torch.Tensor], dict[str, Any]]:
    """Prune ``model`` with ``method``, then train it ``train_epochs`` with the masks enforced (a fine-tune at a
    tenth of the recipe's learning rate for methods that prune a trained model; full training for methods that
    prune at initialisation). ``recipe_overrides`` change the data set's default recipe (as for the dense model).
    Methods that train while they prune (``needs_training``) get a recipe of ``train_epochs`` epochs and train
    themselves; after surgery they train ``result.train_after`` epochs (e.g. a refit). ``masks`` are those of an
    already pruned model: they are kept. With a shift, the mean corrupted accuracy (over the synthetic corruptions)
    is reported as ``mca_before/after`` and its ratio to the clean accuracy as ``relative_robustness_before/after``.
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
    recipe = _recipe(info.name, **overrides, seed=seed, epochs=train_epochs)
    if method.needs_trained:
        recipe = recipe.model_copy(update={"lr": recipe.lr * 0.1})
    started = time.perf_counter()
    prune_data = PruneData(train=train_data, test=test_data, recipe=recipe, device=device, progress=progress,
                           example_inputs=info.input_shape, masks=masks)
    model, masks, result = _prune_and_apply(method, model, sparsity, prune_data, schedule, shrink)
    prune_seconds = time.perf_counter() - started
    acc_pruned = evaluate(model, test_data)["accuracy"]
    finetune_seconds = 0.0
    epochs_after = _epochs_after(method, result, train_epochs)
    if epochs_after > 0:
        finetune_seconds = train_with_masks(
            model, train_data, test_data, recipe.model_copy(update={"epochs": epochs_after}), masks, device=device,
            progress=progress,
            description=f"{'train' if method.needs_training or not method.needs_trained else 'fine-tune'} "
                        f"{method.name}")
    acc_after, shift_after = _accuracies(model, test_data, shift, data_dir, seed)
    after = cost(model, info.input_shape)
    metrics: dict[str, Any] = {
        "method": method.name, "model": getattr(model, "connprune_arch", type(model).__name__), "data": info.name,
        "seed": seed, "target_sparsity": sparsity,
        "achieved_sparsity": sparsity_of(model, masks, prunable_before, include_skips=True),
        "masked_sparsity": result.info.get("masked_sparsity"),
        "nonzero_weights": count_nonzero(model, masks, include_skips=True),
        "params_before": before.params, "params_after": after.params,
        "macs_before": before.macs, "macs_after": after.macs,
        "acc_before": acc_before, "acc_pruned": acc_pruned, "acc_after": acc_after,
        "prune_seconds": prune_seconds, "finetune_seconds": finetune_seconds,
        "train_epochs": train_epochs, "params": method.params.model_dump(),
        **{k: v for k, v in result.info.items() if k != "masked_sparsity"},
    }
    metrics.update(chance_warning(method, sparsity, acc_before, acc_after, info.num_classes, train_epochs))
    if shift != "none":
        metrics["shift_acc_before"], metrics["shift_acc_after"] = shift_before, shift_after
        for when, shifted, clean in (("before", shift_before, acc_before), ("after", shift_after, acc_after)):
            metrics.update({f"{k}_{when}": v for k, v in robustness(shifted, clean).items()})
    return model, masks, metrics


def _prune_and_apply(method: methods.PruningMethod, model: nn.Module, sparsity: float | str, data: PruneData,
                     schedule: StepSchedule, shrink: bool) -> tuple[nn.Module, dict[str, torch.Tensor],
                                                                     methods.PruningResult]:
    """One shot, or ``schedule.steps`` steps with ``schedule.epochs`` of training between them (masks enforced)."""
    if schedule.steps == 1:
        result = method.prune(model, sparsity, data)
        return (*surgery.apply(model, result, shrink=shrink, example_inputs=data.example_inputs), result)
    assert data.train is not None and data.recipe is not None

    def fine_tune(current: nn.Module, kept: dict[str, torch.Tensor], step: int) -> None:
        train_with_masks(current, data.train, None, data.recipe.model_copy(update={"epochs": schedule.epochs}), kept,
                         device=data.device, progress=data.progress,
                         description=f"{method.name} step {step}/{schedule.steps}")

    return prune_in_steps(method, model, sparsity, data, steps=schedule.steps, spacing=schedule.spacing,
                          shrink=shrink, between=fine_tune if schedule.epochs > 0 else None)


CHANCE_MARGIN = 0.02
"""How far above chance (1 / classes) an accuracy may be and still count as "at chance" (at least; for many classes
half the chance level: 1/C + max(0.02, 0.5/C))."""


def chance_warning(method: methods.PruningMethod, sparsity: float | str, acc_before: float, acc_after: float,
                   num_classes: int, epochs: int) -> dict[str, str]:
    """``{"warning": text}`` when the pruned model ends at chance accuracy, naming the likely cause; else ``{}``.

    Causes considered, in this order: the model was at chance before pruning (a method that prunes a trained model);
    too few epochs for a method that prunes at initialisation or while training; a very high sparsity; else the
    learning rate."""
    chance = 1.0 / num_classes
    threshold = chance + max(CHANCE_MARGIN, 0.5 * chance)
    if acc_after > threshold:
        return {}
    causes = []
    if method.needs_trained and acc_before <= threshold:
        causes.append(f"the model was at chance before pruning too (accuracy {acc_before:.3f}): train it longer")
    if not method.needs_trained:
        causes.append(f"too few epochs ({epochs}) for a method that prunes at initialisation or while training: "
                      "raise --epochs")
    if isinstance(sparsity, float) and sparsity >= 0.9:
        causes.append(f"too high a sparsity ({sparsity:g}): try a lower --sparsity")
    causes.append("a learning rate that does not suit the pruned model (lr in a config's train: section)")
    return {"warning": f"{method.name}: accuracy after pruning {acc_after:.3f} is at chance (1/{num_classes} = "
                       f"{chance:.3f}); likely causes: {'; '.join(causes)}"}


def _epochs_after(method: methods.PruningMethod, result: methods.PruningResult, train_epochs: int) -> int:
    """Epochs of (fine-)tuning after surgery: the method's own choice, else none for methods that train while they
    prune (the recipe's epochs were theirs), else ``train_epochs``."""
    if result.train_after is not None:
        return result.train_after
    return 0 if method.needs_training else train_epochs


def _factory(model: str | None) -> str | None:
    """``--model`` when it names user code that builds a checkpoint's model (``package.module:factory``)."""
    if model is not None and not models.is_factory(model):
        raise UserError(f"--model {model} with --checkpoint: a zoo checkpoint rebuilds its own model; --model here "
                        "takes package.module:factory for a model from outside the zoo")
    return model


def _zoo_name(model: str | None) -> str | None:
    return None if model is None or models.is_factory(model) else model


def _model_to_prune(job: PruneJob, method: methods.PruningMethod) -> tuple[nn.Module, str, int, dict]:
    """(model, data set name, epochs to train after surgery, masks it already carries) for ``job``."""
    _check_prune_flags(job, method)
    if method.needs_trained:
        if job.checkpoint is None:
            raise UserError(f"method {job.method!r} prunes a trained model: pass --checkpoint DIR "
                            "(written by `connprune train`)")
        if job.model_options:
            raise UserError("--model-param configures a fresh model; a checkpoint's model is rebuilt from its "
                            "model.json, so drop --model-param when pruning --checkpoint")
        loaded = checkpoint.load_checkpoint(job.checkpoint, _factory(job.model))
        data_name = job.data or loaded.meta.get("data", {}).get("name")
        if not data_name:
            raise UserError(f"{job.checkpoint}/model.json does not name its data set; pass --data NAME")
        check_data_fits(loaded, data_name, job.checkpoint)
        return apply_masks(loaded.model, loaded.masks), data_name, job.finetune_epochs, loaded.masks
    if job.model is None or job.data is None:
        raise UserError(f"method {job.method!r} prunes at initialisation: pass --model NAME --data NAME "
                        "--epochs N instead of --checkpoint")
    model = build_model(job.model, data.info(job.data), job.seed, **job.model_options)
    epochs = job.epochs if job.epochs is not None else default_recipe(job.data).epochs
    return model, job.data, epochs, {}


def _check_prune_flags(job: PruneJob, method: methods.PruningMethod) -> None:
    """UserError for flags ``method`` would ignore: ``--model``/``--epochs`` with a method that prunes a trained
    ``--checkpoint``; ``--checkpoint``/``--finetune-epochs`` with one that prunes a fresh model."""
    if method.needs_trained:
        ignored = [flag for flag, value in (("--model", _zoo_name(job.model)), ("--epochs", job.epochs))
                   if value is not None]
        if ignored and job.checkpoint is not None:
            raise UserError(f"method {job.method!r} prunes the trained model of --checkpoint, so "
                            f"{' and '.join(ignored)} would be ignored; drop {' and '.join(ignored)} (fine-tune "
                            "after pruning with --finetune-epochs N)")
    else:
        ignored = [flag for flag, value in (("--checkpoint", job.checkpoint), ("--finetune-epochs",
                                                                                 job.finetune_epochs or None))
                   if value is not None]
        if ignored:
            raise UserError(f"method {job.method!r} prunes a fresh --model at initialisation (or while training it), "
                            f"so {' and '.join(ignored)} would be ignored; drop {' and '.join(ignored)} (it trains "
                            "--epochs N after pruning)")


def check_data_fits(loaded: checkpoint.Checkpoint, name: str, where: str | Path) -> None:
    """UserError unless data set ``name`` has the input shape and classes of the checkpoint's model (read from its
    ``model.json``), naming the data set it was trained on."""
    config = loaded.meta.get("config", {})
    if not {"in_channels", "input_size", "num_classes"} <= set(config):
        return  # not a zoo config: nothing to compare with
    wanted = data.info(name)
    shape = (config["in_channels"], config["input_size"], config["input_size"])
    if tuple(wanted.input_shape) == shape and wanted.num_classes == config["num_classes"]:
        return
    trained = loaded.meta.get("data", {}).get("name") or "another data set"
    raise UserError(f"{where} was trained on {trained} ({'×'.join(map(str, shape))} images, {config['num_classes']} "
                    f"classes) but {name} has {'×'.join(map(str, wanted.input_shape))} images and "
                    f"{wanted.num_classes} classes; use --data {trained} (or drop --data) or a data set of that shape")


def prune_job(job: PruneJob) -> dict[str, Any]:
    """``connprune prune``: run ``job`` and save the pruned (physically smaller) model with ``metrics.json`` as
    the contract describes; returns the metrics. Under ``torchrun`` every rank prunes (the methods are seeded, so
    identically), the training runs data-parallel and only rank 0 writes."""
    distributed.init_from_env()
    method = methods.create(job.method, **{"seed": job.seed, **job.params})
    sparsity = method.check_sparsity(job.sparsity)
    model, data_name, train_epochs, masks = _model_to_prune(job, method)
    train_data = data.load(data_name, "train", job.data_dir, seed=job.seed)
    test_data = data.load(data_name, "test", job.data_dir, seed=job.seed)
    model, masks, metrics = prune_model(model, method, sparsity, train_data, test_data, train_epochs=train_epochs,
                                        shift=job.shift, data_dir=job.data_dir, seed=job.seed, shrink=job.shrink,
                                        progress=job.progress, recipe_overrides=job.recipe, masks=masks or None,
                                        schedule=StepSchedule(job.steps, job.step_spacing, job.step_epochs))
    if distributed.is_main():
        checkpoint.save(model, job.out, data_info=train_data.info.to_json(), metrics=metrics, masks=masks)
    distributed.barrier()
    return metrics


# --------------------------------------------------------------------------------------------------- evaluation

HEAT_T_MULTIPLES = (1, 10, 100)
"""``eval --connectivity`` reports F at ``--heat-t`` (``heat_distance``; default t*), at these multiples of the
reference's scree saturation time t*, at its settling time t_sat and at t = ∞
(:meth:`connprune.measure.heat.HeatComparison.summary`)."""


def evaluate_job(job: EvalJob) -> tuple[dict[str, Any], list[list[Any]], str]:
    """``connprune eval``: (the JSON result, table rows ``[evaluation, value]``, the data set's name)."""
    loaded = checkpoint.load_checkpoint(job.checkpoint, _factory(job.model))
    name = job.data or loaded.meta.get("data", {}).get("name")
    if not name:
        raise UserError(f"{job.checkpoint}/model.json does not name its data set; pass --data NAME")
    check_data_fits(loaded, name, job.checkpoint)
    test_data = data.load(name, "test", job.data_dir)
    result: dict[str, Any] = dict(evaluate(loaded.model, test_data))
    shifted = evaluate_shift(loaded.model, test_data, job.shift, data_dir=job.data_dir, seed=job.seed)
    if shifted:
        result["shift"] = shifted
        result.update(robustness(shifted, result["accuracy"]))
    rows = [["clean", result["accuracy"]]] + [[k, v] for k, v in shifted.items()]
    rows += [[k, result[k]] for k in ("mca", "relative_robustness") if k in result]
    shape = test_data.info.input_shape
    if job.cost:
        rows += _cost_rows(loaded.model, shape, result, job)
    if job.connectivity is not None:
        rows += _connectivity_rows(job, loaded, shape, result)
    return result, rows, name


def _cost_rows(model: nn.Module, shape: tuple[int, ...], result: dict[str, Any], job: EvalJob) -> list[list[Any]]:
    from connprune.measure.latency import latency, prepare

    measured = cost(model, shape)
    runner = prepare(model, shape, runtime=job.runtime, fold_bn=job.fold_bn, channels_last=job.channels_last,
                     inference_mode=job.inference_mode)  # prepared once (an ONNX export), timed at both batches
    flags = [flag for flag in ("fold_bn", "channels_last", "inference_mode") if getattr(job, flag)]
    result.update(params=measured.params, macs=measured.macs, latency_ms_b1=latency(runner, shape, 1).median_ms,
                  latency_ms_b64=latency(runner, shape, 64).median_ms, latency_runtime="+".join([job.runtime, *flags]))
    return [[k, result[k]] for k in ("params", "macs", "latency_ms_b1", "latency_ms_b64", "latency_runtime")]


def _connectivity_rows(job: EvalJob, loaded: checkpoint.Checkpoint, shape: tuple[int, ...],
                       result: dict[str, Any]) -> list[list[Any]]:
    from connprune.measure import heat

    assert job.connectivity is not None
    reference = checkpoint.load_checkpoint(job.connectivity, _factory(job.model))
    comparison = heat.compare(reference.model, loaded.model, shape, masks=loaded.masks,
                              reference_masks=reference.masks, taps=job.heat_taps,
                              weighted=job.heat_adjacency == "weighted")
    result.update(comparison.summary(HEAT_T_MULTIPLES, at=heat.parse_time(job.heat_t)))
    if job.scree is not None:
        result["scree"] = str(heat.scree_plot({"reference": comparison.reference, "checkpoint": comparison.pruned},
                                              job.scree))
    rows = [[k, result[k]] for k in ("heat_distance", "heat_adjacency", "heat_at", "heat_t", "heat_t_star",
                                     "heat_t_sat")]
    return rows + [[f"heat_distance at {k}", v] for k, v in result["heat_distance_by_t"].items()]


__all__ = ["CHANCE_MARGIN", "HEAT_T_MULTIPLES", "EvalJob", "PruneJob", "TrainJob", "build_model", "chance_warning",
           "check_data_fits", "evaluate_job", "parse_param_values", "parse_sparsity", "prune_job", "prune_model",
           "train_dense"]
