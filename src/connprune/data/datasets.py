"""The data set registry: what each set is (:class:`DatasetInfo`), where its files are (:func:`find`) and how to load
it into memory as uint8 tensors (:func:`load`), with a decode-once cache.

Data sets
---------
``digits``         scikit-learn's bundled 8x8 digits; a seeded stratified 75/25 split. Needs no files.
``mnist``          the four official idx ``.gz`` files, in ``mnist/`` or ``MNIST/raw/`` (torchvision's layout).
``fashion-mnist``  the same four file names, in ``fashion-mnist/`` or ``FashionMNIST/raw/``.
``cifar10``        the official ``cifar-10-batches-py/`` (pickles, read with a restricted unpickler) or the partial
                   CIFAR-10 npz of ``cifar-10-partial/`` (5,085 train / 1,017 test images); the official folder wins.
``cifar10-neg``    ``CIFAR-10-Neg/CIFAR10_neg.npz``: 1,000 test images, a distribution-shift set for CIFAR-10 models
                   (test split only; normalised like CIFAR-10).
``tiny-imagenet``  ``tiny-imagenet-200/``: the official folder tree, or zip files holding that layout (read in
                   place, several train zips allowed). The split "test" is the official labelled val set. Labels
                   index the 200 standard wnids, sorted.

Data dir and cache
------------------
Sets are looked up under the data dir (:func:`resolve_data_dir`: the argument, else ``$CONNPRUNE_DATA``, else
``./data``). The decoded tensors are cached as ``<data_dir>/.connprune-cache/<name>-<split>-<fingerprint>.safetensors``
where the fingerprint hashes the source files' names, sizes and mtimes, so a changed source is decoded afresh. A data
dir that cannot be written is used without a cache (with one warning).
"""

from __future__ import annotations

import functools
import gzip
import hashlib
import json
import os
import re
import warnings
import zipfile
from collections.abc import Callable
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np
import torch

from connprune.data import readers
from connprune.errors import UserError, unknown_name
from connprune.utils.io import atomic_path

ENV_DATA_DIR = "CONNPRUNE_DATA"
CACHE_DIR = ".connprune-cache"
CACHE_FORMAT = "1"          # bump when the decoded content of any set changes; invalidates every cache file
SPLITS = ("train", "test")
DECODE_WORKERS = min(2, os.cpu_count() or 1)   # processes decoding Tiny ImageNet JPEGs


@dataclass(frozen=True)
class DatasetInfo:
    """What a model needs to know about a data set (no data)."""

    name: str
    num_classes: int
    input_shape: tuple[int, int, int]      # (C, H, W)
    mean: tuple[float, ...]                # per-channel normalisation of [0, 1] images
    std: tuple[float, ...]
    augment: bool                          # the standard random crop (zero padding) + horizontal flip applies
    crop_padding: int                      # padding of that random crop (0 when augment is False)
    class_names: tuple[str, ...] = ()
    shift_only: bool = False               # a test-only shift set for models of another set

    def to_json(self) -> dict[str, Any]:
        d = asdict(self)
        for key in ("input_shape", "mean", "std", "class_names"):
            d[key] = list(d[key])
        return d

    @classmethod
    def from_json(cls, d: dict[str, Any]) -> DatasetInfo:
        return cls(name=d["name"], num_classes=int(d["num_classes"]), input_shape=tuple(d["input_shape"]),
                   mean=tuple(d["mean"]), std=tuple(d["std"]), augment=bool(d["augment"]),
                   crop_padding=int(d["crop_padding"]), class_names=tuple(d.get("class_names", ())),
                   shift_only=bool(d.get("shift_only", False)))


@dataclass
class ImageData:
    """A whole split in memory."""

    images: torch.Tensor   # uint8 (N, C, H, W), contiguous; or float inputs used as given (info.mean empty)
    labels: torch.Tensor   # int64, (N,)
    info: DatasetInfo
    split: str             # "train" or "test"

    def __len__(self) -> int:
        return int(self.labels.shape[0])

    def subset(self, indices: torch.Tensor) -> ImageData:
        """The samples ``indices`` of this split (same info and split name)."""
        return ImageData(images=self.images[indices], labels=self.labels[indices], info=self.info, split=self.split)


@dataclass
class Found:
    """Where a data set's files are under a data dir (see :func:`find`)."""

    name: str
    available: bool
    location: str | None   # the folder (or file) found, None when missing or not file-based
    source: str            # which files are expected under which folder names, and where to get them
    samples: dict[str, int] | None = None
    """Images per split, read from the files' headers (nothing decoded); None where they cannot be counted cheaply."""

    @property
    def partial(self) -> bool:
        """Whether the copy found holds fewer images than the official set in some split."""
        official = OFFICIAL_SIZES.get(self.name, {})
        return bool(self.samples) and any(self.samples.get(k, 0) < n for k, n in official.items())

    @property
    def note(self) -> str:
        """``"partial (N train / M test)"`` for a partial copy, else ``""``."""
        if not self.partial or not self.samples:
            return ""
        return "partial (" + " / ".join(f"{n:,} {split}" for split, n in self.samples.items()) + ")"


OFFICIAL_SIZES: dict[str, dict[str, int]] = {
    "mnist": {"train": 60_000, "test": 10_000},
    "fashion-mnist": {"train": 60_000, "test": 10_000},
    "cifar10": {"train": 50_000, "test": 10_000},
    "cifar10-neg": {"test": 1_000},
    "tiny-imagenet": {"train": 100_000, "test": 10_000},
}
"""Images per split of the official releases (Tiny ImageNet's "test" is its labelled val set)."""


# --------------------------------------------------------------------------------------------------- infos

CIFAR10_CLASSES = ("airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck")
FASHION_CLASSES = ("T-shirt/top", "Trouser", "Pullover", "Dress", "Coat", "Sandal", "Shirt", "Sneaker", "Bag",
                   "Ankle boot")
DIGIT_CLASSES = tuple(str(i) for i in range(10))
CIFAR10_MEAN, CIFAR10_STD = (0.4914, 0.4822, 0.4465), (0.2470, 0.2435, 0.2616)

# The 200 Tiny ImageNet classes (wnids.txt of the official tiny-imagenet-200.zip), sorted: label i is wnid i.
TINY_IMAGENET_WNIDS = tuple("""
    n01443537 n01629819 n01641577 n01644900 n01698640 n01742172 n01768244 n01770393 n01774384 n01774750
    n01784675 n01855672 n01882714 n01910747 n01917289 n01944390 n01945685 n01950731 n01983481 n01984695
    n02002724 n02056570 n02058221 n02074367 n02085620 n02094433 n02099601 n02099712 n02106662 n02113799
    n02123045 n02123394 n02124075 n02125311 n02129165 n02132136 n02165456 n02190166 n02206856 n02226429
    n02231487 n02233338 n02236044 n02268443 n02279972 n02281406 n02321529 n02364673 n02395406 n02403003
    n02410509 n02415577 n02423022 n02437312 n02480495 n02481823 n02486410 n02504458 n02509815 n02666196
    n02669723 n02699494 n02730930 n02769748 n02788148 n02791270 n02793495 n02795169 n02802426 n02808440
    n02814533 n02814860 n02815834 n02823428 n02837789 n02841315 n02843684 n02883205 n02892201 n02906734
    n02909870 n02917067 n02927161 n02948072 n02950826 n02963159 n02977058 n02988304 n02999410 n03014705
    n03026506 n03042490 n03085013 n03089624 n03100240 n03126707 n03160309 n03179701 n03201208 n03250847
    n03255030 n03355925 n03388043 n03393912 n03400231 n03404251 n03424325 n03444034 n03447447 n03544143
    n03584254 n03599486 n03617480 n03637318 n03649909 n03662601 n03670208 n03706229 n03733131 n03763968
    n03770439 n03796401 n03804744 n03814639 n03837869 n03838899 n03854065 n03891332 n03902125 n03930313
    n03937543 n03970156 n03976657 n03977966 n03980874 n03983396 n03992509 n04008634 n04023962 n04067472
    n04070727 n04074963 n04099969 n04118538 n04133789 n04146614 n04149813 n04179913 n04251144 n04254777
    n04259630 n04265275 n04275548 n04285008 n04311004 n04328186 n04356056 n04366367 n04371430 n04376876
    n04398044 n04399382 n04417672 n04456115 n04465501 n04486054 n04487081 n04501370 n04507155 n04532106
    n04532670 n04540053 n04560804 n04562935 n04596742 n04597913 n06596364 n07579787 n07583066 n07614500
    n07615774 n07695742 n07711569 n07715103 n07720875 n07734744 n07747607 n07749582 n07753592 n07768694
    n07871810 n07873807 n07875152 n07920052 n09193705 n09246464 n09256479 n09332890 n09428293 n12267677
""".split())

# digits: mean/std of the pixels (uint8 / 255) of the seed-0 training split (1347 images x 64 pixels), computed with
#   x = np.round(load_digits().data * 255 / 16).astype(np.uint8)
#   tr = train_test_split(x, y, test_size=0.25, stratify=y, random_state=0)[0] / 255
#   tr.mean() = 0.30528, tr.std() = 0.37584      (checked by tests/test_data.py)
DIGITS_MEAN, DIGITS_STD = (0.3053,), (0.3758,)

_INFOS: dict[str, DatasetInfo] = {
    "digits": DatasetInfo("digits", 10, (1, 8, 8), DIGITS_MEAN, DIGITS_STD, False, 0, DIGIT_CLASSES),
    "mnist": DatasetInfo("mnist", 10, (1, 28, 28), (0.1307,), (0.3081,), False, 0, DIGIT_CLASSES),
    "fashion-mnist": DatasetInfo("fashion-mnist", 10, (1, 28, 28), (0.2860,), (0.3530,), False, 0, FASHION_CLASSES),
    "cifar10": DatasetInfo("cifar10", 10, (3, 32, 32), CIFAR10_MEAN, CIFAR10_STD, True, 4, CIFAR10_CLASSES),
    "cifar10-neg": DatasetInfo("cifar10-neg", 10, (3, 32, 32), CIFAR10_MEAN, CIFAR10_STD, True, 4, CIFAR10_CLASSES,
                               shift_only=True),
    "tiny-imagenet": DatasetInfo("tiny-imagenet", 200, (3, 64, 64), (0.4802, 0.4481, 0.3975),
                                 (0.2302, 0.2265, 0.2262), True, 8, TINY_IMAGENET_WNIDS),
}


def names() -> list[str]:
    """The registered data set names."""
    return list(_INFOS)


def info(name: str) -> DatasetInfo:
    """The :class:`DatasetInfo` of ``name`` (no files are read)."""
    try:
        return _INFOS[name]
    except KeyError:
        raise unknown_name("data set", name, names()) from None


def resolve_data_dir(data_dir: str | os.PathLike[str] | None) -> Path:
    """The data dir: ``data_dir`` if given, else ``$CONNPRUNE_DATA``, else ``./data`` (made absolute)."""
    if data_dir is None or str(data_dir) == "":
        data_dir = os.environ.get(ENV_DATA_DIR) or "data"
    return Path(data_dir).expanduser().absolute()


# ------------------------------------------------------------------------------------------------- sources


@dataclass
class _Source:
    """A located copy of a data set: its format, folder and the files whose stats make the cache fingerprint."""

    kind: str
    location: Path
    files: list[Path] = field(default_factory=list)
    tree: Path | None = None          # Tiny ImageNet folder tree root (fingerprinted by listing)
    zips: list[Path] = field(default_factory=list)


@dataclass(frozen=True)
class _Spec:
    folders: tuple[str, ...]
    expected: str                                              # "which files in which folders", for messages
    url: str                                                   # where to get them officially
    locate: Callable[[Path], tuple[_Source | None, list[str]]]  # -> (source or None, problems found)
    read: Callable[[_Source, str], tuple[np.ndarray, np.ndarray, tuple[str, ...] | None]]


IDX_FILES = {
    "train": ("train-images-idx3-ubyte", "train-labels-idx1-ubyte"),
    "test": ("t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte"),
}


def _idx_file(folder: Path, stem: str) -> Path | None:
    for candidate in (folder / f"{stem}.gz", folder / stem):
        if candidate.is_file():
            return candidate
    return None


def _locate_idx(folders: tuple[str, ...]) -> Callable[[Path], tuple[_Source | None, list[str]]]:
    def locate(root: Path) -> tuple[_Source | None, list[str]]:
        problems = []
        for rel in folders:
            folder = root / rel
            if not folder.is_dir():
                continue
            stems = [s for pair in IDX_FILES.values() for s in pair]
            files = {s: _idx_file(folder, s) for s in stems}
            missing = [f"{s}.gz" for s, p in files.items() if p is None]
            if not missing:
                return _Source("idx", folder, [p for p in files.values() if p is not None]), []
            problems.append(f"{rel}/ lacks {', '.join(missing)}")
        return None, problems

    return locate


def _read_idx(name: str) -> Callable[[_Source, str], tuple[np.ndarray, np.ndarray, None]]:
    def read(source: _Source, split: str) -> tuple[np.ndarray, np.ndarray, None]:
        images_stem, labels_stem = IDX_FILES[split]
        folder = source.location
        images_path, labels_path = _idx_file(folder, images_stem), _idx_file(folder, labels_stem)
        assert images_path is not None and labels_path is not None
        fix = f"re-download it from {_SPECS[name].url}"
        images, labels = readers.read_idx_pair(images_path, labels_path, hw=(28, 28), num_classes=10, fix=fix)
        return images, labels, None

    return read


CIFAR_BATCHES = {"train": [f"data_batch_{i}" for i in range(1, 6)], "test": ["test_batch"]}
CIFAR_URL = "https://www.cs.toronto.edu/~kriz/cifar-10-python.tar.gz (extract it into the data dir)"
CIFAR_FIX = f"re-download {CIFAR_URL}"


def _locate_cifar10(root: Path) -> tuple[_Source | None, list[str]]:
    problems = []
    official = root / "cifar-10-batches-py"
    if official.is_dir():
        batch_files = [official / b for bs in CIFAR_BATCHES.values() for b in bs]
        missing = [p.name for p in batch_files if not p.is_file()]
        if not missing:
            meta = official / "batches.meta"
            return _Source("cifar-batches", official, batch_files + ([meta] if meta.is_file() else [])), []
        problems.append(f"cifar-10-batches-py/ lacks {', '.join(missing)}")
    partial = root / "cifar-10-partial" / "cifar10_partial.npz"
    if partial.is_file():
        return _Source("cifar-partial", partial.parent, [partial]), problems
    if partial.parent.is_dir():
        problems.append("cifar-10-partial/ lacks cifar10_partial.npz")
    return None, problems


def _read_cifar10(source: _Source, split: str) -> tuple[np.ndarray, np.ndarray, tuple[str, ...] | None]:
    if source.kind == "cifar-partial":
        return readers.read_cifar_partial(source.location / "cifar10_partial.npz", split,
                                          fix="re-create it, or use the official cifar-10-batches-py/ "
                                              f"({CIFAR_URL})")
    parts = [readers.read_cifar_batch(source.location / b, fix=CIFAR_FIX) for b in CIFAR_BATCHES[split]]
    images = np.concatenate([p[0] for p in parts]) if len(parts) > 1 else parts[0][0]
    labels = np.concatenate([p[1] for p in parts]) if len(parts) > 1 else parts[0][1]
    names_ = readers.read_cifar_meta(source.location / "batches.meta", fix=CIFAR_FIX)
    return images, labels, names_


def _locate_file(rel: str) -> Callable[[Path], tuple[_Source | None, list[str]]]:
    def locate(root: Path) -> tuple[_Source | None, list[str]]:
        path = root / rel
        if path.is_file():
            return _Source("npz", path.parent, [path]), []
        return None, ([f"{Path(rel).parent}/ lacks {Path(rel).name}"] if path.parent.is_dir() else [])

    return locate


def _read_cifar10_neg(source: _Source, split: str) -> tuple[np.ndarray, np.ndarray, None]:
    path = source.files[0]
    images, labels = readers.read_hwc_npz(path, hw=(32, 32), num_classes=10,
                                          fix=f"re-download it from {_SPECS['cifar10-neg'].url}")
    return images, labels, None


TINY_URL = "http://cs231n.stanford.edu/tiny-imagenet-200.zip"


def _locate_tiny_imagenet(root: Path) -> tuple[_Source | None, list[str]]:
    folder = root / "tiny-imagenet-200"
    tree = None
    zips: list[Path] = []
    if folder.is_dir():
        for candidate in (folder, folder / "tiny-imagenet-200"):
            if (candidate / "wnids.txt").is_file():
                tree = candidate
                break
        zips = sorted(p for p in folder.glob("*.zip") if p.is_file())
    official_zip = root / "tiny-imagenet-200.zip"
    if official_zip.is_file():
        zips.append(official_zip)
    if tree is None and not zips:
        return None, (["tiny-imagenet-200/ has neither wnids.txt (the folder tree) nor *.zip files"]
                      if folder.is_dir() else [])
    location = folder if folder.is_dir() else official_zip
    return _Source("tiny-imagenet", location, list(zips), tree=tree, zips=zips), []


def _read_tiny_imagenet(source: _Source, split: str) -> tuple[np.ndarray, np.ndarray, None]:
    fix = f"re-download {TINY_URL} (train/, val/ and wnids.txt under tiny-imagenet-200/, or zip files of them)"
    index = readers.scan_tiny_imagenet(source.tree, source.zips, fix=fix)
    wnids = readers.read_tiny_imagenet_wnids(index, fix=fix)
    unknown = sorted(set(wnids) - set(TINY_IMAGENET_WNIDS))
    if unknown:
        raise UserError(f"{index.wnids[0].label()} lists {len(unknown)} classes that are not among the 200 "
                        f"Tiny ImageNet classes (e.g. {unknown[0]}); remove them or {fix}")
    class_index = {w: i for i, w in enumerate(TINY_IMAGENET_WNIDS) if w in set(wnids)}
    members, labels = readers.tiny_imagenet_items(index, split, class_index, fix=fix)
    what = "train" if split == "train" else "val"
    images = readers.decode_images(members, (64, 64), workers=DECODE_WORKERS,
                                   description=f"decoding Tiny ImageNet {what} ({len(members):,} JPEGs, once)")
    return images, labels, None


def _read_none(source: _Source, split: str) -> Any:  # digits: never read from files
    raise AssertionError("digits has no files")


_SPECS: dict[str, _Spec] = {
    "digits": _Spec((), "nothing (bundled with scikit-learn: sklearn.datasets.load_digits)",
                    "scikit-learn", lambda root: (None, []), _read_none),
    "mnist": _Spec(
        ("mnist", "MNIST/raw"),
        "train-images-idx3-ubyte.gz, train-labels-idx1-ubyte.gz, t10k-images-idx3-ubyte.gz and "
        "t10k-labels-idx1-ubyte.gz in mnist/ or MNIST/raw/",
        "https://yann.lecun.com/exdb/mnist/ (mirror: https://ossci-datasets.s3.amazonaws.com/mnist/)",
        _locate_idx(("mnist", "MNIST/raw")), _read_idx("mnist")),
    "fashion-mnist": _Spec(
        ("fashion-mnist", "FashionMNIST/raw"),
        "train-images-idx3-ubyte.gz, train-labels-idx1-ubyte.gz, t10k-images-idx3-ubyte.gz and "
        "t10k-labels-idx1-ubyte.gz in fashion-mnist/ or FashionMNIST/raw/",
        "https://github.com/zalandoresearch/fashion-mnist (files: "
        "http://fashion-mnist.s3-website.eu-central-1.amazonaws.com/)",
        _locate_idx(("fashion-mnist", "FashionMNIST/raw")), _read_idx("fashion-mnist")),
    "cifar10": _Spec(
        ("cifar-10-batches-py", "cifar-10-partial"),
        "cifar-10-batches-py/ (data_batch_1 ... data_batch_5, test_batch, batches.meta) or "
        "cifar-10-partial/cifar10_partial.npz",
        CIFAR_URL, _locate_cifar10, _read_cifar10),
    "cifar10-neg": _Spec(
        ("CIFAR-10-Neg",), "CIFAR-10-Neg/CIFAR10_neg.npz",
        "https://github.com/saurabhgarg1996/CIFAR-10-NEG (CIFAR10_neg.npz)",
        _locate_file("CIFAR-10-Neg/CIFAR10_neg.npz"), _read_cifar10_neg),
    "tiny-imagenet": _Spec(
        ("tiny-imagenet-200",),
        "tiny-imagenet-200/ holding the official tree (wnids.txt, train/<wnid>/images/*.JPEG, val/images/*.JPEG, "
        "val/val_annotations.txt) or zip files of that layout",
        f"{TINY_URL} (extract it into the data dir, or put the zip in tiny-imagenet-200/)",
        _locate_tiny_imagenet, _read_tiny_imagenet),
}


def _spec(name: str) -> _Spec:
    info(name)
    return _SPECS[name]


def _source_text(name: str) -> str:
    spec = _spec(name)
    if name == "digits":
        return "bundled with scikit-learn (sklearn.datasets.load_digits); no files needed"
    return f"{spec.expected} under the data dir; get it from {spec.url}"


def find(name: str, data_dir: str | os.PathLike[str] | None = None) -> Found:
    """Whether ``name``'s files are under the data dir, and how many images each split holds where the files'
    headers say so cheaply (nothing is decoded)."""
    spec = _spec(name)
    if name == "digits":
        return Found(name, True, None, _source_text(name))
    source, _ = spec.locate(resolve_data_dir(data_dir))
    if source is None:
        return Found(name, False, None, _source_text(name))
    return Found(name, True, str(source.location), _source_text(name), samples=_sample_counts(source))


def _sample_counts(source: _Source) -> dict[str, int] | None:
    """Images per split of a located copy, from headers only (IDX headers, npz array headers, zip listings); None for
    the official CIFAR-10 pickles (complete when found: every batch file is there) and for unreadable files."""
    try:
        if source.kind == "idx":
            return {split: _idx_count(_idx_file(source.location, stems[0]) or source.location / stems[0])
                    for split, stems in IDX_FILES.items()}
        if source.kind == "cifar-partial":
            path = source.location / "cifar10_partial.npz"
            return {split: _npz_rows(path, f"{split}_data") for split in SPLITS}
        if source.kind == "npz":
            return {"test": _npz_rows(source.files[0], "data")}
        if source.kind == "tiny-imagenet":
            index = readers.scan_tiny_imagenet(source.tree, source.zips, fix="")
            return {"train": len(index.train), "test": len(index.val)}
    except (OSError, ValueError, EOFError, KeyError, zipfile.BadZipFile, UserError):
        return None
    return None


def _idx_count(path: Path) -> int:
    """The item count of an IDX file (``.gz`` or plain), from its header: magic (4 bytes), then the first size."""
    with (gzip.open(path, "rb") if path.suffix == ".gz" else open(path, "rb")) as f:
        header = f.read(8)
    if len(header) < 8:
        raise ValueError(f"{path}: no IDX header")
    return int.from_bytes(header[4:8], "big")


def _npz_rows(path: Path, key: str) -> int:
    """The first dimension of array ``key`` of an npz file, from its ``.npy`` header (the data is not read)."""
    with zipfile.ZipFile(path) as archive, archive.open(f"{key}.npy") as f:
        version = np.lib.format.read_magic(f)
        read_header = np.lib.format.read_array_header_1_0 if version == (1, 0) else \
            np.lib.format.read_array_header_2_0
        shape, _, _ = read_header(f)
    return int(shape[0]) if shape else 0


def _missing(name: str, root: Path, problems: list[str]) -> UserError:
    spec = _SPECS[name]
    where = f"data dir {root}" + ("" if root.is_dir() else " (which does not exist)")
    detail = f" ({'; '.join(problems)})" if problems else ""
    return UserError(f"data set {name!r} not found under the {where}{detail}: expected {spec.expected}; get it "
                     f"from {spec.url}, or point --data-dir / ${ENV_DATA_DIR} at the folder that holds it")


# -------------------------------------------------------------------------------------------------- loading


@functools.lru_cache(maxsize=1)
def _digits_arrays() -> tuple[np.ndarray, np.ndarray]:
    from sklearn.datasets import load_digits

    digits = load_digits()
    images = np.round(digits.images * 255.0 / 16.0).astype(np.uint8)
    return images.reshape(-1, 1, 8, 8), digits.target.astype(np.int64)


def _load_digits(split: str, seed: int) -> ImageData:
    from sklearn.model_selection import train_test_split

    images, labels = _digits_arrays()
    train_idx, test_idx = train_test_split(np.arange(len(labels)), test_size=0.25, stratify=labels,
                                           random_state=seed)
    idx = train_idx if split == "train" else test_idx
    return ImageData(torch.from_numpy(np.ascontiguousarray(images[idx])), torch.from_numpy(labels[idx].copy()),
                     _INFOS["digits"], split)


def _stat_entry(path: Path, rel_to: Path) -> list[Any]:
    st = path.stat()
    try:
        rel = str(path.relative_to(rel_to))
    except ValueError:
        rel = str(path)
    return [rel, st.st_size, st.st_mtime_ns]


def _fingerprint(name: str, source: _Source, root: Path) -> str:
    """A short hash of the source's format, file names, sizes and mtimes (a changed source misses the cache)."""
    entries: list[Any] = [CACHE_FORMAT, name, source.kind]
    entries += [_stat_entry(p, root) for p in source.files]
    if source.tree is not None:
        tree = source.tree
        for rel in ("wnids.txt", "val/val_annotations.txt"):
            if (tree / rel).is_file():
                entries.append(_stat_entry(tree / rel, root))
        dirs = [tree / "val" / "images"]
        if (tree / "train").is_dir():
            dirs += sorted(d / "images" for d in (tree / "train").iterdir())
        for d in dirs:
            if d.is_dir():
                names_ = sorted(os.listdir(d))
                entries.append([str(d.relative_to(root)) if d.is_relative_to(root) else str(d), d.stat().st_mtime_ns,
                                hashlib.sha256("\n".join(names_).encode()).hexdigest()[:16]])
    return hashlib.sha256(json.dumps(entries).encode()).hexdigest()[:16]


_warned_dirs: set[str] = set()


def _warn_once(key: str, message: str) -> None:
    if key not in _warned_dirs:
        _warned_dirs.add(key)
        warnings.warn(message, RuntimeWarning, stacklevel=4)  # the caller of load()


def _read_cache(path: Path, spec_info: DatasetInfo, split: str) -> ImageData | None:
    from safetensors import safe_open

    try:
        # memory-mapped, copy-on-write: pages are read on first use, and writes to the tensors never reach the file
        with safe_open(str(path), framework="pt") as f:
            meta = f.metadata() or {}
            images, labels = f.get_tensor("images"), f.get_tensor("labels")
        class_names = tuple(json.loads(meta.get("class_names", "[]")))
    except Exception as exc:  # a corrupt or foreign cache file: decode again (and overwrite it)
        _warn_once(f"read:{path}", f"ignoring unreadable cache file {path} ({exc}); decoding the data set again")
        return None
    if (images.dtype != torch.uint8 or labels.dtype != torch.int64 or images.ndim != 4
            or tuple(images.shape[1:]) != spec_info.input_shape or labels.shape != (images.shape[0],)):
        return None
    data_info = replace(spec_info, class_names=class_names) if class_names else spec_info
    return ImageData(images.contiguous(), labels.contiguous(), data_info, split)


def _writable(folder: Path) -> bool:
    """Whether ``folder`` may be written: by access rights, and by its mode bits too (a folder without any write
    bit is meant to be read-only, even for root, who passes the access check)."""
    try:
        return os.access(folder, os.W_OK) and bool(folder.stat().st_mode & 0o222)
    except OSError:
        return False


def _write_cache(path: Path, data: ImageData, source: _Source) -> None:
    from safetensors.torch import save_file

    meta = {"format": CACHE_FORMAT, "name": data.info.name, "split": data.split, "source": str(source.location),
            "class_names": json.dumps(list(data.info.class_names))}
    if not path.parent.exists() and not _writable(path.parent.parent):
        _warn_once(f"write:{path.parent}", f"the data dir {path.parent.parent} is read-only; loading without a "
                                           "cache (decoding every time)")
        return
    try:
        with atomic_path(path) as tmp:
            save_file({"images": data.images, "labels": data.labels}, str(tmp), metadata=meta)
            os.chmod(tmp, 0o644)   # mkstemp makes it 0600; let others sharing the data dir read the cache
    except OSError as exc:
        _warn_once(f"write:{path.parent}", f"cannot write the data cache in {path.parent} ({exc.strerror or exc}); "
                                           "loading without a cache (decoding every time)")
        return
    stale = re.compile(rf"{re.escape(data.info.name)}-{data.split}-[0-9a-f]{{16}}\.safetensors")
    for other in path.parent.iterdir():
        if other != path and stale.fullmatch(other.name):
            try:
                other.unlink()
            except OSError:
                pass


def load(name: str, split: str = "train", data_dir: str | os.PathLike[str] | None = None, *,
         seed: int = 0) -> ImageData:
    """Load a split of ``name`` into memory as uint8 ``(N, C, H, W)`` images and int64 labels.

    ``seed`` only matters for ``digits`` (its train/test split). File-based sets are decoded once and cached under
    ``<data_dir>/.connprune-cache/``.
    """
    spec = _spec(name)
    if split not in SPLITS:
        raise unknown_name("split", split, SPLITS)
    data_info = _INFOS[name]
    if name == "digits":
        return _load_digits(split, seed)
    if data_info.shift_only and split != "test":
        raise UserError(f"{name} has a test split only (it is a shift set for {name.split('-')[0]} models); "
                        f"load split 'test', or evaluate with --shift {name}")
    root = resolve_data_dir(data_dir)
    source, problems = spec.locate(root)
    if source is None:
        raise _missing(name, root, problems)
    cache_path = root / CACHE_DIR / f"{name}-{split}-{_fingerprint(name, source, root)}.safetensors"
    if cache_path.is_file():
        cached = _read_cache(cache_path, data_info, split)
        if cached is not None:
            return cached
    images, labels, class_names = spec.read(source, split)
    if images.dtype != np.uint8 or images.ndim != 4 or tuple(images.shape[1:]) != data_info.input_shape:
        raise UserError(f"{source.location} gave {images.dtype} images of shape {images.shape[1:]}, expected "
                        f"{data_info.input_shape} uint8; re-download {name} from {spec.url}")
    if labels.shape != (len(images),) or (len(labels) and (labels.min() < 0 or labels.max() >= data_info.num_classes)):
        raise UserError(f"{source.location} gave labels that do not match its images (or outside "
                        f"0..{data_info.num_classes - 1}); re-download {name} from {spec.url}")
    if class_names and len(class_names) == data_info.num_classes and tuple(class_names) != data_info.class_names:
        data_info = replace(data_info, class_names=tuple(class_names))
    images, labels = np.ascontiguousarray(images), np.ascontiguousarray(labels, dtype=np.int64)
    if not images.flags.writeable:   # e.g. np.frombuffer over the decompressed bytes
        images = images.copy()
    if not labels.flags.writeable:
        labels = labels.copy()
    data = ImageData(torch.from_numpy(images), torch.from_numpy(labels), data_info, split)
    _write_cache(cache_path, data, source)
    return data
