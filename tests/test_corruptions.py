"""Corruptions (CIFAR-10-C style) and the ``--shift`` spec parser."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from sklearn.datasets import load_digits

from connprune.data import corruptions
from connprune.data.corruptions import CORRUPTIONS, corrupt, names
from connprune.data.shift import ShiftItem, mean_corrupted, parse_shift, robustness, shifted_images, summarise
from connprune.errors import UserError

REQUIRED = ["gaussian_noise", "shot_noise", "impulse_noise", "gaussian_blur", "defocus_blur", "motion_blur",
            "brightness", "contrast", "fog", "pixelate", "jpeg_compression", "elastic_transform", "rotation",
            "translation"]


def _digits(n: int = 40) -> torch.Tensor:
    """Real grey-scale images: scikit-learn's 8 x 8 digits scaled to uint8, (n, 1, 8, 8)."""
    images = load_digits().images[:n] * (255.0 / 16.0)
    return torch.tensor(images).round().to(torch.uint8)[:, None]


def _smooth(n: int, channels: int, size: int, seed: int = 0) -> torch.Tensor:
    """Smooth synthetic colour images: random 4 x 4 colour fields up-sampled plus a soft edge, uint8."""
    g = torch.Generator().manual_seed(seed)
    fields = F.interpolate(torch.rand(n, channels, 4, 4, generator=g), size=(size, size), mode="bicubic",
                           align_corners=False)
    edge = (torch.linspace(-1, 1, size).view(1, 1, 1, size) * torch.randn(n, 1, 1, 1, generator=g) * 2).sigmoid()
    images = 0.6 * fields + 0.4 * edge
    return (images.clamp(0, 1) * 255).round().to(torch.uint8)


_CACHE: dict[int, torch.Tensor] = {}


def _images(channels: int) -> torch.Tensor:
    if channels not in _CACHE:
        _CACHE[channels] = _digits() if channels == 1 else _smooth(24, 3, 32)
    return _CACHE[channels]


CASES = [(name, channels) for channels in (1, 3) for name in names(channels)]


def _distance(a: torch.Tensor, b: torch.Tensor) -> float:
    return (a.float() - b.float()).abs().mean().item()


# ------------------------------------------------------------------------------------------------ registry


def test_registry_has_required_corruptions() -> None:
    assert set(REQUIRED) <= set(names())
    assert set(REQUIRED) <= set(names(1)) and set(REQUIRED) <= set(names(3))
    for name, c in CORRUPTIONS.items():
        assert c.name == name and c.description and callable(c.fn)
        assert c.greyscale_ok is not c.colour_only
    with pytest.raises(AttributeError):
        CORRUPTIONS["fog"].name = "x"  # type: ignore[misc]


# ------------------------------------------------------------------------------------------------ every corruption


@pytest.mark.parametrize(("name", "channels"), CASES)
def test_shape_dtype_range_determinism(name: str, channels: int) -> None:
    x = _images(channels)[:8]
    for images in (x, x.float() / 255.0):
        a = corrupt(images, name, 4, seed=0)
        assert a.shape == images.shape and a.dtype == images.dtype
        assert float(a.min()) >= 0 and float(a.max()) <= (255 if images.dtype == torch.uint8 else 1.0)
        assert torch.equal(a, corrupt(images, name, 4, seed=0))
        if CORRUPTIONS[name].stochastic:
            assert not torch.equal(a, corrupt(images, name, 4, seed=1))
        else:
            assert torch.equal(a, corrupt(images, name, 4, seed=1))
    assert not torch.equal(corrupt(x, name, 5), x)


@pytest.mark.parametrize(("name", "channels"), CASES)
def test_float_and_uint8_agree(name: str, channels: int) -> None:
    x = _images(channels)[:8]
    as_uint8 = corrupt(x, name, 3, seed=5).float()
    as_float = corrupt(x.double() / 255.0, name, 3, seed=5) * 255.0
    assert as_float.dtype == torch.float64
    assert (as_uint8 - as_float).abs().max() <= 1.0 + 1e-4


@pytest.mark.parametrize(("name", "channels"), CASES)
def test_severity_zero_is_identity(name: str, channels: int) -> None:
    x = _images(channels)[:4]
    for images in (x, x.float() / 255.0):
        out = corrupt(images, name, 0, seed=3)
        assert torch.equal(out, images) and out is not images and out.dtype == images.dtype


@pytest.mark.parametrize(("name", "channels"), CASES)
def test_distance_non_decreasing_in_severity(name: str, channels: int) -> None:
    x = _images(channels)
    distances = [_distance(corrupt(x, name, s, seed=0), x) for s in range(6)]
    assert distances[0] == 0
    tolerance = 1e-3 * distances[5] + 1e-6
    assert all(b >= a - tolerance for a, b in zip(distances, distances[1:])), distances
    assert distances[5] > distances[1]


def test_random_corruptions_leave_global_rng_alone() -> None:
    torch.manual_seed(123)
    np.random.seed(123)
    torch_state, numpy_state = torch.get_rng_state(), np.random.get_state()
    for name in names():
        corrupt(_images(3)[:2], name, 3, seed=7)
    assert torch.equal(torch.get_rng_state(), torch_state)
    assert all(np.array_equal(a, b) for a, b in zip(np.random.get_state(), numpy_state))


def test_chunks_give_the_same_result(monkeypatch: pytest.MonkeyPatch) -> None:
    x = _images(3)[:10]
    whole = {name: corrupt(x, name, 3, seed=2) for name in names()}
    monkeypatch.setattr(corruptions, "CHUNK", 4)
    for name in names():
        chunked = corrupt(x, name, 3, seed=2)
        assert chunked.shape == x.shape
        assert torch.equal(chunked, corrupt(x, name, 3, seed=2))
        if not CORRUPTIONS[name].stochastic:
            assert torch.equal(chunked, whole[name]), name


# ------------------------------------------------------------------------------------------------ known values


def test_brightness_greyscale_adds_to_intensity() -> None:
    x = _digits(10)
    out = corrupt(x, "brightness", 5)  # c = 0.3
    expected = (x.float() + 0.3 * 255).clamp(max=255).round()
    assert (out.float() - expected).abs().max() <= 1


def test_brightness_rgb_matches_hsv_value_shift() -> None:
    from matplotlib.colors import hsv_to_rgb, rgb_to_hsv

    x = torch.rand(3, 3, 8, 8, generator=torch.Generator().manual_seed(0)).double()
    x[0, :, 0, 0] = 0  # a black pixel
    hsv = rgb_to_hsv(x.permute(0, 2, 3, 1).numpy())
    hsv[..., 2] = np.clip(hsv[..., 2] + 0.15, 0, 1)  # severity 3
    expected = torch.from_numpy(hsv_to_rgb(hsv)).permute(0, 3, 1, 2)
    assert torch.allclose(corrupt(x, "brightness", 3), expected, atol=1e-5)


def test_contrast_scales_deviation_from_mean() -> None:
    x = _images(3).float() / 255.0
    out = corrupt(x, "contrast", 2)  # c = 0.5
    assert torch.allclose(out.mean(dim=(2, 3)), x.mean(dim=(2, 3)), atol=1e-5)
    assert torch.allclose(out.std(dim=(2, 3)), 0.5 * x.std(dim=(2, 3)), atol=1e-5)


def test_noise_strengths_match_cifar_c_constants() -> None:
    grey = torch.full((4, 3, 32, 32), 0.5)
    assert (corrupt(grey, "gaussian_noise", 5) - grey).std().item() == pytest.approx(0.10, rel=0.05)
    hit = (corrupt(grey, "impulse_noise", 5) != grey).float().mean().item()
    assert hit == pytest.approx(0.07, rel=0.1)
    shot = corrupt(grey, "shot_noise", 5)  # Poisson(0.5 * 50) / 50: std sqrt(25) / 50
    assert shot.std().item() == pytest.approx(0.1, rel=0.05)


@pytest.mark.parametrize("name", ["gaussian_blur", "defocus_blur", "motion_blur", "pixelate", "elastic_transform"])
def test_filters_keep_constant_images(name: str) -> None:
    flat = torch.full((3, 3, 16, 20), 0.25)
    assert torch.allclose(corrupt(flat, name, 5), flat, atol=1e-5)


def test_blurs_keep_mean_brightness() -> None:
    x = _images(3).float() / 255.0
    for name in ("gaussian_blur", "defocus_blur", "motion_blur"):
        assert corrupt(x, name, 5).mean().item() == pytest.approx(x.mean().item(), abs=0.01)


def test_translation_moves_mass_by_the_expected_distance() -> None:
    # a bright dot in the middle of a 32 x 32 image; severity 2 shifts by 0.1 * 32 = 3.2 px
    x = torch.zeros(6, 1, 32, 32)
    x[:, :, 14:18, 14:18] = 1.0
    out = corrupt(x, "translation", 2, seed=4)
    rows, cols = torch.meshgrid(torch.arange(32.0), torch.arange(32.0), indexing="ij")
    mass = out.sum(dim=(1, 2, 3))
    centre = torch.stack([(out[:, 0] * rows).sum(dim=(1, 2)) / mass, (out[:, 0] * cols).sum(dim=(1, 2)) / mass], 1)
    moved = (centre - 15.5).norm(dim=1)
    assert torch.allclose(moved, torch.full_like(moved, 3.2), atol=0.05)


def test_jpeg_greyscale_and_colour_round_trip() -> None:
    for x in (_digits(4), _smooth(4, 3, 16)):
        out = corrupt(x, "jpeg_compression", 1)
        assert out.shape == x.shape and 0 < _distance(out, x) < 20


# ------------------------------------------------------------------------------------------------ errors


@pytest.mark.parametrize("severity", [-1, 6, 2.5, True, "3", None])
def test_bad_severity(severity: object) -> None:
    with pytest.raises(UserError, match="from 0 to 5"):
        corrupt(_images(1)[:2], "fog", severity)  # type: ignore[arg-type]


def test_bad_name_and_input() -> None:
    with pytest.raises(UserError, match="unknown corruption 'snowfall'.*gaussian_noise"):
        corrupt(_images(1)[:2], "snowfall", 1)
    with pytest.raises(UserError, match=r"\(N, C, H, W\)"):
        corrupt(_images(1)[0], "fog", 1)
    with pytest.raises(UserError, match="uint8"):
        corrupt(_images(1)[:2].int(), "fog", 1)


# ------------------------------------------------------------------------------------------------ property test


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(name=st.sampled_from(sorted(CORRUPTIONS)), n=st.integers(1, 3), channels=st.sampled_from([1, 3]),
       height=st.integers(8, 40), width=st.integers(8, 40), severity=st.integers(0, 5),
       as_float=st.booleans(), seed=st.integers(0, 2**31))
def test_any_shape(name: str, n: int, channels: int, height: int, width: int, severity: int, as_float: bool,
                   seed: int) -> None:
    g = torch.Generator().manual_seed(seed)
    x = torch.randint(0, 256, (n, channels, height, width), generator=g, dtype=torch.uint8)
    if as_float:
        x = x.float() / 255.0
    out = corrupt(x, name, severity, seed=seed)
    assert out.shape == x.shape and out.dtype == x.dtype
    assert bool(torch.isfinite(out.float()).all())
    assert float(out.min()) >= 0 and float(out.max()) <= (1.0 if as_float else 255)
    assert torch.equal(out, corrupt(x, name, severity, seed=seed))


# ------------------------------------------------------------------------------------------------ --shift


def test_parse_none_and_single() -> None:
    assert parse_shift("none", 3, "cifar10") == []
    assert parse_shift("gaussian_noise:2", 3, "cifar10") == [
        ShiftItem(key="gaussian_noise:2", corruption="gaussian_noise", severity=2, dataset=None)]
    assert parse_shift("fog", 1, "digits") == [ShiftItem("fog:3", "fog", 3, None)]
    assert [i.key for i in parse_shift(" Fog : 4 ", 1, "digits")] == ["fog:4"]


def test_parse_all_and_lists() -> None:
    for channels in (1, 3):
        items = parse_shift("all", channels, "cifar10")
        assert [i.key for i in items] == [f"{n}:{s}" for n in names(channels) for s in range(1, 6)]
        assert all(i.dataset is None for i in items)
    keys = [i.key for i in parse_shift("contrast:5,fog:1,none,contrast:5,rotation:all", 1, "mnist")]
    assert keys == ["contrast:5", "fog:1"] + [f"rotation:{s}" for s in range(1, 6)]
    assert len(parse_shift("all,fog:2", 3, "cifar10")) == 5 * len(names(3))


def test_parse_shift_dataset() -> None:
    items = parse_shift("cifar10-neg,gaussian_noise:1", 3, "cifar10")
    assert items[0] == ShiftItem("cifar10-neg", None, None, "cifar10-neg")
    assert items[1].corruption == "gaussian_noise"
    with pytest.raises(UserError, match="cifar10-neg.*'cifar10'.*'mnist'"):
        parse_shift("cifar10-neg", 1, "mnist")


@pytest.mark.parametrize("spec", ["snow", "gaussian_noise:0", "gaussian_noise:6", "gaussian_noise:x",
                                  "gaussian_noise:", "", "fog,,contrast", "fog:1:2"])
def test_parse_bad_specs(spec: str) -> None:
    with pytest.raises(UserError, match="NAME:SEVERITY") as info:
        parse_shift(spec, 3, "cifar10")
    assert "gaussian_noise" in str(info.value) and "cifar10-neg" in str(info.value)


def test_shift_datasets_are_registered_shift_only_sets() -> None:
    from connprune import data
    from connprune.data.shift import SHIFT_DATASETS

    for name, base in SHIFT_DATASETS.items():
        assert data.info(name).shift_only and not data.info(base).shift_only
        assert data.info(name).input_shape == data.info(base).input_shape
    assert {n for n in data.names() if data.info(n).shift_only} == set(SHIFT_DATASETS)


def test_shifted_images_and_summarise() -> None:
    x = _images(3)[:4]
    item = parse_shift("motion_blur:2", 3, "cifar10")[0]
    assert torch.equal(shifted_images(x, item, seed=9), corrupt(x, "motion_blur", 2, seed=9))
    with pytest.raises(ValueError, match="connprune.data.load"):
        shifted_images(x, ShiftItem("cifar10-neg", None, None, "cifar10-neg"))
    assert summarise({"a:1": 0.5, "b:1": 1.0}) == {"a:1": 0.5, "b:1": 1.0, "mean": 0.75}
    assert summarise({"a:1": 0.5, "mean": 0.0}) == {"a:1": 0.5, "mean": 0.5}
    assert summarise({}) == {}


def test_mca_leaves_natural_shift_sets_out() -> None:
    accuracies = {"fog:1": 0.6, "fog:5": 0.2, "cifar10-neg": 0.9, "mean": 0.5666}
    assert mean_corrupted(accuracies) == pytest.approx(0.4)
    assert robustness(accuracies, clean=0.8) == pytest.approx({"mca": 0.4, "relative_robustness": 0.5})
    assert mean_corrupted({"cifar10-neg": 0.9}) is None and robustness({"cifar10-neg": 0.9}, 0.8) == {}


def test_mean_accuracy_of_a_trained_classifier_falls_with_severity() -> None:
    """A logistic regression on 8 x 8 digits: accuracy averaged over all corruptions drops at every severity step."""
    from sklearn.linear_model import LogisticRegression

    digits = load_digits()
    images = torch.tensor(digits.images * (255.0 / 16.0)).round().to(torch.uint8)[:, None]
    train, test = slice(0, 1000), slice(1000, None)
    flat = lambda x: x.reshape(len(x), -1).float().numpy() / 255.0  # noqa: E731
    model = LogisticRegression(max_iter=1000).fit(flat(images[train]), digits.target[train])
    x, y = images[test], digits.target[test]
    mean = [float(np.mean([(model.predict(flat(corrupt(x, name, s))) == y).mean() for name in names(1)]))
            for s in range(6)]
    assert all(b < a for a, b in zip(mean, mean[1:])), mean
