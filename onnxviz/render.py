"""Pictures of what a model learned: labelled PNG grids, GIFs of an optimization, heatmap overlays,
and raw ``.npy`` arrays. Every file is written whole or not at all (temp file, then rename), in
the format its suffix names (``.png``, ``.jpg``/``.jpeg``, ``.gif``, ``.npy``; others are refused).

Images come in the model's own layout (``NCHW``/``NHWC``/...) and value range; :func:`to_display`
turns them into ``uint8`` HWC pictures.
"""

from __future__ import annotations

import io
import os
from pathlib import Path
from typing import Any, Sequence

import numpy as np

from .errors import OnnxvizError
from .fileio import check_suffix, write_files

__all__ = ["to_display", "grid_image", "save_grid", "save_png", "save_gif", "overlay", "save_npy", "save_image", "save_result",
           "PICTURE_FORMATS", "picture_format", "picture_bytes", "gif_bytes", "npy_bytes", "colormap", "check_alpha"]

_BACKGROUND = (255, 255, 255)
_TEXT = (20, 20, 20)


def to_display(images: np.ndarray, layout: str = "NHWC", value_range: Sequence[float] = (0.0, 1.0),
               normalize: str = "range") -> np.ndarray:
    """``(n, H, W, C)`` uint8 (C = 1 or 3) from images in a model layout (without batch dim per image:
    the array is ``(n, ...)``). ``normalize``: ``range`` maps the value range to 0..255, ``minmax``
    stretches each image to its own min..max (for filters that use a small part of the range)."""
    x = np.asarray(images, np.float64)
    layout = layout.upper()
    if layout == "NCHW":
        x = x.transpose(0, 2, 3, 1)
    elif layout == "NHW":
        x = x[..., None]
    elif layout == "NF":
        side = int(round(np.sqrt(x.shape[1])))
        x = x.reshape(len(x), side, side, 1)
    elif layout != "NHWC":
        raise OnnxvizError(f"unknown image layout {layout!r}")
    if x.ndim != 4:
        raise OnnxvizError(f"expected a batch of images, got shape {np.shape(images)}")
    if x.shape[-1] not in (1, 3):
        if x.shape[-1] == 4:
            x = x[..., :3]
        else:  # many channels: show their mean
            x = x.mean(axis=-1, keepdims=True)
    if normalize == "minmax":
        lo = x.min(axis=(1, 2, 3), keepdims=True)
        hi = x.max(axis=(1, 2, 3), keepdims=True)
        x = (x - lo) / np.where(hi > lo, hi - lo, 1.0)
    elif normalize == "range":
        lo, hi = float(value_range[0]), float(value_range[1])
        x = (x - lo) / (hi - lo if hi > lo else 1.0)
    else:
        raise OnnxvizError(f"unknown normalization {normalize!r} (choose range or minmax)")
    return np.clip(np.round(x * 255.0), 0, 255).astype(np.uint8)


def _font(size: int):
    from PIL import ImageFont

    try:
        return ImageFont.load_default(size=size)
    except TypeError:  # Pillow < 10.1
        return ImageFont.load_default()


def grid_image(images: np.ndarray, labels: Sequence[str] | None = None, *, layout: str = "NHWC",
               value_range: Sequence[float] = (0.0, 1.0), cols: int | None = None, tile: int | None = None,
               normalize: str = "range", title: str | None = None, pad: int = 4):
    """A Pillow image: the images as a grid, each scaled (nearest neighbour) to ``tile`` pixels
    (default: at least 96) and labelled underneath."""
    from PIL import Image, ImageDraw

    pics = to_display(images, layout, value_range, normalize)
    n, h, w, c = pics.shape
    if n == 0:
        raise OnnxvizError("no images to draw")
    cols = max(1, min(cols or _columns(n), n))
    rows = int(np.ceil(n / cols))
    scale = max(1, int(np.ceil((tile or 96) / max(h, w)))) if tile is None else max(1, tile // max(h, w))
    th, tw = h * scale, w * scale
    font_size = max(10, min(16, tw // 7))
    font = _font(font_size)
    label_h = font_size + 6 if labels else 0
    title_h = font_size + 10 if title else 0
    width = cols * tw + (cols + 1) * pad
    height = title_h + rows * (th + label_h) + (rows + 1) * pad
    canvas = Image.new("RGB", (width, height), _BACKGROUND)
    draw = ImageDraw.Draw(canvas)
    if title:
        draw.text((pad, pad), title, fill=_TEXT, font=font)
    for i in range(n):
        r, col = divmod(i, cols)
        x0 = pad + col * (tw + pad)
        y0 = title_h + pad + r * (th + label_h + pad)
        arr = pics[i]
        mode_img = Image.fromarray(arr[..., 0], "L") if c == 1 else Image.fromarray(arr, "RGB")
        canvas.paste(mode_img.resize((tw, th), Image.NEAREST).convert("RGB"), (x0, y0))
        if labels:
            text = _fit(draw, str(labels[i]), font, tw)
            tw_text = draw.textlength(text, font=font)
            draw.text((x0 + (tw - tw_text) / 2, y0 + th + 2), text, fill=_TEXT, font=font)
    return canvas


def _columns(n: int) -> int:
    """A near-square grid without empty cells when there is one: 10 -> 5x2, 32 -> 8x4, 64 -> 8x8."""
    root = int(np.ceil(np.sqrt(n)))
    return next((c for c in range(root, 2 * root + 1) if n % c == 0), root)


def _fit(draw, text: str, font, width: int) -> str:
    if draw.textlength(text, font=font) <= width:
        return text
    while len(text) > 1 and draw.textlength(text + "…", font=font) > width:
        text = text[:-1]
    return text + "…"


#: Picture file suffixes and the Pillow format each is written in.
PICTURE_FORMATS = {".png": "PNG", ".jpg": "JPEG", ".jpeg": "JPEG"}


def picture_format(path: str | os.PathLike) -> str:
    """The Pillow format of a picture file named ``path``, from its suffix; other suffixes are
    refused (an ``x.jpg`` holding PNG bytes misleads every viewer)."""
    return PICTURE_FORMATS[check_suffix(path, tuple(PICTURE_FORMATS), "picture").suffix.lower()]


def picture_bytes(image, path: str | os.PathLike) -> bytes:
    """A Pillow image encoded in the format ``path``'s suffix names (:func:`picture_format`)."""
    fmt = picture_format(path)
    buf = io.BytesIO()
    if fmt == "JPEG":
        image.convert("RGB").save(buf, format=fmt, quality=95)
    else:
        image.save(buf, format=fmt)
    return buf.getvalue()


def _save_pil(image, path: str | os.PathLike) -> Path:
    return write_files([(path, picture_bytes(image, path))])[0]


def faded(images: np.ndarray, alpha: np.ndarray, layout: str = "NHWC",
          value_range: Sequence[float] = (0.0, 1.0)) -> np.ndarray:
    """Images (model layout) blended toward white by ``1 - alpha`` (alpha (n, H, W) in [0, 1]):
    (n, H, W, C) in [0, 1]."""
    x = to_display(images, layout, value_range).astype(np.float64) / 255.0
    a = np.clip(np.asarray(alpha, np.float64), 0.0, 1.0)[..., None]
    return a * x + (1.0 - a)


def save_png(path: str | os.PathLike, picture: Any) -> Path:
    """Write a Pillow image atomically, as PNG (or JPEG for a ``.jpg`` name: the suffix decides)."""
    return _save_pil(picture, path)


def save_grid(path: str | os.PathLike, images: np.ndarray, labels: Sequence[str] | None = None, **options: Any) -> Path:
    """Write :func:`grid_image` as a PNG or JPEG by suffix (atomically); returns the path."""
    return _save_pil(grid_image(images, labels, **options), path)


def save_image(path: str | os.PathLike, image: np.ndarray) -> Path:
    """Write one ``(H, W)``/``(H, W, 3)`` uint8 picture as PNG or JPEG by suffix (atomically)."""
    from PIL import Image

    arr = np.asarray(image)
    if arr.dtype != np.uint8:
        raise OnnxvizError("save_image expects a uint8 picture (use to_display or overlay)")
    return _save_pil(Image.fromarray(arr), path)


def save_gif(path: str | os.PathLike, frames: np.ndarray, labels: Sequence[str] | None = None, *,
             steps: Sequence[int] | None = None, duration_ms: int = 80, hold_last_ms: int = 1000,
             **options: Any) -> Path:
    """An animated GIF of an optimization: ``frames`` is ``(T, n, ...)`` (grids of n images at T
    moments, as ``MaximizeResult.frames``); each frame is titled with its step when ``steps`` given."""
    return write_files([(path, gif_bytes(path, frames, labels, steps=steps, duration_ms=duration_ms,
                                         hold_last_ms=hold_last_ms, **options))])[0]


def gif_bytes(path: str | os.PathLike, frames: np.ndarray, labels: Sequence[str] | None = None, *,
              steps: Sequence[int] | None = None, duration_ms: int = 80, hold_last_ms: int = 1000,
              **options: Any) -> bytes:
    """The GIF :func:`save_gif` writes to ``path`` (which must end in ``.gif``), in memory."""
    check_suffix(path, (".gif",), "GIF")
    frames = np.asarray(frames)
    if frames.ndim < 3 or len(frames) == 0:
        raise OnnxvizError("save_gif needs frames shaped (T, n, ...)")
    pics = []
    for t, batch in enumerate(frames):
        title = f"step {steps[t]}" if steps is not None and t < len(steps) else None
        pics.append(grid_image(batch, labels, title=title, **options))
    durations = [duration_ms] * len(pics)
    durations[-1] = max(duration_ms, hold_last_ms)
    buf = io.BytesIO()
    pics[0].save(buf, format="GIF", save_all=True, append_images=pics[1:], duration=durations, loop=0,
                 optimize=False, disposal=1)
    return buf.getvalue()


def overlay(image: np.ndarray, heatmap: np.ndarray, *, alpha: float = 0.5, cmap: str = "jet",
            layout: str = "NHWC", value_range: Sequence[float] = (0.0, 1.0)) -> np.ndarray:
    """A heatmap (H', W') laid over one image (model layout without batch, or HxW) as uint8 RGB.

    The heatmap is stretched to its own min..max, resized bilinearly to the image and coloured with
    a matplotlib colormap; ``alpha`` is its opacity. For saliency and CAM maps."""
    from PIL import Image

    cmap_fn, alpha = colormap(cmap), check_alpha(alpha)
    img = np.asarray(image)
    if img.ndim == 2:
        pic = to_display(img[None], "NHW", value_range)[0]
    else:
        pic = to_display(img[None], layout, value_range)[0]
    if pic.shape[-1] == 1:
        pic = np.repeat(pic, 3, axis=-1)
    h, w = pic.shape[:2]
    heat = np.asarray(heatmap, np.float64)
    if heat.ndim != 2:
        raise OnnxvizError(f"heatmap must be 2-D, got shape {heat.shape}")
    lo, hi = float(heat.min()), float(heat.max())
    heat = (heat - lo) / (hi - lo) if hi > lo else np.zeros_like(heat)
    if heat.shape != (h, w):
        heat = np.asarray(Image.fromarray(heat.astype(np.float32), "F").resize((w, h), Image.BILINEAR))
    colored = cmap_fn(np.clip(heat, 0.0, 1.0))[..., :3] * 255.0
    out = (1.0 - alpha) * pic.astype(np.float64) + alpha * colored
    return np.clip(np.round(out), 0, 255).astype(np.uint8)


def colormap(name: str):
    """The matplotlib colormap ``name``; an unknown name is an :class:`OnnxvizError` listing a few."""
    from matplotlib import colormaps

    try:
        return colormaps[name]
    except KeyError:
        raise OnnxvizError(f"unknown colormap {name!r} (e.g. jet, viridis, magma, inferno, gray)") from None


def check_alpha(alpha: float) -> float:
    """An overlay opacity: a number in [0, 1] (NaN or 5 would paint garbage)."""
    if not 0.0 <= alpha <= 1.0:
        raise OnnxvizError(f"bad opacity (--alpha) {alpha}: expected a number in [0, 1]")
    return float(alpha)


def npy_bytes(path: str | os.PathLike, array: np.ndarray) -> bytes:
    """The ``.npy`` file :func:`save_npy` writes to ``path`` (which must end in ``.npy``), in memory."""
    check_suffix(path, (".npy",), "array")
    buf = io.BytesIO()
    np.save(buf, np.asarray(array))
    return buf.getvalue()


def save_npy(path: str | os.PathLike, array: np.ndarray) -> Path:
    """``numpy.save`` atomically (the file is complete or absent)."""
    return write_files([(path, npy_bytes(path, array))])[0]


def save_result(result: Any, png: str | os.PathLike | None = None, gif: str | os.PathLike | None = None,
                npy: str | os.PathLike | None = None, *, cols: int | None = None,
                normalize: str = "range", title: str | None = None, tile: int | None = None,
                gif_tile: int | None = 64, start: np.ndarray | None = None) -> list[Path]:
    """Write a :class:`~onnxviz.maximize.MaximizeResult`: a labelled PNG grid, a GIF of its
    recorded frames (needs ``record_every``), the raw images as ``.npy`` (model layout and range).
    ``start`` (feature accentuation's start image, model layout) leads the PNG grid as "start".
    Every file is encoded before any is written, and all are written or none (a bad or full second
    destination leaves no first file). GIF tiles are smaller (``gif_tile``) to keep the file small."""
    options = dict(layout=result.layout, value_range=result.value_range, cols=cols, normalize=normalize)
    planned: list[tuple[Path, bytes]] = []
    if gif is not None and result.frames is None:
        raise OnnxvizError("no frames recorded for a GIF (run with record_every > 0)")
    if png is not None:
        images, labels = result.images, list(result.labels)
        if start is not None:
            images = np.concatenate([np.asarray(start, images.dtype).reshape((1,) + images.shape[1:]), images])
            labels = ["start"] + labels
        target = Path(os.fspath(png))
        planned.append((target, picture_bytes(grid_image(images, labels, title=title, tile=tile, **options), target)))
        alpha = getattr(result, "transparency", None)
        if alpha is not None:  # MACO's view: each image faded to white where its feature is not
            faded_path = target.with_name(target.stem + ".transparency" + target.suffix)
            planned.append((faded_path, picture_bytes(grid_image(
                faded(result.images, alpha, result.layout, result.value_range), result.labels, title=title,
                tile=tile, layout="NHWC", value_range=(0.0, 1.0), cols=cols, normalize="range"), faded_path)))
    if gif is not None:
        planned.append((Path(os.fspath(gif)), gif_bytes(gif, result.frames, result.labels, steps=result.frame_steps,
                                                        tile=gif_tile, **options)))
    if npy is not None:
        planned.append((Path(os.fspath(npy)), npy_bytes(npy, result.images)))
    return write_files(planned)
