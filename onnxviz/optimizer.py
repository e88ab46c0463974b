"""The optimizer of activation maximization: Adam, as gradient ascent on a parameter array in place
(lucid's default optimizer; its step does not depend on the gradient's scale, so one learning rate
serves a logit and a channel mean alike)."""

from __future__ import annotations

import math

import numpy as np

__all__ = ["Adam"]


class Adam:
    """Adam (Kingma & Ba 2015; defaults b1 0.9, b2 0.999, eps 1e-8), as ascent on ``params``."""

    def __init__(self, lr: float, b1: float = 0.9, b2: float = 0.999, eps: float = 1e-8):
        self.lr, self.b1, self.b2, self.eps = float(lr), b1, b2, eps
        self.m: np.ndarray | None = None
        self.v: np.ndarray | None = None
        self.t = 0

    def ascend(self, params: np.ndarray, grad: np.ndarray) -> None:
        """One step up ``grad``, written into ``params``; the moments start at the first call's shape."""
        if self.m is None:
            self.m, self.v = np.zeros_like(params), np.zeros_like(params)
        self.t += 1
        self.m *= self.b1
        self.m += (1 - self.b1) * grad
        self.v *= self.b2
        self.v += (1 - self.b2) * grad * grad
        step = self.lr * math.sqrt(1 - self.b2 ** self.t) / (1 - self.b1 ** self.t)
        params += step * self.m / (np.sqrt(self.v) + self.eps)
