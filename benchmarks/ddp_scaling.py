"""Data-parallel scaling: ResNet-20 training images/s with 1 and 2 Gloo processes on CPU, and 1..N GPUs (NCCL).

Each configuration is a real ``torchrun --standalone`` launch of connprune's ``Trainer`` (``DistributedDataParallel``,
sharded batches, gradient all-reduce) on 32×32 images: the partial CIFAR-10 in ../shared/data when found, else
random tensors of the same shape. Weak scaling: every process keeps the same per-process batch, so the global batch
grows with the process count. The first ``--warmup`` optimiser steps are not timed; images/s counts the global
batch over the remaining steps (rank 0's clock; the all-reduce keeps the ranks in step). On the CPU each process
gets one intra-op thread, so 2 processes use 2 cores; efficiency = images/s(k) / (k × images/s(1)).

Run: ``python benchmarks/ddp_scaling.py [--steps 24] [--batch-size 32] [--gpu-steps 60] [--gpu-batch-size 128]``
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import machine, print_table, save_results  # noqa: E402

SHARED = Path(__file__).resolve().parents[1].parent / "shared" / "data"


def worker(args: argparse.Namespace) -> None:
    """One rank of a timed run (started by torchrun)."""
    from connprune import data
    from connprune.experiments.jobs import build_model
    from connprune.train import Trainer, TrainHook, default_recipe, distributed

    cuda = args.device == "cuda"
    if not cuda:
        torch.set_num_threads(1)
    distributed.init_from_env(backend="nccl" if cuda else "gloo")
    world = distributed.world_size()
    global_batch = args.batch_size * world
    samples = global_batch * args.steps
    if data.find("cifar10", args.data_dir).available:
        full = data.load("cifar10", "train", args.data_dir)
        reps = -(-samples // len(full))
        images, labels = full.images.repeat(reps, 1, 1, 1)[:samples], full.labels.repeat(reps)[:samples]
        info = full.info
    else:
        info = data.info("cifar10")
        generator = torch.Generator().manual_seed(0)
        images = torch.randint(0, 256, (samples, 3, 32, 32), dtype=torch.uint8, generator=generator)
        labels = torch.randint(0, 10, (samples,), generator=generator)
    train = data.ImageData(images.contiguous(), labels.contiguous(), info, "train")

    class Clock(TrainHook):
        def __init__(self) -> None:
            self.times: list[float] = []

        def after_step(self, trainer: Trainer) -> None:
            if cuda:
                torch.cuda.synchronize()
            self.times.append(time.perf_counter())

    clock = Clock()
    model = build_model("resnet20", info, seed=0)
    recipe = default_recipe("cifar10", epochs=1, batch_size=global_batch)
    device = torch.device("cuda") if cuda else torch.device("cpu")
    Trainer(model, train, None, recipe, hooks=[clock], progress=False, device=device).fit()
    timed = clock.times[args.warmup - 1:]
    rate = global_batch * (len(timed) - 1) / (timed[-1] - timed[0])
    if distributed.is_main():
        Path(args.result).write_text(json.dumps({"images_per_s": rate, "global_batch": global_batch,
                                                 "timed_steps": len(timed) - 1}))


def launch(processes: int, device: str, batch_size: int, steps: int, warmup: int, data_dir: Path) -> dict:
    with tempfile.TemporaryDirectory() as scratch:
        result = Path(scratch) / "result.json"
        env = {**os.environ, "OMP_NUM_THREADS": "1"} if device == "cpu" else dict(os.environ)
        if device == "cpu":
            env["CUDA_VISIBLE_DEVICES"] = ""
        command = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={processes}",
                   __file__, "--worker", "--device", device, "--batch-size", str(batch_size), "--steps", str(steps),
                   "--warmup", str(warmup), "--data-dir", str(data_dir), "--result", str(result)]
        done = subprocess.run(command, env=env, capture_output=True, text=True)
        if done.returncode != 0:
            raise SystemExit(f"{processes} × {device} failed:\n{done.stdout[-2000:]}\n{done.stderr[-4000:]}")
        return json.loads(result.read_text())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data-dir", type=Path, default=SHARED)
    parser.add_argument("--batch-size", type=int, default=32, help="per-process batch on the CPU")
    parser.add_argument("--steps", type=int, default=24, help="optimiser steps per CPU run (warm-up included)")
    parser.add_argument("--warmup", type=int, default=3)
    parser.add_argument("--rounds", type=int, default=2, help="CPU runs per process count (best kept)")
    parser.add_argument("--gpu-batch-size", type=int, default=128, help="per-GPU batch")
    parser.add_argument("--gpu-steps", type=int, default=60)
    parser.add_argument("--out", type=Path, default=Path(__file__).parent / "results" / "ddp_scaling.json")
    parser.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--device", default="cpu", help=argparse.SUPPRESS)
    parser.add_argument("--result", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker:
        worker(args)
        return

    plans = [("cpu (gloo)", "cpu", k, args.batch_size, args.steps) for k in (1, 2)]
    if torch.cuda.is_available():
        plans += [("cuda (nccl)", "cuda", k, args.gpu_batch_size, args.gpu_steps)
                  for k in range(1, torch.cuda.device_count() + 1)]
    rows = []
    for label, device, k, batch, steps in plans:
        rounds = args.rounds if device == "cpu" else 1
        runs = [launch(k, device, batch, steps, args.warmup, args.data_dir) for _ in range(rounds)]
        rates = [r["images_per_s"] for r in runs]
        rows.append({"backend": label, "processes": k, "global batch": runs[0]["global_batch"],
                     "images/s": round(max(rates), 1), "all rounds": [round(r, 1) for r in rates]})
    for row in rows:
        base = next(r for r in rows if r["backend"] == row["backend"] and r["processes"] == 1)["images/s"]
        row["speed-up"] = round(row["images/s"] / base, 3)
        row["efficiency"] = round(row["images/s"] / (row["processes"] * base), 3)
    print_table(f"ResNet-20 DDP training throughput (per-process batch {args.batch_size} on CPU, "
                f"{args.gpu_batch_size} per GPU)", [{k: v for k, v in r.items() if k != "all rounds"} for r in rows])
    for row in rows:
        if row["processes"] > 1:
            print(f"{row['backend']}: {row['processes']} processes, scaling efficiency {row['efficiency']:.1%}")
    from connprune import data

    save_results(args.out, {
        "benchmark": "ddp_scaling", "machine": machine(),
        "settings": {"cpu_batch_per_process": args.batch_size, "cpu_steps": args.steps, "warmup": args.warmup,
                     "rounds": args.rounds, "gpu_batch_per_process": args.gpu_batch_size,
                     "gpu_steps": args.gpu_steps, "threads_per_cpu_process": 1,
                     "data": "cifar10 (partial, ../shared/data)" if data.find("cifar10", args.data_dir).available
                     else "random 3×32×32 tensors"},
        "results": rows,
    })


if __name__ == "__main__":
    main()
