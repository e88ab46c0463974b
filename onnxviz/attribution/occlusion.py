"""Occlusion sensitivity — Zeiler & Fergus, "Visualizing and Understanding Convolutional Networks"
(2014): slide a ``window x window`` patch of ``fill`` over the image with ``stride``; a pixel's
value is the mean drop of the class score over the windows covering it. Forward passes only (works
on any model, no gradient rules needed); the occluded copies of all images run in batches.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from ..errors import OnnxvizError
from .core import Attribution
from .saliency import _setup, resolve_baseline

__all__ = ["occlusion", "window_positions", "default_window"]


def default_window(height: int, width: int) -> tuple[int, int]:
    """(window, stride): a window of about 1/7 of the shorter side (4 px on 28x28, 32 on 224x224),
    half of it as stride."""
    win = max(2, int(round(min(height, width) / 7)))
    return win, max(1, win // 2)


def window_positions(size: int, window: int, stride: int) -> list[int]:
    """Start offsets along one axis; the last window is moved to end at the border so every pixel
    is covered."""
    if window >= size:
        return [0]
    starts = list(range(0, size - window + 1, stride))
    if starts[-1] != size - window:
        starts.append(size - window)
    return starts


def occlusion(model: Any, x: np.ndarray, unit: Any = None, *, window: int | None = None,
              stride: int | None = None, fill: Any = "black", score: str = "logit") -> Attribution:
    """Occlusion map: ``score(x) - score(x with a window filled)`` averaged over the windows that
    cover each pixel. ``fill``: ``black`` / ``white`` / ``zero`` / ``mean`` (the image's mean per
    channel) / a number in model units. ``score``: ``logit`` or ``probability`` of the unit.
    ``info["forward_passes"]`` counts the occluded images run (plus one per image unoccluded)."""
    if score not in ("logit", "probability"):
        raise OnnxvizError(f"unknown occlusion score {score!r} (choose logit or probability)")
    att, x, units, z = _setup(model, x, unit)
    if z is None:
        z = att.logits(x)
    H, W = att.spec.height, att.spec.width
    dw, ds = default_window(H, W)
    window = dw if window is None else int(window)  # 0 is an error below, not "the default"
    stride = (ds if window == dw else max(1, window // 2)) if stride is None else int(stride)
    if window < 1 or stride < 1:
        raise OnnxvizError(f"occlusion window and stride must be >= 1 (got {window}, {stride})")
    if isinstance(fill, str) and fill.strip().lower() == "mean":
        axes = tuple(i for i in range(1, x.ndim) if i != att.spec.channel_axis())
        filled = np.broadcast_to(x.mean(axis=axes, keepdims=True), x.shape).astype(np.float32)
    else:
        filled = resolve_baseline(att, x, fill)
    ys, xs = window_positions(H, window, stride), window_positions(W, window, stride)
    wins = [(y, xx) for y in ys for xx in xs]
    n, nw = len(x), len(wins)
    base_z = z
    if score == "probability":
        base_scores = att.probabilities_from_logits(base_z)[np.arange(n), units]
    else:
        base_scores = base_z[np.arange(n), units]
    rows_img = np.repeat(np.arange(n), nw)
    rows_win = np.tile(np.arange(nw), n)
    drops = np.zeros(n * nw, np.float64)
    before = att.forward_passes
    for sl in att.chunks(len(rows_img)):
        ri, rw = rows_img[sl], rows_win[sl]
        mask = np.zeros((len(ri), H, W), np.float32)
        for j, w_i in enumerate(rw):
            y, xx = wins[w_i]
            mask[j, y:y + window, xx:xx + window] = 1.0
        m = att.spec.pixel_mask(mask)
        xo = x[ri] * (1.0 - m) + filled[ri] * m
        zo = att.logits(xo)
        s = att.probabilities_from_logits(zo) if score == "probability" else zo
        drops[sl] = base_scores[ri] - s[np.arange(len(ri)), units[ri]]
    passes = att.forward_passes - before
    total = np.zeros((n, H, W), np.float64)
    count = np.zeros((H, W), np.float64)
    for w_i, (y, xx) in enumerate(wins):
        total[:, y:y + window, xx:xx + window] += drops.reshape(n, nw)[:, w_i, None, None]
        count[y:y + window, xx:xx + window] += 1.0
    maps = (total / np.maximum(count, 1.0)).astype(np.float32)
    info = {"window": window, "stride": stride, "fill": fill if isinstance(fill, (str, int, float)) else "array",
            "score": score, "windows": nw, "forward_passes": int(passes + n)}
    return Attribution("occlusion", maps, units, base_z[np.arange(n), units], base_z.argmax(1), info)
