"""Penalties on the image (subtracted from the objective), each with its exact gradient.

They act on the image in the unit range ``[0, 1]``, layout ``(B, C, H, W)``, before the random
transforms, and give one value per image. Values are means over pixels (tf-keras-vis divides its
total variation and norm by the number of values too), so a weight means the same at 28x28 and at
224x224.

- :class:`TotalVariation`: mean of ``(dy**2 + dx**2 + eps)**(beta/2)`` over the (H-1)x(W-1) grid of
  forward differences (keras-vis' ``TotalVariation`` with ``beta``; ``beta=1`` is the usual
  isotropic TV, smoothed by ``eps`` so it has a gradient at flat regions).
- :class:`LpNorm`: ``(mean |x - center|**p)**(1/p)`` (keras-vis ``LPNorm`` p=6 by default there;
  p=1 is tf-keras-vis' ``Norm(p=1)``): keeps pixels near ``center`` (0: the dark background of
  MNIST-like data).
- :class:`Blur`: ``0.5 * mean (x - blur(x))**2`` with a Gaussian blur: penalises what a blur would
  remove (high frequencies), the penalty form of lucid's "blur the input each step".
"""

from __future__ import annotations

from typing import Any

import numpy as np

from .errors import OnnxvizError

__all__ = ["Regularizer", "TotalVariation", "LpNorm", "Blur", "regularizer_from_dict"]


class Regularizer:
    """``value_and_grad(x) -> (values (B,), d sum(values) / dx)`` for images ``(B, C, H, W)``."""

    weight: float

    def value_and_grad(self, x: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        raise NotImplementedError

    def describe(self) -> dict[str, Any]:
        raise NotImplementedError

    def __repr__(self) -> str:
        return f"{type(self).__name__}({', '.join(f'{k}={v}' for k, v in self.describe().items() if k != 'type')})"


class TotalVariation(Regularizer):
    def __init__(self, weight: float = 1.0, beta: float = 1.0, eps: float = 1e-4):
        self.weight, self.beta, self.eps = float(weight), float(beta), float(eps)

    def value_and_grad(self, x):
        b, _, h, w = x.shape
        if h < 2 or w < 2:
            return np.zeros(b), np.zeros_like(x)
        dy = x[:, :, 1:, :-1] - x[:, :, :-1, :-1]
        dx = x[:, :, :-1, 1:] - x[:, :, :-1, :-1]
        s = dy * dy + dx * dx + self.eps
        count = dy[0].size
        if self.beta == 1.0:  # the common case, without pow()
            root = np.sqrt(s)
            values = self.weight * np.sum(root, axis=(1, 2, 3)) / count
            k = (self.weight / count) / np.maximum(root, 1e-12)  # where root = 0, dy = dx = 0
        else:
            values = self.weight * np.sum(s ** (self.beta / 2), axis=(1, 2, 3)) / count
            k = self.weight / count * self.beta * s ** (self.beta / 2 - 1)  # 2 * d value / d s
        gy, gx = k * dy, k * dx
        grad = np.zeros_like(x)
        grad[:, :, 1:, :-1] += gy
        grad[:, :, :-1, :-1] -= gy + gx
        grad[:, :, :-1, 1:] += gx
        return values, grad

    def describe(self):
        return {"type": "tv", "weight": self.weight, "beta": self.beta, "eps": self.eps}


class LpNorm(Regularizer):
    def __init__(self, weight: float = 1.0, p: float = 1.0, center: float = 0.0, eps: float = 1e-8):
        if p < 1:
            raise OnnxvizError("Lp norm needs p >= 1")
        self.weight, self.p, self.center, self.eps = float(weight), float(p), float(center), float(eps)

    def value_and_grad(self, x):
        d = x - self.center
        n = d[0].size
        a = np.abs(d)
        if self.p == 1.0:
            values = self.weight * a.reshape(len(x), -1).sum(axis=1) / n
            return values, self.weight / n * np.sign(d)
        m = (a ** self.p).reshape(len(x), -1).sum(axis=1) / n + self.eps  # mean |d|^p
        norm = m ** (1.0 / self.p)
        values = self.weight * norm
        # d norm / d x = norm^(1-p) * |d|^(p-1) sign(d) / n
        scale = (self.weight * norm ** (1.0 - self.p) / n).reshape(-1, *([1] * (x.ndim - 1)))
        return values, scale * a ** (self.p - 1) * np.sign(d)

    def describe(self):
        return {"type": "lp", "weight": self.weight, "p": self.p, "center": self.center}


class Blur(Regularizer):
    def __init__(self, weight: float = 1.0, sigma: float = 1.0):
        if sigma <= 0:
            raise OnnxvizError("blur sigma must be > 0")
        self.weight, self.sigma = float(weight), float(sigma)
        r = max(1, int(np.ceil(3 * self.sigma)))
        t = np.arange(-r, r + 1, dtype=np.float64)
        k = np.exp(-0.5 * (t / self.sigma) ** 2)
        self.kernel = k / k.sum()

    def blur(self, x: np.ndarray) -> np.ndarray:
        """Separable Gaussian blur with zero padding ("same" size). The kernel is symmetric and the
        padding zero, so the operator is its own adjoint (tested)."""
        return _conv1d(_conv1d(x, self.kernel, axis=-1), self.kernel, axis=-2)

    def value_and_grad(self, x):
        r = x - self.blur(x)
        n = x[0].size
        values = self.weight * 0.5 * np.sum(r * r, axis=(1, 2, 3)) / n
        grad = self.weight / n * (r - self.blur(r))
        return values, grad

    def describe(self):
        return {"type": "blur", "weight": self.weight, "sigma": self.sigma}


def _conv1d(x: np.ndarray, k: np.ndarray, axis: int) -> np.ndarray:
    r = len(k) // 2
    x = np.moveaxis(x, axis, -1)
    n = x.shape[-1]
    padded = np.pad(x, [(0, 0)] * (x.ndim - 1) + [(r, r)])
    out = np.zeros_like(x)
    for j, kj in enumerate(k):
        out += kj * padded[..., j:j + n]
    return np.moveaxis(out, -1, axis)


def regularizer_from_dict(d: dict[str, Any]) -> Regularizer:
    """Inverse of ``Regularizer.describe()`` (for settings records)."""
    kind = d.get("type")
    args = {k: v for k, v in d.items() if k != "type"}
    classes = {"tv": TotalVariation, "lp": LpNorm, "blur": Blur}
    if kind not in classes:
        raise OnnxvizError(f"unknown regularizer {kind!r}")
    return classes[kind](**args)
