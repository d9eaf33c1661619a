"""Reproduce N2NSkip (Subramaniam & Sharma, BMVC 2020) Tables 1 and 3 and Fig. 5's convergence claim, CPU-sized.

Part 1 — Table 3 (connectivity at initialisation, no training): for each network and density, prune a fresh
Kaiming-initialised model with RP / N2NSkip-RP / CSP / N2NSkip-CSP / ResSkip-CSP (RP and CSP are ``n2nskip`` with
``skip_fraction=0``: the plain pruned network at the same non-zero count), and compute F = ‖S_ref − S_prune‖₂
(Eq. 6, binary unit graph with the skip edges) at the dense reference's saturation time t* (α(6 %, t*) = 0.97).
The non-zero weight counts of the methods sharing a base (RP: per-layer rounding; CSP: one global count) are checked
equal at every density (ResSkip adds no weights).

Part 2 — Table 1 / Fig. 5 (accuracy and convergence): train the pruned networks from scratch with the paper's recipe
(SGD 0.05, momentum 0.9, wd 5e-4, batch 128, lr ×0.5 every 30 epochs; :func:`connprune.methods.n2nskip.paper_recipe`)
with masks enforced, recording test accuracy after every epoch.

CPU-sized defaults (stated in the JSON): F for VGG-19 only (``--models vgg19 resnet50`` adds ResNet-50, several
minutes), accuracy for VGG-19 at 5 % density, CSP vs N2NSkip-CSP, 2 epochs on 256 training images of the PARTIAL
CIFAR-10 (5,085 / 1,017 images exist here), test on 500 — its accuracies only show the pipeline; the paper trains 300
epochs on the full CIFAR-10. Full setting on a GPU: ``--acc-methods rp n2nskip-rp csp n2nskip-csp resskip-csp
--acc-densities 0.1 0.05 0.02 --epochs 300 --train-subset 0 --test-subset 0``.

Run: ``python benchmarks/reproduce_n2nskip.py [--data-dir ../shared/data]``.
"""

from __future__ import annotations

import argparse
import dataclasses
import sys
import time
from pathlib import Path
from typing import Any

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import machine, markdown_table, print_table, save_results, save_text  # noqa: E402

from connprune import data, methods, models, surgery  # noqa: E402
from connprune.measure import heat  # noqa: E402
from connprune.measure.sparsity import count_nonzero  # noqa: E402
from connprune.methods import PruneData  # noqa: E402
from connprune.methods.n2nskip import paper_recipe  # noqa: E402
from connprune.surgery import MaskEnforcer, skips  # noqa: E402
from connprune.train import Trainer, evaluate  # noqa: E402

SHARED = Path(__file__).resolve().parents[1].parent / "shared" / "data"
SHAPE = (3, 32, 32)
TAPS = ("all", "first")
"""Conv edges from any kernel tap (the spec's definition) or from the [0, 0] tap only (the authors' code release)."""
LATE = (1, 100)
"""F at t* and at 100·t* (closer to the "saturated" large-t limit, where only weakly connected units matter)."""
NETWORKS: dict[str, tuple[str, dict[str, Any]]] = {"vgg19": ("vgg19", {}),
                                                   "resnet50": ("resnet50", {"small_input": True})}
METHODS: dict[str, tuple[str, dict[str, Any]]] = {
    "rp": ("n2nskip", {"base": "random", "skip_fraction": 0.0}),
    "n2nskip-rp": ("n2nskip", {"base": "random"}),
    "csp": ("n2nskip", {"base": "snip", "skip_fraction": 0.0}),
    "n2nskip-csp": ("n2nskip", {"base": "snip"}),
    "resskip-csp": ("resskip", {"base": "snip"}),
}
# Paper Table 1 (CIFAR-10 top-1 %, mean of 5 runs) and Table 3 (F at saturation), from shared/specs/n2nskip.md §6.
PAPER_TABLE1 = {
    "vgg19": {"rp": {0.1: 92.08, 0.05: 89.43, 0.02: 86.52}, "n2nskip-rp": {0.1: 92.92, 0.05: 92.65, 0.02: 91.12},
              "csp": {0.1: 92.79, 0.05: 92.14, 0.02: 90.35}, "n2nskip-csp": {0.1: 93.02, 0.05: 92.86, 0.02: 92.12},
              "dense": 93.16},
    "resnet50": {"rp": {0.1: 88.53, 0.05: 86.17, 0.02: 83.33}, "n2nskip-rp": {0.1: 91.59, 0.05: 89.14, 0.02: 87.67},
                 "csp": {0.1: 93.15, 0.05: 92.25, 0.02: 89.12},
                 "n2nskip-csp": {0.1: 94.37, 0.05: 93.59, 0.02: 92.26}, "dense": 95.33},
}
PAPER_TABLE3 = {
    "vgg19": {"rp": {0.5: 3.6e-3, 0.1: 4.2e-1, 0.05: 2.3e-1, 0.02: 6.5e0},
              "n2nskip-rp": {0.5: 2.8e-6, 0.1: 4.9e-5, 0.05: 9.9e-4, 0.02: 1.3e-3},
              "csp": {0.5: 7.9e-3, 0.1: 7.1e-5, 0.05: 9.1e-2, 0.02: 2.3e0},
              "n2nskip-csp": {0.5: 1.4e-6, 0.1: 2.5e-5, 0.05: 6.2e-5, 0.02: 3.3e-4}},
    "resnet50": {"rp": {0.5: 4.4e-3, 0.1: 3.9e-2, 0.05: 4.5e-1, 0.02: 1.2e1},
                 "n2nskip-rp": {0.5: 8.1e-6, 0.1: 5.5e-5, 0.05: 3.8e-4, 0.02: 5.6e-3},
                 "csp": {0.5: 7.9e-3, 0.1: 6.7e-5, 0.05: 6.1e-2, 0.02: 9.2e0},
                 "n2nskip-csp": {0.5: 5.3e-6, 0.1: 1.7e-5, 0.05: 4.2e-5, 0.02: 8.9e-4}},
}


def fresh(network: str, seed: int) -> torch.nn.Module:
    arch, config = NETWORKS[network]
    torch.manual_seed(seed)
    return models.create(arch, num_classes=10, in_channels=3, input_size=32, **config)


def pruned(network: str, label: str, density: float, train: data.ImageData, seed: int):
    """A fresh model pruned at initialisation by ``label`` at ``density``, with its masks and the method's info."""
    name, params = METHODS[label]
    model = fresh(network, seed)
    result = methods.create(name, seed=seed, **params).prune(model, 1.0 - density, PruneData(train=train))
    model, masks = surgery.apply(model, result, shrink=False, input_shape=SHAPE)
    nonzero = count_nonzero(model, masks) + sum(int(m.sum()) for m in skips.skip_masks(masks).values())
    return model, masks, nonzero


def subset(images: data.ImageData, count: int) -> data.ImageData:
    if count <= 0 or count >= len(images):
        return images
    return dataclasses.replace(images, images=images.images[:count], labels=images.labels[:count])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data-dir", type=Path, default=SHARED)
    parser.add_argument("--models", nargs="+", default=["vgg19"], choices=sorted(NETWORKS))
    parser.add_argument("--f-densities", type=float, nargs="*", default=[0.5, 0.1, 0.05, 0.02],
                        help="densities for Table 3 (none: skip part 1)")
    parser.add_argument("--f-methods", nargs="+", default=list(METHODS), choices=list(METHODS))
    parser.add_argument("--acc-model", default="vgg19", choices=sorted(NETWORKS))
    parser.add_argument("--acc-methods", nargs="+", default=["csp", "n2nskip-csp"], choices=list(METHODS))
    parser.add_argument("--acc-densities", type=float, nargs="+", default=[0.05])
    parser.add_argument("--epochs", type=int, default=2)
    parser.add_argument("--train-subset", type=int, default=256, help="training images (0: all)")
    parser.add_argument("--test-subset", type=int, default=500, help="test images (0: all)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--out", type=Path, default=Path(__file__).parent / "results")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    started_all = time.perf_counter()
    train_full = data.load("cifar10", "train", args.data_dir, seed=args.seed)
    test_full = data.load("cifar10", "test", args.data_dir, seed=args.seed)

    # Part 1: Table 3 -------------------------------------------------------------------------------------------
    f_rows: list[dict[str, Any]] = []
    for network in args.models:
        reference = fresh(network, args.seed)
        reference_graphs = {taps: heat.unit_graph(reference, SHAPE, taps=taps) for taps in TAPS}
        t_star = heat.saturation_time(reference_graphs["all"])
        print(f"{network}: n = {reference_graphs['all'].n}, t* = {t_star:.4g}", flush=True)
        for density in args.f_densities:
            counts = {}
            for label in args.f_methods:
                started = time.perf_counter()
                model, masks, nonzero = pruned(network, label, density, train_full, args.seed)
                counts[label] = nonzero
                row = {"network": network, "density": density, "method": label,
                       "paper_F": PAPER_TABLE3.get(network, {}).get(label, {}).get(density)}
                for taps in TAPS:
                    graph = heat.unit_graph(model, SHAPE, masks=masks, taps=taps)
                    for factor in LATE:
                        row[f"F_{taps}_{factor}t*"] = heat.signature_distance(reference_graphs[taps], graph,
                                                                             factor * t_star)
                    row[f"isolated_{taps}"] = int((graph.adjacency.getnnz(axis=1) == 0).sum())
                f_rows.append({**row, "nonzero_weights": nonzero, "t_star": t_star,
                               "seconds": round(time.perf_counter() - started, 1)})
                print(f_rows[-1], flush=True)
            for base in ("rp", "csp"):  # RP keeps per-layer-rounded counts, CSP (SNIP) a global count
                same_base = {label: count for label, count in counts.items() if label.endswith(base)}
                if len(set(same_base.values())) > 1:
                    raise SystemExit(f"non-zero counts differ at density {density}: {same_base}")

    # Part 2: Table 1 / Fig. 5 ----------------------------------------------------------------------------------
    train, test = subset(train_full, args.train_subset), subset(test_full, args.test_subset)
    recipe = paper_recipe(args.epochs, seed=args.seed)
    acc_rows: list[dict[str, Any]] = []
    curves: dict[str, list[float]] = {}
    for density in args.acc_densities:
        for label in args.acc_methods:
            started = time.perf_counter()
            model, masks, nonzero = pruned(args.acc_model, label, density, train, args.seed)
            initial = evaluate(model, test)["accuracy"]
            history = Trainer(model, train, test, recipe, hooks=[MaskEnforcer(masks)], progress=False).fit().history
            accuracies = [initial] + [h.get("test_accuracy", h.get("accuracy")) for h in history]
            curves[f"{label} d={density:g}"] = accuracies
            acc_rows.append({"network": args.acc_model, "density": density, "method": label,
                             "accuracy": round(100 * accuracies[-1], 2),
                             "paper_accuracy": PAPER_TABLE1.get(args.acc_model, {}).get(label, {}).get(density),
                             "accuracy_per_epoch": [round(100 * a, 2) for a in accuracies],
                             "nonzero_weights": nonzero, "seconds": round(time.perf_counter() - started, 1)})
            print(acc_rows[-1], flush=True)

    settings = {
        "threads": args.threads, "seed": args.seed, "data": "cifar10 PARTIAL (5,085 train / 1,017 test exist here)",
        "train_images": len(train), "test_images": len(test), "epochs": args.epochs,
        "recipe": recipe.model_dump(), "f_models": args.models, "f_densities": args.f_densities,
        "acc_model": args.acc_model, "acc_densities": args.acc_densities, "acc_methods": args.acc_methods,
        "adjacency": "binary, skip edges included; conv edge = any kernel tap (all) or the [0, 0] tap (first, "
                     "the code release's reading)",
        "t": "reference's saturation time t* (alpha(6%, t*) = 0.97) and 100 t*",
        "shrunk": "CPU-sized: F at initialisation only (no training), accuracy after "
                  f"{args.epochs} epochs on {len(train)} images, one seed (paper: 300 epochs, full data, 5 runs)",
        "seconds_total": round(time.perf_counter() - started_all, 1),
    }
    args.out.mkdir(parents=True, exist_ok=True)
    save_results(args.out / "reproduce_n2nskip.json", {
        "benchmark": "reproduce_n2nskip", "machine": machine(), "settings": settings,
        "table3_F": f_rows, "table1_accuracy": acc_rows, "paper_table1": PAPER_TABLE1, "paper_table3": PAPER_TABLE3})
    f_columns = ["network", "density", "method", "paper_F"] + [f"F_{taps}_{factor}t*" for taps in TAPS
                                                               for factor in LATE] + \
        ["isolated_all", "isolated_first", "nonzero_weights"]
    acc_columns = ["network", "density", "method", "accuracy", "paper_accuracy", "accuracy_per_epoch"]
    print_table("Table 3: F at saturation (ours at initialisation vs the paper's)", f_rows, f_columns)
    print_table("Table 1 (CPU-sized): test accuracy %", acc_rows, acc_columns)
    _plot(curves, f_rows, args.out / "reproduce_n2nskip.png", settings)
    save_text(args.out / "reproduce_n2nskip.md",
              "# N2NSkip reproduction (CPU-sized)\n\n"
              f"{settings['shrunk']}. Data: {settings['data']}.\n\n"
              "## Table 3: F = ||S_ref - S_prune||_2 at t*\n\n" + markdown_table(f_rows, f_columns) +
              "\n\n## Table 1 / Fig. 5: accuracy (%) after each epoch\n\n" + markdown_table(acc_rows, acc_columns) +
              "\n\n![curves and F](reproduce_n2nskip.png)\n")


def _plot(curves: dict[str, list[float]], f_rows: list[dict[str, Any]], path: Path, settings: dict) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (left, right) = plt.subplots(1, 2, figsize=(11, 4))
    for label, values in curves.items():
        left.plot(range(len(values)), [100 * v for v in values], marker="o", label=label)
    left.set(xlabel="epoch", ylabel="test accuracy (%)",
             title=f"convergence ({settings['train_images']} train images)")
    left.legend(fontsize=8)
    for (network, method) in sorted({(r["network"], r["method"]) for r in f_rows}):
        points = sorted((r["density"], max(r["F_all_1t*"], 1e-12)) for r in f_rows
                        if r["network"] == network and r["method"] == method)
        right.plot([p[0] for p in points], [p[1] for p in points], marker="o", label=f"{network} {method}")
    right.set(xscale="log", yscale="log", xlabel="density", ylabel="F at t* (all taps)",
              title="Table 3: F vs density (init)")
    densities = sorted({r["density"] for r in f_rows})
    right.set_xticks(densities, [f"{d:g}" for d in densities])
    right.minorticks_off()
    right.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


if __name__ == "__main__":
    main()
