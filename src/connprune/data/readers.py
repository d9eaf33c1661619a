"""Readers for the on-disk formats of the real data sets, returning NumPy arrays.

Every reader validates what it reads and raises :class:`~connprune.errors.UserError` naming the file, what was
expected and how to fix it (usually: re-download). Nothing here executes code from a data file: the CIFAR-10 pickles
go through :class:`RestrictedUnpickler`, which only rebuilds plain containers and uint8-style NumPy arrays, and the
``.npz`` files are opened with ``allow_pickle=False``.

Formats
-------
* IDX (MNIST, Fashion-MNIST), optionally gzip-compressed: a big-endian header ``0 0 <type> <ndim>`` (magic 2051 for
  images, 2049 for labels), ``ndim`` uint32 sizes, then the values row-major.
* CIFAR-10 ``cifar-10-batches-py``: each batch a Python pickle (protocol 2) of ``{b'data': (N, 3072) uint8,
  b'labels': [N ints], ...}``; ``batches.meta`` holds ``b'label_names'``.
* npz: the partial CIFAR-10 of ``cifar-10-partial/`` and CIFAR-10-Neg (HWC).
* Tiny ImageNet: 64x64 JPEGs in the official folder layout, in a folder tree or inside zip files (read in place).
"""

from __future__ import annotations

import codecs
import gzip
import io
import os
import pickle
import re
import sys
import zipfile
import zlib
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from connprune.errors import UserError

# ----------------------------------------------------------------------------------------------------------- IDX

IDX_IMAGES_MAGIC = 2051
IDX_LABELS_MAGIC = 2049


def read_idx(path: str | os.PathLike[str], magic: int, *, fix: str = "re-download it") -> np.ndarray:
    """Read one IDX file (``.gz`` or plain) of unsigned bytes; ``magic`` is 2051 (images) or 2049 (labels).

    Returns an array of the header's shape (``(N, H, W)`` for images, ``(N,)`` for labels), uint8.
    """
    path = Path(path)
    try:
        if path.suffix == ".gz":
            with gzip.open(path, "rb") as f:
                raw = f.read()
        else:
            raw = path.read_bytes()
    except EOFError as exc:
        raise UserError(f"{path} is truncated (the gzip stream ends early: {exc}); {fix}") from None
    except (OSError, zlib.error) as exc:
        raise UserError(f"{path} is not a readable IDX file ({exc}); {fix}") from None
    what = "pixels" if magic == IDX_IMAGES_MAGIC else "labels"
    ndim_expected = 3 if magic == IDX_IMAGES_MAGIC else 1
    if len(raw) < 4:
        raise UserError(f"{path} is truncated: {len(raw)} bytes, not even an IDX header; {fix}")
    found_magic = int.from_bytes(raw[:4], "big")
    if found_magic != magic:
        kind = {IDX_IMAGES_MAGIC: "an image", IDX_LABELS_MAGIC: "a label"}.get(found_magic)
        hint = f" (that is {kind} file: are the file names swapped?)" if kind else ""
        raise UserError(f"{path} has magic number {found_magic}{hint}, expected {magic} for an IDX {what} file; "
                        f"{fix}")
    ndim = raw[3]
    if ndim != ndim_expected:
        raise UserError(f"{path} has {ndim} dimensions, expected {ndim_expected}; {fix}")
    header = 4 + 4 * ndim
    if len(raw) < header:
        raise UserError(f"{path} is truncated: expected a {header}-byte header, got {len(raw)} bytes; {fix}")
    dims = tuple(int.from_bytes(raw[4 + 4 * i: 8 + 4 * i], "big") for i in range(ndim))
    expected = int(np.prod(dims, dtype=np.int64))
    got = len(raw) - header
    shape = "x".join(map(str, dims))
    if got < expected:
        raise UserError(f"{path} is truncated: expected {expected} bytes of {what} ({shape}), got {got}; {fix}")
    if got > expected:
        raise UserError(f"{path} is corrupt: expected {expected} bytes of {what} ({shape}), got {got} "
                        f"({got - expected} extra); {fix}")
    return np.frombuffer(raw, dtype=np.uint8, offset=header).reshape(dims)


def read_idx_pair(images_path: Path, labels_path: Path, *, hw: tuple[int, int], num_classes: int,
                  fix: str) -> tuple[np.ndarray, np.ndarray]:
    """Read an IDX images/labels pair and check that they agree; returns ``(N, 1, H, W)`` uint8 and ``(N,)`` int64."""
    images = read_idx(images_path, IDX_IMAGES_MAGIC, fix=fix)
    labels = read_idx(labels_path, IDX_LABELS_MAGIC, fix=fix)
    if images.shape[1:] != hw:
        raise UserError(f"{images_path} holds {images.shape[1]}x{images.shape[2]} images, expected {hw[0]}x{hw[1]}; "
                        f"{fix}")
    if len(labels) != len(images):
        raise UserError(f"{labels_path} has {len(labels)} labels but {images_path} has {len(images)} images; {fix}")
    check_labels(labels, num_classes, labels_path, fix)
    return images.reshape(len(images), 1, *hw), labels.astype(np.int64)


def check_labels(labels: np.ndarray, num_classes: int, path: Path | str, fix: str) -> None:
    if labels.size and (labels.min() < 0 or labels.max() >= num_classes):
        raise UserError(f"{path} has labels outside 0..{num_classes - 1} (found {labels.min()}..{labels.max()}); "
                        f"{fix}")


# ------------------------------------------------------------------------------------------------ CIFAR pickles


class RefusedPickle(pickle.UnpicklingError):
    """A pickle asked for a global that :class:`RestrictedUnpickler` does not allow."""


def _np_reconstruct(subtype: Any, shape: Any, dtype: Any) -> np.ndarray:
    if subtype is not np.ndarray:
        raise RefusedPickle(f"ndarray subclass {subtype!r}")
    return np.ndarray.__new__(np.ndarray, shape, dtype)


def _np_dtype(*args: Any) -> np.dtype:
    dtype = np.dtype(*args)
    if dtype.hasobject:
        raise RefusedPickle("an object-dtype array")
    return dtype


def _latin1_encode(obj: Any, encoding: Any = "utf-8", *rest: Any) -> bytes:
    # Python 3 writes ``bytes`` at protocol 2 as ``_codecs.encode(str, 'latin1')``; allow exactly that.
    if rest or not isinstance(obj, str) or str(encoding).lower().replace("-", "") not in ("latin1", "iso88591"):
        raise RefusedPickle("_codecs.encode with anything but (str, 'latin1')")
    return codecs.encode(obj, "latin1")


_ALLOWED_GLOBALS: dict[tuple[str, str], Callable[..., Any] | type] = {
    ("numpy.core.multiarray", "_reconstruct"): _np_reconstruct,   # NumPy 1.x (and the official Python 2 files)
    ("numpy._core.multiarray", "_reconstruct"): _np_reconstruct,  # NumPy 2.x
    ("numpy", "ndarray"): np.ndarray,
    ("numpy", "dtype"): _np_dtype,
    ("_codecs", "encode"): _latin1_encode,
}


class RestrictedUnpickler(pickle.Unpickler):
    """Unpickle plain containers and NumPy arrays only; every other global is refused before it is imported.

    The official CIFAR-10 batches need ``numpy.core.multiarray._reconstruct``, ``numpy.ndarray`` and
    ``numpy.dtype`` (each wrapped: no ndarray subclasses, no object dtypes); Python 3 protocol-2 pickles of
    ``bytes`` also need ``_codecs.encode`` (wrapped: latin-1 only). Persistent ids are refused by ``pickle`` itself.
    """

    def find_class(self, module: str, name: str) -> Any:
        try:
            return _ALLOWED_GLOBALS[(module, name)]
        except KeyError:
            raise RefusedPickle(f"{module}.{name}") from None


def safe_unpickle(path: Path, *, fix: str) -> Any:
    """Unpickle ``path`` with :class:`RestrictedUnpickler` (``encoding='bytes'``); errors become UserError."""
    try:
        with open(path, "rb") as f:
            obj = RestrictedUnpickler(f, encoding="bytes").load()
            trailing = f.read(1)
    except RefusedPickle as exc:
        raise UserError(f"{path} contains a pickled {exc} object, which a CIFAR-10 batch never holds; refusing to "
                        f"load it (it could run code): {fix}") from None
    except EOFError:
        raise UserError(f"{path} is truncated (the pickle ends early); {fix}") from None
    except OSError as exc:
        raise UserError(f"cannot read {path}: {exc}; {fix}") from None
    except Exception as exc:  # UnpicklingError, ValueError, TypeError, MemoryError ... from a corrupt stream
        if "truncated" in str(exc):
            raise UserError(f"{path} is truncated ({exc}); {fix}") from None
        raise UserError(f"{path} is not a valid CIFAR-10 pickle ({type(exc).__name__}: {exc}); {fix}") from None
    if trailing:
        raise UserError(f"{path} has extra bytes after the pickle; {fix}")
    return obj


def _key(d: dict, name: str) -> Any:
    if name.encode() in d:
        return d[name.encode()]
    return d.get(name)


CIFAR_ROW = 3 * 32 * 32


def read_cifar_batch(path: Path, *, fix: str) -> tuple[np.ndarray, np.ndarray]:
    """One ``cifar-10-batches-py`` batch: ``(N, 3, 32, 32)`` uint8 and ``(N,)`` int64 labels."""
    obj = safe_unpickle(path, fix=fix)
    if not isinstance(obj, dict):
        raise UserError(f"{path} holds a {type(obj).__name__}, expected a CIFAR-10 batch dict; {fix}")
    data, labels = _key(obj, "data"), _key(obj, "labels")
    if data is None or labels is None:
        raise UserError(f"{path} lacks the 'data' or 'labels' entry of a CIFAR-10 batch; {fix}")
    if not isinstance(data, np.ndarray) or data.dtype != np.uint8 or data.ndim != 2 or data.shape[1] != CIFAR_ROW:
        shape = getattr(data, "shape", None)
        dtype = getattr(data, "dtype", type(data).__name__)
        raise UserError(f"{path}: 'data' is {dtype} of shape {shape}, expected (N, {CIFAR_ROW}) uint8; {fix}")
    try:
        labels_arr = np.asarray(labels, dtype=np.int64).reshape(-1)
    except (TypeError, ValueError):
        raise UserError(f"{path}: 'labels' is not a list of integers; {fix}") from None
    if len(labels_arr) != len(data):
        raise UserError(f"{path} has {len(data)} images but {len(labels_arr)} labels; {fix}")
    check_labels(labels_arr, 10, path, fix)
    return np.ascontiguousarray(data).reshape(-1, 3, 32, 32), labels_arr


def read_cifar_meta(path: Path, *, fix: str) -> tuple[str, ...] | None:
    """Class names from ``batches.meta`` (a pickle, read safely), or None when the file is absent."""
    if not path.is_file():
        return None
    obj = safe_unpickle(path, fix=fix)
    names = _key(obj, "label_names") if isinstance(obj, dict) else None
    if not isinstance(names, list) or not all(isinstance(n, (bytes, str)) for n in names):
        raise UserError(f"{path} lacks a 'label_names' list; {fix}")
    return tuple(n.decode("utf-8", "replace") if isinstance(n, bytes) else n for n in names)


# ---------------------------------------------------------------------------------------------------------- npz


def _open_npz(path: Path, keys: Sequence[str], fix: str, optional: Sequence[str] = ()) -> dict[str, np.ndarray]:
    try:
        with np.load(path, allow_pickle=False) as npz:
            missing = [k for k in keys if k not in npz.files]
            if missing:
                raise UserError(f"{path} lacks the array(s) {', '.join(missing)} (has: {', '.join(npz.files)}); "
                                f"{fix}")
            return {k: npz[k] for k in [*keys, *optional] if k in npz.files}
    except UserError:
        raise
    except ValueError as exc:
        if "allow_pickle" in str(exc) or "pickled" in str(exc):
            raise UserError(f"{path} holds pickled objects, which are refused; {fix}") from None
        raise UserError(f"{path} is not a valid npz file ({exc}); {fix}") from None
    except (OSError, EOFError, zipfile.BadZipFile) as exc:
        raise UserError(f"{path} is truncated or not an npz file ({exc}); {fix}") from None


def read_cifar_partial(path: Path, split: str, *, fix: str) -> tuple[np.ndarray, np.ndarray, tuple[str, ...] | None]:
    """The partial CIFAR-10 npz (``<split>_data`` (N, 3072) uint8, ``<split>_labels``, ``label_names``)."""
    arrays = _open_npz(path, [f"{split}_data", f"{split}_labels"], fix, optional=["label_names"])
    data, labels = arrays[f"{split}_data"], arrays[f"{split}_labels"]
    if data.dtype != np.uint8 or data.ndim != 2 or data.shape[1] != CIFAR_ROW:
        raise UserError(f"{path}: {split}_data is {data.dtype} {data.shape}, expected (N, {CIFAR_ROW}) uint8; {fix}")
    if labels.ndim != 1 or len(labels) != len(data) or labels.dtype.kind not in "iu":
        raise UserError(f"{path}: {split}_labels is {labels.dtype} {labels.shape}, expected ({len(data)},) integers; "
                        f"{fix}")
    labels = labels.astype(np.int64)
    check_labels(labels, 10, path, fix)
    names = tuple(str(n) for n in arrays["label_names"].tolist()) if "label_names" in arrays else None
    return np.ascontiguousarray(data).reshape(-1, 3, 32, 32), labels, names


def read_hwc_npz(path: Path, *, hw: tuple[int, int], num_classes: int, fix: str,
                 data_key: str = "data", labels_key: str = "labels") -> tuple[np.ndarray, np.ndarray]:
    """An npz of ``data`` (N, H, W, 3) uint8 and ``labels`` (N,); returns CHW ``(N, 3, H, W)`` and int64 labels."""
    arrays = _open_npz(path, [data_key, labels_key], fix)
    data, labels = arrays[data_key], arrays[labels_key]
    if data.dtype != np.uint8 or data.ndim != 4 or data.shape[1:] != (*hw, 3):
        raise UserError(f"{path}: '{data_key}' is {data.dtype} {data.shape}, expected (N, {hw[0]}, {hw[1]}, 3) "
                        f"uint8; {fix}")
    if labels.ndim != 1 or len(labels) != len(data) or labels.dtype.kind not in "iu":
        raise UserError(f"{path}: '{labels_key}' is {labels.dtype} {labels.shape}, expected ({len(data)},) "
                        f"integers; {fix}")
    labels = labels.astype(np.int64)
    check_labels(labels, num_classes, path, fix)
    return np.ascontiguousarray(data.transpose(0, 3, 1, 2)), labels


# ------------------------------------------------------------------------------------------------ Tiny ImageNet

_TRAIN_RE = re.compile(r"(?:^|/)train/(n\d+)/images/([^/]+\.jpe?g)$", re.IGNORECASE)
_VAL_RE = re.compile(r"(?:^|/)val/images/([^/]+\.jpe?g)$", re.IGNORECASE)
_VAL_ANN_RE = re.compile(r"(?:^|/)val/val_annotations\.txt$")
_WNIDS_RE = re.compile(r"(?:^|/)wnids\.txt$")


@dataclass(frozen=True)
class Member:
    """One file of the data set: ``container`` is a zip file (``member`` a name inside it) or None (a plain path)."""

    container: str | None
    member: str

    def label(self) -> str:
        return f"{self.container}:{self.member}" if self.container else self.member

    def read(self, zips: dict[str, zipfile.ZipFile] | None = None) -> bytes:
        if self.container is None:
            return Path(self.member).read_bytes()
        if zips is not None:
            if self.container not in zips:
                zips[self.container] = zipfile.ZipFile(self.container)
            return zips[self.container].read(self.member)
        with zipfile.ZipFile(self.container) as z:
            return z.read(self.member)


@dataclass
class TinyImageNetIndex:
    """Where the files of a Tiny ImageNet copy are (after a scan; nothing decoded yet)."""

    wnids: list[Member] = field(default_factory=list)
    train: dict[str, Member] = field(default_factory=dict)   # "wnid/file" -> member
    val: dict[str, Member] = field(default_factory=dict)     # "file" -> member
    val_annotations: list[Member] = field(default_factory=list)
    sources: list[Path] = field(default_factory=list)        # the zip files / tree root, for messages


def _natural_key(name: str) -> tuple:
    return tuple(int(t) if t.isdigit() else t for t in re.split(r"(\d+)", name))


def _add(index: TinyImageNetIndex, rel: str, member: Member) -> None:
    if m := _TRAIN_RE.search(rel):
        index.train.setdefault(f"{m.group(1)}/{m.group(2)}", member)
    elif m := _VAL_RE.search(rel):
        index.val.setdefault(m.group(1), member)
    elif _VAL_ANN_RE.search(rel):
        index.val_annotations.append(member)
    elif _WNIDS_RE.search(rel):
        index.wnids.append(member)


def scan_tiny_imagenet(tree_root: Path | None, zips: Iterable[Path], *, fix: str) -> TinyImageNetIndex:
    """Index a folder tree (``wnids.txt``, ``train/``, ``val/`` under ``tree_root``) and/or zip files holding the
    same layout (under any prefix, e.g. ``tiny-imagenet-200/``). The first copy of a file found wins."""
    index = TinyImageNetIndex()
    if tree_root is not None:
        index.sources.append(tree_root)
        for top in ("wnids.txt", "val/val_annotations.txt"):
            if (tree_root / top).is_file():
                _add(index, top, Member(None, str(tree_root / top)))
        train_dir = tree_root / "train"
        if train_dir.is_dir():
            for wnid_dir in sorted(train_dir.iterdir()):
                images = wnid_dir / "images"
                if images.is_dir():
                    for entry in os.scandir(images):
                        _add(index, f"train/{wnid_dir.name}/images/{entry.name}", Member(None, entry.path))
        val_dir = tree_root / "val" / "images"
        if val_dir.is_dir():
            for entry in os.scandir(val_dir):
                _add(index, f"val/images/{entry.name}", Member(None, entry.path))
    for zpath in zips:
        index.sources.append(zpath)
        try:
            with zipfile.ZipFile(zpath) as z:
                names = z.namelist()
        except (zipfile.BadZipFile, OSError) as exc:
            raise UserError(f"{zpath} is not a readable zip file ({exc}); {fix}") from None
        for name in names:
            if not name.endswith("/"):
                _add(index, name, Member(str(zpath), name))
    return index


def read_tiny_imagenet_wnids(index: TinyImageNetIndex, *, fix: str) -> list[str]:
    """The wnids listed in ``wnids.txt`` (all copies must agree)."""
    if not index.wnids:
        where = ", ".join(str(s) for s in index.sources) or "(nothing)"
        raise UserError(f"no wnids.txt found in {where}; {fix}")
    lists = []
    for member in index.wnids:
        lists.append([w for w in member.read().decode("utf-8", "replace").split() if w])
    for other, member in zip(lists[1:], index.wnids[1:]):
        if sorted(other) != sorted(lists[0]):
            raise UserError(f"{member.label()} disagrees with {index.wnids[0].label()} on the class list; {fix}")
    return lists[0]


def tiny_imagenet_items(index: TinyImageNetIndex, split: str, class_index: dict[str, int], *,
                        fix: str) -> tuple[list[Member], np.ndarray]:
    """The image members of ``split`` ("train" or "test" = the official val set) in a fixed order, with labels."""
    where = ", ".join(str(s) for s in index.sources)
    if split == "train":
        if not index.train:
            raise UserError(f"no training images (train/<wnid>/images/*.JPEG) found in {where}; {fix}")
        keys = sorted(index.train, key=lambda k: (k.split("/")[0], _natural_key(k.split("/")[1])))
        unknown = sorted({k.split("/")[0] for k in keys} - set(class_index))
        if unknown:
            raise UserError(f"training images of unknown classes {', '.join(unknown[:5])} in {where} (not in "
                            f"wnids.txt / the 200 Tiny ImageNet classes); {fix}")
        labels = np.array([class_index[k.split("/")[0]] for k in keys], dtype=np.int64)
        return [index.train[k] for k in keys], labels
    if not index.val_annotations:
        raise UserError(f"no val/val_annotations.txt found in {where}; {fix}")
    ann = index.val_annotations[0]
    rows: dict[str, str] = {}
    for line in ann.read().decode("utf-8", "replace").splitlines():
        parts = line.split("\t") if "\t" in line else line.split()
        if len(parts) >= 2:
            rows[parts[0]] = parts[1]
    if not rows:
        raise UserError(f"{ann.label()} has no 'file<TAB>wnid' lines; {fix}")
    unknown = sorted({w for w in rows.values()} - set(class_index))
    if unknown:
        raise UserError(f"{ann.label()} names unknown classes {', '.join(unknown[:5])}; {fix}")
    missing = sorted((f for f in rows if f not in index.val), key=_natural_key)
    if missing:
        raise UserError(f"{len(missing)} validation images listed in {ann.label()} are missing from {where} "
                        f"(e.g. val/images/{missing[0]}); {fix}")
    files = sorted(rows, key=_natural_key)
    return [index.val[f] for f in files], np.array([class_index[rows[f]] for f in files], dtype=np.int64)


def _decode_chunk(args: tuple[int, list[Member], tuple[int, int]]) -> tuple[int, np.ndarray]:
    """Decode a chunk of JPEG members to ``(n, 3, H, W)`` uint8 (a multiprocessing worker; module level)."""
    from PIL import Image, UnidentifiedImageError

    start, members, hw = args
    out = np.empty((len(members), 3, *hw), dtype=np.uint8)
    zips: dict[str, zipfile.ZipFile] = {}
    try:
        for i, member in enumerate(members):
            try:
                with Image.open(io.BytesIO(member.read(zips))) as im:
                    rgb = np.asarray(im.convert("RGB"))
            except (UnidentifiedImageError, OSError, zipfile.BadZipFile, KeyError) as exc:
                raise UserError(f"{member.label()} is not a readable image ({exc}); re-download the data set") from None
            if rgb.shape[:2] != hw:
                raise UserError(f"{member.label()} is {rgb.shape[1]}x{rgb.shape[0]} pixels, expected "
                                f"{hw[1]}x{hw[0]}; re-download the data set")
            out[i] = rgb.transpose(2, 0, 1)
    finally:
        for z in zips.values():
            z.close()
    return start, out


def decode_images(members: Sequence[Member], hw: tuple[int, int], *, workers: int = 2, chunk: int = 1000,
                  description: str = "decoding images") -> np.ndarray:
    """Decode JPEG members to ``(N, 3, H, W)`` uint8 RGB, in a pool of ``workers`` processes when there are many.

    A progress bar is shown on a terminal (stderr).
    """
    out = np.empty((len(members), 3, *hw), dtype=np.uint8)
    tasks = [(s, list(members[s:s + chunk]), hw) for s in range(0, len(members), chunk)]
    pool = None
    if workers > 1 and len(tasks) > 1 and sys.platform.startswith("linux"):
        import multiprocessing as mp
        import warnings

        # fork, not spawn: spawn re-imports the caller's __main__, which breaks scripts without a
        # ``if __name__ == "__main__"`` guard. The workers only run zipfile + Pillow + NumPy (never torch), so the
        # parent's other threads, which fork does not copy, are not needed in them. Forked before the progress bar
        # starts its refresh thread.
        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", message=".*multi-threaded.*fork", category=DeprecationWarning)
            pool = mp.get_context("fork").Pool(min(workers, len(tasks)))
    try:
        with _progress(description, len(members)) as bar:
            task = bar.add_task(description, total=len(members))
            results = pool.imap_unordered(_decode_chunk, tasks) if pool is not None else map(_decode_chunk, tasks)
            for start, arr in results:
                out[start:start + len(arr)] = arr
                bar.advance(task, len(arr))
    finally:
        if pool is not None:
            pool.terminate()
            pool.join()
    return out


def _progress(description: str, total: int) -> Any:
    from rich.console import Console
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

    console = Console(stderr=True)
    return Progress(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeRemainingColumn(),
                    console=console, transient=True, disable=not (console.is_terminal and total > 2000))


__all__ = [
    "IDX_IMAGES_MAGIC", "IDX_LABELS_MAGIC", "Member", "RestrictedUnpickler", "TinyImageNetIndex", "decode_images",
    "read_cifar_batch", "read_cifar_meta", "read_cifar_partial", "read_hwc_npz", "read_idx", "read_idx_pair",
    "safe_unpickle", "scan_tiny_imagenet", "read_tiny_imagenet_wnids", "tiny_imagenet_items",
]
