"""Small dataset readers, numpy only (the engine never imports a training framework).

``read_idx`` reads the IDX format of LeCun's MNIST distribution (gzip-compressed or raw);
``load_mnist`` finds and reads one split of MNIST in a folder.
"""

from __future__ import annotations

import gzip
import zlib
from pathlib import Path

import numpy as np

from onnxviz.errors import OnnxvizError

__all__ = ["read_idx", "load_mnist", "MNIST_SPLITS"]

# IDX type byte -> big-endian numpy dtype (http://yann.lecun.com/exdb/mnist/, "THE IDX FILE FORMAT").
_IDX_DTYPES: dict[int, str] = {
    0x08: ">u1",
    0x09: ">i1",
    0x0B: ">i2",
    0x0C: ">i4",
    0x0D: ">f4",
    0x0E: ">f8",
}
_GZIP_MAGIC = b"\x1f\x8b"

MNIST_SPLITS = ("train", "t10k")


def _read_bytes(path: Path) -> bytes:
    """The file's content, decompressed when it is gzip (by magic bytes, whatever its suffix)."""
    try:
        raw = path.read_bytes()
    except FileNotFoundError:
        raise OnnxvizError(f"{path}: no such file") from None
    except IsADirectoryError:
        raise OnnxvizError(f"{path}: is a folder, not an IDX file") from None
    except OSError as e:
        raise OnnxvizError(f"{path}: cannot read ({e.strerror or e})") from None
    if raw[:2] != _GZIP_MAGIC:
        return raw
    try:
        return gzip.decompress(raw)
    except (OSError, EOFError, zlib.error) as e:
        raise OnnxvizError(f"{path}: corrupt or truncated gzip data ({e})") from None


def read_idx(path: str | Path) -> np.ndarray:
    """Read an IDX file (raw or gzip) into a native-endian array of its stored dtype and shape.

    Raises :class:`OnnxvizError` when the file is missing, not IDX (bad magic), or its size
    does not match the dimensions in its header.
    """
    path = Path(path)
    data = _read_bytes(path)
    if len(data) < 4:
        raise OnnxvizError(f"{path}: not an IDX file (only {len(data)} bytes)")
    if data[0] != 0 or data[1] != 0 or data[2] not in _IDX_DTYPES or data[3] == 0:
        raise OnnxvizError(
            f"{path}: not an IDX file (bad magic number 0x{data[:4].hex()}; "
            "expected 0x0000 then a type byte in 08,09,0b,0c,0d,0e and a rank >= 1)"
        )
    dtype = np.dtype(_IDX_DTYPES[data[2]])
    ndim = data[3]
    header = 4 + 4 * ndim
    if len(data) < header:
        raise OnnxvizError(f"{path}: truncated IDX header ({len(data)} bytes, need {header})")
    dims = tuple(int(d) for d in np.frombuffer(data, dtype=">u4", count=ndim, offset=4))
    expected = int(np.prod(dims, dtype=np.int64)) * dtype.itemsize
    actual = len(data) - header
    if actual != expected:
        what = "truncated" if actual < expected else "has trailing bytes"
        raise OnnxvizError(
            f"{path}: IDX data {what}: header says shape {dims} of {dtype.str[1:]} "
            f"({expected} bytes), file holds {actual} bytes"
        )
    array = np.frombuffer(data, dtype=dtype, offset=header).reshape(dims)
    return array.astype(dtype.newbyteorder("="), copy=True)


def _find_mnist_file(directory: Path, split: str, kind: str, idx_rank: int) -> Path:
    """Locate e.g. ``t10k-images-idx3-ubyte(.gz)`` (also the ``t10k-images.idx3-ubyte`` spelling)."""
    stems = [f"{split}-{kind}-idx{idx_rank}-ubyte", f"{split}-{kind}.idx{idx_rank}-ubyte"]
    candidates = [directory / (stem + ext) for stem in stems for ext in (".gz", "")]
    for candidate in candidates:
        if candidate.is_file():
            return candidate
    raise OnnxvizError(
        f"MNIST {split} {kind} not found in {directory} "
        f"(looked for {', '.join(c.name for c in candidates)})"
    )


def load_mnist(directory: str | Path, split: str = "t10k") -> tuple[np.ndarray, np.ndarray]:
    """Load one MNIST split from IDX files in ``directory``.

    ``split`` is ``"t10k"`` (the official 10,000-image test split; ``"test"`` is accepted too) or
    ``"train"`` (60,000 images). Returns ``(images, labels)``: uint8 arrays of shape (N, 28, 28)
    and (N,), pixel values 0..255, labels 0..9, in file order.
    """
    directory = Path(directory)
    split = {"test": "t10k"}.get(split, split)
    if split not in MNIST_SPLITS:
        raise OnnxvizError(f"unknown MNIST split {split!r}; choose one of {', '.join(MNIST_SPLITS)}")
    if not directory.is_dir():
        raise OnnxvizError(f"MNIST folder not found: {directory}")
    images_path = _find_mnist_file(directory, split, "images", 3)
    labels_path = _find_mnist_file(directory, split, "labels", 1)
    images = read_idx(images_path)
    labels = read_idx(labels_path)
    if images.dtype != np.uint8 or images.ndim != 3:
        raise OnnxvizError(
            f"{images_path}: expected uint8 images of shape (N, H, W), got {images.dtype} {images.shape}"
        )
    if labels.dtype != np.uint8 or labels.ndim != 1:
        raise OnnxvizError(f"{labels_path}: expected uint8 labels of shape (N,), got {labels.dtype} {labels.shape}")
    if len(images) != len(labels):
        raise OnnxvizError(
            f"MNIST {split} in {directory}: {len(images)} images but {len(labels)} labels"
        )
    if labels.size and int(labels.max()) > 9:
        raise OnnxvizError(f"{labels_path}: labels must be digits 0..9, found {int(labels.max())}")
    return images, labels
