"""Data and training throughput: our loader + trainer vs a bare PyTorch loop, and data set load times.

1. Images/s training ResNet-20 on 32×32 CIFAR-10 images (the partial set in ../shared/data if found, else random
   tensors of the same shape) with connprune's ``Trainer`` (batch pipeline with augmentation, progress, hooks) and
   with a bare loop over pre-loaded, pre-normalised tensors (no augmentation), same model, optimiser and batch size,
   rounds interleaved. Goal: ours ≥ 0.9 × bare.
2. Time to load each real data set from ../shared/data the first time (decode + write the cache) and from the
   cache, using a scratch data dir of symlinks so the shared folder is not written to.

Run: ``python benchmarks/data_and_training.py [--data-dir ../shared/data] [--steps 40] [--rounds 3]``
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from pathlib import Path

import torch
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import machine, print_table, save_results  # noqa: E402

from connprune import data  # noqa: E402
from connprune.data.pipeline import normalize  # noqa: E402
from connprune.experiments.jobs import build_model  # noqa: E402
from connprune.train import Trainer, default_recipe  # noqa: E402

SHARED = Path(__file__).resolve().parents[1].parent / "shared" / "data"


def cifar_subset(data_dir: Path, samples: int) -> data.ImageData:
    if data.find("cifar10", data_dir).available:
        full = data.load("cifar10", "train", data_dir)
    else:  # random images of the right shape: throughput does not depend on pixel values
        info = data.info("cifar10")
        full = data.ImageData(torch.randint(0, 256, (samples, 3, 32, 32), dtype=torch.uint8),
                              torch.randint(0, 10, (samples,)), info, "train")
    return data.ImageData(full.images[:samples].contiguous(), full.labels[:samples].contiguous(), full.info, "train")


def ours(train: data.ImageData, batch_size: int) -> float:
    model = build_model("resnet20", train.info, seed=0)
    recipe = default_recipe("cifar10", epochs=1, batch_size=batch_size)
    trainer = Trainer(model, train, None, recipe, progress=False)
    started = time.perf_counter()
    trainer.fit()
    return len(train) / (time.perf_counter() - started)


def bare(train: data.ImageData, batch_size: int) -> float:
    model = build_model("resnet20", train.info, seed=0).train()
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9, weight_decay=5e-4)
    images, labels = normalize(train.images, train.info), train.labels
    started = time.perf_counter()
    for start in range(0, len(labels), batch_size):
        x, y = images[start : start + batch_size], labels[start : start + batch_size]
        loss = F.cross_entropy(model(x), y)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
    return len(labels) / (time.perf_counter() - started)


def load_times(shared: Path) -> list[dict]:
    rows = []
    with tempfile.TemporaryDirectory() as scratch:
        for entry in shared.iterdir():
            if entry.is_dir():
                (Path(scratch) / entry.name).symlink_to(entry.resolve())
        for name in data.names():
            if name != "digits" and not data.find(name, scratch).available:
                continue
            splits = ["test"] if data.info(name).shift_only else ["train", "test"]
            timings = {}
            for attempt in ("first", "cached"):
                started = time.perf_counter()
                loaded = [data.load(name, split, scratch) for split in splits]
                timings[attempt] = time.perf_counter() - started
            rows.append({"data set": name, "images": sum(len(d) for d in loaded),
                         "first load s": round(timings["first"], 3), "cached load s": round(timings["cached"], 3)})
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data-dir", type=Path, default=SHARED)
    parser.add_argument("--samples", type=int, default=2048, help="training images per timed epoch")
    parser.add_argument("--batch-size", type=int, default=128)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--skip-load", action="store_true", help="skip the data set load timings")
    parser.add_argument("--out", type=Path, default=Path(__file__).parent / "results" / "data_and_training.json")
    args = parser.parse_args()
    torch.set_num_threads(2)
    train = cifar_subset(args.data_dir, args.samples)
    ours(data.ImageData(train.images[:256], train.labels[:256], train.info, "train"), args.batch_size)  # warm-up
    rates = {"ours": [], "bare": []}
    for _ in range(args.rounds):  # interleaved, so machine noise hits both alike
        rates["ours"].append(ours(train, args.batch_size))
        rates["bare"].append(bare(train, args.batch_size))
    median = {k: statistics.median(v) for k, v in rates.items()}
    ratio = median["ours"] / median["bare"]
    throughput = [{"loop": k, "images/s (median)": round(median[k], 1),
                   "min": round(min(v), 1), "max": round(max(v), 1)} for k, v in rates.items()]
    print_table("ResNet-20 training throughput, 32×32, batch %d" % args.batch_size, throughput)
    print(f"ours / bare = {ratio:.3f} (goal ≥ 0.9: {'met' if ratio >= 0.9 else 'NOT met'})")
    loads = [] if args.skip_load else load_times(args.data_dir)
    if loads:
        print_table("data set load times (first: decode + cache; cached: from the cache)", loads)
    save_results(args.out, {
        "benchmark": "data_and_training", "machine": machine(),
        "settings": {"samples": len(train), "batch_size": args.batch_size, "rounds": args.rounds,
                     "data": "cifar10 (partial, ../shared/data)" if data.find("cifar10", args.data_dir).available
                     else "random 3×32×32 tensors"},
        "throughput": throughput, "ratio_ours_over_bare": ratio,
        "goals": {"ours >= 0.9 x bare": ratio >= 0.9}, "load_times": loads,
    })


if __name__ == "__main__":
    main()
