"""What activation maximization maximizes: objectives on layer tensors, composable with ``+ - *``.

The model follows lucid's ``optvis.objectives``: an objective reads one or more layer tensors and
gives a value per image. Two families:

- **linear** objectives (a unit of a dense layer, the spatial mean of a channel, one neuron at a
  position, a direction in activation space, and their weighted sums) are ``<c, activation>`` for a
  constant cotangent ``c``. They compile to that cotangent, so an optimization step is ONE
  onnxruntime run of the gradient model (cotangent in, input gradient out) for all images at once;
  the objective's value is read off the activation the same run returns.
- **nonlinear** objectives (``diversity``, products of objectives) need the activation before the
  cotangent is known: each step costs one extra forward run (~1/3 of a gradient step).

Images are independent along the batch: an objective of ``images=None`` applies to each image on
its own; one with ``images=k`` (``diversity(layer, k)`` and sums containing it) spans a group of k
images. ``maximize`` gives each objective (group) its own images and stacks them in one batch.

Layers are named as ``find_layer`` understands them (Keras layer name, node, index, tensor name);
``None`` is the first graph output. A layer ending in Softmax/LogSoftmax/Sigmoid is read BEFORE
the activation by default (``logits=True``, keras-vis' "swap softmax for linear"): maximizing a
probability mostly suppresses the other classes, maximizing a logit builds the class's features.
"""

from __future__ import annotations

import numbers
from dataclasses import dataclass, field
from typing import Any, Iterable, Mapping, Sequence

import numpy as np
import onnx
from onnx import helper

from .errors import OnnxvizError, ShapeError
from .graph import class_names as metadata_class_names
from .graph import input_info, layer_output, opset_version, tensor_shape
from .graphview import GraphView
from .layout import tensor_channel_axis
from .ops import FINAL_ACTIVATIONS
from .rewrite import expose, final_activation, to_logits

__all__ = [
    "LayerRef", "BoundLayer", "Objective", "LinearObjective", "unit", "channel", "neuron", "direction",
    "diversity", "as_objective", "bind_layer", "channel_axis", "resolve_layer", "layer_ref",
]

# ----------------------------------------------------------------------------------------- layers



@dataclass(frozen=True)
class LayerRef:
    """A layer as the user named it; ``logits`` reads a final Softmax/Sigmoid layer before it;
    ``log_softmax`` reads a softmax layer as the log-softmax of its logits."""

    key: str | int | None = None
    logits: bool = True
    log_softmax: bool = False

    def __str__(self) -> str:
        name = "output" if self.key is None else str(self.key)
        if self.log_softmax:
            return f"{name} (log-softmax)"
        return name if self.logits else f"{name} (activation kept)"


@dataclass(frozen=True)
class BoundLayer:
    """A :class:`LayerRef` resolved on a model: which tensor of which model variant, its per-image
    shape and channel axis (``None`` for rank-1 per-image tensors: dense layers)."""

    ref: LayerRef
    tensor: str
    model: onnx.ModelProto = field(repr=False, compare=False)
    shape: tuple[int, ...]  # per image (batch dim removed)
    channel_axis: int | None  # axis of `shape` holding channels / units
    stripped: str | None = None  # op type read through (Softmax ...) or None
    class_names: tuple[str, ...] | None = None

    @property
    def channels(self) -> int:
        return int(self.shape[self.channel_axis]) if self.channel_axis is not None else int(np.prod(self.shape))

    @property
    def label(self) -> str:
        return "output" if self.ref.key is None else str(self.ref.key)


def resolve_layer(model: onnx.ModelProto, ref: LayerRef) -> tuple[onnx.ModelProto, str, str | None]:
    """(model variant, tensor name, stripped activation) for ``ref``.

    A graph output ending in Softmax/LogSoftmax/Sigmoid goes through :func:`~onnxviz.rewrite.to_logits`
    (the output keeps its name and carries logits); an intermediate tensor made by such an op is
    replaced by that op's input. ``logits=False`` keeps the activation. ``log_softmax=True`` on a
    softmax layer puts a LogSoftmax node on the logits (same axis) and reads its output: a class
    objective is then ``log p_k``, computed stably inside the graph (gradient ``e_k - p``).
    """
    variant, tensor, stripped = _resolve_logits(model, ref)
    if not (ref.log_softmax and ref.logits and stripped in ("Softmax", "LogSoftmax")):
        return variant, tensor, stripped
    axis = _softmax_axis(model, ref) if opset_version(model) >= 13 else 1
    name = GraphView(variant).fresh(tensor + "__log_softmax")
    out = onnx.ModelProto()
    out.CopyFrom(variant)
    out.graph.node.append(helper.make_node("LogSoftmax", [tensor], [name], axis=axis, name=name))
    return expose(out, [name]), name, stripped


def _softmax_axis(model: onnx.ModelProto, ref: LayerRef) -> int:
    """The axis attribute of the softmax a ``ref`` resolves through (-1, opset 13's default, if unset)."""
    node = None
    outputs = [o.name for o in model.graph.output]
    _, tensor, _ = _resolve_logits(model, LayerRef(ref.key, logits=False))
    if tensor in outputs:
        act = final_activation(model, tensor)
        node = model.graph.node[act.index] if act is not None else None
    else:
        node = GraphView(model).producers.get(tensor)
    attrs = {a.name: a.i for a in node.attribute} if node is not None else {}
    return int(attrs.get("axis", -1))


def _resolve_logits(model: onnx.ModelProto, ref: LayerRef) -> tuple[onnx.ModelProto, str, str | None]:
    outputs = [o.name for o in model.graph.output]
    key = ref.key
    if key is None:
        tensor = outputs[0]
    elif isinstance(key, str) and (key in outputs or key in GraphView(model).producers):
        tensor = key
    else:
        tensor = layer_output(model, key)
    if not ref.logits:
        return model, tensor, None
    if tensor in outputs:
        act = final_activation(model, tensor)
        if act is not None:
            return to_logits(model, tensor), tensor, act.op_type
        return model, tensor, None
    node = GraphView(model).producers.get(tensor)
    if node is not None and node.op_type in FINAL_ACTIVATIONS and node.domain in ("", "ai.onnx"):
        return model, node.input[0], node.op_type
    return model, tensor, None


def channel_axis(model: onnx.ModelProto, tensor: str, rank: int) -> int | None:
    """Axis (with batch, i.e. of the full tensor) holding channels: 1 for NCHW-style feature maps
    (what ONNX Conv/pool/normalization produce), ``rank - 1`` for NHWC ones (after an exporter's
    Transpose, or an NHWC graph input), ``1`` for dense (N, units) tensors
    (:func:`onnxviz.layout.tensor_channel_axis`, with the inputs' layouts of ``input_info``)."""
    def input_layout(name: str) -> str | None:
        return next((i.layout for i in input_info(model) if i.name == name), None)

    return tensor_channel_axis(model, tensor, rank, input_layout)


def bind_layer(model: onnx.ModelProto, ref: LayerRef, shape: Sequence[int] | None = None,
               layout: str | None = None, class_names: Sequence[str] | None = None) -> BoundLayer:
    """Resolve ``ref`` on ``model``. ``shape`` is the per-image shape of the tensor (as a probe run
    gives it); without it the shape comes from shape inference and must be static. ``layout``
    ("NCHW"/"NHWC"-style: "channels_first"/"channels_last" also accepted) overrides the detection.
    ``class_names`` replace the metadata's names of the output layer."""
    variant, tensor, stripped = resolve_layer(model, ref)
    if shape is None:
        full = tensor_shape(variant, tensor)
        if full is None or any(not isinstance(d, int) for d in full[1:]):
            raise ShapeError(f"the shape of layer {ref} ({tensor!r}) is not static: {full}")
        shape = tuple(int(d) for d in full[1:])
    shape = tuple(int(d) for d in shape)
    rank = len(shape) + 1
    if layout is not None:
        lay = layout.strip().upper()
        if lay in ("NCHW", "CHANNELS_FIRST", "NCDHW", "NCL"):
            axis: int | None = 1
        elif lay in ("NHWC", "CHANNELS_LAST", "NDHWC", "NLC"):
            axis = rank - 1
        else:
            raise OnnxvizError(f"unknown layout {layout!r} (choose NCHW or NHWC)")
    else:
        axis = channel_axis(variant, tensor, rank)
    logits_tensor = _resolve_logits(model, ref)[1] if ref.log_softmax else tensor
    names = _class_names_for(model, logits_tensor, shape, class_names)
    return BoundLayer(ref, tensor, variant, shape, None if axis is None else axis - 1, stripped, names)


def _class_names_for(model: onnx.ModelProto, tensor: str, shape: tuple[int, ...],
                     given: Sequence[str] | None = None) -> tuple[str, ...] | None:
    """The model's class names (``given``, else the metadata's) when ``tensor`` is its first output
    or that output's logits."""
    outputs = [o.name for o in model.graph.output]
    if not outputs:
        return None
    act = final_activation(model, outputs[0])
    if tensor != outputs[0] and (act is None or act.pre_activation != tensor):
        return None
    names = list(given) if given is not None else metadata_class_names(model)
    units = int(np.prod(shape))
    if given is not None and len(names) != units:
        raise OnnxvizError(f"{len(names)} class names given but the model's output has {units} units")
    if not names or len(names) != units:
        return None
    return tuple(names)


def layer_ref(layer: Any, logits: bool) -> LayerRef:
    """``layer`` as a :class:`LayerRef` (kept as it is when it already is one)."""
    if isinstance(layer, LayerRef):
        return layer
    if isinstance(layer, np.integer):
        layer = int(layer)
    return LayerRef(layer, logits)


# ----------------------------------------------------------------------------------- objectives
class Objective:
    """Base class: a value per image of a group, a function of layer activations.

    ``images``: ``None`` when the objective is per image (applies to every image it is given),
    ``k`` when it spans a group of exactly k images (diversity). ``linear``: the value is
    ``<cotangent, activation> + constant`` with a constant cotangent.
    """

    images: int | None = None
    linear: bool = False

    def layers(self) -> tuple[LayerRef, ...]:
        raise NotImplementedError

    def evaluate(self, acts: Mapping[LayerRef, np.ndarray], bound: Mapping[LayerRef, BoundLayer]
                 ) -> tuple[np.ndarray, dict[LayerRef, np.ndarray]]:
        """(values (n,), {layer: d sum(values) / d activation (n, ...)}) for activations of n images."""
        raise NotImplementedError

    def describe(self) -> str:
        raise NotImplementedError

    def __repr__(self) -> str:
        return f"<{type(self).__name__} {self.describe()}>"

    # arithmetic ------------------------------------------------------------------------------
    def __add__(self, other: Any) -> "Objective":
        other = as_objective(other)
        if isinstance(self, LinearObjective) and isinstance(other, LinearObjective):
            return LinearObjective(self.terms + other.terms, self.constant + other.constant)
        return _Sum((self, other))

    __radd__ = __add__

    def __neg__(self) -> "Objective":
        return self * -1.0

    def __sub__(self, other: Any) -> "Objective":
        return self + (-as_objective(other))

    def __rsub__(self, other: Any) -> "Objective":
        return as_objective(other) + (-self)

    def __mul__(self, other: Any) -> "Objective":
        if isinstance(other, numbers.Real):
            k = float(other)
            if isinstance(self, LinearObjective):
                return LinearObjective(tuple((w * k, t) for w, t in self.terms), self.constant * k)
            return _Scaled(self, k)
        other = as_objective(other)
        return _Product(self, other)

    __rmul__ = __mul__

    def __truediv__(self, other: Any) -> "Objective":
        if not isinstance(other, numbers.Real):
            return NotImplemented
        return self * (1.0 / float(other))


def as_objective(value: Any) -> Objective:
    """An :class:`Objective` as is; a number as a constant objective."""
    if isinstance(value, Objective):
        return value
    if isinstance(value, numbers.Real):
        return LinearObjective((), float(value))
    raise TypeError(f"cannot combine an objective with {type(value).__name__}")


def _group_size(parts: Iterable[Objective]) -> int | None:
    sizes = {p.images for p in parts if p.images is not None}
    if len(sizes) > 1:
        raise OnnxvizError(f"cannot combine objectives spanning different numbers of images: {sorted(sizes)}")
    return sizes.pop() if sizes else None


# ---- linear terms -----------------------------------------------------------------------------
class _Term:
    """One linear functional of one layer's per-image activation: ``vector(bound)`` has its shape."""

    ref: LayerRef

    def vector(self, bound: BoundLayer) -> np.ndarray:
        raise NotImplementedError

    def describe(self) -> str:
        raise NotImplementedError


def _check_index(bound: BoundLayer, index: int, what: str) -> int:
    n = bound.channels
    if not -n <= index < n:
        raise OnnxvizError(f"{what} {index} out of range: layer {bound.label} has {n} "
                           f"{'units' if bound.channel_axis is None or len(bound.shape) == 1 else 'channels'}")
    return index % n


@dataclass(frozen=True)
class _UnitTerm(_Term):
    ref: LayerRef
    index: int

    def vector(self, bound: BoundLayer) -> np.ndarray:
        v = np.zeros(bound.shape, np.float32)
        if len(bound.shape) == 1 or bound.channel_axis is None:
            i = _check_index(bound, self.index, "unit")
            v.reshape(-1)[i] = 1.0
            return v
        # a feature map: the channel's spatial mean
        return _ChannelTerm(self.ref, self.index).vector(bound)

    def describe(self) -> str:
        return f"unit({self.ref}, {self.index})"


@dataclass(frozen=True)
class _ChannelTerm(_Term):
    ref: LayerRef
    index: int

    def vector(self, bound: BoundLayer) -> np.ndarray:
        i = _check_index(bound, self.index, "channel")
        v = np.zeros(bound.shape, np.float32)
        if bound.channel_axis is None:
            v.reshape(-1)[i] = 1.0
            return v
        positions = int(np.prod(bound.shape)) // bound.channels
        idx = [slice(None)] * len(bound.shape)
        idx[bound.channel_axis] = i
        v[tuple(idx)] = 1.0 / positions
        return v

    def describe(self) -> str:
        return f"channel({self.ref}, {self.index})"


@dataclass(frozen=True)
class _NeuronTerm(_Term):
    ref: LayerRef
    index: int
    position: tuple[int, ...] | None

    def vector(self, bound: BoundLayer) -> np.ndarray:
        i = _check_index(bound, self.index, "channel")
        v = np.zeros(bound.shape, np.float32)
        if bound.channel_axis is None or len(bound.shape) == 1:
            v.reshape(-1)[i] = 1.0
            return v
        spatial = [d for a, d in enumerate(bound.shape) if a != bound.channel_axis]
        pos = tuple(d // 2 for d in spatial) if self.position is None else tuple(self.position)
        if len(pos) != len(spatial) or any(not 0 <= p < d for p, d in zip(pos, spatial)):
            raise OnnxvizError(f"neuron position {pos} outside layer {bound.label}'s spatial shape {tuple(spatial)}")
        idx = list(pos)
        idx.insert(bound.channel_axis, i)
        v[tuple(idx)] = 1.0
        return v

    def describe(self) -> str:
        where = "center" if self.position is None else ",".join(map(str, self.position))
        return f"neuron({self.ref}, {self.index}, {where})"


@dataclass(frozen=True)
class _DirectionTerm(_Term):
    ref: LayerRef
    vec: tuple[float, ...]

    def vector(self, bound: BoundLayer) -> np.ndarray:
        d = np.asarray(self.vec, np.float32)
        if d.size != bound.channels:
            raise OnnxvizError(f"direction has {d.size} entries but layer {bound.label} has {bound.channels} channels")
        if bound.channel_axis is None or len(bound.shape) == 1:
            return d.reshape(bound.shape).copy()
        positions = int(np.prod(bound.shape)) // bound.channels
        shape = [1] * len(bound.shape)
        shape[bound.channel_axis] = bound.channels
        return np.broadcast_to(d.reshape(shape) / positions, bound.shape).astype(np.float32)

    def describe(self) -> str:
        return f"direction({self.ref}, [{len(self.vec)} values])"


class LinearObjective(Objective):
    """``sum_i w_i * <term_i, activation> + constant``: compiles to one constant cotangent per layer."""

    linear = True
    images = None

    def __init__(self, terms: tuple[tuple[float, _Term], ...], constant: float = 0.0):
        self.terms = tuple(terms)
        self.constant = float(constant)

    def layers(self) -> tuple[LayerRef, ...]:
        return tuple(dict.fromkeys(t.ref for _, t in self.terms))

    def cotangents(self, bound: Mapping[LayerRef, BoundLayer]) -> dict[LayerRef, np.ndarray]:
        """Per-image cotangent of each layer (terms on one layer added)."""
        out: dict[LayerRef, np.ndarray] = {}
        for w, term in self.terms:
            v = np.float32(w) * term.vector(bound[term.ref])
            out[term.ref] = out[term.ref] + v if term.ref in out else v
        return out

    def evaluate(self, acts, bound):
        cots = self.cotangents(bound)
        n = _batch_of(acts, self.layers())
        values = np.full(n, self.constant, np.float64)
        grads = {}
        for ref, c in cots.items():
            a = acts[ref]
            values += np.tensordot(a.astype(np.float64), c.astype(np.float64), axes=c.ndim)
            grads[ref] = np.broadcast_to(c, a.shape)
        return values, grads

    def describe(self) -> str:
        parts = [(f"{w:g}*" if w != 1 else "") + t.describe() for w, t in self.terms]
        if self.constant or not parts:
            parts.append(f"{self.constant:g}")
        return " + ".join(parts)


def _batch_of(acts: Mapping[LayerRef, np.ndarray], refs: Iterable[LayerRef]) -> int:
    for r in refs:
        if r in acts:
            return int(acts[r].shape[0])
    for a in acts.values():
        return int(a.shape[0])
    return 1


def _add_grads(into: dict, grads: Mapping, scale: Any = 1.0) -> None:
    for ref, g in grads.items():
        g = g * scale if not (isinstance(scale, float) and scale == 1.0) else g
        into[ref] = into[ref] + g if ref in into else np.array(g, copy=True)


class _Sum(Objective):
    def __init__(self, parts: tuple[Objective, ...]):
        flat: list[Objective] = []
        for p in parts:
            flat.extend(p.parts if isinstance(p, _Sum) else [p])
        self.parts = tuple(flat)
        self.images = _group_size(self.parts)
        self.linear = False

    def layers(self):
        return tuple(dict.fromkeys(r for p in self.parts for r in p.layers()))

    def evaluate(self, acts, bound):
        values = None
        grads: dict = {}
        for p in self.parts:
            v, g = p.evaluate(acts, bound)
            values = v if values is None else values + v
            _add_grads(grads, g)
        return values, grads

    def describe(self):
        return " + ".join(f"({p.describe()})" for p in self.parts)


class _Scaled(Objective):
    def __init__(self, inner: Objective, k: float):
        self.inner, self.k = inner, float(k)
        self.images = inner.images
        self.linear = False

    def layers(self):
        return self.inner.layers()

    def evaluate(self, acts, bound):
        v, g = self.inner.evaluate(acts, bound)
        return v * self.k, {r: a * self.k for r, a in g.items()}

    def describe(self):
        return f"{self.k:g}*({self.inner.describe()})"


class _Product(Objective):
    """``a * b`` per image: gradient ``b * da + a * db`` (nonlinear: needs the activations first)."""

    def __init__(self, a: Objective, b: Objective):
        self.a, self.b = a, b
        self.images = _group_size((a, b))
        self.linear = False

    def layers(self):
        return tuple(dict.fromkeys(self.a.layers() + self.b.layers()))

    def evaluate(self, acts, bound):
        va, ga = self.a.evaluate(acts, bound)
        vb, gb = self.b.evaluate(acts, bound)
        grads: dict = {}
        for (v_other, g) in ((vb, ga), (va, gb)):
            for ref, arr in g.items():
                scale = np.asarray(v_other, np.float32).reshape((-1,) + (1,) * (arr.ndim - 1))
                _add_grads(grads, {ref: arr * scale})
        return va * vb, grads

    def describe(self):
        return f"({self.a.describe()}) * ({self.b.describe()})"


class _Diversity(Objective):
    """Minus the mean cosine similarity between the Gram matrices (channel x channel, over positions)
    of each pair of images in a group (lucid's diversity objective, sign flipped so it is maximized)."""

    def __init__(self, ref: LayerRef, n: int):
        if n < 2:
            raise OnnxvizError("diversity needs a group of at least 2 images")
        self.ref, self.images = ref, int(n)
        self.linear = False

    def layers(self):
        return (self.ref,)

    def evaluate(self, acts, bound):
        a = acts[self.ref].astype(np.float64)
        b = bound[self.ref]
        n = a.shape[0]
        if n != self.images:
            raise OnnxvizError(f"diversity spans {self.images} images, got {n}")
        axis = (b.channel_axis + 1) if (b.channel_axis is not None and a.ndim > 2) else a.ndim - 1
        moved = np.moveaxis(a, axis, -1)
        f = moved.reshape(n, -1, moved.shape[-1])  # (n, positions, channels)
        grams = np.einsum("npc,npd->ncd", f, f)
        norms = np.sqrt(np.sum(grams * grams, axis=(1, 2))) + 1e-10
        unit_g = grams / norms[:, None, None]
        total = unit_g.sum(axis=0)
        # value_i = -sum_{j != i} <G_i, G_j> / n ; sum_i value_i = -lucid's diversity
        sims = np.einsum("ncd,cd->n", unit_g, total) - np.einsum("ncd,ncd->n", unit_g, unit_g)
        values = -sims / n
        # d(sum values)/dĜ_i = -2/n * sum_{j != i} Ĝ_j ; through the normalisation and G = F^T F
        dU = -2.0 / n * (total[None] - unit_g)
        inner = np.einsum("ncd,ncd->n", dU, unit_g)
        dG = (dU - inner[:, None, None] * unit_g) / norms[:, None, None]
        dF = np.einsum("npc,ncd->npd", f, dG + np.swapaxes(dG, 1, 2))
        grad = np.moveaxis(dF.reshape(moved.shape), -1, axis).astype(np.float32)
        return values, {self.ref: grad}

    def describe(self):
        return f"diversity({self.ref}, {self.images})"


# ---- constructors -------------------------------------------------------------------------------
def unit(layer: Any = None, index: int = 0, *, logits: bool = True) -> LinearObjective:
    """Unit ``index`` of a dense layer (a class logit for the output layer, through ``to_logits``
    when it ends in softmax/sigmoid); on a feature map, the spatial mean of channel ``index``."""
    return LinearObjective(((1.0, _UnitTerm(layer_ref(layer, logits), int(index))),))


def channel(layer: Any, index: int, *, logits: bool = True) -> LinearObjective:
    """Spatial mean of channel ``index`` of a feature map (NCHW or NHWC, detected from the graph)."""
    return LinearObjective(((1.0, _ChannelTerm(layer_ref(layer, logits), int(index))),))


def neuron(layer: Any, index: int, position: Sequence[int] | None = None, *,
           logits: bool = True) -> LinearObjective:
    """One neuron: channel ``index`` at spatial ``position`` (default: the center)."""
    pos = None if position is None else tuple(int(p) for p in position)
    return LinearObjective(((1.0, _NeuronTerm(layer_ref(layer, logits), int(index), pos)),))


def direction(layer: Any, vector: Sequence[float], *, logits: bool = True) -> LinearObjective:
    """``<vector, activation>`` along channels, averaged over positions (lucid's direction
    objective, per position mean instead of sum so its scale does not grow with the map size)."""
    vec = tuple(float(v) for v in np.asarray(vector, np.float64).ravel())
    return LinearObjective(((1.0, _DirectionTerm(layer_ref(layer, logits), vec)),))


def diversity(layer: Any, n: int, *, logits: bool = True) -> Objective:
    """A group of ``n`` images made different from each other at ``layer``: minus the mean
    pairwise cosine similarity of their Gram matrices. Use as ``unit(...) + w * diversity(L, n)``
    (lucid: ``channel(...) - 1e2 * diversity(L)``; the sign here is already "more is more diverse").
    Nonlinear: each step runs the layer forward once more (about a third of a gradient step)."""
    return _Diversity(layer_ref(layer, logits), int(n))
