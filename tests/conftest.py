"""Shared fixtures: scikit-learn's digits (bundled, no download) and a fast recipe."""

from __future__ import annotations

import pytest
import torch

from connprune import data

# Most tests run tiny tensors: one intra-op thread is as fast and does not spin on a busy machine.
torch.set_num_threads(1)


@pytest.fixture(scope="session")
def digits_train() -> data.ImageData:
    return data.load("digits", "train")


@pytest.fixture(scope="session")
def digits_test() -> data.ImageData:
    return data.load("digits", "test")
