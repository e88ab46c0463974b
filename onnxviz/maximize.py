"""Activation maximization: find input images that drive chosen units of a trained network.

One job is a pure function — ``maximize(model, layer, units, settings..., seed) -> MaximizeResult`` —
with no global state (DESIGN principle 9): the same seed gives the same images, and each image draws
its randomness from its own generator (``seed``, unit), so a unit's image does not depend on the other
units of the job or on how they are split into batches.

A step, for a batch of images (one per unit, or a group per diversity objective):

    parameters --param--> image in [0,1] (B,C,H,W) --random warp--> model range & layout
        --ONE onnxruntime run of the gradient model (objective compiled to a constant cotangent)-->
    input gradient --adjoint of warp--> minus regularizer gradients --param VJP--> Adam ascent

Defaults per input kind (see :func:`default_settings`, and the README section "Activation
maximization defaults") come from the anchors keras-vis, tf-keras-vis and lucid.
"""

from __future__ import annotations

import math
import os
import time
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any, Callable, Mapping, Sequence

import numpy as np
import onnx

from .errors import OnnxvizError
from .ops import ACTIVATIONS
from .objectives import BoundLayer, LayerRef, LinearObjective, Objective, bind_layer, diversity, unit
from .params import ImageParam, image_param
from .priors import GaussianPrior, PixelOffsetParam, Prior, resolve_prior
from .regularizers import LpNorm, Regularizer, TotalVariation
from .transforms import Jitter, Pad, Pipeline, Rotate, Scale, Transform

__all__ = [
    "maximize", "Maximizer", "MaximizeResult", "StepInfo", "Settings", "default_settings", "parse_units",
    "Adam", "first_conv_layer",
]

#: What a unit of a softmax layer means: ``logit`` maximizes the bare logit z_k (keras-vis' "swap
#: softmax for linear"), ``log_softmax`` log p_k computed from the logits. Defaults by input kind.
CLASS_OBJECTIVES = ("log_softmax", "logit")
#: Adam's step in a Gaussian prior's whitened coefficients (units of the samples' standard deviations):
#: at 0.1 the images of shapes_cnn's blue classes barely leave the mean in 512 steps; at 0.5 every
#: class gets there, MNIST's digits stay as clean, and a randomized model's images stay shapeless.
PRIOR_LR = 0.5
#: Feature accentuation of a class stops pushing once its probability reaches this (in the
#: transformed views); its distance weight is lower than visualization's and its transforms lighter
#: (pad and jitter only): the start image is real, so it needs less help to stay natural.
ACCENTUATE_TO = 0.98
ACCENTUATE_WEIGHT = 0.05
#: Memory a batch of activations may take when ``batch_size`` is automatic.
AUTO_BATCH_BYTES = 1 << 30


# ----------------------------------------------------------------------------------- settings
@dataclass(frozen=True)
class Settings:
    """Everything that shapes the optimization besides the objective and the seed."""

    steps: int
    lr: float
    param: str  # pixel | pixel-clip | fft | fft-clip
    transforms: tuple[Transform, ...]
    regularizers: tuple[Regularizer, ...]
    mode: str = "constant"  # what lies outside the image for the transforms
    fill: float = 0.0  # the constant outside (unit range)
    decay: float = 1.0  # Fourier spectrum decay
    init_std: float | None = None
    #: regularizer weights relative to each image's objective gradient (see ``_Step``)
    relative_regularizers: bool = True
    #: what a unit of a softmax layer means: see CLASS_OBJECTIVES
    class_objective: str = "logit"
    preset: str = "custom"
    #: weight of the parameterization's own penalty (a prior's ``mean(z**2)``), relative like the regularizers
    prior_weight: float = 1.0
    #: an objective value past which an image's objective gradient stops (feature accentuation: the
    #: image changes only until the unit is there, then the distance penalty alone acts)
    objective_ceiling: float | None = None

    def describe(self) -> dict[str, Any]:
        return {
            "preset": self.preset, "steps": self.steps, "lr": self.lr, "param": self.param,
            "decay": self.decay, "init_std": self.init_std,
            "transforms": [t.describe() for t in self.transforms], "mode": self.mode, "fill": self.fill,
            "regularizers": [r.describe() for r in self.regularizers],
            "relative_regularizers": self.relative_regularizers, "class_objective": self.class_objective,
            "prior_weight": self.prior_weight, "objective_ceiling": self.objective_ceiling,
        }


def default_settings(channels: int, h: int, w: int) -> Settings:
    """Settings that work without tuning, by input kind.

    Small images (longest side < 64 px, e.g. 28x28 MNIST-like grayscale): pixel parameterization
    through a sigmoid, Adam lr 0.1 for 128 steps; each step the image is shifted by up to 2 px
    (pad 2 + jitter 4 + center crop: lucid's pad/jitter, scaled down from 224 px), zoomed 0.9-1.1
    and rotated by up to 8 degrees (lucid's ranges), outside the image is black (fill 0: the
    background of MNIST-like data, where lucid's gray 0.5 would draw a frame); total variation
    (weight 0.2) and an L1 pull toward black (weight 0.05) — keras-vis / tf-keras-vis' TV + Lp
    pair (tf-keras-vis: TV 1, L1 0.3 on its own scale). The Fourier basis buys little at 28x28 and
    the sigmoid keeps pixels in range without clipping artefacts. Class units are bare logits.

    Larger RGB images (3 channels, 64 px and up): lucid's recipe — Fourier parameterization with
    1/f scaling, decorrelated colour, sigmoid, Adam lr 0.05, 512 steps; pad 12, jitter 8, scale
    0.9-1.1, rotate 10 degrees, jitter 4, scaled by (side / 224), gray fill 0.5; no explicit
    regularizer (the basis and the transforms do the regularizing, as in lucid). lucid tuned this at
    224 px; below 160 px two numbers change, measured on the 64 px shapes_cnn (models/train_shapes.py):
    the spectrum decays as 1/f**2 (with 1/f the optimization stays in high-frequency edge patterns
    and the circle classes barely move in 512 steps) and Adam lr 0.1 (lr 0.05 or 0.15 leaves a class
    below p = 0.9 on some seeds: 0.08, 0.81), keeping lucid's 512 steps (at 384 the hardest class,
    green circle, ended at p = 0.885-0.893 on 2 of 6 seeds; at 512 every class of 10 seeds reaches
    p >= 0.93). Class units are log-softmax (see :func:`maximize`): bare logits fail there.

    Larger grayscale images (1 channel, or any count but 3; 64 px and up): the RGB recipe saturates
    them into black-and-white blobs (94-95% of the pixels within 2% of the range's ends on the 64 px,
    7-class tests/gray_shapes.py model, seeds 0-2), because nothing stops the image: Adam's step does
    not shrink with the gradient, so once p_k ~ 1 the log-softmax keeps pushing at full speed until
    the gradient vanishes in float32, and the 1/f**2 spectrum gives low frequencies huge steps. The
    "gray" preset keeps lucid's Fourier basis and transforms, gray fill 0.5 and log-softmax (no
    colour decorrelation: there is no colour), with a gentler 1/f**1.5 spectrum and Adam lr 0.02 for
    256 steps (the images settle well before); the lr is scaled by sqrt(64 / side) so that a
    low-frequency coefficient moves the image by the same amount at any size (its pixel step grows
    as side**(decay - 1)). Measured on that model, seeds 0-4: at most 1% saturated pixels in any
    image (0.0-0.2% on average), p_k = 1.000 for every class, images spread over the range (std
    0.22-0.24 of it); behind a 2x2 / 4x4 average pool (128 / 256 px) 0.2% on average, at most 1.3%.
    The small preset's TV + L1 pair instead (weights scaled by side / 28) avoided saturation too but
    left images at 4-6% contrast (std); 1/f kept them in range but as pixel noise, 1/f**1.75 and
    1/f**2 saturated 15-95%.
    """
    side = max(h, w)
    if side < 64:
        return Settings(
            steps=128, lr=0.1, param="pixel",
            transforms=(Pad(2), Jitter(4), Scale(0.9, 1.1), Rotate(8.0)),
            regularizers=(TotalVariation(0.1), LpNorm(0.05, p=1.0, center=0.0)),
            mode="constant", fill=0.0, class_objective="logit", preset="small",
        )
    k = side / 224.0
    px = lambda n: max(1, int(round(n * k)))  # noqa: E731
    if channels != 3:
        return Settings(
            steps=256, lr=0.02 * math.sqrt(64.0 / side), param="fft", decay=1.5,
            transforms=(Pad(px(12)), Jitter(px(8)), Scale(0.9, 1.1), Rotate(10.0), Jitter(px(4))),
            regularizers=(), mode="constant", fill=0.5, class_objective="log_softmax", preset="gray",
        )
    below = side < 160  # the regime measured here (64 px); lucid's own numbers where lucid measured (224 px)
    return Settings(
        steps=512, lr=0.1 if below else 0.05, param="fft", decay=2.0 if below else 1.0,
        transforms=(Pad(px(12)), Jitter(px(8)), Scale(0.9, 1.1), Rotate(10.0), Jitter(px(4))),
        regularizers=(), mode="constant", fill=0.5, class_objective="log_softmax", preset="large",
    )


# ----------------------------------------------------------------------------------- units
#: The most units one job may name (a typo like ``0-99999999999`` must fail, not fill the memory).
MAX_UNITS = 100_000


def _check_unit_bounds(lo: int, hi: int, count: int | None, before: int) -> None:
    """Refuse a unit range outside the layer or longer than :data:`MAX_UNITS` before building it."""
    if count is not None:
        for v in (lo, hi):
            if not -count <= v < count:
                raise OnnxvizError(f"unit {v} out of range: the layer has {count} units (0..{count - 1})")
    if before + hi - lo + 1 > MAX_UNITS:
        raise OnnxvizError(f"too many units ({before + hi - lo + 1:,}): at most {MAX_UNITS:,} per job")


def parse_units(spec: Any, count: int | None = None) -> list[int]:
    """Units from an int, a sequence, or text: ``"3"``, ``"0-9"``, ``"1,4,7-9"``, ``"all"``
    (needs ``count``). Negative indices count from the end when ``count`` is known."""
    if spec is None or (isinstance(spec, str) and spec.strip().lower() == "all"):
        if count is None:
            raise OnnxvizError("'all' units needs a layer of known size")
        return list(range(count))
    if isinstance(spec, (int, np.integer)) and not isinstance(spec, bool):
        values = [int(spec)]
    elif isinstance(spec, str):
        values = []
        for part in spec.replace(" ", "").split(","):
            if not part:
                continue
            try:
                if "-" in part[1:]:
                    cut = part.index("-", 1)
                    lo, hi = int(part[:cut]), int(part[cut + 1:])
                    if hi < lo:
                        raise OnnxvizError(f"bad unit range {part!r}: end before start")
                    _check_unit_bounds(lo, hi, count, len(values))
                    values.extend(range(lo, hi + 1))
                else:
                    values.append(int(part))
            except ValueError:
                raise OnnxvizError(f"bad units {spec!r}: expected e.g. 3, 0-9, 1,4,7-9 or all") from None
        if not values:
            raise OnnxvizError(f"bad units {spec!r}: no unit given")
    else:
        try:
            values = [int(v) for v in spec]
        except (TypeError, ValueError):
            raise OnnxvizError(f"bad units {spec!r}") from None
    if count is not None:
        for v in values:
            if not -count <= v < count:
                raise OnnxvizError(f"unit {v} out of range: the layer has {count} units (0..{count - 1})")
        values = [v % count for v in values]
    return values


# ----------------------------------------------------------------------------------- optimizer
class Adam:
    """Adam (Kingma & Ba 2015; defaults b1 0.9, b2 0.999, eps 1e-8), as ascent on ``params``."""

    def __init__(self, lr: float, b1: float = 0.9, b2: float = 0.999, eps: float = 1e-8):
        self.lr, self.b1, self.b2, self.eps = float(lr), b1, b2, eps
        self.m: np.ndarray | None = None
        self.v: np.ndarray | None = None
        self.t = 0

    def ascend(self, params: np.ndarray, grad: np.ndarray) -> None:
        if self.m is None:
            self.m, self.v = np.zeros_like(params), np.zeros_like(params)
        self.t += 1
        self.m *= self.b1
        self.m += (1 - self.b1) * grad
        self.v *= self.b2
        self.v += (1 - self.b2) * grad * grad
        step = self.lr * math.sqrt(1 - self.b2 ** self.t) / (1 - self.b1 ** self.t)
        params += step * self.m / (np.sqrt(self.v) + self.eps)


# ----------------------------------------------------------------------------------- input
@dataclass(frozen=True)
class _Input:
    """The model input as images: name, model layout, per-image model shape, C/H/W, value range."""

    name: str
    layout: str  # NCHW | NHWC | NHW | NF (flat square)
    shape: tuple[int, ...]  # per image, model layout
    channels: int
    h: int
    w: int
    value_range: tuple[float, float]
    batch: int | None = None  # a static batch size (exports with batch 1), None when dynamic

    def to_model(self, x: np.ndarray) -> np.ndarray:
        """(B, C, H, W) in [0,1] -> model layout and range, float32."""
        lo, hi = self.value_range
        y = x * (hi - lo) + lo if (lo, hi) != (0.0, 1.0) else x
        if self.layout == "NHWC":
            y = y.transpose(0, 2, 3, 1)
        return np.ascontiguousarray(y.reshape((len(x),) + self.shape), dtype=np.float32)

    def to_unit(self, x: np.ndarray) -> np.ndarray:
        """Images in the model layout and range (one, or a batch) -> (B, C, H, W) in the unit range."""
        lo, hi = self.value_range
        a = np.asarray(x, np.float64)
        if a.shape == self.shape:
            a = a[None]
        if a.shape[1:] != self.shape:
            raise OnnxvizError(f"an image for this model has shape {self.shape} (model layout), not {a.shape[1:]}")
        if not np.isfinite(a).all():
            raise OnnxvizError("the start image holds NaN or infinite values")
        b = len(a)
        if self.layout == "NHWC":
            a = a.reshape(b, self.h, self.w, self.channels).transpose(0, 3, 1, 2)
        else:
            a = a.reshape(b, self.channels, self.h, self.w)
        return (a - lo) / (hi - lo)

    def from_model_grad(self, g: np.ndarray) -> np.ndarray:
        """Gradient w.r.t. the model input -> gradient w.r.t. the (B, C, H, W) unit-range image."""
        lo, hi = self.value_range
        g = g.astype(np.float64)
        b = len(g)
        if self.layout == "NHWC":
            g = g.reshape(b, self.h, self.w, self.channels).transpose(0, 3, 1, 2)
        else:
            g = g.reshape(b, self.channels, self.h, self.w)
        return g * (hi - lo) if (lo, hi) != (0.0, 1.0) else g


def _image_input(model: onnx.ModelProto, input_name: str | None, input_range: Sequence[float] | None,
                 input_shape: Sequence[int] | None) -> _Input:
    """The model's image input (see :func:`onnxviz.images.model_input`), flat square inputs too."""
    from .images import model_input

    spec = model_input(model, input_name, input_shape, input_range, allow_flat=True)
    return _Input(spec.name, spec.layout, spec.shape, spec.channels, spec.height, spec.width, spec.value_range,
                  spec.batch)


# ----------------------------------------------------------------------------------- results
@dataclass
class StepInfo:
    """What a callback receives after each step."""

    step: int  # 1-based
    steps: int
    chunk: int  # 0-based chunk (batch) index
    chunks: int
    images: slice  # which result images this chunk optimizes
    values: np.ndarray  # objective value per image of the chunk at this step
    elapsed: float  # seconds since the job started


@dataclass
class MaximizeResult:
    """Images (model layout and range), their objective record, and the settings that made them."""

    images: np.ndarray  # (n, *input shape without batch), final images
    values: np.ndarray  # (n,) objective of the final images, shown untransformed
    history: np.ndarray  # (steps, n) objective per step, as optimized (randomly transformed)
    best_images: np.ndarray  # (n, ...) best-so-far image per unit (keras-vis) by history value
    best_values: np.ndarray  # (n,)
    best_steps: np.ndarray  # (n,) 0-based step of the best image
    labels: list[str]
    objectives: list[str]  # description of each image's objective
    frames: np.ndarray | None  # (frames, n, ...) snapshots when record_every > 0
    frame_steps: list[int]
    layout: str
    value_range: tuple[float, float]
    settings: dict[str, Any]
    seconds: float = 0.0
    #: (n, H, W) in [0, 1]: where each image's objective gradient accumulated over the steps (MACO's
    #: transparency map: where the feature lives); only for Fourier-prior (phase) runs
    transparency: np.ndarray | None = None

    @property
    def units(self) -> list[Any]:
        return list(self.settings.get("units") or [])

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready summary (no image data)."""
        return {"labels": self.labels, "objectives": self.objectives, "values": self.values.tolist(),
                "best_values": self.best_values.tolist(), "best_steps": self.best_steps.tolist(),
                "final_history": self.history[-1].tolist() if len(self.history) else [],
                "shape": list(self.images.shape), "layout": self.layout, "value_range": list(self.value_range),
                "seconds": self.seconds, "settings": self.settings}


# ----------------------------------------------------------------------------------- the engine
class Maximizer:
    """Activation maximization on one model, keeping one gradient session per layer across jobs
    (building a gradient graph takes ~0.5 s; a step on MNIST takes ~1 ms). Stateless between jobs
    apart from those sessions: ``run`` is a pure function of its arguments."""

    def __init__(self, model: onnx.ModelProto | str | bytes, *, gradient: str = "auto", providers: str = "auto",
                 input_name: str | None = None, input_range: Sequence[float] | None = None,
                 input_shape: Sequence[int] | None = None, modifier: str | None = None,
                 class_names: Any = None):
        from .graph import check_class_names, load_model

        if gradient not in ("auto", "graph", "fd"):
            raise OnnxvizError(f"unknown gradient method {gradient!r} (choose: auto, graph, fd)")
        self.model = load_model(model)
        #: labels of the output layer's units: ``class_names`` (a list, a names file or "a,b,c",
        #: as many as the output has units) over the metadata's ``onnxviz.class_names``
        self.class_names = None if class_names is None else check_class_names(self.model, class_names)
        #: the model's file, where ``prior="auto"`` looks for ``MODEL.prior.npz``
        self.source_path = Path(model) if isinstance(model, (str, os.PathLike)) else None
        self.gradient, self.providers, self.modifier = gradient, providers, modifier
        self.input = _image_input(self.model, input_name, input_range, input_shape)
        self._functions: dict[LayerRef, Any] = {}
        self._bound: dict[LayerRef, BoundLayer] = {}

    # -- layers ----------------------------------------------------------------------------------
    def bound(self, ref: LayerRef) -> BoundLayer:
        """The layer resolved on the model, its per-image shape found by a probe run."""
        if ref not in self._bound:
            fn = self.function(ref)
            probe = np.zeros((self.input.batch or 1, *self.input.shape), np.float32)
            probe += np.float32(self.input.value_range[0])
            shape = tuple(fn.forward(probe).shape[1:])
            self._bound[ref] = bind_layer(self.model, ref, shape=shape, class_names=self.class_names)
        return self._bound[ref]

    def function(self, ref: LayerRef, modifier: str | None | bool = False):
        """The :class:`~onnxviz.gradients.GradientFunction` of the layer's tensor (with the engine's
        modifier, or ``modifier`` when given)."""
        modifier = self.modifier if modifier is False else modifier
        key = (ref, modifier)
        if key not in self._functions:
            import warnings

            from .gradients import GradientFunction
            from .objectives import resolve_layer

            variant, tensor, _ = resolve_layer(self.model, ref)
            with warnings.catch_warnings(record=True) as caught:
                warnings.simplefilter("always")
                fn = GradientFunction(variant, tensor, input_name=self.input.name, method=self.gradient,
                                      providers=self.providers, modifier=modifier)
            for w in caught:  # re-emit (the FD fallback warning) from the caller's frame
                warnings.warn(w.message, w.category, stacklevel=4)
            self._functions[key] = fn
        return self._functions[key]

    def _rescue(self, ref: LayerRef):
        """A gradient for images whose true gradient is exactly zero (every ReLU on the path off:
        a "dead start"): the deconvnet rule passes positive cotangents through ReLUs whatever their
        input, pushing pre-activations up — lucid's remedy is the same idea ("redirected" ReLU
        gradients where nothing got through). ``None`` when unavailable (finite differences)."""
        fn = self.function(ref)
        if fn.method != "graph" or self.modifier is not None:
            return None
        try:
            return self.function(ref, "deconvnet")
        except OnnxvizError:
            return None

    def layer_size(self, layer: Any = None, logits: bool = True) -> int:
        """Units (dense) or channels (feature map) of a layer."""
        from .objectives import _ref

        return self.bound(_ref(layer, logits)).channels

    # -- jobs ------------------------------------------------------------------------------------
    def run(self, layer: Any = None, units: Any = None, *, objective: Objective | Sequence[Objective] | None = None,
            steps: int | None = None, lr: float | None = None, seed: int = 0,
            param: str | ImageParam | None = None, transforms: Sequence[Transform] | None = None,
            regularizers: Sequence[Regularizer] | None = None, mode: str | None = None,
            fill: float | None = None, settings: Settings | None = None, batch_size: int | None = None,
            callbacks: Sequence[Callable[[StepInfo], Any]] = (), record_every: int = 0,
            images_per_unit: int = 1, diversity_weight: float = 0.0, logits: bool = True,
            class_objective: str | None = None, prior: Any = "auto", prior_weight: float | None = None,
            start: np.ndarray | None = None) -> MaximizeResult:
        """See :func:`maximize`."""
        started = time.perf_counter()
        inp = self.input
        explicit_param = param is not None and not isinstance(param, str)
        if param is not None and not (isinstance(prior, str) and prior.lower() in ("auto", "none")) and prior is not None:
            raise OnnxvizError("give either a parameterization (param=) or a prior, not both")
        # a parameterization (given, or named) means no prior: "auto" finds none, any other was refused above
        used_prior: Prior | None = None if param is not None else resolve_prior(prior, self.model, self.source_path,
                                                                                 inp)
        origin = None if start is None else self.input.to_unit(start)
        if origin is not None and len(origin) != 1:
            raise OnnxvizError("feature accentuation starts from one image")
        base = settings or default_settings(inp.channels, inp.h, inp.w)
        if settings is None and (used_prior is not None or origin is not None):
            base = prior_settings(base, used_prior, accentuate=origin is not None)
        overrides = {k: v for k, v in dict(steps=steps, lr=lr, mode=mode, fill=fill, class_objective=class_objective,
                                           prior_weight=prior_weight).items() if v is not None}
        if transforms is not None:
            overrides["transforms"] = tuple(transforms)
        if regularizers is not None:
            overrides["regularizers"] = tuple(regularizers)
        if isinstance(param, str):
            overrides["param"] = param
        if overrides:
            base = replace(base, preset=f"{base.preset}+overrides", **overrides)
        cfg = base
        if not isinstance(seed, (int, np.integer)) or seed < 0:
            raise OnnxvizError(f"the seed must be an integer >= 0, not {seed!r}")
        if cfg.steps < 1:
            raise OnnxvizError("steps must be >= 1")
        if not 0 < cfg.lr < math.inf:
            raise OnnxvizError(f"the learning rate must be a finite number > 0, not {cfg.lr}")
        if batch_size is not None and batch_size < 1:
            raise OnnxvizError("batch size must be >= 1")
        if images_per_unit < 1:
            raise OnnxvizError("images per unit must be >= 1")

        # objectives: one per image group
        unit_list: list[int] | None = None
        from .objectives import _ref

        if cfg.class_objective not in CLASS_OBJECTIVES:
            raise OnnxvizError(f"unknown class objective {cfg.class_objective!r} "
                               f"(choose: {', '.join(CLASS_OBJECTIVES)})")
        ref = _ref(layer, logits)
        if objective is None and cfg.class_objective == "log_softmax" and ref.logits and \
                self.bound(ref).stripped in ("Softmax", "LogSoftmax"):
            ref = LayerRef(ref.key, True, log_softmax=True)
        if objective is None:
            unit_list = parse_units(units, self.layer_size(ref))
            objectives: list[Objective] = []
            for u in unit_list:
                o: Objective = unit(ref, u)
                if images_per_unit > 1:
                    o = o + diversity_weight * diversity(ref, images_per_unit) if diversity_weight else \
                        _Repeat(o, images_per_unit)
                objectives.append(o)
        else:
            objectives = [objective] if isinstance(objective, Objective) else list(objective)
            if not objectives:
                raise OnnxvizError("no objective given")
        refs = list(dict.fromkeys(r for o in objectives for r in o.layers()))
        bound = {r: self.bound(r) for r in refs}
        for o in objectives:  # validate indices now (one clear error, no optimization wasted)
            if _linear_of(o) is not None:
                _linear_of(o).cotangents(bound)
        sizes = [o.images or 1 for o in objectives]
        n = sum(sizes)
        # each image's randomness (start, transforms) is its own: keyed by (unit, repeat, image in
        # group) for units, by position for objectives — so a unit gets the same image alone, in a
        # batch, or in another job (DESIGN principle 9)
        keys: list[tuple[int, ...]] = []
        seen_units: dict[int, int] = {}
        for gi, size in enumerate(sizes):
            if unit_list is not None:
                u = unit_list[gi]
                rep = seen_units[u] = seen_units.get(u, -1) + 1
                keys.extend((1, u, rep, j) for j in range(size))
            else:
                keys.extend((0, len(keys) + j) for j in range(size))
        starts = np.cumsum([0] + sizes)
        labels = _labels(objectives, unit_list, bound, ref, sizes)

        # parameterization: given, the prior's, an offset from the start image, or by name
        if explicit_param:
            prm = param
        elif used_prior is not None:
            prm = used_prior.param(origin=origin)
        elif origin is not None:
            prm = PixelOffsetParam(origin[0])
        else:
            prm = image_param(cfg.param, inp.channels, inp.h, inp.w, decay=cfg.decay,
                              **({"init_std": cfg.init_std} if cfg.init_std is not None else {}))
        if (prm.channels, prm.h, prm.w) != (inp.channels, inp.h, inp.w):
            raise OnnxvizError(f"the parameterization makes {prm.channels}x{prm.h}x{prm.w} images; the model "
                               f"takes {inp.channels}x{inp.h}x{inp.w}")
        pipeline = Pipeline(cfg.transforms, mode=cfg.mode, fill=cfg.fill, out_size=(inp.h, inp.w))

        # chunks of whole groups
        limit = batch_size or self._auto_batch_size(refs)
        if inp.batch is not None:  # an export with a static batch (of 1): one image per run
            if inp.batch != 1 or max(sizes) > 1:
                raise OnnxvizError(f"the model's input has a static batch of {inp.batch}; re-export it with a "
                                   "dynamic batch dimension (or batch 1 for one image per run)")
            limit = 1
        chunks: list[list[int]] = [[]]
        for gi, size in enumerate(sizes):
            if chunks[-1] and sum(sizes[j] for j in chunks[-1]) + size > limit:
                chunks.append([])
            chunks[-1].append(gi)

        history = np.zeros((cfg.steps, n))
        final = np.zeros((n, inp.channels, inp.h, inp.w))
        best = np.zeros_like(final)
        best_values = np.full(n, -np.inf)
        best_steps = np.zeros(n, np.int64)
        rescued = np.zeros(n, np.int64)
        alpha = np.zeros((n, inp.h, inp.w)) if getattr(prm, "transparency", False) else None
        frame_steps = [s for s in range(cfg.steps) if record_every and s % record_every == 0]
        if record_every:
            frame_steps.append(cfg.steps)
        frames = np.zeros((len(frame_steps), n, inp.channels, inp.h, inp.w)) if record_every else None

        for ci, groups in enumerate(chunks):
            lo_i, hi_i = int(starts[groups[0]]), int(starts[groups[-1] + 1])
            members = [(objectives[g], slice(int(starts[g]) - lo_i, int(starts[g + 1]) - lo_i)) for g in groups]
            rngs = [np.random.default_rng([seed, *keys[i]]) for i in range(lo_i, hi_i)]
            params = np.concatenate([prm.init(r, 1) for r in rngs])
            out = self._optimize(members, bound, params, prm, pipeline, cfg, rngs, hi_i - lo_i, callbacks,
                                 ci, len(chunks), slice(lo_i, hi_i), started, record_every)
            history[:, lo_i:hi_i] = out["history"]
            final[lo_i:hi_i] = out["final"]
            if alpha is not None:
                alpha[lo_i:hi_i] = out["alpha"]
            best[lo_i:hi_i] = out["best"]
            best_values[lo_i:hi_i] = out["best_values"]
            best_steps[lo_i:hi_i] = out["best_steps"]
            rescued[lo_i:hi_i] = out["rescued"]
            if frames is not None:
                frames[:, lo_i:hi_i] = out["frames"]

        # the final images, shown as they are (no transform)
        values = np.zeros(n)
        for ci, groups in enumerate(chunks):
            lo_i, hi_i = int(starts[groups[0]]), int(starts[groups[-1] + 1])
            members = [(objectives[g], slice(int(starts[g]) - lo_i, int(starts[g + 1]) - lo_i)) for g in groups]
            xm = inp.to_model(final[lo_i:hi_i])
            acts = {r: self.function(r).forward(xm) for r in refs}
            values[lo_i:hi_i] = _evaluate(members, acts, bound, hi_i - lo_i)[0]

        record = {
            "layer": ref.key if objective is None else None, "tensors": {str(r): bound[r].tensor for r in refs},
            "units": unit_list, "objectives": [o.describe() for o in objectives], "images": n, "seed": seed,
            **cfg.describe(), "param": prm.describe(), "batch_size": limit, "chunks": len(chunks),
            "gradient": {str(r): self.function(r).method for r in refs}, "modifier": self.modifier,
            "input": {"name": inp.name, "layout": inp.layout, "shape": list(inp.shape),
                      "range": list(inp.value_range)},
            "images_per_unit": images_per_unit, "diversity_weight": diversity_weight,
            "read_as": "log_softmax" if ref.log_softmax else ("logit" if bound[ref].stripped and ref.logits
                                                               else "activation") if objective is None else None,
            "rescued_steps": rescued.tolist(),
            "prior": None if used_prior is None else used_prior.describe(),
        }
        if origin is not None:
            record["accentuation"] = _accentuation_record(origin, final, used_prior)
        try:
            from . import __version__

            record["onnxviz"] = __version__
        except ImportError:  # pragma: no cover
            pass
        to_model = lambda a: inp.to_model(a).reshape((len(a),) + inp.shape)  # noqa: E731
        return MaximizeResult(
            images=to_model(final), values=values, history=history, best_images=to_model(best),
            best_values=best_values, best_steps=best_steps, labels=labels,
            objectives=[o.describe() for o in objectives for _ in range(o.images or 1)],
            frames=None if frames is None else np.stack([to_model(f) for f in frames]),
            transparency=None if alpha is None else alpha / np.maximum(alpha.max(axis=(1, 2), keepdims=True), 1e-30),
            frame_steps=frame_steps, layout=inp.layout, value_range=inp.value_range, settings=record,
            seconds=time.perf_counter() - started)

    def _auto_batch_size(self, refs: Sequence[LayerRef]) -> int:
        """How many images fit in ``AUTO_BATCH_BYTES`` of activations (forward + backward)."""
        from .graphview import value_types

        per_image = 0
        for r in refs:
            fn = self.function(r)
            for elem, shape in value_types(fn.model).values():
                if shape and len(shape) >= 2 and not isinstance(shape[0], int):
                    per_image += int(np.prod([d for d in shape[1:] if isinstance(d, int)])) * 4
        per_image = max(per_image * 2, 4 * int(np.prod(self.input.shape)))
        return int(max(1, min(4096, AUTO_BATCH_BYTES // per_image)))

    def _optimize(self, members, bound, params, prm, pipeline, cfg, rngs, b, callbacks, ci, nchunks,
                  where, started, record_every):
        inp = self.input
        job = _Step(self, members, bound, prm, cfg.regularizers, cfg.relative_regularizers,
                    prior_weight=cfg.prior_weight, ceiling=cfg.objective_ceiling)
        opt = Adam(cfg.lr)
        history = np.zeros((cfg.steps, b))
        best = np.zeros((b, inp.channels, inp.h, inp.w))
        best_values = np.full(b, -np.inf)
        best_steps = np.zeros(b, np.int64)
        frames = []
        alpha = np.zeros((b, inp.h, inp.w)) if getattr(prm, "transparency", False) else None
        warps: list = []
        # warps are realized a few steps at a time (one vectorized pass, tables of ~2 MB: cache-sized)
        block = max(1, (1 << 21) // (64 * b * inp.h * inp.w))
        for step in range(cfg.steps):
            warp = None
            if not pipeline.identity:
                if not warps:
                    warps = pipeline.realize_many(rngs, inp.channels, (inp.h, inp.w),
                                                  min(block, cfg.steps - step))[::-1]
                warp = warps.pop()
            values, grad, x = job(params, warp)
            if alpha is not None:
                alpha += np.abs(job.image_grad).sum(axis=1)
            if record_every and step % record_every == 0:
                frames.append(x.copy())
            history[step] = values
            better = values > best_values
            if better.any():
                best[better] = x[better]
                best_values[better] = values[better]
                best_steps[better] = step
            opt.ascend(params, grad)
            prm.project(params)
            if callbacks:
                info = StepInfo(step + 1, cfg.steps, ci, nchunks, where, values, time.perf_counter() - started)
                for cb in callbacks:
                    cb(info)
        x = prm.forward(params)
        if record_every:
            frames.append(x.copy())
        return {"history": history, "final": x, "best": best, "best_values": best_values,
                "best_steps": best_steps, "rescued": job.rescued,
                "frames": np.stack(frames, axis=0) if record_every else None, "alpha": alpha}

    def step_gradient(self, objectives: Objective | Sequence[Objective], params: np.ndarray, param: ImageParam,
                 warp: Any = None, regularizers: Sequence[Regularizer] = (), relative: bool = False,
                 rescue: bool = False) -> tuple[np.ndarray, np.ndarray]:
        """One step's ascent direction, exposed for checking: (objective per image, gradient w.r.t.
        ``params`` of ``sum(objective) - sum(regularizers)``) for images ``param.forward(params)``
        seen through ``warp``. With ``relative=False`` regularizer weights are absolute."""
        objectives = [objectives] if isinstance(objectives, Objective) else list(objectives)
        refs = list(dict.fromkeys(r for o in objectives for r in o.layers()))
        bound = {r: self.bound(r) for r in refs}
        members, k = [], 0
        for o in objectives:
            members.append((o, slice(k, k + (o.images or 1))))
            k += o.images or 1
        job = _Step(self, members, bound, param, regularizers, relative, rescue=rescue)
        values, grad, _ = job(params, warp)
        return values, grad


class _Step:
    """What one optimization step computes for a chunk of images: the objective of the images the
    model sees and the exact gradient of ``sum(objective) - sum(regularizers)`` w.r.t. the
    parameters, through the parameterization, the warp, the value range and layout.

    Linear objectives run ONE onnxruntime call per layer (the cotangent is a constant, built here
    once); nonlinear ones a forward run first. Images whose gradient is exactly zero (a dead ReLU
    start) get the rescue gradient (see ``Maximizer._rescue``) when ``rescue``.
    """

    def __init__(self, engine: Maximizer, members, bound, prm: ImageParam, regularizers, relative: bool,
                 rescue: bool = True, prior_weight: float = 0.0, ceiling: float | None = None):
        self.engine, self.members, self.bound, self.prm = engine, members, bound, prm
        self.regularizers, self.relative, self.rescue = tuple(regularizers), relative, rescue
        self.b = b = members[-1][1].stop if members else 0
        self.refs = list(dict.fromkeys(r for o, _ in members for r in o.layers()))
        self.fns = {r: engine.function(r) for r in self.refs}
        self.linear = all(_linear_of(o) is not None for o, _ in members)
        self.cots: dict[LayerRef, np.ndarray] = {}
        if self.linear:
            self.cots = {r: np.zeros((b, *bound[r].shape), np.float32) for r in self.refs}
            self.const = np.zeros(b)
            for o, s in members:
                lin = _linear_of(o)
                for r, c in lin.cotangents(bound).items():
                    self.cots[r][s] += c
                self.const[s] += lin.constant
            self.flat_cots = {r: c.reshape(b, -1).astype(np.float64) for r, c in self.cots.items()}
        self.reg_scale = np.zeros(b) if relative else np.ones(b)
        self.prior_weight = float(prior_weight)
        self.ceiling = ceiling
        self.prior_scale = np.zeros(b) if relative else np.ones(b)
        self.rescued = np.zeros(b, np.int64)

    def __call__(self, params: np.ndarray, warp: Any) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """(objective per image, gradient w.r.t. params, the images in [0, 1] (B, C, H, W))."""
        inp, b, prm = self.engine.input, self.b, self.prm
        pre = prm.pre_squash(params)
        x = prm.squash.forward(pre)
        seen = warp.apply(x) if warp is not None else x
        xm = inp.to_model(seen)
        grad_in = None
        if self.linear:
            cots = self.cots
            values = self.const.copy()
            for r in self.refs:
                act, g = self.fns[r](xm, cots[r])
                values += np.einsum("bi,bi->b", act.reshape(b, -1), self.flat_cots[r])
                grad_in = g if grad_in is None else grad_in + g
        else:
            acts = {r: self.fns[r].forward(xm) for r in self.refs}
            values, cots = _evaluate(self.members, acts, self.bound, b)
            for r in self.refs:
                _, g = self.fns[r](xm, cots[r].astype(np.float32))
                grad_in = g if grad_in is None else grad_in + g
        if self.rescue:
            dead = ~np.any(grad_in.reshape(b, -1), axis=1)
            if dead.any():
                grad_in = self._rescued(xm, dead, grad_in, cots)
                self.rescued += dead
        if self.ceiling is not None:
            done = values >= self.ceiling
            if done.any():
                grad_in = grad_in * ~done.reshape((b,) + (1,) * (grad_in.ndim - 1))
        gx = inp.from_model_grad(grad_in)
        if warp is not None:
            gx = warp.adjoint(gx)
        if getattr(prm, "transparency", False):
            self.image_grad = gx.copy()  # before the regularizers
        if self.regularizers:
            if self.relative and not self.reg_scale.all():
                # relative weights: fixed at the first step where the image's objective gradient
                # is nonzero, so a weight means the same for a logit (~10) and a channel mean (~0.1)
                self.reg_scale = _fill_scale(self.reg_scale, gx)
            scale = self.reg_scale.reshape(b, 1, 1, 1)
            for reg in self.regularizers:
                _, gr = reg.value_and_grad(x)
                gx -= scale * gr
        gp = prm.vjp(params, gx, pre, x)
        penalty = getattr(prm, "penalty", None)
        if penalty is not None and self.prior_weight:
            term = penalty(params)
            if term is not None:
                if not self.prior_scale.all():  # relative, like the image regularizers
                    self.prior_scale = _fill_scale(self.prior_scale, gp)
                gp -= (self.prior_weight * self.prior_scale).reshape((b,) + (1,) * (gp.ndim - 1)) * term[1]
        return values, gp, x

    def _rescued(self, xm, dead, grad_in, cots):
        """``grad_in`` with the rows of ``dead`` images replaced by the rescue gradient."""
        idx = np.flatnonzero(dead)
        extra = None
        for r in self.refs:
            fn = self.engine._rescue(r)
            if fn is None:
                return grad_in
            _, g = fn(xm[idx], np.ascontiguousarray(cots[r][idx], dtype=np.float32))
            extra = g if extra is None else extra + g
        grad_in = grad_in.copy()
        grad_in[idx] = extra
        return grad_in


class _Repeat(Objective):
    """The same per-image objective on a group of k images (several images of one unit, without a
    diversity term: they differ only by their random start and transforms)."""

    def __init__(self, inner: Objective, k: int):
        self.inner, self.images, self.linear = inner, int(k), inner.linear

    def layers(self):
        return self.inner.layers()

    def evaluate(self, acts, bound):
        return self.inner.evaluate(acts, bound)

    def describe(self):
        return self.inner.describe()


def _evaluate(members, acts: Mapping[LayerRef, np.ndarray], bound, b: int):
    """Values (b,) and cotangents per layer (b, ...) of a chunk's objectives."""
    values = np.zeros(b)
    cots = {r: np.zeros_like(a, dtype=np.float32) for r, a in acts.items()}
    for o, s in members:
        sub = {r: a[s] for r, a in acts.items()}
        v, g = o.evaluate(sub, bound)
        values[s] = v
        for r, arr in g.items():
            cots[r][s] += arr
    return values, cots


def _fill_scale(scale: np.ndarray, grad: np.ndarray) -> np.ndarray:
    """Per-image scale of a relative penalty: kept where already set, else the objective gradient's
    norm times sqrt(values per image) (a penalty gradient of ``weight / n`` per value then weighs
    ``weight`` times the objective's RMS gradient)."""
    norms = np.sqrt(np.sum(grad.reshape(len(grad), -1) ** 2, axis=1) * grad[0].size)
    return np.where(scale > 0, scale, norms)


def prior_settings(base: Settings, prior: Prior | None, accentuate: bool = False) -> Settings:
    """The preset's settings adapted to a prior (its penalty replaces the image regularizers) or to
    feature accentuation (class units read as log p_k, so that the target's probability rises)."""
    changes: dict[str, Any] = {"regularizers": ()}
    if isinstance(prior, GaussianPrior) and not accentuate:  # accentuation keeps the preset's smaller steps
        changes["lr"] = PRIOR_LR
    if accentuate:
        pad = next((t.n for t in base.transforms if isinstance(t, Pad)), 2)
        changes.update(class_objective="log_softmax", objective_ceiling=math.log(ACCENTUATE_TO),
                       prior_weight=ACCENTUATE_WEIGHT, transforms=(Pad(pad), Jitter(pad)))
    tag = "+prior" if prior is not None else ""
    return replace(base, preset=base.preset + tag + ("+accentuate" if accentuate else ""), **changes)


def _accentuation_record(origin: np.ndarray, final: np.ndarray, prior: Prior | None) -> dict[str, Any]:
    """How far each accentuated image moved from its start: pixel RMS and L2 in the unit range,
    and the whitened distance under a Gaussian prior."""
    d = (final - origin).reshape(len(final), -1)
    out: dict[str, Any] = {"pixel_rms": np.sqrt(np.mean(d * d, axis=1)).tolist(),
                           "pixel_l2": np.linalg.norm(d, axis=1).tolist()}
    if isinstance(prior, GaussianPrior):
        dz = prior.encode(final) - prior.encode(origin)
        out["prior_distance"] = np.sqrt(np.mean(dz * dz, axis=1)).tolist()
    return out


def _labels(objectives, unit_list, bound, ref, sizes) -> list[str]:
    out: list[str] = []
    if unit_list is not None:
        names = bound[ref].class_names
        for u, size in zip(unit_list, sizes):
            label = names[u] if names and u < len(names) else str(u)
            out.extend([label] * size)
        return out
    for o, size in zip(objectives, sizes):
        out.extend([o.describe()] * size)
    return out


def _linear_of(o: Objective) -> LinearObjective | None:
    """The linear objective behind ``o`` (itself, or repeated over a group), else None."""
    if isinstance(o, LinearObjective):
        return o
    if isinstance(o, _Repeat) and isinstance(o.inner, LinearObjective):
        return o.inner
    return None


def maximize(model: onnx.ModelProto | str | bytes, layer: Any = None, units: Any = None, *,
             objective: Objective | Sequence[Objective] | None = None, steps: int | None = None,
             lr: float | None = None, seed: int = 0, param: str | ImageParam | None = None,
             transforms: Sequence[Transform] | None = None, regularizers: Sequence[Regularizer] | None = None,
             mode: str | None = None, fill: float | None = None, settings: Settings | None = None,
             batch_size: int | None = None, callbacks: Sequence[Callable[[StepInfo], Any]] = (),
             gradient: str = "auto", input_range: Sequence[float] | None = None, input_name: str | None = None,
             input_shape: Sequence[int] | None = None, providers: str = "auto", record_every: int = 0,
             images_per_unit: int = 1, diversity_weight: float = 0.0, logits: bool = True,
             class_objective: str | None = None, modifier: str | None = None, prior: Any = "auto",
             prior_weight: float | None = None, start: np.ndarray | None = None,
             class_names: Any = None) -> MaximizeResult:
    """Images that maximize ``units`` of ``layer`` (default: every unit of the output layer), or any
    ``objective`` (one per image group). The output layer's images are labelled with
    ``class_names`` (a list, a file with one name per line or a JSON list, or ``"a,b,c"``), else
    with the metadata's ``onnxviz.class_names``, else with the unit indices.

    Units of a layer ending in softmax are read on its logits (``to_logits``). ``class_objective``
    says what is maximized there: ``"logit"``, the bare logit z_k (keras-vis, tf-keras-vis, Simonyan
    et al. 2014; the small-image default: bold, digit-like strokes on MNIST), or ``"log_softmax"``,
    log p_k computed from the logits by a LogSoftmax node put in place of the softmax (the
    large-image default) — it builds the evidence for class k that the other classes do not share,
    and unlike p_k its gradient does not vanish while p_k is small. Both are linear objectives of one
    tensor: one onnxruntime run per step. On shapes_cnn, where classes share features (the "triangle"
    evidence drives every triangle logit), bare logits give images the model files under another
    class (p < 0.01 for some); log p_k does not. ``logits=False`` keeps the activation.

    Returns a :class:`MaximizeResult`: ``images`` of shape ``(units, *input shape without batch)`` in
    the model's own layout and value range, the objective per step per image, best-so-far images,
    and a JSON-ready ``settings`` record. Settings left ``None`` come from :func:`default_settings`
    for the input kind. ``batch_size`` caps the images per onnxruntime run (automatic: what fits in
    1 GiB of activations); ``callbacks`` get a :class:`StepInfo` after each step; ``gradient``
    ``auto|graph|fd`` as in :class:`~onnxviz.gradients.GradientFunction`; ``record_every`` keeps a
    snapshot every so many steps (for a GIF). Same seed, same images.

    ``prior``: an image prior (:mod:`onnxviz.priors`) — a path, a prior object, ``None`` for none,
    or ``"auto"`` (default): ``MODEL.prior.npz`` beside a model given as a file path. The prior's
    parameterization replaces ``param`` and its penalty (weight ``prior_weight``, relative) the
    preset's image regularizers. ``start``: one image (model layout and range) to begin from —
    feature accentuation (Hamblin et al. 2024): the image changes as little as the prior's distance
    (or pixel L2 without a prior) allows while the units rise; ``settings["accentuation"]`` records
    how far each image moved.
    """
    engine = Maximizer(model, gradient=gradient, providers=providers, input_name=input_name,
                       input_range=input_range, input_shape=input_shape, modifier=modifier,
                       class_names=class_names)
    return engine.run(layer, units, objective=objective, steps=steps, lr=lr, seed=seed, param=param,
                      transforms=transforms, regularizers=regularizers, mode=mode, fill=fill, settings=settings,
                      batch_size=batch_size, callbacks=callbacks, record_every=record_every,
                      images_per_unit=images_per_unit, diversity_weight=diversity_weight, logits=logits,
                      class_objective=class_objective, prior=prior, prior_weight=prior_weight, start=start)


def first_conv_layer(model: onnx.ModelProto) -> str | None:
    """The tensor of the first convolution layer, after its activation when the conv feeds exactly
    one elementwise activation (a Keras ``Conv2D(activation="relu")`` layer's output); ``None`` when
    the model has no Conv."""
    conv = next((n for n in model.graph.node if n.op_type == "Conv"), None)
    if conv is None:
        return None
    tensor = conv.output[0]
    readers = [n for n in model.graph.node if tensor in n.input]
    if len(readers) == 1 and readers[0].op_type in ACTIVATIONS and readers[0].input[0] == tensor:
        return readers[0].output[0]
    return tensor
