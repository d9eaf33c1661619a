"""connprune.measure.latency: positive numbers, ordering by size, interleaved comparison (all tiny and fast)."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from connprune.measure import cost
from connprune.measure.latency import LatencyResult, compare_latency, latency

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
