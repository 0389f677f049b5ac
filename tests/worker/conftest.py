"""Fixtures for the worker tests: the committed MNIST sample."""

from __future__ import annotations

from pathlib import Path

import pytest

from worker.data import Mnist, limited, load_mnist

SAMPLE = Path(__file__).resolve().parents[1] / "data" / "mnist_sample.npz"


@pytest.fixture(scope="session")
def sample_path() -> Path:
    return SAMPLE


@pytest.fixture(scope="session")
def mnist() -> Mnist:
    return load_mnist(SAMPLE)


@pytest.fixture(scope="session")
def small(mnist: Mnist) -> Mnist:
    """Enough to see learning in a second: 1000 training and 200 test images."""
    return limited(mnist, 1000, 200)
