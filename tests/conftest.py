"""Shared fixtures: where the real MNIST data and the shipped models live."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
from hypothesis import settings

# Deterministic property tests: the same examples on every run and in CI (no flaky discoveries);
# run with HYPOTHESIS_PROFILE=explore to search new examples locally.
settings.register_profile("deterministic", derandomize=True, deadline=None, print_blob=True)
settings.register_profile("explore", deadline=None, print_blob=True)
settings.load_profile(os.environ.get("HYPOTHESIS_PROFILE", "deterministic"))

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


def assert_user_error(result, *parts: str) -> None:
    """A CLI result that is a user error: exit 2, one ``error:`` line on stderr naming ``parts``."""
    assert result.exit_code == 2, result.output
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), result.stderr
    assert "Traceback" not in result.output
    for part in parts:
        assert part in lines[0], lines[0]
