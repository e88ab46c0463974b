"""Images in, model input out: read PNG / JPEG / NPY files and convert them to what a model's image
input expects (size, channels, layout, value range), keeping a one-line note of what was done.

The model side is described by :class:`ModelInput` (from :func:`model_input`): the input's layout
(``NCHW`` / ``NHWC`` / ``NHW``), its channels, height, width and value range. Pictures travel
between the two as ``(N, H, W, C)`` float arrays in the unit range ``[0, 1]``
(:meth:`ModelInput.to_model` / :meth:`ModelInput.to_unit`).

Value conventions: 8-bit pictures (PNG/JPEG, ``uint8`` arrays) map 0..255 onto the model's range;
16-bit ones 0..65535. Float arrays already inside the model's range are used as they are; float
arrays in 0..255 are read as 8-bit pixel values; anything else is used as is, with a note saying so.
"""

from __future__ import annotations

import math
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Sequence

import numpy as np
import onnx

from .errors import ImageError, OnnxvizError, ShapeError
from .graph import check_input_shape, check_value_range, input_info

__all__ = ["ModelInput", "LoadedImages", "model_input", "read_image", "convert_image", "load_images",
           "resize_bilinear", "IMAGE_SUFFIXES"]

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".npy")


# --------------------------------------------------------------------------------------- model side
@dataclass(frozen=True)
class ModelInput:
    """A model's image input: name, layout, per-image shape, channels / height / width, value range
    and a fixed batch size (``None`` when the batch dim is symbolic)."""

    name: str
    layout: str  # NCHW | NHWC | NHW
    shape: tuple[int, ...]  # per image, in the model's layout
    channels: int
    height: int
    width: int
    value_range: tuple[float, float]
    batch: int | None = None

    def to_model(self, unit: np.ndarray) -> np.ndarray:
        """``(N, H, W, C)`` pictures in [0, 1] -> a float32 batch in the model's layout and range."""
        u = np.asarray(unit, np.float32)
        lo, hi = self.value_range
        x = u * np.float32(hi - lo) + np.float32(lo) if (lo, hi) != (0.0, 1.0) else u
        if self.layout == "NCHW":
            x = x.transpose(0, 3, 1, 2)
        elif self.layout == "NHW":
            x = x[..., 0]
        return np.ascontiguousarray(x.reshape((len(u),) + self.shape), dtype=np.float32)

    def to_unit(self, x: np.ndarray) -> np.ndarray:
        """A batch in the model's layout and range -> ``(N, H, W, C)`` float32 pictures in [0, 1]
        (not clipped)."""
        x = np.asarray(x, np.float32)
        n = len(x)
        if self.layout == "NCHW":
            x = x.reshape(n, self.channels, self.height, self.width).transpose(0, 2, 3, 1)
        else:
            x = x.reshape(n, self.height, self.width, self.channels)
        lo, hi = self.value_range
        return ((x - lo) / (hi - lo)).astype(np.float32) if (lo, hi) != (0.0, 1.0) else x.copy()

    def to_hwc(self, a: np.ndarray) -> np.ndarray:
        """Any per-pixel quantity (gradient, attribution) of a model-layout batch -> ``(N, H, W, C)``
        without changing values."""
        a = np.asarray(a)
        n = len(a)
        if self.layout == "NCHW":
            return a.reshape(n, self.channels, self.height, self.width).transpose(0, 2, 3, 1)
        return a.reshape(n, self.height, self.width, self.channels)

    def channel_axis(self) -> int | None:
        """Channel axis of a model-layout batch (``None`` for NHW)."""
        return {"NCHW": 1, "NHWC": 3}.get(self.layout)

    def pixel_mask(self, mask: np.ndarray) -> np.ndarray:
        """``(N, H, W)`` mask -> broadcastable against a model-layout batch (all channels alike)."""
        if self.layout == "NCHW":
            return mask[:, None, :, :]
        if self.layout == "NHWC":
            return mask[..., None]
        return mask

    def describe(self) -> str:
        lo, hi = self.value_range
        return (f"{self.name} {self.layout} ({', '.join(str(d) for d in ('N',) + self.shape)}) "
                f"range [{lo:g}, {hi:g}]")


def model_input(model: onnx.ModelProto, input_name: str | None = None,
                input_shape: Sequence[int] | None = None,
                value_range: Sequence[float] | None = None, *, allow_flat: bool = False) -> ModelInput:
    """The image input of ``model`` (the first input unless ``input_name``). ``input_shape`` (with
    or without the batch dim) fixes dynamic dims; ``value_range`` overrides the model's
    ``onnxviz.input_range`` metadata. Rank 4 inputs use ``input_info``'s layout, rank 3 are
    ``(N, H, W)`` grayscale; other ranks raise :class:`ShapeError`."""
    infos = input_info(model)
    if not infos:
        raise OnnxvizError("the model has no inputs")
    if input_name is None:
        info = infos[0]
    else:
        info = next((i for i in infos if i.name == input_name), None)
        if info is None:
            raise OnnxvizError(f"model has no input {input_name!r} (inputs: {', '.join(i.name for i in infos)})")
    if not np.issubdtype(info.dtype, np.floating):
        raise OnnxvizError(f"input {info.name!r} is {info.dtype}: onnxviz needs a float image input")
    full = info.shape
    batch = full[0] if full and isinstance(full[0], int) and full[0] > 0 else None
    if input_shape is not None:
        dims = tuple(input_shape)
        if full is not None and len(dims) == len(full) - 1:  # given without the batch dim
            dims = check_input_shape(info.name, full[1:], dims)
        else:  # fixed dims and rank must match: onnxruntime would fail later, less clearly
            dims = check_input_shape(info.name, full, dims)
            if full is not None:
                batch = dims[0] if full[0] == dims[0] and isinstance(full[0], int) else batch
                dims = dims[1:]
        shape = dims
    else:
        if full is None:
            raise ShapeError(f"input {info.name!r} has no known shape; give --input-shape")
        if any(not isinstance(d, int) or d <= 0 for d in full[1:]):
            raise ShapeError(f"input {info.name!r} has dynamic dims {tuple(full)}; give --input-shape "
                             "(e.g. 1,3,224,224)")
        shape = tuple(int(d) for d in full[1:])
    lo, hi = check_value_range(value_range if value_range is not None else info.value_range)
    if len(shape) == 3:
        layout = info.layout or ("NHWC" if shape[-1] in (1, 3, 4) and shape[0] not in (1, 3, 4) else "NCHW")
        if layout == "NHWC":
            h, w, c = shape
        else:
            layout = "NCHW"
            c, h, w = shape
    elif len(shape) == 2:
        layout, (h, w), c = "NHW", shape, 1
    elif allow_flat and len(shape) == 1 and math.isqrt(shape[0]) ** 2 == shape[0]:
        layout, h, w, c = "NF", math.isqrt(shape[0]), math.isqrt(shape[0]), 1  # a flattened square image
    else:
        raise ShapeError(f"input {info.name!r} of shape {full} is not an image input "
                         "(expected N,C,H,W / N,H,W,C / N,H,W" + (" or a flat square N,H*W)" if allow_flat else ")"))
    return ModelInput(info.name, layout, tuple(int(d) for d in shape), int(c), int(h), int(w), (lo, hi), batch)


# --------------------------------------------------------------------------------------- resizing
def _interp_matrix(n_out: int, n_in: int) -> np.ndarray:
    """(n_out, n_in) linear interpolation weights, half-pixel centres (``align_corners=False``, as
    Pillow, OpenCV and ``tf.image.resize``)."""
    m = np.zeros((n_out, n_in), np.float64)
    if n_in == 1:
        m[:, 0] = 1.0
        return m
    pos = (np.arange(n_out) + 0.5) * (n_in / n_out) - 0.5
    pos = np.clip(pos, 0.0, n_in - 1.0)
    lo = np.floor(pos).astype(int)
    hi = np.minimum(lo + 1, n_in - 1)
    frac = pos - lo
    rows = np.arange(n_out)
    np.add.at(m, (rows, lo), 1.0 - frac)
    np.add.at(m, (rows, hi), frac)
    return m


def resize_bilinear(maps: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """Bilinear resize of the last two axes of ``maps`` to ``size`` = (H, W), half-pixel centres
    (no antialiasing: meant for upsampling coarse maps). Two small matrix products, any batch."""
    a = np.asarray(maps)
    h, w = a.shape[-2:]
    H, W = int(size[0]), int(size[1])
    if (h, w) == (H, W):
        return a.astype(np.float32, copy=True)
    ry = _interp_matrix(H, h).astype(np.float32)
    rx = _interp_matrix(W, w).astype(np.float32)
    return np.ascontiguousarray(ry @ a.astype(np.float32) @ rx.T)


# --------------------------------------------------------------------------------------- reading
@dataclass
class _Raw:
    """What a file holds before conversion: ``(n, H, W, C)`` pixels and how to read their values."""

    pixels: np.ndarray  # (n, H, W, C), any numeric dtype
    what: str  # e.g. "PNG 640x480 RGB"
    colour: str  # "gray" | "RGB" | "RGBA" | "LA"
    scale: float | None  # divide by this to reach [0, 1]; None: float values, decided later
    batch_axis: bool = False  # the file held several images


def read_image(path: str | os.PathLike) -> np.ndarray:
    """The raw pixels of one PNG/JPEG/NPY file as ``(n, H, W, C)`` (n > 1 only for NPY batches).
    Unreadable files and arrays of the wrong rank raise :class:`ImageError`."""
    return _read(Path(os.fspath(path))).pixels


def _read(path: Path) -> _Raw:
    if not path.exists():
        raise ImageError(f"cannot read image '{path}': no such file")
    if path.is_dir():
        raise ImageError(f"cannot read image '{path}': it is a directory")
    raw = _read_npy(path) if path.suffix.lower() == ".npy" else _read_picture(path)
    if raw.pixels.dtype.kind == "f" and not np.isfinite(raw.pixels).all():  # NaN would run through silently
        raise ImageError(f"cannot read image '{path}': it holds NaN or infinite values")
    return raw


def _read_picture(path: Path) -> _Raw:
    from PIL import Image, UnidentifiedImageError

    try:
        with Image.open(path) as im:
            im.load()
            fmt = im.format or path.suffix.lstrip(".").upper()
            mode = im.mode
            size = im.size
            if mode in ("I;16", "I;16B", "I;16L", "I"):
                arr = np.asarray(im, dtype=np.float64)
                pixels, colour, scale = arr[..., None], "gray", 65535.0 if mode.startswith("I;16") else None
                if scale is None:  # 32-bit integer images: 16-bit PNGs often load as mode I
                    scale = 65535.0 if arr.max(initial=0) > 255 else 255.0
            elif mode == "F":
                pixels, colour, scale = np.asarray(im, np.float64)[..., None], "gray", None
            elif mode in ("1", "L"):
                pixels, colour, scale = np.asarray(im.convert("L"))[..., None], "gray", 255.0
            elif mode == "LA":
                pixels, colour, scale = np.asarray(im), "LA", 255.0
            elif mode in ("RGBA", "PA") or (mode == "P" and "transparency" in im.info):
                pixels, colour, scale = np.asarray(im.convert("RGBA")), "RGBA", 255.0
            else:  # RGB, P, CMYK, YCbCr, HSV ...
                pixels, colour, scale = np.asarray(im.convert("RGB")), "RGB", 255.0
    except Image.DecompressionBombError as e:  # a small file that decodes to gigabytes
        raise ImageError(f"cannot read image '{path}': too large to decode safely "
                         f"({str(e).split(',')[0]})") from None
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError) as e:
        reason = "not a PNG/JPEG image" if isinstance(e, UnidentifiedImageError) else (
            " ".join(str(e).split()) or type(e).__name__)
        raise ImageError(f"cannot read image '{path}': {reason}") from None
    return _Raw(pixels[None], f"{fmt} {size[0]}x{size[1]} {mode}", colour, scale)


def _read_npy(path: Path) -> _Raw:
    try:
        arr = np.load(path, allow_pickle=False)
    except (ValueError, OSError, EOFError) as e:
        raise ImageError(f"cannot read image '{path}': not a readable .npy array "
                         f"({' '.join(str(e).split())[:120]})") from None
    if not isinstance(arr, np.ndarray) or arr.dtype.kind not in "biuf":
        raise ImageError(f"cannot read image '{path}': {arr.dtype} array; expected numbers")
    what = f"NPY {arr.dtype} {tuple(arr.shape)}"
    if arr.ndim == 2:  # (H, W)
        pix, batch = arr[None, :, :, None], False
    elif arr.ndim == 3:
        if arr.shape[-1] in (1, 3, 4):  # (H, W, C)
            pix, batch = arr[None], False
        elif arr.shape[0] in (1, 3, 4) and arr.shape[0] < min(arr.shape[1:]):  # (C, H, W)
            pix, batch = arr.transpose(1, 2, 0)[None], False
        else:  # (N, H, W): several gray images
            pix, batch = arr[..., None], True
    elif arr.ndim == 4:
        if arr.shape[-1] in (1, 3, 4):  # (N, H, W, C)
            pix = arr
        elif arr.shape[1] in (1, 3, 4):  # (N, C, H, W)
            pix = arr.transpose(0, 2, 3, 1)
        else:
            raise ImageError(f"cannot read image '{path}': array of shape {arr.shape} has no channel "
                             "axis of 1, 3 or 4 (expected N,H,W,C or N,C,H,W)")
        batch = True
    else:
        raise ImageError(f"cannot read image '{path}': array of rank {arr.ndim} {tuple(arr.shape)}; "
                         "expected an image (H,W / H,W,C / C,H,W) or a batch (N,H,W / N,H,W,C / N,C,H,W)")
    if pix.shape[0] == 0 or pix.shape[1] == 0 or pix.shape[2] == 0:
        raise ImageError(f"cannot read image '{path}': empty array {tuple(arr.shape)}")
    c = pix.shape[-1]
    colour = {1: "gray", 3: "RGB", 4: "RGBA"}[c]
    if arr.dtype == np.bool_:
        scale: float | None = 1.0
    elif arr.dtype == np.uint8:
        scale = 255.0
    elif arr.dtype == np.uint16:
        scale = 65535.0
    elif arr.dtype.kind in "iu":
        scale = 255.0 if arr.max(initial=0) <= 255 else 65535.0
    else:
        scale = None
    return _Raw(pix, what, colour, scale, batch)


# --------------------------------------------------------------------------------------- converting
def convert_image(pixels: np.ndarray, spec: ModelInput, *, colour: str | None = None,
                  scale: float | None = None) -> tuple[np.ndarray, list[str]]:
    """``(n, H, W, C)`` raw pixels -> ``(n, h, w, c)`` float32 pictures in [0, 1] of the model's
    size and channels, and the list of what was done. ``scale``: the pixel value of white (255 for
    8-bit); ``None`` decides from the values (see the module doc)."""
    from PIL import Image

    px = np.asarray(pixels)
    if px.ndim != 4 or px.shape[-1] not in (1, 2, 3, 4):
        raise ImageError(f"expected pixels shaped (n, H, W, C) with C in 1..4, got {px.shape}")
    colour = colour or {1: "gray", 2: "LA", 3: "RGB", 4: "RGBA"}[px.shape[-1]]
    notes: list[str] = []
    x = px.astype(np.float64)
    # value range -> [0, 1]
    lo, hi = spec.value_range
    if scale is not None:
        u = x / scale
        notes.append(f"0..{scale:g} -> [{lo:g}, {hi:g}]")
    else:
        vmin, vmax = float(x.min()), float(x.max())
        if lo - 1e-6 <= vmin and vmax <= hi + 1e-6:
            u = (x - lo) / (hi - lo)
            notes.append(f"float values in [{vmin:.3g}, {vmax:.3g}] taken as the model range [{lo:g}, {hi:g}]")
        elif vmin >= 0.0 and vmax <= 255.0:
            u = x / 255.0
            notes.append(f"float values in [{vmin:.3g}, {vmax:.3g}] read as 0..255 pixels -> [{lo:g}, {hi:g}]")
        else:
            u = (x - lo) / (hi - lo)
            notes.append(f"float values in [{vmin:.3g}, {vmax:.3g}] lie outside the model range "
                         f"[{lo:g}, {hi:g}]: used as is")
    # alpha and channels
    if colour in ("RGBA", "LA"):
        u = u[..., :-1]
        notes.append("alpha dropped")
        colour = "RGB" if colour == "RGBA" else "gray"
    if spec.channels == 1 and u.shape[-1] == 3:
        u = (u @ np.array([0.299, 0.587, 0.114]))[..., None]  # ITU-R 601 luma, as Pillow's "L"
        notes.append("RGB -> gray")
    elif spec.channels == 3 and u.shape[-1] == 1:
        u = np.repeat(u, 3, axis=-1)
        notes.append("gray -> RGB")
    if u.shape[-1] != spec.channels:
        raise ImageError(f"the image has {u.shape[-1]} channel(s) but the model input takes {spec.channels}")
    # size
    n, h, w, c = u.shape
    if (h, w) != (spec.height, spec.width):
        out = np.empty((n, spec.height, spec.width, c), np.float64)
        for i in range(n):
            for k in range(c):
                img = Image.fromarray(u[i, :, :, k].astype(np.float32), "F")
                out[i, :, :, k] = np.asarray(img.resize((spec.width, spec.height), Image.BILINEAR))
        u = out
        aspect = "" if abs(h / w - spec.height / spec.width) < 1e-6 else " (aspect ratio not kept)"
        notes.append(f"resized {w}x{h} -> {spec.width}x{spec.height}{aspect}")
    return u.astype(np.float32), notes


@dataclass
class LoadedImages:
    """Images ready for a model: ``batch`` in the model's layout and range, ``unit`` the same
    pictures as ``(N, H, W, C)`` in [0, 1] (for display), one label and one note per image."""

    batch: np.ndarray
    unit: np.ndarray
    labels: list[str]
    notes: list[str] = field(default_factory=list)
    spec: ModelInput | None = None

    def __len__(self) -> int:
        return len(self.batch)


def load_images(paths: Sequence[str | os.PathLike], spec: ModelInput) -> LoadedImages:
    """Read PNG/JPEG/NPY files and convert them to ``spec`` (see :func:`convert_image`). An NPY
    file may hold several images. Any unreadable file raises :class:`ImageError` before anything
    is computed."""
    if isinstance(paths, (str, os.PathLike)):
        paths = [paths]
    if not paths:
        raise ImageError("no images given")
    units, labels, notes = [], [], []
    for p in paths:
        path = Path(os.fspath(p))
        raw = _read(path)
        unit, done = convert_image(raw.pixels, spec, colour=raw.colour, scale=raw.scale)
        units.append(unit)
        n = len(unit)
        head = f"{path.name}: {raw.what}" + (f", {n} images" if raw.batch_axis else "")
        notes.append(f"{head} -> {spec.describe()}: " + ", ".join(done))
        labels.extend([f"{path.name}[{i}]" for i in range(n)] if raw.batch_axis else [path.name])
    unit = np.concatenate(units)
    return LoadedImages(spec.to_model(unit), unit, labels, notes, spec)
