"""The GC-Net study (Wisell & Yasaei Sekeh, arXiv 2411.09199; docs/methods/gcnet.md): does GC-Net guidance improve
generalisation under distribution shift, and does the hybrid beat pure GC-Net and direct pruning — at equal achieved
sparsity, against the baselines that could explain a difference.

For each data set, model and seed a dense model is trained (per-epoch test accuracy kept: the curve is plotted and
the gain over its last epochs reported, to show whether it reached a plateau), then pruned one-shot at each
sparsity by every variant, fine-tuned with the masks enforced (a tenth of the recipe's learning rate, as
``connprune prune``), and evaluated on the clean test set and on every corruption of
:mod:`connprune.data.corruptions` at the chosen severities (mean corrupted accuracy mCA, relative robustness =
mCA / clean). Variants:

- baselines: ``magnitude`` (layer-wise, the paper's "direct pruning"), ``magnitude-global``, ``random``
  (layer-wise), ``block-magnitude`` (the control: magnitude over the same kernel slices / column blocks GC-Net
  prunes, ``measure=block_l1``, ``hybrid_split=1``);
- GC-Net: ``gcnet-only`` (``hybrid_split=1``), ``hybrid-bX`` (direct magnitude on the first X of the depth),
  ``gcnet-only-paths`` / ``hybrid-bX-paths`` (``path_aware``, ours), ``gcnet-only-trained`` (``ghost_steps``:
  the ghost trained from its connectivities, reconstructed objective; docs/methods/gcnet.md §2).

Equal budgets: every method selects within the budget counted after surgery; the script checks each run's achieved
sparsity against the target (``--budget-tolerance``) and leaves a run that misses it out of the verdicts (listed
in the results). Numbers are mean ± std over seeds; Δ columns are paired differences to ``magnitude`` (same seed,
same dense model). Verdicts: a variant *wins* (or *loses*) a cell when its paired mean difference exceeds the
seeds' standard deviation of that difference, else it *ties within the seed spread*; one line per claim and
comparison with the outcome at every (data set, model, sparsity).

Settings. The CPU default (stated in the results; :data:`CPU`) is sized for about 90 minutes on 2 cores: full
Fashion-MNIST and MNIST training sets, LeNet-300-100 and LeNet-5, 3 seeds, 0.8/0.9/0.95, 6 dense epochs (cosine)
with the curve, 1 fine-tune epoch on 10,000 training images, mCA over the 14 corruptions at severity 3 on 500 test
images. ``--full`` is the paper-sized run (30 dense and 30 fine-tune epochs on all images, mCA over every corruption
at severities 1–5 on the whole test set; GPU). ``--smoke`` is a pipeline check of a few minutes (one seed, tiny subsets;
write it to a temporary ``--out``: it is not a result). The run is resumable: the JSON is written after every run
and the dense models are kept next to it; rerunning the same command skips what is done.

Run: ``python benchmarks/reproduce_gcnet.py [--full] [--seeds 0 1 2] [--out DIR]``;
``--suite cifar10`` / ``tiny-imagenet`` run ResNet-18 / VGG-16 on the partial data sets here (GPU-sized).
``--config FILE.yaml`` reads the options from a file (keys: their dest names; flags on the command line override
it): ``configs/studies/gcnet-lenet-cpu.yaml`` holds the settings of the committed results, ``gcnet-lenet-full.yaml``
those of ``--full``; the results JSON records the file and its content.
"""

from __future__ import annotations

import argparse
import copy
import json
import statistics
import sys
import tempfile
import textwrap
import time
from pathlib import Path
from typing import Any

import torch
import yaml

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import (machine, markdown_table, mean_std, outcome, parse_study_args, print_table,  # noqa: E402
                    save_results, save_text)

from connprune import data, methods, models  # noqa: E402
from connprune.data import ImageData  # noqa: E402
from connprune.data.shift import shifted_images  # noqa: E402
from connprune.experiments.jobs import prune_model  # noqa: E402
from connprune.train import Trainer, default_recipe, evaluate  # noqa: E402
from connprune.train.evaluate import shift_items  # noqa: E402
from connprune.utils.io import atomic_path  # noqa: E402
from connprune.utils.seed import seed_everything  # noqa: E402

SHARED = Path(__file__).resolve().parents[1].parent / "shared" / "data"
SUITES: dict[str, dict[str, Any]] = {
    "lenet": {"data": ["fashion-mnist", "mnist"], "models": {"lenet300-100": {}, "lenet5": {}}, "neg": None},
    "cifar10": {"data": ["cifar10"], "models": {"resnet18": {"small_input": True}, "vgg16": {}},
                "neg": "cifar10-neg"},
    "tiny-imagenet": {"data": ["tiny-imagenet"], "models": {"resnet18": {"small_input": False}}, "neg": None},
}
FULL = {"lenet": (30, 30), "cifar10": (200, 60), "tiny-imagenet": (100, 30)}  # gcnet.md §4: dense, fine-tune
CPU = dict(epochs=6, finetune_epochs=1, finetune_subset=10000, shift_subset=500, shift="all", severities=[3])
"""The CPU setting for the lenet suite, 90 minutes on 2 cores by estimate (not timed end to end): one epoch of full
Fashion-MNIST took 31 s for LeNet-300-100 and 64 s for LeNet-5 on 2 cores shared with other jobs (load 6), a third
of that idle, so 6 dense epochs ≈ 20 min for 12 models; 360 pruned runs (one fine-tune epoch on 10,000 images, 14
corruptions at severity 3 on 500 test images) at about 6 s idle ≈ 36 min. Shared cores take longer."""
SMOKE = dict(data=["fashion-mnist"], seeds=[0], sparsities=[0.9], epochs=2, finetune_epochs=1, train_subset=2000,
             severities=[1, 2, 3, 4, 5],
             finetune_subset=1000, test_subset=1000, shift_subset=200, shift="gaussian_noise:3,contrast:3,rotation:3",
             probe_per_class=30, ghost_steps=20)
BASELINES = ["magnitude", "magnitude-global", "random", "block-magnitude"]
PAPER = ("no result table of GC-Net could be retrieved (full text unavailable, gcnet.md §6); the abstract claims, "
         "qualitatively, that the hybrid (direct pruning early, GC-Net later) gives encouraging results and that "
         "GC-Net improves generalisation under distribution shift")
ORDER: list[str] = []
"""Method labels in display order (set from the command line or the results)."""


def methods_list(splits: list[float], ghost_steps: int) -> list[tuple[str, str, dict[str, Any]]]:
    """(label, method, params) of every variant (module docstring)."""
    found = [("magnitude", "magnitude", {"scope": "layer"}), ("magnitude-global", "magnitude", {"scope": "global"}),
             ("random", "random", {"scope": "layer"}),
             ("block-magnitude", "gcnet", {"hybrid_split": 1, "measure": "block_l1"}),
             ("gcnet-only", "gcnet", {"hybrid_split": 1})]
    found += [(f"hybrid-b{s:g}", "gcnet", {"hybrid_split": s}) for s in splits]
    found += [("gcnet-only-paths", "gcnet", {"hybrid_split": 1, "path_aware": True})]
    found += [(f"hybrid-b{s:g}-paths", "gcnet", {"hybrid_split": s, "path_aware": True}) for s in splits[:1]]
    if ghost_steps:
        found += [("gcnet-only-trained", "gcnet", {"hybrid_split": 1, "ghost_steps": ghost_steps})]
    return found


def subset(split: ImageData, count: int | None, seed: int) -> ImageData:
    """A seeded class-mixed subset (the whole split when ``count`` is None or too large)."""
    if count is None or count >= len(split):
        return split
    index = torch.randperm(len(split), generator=torch.Generator().manual_seed(seed))[:count].sort().values
    return ImageData(split.images[index], split.labels[index], split.info, split.split)


class ShiftSets:
    """The corrupted test images, made once and reused by every model (they do not depend on it)."""

    def __init__(self, test: ImageData, spec: str, severities: list[int], neg: str | None, data_dir: Path,
                 seed: int) -> None:
        self.test = test
        self.items = [(item.key, shifted_images(test.images, item, seed=seed))
                      for item in shift_items(spec, test) if item.corruption is not None
                      and item.severity in severities]
        self.neg = data.load(neg, "test", data_dir) if neg else None

    def evaluate(self, model: torch.nn.Module) -> dict[str, Any]:
        per_item = {key: evaluate(model, self.test, images=images)["accuracy"] for key, images in self.items}
        out: dict[str, Any] = {"mca": statistics.fmean(per_item.values()) if per_item else None,
                               "per_corruption": per_item}
        if self.neg is not None:
            out["neg"] = evaluate(model, self.neg)["accuracy"]
        return out


def dense_model(name: str, config: dict, train: ImageData, test: ImageData, epochs: int, seed: int,
                batch_size: int | None, path: Path) -> tuple[torch.nn.Module, list[dict[str, float]]]:
    """The dense model of (data, model, seed) and its training curve: trained once, kept at ``path``."""
    seed_everything(seed)
    channels, size, _ = train.info.input_shape
    model = models.create(name, num_classes=train.info.num_classes, in_channels=channels, input_size=size, **config)
    if path.exists():
        saved = torch.load(path, map_location="cpu")
        model.load_state_dict(saved["state"])
        return model.eval(), saved["history"]
    overrides = {"batch_size": batch_size} if batch_size else {}
    recipe = default_recipe(train.info.name, seed=seed, epochs=epochs, **overrides)
    history = Trainer(model, train, test, recipe, progress=False).fit().history
    path.parent.mkdir(parents=True, exist_ok=True)
    with atomic_path(path) as tmp:
        torch.save({"state": model.state_dict(), "history": history}, tmp)
    return model.eval(), history


def cell(run: dict[str, Any]) -> tuple[str, str, float]:
    return run["data"], run["model"], run["sparsity"]


def aggregate(runs: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Mean ± std over seeds per (data, model, sparsity, method), paired differences to magnitude."""
    reference = {(*cell(r), r["seed"]): r for r in runs if r["method"] == "magnitude"}
    keys = sorted({(*cell(r), r["method"]) for r in runs},
                  key=lambda k: (k[:3], ORDER.index(k[3]) if k[3] in ORDER else len(ORDER), k[3]))
    rows = []
    for key in keys:
        group = [r for r in runs if (*cell(r), r["method"]) == key]
        row: dict[str, Any] = {"data": key[0], "model": key[1], "sparsity": key[2], "method": key[3],
                               "seeds": len(group), "split": group[0].get("split")}
        for metric in ("clean", "mca", "relative_robustness", "neg", "clean_pruned", "achieved_sparsity"):
            values = [r[metric] for r in group if r.get(metric) is not None]
            if not values:
                continue
            row[metric], row[f"{metric}_std"] = mean_std(values)
            if metric in ("clean", "mca", "neg", "relative_robustness") and key[3] != "magnitude":
                diffs = [r[metric] - reference[(*cell(r), r["seed"])][metric] for r in group
                         if (*cell(r), r["seed"]) in reference]
                if diffs:
                    row[f"delta_{metric}"], row[f"delta_{metric}_std"] = mean_std(diffs)
        rows.append(row)
    return rows


CLAIMS = {
    "improves generalisation under distribution shift": [("mca", "mCA"), ("relative_robustness",
                                                                           "relative robustness")],
    "hybrid beats pure GC-Net and direct pruning": [("clean", "clean accuracy"), ("mca", "mCA")],
}


def verdicts(runs: list[dict[str, Any]]) -> list[str]:
    """One line per claim, comparison and metric: the outcome at each (data, model, sparsity) and the tally.

    Claim 1 compares every GC-Net variant with direct pruning (``magnitude``) and with the block control; claim 2
    each hybrid with ``gcnet-only`` and with ``magnitude`` (a hybrid whose split equals GC-Net only's, b = 1, is
    the same configuration and is skipped). Only runs at equal achieved sparsity count."""
    fair = [r for r in runs if r.get("equal_budget", True)]
    by = {(*cell(r), r["method"], r["seed"]): r for r in fair}
    cells = sorted({cell(r) for r in fair})
    gcnet = [m for m in ORDER if m not in BASELINES]
    hybrids = [m for m in gcnet if m.startswith("hybrid")]
    comparisons = {"improves generalisation under distribution shift":
                   [(m, base) for m in gcnet for base in ("magnitude", "block-magnitude")],
                   "hybrid beats pure GC-Net and direct pruning":
                   [(m, base) for m in hybrids for base in ("gcnet-only" if "paths" not in m else "gcnet-only-paths",
                                                            "magnitude")]}
    lines = []
    for claim, pairs in comparisons.items():
        for ours, theirs in pairs:
            for metric, what in CLAIMS[claim]:
                per_cell, tally = [], {"wins": 0, "ties": 0, "loses": 0}
                for c in cells:
                    seeds = sorted({r["seed"] for r in fair if cell(r) == c})
                    pairs_ = [(by.get((*c, ours, s)), by.get((*c, theirs, s))) for s in seeds]
                    pairs_ = [(a, b) for a, b in pairs_ if a and b and a.get(metric) is not None]
                    if not pairs_ or (claim.startswith("hybrid") and pairs_[0][0].get("split") ==
                                      pairs_[0][1].get("split")):
                        continue
                    diffs = [a[metric] - b[metric] for a, b in pairs_]
                    result = outcome(diffs)
                    tally[result] += 1
                    mean, spread = mean_std(diffs)
                    per_cell.append(f"{c[0]}/{c[1]}@{c[2]:g} {result} ({mean:+.4f} ± {spread:.4f}, "
                                    f"{len(diffs)} seed(s))")
                if not per_cell:
                    continue
                overall = ("wins" if tally["wins"] > tally["loses"] + tally["ties"] else
                           "loses" if tally["loses"] > tally["wins"] + tally["ties"] else "ties or mixed")
                lines.append(f"Claim '{claim}' — {ours} vs {theirs} on {what}: {overall} (wins {tally['wins']}, "
                             f"ties {tally['ties']}, loses {tally['loses']} of {len(per_cell)} cells): "
                             + "; ".join(per_cell))
    return lines


def plateau(history: list[dict[str, float]], last: int = 3) -> float | None:
    """Test-accuracy gain of the last ``last`` epochs (small = a plateau)."""
    accuracies = [h["test_accuracy"] for h in history if "test_accuracy" in h]
    if len(accuracies) <= last:
        return None
    return accuracies[-1] - max(accuracies[:-last])


def plot(rows: list[dict[str, Any]], dense: list[dict[str, Any]], path: Path, title: str) -> None:
    """One row per (data, model): clean, mCA (and CIFAR-10-Neg) against sparsity, then the dense training curves."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    pairs = sorted({(r["data"], r["model"]) for r in rows})
    metrics = [m for m in ("clean", "mca", "neg") if any(m in r for r in rows)]
    columns = len(metrics) + 1
    fig, axes = plt.subplots(len(pairs), columns, figsize=(4.2 * columns, 3.4 * len(pairs)), squeeze=False)
    labels = {"clean": "clean accuracy", "mca": "mCA (corruptions)", "neg": "CIFAR-10-Neg accuracy"}
    for i, (data_name, model) in enumerate(pairs):
        for j, metric in enumerate(metrics):
            ax = axes[i][j]
            for method in ORDER:
                picked = sorted((r for r in rows if (r["data"], r["model"], r["method"]) == (data_name, model, method)
                                 and metric in r), key=lambda r: r["sparsity"])
                if picked:
                    ax.errorbar([100 * r["sparsity"] for r in picked], [r[metric] for r in picked],
                                yerr=[r[f"{metric}_std"] for r in picked], marker="o", capsize=3, label=method)
            ax.set_title(f"{data_name} / {model}: {labels[metric]}", fontsize=9)
            ax.set_xlabel("sparsity (%)")
            ax.grid(alpha=0.3)
        ax = axes[i][-1]
        for d in dense:
            if (d["data"], d["model"]) == (data_name, model):
                accuracies = [h["test_accuracy"] for h in d.get("history", [])]
                ax.plot(range(1, len(accuracies) + 1), accuracies, marker=".", label=f"seed {d['seed']}")
        ax.set_title(f"{data_name} / {model}: dense test accuracy", fontsize=9)
        ax.set_xlabel("epoch")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7)
    axes[0][0].legend(fontsize=6)
    fig.suptitle(textwrap.fill(title, 60 * columns), fontsize=8)
    fig.tight_layout()
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="png", dpi=100)
    plt.close(fig)


def count_or_all(value: str | int) -> int | None:
    """An image count, or ``all`` (None: every image)."""
    if value == "all":
        return None
    if isinstance(value, bool) or not isinstance(value, (int, str)):
        raise ValueError(value)
    count = int(value)
    if count < 1:
        raise argparse.ArgumentTypeError(f"{value!r} is not a positive count or 'all'")
    return count


def build_parser() -> argparse.ArgumentParser:
    """The script's options; ``--config FILE.yaml`` gives their defaults (keys: the options' dest names)."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--config", type=Path, help="a study config (configs/studies/*.yaml): defaults for these "
                        "options, which flags on the command line override")
    parser.add_argument("--suite", choices=sorted(SUITES), default="lenet")
    parser.add_argument("--data", nargs="+", help="data sets of the suite to run (default: all of the suite)")
    parser.add_argument("--models", nargs="+", help="models of the suite to run (default: all of the suite)")
    parser.add_argument("--data-dir", type=Path, default=SHARED)
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--sparsities", type=float, nargs="+", default=[0.8, 0.9, 0.95])
    parser.add_argument("--splits", type=float, nargs="+", default=[0.33, 0.66],
                        help="hybrid splits b (fractions of the depth) besides GC-Net only (b = 1)")
    parser.add_argument("--ghost-steps", type=int, default=50, help="the trained-ghost variant's steps (0: none)")
    parser.add_argument("--epochs", type=int, default=CPU["epochs"], help="dense training epochs (cosine)")
    parser.add_argument("--finetune-epochs", type=int, default=CPU["finetune_epochs"])
    parser.add_argument("--train-subset", type=count_or_all, default=None, metavar="N|all",
                        help="dense-training images (default: all)")
    parser.add_argument("--finetune-subset", type=count_or_all, default=CPU["finetune_subset"], metavar="N|all",
                        help="fine-tuning (and GC-Net probe) images drawn from the training set")
    parser.add_argument("--test-subset", type=count_or_all, default=None, metavar="N|all",
                        help="clean test images (default: all)")
    parser.add_argument("--shift", default=CPU["shift"], help="corruptions for mCA (a --shift spec)")
    parser.add_argument("--shift-subset", type=count_or_all, default=CPU["shift_subset"], metavar="N|all",
                        help="test images corrupted")
    parser.add_argument("--severities", type=int, nargs="+", default=CPU["severities"],
                        help="corruption severities of --shift kept for mCA (--full: 1-5)")
    parser.add_argument("--probe-per-class", type=int, default=100)
    parser.add_argument("--budget-tolerance", type=float, default=2e-3,
                        help="largest |achieved − target sparsity| that counts as an equal budget")
    parser.add_argument("--batch-size", type=int, default=None, help="training batch size (default: recipe's)")
    parser.add_argument("--full", action="store_true", help="gcnet.md §4 epochs, no subsets (GPU-sized)")
    parser.add_argument("--smoke", action="store_true", help="a few minutes' pipeline check (not a result)")
    parser.add_argument("--threads", type=int, default=2, help="torch intra-op threads")
    parser.add_argument("--tag", default="", help="suffix of the result files' name (keeps other runs' files)")
    parser.add_argument("--out", type=Path, default=Path(__file__).parent / "results")
    parser.add_argument("--rewrite", type=Path, help="only re-aggregate the runs of this result JSON (no training)")
    return parser


def parse(argv: list[str] | None = None) -> argparse.Namespace:
    """The command line (``argv``; default ``sys.argv[1:]``) over the ``--config`` file over the defaults."""
    parser = build_parser()
    args = parse_study_args(parser, argv)
    if args.full and args.smoke:
        parser.error("--full and --smoke exclude each other")
    if args.full:
        args.epochs, args.finetune_epochs = FULL[args.suite]
        args.train_subset = args.finetune_subset = args.shift_subset = args.test_subset = None
        args.severities = [1, 2, 3, 4, 5]
    if args.smoke:
        for key, value in SMOKE.items():
            setattr(args, key, value)
        if args.out == Path(__file__).parent / "results":
            args.out = Path(tempfile.gettempdir()) / "reproduce_gcnet_smoke"
    return args


def settings_text(args: argparse.Namespace) -> str:
    if args.full:
        return "paper-sized (--full): dense and fine-tune epochs of gcnet.md §4, all images"
    return (f"{'SMOKE (pipeline check, not a result): ' if args.smoke else 'CPU setting: '}dense {args.epochs} "
            f"epoch(s) on {args.train_subset or 'all'} training images (gcnet.md §4: {FULL[args.suite][0]}), "
            f"fine-tune {args.finetune_epochs} epoch(s) (§4: {FULL[args.suite][1]}) on {args.finetune_subset or 'all'} "
            f"training images, clean accuracy on {args.test_subset or 'all'} and mCA on {args.shift_subset or 'all'} "
            f"test images ({args.shift}, severities {args.severities})")


def study_settings(args: argparse.Namespace, method_specs: list[tuple[str, str, dict[str, Any]]]) -> dict[str, Any]:
    """The settings the results JSON records: every option (paths as text), the config file's content, the
    variants."""
    settings = {k: (str(v) if isinstance(v, Path) else v) for k, v in vars(args).items()}
    if args.config is not None:
        settings["config_content"] = yaml.safe_load(args.config.read_text())
    return {**settings, "methods": {label: {"method": m, **p} for label, m, p in method_specs},
            "finetune_lr": "a tenth of the data set's recipe lr (connprune prune's rule)",
            "measure": "per-class |Pearson|, post-activation, std guard 1e-3 (reconstructed, gcnet.md §2)"}


def main() -> None:
    args = parse()
    if args.rewrite:
        write_outputs(json.loads(args.rewrite.read_text()), args.out)
        return
    torch.set_num_threads(args.threads)
    suite = SUITES[args.suite]
    method_specs = methods_list(args.splits, args.ghost_steps)
    ORDER[:] = [label for label, _, _ in method_specs]
    name = f"reproduce_gcnet_{args.suite}" + ("_smoke" if args.smoke else "") + (f"_{args.tag}" if args.tag else "")
    json_path = args.out / f"{name}.json"
    results: dict[str, Any] = {
        "benchmark": name, "title": f"GC-Net study, {args.suite}, {len(args.seeds)} seed(s); {settings_text(args)}",
        "settings": study_settings(args, method_specs),
        "paper": PAPER, "dense": [], "runs": [],
    }
    if json_path.exists():  # resume: keep what is done
        done = json.loads(json_path.read_text())
        results["dense"], results["runs"] = done.get("dense", []), done.get("runs", [])
        print(f"resuming {json_path}: {len(results['runs'])} run(s) done", flush=True)
    finished = {(r["data"], r["model"], r["seed"], r["method"], r["sparsity"]) for r in results["runs"]}
    started = time.perf_counter()
    chosen_models = {k: v for k, v in suite["models"].items() if not args.models or k in args.models}
    for data_name in [d for d in suite["data"] if not args.data or d in args.data]:
        train_all = data.load(data_name, "train", args.data_dir)
        test = subset(data.load(data_name, "test", args.data_dir), args.test_subset, 3000)
        for seed in args.seeds:
            train = subset(train_all, args.train_subset, seed)
            finetune = subset(train_all, args.finetune_subset, 1000 + seed)
            shifts = ShiftSets(subset(test, args.shift_subset, 2000 + seed), args.shift, args.severities, suite["neg"],
                               args.data_dir, seed)
            for model_name, config in chosen_models.items():
                todo = [(label, m, p, s) for s in args.sparsities for label, m, p in method_specs
                        if (data_name, model_name, seed, label, s) not in finished]
                if not todo:
                    continue
                tick = time.perf_counter()
                dense, history = dense_model(model_name, config, train, test, args.epochs, seed, args.batch_size,
                                             args.out / f"{name}_dense" / f"{data_name}-{model_name}-{seed}.pt")
                if not any((d["data"], d["model"], d["seed"]) == (data_name, model_name, seed)
                           for d in results["dense"]):
                    dense_shift = shifts.evaluate(dense)
                    results["dense"].append({
                        "data": data_name, "model": model_name, "seed": seed,
                        "clean": evaluate(dense, test)["accuracy"], "mca": dense_shift["mca"],
                        "neg": dense_shift.get("neg"), "history": history, "plateau_gain": plateau(history),
                        "train_seconds": time.perf_counter() - tick})
                    row = results["dense"][-1]
                    print(f"{data_name} {model_name} seed {seed} dense: clean {row['clean']:.4f} mCA "
                          f"{row['mca']:.4f}, gain over the last 3 epochs {row['plateau_gain']}", flush=True)
                for label, method_name, params, sparsity in todo:
                    run = one_run(dense, method_name, {**params, "seed": seed}, sparsity, finetune, test, shifts,
                                  args)
                    run.update({"data": data_name, "model": model_name, "method": label, "seed": seed})
                    results["runs"].append(run)
                    results["seconds"] = results.get("seconds", 0.0) + run["seconds"]
                    save_results(json_path, {**results, "machine": machine()})  # resumable after every run
                    flag = "" if run["equal_budget"] else f"  UNEQUAL BUDGET (achieved {run['achieved_sparsity']:.4f})"
                    print(f"  {label:>18} @ {sparsity:.2f}: clean {run['clean']:.4f} mCA {run['mca']:.4f} "
                          f"({run['seconds']:.1f} s){flag}", flush=True)
    results["wall_seconds_this_call"] = time.perf_counter() - started
    results["machine"] = machine()
    write_outputs(results, args.out)


def one_run(dense: torch.nn.Module, method_name: str, params: dict[str, Any], sparsity: float, finetune: ImageData,
            test: ImageData, shifts: ShiftSets, args: argparse.Namespace) -> dict[str, Any]:
    """Prune a copy of ``dense``, fine-tune, evaluate clean and shifted; the run's record."""
    tick = time.perf_counter()
    if method_name == "gcnet":
        params = {**params, "probe_per_class": args.probe_per_class}
    method = methods.create(method_name, **params)
    pruned, _, metrics = prune_model(
        copy.deepcopy(dense), method, sparsity, finetune, test, train_epochs=args.finetune_epochs,
        seed=params["seed"], progress=False,
        recipe_overrides={"batch_size": args.batch_size} if args.batch_size else None)
    shifted = shifts.evaluate(pruned)
    clean = metrics["acc_after"]
    return {"sparsity": sparsity, "clean": clean, "clean_pruned": metrics["acc_pruned"], "mca": shifted["mca"],
            "neg": shifted.get("neg"), "relative_robustness": shifted["mca"] / clean if clean > 0 else 0.0,
            "achieved_sparsity": metrics["achieved_sparsity"],
            "equal_budget": abs(metrics["achieved_sparsity"] - sparsity) <= args.budget_tolerance,
            "params_after": metrics["params_after"], "macs_after": metrics["macs_after"],
            "prune_seconds": metrics["prune_seconds"], "split": metrics.get("gcnet_split"),
            "per_corruption": shifted["per_corruption"], "seconds": time.perf_counter() - tick}


def write_outputs(results: dict[str, Any], out: Path) -> None:
    """Aggregate ``results["runs"]``, print the table and verdicts, write JSON, Markdown and the plot."""
    ORDER[:] = list(results["settings"]["methods"])
    tolerance = results["settings"].get("budget_tolerance", 2e-3)
    for run in results["runs"] + results["dense"]:  # the earlier one-data-set script's results: the suite
        run.setdefault("data", results["settings"].get("suite"))
    for run in results["runs"]:  # ... and no budget check
        run.setdefault("equal_budget", abs(run["achieved_sparsity"] - run["sparsity"]) <= tolerance)
    rows = aggregate(results["runs"])
    columns = ["data", "model", "sparsity", "method", "seeds", "split", "clean", "clean_std", "delta_clean", "mca",
               "mca_std", "delta_mca", "relative_robustness", "delta_relative_robustness", "neg", "delta_neg",
               "clean_pruned", "achieved_sparsity"]
    columns = [c for c in columns if any(c in r for r in rows)]
    shown = [{c: (round(r[c], 4) if isinstance(r.get(c), float) else r.get(c)) for c in columns} for r in rows]
    name = results["benchmark"]
    print_table(name, shown, columns)
    lines = verdicts(results["runs"])
    for line in lines:
        print(line)
    unequal = [f"{r['data']}/{r['model']} {r['method']} seed {r['seed']} @ {r['sparsity']:g}: achieved "
               f"{r['achieved_sparsity']:.4f}" for r in results["runs"] if not r.get("equal_budget", True)]
    dense = [{k: (round(v, 4) if isinstance(v, float) else v) for k, v in d.items() if k != "history"}
             for d in results["dense"]]
    results = {**results, "table": rows, "verdicts": lines, "unequal_budget": unequal}
    out.mkdir(parents=True, exist_ok=True)
    save_results(out / f"{name}.json", results)
    text = (f"# {results['title']}\n\nPaper: {PAPER}.\n\n## Dense models\n\nGain over the last 3 epochs "
            "(`plateau_gain`, test accuracy) shows whether training reached a plateau; the curves are in the "
            f"plot's last column.\n\n{markdown_table(dense)}\n\n## Pruned, fine-tuned\n\nΔ = paired difference to "
            "layer-wise magnitude pruning (same seed, same dense model), mean ± std over seeds.\n\n"
            + markdown_table(shown, columns)
            + "\n\n## Verdicts\n\n" + ("\n".join(f"- {line}" for line in lines) or "- none (no complete cell)")
            + "\n\n## Runs at unequal budget (left out of the verdicts)\n\n"
            + ("\n".join(f"- {line}" for line in unequal) or "- none") + "\n")
    save_text(out / f"{name}.md", text)
    plot(rows, results["dense"], out / f"{name}.png", results["title"])


if __name__ == "__main__":
    main()
