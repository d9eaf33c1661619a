"""``connprune demo``: a zero-download showcase on scikit-learn's digits (under 2 minutes on 2 CPU cores)."""

from __future__ import annotations

import copy
import time
from pathlib import Path
from typing import Any

import torch

from connprune import data, methods
from connprune.experiments import report as report_tables
from connprune.experiments.jobs import build_model, prune_model
from connprune.experiments.plots import Drawn, Pair, accuracy_vs_sparsity, pruned_vs_dense, shift_bars, \
    training_curves
from connprune.measure import cost
from connprune.train import Trainer, default_recipe, evaluate, evaluate_shift
from connprune.utils.io import atomic_path, write_json

DEMO_MODELS = ("mlp", "lenet5")
PRUNED_MODEL = "lenet5"
SPARSITIES = (0.5, 0.8, 0.9)
FINETUNE_EPOCHS = 5
SETTINGS: dict[str, dict[str, Any]] = {
    # Methods the default (LeNet-5 at SPARSITIES) does not suit: the model they prune, the sparsities they get,
    # parameters, and training epochs (for methods that train) that keep them within the demo's time.
    "mint": {"params": {"samples_per_class": 60}},
    "snacs": {"sparsities": (0.5, 0.8, "auto"), "params": {"samples_per_class": 60}},
    "kfac": {"model": "mlp", "sparsities": (0.5, 0.9)},
    "n2nskip": {"sparsities": (0.5, 0.9), "params": {"span": 2}},  # LeNet-5 has no span-3 conv → conv skip
    "resskip": {"params": {"span": 2}},
    "network-slimming": {"model": "resnet20", "sparsities": (0.5,), "epochs": 2},  # needs BatchNorm
    "layer-sparsity": {"model": "mlp", "sparsities": ("auto",), "params": {"lambda": 1.0}},
    "l1-reg": {"model": "mlp", "sparsities": ("auto",), "params": {"lambda": 0.003}},
    "group-l1": {"model": "mlp", "sparsities": ("auto",), "params": {"lambda": 0.1}},
}


def settings(name: str) -> tuple[str, tuple[float | str, ...], dict[str, Any]]:
    """(model, sparsities, parameters) of method ``name`` in the demo."""
    chosen = SETTINGS.get(name, {})
    return chosen.get("model", PRUNED_MODEL), tuple(chosen.get("sparsities", SPARSITIES)), chosen.get("params", {})


def per_corruption(shift: dict[str, float]) -> dict[str, float]:
    """Average ``{"name:severity": acc}`` over severities into ``{"name": acc}`` (plus ``"mean"``)."""
    return {**report_tables.per_corruption(shift), "mean": shift["mean"]}


def markdown_table(columns: list[str], rows: list[list[Any]]) -> str:
    """The report's Markdown table, with floats shown to four decimals."""
    return report_tables.markdown_table(columns, [[f"{v:.4f}" if isinstance(v, float) else v for v in row]
                                                  for row in rows])


def prune_every_method(dense: dict[str, Any], train_data: data.ImageData, test_data: data.ImageData, *, seed: int,
                       epochs: int, progress: bool) -> list[dict[str, Any]]:
    """Every registered method at its demo sparsities (:func:`settings`): methods for trained models prune a copy of
    the dense model and fine-tune; methods that prune at initialisation or while training get a fresh model and
    train it as long as the dense one was trained."""
    rows = []
    for name in methods.names():
        model_name, sparsities, params = settings(name)
        method = methods.create(name, seed=seed, **params)
        for sparsity in sparsities:
            if method.needs_trained:
                model, train_epochs = copy.deepcopy(dense[model_name]), FINETUNE_EPOCHS
            else:
                model = build_model(model_name, train_data.info, seed)
                train_epochs = SETTINGS.get(name, {}).get("epochs", epochs)
            _, _, metrics = prune_model(model, method, sparsity, train_data, test_data, train_epochs=train_epochs,
                                        shift="all", seed=seed, progress=progress)
            rows.append({"method": name, "kind": method.kind.value, **metrics})
    return rows


def run_demo(out_dir: str | Path, *, seed: int = 0, epochs: int = 30, progress: bool = True) -> Path:
    """Train every demo model on digits, evaluate clean and under every corruption, write results and report.

    Runs on one intra-op thread: the 8×8 models are far too small to gain from parallel kernels, and on a busy
    machine spinning OpenMP threads make them up to ten times slower.
    """
    torch.set_num_threads(1)
    out_dir = Path(out_dir)
    train_data, test_data = data.load("digits", "train", seed=seed), data.load("digits", "test", seed=seed)
    results: dict[str, Any] = {"data": "digits", "seed": seed, "train_samples": len(train_data),
                               "test_samples": len(test_data), "models": {}}
    histories, dense_models = {}, {}
    for name in DEMO_MODELS:
        model = build_model(name, train_data.info, seed)
        trainer = Trainer(model, train_data, test_data, default_recipe("digits", epochs=epochs, seed=seed),
                          progress=progress, description=f"demo {name}")
        started = time.perf_counter()
        trainer.fit()
        seconds = time.perf_counter() - started
        clean = evaluate(model, test_data)
        shift = evaluate_shift(model, test_data, "all", seed=seed)
        measured = cost(model, train_data.info.input_shape)
        results["models"][name] = {"accuracy": clean["accuracy"], "loss": clean["loss"], "params": measured.params,
                                   "macs": measured.macs, "train_seconds": seconds, "shift": shift,
                                   "shift_per_corruption": per_corruption(shift)}
        histories[name] = trainer.history
        dense_models[name] = model
    results["pruning"] = prune_every_method(dense_models, train_data, test_data, seed=seed, epochs=epochs,
                                            progress=progress)
    out_dir.mkdir(parents=True, exist_ok=True)
    write_json(out_dir / "results.json", results)
    draw_figures(results, histories, out_dir)
    return write_report(results, out_dir, epochs=epochs)


def _sparsity(value: float | str) -> float | None:
    return None if value == "auto" else float(value)


def shift_pairs(results: dict[str, Any]) -> list[Pair]:
    """Each pruned model's mean shifted accuracy against that of the dense model it came from (None for a model
    the demo does not train densely), grouped by target sparsity: the data of ``shift_pruned_vs_dense.png``."""
    pairs = []
    for row in results["pruning"]:
        dense = results["models"].get(row["model"])
        suffix = "" if row["model"] == PRUNED_MODEL else f" ({row['model']})"
        pairs.append(Pair(f"{row['method']} @ {row['target_sparsity']}{suffix}", row["shift_acc_after"]["mean"],
                          dense["shift"]["mean"] if dense else None, f"sparsity {row['target_sparsity']}"))
    return pairs


def draw_figures(results: dict[str, Any], histories: dict[str, list[dict[str, float]]], out_dir: Path) \
        -> dict[str, Drawn]:
    """The demo's four figures, by file name: training curves, the dense models per corruption, accuracy vs
    sparsity of every method pruning LeNet-5, and every pruned model against its dense model under shift."""
    on_pruned = [m for m in methods.names() if settings(m)[0] == PRUNED_MODEL]
    curves = {m: [(r["achieved_sparsity"], r["acc_after"]) for r in results["pruning"]
                  if r["method"] == m and r["model"] == PRUNED_MODEL] for m in on_pruned}
    drawn = {
        "training_curves.png": training_curves(histories, out_dir / "training_curves.png"),
        "shift_accuracy.png": shift_bars({n: {"clean": r["accuracy"], **r["shift_per_corruption"]}
                                          for n, r in results["models"].items()}, out_dir / "shift_accuracy.png"),
        "accuracy_vs_sparsity.png": accuracy_vs_sparsity(
            {m: points for m, points in curves.items() if points}, out_dir / "accuracy_vs_sparsity.png",
            dense=results["models"][PRUNED_MODEL]["accuracy"],
            title=f"{PRUNED_MODEL} on digits: every method that prunes it"),
        "shift_pruned_vs_dense.png": pruned_vs_dense(
            shift_pairs(results), out_dir / "shift_pruned_vs_dense.png",
            xlabel="mean accuracy over every corruption and severity (after fine-tuning)",
            title="pruned (filled) vs dense (hollow) accuracy under shift, per method"),
    }
    return drawn


def demo_takeaway(results: dict[str, Any]) -> str:
    """The report's two-sentence takeaway, computed from the LeNet-5 results (see :func:`report.takeaway`)."""
    dense = results["models"][PRUNED_MODEL]
    points = [report_tables.Point(r["method"], _sparsity(r["target_sparsity"]), r["acc_after"],
                                  r["shift_acc_after"]["mean"])
              for r in results["pruning"] if r["model"] == PRUNED_MODEL]
    return report_tables.takeaway(PRUNED_MODEL, points, dense["accuracy"], dense["shift"]["mean"])


def write_report(results: dict[str, Any], out_dir: Path, *, epochs: int) -> Path:
    """``report.md``: the takeaway, the dense models, every method's numbers and the figures."""
    report = out_dir / "report.md"
    seed = results["seed"]
    others = sorted({settings(m)[0] for m in methods.names()} - {PRUNED_MODEL})
    prune_rows = [[r["method"], r["kind"], r["model"], r["target_sparsity"], r["achieved_sparsity"],
                   r["nonzero_weights"], r["params_after"],
                   r["macs_after"], r["acc_pruned"], r["acc_after"], r["shift_acc_after"]["mean"],
                   f"{r['prune_seconds']:.2f}"] for r in results["pruning"]]
    rows = [[n, r["params"], r["macs"], r["accuracy"], r["shift"]["mean"], f"{r['train_seconds']:.1f}"]
            for n, r in results["models"].items()]
    corruption_names = [k for k in next(iter(results["models"].values()))["shift_per_corruption"] if k != "mean"]
    shift_rows = [[c] + [results["models"][n]["shift_per_corruption"][c] for n in DEMO_MODELS]
                  for c in corruption_names]
    text = "\n\n".join([
        "# connprune demo: scikit-learn digits",
        f"**Takeaway.** {demo_takeaway(results)}",
        f"{results['train_samples']} training and {results['test_samples']} test images (8×8 grey-scale, seeded "
        f"stratified split, seed {seed}). Shifted accuracy is the mean over {len(corruption_names)} corruptions at "
        "severities 1–5.",
        "## Dense models",
        markdown_table(["model", "params", "MACs", "clean accuracy", "shifted accuracy (mean)", "train s"], rows),
        "## Pruning: every method",
        f"Every method prunes {PRUNED_MODEL}" + (f" except where the model column names {' or '.join(others)} "
                                                 "(methods made for other layer types)" if others else "") +
        f". Methods that prune a trained model fine-tune {FINETUNE_EPOCHS} epochs with the masks enforced; methods "
        f"that prune at initialisation or while training train for {epochs} epochs (and may refit after surgery). "
        f"Dense accuracy: " + ", ".join(f"{n} {results['models'][n]['accuracy']:.4f}" for n in DEMO_MODELS) + ".",
        markdown_table(["method", "kind", "model", "target", "achieved sparsity", "non-zero weights", "params", "MACs",
                        "acc pruned", "acc after", "shifted acc", "prune s"], prune_rows),
        "![accuracy vs sparsity](accuracy_vs_sparsity.png)",
        "## Pruned vs dense under distribution shift",
        "Each pruned model's accuracy under shift (mean over every corruption at severities 1–5) beside the dense "
        "model it was pruned from (models the demo does not train densely have no hollow dot).",
        "![pruned vs dense under shift](shift_pruned_vs_dense.png)",
        "## Dense accuracy per corruption (mean over severities 1–5)",
        markdown_table(["corruption", *DEMO_MODELS], shift_rows),
        "![training curves](training_curves.png)",
        "![accuracy under shift](shift_accuracy.png)",
    ])
    with atomic_path(report) as tmp:
        tmp.write_text(text + "\n")
    return report
