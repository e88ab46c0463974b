"""Shared fixtures: where the real MNIST data and the shipped models live."""

from __future__ import annotations

from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
MNIST_DIR = REPO.parent / "shared" / "data" / "mnist"
MODELS_DIR = REPO / "models"


@pytest.fixture(scope="session")
def mnist_dir() -> Path:
    """The real MNIST test split (IDX files) beside the project; skip when absent."""
    if not (MNIST_DIR / "t10k-images-idx3-ubyte.gz").exists():
        pytest.skip(f"MNIST data not found at {MNIST_DIR} (expected ../shared/data/mnist)")
    return MNIST_DIR


@pytest.fixture(scope="session")
def mnist_model_path() -> Path:
    path = MODELS_DIR / "mnist_cnn.onnx"
    assert path.exists(), f"shipped model missing: {path}"
    return path
