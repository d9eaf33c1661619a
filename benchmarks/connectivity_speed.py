"""Speed and memory of GC-Net's connectivity pass (:mod:`connprune.measure.connectivity`).

For ResNet-18 on 64×64 inputs (Tiny ImageNet size, torchvision stem) and VGG-16 on 32×32 (CIFAR size), with
``--per-class`` probe samples for each of ``--classes`` classes (random images: timings do not depend on the
content), this measures

- one plain forward pass over the probe set (same batches, no hooks), the unit of cost;
- the whole-network connectivity pass (every ghost layer; its own forward pass included), and its ratio to the plain
  pass (goal from the issue: ≤ 3 forward passes);
- the peak resident-memory increase of each (sampled from ``/proc/self/statm``), next to what storing every hooked
  activation at full resolution would take (what the streaming reduction avoids);
- the vectorised estimator against the naive per-pair ``np.corrcoef`` loop (the test oracle) on one small layer:
  time of both and their largest difference.

Defaults are CPU-sized: 10 classes × 100 samples (the issue's 100 per class; Tiny ImageNet has 200 classes, pass
``--classes 200`` on a bigger machine). Run: ``python benchmarks/connectivity_speed.py [--per-class 100]``
"""

from __future__ import annotations

import argparse
import os
import sys
import threading
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import machine, markdown_table, print_table, save_results, save_text  # noqa: E402

from connprune import data, graph, models  # noqa: E402
from connprune.data import ImageData  # noqa: E402
from connprune.data.pipeline import Batches  # noqa: E402
from connprune.measure import connectivity as cn  # noqa: E402

CASES = [("resnet18", dict(input_size=64), (3, 64, 64), "tiny-imagenet"),
         ("vgg16", dict(input_size=32), (3, 32, 32), "cifar10")]


class PeakRss:
    """Peak resident set size (bytes) above the level at entry, sampled every few milliseconds."""

    def __init__(self, interval: float = 0.002) -> None:
        self.interval = interval
        self.page = os.sysconf("SC_PAGE_SIZE")
        self.peak = 0
        self._stop = threading.Event()

    def _rss(self) -> int:
        with open("/proc/self/statm") as f:
            return int(f.read().split()[1]) * self.page

    def _watch(self) -> None:
        while not self._stop.is_set():
            self.peak = max(self.peak, self._rss() - self.base)
            time.sleep(self.interval)

    def __enter__(self) -> PeakRss:
        self.base = self._rss()
        self._thread = threading.Thread(target=self._watch, daemon=True)
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()
        self.peak = max(self.peak, self._rss() - self.base)


def probe_data(shape: tuple[int, int, int], classes: int, per_class: int, info_name: str) -> ImageData:
    generator = torch.Generator().manual_seed(0)
    n = classes * per_class
    images = torch.randint(0, 256, (n, *shape), generator=generator, dtype=torch.uint8)
    labels = torch.arange(n) % classes
    info = data.info(info_name)
    from dataclasses import replace
    return ImageData(images, labels, replace(info, num_classes=classes, input_shape=shape), "train")


def full_resolution_bytes(model: torch.nn.Module, layers: list[cn.GhostLayer], example: torch.Tensor,
                          samples: int) -> int:
    """Bytes (float32) of every conv/linear output for ``samples`` inputs: storing activations unreduced."""
    sizes = []
    modules = dict(model.named_modules())
    names = {layer.child for layer in layers} | {p for layer in layers for p in layer.parents}
    handles = [modules[n].register_forward_hook(lambda m, a, o: sizes.append(o[0].numel())) for n in names]
    with torch.no_grad():
        model(example[:1])
    for handle in handles:
        handle.remove()
    return 4 * samples * sum(sizes)


def plain_forward(model: torch.nn.Module, probe: ImageData, batch_size: int) -> float:
    started = time.perf_counter()
    with torch.no_grad():
        for x, _ in Batches(probe, batch_size):
            model(x)
    return time.perf_counter() - started


def run_case(name: str, config: dict, shape: tuple[int, int, int], info_name: str, args: argparse.Namespace) -> dict:
    torch.manual_seed(0)
    model = models.create(name, num_classes=args.classes, **config).eval()
    g = graph.build(model, shape)
    layers = cn.ghost_layers(g)
    probe = probe_data(shape, args.classes, args.per_class, info_name)
    plain_forward(model, ImageData(probe.images[: args.batch_size], probe.labels[: args.batch_size], probe.info,
                                   "train"), args.batch_size)  # warm-up
    with PeakRss() as forward_memory:
        forward_seconds = plain_forward(model, probe, args.batch_size)
    with PeakRss() as pass_memory:
        result = cn.network_connectivity(model, probe, g, layers=layers, per_class=args.per_class,
                                         batch_size=args.batch_size)
    statistics = sum(layer.units * layer.channels * 8 * 2 for layer in layers)  # sums + running total, float64
    example = torch.zeros(1, *shape)
    return {
        "model": name, "input": "x".join(map(str, shape)), "classes": args.classes, "per_class": args.per_class,
        "ghost_layers": len(layers), "ghost_entries": sum(layer.units * layer.channels for layer in layers),
        "forward_s": round(forward_seconds, 3), "connectivity_s": round(result.seconds, 3),
        "of_which_forward_s": round(result.forward_seconds, 3),
        "ratio_to_forward": round(result.seconds / forward_seconds, 3),
        "goal_le_3_forwards": result.seconds <= 3 * forward_seconds,
        "forward_peak_mib": round(forward_memory.peak / 2**20, 1),
        "connectivity_peak_mib": round(pass_memory.peak / 2**20, 1),
        "statistics_mib": round(statistics / 2**20, 1),
        "full_resolution_activations_mib": round(full_resolution_bytes(model, layers, example,
                                                                       args.classes * args.per_class) / 2**20, 1),
    }


def naive_loop(parent: np.ndarray, child: np.ndarray, labels: np.ndarray, guard: float = 1e-3) -> np.ndarray:
    out = np.zeros((child.shape[1], parent.shape[1]))
    classes = sorted(set(labels.tolist()))
    for c in classes:
        a, b = parent[labels == c], child[labels == c]
        for j in range(child.shape[1]):
            for i in range(parent.shape[1]):
                if a[:, i].std() >= guard and b[:, j].std() >= guard:
                    out[j, i] += abs(np.corrcoef(a[:, i], b[:, j])[0, 1])
    return out / len(classes)


def naive_comparison(args: argparse.Namespace) -> dict:
    """Vectorised vs naive on a 64 → 64-unit layer pair (VGG-16's first pair) with the same probe size."""
    generator = torch.Generator().manual_seed(1)
    n = args.classes * args.per_class
    parent = torch.relu(torch.randn(n, 64, generator=generator, dtype=torch.float64))
    child = torch.relu(parent @ torch.randn(64, 64, generator=generator, dtype=torch.float64)
                       + torch.randn(n, 64, generator=generator, dtype=torch.float64))
    labels = torch.arange(n) % args.classes
    started = time.perf_counter()
    fast = cn.pearson_connectivity(parent, child, labels, batch_size=args.batch_size)
    fast_seconds = time.perf_counter() - started
    started = time.perf_counter()
    slow = naive_loop(parent.numpy(), child.numpy(), labels.numpy())
    slow_seconds = time.perf_counter() - started
    return {"layer": "64 -> 64 units", "samples": n, "vectorised_s": round(fast_seconds, 4),
            "naive_corrcoef_loop_s": round(slow_seconds, 3), "speed_up": round(slow_seconds / fast_seconds, 1),
            "max_abs_difference": float(np.abs(fast.numpy() - slow).max())}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--classes", type=int, default=10)
    parser.add_argument("--per-class", type=int, default=100)
    parser.add_argument("--batch-size", type=int, default=100)
    parser.add_argument("--threads", type=int, default=1, help="torch intra-op threads")
    parser.add_argument("--models", nargs="+", default=[c[0] for c in CASES], choices=[c[0] for c in CASES])
    parser.add_argument("--out", type=Path, default=Path(__file__).parent / "results")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    rows = [run_case(*case, args) for case in CASES if case[0] in args.models]
    print_table("GC-Net connectivity pass vs one forward pass over the probe set", rows)
    naive = naive_comparison(args)
    print_table("vectorised estimator vs naive per-pair np.corrcoef loop", [naive])
    results = {
        "benchmark": "connectivity_speed", "machine": machine(),
        "settings": {"classes": args.classes, "per_class": args.per_class, "batch_size": args.batch_size,
                     "threads": args.threads, "images": "random uint8 (timings do not depend on content)",
                     "measure": "pearson, site=post (defaults)",
                     "shrunk": "10 classes instead of Tiny ImageNet's 200; CPU only"},
        "goal": "whole-network connectivity pass <= 3 forward passes over the probe set (issue 9)",
        "paper": "no timing is reported in the GC-Net abstracts (full text unavailable; gcnet.md §6)",
        "networks": rows, "naive_comparison": naive,
    }
    save_results(args.out / "connectivity_speed.json", results)
    save_text(args.out / "connectivity_speed.md",
              "# GC-Net connectivity pass\n\n" + markdown_table(rows) + "\n\n## Vectorised vs naive loop\n\n"
              + markdown_table([naive]) + "\n")


if __name__ == "__main__":
    main()
