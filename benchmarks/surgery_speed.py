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

Reported, with goals:

1. ``speedup_b64 / macs_reduction`` of our shrunk models at batch 64 (goal ≥ 0.8): does a MAC saved save time?
2. Pruning wall time, ``method.prune`` + ``surgery.apply`` vs ``MetaPruner(...)`` + ``.step()`` (goal ≤ 1.5×);
   median of ``--prune-repeats`` interleaved repetitions, each on a fresh copy of the dense model.
3. Same kept channels → same parameter count as Torch-Pruning: MetaPruner is given our ``round_to=1`` widths
   (``pruning_ratio_dict``, per layer) and its parameter count compared with ours. Its uniform run keeps
   int(C·(1-r)) channels where we keep round(C·(1-r)); those per-layer counts are listed side by side.

Hygiene: latency with :func:`connprune.measure.latency.compare_latency` (``torch.utils.benchmark`` blocked
autorange, eval mode, no_grad, warm-up), all variants of a model interleaved round by round (dense, masked, ours,
…, dense, masked, …), median and IQR over rounds; fixed threads (``--threads``, default 2). The process runs with
``MALLOC_MMAP_MAX_=0`` and ``MALLOC_TRIM_THRESHOLD_=64 GiB`` (glibc reads them at start-up, so the script
re-executes itself with them set): by default glibc serves the large activation buffers with ``mmap`` and unmaps
them on ``free``, so every pass page-faults them in again. ``MALLOC_MMAP_MAX_=0`` alone is not enough: the buffers
then come from the heap, but glibc trims the heap's free top back to the system after each pass (its trim threshold
only adapts when mmapped chunks are freed, which no longer happens) — measured on ResNet-50, batch 64: ~750k minor
faults and 1.3 s per pass by default, ~300k and 1.0–3.7 s with ``MALLOC_MMAP_MAX_=0`` only, 0 and 0.71 s with both.
On a machine shared with other jobs: before every timed round (and pruning repetition) the run waits, within a
total budget (``--max-wait``), until other processes leave the CPUs idle (``/proc/stat``); a latency round in which
some variant still got less than ``--min-cpu-share`` of its threads' CPU time is discarded and measured again. The
load average is recorded before and after; waiting, re-measuring and a busy machine are all reported.

Run: ``python benchmarks/surgery_speed.py [--quick] [--models vgg16 resnet56 resnet50] [--ratios 0.3 0.5 0.7]
[--rounds 3] [--out benchmarks/results/surgery_speed.json]``. ``--quick`` (ResNet-56, 50 %, 2 short rounds) is a
smoke test and writes no result files unless ``--out`` is given.
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
from connprune.measure.latency import LatencyResult, compare_latency  # noqa: E402
from connprune.measure.sparsity import count_prunable  # noqa: E402
from connprune.methods.channel_budget import auto_round_to, kept_channels, remaining_weights  # noqa: E402

SHAPE = (3, 32, 32)
CONFIGS: dict[str, dict[str, Any]] = {"vgg16": {}, "resnet56": {}, "resnet50": {"small_input": True}}
RESULTS = Path(__file__).resolve().parent / "results"
VARIANTS = ("masked", "ours", "ours-aligned", "torch-pruning")
EFFICIENCY_GOAL, PRUNE_TIME_GOAL = 0.8, 1.5


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
        model, _ = surgery.apply(model, result, shrink=True, input_shape=SHAPE)
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


# ------------------------------------------------------------------------------------------------------------ one model


def bench_model(name: str, args: argparse.Namespace) -> dict[str, Any]:
    dense = models.create(name, num_classes=10, in_channels=SHAPE[0], input_size=SHAPE[1], **CONFIGS[name]).eval()
    graph = build(dense, SHAPE)
    skip = next(n for n, m in dense.named_modules() if m is classifier(dense))
    dense_widths, dense_cost = widths(dense), cost(dense, SHAPE)
    ours(dense, 0.5, 1), torch_pruning(dense, 0.5)  # untimed: one-time costs (lazy imports, first traces)
    variants: dict[str, nn.Module] = {"dense": dense}
    rows: list[dict[str, Any]] = [{"model": name, "target": 0.0, "variant": "dense", "channel_ratio": 0.0,
                                   "weight_sparsity": 0.0, "params": dense_cost.params, "macs": dense_cost.macs}]
    checks: list[dict[str, Any]] = []
    for ratio in args.ratios:
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
        masked, _ = surgery.apply(copy.deepcopy(dense), result, shrink=False, input_shape=SHAPE)
        matched, _ = torch_pruning(dense, ratio, matching_ratios(dense_widths, widths(shrunk), skip))
        built = {"masked": masked, "ours": shrunk, "ours-aligned": aligned, "torch-pruning": tp_model}
        tp_seconds, tp_cpu = median(times["torch-pruning"]), median(cpu_times["torch-pruning"])
        for variant, model in built.items():
            variants[f"{variant}@{ratio:g}"] = model
            model_cost = cost(model, SHAPE)
            row = {"model": name, "target": ratio, "variant": variant,
                   "channel_ratio": channel_ratio_of(dense_widths, widths(model), skip),
                   "weight_sparsity": 1.0 - count_prunable(model) / count_prunable(dense) if variant != "masked"
                   else sparsity, "params": model_cost.params, "macs": model_cost.macs,
                   "macs_reduction": dense_cost.macs / model_cost.macs}
            if variant in times:
                row["prune_s"] = median(times[variant])
                row["prune_s_all"] = times[variant]
                row["prune_vs_tp"] = row["prune_s"] / tp_seconds
                row["prune_cpu_s"] = median(cpu_times[variant])
                row["prune_cpu_vs_tp"] = row["prune_cpu_s"] / tp_cpu
            rows.append(row)
        ours_widths, tp_widths = widths(shrunk), widths(tp_model)
        differing = {layer: {"dense": width, "ours": ours_widths[layer], "torch-pruning": tp_widths[layer]}
                     for layer, width in dense_widths.items() if ours_widths[layer] != tp_widths[layer]}
        checks.append({
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
        })
        checks[-1]["params_equal_tp_same_widths"] = checks[-1]["params_ours"] == checks[-1]["params_tp_same_widths"]
        print(f"  {name} @ {ratio:g}: pruned (ours {median(times['ours']):.2f} s, aligned "
              f"{median(times['ours-aligned']):.2f} s, Torch-Pruning {tp_seconds:.2f} s)", flush=True)
    latencies: dict[int, dict[str, LatencyResult]] = {}
    for batch, rounds, min_run_time in ((1, args.rounds, args.min_run_time_b1),
                                        (64, args.rounds, args.min_run_time_b64)):
        started = time.perf_counter()
        latencies[batch] = compare_latency(variants, SHAPE, batch, rounds=rounds, threads=args.threads,
                                           warmup=args.warmup, min_run_time=min_run_time,
                                           min_cpu_share=args.min_cpu_share or None,
                                           max_extra_rounds=args.max_extra_rounds, retry_delay=2.0,
                                           before_round=args.gate)
        some = next(iter(latencies[batch].values()))
        print(f"  {name}: latency at batch {batch} measured in {time.perf_counter() - started:.0f} s "
              f"({some.discarded_rounds} disturbed rounds measured again)", flush=True)
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
        if row["variant"] in ("ours", "ours-aligned", "torch-pruning"):
            row["efficiency_b64"] = row["speedup_b64"] / row["macs_reduction"]
    return {"rows": rows, "checks": checks}


# ------------------------------------------------------------------------------------------------------------ report


TABLE = ["model", "target", "variant", "channel_ratio", "params", "macs", "macs_reduction", "b1_ms", "b1_iqr_ms",
         "b64_ms", "b64_iqr_ms", "b64_cpu_share", "speedup_b1", "speedup_b64", "efficiency_b64", "prune_s",
         "prune_vs_tp", "prune_cpu_vs_tp"]
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


def goals(rows: list[dict[str, Any]], checks: list[dict[str, Any]], min_share: float) -> dict[str, Any]:
    def efficiency(variant: str) -> dict[str, float]:
        return {f"{r['model']}@{r['target']:g}": round(r["efficiency_b64"], 3) for r in rows
                if r["variant"] == variant}

    per_model = {}
    for name in dict.fromkeys(r["model"] for r in rows):
        sums = {v: sum(r["prune_s"] for r in rows if r["model"] == name and r["variant"] == v)
                for v in ("ours", "ours-aligned", "torch-pruning")}
        cpu = {v: sum(r["prune_cpu_s"] for r in rows if r["model"] == name and r["variant"] == v)
               for v in ("ours", "ours-aligned", "torch-pruning")}
        per_model[name] = {"ours/tp": round(sums["ours"] / sums["torch-pruning"], 3),
                           "ours-aligned/tp": round(sums["ours-aligned"] / sums["torch-pruning"], 3),
                           "cpu time ours/tp": round(cpu["ours"] / cpu["torch-pruning"], 3)}
    aligned, unaligned = efficiency("ours-aligned"), efficiency("ours")
    # latency goals are trustworthy only if every kept batch-64 round ran with its threads' cores
    reliable = all((r.get("b64_cpu_share") or 1.0) >= min_share for r in rows)
    return {
        f"speedup/MACs-reduction at batch 64 >= {EFFICIENCY_GOAL} (ours, round_to auto)": {
            "met": all(v >= EFFICIENCY_GOAL for v in aligned.values()), "values": aligned,
            "measurements_uncontended": reliable},
        f"speedup/MACs-reduction at batch 64 >= {EFFICIENCY_GOAL} (ours, round_to=1)": {
            "met": all(v >= EFFICIENCY_GOAL for v in unaligned.values()), "values": unaligned,
            "measurements_uncontended": reliable},
        "speedup/MACs-reduction at batch 64 (torch-pruning, for reference)": {"values": efficiency("torch-pruning")},
        f"pruning time <= {PRUNE_TIME_GOAL} x Torch-Pruning (sum over ratios, per model)": {
            "met": all(max(v["ours/tp"], v["ours-aligned/tp"]) <= PRUNE_TIME_GOAL for v in per_model.values()),
            "values": per_model},
        "same kept widths -> same params as Torch-Pruning": {
            "met": all(c["params_equal_tp_same_widths"] and c["widths_equal_tp_same_widths"] for c in checks),
            "values": {f"{c['model']}@{c['target']:g}": [c["params_ours"], c["params_tp_same_widths"]]
                       for c in checks}},
    }


def markdown(result: dict[str, Any]) -> str:
    m = result["machine"]
    lines = [
        "# Surgery speed: connprune L1-filter + surgery vs Torch-Pruning", "",
        f"Machine: {m['cpu']}, {m['cores_usable']} usable cores, torch {m['torch']}, {result['settings']['threads']} "
        f"threads, CPU capability {m['cpu_capability']}, "
        f"`MALLOC_MMAP_MAX_={m['env'].get('MALLOC_MMAP_MAX_', 'unset')}`, "
        f"`MALLOC_TRIM_THRESHOLD_={m['env'].get('MALLOC_TRIM_THRESHOLD_', 'unset')}`."
        f" Load average before {result['load_before']}, after {result['load_after']}"
        + (" — **shared, busy machine: absolute latencies are noisy; interleaving keeps ratios fair**."
           if result["shared_machine"] else "."),
        "", f"Input 3×32×32, 10 classes; latency = median over {result['settings']['rounds']} interleaved rounds "
        "(IQR over rounds beside it), eval mode, no_grad. `target`: channel ratio asked; `channel_ratio`: hidden "
        "channels actually removed. `efficiency_b64` = speed-up at batch 64 ÷ MACs reduction. `prune_s`: median "
        "wall time of prune + surgery (ours) or MetaPruner construction + step (Torch-Pruning).", "",
        markdown_table([rounded(r) for r in result["rows"]], TABLE), "## Goals", "",
    ]
    for goal, value in result["goals"].items():
        status = "" if "met" not in value else (" — **met**" if value["met"] else " — **not met**")
        if value.get("measurements_uncontended") is False:
            status += " (contended measurements: not conclusive)"
        lines.append(f"- {goal}{status}: `{value['values']}`")
    lines += ["", "## Same kept channels → same parameters?", "",
              "`params_tp_same_widths`: MetaPruner given our round_to=1 widths per layer. `*_tp_uniform`: its own "
              "uniform run, which keeps int(C·(1-r)) channels per layer where we keep round(C·(1-r)).", "",
              markdown_table([rounded(c) for c in result["checks"]], CHECKS)]
    lines += ["", "## Notes", ""] + [f"- {note}" for note in result["notes"]]
    return "\n".join(lines) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="smoke test: resnet56, 50 %%, 2 short rounds")
    parser.add_argument("--models", nargs="+", choices=list(CONFIGS), default=None)
    parser.add_argument("--ratios", nargs="+", type=float, default=None, help="channel ratios (default 0.3 0.5 0.7)")
    parser.add_argument("--rounds", type=int, default=None, help="interleaved latency rounds (default 5)")
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
    parser.add_argument("--no-reexec", action="store_true", 
                        help="do not restart with MALLOC_MMAP_MAX_=0 MALLOC_TRIM_THRESHOLD_=64 GiB")
    args = parser.parse_args()
    quick = args.quick
    args.models = args.models or (["resnet56"] if quick else list(CONFIGS))
    args.ratios = args.ratios or ([0.5] if quick else [0.3, 0.5, 0.7])
    args.rounds = args.rounds or (2 if quick else 5)
    args.min_run_time_b1 = args.min_run_time_b1 or (0.05 if quick else 0.2)
    args.min_run_time_b64 = args.min_run_time_b64 or (0.05 if quick else 0.3)
    args.prune_repeats = args.prune_repeats or (1 if quick else 3)
    if args.out is None and not quick:
        args.out = RESULTS / "surgery_speed.json"
    args.gate = QuietGate(threshold=args.quiet_threshold, window=0.5, budget=args.max_wait)
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    load_before, started = load_average(), time.perf_counter()
    print(f"surgery_speed: models {args.models}, ratios {args.ratios}, {args.rounds} rounds, {args.threads} threads, "
          f"MALLOC_MMAP_MAX_={os.environ.get('MALLOC_MMAP_MAX_', 'unset')}, "
          f"MALLOC_TRIM_THRESHOLD_={os.environ.get('MALLOC_TRIM_THRESHOLD_', 'unset')}, load {load_before}", flush=True)
    rows, checks = [], []
    for name in args.models:
        measured = bench_model(name, args)
        rows += measured["rows"]
        checks += measured["checks"]
    load_after = load_average()
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1
    busy = load_before is not None and load_after is not None and max(load_before[0], load_after[0]) > 0.5 * cores
    busy = busy or args.gate.waited > 0 or args.gate.passed_busy > 0
    disturbed = sum(r.get("b1_discarded_rounds", 0) + r.get("b64_discarded_rounds", 0) for r in rows
                    if r["variant"] == "dense")
    low_share = [f"{r['model']}@{r['target']:g} {r['variant']}" for r in rows
                 if any((r.get(f"b{b}_cpu_share") or 1.0) < (args.min_cpu_share or 0.0) for b in (1, 64))]
    result = {
        "benchmark": "surgery_speed", "machine": machine(), "load_before": load_before, "load_after": load_after,
        "shared_machine": busy or disturbed > 0 or bool(low_share),
        "disturbed_rounds_measured_again": disturbed, "kept_rounds_below_min_cpu_share": low_share,
        "waiting_for_quiet": args.gate.summary(),
        "wall_s": round(time.perf_counter() - started, 1),
        "settings": {"input_shape": list(SHAPE), "num_classes": 10, "models": args.models, "ratios": args.ratios,
                     "rounds": args.rounds, "min_run_time_s": {"1": args.min_run_time_b1, "64": args.min_run_time_b64},
                     "warmup": args.warmup, "prune_repeats": args.prune_repeats, "threads": args.threads,
                     "min_cpu_share": args.min_cpu_share, "max_extra_rounds": args.max_extra_rounds or args.rounds,
                     "round_to_auto": auto_round_to(torch.device("cpu")), "quick": quick,
                     "torch_pruning": tp.__version__},
        "rows": [rounded(r) for r in rows], "checks": [rounded(c) for c in checks], "goals": goals(rows, checks, args.min_cpu_share or 0.0),
        "notes": [
            "Latency: torch.utils.benchmark blocked_autorange per model per round, all variants of a model "
            "interleaved round by round; median and IQR over rounds. Eval mode, no_grad, fixed threads.",
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
              "an idle machine."] if busy or disturbed or low_share else []),
    }
    print_table("Surgery speed (latency ms: median over rounds; efficiency = speed-up b64 / MACs reduction)",
                [rounded(r) for r in rows], TABLE)
    print_table("Kept widths and parameters vs Torch-Pruning", [rounded(c) for c in checks], CHECKS)
    for goal, value in result["goals"].items():
        contended = " (contended measurements: not conclusive)" if value.get("measurements_uncontended") is False else ""
        print(f"{goal}: {'' if 'met' not in value else ('met' if value['met'] else 'NOT met')}{contended} "
              f"{value['values']}")
    print(f"load average before {load_before}, after {load_after}; wall {result['wall_s']} s")
    if args.out is not None:
        save_results(args.out, result)
        save_text(args.out.with_suffix(".md"), markdown(result))
        print(f"wrote {args.out} and {args.out.with_suffix('.md')}")
    else:
        with tempfile.TemporaryDirectory() as scratch:  # still exercise the writers in a smoke test
            save_results(Path(scratch) / "quick.json", result)
            save_text(Path(scratch) / "quick.md", markdown(result))


if __name__ == "__main__":
    main()
