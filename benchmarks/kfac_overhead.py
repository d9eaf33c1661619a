"""Cost of the K-FAC flatness penalty, and how close its spectral radius is to the exact one.

1. Training time per epoch with the K-FAC statistics and the β·ρ̂ penalty (default T_stat = 10, T_eig = 50,
   fisher = mc, g_mode = A_only; no pruning so both runs do the same work otherwise) vs plain training with the same
   Trainer, for the MLP (256-128), LeNet-5 and ResNet-20. Goal of issue 8: ≤ 1.5× plain training.
2. Along training of the MLP with β > 0: the K-FAC estimate ρ̂ = max_l λmax(A)·λmax(G) (exact-expectation factors on a
   fixed batch, eval mode) beside the exact top eigenvalue of the GGN by Lanczos on GGN-vector products.

CPU-sized defaults (stated in the JSON): training subsets of Fashion-MNIST (MLP, LeNet-5) and of the PARTIAL
CIFAR-10 here (ResNet-20); the median of ``--repeats`` epochs after one untimed warm-up epoch. Epochs of a few dozen
steps amortise the T_eig eigen-decompositions less than full-data epochs do (the ratio is pessimistic).

Run: ``python benchmarks/kfac_overhead.py [--data-dir ../shared/data] [--train-samples 4096] [--trace-epochs 6]``
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import machine, markdown_table, print_table, save_results, save_text  # noqa: E402

from connprune import data, models  # noqa: E402
from connprune.data import ImageData  # noqa: E402
from connprune.methods.kfac import KFACParams, diagnostic_batch, final_curvature, train_and_prune  # noqa: E402
from connprune.train import Trainer, default_recipe  # noqa: E402
from connprune.train.trainer import TrainHook  # noqa: E402

SHARED = Path(__file__).resolve().parents[1].parent / "shared" / "data"
CASES = [("mlp", "fashion-mnist"), ("lenet5", "fashion-mnist"), ("resnet20", "cifar10")]


def subset(images: ImageData, count: int) -> ImageData:
    """The first ``count`` samples (a fixed, honest shrink of the data set)."""
    count = min(count, len(images))
    return ImageData(images.images[:count], images.labels[:count], images.info, images.split)


def build(name: str, info: data.DatasetInfo, seed: int = 0) -> torch.nn.Module:
    torch.manual_seed(seed)
    channels, size, _ = info.input_shape
    return models.create(name, num_classes=info.num_classes, in_channels=channels, input_size=size)


class _EpochTimer(TrainHook):
    """Wall time of each epoch; the first (warm-up: allocator, thread pools, first eigh) is dropped."""

    def __init__(self) -> None:
        self.marks: list[float] = []

    def on_train_start(self, trainer) -> None:  # noqa: ANN001
        self.marks = [time.perf_counter()]

    def on_epoch_end(self, trainer, epoch, metrics) -> None:  # noqa: ANN001
        self.marks.append(time.perf_counter())

    def median(self) -> float:
        times = [b - a for a, b in zip(self.marks, self.marks[1:])][1:]
        return statistics.median(times)


class _TraceHook(TrainHook):
    """ρ̂ (K-FAC) and exact λmax(GGN) on a fixed batch at every epoch end."""

    def __init__(self, x: torch.Tensor, y: torch.Tensor, layers: list[str]) -> None:
        self.x, self.y, self.layers, self.rows = x, y, layers, []

    def on_epoch_end(self, trainer, epoch, metrics) -> None:  # noqa: ANN001
        values = final_curvature(trainer.model, self.x, self.y, self.layers, "max", exact=True)
        self.rows.append({"epoch": epoch, "kfac_rho": values["spectral_radius"],
                          "exact_ggn_lambda_max": values["exact_ggn_lambda_max"],
                          "ratio": values["spectral_radius"] / values["exact_ggn_lambda_max"],
                          "test_accuracy": metrics.get("test_accuracy")})
        print(self.rows[-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data-dir", type=Path, default=SHARED)
    parser.add_argument("--train-samples", type=int, default=8192, help="training subset per model")
    parser.add_argument("--cifar-samples", type=int, default=2048, help="training subset for ResNet-20")
    parser.add_argument("--repeats", type=int, default=2, help="timed epochs after one untimed warm-up epoch")
    parser.add_argument("--trace-epochs", type=int, default=6)
    parser.add_argument("--trace-samples", type=int, default=256, help="batch for ρ̂ and exact λmax")
    parser.add_argument("--beta", type=float, default=1e-3)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--out", type=Path, default=Path(__file__).parent / "results")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    rows = []
    for name, data_name in CASES:
        train = data.load(data_name, "train", args.data_dir)
        train = subset(train, args.cifar_samples if data_name == "cifar10" else args.train_samples)
        recipe = default_recipe(data_name, epochs=1 + args.repeats)
        plain_timer, kfac_timer = _EpochTimer(), _EpochTimer()
        Trainer(build(name, train.info), train, None, recipe, hooks=[plain_timer], progress=False).fit()
        params = KFACParams(beta=args.beta, prune_start=0.0, prune_end=1.0, diagnostic_samples=8)
        # sparsity 0: the schedule keeps every neuron, so only the penalty and statistics differ from plain training
        _, _, info = train_and_prune(build(name, train.info), train, None, recipe, 0.0, params, hooks=[kfac_timer])
        plain, with_penalty = plain_timer.median(), kfac_timer.median()
        rows.append({"model": name, "data": data_name, "samples": len(train), "steps_per_epoch": -(-len(train) // 128),
                     "plain_s_per_epoch": round(plain, 3), "kfac_s_per_epoch": round(with_penalty, 3),
                     "ratio": round(with_penalty / plain, 3),
                     "kfac_stats_penalty_s_all_epochs": round(info["penalty_seconds"], 2),
                     "goal_met": with_penalty / plain <= 1.5})
        print(rows[-1])
    print_table("Training time per epoch: K-FAC penalty vs plain (T_stat=10, T_eig=50)", rows)

    train = subset(data.load("fashion-mnist", "train", args.data_dir), args.train_samples)
    test = subset(data.load("fashion-mnist", "test", args.data_dir), 2000)
    model = build("mlp", train.info)
    x, y = diagnostic_batch(train, args.trace_samples, torch.device("cpu"))
    layers = ["features.0", "features.2", "classifier"]
    trace = _TraceHook(x, y, layers)
    params = KFACParams(beta=args.beta, prune_start=0.0, prune_end=1.0, diagnostic_samples=8)
    train_and_prune(model, train, test, default_recipe("fashion-mnist", epochs=args.trace_epochs), 0.0, params,
                    hooks=[trace])
    print_table("MLP on Fashion-MNIST: K-FAC ρ̂ vs exact λmax(GGN) along training", trace.rows)

    args.out.mkdir(parents=True, exist_ok=True)
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    figure, axis = plt.subplots(figsize=(5, 3.5))
    epochs = [r["epoch"] for r in trace.rows]
    axis.plot(epochs, [r["kfac_rho"] for r in trace.rows], "o-", label="K-FAC ρ̂ = max_l λ(A)λ(G)")
    axis.plot(epochs, [r["exact_ggn_lambda_max"] for r in trace.rows], "s-", label="exact λmax(GGN), Lanczos")
    axis.set_xlabel("epoch")
    axis.set_ylabel("top eigenvalue")
    axis.set_title("MLP / Fashion-MNIST subset")
    axis.legend()
    figure.tight_layout()
    figure.savefig(args.out / "kfac_overhead.png", dpi=120)
    settings = {"threads": args.threads, "train_samples": args.train_samples, "cifar_samples": args.cifar_samples,
                "cifar10": "PARTIAL CIFAR-10 (5,085 train / 1,017 test) and only a subset of it",
                "timed_epochs": f"median of {args.repeats} after 1 warm-up epoch", "beta": args.beta,
                "stat_every": 10, "eig_every": 50, "eigh_max_dim": KFACParams().eigh_max_dim, "fisher": "mc",
                "g_mode": "A_only", "trace_epochs": args.trace_epochs, "trace_samples": args.trace_samples,
                "shrunk": "data subsets and the median of a few short epochs instead of full-data epochs "
                          "(shared 2-core CPU; see machine.load_average)"}
    paper = "the paper reports no runtime numbers that we could read (spec §5-6); goal from issue 8: ratio ≤ 1.5"
    save_results(args.out / "kfac_overhead.json", {"benchmark": "kfac_overhead", "machine": machine(),
                                                   "settings": settings, "paper": paper, "overhead": rows,
                                                   "trace": trace.rows})
    save_text(args.out / "kfac_overhead.md",
              "# K-FAC penalty overhead\n\n" + f"Settings: {settings}\n\n" + markdown_table(rows)
              + "\n## K-FAC ρ̂ vs exact λmax(GGN), MLP\n\n" + markdown_table(trace.rows)
              + f"\n{paper}\n\n![trace](kfac_overhead.png)\n")


if __name__ == "__main__":
    main()
