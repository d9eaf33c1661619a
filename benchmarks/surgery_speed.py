"""Does structured pruning make models faster? connprune's L1-filter + surgery vs Torch-Pruning, on CPU.

For VGG-16, ResNet-56 and ResNet-50 (``small_input=True``) on 3×32×32 inputs with 10 classes, at 30/50/70 % channel
sparsity, this measures parameters, MACs and latency at batch 1 and 64 of

- ``dense``: the unpruned model;
- ``masked``: the L1-filter result applied with ``shrink=False`` (removed channels zeroed, same dense computation);
- ``ours``: the L1-filter result physically removed (``surgery.apply(shrink=True)``) without width alignment
  (``round_to=1``: every group keeps round(C·(1-r)) channels);
- ``ours-aligned``: the same with ``round_to="auto"`` (kept widths a multiple of 16 on AVX-512 CPUs, else 8);
- ``torch-pruning``: ``torch_pruning.pruner.MetaPruner`` with ``MagnitudeImportance(p=1)`` (L1), ``pruning_ratio``
  = the channel ratio, local (``global_pruning=False``), the classifier in ``ignored_layers``.

Channel ratios → connprune's ``sparsity``: connprune's ``sparsity`` is a fraction of prunable *weights*. For a
channel ratio r the script computes the weight sparsity that the uniform per-group ratio r reaches (with the
method's own rounding, ``channel_budget.kept_channels`` / ``remaining_weights``), asks ``l1-filter`` for it and
checks that every group then keeps exactly the expected count (``kept_as_expected``). Both our variants use the same
nominal r; the aligned one rounds the kept widths to the block size, so its actual channel ratio differs (reported).

Deployed variants (issue #23), at batch 64, for the dense model and, at the ``--deploy-ratios`` (default 50 and
70 %), for ``ours``, ``ours-aligned`` and ``torch-pruning``, each model deployed the same way:

- ``eager``: the module as built (BatchNorm unfolded, contiguous NCHW, ``no_grad``): what the rows above measure;
- ``folded``: BatchNorm folded into the preceding convolutions (:func:`connprune.surgery.fold.fold_batchnorm`);
- ``folded-cl``: folded, ``torch.channels_last`` weights and inputs, ``torch.inference_mode``;
- ``onnxruntime``: folded, exported to ONNX (:func:`connprune.measure.runtime.to_onnx`) and run by an ONNX Runtime
  CPU session with the same thread count, sequential execution, worker threads not spinning between calls.

Every deployed model is checked against its eager module (``max_rel_diff``). Per runtime, the speed-up of a pruned
model is against the *dense model deployed the same way* (``speedup_b64``; ``efficiency_b64`` = that ÷ MACs
reduction), and ``speedup_vs_eager_dense`` is against the eager dense model (what deployment and pruning give
together).

Reported, with goals (issue #23):

1. ``efficiency_b64`` = speed-up at batch 64 ÷ MACs reduction of our shrunk models: ≥ 0.8 at 50 % channels and
   ≥ 0.6 at 70 % (≥ 0.8 at 30 %) on all three networks, in at least one runtime; Torch-Pruning's pruned model
   beside it, deployed the same way.
2. Pruning wall time, ``method.prune`` + ``surgery.apply`` vs ``MetaPruner(...)`` + ``.step()`` (goal ≤ 1.5×);
   median of ``--prune-repeats`` interleaved repetitions, each on a fresh copy of the dense model.
3. Same kept channels → same parameter count as Torch-Pruning: MetaPruner is given our ``round_to=1`` widths
   (``pruning_ratio_dict``, per layer) and its parameter count compared with ours. Its uniform run keeps
   int(C·(1-r)) channels where we keep round(C·(1-r)); those per-layer counts are listed side by side.

Hygiene: latency with :func:`connprune.measure.latency.compare_latency` (``torch.utils.benchmark`` blocked
autorange, eval mode, no_grad, warm-up, an untimed pass right before each measurement), all variants of a model —
at batch 64 the deployed ones too, every runtime — interleaved round by round in a freshly shuffled order each
round (seeded), median and IQR over rounds; fixed threads (``--threads``, default 2, for torch and ONNX Runtime).
The process runs with ``MALLOC_MMAP_MAX_=0`` and ``MALLOC_TRIM_THRESHOLD_=64 GiB`` (glibc reads them at start-up, so
the script re-executes itself with them set): by default glibc serves the large activation buffers with ``mmap`` and
unmaps them on ``free``, so every pass page-faults them in again. ``MALLOC_MMAP_MAX_=0`` alone is not enough: the
buffers then come from the heap, but glibc trims the heap's free top back to the system after each pass (its trim
threshold only adapts when mmapped chunks are freed, which no longer happens) — measured on ResNet-50, batch 64:
~750k minor faults and 1.3 s per pass by default, ~300k and 1.0–3.7 s with ``MALLOC_MMAP_MAX_=0`` only, 0 and 0.71 s
with both.
On a machine shared with other jobs: before every timed round (and pruning repetition) the run waits, within a
total budget (``--max-wait``), until other processes leave the CPUs idle (``/proc/stat``); a latency round in which
some variant still got less than ``--min-cpu-share`` of its threads' CPU time is discarded and measured again. The
load average is recorded before and after; waiting, re-measuring and a busy machine are all reported.

Run: ``python benchmarks/surgery_speed.py [--quick] [--models vgg16 resnet56 resnet50] [--ratios 0.3 0.5 0.7]
[--deploy-ratios 0.5 0.7] [--deployments folded folded-cl onnxruntime] [--rounds 5]
[--out benchmarks/results/surgery_speed.json]`` (needs ``pip install 'connprune[export]'`` for ``onnxruntime``).
``--quick`` (ResNet-56, 50 %, 2 short rounds) is a smoke test and writes no result files unless ``--out`` is given.
"""

from __future__ import annotations

import os
import sys

# glibc malloc tunables for the measuring process (see the module docstring). glibc reads them once, at start-up,
# so the script restarts itself with them in its environment.
MALLOC_ENV = {"MALLOC_MMAP_MAX_": "0", "MALLOC_TRIM_THRESHOLD_": str(64 << 30)}
if __name__ == "__main__" and "--no-reexec" not in sys.argv \
        and any(os.environ.get(key) != value for key, value in MALLOC_ENV.items()):
    os.execve(sys.executable, [sys.executable, *sys.argv], {**os.environ, **MALLOC_ENV})

import argparse  # noqa: E402
import copy  # noqa: E402
import importlib.metadata  # noqa: E402
import json  # noqa: E402
import statistics  # noqa: E402
import tempfile  # noqa: E402
import time  # noqa: E402
import warnings  # noqa: E402
from pathlib import Path  # noqa: E402
from typing import Any  # noqa: E402

import torch  # noqa: E402
import torch_pruning as tp  # noqa: E402
from torch import nn  # noqa: E402

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import QuietGate, load_average, machine, markdown_table, print_table, save_results, save_text  # noqa: E402

from connprune import methods, models, surgery  # noqa: E402
from connprune.graph import ModelGraph, build  # noqa: E402
from connprune.measure import cost  # noqa: E402
from connprune.measure.latency import LatencyResult, Runner, compare_latency, prepare  # noqa: E402
from connprune.measure.sparsity import count_prunable  # noqa: E402
from connprune.methods.channel_budget import auto_round_to, kept_channels, remaining_weights  # noqa: E402

SHAPE = (3, 32, 32)
CONFIGS: dict[str, dict[str, Any]] = {"vgg16": {}, "resnet56": {}, "resnet50": {"small_input": True}}
RESULTS = Path(__file__).resolve().parent / "results"
VARIANTS = ("masked", "ours", "ours-aligned", "torch-pruning")
DEPLOYED = ("ours", "ours-aligned", "torch-pruning")
DEPLOYMENTS: dict[str, dict[str, Any]] = {
    "folded": {"fold_bn": True},
    "folded-cl": {"fold_bn": True, "channels_last": True, "inference_mode": True},
    "onnxruntime": {"runtime": "onnxruntime", "fold_bn": True},
}
PRUNE_TIME_GOAL = 1.5


def efficiency_goal(ratio: float) -> float:
    """Issue #23: speed-up / MACs reduction >= 0.8 up to 50 % channels, >= 0.6 at 70 %."""
    return 0.8 if ratio <= 0.5 + 1e-9 else 0.6


# ------------------------------------------------------------------------------------------------------------ helpers


class Stopwatch:
    """Wall time and process CPU time (all threads) of a ``with`` block. CPU time hardly changes when other
    processes compete for the cores, wall time does: both are reported."""

    wall: float = 0.0
    cpu: float = 0.0

    def __enter__(self) -> Stopwatch:
        self._wall, self._cpu = time.perf_counter(), time.process_time()
        return self

    def __exit__(self, *exc: object) -> None:
        self.wall, self.cpu = time.perf_counter() - self._wall, time.process_time() - self._cpu


def classifier(model: nn.Module) -> nn.Module:
    """The output layer (the last linear layer), which keeps its outputs: the classes."""
    return [m for m in model.modules() if isinstance(m, nn.Linear)][-1]


def widths(model: nn.Module) -> dict[str, int]:
    """Output width of every conv/linear layer, by module name."""
    return {name: (m.out_channels if isinstance(m, nn.Conv2d) else m.out_features)
            for name, m in model.named_modules() if isinstance(m, (nn.Conv2d, nn.Linear))}


def channel_ratio_of(dense: dict[str, int], pruned: dict[str, int], skip: str) -> float:
    """Fraction of hidden conv/linear output channels removed (classifier excluded)."""
    before = sum(w for name, w in dense.items() if name != skip)
    return 1.0 - sum(w for name, w in pruned.items() if name != skip) / before


def sparsity_for(model: nn.Module, graph: ModelGraph, ratio: float,
                 round_to: int | str) -> tuple[float, dict[str, int]]:
    """The weight sparsity that l1-filter's uniform per-group channel ratio ``ratio`` reaches, and the kept counts.

    Mirrors ``channel_budget.structured_removal`` (prune_residual=True, min_channels=1; ``round_to="auto"`` is the
    CPU's block size with non-strict alignment), so asking l1-filter for this sparsity makes its bisection land on
    the same kept counts (checked by the caller).
    """
    block = auto_round_to(torch.device("cpu")) if round_to == "auto" else int(round_to)
    kept = {g.root: kept_channels(g.channels, ratio, block, 1, strict=round_to != "auto") for g in graph.groups}
    return 1.0 - remaining_weights(graph, kept) / count_prunable(model), kept


def kept_of(result: methods.PruningResult, graph: ModelGraph) -> dict[str, int]:
    return {g.root: g.channels - len(result.remove.get(g.root, ())) for g in graph.groups}


def ours(dense: nn.Module, sparsity: float,
         round_to: int | str) -> tuple[nn.Module, methods.PruningResult, Stopwatch]:
    """L1-filter + physical surgery on a fresh copy; returns the model, the result and the timings."""
    model = copy.deepcopy(dense)
    with Stopwatch() as watch:
        method = methods.create("l1-filter", round_to=round_to, prune_residual=True)
        result = method.prune(model, sparsity, methods.PruneData())
        model, _ = surgery.apply(model, result, True)  # zoo model: traced on its own input shape
    return model, result, watch


def torch_pruning(dense: nn.Module, ratio: float,
                  per_layer: dict[str, float] | None = None) -> tuple[nn.Module, Stopwatch]:
    """Torch-Pruning's MetaPruner, L1 magnitude importance, local; returns the pruned copy and the timings."""
    model = copy.deepcopy(dense)
    example = torch.randn(1, *SHAPE)
    modules = dict(model.named_modules())
    ratio_dict = {modules[name]: r for name, r in per_layer.items()} if per_layer else None
    with warnings.catch_warnings(), Stopwatch() as watch:
        warnings.simplefilter("ignore")
        pruner = tp.pruner.MetaPruner(model, example, importance=tp.importance.MagnitudeImportance(p=1),
                                      pruning_ratio=ratio, pruning_ratio_dict=ratio_dict, global_pruning=False,
                                      ignored_layers=[classifier(model)])
        pruner.step()
    return model, watch


def matching_ratios(dense: dict[str, int], target: dict[str, int], skip: str) -> dict[str, float]:
    """Per-layer MetaPruner ratios that keep exactly ``target`` widths: it keeps int(C·(1-r)) channels."""
    return {name: (1.0 - (target[name] + 0.5) / c if target[name] < c else 0.0)
            for name, c in dense.items() if name != skip}


@torch.no_grad()
def relative_difference(a: nn.Module, b: nn.Module) -> float:
    """max |a(x) - b(x)| / max |a(x)| on a fixed random batch, eval mode (float rounding: ~1e-6)."""
    x = torch.randn(4, *SHAPE, generator=torch.Generator().manual_seed(1))
    ya, yb = a.eval()(x), b.eval()(x)
    return float((ya - yb).abs().max() / ya.abs().max().clamp_min(1e-30))


def median(values: list[float]) -> float:
    return statistics.median(values)


@torch.no_grad()
def runner_difference(model: nn.Module, runner: Runner) -> float:
    """max |model(x) - runner(x)| / max |model(x)| on a fixed batch: a deployed model computes its eager module."""
    x = runner.example(SHAPE, 4)
    reference = model.eval()(x.contiguous())
    with runner.context():
        deployed = runner.forward(x)
    return float((reference - deployed).abs().max() / reference.abs().max().clamp_min(1e-30))


# ------------------------------------------------------------------------------------------------------------ one model


def prune_at(name: str, dense: nn.Module, graph: ModelGraph, ratio: float, args: argparse.Namespace,
             dense_widths: dict[str, int], skip: str) -> tuple[dict[str, nn.Module], dict[str, Any], dict[str, Any]]:
    """The pruned variants at channel ratio ``ratio`` (pruning timed, interleaved), their timings and the checks."""
    sparsity, expected = sparsity_for(dense, graph, ratio, 1)
    sparsity_aligned, expected_aligned = sparsity_for(dense, graph, ratio, "auto")
    times: dict[str, list[float]] = {"ours": [], "ours-aligned": [], "torch-pruning": []}
    cpu_times: dict[str, list[float]] = {key: [] for key in times}
    for _ in range(args.prune_repeats):  # interleaved, each on a fresh copy of the dense model
        args.gate()
        shrunk, result, watch = ours(dense, sparsity, 1)
        times["ours"].append(watch.wall)
        cpu_times["ours"].append(watch.cpu)
        aligned, result_aligned, watch = ours(dense, sparsity_aligned, "auto")
        times["ours-aligned"].append(watch.wall)
        cpu_times["ours-aligned"].append(watch.cpu)
        tp_model, watch = torch_pruning(dense, ratio)
        times["torch-pruning"].append(watch.wall)
        cpu_times["torch-pruning"].append(watch.cpu)
    masked, _ = surgery.apply(copy.deepcopy(dense), result, False)
    matched, _ = torch_pruning(dense, ratio, matching_ratios(dense_widths, widths(shrunk), skip))
    built = {"masked": masked, "ours": shrunk, "ours-aligned": aligned, "torch-pruning": tp_model}
    ours_widths, tp_widths = widths(shrunk), widths(tp_model)
    differing = {layer: {"dense": width, "ours": ours_widths[layer], "torch-pruning": tp_widths[layer]}
                 for layer, width in dense_widths.items() if ours_widths[layer] != tp_widths[layer]}
    check = {
        "model": name, "target": ratio, "sparsity_asked": sparsity, "sparsity_asked_aligned": sparsity_aligned,
        "channel_ratio_info": result.info.get("channel_ratio"),
        "channel_ratio_info_aligned": result_aligned.info.get("channel_ratio"),
        "kept_as_expected": kept_of(result, graph) == expected,
        "kept_as_expected_aligned": kept_of(result_aligned, graph) == expected_aligned,
        "masked_vs_shrunk_rel_diff": relative_difference(masked, shrunk),
        "params_ours": cost(shrunk, SHAPE).params, "params_tp_same_widths": cost(matched, SHAPE).params,
        "widths_equal_tp_same_widths": widths(matched) == ours_widths,
        "params_tp_uniform": cost(tp_model, SHAPE).params,
        "kept_channels_ours": sum(w for layer, w in ours_widths.items() if layer != skip),
        "kept_channels_tp_uniform": sum(w for layer, w in tp_widths.items() if layer != skip),
        "layers_differing_from_tp_uniform": len(differing), "layers": len(dense_widths) - 1,
        "differing_widths": differing,
    }
    check["params_equal_tp_same_widths"] = check["params_ours"] == check["params_tp_same_widths"]
    print(f"  {name} @ {ratio:g}: pruned (ours {median(times['ours']):.2f} s, aligned "
          f"{median(times['ours-aligned']):.2f} s, Torch-Pruning {median(times['torch-pruning']):.2f} s)", flush=True)
    return built, {"wall": times, "cpu": cpu_times}, check


def variant_row(name: str, ratio: float, variant: str, model: nn.Module, dense: nn.Module, sparsity: float,
                timings: dict[str, Any], dense_widths: dict[str, int], skip: str) -> dict[str, Any]:
    """Parameters, MACs, channel ratio and pruning times of one pruned variant (latencies are added later)."""
    model_cost, dense_macs = cost(model, SHAPE), cost(dense, SHAPE).macs
    row = {"model": name, "target": ratio, "variant": variant, "runtime": "eager",
           "channel_ratio": channel_ratio_of(dense_widths, widths(model), skip),
           "weight_sparsity": 1.0 - count_prunable(model) / count_prunable(dense) if variant != "masked"
           else sparsity, "params": model_cost.params, "macs": model_cost.macs,
           "macs_reduction": dense_macs / model_cost.macs}
    if variant in timings["wall"]:
        wall, cpu = timings["wall"], timings["cpu"]
        row.update(prune_s=median(wall[variant]), prune_s_all=wall[variant],
                   prune_vs_tp=median(wall[variant]) / median(wall["torch-pruning"]),
                   prune_cpu_s=median(cpu[variant]),
                   prune_cpu_vs_tp=median(cpu[variant]) / median(cpu["torch-pruning"]))
    return row


def deploy(eager: dict[str, nn.Module], args: argparse.Namespace) -> tuple[dict[str, Runner], dict[str, float]]:
    """Every model of ``eager`` deployed every way of ``args.deployments`` (``"KEY|RUNTIME"``), and how far each
    deployed model's outputs are from its eager module's."""
    runners, differences = {}, {}
    for key, model in eager.items():
        for runtime in args.deployments:
            runner = prepare(model, SHAPE, threads=args.threads, **DEPLOYMENTS[runtime])
            runners[f"{key}|{runtime}"] = runner
            differences[f"{key}|{runtime}"] = runner_difference(model, runner)
    return runners, differences


def measure(name: str, variants: dict[str, nn.Module], runners: dict[str, Runner],
            args: argparse.Namespace) -> dict[int, dict[str, LatencyResult]]:
    """Batch 1: the eager variants; batch 64: the eager variants and every deployed one, all in one comparison."""
    latencies: dict[int, dict[str, LatencyResult]] = {}
    for batch, min_run_time in ((1, args.min_run_time_b1), (64, args.min_run_time_b64)):
        started = time.perf_counter()
        timed: dict[str, nn.Module | Runner] = {**variants, **(runners if batch == 64 else {})}
        latencies[batch] = compare_latency(timed, SHAPE, batch, rounds=args.rounds, threads=args.threads,
                                           warmup=args.warmup, min_run_time=min_run_time, seed=args.seed,
                                           min_cpu_share=args.min_cpu_share or None,
                                           max_extra_rounds=args.max_extra_rounds, retry_delay=2.0,
                                           before_round=args.gate)
        some = next(iter(latencies[batch].values()))
        print(f"  {name}: latency of {len(timed)} variants at batch {batch} measured in "
              f"{time.perf_counter() - started:.0f} s ({some.discarded_rounds} disturbed rounds measured again)",
              flush=True)
    return latencies


def add_latencies(rows: list[dict[str, Any]], latencies: dict[int, dict[str, LatencyResult]]) -> None:
    """Eager rows: latency at batch 1 and 64, speed-up against eager dense, efficiency at batch 64."""
    for row in rows:
        key = "dense" if row["variant"] == "dense" else f"{row['variant']}@{row['target']:g}"
        for batch, per_variant in latencies.items():
            measured, reference = per_variant[key], per_variant["dense"]
            row[f"b{batch}_ms"] = measured.median_ms
            row[f"b{batch}_iqr_ms"] = measured.iqr_ms
            row[f"b{batch}_rounds_ms"] = list(measured.rounds_ms)
            row[f"speedup_b{batch}"] = reference.median_ms / measured.median_ms
            row[f"b{batch}_cpu_share"] = measured.cpu_share
            row[f"b{batch}_discarded_rounds"] = measured.discarded_rounds
        if row["variant"] in DEPLOYED:
            row["efficiency_b64"] = row["speedup_b64"] / row["macs_reduction"]


def deployed_rows(rows: list[dict[str, Any]], latencies: dict[str, LatencyResult], differences: dict[str, float],
                  deployments: list[str]) -> list[dict[str, Any]]:
    """One row per deployed model at batch 64: speed-up against the dense model deployed the same way."""
    eager_dense = latencies["dense"].median_ms
    out = []
    for runtime in deployments:
        dense_ms = latencies[f"dense|{runtime}"].median_ms
        for row in rows:
            key = "dense" if row["variant"] == "dense" else f"{row['variant']}@{row['target']:g}"
            if f"{key}|{runtime}" not in latencies:
                continue
            measured = latencies[f"{key}|{runtime}"]
            deployed = {k: row[k] for k in ("model", "target", "variant", "channel_ratio", "params", "macs")}
            deployed.update(runtime=runtime, macs_reduction=row.get("macs_reduction", 1.0),
                            b64_ms=measured.median_ms, b64_iqr_ms=measured.iqr_ms,
                            b64_rounds_ms=list(measured.rounds_ms), b64_cpu_share=measured.cpu_share,
                            speedup_b64=dense_ms / measured.median_ms,
                            speedup_vs_eager_dense=eager_dense / measured.median_ms,
                            max_rel_diff=differences[f"{key}|{runtime}"])
            if row["variant"] in DEPLOYED:
                deployed["efficiency_b64"] = deployed["speedup_b64"] / deployed["macs_reduction"]
            out.append(deployed)
    return out


def bench_model(name: str, args: argparse.Namespace) -> dict[str, Any]:
    dense = models.create(name, num_classes=10, in_channels=SHAPE[0], input_size=SHAPE[1], **CONFIGS[name]).eval()
    graph = build(dense, SHAPE)
    skip = next(n for n, m in dense.named_modules() if m is classifier(dense))
    dense_widths, dense_cost = widths(dense), cost(dense, SHAPE)
    ours(dense, 0.5, 1), torch_pruning(dense, 0.5)  # untimed: one-time costs (lazy imports, first traces)
    variants: dict[str, nn.Module] = {"dense": dense}
    rows: list[dict[str, Any]] = [{"model": name, "target": 0.0, "variant": "dense", "runtime": "eager",
                                   "channel_ratio": 0.0, "weight_sparsity": 0.0, "params": dense_cost.params,
                                   "macs": dense_cost.macs}]
    checks: list[dict[str, Any]] = []
    to_deploy: dict[str, nn.Module] = {"dense": dense}
    for ratio in args.ratios:
        built, timings, check = prune_at(name, dense, graph, ratio, args, dense_widths, skip)
        checks.append(check)
        for variant, model in built.items():
            variants[f"{variant}@{ratio:g}"] = model
            rows.append(variant_row(name, ratio, variant, model, dense, check["sparsity_asked"], timings,
                                    dense_widths, skip))
            if variant in DEPLOYED and ratio in args.deploy_ratios:
                to_deploy[f"{variant}@{ratio:g}"] = model
    runners, differences = deploy(to_deploy, args)
    latencies = measure(name, variants, runners, args)
    add_latencies(rows, latencies)
    return {"rows": rows, "checks": checks,
            "deployed": deployed_rows(rows, latencies[64], differences, args.deployments)}


# ------------------------------------------------------------------------------------------------------------ report


TABLE = ["model", "target", "variant", "channel_ratio", "params", "macs", "macs_reduction", "b1_ms", "b1_iqr_ms",
         "b64_ms", "b64_iqr_ms", "b64_cpu_share", "speedup_b1", "speedup_b64", "efficiency_b64", "prune_s",
         "prune_vs_tp", "prune_cpu_vs_tp"]
DEPLOYED_TABLE = ["model", "target", "variant", "runtime", "macs_reduction", "b64_ms", "b64_iqr_ms", "b64_cpu_share",
                  "speedup_b64", "efficiency_b64", "speedup_vs_eager_dense", "max_rel_diff"]
CHECKS = ["model", "target", "kept_as_expected", "kept_as_expected_aligned", "params_ours", "params_tp_same_widths",
          "params_equal_tp_same_widths", "params_tp_uniform", "kept_channels_ours", "kept_channels_tp_uniform",
          "layers_differing_from_tp_uniform", "masked_vs_shrunk_rel_diff"]


def _round(value: float) -> float:
    if value != 0 and abs(value) < 1e-3:
        return float(f"{value:.3g}")  # tiny numbers (relative differences): significant digits
    return round(value, 4 if abs(value) < 10 else 2)


def rounded(row: dict[str, Any]) -> dict[str, Any]:
    out = {}
    for key, value in row.items():
        if isinstance(value, float):
            value = _round(value)
        elif isinstance(value, list) and value and isinstance(value[0], float):
            value = [_round(v) for v in value]
        out[key] = value
    return out


def efficiency_pivot(rows: list[dict[str, Any]], deployed: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Speed-up ÷ MACs reduction at batch 64 per (model, ratio, variant), one column per runtime."""
    table: dict[tuple, dict[str, Any]] = {}
    for row in [r for r in rows if r.get("efficiency_b64") is not None] + deployed:
        if row.get("efficiency_b64") is None:
            continue
        key = (row["model"], row["target"], row["variant"])
        entry = table.setdefault(key, {"model": key[0], "target": key[1], "variant": key[2],
                                       "macs_reduction": row["macs_reduction"], "goal": efficiency_goal(key[1])})
        entry[row.get("runtime", "eager")] = row["efficiency_b64"]
    return list(table.values())


def fastest_round_pivot(rows: list[dict[str, Any]], deployed: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """The efficiency pivot again, from each model's fastest batch-64 round instead of the median round.

    Another process can only add time to a round, never take it away, so on a busy machine the fastest of the
    interleaved rounds is the better estimate of what a model costs alone (as :mod:`timeit` advises).
    """
    fastest = {(r["model"], r["target"], r["variant"], r.get("runtime", "eager")): min(r["b64_rounds_ms"])
               for r in rows + deployed if r.get("b64_rounds_ms")}
    entries = []
    for row in rows + deployed:
        runtime = row.get("runtime", "eager")
        if row["variant"] not in DEPLOYED or (row["model"], row["target"], row["variant"], runtime) not in fastest:
            continue
        dense = fastest[(row["model"], 0.0, "dense", runtime)]
        speedup = dense / fastest[(row["model"], row["target"], row["variant"], runtime)]
        entries.append({**{k: row[k] for k in ("model", "target", "variant", "macs_reduction")}, "runtime": runtime,
                        "efficiency_b64": speedup / row["macs_reduction"]})
    return efficiency_pivot(entries, [])


def efficiency_goal_status(pivot: list[dict[str, Any]], variant: str, runtimes: list[str],
                           ratios: list[float]) -> dict[str, Any]:
    """Issue #23's goal for ``variant``: in some runtime, every (model, ratio) at ``ratios`` reaches its threshold."""
    cases = [e for e in pivot if e["variant"] == variant and e["target"] in ratios]
    passing = {rt: [f"{e['model']}@{e['target']:g}" for e in cases if e.get(rt, float("-inf")) >= e["goal"]]
               for rt in runtimes}
    best = {}
    for e in cases:
        runtime = max((rt for rt in runtimes if rt in e), key=lambda rt: e[rt])
        best[f"{e['model']}@{e['target']:g}"] = {"runtime": runtime, "efficiency": round(e[runtime], 3),
                                                 "goal": e["goal"]}
    return {"met": bool(cases) and any(len(p) == len(cases) for p in passing.values()),
            "cases": len(cases), "passing_per_runtime": {rt: len(p) for rt, p in passing.items()},
            "met_in": [rt for rt, p in passing.items() if cases and len(p) == len(cases)],
            "best_runtime_per_case": best,
            "every_case_in_its_best_runtime": all(v["efficiency"] >= v["goal"] for v in best.values()),
            "values": {rt: {f"{e['model']}@{e['target']:g}": round(e[rt], 3) for e in cases if rt in e}
                       for rt in runtimes}}


def goals(rows: list[dict[str, Any]], checks: list[dict[str, Any]], pivot: list[dict[str, Any]],
          fastest: list[dict[str, Any]], args: argparse.Namespace) -> dict[str, Any]:
    runtimes = ["eager", *args.deployments]
    per_model = {}
    for name in dict.fromkeys(r["model"] for r in rows):
        sums = {v: sum(r["prune_s"] for r in rows if r["model"] == name and r["variant"] == v) for v in DEPLOYED}
        cpu = {v: sum(r["prune_cpu_s"] for r in rows if r["model"] == name and r["variant"] == v) for v in DEPLOYED}
        per_model[name] = {"ours/tp": round(sums["ours"] / sums["torch-pruning"], 3),
                           "ours-aligned/tp": round(sums["ours-aligned"] / sums["torch-pruning"], 3),
                           "cpu time ours/tp": round(cpu["ours"] / cpu["torch-pruning"], 3)}
    ratios = args.deploy_ratios
    return {
        "efficiency (ours-aligned, round_to auto: the default)":
            efficiency_goal_status(pivot, "ours-aligned", runtimes, ratios),
        "efficiency (ours, round_to=1)": efficiency_goal_status(pivot, "ours", runtimes, ratios),
        "efficiency (torch-pruning, deployed the same way: reference)":
            efficiency_goal_status(pivot, "torch-pruning", runtimes, ratios),
        "fastest round: efficiency (ours-aligned, round_to auto: the default)":
            efficiency_goal_status(fastest, "ours-aligned", runtimes, ratios),
        "fastest round: efficiency (ours, round_to=1)": efficiency_goal_status(fastest, "ours", runtimes, ratios),
        "fastest round: efficiency (torch-pruning, deployed the same way: reference)":
            efficiency_goal_status(fastest, "torch-pruning", runtimes, ratios),
        f"pruning time <= {PRUNE_TIME_GOAL} x Torch-Pruning (sum over ratios, per model)": {
            "met": all(max(v["ours/tp"], v["ours-aligned/tp"]) <= PRUNE_TIME_GOAL for v in per_model.values()),
            "values": per_model},
        "same kept widths -> same params as Torch-Pruning": {
            "met": all(c["params_equal_tp_same_widths"] and c["widths_equal_tp_same_widths"] for c in checks),
            "values": {f"{c['model']}@{c['target']:g}": [c["params_ours"], c["params_tp_same_widths"]]
                       for c in checks}},
    }


def _efficiency_verdict(label: str, status: dict[str, Any], reference: dict[str, Any] | None) -> str:
    cases, passing = status["cases"], status["passing_per_runtime"]
    if status["met"]:
        line = f"{label}: goal MET in {', '.join(status['met_in'])} (all {cases} cases)."
    else:
        goal = {case: v["goal"] for case, v in status["best_runtime_per_case"].items()}
        worst = {rt: min((v / goal[case] for case, v in values.items()), default=0.0)
                 for rt, values in status["values"].items()}
        closest = max(passing, key=lambda rt: (passing[rt], worst[rt]))  # most cases met, then the least short
        failing = {case: v for case, v in status["values"][closest].items() if v < goal[case]}
        line = (f"{label}: goal NOT MET — no runtime reaches it in all {cases} cases; closest {closest} "
                f"({passing[closest]}/{cases}), failing there: "
                + ", ".join(f"{case} {v:.2f} (goal {goal[case]})" for case, v in failing.items())
                + ". Each case in its own best runtime: "
                + ("all meet it." if status["every_case_in_its_best_runtime"] else "not all meet it."))
    if reference is not None:
        ours_best = {c: v["efficiency"] for c, v in status["best_runtime_per_case"].items()}
        tp_best = {c: v["efficiency"] for c, v in reference["best_runtime_per_case"].items()}
        ahead = sum(ours_best[c] >= tp_best.get(c, float("inf")) - 0.02 for c in ours_best)
        line += (f" Beside Torch-Pruning deployed the same way (best runtime each): at least as efficient (within 0.02)"
                 f" in {ahead}/{len(ours_best)} cases.")
    return line


def _why(label: str, status: dict[str, Any], reference: dict[str, Any]) -> str | None:
    """Where ours-aligned misses in every runtime: does Torch-Pruning's model of the same widths miss too?"""
    ours = status["best_runtime_per_case"]
    short = [case for case, v in ours.items() if v["efficiency"] < v["goal"]]
    if not short:
        return None
    tp_short = [case for case in short if reference["best_runtime_per_case"][case]["efficiency"] < ours[case]["goal"]]
    behind = [case for case in short if case not in tp_short]
    return (f"Why ({label}): in {len(tp_short)} of the {len(short)} cases ours-aligned misses in every runtime, "
            "Torch-Pruning's model (same or near widths, deployed the same way) misses too: there a MAC saved on "
            "narrow layers saves less time on this CPU (see What is weak), which no surgery changes"
            + (f"; in {', '.join(behind)} Torch-Pruning's model reaches the goal and ours does not" if behind else "")
            + ".")


def verdicts(result: dict[str, Any]) -> list[str]:
    """One line per goal: met or not, where, and for what it misses, the numbers; then why, and how reliable."""
    g = result["goals"]
    noisy = reliability(result, g["efficiency (ours-aligned, round_to auto: the default)"])
    lines = []
    for prefix, label in (("", "median round"), ("fastest round: ", "fastest round")):
        reference = g[f"{prefix}efficiency (torch-pruning, deployed the same way: reference)"]
        aligned = g[f"{prefix}efficiency (ours-aligned, round_to auto: the default)"]
        lines += [_efficiency_verdict(f"Speed-up ÷ MACs reduction ({label}), ours-aligned (default round_to=auto)",
                                      aligned, reference)
                  + (" Not conclusive: see Reliability." if not prefix and "not conclusive" in noisy else ""),
                  _efficiency_verdict(f"Speed-up ÷ MACs reduction ({label}), ours round_to=1",
                                      g[f"{prefix}efficiency (ours, round_to=1)"], reference),
                  _efficiency_verdict(f"Speed-up ÷ MACs reduction ({label}), Torch-Pruning (reference)", reference,
                                      None)]
        why = _why(label, aligned, reference)
        lines += [why] if why else []
    dense = {f"{r['model']} {r['runtime']}": round(r["speedup_vs_eager_dense"], 2) for r in result["deployed"]
             if r["variant"] == "dense"}
    lines.append(f"Deployment alone (dense model, speed-up over eager): {dense}.")
    prune = next(v for k, v in g.items() if k.startswith("pruning time"))
    lines.append(f"Pruning time <= {PRUNE_TIME_GOAL}x Torch-Pruning: {'MET' if prune['met'] else 'NOT MET'} "
                 f"{prune['values']}.")
    lines.append(noisy)
    if result["shared_machine"]:
        lines.append(f"Measured on a shared, busy machine (load average before {result['load_before']}, after "
                     f"{result['load_after']} on {result['machine']['cores_usable']} cores): absolute latencies are "
                     "noisy and higher than on an idle machine; the interleaved, shuffled rounds spread a busy spell "
                     "over all models, but differences of tens of percent can be noise (see the IQR columns).")
    return lines


SPREAD_LIMIT = 0.1
"""A batch-64 latency whose IQR over rounds exceeds this fraction of its median is called noisy in the verdict."""


def reliability(result: dict[str, Any], status: dict[str, Any]) -> str:
    """Which of the goal's values (each case in its best runtime) rest on a noisy measurement (IQR > 10 %)."""
    spread = {(r["model"], r["target"], r["variant"], r.get("runtime", "eager")): r["b64_iqr_ms"] / r["b64_ms"]
              for r in result["rows"] + result["deployed"] if r.get("b64_ms")}
    noisy = []
    for case, best in status["best_runtime_per_case"].items():
        model, target = case.split("@")
        variant_spread = spread[(model, float(target), "ours-aligned", best["runtime"])]
        dense_spread = spread[(model, 0.0, "dense", best["runtime"])]
        if max(variant_spread, dense_spread) > SPREAD_LIMIT:
            noisy.append(f"{case} in {best['runtime']} (IQR/median {variant_spread:.0%}, dense {dense_spread:.0%})")
    everything = sum(v > SPREAD_LIMIT for v in spread.values())
    verdict = ("not conclusive for " + "; ".join(noisy)) if noisy else "all rest on measurements with IQR <= 10 %"
    return (f"Reliability: of ours-aligned's values in their best runtime, {verdict}. Over all batch-64 latencies, "
            f"{everything} of {len(spread)} have an IQR above {SPREAD_LIMIT:.0%} of the median.")


WEAK = [
    "Two CPU cores (2 threads) and 32×32 inputs: per-layer work is small (ResNet-56's convs have 16–64 channels, "
    "8–4 after pruning at 50–70 %), so fixed per-op costs (dispatch, memory-bound element-wise ops, pooling, the "
    "residual adds that pruning does not shrink) weigh more as MACs fall: speed-up ÷ MACs reduction falls with the "
    "ratio in every runtime.",
    "MACs count only convolutions and linear layers; the deployed runtimes remove BN passes (folding) and activation "
    "re-layouts (channels-last, ONNX Runtime's blocked layouts), which are not MACs — so a deployed model can exceed "
    "the eager speed-up ÷ MACs reduction of the same widths.",
    "ONNX Runtime's worker threads do not spin between calls here (session.intra_op.allow_spinning=0), so that they "
    "do not steal the cores from the next measured model; with spinning on, small ONNX Runtime passes can be faster.",
    "One machine, one run, 5 rounds: the IQR columns give the spread; no repeat on another CPU.",
]


def markdown(result: dict[str, Any]) -> str:
    m = result["machine"]
    lines = [
        "# Surgery speed: connprune L1-filter + surgery vs Torch-Pruning, eager and deployed", "",
        f"Machine: {m['cpu']}, {m['cores_usable']} usable cores, torch {m['torch']}, {result['settings']['threads']} "
        f"threads, CPU capability {m['cpu_capability']}, onnxruntime {result['settings'].get('onnxruntime')}, "
        f"`MALLOC_MMAP_MAX_={m['env'].get('MALLOC_MMAP_MAX_', 'unset')}`, "
        f"`MALLOC_TRIM_THRESHOLD_={m['env'].get('MALLOC_TRIM_THRESHOLD_', 'unset')}`."
        f" Load average before {result['load_before']}, after {result['load_after']}"
        + (" — **shared, busy machine: absolute latencies are noisy; interleaving keeps ratios fair**."
           if result["shared_machine"] else "."),
        "", "## Verdict", "", *[f"- {line}" for line in result["verdicts"]], "",
        "## Speed-up ÷ MACs reduction at batch 64, per runtime", "",
        "Each runtime's speed-up is against the dense model deployed the same way. Goal (issue #23): ≥ 0.8 at 50 % "
        "channels, ≥ 0.6 at 70 %, in at least one runtime. `eager`: the module as built; `folded`: BN folded; "
        "`folded-cl`: folded + channels-last + inference_mode; `onnxruntime`: folded, ONNX Runtime.", "",
        markdown_table([rounded(r) for r in result["efficiency"]],
                       ["model", "target", "variant", "macs_reduction", "goal", "eager", *result["settings"]
                        ["deployments"]]),
        "## The same from each model's fastest round", "",
        "Another process can only add time to a round: on a busy machine the fastest of the interleaved rounds "
        "estimates what a model costs alone better than the median.", "",
        markdown_table(result["efficiency_fastest_round"],
                       ["model", "target", "variant", "macs_reduction", "goal", "eager", *result["settings"]
                        ["deployments"]]),
        "## Deployed models at batch 64", "",
        "`speedup_b64`: against the dense model in the same runtime; `speedup_vs_eager_dense`: against the eager "
        "dense model; `max_rel_diff`: deployed vs eager outputs of the same model.", "",
        markdown_table([rounded(r) for r in result["deployed"]], DEPLOYED_TABLE),
        "## Eager models (batch 1 and 64) and pruning time", "",
        f"Input 3×32×32, 10 classes; latency = median over {result['settings']['rounds']} interleaved rounds in a "
        "shuffled order (IQR over rounds beside it), eval mode, no_grad. `target`: channel ratio asked; "
        "`channel_ratio`: hidden channels actually removed. `prune_s`: median wall time of prune + surgery (ours) or "
        "MetaPruner construction + step (Torch-Pruning).", "",
        markdown_table([rounded(r) for r in result["rows"]], TABLE),
        "## Same kept channels → same parameters?", "",
        "`params_tp_same_widths`: MetaPruner given our round_to=1 widths per layer. `*_tp_uniform`: its own "
        "uniform run, which keeps int(C·(1-r)) channels per layer where we keep round(C·(1-r)).", "",
        markdown_table([rounded(c) for c in result["checks"]], CHECKS),
        "## What is weak", "", *[f"- {note}" for note in result["weak"]], "",
        "## Notes", "", *[f"- {note}" for note in result["notes"]],
    ]
    return "\n".join(lines) + "\n"


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="smoke test: resnet56, 50 %%, 2 short rounds")
    parser.add_argument("--models", nargs="+", choices=list(CONFIGS), default=None)
    parser.add_argument("--ratios", nargs="+", type=float, default=None, help="channel ratios (default 0.3 0.5 0.7)")
    parser.add_argument("--deploy-ratios", nargs="+", type=float, default=[0.5, 0.7],
                        help="ratios whose pruned models are also timed deployed (default 0.5 0.7)")
    parser.add_argument("--deployments", nargs="+", choices=list(DEPLOYMENTS), default=list(DEPLOYMENTS))
    parser.add_argument("--rounds", type=int, default=None, help="interleaved latency rounds (default 5)")
    parser.add_argument("--seed", type=int, default=0, help="seed of the shuffled order within rounds")
    parser.add_argument("--min-run-time-b1", type=float, default=None, help="seconds per measurement, batch 1")
    parser.add_argument("--min-run-time-b64", type=float, default=None, help="seconds per measurement, batch 64")
    parser.add_argument("--warmup", type=int, default=2)
    parser.add_argument("--prune-repeats", type=int, default=None, help="timed prunings per variant (default 3)")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--min-cpu-share", type=float, default=0.85,
                        help="re-measure a latency round in which a model got less than this share of its threads' "
                             "CPU time (another process competed); 0 disables")
    parser.add_argument("--max-wait", type=float, default=600.0,
                        help="seconds the whole run may wait, before timings, for other processes to leave the CPUs "
                             "idle (busy fraction below --quiet-threshold); 0: never wait")
    parser.add_argument("--quiet-threshold", type=float, default=0.15)
    parser.add_argument("--max-extra-rounds", type=int, default=None,
                        help="at most this many re-measured rounds per model and batch size (default: --rounds)")
    parser.add_argument("--out", type=Path, default=None,
                        help="result JSON (a .md beside it); default benchmarks/results/surgery_speed.json, "
                             "none with --quick")
    parser.add_argument("--render", type=Path, default=None,
                        help="only recompute goals, verdicts and the .md of this saved result JSON (no timing)")
    parser.add_argument("--no-reexec", action="store_true",
                        help="do not restart with MALLOC_MMAP_MAX_=0 MALLOC_TRIM_THRESHOLD_=64 GiB")
    args = parser.parse_args()
    quick = args.quick
    args.models = args.models or (["resnet56"] if quick else list(CONFIGS))
    args.ratios = args.ratios or ([0.5] if quick else [0.3, 0.5, 0.7])
    args.deploy_ratios = [r for r in args.ratios if any(abs(r - d) < 1e-9 for d in args.deploy_ratios)]
    args.rounds = args.rounds or (2 if quick else 5)
    args.min_run_time_b1 = args.min_run_time_b1 or (0.05 if quick else 0.2)
    args.min_run_time_b64 = args.min_run_time_b64 or (0.05 if quick else 0.3)
    args.prune_repeats = args.prune_repeats or (1 if quick else 3)
    if args.out is None and not quick:
        args.out = RESULTS / "surgery_speed.json"
    args.gate = QuietGate(threshold=args.quiet_threshold, window=0.5, budget=args.max_wait)
    return args


def contention(rows: list[dict[str, Any]], args: argparse.Namespace, load: list[Any]) -> dict[str, Any]:
    """How shared the machine was: load averages, re-measured rounds, kept rounds with a low CPU share."""
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1
    busy = all(v is not None for v in load) and max(load[0][0], load[1][0]) > 0.5 * cores
    busy = busy or args.gate.waited > 0 or args.gate.passed_busy > 0
    disturbed = sum(r.get("b1_discarded_rounds", 0) + r.get("b64_discarded_rounds", 0) for r in rows
                    if r["variant"] == "dense")
    low_share = [f"{r['model']}@{r['target']:g} {r['variant']} {r.get('runtime', 'eager')}" for r in rows
                 if any((r.get(f"b{b}_cpu_share") or 1.0) < (args.min_cpu_share or 0.0) for b in (1, 64))]
    return {"load_before": load[0], "load_after": load[1], "shared_machine": busy or disturbed > 0 or bool(low_share),
            "disturbed_rounds_measured_again": disturbed, "kept_rounds_below_min_cpu_share": low_share,
            "waiting_for_quiet": args.gate.summary()}


def notes(result: dict[str, Any], args: argparse.Namespace) -> list[str]:
    disturbed = result["disturbed_rounds_measured_again"]
    return [
        "Latency: torch.utils.benchmark blocked_autorange per model per round, all variants of a model (at batch 64 "
        "every deployed one too) interleaved round by round in a shuffled order (seeded), one untimed pass right "
        "before each measurement; median and IQR over rounds. Eval mode, no_grad (inference_mode for folded-cl), "
        "fixed threads for torch and ONNX Runtime.",
        f"Contention check: a round in which some variant got less than {args.min_cpu_share} of its threads' CPU "
        "time (process CPU time / (wall x threads)) was discarded and measured again; "
        f"{disturbed} rounds were (b*_discarded_rounds, per model and batch size). b*_cpu_share: median share "
        "over the kept rounds. Pruning times are given as wall time (the goal) and as process CPU time, which "
        "other processes hardly affect.",
        f"Before every timed round and pruning repetition the run waited (at most {args.max_wait:g} s in all) "
        f"until other processes used < {args.quiet_threshold:g} of the CPUs over 0.5 s; it waited "
        f"{args.gate.waited:.0f} s, and {args.gate.passed_busy} timings started on a busy machine after the "
        "budget was spent (waiting_for_quiet).",
        f"The process ran with MALLOC_MMAP_MAX_={os.environ.get('MALLOC_MMAP_MAX_', 'unset')} and "
        f"MALLOC_TRIM_THRESHOLD_={os.environ.get('MALLOC_TRIM_THRESHOLD_', 'unset')}: glibc malloc keeps large "
        "activation buffers in the heap instead of mmap/munmap (or heap trimming) and page faults on every pass.",
        "Masked models compute the dense convolutions (zeros included): their MACs equal the dense model's.",
        "Torch-Pruning's uniform run keeps int(C*(1-r)) channels per layer; ours keeps round(C*(1-r)); its L1 "
        "group importance also sums BN and consumer weights, so the chosen channels may differ; parameter "
        "counts depend only on the widths (compared with MetaPruner given our widths).",
    ] + (["The machine was shared with other jobs (load average above half the cores before or after, or "
          "disturbed rounds): absolute latencies and pruning wall times are noisier and probably higher than on "
          "an idle machine."] if result["shared_machine"] else [])


def summarise(result: dict[str, Any], args: argparse.Namespace) -> dict[str, Any]:
    """Goals and verdicts of a result (also for ``--render``, from a saved JSON)."""
    result["efficiency_fastest_round"] = [rounded(r) for r in fastest_round_pivot(result["rows"],
                                                                                  result["deployed"])]
    result["goals"] = goals(result["rows"], result["checks"], result["efficiency"],
                            result["efficiency_fastest_round"], args)
    result["verdicts"] = verdicts(result)
    result["weak"] = WEAK
    return result


def write(result: dict[str, Any], out: Path | None) -> None:
    if out is not None:
        save_results(out, result)
        save_text(out.with_suffix(".md"), markdown(result))
        print(f"wrote {out} and {out.with_suffix('.md')}")
    else:
        with tempfile.TemporaryDirectory() as scratch:  # still exercise the writers in a smoke test
            save_results(Path(scratch) / "quick.json", result)
            save_text(Path(scratch) / "quick.md", markdown(result))


def render(path: Path) -> None:
    """Recompute goals, verdicts and the Markdown of a saved result (no timing)."""
    result = json.loads(path.read_text())
    settings = argparse.Namespace(deployments=result["settings"]["deployments"],
                                  deploy_ratios=result["settings"]["deploy_ratios"])
    summarise(result, settings)
    print("\n".join(["Verdict:", *result["verdicts"]]))
    write(result, path)


def main() -> None:
    args = parse_args()
    if args.render is not None:
        render(args.render)
        return
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    load_before, started = load_average(), time.perf_counter()
    print(f"surgery_speed: models {args.models}, ratios {args.ratios}, deployed {args.deployments} at "
          f"{args.deploy_ratios}, {args.rounds} rounds, {args.threads} threads, "
          f"MALLOC_MMAP_MAX_={os.environ.get('MALLOC_MMAP_MAX_', 'unset')}, "
          f"MALLOC_TRIM_THRESHOLD_={os.environ.get('MALLOC_TRIM_THRESHOLD_', 'unset')}, load {load_before}", flush=True)
    rows, checks, deployed = [], [], []
    for name in args.models:
        measured = bench_model(name, args)
        rows, checks, deployed = rows + measured["rows"], checks + measured["checks"], deployed + measured["deployed"]
    result: dict[str, Any] = {
        "benchmark": "surgery_speed", "machine": machine(),
        **contention(rows + deployed, args, [load_before, load_average()]),
        "wall_s": round(time.perf_counter() - started, 1),
        "settings": {"input_shape": list(SHAPE), "num_classes": 10, "models": args.models, "ratios": args.ratios,
                     "deploy_ratios": args.deploy_ratios, "deployments": args.deployments, "rounds": args.rounds,
                     "seed": args.seed, "min_run_time_s": {"1": args.min_run_time_b1, "64": args.min_run_time_b64},
                     "warmup": args.warmup, "prune_repeats": args.prune_repeats, "threads": args.threads,
                     "min_cpu_share": args.min_cpu_share, "max_extra_rounds": args.max_extra_rounds or args.rounds,
                     "round_to_auto": auto_round_to(torch.device("cpu")), "quick": args.quick,
                     "torch_pruning": tp.__version__, "onnxruntime": _version("onnxruntime")},
        "efficiency": [rounded(r) for r in efficiency_pivot(rows, deployed)],
        "deployed": [rounded(r) for r in deployed], "rows": [rounded(r) for r in rows],
        "checks": [rounded(c) for c in checks],
    }
    summarise(result, args)
    result["notes"] = notes(result, args)
    print_table("Speed-up ÷ MACs reduction at batch 64 per runtime (each against dense in the same runtime)",
                result["efficiency"])
    print_table("Deployed models at batch 64", result["deployed"], DEPLOYED_TABLE)
    print_table("Eager models (latency ms: median over rounds)", result["rows"], TABLE)
    print_table("Kept widths and parameters vs Torch-Pruning", result["checks"], CHECKS)
    print("\n".join(["Verdict:", *result["verdicts"]]))
    print(f"load average before {result['load_before']}, after {result['load_after']}; wall {result['wall_s']} s")
    write(result, args.out)


def _version(package: str) -> str | None:
    try:
        return importlib.metadata.version(package)
    except importlib.metadata.PackageNotFoundError:
        return None


if __name__ == "__main__":
    main()
