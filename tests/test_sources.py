"""Bring your own data: tensors and any iterable of (inputs, targets) batches, read only as far as a method needs.

Oracles: the in-memory path of the same samples (a method given a DataLoader decides exactly what it decides given
an ImageData of the samples it reads), a brute-force first-k-per-class, and connprune's own Batches replayed
through a loader (the trainer on a loader equals the trainer on the ImageData, weight for weight).
"""

from __future__ import annotations

import copy

import pytest
import torch
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

from connprune import data, methods, models
from connprune.data.pipeline import Batches, normalize
from connprune.errors import UserError
from connprune.methods import PruneData
from connprune.train import Trainer, default_recipe, evaluate


def _tensors(train: data.ImageData) -> tuple[torch.Tensor, torch.Tensor]:
    return next(iter(Batches(train, len(train))))


class SmallNet(nn.Module):
    """Not a zoo model: functional ReLUs and a global pool."""

    def __init__(self) -> None:
        super().__init__()
        self.conv1, self.bn1 = nn.Conv2d(1, 16, 3, padding=1), nn.BatchNorm2d(16)
        self.conv2, self.bn2 = nn.Conv2d(16, 32, 3, padding=1), nn.BatchNorm2d(32)
        self.fc = nn.Linear(32, 10)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = torch.relu(self.bn1(self.conv1(x)))
        x = torch.relu(self.bn2(self.conv2(x)))
        return self.fc(x.mean((2, 3)))


def test_from_tensors_float_inputs_are_used_as_given_and_uint8_images_normalised_like_built_in_sets(digits_train):
    x = torch.randn(5, 7)
    custom = data.from_tensors(x, torch.tensor([0, 1, 2, 1, 0]))
    assert custom.info.num_classes == 3 and custom.info.input_shape == (7,)
    assert torch.equal(next(iter(Batches(custom, 5)))[0], x)
    same = data.from_tensors(digits_train.images, digits_train.labels, mean=digits_train.info.mean,
                             std=digits_train.info.std)
    assert torch.equal(normalize(same.images, same.info), normalize(digits_train.images, digits_train.info))
    with pytest.raises(UserError, match="targets must be class indices"):
        data.from_tensors(x, torch.zeros(5, 2))


def test_read_takes_the_first_k_of_every_class_in_stream_order(digits_train):
    x, y = _tensors(digits_train)
    loader = DataLoader(TensorDataset(x, y), batch_size=37)
    held = data.read(loader, per_class=6, num_classes=10)
    expected = torch.cat([torch.nonzero(y == c).flatten()[:6] for c in range(10)]).sort().values  # brute force
    assert torch.equal(held.labels, y[expected]) and torch.equal(held.images, x[expected])
    first = data.read(loader, samples=50)
    assert torch.equal(first.images, x[:50])


def test_read_says_when_the_data_gives_too_little_and_refuses_nothing(digits_train):
    x, y = _tensors(digits_train)
    few = DataLoader(TensorDataset(x[:30], y[:30]), batch_size=8)
    with pytest.warns(UserWarning, match=r"snip reads 64 samples \(batch_size\) but the data gave only 30"):
        assert len(data.read(few, samples=64, who="snip", why="batch_size")) == 30
    with pytest.raises(UserError, match="yielded no samples"):
        data.read([], samples=4, who="snip")
    with pytest.raises(UserError, match=r"\(inputs, targets\) batches of two tensors"):
        data.read([{"x": x, "y": y}], samples=4, who="gcnet")
    with pytest.raises(UserError, match="must be an ImageData .* or an iterable"):
        methods.create("snip").prune(SmallNet(), 0.5, PruneData(train=x, example_inputs=x[:1]))


@pytest.mark.parametrize("method,params", [("snip", {"batch_size": 64}), ("gcnet", {"probe_per_class": 6}),
                                           ("mint", {"samples_per_class": 8})])
def test_a_loader_gives_the_masks_the_samples_it_reads_give_in_memory(digits_train, method, params):
    x, y = _tensors(digits_train)
    loader = DataLoader(TensorDataset(x, y), batch_size=50, shuffle=False)
    torch.manual_seed(0)
    model = SmallNet().eval()
    from_loader = methods.create(method, **params).prune(copy.deepcopy(model), 0.5, PruneData(train=loader))
    reads = methods.create(method, **params).reads(0.5)
    held = data.read(loader, samples=reads.samples, per_class=reads.per_class, num_classes=10)
    in_memory = methods.create(method, **params).prune(copy.deepcopy(model), 0.5,
                                                       PruneData(train=held, example_inputs=x[:1]))
    assert from_loader.masks.keys() == in_memory.masks.keys()
    for name in from_loader.masks:
        assert torch.equal(from_loader.masks[name], in_memory.masks[name]), name


class _Replay:
    """A loader that yields exactly connprune's own batches of ``train`` (the trainer's seed and batch size)."""

    def __init__(self, train: data.ImageData, batch_size: int, seed: int) -> None:
        self.batches = Batches(train, batch_size, shuffle=True, augment=True,
                               generator=torch.Generator().manual_seed(seed))

    def __len__(self) -> int:
        return len(self.batches)

    def __iter__(self):
        return iter(self.batches)


def test_the_trainer_on_a_loader_is_the_trainer_on_the_same_batches(digits_train, digits_test):
    recipe = default_recipe("digits", epochs=2, batch_size=64)
    torch.manual_seed(0)
    first = models.create("mlp", num_classes=10, in_channels=1, input_size=8)
    second = copy.deepcopy(first)
    Trainer(first, digits_train, digits_test, recipe, progress=False, device="cpu").fit()
    replay = _Replay(digits_train, recipe.batch_size, recipe.seed)
    test_loader = DataLoader(TensorDataset(*_tensors(digits_test)), batch_size=100)
    result = Trainer(second, replay, test_loader, recipe, progress=False, device="cpu").fit()
    for a, b in zip(first.state_dict().values(), second.state_dict().values()):
        assert torch.allclose(a, b, atol=1e-6)
    assert result.final["accuracy"] == evaluate(first, digits_test, device="cpu")["accuracy"]


def test_a_training_method_trains_on_a_loader_and_says_when_it_has_no_length(digits_train):
    x, y = _tensors(digits_train)
    loader = DataLoader(TensorDataset(x, y), batch_size=64, shuffle=True)
    torch.manual_seed(0)
    data_ = PruneData(train=loader, recipe=default_recipe("digits", epochs=1))
    result = methods.create("group-l1").prune(SmallNet(), 0.5, data_)
    assert result.model is not None and result.remove
    endless = PruneData(train=((a, b) for a, b in loader), recipe=default_recipe("digits", epochs=1))
    with pytest.raises(UserError, match="has no len"):
        methods.create("group-l1").prune(SmallNet(), 0.5, endless)
