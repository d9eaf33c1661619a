"""Reproduction grid for K-FAC neuron pruning (Ebrahimi & Klabjan, arXiv 2111.08577; design reconstructed in
shared/specs/kfac_pruning.md): neuron sparsity 50/70/90 %, K-FAC (β > 0) vs the β = 0 ablation, Network Slimming
(Liu et al. 2017; models with BatchNorm only) and L1-filter (Li et al. 2017) + fine-tune at the same weight budget as
K-FAC reached. Metrics: top-1 accuracy, accuracy under the shift suite, remaining params / MACs, CPU latency
(batch 1), and the final K-FAC spectral radius ρ̂ of every pruned model measured the same way (exact-expectation
factors on a fixed batch of training images, eval mode).

"Neuron sparsity" is the fraction of neurons/channels removed in every prunable layer (``budget=neurons``; the first
conv, the classifier outputs and residual streams are not prunable). L1-filter prunes every group at one uniform
ratio chosen for a weight budget, so it gets K-FAC's achieved weight sparsity at that neuron sparsity.

CPU-sized by default (stated in the JSON): subsets of Fashion-MNIST, a few epochs, one seed; ResNet-20 on the PARTIAL
CIFAR-10 with ``--models ... resnet20``. The paper's result tables could not be read (spec §6): no paper numbers
exist to put beside ours.

Run: ``python benchmarks/reproduce_kfac.py [--data-dir ../shared/data] [--epochs 6] [--train-samples 10000]``;
ResNet-20 (results committed as ``reproduce_kfac_resnet20``): ``python benchmarks/reproduce_kfac.py --models resnet20
--neuron-sparsities 0.5 --epochs 3 --train-samples 2048 --test-samples 1017 --name reproduce_kfac_resnet20``
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import machine, markdown_table, print_table, save_results, save_text  # noqa: E402

from connprune import data, methods, models  # noqa: E402
from connprune.data import ImageData  # noqa: E402
from connprune.experiments.jobs import prune_model  # noqa: E402
from connprune.graph import build as build_graph  # noqa: E402
from connprune.measure.latency import latency  # noqa: E402
from connprune.methods.kfac import diagnostic_batch, final_curvature  # noqa: E402
from connprune.train import Trainer, default_recipe  # noqa: E402

SHARED = Path(__file__).resolve().parents[1].parent / "shared" / "data"
DATA = {"lenet300-100": "fashion-mnist", "lenet5": "fashion-mnist", "resnet20": "cifar10"}
SHIFT = {"fashion-mnist": "gaussian_noise:3,fog:3", "cifar10": "gaussian_noise:3,cifar10-neg"}


def subset(images: ImageData, count: int) -> ImageData:
    count = min(count, len(images))
    return ImageData(images.images[:count], images.labels[:count], images.info, images.split)


def fresh(name: str, info: data.DatasetInfo, seed: int) -> torch.nn.Module:
    torch.manual_seed(seed)
    channels, size, _ = info.input_shape
    return models.create(name, num_classes=info.num_classes, in_channels=channels, input_size=size)


def has_batchnorm(model: torch.nn.Module) -> bool:
    return any(isinstance(m, (torch.nn.BatchNorm1d, torch.nn.BatchNorm2d)) for m in model.modules())


def hidden_units(model: torch.nn.Module, input_shape: tuple[int, int, int]) -> int:
    """Output units of every conv/linear layer except those feeding the model's output (the classifier)."""
    graph = build_graph(model, input_shape)
    return sum(model.get_submodule(n).weight.shape[0] for n in graph.layers if n not in graph.output_layers)


def describe(model_name: str, label: str, target: float, model: torch.nn.Module, metrics: dict, train: ImageData,
             shift: str, seconds: float, dense_units: int) -> dict:
    x, y = diagnostic_batch(train, 256, torch.device("cpu"))
    layers = build_graph(model, train.info.input_shape).layers
    rho = final_curvature(model, x, y, layers, "max", exact=False)["spectral_radius"]
    shifted = metrics.get("shift_acc_after", {})
    return {"model": model_name, "method": label, "neuron_sparsity_target": target,
            "neuron_sparsity": round(metrics["neuron_sparsity"], 4) if "neuron_sparsity" in metrics else None,
            "hidden_units_removed": round(1 - hidden_units(model, train.info.input_shape) / dense_units, 4),
            "weight_sparsity": round(metrics["achieved_sparsity"], 4), "accuracy": round(metrics["acc_after"], 4),
            "shift_mean_accuracy": round(shifted["mean"], 4) if shifted else None,
            "relative_robustness": round(metrics.get("relative_robustness_after", float("nan")), 4),
            "params": metrics["params_after"], "macs": metrics["macs_after"],
            "latency_ms_b1": round(latency(model, train.info.input_shape, 1, min_run_time=0.2).median_ms, 4),
            "rho_final": round(rho, 4), "seconds": round(seconds, 1)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data-dir", type=Path, default=SHARED)
    parser.add_argument("--models", nargs="+", default=["lenet300-100", "lenet5"], choices=list(DATA))
    parser.add_argument("--neuron-sparsities", type=float, nargs="+", default=[0.5, 0.7, 0.9])
    parser.add_argument("--epochs", type=int, default=6, help="training budget of every method")
    parser.add_argument("--finetune-epochs", type=int, default=1, help="L1-filter fine-tune after a dense run")
    parser.add_argument("--train-samples", type=int, default=10000)
    parser.add_argument("--test-samples", type=int, default=4000)
    parser.add_argument("--name", default="reproduce_kfac", help="stem of the results files")
    parser.add_argument("--betas", type=float, nargs="+", default=[1e-3, 1e-2], help="β_max values (> 0)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--out", type=Path, default=Path(__file__).parent / "results")
    parser.add_argument("--full", action=argparse.BooleanOptionalAction, default=torch.cuda.is_available(),
                        help="paper-sized run (all three models, complete data, 40 epochs); default: on with a GPU")
    args = parser.parse_args()
    if args.full:
        args.models, args.epochs, args.finetune_epochs = list(DATA), 40, 10
        args.train_samples = args.test_samples = 10**9
    torch.set_num_threads(args.threads)
    rows = []
    for model_name in args.models:
        data_name = DATA[model_name]
        train = subset(data.load(data_name, "train", args.data_dir), args.train_samples)
        test = subset(data.load(data_name, "test", args.data_dir), args.test_samples)
        shift = SHIFT[data_name]
        dense = fresh(model_name, train.info, args.seed)
        Trainer(dense, train, test, default_recipe(data_name, epochs=args.epochs, seed=args.seed),
                progress=False).fit()
        dense_state = {k: v.clone() for k, v in dense.state_dict().items()}
        dense_units = hidden_units(dense, train.info.input_shape)
        for target in args.neuron_sparsities:
            kfac_weight_sparsity = None
            candidates = [("kfac", f"kfac (β={beta:g})", {"beta": beta, "budget": "neurons"}) for beta in args.betas]
            candidates += [("kfac", "kfac β=0 (ablation)", {"beta": 0.0, "budget": "neurons"}),
                          ("network-slimming", "network-slimming", {"budget": "neurons", "l1": 1e-5})]
            for method_name, label, params in candidates:
                model = fresh(model_name, train.info, args.seed)
                if method_name == "network-slimming" and not has_batchnorm(model):
                    rows.append({"model": model_name, "method": label, "neuron_sparsity_target": target,
                                 "note": "n/a: no BatchNorm in this model"})
                    continue
                started = time.perf_counter()
                method = methods.create(method_name, seed=args.seed, **params)
                pruned, _, metrics = prune_model(model, method, target, train, test, train_epochs=args.epochs,
                                                 shift=shift, data_dir=args.data_dir, seed=args.seed, progress=False)
                rows.append(describe(model_name, label, target, pruned, metrics, train, shift,
                                     time.perf_counter() - started, dense_units))
                if method_name == "kfac" and params["beta"] == args.betas[0]:
                    kfac_weight_sparsity = metrics["achieved_sparsity"]
                print(rows[-1])
            model = fresh(model_name, train.info, args.seed)
            model.load_state_dict(dense_state)
            started = time.perf_counter()
            method = methods.create("l1-filter", seed=args.seed, round_to=1)
            pruned, _, metrics = prune_model(model, method, kfac_weight_sparsity, train, test,
                                             train_epochs=args.finetune_epochs, shift=shift, data_dir=args.data_dir,
                                             seed=args.seed, progress=False)
            row = describe(model_name, f"l1-filter + {args.finetune_epochs} ep FT", target, pruned, metrics, train,
                           shift, time.perf_counter() - started, dense_units)
            row["note"] = ("dense model trained --epochs, pruned to kfac's weight sparsity at one uniform ratio over "
                           "every hidden layer (first conv included), then fine-tuned")
            rows.append(row)
            print(rows[-1])
    columns = ["model", "method", "neuron_sparsity_target", "neuron_sparsity", "hidden_units_removed",
               "weight_sparsity", "accuracy",
               "shift_mean_accuracy", "params", "macs", "latency_ms_b1", "rho_final", "seconds", "note"]
    print_table("K-FAC neuron pruning vs baselines (CPU-sized)", rows, columns)
    settings = {"models": args.models, "epochs": args.epochs, "finetune_epochs_l1_filter": args.finetune_epochs,
                "train_samples": args.train_samples, "test_samples": args.test_samples, "betas": args.betas,
                "seed": args.seed, "threads": args.threads, "shift": SHIFT, "full": args.full,
                "shrunk": "data subsets, a few epochs, one seed (shared 2-core CPU); CIFAR-10 here is PARTIAL",
                "dense_epochs_for_l1_filter": args.epochs}
    paper = "not available: the paper's tables could not be read (kfac_pruning.md §6); no numbers to compare"
    save_results(args.out / f"{args.name}.json", {"benchmark": args.name, "machine": machine(),
                                                    "settings": settings, "paper": paper, "rows": rows})
    save_text(args.out / f"{args.name}.md", "# K-FAC neuron pruning reproduction (CPU-sized)\n\n"
              f"Settings: {settings}\n\nPaper: {paper}\n\n" + markdown_table(rows, columns))
    _plot(rows, args.out / f"{args.name}.png")


def _plot(rows: list[dict], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    models_seen = sorted({r["model"] for r in rows})
    figure, axes = plt.subplots(1, len(models_seen), figsize=(5 * len(models_seen), 3.5), squeeze=False)
    for axis, model_name in zip(axes[0], models_seen):
        for label in sorted({r["method"] for r in rows if r["model"] == model_name and "accuracy" in r}):
            points = [(r["neuron_sparsity_target"], r["accuracy"]) for r in rows
                      if r["model"] == model_name and r["method"] == label and "accuracy" in r]
            axis.plot(*zip(*points), "o-", label=label)
        axis.set_title(model_name)
        axis.set_xlabel("neuron sparsity")
        axis.set_ylabel("test accuracy")
        axis.legend(fontsize=7)
    figure.tight_layout()
    figure.savefig(path, dpi=120)


if __name__ == "__main__":
    main()
