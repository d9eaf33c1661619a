"""Data sets: a registry of image classification sets loaded into memory as uint8 tensors.

>>> from connprune import data
>>> data.names()
['digits', 'mnist', 'fashion-mnist', 'cifar10', 'cifar10-neg', 'tiny-imagenet']
>>> train = data.load("digits", "train", seed=0)
>>> train.images.shape, train.images.dtype, train.info.input_shape
(torch.Size([1347, 1, 8, 8]), torch.uint8, (1, 8, 8))

A user's data is one more source: :func:`from_tensors` wraps tensors in memory, and everything that reads training
data also takes any iterable of ``(inputs, targets)`` batches (a ``DataLoader``); see :mod:`connprune.data.sources`.

File-based sets are looked up under the data dir (``data_dir`` argument, else ``$CONNPRUNE_DATA``, else ``./data``);
:func:`find` says whether they are there and where to get them. See :mod:`connprune.data.datasets`.
"""

from connprune.data.datasets import (CACHE_DIR, ENV_DATA_DIR, DatasetInfo, Found, ImageData, find, info, load, names,
                                     resolve_data_dir)
from connprune.data.sources import DataSource, from_tensors, read

__all__ = [
    "CACHE_DIR", "ENV_DATA_DIR", "DataSource", "DatasetInfo", "Found", "ImageData", "find", "from_tensors", "info",
    "load", "names", "read", "resolve_data_dir",
]
