"""Data loaders: every test writes its own tiny files in the official formats under tmp_path (nothing downloaded)."""

from __future__ import annotations

import gzip
import io
import json
import os
import pickle
import struct
import zipfile
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from connprune import data
from connprune.data import datasets, readers
from connprune.errors import UserError

# ------------------------------------------------------------------------------------------------ registry


def test_names_and_infos_are_json_round_trippable():
    assert data.names() == ["digits", "mnist", "fashion-mnist", "cifar10", "cifar10-neg", "tiny-imagenet"]
    for name in data.names():
        info = data.info(name)
        assert info.name == name and len(info.mean) == len(info.std) == info.input_shape[0]
        assert len(info.class_names) == info.num_classes
        assert data.DatasetInfo.from_json(json.loads(json.dumps(info.to_json()))) == info
    assert (data.info("cifar10").augment, data.info("cifar10").crop_padding) == (True, 4)
    assert (data.info("tiny-imagenet").crop_padding, data.info("tiny-imagenet").num_classes) == (8, 200)
    assert data.info("cifar10-neg").shift_only and not data.info("cifar10").shift_only
    assert not data.info("mnist").augment and data.info("mnist").crop_padding == 0
    with pytest.raises(UserError, match="unknown data set 'svhn'.*cifar10"):
        data.info("svhn")
    with pytest.raises(UserError, match="unknown split 'val'"):
        data.load("digits", "val")


def test_resolve_data_dir(monkeypatch, tmp_path):
    monkeypatch.delenv(data.ENV_DATA_DIR, raising=False)
    assert data.resolve_data_dir(None) == Path("data").absolute()
    monkeypatch.setenv(data.ENV_DATA_DIR, str(tmp_path / "env"))
    assert data.resolve_data_dir(None) == tmp_path / "env"
    assert data.resolve_data_dir(tmp_path / "arg") == tmp_path / "arg"


# -------------------------------------------------------------------------------------------------- digits


def test_digits_split_is_stratified_seeded_and_shaped():
    train, test = data.load("digits", "train"), data.load("digits", "test")
    assert train.images.shape == (1347, 1, 8, 8) and test.images.shape == (450, 1, 8, 8)
    assert train.images.dtype == torch.uint8 and train.labels.dtype == torch.int64 and train.images.is_contiguous()
    assert len(train) == 1347 and train.split == "train" and test.split == "test"
    assert int(train.images.max()) == 255 and int(train.images.min()) == 0
    counts_train, counts_test = train.labels.bincount(minlength=10), test.labels.bincount(minlength=10)
    total = counts_train + counts_test
    assert ((counts_test.float() - 0.25 * total.float()).abs() <= 1).all()   # stratified: each class split 75/25
    again = data.load("digits", "test", seed=0)
    assert torch.equal(again.images, test.images) and torch.equal(again.labels, test.labels)
    other = data.load("digits", "test", seed=1)
    assert not torch.equal(other.labels, test.labels)
    assert data.find("digits").available


def test_digits_normalisation_constants_are_the_train_statistics():
    from sklearn.datasets import load_digits
    from sklearn.model_selection import train_test_split

    d = load_digits()
    x = np.round(d.data * 255 / 16).astype(np.uint8)
    tr = train_test_split(x, d.target, test_size=0.25, stratify=d.target, random_state=0)[0] / 255.0
    info = data.info("digits")
    assert info.mean[0] == pytest.approx(tr.mean(), abs=6e-5)
    assert info.std[0] == pytest.approx(tr.std(), abs=6e-5)
    assert torch.equal(data.load("digits").images.reshape(-1, 64), torch.from_numpy(
        train_test_split(x, d.target, test_size=0.25, stratify=d.target, random_state=0)[0]))


# ----------------------------------------------------------------------------------------------------- idx


def idx_bytes(array: np.ndarray, magic: int) -> bytes:
    return struct.pack(">I", magic) + b"".join(struct.pack(">I", n) for n in array.shape) + array.tobytes()


def write_idx_set(folder: Path, seed: int = 0, n_train: int = 5, n_test: int = 3) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(seed)
    folder.mkdir(parents=True, exist_ok=True)
    arrays = {
        "train-images-idx3-ubyte": rng.integers(0, 256, (n_train, 28, 28), dtype=np.uint8),
        "train-labels-idx1-ubyte": rng.integers(0, 10, n_train, dtype=np.uint8),
        "t10k-images-idx3-ubyte": rng.integers(0, 256, (n_test, 28, 28), dtype=np.uint8),
        "t10k-labels-idx1-ubyte": rng.integers(0, 10, n_test, dtype=np.uint8),
    }
    for stem, arr in arrays.items():
        magic = 2051 if "images" in stem else 2049
        (folder / f"{stem}.gz").write_bytes(gzip.compress(idx_bytes(arr, magic)))
    return arrays


@pytest.mark.parametrize("name, folder", [("mnist", "mnist"), ("mnist", "MNIST/raw"),
                                          ("fashion-mnist", "fashion-mnist"),
                                          ("fashion-mnist", "FashionMNIST/raw")])
def test_idx_round_trip(tmp_path, name, folder):
    arrays = write_idx_set(tmp_path / folder)
    found = data.find(name, tmp_path)
    assert found.available and found.location == str(tmp_path / folder)
    for split, prefix in (("train", "train"), ("test", "t10k")):
        loaded = data.load(name, split, tmp_path)
        assert loaded.images.shape == (len(arrays[f"{prefix}-labels-idx1-ubyte"]), 1, 28, 28)
        assert loaded.images.dtype == torch.uint8 and loaded.labels.dtype == torch.int64
        assert np.array_equal(loaded.images[:, 0].numpy(), arrays[f"{prefix}-images-idx3-ubyte"])
        assert np.array_equal(loaded.labels.numpy(), arrays[f"{prefix}-labels-idx1-ubyte"])
        assert loaded.info == data.info(name)


def test_truncated_idx_is_a_user_error_naming_the_file(tmp_path):
    arrays = write_idx_set(tmp_path / "mnist")
    path = tmp_path / "mnist" / "train-images-idx3-ubyte.gz"
    raw = idx_bytes(arrays["train-images-idx3-ubyte"], 2051)
    path.write_bytes(gzip.compress(raw[:1000]))           # a valid gzip of a cut-short idx file
    with pytest.raises(UserError, match=r"train-images-idx3-ubyte\.gz is truncated: expected 3920 bytes of pixels "
                                        r"\(5x28x28\), got 984; re-download"):
        data.load("mnist", "train", tmp_path)
    path.write_bytes(gzip.compress(raw)[:500])            # a cut-short gzip stream
    with pytest.raises(UserError, match=r"train-images-idx3-ubyte\.gz is truncated"):
        data.load("mnist", "train", tmp_path)
    data.load("mnist", "test", tmp_path)                  # the other split's files are fine


def test_wrong_idx_magic_is_a_user_error_naming_the_file(tmp_path):
    arrays = write_idx_set(tmp_path / "fashion-mnist")
    path = tmp_path / "fashion-mnist" / "t10k-labels-idx1-ubyte.gz"
    path.write_bytes(gzip.compress(idx_bytes(arrays["t10k-labels-idx1-ubyte"], 1234)))
    with pytest.raises(UserError, match=r"t10k-labels-idx1-ubyte\.gz has magic number 1234, expected 2049"):
        data.load("fashion-mnist", "test", tmp_path)
    path.write_bytes(gzip.compress(idx_bytes(arrays["t10k-images-idx3-ubyte"], 2051)))  # swapped files
    with pytest.raises(UserError, match=r"t10k-labels-idx1-ubyte\.gz has magic number 2051 \(that is an image file"):
        data.load("fashion-mnist", "test", tmp_path)


# --------------------------------------------------------------------------------------------------- CIFAR


class Py2StylePickler(pickle._Pickler):  # type: ignore[name-defined]
    """Writes bytes as Python 2 ``str`` opcodes and NumPy under ``numpy.core``, like the official CIFAR files."""

    def save_bytes(self, obj):
        n = len(obj)
        self.write((pickle.SHORT_BINSTRING + bytes([n]) if n < 256 else pickle.BINSTRING + struct.pack("<i", n)) + obj)
        self.memoize(obj)

    def save_str(self, obj):  # Python 2 ``str`` too (e.g. the dtype's 'u1' and '|')
        self.save_bytes(obj.encode("latin1"))

    dispatch = dict(pickle._Pickler.dispatch)  # type: ignore[attr-defined]
    dispatch[bytes] = save_bytes
    dispatch[str] = save_str

    def save_global(self, obj, name=None):
        module = obj.__module__.replace("numpy._core", "numpy.core")
        self.write(pickle.GLOBAL + f"{module}\n{name or obj.__qualname__}\n".encode())
        self.memoize(obj)


def cifar_batch(rng, n: int) -> dict:
    return {b"batch_label": b"a batch", b"labels": [int(v) for v in rng.integers(0, 10, n)],
            b"data": rng.integers(0, 256, (n, 3072), dtype=np.uint8),
            b"filenames": [f"img_{i}.png".encode() for i in range(n)]}


def write_cifar_batches(folder: Path, *, py2: bool = False, seed: int = 0) -> dict[str, dict]:
    rng = np.random.default_rng(seed)
    folder.mkdir(parents=True, exist_ok=True)
    batches = {f"data_batch_{i}": cifar_batch(rng, 2) for i in range(1, 6)} | {"test_batch": cifar_batch(rng, 3)}
    batches["batches.meta"] = {b"num_cases_per_batch": 2, b"label_names": [f"c{i}".encode() for i in range(10)],
                               b"num_vis": 3072}
    for fname, obj in batches.items():
        with open(folder / fname, "wb") as f:
            (Py2StylePickler(f, protocol=2) if py2 else pickle.Pickler(f, protocol=2)).dump(obj)
    return batches


@pytest.mark.parametrize("py2", [False, True], ids=["py3-protocol2", "py2-style"])
def test_cifar_batches_load(tmp_path, py2):
    batches = write_cifar_batches(tmp_path / "cifar-10-batches-py", py2=py2)
    train, test = data.load("cifar10", "train", tmp_path), data.load("cifar10", "test", tmp_path)
    assert train.images.shape == (10, 3, 32, 32) and test.images.shape == (3, 3, 32, 32)
    expected = np.concatenate([batches[f"data_batch_{i}"][b"data"] for i in range(1, 6)])
    assert np.array_equal(train.images.numpy().reshape(10, 3072), expected)
    # row layout: 1024 red, then 1024 green, then 1024 blue values, each 32x32 row-major
    assert train.images[3, 1, 2, 5] == expected[3, 1024 + 2 * 32 + 5]
    assert train.labels.tolist() == sum((batches[f"data_batch_{i}"][b"labels"] for i in range(1, 6)), [])
    assert test.labels.tolist() == batches["test_batch"][b"labels"]
    assert train.info.class_names == tuple(f"c{i}" for i in range(10))   # from batches.meta
    assert train.info.mean == data.info("cifar10").mean and train.info.crop_padding == 4


class Evil:
    def __init__(self, marker: Path):
        self.marker = marker

    def __reduce__(self):
        return os.system, (f"touch {self.marker}",)


def test_malicious_cifar_pickle_is_refused_and_not_run(tmp_path):
    write_cifar_batches(tmp_path / "cifar-10-batches-py")
    marker = tmp_path / "pwned"
    path = tmp_path / "cifar-10-batches-py" / "data_batch_2"
    with open(path, "wb") as f:
        pickle.dump({b"data": Evil(marker), b"labels": [0]}, f, protocol=2)
    with pytest.raises(UserError, match=r"data_batch_2 contains a pickled (posix|nt)\.system object.*refusing"):
        data.load("cifar10", "train", tmp_path)
    assert not marker.exists()
    for payload in (pickle.dumps(eval, protocol=2), pickle.dumps(np.array([1, None], dtype=object), protocol=2)):
        path.write_bytes(payload)
        with pytest.raises(UserError, match="refusing"):
            data.load("cifar10", "train", tmp_path)


def test_truncated_or_malformed_cifar_batch_is_rejected(tmp_path):
    write_cifar_batches(tmp_path / "cifar-10-batches-py")
    path = tmp_path / "cifar-10-batches-py" / "test_batch"
    path.write_bytes(path.read_bytes()[:3000])
    with pytest.raises(UserError, match=r"test_batch is truncated"):
        data.load("cifar10", "test", tmp_path)
    with open(path, "wb") as f:
        pickle.dump({b"data": np.zeros((3, 3000), np.uint8), b"labels": [0, 1, 2]}, f, protocol=2)
    with pytest.raises(UserError, match=r"test_batch: 'data' is uint8 of shape \(3, 3000\), expected \(N, 3072\)"):
        data.load("cifar10", "test", tmp_path)
    with open(path, "wb") as f:
        pickle.dump({b"data": np.zeros((3, 3072), np.uint8), b"labels": [0, 1]}, f, protocol=2)
    with pytest.raises(UserError, match=r"test_batch has 3 images but 2 labels"):
        data.load("cifar10", "test", tmp_path)


def write_cifar_partial(folder: Path, seed: int = 0) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(seed)
    folder.mkdir(parents=True, exist_ok=True)
    arrays = {"train_data": rng.integers(0, 256, (4, 3072), dtype=np.uint8),
              "train_labels": rng.integers(0, 10, 4).astype(np.uint8),
              "test_data": rng.integers(0, 256, (2, 3072), dtype=np.uint8),
              "test_labels": rng.integers(0, 10, 2).astype(np.uint8),
              "label_names": np.array(datasets.CIFAR10_CLASSES)}
    np.savez_compressed(folder / "cifar10_partial.npz", **arrays)
    (folder / "batches.meta").write_bytes(b"unused")
    return arrays


def test_cifar_partial_npz_loads_and_official_folder_wins(tmp_path):
    arrays = write_cifar_partial(tmp_path / "cifar-10-partial")
    assert data.find("cifar10", tmp_path).location == str(tmp_path / "cifar-10-partial")
    for split in ("train", "test"):
        loaded = data.load("cifar10", split, tmp_path)
        assert np.array_equal(loaded.images.numpy().reshape(-1, 3072), arrays[f"{split}_data"])
        assert np.array_equal(loaded.labels.numpy(), arrays[f"{split}_labels"])
        assert loaded.info.class_names == datasets.CIFAR10_CLASSES
    write_cifar_batches(tmp_path / "cifar-10-batches-py")
    assert data.find("cifar10", tmp_path).location == str(tmp_path / "cifar-10-batches-py")
    assert len(data.load("cifar10", "train", tmp_path)) == 10


def test_cifar10_neg_loads_chw_and_refuses_train(tmp_path):
    rng = np.random.default_rng(0)
    hwc = rng.integers(0, 256, (3, 32, 32, 3), dtype=np.uint8)
    hwc[1, 2, 5] = (200, 17, 99)                        # image 1, row 2, column 5: R, G, B
    (tmp_path / "CIFAR-10-Neg").mkdir()
    np.savez(tmp_path / "CIFAR-10-Neg" / "CIFAR10_neg.npz", data=hwc, labels=np.array([3, 1, 4], dtype=np.int64))
    test = data.load("cifar10-neg", "test", tmp_path)
    assert test.images.shape == (3, 3, 32, 32) and test.images.is_contiguous()
    assert test.images[1, :, 2, 5].tolist() == [200, 17, 99]
    assert test.labels.tolist() == [3, 1, 4]
    assert test.info.shift_only and test.info.mean == data.info("cifar10").mean
    with pytest.raises(UserError, match="cifar10-neg has a test split only"):
        data.load("cifar10-neg", "train", tmp_path)


# --------------------------------------------------------------------------------------------- Tiny ImageNet

WNIDS = [datasets.TINY_IMAGENET_WNIDS[7], datasets.TINY_IMAGENET_WNIDS[2]]   # listed unsorted in wnids.txt


def jpeg(colour, mode: str = "RGB") -> bytes:
    buf = io.BytesIO()
    Image.new(mode, (64, 64), colour).save(buf, format="JPEG", quality=95)
    return buf.getvalue()


def tiny_files() -> dict[str, bytes]:
    """Relative path -> content of a 2-class Tiny ImageNet (3 train images per class, 3 val images)."""
    files = {"wnids.txt": "\n".join(WNIDS).encode() + b"\n"}
    for c, wnid in enumerate(WNIDS):
        for k in (0, 1, 10):                             # natural order: _10 after _1
            colour = 40 + 60 * c + 5 * k
            files[f"train/{wnid}/images/{wnid}_{k}.JPEG"] = (
                jpeg(colour, "L") if (c, k) == (0, 1) else jpeg((colour, 0, 255 - colour)))
        files[f"train/{wnid}/{wnid}_boxes.txt"] = b"ignored"
    val = [("val_0.JPEG", WNIDS[1]), ("val_1.JPEG", WNIDS[0]), ("val_2.JPEG", WNIDS[1])]
    for i, (fname, _) in enumerate(val):
        files[f"val/images/{fname}"] = jpeg((10 * i, 100, 200))
    files["val/val_annotations.txt"] = "".join(f"{f}\t{w}\t0\t0\t63\t63\n" for f, w in val).encode()
    return files


def check_tiny(root: Path) -> tuple[data.ImageData, data.ImageData]:
    train, test = data.load("tiny-imagenet", "train", root), data.load("tiny-imagenet", "test", root)
    idx = {w: datasets.TINY_IMAGENET_WNIDS.index(w) for w in WNIDS}
    low, high = sorted(WNIDS)
    assert train.images.shape == (6, 3, 64, 64) and train.images.dtype == torch.uint8
    assert train.labels.tolist() == [idx[low]] * 3 + [idx[high]] * 3     # sorted wnids, standard class indices
    first = WNIDS.index(low)
    for j, k in enumerate((0, 1, 10)):                                    # images in natural file order
        colour = 40 + 60 * first + 5 * k
        pixel = train.images[j, :, 32, 32].int()
        expected = [colour] * 3 if (first, k) == (0, 1) else [colour, 0, 255 - colour]
        assert (pixel - torch.tensor(expected)).abs().max() <= 3, (j, pixel, expected)
    grey = train.images[(train.labels == idx[WNIDS[0]]).nonzero()[1, 0]]  # WNIDS[0]_1 was saved as greyscale
    assert torch.equal(grey[0], grey[1]) and torch.equal(grey[1], grey[2])
    assert test.labels.tolist() == [idx[WNIDS[1]], idx[WNIDS[0]], idx[WNIDS[1]]]
    assert (test.images[2, :, 10, 10].int() - torch.tensor([20, 100, 200])).abs().max() <= 3
    assert train.info == data.info("tiny-imagenet")
    return train, test


def test_tiny_imagenet_from_folder_tree(tmp_path):
    for rel, content in tiny_files().items():
        path = tmp_path / "tiny-imagenet-200" / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(content)
    check_tiny(tmp_path)
    # adding a training image changes the folder fingerprint: the cache is not reused
    extra = tmp_path / "tiny-imagenet-200" / "train" / WNIDS[0] / "images" / f"{WNIDS[0]}_2.JPEG"
    extra.write_bytes(jpeg((1, 2, 3)))
    assert len(data.load("tiny-imagenet", "train", tmp_path)) == 7


def test_tiny_imagenet_from_zip_files(tmp_path):
    folder = tmp_path / "tiny-imagenet-200"
    folder.mkdir()
    files = tiny_files()
    for zname, part in (("tiny-imagenet-200-train-a.zip", lambda r: r.startswith(f"train/{WNIDS[0]}")),
                        ("tiny-imagenet-200-train-b.zip", lambda r: r.startswith(f"train/{WNIDS[1]}")),
                        ("tiny-imagenet-200-val.zip", lambda r: r.startswith("val/"))):
        with zipfile.ZipFile(folder / zname, "w") as z:
            z.writestr("tiny-imagenet-200/wnids.txt", files["wnids.txt"])
            for rel, content in files.items():
                if part(rel):
                    z.writestr(f"tiny-imagenet-200/{rel}", content)
    assert data.find("tiny-imagenet", tmp_path).location == str(folder)
    check_tiny(tmp_path)


def test_tiny_imagenet_pool_decoding_matches_in_process(tmp_path):
    members = []
    for i in range(5):
        path = tmp_path / f"{i}.JPEG"
        path.write_bytes(jpeg(i * 40, "L") if i == 3 else jpeg((i * 40, 0, 0)))
        members.append(readers.Member(None, str(path)))
    serial = readers.decode_images(members, (64, 64), workers=1)
    pooled = readers.decode_images(members, (64, 64), workers=2, chunk=2)
    assert np.array_equal(serial, pooled) and serial.shape == (5, 3, 64, 64)
    (tmp_path / "bad.JPEG").write_bytes(b"not a jpeg")
    with pytest.raises(UserError, match=r"bad\.JPEG is not a readable image"):
        readers.decode_images([readers.Member(None, str(tmp_path / "bad.JPEG"))], (64, 64))


def test_tiny_imagenet_unknown_class_is_a_user_error(tmp_path):
    folder = tmp_path / "tiny-imagenet-200"
    folder.mkdir()
    (folder / "wnids.txt").write_text("n99999999\n")
    with pytest.raises(UserError, match=r"wnids\.txt lists 1 classes that are not among the 200.*n99999999"):
        data.load("tiny-imagenet", "train", tmp_path)


# --------------------------------------------------------------------------------------------------- cache


def write_neg(tmp_path: Path, value: int) -> None:
    (tmp_path / "CIFAR-10-Neg").mkdir(exist_ok=True)
    np.savez(tmp_path / "CIFAR-10-Neg" / "CIFAR10_neg.npz", data=np.full((2, 32, 32, 3), value, np.uint8),
             labels=np.array([0, 9]))


def test_cache_is_written_reused_and_invalidated(tmp_path, monkeypatch):
    write_neg(tmp_path, 7)
    first = data.load("cifar10-neg", "test", tmp_path)
    cache_files = list((tmp_path / data.CACHE_DIR).glob("cifar10-neg-test-*.safetensors"))
    assert len(cache_files) == 1

    calls = []
    real = readers.read_hwc_npz

    def counting(*args, **kwargs):
        calls.append(1)
        return real(*args, **kwargs)

    def boom(*args, **kwargs):
        raise AssertionError("the reader must not run on a cache hit")

    monkeypatch.setattr(readers, "read_hwc_npz", boom)
    second = data.load("cifar10-neg", "test", tmp_path)
    assert torch.equal(second.images, first.images) and torch.equal(second.labels, first.labels)
    assert second.info == first.info and second.images.is_contiguous()

    monkeypatch.setattr(readers, "read_hwc_npz", counting)
    write_neg(tmp_path, 9)                               # a changed source (size/mtime) misses the cache
    path = tmp_path / "CIFAR-10-Neg" / "CIFAR10_neg.npz"
    os.utime(path, ns=(path.stat().st_atime_ns, path.stat().st_mtime_ns + 10**9))
    third = data.load("cifar10-neg", "test", tmp_path)
    assert calls == [1] and int(third.images[0, 0, 0, 0]) == 9
    new_files = list((tmp_path / data.CACHE_DIR).glob("cifar10-neg-test-*.safetensors"))
    assert len(new_files) == 1 and new_files != cache_files   # the stale cache file was removed


def test_unwritable_data_dir_skips_the_cache_with_one_warning(tmp_path, monkeypatch):
    write_neg(tmp_path, 5)

    def read_only(path):
        raise PermissionError(13, "Permission denied")

    monkeypatch.setattr(datasets, "atomic_path", read_only)
    with pytest.warns(RuntimeWarning, match="cannot write the data cache"):
        loaded = data.load("cifar10-neg", "test", tmp_path)
    assert int(loaded.images.sum()) == 5 * 2 * 3 * 32 * 32
    import warnings

    with warnings.catch_warnings():
        warnings.simplefilter("error")
        data.load("cifar10-neg", "test", tmp_path)   # warned once only
    assert not list((tmp_path / data.CACHE_DIR).glob("*.safetensors"))


def test_read_only_data_dir_is_used_without_a_cache(tmp_path):
    write_neg(tmp_path, 4)
    tmp_path.chmod(0o555)
    try:
        with pytest.warns(RuntimeWarning, match="read-only; loading without a cache"):
            assert int(data.load("cifar10-neg", "test", tmp_path).images[0, 0, 0, 0]) == 4
        assert not (tmp_path / data.CACHE_DIR).exists()
    finally:
        tmp_path.chmod(0o755)


def test_corrupt_cache_file_is_ignored(tmp_path):
    write_neg(tmp_path, 3)
    data.load("cifar10-neg", "test", tmp_path)
    (cache,) = (tmp_path / data.CACHE_DIR).glob("*.safetensors")
    cache.write_bytes(b"garbage")
    with pytest.warns(RuntimeWarning, match="unreadable cache file"):
        assert int(data.load("cifar10-neg", "test", tmp_path).images[0, 0, 0, 0]) == 3


# ------------------------------------------------------------------------------------------- missing sets


def test_find_reports_missing_sets_with_a_helpful_source(tmp_path):
    for name in data.names():
        found = data.find(name, tmp_path)
        if name == "digits":
            assert found.available and "scikit-learn" in found.source
            continue
        assert not found.available and found.location is None
        assert "http" in found.source
    assert "mnist/ or MNIST/raw/" in data.find("mnist", tmp_path).source
    assert "FashionMNIST/raw/" in data.find("fashion-mnist", tmp_path).source
    assert "cifar-10-batches-py/" in data.find("cifar10", tmp_path).source
    assert "CIFAR-10-Neg/CIFAR10_neg.npz" in data.find("cifar10-neg", tmp_path).source
    assert "tiny-imagenet-200/" in data.find("tiny-imagenet", tmp_path).source


def test_missing_data_set_error_names_the_folders_and_files(tmp_path):
    with pytest.raises(UserError) as exc:
        data.load("mnist", "train", tmp_path)
    message = str(exc.value)
    assert "'mnist' not found" in message and str(tmp_path) in message and "\n" not in message
    assert "mnist/ or MNIST/raw/" in message and "train-images-idx3-ubyte.gz" in message and "http" in message
    write_idx_set(tmp_path / "MNIST" / "raw")
    (tmp_path / "MNIST" / "raw" / "t10k-labels-idx1-ubyte.gz").unlink()
    with pytest.raises(UserError, match=r"MNIST/raw/ lacks t10k-labels-idx1-ubyte\.gz"):
        data.load("mnist", "train", tmp_path)
    with pytest.raises(UserError, match=r"'tiny-imagenet' not found.*tiny-imagenet-200/"):
        data.load("tiny-imagenet", "test", tmp_path)
