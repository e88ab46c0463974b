"""The model side of the keras-vis port: an ONNX model seen as a list of layers.

keras-vis addressed layers by their index in ``model.layers`` and changed them through the layer
objects (``model.layers[i].activation = activations.linear``). :class:`KerasVisModel` gives an ONNX
model the same surface. The index -> ONNX tensor mapping lives here and nowhere else:

- **a Keras model** (converted on the fly with ``converters.to_onnx``; TensorFlow/Keras are
  imported only then): ``layers[i]`` is Keras' own ``model.layers[i]``, found in the ONNX graph by
  its name (``onnxviz.find_layer``: the last node of that layer, i.e. its output after its
  activation). Layers that leave no node in an inference export (``Dropout``) keep their index but
  have no tensor: visualizing them is an error naming the layer.
- **an ONNX model**: ``layers`` is onnxviz's own layer listing, ``onnxviz.graph.model_layers`` (what
  ``onnxviz layers`` shows: the layers as the exporting framework knew them — Keras layer names,
  PyTorch module paths — in graph order), without its graph-input rows: there is no input layer,
  index 0 is the first layer, as in a Keras 3 ``Sequential``. A layer's tensor is that listing's
  ``output``, the tensor ``--layer NAME`` means on the command line. (Where ``model_layers`` is not
  available, nodes are grouped here by the first scope segment of their names, ``conv2d_1/BiasAdd``
  -> ``conv2d_1``, or the PyTorch module path; a graph without scoped names has one layer per node.)

Indices of the two kinds differ when layers vanish in the export (the keras-vis tutorial's CNN has
8 Keras layers, 6 of which leave ONNX nodes): find indices with ``utils.find_layer_idx`` rather than
writing numbers.
"""

from __future__ import annotations

import difflib
import hashlib
import os
import weakref
from dataclasses import dataclass
from typing import Any, Callable, Sequence

import numpy as np
import onnx

from ..errors import LayerNotFoundError, OnnxvizError
from ..graph import layer_table, load_model, model_layers, tensor_shape
from ..images import model_input
from ..ops import CONV_POOL_OPS
from ..runtime import make_session
from . import activations as _activations

__all__ = ["KerasVisModel", "LayerView", "KerasVisError", "KerasVisLayerNotFoundError", "UnsupportedOptionError",
           "as_model", "is_keras_model", "activation_name"]


class KerasVisError(OnnxvizError, ValueError):
    """A keras-vis call that cannot be carried out as written (also a ``ValueError``, which is what
    keras-vis raised)."""


class UnsupportedOptionError(KerasVisError):
    """A keras-vis option (or option value) that onnxviz cannot honour; the message says why and
    what to use instead. Nothing is silently ignored."""


class KerasVisLayerNotFoundError(LayerNotFoundError, ValueError):
    """No layer of that name (or index): keras-vis' ``find_layer_idx`` raised ``ValueError``;
    this is that and onnxviz's :class:`~onnxviz.errors.LayerNotFoundError` at once."""


#: ONNX op -> the name of the activation a layer ending in it has (what ``LayerView.activation``
#: starts as for ONNX models).
_OP_ACTIVATIONS = {"Softmax": "softmax", "Sigmoid": "sigmoid", "LogSoftmax": "log_softmax", "Relu": "relu",
                   "Tanh": "tanh", "Elu": "elu", "Selu": "selu", "Softplus": "softplus", "LeakyRelu": "leaky_relu",
                   "HardSigmoid": "hard_sigmoid", "Gelu": "gelu"}
#: Activations ``apply_modifications`` can replace by ``linear`` on an ONNX model (``to_logits``).
_STRIPPABLE = ("softmax", "sigmoid", "log_softmax")


def activation_name(fn: Any) -> str:
    """The name of an activation given as a function (Keras' or :mod:`onnxviz.keras_vis.activations`),
    a string, or ``None`` (linear)."""
    if fn is None:
        return "linear"
    if isinstance(fn, str):
        return fn.strip().lower()
    name = getattr(fn, "__name__", None) or getattr(fn, "name", None) or type(fn).__name__
    return str(name).lower()


@dataclass
class LayerView:
    """One layer of a :class:`KerasVisModel`, shaped like a Keras layer where keras-vis code reads it:
    ``name``, ``activation`` (settable: ``apply_modifications`` honours a final softmax -> linear
    swap), ``output_shape`` (batch first, ``None`` for a free batch)."""

    index: int
    name: str
    tensor: str | None  # the ONNX tensor this layer's output is; None when the export left no node
    op_types: tuple[str, ...]
    output_shape: tuple[Any, ...] | None
    activation: Any
    class_name: str = ""  # the Keras class for Keras layers, else the ONNX op of the layer's last node

    def __post_init__(self) -> None:
        self._original_activation = activation_name(self.activation)

    @property
    def is_conv_or_pool(self) -> bool:
        return bool(CONV_POOL_OPS.intersection(self.op_types))

    def __repr__(self) -> str:
        return (f"<LayerView {self.index}: {self.name!r} ({self.class_name}) -> {self.tensor!r}, "
                f"shape {self.output_shape}, activation {activation_name(self.activation)}>")


class KerasVisModel:
    """An ONNX model with a keras-vis face: ``layers``, ``get_layer(name)``, ``input_shape``,
    ``output_shape`` and ``predict``. Build one with :func:`onnxviz.keras_vis.utils.load_model` (or
    let any ``visualize_*`` call wrap a model for you). ``onnx_model`` is the ``ModelProto`` every
    visualization runs on; it is never modified in place (``apply_modifications`` returns a new
    :class:`KerasVisModel`)."""

    def __init__(self, model: Any, *, keras_model: Any = None, source: str | None = None):
        self.onnx_model: onnx.ModelProto = load_model(model)
        self.source = source if source is not None else (os.fspath(model) if isinstance(model, (str, os.PathLike))
                                                         else None)
        self._cache: dict[Any, Any] = {}
        self.layers: list[LayerView] = self._keras_layers(keras_model) if keras_model is not None else \
            self._onnx_layers()
        for view in self.layers:
            view._owner = weakref.ref(self)

    # ------------------------------------------------------------------------------ layers
    def _listing(self) -> list[tuple[str, str | None, tuple[int, ...]]]:
        """(layer name, output tensor, node indices) per layer, in graph order (see the module doc)."""
        if "listing" not in self._cache:
            rows = [(r.name, r.output, tuple(r.nodes)) for r in model_layers(self.onnx_model) if r.kind == "layer"]
            self._cache["listing"] = rows
        return self._cache["listing"]

    def _groups(self) -> dict[str, list[int]]:
        """layer name -> indices of its nodes."""
        return {name: list(members) for name, _, members in self._listing()}

    def _shapes(self) -> dict[str, tuple]:
        out: dict[str, tuple] = {}
        for layer in layer_table(self.onnx_model):
            for name, shape in zip(layer.outputs, layer.shapes):
                if name and shape is not None:
                    out[name] = tuple(shape)
        return out

    def _view(self, index: int, name: str, tensor: str | None, members: Sequence[int], shapes: dict,
              activation: Any = None, class_name: str | None = None) -> LayerView:
        nodes = self.onnx_model.graph.node
        ops = tuple(dict.fromkeys(nodes[i].op_type for i in members))
        shape = shapes.get(tensor) if tensor else None
        if shape is not None:
            shape = (None,) + tuple(d if isinstance(d, int) else None for d in shape[1:])
        if activation is None:
            last = next((nodes[i] for i in members if tensor in nodes[i].output), None) if tensor else None
            op = last.op_type if last is not None else ""
            activation = _activations.get(_OP_ACTIVATIONS.get(op, "linear"))
        return LayerView(index, name, tensor, ops, shape, activation,
                         class_name if class_name is not None else (nodes[members[-1]].op_type if members else ""))

    def _onnx_layers(self) -> list[LayerView]:
        shapes = self._shapes()
        views = []
        for name, tensor, members in self._listing():
            views.append(self._view(len(views), name, tensor, members, shapes))
        return views

    def _keras_layers(self, keras_model: Any) -> list[LayerView]:
        found = {name: (tensor, members) for name, tensor, members in self._listing()}
        shapes = self._shapes()
        views = []
        for i, layer in enumerate(keras_model.layers):
            tensor, members = found.get(layer.name, (None, ()))
            act = getattr(layer, "activation", None)
            views.append(self._view(i, layer.name, tensor, members, shapes,
                                    activation=act if act is not None else _activations.linear,
                                    class_name=type(layer).__name__))
        return views

    def get_layer(self, name: str | None = None, index: int | None = None) -> LayerView:
        """The layer named ``name`` (or at ``index``), like ``keras.Model.get_layer``."""
        if index is not None:
            return self.layer(index)
        return self.layer(self.layer_index(name))

    def layer_index(self, name: Any) -> int:
        names = [layer.name for layer in self.layers]
        if isinstance(name, str) and name in names:
            return names.index(name)
        close = difflib.get_close_matches(str(name), names, n=5, cutoff=0.5)
        hint = f"; closest: {', '.join(close)}" if close else ""
        raise KerasVisLayerNotFoundError(f"No layer with name {name!r} within the model{hint} "
                                         f"(layers: {', '.join(names)})")

    def layer(self, index: Any) -> LayerView:
        """The layer at ``index`` (negative counts from the end; a name works too)."""
        if isinstance(index, str):
            return self.layers[self.layer_index(index)]
        if isinstance(index, LayerView):
            return index
        if not isinstance(index, (int, np.integer)) or isinstance(index, bool):
            raise KerasVisLayerNotFoundError(f"layer_idx must be an int (or a layer name), not {type(index).__name__}")
        n = len(self.layers)
        if not -n <= int(index) < n:
            raise KerasVisLayerNotFoundError(f"layer_idx {int(index)} out of range: the model has {n} layers "
                                             f"(valid: {-n}..{n - 1}; names: {', '.join(l.name for l in self.layers)})")
        return self.layers[int(index)]

    def tensor(self, index: Any) -> tuple[LayerView, str]:
        """(layer, its ONNX tensor); a layer without one is an error naming it."""
        layer = self.layer(index)
        if layer.tensor is None:
            raise KerasVisError(f"layer {layer.index} ({layer.name!r}, {layer.class_name or 'layer'}) left no node in the "
                                "ONNX export (it does nothing at inference, like Dropout): pick the layer before it")
        return layer, layer.tensor

    # ------------------------------------------------------------------------------ inputs / outputs
    def spec(self, input_range: Sequence[float] | None = None):
        """The image input (:class:`onnxviz.images.ModelInput`), ``input_range`` over the recorded range."""
        key = ("spec", None if input_range is None else tuple(float(v) for v in input_range))
        if key not in self._cache:
            self._cache[key] = model_input(self.onnx_model, value_range=input_range)
        return self._cache[key]

    @property
    def input_shape(self) -> tuple[Any, ...]:
        s = self.spec()
        return (None,) + tuple(s.shape)

    @property
    def output_shape(self) -> tuple[Any, ...] | None:
        shape = tensor_shape(self.onnx_model, self.onnx_model.graph.output[0].name)
        return None if shape is None else (None,) + tuple(d if isinstance(d, int) else None for d in shape[1:])

    def cached(self, key: Any, build: Callable[[], Any]) -> Any:
        """An object (session, gradient function, engine) built once per key for this model."""
        if key not in self._cache:
            self._cache[key] = build()
        return self._cache[key]

    def predict(self, x: np.ndarray, batch_size: int | None = None, verbose: int = 0) -> np.ndarray:
        """The first output for a batch (model layout, or ``(N, H, W, C)``), as the model now computes
        it: probabilities, or logits after a softmax -> linear swap. ``batch_size``/``verbose`` are
        accepted for Keras-style calls and unused."""
        spec = self.spec()
        batch = to_model_batch(x, spec)
        sess = self.cached("session", lambda: make_session(self.onnx_model, "auto"))
        name = self.onnx_model.graph.output[0].name
        return sess.run([name], {spec.name: batch})[0]

    def summary(self) -> str:
        """The layer listing as text (index, name, op / class, output shape, activation)."""
        rows = [f"{'#':>3}  {'name':24} {'kind':16} {'output shape':20} activation"]
        for layer in self.layers:
            rows.append(f"{layer.index:>3}  {layer.name:24} {layer.class_name:16} {str(layer.output_shape):20} "
                        f"{activation_name(layer.activation)}")
        return "\n".join(rows)

    def __repr__(self) -> str:
        where = f" from {self.source}" if self.source else ""
        return f"<KerasVisModel{where}: {len(self.layers)} layers>"


# ---------------------------------------------------------------------------------- images
def to_model_batch(x: Any, spec) -> np.ndarray:
    """One image or a batch in the model's layout, ``(H, W, C)`` / ``(N, H, W, C)`` channels-last, or
    ``(H, W)`` for one channel -> a float32 batch in the model's layout (values are used as given:
    they must already be in the model's input range, as keras-vis' ``seed_input``)."""
    a = np.asarray(x, dtype=np.float32)
    per = tuple(spec.shape)
    hwc = (spec.height, spec.width, spec.channels)
    if a.shape == per:
        return a[None].copy()
    if a.ndim == len(per) + 1 and a.shape[1:] == per:
        return np.ascontiguousarray(a)
    for batched in (False, True):
        b = a[None] if not batched else a
        if b.ndim == 4 and b.shape[1:] == hwc:
            return np.ascontiguousarray(_hwc_to_model(b, spec))
        if b.ndim == 3 and spec.channels == 1 and b.shape[1:] == hwc[:2]:
            return np.ascontiguousarray(_hwc_to_model(b[..., None], spec))
    raise KerasVisError(f"an image of shape {a.shape} does not fit the model input {spec.describe()}: give "
                        f"{per} (the model's layout), {hwc} (channels last)"
                        + (f" or {hwc[:2]}" if spec.channels == 1 else "") + ", optionally with a batch axis of 1")


def _hwc_to_model(b: np.ndarray, spec) -> np.ndarray:
    """(N, H, W, C) values in the model's range -> the model's layout (values unchanged)."""
    if spec.layout == "NCHW":
        out = b.transpose(0, 3, 1, 2)
    elif spec.layout == "NHW":
        out = b[..., 0]
    else:
        out = b
    return out.reshape((len(b),) + tuple(spec.shape)).astype(np.float32)


def to_hwc_image(x: np.ndarray, spec) -> np.ndarray:
    """One image in the model's layout -> ``(H, W, C)``."""
    return np.asarray(spec.to_hwc(np.asarray(x)[None]))[0]


# ---------------------------------------------------------------------------------- Keras
def is_keras_model(obj: Any) -> bool:
    """A Keras (3) model object, told by its classes' modules (Keras itself is not imported)."""
    if isinstance(obj, (str, bytes, os.PathLike, onnx.ModelProto, KerasVisModel)):
        return False
    return hasattr(obj, "layers") and any(
        (getattr(c, "__module__", "") or "").split(".")[0] in ("keras", "tf_keras") for c in type(obj).__mro__)


#: id(keras model) -> (weak reference, state digest, converted model)
_KERAS_CACHE: dict[int, tuple[Any, str, KerasVisModel]] = {}


def _keras_state(model: Any) -> str:
    """A digest of what the ONNX export depends on: the weights and each layer's name, class and
    activation (the keras-vis swap)."""
    h = hashlib.blake2b(digest_size=16)
    for layer in model.layers:
        h.update(f"{layer.name}|{type(layer).__name__}|{activation_name(getattr(layer, 'activation', None))};".encode())
    for w in model.get_weights():
        a = np.ascontiguousarray(w)
        h.update(str(a.shape).encode())
        h.update(a.tobytes())
    return h.hexdigest()


def from_keras(model: Any) -> KerasVisModel:
    """The Keras model as ONNX (``converters.to_onnx``, parity checked), converted again only when its
    weights or layer activations changed since the last call."""
    for key in [k for k, (ref, _, _) in _KERAS_CACHE.items() if ref() is None]:
        del _KERAS_CACHE[key]
    state = _keras_state(model)
    entry = _KERAS_CACHE.get(id(model))
    if entry is not None and entry[0]() is model and entry[1] == state:
        return entry[2]
    try:
        import converters
    except ImportError as e:  # pragma: no cover - converters ships with onnxviz
        raise KerasVisError(f"converting a Keras model needs onnxviz's converters package: {e}") from e
    result = converters.to_onnx(model)
    km = KerasVisModel(result.model, keras_model=model, source=f"Keras model {getattr(model, 'name', '')!r}")
    _KERAS_CACHE[id(model)] = (weakref.ref(model), state, km)
    return km


def as_model(model: Any) -> KerasVisModel:
    """What every keras-vis function works on: a :class:`KerasVisModel` as is; a Keras model
    converted (cached); an ONNX path, bytes or ``ModelProto`` loaded; other framework files
    (``.keras``, ``.h5``, SavedModel, TorchScript ...) through ``converters.to_onnx``."""
    if isinstance(model, KerasVisModel):
        return model
    if is_keras_model(model):
        return from_keras(model)
    if isinstance(model, (str, os.PathLike)):
        path = os.fspath(model)
        if not path.lower().endswith(".onnx") and os.path.exists(path):
            import converters

            return KerasVisModel(converters.to_onnx(path).model, source=path)
    if isinstance(model, (str, os.PathLike, bytes, bytearray, onnx.ModelProto)):
        return KerasVisModel(model)
    raise KerasVisError(f"cannot use a {type(model).__name__} as a model: give a Keras model, an ONNX file or "
                        "onnx.ModelProto, or onnxviz.keras_vis.utils.load_model(...)")
