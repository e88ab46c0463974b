"""onnxviz.datasets: the IDX reader and the MNIST loader (numpy only)."""

from __future__ import annotations

import gzip
import struct
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from onnxviz.datasets import load_mnist, read_idx
from onnxviz.errors import OnnxvizError

REPO = Path(__file__).resolve().parents[1]
TYPE_CODES = {np.dtype(np.uint8): 0x08, np.dtype(np.int8): 0x09, np.dtype(np.int16): 0x0B,
              np.dtype(np.int32): 0x0C, np.dtype(np.float32): 0x0D, np.dtype(np.float64): 0x0E}


def idx_bytes(array: np.ndarray) -> bytes:
    """Encode an array as IDX, written here independently of the reader under test."""
    header = bytes([0, 0, TYPE_CODES[array.dtype], array.ndim])
    header += b"".join(struct.pack(">I", d) for d in array.shape)
    return header + array.astype(array.dtype.newbyteorder(">")).tobytes()


def write_idx(path: Path, array: np.ndarray, compress: bool) -> Path:
    data = idx_bytes(array)
    path.write_bytes(gzip.compress(data) if compress else data)
    return path


@pytest.mark.parametrize("compress", [True, False], ids=["gz", "raw"])
@pytest.mark.parametrize(
    "array",
    [
        np.arange(2 * 3 * 4, dtype=np.uint8).reshape(2, 3, 4),
        np.array([-3, 0, 7, 127, -128], dtype=np.int8),
        np.array([[-30000, 2], [3, 30000]], dtype=np.int16),
        np.array([1, -2, 2**30], dtype=np.int32),
        np.array([[0.5, -1.25e-3, 3.0e30]], dtype=np.float32),
        np.array([np.pi, -np.e], dtype=np.float64),
    ],
    ids=["uint8-3d", "int8", "int16", "int32", "float32", "float64"],
)
def test_round_trip(tmp_path, array, compress):
    path = write_idx(tmp_path / ("a.idx.gz" if compress else "a.idx"), array, compress)
    got = read_idx(path)
    assert got.dtype == array.dtype and got.dtype.isnative
    assert got.shape == array.shape
    np.testing.assert_array_equal(got, array)


def test_gzip_is_detected_by_content_not_name(tmp_path):
    array = np.arange(10, dtype=np.uint8)
    path = write_idx(tmp_path / "labels-idx1-ubyte", array, compress=True)  # no .gz suffix
    np.testing.assert_array_equal(read_idx(path), array)


def test_bad_magic(tmp_path):
    path = tmp_path / "bad.idx"
    path.write_bytes(b"\x12\x34\x08\x01" + struct.pack(">I", 1) + b"\x00")
    with pytest.raises(OnnxvizError, match="not an IDX file.*magic"):
        read_idx(path)


def test_unknown_type_byte(tmp_path):
    path = tmp_path / "bad.idx"
    path.write_bytes(b"\x00\x00\x07\x01" + struct.pack(">I", 1) + b"\x00")
    with pytest.raises(OnnxvizError, match="magic"):
        read_idx(path)


def test_truncated_data(tmp_path):
    data = idx_bytes(np.zeros((4, 5), dtype=np.uint8))
    path = tmp_path / "short.idx"
    path.write_bytes(data[:-3])
    with pytest.raises(OnnxvizError, match=r"truncated.*\(4, 5\)"):
        read_idx(path)


def test_trailing_bytes(tmp_path):
    path = tmp_path / "long.idx"
    path.write_bytes(idx_bytes(np.zeros(3, dtype=np.uint8)) + b"junk")
    with pytest.raises(OnnxvizError, match="trailing"):
        read_idx(path)


def test_truncated_header_and_tiny_file(tmp_path):
    (tmp_path / "h.idx").write_bytes(b"\x00\x00\x08\x03\x00\x00")
    with pytest.raises(OnnxvizError, match="header"):
        read_idx(tmp_path / "h.idx")
    (tmp_path / "t.idx").write_bytes(b"\x00")
    with pytest.raises(OnnxvizError, match="not an IDX file"):
        read_idx(tmp_path / "t.idx")


def test_corrupt_gzip(tmp_path):
    path = tmp_path / "c.gz"
    path.write_bytes(gzip.compress(idx_bytes(np.zeros(100, dtype=np.uint8)))[:20])
    with pytest.raises(OnnxvizError, match="gzip"):
        read_idx(path)


def test_missing_file(tmp_path):
    with pytest.raises(OnnxvizError, match="no such file"):
        read_idx(tmp_path / "nope.idx")


def fake_mnist(directory: Path, split: str, n: int, compress: bool, seed: int = 0):
    rng = np.random.default_rng(seed)
    images = rng.integers(0, 256, size=(n, 28, 28), dtype=np.uint8)
    labels = rng.integers(0, 10, size=n, dtype=np.uint8)
    ext = ".gz" if compress else ""
    write_idx(directory / f"{split}-images-idx3-ubyte{ext}", images, compress)
    write_idx(directory / f"{split}-labels-idx1-ubyte{ext}", labels, compress)
    return images, labels


@pytest.mark.parametrize("compress", [True, False], ids=["gz", "raw"])
def test_load_mnist_splits(tmp_path, compress):
    test_images, test_labels = fake_mnist(tmp_path, "t10k", 7, compress, seed=1)
    train_images, train_labels = fake_mnist(tmp_path, "train", 5, compress, seed=2)
    images, labels = load_mnist(tmp_path)
    assert images.dtype == np.uint8 and images.shape == (7, 28, 28)
    assert labels.dtype == np.uint8 and labels.shape == (7,)
    np.testing.assert_array_equal(images, test_images)
    np.testing.assert_array_equal(labels, test_labels)
    np.testing.assert_array_equal(load_mnist(tmp_path, split="test")[1], test_labels)
    images, labels = load_mnist(tmp_path, split="train")
    np.testing.assert_array_equal(images, train_images)
    np.testing.assert_array_equal(labels, train_labels)


def test_load_mnist_errors(tmp_path):
    with pytest.raises(OnnxvizError, match="not found"):
        load_mnist(tmp_path / "absent")
    with pytest.raises(OnnxvizError, match="t10k-images-idx3-ubyte.gz"):
        load_mnist(tmp_path)
    with pytest.raises(OnnxvizError, match="unknown MNIST split"):
        load_mnist(tmp_path, split="validation")
    fake_mnist(tmp_path, "t10k", 4, compress=True)
    write_idx(tmp_path / "t10k-labels-idx1-ubyte.gz", np.zeros(3, dtype=np.uint8), True)
    with pytest.raises(OnnxvizError, match="4 images but 3 labels"):
        load_mnist(tmp_path)
    write_idx(tmp_path / "t10k-labels-idx1-ubyte.gz", np.array([1, 2, 3, 12], dtype=np.uint8), True)
    with pytest.raises(OnnxvizError, match="0..9"):
        load_mnist(tmp_path)


def test_real_mnist_t10k(mnist_dir):
    images, labels = load_mnist(mnist_dir)
    assert images.shape == (10000, 28, 28) and labels.shape == (10000,)
    assert images.dtype == np.uint8 and labels.dtype == np.uint8
    assert set(np.unique(labels)) == set(range(10))
    assert 0 < images.mean() < 255


def test_datasets_import_no_training_framework():
    code = (
        "import sys, onnxviz.datasets\n"
        "bad = sorted(m for m in ('tensorflow', 'keras', 'torch', 'jax') if m in sys.modules)\n"
        "assert not bad, bad\n"
    )
    done = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
