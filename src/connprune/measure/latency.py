"""Inference latency of a model, measured with :class:`torch.utils.benchmark.Timer`, and fair comparisons of models.

>>> from connprune.measure.latency import compare_latency, latency, prepare
>>> latency(model, (3, 32, 32), batch_size=64, threads=2)               # doctest: +SKIP
LatencyResult(median_ms=41.2, iqr_ms=0.6, runs=12, rounds_ms=())
>>> latency(model, (3, 32, 32), 64, runtime="onnxruntime", fold_bn=True)  # doctest: +SKIP
>>> compare_latency({"dense": dense, "pruned": pruned}, (3, 32, 32), 64)  # doctest: +SKIP
{'dense': LatencyResult(median_ms=41.5, ...), 'pruned': LatencyResult(median_ms=17.9, ...)}
>>> compare_latency({"eager": dense, "ort": prepare(dense, (3, 32, 32), runtime="onnxruntime")},
...                 (3, 32, 32), 64)                                    # doctest: +SKIP

Where the model runs (:func:`prepare`, and the same keywords on :func:`latency` and :func:`compare_latency`):

- ``runtime="torch"`` (default): the module in eager PyTorch. ``channels_last=True`` runs a copy converted to
  ``torch.channels_last`` on channels-last inputs (oneDNN's preferred layout on CPU: no reorder of activations
  between convolutions). ``inference_mode=True`` runs under :func:`torch.inference_mode` instead of
  :func:`torch.no_grad` (no version-counter or view tracking at all).
- ``runtime="onnxruntime"``: the model exported to ONNX (:func:`connprune.measure.runtime.to_onnx`) and run by an
  ONNX Runtime CPU session with the same thread count (:class:`connprune.measure.runtime.OnnxSession`). Needs the
  ``connprune[export]`` extra.
- ``fold_bn=True``: BatchNorm folded into the preceding layers first (:func:`connprune.surgery.fold.fold_batchnorm`),
  as a deployed model would be (ONNX Runtime fuses Conv+BN itself; eager PyTorch does not).

Measurement hygiene, and why:

- **Eval mode, no autograd.** The model runs as it would when deployed: ``model.eval()`` (BatchNorm uses running
  statistics, dropout is off) under ``torch.no_grad()``, so no graph is recorded. Every submodule's ``training``
  flag is restored afterwards.
- **Fixed thread count.** The number of intra-op threads changes latency more than most things being compared;
  ``threads`` (default: the current ``torch.get_num_threads()``) is given to the Timer (``num_threads``) and also
  set around the warm-up, then restored. Results are only comparable at the same thread count.
- **Warm-up.** The first passes pay one-off costs (oneDNN kernel selection and weight reordering, allocator growth,
  cold caches); ``warmup`` untimed passes run first. The Timer's own block-size estimate also runs the model before
  timing (``blocked_autorange``), which re-warms caches after another model ran.
- **Many runs, robust statistics.** ``blocked_autorange`` times blocks of passes until ``min_run_time`` seconds have
  been measured (blocks are long enough that timer overhead is negligible) and reports the median and interquartile
  range (IQR) of the per-pass time of each block — medians, not means, so a single hiccup does not move the result;
  ``adaptive_autorange`` (``mode="adaptive"``) goes on until IQR/median < 10 % or ``max_run_time``.
- **Accelerators.** On CUDA the Timer synchronises the device around every block (its default timer calls
  ``torch.accelerator.synchronize()``), so asynchronous kernel launches are not mistaken for finished work; the
  warm-up is synchronised explicitly too.
- **Interleaving, in a shuffled order.** Comparing models by timing one, then the other, lets a machine hiccup
  (another process, thermal throttling, a page-cache flush) land on one model only. :func:`compare_latency` measures
  the models round by round and reports, per model, the median and IQR of its per-round medians, so slow spells hit
  all models alike and show up as spread rather than as a bias. The order *within* each round is shuffled (seeded,
  :func:`round_orders`): a fixed order A, B, A, B, … always times A first after whatever happened between rounds
  (a pause while waiting for a quiet machine lets the cores clock down and the worker threads sleep), and a masked
  VGG-16 — the same computation as the dense one — came out 1.12–1.21× "faster" than dense at batch 1 that way.
  Each model also gets ``rewarm`` untimed passes right before each of its measurements.
- **Contention is measured, not guessed.** On a CPU shared with other processes, a multi-threaded forward pass does
  not just slow down in proportion: when one worker thread is descheduled, the others wait at the next barrier, and
  passes take 10–100× longer. Every measurement records its *CPU share*, the process CPU time divided by
  ``wall time × threads`` (≈ 1 when the threads had their cores; ≈ 0.5–0.7 with another busy process per core).
  :func:`compare_latency` can discard a round in which any model's share fell below ``min_cpu_share`` and measure
  it again (at most ``max_extra_rounds`` times); the result says how many rounds were discarded. (CPU only: on CUDA
  the share says nothing and is not checked.)

Outside this module, for CPU timings with large activations: glibc's ``malloc`` returns big blocks to the system
(``munmap``, or trimming the heap's free top) and maps them again on the next pass, so every pass pays page faults
(ResNet-50, 32×32, batch 64: ~750k minor faults and 1.3 s a pass instead of 0 and 0.7 s). Running the process with
``MALLOC_MMAP_MAX_=0`` *and* a large ``MALLOC_TRIM_THRESHOLD_`` (glibc reads both at start-up, so set them in the
environment of a new process) keeps the memory in the process; ``benchmarks/surgery_speed.py`` re-executes itself
with both set.
"""

from __future__ import annotations

import copy
import random
import statistics
import tempfile
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager, nullcontext
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import torch
from torch import nn
from torch.utils import benchmark

from connprune.errors import UserError
from connprune.measure.runtime import OnnxSession, eval_mode, to_onnx

__all__ = ["LatencyResult", "Runner", "compare_latency", "latency", "prepare", "round_orders"]

Runtime = Literal["torch", "onnxruntime"]
RUNTIMES = ("torch", "onnxruntime")


@dataclass(frozen=True)
class LatencyResult:
    """Latency of one forward pass of a whole batch, in milliseconds.

    ``median_ms``: the median; ``iqr_ms``: the interquartile range (spread); ``runs``: timed forward passes in all
    (in the kept rounds).
    For :func:`latency`, median and IQR are over the Timer's measured blocks (each block's time per pass); for
    :func:`compare_latency`, over the per-round medians, which ``rounds_ms`` lists in round order.
    """

    median_ms: float
    iqr_ms: float
    runs: int
    rounds_ms: tuple[float, ...] = ()
    cpu_share: float | None = None
    """Process CPU time / (wall time × threads) while measuring (median over the kept rounds); None on CUDA."""
    discarded_rounds: int = 0
    """Rounds measured again because some model's CPU share was below ``min_cpu_share`` (:func:`compare_latency`)."""

    @property
    def min_ms(self) -> float:
        return min(self.rounds_ms) if self.rounds_ms else self.median_ms

    @property
    def max_ms(self) -> float:
        return max(self.rounds_ms) if self.rounds_ms else self.median_ms


@dataclass
class Runner:
    """A model made ready to time on one runtime (:func:`prepare`): ``forward(x)`` inside ``context()``."""

    forward: Callable[[torch.Tensor], object]
    runtime: Runtime
    device: torch.device
    dtype: torch.dtype
    module: nn.Module | None = None
    """The PyTorch module that runs (eval mode is set around every measurement); None for ONNX Runtime."""
    channels_last: bool = False
    inference_mode: bool = False

    def example(self, input_shape: Sequence[int], batch_size: int) -> torch.Tensor:
        """A fixed seeded ``randn`` batch of ``(batch_size, *input_shape)`` on the runner's device, dtype, layout."""
        generator = torch.Generator().manual_seed(0)
        x = torch.randn((int(batch_size), *(int(s) for s in input_shape)), generator=generator, dtype=self.dtype)
        x = x.to(self.device)
        return x.contiguous(memory_format=torch.channels_last) if self.channels_last and x.dim() == 4 else x

    @contextmanager
    def context(self) -> Iterator[None]:
        """Eval mode (flags restored after) and no autograd: ``inference_mode`` or ``no_grad``."""
        with eval_mode(self.module) if self.module is not None else nullcontext(), \
                torch.inference_mode() if self.inference_mode else torch.no_grad():
            yield


@contextmanager
def _threads(threads: int) -> Iterator[None]:
    previous = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        yield
    finally:
        torch.set_num_threads(previous)


def _reference(model: nn.Module) -> torch.Tensor | None:
    for tensor in model.parameters():
        return tensor
    for tensor in model.buffers():
        return tensor
    return None


def _placed(model: nn.Module, device: torch.device | str | None) -> tuple[torch.device, torch.dtype]:
    """The device (default: the model's; the model is moved there otherwise) and floating dtype to run at."""
    reference = _reference(model)
    if device is None:
        device = reference.device if reference is not None else torch.device("cpu")
    device = torch.device(device)
    if reference is not None and reference.device != device:
        model.to(device)
    dtype = reference.dtype if reference is not None and reference.is_floating_point() else torch.float32
    return device, dtype


def _onnx_runner(model: nn.Module, input_shape: Sequence[int], device: torch.device, dtype: torch.dtype,
                 threads: int | None) -> Runner:
    """Export to a temporary ONNX file, open an ONNX Runtime session on it (the file is not needed afterwards)."""
    if device.type != "cpu":
        raise UserError(f"runtime 'onnxruntime' runs on the CPU here, but the model is on {device}; move it to the "
                        "CPU or use runtime='torch'")
    example = torch.zeros((2, *(int(s) for s in input_shape)), dtype=dtype)
    with tempfile.TemporaryDirectory(prefix="connprune-latency-") as scratch:
        path = to_onnx(model, example, Path(scratch) / "model.onnx")
        session = OnnxSession(path, threads=threads)
    return Runner(forward=session, runtime="onnxruntime", device=device, dtype=dtype)


def prepare(model: nn.Module, input_shape: Sequence[int], *, runtime: Runtime = "torch",
            channels_last: bool = False, inference_mode: bool = False, fold_bn: bool = False,
            device: torch.device | str | None = None, threads: int | None = None) -> Runner:
    """``model`` ready to time on ``runtime`` with the options of the module docstring.

    The model itself is only changed by moving it to ``device`` (as ``nn.Module.to`` does); ``fold_bn`` and
    ``channels_last`` work on a copy. ``threads``: ONNX Runtime's intra-op threads (default: torch's current count;
    torch's own count is set per measurement).
    """
    if runtime not in RUNTIMES:
        raise UserError(f"unknown runtime {runtime!r}; choose one of: {', '.join(RUNTIMES)}")
    if runtime == "onnxruntime" and (channels_last or inference_mode):
        raise UserError("channels_last and inference_mode apply to runtime 'torch' only; ONNX Runtime picks its "
                        "own layouts and has no autograd")
    device, dtype = _placed(model, device)
    if fold_bn:
        from connprune.surgery.fold import fold_batchnorm

        model = fold_batchnorm(model, tuple(int(s) for s in input_shape))
    if runtime == "onnxruntime":
        return _onnx_runner(model, input_shape, device, dtype, threads)
    if channels_last:
        model = copy.deepcopy(model) if not fold_bn else model
        model = model.to(memory_format=torch.channels_last)
    return Runner(forward=model, runtime="torch", device=device, dtype=dtype, module=model,
                  channels_last=channels_last, inference_mode=inference_mode)


def _synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _check(input_shape: Sequence[int], batch_size: int, min_run_time: float, warmup: int) -> None:
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    if not input_shape or any(int(s) < 1 for s in input_shape):
        raise ValueError(f"input_shape must be a non-empty shape of positive sizes (C, H, W), got {input_shape!r}")
    if min_run_time <= 0:
        raise ValueError(f"min_run_time must be > 0 seconds, got {min_run_time}")
    if warmup < 0:
        raise ValueError(f"warmup must be >= 0, got {warmup}")


def _measure(runner: Runner, x: torch.Tensor, threads: int, min_run_time: float, mode: str,
             max_run_time: float | None, warmup: int = 0) -> tuple[benchmark.Measurement, float | None]:
    """``warmup`` untimed passes, then one autorange measurement and the CPU share it got (None on CUDA)."""
    if mode not in ("blocked", "adaptive"):
        raise ValueError(f"mode must be 'blocked' or 'adaptive', got {mode!r}")
    timer = benchmark.Timer(stmt="forward(x)", globals={"forward": runner.forward, "x": x}, num_threads=threads)
    with runner.context():
        with _threads(threads):
            for _ in range(warmup):
                runner.forward(x)
            _synchronize(x.device)
        cpu, wall = time.process_time(), time.perf_counter()
        if mode == "adaptive":
            measurement = timer.adaptive_autorange(threshold=0.1, min_run_time=min_run_time,
                                                   max_run_time=max_run_time or max(10.0, 10 * min_run_time))
        else:
            measurement = timer.blocked_autorange(min_run_time=min_run_time)
        cpu, wall = time.process_time() - cpu, time.perf_counter() - wall
    share = None if x.device.type != "cpu" or wall <= 0 else cpu / (wall * threads)
    return measurement, share


def _runner(model: nn.Module | Runner, input_shape: Sequence[int], options: Mapping[str, Any]) -> Runner:
    return model if isinstance(model, Runner) else prepare(model, input_shape, **options)


def latency(model: nn.Module | Runner, input_shape: Sequence[int], batch_size: int = 1, *,
            runtime: Runtime = "torch", channels_last: bool = False, inference_mode: bool = False,
            fold_bn: bool = False, device: torch.device | str | None = None, threads: int | None = None,
            warmup: int = 3, min_run_time: float = 0.5, mode: Literal["blocked", "adaptive"] = "blocked",
            max_run_time: float | None = None) -> LatencyResult:
    """Median forward latency (ms) of ``model`` on a ``(batch_size, *input_shape)`` batch; see the module docstring.

    ``model``: a module (run as ``runtime``/``channels_last``/``inference_mode``/``fold_bn`` say, see
    :func:`prepare`) or a :class:`Runner` already prepared. ``device``: where to run (default: where the model's
    parameters are). ``threads``: intra-op threads (default: the current setting). ``warmup``: untimed passes first.
    ``min_run_time``: seconds of timed passes at least. ``mode``: ``"blocked"`` (``Timer.blocked_autorange``) or
    ``"adaptive"`` (``Timer.adaptive_autorange``, until IQR/median < 0.1 or ``max_run_time``, default
    max(10 s, 10 × ``min_run_time``)).
    """
    _check(input_shape, batch_size, min_run_time, warmup)
    threads = int(threads) if threads is not None else torch.get_num_threads()
    runner = _runner(model, input_shape, {"runtime": runtime, "channels_last": channels_last, "device": device,
                                          "inference_mode": inference_mode, "fold_bn": fold_bn, "threads": threads})
    x = runner.example(input_shape, batch_size)
    measurement, share = _measure(runner, x, threads, min_run_time, mode, max_run_time, warmup)
    return LatencyResult(median_ms=measurement.median * 1e3, iqr_ms=measurement.iqr * 1e3,
                         runs=len(measurement.times) * measurement.number_per_run, cpu_share=share)


def _iqr(values: Sequence[float]) -> float:
    if len(values) < 2:
        return 0.0
    quartiles = statistics.quantiles(values, n=4, method="inclusive")
    return quartiles[2] - quartiles[0]


def round_orders(names: Sequence[str], seed: int | None = 0) -> Iterator[list[str]]:
    """The order of the models in each successive round of :func:`compare_latency`: a fresh shuffle every round
    (``random.Random(seed)``, so the same seed gives the same orders); ``seed=None``: the given order every round."""
    rng = random.Random(seed)
    while True:
        order = list(names)
        if seed is not None:
            rng.shuffle(order)
        yield order


def _round(runners: Mapping[str, Runner], inputs: Mapping[str, torch.Tensor], order: list[str], threads: int,
           min_run_time: float, mode: str, rewarm: int) -> dict[str, tuple[float, float | None, int]]:
    """One round: every model measured once, in ``order``; name → (median ms, CPU share, timed passes)."""
    measured = {}
    for name in order:
        measurement, share = _measure(runners[name], inputs[name], threads, min_run_time, mode, None, rewarm)
        measured[name] = (measurement.median * 1e3, share, len(measurement.times) * measurement.number_per_run)
    return measured


def compare_latency(models: Mapping[str, nn.Module | Runner], input_shape: Sequence[int], batch_size: int = 1,
                    rounds: int = 5, *, runtime: Runtime = "torch", channels_last: bool = False,
                    inference_mode: bool = False, fold_bn: bool = False, device: torch.device | str | None = None,
                    threads: int | None = None, warmup: int = 3, rewarm: int = 1, min_run_time: float = 0.2,
                    mode: Literal["blocked", "adaptive"] = "blocked", seed: int | None = 0,
                    min_cpu_share: float | None = None, max_extra_rounds: int | None = None,
                    retry_delay: float = 1.0,
                    before_round: Callable[[], object] | None = None) -> dict[str, LatencyResult]:
    """Latency of several models measured interleaved, round by round, in a shuffled order (``rounds`` times).

    ``models``: modules (prepared with ``runtime``/``channels_last``/``inference_mode``/``fold_bn``, see
    :func:`prepare`) or :class:`Runner` s, which lets one comparison mix runtimes. Every model is warmed up
    (``warmup`` passes) before the first round; in each round the models are measured in the order
    :func:`round_orders` gives for ``seed`` (``None``: the given order), each with ``rewarm`` untimed passes and then
    one ``blocked_autorange`` of ``min_run_time`` seconds. Returns, per name (in the given order), the median and
    IQR over the per-round medians (``rounds_ms``) and the total timed passes, so a slow spell of the machine widens
    the spread of every model instead of biasing one of them.

    ``min_cpu_share`` (CPU only; e.g. 0.85): a round in which some model's CPU share (module docstring) was below it
    is discarded and measured again after ``retry_delay`` seconds, at most ``max_extra_rounds`` times in all
    (default: ``rounds``); once they are spent, the remaining rounds are kept whatever their share (the results'
    ``cpu_share`` then shows it). ``before_round``, if given, is called before every round (re-measured ones too),
    e.g. to wait until other processes leave the CPUs alone.
    """
    if rounds < 1:
        raise ValueError(f"rounds must be >= 1, got {rounds}")
    if not models:
        return {}
    _check(input_shape, batch_size, min_run_time, warmup)
    threads = int(threads) if threads is not None else torch.get_num_threads()
    options = {"runtime": runtime, "channels_last": channels_last, "inference_mode": inference_mode,
               "fold_bn": fold_bn, "device": device, "threads": threads}
    runners = {name: _runner(model, input_shape, options) for name, model in models.items()}
    inputs = {name: runner.example(input_shape, batch_size) for name, runner in runners.items()}
    for name, runner in runners.items():
        with runner.context(), _threads(threads):
            for _ in range(warmup):
                runner.forward(inputs[name])
        _synchronize(runner.device)
    extra = rounds if max_extra_rounds is None else int(max_extra_rounds)
    per_round: dict[str, list[float]] = {name: [] for name in models}
    shares: dict[str, list[float]] = {name: [] for name in models}
    runs, discarded, orders = dict.fromkeys(models, 0), 0, round_orders(list(models), seed)
    while len(per_round[next(iter(models))]) < rounds:
        if before_round is not None:
            before_round()
        measured = _round(runners, inputs, next(orders), threads, min_run_time, mode, rewarm)
        disturbed = min_cpu_share is not None and any(
            share is not None and share < min_cpu_share for _, share, _ in measured.values())
        if disturbed and discarded < extra:
            discarded += 1
            time.sleep(retry_delay)
            continue
        for name, (ms, share, count) in measured.items():
            per_round[name].append(ms)
            runs[name] += count
            if share is not None:
                shares[name].append(share)
    return {name: LatencyResult(median_ms=statistics.median(values), iqr_ms=_iqr(values), runs=runs[name],
                                rounds_ms=tuple(values),
                                cpu_share=statistics.median(shares[name]) if shares[name] else None,
                                discarded_rounds=discarded)
            for name, values in per_round.items()}
