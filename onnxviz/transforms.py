"""Random geometric transforms for robust feature visualization, each with an exact adjoint.

Every step of the optimization shows the model a randomly moved copy of the image; an image that
only works at one exact pixel alignment is an adversarial pattern, not a feature (lucid's
"transformation robustness"). The transforms here are geometric: pad, jitter (random crop),
translate, random scale, random rotation, center crop. Each maps OUTPUT pixel coordinates to INPUT
coordinates with a 3x3 affine matrix, so a whole pipeline composes into ONE matrix per image and
the image is resampled once per step (not once per transform): one bilinear interpolation, not
several stacked blurs.

The resampling is written with explicit bilinear weights (four corners per output pixel), so the
operator is a sparse matrix ``W`` and its adjoint ``W^T`` is applied exactly (a scatter-add with
the same weights); tests check ``<W x, y> = <x, W^T y>``. Samples that fall outside the image follow
``mode``: ``constant`` (the value ``fill``; that part is a constant, so the adjoint of the linear
part is what carries gradients), ``wrap``, ``edge`` or ``reflect``.

Coordinates are ``(row, column)`` with pixel centers at integers. Randomness comes from the
generator passed in (one per image in ``maximize``), never from global state.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Sequence

import numpy as np

from .errors import OnnxvizError

__all__ = [
    "Transform", "Pad", "Jitter", "Translate", "Scale", "Rotate", "CenterCrop", "Pipeline", "Warp",
    "MODES",
]

MODES = ("constant", "wrap", "edge", "reflect")
_SNAP = 1e-6  # coordinates this close to an integer are that integer (exact integer shifts/rot90)


def _translation(dy: Any, dx: Any) -> np.ndarray:
    """(B, 3, 3) translations p_in = p_out + (dy, dx) (scalars or (B,) arrays)."""
    dy, dx = np.broadcast_arrays(np.asarray(dy, np.float64), np.asarray(dx, np.float64))
    m = np.zeros(dy.shape + (3, 3))
    m[..., 0, 0] = m[..., 1, 1] = m[..., 2, 2] = 1.0
    m[..., 0, 2], m[..., 1, 2] = dy, dx
    return m.reshape(-1, 3, 3)


def _about_center(linear: np.ndarray, in_size: tuple[int, int], out_size: tuple[int, int]) -> np.ndarray:
    """p_in = c_in + linear @ (p_out - c_out) as (B, 3, 3) matrices; ``linear`` is (B, 2, 2)."""
    linear = np.asarray(linear, np.float64).reshape(-1, 2, 2)
    c_in = np.array([(in_size[0] - 1) / 2.0, (in_size[1] - 1) / 2.0])
    c_out = np.array([(out_size[0] - 1) / 2.0, (out_size[1] - 1) / 2.0])
    m = np.zeros((len(linear), 3, 3))
    m[:, :2, :2] = linear
    m[:, :2, 2] = c_in - linear @ c_out
    m[:, 2, 2] = 1.0
    return m


class Transform:
    """One random geometric transform. ``randoms`` uniforms in [0, 1) per image drive it;
    ``sample(u, size)`` with ``u`` of shape (B, randoms) gives ``(matrices (B, 3, 3), out_size)``
    where each matrix maps output (row, col, 1) to input coordinates. ``draw(rng, size, n)`` draws
    the uniforms itself."""

    randoms: int = 0

    def sample(self, u: np.ndarray, size: tuple[int, int]) -> tuple[np.ndarray, tuple[int, int]]:
        raise NotImplementedError

    def draw(self, rng: np.random.Generator, size: tuple[int, int], n: int = 1) -> tuple[np.ndarray, tuple[int, int]]:
        return self.sample(rng.random((n, self.randoms)), size)

    def describe(self) -> dict[str, Any]:
        raise NotImplementedError

    def __repr__(self) -> str:
        return f"{type(self).__name__}({', '.join(f'{k}={v}' for k, v in self.describe().items() if k != 'type')})"


def _ints(u: np.ndarray, lo: int, hi: int) -> np.ndarray:
    """Uniform integers in [lo, hi] from uniforms in [0, 1)."""
    return lo + np.minimum(np.floor(u * (hi - lo + 1)), hi - lo)


@dataclass(frozen=True, repr=False)
class Pad(Transform):
    """Grow the image by ``n`` pixels on each side (filled according to the pipeline's mode)."""

    n: int
    randoms = 0

    def sample(self, u, size):
        return _translation(np.full(len(u), -self.n), -self.n), (size[0] + 2 * self.n, size[1] + 2 * self.n)

    def describe(self):
        return {"type": "pad", "n": self.n}


@dataclass(frozen=True, repr=False)
class Jitter(Transform):
    """lucid's jitter: a random crop ``d`` pixels smaller, at an integer offset in ``[0, d]``."""

    d: int
    randoms = 2

    def sample(self, u, size):
        if self.d <= 0:
            return _translation(np.zeros(len(u)), 0.0), size
        if self.d >= min(size):
            raise OnnxvizError(f"jitter {self.d} is too large for a {size[0]}x{size[1]} image")
        return _translation(_ints(u[:, 0], 0, self.d), _ints(u[:, 1], 0, self.d)), \
            (size[0] - self.d, size[1] - self.d)

    def describe(self):
        return {"type": "jitter", "d": self.d}


@dataclass(frozen=True, repr=False)
class Translate(Transform):
    """Shift by a random integer in ``[-d, d]`` per axis, same size (tf-keras-vis' ``Jitter`` rolls
    the image this way; with ``mode="wrap"`` it is exactly a roll)."""

    d: int
    randoms = 2

    def sample(self, u, size):
        return _translation(-_ints(u[:, 0], -self.d, self.d), -_ints(u[:, 1], -self.d, self.d)), size

    def describe(self):
        return {"type": "translate", "d": self.d}


@dataclass(frozen=True, repr=False)
class Scale(Transform):
    """Zoom about the center by a factor drawn uniformly from ``[lo, hi]``, same size (lucid draws
    from 0.9..1.1 in steps of 0.02; its scale changes the size, here the model's input size is fixed)."""

    lo: float
    hi: float
    randoms = 1

    def sample(self, u, size):
        s = self.lo + (self.hi - self.lo) * u[:, 0]
        return _about_center(np.eye(2)[None] / s[:, None, None], size, size), size

    def describe(self):
        return {"type": "scale", "lo": self.lo, "hi": self.hi}


@dataclass(frozen=True, repr=False)
class Rotate(Transform):
    """Rotate about the center by an angle drawn uniformly from ``[-degrees, degrees]``, same size
    (lucid draws integers in -10..10; tf-keras-vis' ``Rotate2D`` 1 degree)."""

    degrees: float
    randoms = 1

    def sample(self, u, size):
        a = np.radians(self.degrees * (2.0 * u[:, 0] - 1.0))
        return _rotation(a, size), size

    def describe(self):
        return {"type": "rotate", "degrees": self.degrees}


def _rotation(angle: Any, size: tuple[int, int], out_size: tuple[int, int] | None = None) -> np.ndarray:
    """Output image is the input rotated by ``angle`` (radians, counter-clockwise on screen)."""
    a = np.atleast_1d(np.asarray(angle, np.float64))
    c, s = np.cos(a), np.sin(a)
    # (row, col) with rows pointing down: rotating the picture by +a maps an output point back by -a
    inverse = np.stack([np.stack([c, s], -1), np.stack([-s, c], -1)], -2)
    return _about_center(inverse, size, out_size or size)


@dataclass(frozen=True, repr=False)
class CenterCrop(Transform):
    """Crop (or pad) to ``size`` around the center, integer offsets (no interpolation)."""

    h: int
    w: int
    randoms = 0

    def sample(self, u, size):
        return _translation(np.full(len(u), float((size[0] - self.h) // 2)), float((size[1] - self.w) // 2)), \
            (self.h, self.w)

    def describe(self):
        return {"type": "center_crop", "h": self.h, "w": self.w}


# ----------------------------------------------------------------------------------- resampling
class Warp:
    """A realized resampling ``(B, C, Hin, Win) -> (B, C, Hout, Wout)``: per image, an affine map
    from output to input coordinates, bilinear weights, and the out-of-image rule.

    ``apply(x)`` is ``W x + fill * (1 - W 1)`` (constant mode) or ``W x``; ``adjoint(g)`` is ``W^T g``.
    """

    def __init__(self, matrices: np.ndarray, in_size: tuple[int, int], out_size: tuple[int, int],
                 channels: int, mode: str = "constant", fill: float = 0.0,
                 tables: tuple[np.ndarray, np.ndarray] | None = None):
        if mode not in MODES:
            raise OnnxvizError(f"unknown out-of-image mode {mode!r} (choose: {', '.join(MODES)})")
        self.matrices = np.asarray(matrices, np.float64).reshape(-1, 3, 3)
        self.in_size, self.out_size = tuple(in_size), tuple(out_size)
        self.channels, self.mode, self.fill = int(channels), mode, float(fill)
        b = self.matrices.shape[0]
        # ``tables``: (index, weight) already computed by ``bilinear_tables`` for these matrices
        self.index, self.weight = tables if tables is not None else bilinear_tables(
            self.matrices, self.in_size, self.out_size, mode)
        self.coverage = self.weight.sum(axis=1)  # (B, P): 1 inside, < 1 where samples left the image
        # flat indices into (B*C*Hin*Win) for a vectorized gather / scatter-add
        plane = self.in_size[0] * self.in_size[1]
        offsets = (np.arange(b * self.channels) * plane).reshape(b, self.channels, 1, 1)
        self._flat = offsets + self.index[:, None, :, :]  # (B, C, 4, P)
        self._w = self.weight[:, None, :, :]  # (B, 1, 4, P)

    @property
    def batch(self) -> int:
        return self.matrices.shape[0]

    def apply(self, x: np.ndarray) -> np.ndarray:
        b, c = self.batch, self.channels
        if x.shape != (b, c, *self.in_size):
            raise OnnxvizError(f"warp expects {(b, c, *self.in_size)}, got {x.shape}")
        flat = x.reshape(-1)
        out = (flat[self._flat] * self._w).sum(axis=2)  # (B, C, P)
        if self.mode == "constant" and self.fill != 0.0:
            out += self.fill * (1.0 - self.coverage)[:, None, :]
        return out.reshape(b, c, *self.out_size)

    def adjoint(self, g: np.ndarray) -> np.ndarray:
        b, c = self.batch, self.channels
        g = g.reshape(b, c, 1, -1)
        total = b * c * self.in_size[0] * self.in_size[1]
        out = np.bincount(self._flat.ravel(), weights=(g * self._w).ravel(), minlength=total)
        return out.reshape(b, c, *self.in_size)


def bilinear_tables(matrices: np.ndarray, in_size: tuple[int, int], out_size: tuple[int, int],
                    mode: str) -> tuple[np.ndarray, np.ndarray]:
    """Bilinear resampling of N images by (N, 3, 3) output-to-input affine maps: for every output
    pixel the flat input positions of its four corners and their weights, each (N, 4, P). Corners
    outside the image follow ``mode`` (weight 0 in ``constant`` mode)."""
    n = matrices.shape[0]
    hi, wi = in_size
    src = matrices[:, :2, :] @ _grid(tuple(out_size))  # (N, 2, P): input (row, col) per output pixel
    base = np.floor(src + _SNAP)  # a coordinate within _SNAP of an integer is that integer
    frac = src - base
    frac[frac < _SNAP] = 0.0
    base = base.astype(np.int64)
    rows = (_remap(base[:, 0], hi, mode), _remap(base[:, 0] + 1, hi, mode))  # rows y0, y0+1 (index, exists)
    cols = (_remap(base[:, 1], wi, mode), _remap(base[:, 1] + 1, wi, mode))
    wy = (1.0 - frac[:, 0], frac[:, 0])
    wx = (1.0 - frac[:, 1], frac[:, 1])
    index = np.empty((n, 4, src.shape[-1]), np.int64)
    weight = np.empty((n, 4, src.shape[-1]))
    for k, (a, b) in enumerate(((0, 0), (0, 1), (1, 0), (1, 1))):  # corners (y0,x0), (y0,x0+1), ...
        (r, r_ok), (c, c_ok) = rows[a], cols[b]
        np.multiply(r, wi, out=index[:, k])
        index[:, k] += c
        np.multiply(wy[a], wx[b], out=weight[:, k])
        if mode == "constant":
            weight[:, k] *= r_ok & c_ok
    return index, weight


_GRIDS: dict[tuple[int, int], np.ndarray] = {}


def _grid(size: tuple[int, int]) -> np.ndarray:
    """(3, H*W) homogeneous (row, col, 1) of every output pixel (a constant, cached by size)."""
    grid = _GRIDS.get(size)
    if grid is None:
        h, w = size
        grid = np.stack([np.repeat(np.arange(h, dtype=np.float64), w), np.tile(np.arange(w, dtype=np.float64), h),
                         np.ones(h * w)])
        grid.setflags(write=False)
        if len(_GRIDS) < 64:
            _GRIDS[size] = grid
    return grid


def _remap(i: np.ndarray, n: int, mode: str) -> tuple[np.ndarray, np.ndarray]:
    """Integer indices mapped into [0, n) by ``mode``; the mask says which samples exist."""
    if mode == "constant":
        ok = (i >= 0) & (i < n)
        return np.minimum(np.maximum(i, 0), n - 1), ok
    ok = np.ones(i.shape, bool)
    if mode == "wrap":
        return np.mod(i, n), ok
    if mode == "edge":
        return np.clip(i, 0, n - 1), ok
    # reflect (numpy.pad's "reflect": the edge pixel is not repeated)
    if n == 1:
        return np.zeros_like(i), ok
    period = 2 * (n - 1)
    j = np.mod(i, period)
    return np.where(j < n, j, period - j), ok


class Pipeline:
    """Transforms applied in order, realized per step as one :class:`Warp` of the whole batch.

    ``mode``/``fill`` decide what lies outside the image (lucid pads with 0.5 gray: ``fill=0.5``).
    ``out_size`` (the model's input size) appends a :class:`CenterCrop` when the transforms change
    the size (pad/jitter), so the model always sees the size it expects.
    """

    def __init__(self, transforms: Sequence[Transform] = (), mode: str = "constant", fill: float = 0.5,
                 out_size: tuple[int, int] | None = None):
        if mode not in MODES:
            raise OnnxvizError(f"unknown out-of-image mode {mode!r} (choose: {', '.join(MODES)})")
        self.transforms = tuple(transforms)
        self.mode, self.fill = mode, float(fill)
        self.out_size = None if out_size is None else (int(out_size[0]), int(out_size[1]))

    def realize(self, rngs: Sequence[np.random.Generator], channels: int, size: tuple[int, int]) -> Warp:
        """One warp for a batch: image i draws its random parameters from ``rngs[i]`` (one call per
        image per step, so the result for an image does not depend on its batch mates)."""
        return self.realize_many(rngs, channels, size, 1)[0]

    def realize_many(self, rngs: Sequence[np.random.Generator], channels: int, size: tuple[int, int],
                     steps: int) -> list[Warp]:
        """The warps of ``steps`` consecutive steps, equal to ``steps`` calls of :meth:`realize`
        (each generator yields the same numbers drawn at once), computed in one vectorized pass:
        per-step numpy call overhead would dominate small images' steps."""
        b = len(rngs)
        total = sum(t.randoms for t in self.transforms)
        u = (np.stack([r.random((steps, total)) for r in rngs], axis=1) if total
             else np.zeros((steps, b, 0))).reshape(steps * b, total)
        m = np.broadcast_to(np.eye(3), (steps * b, 3, 3))
        s, k = (int(size[0]), int(size[1])), 0
        for t in self.transforms:
            mt, s = t.sample(u[:, k:k + t.randoms], s)
            k += t.randoms
            m = m @ mt
        if self.out_size is not None and s != self.out_size:
            mt, s = CenterCrop(*self.out_size).sample(u[:, :0], s)
            m = m @ mt
        index, weight = bilinear_tables(m, size, s, self.mode)
        return [Warp(m[i * b:(i + 1) * b], size, s, channels, self.mode, self.fill,
                     tables=(index[i * b:(i + 1) * b], weight[i * b:(i + 1) * b])) for i in range(steps)]

    @property
    def identity(self) -> bool:
        return not self.transforms

    def describe(self) -> dict[str, Any]:
        return {"transforms": [t.describe() for t in self.transforms], "mode": self.mode, "fill": self.fill}
