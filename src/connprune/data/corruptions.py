"""Image corruptions for distribution-shift evaluation, in the style of CIFAR-10-C / ImageNet-C.

After Hendrycks & Dietterich, "Benchmarking Neural Network Robustness to Common Corruptions and Perturbations",
ICLR 2019. The severity constants are those of their CIFAR-10-C generator, ``make_cifar_c.py`` in
https://github.com/hendrycks/robustness (``ImageNet-C/create_c/make_cifar_c.py``), unless a corruption's docstring
says otherwise. Everything here is torch / NumPy / SciPy / Pillow (no OpenCV, ImageMagick or scikit-image), so a
few corruptions are faithful re-implementations rather than bit-exact copies; each function says where it differs.

>>> x = torch.randint(0, 256, (4, 3, 32, 32), dtype=torch.uint8)
>>> y = corrupt(x, "gaussian_noise", 3, seed=0)      # same shape, still uint8
>>> names(channels=1)[:3]
['gaussian_noise', 'shot_noise', 'impulse_noise']

Conventions
-----------
* ``images`` is ``(N, C, H, W)``, uint8 in [0, 255] or floating point in [0, 1]; the result has the same shape,
  dtype and device (uint8 is rounded and clipped, floats are clipped to [0, 1]). Internally everything is float32
  in [0, 1].
* Severity 0 is the identity (a copy); 1 to 5 increase the strength; anything else is a :class:`UserError`.
* Randomness comes only from a local ``torch.Generator`` and ``numpy.random.Generator`` seeded with ``seed``: the
  result is a function of (images, name, severity, seed), and no global RNG state is read or changed. The same
  random draws are used at every severity (common random numbers), so the severities of one seed differ only in
  strength, e.g. ``gaussian_noise`` at severity 5 is the same noise pattern as at severity 1, 2.5 times larger.
  Large batches are processed in chunks of :data:`CHUNK` images, drawing from the same two generators in order.
* Greyscale (C = 1) is handled natively: brightness acts on the intensity itself (for RGB the HSV-value shift of
  the original is done exactly without an HSV round trip), and JPEG encodes mode ``'L'``.

Image-size scaling
------------------
Hendrycks' CIFAR constants are in pixels of 32 x 32 images. With ``size = min(H, W)``:

* Geometric displacements scale linearly, ``size / 32``: elastic transform (the original already writes its
  constants as multiples of ``IMSIZE``) and translation (a fraction of the size).
* Blur widths (Gaussian sigma, the defocus kernel, motion-blur radius and sigma) scale with
  ``sqrt(size / 32)``: 0.5 for 8 x 8 digits, 0.94 for 28 x 28 MNIST, 1 for CIFAR, 1.41 for 64 x 64 Tiny ImageNet.
  Hendrycks' own ImageNet-C (224 px) blur constants are 2.5 to 10 times the CIFAR ones for a 7 times larger image,
  i.e. sub-linear, and a linear scaling would make the blurs invisible on 8 x 8 digits (sigma 0.1 px).
* Pixelate is relative (blocks of 1 / c pixels, c the original's resize factor); fog's plasma fractal is generated
  at the image size (next power of two, then cropped, as the original does for 224 px ImageNet from a 256 map);
  the per-pixel corruptions (noise, brightness, contrast, JPEG) need no scaling; rotation is an angle.
"""

from __future__ import annotations

import io
import math
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image
from scipy import ndimage, signal

from connprune.errors import UserError, unknown_name

SEVERITIES = (1, 2, 3, 4, 5)
"""The corruption severities; 0 (identity) is accepted by :func:`corrupt` too."""

CHUNK = 1024
"""Images corrupted at once; bounds the memory of large test sets (e.g. 10,000 Tiny ImageNet images)."""


class _Random:
    """The two local generators a corruption may draw from, both seeded from one integer."""

    def __init__(self, seed: int) -> None:
        self.torch = torch.Generator(device="cpu").manual_seed(int(seed) % (2**63))
        self.numpy = np.random.default_rng(int(seed) % (2**63))


CorruptionFn = Callable[[torch.Tensor, int, _Random], torch.Tensor]


@dataclass(frozen=True)
class Corruption:
    """A registered corruption.

    ``fn(x, severity, rng)`` maps float32 images in [0, 1] of shape (N, C, H, W) to the same (values may leave
    [0, 1]; :func:`corrupt` clips). ``greyscale_ok``: applies to C = 1. ``colour_only``: needs C = 3 (none of the
    built-in ones does). ``stochastic``: the result depends on the seed.
    """

    name: str
    fn: CorruptionFn
    greyscale_ok: bool
    colour_only: bool
    description: str
    stochastic: bool = False


CORRUPTIONS: dict[str, Corruption] = {}


def _register(name: str, description: str, *, stochastic: bool, greyscale_ok: bool = True,
              colour_only: bool = False) -> Callable[[CorruptionFn], CorruptionFn]:
    def decorate(fn: CorruptionFn) -> CorruptionFn:
        CORRUPTIONS[name] = Corruption(name=name, fn=fn, greyscale_ok=greyscale_ok, colour_only=colour_only,
                                       description=description, stochastic=stochastic)
        return fn
    return decorate


# ---------------------------------------------------------------------------------------------------- helpers


def _size(x: torch.Tensor) -> int:
    return min(x.shape[-2], x.shape[-1])


def _blur_scale(x: torch.Tensor) -> float:
    """Scale of blur widths: sqrt(size / 32) (see the module docstring)."""
    return math.sqrt(_size(x) / 32.0)


def _gaussian_taps(sigma: float, truncate: float = 4.0) -> torch.Tensor:
    """A normalised 1-D Gaussian sampled at integer offsets -r..r, r = max(1, ceil(truncate * sigma))."""
    radius = max(1, math.ceil(truncate * sigma))
    t = torch.arange(-radius, radius + 1, dtype=torch.float64)
    taps = torch.exp(-0.5 * (t / max(sigma, 1e-6)) ** 2)
    return (taps / taps.sum()).to(torch.float32)


def _filter2d(x: torch.Tensor, kernel: torch.Tensor) -> torch.Tensor:
    """Correlate every channel of every image with one odd-sized 2-D kernel, edges replicated."""
    n, c, h, w = x.shape
    kh, kw = kernel.shape
    flat = F.pad(x.reshape(n * c, 1, h, w), (kw // 2, kw // 2, kh // 2, kh // 2), mode="replicate")
    return F.conv2d(flat, kernel.to(x).view(1, 1, kh, kw)).view(n, c, h, w)


def _gaussian_filter(x: torch.Tensor, sigma: float) -> torch.Tensor:
    """Separable Gaussian blur (edges replicated, like scikit-image's default ``mode='nearest'``)."""
    taps = _gaussian_taps(sigma)
    return _filter2d(_filter2d(x, taps.view(1, -1)), taps.view(-1, 1))


def _affine_sample(x: torch.Tensor, angle: torch.Tensor, shift: torch.Tensor) -> torch.Tensor:
    """Rotate each image by ``angle[i]`` radians about its centre and move it by ``shift[i]`` = (dx, dy) pixels.

    Bilinear, zero fill (the background of digit images). Aspect ratio is respected for non-square images.
    """
    n, _, h, w = x.shape
    cos, sin = torch.cos(angle), torch.sin(angle)
    theta = torch.zeros(n, 2, 3, dtype=torch.float32)
    # grid_sample reads the input at theta @ (output position), in coordinates normalised to [-1, 1] per axis.
    theta[:, 0, 0], theta[:, 0, 1] = cos, -sin * h / w
    theta[:, 1, 0], theta[:, 1, 1] = sin * w / h, cos
    theta[:, 0, 2] = -shift[:, 0] * 2.0 / w
    theta[:, 1, 2] = -shift[:, 1] * 2.0 / h
    grid = F.affine_grid(theta.to(x.device), list(x.shape), align_corners=False)
    return F.grid_sample(x, grid, mode="bilinear", padding_mode="zeros", align_corners=False)


def _to_uint8_numpy(x: torch.Tensor) -> np.ndarray:
    return (x.clamp(0, 1) * 255).round().to(torch.uint8).cpu().numpy()


# ---------------------------------------------------------------------------------------------------- noise


@_register("gaussian_noise", "additive Gaussian noise, std 0.04..0.10", stochastic=True)
def gaussian_noise(x: torch.Tensor, severity: int, rng: _Random) -> torch.Tensor:
    """``x + N(0, c^2)`` per value, c = [.04, .06, .08, .09, .10] (CIFAR-10-C)."""
    c = [0.04, 0.06, 0.08, 0.09, 0.10][severity - 1]
    return x + c * torch.randn(x.shape, generator=rng.torch).to(x)


@_register("shot_noise", "Poisson (photon) noise, 500..50 photons per unit intensity", stochastic=True)
def shot_noise(x: torch.Tensor, severity: int, rng: _Random) -> torch.Tensor:
    """``Poisson(x * c) / c`` per value, c = [500, 250, 100, 75, 50] (CIFAR-10-C)."""
    c = [500, 250, 100, 75, 50][severity - 1]
    rate = (x.clamp(0, 1) * c).cpu()
    return (torch.poisson(rate, generator=rng.torch) / c).to(x)


@_register("impulse_noise", "salt-and-pepper noise on 1%..7% of the values", stochastic=True)
def impulse_noise(x: torch.Tensor, severity: int, rng: _Random) -> torch.Tensor:
    """Each value independently becomes 0 or 1 (equally likely) with probability c = [.01, .02, .03, .05, .07].

    Scikit-image's ``random_noise(mode='s&p')`` as used by CIFAR-10-C; like it, channels are hit independently.
    """
    c = [0.01, 0.02, 0.03, 0.05, 0.07][severity - 1]
    hit = torch.rand(x.shape, generator=rng.torch) < c
    salt = torch.rand(x.shape, generator=rng.torch) < 0.5
    return torch.where(hit.to(x.device), salt.to(x), x)


# ---------------------------------------------------------------------------------------------------- blur


@_register("gaussian_blur", "Gaussian blur, sigma 0.4..1 px at 32 px", stochastic=False)
def gaussian_blur(x: torch.Tensor, severity: int, rng: _Random) -> torch.Tensor:
    """Gaussian blur with sigma = [.4, .6, .7, .8, 1] * sqrt(size / 32) (CIFAR-10-C), truncated at 4 sigma."""
    c = [0.4, 0.6, 0.7, 0.8, 1.0][severity - 1]
    return _gaussian_filter(x, c * _blur_scale(x))


def _defocus_kernel(radius: float, alias_sigma: float, scale: float) -> torch.Tensor:
    """CIFAR-10-C's defocus kernel, resampled to ``scale`` times its size.

    The original (``disk`` in ``make_cifar_c.py``): on a 17 x 17 grid, the pixels whose centres lie within
    ``radius`` of the middle, normalised, then smoothed by OpenCV's 3 x 3 Gaussian of sigma ``alias_sigma``. For
    another scale the kernel is taken as piecewise constant on its pixels, stretched by ``scale`` and integrated
    over the target pixels (exact area resampling; the identity at scale 1).
    """
    grid = np.arange(-8, 9)
    disk = (grid[:, None] ** 2 + grid[None, :] ** 2 <= radius**2).astype(np.float64)
    disk /= disk.sum()
    taps = np.exp(-0.5 * (np.arange(-1, 2) / alias_sigma) ** 2)
    taps /= taps.sum()
    padded = np.pad(disk, 1, mode="reflect")  # OpenCV's default border; the disk is far from it anyway
    kernel = signal.convolve2d(padded, np.outer(taps, taps), mode="valid")
    nonzero = np.flatnonzero(kernel.sum(axis=0) > 1e-12)
    kernel = kernel[nonzero[0]:nonzero[-1] + 1, nonzero[0]:nonzero[-1] + 1]  # symmetric, odd
    if scale != 1.0:
        half_in = kernel.shape[0] // 2
        half_out = max(0, math.ceil((half_in + 0.5) * scale - 0.5))
        k = np.arange(-half_in, half_in + 1, dtype=np.float64)
        j = np.arange(-half_out, half_out + 1, dtype=np.float64)
        lo = np.maximum((k[None, :] - 0.5) * scale, j[:, None] - 0.5)
        hi = np.minimum((k[None, :] + 0.5) * scale, j[:, None] + 0.5)
        area = np.clip(hi - lo, 0, None) / scale  # (out, in): share of source pixel k landing in target pixel j
        kernel = area @ kernel @ area.T
    return torch.from_numpy(kernel / kernel.sum()).to(torch.float32)


@_register("defocus_blur", "defocus (disk) blur, radius 0.3..1.5 px at 32 px", stochastic=False)
def defocus_blur(x: torch.Tensor, severity: int, rng: _Random) -> torch.Tensor:
    """CIFAR-10-C's defocus blur: a disk of the given radius smoothed by a 3 x 3 Gaussian of the given sigma,
    (radius, sigma) = [(.3, .4), (.4, .5), (.5, .6), (1, .2), (1.5, .1)], exactly at 32 px; for other sizes the
    kernel is resampled by sqrt(size / 32) (see :func:`_defocus_kernel`). Scaling the radius and sigma instead
    would not be monotone: the original's disks are sampled at pixel centres (radius 1 is a 5-pixel plus, 1.5 a
    3 x 3 square; radius 0.5 a single pixel), so its severity 4 kernel blurs more than severity 3 only on that grid.
    """
    radius, alias = [(0.3, 0.4), (0.4, 0.5), (0.5, 0.6), (1.0, 0.2), (1.5, 0.1)][severity - 1]
    return _filter2d(x, _defocus_kernel(radius, alias, _blur_scale(x)))


@_register("motion_blur", "motion blur along a random direction (-45..45 degrees)", stochastic=True)
def motion_blur(x: torch.Tensor, severity: int, rng: _Random) -> torch.Tensor:
    """ImageMagick's ``MotionBlurImage(radius, sigma, angle)`` as CIFAR-10-C calls it, per image.

    A one-sided Gaussian streak: ``out(p) = sum_i w_i x(p + i * (cos a, sin a))`` for i = 0 .. 2 * ceil(radius),
    w_i proportional to exp(-i^2 / (2 sigma^2)), angle a ~ U(-45, 45) degrees per image, (radius, sigma) =
    [(6, 1), (6, 1.5), (6, 2), (8, 2), (9, 2.5)] * sqrt(size / 32) (CIFAR-10-C). ImageMagick rounds each tap to the
    nearest pixel; here taps are placed bilinearly (so scaled-down radii stay smooth) and taps beyond 4 sigma,
    which carry < 0.01% of the weight, are dropped. Done as one grouped convolution over the batch.

    As in the original, the radius only truncates the streak, so severities 3 (6, 2) and 4 (8, 2) are the same
    corruption (and, the angles being common to all severities, give the same images for one seed).
    """
    radius, sigma = [(6, 1.0), (6, 1.5), (6, 2.0), (8, 2.0), (9, 2.5)][severity - 1]
    s = _blur_scale(x)
    radius, sigma = radius * s, sigma * s
    n, c, h, w = x.shape
    last = min(2 * math.ceil(radius), math.ceil(4 * sigma))
    i = torch.arange(last + 1, dtype=torch.float32)
    weights = torch.exp(-0.5 * (i / sigma) ** 2)
    weights = weights / weights.sum()
    angle = (torch.rand(n, generator=rng.torch) * 90.0 - 45.0) * (math.pi / 180.0)
    k = 2 * last + 3  # odd, with room for the bilinear neighbours of the farthest tap
    centre = last + 1
    px = i[None, :] * torch.cos(angle)[:, None] + centre  # (N, taps): kernel column of each tap
    py = i[None, :] * torch.sin(angle)[:, None] + centre  # kernel row
    x0, y0 = px.floor(), py.floor()
    fx, fy = px - x0, py - y0
    kernel = torch.zeros(n, k * k)
    for dy, dx, wt in ((0, 0, (1 - fy) * (1 - fx)), (0, 1, (1 - fy) * fx), (1, 0, fy * (1 - fx)), (1, 1, fy * fx)):
        index = ((y0 + dy) * k + (x0 + dx)).long()
        kernel.scatter_add_(1, index, weights[None, :] * wt)
    pad = centre
    flat = F.pad(x.reshape(1, n * c, h, w), (pad, pad, pad, pad), mode="replicate")
    weight = kernel.to(x).repeat_interleave(c, dim=0).view(n * c, 1, k, k)
    return F.conv2d(flat, weight, groups=n * c).view(n, c, h, w)


# ---------------------------------------------------------------------------------------------------- weather / digital


def _plasma_fractal(n: int, mapsize: int, wibbledecay: float, rng: np.random.Generator) -> np.ndarray:
    """``n`` diamond-square (plasma) height maps of side ``mapsize`` (a power of two), each scaled to [0, 1].

    Hendrycks' ``plasma_fractal`` (a modification of FLHerne/mapgen's diamondsquare.py), vectorised over maps and
    drawing from ``rng``.
    """
    maps = np.zeros((n, mapsize, mapsize), dtype=np.float64)
    stepsize, wibble = mapsize, 100.0

    def wibbledmean(array: np.ndarray) -> np.ndarray:
        return array / 4 + wibble * rng.uniform(-wibble, wibble, array.shape)

    while stepsize >= 2:
        half = stepsize // 2
        # squares: the centre of each square of corners gets their mean plus noise
        corners = maps[:, 0::stepsize, 0::stepsize]
        acc = corners + np.roll(corners, -1, axis=1)
        acc = acc + np.roll(acc, -1, axis=2)
        maps[:, half::stepsize, half::stepsize] = wibbledmean(acc)
        # diamonds: the edge midpoints get the mean of their two corners and two centres plus noise
        centres = maps[:, half::stepsize, half::stepsize]
        corners = maps[:, 0::stepsize, 0::stepsize]
        left = centres + np.roll(centres, 1, axis=1) + corners + np.roll(corners, -1, axis=2)
        maps[:, 0::stepsize, half::stepsize] = wibbledmean(left)
        top = centres + np.roll(centres, 1, axis=2) + corners + np.roll(corners, -1, axis=1)
        maps[:, half::stepsize, 0::stepsize] = wibbledmean(top)
        stepsize //= 2
        wibble /= wibbledecay
    maps -= maps.min(axis=(1, 2), keepdims=True)
    return maps / np.maximum(maps.max(axis=(1, 2), keepdims=True), 1e-12)


@_register("fog", "fog: a plasma-fractal haze", stochastic=True)
def fog(x: torch.Tensor, severity: int, rng: _Random) -> torch.Tensor:
    """``(x + t * plasma) * m / (m + t)``, m the image's maximum, (t, wibbledecay) = [(.2, 3), (.5, 3), (.75, 2.5),
    (1, 2), (1.5, 1.75)] (CIFAR-10-C); one fractal per image, on a map of the next power of two >= max(H, W),
    cropped to H x W (as CIFAR-10-C crops its 32 map and ImageNet-C its 256 map)."""
    t, decay = [(0.2, 3.0), (0.5, 3.0), (0.75, 2.5), (1.0, 2.0), (1.5, 1.75)][severity - 1]
    n, _, h, w = x.shape
    mapsize = 1 << max(1, math.ceil(math.log2(max(h, w))))
    plasma = torch.from_numpy(_plasma_fractal(n, mapsize, decay, rng.numpy)[:, :h, :w]).to(x)
    peak = x.amax(dim=(1, 2, 3), keepdim=True)
    return (x + t * plasma[:, None]) * peak / (peak + t)


@_register("brightness", "brightness: HSV value (or grey intensity) + 0.05..0.3", stochastic=False)
def brightness(x: torch.Tensor, severity: int, rng: _Random) -> torch.Tensor:
    """Adds c = [.05, .1, .15, .2, .3] (CIFAR-10-C) to the HSV value, clipped to 1.

    HSV value is the channel maximum, and hue and saturation fixed mean every channel scales by v' / v (black
    pixels, having no hue, become grey v'), so this is exact without converting to HSV. For greyscale the value is
    the intensity, so it is simply ``clip(x + c, 0, 1)``.
    """
    c = [0.05, 0.1, 0.15, 0.2, 0.3][severity - 1]
    value = x.amax(dim=1, keepdim=True)
    new = (value + c).clamp(max=1.0)
    return torch.where(value > 0, x * (new / value.clamp(min=1e-12)), new)


@_register("contrast", "contrast reduced to 75%..15% around the mean", stochastic=False)
def contrast(x: torch.Tensor, severity: int, rng: _Random) -> torch.Tensor:
    """``(x - mean) * c + mean``, per image and channel mean, c = [.75, .5, .4, .3, .15] (CIFAR-10-C)."""
    c = [0.75, 0.5, 0.4, 0.3, 0.15][severity - 1]
    mean = x.mean(dim=(2, 3), keepdim=True)
    return (x - mean) * c + mean


def _mosaic_matrices(size: int, block: float, phase: torch.Tensor) -> torch.Tensor:
    """(N, size, size) row-averaging matrices: pixel i becomes the mean of the pixels whose centres share its block
    of the grid with edges at ``(phase + t) * block``, t integer (one grid phase in [0, 1) per image)."""
    centres = torch.arange(size, dtype=torch.float64) + 0.5
    block_of = torch.floor(centres[None, :] / block - phase.double()[:, None])  # (N, size)
    same = (block_of[:, :, None] == block_of[:, None, :]).double()
    return (same / same.sum(dim=2, keepdim=True)).to(torch.float32)


@_register("pixelate", "pixelation: mosaic of blocks 1.05..1.54 px wide (at any size)", stochastic=True)
def pixelate(x: torch.Tensor, severity: int, rng: _Random) -> torch.Tensor:
    """Each pixel replaced by the mean of its block on a grid of blocks ``1 / c`` pixels wide, c = [.95, .9, .85,
    .75, .65] (CIFAR-10-C), with a random grid phase per image and axis; an area (box) down-sampling by c followed
    by nearest up-sampling, done as one matrix product per axis.

    CIFAR-10-C resizes to ``int(32 * c)`` pixels and back with PIL's BOX filter, i.e. the same box down / nearest up
    with the grid anchored at the corner. With that integer grid the result depends on how the grid lines fall on
    the image content, and mean |x - c(x)| is not monotone in severity at many image sizes (8 x 8 digits: 8 -> 5
    is milder than 8 -> 6, and ``int(8 * c)`` has only three distinct sizes; digits at 22 px: 22 -> 20 is stronger
    than 22 -> 19 and 22 -> 16 than 22 -> 14). A continuous block width with a random phase (common to all
    severities) removes both, at about the same strength as the original at 32 px.
    """
    c = [0.95, 0.9, 0.85, 0.75, 0.65][severity - 1]
    n, _, h, w = x.shape
    phase = torch.rand(2, n, generator=rng.torch)
    rows = _mosaic_matrices(h, 1.0 / c, phase[0]).to(x)[:, None]  # (N, 1, H, H)
    cols = _mosaic_matrices(w, 1.0 / c, phase[1]).to(x)[:, None]
    return rows @ x @ cols.transpose(-1, -2)


@_register("jpeg_compression", "JPEG compression at quality 80..40 (Pillow)", stochastic=False)
def jpeg_compression(x: torch.Tensor, severity: int, rng: _Random) -> torch.Tensor:
    """Pillow JPEG round trip per image at quality [80, 65, 58, 50, 40] (CIFAR-10-C); greyscale as mode 'L'."""
    quality = [80, 65, 58, 50, 40][severity - 1]
    arrays = _to_uint8_numpy(x)
    out = np.empty_like(arrays)
    for i, a in enumerate(arrays):
        image = Image.fromarray(a[0], mode="L") if a.shape[0] == 1 else Image.fromarray(a.transpose(1, 2, 0), "RGB")
        buffer = io.BytesIO()
        image.save(buffer, format="JPEG", quality=quality)
        buffer.seek(0)
        decoded = np.asarray(Image.open(buffer).convert(image.mode))
        out[i] = decoded[None] if decoded.ndim == 2 else decoded.transpose(2, 0, 1)
    return torch.from_numpy(out).to(x.device, torch.float32) / 255.0


# ---------------------------------------------------------------------------------------------------- geometric


@_register("elastic_transform", "elastic warp: random affine plus smoothed random displacements", stochastic=True)
def elastic_transform(x: torch.Tensor, severity: int, rng: _Random) -> torch.Tensor:
    """Hendrycks' elastic transform (after Simard et al. 2003), per image, as one bilinear resampling.

    A random affine map (three points at the centre +- size // 3 each moved by U(-a, a) per coordinate) composed
    with a displacement field ``alpha * gaussian_filter(U(-1, 1), sigma)`` per axis, sampled with
    ``scipy.ndimage.map_coordinates(order=1, mode='reflect')``. (alpha, sigma, a) are fractions of ``size``, as in
    the original: [(0, 0, .03), (.05, .2, .04), (.08, .06, .05), (.1, .04, .06), (.1, .03, .07)] * size.

    Deviation: CIFAR-10-C's affine jitter is [.08, .07, .06, .05, .03] * size, *decreasing* with severity, and
    being the dominant displacement (its smoothed fields move pixels by < 0.6 px) it makes severity 1 the
    strongest (mean |x - c(x)| falls from severity 1 to 5). Here the jitter increases instead; alpha and sigma are
    the original's. The original also resamples twice (affine with OpenCV, then the field); here the two are
    composed and the image is interpolated once.
    """
    alpha_f, sigma_f, affine_f = [(0.0, 0.0, 0.03), (0.05, 0.2, 0.04), (0.08, 0.06, 0.05), (0.1, 0.04, 0.06),
                                  (0.1, 0.03, 0.07)][severity - 1]
    n, c, h, w = x.shape
    size = min(h, w)
    alpha, sigma, jitter = alpha_f * size, sigma_f * size, affine_f * size
    gen = rng.numpy
    # random affine, in (column, row) coordinates as OpenCV's getAffineTransform / warpAffine
    centre = np.array([w // 2, h // 2], dtype=np.float64)
    square = size // 3
    src = np.stack([centre + square, centre + [square, -square], centre - square])  # (3, 2)
    dst = src[None] + gen.uniform(-jitter, jitter, size=(n, 3, 2))
    # warpAffine(M) reads the source at M^-1(p): solve for the map dst -> src directly
    dst_h = np.concatenate([dst, np.ones((n, 3, 1))], axis=2)  # (n, 3, 3) rows [x y 1]
    inverse = np.linalg.solve(dst_h, np.broadcast_to(src, (n, 3, 2)).copy())  # (n, 3, 2): [x y 1] @ inverse = source
    # smoothed random displacement fields
    fields = gen.uniform(-1.0, 1.0, size=(2, n, h, w))
    if alpha > 0:
        fields = ndimage.gaussian_filter(fields, sigma=(0, 0, sigma, sigma), mode="reflect", truncate=3.0) * alpha
    else:
        fields = np.zeros_like(fields)
    rows, cols = np.meshgrid(np.arange(h, dtype=np.float64), np.arange(w, dtype=np.float64), indexing="ij")
    px = cols[None] + fields[0]  # (n, h, w) displaced column
    py = rows[None] + fields[1]
    sx = px * inverse[:, 0, 0, None, None] + py * inverse[:, 1, 0, None, None] + inverse[:, 2, 0, None, None]
    sy = px * inverse[:, 0, 1, None, None] + py * inverse[:, 1, 1, None, None] + inverse[:, 2, 1, None, None]
    image = x.detach().cpu().numpy().reshape(n * c, h, w)
    plane = np.broadcast_to(np.arange(n * c, dtype=np.float64)[:, None, None], (n * c, h, w))
    coords = np.stack([plane, np.repeat(sy, c, axis=0), np.repeat(sx, c, axis=0)])
    out = ndimage.map_coordinates(image, coords, order=1, mode="reflect")
    return torch.from_numpy(out.reshape(n, c, h, w)).to(x)


@_register("rotation", "rotation by 5..45 degrees, random sign (digits)", stochastic=True)
def rotation(x: torch.Tensor, severity: int, rng: _Random) -> torch.Tensor:
    """Rotation about the centre by [5, 10, 20, 30, 45] degrees, sign random per image; bilinear, zero fill.

    Not in CIFAR-10-C; meant for grey-scale digits / Fashion-MNIST (zero is their background).
    """
    degrees = [5.0, 10.0, 20.0, 30.0, 45.0][severity - 1]
    n = x.shape[0]
    sign = torch.randint(0, 2, (n,), generator=rng.torch).float() * 2 - 1
    return _affine_sample(x, sign * degrees * math.pi / 180.0, torch.zeros(n, 2))


@_register("translation", "translation by 5%..25% of the size in a random direction", stochastic=True)
def translation(x: torch.Tensor, severity: int, rng: _Random) -> torch.Tensor:
    """Shift by [.05, .1, .15, .2, .25] * size pixels in a direction uniform per image; bilinear, zero fill.

    Not in CIFAR-10-C; meant for grey-scale digits / Fashion-MNIST (1.4 to 7 px on 28 x 28 MNIST).
    """
    fraction = [0.05, 0.10, 0.15, 0.20, 0.25][severity - 1]
    n = x.shape[0]
    direction = torch.rand(n, generator=rng.torch) * (2 * math.pi)
    distance = fraction * _size(x)
    shift = torch.stack([torch.cos(direction), torch.sin(direction)], dim=1) * distance
    return _affine_sample(x, torch.zeros(n), shift)


# ---------------------------------------------------------------------------------------------------- API


def names(channels: int | None = None) -> list[str]:
    """The corruptions that apply to images with ``channels`` channels (1 or 3; all of them for ``None``), in
    registry order; ``[]`` for other channel counts, which :func:`corrupt` does not support."""
    if channels is None:
        return list(CORRUPTIONS)
    if channels == 1:
        return [n for n, c in CORRUPTIONS.items() if c.greyscale_ok]
    if channels == 3:
        return list(CORRUPTIONS)
    return []  # only grey-scale and RGB images are supported


def get(name: str) -> Corruption:
    """The registered corruption ``name``; an unknown name is a :class:`UserError` listing the known ones."""
    if name not in CORRUPTIONS:
        raise unknown_name("corruption", name, list(CORRUPTIONS))
    return CORRUPTIONS[name]


def check_severity(severity: object, *, allow_zero: bool = True) -> int:
    """``severity`` as an int, or a :class:`UserError` naming the allowed range."""
    low = 0 if allow_zero else 1
    if isinstance(severity, bool) or not isinstance(severity, (int, np.integer)) or not low <= severity <= 5:
        raise UserError(f"corruption severity must be an integer from {low} to 5 "
                        f"({'0 is no corruption, ' if allow_zero else ''}1 the mildest, 5 the strongest); "
                        f"got {severity!r}")
    return int(severity)


def corrupt(images: torch.Tensor, name: str, severity: int, seed: int = 0) -> torch.Tensor:
    """Corrupt a batch ``images`` (N, C, H, W), uint8 in [0, 255] or float in [0, 1], with ``name`` at ``severity``.

    Returns a new tensor of the same shape, dtype and device; severity 0 returns an equal copy. Deterministic
    given ``seed`` (see the module docstring).
    """
    corruption = get(name)
    severity = check_severity(severity)
    if not isinstance(images, torch.Tensor) or images.dim() != 4:
        got = tuple(images.shape) if isinstance(images, torch.Tensor) else type(images).__name__
        raise UserError(f"corrupt() needs a batch of images shaped (N, C, H, W); got {got}")
    channels = images.shape[1]
    if channels not in (1, 3):
        raise UserError(f"corrupt() needs grey-scale (1-channel) or RGB (3-channel) images; these have {channels} "
                        f"channels")
    if name not in names(channels):
        raise UserError(f"corruption {name!r} needs colour images, and these have {channels} channel(s); "
                        f"choose one of: {', '.join(names(channels))}")
    is_uint8 = images.dtype == torch.uint8
    if not is_uint8 and not images.is_floating_point():
        raise UserError(f"corrupt() needs uint8 images in [0, 255] or float images in [0, 1]; got {images.dtype}")
    if severity == 0 or images.shape[0] == 0:
        return images.clone()
    rng = _Random(seed)
    device = images.device
    outputs = []
    with torch.no_grad():
        for start in range(0, images.shape[0], CHUNK):
            chunk = images[start:start + CHUNK]
            x = chunk.to(torch.float32) / 255.0 if is_uint8 else chunk.to(torch.float32).clamp(0, 1)
            if corruption.name in ("elastic_transform", "jpeg_compression"):  # NumPy / Pillow work on the CPU
                x = x.cpu()
            y = corruption.fn(x, severity, rng).clamp(0, 1).to(device)
            outputs.append((y * 255).round().to(torch.uint8) if is_uint8 else y.to(images.dtype))
    return torch.cat(outputs)


__all__ = ["CHUNK", "CORRUPTIONS", "SEVERITIES", "Corruption", "check_severity", "corrupt", "get", "names"]
