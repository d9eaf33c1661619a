"""The trainer: accuracy on digits, exact resume, schedules, hooks, and the batch pipeline."""

from __future__ import annotations

import time

import pytest
import torch

from connprune.data.pipeline import Batches, normalize, random_crop_flip
from connprune.experiments.jobs import build_model
from connprune.train import Trainer, TrainHook, default_recipe, evaluate
from connprune.train.trainer import learning_rate


def test_mlp_reaches_95_percent_on_digits_in_seconds(digits_train, digits_test):
    model = build_model("mlp", digits_train.info, seed=0)
    started = time.process_time()  # CPU seconds of this process (all its threads): other load does not count
    result = Trainer(model, digits_train, digits_test, default_recipe("digits", epochs=20), progress=False).fit()
    assert result.final["accuracy"] >= 0.95
    assert time.process_time() - started < 60
    assert len(result.history) == 20 and result.history[-1]["test_accuracy"] == result.final["accuracy"]


class _Kill(TrainHook):
    """Simulates a crash: raises after ``at_step`` optimiser steps."""

    def __init__(self, at_step: int) -> None:
        self.at_step = at_step

    def after_step(self, trainer: Trainer) -> None:
        if trainer.step == self.at_step:
            raise KeyboardInterrupt


@pytest.mark.parametrize("optimizer", ["sgd", "adam"])
def test_resume_after_interruption_gives_identical_weights(digits_train, digits_test, tmp_path, optimizer):
    recipe = default_recipe("digits", epochs=3, optimizer=optimizer, lr=0.01 if optimizer == "adam" else 0.05)

    def fresh() -> torch.nn.Module:
        return build_model("mlp", digits_train.info, seed=3)

    reference = fresh()
    Trainer(reference, digits_train, digits_test, recipe, progress=False).fit()

    interrupted = fresh()
    steps_per_epoch = len(Batches(digits_train, recipe.batch_size))
    with pytest.raises(KeyboardInterrupt):
        Trainer(interrupted, digits_train, digits_test, recipe, state_dir=tmp_path, progress=False,
                hooks=[_Kill(2 * steps_per_epoch + 3)]).fit()
    resumed = fresh()  # a new process would start from scratch: nothing carried over in memory
    trainer = Trainer(resumed, digits_train, digits_test, recipe, state_dir=tmp_path, progress=False)
    trainer.fit(resume=True)
    assert trainer.history[0]["epoch"] == 1 and len(trainer.history) == 3
    for (name, a), b in zip(reference.state_dict().items(), resumed.state_dict().values()):
        assert torch.equal(a, b), name


def test_learning_rate_schedules():
    cosine = default_recipe("digits", lr=1.0, schedule="cosine")
    assert learning_rate(cosine, 0, 100) == 1.0 and learning_rate(cosine, 100, 100) == pytest.approx(0.0)
    assert learning_rate(cosine, 50, 100) == pytest.approx(0.5)
    step = default_recipe("digits", lr=1.0, schedule="step", milestones=[0.5, 0.75], gamma=0.1)
    assert [learning_rate(step, s, 100) for s in (0, 49, 50, 75)] == pytest.approx([1, 1, 0.1, 0.01])


def test_hooks_are_called(digits_train):
    calls = {"start": 0, "step": 0, "epoch": []}

    class Counter(TrainHook):
        def on_train_start(self, trainer):
            calls["start"] += 1

        def after_step(self, trainer):
            calls["step"] += 1

        def on_epoch_end(self, trainer, epoch, metrics):
            calls["epoch"].append(epoch)

    model = build_model("mlp", digits_train.info, seed=0)
    recipe = default_recipe("digits", epochs=2, batch_size=256)
    Trainer(model, digits_train, None, recipe, hooks=[Counter()], progress=False).fit()
    assert calls == {"start": 1, "step": 2 * len(Batches(digits_train, 256)), "epoch": [1, 2]}


def test_unknown_recipe_key_is_rejected():
    with pytest.raises(ValueError, match="epoch"):
        default_recipe("digits", epoch=3)


def test_batches_cover_every_sample_once(digits_test):
    batches = Batches(digits_test, 100, shuffle=True, generator=torch.Generator().manual_seed(1))
    labels = torch.cat([y for _, y in batches])
    assert torch.equal(labels.sort().values, digits_test.labels.sort().values)
    x, _ = next(iter(Batches(digits_test, 100)))
    assert torch.allclose(x, normalize(digits_test.images[:100], digits_test.info))


def test_random_crop_flip_is_a_shifted_window():
    images = torch.arange(2 * 3 * 6 * 6, dtype=torch.float32).view(2, 3, 6, 6)
    out = random_crop_flip(images, 2, torch.Generator().manual_seed(0))
    assert out.shape == images.shape
    padded = torch.nn.functional.pad(images, (2, 2, 2, 2))
    for i in range(2):
        windows = [padded[i, :, r:r + 6, c:c + 6] for r in range(5) for c in range(5)]
        assert any(torch.equal(out[i], w) or torch.equal(out[i], w.flip(2)) for w in windows)
    again = random_crop_flip(images, 2, torch.Generator().manual_seed(0))
    assert torch.equal(out, again)


def test_evaluate_restores_training_flag(digits_test):
    model = build_model("mlp", digits_test.info, seed=0).train()
    result = evaluate(model, digits_test)
    assert model.training and result["samples"] == len(digits_test) and 0 <= result["accuracy"] <= 1
