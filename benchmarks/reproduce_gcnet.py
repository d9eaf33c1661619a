"""The GC-Net study (Wisell & Yasaei Sekeh, arXiv 2411.09199): magnitude vs GC-Net vs hybrids, clean and shifted.

For each suite, seed and sparsity a dense model is trained once per seed, then pruned one-shot by

- ``magnitude``: layer-wise magnitude pruning (Han et al. 2015), the "direct pruning" GC-Net is compared with;
- ``gcnet-only``: GC-Net guidance on every layer with a ghost parent (``hybrid_split=1``: only the first layer,
  and 1×1 shortcuts, by magnitude);
- ``hybrid-bX``: direct magnitude on the first ``X`` fraction of the prunable layers, GC-Net after (the abstract's
  highlighted configuration);

fine-tuned with the masks enforced (a tenth of the recipe's learning rate, as ``connprune prune``), and evaluated
on the clean test set, on every corruption of :mod:`connprune.data.corruptions` at the chosen severities (mean
corrupted accuracy mCA, relative robustness mCA / clean) and, for CIFAR-10, on CIFAR-10-Neg. Numbers are mean ± std
over seeds; ``Δ`` columns are paired differences to magnitude pruning (same seed, same dense model).

Suites: ``fmnist`` (LeNet-5 / Fashion-MNIST, the default) and ``cifar10`` (ResNet-18 with the 3×3 CIFAR stem and
VGG-16 on the PARTIAL CIFAR-10 here: 5,085 training and 1,017 test images). Tiny ImageNet is not run by default
(``--suite tiny-imagenet`` runs ResNet-18 at 64×64 on the partial Tiny ImageNet here, GPU-sized).

CPU-sized defaults (stated in the JSON): few dense and fine-tune epochs, fine-tuning on a training subset, corrupted
test subsets; full size (gcnet.md §4: 30/200 dense epochs, 30–60 fine-tune epochs, 3 seeds) with ``--full``.

Run: ``python benchmarks/reproduce_gcnet.py [--suite fmnist] [--seeds 0 1 2] [--full]``
"""

from __future__ import annotations

import argparse
import copy
import json
import statistics
import sys
import textwrap
import time
from pathlib import Path
from typing import Any

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import machine, markdown_table, print_table, save_results, save_text  # noqa: E402

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
    "fmnist": {"data": "fashion-mnist", "models": {"lenet5": {}}, "neg": None},
    "cifar10": {"data": "cifar10", "models": {"resnet18": {"small_input": True}, "vgg16": {}}, "neg": "cifar10-neg"},
    "tiny-imagenet": {"data": "tiny-imagenet", "models": {"resnet18": {"small_input": False}}, "neg": None},
}
FULL = {"fmnist": (30, 30), "cifar10": (200, 60), "tiny-imagenet": (100, 30)}  # gcnet.md §4: dense, fine-tune
ORDER: list[str] = []
"""Method labels in display order (set from the command line)."""
PAPER = ("no result table of GC-Net could be retrieved (full text unavailable, gcnet.md §6); the abstract claims, "
         "qualitatively, that the hybrid (direct pruning early, GC-Net later) gives encouraging results and that "
         "GC-Net improves generalisation under distribution shift")


def methods_list(splits: list[float]) -> list[tuple[str, str, dict[str, Any]]]:
    found = [("magnitude", "magnitude", {"scope": "layer"}), ("gcnet-only", "gcnet", {"hybrid_split": 1})]
    found += [(f"hybrid-b{s:g}", "gcnet", {"hybrid_split": s}) for s in splits]
    return found


def subset(split: ImageData, count: int | None, seed: int) -> ImageData:
    """A seeded class-mixed subset (the whole split when ``count`` is None or too large)."""
    if count is None or count >= len(split):
        return split
    index = torch.randperm(len(split), generator=torch.Generator().manual_seed(seed))[:count].sort().values
    return ImageData(split.images[index], split.labels[index], split.info, split.split)


class ShiftSets:
    """The corrupted test images, made once and reused by every model (they do not depend on it)."""

    def __init__(self, test: ImageData, spec: str, neg: str | None, data_dir: Path, seed: int) -> None:
        self.test = test
        self.items = [(item.key, shifted_images(test.images, item, seed=seed))
                      for item in shift_items(spec, test) if item.corruption is not None]
        self.neg = data.load(neg, "test", data_dir) if neg else None

    def evaluate(self, model: torch.nn.Module) -> dict[str, Any]:
        per_item = {key: evaluate(model, self.test, images=images)["accuracy"] for key, images in self.items}
        out: dict[str, Any] = {"mca": statistics.fmean(per_item.values()) if per_item else None,
                               "per_corruption": per_item}
        if self.neg is not None:
            out["neg"] = evaluate(model, self.neg)["accuracy"]
        return out


def train_dense_model(name: str, config: dict, train: ImageData, test: ImageData, epochs: int, seed: int,
                      batch_size: int | None) -> torch.nn.Module:
    seed_everything(seed)
    channels, size, _ = train.info.input_shape
    model = models.create(name, num_classes=train.info.num_classes, in_channels=channels, input_size=size, **config)
    overrides = {"batch_size": batch_size} if batch_size else {}
    recipe = default_recipe(train.info.name, seed=seed, epochs=epochs, **overrides)
    Trainer(model, train, test, recipe, progress=False).fit()
    return model


def mean_std(values: list[float]) -> tuple[float, float]:
    return statistics.fmean(values), (statistics.stdev(values) if len(values) > 1 else 0.0)


def aggregate(runs: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Mean ± std over seeds per (model, method, sparsity), with paired differences to magnitude."""
    reference = {(r["model"], r["sparsity"], r["seed"]): r for r in runs if r["method"] == "magnitude"}
    keys = sorted({(r["model"], r["sparsity"], r["method"]) for r in runs},
                  key=lambda k: (k[0], k[1], ORDER.index(k[2]) if k[2] in ORDER else len(ORDER), k[2]))
    rows = []
    for model, sparsity, method in keys:
        group = [r for r in runs if (r["model"], r["sparsity"], r["method"]) == (model, sparsity, method)]
        row: dict[str, Any] = {"model": model, "sparsity": sparsity, "method": method, "seeds": len(group)}
        for metric in ("clean", "mca", "relative_robustness", "neg", "clean_pruned", "achieved_sparsity"):
            values = [r[metric] for r in group if r.get(metric) is not None]
            if not values:
                continue
            mean, std = mean_std(values)
            row[metric], row[f"{metric}_std"] = mean, std
            if metric in ("clean", "mca", "neg", "relative_robustness") and method != "magnitude":
                diffs = [r[metric] - reference[(model, sparsity, r["seed"])][metric] for r in group
                         if (model, sparsity, r["seed"]) in reference]
                if diffs:
                    row[f"delta_{metric}"], row[f"delta_{metric}_std"] = mean_std(diffs)
        rows.append(row)
    return rows



def verdict(rows: list[dict[str, Any]]) -> list[str]:
    """Plain statements: where a GC-Net variant beats magnitude by more than the seeds' spread, and where not."""
    lines = []
    for metric, what in (("clean", "clean accuracy"), ("mca", "mean corrupted accuracy"),
                         ("relative_robustness", "relative robustness (mCA / clean)"), ("neg", "CIFAR-10-Neg")):
        for row in rows:
            if f"delta_{metric}" not in row:
                continue
            delta, spread = row[f"delta_{metric}"], row[f"delta_{metric}_std"]
            if row["seeds"] > 1 and abs(delta) <= spread:
                call = "ties with"
            elif delta > 0:
                call = "beats"
            else:
                call = "loses to"
            lines.append(f"{row['model']} @ {row['sparsity']:.0%}: {row['method']} {call} magnitude on {what} "
                         f"({delta:+.4f} ± {spread:.4f} over {row['seeds']} seed(s))")
    return lines


def summary(rows: list[dict[str, Any]]) -> list[str]:
    """One line per (model, variant, metric): at which sparsities it wins, ties and loses."""
    out = []
    for model in sorted({r["model"] for r in rows}):
        for method in [m for m in ORDER if m != "magnitude"]:
            for metric in ("clean", "mca", "relative_robustness", "neg"):
                picked = [r for r in rows if r["model"] == model and r["method"] == method and f"delta_{metric}" in r]
                if not picked:
                    continue
                wins = [f"{r['sparsity']:.0%}" for r in picked
                        if r[f"delta_{metric}"] > (r[f"delta_{metric}_std"] if r["seeds"] > 1 else 0)]
                losses = [f"{r['sparsity']:.0%}" for r in picked
                          if r[f"delta_{metric}"] < -(r[f"delta_{metric}_std"] if r["seeds"] > 1 else 0)]
                ties = [f"{r['sparsity']:.0%}" for r in picked
                        if f"{r['sparsity']:.0%}" not in wins + losses]
                out.append(f"{model} {method} vs magnitude on {metric}: wins at {', '.join(wins) or 'none'}; "
                           f"loses at {', '.join(losses) or 'none'}; within the seed spread at "
                           f"{', '.join(ties) or 'none'}")
    return out


def plot(rows: list[dict[str, Any]], path: Path, title: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    model_names = sorted({r["model"] for r in rows})
    metrics = [m for m in ("clean", "mca", "neg") if any(m in r for r in rows)]
    fig, axes = plt.subplots(len(model_names), len(metrics), figsize=(4.2 * len(metrics), 3.4 * len(model_names)),
                             squeeze=False)
    labels = {"clean": "clean accuracy", "mca": "mCA (corruptions)", "neg": "CIFAR-10-Neg accuracy"}
    for i, model in enumerate(model_names):
        for j, metric in enumerate(metrics):
            ax = axes[i][j]
            for method in ORDER:
                picked = sorted((r for r in rows if r["model"] == model and r["method"] == method and metric in r),
                                key=lambda r: r["sparsity"])
                if not picked:
                    continue
                xs = [100 * r["sparsity"] for r in picked]
                ax.errorbar(xs, [r[metric] for r in picked], yerr=[r[f"{metric}_std"] for r in picked],
                            marker="o", capsize=3, label=method)
            ax.set_title(f"{model}: {labels[metric]}")
            ax.set_xlabel("sparsity (%)")
            ax.grid(alpha=0.3)
    axes[0][0].legend(fontsize=8)
    fig.suptitle(textwrap.fill(title, 60 * len(metrics)), fontsize=8)
    fig.tight_layout()
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="png", dpi=110)
    plt.close(fig)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--suite", choices=sorted(SUITES), default="fmnist")
    parser.add_argument("--models", nargs="+", help="models of the suite to run (default: all of the suite)")
    parser.add_argument("--data-dir", type=Path, default=SHARED)
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--sparsities", type=float, nargs="+", default=[0.5, 0.7, 0.8, 0.9, 0.95])
    parser.add_argument("--splits", type=float, nargs="+", default=[0.33, 0.66],
                        help="hybrid splits b (fractions of the depth) besides GC-Net only (b = 1)")
    parser.add_argument("--epochs", type=int, default=2, help="dense training epochs")
    parser.add_argument("--finetune-epochs", type=int, default=1)
    parser.add_argument("--train-subset", type=int, default=None, help="dense-training images (default: all)")
    parser.add_argument("--finetune-subset", type=int, default=10000,
                        help="fine-tuning (and GC-Net probe) images drawn from the training set")
    parser.add_argument("--shift", default="all", help="corruptions for mCA (a --shift spec)")
    parser.add_argument("--shift-subset", type=int, default=500, help="test images corrupted for mCA")
    parser.add_argument("--probe-per-class", type=int, default=100)
    parser.add_argument("--batch-size", type=int, default=None, help="training batch size (default: recipe's)")
    parser.add_argument("--full", action="store_true", help="gcnet.md §4 epochs, no subsets (GPU-sized)")
    parser.add_argument("--threads", type=int, default=1, help="torch intra-op threads")
    parser.add_argument("--tag", default="", help="suffix of the result files' name (keeps other runs' files)")
    parser.add_argument("--out", type=Path, default=Path(__file__).parent / "results")
    parser.add_argument("--rewrite", type=Path, help="only re-aggregate the runs of this result JSON (no training)")
    args = parser.parse_args()
    if args.rewrite:
        write_outputs(json.loads(args.rewrite.read_text()), args.out)
        return
    torch.set_num_threads(args.threads)
    suite = SUITES[args.suite]
    if args.full:
        args.epochs, args.finetune_epochs = FULL[args.suite]
        args.train_subset = args.finetune_subset = args.shift_subset = None
    method_specs = methods_list(args.splits)
    ORDER[:] = [label for label, _, _ in method_specs]
    train_all = data.load(suite["data"], "train", args.data_dir)
    test = data.load(suite["data"], "test", args.data_dir)
    chosen = {k: v for k, v in suite["models"].items() if not args.models or k in args.models}
    runs: list[dict[str, Any]] = []
    dense_rows: list[dict[str, Any]] = []
    started = time.perf_counter()
    for seed in args.seeds:
        train = subset(train_all, args.train_subset, seed)
        finetune = subset(train_all, args.finetune_subset, 1000 + seed)
        shifts = ShiftSets(subset(test, args.shift_subset, 2000 + seed), args.shift, suite["neg"], args.data_dir,
                           seed)
        for model_name, config in chosen.items():
            tick = time.perf_counter()
            dense = train_dense_model(model_name, config, train, test, args.epochs, seed, args.batch_size)
            dense_shift = shifts.evaluate(dense)
            dense_clean = evaluate(dense, test)["accuracy"]
            dense_rows.append({"model": model_name, "seed": seed, "clean": dense_clean, "mca": dense_shift["mca"],
                               "neg": dense_shift.get("neg"), "train_seconds": time.perf_counter() - tick})
            print(f"seed {seed} {model_name} dense: clean {dense_clean:.4f} mCA {dense_shift['mca']:.4f}", flush=True)
            for sparsity in args.sparsities:
                for label, method_name, params in method_specs:
                    params = {**params, "seed": seed}
                    if method_name == "gcnet":
                        params["probe_per_class"] = args.probe_per_class
                    method = methods.create(method_name, **params)
                    pruned, _, metrics = prune_model(
                        copy.deepcopy(dense), method, sparsity, finetune, test, train_epochs=args.finetune_epochs,
                        seed=seed, progress=False,
                        recipe_overrides={"batch_size": args.batch_size} if args.batch_size else None)
                    shifted = shifts.evaluate(pruned)
                    run = {"model": model_name, "method": label, "sparsity": sparsity, "seed": seed,
                           "clean": metrics["acc_after"], "clean_pruned": metrics["acc_pruned"],
                           "mca": shifted["mca"], "neg": shifted.get("neg"),
                           "relative_robustness": shifted["mca"] / metrics["acc_after"]
                           if metrics["acc_after"] > 0 else 0.0,
                           "achieved_sparsity": metrics["achieved_sparsity"],
                           "params_after": metrics["params_after"], "macs_after": metrics["macs_after"],
                           "prune_seconds": metrics["prune_seconds"], "split": metrics.get("gcnet_split"),
                           "per_corruption": shifted["per_corruption"]}
                    runs.append(run)
                    print(f"  {label:>12} @ {sparsity:.2f}: clean {run['clean']:.4f} mCA {run['mca']:.4f}"
                          + (f" neg {run['neg']:.4f}" if run["neg"] is not None else ""), flush=True)
    name = f"reproduce_gcnet_{args.suite}" + (f"_{args.tag}" if args.tag else "")
    shrunk = ("none (--full)" if args.full else
              f"dense {args.epochs} epoch(s) (gcnet.md §4: {FULL[args.suite][0]}), fine-tune {args.finetune_epochs} "
              f"epoch(s) (§4: {FULL[args.suite][1]}) on {args.finetune_subset or 'all'} training images, mCA on "
              f"{args.shift_subset or 'all'} test images; dense training on {args.train_subset or 'all'} images")
    if args.suite == "cifar10":
        shrunk += "; CIFAR-10 here is PARTIAL (5,085 train / 1,017 test images)"
    results = {
        "benchmark": name, "machine": machine(), "seconds": time.perf_counter() - started,
        "title": f"GC-Net vs magnitude, {args.suite}, {len(args.seeds)} seed(s); {shrunk}",
        "settings": {**{k: (str(v) if isinstance(v, Path) else v) for k, v in vars(args).items()},
                     "methods": {label: {"method": m, **p} for label, m, p in method_specs},
                     "finetune_lr": "a tenth of the data set's recipe lr (connprune prune's rule)",
                     "shift_items": [key for key, _ in shifts.items], "shrunk": shrunk,
                     "measure": "per-class |Pearson|, post-activation, std guard 1e-3 (reconstructed, gcnet.md §2)"},
        "paper": PAPER, "dense": dense_rows, "runs": runs,
    }
    write_outputs(results, args.out)


def write_outputs(results: dict[str, Any], out: Path) -> None:
    """Aggregate ``results["runs"]``, print the table and statements, write JSON, Markdown and the plot."""
    ORDER[:] = list(results["settings"]["methods"])
    settings = results["settings"]
    results.setdefault("title", f"GC-Net vs magnitude, {settings['suite']}, {len(settings['seeds'])} seed(s); "
                                f"{settings['shrunk']}")
    rows = aggregate(results["runs"])
    columns = ["model", "sparsity", "method", "seeds", "clean", "clean_std", "delta_clean", "mca", "mca_std",
               "delta_mca", "relative_robustness", "delta_relative_robustness", "neg", "delta_neg", "clean_pruned",
               "achieved_sparsity"]
    columns = [c for c in columns if any(c in r for r in rows)]
    shown = [{c: (round(r[c], 4) if isinstance(r.get(c), float) else r.get(c)) for c in columns} for r in rows]
    name = results["benchmark"]
    print_table(name, shown, columns)
    plain = summary(rows)
    for line in plain:
        print(line)
    results = {**results, "table": rows, "summary": plain, "verdicts": verdict(rows)}
    out.mkdir(parents=True, exist_ok=True)
    save_results(out / f"{name}.json", results)
    note = f"**{results['note']}**\n\n" if results.get("note") else ""
    text = (f"# {results['title']}\n\n{note}Paper: {PAPER}.\n\nΔ = paired difference to magnitude pruning (same seed, "
            "same dense model), mean ± std over seeds.\n\n" + markdown_table(shown, columns)
            + "\n\n## Where GC-Net wins and where not\n\n" + "\n".join(f"- {line}" for line in plain) + "\n")
    save_text(out / f"{name}.md", text)
    plot(rows, out / f"{name}.png", results["title"])

if __name__ == "__main__":
    main()
