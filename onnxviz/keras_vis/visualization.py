"""keras-vis' ``vis.visualization`` on onnxviz: ``visualize_activation``, ``visualize_saliency``,
``visualize_cam``, ``overlay``, ``get_num_filters``.

Each function keeps keras-vis' name, argument names and return shape, and runs on onnxviz's own
machinery: activation maximization through :class:`onnxviz.Maximizer` (onnxviz's optimizer,
parameterization and transforms, keras-vis' weights mapped onto its regularizers), gradients
through :class:`onnxviz.gradients.GradientFunction` (the ONNX gradient graph, with the ``guided`` /
``deconvnet`` backprop modifiers). What each function computes on top of the gradient — the
channel maximum and [0, 1] normalisation of saliency, the channel-mean weights of Grad-CAM — follows
keras-vis' documented behaviour.

**What is maximized or explained** is the layer's output exactly as the (modified) model computes
it, as in keras-vis: a layer ending in softmax is its probabilities unless the tutorial's swap
``model.layers[idx].activation = activations.linear`` + ``utils.apply_modifications(model)`` made
it the logits. ``filter_indices``: an int or a list (several units are maximized or explained
together: the sum of their values), ``None`` for all; on a feature map a filter is the spatial mean
of that channel.
"""

from __future__ import annotations

import sys
from typing import Any, Callable, Sequence

import numpy as np

from ._model import (KerasVisError, KerasVisModel, LayerView, UnsupportedOptionError, as_model, is_keras_model,
                     to_hwc_image, to_model_batch)
from .input_modifiers import Jitter, is_keras_vis_jitter
from .utils import normalize

__all__ = ["visualize_activation", "visualize_saliency", "visualize_cam", "overlay", "get_num_filters",
           "BACKPROP_MODIFIERS", "GRAD_MODIFIERS", "TV_PER_KERAS_VIS_WEIGHT", "LP_PER_KERAS_VIS_WEIGHT"]

#: keras-vis backprop modifier -> onnxviz gradient-graph modifier. keras-vis' "rectified" (also
#: called "relu" and "deconv") passes only positive gradients through ReLUs whatever their input:
#: onnxviz's deconvnet rule.
BACKPROP_MODIFIERS = {None: None, "guided": "guided", "relu": "deconvnet", "rectified": "deconvnet",
                      "deconv": "deconvnet", "deconvnet": "deconvnet"}
#: keras-vis gradient modifiers (a callable ``grads -> grads`` works too).
GRAD_MODIFIERS = (None, "absolute", "relu", "negate", "invert", "small_values")
#: keras-vis' ``tv_weight`` -> onnxviz's relative TotalVariation weight: keras-vis' default 10 is
#: onnxviz's small-image default 0.1.
TV_PER_KERAS_VIS_WEIGHT = 0.01
#: keras-vis' ``lp_norm_weight`` -> onnxviz's relative L1 weight: keras-vis' default 10 is onnxviz's
#: small-image default 0.05.
LP_PER_KERAS_VIS_WEIGHT = 0.005
_EPS = 1e-7  # keras-vis' K.epsilon() in its "invert" gradient modifier


# ----------------------------------------------------------------------------------- shared
def _backprop(modifier: Any) -> str | None:
    key = modifier.strip().lower() if isinstance(modifier, str) else modifier
    if key not in BACKPROP_MODIFIERS:
        raise UnsupportedOptionError(f"unknown backprop_modifier {modifier!r} (choose: None, 'guided', 'relu' / "
                                     "'rectified' / 'deconv')")
    return BACKPROP_MODIFIERS[key]


def _grad_modifier(modifier: Any) -> Callable[[np.ndarray], np.ndarray]:
    if callable(modifier):
        return modifier
    key = modifier.strip().lower() if isinstance(modifier, str) else modifier
    if key is None:
        return lambda g: g
    if key == "absolute":
        return np.abs
    if key == "relu":
        return lambda g: np.maximum(g, 0.0)
    if key == "negate":
        return np.negative
    if key == "invert":
        return lambda g: 1.0 / (g + _EPS)
    if key == "small_values":
        return lambda g: np.abs(1.0 / (g + _EPS))
    raise UnsupportedOptionError(f"unknown grad_modifier {modifier!r} (choose: "
                                 f"{', '.join(repr(m) for m in GRAD_MODIFIERS)}, or a function)")


def _no_wrt(wrt_tensor: Any) -> None:
    if wrt_tensor is not None:
        raise UnsupportedOptionError("wrt_tensor is not supported: gradients are taken w.r.t. the model input "
                                     "(visualize_cam takes penultimate_layer_idx for a layer's gradient)")


def _filters(filter_indices: Any) -> list[int] | None:
    if filter_indices is None:
        return None
    if isinstance(filter_indices, (int, np.integer)) and not isinstance(filter_indices, bool):
        return [int(filter_indices)]
    try:
        values = list(np.asarray(filter_indices).reshape(-1))
    except Exception:
        values = None
    if not values or any(not isinstance(v, (int, np.integer)) or isinstance(v, bool) for v in values):
        raise KerasVisError(f"filter_indices must be an int or a list of ints, not {filter_indices!r}")
    return [int(v) for v in values]


def _objective(km: KerasVisModel, tensor: str, filters: list[int] | None, shape: Sequence[int] | None = None):
    """(objective, layer reference): the sum of the filters' values of the layer as it is (its
    activation kept), as an onnxviz linear objective."""
    from ..objectives import LayerRef, unit

    ref = LayerRef(tensor, logits=False)
    if filters is None:
        filters = list(range(_bound(km, ref, shape).channels))
    objective = unit(ref, filters[0])
    for i in filters[1:]:
        objective = objective + unit(ref, i)
    return objective, ref


def _bound(km: KerasVisModel, ref, shape: Sequence[int] | None):
    from ..objectives import bind_layer

    return km.cached(("bound", ref.key, None if shape is None else tuple(shape)),
                     lambda: bind_layer(km.onnx_model, ref, shape=shape))


def _cotangent(km: KerasVisModel, tensor: str, filters: list[int] | None, shape: Sequence[int]) -> np.ndarray:
    """The constant cotangent (one image) whose product with the layer's output is the keras-vis
    loss: 1 at each filter of a dense layer, 1/positions over each filter's channel of a feature map."""
    objective, ref = _objective(km, tensor, filters, shape)
    return objective.cotangents({ref: _bound(km, ref, shape)})[ref].astype(np.float32)


def _one_seed(seed_input: Any, spec) -> np.ndarray:
    if seed_input is None:
        raise KerasVisError("seed_input is required: the image to explain")
    x = to_model_batch(seed_input, spec)
    if len(x) != 1:
        raise KerasVisError(f"seed_input holds {len(x)} images: keras-vis explains one at a time (use "
                            "onnxviz.attribution for batches)")
    if not np.isfinite(x).all():
        raise KerasVisError("seed_input holds NaN or infinite values")
    _warn_range(x, spec)
    return x


def _warn_range(x: np.ndarray, spec) -> None:
    """A warning (not an error: the values are used as given, as keras-vis did) when a seed lies
    outside the model's input range, e.g. 0..255 pixels for a model that takes [0, 1]."""
    import warnings

    lo, hi = spec.value_range
    slack = 1e-3 * (hi - lo)
    if float(x.min()) < lo - slack or float(x.max()) > hi + slack:
        warnings.warn(f"seed_input spans [{float(x.min()):g}, {float(x.max()):g}], outside the model's input range "
                      f"[{lo:g}, {hi:g}]: it is used as given (scale it first, e.g. x / 255.)", UserWarning,
                      stacklevel=3)


def _input_gradient(km: KerasVisModel, tensor: str, modifier: str | None):
    from ..gradients import GradientFunction

    spec = km.spec()
    return km.cached(("input-grad", tensor, modifier), lambda: GradientFunction(
        km.onnx_model, tensor, input_name=spec.name, modifier=modifier,
        method="auto" if modifier is None else "graph"))


def _layer_shape(km: KerasVisModel, tensor: str) -> tuple[int, ...]:
    """Per-image shape of a layer's output, from one forward run on a constant image (cached)."""
    from ..rewrite import truncate
    from ..runtime import make_session

    spec = km.spec()

    def probe() -> tuple[int, ...]:
        sess = make_session(truncate(km.onnx_model, [tensor]), "auto")
        x = np.full((spec.batch or 1,) + tuple(spec.shape), spec.value_range[0], np.float32)
        return tuple(int(d) for d in sess.run([tensor], {spec.name: x})[0].shape[1:])

    return km.cached(("shape", tensor), probe)


# ----------------------------------------------------------------------------------- activation
def visualize_activation(model: Any, layer_idx: Any, filter_indices: Any = None, wrt_tensor: Any = None,
                         seed_input: Any = None, input_range: Sequence[float] | None = None,
                         backprop_modifier: Any = None, grad_modifier: Any = None, act_max_weight: float = 1,
                         lp_norm_weight: float | None = None, tv_weight: float | None = None,
                         **optimizer_params: Any) -> np.ndarray:
    """The input that maximizes ``filter_indices`` of layer ``layer_idx``, as an ``(H, W, C)``
    float32 array in ``input_range`` (channels last whatever the model's layout).

    It is the optimized input itself, the image the model scores (feed it back and the filters are
    high): keras-vis instead returned a display version (re-centred to mean 0.5 / std 0.1 and
    clipped, then scaled to ``input_range``); ``utils.deprocess_input(img, input_range)`` gives
    that look. It is the final iterate (keras-vis kept its lowest-loss iterate; onnxviz's random
    transforms make that record noisy).

    Arguments as keras-vis', mapped onto :func:`onnxviz.maximize`:

    - ``input_range``: the model's input range; default ``None`` is the range the model records
      (``[0, 1]`` when none: keras-vis' default was ``(0, 255)``, pass it if your model takes that).
    - ``seed_input``: the image to start from (model layout or channels last, in the input range);
      default a random start.
    - ``tv_weight`` / ``lp_norm_weight``: total variation and an L1 pull toward the input's 0 (keras-vis
      used an L6 norm), relative weights ``0.01 * tv_weight`` and ``0.005 * lp_norm_weight`` (keras-vis'
      defaults, 10 and 10, give onnxviz's small-image defaults 0.1 and 0.05); ``None`` (default):
      onnxviz's defaults for the input kind. ``act_max_weight`` divides both (only the ratio matters).
    - ``backprop_modifier``: ``'guided'`` or ``'relu'`` (deconvnet) in the gradient graph.
    - ``max_iter``: steps (default onnxviz's, 128 for small images); ``input_modifiers``: a list of
      :class:`~onnxviz.keras_vis.input_modifiers.Jitter` and/or onnxviz transforms, replacing
      onnxviz's default transforms (``[]`` for none; default ``None`` keeps them); ``verbose``:
      print the objective every 10 steps; ``seed`` (onnxviz's): the random seed, default 0.

    Refused with :class:`~onnxviz.keras_vis.UnsupportedOptionError`: ``wrt_tensor``, ``grad_modifier``
    (onnxviz's optimizer does not modify the ascent gradient), keras-vis ``callbacks``, and any
    other option.
    """
    from ..graph import check_value_range
    from ..maximize import Maximizer, default_settings

    opts = dict(optimizer_params)
    max_iter = opts.pop("max_iter", None)
    input_modifiers = opts.pop("input_modifiers", None)
    callbacks = opts.pop("callbacks", None)
    verbose = opts.pop("verbose", False)
    seed = opts.pop("seed", 0)
    if opts:
        raise UnsupportedOptionError(f"visualize_activation takes no option(s) {', '.join(sorted(opts))} (keras-vis' "
                                     "optimizer options here: max_iter, input_modifiers, verbose; onnxviz adds seed)")
    _no_wrt(wrt_tensor)
    if grad_modifier is not None:
        raise UnsupportedOptionError("grad_modifier is not supported by visualize_activation: onnxviz's optimizer "
                                     "ascends the plain gradient (regularized); leave it None")
    if callbacks:
        raise UnsupportedOptionError("keras-vis optimizer callbacks are not supported; use verbose=True, or "
                                     "onnxviz.maximize(..., callbacks=[fn]) whose fn receives an onnxviz StepInfo")
    if max_iter is not None and (not isinstance(max_iter, (int, np.integer)) or max_iter < 1):
        raise KerasVisError(f"max_iter must be an integer >= 1, not {max_iter!r}")
    km = as_model(model)
    _, tensor = km.tensor(layer_idx)
    value_range = None if input_range is None else check_value_range(input_range, "input_range")
    spec = km.spec(value_range)
    modifier = _backprop(backprop_modifier)
    engine = km.cached(("maximizer", value_range, modifier),
                       lambda: Maximizer(km.onnx_model, input_range=value_range, modifier=modifier))
    filters = _filters(filter_indices)
    from ..objectives import LayerRef

    if filters is None:
        filters = list(range(engine.layer_size(LayerRef(tensor, logits=False))))
    objective, _ = _objective(km, tensor, filters, engine.bound(LayerRef(tensor, logits=False)).shape)
    base = default_settings(spec.channels, spec.height, spec.width)
    regularizers = _regularizers(base, tv_weight, lp_norm_weight, act_max_weight, spec.value_range)
    transforms, mode = _transforms(input_modifiers, spec)
    start = None if seed_input is None else to_model_batch(seed_input, spec)
    if start is not None and len(start) != 1:
        raise KerasVisError(f"seed_input holds {len(start)} images; visualize_activation starts from one")
    if start is not None:
        _warn_range(start, spec)
    steps_cb = []
    if verbose:
        def report(info) -> None:
            if info.step == 1 or info.step % 10 == 0 or info.step == info.steps:
                print(f"Iteration: {info.step}/{info.steps}, objective: {float(info.values[0]):.6g}", file=sys.stdout)

        steps_cb.append(report)
    result = engine.run(objective=[objective], settings=base, steps=None if max_iter is None else int(max_iter),
                        regularizers=regularizers, transforms=transforms, mode=mode, logits=False, prior=None,
                        start=None if start is None else start[0], prior_weight=0.0 if start is not None else None,
                        seed=int(seed), callbacks=steps_cb)
    return to_hwc_image(result.images[0], spec).astype(np.float32)


def _regularizers(base, tv_weight: Any, lp_norm_weight: Any, act_max_weight: Any,
                  value_range: tuple[float, float]) -> tuple:
    from ..regularizers import LpNorm, TotalVariation, regularizer_from_dict

    try:
        act = float(act_max_weight)
    except (TypeError, ValueError):
        raise KerasVisError(f"act_max_weight must be a number, not {act_max_weight!r}") from None
    if not act > 0:
        raise UnsupportedOptionError(f"act_max_weight must be > 0, got {act_max_weight!r}: onnxviz maximizes the "
                                     "filters (to minimize one, maximize its negation with onnxviz.maximize)")

    def weight(value: Any, name: str) -> float:
        try:
            w = float(value)
        except (TypeError, ValueError):
            raise KerasVisError(f"{name} must be a number, not {value!r}") from None
        if not w >= 0:
            raise KerasVisError(f"{name} must be >= 0, got {value!r}")
        return w

    tv = [r for r in base.regularizers if isinstance(r, TotalVariation)]
    lp = [r for r in base.regularizers if isinstance(r, LpNorm)]
    rest = [r for r in base.regularizers if not isinstance(r, (TotalVariation, LpNorm))]
    if tv_weight is not None:
        w = weight(tv_weight, "tv_weight")
        tv = [TotalVariation(TV_PER_KERAS_VIS_WEIGHT * w)] if w > 0 else []
    if lp_norm_weight is not None:
        w = weight(lp_norm_weight, "lp_norm_weight")
        lo, hi = value_range
        zero = min(1.0, max(0.0, (0.0 - lo) / (hi - lo)))  # the model's 0 in the unit range onnxviz optimizes
        lp = [LpNorm(LP_PER_KERAS_VIS_WEIGHT * w, p=1.0, center=zero)] if w > 0 else []
    out = []
    for r in tv + lp + rest:
        d = r.describe()
        d["weight"] = d["weight"] / act
        out.append(regularizer_from_dict(d))
    return tuple(out)


def _transforms(input_modifiers: Any, spec) -> tuple[tuple | None, str | None]:
    from ..transforms import Transform, Translate

    if input_modifiers is None:
        return None, None
    if isinstance(input_modifiers, (Jitter, Transform)) or is_keras_vis_jitter(input_modifiers):
        input_modifiers = [input_modifiers]
    out: list[Any] = []
    mode = None
    for m in input_modifiers:
        if is_keras_vis_jitter(m):
            d = (m if isinstance(m, Jitter) else Jitter(m.jitter)).pixels(spec.height, spec.width)
            if d > 0:
                out.append(Translate(d))
                mode = "wrap"  # keras-vis rolled the image
        elif isinstance(m, Transform):
            out.append(m)
        else:
            raise UnsupportedOptionError(f"input modifier {m!r} is not supported: give "
                                         "onnxviz.keras_vis.input_modifiers.Jitter(...) or onnxviz.transforms objects")
    return tuple(out), mode


# ----------------------------------------------------------------------------------- saliency
def visualize_saliency(model: Any, layer_idx: Any, filter_indices: Any, seed_input: Any, wrt_tensor: Any = None,
                       backprop_modifier: Any = None, grad_modifier: Any = "absolute",
                       keepdims: bool = False) -> np.ndarray:
    """The saliency map of ``filter_indices`` of layer ``layer_idx`` for ``seed_input`` (one image,
    the model's layout or channels last, in its input range): the gradient of the filters' summed
    value w.r.t. the input, ``grad_modifier`` applied (default ``'absolute'``; ``'relu'`` positive,
    ``'negate'`` negative gradients, ``'invert'``, ``'small_values'``, ``None`` signed, or a
    function), the maximum over channels, normalised to [0, 1]: an ``(H, W)`` float32 array
    (``(H, W, C)`` with ``keepdims=True``). ``backprop_modifier``: ``None``, ``'guided'`` (guided
    backprop) or ``'relu'`` (deconvnet)."""
    _no_wrt(wrt_tensor)
    km = as_model(model)
    _, tensor = km.tensor(layer_idx)
    spec = km.spec()
    x = _one_seed(seed_input, spec)
    modify = _grad_modifier(grad_modifier)
    fn = _input_gradient(km, tensor, _backprop(backprop_modifier))
    shape = _layer_shape(km, tensor)
    cot = _cotangent(km, tensor, _filters(filter_indices), shape)
    _, grad = fn(x, cot[None])
    g = np.asarray(spec.to_hwc(grad)[0], np.float64)
    g = np.asarray(modify(g), np.float64)
    if not keepdims:
        g = g.max(axis=-1)
    return normalize(g)


# ----------------------------------------------------------------------------------- CAM
def visualize_cam(model: Any, layer_idx: Any, filter_indices: Any, seed_input: Any, penultimate_layer_idx: Any = None,
                  backprop_modifier: Any = None, grad_modifier: Any = None) -> np.ndarray:
    """The Grad-CAM heatmap of ``filter_indices`` of layer ``layer_idx`` for ``seed_input``: an
    ``(H, W)`` float32 array in [0, 1] at the input's resolution.

    The gradient of the filters' summed value w.r.t. the feature map of ``penultimate_layer_idx``
    (default: as keras-vis, the nearest Conv or Pooling layer before ``layer_idx``), with
    ``grad_modifier`` applied (default none) and the ReLUs after that layer following
    ``backprop_modifier``; each channel's weight is its mean gradient; the map is the ReLU of the
    weighted channel sum, upsampled bilinearly (keras-vis used a cubic spline zoom) and normalised.
    keras-vis divided the gradients by their maximum for float32 stability; the sums here are float64,
    so nothing is divided (that division flipped the map when every gradient was negative).
    """
    from ..images import resize_bilinear
    from ..objectives import channel_axis

    km = as_model(model)
    layer, tensor = km.tensor(layer_idx)
    feature_layer = _penultimate(km, layer, penultimate_layer_idx)
    feature = feature_layer.tensor
    spec = km.spec()
    x = _one_seed(seed_input, spec)
    modify = _grad_modifier(grad_modifier)
    fg = km.cached(("feature-grad", tensor, feature, _backprop(backprop_modifier)),
                   lambda: _FeatureGradient(km, tensor, feature, _backprop(backprop_modifier)))
    a = fg.features(x)
    if a.ndim != 4:
        raise KerasVisError(f"penultimate layer {feature_layer.index} ({feature_layer.name!r}) has output shape "
                            f"{tuple(a.shape)}: Grad-CAM needs a 2-D feature map (N, C, H, W or N, H, W, C)")
    shape = _layer_shape(km, tensor)
    cot = _cotangent(km, tensor, _filters(filter_indices), shape)
    grad = fg(x, cot[None])
    axis = channel_axis(km.onnx_model, feature, 4)
    a_khw = np.moveaxis(a[0], axis - 1, 0).astype(np.float64)
    g_khw = np.moveaxis(np.asarray(modify(grad[0].astype(np.float64)), np.float64), axis - 1, 0)
    weights = g_khw.mean(axis=(1, 2))
    heat = np.maximum(np.einsum("k,khw->hw", weights, a_khw), 0.0)
    heat = resize_bilinear(heat[None], (spec.height, spec.width))[0]
    return normalize(heat)


def _penultimate(km: KerasVisModel, layer: LayerView, penultimate_layer_idx: Any) -> LayerView:
    if penultimate_layer_idx is not None:
        view, _ = km.tensor(penultimate_layer_idx)
        return view
    for i in range(layer.index - 1, -1, -1):
        candidate = km.layers[i]
        if candidate.is_conv_or_pool and candidate.tensor is not None:
            return candidate
    raise KerasVisError(f"Unable to determine penultimate Conv or Pooling layer for layer_idx {layer.index} "
                        f"({layer.name!r}): give penultimate_layer_idx")


class _FeatureGradient:
    """d <cotangent, target> / d feature map, with a backprop modifier: one gradient model built
    w.r.t. the intermediate feature tensor (the graph is not cut, so heads that read other trunk
    tensors keep working). A second session gives the feature map itself. Ops without a gradient
    rule raise UnsupportedOpError (finite differences would need the feature map as an input)."""

    def __init__(self, km: KerasVisModel, target: str, feature: str, modifier: str | None):
        from ..autodiff import gradient_model
        from ..rewrite import truncate
        from ..runtime import make_session

        self.spec = km.spec()
        self.grad_session = make_session(gradient_model(km.onnx_model, of=target, wrt=[feature],
                                                        modifier=modifier), "auto")
        self.cotangent = self.grad_session.get_inputs()[-1].name
        self.grad_output = self.grad_session.get_outputs()[1].name
        self.feature = feature
        self.session = make_session(truncate(km.onnx_model, [feature]), "auto")

    def features(self, x: np.ndarray) -> np.ndarray:
        return self.session.run([self.feature], {self.spec.name: x})[0]

    def __call__(self, x: np.ndarray, cotangent: np.ndarray) -> np.ndarray:
        feeds = {self.spec.name: np.ascontiguousarray(x, np.float32),
                 self.cotangent: np.ascontiguousarray(cotangent, np.float32)}
        return np.asarray(self.grad_session.run([self.grad_output], feeds)[0])


# ----------------------------------------------------------------------------------- helpers
def overlay(array1: Any, array2: Any, alpha: float = 0.5) -> np.ndarray:
    """``array1`` laid over ``array2`` with opacity ``alpha`` (0: ``array2`` only, 1: ``array1``
    only), as keras-vis: ``alpha * array1 + (1 - alpha) * array2`` in ``array1``'s dtype. Both must
    be in the same value scale (keras-vis' tutorials blend a uint8 ``jet`` heatmap with a uint8
    image); the shapes must broadcast."""
    try:
        alpha = float(alpha)
    except (TypeError, ValueError):
        raise KerasVisError(f"alpha must be a number in [0, 1], not {alpha!r}") from None
    if not 0.0 <= alpha <= 1.0:
        raise KerasVisError(f"alpha must be in [0, 1], got {alpha}")
    a1, a2 = np.asarray(array1), np.asarray(array2)
    try:
        out = a1.astype(np.float64) * alpha + a2.astype(np.float64) * (1.0 - alpha)
    except ValueError:
        raise KerasVisError(f"cannot overlay arrays of shapes {a1.shape} and {a2.shape}") from None
    if np.issubdtype(a1.dtype, np.integer):
        info = np.iinfo(a1.dtype)
        out = np.clip(np.round(out), info.min, info.max)
    return out.astype(a1.dtype)


def get_num_filters(layer: Any, model: Any = None) -> int:
    """Filters of a layer: units of a dense layer, channels of a feature map. ``layer``: a Keras
    layer, or a layer of a :class:`~onnxviz.keras_vis.KerasVisModel` (``model.layers[i]``; with an
    index or name, give ``model``)."""
    if isinstance(layer, LayerView):
        owner = getattr(layer, "_owner", None)
        km = owner() if owner is not None else None
        if km is None:
            raise KerasVisError("this layer's model is gone; give get_num_filters(layer_idx, model)")
        return _view_filters(km, layer)
    if model is not None and not is_keras_model(model):
        km = as_model(model)
        return _view_filters(km, km.layer(layer))
    shape = getattr(getattr(layer, "output", None), "shape", None)
    if shape is None:
        raise KerasVisError(f"cannot tell the filters of {layer!r}")
    if len(shape) <= 2:
        return int(shape[-1])
    return int(shape[1] if getattr(layer, "data_format", "channels_last") == "channels_first" else shape[-1])


def _view_filters(km: KerasVisModel, layer: LayerView) -> int:
    from ..objectives import LayerRef

    _, tensor = km.tensor(layer.index)
    return _bound(km, LayerRef(tensor, logits=False), _layer_shape(km, tensor)).channels
