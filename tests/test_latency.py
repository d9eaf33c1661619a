"""connprune.measure.latency: positive numbers, ordering by size, interleaved comparison in a shuffled order,
masked = dense, the runtimes and layouts (all tiny and fast)."""

from __future__ import annotations

import copy
import itertools

import pytest
import torch
from torch import nn

from connprune.errors import UserError
from connprune.measure import cost
from connprune.measure.latency import LatencyResult, Runner, compare_latency, latency, prepare, round_orders

SHAPE = (3, 16, 16)


def net(width: int) -> nn.Sequential:
    return nn.Sequential(nn.Conv2d(3, width, 3, padding=1), nn.BatchNorm2d(width), nn.ReLU(),
                         nn.Conv2d(width, width, 3, padding=1), nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten(),
                         nn.Linear(width, 10))


def test_latency_positive_and_restores_state() -> None:
    model = net(8).train()
    threads = torch.get_num_threads()
    result = latency(model, SHAPE, batch_size=2, threads=1, warmup=1, min_run_time=0.02)
    assert isinstance(result, LatencyResult)
    assert result.median_ms > 0 and result.iqr_ms >= 0 and result.runs >= 1
    assert model.training and all(m.training for m in model.modules())  # training flags restored
    assert torch.get_num_threads() == threads
    assert all(p.grad is None for p in model.parameters())


def test_bigger_model_is_slower() -> None:
    small, big = net(4), net(128)  # ~64x the MACs of the second conv (the dominant one)
    assert cost(big, SHAPE).macs > 64 * cost(small, SHAPE).macs
    results = compare_latency({"small": small, "big": big}, SHAPE, batch_size=8, rounds=3, threads=1, warmup=1,
                              min_run_time=0.03)
    assert results["big"].median_ms > results["small"].median_ms


def test_compare_returns_every_model_with_rounds() -> None:
    models = {"a": net(4), "b": net(8), "c": nn.Flatten()}
    results = compare_latency(models, (3, 4, 4), batch_size=1, rounds=2, threads=1, warmup=1, min_run_time=0.01)
    assert list(results) == ["a", "b", "c"]  # parameterless models work too
    for result in results.values():
        assert len(result.rounds_ms) == 2 and result.median_ms > 0 and result.runs >= 2
        assert result.min_ms <= result.median_ms <= result.max_ms


def test_disturbed_rounds_are_measured_again() -> None:
    # A CPU share above 1 is impossible, so every round counts as disturbed until the extra rounds are spent.
    calls = []
    results = compare_latency({"a": net(4), "b": net(8)}, SHAPE, batch_size=1, rounds=2, threads=1, warmup=0,
                              min_run_time=0.01, min_cpu_share=1.5, max_extra_rounds=1, retry_delay=0.0,
                              before_round=lambda: calls.append(1))
    assert len(calls) == 3  # two kept rounds and one measured again
    for result in results.values():
        assert result.discarded_rounds == 1 and len(result.rounds_ms) == 2
        assert result.cpu_share is not None and 0 < result.cpu_share < 1.5


def test_adaptive_mode_and_bad_arguments() -> None:
    assert latency(net(4), SHAPE, 1, threads=1, warmup=0, min_run_time=0.01, mode="adaptive",
                   max_run_time=0.2).median_ms > 0
    with pytest.raises(ValueError):
        latency(net(4), SHAPE, 0)
    with pytest.raises(ValueError):
        compare_latency({"a": net(4)}, SHAPE, 1, rounds=0)
    with pytest.raises(ValueError):
        latency(net(4), SHAPE, 1, min_run_time=0.01, mode="fastest")  # type: ignore[arg-type]


class Recorder(nn.Module):
    """Identity that writes its name into ``log`` on every call (what ran, in which order)."""

    def __init__(self, name: str, log: list[str]) -> None:
        super().__init__()
        self.name, self.log = name, log

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        self.log.append(self.name)
        return x


def measured_orders(seed: int | None, rounds: int = 8) -> list[list[str]]:
    """The order in which compare_latency really ran the models in each round (from their own call log)."""
    log: list[str] = []
    models = {name: Recorder(name, log) for name in ("a", "b", "c")}
    compare_latency(models, (1, 2, 2), 1, rounds=rounds, threads=1, warmup=0, rewarm=0, min_run_time=0.001,
                    seed=seed, before_round=lambda: log.append("|"))
    rounds_logged = "".join(log).split("|")[1:]
    return [list(dict.fromkeys(calls)) for calls in rounds_logged]


def test_round_order_is_shuffled_and_seeded() -> None:
    orders = measured_orders(seed=3)
    assert len(orders) == 8 and all(sorted(order) == ["a", "b", "c"] for order in orders)
    assert measured_orders(seed=3) == orders  # deterministic under a seed
    assert orders == list(itertools.islice(round_orders(["a", "b", "c"], 3), 8))
    assert len({order[0] for order in orders}) == 3  # every model is timed first in some round
    assert len({tuple(order) for order in orders}) > 2
    assert measured_orders(seed=4) != orders
    assert measured_orders(seed=None) == [["a", "b", "c"]] * 8  # seed=None: the given order


def masked_copy(model: nn.Module, fraction: float = 0.7) -> nn.Module:
    """The same shapes and computation with most output channels' weights zeroed (a masked, unshrunk model)."""
    masked = copy.deepcopy(model)
    with torch.no_grad():
        for module in masked.modules():
            if isinstance(module, nn.Conv2d):
                module.weight[: int(module.out_channels * fraction)] = 0
    return masked


def test_masked_model_times_like_dense() -> None:
    # Same work, so the ratio of medians must sit near 1: the order bias this guards against made a masked VGG-16
    # 1.12-1.21x "faster" than dense. Retries absorb a busy shared machine; rounds where another process took the
    # core are measured again.
    torch.manual_seed(0)
    dense = nn.Sequential(nn.Conv2d(3, 64, 3, padding=1), nn.BatchNorm2d(64), nn.ReLU(), nn.MaxPool2d(2),
                          nn.Conv2d(64, 128, 3, padding=1), nn.BatchNorm2d(128), nn.ReLU(), nn.MaxPool2d(2),
                          nn.Conv2d(128, 128, 3, padding=1), nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten(),
                          nn.Linear(128, 10)).eval()
    masked = masked_copy(dense)
    ratios = []
    for attempt in range(3):
        results = compare_latency({"dense": dense, "masked": masked}, (3, 32, 32), 1, rounds=9, threads=1,
                                  warmup=2, min_run_time=0.05, seed=attempt, min_cpu_share=0.8, retry_delay=0.1)
        ratios.append(results["masked"].median_ms / results["dense"].median_ms)
        if 0.8 <= ratios[-1] <= 1.25:
            break
    assert 0.8 <= ratios[-1] <= 1.25, f"masked/dense latency ratios {ratios}"


def test_prepared_runtimes_compute_the_model() -> None:
    torch.manual_seed(0)
    model = net(8).eval()
    with torch.no_grad():
        model[1].running_mean.uniform_(-0.5, 0.5)
        model[1].running_var.uniform_(0.5, 2.0)
    x = torch.randn(3, *SHAPE)
    with torch.no_grad():
        expected = model(x)
    folded = prepare(model, SHAPE, fold_bn=True, channels_last=True, inference_mode=True)
    assert not any(isinstance(m, nn.BatchNorm2d) for m in folded.module.modules())
    assert isinstance(model[1], nn.BatchNorm2d) and model[0].weight.is_contiguous()  # the model is not changed
    example = folded.example(SHAPE, 3)
    assert example.is_contiguous(memory_format=torch.channels_last)
    with folded.context():
        assert torch.is_inference_mode_enabled()
        assert torch.allclose(folded.forward(x.contiguous(memory_format=torch.channels_last)), expected,
                              rtol=1e-4, atol=1e-5)


def test_onnxruntime_runner_computes_the_model_and_times_by_size() -> None:
    pytest.importorskip("onnxruntime")
    pytest.importorskip("onnx")
    torch.manual_seed(0)
    small, big = net(4).eval(), net(128).eval()
    runner = prepare(big, SHAPE, runtime="onnxruntime", threads=1)
    assert isinstance(runner, Runner) and runner.runtime == "onnxruntime"
    x = torch.randn(5, *SHAPE)
    with torch.no_grad():
        assert torch.allclose(runner.forward(x), big(x), rtol=1e-4, atol=1e-5)
    results = compare_latency({"small": small, "big": runner}, SHAPE, 8, rounds=3, runtime="onnxruntime", threads=1,
                              warmup=1, min_run_time=0.03)
    assert results["big"].median_ms > results["small"].median_ms


def test_bad_runtime_options() -> None:
    with pytest.raises(UserError, match="unknown runtime"):
        prepare(net(4), SHAPE, runtime="tensorrt")  # type: ignore[arg-type]
    with pytest.raises(UserError, match="runtime 'torch' only"):
        latency(net(4), SHAPE, 1, runtime="onnxruntime", channels_last=True)
