"""SNACS runtime study (``shared/specs/snacs.md`` §5–6): the CMI matrix of a VGG16 conv9-shaped layer pair with
MINT's MST estimator vs hash ACMI (φ = 1 and φ = weight) at 16–256 groups, and the whole-network SNACS prune
time of VGG16 and ResNet-56 next to Torch-Pruning's L1 pruning time.

Pair study: a VGG16 (``--checkpoint`` or a seeded random initialisation) runs on ``--per-class`` CIFAR-10 images per
class (the paper: 200 × 10); the parent is conv8's output as conv9 reads it (512 channels) and the child conv9 (512
filters). The paper's "group size" is the number of groups G per layer (its MST times grow as G², the number of
cells: 271,881 s / 1,161 s ≈ (256/16)²), so each row has G groups of 512/G filters. The hash ACMI matrix is computed
in full; the MST estimator costs about the same for every cell (pooled Euclidean MST of n/3 + n/3 points), so by
default it is timed on ``--mst-cells`` cells and extrapolated to the G² cells (stated per row; ``--mst-cells 0``
runs every cell). Paper numbers (SNACS README, seconds, their hardware) are shown beside ours.

Whole network: ``snacs`` with its defaults except ``samples_per_class`` (``--prune-per-class``), stage times from
``result.info``; Torch-Pruning: ``MetaPruner`` with L1 ``MagnitudeImportance`` at the same overall ratio, as in
``benchmarks/surgery_speed.py``. Goal (issue 7): SNACS ≤ 5× Torch-Pruning's time — SNACS measures data, so this is
hard on a CPU; the JSON says whether it was met.

Data: ONLY A PARTIAL CIFAR-10 EXISTS HERE (5,085 training images, about 500 per class); models are randomly
initialised unless checkpoints are given (run time does not depend on training). CPU-sized defaults.

Run: ``python benchmarks/snacs_runtime.py [--groups 16 32 64 128 256] [--per-class 200] [--mst-cells 4]``
"""

from __future__ import annotations

import argparse
import copy
import sys
import time
import warnings
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import machine, markdown_table, print_table, save_results, save_text  # noqa: E402

from connprune import checkpoint, data, models  # noqa: E402
from connprune.graph import build  # noqa: E402
from connprune.measure import activations as acts  # noqa: E402
from connprune.measure.mutual_information import edge_cmi_matrix, mst_cmi  # noqa: E402
from connprune.measure.sparsity import sparsity as sparsity_of  # noqa: E402
from connprune.methods import (  # noqa: E402
    PruneData,
    create,
    score_cache,  # noqa: E402
)
from connprune.methods.mint import (
    ChildLayer,  # noqa: E402
    group_labels,  # noqa: E402
)
from connprune.methods.snacs import cell_weight_means, normalised_weights, phi_values  # noqa: E402

SHARED = Path(__file__).resolve().parents[1].parent / "shared" / "data"
PAPER = {16: (1161.51, 45.56, 46.56), 32: (6573.51, 205.25, 171.06), 64: (14517.92, 839.93, 832.46),
         128: (74125.99, 2439.35, 3961.95), 256: (271880.62, 9999.00, 10028.28)}


def load_model(name: str, path: Path | None, info) -> torch.nn.Module:
    if path is not None:
        return checkpoint.load(path)
    torch.manual_seed(0)
    channels, size, _ = info.input_shape
    return models.create(name, num_classes=info.num_classes, in_channels=channels, input_size=size)


def pair_study(args, train) -> list[dict]:
    vgg = load_model("vgg16", args.vgg_checkpoint, train.info).eval()
    graph = build(vgg, tuple(train.info.input_shape))
    convs = [n for n in graph.layers if isinstance(vgg.get_submodule(n), torch.nn.Conv2d)]
    child_name = convs[8]  # conv9 (1-based), 512 → 512
    module = vgg.get_submodule(child_name)
    assert module.in_channels == module.out_channels == 512, child_name
    indices = acts.class_balanced_indices(train.labels, args.per_class, seed=0)
    started = time.perf_counter()
    found = acts.collect(vgg, train, outputs=[child_name], inputs=[child_name], indices=indices)
    activation_seconds = time.perf_counter() - started
    x, y = found.outputs[child_name], found.inputs[child_name]
    normalised = normalised_weights(vgg)[f"{child_name}.weight"]
    rows = []
    for groups in args.groups:
        size = groups  # the paper's "group size" column
        labels = group_labels(512, groups)
        started = time.perf_counter()
        cmi = edge_cmi_matrix(x, y, labels, labels)
        edge_seconds = time.perf_counter() - started
        child = ChildLayer(name=child_name, parents=(), in_units=512, block=1, child_labels=labels,
                           parent_labels=labels, kernel=9)
        started = time.perf_counter()
        acmi = phi_values(cell_weight_means(normalised, child), "weight") * cmi
        weight_seconds = edge_seconds + time.perf_counter() - started
        cells = groups * groups
        timed = cells if args.mst_cells <= 0 else min(cells, args.mst_cells)
        started = time.perf_counter()
        for cell in range(timed):  # the same cost for every cell: (c, p) = the first cells in row-major order
            c, p = divmod(cell, groups)
            mst_cmi(x[:, labels == c], y[:, labels == p], y[:, labels != p], shuffle=True, seed=cell)
        mst_seconds = (time.perf_counter() - started) / timed * cells
        paper = PAPER.get(size, (None, None, None))
        rows.append({"group_size": size, "groups": groups, "filters_per_group": 512 // groups, "cells": cells,
                     "samples": len(indices),
                     "mst_seconds": mst_seconds, "mst_cells_timed": timed,
                     "edge_phi1_seconds": edge_seconds, "edge_phi_weight_seconds": weight_seconds,
                     "speedup_vs_phi1": mst_seconds / edge_seconds, "goal_17x": mst_seconds / edge_seconds >= 17,
                     "paper_mst_seconds": paper[0], "paper_edge_phi1_seconds": paper[1],
                     "paper_edge_phi_weight_seconds": paper[2],
                     "paper_speedup": paper[0] / paper[1] if paper[0] else None,
                     "acmi_finite": bool(torch.isfinite(acmi).all())})
        print(f"{groups} groups: EDGE {edge_seconds:.1f} s, MST {mst_seconds:.1f} s (from {timed} cells)",
              flush=True)
    for row in rows:
        row["activation_seconds"] = activation_seconds
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


def whole_network(args, train) -> list[dict]:
    rows = []
    for name, path in (("vgg16", args.vgg_checkpoint), ("resnet56", args.resnet_checkpoint)):
        model = load_model(name, path, train.info).eval()
        score_cache.clear()
        method = create("snacs", samples_per_class=args.prune_per_class)
        started = time.perf_counter()
        result = method.prune(model, "auto", PruneData(train=train))
        total = time.perf_counter() - started
        reached = float(sparsity_of(model, result.masks))
        channel_ratio = 1 - (1 - reached) ** 0.5  # removing r of every layer's channels keeps ~(1-r)² weights
        tp_seconds = torch_pruning_seconds(model, channel_ratio, tuple(train.info.input_shape))
        rows.append({"model": name, "samples": args.prune_per_class * train.info.num_classes,
                     "snacs_seconds": total, **{k: v for k, v in result.info.items() if k.startswith("seconds_")},
                     "snacs_sparsity": reached, "torch_pruning_l1_seconds": tp_seconds,
                     "torch_pruning_ratio": channel_ratio, "ratio_to_torch_pruning": total / tp_seconds,
                     "goal_5x": total <= 5 * tp_seconds})
        print(f"{name}: SNACS {total:.1f} s (sparsity {reached:.3f}), Torch-Pruning L1 {tp_seconds:.2f} s",
              flush=True)
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data-dir", type=Path, default=SHARED)
    parser.add_argument("--groups", type=int, nargs="+", default=[16, 32, 64, 128, 256],
                        help="groups per layer (the paper's 'group size')")
    parser.add_argument("--per-class", type=int, default=200, help="samples per class of the pair study")
    parser.add_argument("--mst-cells", type=int, default=2, help="MST cells timed per group size (0: all)")
    parser.add_argument("--prune-per-class", type=int, default=50, help="SNACS scoring samples per class")
    parser.add_argument("--vgg-checkpoint", type=Path, default=None)
    parser.add_argument("--resnet-checkpoint", type=Path, default=None)
    parser.add_argument("--skip-whole", action="store_true", help="only the pair study")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--out", type=Path, default=Path(__file__).parent / "results")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    train = data.load("cifar10", "train", args.data_dir)
    pairs = pair_study(args, train)
    whole = [] if args.skip_whole else whole_network(args, train)
    pair_columns = ["groups", "filters_per_group", "cells", "mst_seconds", "mst_cells_timed", "edge_phi1_seconds",
                    "edge_phi_weight_seconds", "speedup_vs_phi1", "paper_mst_seconds", "paper_edge_phi1_seconds",
                    "paper_edge_phi_weight_seconds", "paper_speedup"]
    print_table("CMI matrix of a VGG16 conv9-shaped pair (512 x 512), seconds", pairs, pair_columns)
    whole_columns = ["model", "samples", "snacs_seconds", "seconds_activations", "seconds_cmi",
                     "seconds_constraints", "seconds_masks", "snacs_sparsity", "torch_pruning_l1_seconds",
                     "ratio_to_torch_pruning", "goal_5x"]
    if whole:
        print_table("Whole-network SNACS prune time vs Torch-Pruning L1", whole, whole_columns)
    results = {
        "benchmark": "snacs_runtime", "machine": machine(),
        "settings": {"groups": args.groups, "per_class": args.per_class, "mst_cells": args.mst_cells,
                     "prune_per_class": args.prune_per_class, "threads": args.threads,
                     "models": "trained checkpoints" if args.vgg_checkpoint else "random initialisation",
                     "shrunk": "partial CIFAR-10 (5,085 train images); MST timed on mst_cells cells per row "
                               "and extrapolated to all cells; SNACS whole-network with prune_per_class samples per "
                               "class instead of 250; one CPU thread on a shared 2-core machine"},
        "pair": pairs, "whole_network": whole,
        "paper": {"source": "SNACS README runtime table (seconds, 200 samples/class, VGG16 conv9)",
                  "claim": "EDGE >= 17x faster than MST at every group size"},
    }
    save_results(args.out / "snacs_runtime.json", results)
    text = "# SNACS runtime study\n\n## CMI matrix, VGG16 conv9-shaped pair\n\n" + markdown_table(pairs, pair_columns)
    if whole:
        text += "\n## Whole-network prune time\n\n" + markdown_table(whole, whole_columns)
    save_text(args.out / "snacs_runtime.md", text)
    print(f"wrote {args.out / 'snacs_runtime.json'}")


if __name__ == "__main__":
    main()
