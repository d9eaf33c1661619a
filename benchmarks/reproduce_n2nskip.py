"""Reproduce N2NSkip (Subramaniam & Sharma, BMVC 2020) Tables 1 and 3 and Fig. 5's convergence claim, CPU-sized.

Part 1 — Table 3 (connectivity at initialisation, no training): for each network and density, prune a fresh
Kaiming-initialised model with RP / N2NSkip-RP / CSP / N2NSkip-CSP / ResSkip-CSP (RP and CSP are ``n2nskip`` with
``skip_fraction=0``: the plain pruned network at the same non-zero count; RP is channel-level with constant fan-in
and a dense first conv and classifier, the paper's; RP-element / N2NSkip-RP-element the element-wise variant;
skips one per block, N2NSkip-CSP-every one starting at every layer, plain networks only), and compute
F = ‖S_ref − S_prune‖₂ (Eq. 6, unit graph with the skip edges): weighted (|w|) at the reference's scree time t*
(α(6 %, t*) = 0.97; the spec's Table 3 setting), and binary at the dense reference's settling time t_sat
(:func:`connprune.measure.heat.settling_time`), at t* and at t = ∞ (closed form: only units cut off from the inputs
count); and the MACs each network reports (skip branches run compactly: non-zeros × positions).
The non-zero weight counts of the methods sharing a base are checked equal at every density (CSP and element-wise
RP exactly, channel-level RP within one step of a layer, out·f²; ResSkip adds no weights).

Part 2 — Table 1 / Fig. 5 (accuracy and convergence): train the pruned networks from scratch with the paper's recipe
(SGD 0.05, momentum 0.9, wd 5e-4, batch 128, lr ×0.5 every 30 epochs; :func:`connprune.methods.n2nskip.paper_recipe`)
with masks enforced, recording test accuracy after every epoch.

CPU-sized defaults (stated in the JSON): F for VGG-19 only (``--models vgg19 resnet50`` adds ResNet-50, about 15
minutes), accuracy for VGG-19 at 5 % density, CSP vs N2NSkip-CSP, 2 epochs on 256 training images of the PARTIAL
CIFAR-10 (5,085 / 1,017 images exist here), test on 500 — its accuracies only show the pipeline; the paper trains 300
epochs on the full CIFAR-10. ``--acc-densities`` with no value skips part 2, ``--f-densities`` with none part 1. Full
setting on a GPU: ``--acc-methods rp n2nskip-rp csp n2nskip-csp resskip-csp --acc-densities 0.1 0.05 0.02 --epochs 300
--train-subset 0 --test-subset 0``.

Run: ``python benchmarks/reproduce_n2nskip.py [--data-dir ../shared/data] [--out DIR]``.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import machine, markdown_table, print_table, save_results, save_text  # noqa: E402

from connprune import data, methods, models, surgery  # noqa: E402
from connprune.measure import heat  # noqa: E402
from connprune.measure.cost import count_macs  # noqa: E402
from connprune.measure.sparsity import count_nonzero, prunable_weights  # noqa: E402
from connprune.methods import PruneData  # noqa: E402
from connprune.methods.n2nskip import paper_recipe  # noqa: E402
from connprune.surgery import MaskEnforcer, skips  # noqa: E402
from connprune.train import Trainer, evaluate  # noqa: E402

SHARED = Path(__file__).resolve().parents[1].parent / "shared" / "data"
SHAPE = (3, 32, 32)
TAPS = ("all", "first")
"""Conv edges from any kernel tap (the spec's definition) or from the [0, 0] tap only (the authors' code release)."""
NETWORKS: dict[str, tuple[str, dict[str, Any]]] = {"vgg19": ("vgg19", {}),
                                                   "resnet50": ("resnet50", {"small_input": True})}
METHODS: dict[str, tuple[str, dict[str, Any]]] = {
    "rp": ("n2nskip", {"base": "random", "skip_fraction": 0.0}),
    "n2nskip-rp": ("n2nskip", {"base": "random"}),
    "csp": ("n2nskip", {"base": "snip", "skip_fraction": 0.0}),
    "n2nskip-csp": ("n2nskip", {"base": "snip"}),
    "n2nskip-csp-every": ("n2nskip", {"base": "snip", "placement": "every"}),
    "rp-element": ("n2nskip", {"base": "random", "rp": "element", "skip_fraction": 0.0}),
    "n2nskip-rp-element": ("n2nskip", {"base": "random", "rp": "element"}),
    "resskip-csp": ("resskip", {"base": "snip"}),
    "n2nskip-csp-pool-conv": ("n2nskip", {"base": "snip", "bridge": "pool-conv"}),
}
TABLE3_METHODS = [m for m in METHODS if m != "n2nskip-csp-pool-conv"]
"""Part 1's default methods (the pool-conv bridge changes no edge of the unit graph: its F is N2NSkip-CSP's)."""
PLAIN_ONLY = {"n2nskip-csp-every"}
"""Methods whose placement needs a plain (non-residual) network."""
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


def prune_at_init(model: torch.nn.Module, label: str, density: float, train: data.ImageData, seed: int,
                  shape: tuple[int, ...]) -> tuple[torch.nn.Module, dict[str, torch.Tensor], int]:
    """``model`` pruned at initialisation by ``label`` (:data:`METHODS`) at ``density`` (masked, skips added), its
    masks and its non-zero weight count (sequential and skip weights)."""
    name, params = METHODS[label]
    result = methods.create(name, seed=seed, **params).prune(model, 1.0 - density, PruneData(train=train))
    model, masks = surgery.apply(model, result, shrink=False, example_inputs=shape)
    nonzero = count_nonzero(model, masks) + sum(int(m.sum()) for m in skips.skip_masks(model, masks).values())
    return model, masks, nonzero


def pruned(network: str, label: str, density: float, train: data.ImageData, seed: int):
    """A fresh ``network`` pruned at initialisation by ``label`` at ``density`` (:func:`prune_at_init`)."""
    return prune_at_init(fresh(network, seed), label, density, train, seed, SHAPE)


def residual(network: str) -> bool:
    return network.startswith("resnet")


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
    parser.add_argument("--f-methods", nargs="+", default=TABLE3_METHODS, choices=list(METHODS))
    parser.add_argument("--acc-model", default="vgg19", choices=sorted(NETWORKS))
    parser.add_argument("--acc-methods", nargs="+", default=["csp", "n2nskip-csp"], choices=list(METHODS))
    parser.add_argument("--acc-densities", type=float, nargs="*", default=[0.05],
                        help="densities for Table 1 (none: skip part 2)")
    parser.add_argument("--epochs", type=int, default=2)
    parser.add_argument("--train-subset", type=int, default=256, help="training images (0: all)")
    parser.add_argument("--test-subset", type=int, default=500, help="test images (0: all)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--out", type=Path, default=Path(__file__).parent / "results")
    parser.add_argument("--render", type=Path, default=None,
                        help="only re-write the tables and plot of an earlier run's JSON, beside it")
    args = parser.parse_args()
    if args.render is not None:
        render(json.loads(args.render.read_text()), args.render.parent)
        return
    torch.set_num_threads(args.threads)
    started_all = time.perf_counter()
    if residual(args.acc_model) and set(args.acc_methods) & PLAIN_ONLY:
        raise SystemExit(f"{sorted(PLAIN_ONLY)} need a plain network, not {args.acc_model}")
    train_full = data.load("cifar10", "train", args.data_dir, seed=args.seed)
    test_full = data.load("cifar10", "test", args.data_dir, seed=args.seed)

    # Part 1: Table 3 -------------------------------------------------------------------------------------------
    f_rows: list[dict[str, Any]] = []
    for network in args.models:
        reference = fresh(network, args.seed)
        reference_graphs = {taps: heat.unit_graph(reference, SHAPE, taps=taps) for taps in TAPS}
        t_star = heat.saturation_time(reference_graphs["all"])
        t_settled = heat.settling_time(reference_graphs["all"])
        print(f"{network}: n = {reference_graphs['all'].n}, t* = {t_star:.4g}, t_sat = {t_settled:.4g}", flush=True)
        reference_graphs["weighted"] = heat.unit_graph(reference, SHAPE, weighted=True)
        t_star_weighted = heat.saturation_time(reference_graphs["weighted"])
        reference_heat = {(taps, t): heat.heat_signature(reference_graphs[taps], t)  # once, not per pruned net
                          for taps, t in (("all", t_settled), ("first", t_settled), ("all", t_star),
                                          ("weighted", t_star_weighted))}
        step = max(w.numel() // w.shape[1] for w in prunable_weights(reference).values())

        def distance(taps: str, t: float, graph: heat.UnitGraph) -> float:
            """F(t) = ||S_ref(t) - S_prune(t)||_2 (Eq. 6) with the reference's signature computed once."""
            return float(np.linalg.norm(reference_heat[taps, t] - heat.heat_signature(graph, t)))
        for density in args.f_densities:
            counts = {}
            for label in [m for m in args.f_methods if not (m in PLAIN_ONLY and residual(network))]:
                started = time.perf_counter()
                model, masks, nonzero = pruned(network, label, density, train_full, args.seed)
                counts[label] = nonzero
                row = {"network": network, "density": density, "method": label,
                       "paper_F": PAPER_TABLE3.get(network, {}).get(label, {}).get(density)}
                for taps in TAPS:
                    graph = heat.unit_graph(model, SHAPE, masks=masks, taps=taps)
                    row[f"F_{taps}"] = distance(taps, t_settled, graph)
                    if taps == "all":
                        row["F_all_t*"] = distance(taps, t_star, graph)
                        row["F_all_inf"] = heat.saturated_distance(reference_graphs[taps], graph)
                    row[f"isolated_{taps}"] = int((graph.adjacency.getnnz(axis=1) == 0).sum())
                weighted = heat.unit_graph(model, SHAPE, masks=masks, weighted=True)
                row["F_weighted_t*"] = distance("weighted", t_star_weighted, weighted)
                f_rows.append({**row, "nonzero_weights": nonzero, "macs": count_macs(model, SHAPE),
                               "t_star": t_star, "t_star_weighted": t_star_weighted, "t_sat": t_settled,
                               "seconds": round(time.perf_counter() - started, 1)})
                print(f_rows[-1], flush=True)
            for base, slack in (("rp", step), ("csp", 0)):  # channel RP: whole input channels per output row
                same_base = {label: count for label, count in counts.items() if base in label.split("-")}
                if same_base and max(same_base.values()) - min(same_base.values()) > slack:
                    raise SystemExit(f"non-zero counts differ at density {density}: {same_base}")

    # Part 2: Table 1 / Fig. 5 ----------------------------------------------------------------------------------
    train, test = subset(train_full, args.train_subset), subset(test_full, args.test_subset)
    recipe = paper_recipe(args.epochs, seed=args.seed)
    acc_rows: list[dict[str, Any]] = []
    for density in args.acc_densities:
        for label in args.acc_methods:
            started = time.perf_counter()
            model, masks, nonzero = pruned(args.acc_model, label, density, train, args.seed)
            initial = evaluate(model, test)["accuracy"]
            trainer = Trainer(model, train, test, recipe, progress=False)
            MaskEnforcer(model, masks, trainer.optimizer)
            history = trainer.fit().history
            accuracies = [initial] + [h.get("test_accuracy", h.get("accuracy")) for h in history]
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
        "adjacency": "F_weighted_t*: weighted (|w| per kernel slice, the spec's Table 3); the others binary; skip "
                     "edges included; conv edge = any kernel tap (all) or the [0, 0] tap (first, the code release's "
                     "reading)",
        "t": "F_weighted_t* at the weighted reference's scree time t* (the spec's setting); F_all / F_first at the "
             "reference's settling time t_sat = ln(1e6) / lambda_2; F_all_t* at its scree time t* (alpha(6%, t*) = "
             "0.97); F_all_inf at t = infinity (closed form)",
        "skips": "default n2nskip: one skip per block (chain for plain nets, blocks for ResNet), fan-in skip masks, "
                 "RP channel-level with constant fan-in; n2nskip-csp-every: a skip starting at every layer",
        "seconds_total": round(time.perf_counter() - started_all, 1),
    }
    args.out.mkdir(parents=True, exist_ok=True)
    results = {"benchmark": "reproduce_n2nskip", "machine": machine(), "settings": settings,
               "table3_F": f_rows, "table1_accuracy": acc_rows, "paper_table1": PAPER_TABLE1,
               "paper_table3": PAPER_TABLE3}
    save_results(args.out / "reproduce_n2nskip.json", results)
    render(results, args.out)


F_COLUMNS = ["network", "density", "method", "paper_F", "F_weighted_t*", "F_all", "F_first", "F_all_t*", "F_all_inf",
             "isolated_all", "isolated_first", "nonzero_weights", "macs"]
ACC_COLUMNS = ["network", "density", "method", "accuracy", "paper_accuracy", "accuracy_per_epoch"]


def render(results: dict[str, Any], out: Path) -> None:
    """Print the tables and write ``reproduce_n2nskip.md`` and ``.png`` into ``out`` (the parts that were run)."""
    settings, f_rows, acc_rows = results["settings"], results["table3_F"], results["table1_accuracy"]
    text = ["# N2NSkip reproduction (CPU-sized)\n", f"Data: {settings['data']}. One seed (the paper: 5 runs)."]
    if f_rows:
        print_table("Table 3: F (ours at initialisation vs the paper's)", f_rows, F_COLUMNS)
        text += ["\n## Table 3: F = ||S_ref - S_prune||_2\n",
                 "At initialisation (F of the binary graphs does not change in training: the masks are fixed). "
                 "F_weighted_t*: weighted adjacency (|w| per kernel slice) at the weighted reference's scree time t* "
                 "(the docs' Table 3 setting, the headline). Binary graphs: F_all / F_first at the reference's "
                 "settling time t_sat (conv edges from any tap / the [0, 0] tap); F_all_t*: at the scree time t*; "
                 "F_all_inf: at t = infinity; isolated: units without any edge. Lower is closer to the dense "
                 f"reference. {settings['skips']}.\n", markdown_table(f_rows, F_COLUMNS),
                 "\nN2NSkip against the plain network of the same base and non-zero count (weighted F at t*, and "
                 "binary F at t_sat with their ratio; binary values below about 1e-6 are within the reference's own "
                 "distance from saturation, t_sat's tolerance):\n",
                 markdown_table(_pairs(f_rows), ["network", "density", "base", "plain_F_weighted_t*",
                                                 "n2nskip_F_weighted_t*", "plain_F", "n2nskip_F", "ratio",
                                                 "paper_plain_F", "paper_n2nskip_F"])]
    if acc_rows:
        print_table("Table 1 (CPU-sized): test accuracy %", acc_rows, ACC_COLUMNS)
        text += ["\n## Table 1 / Fig. 5: accuracy (%) after each epoch\n",
                 f"{settings['epochs']} epochs of the paper's recipe on {settings['train_images']} training images, "
                 f"tested on {settings['test_images']} (the paper: 300 epochs on the full CIFAR-10).\n",
                 markdown_table(acc_rows, ACC_COLUMNS)]
    _plot(acc_rows, f_rows, out / "reproduce_n2nskip.png", settings)
    save_text(out / "reproduce_n2nskip.md", "\n".join(text) + "\n\n![curves and F](reproduce_n2nskip.png)\n")


def _pairs(f_rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Plain base vs N2NSkip on it, per network and density: F at t_sat and the paper's Table 3 values."""
    by_key = {(r["network"], r["density"], r["method"]): r for r in f_rows}
    pairs = []
    for (network, density, method), plain in by_key.items():
        skip = by_key.get((network, density, f"n2nskip-{method}"))
        if skip is not None:
            weighted = {"plain_F_weighted_t*": plain.get("F_weighted_t*"),
                        "n2nskip_F_weighted_t*": skip.get("F_weighted_t*")}
            pairs.append({"network": network, "density": density, "base": method, **weighted,
                          "plain_F": plain["F_all"], "n2nskip_F": skip["F_all"],
                          "ratio": skip["F_all"] / max(plain["F_all"], 1e-300),
                          "paper_plain_F": plain["paper_F"], "paper_n2nskip_F": skip["paper_F"]})
    return pairs


def _plot(acc_rows: list[dict[str, Any]], f_rows: list[dict[str, Any]], path: Path, settings: dict) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    panels = int(bool(acc_rows)) + int(bool(f_rows))
    fig, axes = plt.subplots(1, max(panels, 1), figsize=(5.5 * max(panels, 1), 4), squeeze=False)
    axes = list(axes[0])
    if acc_rows:
        left = axes.pop(0)
        for row in acc_rows:
            values = row["accuracy_per_epoch"]
            left.plot(range(len(values)), values, marker="o", label=f"{row['method']} d={row['density']:g}")
        left.set(xlabel="epoch", ylabel="test accuracy (%)",
                 title=f"convergence ({settings['train_images']} train images)")
        left.legend(fontsize=8)
    if f_rows:
        right = axes.pop(0)
        networks = sorted({r["network"] for r in f_rows})
        methods_run = list(dict.fromkeys(r["method"] for r in f_rows))
        for network in networks:  # one colour per method, one line style per network
            for i, method in enumerate(methods_run):
                points = sorted((r["density"], max(r["F_weighted_t*"], 1e-12)) for r in f_rows
                                if r["network"] == network and r["method"] == method)
                if points:
                    right.plot([p[0] for p in points], [p[1] for p in points], marker="o", color=f"C{i}",
                               linestyle=("-", "--", ":")[networks.index(network) % 3], label=f"{network} {method}")
        right.set(xscale="log", yscale="log", xlabel="density", ylabel="F (weighted, at t*)",
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
