"""Pictures of attribution maps: heatmap overlays on the input and one figure with several methods
side by side (a row per image: the input, then one overlay per method). Built on ``render``'s
``overlay`` (colormap over an image) and ``grid_image`` (labelled grid); written atomically.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Sequence

import numpy as np

from ..errors import OnnxvizError
from ..render import grid_image, overlay, save_png
from .core import Attribution

__all__ = ["overlay_maps", "attribution_figure", "save_figure", "stack_maps"]

#: Tiles are drawn at least this many pixels wide (small inputs like MNIST are upscaled first, so
#: the bilinear heatmap is smooth instead of blocky).
MIN_TILE = 128


def _upscale(unit: np.ndarray, factor: int) -> np.ndarray:
    return unit if factor == 1 else np.repeat(np.repeat(unit, factor, axis=1), factor, axis=2)


def overlay_maps(unit_images: np.ndarray, maps: np.ndarray, *, cmap: str = "jet", alpha: float = 0.5,
                 min_size: int = MIN_TILE) -> np.ndarray:
    """``(N, H, W, C)`` pictures in [0, 1] and ``(N, H, W)`` maps -> ``(N, H', W', 3)`` uint8
    overlays (each map stretched to its own min..max), upscaled so the short side is ``min_size``."""
    unit_images = np.asarray(unit_images, np.float32)
    maps = np.asarray(maps, np.float32)
    if len(unit_images) != len(maps):
        raise OnnxvizError(f"{len(unit_images)} images but {len(maps)} maps")
    h, w = unit_images.shape[1:3]
    factor = max(1, int(np.ceil(min_size / max(1, min(h, w)))))
    big = _upscale(np.clip(unit_images, 0.0, 1.0), factor)
    return np.stack([overlay(big[i], maps[i], alpha=alpha, cmap=cmap, layout="NHWC", value_range=(0.0, 1.0))
                     for i in range(len(maps))])


def attribution_figure(unit_images: np.ndarray, results: Sequence[Attribution], labels: Sequence[str] | None = None, *,
                       cmap: str = "jet", alpha: float = 0.5, unit_label=str, title: str | None = None):
    """A Pillow image: one row per image — the input (labelled with its name, top class and, when
    it differs, the unit explained), then each method's overlay (labelled with the method)."""
    if not results:
        raise OnnxvizError("no attribution results to draw")
    n = len(unit_images)
    h, w = unit_images.shape[1:3]
    factor = max(1, int(np.ceil(MIN_TILE / max(1, min(h, w)))))
    base = _upscale(np.clip(np.asarray(unit_images, np.float32), 0.0, 1.0), factor)
    if base.shape[-1] == 1:
        base = np.repeat(base, 3, axis=-1)
    base = np.round(base * 255).astype(np.uint8)
    columns = [base] + [overlay_maps(unit_images, r.maps, cmap=cmap, alpha=alpha) for r in results]
    tiles = np.stack(columns, axis=1).reshape((n * len(columns),) + base.shape[1:])
    names = list(labels) if labels is not None else [f"image {i}" for i in range(n)]
    tile_labels = []
    first = results[0]
    for i in range(n):
        top, unit = unit_label(int(first.predicted[i])), unit_label(int(first.units[i]))
        tile_labels.append(f"{names[i]}: {top}" + ("" if unit == top else f", unit {unit}"))
        tile_labels.extend(r.method for r in results)
    return grid_image(tiles, tile_labels, layout="NHWC", value_range=(0, 255), cols=len(columns),
                      tile=max(base.shape[1:3]), title=title)


def save_figure(path: str | os.PathLike, figure) -> Path:
    """Write a Pillow image atomically, as PNG (or JPEG for a ``.jpg`` name: the suffix decides)."""
    return save_png(path, figure)


def stack_maps(results: Sequence[Attribution]) -> np.ndarray:
    """Maps for ``--save-npy``: ``(N, H, W)`` for one method, ``(M, N, H, W)`` for several."""
    if len(results) == 1:
        return np.asarray(results[0].maps, np.float32)
    return np.stack([r.maps for r in results]).astype(np.float32)
