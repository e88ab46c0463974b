"""Small dataset readers, numpy only (the engine never imports a training framework).

``read_idx`` reads the IDX format of LeCun's MNIST distribution (gzip-compressed or raw);
``load_mnist`` finds and reads one split of MNIST in a folder; ``make_shapes`` draws the synthetic
coloured-shapes images the shipped ``shapes_cnn`` model was trained on (any number, any seed).
"""

from __future__ import annotations

import gzip
import zlib
from pathlib import Path

import numpy as np

from onnxviz.errors import OnnxvizError

__all__ = ["read_idx", "load_mnist", "MNIST_SPLITS", "make_shapes", "SHAPE_CLASSES", "SHAPE_COLORS", "SHAPE_KINDS"]

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


# --------------------------------------------------------------------------- synthetic shapes

#: The colours and shapes of :func:`make_shapes`; class ``3 * colour + shape`` is named
#: ``f"{colour} {shape}"`` (``"red circle"`` ... ``"blue triangle"``).
SHAPE_COLORS = ("red", "green", "blue")
SHAPE_KINDS = ("circle", "square", "triangle")
SHAPE_CLASSES = tuple(f"{colour} {kind}" for colour in SHAPE_COLORS for kind in SHAPE_KINDS)

_CHUNK = 512  # images rasterized at once: bounds the (chunk, size, size) float work arrays


def make_shapes(n: int, size: int = 64, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """``n`` images of one coloured shape each on a cluttered background, and their class labels.

    Classes are the 9 pairs of a colour (red, green, blue) and a shape (circle, square, triangle),
    named by :data:`SHAPE_CLASSES`; labels are balanced (each class ``n // 9`` or one more times) in
    a random order. Each image varies what must not matter: the shape's position, size and rotation,
    the exact shade of its colour, a low-saturation background with a random linear gradient, and
    pixel noise. Shapes are drawn anti-aliased from signed distances, so they stay recognisable at
    small sizes. Returns ``(images, labels)``: uint8 NHWC ``(n, size, size, 3)`` in 0..255 and int64
    ``(n,)``. For a PyTorch-style model: ``images.transpose(0, 3, 1, 2).astype("float32") / 255``.
    The same ``(n, size, seed)`` always gives the same arrays.
    """
    if n < 0 or size < 16:
        raise OnnxvizError(f"make_shapes needs n >= 0 and size >= 16, got n={n}, size={size}")
    rng = np.random.default_rng(seed)
    labels = rng.permutation(np.arange(n) % len(SHAPE_CLASSES)).astype(np.int64)
    images = np.empty((n, size, size, 3), dtype=np.uint8)
    for start in range(0, n, _CHUNK):
        stop = min(n, start + _CHUNK)
        images[start:stop] = _draw_shapes(labels[start:stop], size, rng)
    return images, labels


def _draw_shapes(labels: np.ndarray, size: int, rng: np.random.Generator) -> np.ndarray:
    """Rasterize one chunk of :func:`make_shapes` (float32 work in [0, 1], returned as uint8)."""
    m = len(labels)
    f32 = np.float32
    colour = labels // len(SHAPE_KINDS)
    kind = labels % len(SHAPE_KINDS)

    # Every random draw happens up front, in a fixed order: the output depends only on the seed.
    grey = rng.uniform(0.15, 0.85, size=(m, 1, 1, 1))
    tint = rng.uniform(-0.08, 0.08, size=(m, 1, 1, 3))
    angle = rng.uniform(0, 2 * np.pi, size=(m, 1, 1))
    slope = rng.uniform(0.0, 0.35, size=(m, 1, 1, 1))
    paint = rng.uniform(0.0, 0.3, size=(m, 3))
    paint[np.arange(m), colour] = rng.uniform(0.7, 1.0, size=m)
    r = rng.uniform(0.12, 0.28, size=m) * size
    margin = r * 1.25 + 1
    cx = rng.uniform(margin, size - 1 - margin)
    cy = rng.uniform(margin, size - 1 - margin)
    theta = rng.uniform(0, 2 * np.pi, size=m)
    sigma = rng.uniform(0.0, 0.06, size=(m, 1, 1, 1))
    noise = rng.standard_normal(size=(m, size, size, 3), dtype=f32)

    # Background: a greyish base colour (saturation kept low so that it never reads as red, green
    # or blue) plus a linear gradient in a random direction.
    grid = np.arange(size, dtype=f32) / f32(size - 1) - f32(0.5)
    ramp = np.cos(angle).astype(f32) * grid[None, None, :] + np.sin(angle).astype(f32) * grid[None, :, None]
    background = (grey + tint).astype(f32) + slope.astype(f32) * ramp[..., None]

    # Shape: a signed distance in the shape's rotated frame (u, v). r is the circle's radius; the
    # square's half side and the triangle's inradius derive from it so that areas are similar.
    pixels = np.arange(size, dtype=f32)
    px = pixels[None, None, :] - cx.astype(f32)[:, None, None]
    py = pixels[None, :, None] - cy.astype(f32)[:, None, None]
    cos = np.cos(theta).astype(f32)[:, None, None]
    sin = np.sin(theta).astype(f32)[:, None, None]
    rr = r.astype(f32)[:, None, None]
    distance = np.empty((m, size, size), dtype=f32)
    for k, name in enumerate(SHAPE_KINDS):
        sel = kind == k
        if not sel.any():
            continue
        u = cos[sel] * px[sel] + sin[sel] * py[sel]
        v = cos[sel] * py[sel] - sin[sel] * px[sel]
        if name == "circle":
            distance[sel] = np.sqrt(u * u + v * v) - rr[sel]
        elif name == "square":
            distance[sel] = np.maximum(np.abs(u), np.abs(v)) - f32(0.89) * rr[sel]
        else:  # equilateral triangle: the farthest of its three edge lines
            edges = [f32(np.cos(a)) * u + f32(np.sin(a)) * v for a in np.pi / 2 + np.arange(3) * 2 * np.pi / 3]
            distance[sel] = np.maximum(np.maximum(edges[0], edges[1]), edges[2]) - f32(0.67) * rr[sel]
    alpha = np.clip(f32(0.5) - distance, 0.0, 1.0)[..., None]  # a one-pixel anti-aliased edge

    image = background + alpha * (paint.astype(f32)[:, None, None, :] - background)
    image += noise * sigma.astype(f32)
    return np.clip(np.rint(image * f32(255.0)), 0, 255).astype(np.uint8)
