"""Image parameterizations: what the optimizer changes, and how it becomes an image.

An :class:`ImageParam` maps a parameter array to a batch of images ``(B, C, H, W)`` in the unit
range ``[0, 1]`` (``maximize`` then maps that to the model's own range and layout), and gives the
exact vector-Jacobian product back. It is a chain of small pieces, each with a forward map and its
exact adjoint (tests check ``<T x, y> = <x, T* y>``):

- spatial basis: :class:`PixelBasis` (identity) or :class:`FourierBasis` — the image is the inverse
  real FFT of a spectrum scaled by ``1 / f**decay`` (lucid's ``fft_image``: low frequencies get
  larger steps, so Adam does not fill the image with high-frequency noise);
- colour: :class:`ColorDecorrelation` for RGB — a fixed 3x3 matrix that turns decorrelated
  channels into correlated RGB (lucid's ``color_correlation_svd_sqrt`` of ImageNet, normalised by
  its largest column norm);
- range: :class:`Sigmoid` (smooth, never leaves (0, 1)) or :class:`Clip` (projected: parameters are
  clipped to [0, 1] after each step).
"""

from __future__ import annotations

from typing import Any

import numpy as np

from .errors import OnnxvizError

__all__ = [
    "PixelBasis", "FourierBasis", "ColorDecorrelation", "Sigmoid", "Clip", "ImageParam",
    "image_param", "COLOR_CORRELATION_SVD_SQRT", "rfft2_frequencies",
]

#: The square root (via SVD) of ImageNet's RGB colour correlation matrix, as published in lucid
#: (``lucid/optvis/param/color.py``, ``color_correlation_svd_sqrt``).
COLOR_CORRELATION_SVD_SQRT = np.array([[0.26, 0.09, 0.02],
                                       [0.27, 0.00, -0.05],
                                       [0.27, -0.09, 0.03]], dtype=np.float64)


def rfft2_frequencies(h: int, w: int) -> np.ndarray:
    """|f| (cycles per pixel) of each coefficient of ``numpy.fft.rfft2`` on an h x w image."""
    fy = np.fft.fftfreq(h)[:, None]
    fx = np.fft.rfftfreq(w)[None, :]
    return np.sqrt(fx * fx + fy * fy)


# ----------------------------------------------------------------------------------- linear pieces
class PixelBasis:
    """Identity: the parameters are the pixels ``(B, C, H, W)``."""

    def param_shape(self, c: int, h: int, w: int) -> tuple[int, ...]:
        return (c, h, w)

    def forward(self, p: np.ndarray) -> np.ndarray:
        return p

    def adjoint(self, g: np.ndarray) -> np.ndarray:
        return g

    def describe(self) -> dict[str, Any]:
        return {"basis": "pixel"}


class FourierBasis:
    """Image = ``irfft2(scale * spectrum) / 4`` with ``scale = sqrt(h*w) / max(|f|, 1/max(h, w))**decay``.

    Parameters ``(B, C, H, W//2+1, 2)``: real and imaginary parts of the half spectrum. The formula
    and the constants (the ``1/max(h, w)`` floor, the ``sqrt(h*w)`` factor, the division by 4) are
    lucid's ``fft_image``. The adjoint is exact: numpy's ``irfft2`` is ``irfft`` (last axis; it keeps
    the real part of the DC and Nyquist columns and counts the others twice) after ``ifft`` (axis -2),
    so its adjoint is ``fft / H`` after ``rfft`` weighted by ``c_k / W`` (``c_k`` = 1 on DC/Nyquist,
    2 elsewhere) with those columns' imaginary parts dropped.
    """

    def __init__(self, h: int, w: int, decay: float = 1.0):
        self.h, self.w, self.decay = int(h), int(w), float(decay)
        freqs = rfft2_frequencies(self.h, self.w)
        self.scale = (np.sqrt(self.h * self.w) / np.maximum(freqs, 1.0 / max(self.h, self.w)) ** self.decay) / 4.0
        k = self.w // 2 + 1
        weight = np.full(k, 2.0)
        weight[0] = 1.0
        if self.w % 2 == 0:
            weight[-1] = 1.0
        self._col_weight = weight / self.w
        self._real_only = np.zeros(k, bool)
        self._real_only[0] = True
        if self.w % 2 == 0:
            self._real_only[-1] = True

    def param_shape(self, c: int, h: int, w: int) -> tuple[int, ...]:
        if (h, w) != (self.h, self.w):
            raise OnnxvizError(f"FourierBasis built for {self.h}x{self.w}, asked for {h}x{w}")
        return (c, h, w // 2 + 1, 2)

    def forward(self, p: np.ndarray) -> np.ndarray:
        spectrum = (p[..., 0] + 1j * p[..., 1]) * self.scale
        return np.fft.irfft2(spectrum, s=(self.h, self.w))

    def adjoint(self, g: np.ndarray) -> np.ndarray:
        # adjoint of irfft along the last axis
        z = np.fft.rfft(g, axis=-1) * self._col_weight
        z.imag[..., self._real_only] = 0.0
        # adjoint of ifft along axis -2 (complex-linear, real inner product): fft / H
        z = np.fft.fft(z, axis=-2) / self.h
        z *= self.scale
        return np.stack([z.real, z.imag], axis=-1)

    def describe(self) -> dict[str, Any]:
        return {"basis": "fft", "decay": self.decay}


class ColorDecorrelation:
    """RGB = M @ decorrelated channels, with ``M = COLOR_CORRELATION_SVD_SQRT / max column norm``
    (lucid's ``_linear_decorrelate_color``). Adjoint: ``M.T``. Only for 3 channels."""

    def __init__(self, matrix: np.ndarray | None = None):
        m = COLOR_CORRELATION_SVD_SQRT if matrix is None else np.asarray(matrix, np.float64)
        if m.shape != (3, 3):
            raise OnnxvizError("colour decorrelation needs a 3x3 matrix")
        self.matrix = m / np.max(np.linalg.norm(m, axis=0)) if matrix is None else m

    def forward(self, x: np.ndarray) -> np.ndarray:
        return np.einsum("ij,bjhw->bihw", self.matrix, x)

    def adjoint(self, g: np.ndarray) -> np.ndarray:
        return np.einsum("ji,bjhw->bihw", self.matrix, g)

    def describe(self) -> dict[str, Any]:
        return {"decorrelate": True}


class Sigmoid:
    """Squash to (0, 1): ``1 / (1 + exp(-x))``; VJP ``g * s * (1 - s)``."""

    def forward(self, x: np.ndarray) -> np.ndarray:
        with np.errstate(over="ignore"):  # exp(-x) = inf for x << 0 gives the right limit, 0
            out = np.exp(-x)
        out += 1.0
        return np.reciprocal(out, out=out)

    def vjp(self, x: np.ndarray, g: np.ndarray, y: np.ndarray | None = None) -> np.ndarray:
        s = self.forward(x) if y is None else y
        return g * s * (1.0 - s)

    def describe(self) -> dict[str, Any]:
        return {"range": "sigmoid"}


class Clip:
    """Keep [0, 1] by clipping: VJP ``g`` where ``0 <= x <= 1``, else 0. With the pixel basis the
    parameters themselves are clipped after each step (projected gradient ascent), so pixels at a
    bound still receive the gradient that moves them back inside."""

    def forward(self, x: np.ndarray) -> np.ndarray:
        return np.clip(x, 0.0, 1.0)

    def vjp(self, x: np.ndarray, g: np.ndarray, y: np.ndarray | None = None) -> np.ndarray:
        return np.where((x >= 0.0) & (x <= 1.0), g, 0.0)

    def describe(self) -> dict[str, Any]:
        return {"range": "clip"}


# ----------------------------------------------------------------------------------- the chain
class ImageParam:
    """basis -> (colour decorrelation) -> range squash, for images of ``channels x h x w``.

    ``init(rng, n)`` draws parameters for n images; ``forward(p)`` gives ``(n, C, H, W)`` in [0, 1];
    ``vjp(p, g)`` the exact gradient w.r.t. ``p`` of ``<g, forward(p)>``; ``project(p)`` keeps the
    parameters valid after a step (clip mode).
    """

    def __init__(self, channels: int, h: int, w: int, *, basis: str = "pixel", decorrelate: bool | None = None,
                 squash: str = "sigmoid", decay: float = 1.0, init_std: float | None = None):
        self.channels, self.h, self.w = int(channels), int(h), int(w)
        if basis == "pixel":
            self.basis: PixelBasis | FourierBasis = PixelBasis()
        elif basis in ("fft", "fourier"):
            basis = "fft"
            self.basis = FourierBasis(h, w, decay)
        else:
            raise OnnxvizError(f"unknown parameterization {basis!r} (choose pixel or fft)")
        if decorrelate is None:
            decorrelate = self.channels == 3
        if decorrelate and self.channels != 3:
            raise OnnxvizError("colour decorrelation needs 3-channel (RGB) images")
        self.color = ColorDecorrelation() if decorrelate else None
        if squash == "sigmoid":
            self.squash: Sigmoid | Clip = Sigmoid()
        elif squash == "clip":
            self.squash = Clip()
        else:
            raise OnnxvizError(f"unknown range mode {squash!r} (choose sigmoid or clip)")
        self.kind = basis
        # lucid: spectrum sd 0.01; pixels: small noise around the middle of the range
        self.init_std = float(init_std) if init_std is not None else (0.01 if basis == "fft" else 0.1)

    @property
    def param_shape(self) -> tuple[int, ...]:
        return self.basis.param_shape(self.channels, self.h, self.w)

    def init(self, rng: np.random.Generator, n: int = 1) -> np.ndarray:
        p = rng.normal(0.0, self.init_std, size=(n, *self.param_shape))
        if isinstance(self.squash, Clip) and isinstance(self.basis, PixelBasis):
            p += 0.5
        return p

    def pre_squash(self, p: np.ndarray) -> np.ndarray:
        x = self.basis.forward(p)
        if self.color is not None:
            x = self.color.forward(x)
        if isinstance(self.squash, Clip) and isinstance(self.basis, FourierBasis):
            x = x + 0.5  # centre the unclipped image in the range
        return x

    def forward(self, p: np.ndarray) -> np.ndarray:
        return self.squash.forward(self.pre_squash(p))

    def vjp(self, p: np.ndarray, g: np.ndarray, pre: np.ndarray | None = None,
            out: np.ndarray | None = None) -> np.ndarray:
        """Gradient w.r.t. ``p`` of ``<g, forward(p)>``; ``pre``/``out`` (``pre_squash(p)`` and
        ``forward(p)``) may be passed to save recomputing them."""
        if pre is None:
            pre = self.pre_squash(p)
        g = self.squash.vjp(pre, g, out)
        if self.color is not None:
            g = self.color.adjoint(g)
        return self.basis.adjoint(g)

    def project(self, p: np.ndarray) -> np.ndarray:
        if isinstance(self.squash, Clip) and isinstance(self.basis, PixelBasis):
            np.clip(p, 0.0, 1.0, out=p)
        return p

    def describe(self) -> dict[str, Any]:
        d: dict[str, Any] = {**self.basis.describe(), **self.squash.describe(),
                             "decorrelate": self.color is not None, "init_std": self.init_std}
        return d


def image_param(spec: "str | ImageParam | None", channels: int, h: int, w: int, **options: Any) -> ImageParam:
    """An :class:`ImageParam` from a name: ``pixel`` (sigmoid), ``pixel-clip``, ``fft``
    (sigmoid), ``fft-clip``; an ImageParam is returned as is."""
    if isinstance(spec, ImageParam):
        return spec
    name = (spec or "pixel").lower()
    basis, _, squash = name.partition("-")
    if basis not in ("pixel", "fft", "fourier"):
        raise OnnxvizError(f"unknown parameterization {spec!r} (choose pixel or fft)")
    return ImageParam(channels, h, w, basis=basis, squash=squash or "sigmoid", **options)
