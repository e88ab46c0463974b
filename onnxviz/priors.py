"""Image priors fitted from sample images: what makes a visualization look like the model's data.

A prior is a parameterization of the image that only reaches images resembling the samples it was
fitted on, plus a penalty that keeps the optimization typical of them. Two kinds:

- :class:`GaussianPrior` (small inputs, e.g. MNIST): image = mean + sum_i z_i * s_i * u_i over the
  top-k principal directions u_i of the samples (standard deviations s_i), optimized in the whitened
  coefficients z with the penalty ``mean(z**2)``: a Gaussian model of the data, whose density is
  ``exp(-|z|^2 / 2)``. k is picked from the explained variance by default.
- :class:`FourierPrior` (larger RGB inputs): the amplitude spectrum is fixed to the samples' mean
  (in lucid's decorrelated colour space) and only the phase is optimized — the magnitude-constrained
  optimization (MACO) of Fel et al. 2023. :func:`natural_prior` builds one with a generic 1/f
  spectrum, no data needed.

A prior is a small ``.npz`` file (no pickles) holding its arrays and a JSON header with the model's
digest and input spec, so using it on another model is a clear :class:`PriorError`.
``MODEL.prior.npz`` beside a model file is found automatically (:func:`find_prior`).
"""

from __future__ import annotations

import hashlib
import json
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Sequence

import numpy as np
import onnx

from .errors import OnnxvizError
from .fileio import atomic_output
from .images import load_images, model_input
from .params import COLOR_CORRELATION_SVD_SQRT, Clip, FourierBasis, rfft2_frequencies

__all__ = [
    "PriorError", "PriorSpec", "GaussianPrior", "FourierPrior", "Prior", "fit_prior", "natural_prior",
    "save_prior", "load_prior", "find_prior", "resolve_prior", "model_digest", "prior_path_for",
    "PRIOR_KINDS", "PRIOR_SUFFIX",
]

PRIOR_KINDS = ("auto", "gaussian", "fourier")
PRIOR_SUFFIX = ".prior.npz"
FORMAT = "onnxviz-prior/1"
#: Explained variance the Gaussian prior keeps when ``components`` is not given...
DEFAULT_VARIANCE = 0.9
#: ...and at least this fraction of the image's values as directions: when objects move around the
#: frame (not centred like digits), the background takes most of the variance and 90% of it leaves
#: no directions for the objects' edges (shapes_cnn's data: 90% is 26 directions of 12,288).
MIN_COMPONENT_FRACTION = 1 / 12
#: Inputs up to this many values (C*H*W) get a Gaussian prior under ``kind="auto"``.
GAUSSIAN_MAX_VALUES = 64 * 64 * 3


class PriorError(OnnxvizError):
    """A prior file that cannot be read, or that does not fit the model it is used with."""


def model_digest(model: onnx.ModelProto) -> str:
    """sha256 of the model's serialized graph (nodes and weights), which identifies the model a prior
    was fitted for; metadata (class names, ranges) is left out, so relabelling keeps the prior."""
    return hashlib.sha256(model.graph.SerializeToString(deterministic=True)).hexdigest()


@dataclass(frozen=True)
class PriorSpec:
    """What a prior fits: the model (its digest, or ``None`` for any model) and the input images
    (channels, height, width). Images are handled in the unit range, (C, H, W) order."""

    channels: int
    height: int
    width: int
    model_sha256: str | None = None
    input_name: str | None = None
    layout: str | None = None
    value_range: tuple[float, float] | None = None

    def to_dict(self) -> dict[str, Any]:
        return {"channels": self.channels, "height": self.height, "width": self.width,
                "model_sha256": self.model_sha256, "input_name": self.input_name, "layout": self.layout,
                "value_range": None if self.value_range is None else list(self.value_range)}

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> "PriorSpec":
        vr = d.get("value_range")
        return cls(int(d["channels"]), int(d["height"]), int(d["width"]), d.get("model_sha256"),
                   d.get("input_name"), d.get("layout"), None if vr is None else (float(vr[0]), float(vr[1])))


# ----------------------------------------------------------------------------------- parameterizations
class _PriorParam:
    """Shared by the prior parameterizations: ``pre_squash(p)`` is linear-ish in ``p`` and the range
    is kept by clipping (the prior itself keeps images in range; clipping only trims overshoot)."""

    squash = Clip()
    kind = "prior"

    def forward(self, p: np.ndarray) -> np.ndarray:
        return self.squash.forward(self.pre_squash(p))

    def project(self, p: np.ndarray) -> np.ndarray:
        return p

    def penalty(self, p: np.ndarray) -> tuple[np.ndarray, np.ndarray] | None:
        return None


class GaussianParam(_PriorParam):
    """Image = ``origin + decode(z)`` with ``decode(z) = (z * std) @ components`` reshaped to
    (C, H, W); ``origin`` is the prior mean (feature visualization) or a real image (feature
    accentuation). Penalty: ``mean(z**2)`` per image, the Gaussian's negative log density up to
    scale."""

    def __init__(self, prior: "GaussianPrior", origin: np.ndarray | None = None, init_std: float = 0.1):
        self.prior = prior
        self.channels, self.h, self.w = prior.spec.channels, prior.spec.height, prior.spec.width
        self.basis = (prior.components * prior.std[:, None]).astype(np.float64)  # (k, D)
        self.origin = (prior.mean if origin is None else np.asarray(origin, np.float64)).reshape(-1, self.basis.shape[1])
        self.init_std = float(init_std)
        self.from_image = origin is not None

    @property
    def param_shape(self) -> tuple[int, ...]:
        return (self.basis.shape[0],)

    def init(self, rng: np.random.Generator, n: int = 1) -> np.ndarray:
        if self.from_image:
            rng.normal(size=(n, self.basis.shape[0]))  # keep the stream aligned with the other starts
            return np.zeros((n, self.basis.shape[0]))
        return rng.normal(0.0, self.init_std, size=(n, self.basis.shape[0]))

    def pre_squash(self, p: np.ndarray) -> np.ndarray:
        x = p @ self.basis + self.origin
        return x.reshape(len(p), self.channels, self.h, self.w)

    def vjp(self, p, g, pre=None, out=None):
        if pre is None:
            pre = self.pre_squash(p)
        g = self.squash.vjp(pre, g, out)
        return g.reshape(len(g), -1) @ self.basis.T

    def penalty(self, p):
        k = p.shape[1]
        return np.mean(p * p, axis=1), 2.0 * p / k

    def describe(self) -> dict[str, Any]:
        return {"basis": "gaussian-prior", "components": int(self.basis.shape[0]), "range": "clip",
                "from_image": self.from_image, "init_std": self.init_std}


class PixelOffsetParam(_PriorParam):
    """Image = ``origin + d`` (pixels), penalty ``mean(d**2)``: feature accentuation without a prior."""

    def __init__(self, origin: np.ndarray):
        self.origin = np.asarray(origin, np.float64)
        self.channels, self.h, self.w = self.origin.shape[-3:]
        self.init_std = 0.0

    @property
    def param_shape(self) -> tuple[int, ...]:
        return (self.channels, self.h, self.w)

    def init(self, rng, n=1):
        return np.zeros((n, *self.param_shape))

    def pre_squash(self, p):
        return p + self.origin

    def vjp(self, p, g, pre=None, out=None):
        if pre is None:
            pre = self.pre_squash(p)
        return self.squash.vjp(pre, g, out)

    def penalty(self, p):
        n = p[0].size
        flat = p.reshape(len(p), -1)
        return np.mean(flat * flat, axis=1), 2.0 * p / n

    def describe(self):
        return {"basis": "pixel-offset", "range": "clip", "from_image": True}


class PhaseParam(_PriorParam):
    """MACO: spectrum = ``amplitude * exp(i * phase)`` per (decorrelated) channel, image =
    colour matrix @ irfft2(spectrum) + channel offset, clipped to [0, 1]. Only the phase is
    optimized, so every image keeps the samples' mean amplitude spectrum; no penalty is needed."""

    def __init__(self, prior: "FourierPrior"):
        self.prior = prior
        self.channels, self.h, self.w = prior.spec.channels, prior.spec.height, prior.spec.width
        self.basis_ = FourierBasis(self.h, self.w)
        self.basis_.scale = prior.amplitude.astype(np.float64)  # (C, H, W//2+1)
        self.matrix = prior.color
        self.offset = prior.offset.reshape(1, -1, 1, 1)
        self.init_std = float(np.pi)
        #: maximize accumulates |objective gradient| per pixel for this parameterization (MACO's map)
        self.transparency = True

    @property
    def param_shape(self) -> tuple[int, ...]:
        return (self.channels, self.h, self.w // 2 + 1)

    def init(self, rng, n=1):
        return rng.uniform(-np.pi, np.pi, size=(n, *self.param_shape))

    def pre_squash(self, p):
        x = self.basis_.forward(np.stack([np.cos(p), np.sin(p)], axis=-1))
        if self.matrix is not None:
            x = np.einsum("ij,bjhw->bihw", self.matrix, x)
        return x + self.offset

    def vjp(self, p, g, pre=None, out=None):
        if pre is None:
            pre = self.pre_squash(p)
        g = self.squash.vjp(pre, g, out)
        if self.matrix is not None:
            g = np.einsum("ji,bjhw->bihw", self.matrix, g)
        gc = self.basis_.adjoint(g)  # gradient w.r.t. (cos, sin)
        return -gc[..., 0] * np.sin(p) + gc[..., 1] * np.cos(p)

    def describe(self):
        return {"basis": "fourier-prior", "range": "clip", "decorrelate": self.matrix is not None}


# ----------------------------------------------------------------------------------- priors
@dataclass
class GaussianPrior:
    """A Gaussian (PCA) model of unit-range images: ``mean`` (C, H, W), orthonormal ``components``
    (k, C*H*W), their standard deviations ``std`` (k,), and the fraction of the samples' variance
    each explains."""

    spec: PriorSpec
    mean: np.ndarray
    components: np.ndarray
    std: np.ndarray
    explained: np.ndarray
    samples: int
    kind: str = field(default="gaussian", init=False)

    @property
    def k(self) -> int:
        return len(self.std)

    def encode(self, images: np.ndarray) -> np.ndarray:
        """Whitened coefficients z (N, k) of unit-range images (N, C, H, W)."""
        d = np.asarray(images, np.float64).reshape(len(images), -1) - self.mean.reshape(1, -1)
        return (d @ self.components.T) / self.std

    def decode(self, z: np.ndarray) -> np.ndarray:
        """Images (N, C, H, W) from whitened coefficients (not clipped)."""
        x = (np.asarray(z, np.float64) * self.std) @ self.components + self.mean.reshape(1, -1)
        return x.reshape(len(z), self.spec.channels, self.spec.height, self.spec.width)

    def param(self, origin: np.ndarray | None = None, init_std: float = 0.1) -> GaussianParam:
        return GaussianParam(self, origin, init_std)

    def arrays(self) -> dict[str, np.ndarray]:
        return {"mean": self.mean, "components": self.components, "std": self.std, "explained": self.explained}

    def describe(self) -> dict[str, Any]:
        return {"kind": self.kind, "components": self.k, "explained_variance": float(self.explained.sum()),
                "samples": self.samples, **self.spec.to_dict()}


@dataclass
class FourierPrior:
    """A fixed amplitude spectrum per channel (C, H, W//2+1) in decorrelated colour space (for RGB;
    ``color`` is the 3x3 matrix back to RGB) and the per-channel mean value ``offset`` (C,)."""

    spec: PriorSpec
    amplitude: np.ndarray
    offset: np.ndarray
    color: np.ndarray | None
    samples: int
    kind: str = field(default="fourier", init=False)

    def param(self, origin: np.ndarray | None = None, init_std: float | None = None) -> PhaseParam:
        if origin is not None:
            raise PriorError("feature accentuation needs a Gaussian prior or none (a Fourier prior fixes the "
                             "spectrum, so it cannot start from a given image)")
        return PhaseParam(self)

    def arrays(self) -> dict[str, np.ndarray]:
        out = {"amplitude": self.amplitude, "offset": self.offset}
        if self.color is not None:
            out["color"] = self.color
        return out

    def describe(self) -> dict[str, Any]:
        return {"kind": self.kind, "samples": self.samples, **self.spec.to_dict()}


Prior = GaussianPrior | FourierPrior


def _color_matrix(channels: int) -> np.ndarray | None:
    if channels != 3:
        return None
    m = COLOR_CORRELATION_SVD_SQRT
    return m / np.max(np.linalg.norm(m, axis=0))


def _as_unit_nchw(images: np.ndarray) -> np.ndarray:
    x = np.asarray(images, np.float64)
    if x.ndim != 4:
        raise PriorError(f"a prior is fitted on a batch of images (N, C, H, W) in [0, 1]; got shape {x.shape}")
    if not np.isfinite(x).all():
        raise PriorError("the sample images hold NaN or infinite values")
    return x


def fit_prior(images: np.ndarray, *, kind: str = "auto", components: int | None = None,
              variance: float = DEFAULT_VARIANCE, model: onnx.ModelProto | None = None,
              spec: PriorSpec | None = None) -> Prior:
    """Fit a prior on unit-range images ``(N, C, H, W)``. ``kind``: ``gaussian``, ``fourier`` or
    ``auto`` (Gaussian up to ``GAUSSIAN_MAX_VALUES`` values per image, Fourier above). ``components``
    fixes k; else k is the fewest directions explaining ``variance`` of the samples' variance, and at
    least ``MIN_COMPONENT_FRACTION`` of the values per image (never more than the samples allow).
    ``model`` records its digest and input so the prior refuses other models."""
    x = _as_unit_nchw(images)
    n, c, h, w = x.shape
    if spec is None:
        spec = PriorSpec(c, h, w)
    if model is not None:
        mi = model_input(model, allow_flat=True)
        spec = PriorSpec(c, h, w, model_digest(model), mi.name, mi.layout, mi.value_range)
        if (mi.channels, mi.height, mi.width) != (c, h, w):
            raise PriorError(f"the sample images are {c}x{h}x{w} (CxHxW); the model takes "
                             f"{mi.channels}x{mi.height}x{mi.width}")
    if kind not in PRIOR_KINDS:
        raise PriorError(f"unknown prior kind {kind!r} (choose: {', '.join(PRIOR_KINDS)})")
    if kind == "auto":
        kind = "gaussian" if c * h * w <= GAUSSIAN_MAX_VALUES else "fourier"
    if n < 2:
        raise PriorError(f"a prior needs at least 2 sample images, got {n}")
    if kind == "gaussian":
        return _fit_gaussian(x, spec, components, variance)
    return _fit_fourier(x, spec)


def _fit_gaussian(x: np.ndarray, spec: PriorSpec, components: int | None, variance: float) -> GaussianPrior:
    n = len(x)
    flat = x.reshape(n, -1)
    mean = flat.mean(axis=0)
    centred = flat - mean
    # principal directions from the smaller Gram matrix when there are fewer samples than values
    if n < flat.shape[1]:
        gram = centred @ centred.T
        evals, evecs = np.linalg.eigh(gram)
        order = np.argsort(evals)[::-1]
        evals, evecs = np.clip(evals[order], 0.0, None), evecs[:, order]
        keep = evals > evals[0] * 1e-12
        evals, evecs = evals[keep], evecs[:, keep]
        dirs = (evecs.T @ centred) / np.sqrt(evals)[:, None]
    else:
        cov = centred.T @ centred
        evals, evecs = np.linalg.eigh(cov)
        order = np.argsort(evals)[::-1]
        evals, dirs = np.clip(evals[order], 0.0, None), evecs[:, order].T
    var = evals / (n - 1)
    total = float(var.sum())
    if total <= 0:
        raise PriorError("the sample images are all the same: nothing to fit")
    frac = var / total
    if components is None:
        if not 0 < variance <= 1:
            raise PriorError(f"explained variance must be in (0, 1], not {variance}")
        k = int(np.searchsorted(np.cumsum(frac), variance - 1e-12) + 1)
        k = max(k, int(round(MIN_COMPONENT_FRACTION * flat.shape[1])))
    else:
        k = int(components)
        if k < 1:
            raise PriorError("a Gaussian prior needs at least 1 component")
    k = min(k, int(np.sum(var > total * 1e-12)))
    return GaussianPrior(spec, mean.reshape(spec.channels, spec.height, spec.width).astype(np.float32),
                         dirs[:k].astype(np.float32), np.sqrt(var[:k]).astype(np.float32),
                         frac[:k].astype(np.float32), n)


def _fit_fourier(x: np.ndarray, spec: PriorSpec) -> FourierPrior:
    n, c, h, w = x.shape
    m = _color_matrix(c)
    offset = x.mean(axis=(0, 2, 3))
    centred = x - offset.reshape(1, -1, 1, 1)
    if m is not None:  # to the decorrelated space: solve M @ d = rgb
        centred = np.einsum("ij,bjhw->bihw", np.linalg.inv(m), centred)
    amp = np.zeros((c, h, w // 2 + 1))
    for i in range(0, n, 256):  # mean |spectrum| in chunks (memory)
        amp += np.abs(np.fft.rfft2(centred[i:i + 256])).sum(axis=0)
    amp /= n
    return FourierPrior(spec, amp.astype(np.float32), offset.astype(np.float32), m, n)


def natural_prior(channels: int, height: int, width: int, *, contrast: float = 0.15, decay: float = 1.0,
                  offset: float = 0.5) -> FourierPrior:
    """A Fourier prior with the generic spectrum of natural images, amplitude ``1 / f**decay`` (flat
    below the lowest frequency), scaled so each decorrelated channel's pixels have standard
    deviation ``contrast`` around ``offset``: MACO with no data."""
    f = rfft2_frequencies(height, width)
    amp = 1.0 / np.maximum(f, 1.0 / max(height, width)) ** decay
    amp[0, 0] = 0.0
    # Parseval for irfft2: std of the image = sqrt(sum weighted |A|^2) / (H W)
    weight = np.full(amp.shape[1], 2.0)
    weight[0] = 1.0
    if width % 2 == 0:
        weight[-1] = 1.0
    std = np.sqrt(np.sum(weight * amp ** 2)) / (height * width)
    amp = np.broadcast_to(amp * (contrast / std), (channels, *amp.shape)).copy()
    return FourierPrior(PriorSpec(channels, height, width), amp.astype(np.float32),
                        np.full(channels, offset, np.float32), _color_matrix(channels), 0)


# ----------------------------------------------------------------------------------- files
def prior_path_for(model_path: str | os.PathLike) -> Path:
    """Where a model's own prior lives: ``MODEL.prior.npz`` beside ``MODEL.onnx``."""
    p = Path(model_path)
    return p.with_name((p.name[:-5] if p.name.endswith(".onnx") else p.name) + PRIOR_SUFFIX)


def find_prior(model_path: str | os.PathLike | None) -> Path | None:
    """The prior file beside a model file, when there is one."""
    if model_path is None:
        return None
    p = prior_path_for(model_path)
    return p if p.is_file() else None


def save_prior(prior: Prior, path: str | os.PathLike) -> Path:
    """Write ``prior`` as an ``.npz`` (arrays + a JSON header; no pickles), atomically."""
    path = Path(path)
    header = json.dumps({"format": FORMAT, "kind": prior.kind, "samples": prior.samples,
                         "spec": prior.spec.to_dict()})
    with atomic_output(path) as tmp:
        with open(tmp, "wb") as f:
            np.savez(f, header=np.array(header), **prior.arrays())
    return path


_ARRAYS = {"gaussian": ("mean", "components", "std", "explained"), "fourier": ("amplitude", "offset")}


def load_prior(path: str | os.PathLike, model: onnx.ModelProto | None = None,
               input_spec: Any = None) -> Prior:
    """Read a prior file. With ``model`` (and/or ``input_spec``, an :class:`~onnxviz.images.ModelInput`),
    refuse a prior fitted for another model or another input size with a :class:`PriorError`."""
    path = Path(path)
    try:
        with np.load(path, allow_pickle=False) as data:
            arrays = {k: data[k] for k in data.files}
    except FileNotFoundError:
        raise PriorError(f"{path}: no such prior file") from None
    except IsADirectoryError:
        raise PriorError(f"{path}: is a folder, not a prior file") from None
    except (OSError, ValueError, EOFError) as e:
        raise PriorError(f"{path}: not an onnxviz prior file ({' '.join(str(e).split())[:200]})") from None
    try:
        header = json.loads(str(arrays.pop("header")))
        if header.get("format") != FORMAT:
            raise ValueError(f"format {header.get('format')!r}")
        kind = header["kind"]
        spec = PriorSpec.from_dict(header["spec"])
        missing = [k for k in _ARRAYS[kind] if k not in arrays]
        if missing:
            raise ValueError(f"missing {', '.join(missing)}")
        if any(a.dtype.kind not in "f" for a in arrays.values()):
            raise ValueError("non-float arrays")
        d = spec.channels * spec.height * spec.width
        if kind == "gaussian":
            k = len(arrays["std"])
            if arrays["mean"].size != d or arrays["components"].shape != (k, d) or len(arrays["explained"]) != k \
                    or not np.all(arrays["std"] > 0):
                raise ValueError("arrays do not match the header")
            prior: Prior = GaussianPrior(spec, arrays["mean"].reshape(spec.channels, spec.height, spec.width),
                                         arrays["components"], arrays["std"], arrays["explained"],
                                         int(header.get("samples", 0)))
        else:
            if arrays["amplitude"].shape != (spec.channels, spec.height, spec.width // 2 + 1) \
                    or arrays["offset"].shape != (spec.channels,):
                raise ValueError("arrays do not match the header")
            color = arrays.get("color")
            if color is not None and color.shape != (3, 3):
                raise ValueError("bad colour matrix")
            prior = FourierPrior(spec, arrays["amplitude"], arrays["offset"], color, int(header.get("samples", 0)))
        for a in arrays.values():
            if not np.isfinite(a).all():
                raise ValueError("non-finite values")
    except (KeyError, ValueError, TypeError, json.JSONDecodeError) as e:
        raise PriorError(f"{path}: not a valid onnxviz prior file ({' '.join(str(e).split())[:200]})") from None
    check_prior(prior, model, input_spec, label=str(path))
    return prior


def check_prior(prior: Prior, model: onnx.ModelProto | None = None, input_spec: Any = None,
                label: str = "the prior") -> None:
    """Raise :class:`PriorError` unless ``prior`` was fitted for ``model`` and its input size."""
    s = prior.spec
    if input_spec is not None:  # the maximizer's input (channels, h, w) or an images.ModelInput
        got = (input_spec.channels, getattr(input_spec, "h", None) or input_spec.height,
               getattr(input_spec, "w", None) or input_spec.width)
        if got != (s.channels, s.height, s.width):
            raise PriorError(f"{label} makes {s.channels}x{s.height}x{s.width} images; the model takes "
                             f"{got[0]}x{got[1]}x{got[2]}")
    if model is not None and s.model_sha256 is not None:
        digest = model_digest(model)
        if digest != s.model_sha256:
            raise PriorError(f"{label} was fitted for another model (sha256 {s.model_sha256[:12]}..., this one is "
                             f"{digest[:12]}...); fit one for it with: onnxviz prior fit IMAGES --model MODEL")


def resolve_prior(prior: Any, model: onnx.ModelProto, model_path: str | os.PathLike | None,
                  input_spec: Any = None) -> Prior | None:
    """A prior from what a caller gives: ``None`` / ``"none"`` (no prior), ``"auto"`` (the file beside
    the model file, if any), a path, or a prior object (checked against the model)."""
    if prior is None or (isinstance(prior, str) and prior.lower() == "none"):
        return None
    if isinstance(prior, str) and prior.lower() == "auto":
        found = find_prior(model_path)
        return None if found is None else load_prior(found, model, input_spec)
    if isinstance(prior, (str, os.PathLike)):
        return load_prior(prior, model, input_spec)
    if isinstance(prior, (GaussianPrior, FourierPrior)):
        check_prior(prior, model, input_spec)
        return prior
    raise PriorError(f"prior must be a path, 'auto', None or a prior object, not {type(prior).__name__}")


def sample_images(images: Sequence[str | os.PathLike] | np.ndarray, spec: Any) -> np.ndarray:
    """Unit-range (N, C, H, W) images for fitting: an array in the model's layout and range, or
    files / folders (PNG, JPEG, NPY) brought to the model's input as :func:`~onnxviz.images.load_images`
    does."""
    if isinstance(images, np.ndarray):
        unit = spec.to_unit(images)
    else:
        paths: list[Path] = []
        for item in images:
            p = Path(item)
            if p.is_dir():
                found = sorted(q for q in p.iterdir() if q.suffix.lower() in (".png", ".jpg", ".jpeg", ".npy", ".bmp"))
                if not found:
                    raise PriorError(f"{p}: no images (PNG, JPEG, NPY) in this folder")
                paths.extend(found)
            else:
                paths.append(p)
        unit = load_images(paths, spec).unit
    return np.ascontiguousarray(np.asarray(unit, np.float64).transpose(0, 3, 1, 2))
