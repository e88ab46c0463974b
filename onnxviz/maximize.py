"""Activation maximization: find input images that drive chosen units of a trained network.

One job is a pure function — ``maximize(model, layer, units, settings..., seed) -> MaximizeResult``
— with no global state (DESIGN principle 9): the same seed gives the same images, and each image
draws its randomness from its own generator (``seed``, unit), so a unit's image does not depend on
the other units of the job or on how they are split into batches.

A step, for a batch of images (one per unit, or a group per diversity objective):

    parameters --param--> image in [0,1] (B,C,H,W) --random warp--> model range & layout
        --ONE onnxruntime run of the gradient model (objective compiled to a constant cotangent)-->
    input gradient --adjoint of warp--> minus regularizer gradients --param VJP--> Adam ascent

This module holds the loop (:class:`Maximizer`, ``_Step``) and the entry points; the recipes are in
:mod:`onnxviz.presets`, unit parsing in :mod:`onnxviz.units`, the optimizer in
:mod:`onnxviz.optimizer`, the result types in :mod:`onnxviz.results` (all re-exported here).
"""

from __future__ import annotations

import math
import os
import time
import warnings
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, Callable, Mapping, Sequence

import numpy as np
import onnx

from .errors import OnnxvizError
from .gradients import GradientFunction
from .graph import check_class_names, conv_layers, load_model
from .graphview import value_types
from .images import model_input
from .objectives import (BoundLayer, LayerRef, LinearObjective, Objective, layer_ref, bind_layer, diversity,
                         resolve_layer, unit)
from .optimizer import Adam
from .params import ImageParam, image_param
from .presets import (ACCENTUATE_TO, ACCENTUATE_WEIGHT, CLASS_OBJECTIVES, PRIOR_LR, Settings,  # noqa: F401
                      default_settings, prior_settings)
from .priors import GaussianPrior, PixelOffsetParam, Prior, resolve_prior
from .regularizers import Regularizer
from .results import MaximizeResult, StepInfo
from .transforms import Pipeline, Transform
from .units import MAX_UNITS, parse_units  # noqa: F401
from .version import __version__

__all__ = [
    "maximize", "Maximizer", "MaximizeResult", "StepInfo", "Settings", "default_settings", "parse_units",
    "Adam", "first_conv_layer",
]

#: Memory a batch of activations may take when ``batch_size`` is automatic.
AUTO_BATCH_BYTES = 1 << 30


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
    spec = model_input(model, input_name, input_shape, input_range, allow_flat=True)
    return _Input(spec.name, spec.layout, spec.shape, spec.channels, spec.height, spec.width, spec.value_range,
                  spec.batch)


# ----------------------------------------------------------------------------------- a job's plan
@dataclass
class _Plan:
    """What a job optimizes: one objective per image group, the layers they read, and each image's
    random-stream key and label."""

    objectives: list[Objective]
    unit_list: list[int] | None  # the units, when the job maximizes units of one layer
    ref: LayerRef  # the layer named by ``layer`` (read as log-softmax where the settings say so)
    refs: list[LayerRef]  # every layer the objectives read
    bound: dict[LayerRef, BoundLayer]
    sizes: list[int]  # images per group
    keys: list[tuple[int, ...]]  # per image, see _image_keys
    labels: list[str]  # per image

    def __post_init__(self):
        self.n = sum(self.sizes)
        self.starts = np.cumsum([0] + self.sizes)

    def span(self, groups: Sequence[int]) -> tuple[int, int, list[tuple[Objective, slice]]]:
        """The images ``lo:hi`` of consecutive ``groups``, and each group's objective with its slice of them."""
        lo, hi = int(self.starts[groups[0]]), int(self.starts[groups[-1] + 1])
        members = [(self.objectives[g], slice(int(self.starts[g]) - lo, int(self.starts[g + 1]) - lo)) for g in groups]
        return lo, hi, members


def _image_keys(sizes: Sequence[int], unit_list: Sequence[int] | None) -> list[tuple[int, ...]]:
    """Each image's random-stream key: (unit, repeat of the unit, image in group) for units, the
    position for objectives — so a unit gets the same image alone, in a batch, or in another job
    (DESIGN principle 9)."""
    keys: list[tuple[int, ...]] = []
    seen_units: dict[int, int] = {}
    for gi, size in enumerate(sizes):
        if unit_list is not None:
            u = unit_list[gi]
            rep = seen_units[u] = seen_units.get(u, -1) + 1
            keys.extend((1, u, rep, j) for j in range(size))
        else:
            keys.extend((0, len(keys) + j) for j in range(size))
    return keys


@dataclass
class _Trace:
    """What optimizing a set of images leaves, per image (unit range, (C, H, W) images)."""

    history: np.ndarray  # (steps, n) objective per step, as optimized
    final: np.ndarray  # (n, C, H, W)
    best: np.ndarray  # (n, C, H, W) best-so-far by history value
    best_values: np.ndarray  # (n,)
    best_steps: np.ndarray  # (n,) 0-based
    rescued: np.ndarray  # (n,) steps that used the rescue gradient
    frames: np.ndarray | None  # (frames, n, C, H, W) when recording
    alpha: np.ndarray | None  # (n, H, W) accumulated |objective gradient| when mapping transparency
    frame_steps: list[int] = field(default_factory=list)  # the step of each frame

    @classmethod
    def empty(cls, steps: int, n: int, c: int, h: int, w: int, frame_steps: list[int],
              transparency: bool) -> "_Trace":
        """Room for ``n`` images optimized for ``steps`` steps, snapshots at ``frame_steps``."""
        final = np.zeros((n, c, h, w))
        return cls(np.zeros((steps, n)), final, np.zeros_like(final), np.full(n, -np.inf), np.zeros(n, np.int64),
                   np.zeros(n, np.int64), np.zeros((len(frame_steps), n, c, h, w)) if frame_steps else None,
                   np.zeros((n, h, w)) if transparency else None, frame_steps)

    def put(self, lo: int, hi: int, part: "_Trace") -> None:
        """Write a chunk's trace into images ``lo:hi``."""
        self.history[:, lo:hi] = part.history
        self.final[lo:hi] = part.final
        if self.alpha is not None:
            self.alpha[lo:hi] = part.alpha
        self.best[lo:hi] = part.best
        self.best_values[lo:hi] = part.best_values
        self.best_steps[lo:hi] = part.best_steps
        self.rescued[lo:hi] = part.rescued
        if self.frames is not None:
            self.frames[:, lo:hi] = part.frames


def _frame_steps(steps: int, record_every: int) -> list[int]:
    """The steps a recording snapshots: every ``record_every``-th, and ``steps`` (the final image); none
    when ``record_every`` is 0."""
    frame_steps = [s for s in range(steps) if record_every and s % record_every == 0]
    if record_every:
        frame_steps.append(steps)
    return frame_steps


def _maps_transparency(prm: ImageParam) -> bool:
    """Whether a job with ``prm`` accumulates MACO's transparency map: a parameterization asks for
    it with ``transparency = True`` (a Fourier prior's phase parameterization does)."""
    return bool(getattr(prm, "transparency", False))


def _check_job(cfg: Settings, seed: Any, batch_size: int | None, images_per_unit: int) -> None:
    """Refuse a job whose numbers cannot run, before anything is built."""
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


# ----------------------------------------------------------------------------------- the engine
class Maximizer:
    """Activation maximization on one model, keeping one gradient session per layer across jobs
    (building a gradient graph costs far more than a step). Stateless between jobs apart from those
    sessions: ``run`` is a pure function of its arguments."""

    def __init__(self, model: onnx.ModelProto | str | bytes, *, gradient: str = "auto", providers: str = "auto",
                 input_name: str | None = None, input_range: Sequence[float] | None = None,
                 input_shape: Sequence[int] | None = None, modifier: str | None = None,
                 class_names: Any = None):
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
        return self.bound(layer_ref(layer, logits)).channels

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
        used_prior, origin = self._prior_and_start(param, prior, start)
        cfg = self._settings(settings, used_prior, origin, steps=steps, lr=lr, param=param, transforms=transforms,
                             regularizers=regularizers, mode=mode, fill=fill, class_objective=class_objective,
                             prior_weight=prior_weight)
        _check_job(cfg, seed, batch_size, images_per_unit)
        plan = self._plan(layer, units, objective, cfg, images_per_unit, diversity_weight, logits)
        prm = self._parameterization(param, used_prior, origin, cfg)
        pipeline = Pipeline(cfg.transforms, mode=cfg.mode, fill=cfg.fill, out_size=(inp.h, inp.w))
        limit, chunks = self._chunks(plan, batch_size)
        trace = self._optimize_all(plan, chunks, prm, pipeline, cfg, seed, callbacks, record_every, started)
        values = self._final_values(plan, chunks, trace.final)
        record = self._record(plan, cfg, prm, used_prior, origin, trace, seed=seed, batch_size=limit,
                              chunks=len(chunks), of_units=objective is None, images_per_unit=images_per_unit,
                              diversity_weight=diversity_weight)
        return self._result(plan, trace, values, record, started)

    def _prior_and_start(self, param, prior, start) -> tuple[Prior | None, np.ndarray | None]:
        """The job's prior (none when a parameterization is given) and its start image as a
        (1, C, H, W) unit-range batch (feature accentuation), or None."""
        if param is not None and not (isinstance(prior, str) and prior.lower() in ("auto", "none")) and prior is not None:
            raise OnnxvizError("give either a parameterization (param=) or a prior, not both")
        # a parameterization (given, or named) means no prior: "auto" finds none, any other was refused above
        used_prior = None if param is not None else resolve_prior(prior, self.model, self.source_path, self.input)
        origin = None if start is None else self.input.to_unit(start)
        if origin is not None and len(origin) != 1:
            raise OnnxvizError("feature accentuation starts from one image")
        return used_prior, origin

    def _settings(self, settings: Settings | None, used_prior: Prior | None, origin: np.ndarray | None, *,
                  param, transforms, regularizers, **scalars) -> Settings:
        """The job's settings: ``settings``, else the input kind's preset adapted to the prior or
        start image; then every argument given explicitly (``scalars`` left None are not)."""
        inp = self.input
        base = settings or default_settings(inp.channels, inp.h, inp.w)
        if settings is None and (used_prior is not None or origin is not None):
            base = prior_settings(base, used_prior, accentuate=origin is not None)
        overrides = {k: v for k, v in scalars.items() if v is not None}
        if transforms is not None:
            overrides["transforms"] = tuple(transforms)
        if regularizers is not None:
            overrides["regularizers"] = tuple(regularizers)
        if isinstance(param, str):
            overrides["param"] = param
        if overrides:
            base = replace(base, preset=f"{base.preset}+overrides", **overrides)
        return base

    def _plan(self, layer, units, objective, cfg: Settings, images_per_unit: int, diversity_weight: float,
              logits: bool) -> _Plan:
        """The objectives (``objective``, else one per unit of ``layer``: repeated or with a
        diversity term for several images per unit), validated on the model before any step."""
        if cfg.class_objective not in CLASS_OBJECTIVES:
            raise OnnxvizError(f"unknown class objective {cfg.class_objective!r} "
                               f"(choose: {', '.join(CLASS_OBJECTIVES)})")
        unit_list: list[int] | None = None
        ref = layer_ref(layer, logits)
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
        return _Plan(objectives, unit_list, ref, refs, bound, sizes, _image_keys(sizes, unit_list),
                     _labels(objectives, unit_list, bound, ref, sizes))

    def _parameterization(self, param, used_prior: Prior | None, origin: np.ndarray | None,
                          cfg: Settings) -> ImageParam:
        """The image parameterization: ``param`` when it is one, the prior's, an offset from the
        start image, or the one ``cfg.param`` names; it must make the model's C x H x W images."""
        inp = self.input
        if param is not None and not isinstance(param, str):
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
        return prm

    def _chunks(self, plan: _Plan, batch_size: int | None) -> tuple[int, list[list[int]]]:
        """(images per onnxruntime run, the groups of each chunk): whole groups, in order, up to the limit."""
        inp, sizes = self.input, plan.sizes
        limit = batch_size or self._auto_batch_size(plan.refs)
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
        return limit, chunks

    def _auto_batch_size(self, refs: Sequence[LayerRef]) -> int:
        """How many images fit in ``AUTO_BATCH_BYTES`` of activations (forward + backward)."""
        per_image = 0
        for r in refs:
            fn = self.function(r)
            for elem, shape in value_types(fn.model).values():
                if shape and len(shape) >= 2 and not isinstance(shape[0], int):
                    per_image += int(np.prod([d for d in shape[1:] if isinstance(d, int)])) * 4
        per_image = max(per_image * 2, 4 * int(np.prod(self.input.shape)))
        return int(max(1, min(4096, AUTO_BATCH_BYTES // per_image)))

    def _optimize_all(self, plan: _Plan, chunks: list[list[int]], prm: ImageParam, pipeline: Pipeline,
                      cfg: Settings, seed: int, callbacks, record_every: int, started: float) -> _Trace:
        """Every chunk optimized in turn, each image from its own generator ``(seed, *key)``."""
        inp = self.input
        transparency = _maps_transparency(prm)
        trace = _Trace.empty(cfg.steps, plan.n, inp.channels, inp.h, inp.w, _frame_steps(cfg.steps, record_every),
                             transparency)
        for ci, groups in enumerate(chunks):
            lo, hi, members = plan.span(groups)
            rngs = [np.random.default_rng([seed, *plan.keys[i]]) for i in range(lo, hi)]
            params = np.concatenate([prm.init(r, 1) for r in rngs])
            part = self._optimize(members, plan.bound, params, prm, pipeline, cfg, rngs, hi - lo, callbacks,
                                  ci, len(chunks), slice(lo, hi), started, record_every, transparency)
            trace.put(lo, hi, part)
        return trace

    def _optimize(self, members, bound, params, prm, pipeline, cfg, rngs, b, callbacks, ci, nchunks,
                  where, started, record_every, transparency: bool = False) -> _Trace:
        """One chunk's ``cfg.steps`` Adam steps from ``params``; warps drawn from ``rngs`` (one per image)."""
        inp = self.input
        job = _Step(self, members, bound, prm, cfg.regularizers, cfg.relative_regularizers,
                    prior_weight=cfg.prior_weight, ceiling=cfg.objective_ceiling, transparency=transparency)
        opt = Adam(cfg.lr)
        history = np.zeros((cfg.steps, b))
        best = np.zeros((b, inp.channels, inp.h, inp.w))
        best_values = np.full(b, -np.inf)
        best_steps = np.zeros(b, np.int64)
        frames = []
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
        return _Trace(history, x, best, best_values, best_steps, job.rescued,
                      np.stack(frames, axis=0) if record_every else None, job.alpha)

    def _final_values(self, plan: _Plan, chunks: list[list[int]], final: np.ndarray) -> np.ndarray:
        """The objective of the final images shown as they are (no transform)."""
        values = np.zeros(plan.n)
        for groups in chunks:
            lo, hi, members = plan.span(groups)
            xm = self.input.to_model(final[lo:hi])
            acts = {r: self.function(r).forward(xm) for r in plan.refs}
            values[lo:hi] = _evaluate(members, acts, plan.bound, hi - lo)[0]
        return values

    def _record(self, plan: _Plan, cfg: Settings, prm: ImageParam, used_prior: Prior | None,
                origin: np.ndarray | None, trace: _Trace, *, seed: int, batch_size: int, chunks: int,
                of_units: bool, images_per_unit: int, diversity_weight: float) -> dict[str, Any]:
        """The JSON-ready ``settings`` record of a job: what was optimized, and how."""
        inp, ref, bound, refs = self.input, plan.ref, plan.bound, plan.refs
        record = {
            "layer": ref.key if of_units else None, "tensors": {str(r): bound[r].tensor for r in refs},
            "units": plan.unit_list, "objectives": [o.describe() for o in plan.objectives], "images": plan.n,
            "seed": seed, **cfg.describe(), "param": prm.describe(), "batch_size": batch_size, "chunks": chunks,
            "gradient": {str(r): self.function(r).method for r in refs}, "modifier": self.modifier,
            "input": {"name": inp.name, "layout": inp.layout, "shape": list(inp.shape),
                      "range": list(inp.value_range)},
            "images_per_unit": images_per_unit, "diversity_weight": diversity_weight,
            "read_as": "log_softmax" if ref.log_softmax else ("logit" if bound[ref].stripped and ref.logits
                                                               else "activation") if of_units else None,
            "rescued_steps": trace.rescued.tolist(),
            "prior": None if used_prior is None else used_prior.describe(),
        }
        if origin is not None:
            record["accentuation"] = _accentuation_record(origin, trace.final, used_prior)
        try:

            record["onnxviz"] = __version__
        except ImportError:  # pragma: no cover
            pass
        return record

    def _result(self, plan: _Plan, trace: _Trace, values: np.ndarray, record: dict[str, Any],
                started: float) -> MaximizeResult:
        """The job's :class:`MaximizeResult`: images back in the model's layout and range."""
        inp, alpha = self.input, trace.alpha
        to_model = lambda a: inp.to_model(a).reshape((len(a),) + inp.shape)  # noqa: E731
        return MaximizeResult(
            images=to_model(trace.final), values=values, history=trace.history, best_images=to_model(trace.best),
            best_values=trace.best_values, best_steps=trace.best_steps, labels=plan.labels,
            objectives=[o.describe() for o in plan.objectives for _ in range(o.images or 1)],
            frames=None if trace.frames is None else np.stack([to_model(f) for f in trace.frames]),
            transparency=None if alpha is None else alpha / np.maximum(alpha.max(axis=(1, 2), keepdims=True), 1e-30),
            frame_steps=trace.frame_steps, layout=inp.layout, value_range=inp.value_range, settings=record,
            seconds=time.perf_counter() - started)

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
                 rescue: bool = True, prior_weight: float = 0.0, ceiling: float | None = None,
                 transparency: bool = False):
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
        #: (b, H, W): |objective gradient| w.r.t. the image summed over channels and steps, when ``transparency``
        self.alpha = np.zeros((b, engine.input.h, engine.input.w)) if transparency else None

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
        if self.alpha is not None:  # before the regularizers
            self.alpha += np.abs(gx).sum(axis=1)
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
    """Each image's label: its unit's class name (or index) for units, else its objective's description."""
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
    et al. 2014; the small-image default), or ``"log_softmax"``, log p_k computed from the logits by
    a LogSoftmax node put in place of the softmax (the large-image default) — it builds the evidence
    for class k that the other classes do not share (where classes share features, a bare logit's
    image can belong to another class), and unlike p_k its gradient does not vanish while p_k is
    small. Both are linear objectives of one tensor: one onnxruntime run per step. ``logits=False``
    keeps the activation.

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
    return next(iter(conv_layers(model, ("Conv",))), None)
