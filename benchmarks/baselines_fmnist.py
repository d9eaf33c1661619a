"""Every baseline on LeNet-5 / Fashion-MNIST (complete: 60,000 / 10,000 images) at equal achieved sparsity, over seeds.

Per seed a dense LeNet-5 is trained (``--epochs``, the data set's recipe: SGD, cosine). The methods that prune a
trained model (``random`` and ``magnitude``, global and layer-wise; ``l1-filter`` with ``round_to=1``) prune a copy
of it one-shot and fine-tune it ``--finetune-epochs`` on the whole training set with the masks enforced (a tenth of
the recipe's learning rate, as ``connprune prune``); ``snip`` prunes a fresh initialisation of the same seed and
trains the sparse net for as many epochs as the dense model and its fine-tune together.

Equal budgets. Every run's achieved sparsity (counted after surgery, skips included) is checked against its target
(``--budget-tolerance``, 0.002); a run that misses it is listed and left out of the verdicts. ``l1-filter`` removes
whole filters / neurons, so it ends at the nearest sparsity at or above the target that whole channels allow (one
LeNet-5 channel is hundreds to thousands of weights): it is compared separately, against ``magnitude (global)``
pruned to l1-filter's achieved sparsity of the same seed (the ``... @ l1-filter`` rows), never at the nominal target.

Recorded per run: target, ``achieved_sparsity``, ``masked_sparsity``, ``nonzero_weights``, parameters and MACs of
the (physically smaller) pruned model, accuracy of the dense model, of the pruned model before fine-tuning (SNIP: at
initialisation) and after. Table and Markdown: mean ± std over seeds. Verdicts: per pair of methods and sparsity
the paired (same seed) difference of the accuracy after fine-tuning; ``wins`` / ``loses`` when its mean exceeds the
std of the differences over seeds, else ``ties`` within the seed spread (the rule of benchmarks/reproduce_gcnet.py).

Run: ``python benchmarks/baselines_fmnist.py --threads 1 [--seeds 0 1 2] [--epochs 6] [--finetune-epochs 1]
[--sparsities 0.8 0.9 0.95] [--data-dir DIR]``; ``--rewrite benchmarks/results/baselines_fmnist.json`` re-renders the
table, verdicts, Markdown and plot from a result JSON without training.
"""

from __future__ import annotations

import argparse
import copy
import json
import os
import shlex
import statistics
import sys
import time
from pathlib import Path
from typing import Any

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import (load_average, machine, markdown_table, mean_std, outcome, print_table, save_results,  # noqa: E402
                    save_text)

from connprune import data, methods  # noqa: E402
from connprune.data import ImageData  # noqa: E402
from connprune.experiments.jobs import build_model, prune_model  # noqa: E402
from connprune.experiments.plots import errorbar_curves  # noqa: E402
from connprune.train import Trainer, default_recipe  # noqa: E402

SHARED = Path(__file__).resolve().parents[1].parent / "shared" / "data"
NAME = "baselines_fmnist"
METHODS: list[tuple[str, str, dict[str, Any]]] = [
    ("random", "random", {}), ("magnitude (global)", "magnitude", {"scope": "global"}),
    ("magnitude (layer)", "magnitude", {"scope": "layer"}), ("snip", "snip", {}),
    ("l1-filter", "l1-filter", {"round_to": 1})]
"""(label, method, params); SNIP prunes at initialisation, the others a trained model."""
STRUCTURED = "l1-filter"
CONTROL = ("magnitude (global) @ l1-filter", "magnitude", {"scope": "global"})
"""Unstructured control pruned to l1-filter's achieved sparsity (same seed): l1-filter's equal-budget comparison."""
ORDER = [label for label, _, _ in METHODS] + [CONTROL[0]]
PAIRS = [("magnitude (global)", "magnitude (layer)"), ("magnitude (global)", "snip"), ("magnitude (layer)", "snip"),
         ("magnitude (global)", "random"), ("magnitude (layer)", "random"), ("snip", "random"),
         (STRUCTURED, CONTROL[0])]
"""Verdict comparisons (ours, theirs) on the accuracy after fine-tuning."""


def parse() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data-dir", type=Path, default=SHARED)
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--epochs", type=int, default=6, help="dense training epochs (SNIP: this + fine-tune)")
    parser.add_argument("--finetune-epochs", type=int, default=1)
    parser.add_argument("--sparsities", type=float, nargs="+", default=[0.8, 0.9, 0.95])
    parser.add_argument("--budget-tolerance", type=float, default=2e-3,
                        help="largest |achieved − target sparsity| that counts as an equal budget")
    parser.add_argument("--threads", type=int, default=1, help="torch intra-op threads")
    parser.add_argument("--out", type=Path, default=Path(__file__).parent / "results")
    parser.add_argument("--rewrite", type=Path, help="only re-render the outputs of this result JSON (no training)")
    return parser.parse_args()


def command() -> str:
    threads = os.environ.get("OMP_NUM_THREADS")
    return (f"OMP_NUM_THREADS={threads} " if threads else "") + shlex.join(["python", "benchmarks/" + Path(
        sys.argv[0]).name, *sys.argv[1:]])


def dense_model(train: ImageData, test: ImageData, epochs: int, seed: int) -> tuple[torch.nn.Module, dict[str, Any]]:
    """The seed's dense LeNet-5 and its record (accuracy, per-epoch test accuracy, seconds)."""
    tick = time.perf_counter()
    model = build_model("lenet5", train.info, seed)
    result = Trainer(model, train, test, default_recipe(train.info.name, seed=seed, epochs=epochs),
                     progress=False).fit()
    curve = [h["test_accuracy"] for h in result.history if "test_accuracy" in h]
    return model.eval(), {"seed": seed, "accuracy": result.final["accuracy"], "epochs": epochs,
                          "test_accuracy_per_epoch": curve, "seconds": time.perf_counter() - tick}


def one_run(dense: torch.nn.Module, label: str, method_name: str, params: dict[str, Any], sparsity: float,
            target: float, seed: int, train: ImageData, test: ImageData, args: argparse.Namespace) -> dict[str, Any]:
    """Prune (a copy of ``dense``, or a fresh init for SNIP) to ``target``, train, and the run's record; ``sparsity``
    is the nominal cell (the target, except for the control at l1-filter's achieved sparsity)."""
    tick = time.perf_counter()
    at_init = method_name == "snip"
    model = build_model("lenet5", train.info, seed) if at_init else copy.deepcopy(dense)
    epochs = args.epochs + args.finetune_epochs if at_init else args.finetune_epochs
    _, _, metrics = prune_model(model, methods.create(method_name, seed=seed, **params), target, train, test,
                                train_epochs=epochs, seed=seed, progress=False)
    achieved = metrics["achieved_sparsity"]
    return {"method": label, "seed": seed, "sparsity": sparsity, "target": target, "achieved_sparsity": achieved,
            "equal_budget": abs(achieved - target) <= args.budget_tolerance,
            "masked_sparsity": metrics["masked_sparsity"], "nonzero_weights": metrics["nonzero_weights"],
            "params": metrics["params_after"], "macs": metrics["macs_after"],
            "params_dense": metrics["params_before"], "macs_dense": metrics["macs_before"],
            "acc_dense": metrics["acc_before"], "acc_pruned": metrics["acc_pruned"], "acc_after": metrics["acc_after"],
            "train_epochs": epochs, "budget_unit": metrics.get("budget_unit"), "warning": metrics.get("warning"),
            "seconds": time.perf_counter() - tick, "load_average": load_average()}


def run_all(args: argparse.Namespace, results: dict[str, Any], json_path: Path) -> None:
    """Every seed × sparsity × method (and the l1-filter control), the JSON rewritten after each run."""
    train = data.load("fashion-mnist", "train", args.data_dir)
    test = data.load("fashion-mnist", "test", args.data_dir)
    for seed in args.seeds:
        dense, record = dense_model(train, test, args.epochs, seed)
        results["dense"].append(record)
        print(f"seed {seed} dense: accuracy {record['accuracy']:.4f} ({record['seconds']:.0f} s)", flush=True)
        for sparsity in args.sparsities:
            plan = [(label, name, params, sparsity) for label, name, params in METHODS]
            for label, name, params, target in plan:
                run = one_run(dense, label, name, params, sparsity, target, seed, train, test, args)
                results["runs"].append(run)
                if label == STRUCTURED:  # the unstructured control at l1-filter's achieved sparsity
                    plan.append((*CONTROL, run["achieved_sparsity"]))
                save_results(json_path, {**results, "machine_end": machine()})
                flag = "" if run["equal_budget"] else "  NOT AT THE TARGET"
                print(f"  {label:>30} @ {sparsity:g}: target {target:.4f} achieved {run['achieved_sparsity']:.4f} "
                      f"acc pruned {run['acc_pruned']:.4f} after {run['acc_after']:.4f} ({run['seconds']:.0f} s)"
                      f"{flag}", flush=True)


def aggregate(runs: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Mean (± std over seeds) per (sparsity, method)."""
    rows = []
    for sparsity in sorted({r["sparsity"] for r in runs}):
        for label in ORDER:
            group = [r for r in runs if r["sparsity"] == sparsity and r["method"] == label]
            if not group:
                continue
            row: dict[str, Any] = {"sparsity": sparsity, "method": label, "seeds": len(group),
                                   "target": statistics.fmean(r["target"] for r in group)}
            for metric in ("achieved_sparsity", "masked_sparsity", "nonzero_weights", "params", "macs", "acc_pruned",
                           "acc_after"):
                values = [r[metric] for r in group if r.get(metric) is not None]
                if values:
                    row[metric], row[f"{metric}_std"] = mean_std(values)
            row["max_budget_miss"] = max(abs(r["achieved_sparsity"] - r["target"]) for r in group)
            row["equal_budget"] = all(r["equal_budget"] for r in group)
            rows.append(row)
    return rows


def verdicts(runs: list[dict[str, Any]]) -> list[str]:
    """One line per pair of :data:`PAIRS`: the outcome at each sparsity (equal-budget runs of the same seed only;
    l1-filter's runs count at their own achieved sparsity, the control's target)."""
    by = {(r["sparsity"], r["method"], r["seed"]): r for r in runs if r["equal_budget"] or r["method"] == STRUCTURED}
    lines = []
    for ours, theirs in PAIRS:
        cells, tally = [], {"wins": 0, "ties": 0, "loses": 0}
        for sparsity in sorted({r["sparsity"] for r in runs}):
            seeds = sorted({r["seed"] for r in runs if r["sparsity"] == sparsity})
            pairs = [(by.get((sparsity, ours, s)), by.get((sparsity, theirs, s))) for s in seeds]
            diffs = [a["acc_after"] - b["acc_after"] for a, b in pairs if a and b]
            if not diffs:
                cells.append(f"at {sparsity:g}: no equal-budget pair")
                continue
            result = outcome(diffs)
            tally[result] += 1
            mean, spread = mean_std(diffs)
            word = {"wins": "wins", "ties": "ties within the seed spread", "loses": "loses"}[result]
            cells.append(f"at {sparsity:g} {word} ({100 * mean:+.2f} ± {100 * spread:.2f} points, {len(diffs)} seeds)")
        what = (f"{ours} vs {theirs} (at the same achieved sparsity)" if theirs != CONTROL[0] else
                f"{ours} vs magnitude (global) pruned to l1-filter's achieved sparsity")
        lines.append(f"{what}, accuracy after fine-tuning: " + "; ".join(cells)
                     + f" [wins {tally['wins']}, ties {tally['ties']}, loses {tally['loses']}]")
    return lines


def plot(rows: list[dict[str, Any]], dense: float, path: Path) -> None:
    """Accuracy after fine-tuning against the mean achieved sparsity, mean ± std over seeds; random is left out
    (near chance, it would squeeze the others' differences of a few points; it is in the table)."""
    curves = {label: [(r["achieved_sparsity"], r["acc_after"], r["acc_after_std"]) for r in rows
                      if r["method"] == label] for label in ORDER if label != "random"}
    errorbar_curves(curves, path, xlabel="achieved sparsity (fraction of prunable weights removed)",
                    ylabel="test accuracy after fine-tuning", reference=dense, reference_label="dense (mean)",
                    title="LeNet-5 / Fashion-MNIST: mean ± std over seeds (random, near chance: in the table)",
                    xscale="sparsity",
                    styles={CONTROL[0]: {"linestyle": ":"}})


COLUMNS = ["sparsity", "method", "seeds", "target", "achieved_sparsity", "max_budget_miss", "equal_budget",
           "masked_sparsity", "nonzero_weights", "params", "macs", "acc_pruned", "acc_after", "acc_after_std"]

COUNTS = ("nonzero_weights", "params", "macs")


def weak(results: dict[str, Any]) -> str:
    settings = results["settings"]
    gains = [c[-1] - c[-2] for c in (d["test_accuracy_per_epoch"] for d in results["dense"]) if len(c) > 1]
    gain = (f"; their test accuracy still moved {100 * statistics.fmean(gains):+.2f} points over the last epoch "
            "(mean over seeds)") if gains else ""
    return (f"Short training: the dense models get {settings['epochs']} epoch(s) (the data set's recipe: 10) and the "
            f"pruned ones {settings['finetune_epochs']} fine-tune epoch(s) at a tenth of the learning rate{gain}; "
            "longer training may reorder methods that are close here. SNIP trains "
            f"{settings['snip_epochs']} epochs at the full learning rate from a pruned initialisation, the others a "
            "trained dense model plus a low-rate fine-tune: equal epochs, not equal schedules. "
            f"{len(settings['seeds'])} seeds only: a tie means the paired difference is within one std of the "
            "differences over these seeds, not a significance test, and a win by less than a point may not survive "
            "more seeds. One model, one data set, one-shot pruning. MACs count the physically smaller model after "
            "surgery (masked zeros still count), so the unstructured methods' MACs barely move; only l1-filter's "
            "drop. l1-filter is compared only with the control at its achieved sparsity, not with SNIP or "
            "layer-wise magnitude. No published numbers are compared (none quoted).")


def markdown(results: dict[str, Any], shown: list[dict[str, Any]], lines: list[str], unequal: list[str]) -> str:
    settings, dense = results["settings"], results["dense"]
    accuracy = mean_std([d["accuracy"] for d in dense])
    load = results["machine"].get("load_average"), results.get("machine_end", {}).get("load_average")
    return (f"# Baselines on LeNet-5 / Fashion-MNIST at equal achieved sparsity\n\n"
            f"Produced by `{results['command']}` ({results['wall_seconds'] / 60:.1f} min wall, "
            f"{results['machine']['torch_threads']} torch thread(s), {results['machine']['cpu']}, load average at "
            f"start {load[0]}, at the end {load[1]}; `machine` in the JSON).\n\n"
            f"Complete Fashion-MNIST (60,000 / 10,000). Seeds {settings['seeds']}. Dense LeNet-5: {settings['epochs']} "
            f"epochs, accuracy {accuracy[0]:.4f} ± {accuracy[1]:.4f}. random (layer-wise, its default), magnitude and "
            "l1-filter prune the "
            f"seed's dense model one-shot and fine-tune {settings['finetune_epochs']} epoch(s) on all training images "
            f"with the masks enforced; SNIP prunes the seed's initialisation and trains "
            f"{settings['snip_epochs']} epochs. `acc_pruned`: before fine-tuning (SNIP: at "
            "initialisation, untrained).\n\n**Equal budgets.** Methods are compared at equal *achieved* sparsity "
            f"(counted after surgery): every run must be within {settings['budget_tolerance']} of its target. "
            "l1-filter removes whole channels and cannot always hit the target that closely; its rows at the "
            "nominal sparsity are at the same or a *higher* achieved sparsity (column `achieved_sparsity`) and "
            "are not compared with the other methods there. Its comparison is with `magnitude (global) @ "
            "l1-filter`: global magnitude pruned to l1-filter's achieved sparsity of the same seed.\n\n"
            "## Results (mean over seeds)\n\n"
            + markdown_table(shown, COLUMNS)
            + "\n## Verdicts\n\nPaired (same seed) differences of the accuracy after fine-tuning, mean ± std over "
            "seeds: *wins* / *loses* when the mean exceeds the std, else *ties within the seed spread*.\n\n"
            + "\n".join(f"- {line}" for line in lines)
            + "\n\n## Runs not at their target (left out of the verdicts)\n\n"
            + ("\n".join(f"- {line}" for line in unequal) or "- none")
            + f"\n\n## Weak\n\n{weak(results)}\n\n![accuracy vs sparsity]({NAME}.png)\n")


def write_outputs(results: dict[str, Any], out: Path) -> None:
    """Aggregate, print the table and verdicts, write JSON, Markdown and the plot."""
    rows = aggregate(results["runs"])
    shown = [{c: (round(r[c]) if c in COUNTS else round(r[c], 4) if isinstance(r.get(c), float) else r.get(c))
              for c in COLUMNS} for r in rows]
    dense = statistics.fmean(d["accuracy"] for d in results["dense"])
    print_table(f"LeNet-5 / Fashion-MNIST, mean over seeds (dense {dense:.4f})", shown, COLUMNS)
    lines = verdicts(results["runs"])
    for line in lines:
        print(line)
    unequal = [f"{r['method']} seed {r['seed']} @ {r['sparsity']:g}: achieved {r['achieved_sparsity']:.4f} "
               f"(target {r['target']:.4f}, off by {r['achieved_sparsity'] - r['target']:+.4f}"
               + (f"; its largest selection unit is {r['budget_unit']} weights" if r.get("budget_unit") else "") + ")"
               + (" — structured, compared only with the control at its achieved sparsity"
                  if r["method"] == STRUCTURED else "")
               for r in results["runs"] if not r["equal_budget"]]
    results = {**results, "table": rows, "verdicts": lines, "unequal_budget": unequal}
    out.mkdir(parents=True, exist_ok=True)
    save_results(out / f"{NAME}.json", results)
    save_text(out / f"{NAME}.md", markdown(results, shown, lines, unequal))
    plot(rows, dense, out / f"{NAME}.png")


def main() -> None:
    args = parse()
    if args.rewrite:
        write_outputs(json.loads(args.rewrite.read_text()), args.out)
        return
    torch.set_num_threads(args.threads)
    settings = {k: (str(v) if isinstance(v, Path) else v) for k, v in vars(args).items()
                if k not in ("rewrite", "out", "data_dir")}
    results: dict[str, Any] = {
        "benchmark": NAME, "command": command(), "machine": machine(),
        "settings": {**settings, "model": "lenet5", "data": "fashion-mnist (complete, 60k/10k)",
                     "methods": {label: {"method": m, **p} for label, m, p in [*METHODS, CONTROL]},
                     "snip_epochs": args.epochs + args.finetune_epochs,
                     "finetune_lr": "a tenth of the recipe's lr (connprune prune's rule); SNIP: the recipe's"},
        "dense": [], "runs": []}
    started = time.perf_counter()
    json_path = args.out / f"{NAME}.json"
    run_all(args, results, json_path)
    results["wall_seconds"] = time.perf_counter() - started
    results["machine_end"] = machine()
    write_outputs(results, args.out)


if __name__ == "__main__":
    main()
