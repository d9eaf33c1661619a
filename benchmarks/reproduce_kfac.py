"""The K-FAC study (Ebrahimi & Klabjan, arXiv 2111.08577; design reconstructed, docs/methods/kfac.md): does the
spectral-radius penalty give a flatter solution and better generalisation than the same pruning without it, and than
L1-filter and Network Slimming, at equal neurons removed?

Grid: data sets (MNIST, Fashion-MNIST, complete) × models (LeNet-300-100: zoo ``mlp`` with widths [300, 100];
LeNet-5) × neuron sparsity (0.5 / 0.7 / 0.9: the fraction of neurons removed in every prunable layer, K-FAC's
``budget=neurons``) × seeds × methods:

- ``kfac β=B`` for every β of the grid, trained from scratch while pruning (docs/methods/kfac.md §3); ``β=0`` is the
  ablation without flatness (same schedule, same importance). The β grid is chosen by the penalty's measured share
  of the training loss, ``Σ β·ρ̂ / Σ (CE + β·ρ̂)`` (``info["penalty_share"]``): at the method's default β = 1e-3 it
  is about 2 %, so the grid reaches the 10–30 % regime (docs/methods/kfac.md §5). Each run reports its share.
- ``l1-filter``: a dense model trained as many epochs as K-FAC, then K-FAC's per-layer neuron counts removed by
  smallest filter L1 norm (Li et al., ICLR 2017, §3.1) and fine-tuned (CPU: 1 epoch, full: 10) at a tenth of the
  learning rate.
- ``network-slimming`` (Liu et al., ICCV 2017, §3): the LeNets have no BatchNorm, so this baseline trains the model
  with a BatchNorm after every layer K-FAC may prune (its candidates are exactly K-FAC's), L1 on the BN scales
  (λ = 1e-4, Eq. 1), one global threshold removing K-FAC's total neuron count, then fine-tunes (its last quarter of
  the epochs). Its parameter and MAC counts include those BatchNorms.

Every method removes the same number of hidden neurons (checked per run: ``equal_units``; K-FAC and L1-filter the
same per layer, Network Slimming the same total). Metrics on the pruned, physically smaller model: clean top-1
accuracy (complete test set), mCA (mean accuracy over connprune's synthetic corruptions,
:func:`connprune.data.shift.mean_corrupted`), the exact top eigenvalue of the Gauss–Newton matrix and K-FAC's ρ̂
(both on the same 256 training images in eval mode, :func:`connprune.methods.kfac.final_curvature`), parameters,
MACs and batch-1 CPU latency. Verdicts compare each β > 0 with each baseline per cell by the paired (same seed)
difference: wins / loses when its mean is beyond the differences' standard deviation over seeds, ties within it.

Sizes (stated in the results): the default is CPU-sized to fit about 90 minutes on 2 cores (3 epochs, LeNet-300-100 at
all three sparsities, LeNet-5 at 0.7 only, β ∈ {0, 1e-2, 3e-2}, corruptions at severity 3 on part of the
test set); ``--full`` is the paper-sized run for a GPU (40 epochs, every cell, β ∈ {0, 1e-3, 3e-3, 1e-2, 3e-2, 1e-1},
every corruption at every severity on the complete test set). ``--smoke`` checks the pipeline in a few minutes.
Resumable: the results JSON is rewritten after every run and runs already in it (same settings) are skipped.

Run (the CPU study; ~90 min on 2 cores): ``python benchmarks/reproduce_kfac.py``; the GPU one: ``python
benchmarks/reproduce_kfac.py --full``; a check: ``python benchmarks/reproduce_kfac.py --smoke`` (writes to the temp
folder). Results: ``benchmarks/results/reproduce_kfac_grid.{json,md}`` (``--full``: ``reproduce_kfac_grid_full``).
The study does not run through ``connprune run``: its configs (``configs/``) cannot express the equal-neuron
baselines, the BatchNorm variant or the verdicts. ``--config FILE.yaml`` reads this script's options from a file
instead (keys: their dest names; flags on the command line override it; the results JSON records the file and its
content): ``configs/studies/kfac-grid-cpu.yaml`` holds the settings of the committed results (the defaults),
``kfac-grid-full.yaml`` those of ``--full``. The options ``--epochs`` ... ``--train-samples`` change the size's
settings (``shrunk`` then names the changes). The one-seed Fashion-MNIST and ResNet-20 results
(``reproduce_kfac.md``, ``reproduce_kfac_resnet20.md``) came from this script's earlier form (commit be1edaf).
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import torch
import yaml
from torch import nn

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import (load_average, machine, markdown_table, mean_std, parse_study_args, print_table,  # noqa: E402
                    save_results, save_text)

from connprune import data, methods, models  # noqa: E402
from connprune.data import ImageData  # noqa: E402
from connprune.data.shift import mean_corrupted, shifted_images  # noqa: E402
from connprune.experiments.jobs import prune_model  # noqa: E402
from connprune.graph import build as build_graph  # noqa: E402
from connprune.measure.importance import filter_l1  # noqa: E402
from connprune.measure.latency import latency  # noqa: E402
from connprune.methods.base import PruneData, PruningResult  # noqa: E402
from connprune.measure.sparsity import count_prunable  # noqa: E402
from connprune.methods.channel_budget import channels_to_remove, remaining_weights  # noqa: E402
from connprune.methods.kfac import diagnostic_batch, final_curvature, neuron_targets, prunable_groups  # noqa: E402
from connprune.methods.l1_filter import L1Filter  # noqa: E402
from connprune.train import Trainer, default_recipe, evaluate  # noqa: E402
from connprune.train.evaluate import shift_items  # noqa: E402

SHARED = Path(__file__).resolve().parents[1].parent / "shared" / "data"
MODELS = {"lenet300-100": ("mlp", {"widths": [300, 100]}), "lenet5": ("lenet5", {})}
SIZES: dict[str, dict[str, Any]] = {
    "cpu": {"epochs": 3, "sparsities": {"lenet300-100": [0.5, 0.7, 0.9],
            "lenet5": [0.7]}, "betas": [0.0, 1e-2, 3e-2], "seeds": [0, 1, 2], "finetune_epochs": 1,
            "shift": "all", "severities": [3], "shift_samples": 2000, "train_samples": None},
    "full": {"epochs": 40, "sparsities": {"lenet300-100": [0.5, 0.7, 0.9],
             "lenet5": [0.5, 0.7, 0.9]}, "betas": [0.0, 1e-3, 3e-3, 1e-2, 3e-2, 1e-1], "seeds": [0, 1, 2],
             "finetune_epochs": 10, "shift": "all", "severities": [1, 2, 3, 4, 5], "shift_samples": None,
             "train_samples": None},
    "smoke": {"epochs": 1, "sparsities": {"lenet300-100": [0.7], "lenet5": [0.7]},
              "betas": [0.0, 3e-2], "seeds": [0, 1], "finetune_epochs": 1, "shift": "gaussian_noise:3,fog:3",
              "severities": [3], "shift_samples": 300, "train_samples": 2000},
}
METRICS = ("accuracy", "mca", "ggn_lambda_max", "rho_final", "params", "macs", "latency_ms_b1", "penalty_share",
           "penalty_share_last_epoch")
CLAIMS = {"flatter solution": ("ggn_lambda_max", -1), "better generalisation (mCA)": ("mca", +1),
          "better generalisation (clean accuracy)": ("accuracy", +1)}
"""Claim → (metric, sign): +1 where higher is better."""


def progress(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


def head(images: ImageData, count: int | None) -> ImageData:
    """The first ``count`` samples (all when None)."""
    if count is None or count >= len(images):
        return images
    return ImageData(images.images[:count], images.labels[:count], images.info, images.split)


def fresh(model_name: str, info: data.DatasetInfo, seed: int) -> nn.Module:
    torch.manual_seed(seed)
    arch, config = MODELS[model_name]
    channels, size, _ = info.input_shape
    return models.create(arch, num_classes=info.num_classes, in_channels=channels, input_size=size, **config)


def hidden_units(model: nn.Module, input_shape: tuple[int, ...]) -> int:
    """Output units of every conv/linear layer except those feeding the model's output (the classifier)."""
    graph = build_graph(model, input_shape)
    return sum(model.get_submodule(n).weight.shape[0] for n in graph.layers if n not in graph.output_layers)


def with_batchnorm(model: nn.Module, producers: list[str]) -> nn.Module:
    """``model`` with a BatchNorm after each of ``producers`` (for Network Slimming, which prunes BN-followed
    channels only): each layer becomes ``Sequential(layer, BatchNorm)``."""
    for name in producers:
        parent, _, leaf = name.rpartition(".")
        owner = model.get_submodule(parent) if parent else model
        layer = getattr(owner, leaf)
        norm = nn.BatchNorm2d(layer.out_channels) if isinstance(layer, nn.Conv2d) else nn.BatchNorm1d(
            layer.out_features)
        setattr(owner, leaf, nn.Sequential(layer, norm))
    return model


class L1FilterAtWidths(L1Filter):
    """L1-filter (Li et al., ICLR 2017, §3.1: the filters of smallest Σ|F_j| go first) removing a given number of
    neurons per channel group (K-FAC's), instead of a uniform ratio for a weight budget."""

    def __init__(self, keep: dict[str, int]) -> None:
        super().__init__(round_to=1)
        self.keep = keep

    def _prune(self, model: nn.Module, sparsity: float, data: PruneData) -> PruningResult:
        graph = build_graph(model, data.example_inputs)
        return PruningResult(remove={g.root: channels_to_remove(g, filter_l1(g, graph), g.channels - self.keep[g.root])
                                     for g in graph.groups if self.keep.get(g.root, g.channels) < g.channels})


class Corrupted:
    """The corrupted test images, made once per data set and reused by every model (they do not depend on it)."""

    def __init__(self, test: ImageData, spec: str, severities: list[int], samples: int | None) -> None:
        self.test = head(test, samples)
        keep = {str(s) for s in severities}
        self.items = [(item.key, shifted_images(self.test.images, item, seed=0))
                      for item in shift_items(spec, self.test)
                      if item.corruption is not None and item.key.split(":")[1] in keep]

    def mca(self, model: nn.Module) -> float | None:
        return mean_corrupted({key: evaluate(model, self.test, images=images)["accuracy"]
                               for key, images in self.items})


def measure(model: nn.Module, metrics: dict[str, Any], train: ImageData, corrupted: Corrupted,
            expected_units: int) -> dict[str, Any]:
    """The metrics every method gets, measured the same way on its pruned (physically smaller) model."""
    model.eval()
    x, y = diagnostic_batch(train, 256, next(model.parameters()).device)
    layers = build_graph(model, train.info.input_shape).layers
    curvature = final_curvature(model, x, y, layers, "max", exact=True)
    units = hidden_units(model, train.info.input_shape)
    row = {"accuracy": metrics["acc_after"], "mca": corrupted.mca(model),
           "ggn_lambda_max": curvature["exact_ggn_lambda_max"], "rho_final": curvature["spectral_radius"],
           "params": metrics["params_after"], "macs": metrics["macs_after"],
           "latency_ms_b1": latency(model, train.info.input_shape, 1, min_run_time=0.2).median_ms,
           "hidden_units_left": units, "equal_units": units == expected_units,
           "weight_sparsity": metrics["achieved_sparsity"]}
    if "penalty_share" in metrics:
        row["penalty_share"] = metrics["penalty_share"]
        row["penalty_share_last_epoch"] = metrics["penalty_share_epochs"][-1]
    return row


def method_label(beta: float) -> str:
    return f"kfac β={beta:g}"


def cell_runs(model_name: str, dataset: str, sparsity: float, seed: int, betas: list[float], train: ImageData,
              test: ImageData, corrupted: Corrupted, epochs: int, finetune_epochs: int, data_dir: Path,
              done: set[tuple], dense: dict[str, Any]):
    """Yield the runs of one (model, data set, sparsity, seed) cell that are not ``done``, each as it finishes."""
    info = train.info
    graph = build_graph(fresh(model_name, info, seed), info.input_shape)
    groups = prunable_groups(graph, False, False)
    keep = neuron_targets(graph, groups, sparsity, "neurons", 1)
    removed = sum(g.channels - keep[g.root] for g in groups)
    expected_units = hidden_units(graph.model, info.input_shape) - removed
    kept = {**{g.root: g.channels for g in graph.groups}, **keep}
    weight_sparsity = 1.0 - remaining_weights(graph, kept) / count_prunable(graph.model)  # K-FAC's, L1-filter's
    common = {"data": dataset, "model": model_name, "sparsity": sparsity, "seed": seed}
    plan = [(method_label(b), "kfac", {"beta": b, "budget": "neurons"}) for b in betas]
    candidates = sum(g.channels for g in groups)  # ceil((removed − ½)/candidates · candidates) = removed
    plan += [("network-slimming", "network-slimming", {"budget": "neurons", "l1": 1e-4}), ("l1-filter", None, {})]
    for label, name, params in plan:
        if (dataset, model_name, sparsity, seed, label) in done:
            continue
        started = time.perf_counter()
        if name is None:
            if seed not in dense:
                model = fresh(model_name, info, seed)
                Trainer(model, train, test, default_recipe(dataset, epochs=epochs, seed=seed), progress=False).fit()
                dense[seed] = {k: v.clone() for k, v in model.state_dict().items()}
            model = fresh(model_name, info, seed)
            model.load_state_dict(dense[seed])
            method, target, train_epochs = L1FilterAtWidths(keep), weight_sparsity, finetune_epochs
        else:
            model = fresh(model_name, info, seed)
            if name == "network-slimming":
                model = with_batchnorm(model, [p for g in groups for p in g.producers])
                target = (removed - 0.5) / candidates
            else:
                target = sparsity
            method, train_epochs = methods.create(name, seed=seed, **params), epochs
        pruned, _, metrics = prune_model(model, method, target, train, test, train_epochs=train_epochs,
                                         data_dir=data_dir, seed=seed, progress=False)
        row = {**common, "method": label, "beta": params.get("beta"),
               **measure(pruned, metrics, train, corrupted, expected_units),
               "seconds": time.perf_counter() - started, "load_average": load_average()}
        if not row["equal_units"]:
            progress(f"WARNING {label}: {row['hidden_units_left']} hidden units left, K-FAC leaves {expected_units}")
        yield row


def cells(runs: list[dict[str, Any]]) -> list[tuple]:
    return sorted({(r["data"], r["model"], r["sparsity"]) for r in runs})


def summarise(runs: list[dict[str, Any]], order: list[str]) -> list[dict[str, Any]]:
    """Mean and std over seeds per (data set, model, sparsity, method)."""
    rows = []
    for cell in cells(runs):
        for label in order:
            group = [r for r in runs if (r["data"], r["model"], r["sparsity"]) == cell and r["method"] == label]
            if not group:
                continue
            row: dict[str, Any] = {"data": cell[0], "model": cell[1], "sparsity": cell[2], "method": label,
                                   "seeds": len(group), "equal_units": all(r["equal_units"] for r in group)}
            for metric in METRICS:
                values = [r[metric] for r in group if r.get(metric) is not None]
                if values:
                    row[metric], row[f"{metric}_std"] = mean_std(values)
                    if metric in ("params", "macs"):
                        row[metric], row[f"{metric}_std"] = round(row[metric]), round(row[f"{metric}_std"])
            rows.append(row)
    return rows


def paired(runs: list[dict[str, Any]], cell: tuple, method: str, reference: str, metric: str,
           sign: int) -> dict[str, Any] | None:
    """The paired (same seed) difference ``method − reference`` of ``metric`` in ``cell`` and its verdict."""
    by_seed = {(r["method"], r["seed"]): r for r in runs if (r["data"], r["model"], r["sparsity"]) == cell
               and r.get(metric) is not None and r["equal_units"]}
    diffs = [by_seed[(method, s)][metric] - by_seed[(reference, s)][metric]
             for (m, s) in by_seed if m == method and (reference, s) in by_seed]
    if not diffs:
        return None
    mean, std = mean_std(diffs)
    if len(diffs) < 2:
        verdict = "undecided (one seed)"
    elif abs(mean) <= std:
        verdict = "ties"
    else:
        verdict = "wins" if sign * mean > 0 else "loses"
    return {"delta": mean, "delta_std": std, "seeds": len(diffs), "verdict": verdict}


def verdicts(runs: list[dict[str, Any]], betas: list[float]) -> tuple[list[dict[str, Any]], list[str]]:
    """Per claim, β > 0 and baseline: the verdict of every cell, and one line with the counts and the majority."""
    table, lines = [], []
    for claim, (metric, sign) in CLAIMS.items():
        for beta in (b for b in betas if b > 0):
            for reference in [method_label(0.0), "network-slimming", "l1-filter"]:
                found = [(cell, paired(runs, cell, method_label(beta), reference, metric, sign))
                         for cell in cells(runs)]
                found = [(cell, v) for cell, v in found if v is not None]
                if not found:
                    continue
                for cell, v in found:
                    table.append({"claim": claim, "method": method_label(beta), "versus": reference, "data": cell[0],
                                  "model": cell[1], "sparsity": cell[2], **v})
                counts = {word: sum(v["verdict"] == word for _, v in found) for word in ("wins", "ties", "loses")}
                majority = max(("ties", "wins", "loses"), key=lambda w: counts[w])  # a draw goes to "ties"
                lines.append(f"{claim}: {method_label(beta)} vs {reference}: **{majority}** (wins {counts['wins']}, "
                             f"ties {counts['ties']}, loses {counts['loses']} of {len(found)} cells; {metric})")
    return table, lines


SHRUNK = {
    "cpu": "CPU-sized for ~90 min on 2 cores: 3 epochs, LeNet-300-100 at every sparsity, LeNet-5 at 0.7 only, "
           "L1-filter 3 dense + 1 fine-tune epochs, β ∈ {0, 1e-2, 3e-2}, mCA over the 14 corruptions at "
           "severity 3 on the first 2,000 test images (clean accuracy on the complete test set); data sets "
           "complete; one thread",
    "full": "paper-sized (GPU)", "smoke": "a pipeline check on 2,000 training images, not a result"}
SIZED = ("epochs", "sparsities", "finetune_epochs", "shift", "severities", "shift_samples", "train_samples")
"""Settings given by the size (``SIZES``) that an option (or a ``--config`` key) may change."""


def model_sparsities(text: str) -> tuple[str, list[float]]:
    """``MODEL=S,S,...`` (``lenet5=0.5,0.7``): the neuron sparsities of one model."""
    model, _, values = text.partition("=")
    try:
        sparsities = [float(v) for v in values.split(",")]
    except ValueError:
        sparsities = []
    if model not in MODELS or not sparsities or not all(0 < v < 1 for v in sparsities):
        raise argparse.ArgumentTypeError(f"{text!r} is not MODEL=S,S,... with MODEL in {list(MODELS)} and 0 < S < 1")
    return model, sparsities


def build_parser() -> argparse.ArgumentParser:
    """The script's options; ``--config FILE.yaml`` gives their defaults (keys: the options' dest names)."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--config", type=Path, help="a study config (configs/studies/*.yaml): defaults for these "
                        "options, which flags on the command line override")
    parser.add_argument("--data-dir", type=Path, default=SHARED)
    size = parser.add_mutually_exclusive_group()
    size.add_argument("--full", action="store_true", help="paper-sized (GPU): 40 epochs, every cell, wide β grid")
    size.add_argument("--smoke", action="store_true", help="a few minutes: checks the pipeline, not the claims")
    parser.add_argument("--datasets", nargs="+", default=["mnist", "fashion-mnist"])
    parser.add_argument("--models", nargs="+", default=list(MODELS), choices=list(MODELS))
    parser.add_argument("--betas", type=float, nargs="+", help="β grid (0 is the ablation; default: by size)")
    parser.add_argument("--seeds", type=int, nargs="+", help="default: by size")
    parser.add_argument("--epochs", type=int, help="training epochs (K-FAC, the dense L1-filter and Network "
                        "Slimming models; default: by size)")
    parser.add_argument("--sparsities", type=model_sparsities, nargs="+", metavar="MODEL=S,S",
                        help="neuron sparsities per model (default: by size; models not named keep the size's)")
    parser.add_argument("--finetune-epochs", type=int, help="L1-filter's fine-tune epochs (default: by size)")
    parser.add_argument("--shift", help="corruptions for mCA, a --shift spec (default: by size)")
    parser.add_argument("--severities", type=int, nargs="+", help="severities kept for mCA (default: by size)")
    parser.add_argument("--shift-samples", type=int, help="first test images corrupted (default: by size; "
                        "cpu 2000, full all)")
    parser.add_argument("--train-samples", type=int, help="first training images used (default: by size; "
                        "cpu and full all)")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--out", type=Path, help="results folder (default: benchmarks/results; --smoke: a temp one)")
    parser.add_argument("--name", help="stem of the results files (default: reproduce_kfac_grid[_full|_smoke])")
    return parser


def parse(argv: list[str] | None = None) -> argparse.Namespace:
    """The command line (``argv``; default ``sys.argv[1:]``) over the ``--config`` file over the defaults."""
    parser = build_parser()
    args = parse_study_args(parser, argv)
    if args.full and args.smoke:
        parser.error("--full and --smoke exclude each other")
    size_name = "full" if args.full else "smoke" if args.smoke else "cpu"
    if args.out is None:
        args.out = Path(tempfile.gettempdir()) if args.smoke else Path(__file__).parent / "results"
    args.name = args.name or "reproduce_kfac_grid" + ("" if size_name == "cpu" else f"_{size_name}")
    return args


def study_settings(args: argparse.Namespace) -> dict[str, Any]:
    """The settings the results JSON records: the size's, changed by the options of ``SIZED`` that are given
    (``shrunk`` then names the changes), and the config file's path and content."""
    size_name = "full" if args.full else "smoke" if args.smoke else "cpu"
    settings = {**SIZES[size_name], "size": size_name, "datasets": args.datasets, "models": args.models}
    given = {key: getattr(args, key) for key in SIZED if getattr(args, key) is not None}
    if "sparsities" in given:
        given["sparsities"] = {**settings["sparsities"], **dict(given["sparsities"])}
    changed = {key: value for key, value in given.items() if value != settings[key]}
    settings.update(given)
    settings["betas"] = sorted(set(args.betas if args.betas is not None else settings["betas"]) | {0.0})
    settings["seeds"] = args.seeds if args.seeds is not None else settings["seeds"]
    settings["shrunk"] = SHRUNK[size_name] + "".join(f"; changed: {k} = {v}" for k, v in changed.items())
    if args.config is not None:
        settings["config"] = str(args.config)
        settings["config_content"] = yaml.safe_load(args.config.read_text())
    return settings


def main() -> None:
    args = parse()
    settings = study_settings(args)
    torch.set_num_threads(args.threads)
    path = args.out / f"{args.name}.json"
    runs: list[dict[str, Any]] = []
    if path.exists():
        previous = json.loads(path.read_text())
        free = ("betas", "seeds", "datasets", "models", "config", "config_content")  # may differ on resuming
        same = {k: v for k, v in previous["settings"].items() if k not in free}
        if same != {k: v for k, v in settings.items() if k not in free}:
            raise SystemExit(f"{path} holds runs of other settings; pass another --out or --name")
        runs = previous["runs"]
    done = {(r["data"], r["model"], r["sparsity"], r["seed"], r["method"]) for r in runs}
    order = [method_label(b) for b in settings["betas"]] + ["network-slimming", "l1-filter"]
    total = sum(len(settings["sparsities"][m]) for m in args.models) * len(args.datasets) * len(settings["seeds"]) \
        * len(order)
    started = time.perf_counter()
    for dataset in args.datasets:
        train = head(data.load(dataset, "train", args.data_dir), settings["train_samples"])
        test = data.load(dataset, "test", args.data_dir)
        corrupted = Corrupted(test, settings["shift"], settings["severities"], settings["shift_samples"])
        for model_name in args.models:
            for seed in settings["seeds"]:
                dense: dict[str, Any] = {}
                for sparsity in settings["sparsities"][model_name]:
                    for row in cell_runs(model_name, dataset, sparsity, seed, settings["betas"], train, test,
                                         corrupted, settings["epochs"], settings["finetune_epochs"],
                                         args.data_dir, done, dense):
                        runs.append(row)
                        save(path, settings, runs, order)
                        elapsed = time.perf_counter() - started
                        progress(f"[{len(runs)}/{total}, {elapsed / 60:.1f} min] {dataset} {model_name} s={sparsity} "
                                 f"seed {seed} {row['method']}: acc {row['accuracy']:.4f} mCA {row['mca']:.4f} "
                                 f"λmax {row['ggn_lambda_max']:.3f} share {row.get('penalty_share', 0):.3f} "
                                 f"({row['seconds']:.0f} s)")
    save(path, settings, runs, order, final=True)


def save(path: Path, settings: dict[str, Any], runs: list[dict[str, Any]], order: list[str],
         final: bool = False) -> None:
    """Rewrite the JSON (every run); with ``final`` also print the tables and write the Markdown."""
    summary = summarise(runs, order)
    table, lines = verdicts(runs, settings["betas"])
    save_results(path, {"benchmark": path.stem, "command": " ".join(sys.argv), "machine": machine(),
                        "settings": settings, "runs": runs, "summary": summary, "verdict_cells": table,
                        "verdicts": lines})
    if not final:
        return
    shares = [{k: r.get(k) for k in ("data", "model", "sparsity", "method", "penalty_share", "penalty_share_std",
                                     "penalty_share_last_epoch")} for r in summary if "penalty_share" in r]
    columns = ["data", "model", "sparsity", "method", "seeds", "equal_units"]
    columns += [c for m in METRICS[:-2] for c in (m, f"{m}_std")]
    verdict_columns = ["claim", "method", "versus", "data", "model", "sparsity", "delta", "delta_std", "seeds",
                       "verdict"]
    print_table("penalty share of the loss", shares)
    print_table("K-FAC study (mean and std over seeds)", summary, columns)
    print_table("verdicts per cell", table, verdict_columns)
    print("\n".join(lines))
    text = (f"# K-FAC study: β grid, equal neurons removed ({settings['size']})\n\n"
            f"Command: `{' '.join(sys.argv)}`\n\nSize: {settings['shrunk']}.\n\nSettings: `{settings}`\n\n"
            f"Machine (at the end of the run, with its load): `{machine()}`\n\n"
            "## Verdicts\n\nPer cell (data set, model, sparsity) the paired difference method − reference over "
            "seeds: **wins** / **loses** where its mean is better / worse by more than its standard deviation, "
            "**ties** within it; per line the verdict of most cells (a draw counts as ties). Cells where a method "
            "did not remove the same number of neurons are left out.\n\n"
            + "\n".join(f"- {line}" for line in lines) + "\n\n"
            "## Penalty share of the training loss (Σ β·ρ̂ / Σ (CE + β·ρ̂) over the run, and in its last epoch)\n\n"
            + markdown_table(shares) + "\n## Results (mean and std over seeds)\n\n" + markdown_table(summary, columns)
            + "\n## Verdict per cell (paired by seed: method − reference)\n\n" + markdown_table(table, verdict_columns))
    save_text(path.with_suffix(".md"), text)


if __name__ == "__main__":
    main()
