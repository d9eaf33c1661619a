"""Every baseline on LeNet-5 / Fashion-MNIST (the full data in ../shared/data) at 50/80/90/95 % sparsity.

A dense LeNet-5 is trained once; each method that prunes a trained model (random, magnitude, l1-filter) prunes it and
fine-tunes briefly with the masks enforced; SNIP prunes a fresh initialisation and trains the sparse net for as many
epochs as the dense model got plus the fine-tune. Accuracy table (printed, JSON, Markdown) and an
accuracy-vs-sparsity plot.

Run: ``python benchmarks/baselines_fmnist.py [--data-dir ../shared/data] [--epochs 3] [--finetune-epochs 1]``
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import machine, print_table, save_results  # noqa: E402

from connprune.experiments.jobs import PruneJob, TrainJob, prune_job, train_dense  # noqa: E402
from connprune.experiments.plots import accuracy_vs_sparsity  # noqa: E402
from connprune.utils.io import atomic_path  # noqa: E402

SHARED = Path(__file__).resolve().parents[1].parent / "shared" / "data"
METHODS = [("random", {}), ("magnitude", {"scope": "global"}), ("magnitude", {"scope": "layer"}),
           ("l1-filter", {"round_to": 1}), ("snip", {})]


def label(method: str, params: dict) -> str:
    return method + (f" ({params['scope']})" if "scope" in params else "")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data-dir", type=Path, default=SHARED)
    parser.add_argument("--epochs", type=int, default=3, help="dense training epochs")
    parser.add_argument("--finetune-epochs", type=int, default=1)
    parser.add_argument("--sparsities", type=float, nargs="+", default=[0.5, 0.8, 0.9, 0.95])
    parser.add_argument("--threads", type=int, default=2, help="torch intra-op threads")
    parser.add_argument("--out", type=Path, default=Path(__file__).parent / "results")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    rows = []
    with tempfile.TemporaryDirectory() as scratch:
        dense_dir = Path(scratch) / "dense"
        dense = train_dense(TrainJob(model="lenet5", data="fashion-mnist", out=dense_dir, data_dir=args.data_dir,
                                     recipe={"epochs": args.epochs}, progress=False))
        print(f"dense LeNet-5: accuracy {dense['accuracy']:.4f} after {args.epochs} epochs")
        for method, params in METHODS:
            for sparsity in args.sparsities:
                started = time.perf_counter()
                at_init = method == "snip"
                metrics = prune_job(PruneJob(
                    method=method, sparsity=sparsity, out=Path(scratch) / f"{method}-{sparsity}", params=params,
                    checkpoint=None if at_init else dense_dir, model="lenet5" if at_init else None,
                    data="fashion-mnist", epochs=args.epochs + args.finetune_epochs if at_init else None,
                    finetune_epochs=0 if at_init else args.finetune_epochs, data_dir=args.data_dir, progress=False))
                rows.append({"method": label(method, params), "sparsity": sparsity,
                             "achieved": round(metrics["achieved_sparsity"], 4),
                             "acc_pruned_no_ft": None if at_init else round(metrics["acc_pruned"], 4),
                             "acc_after": round(metrics["acc_after"], 4), "params_after": metrics["params_after"],
                             "macs_after": metrics["macs_after"], "seconds": round(time.perf_counter() - started, 1)})
                print(rows[-1])
    print_table(f"LeNet-5 on Fashion-MNIST (dense {dense['accuracy']:.4f})", rows)
    args.out.mkdir(parents=True, exist_ok=True)
    accuracy_vs_sparsity(
        {m: [(r["achieved"], r["acc_after"]) for r in rows if r["method"] == m] for m in {r["method"] for r in rows}},
        args.out / "baselines_fmnist.png", dense=dense["accuracy"],
        title="LeNet-5 / Fashion-MNIST: baselines after a short fine-tune")
    save_results(args.out / "baselines_fmnist.json", {
        "benchmark": "baselines_fmnist", "machine": machine(),
        "settings": {"threads": args.threads, "model": "lenet5", "data": "fashion-mnist (complete, 60k/10k)",
                     "dense_epochs": args.epochs,
                     "finetune_epochs": args.finetune_epochs,
                     "snip_epochs": args.epochs + args.finetune_epochs},
        "dense_accuracy": dense["accuracy"], "rows": rows})
    lines = ["| method | target | achieved | acc (no FT) | acc after | params | MACs |",
             "|---|---|---|---|---|---|---|"]
    lines += [f"| {r['method']} | {r['sparsity']} | {r['achieved']} | {r['acc_pruned_no_ft']} | {r['acc_after']} | "
              f"{r['params_after']} | {r['macs_after']} |" for r in rows]
    with atomic_path(args.out / "baselines_fmnist.md") as tmp:
        tmp.write_text(f"# Baselines on LeNet-5 / Fashion-MNIST\n\nDense accuracy {dense['accuracy']:.4f}.\n\n"
                       + "\n".join(lines) + "\n\n![accuracy vs sparsity](baselines_fmnist.png)\n")


if __name__ == "__main__":
    main()
