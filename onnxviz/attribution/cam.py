"""The CAM family: maps from a spatial feature map ``A`` (``K`` channels of ``h x w``) of the model,
upsampled bilinearly to the input's resolution.

- Grad-CAM — Selvaraju et al. (2017): ``relu(sum_k w_k A_k)``, ``w_k`` the spatial mean of
  ``d S_c / d A_k``; guided Grad-CAM multiplies it with the guided-backprop map.
- Grad-CAM++ — Chattopadhay et al. (2018), eq. 19 (exponential score): per-position weights
  ``a = g^2 / (2 g^2 + sum_ab A_ab g^3)``, ``w_k = sum_ij a_ij relu(g_ij)``.
- LayerCAM — Jiang et al. (2021): ``relu(sum_k relu(g_k) * A_k)``, position by position.
- Score-CAM — Wang et al. (2020): ``relu(sum_k w_k A_k)``, ``w_k`` the model's probability of the
  class for the input masked by ``A_k`` (upsampled, min-max normalized): one forward pass per image
  and channel, batched. ``top_n`` keeps the ``n`` channels of largest spatial variance (the
  "faster Score-CAM" idea): ``n`` forward passes per image instead of ``K``.

**Where the gradient w.r.t. ``A`` comes from.** The gradient graph is built w.r.t. the intermediate
tensor ``A`` itself (``gradient_model(..., wrt=[A])``: the reverse walk stops at ``A``) and ``A`` is
exposed as an output: one onnxruntime run gives the logits, ``A`` and ``dS/dA``. Only the head (the
nodes after ``A``) is differentiated; nodes that read other tensors of the trunk (``Shape`` of an
earlier map, skip connections) keep working because the graph is not cut — a split into trunk and
head models would need those tensors as extra head inputs and two runs.

**Which layer.** By default, the last spatial feature map before global pooling / flatten, found
by walking the ONNX graph back from the class output (:func:`default_cam_layer`); any layer or
tensor can be named. NCHW and NHWC maps both work: the channel axis is found by following the graph
(``objectives.channel_axis``: Conv/pool outputs are channels-first, an exporter's Transpose moves it).
"""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass
from typing import Any

import numpy as np
import onnx

from ..autodiff import gradient_model
from ..errors import OnnxvizError, ShapeError
from ..images import resize_bilinear
from ..ops import SPATIAL_COLLAPSING_OPS
from .core import Attribution, Attributor, as_attributor
from .saliency import _setup, resolve_baseline

__all__ = ["default_cam_layer", "resolve_cam_layer", "cam_gradient_model", "feature_maps", "gradcam",
           "gradcam_plus_plus", "layercam", "scorecam", "guided_gradcam", "CamLayer", "CAM_METHODS"]

CAM_METHODS = ("gradcam", "gradcam++", "layercam", "scorecam", "guided-gradcam")


@dataclass(frozen=True)
class CamLayer:
    """A feature map resolved on a model: tensor name, producing node, per-image shape and channel
    axis (of the per-image shape), layout label."""

    tensor: str
    node: str
    shape: tuple[int, ...]
    channel_axis: int

    @property
    def layout(self) -> str:
        return "NCHW" if self.channel_axis == 0 else "NHWC" if self.channel_axis == 2 else f"channel axis {self.channel_axis + 1}"

    @property
    def channels(self) -> int:
        return int(self.shape[self.channel_axis])

    @property
    def spatial(self) -> tuple[int, int]:
        dims = [d for i, d in enumerate(self.shape) if i != self.channel_axis]
        return int(dims[0]), int(dims[1])


def _shapes(model: onnx.ModelProto) -> dict[str, tuple]:
    from ..graph import input_info, layer_table

    shapes: dict[str, tuple] = {}
    for info in input_info(model):
        if info.shape is not None:
            shapes[info.name] = tuple(info.shape)
    for layer in layer_table(model):
        for name, shape in zip(layer.outputs, layer.shapes):
            if name and shape is not None:
                shapes[name] = tuple(shape)
    return shapes


def _spatial_size(shape: tuple, channel_axis: int) -> int | None:
    """Product of the two spatial dims of a rank-4 shape (None when a dim is symbolic)."""
    dims = [d for i, d in enumerate(shape) if i not in (0, channel_axis)]
    if any(not isinstance(d, int) for d in dims):
        return None
    return int(np.prod(dims))


def default_cam_layer(model: onnx.ModelProto, output: str | None = None) -> str:
    """The tensor Grad-CAM looks at by default: walking back from ``output`` (default the first
    graph output) breadth-first, the rank-4 input of the first node that collapses its spatial
    dims (global pooling, flatten, a reshape to vectors, a pool to 1x1). Falls back to the last
    rank-4 tensor with a spatial extent the output depends on."""
    from ..objectives import channel_axis

    output = output or model.graph.output[0].name
    producers = {o: n for n in model.graph.node for o in n.output if o}
    inits = {t.name for t in model.graph.initializer}
    shapes = _shapes(model)
    seen: set[str] = set()
    queue = deque([output])
    order: list[str] = []
    while queue:
        t = queue.popleft()
        if t in seen:
            continue
        seen.add(t)
        order.append(t)
        node = producers.get(t)
        if node is None:
            continue
        if node.op_type in SPATIAL_COLLAPSING_OPS and node.input and node.input[0] not in inits:
            src = node.input[0]
            s_in, s_out = shapes.get(src), shapes.get(node.output[0])
            if s_in is not None and len(s_in) == 4:
                ax = channel_axis(model, src, 4)
                size = _spatial_size(s_in, ax)
                if size is None or size > 1:
                    collapsed = s_out is not None and (len(s_out) < 4 or _spatial_size(s_out, ax) == 1)
                    if collapsed:
                        return src
        for i in node.input:
            if i and i not in inits and i not in seen:
                queue.append(i)
    for t in reversed(order):  # fallback: nearest rank-4 spatial tensor on the way back
        s = shapes.get(t)
        if s is not None and len(s) == 4 and t not in {i.name for i in model.graph.input}:
            size = _spatial_size(s, channel_axis(model, t, 4))
            if size is None or size > 1:
                return t
    raise ShapeError("found no spatial feature map (rank 4) before the output: CAM needs a "
                     "convolutional layer; name one with --layer")


def resolve_cam_layer(att: Attributor, layer: Any = None) -> CamLayer:
    """``layer`` (a layer name / index / tensor, or None for :func:`default_cam_layer`) as a
    :class:`CamLayer` on ``att``'s logits model; the shape comes from one probe run."""
    from ..graph import layer_output
    from ..objectives import channel_axis

    model = att.model

    def build() -> CamLayer:
        if layer is None:
            tensor = default_cam_layer(model, att.output)
        else:
            tensor = layer_output(model, layer)  # names first: a tensor, node or layer name, then an index
        node = next((n.name or n.op_type for n in model.graph.node if tensor in n.output), tensor)
        probe = np.full((att.spec.batch or 1,) + att.spec.shape, att.spec.value_range[0], np.float32)
        sess = _feature_session(att, tensor)
        a = sess.run([tensor], {att.spec.name: probe})[0]
        if a.ndim != 4:
            raise ShapeError(f"layer {layer if layer is not None else tensor!r} ({tensor!r}) has shape "
                             f"{tuple(a.shape)}: CAM needs a spatial feature map (N,C,H,W or N,H,W,C)")
        ax = channel_axis(model, tensor, 4) - 1
        return CamLayer(tensor, node, tuple(int(d) for d in a.shape[1:]), ax)

    return att.session(("camlayer", layer), build)


def _feature_session(att: Attributor, tensor: str):
    from ..rewrite import truncate
    from ..runtime import make_session

    return att.session(("features", tensor), lambda: make_session(
        truncate(att.model, [att.output, tensor]), att.providers))


def cam_gradient_model(model: onnx.ModelProto, target: str, feature: str) -> onnx.ModelProto:
    """``(inputs, cotangent) -> (target, d<cotangent.target>/d feature, feature)``: the gradient model
    of ``target`` w.r.t. the intermediate tensor ``feature``, which is exposed too (CAM needs both
    from one run; see the module doc)."""
    if feature in {o.name for o in model.graph.output}:
        raise OnnxvizError(f"the CAM layer {feature!r} is a graph output: it needs a head after it")
    grad = gradient_model(model, of=target, wrt=[feature])
    exposed = grad.graph.output.add()
    exposed.CopyFrom(grad.graph.output[1])  # the gradient has the feature map's type
    exposed.name = feature
    onnx.checker.check_model(grad)
    return grad


class _CamFunction:
    """One session: ``(x, units) -> (logits, A, dS/dA)`` batched."""

    def __init__(self, att: Attributor, layer: CamLayer):
        from ..runtime import make_session

        self.att = att
        self.layer = layer
        self.model = cam_gradient_model(att.model, att.output, layer.tensor)
        self.session = make_session(self.model, att.providers)
        self.cotangent = self.session.get_inputs()[-1].name
        outs = [o.name for o in self.session.get_outputs()]
        self.outputs = [outs[0], outs[1], layer.tensor]

    def __call__(self, x: np.ndarray, units: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        att = self.att
        k = att.classes

        def run(xc, uc):
            cot = np.zeros((len(uc), k), np.float32)
            cot[np.arange(len(uc)), uc] = 1.0
            z, grad, a = self.session.run(self.outputs, {att.spec.name: np.ascontiguousarray(xc, np.float32),
                                                         self.cotangent: cot})
            return z.reshape(len(xc), -1), a, grad

        return tuple(att.run_chunked(run, x, units))  # type: ignore[return-value]


def _nkhw(a: np.ndarray, layer: CamLayer) -> np.ndarray:
    """A batch of feature maps -> ``(N, K, h, w)``."""
    return np.moveaxis(a, layer.channel_axis + 1, 1)


def feature_maps(model: Any, x: np.ndarray, unit: Any = None, layer: Any = None,
                 ) -> tuple[CamLayer, np.ndarray, np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """(layer, units, scores, predicted, A, dS/dA) with A and its gradient as ``(N, K, h, w)``."""
    att, x, units, _ = _setup(model, x, unit)
    cl = resolve_cam_layer(att, layer)
    fn = att.session(("cam", cl.tensor), lambda: _CamFunction(att, cl))
    z, a, g = fn(x, units)
    return cl, units, z[np.arange(len(x)), units], z.argmax(1), _nkhw(a, cl), _nkhw(g, cl)


def _finish(att: Attributor, name: str, cam_small: np.ndarray, cl: CamLayer, units, scores, predicted,
            extra: dict | None = None) -> Attribution:
    maps = resize_bilinear(cam_small, (att.spec.height, att.spec.width))
    info = {"layer": cl.tensor, "node": cl.node, "layout": cl.layout, "feature_shape": cl.shape,
            "layer_maps": cam_small.astype(np.float32), **(extra or {})}
    return Attribution(name, maps.astype(np.float32), units, scores, predicted, info)


def gradcam(model: Any, x: np.ndarray, unit: Any = None, *, layer: Any = None) -> Attribution:
    """Grad-CAM on ``layer`` (default: :func:`default_cam_layer`)."""
    att = as_attributor(model)
    cl, units, scores, pred, a, g = feature_maps(att, x, unit, layer)
    w = g.mean(axis=(2, 3), dtype=np.float64)
    cam = np.maximum(np.einsum("nk,nkhw->nhw", w, a.astype(np.float64)), 0.0)
    return _finish(att, "gradcam", cam, cl, units, scores, pred)


def gradcam_plus_plus(model: Any, x: np.ndarray, unit: Any = None, *, layer: Any = None) -> Attribution:
    """Grad-CAM++ (closed form for an exponential of the class score, Chattopadhay et al. eq. 19)."""
    att = as_attributor(model)
    cl, units, scores, pred, a, g = feature_maps(att, x, unit, layer)
    g = g.astype(np.float64)
    a = a.astype(np.float64)
    g2, g3 = g * g, g * g * g
    denom = 2.0 * g2 + a.sum(axis=(2, 3), keepdims=True) * g3
    alpha = g2 / np.where(denom != 0.0, denom, 1.0)
    w = (alpha * np.maximum(g, 0.0)).sum(axis=(2, 3))
    cam = np.maximum(np.einsum("nk,nkhw->nhw", w, a), 0.0)
    return _finish(att, "gradcam++", cam, cl, units, scores, pred)


def layercam(model: Any, x: np.ndarray, unit: Any = None, *, layer: Any = None) -> Attribution:
    """LayerCAM: position-wise positive gradients weight the activations."""
    att = as_attributor(model)
    cl, units, scores, pred, a, g = feature_maps(att, x, unit, layer)
    cam = np.maximum((np.maximum(g, 0.0).astype(np.float64) * a).sum(axis=1), 0.0)
    return _finish(att, "layercam", cam, cl, units, scores, pred)


def guided_gradcam(model: Any, x: np.ndarray, unit: Any = None, *, layer: Any = None,
                   modifier: str | None = "abs") -> Attribution:
    """Guided Grad-CAM: the guided-backprop map (channel max of ``modifier``) times the upsampled
    Grad-CAM map, pixel by pixel."""
    from .saliency import guided_backprop

    att = as_attributor(model)
    cam = gradcam(att, x, unit, layer=layer)
    guided = guided_backprop(att, x, cam.units, modifier=modifier)
    maps = (guided.maps * cam.maps).astype(np.float32)
    info = {**cam.info, "modifier": modifier}
    return Attribution("guided-gradcam", maps, cam.units, cam.scores, cam.predicted, info, guided.attributions)


def scorecam(model: Any, x: np.ndarray, unit: Any = None, *, layer: Any = None, top_n: int | None = None,
             baseline: Any = "black") -> Attribution:
    """Score-CAM. Each channel's upsampled, min-max normalized map ``M`` masks the input
    (``x' = b + (x - b) * M``, ``b`` the ``baseline``: black by default); its weight is the model's
    probability of the class on ``x'``. ``top_n`` uses only the ``n`` channels of largest spatial
    variance. ``info["forward_passes"]`` counts the masked inputs run."""
    att, x, units, _ = _setup(model, x, unit)
    cl = resolve_cam_layer(att, layer)
    sess = _feature_session(att, cl.tensor)
    z, a = att.run_chunked(lambda c: sess.run([att.output, cl.tensor], {att.spec.name: np.ascontiguousarray(c)}), x)
    z = z.reshape(len(x), -1)
    a = _nkhw(a, cl).astype(np.float32)
    n, k = a.shape[:2]
    if top_n is not None:
        top_n = int(top_n)
        if top_n < 1:
            raise OnnxvizError(f"Score-CAM top_n must be at least 1, got {top_n}")
        top_n = min(top_n, k)
        chosen = np.argsort(-a.reshape(n, k, -1).var(axis=2), axis=1, kind="stable")[:, :top_n]
    else:
        chosen = np.tile(np.arange(k), (n, 1))
    kk = chosen.shape[1]
    base = resolve_baseline(att, x, baseline)
    H, W = att.spec.height, att.spec.width
    pairs_img = np.repeat(np.arange(n), kk)
    pairs_ch = chosen.reshape(-1)
    weights = np.zeros(n * kk, np.float64)
    before = att.forward_passes
    for sl in att.chunks(len(pairs_img)):
        rows, chans = pairs_img[sl], pairs_ch[sl]
        m = resize_bilinear(a[rows, chans], (H, W))
        lo = m.min(axis=(1, 2), keepdims=True)
        hi = m.max(axis=(1, 2), keepdims=True)
        m = np.where(hi > lo, (m - lo) / np.where(hi > lo, hi - lo, 1.0), 0.0).astype(np.float32)
        mask = att.spec.pixel_mask(m)
        xm = base[rows] + (x[rows] - base[rows]) * mask
        p = att.probabilities(xm)
        weights[sl] = p[np.arange(len(rows)), units[rows]]
    passes = att.forward_passes - before
    w = weights.reshape(n, kk)
    sel = np.take_along_axis(a, chosen[:, :, None, None], axis=1).astype(np.float64)
    cam = np.maximum(np.einsum("nk,nkhw->nhw", w, sel), 0.0)
    scores = z[np.arange(n), units]
    return _finish(att, "scorecam", cam, cl, units, scores, z.argmax(1),
                   {"forward_passes": int(passes), "channels_used": int(kk), "channels": int(k),
                    "top_n": top_n})
