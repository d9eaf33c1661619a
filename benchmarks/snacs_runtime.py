"""SNACS runtime study (docs/methods/snacs.md §5–6): the CMI matrix of a VGG16 conv9-shaped layer pair with MINT's
MST estimator vs hash ACMI (φ = 1 and φ = weight) at 16–256 groups, and the whole-network SNACS prune of ResNet-20,
VGG-16 and ResNet-56 against the floor of any data-driven method — one forward pass over its scoring samples — and
beside Torch-Pruning's L1 pruning time.

Pair study: a VGG16 (``--checkpoint`` or a seeded random initialisation) runs on ``--per-class`` CIFAR-10 images per
class (the paper: 200 × 10); the parent is conv8's output as conv9 reads it (512 channels) and the child conv9 (512
filters). The paper's "group size" is the number of groups G per layer (its MST times grow as G², the number of
cells), so each row has G groups of 512/G filters. The hash ACMI matrix is computed in full (connprune's default
estimator: regression conditioning, one partition per ensemble member). MINT's MST estimator costs about the same for
every cell (pooled Euclidean MST of n/3 + n/3 points), so it is timed on ``--mst-cells`` cells (at least 16) spread
over the matrix and extrapolated to the G² cells; the row reports the per-cell mean, standard deviation, minimum and
maximum (``--mst-cells 0`` runs every cell). The paper's numbers (SNACS README, seconds, their hardware) are beside.

Whole network: ``snacs`` at its defaults except ``samples_per_class`` (``--prune-per-class``), and a fast setting
(``n_estimators=3``, ``constraint_search=bisect``); stage times from ``result.info``; the floor is the forward pass
over the same scoring samples (eval mode, no grad, batch 256, the best of two); Torch-Pruning: ``MetaPruner`` with
``MagnitudeImportance(p=1)`` at the channel ratio that keeps SNACS's share of the weights. Goal (issue 20): SNACS within
5× of the floor. Every row records the load average (the 2-core machine is shared).

Data: ONLY A PARTIAL CIFAR-10 EXISTS HERE (5,085 training images, about 500 per class); models are randomly
initialised unless checkpoints are given (run time does not depend on training). CPU-sized defaults.

Run: ``python benchmarks/snacs_runtime.py [--groups 16 32 64 128 256] [--per-class 200] [--mst-cells 16]``
"""

from __future__ import annotations

import argparse
import copy
import json
import os
import statistics
import sys
import time
import warnings
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import machine, markdown_table, print_table, save_results, save_text

from connprune import checkpoint, data, models
from connprune.data.pipeline import normalize
from connprune.graph import build
from connprune.measure import activations as acts
from connprune.measure.mutual_information import edge_cmi_matrix, mst_cmi
from connprune.measure.sparsity import sparsity as sparsity_of
from connprune.methods import PruneData, create, score_cache
from connprune.methods import snacs as snacs_module
from connprune.methods.mint import ChildLayer, group_labels
from connprune.methods.snacs import cell_weight_means, normalised_weights, phi_values

SHARED = Path(__file__).resolve().parents[1].parent / "shared" / "data"
PAPER = {16: (1161.51, 45.56, 46.56), 32: (6573.51, 205.25, 171.06), 64: (14517.92, 839.93, 832.46),
         128: (74125.99, 2439.35, 3961.95), 256: (271880.62, 9999.00, 10028.28)}
FAST = {"n_estimators": 3, "constraint_search": "bisect"}


def load_model(name: str, path: Path | None, info) -> torch.nn.Module:
    if path is not None:
        return checkpoint.load(path)
    torch.manual_seed(0)
    channels, size, _ = info.input_shape
    return models.create(name, num_classes=info.num_classes, in_channels=channels, input_size=size)


def mst_cells(x: torch.Tensor, y: torch.Tensor, labels: torch.Tensor, groups: int, count: int) -> list[float]:
    """Seconds per cell of MINT's MST estimator on ``count`` cells spread evenly over the G × G matrix."""
    cells = groups * groups
    chosen = range(cells) if count <= 0 or count >= cells else \
        sorted({round(k * (cells - 1) / (count - 1)) for k in range(count)})
    seconds = []
    for cell in chosen:
        c, p = divmod(cell, groups)
        started = time.perf_counter()
        mst_cmi(x[:, labels == c], y[:, labels == p], y[:, labels != p], shuffle=True, seed=cell)
        seconds.append(time.perf_counter() - started)
    return seconds


def pair_row(groups: int, x: torch.Tensor, y: torch.Tensor, normalised: torch.Tensor, name: str, args) -> dict:
    labels = group_labels(512, groups)
    started = time.perf_counter()
    cmi = edge_cmi_matrix(x, y, labels, labels)
    edge_seconds = time.perf_counter() - started
    child = ChildLayer(name=name, parents=(), in_units=512, block=1, child_labels=labels, parent_labels=labels,
                       kernel=9)
    started = time.perf_counter()
    acmi = phi_values(cell_weight_means(normalised, child), "weight") * cmi.clamp(min=0)
    weight_seconds = edge_seconds + time.perf_counter() - started
    per_cell = mst_cells(x, y, labels, groups, args.mst_cells)
    cells = groups * groups
    mst_seconds = statistics.fmean(per_cell) * cells
    paper = PAPER.get(groups, (None, None, None))
    return {"groups": groups, "filters_per_group": 512 // groups, "cells": cells, "samples": x.shape[0],
            "mst_seconds": mst_seconds, "mst_cells_timed": len(per_cell),
            "mst_cell_mean_s": statistics.fmean(per_cell),
            "mst_cell_std_s": statistics.stdev(per_cell) if len(per_cell) > 1 else 0.0,
            "mst_cell_min_s": min(per_cell), "mst_cell_max_s": max(per_cell),
            "edge_phi1_seconds": edge_seconds, "edge_phi_weight_seconds": weight_seconds,
            "speedup_vs_phi1": mst_seconds / edge_seconds, "goal_17x": mst_seconds / edge_seconds >= 17,
            "paper_mst_seconds": paper[0], "paper_edge_phi1_seconds": paper[1],
            "paper_edge_phi_weight_seconds": paper[2], "paper_speedup": paper[0] / paper[1] if paper[0] else None,
            "acmi_finite": bool(torch.isfinite(acmi).all()), "load_average": list(os.getloadavg())}


def pair_study(args, train) -> list[dict]:
    vgg = load_model("vgg16", args.vgg_checkpoint, train.info).eval()
    graph = build(vgg, tuple(train.info.input_shape))
    convs = [n for n in graph.layers if isinstance(vgg.get_submodule(n), torch.nn.Conv2d)]
    child_name = convs[8]  # conv9 (1-based), 512 → 512
    module = vgg.get_submodule(child_name)
    assert module.in_channels == module.out_channels == 512, child_name
    indices = acts.class_balanced_indices(train.labels, args.per_class, seed=0)
    found = acts.collect(vgg, train, outputs=[child_name], inputs=[child_name], indices=indices)
    x, y = found.outputs[child_name], found.inputs[child_name]
    normalised = normalised_weights(vgg)[f"{child_name}.weight"]
    rows = []
    for groups in args.groups:
        rows.append(pair_row(groups, x, y, normalised, child_name, args))
        row = rows[-1]
        print(f"{groups} groups: EDGE {row['edge_phi1_seconds']:.1f} s, MST {row['mst_seconds']:.1f} s "
              f"({row['mst_cells_timed']} cells, {row['mst_cell_mean_s']:.2f} ± {row['mst_cell_std_s']:.2f} s each)",
              flush=True)
    return rows


def torch_pruning_seconds(model: torch.nn.Module, ratio: float, shape) -> float:
    import torch_pruning as tp

    model = copy.deepcopy(model)
    example = torch.randn(1, *shape)
    classifier = [m for m in model.modules() if isinstance(m, torch.nn.Linear)][-1]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        started = time.perf_counter()
        pruner = tp.pruner.MetaPruner(model, example, importance=tp.importance.MagnitudeImportance(p=1),
                                      pruning_ratio=ratio, global_pruning=False, ignored_layers=[classifier])
        pruner.step()
        return time.perf_counter() - started


@torch.no_grad()
def forward_floor(model: torch.nn.Module, train, per_class: int) -> float:
    """Seconds of one eval-mode forward pass over the scoring samples (batch 256), the best of two."""
    indices = acts.class_balanced_indices(train.labels, per_class, seed=0)
    best = float("inf")
    for _ in range(2):
        started = time.perf_counter()
        for start in range(0, len(indices), 256):
            model(normalize(train.images[indices[start : start + 256]], train.info))
        best = min(best, time.perf_counter() - started)
    return best


def snacs_seconds(model: torch.nn.Module, train, params: dict) -> tuple[float, dict]:
    score_cache.clear()
    snacs_module._CURVE_CACHE.clear()
    started = time.perf_counter()
    result = create("snacs", **params).prune(model, "auto", PruneData(train=train))
    return time.perf_counter() - started, result.info | {"sparsity": float(sparsity_of(model, result.masks))}


def whole_network(args, train) -> list[dict]:
    rows = []
    checkpoints = {"vgg16": args.vgg_checkpoint, "resnet56": args.resnet_checkpoint}
    for name in args.models:
        model = load_model(name, checkpoints.get(name), train.info).eval()
        floor = forward_floor(model, train, args.prune_per_class)
        for setting, extra in (("defaults", {}), ("fast", FAST)):
            total, info = snacs_seconds(model, train, {"samples_per_class": args.prune_per_class, **extra})
            ratio = 1 - (1 - info["sparsity"]) ** 0.5  # removing r of every layer's channels keeps ~(1-r)² weights
            tp_seconds = torch_pruning_seconds(model, ratio, tuple(train.info.input_shape))
            rows.append({"model": name, "setting": setting, "samples": args.prune_per_class * train.info.num_classes,
                         "floor_forward_seconds": floor, "snacs_seconds": total,
                         **{k: v for k, v in info.items() if k.startswith("seconds_")},
                         "cells": sum(a * b for a, b in info["groups"].values()),
                         "snacs_sparsity": info["sparsity"], "ratio_to_floor": total / floor,
                         "goal_5x": total <= 5 * floor,
                         "torch_pruning_l1_seconds": tp_seconds, "ratio_to_torch_pruning": total / tp_seconds,
                         "load_average": list(os.getloadavg())})
            print(f"{name} {setting}: SNACS {total:.1f} s = {total / floor:.1f}x the forward floor {floor:.2f} s "
                  f"(activations {info['seconds_activations']:.1f}, CMI {info['seconds_cmi']:.1f}, constraints "
                  f"{info['seconds_constraints']:.1f}); Torch-Pruning L1 {tp_seconds:.2f} s", flush=True)
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data-dir", type=Path, default=SHARED)
    parser.add_argument("--groups", type=int, nargs="+", default=[16, 32, 64, 128, 256],
                        help="groups per layer (the paper's 'group size')")
    parser.add_argument("--per-class", type=int, default=200, help="samples per class of the pair study")
    parser.add_argument("--mst-cells", type=int, default=16, help="MST cells timed per row (0: all; at least 16)")
    parser.add_argument("--prune-per-class", type=int, default=50, help="SNACS scoring samples per class")
    parser.add_argument("--models", nargs="+", default=["resnet20", "vgg16", "resnet56"])
    parser.add_argument("--vgg-checkpoint", type=Path, default=None)
    parser.add_argument("--resnet-checkpoint", type=Path, default=None)
    parser.add_argument("--skip-pair", action="store_true", help="only the whole-network study")
    parser.add_argument("--skip-whole", action="store_true", help="only the pair study")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--render", action="store_true", help="rewrite the .md from the saved JSON, run nothing")
    parser.add_argument("--out", type=Path, default=Path(__file__).parent / "results")
    args = parser.parse_args()
    if args.render:
        save_text(args.out / "snacs_runtime.md", report(json.loads((args.out / "snacs_runtime.json").read_text())))
        return
    if 0 < args.mst_cells < 16:
        parser.error("--mst-cells must be 0 (all) or at least 16")
    torch.set_num_threads(args.threads)
    train = data.load("cifar10", "train", args.data_dir)
    pairs = [] if args.skip_pair else pair_study(args, train)
    whole = [] if args.skip_whole else whole_network(args, train)
    if pairs:
        print_table("CMI matrix of a VGG16 conv9-shaped pair (512 x 512), seconds", pairs, PAIR_COLUMNS)
    if whole:
        print_table("Whole-network SNACS prune time vs the forward floor and Torch-Pruning L1", whole, WHOLE_COLUMNS)
    results = {
        "benchmark": "snacs_runtime", "machine": machine(),
        "settings": {"groups": args.groups, "per_class": args.per_class, "mst_cells": args.mst_cells,
                     "prune_per_class": args.prune_per_class, "threads": args.threads, "models": args.models,
                     "fast": FAST, "weights": "trained checkpoints" if args.vgg_checkpoint else "random initialisation",
                     "shrunk": "partial CIFAR-10 (5,085 train images); MST timed on mst_cells cells per row spread "
                               "over the matrix and extrapolated to all cells; SNACS with prune_per_class samples per "
                               "class instead of 250; one CPU thread on a shared 2-core machine (load in each row)"},
        "pair": pairs, "whole_network": whole,
        "paper": {"source": "SNACS README runtime table (seconds, 200 samples/class, VGG16 conv9)",
                  "claim": "EDGE >= 17x faster than MST at every group size"},
    }
    save_results(args.out / "snacs_runtime.json", results)
    save_text(args.out / "snacs_runtime.md", report(results))
    print(f"wrote {args.out / 'snacs_runtime.json'}")


PAIR_COLUMNS = ["groups", "filters_per_group", "cells", "edge_phi1_seconds", "edge_phi_weight_seconds", "mst_seconds",
                "mst_cells_timed", "mst_cell_mean_s", "mst_cell_std_s", "mst_cell_min_s", "mst_cell_max_s",
                "speedup_vs_phi1", "paper_mst_seconds", "paper_edge_phi1_seconds", "paper_speedup", "load_average"]
WHOLE_COLUMNS = ["model", "setting", "samples", "cells", "floor_forward_seconds", "snacs_seconds",
                 "seconds_activations", "seconds_cmi", "seconds_constraints", "seconds_sensitivity", "seconds_masks",
                 "ratio_to_floor", "goal_5x", "snacs_sparsity", "torch_pruning_l1_seconds", "ratio_to_torch_pruning",
                 "load_average"]


def verdicts(results: dict) -> list[str]:
    """The paper's claim (EDGE ≥ 17× faster than MST) and issue 20's goal (SNACS within 5× of the forward floor)."""
    lines = []
    pairs, whole = results["pair"], results["whole_network"]
    if pairs:
        slowest = min(pairs, key=lambda r: r["speedup_vs_phi1"])
        held = all(r["speedup_vs_phi1"] >= 17 for r in pairs)
        lines.append(f"EDGE at least 17x faster than MST at every group count (the paper's claim): "
                     f"{'reproduced' if held else 'not reproduced'} — smallest speed-up "
                     f"{slowest['speedup_vs_phi1']:.0f}x "
                     f"at {slowest['groups']} groups (MST extrapolated from {slowest['mst_cells_timed']} timed cells)")
    for setting in ("defaults", "fast"):
        rows = [r for r in whole if r["setting"] == setting]
        if rows:
            met = [r["model"] for r in rows if r["goal_5x"]]
            lines.append(f"Whole-network SNACS within 5x of the forward floor, {setting}: "
                         + ("MET on every model" if len(met) == len(rows) else f"NOT MET ({', '.join(met) or 'none'} "
                            f"of {', '.join(r['model'] for r in rows)})")
                         + " — " + ", ".join(f"{r['model']} {r['ratio_to_floor']:.1f}x (CMI {r['seconds_cmi']:.0f} s, "
                                             f"constraints {r['seconds_constraints']:.0f} s)" for r in rows))
    return lines


def report(results: dict) -> str:
    machine_info = results["machine"]
    text = ("# SNACS runtime study\n\n" + f"Machine: {machine_info.get('cpu', '?')}, load average "
            f"{machine_info.get('load_average')}; {results['settings']['shrunk']}; weights: "
            f"{results['settings']['weights']}.\n\n## Verdict\n\n"
            + "\n".join(f"- {line}" for line in verdicts(results)) + "\n")
    if results["pair"]:
        text += "\n## CMI matrix, VGG16 conv9-shaped pair\n\n" + markdown_table(results["pair"], PAIR_COLUMNS)
    if results["whole_network"]:
        text += "\n## Whole-network prune time\n\n" + markdown_table(results["whole_network"], WHOLE_COLUMNS)
    return text


if __name__ == "__main__":
    main()
