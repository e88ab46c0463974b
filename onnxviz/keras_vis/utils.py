"""keras-vis' ``vis.utils.utils`` for onnxviz: ``find_layer_idx``, ``apply_modifications``, and the
small array helpers its tutorials use (``normalize``, ``deprocess_input``, ``stitch_images``,
``load_img``). Plus :func:`load_model`, the one call keras-vis code needs to run on an ONNX file.
"""

from __future__ import annotations

import difflib
import os
import weakref
from typing import Any, Sequence

import numpy as np

from ..rewrite import final_activation, to_logits
from . import activations
from ._model import (KerasVisError, KerasVisLayerNotFoundError, KerasVisModel, LayerView, UnsupportedOptionError,
                     activation_name, as_model, is_keras_model)

__all__ = ["find_layer_idx", "apply_modifications", "load_model", "normalize", "deprocess_input", "stitch_images",
           "load_img"]


def load_model(source: Any) -> KerasVisModel:
    """A model keras-vis code can work on: an ONNX file, bytes or ``onnx.ModelProto`` (or a
    ``.keras`` / ``.h5`` / SavedModel / TorchScript file, converted with ``converters.to_onnx``) as a
    :class:`~onnxviz.keras_vis.KerasVisModel` with ``.layers``. A Keras model object needs no
    loading: pass it to the ``visualize_*`` functions as it is."""
    return as_model(source)


def find_layer_idx(model: Any, layer_name: str) -> int:
    """The index of the layer named ``layer_name``: in ``model.layers`` for a Keras model, in the
    ONNX layer listing (:class:`~onnxviz.keras_vis.KerasVisModel`) otherwise. An unknown name raises
    :class:`~onnxviz.keras_vis.KerasVisLayerNotFoundError` (a ``ValueError``, as in keras-vis, and an
    onnxviz ``LayerNotFoundError``) listing the closest names."""
    if is_keras_model(model):
        names = [layer.name for layer in model.layers]
        if layer_name in names:
            return names.index(layer_name)
        close = difflib.get_close_matches(str(layer_name), names, n=5, cutoff=0.5)
        hint = f"; closest: {', '.join(close)}" if close else ""
        raise KerasVisLayerNotFoundError(f"No layer with name {layer_name!r} within the model{hint} "
                                         f"(layers: {', '.join(names)})")
    return as_model(model).layer_index(layer_name)


def apply_modifications(model: Any, custom_objects: Any = None) -> Any:
    """Make the layer changes made on ``model`` take effect, as keras-vis did; the result is a new
    model, the argument is left as it is.

    - **Keras model**: a clone with the same weights (``keras.models.clone_model``), built from the
      layers' current configuration, so ``model.layers[i].activation = activations.linear`` is in
      it (Keras' own ``predict`` of the original keeps its already-traced softmax). Every
      ``visualize_*`` call converts the Keras model it is given (once per weights/activations
      state). ``custom_objects`` go to the clone's scope.
    - **ONNX model** (:class:`~onnxviz.keras_vis.KerasVisModel`): the one change that can be made on
      an ONNX graph is honoured — a layer ending in a final Softmax / Sigmoid / LogSoftmax (one that
      feeds a graph output) set to ``linear``: the activation node is removed
      (``onnxviz.to_logits``), so that layer's output, and the model's, are the logits. Any other
      activation change raises :class:`~onnxviz.keras_vis.UnsupportedOptionError` (change the
      Keras model and convert it instead).
    """
    if is_keras_model(model):
        return _clone_keras(model, custom_objects)
    km = as_model(model)
    onnx_model = km.onnx_model
    finals = {}
    for out in onnx_model.graph.output:
        act = final_activation(onnx_model, out.name)
        if act is not None:
            finals[act.index] = (out.name, act)
    changed = False
    stripped: dict[str, str] = {}  # layer name -> the graph output that now carries its logits
    groups = km._groups()
    for layer in km.layers:
        new = activation_name(layer.activation)
        old = layer._original_activation
        if new == old:
            continue
        members = set(groups.get(layer.name, []))
        hit = [finals[i] for i in sorted(members) if i in finals]
        if new == "linear" and old in ("softmax", "sigmoid", "log_softmax") and hit:
            for out_name, _ in hit:
                onnx_model = to_logits(onnx_model, out_name)
            stripped[layer.name] = hit[0][0]
            changed = True
            continue
        why = ("its activation is not a final Softmax/Sigmoid feeding a model output" if new == "linear"
               else "onnxviz can only remove a final activation from an ONNX graph, not add or replace one")
        raise UnsupportedOptionError(f"cannot change layer {layer.index} ({layer.name!r}) from {old} to {new} in an "
                                     f"ONNX model: {why}; make the change on the Keras model and convert it")
    if not changed:
        return km
    out = KerasVisModel(onnx_model, source=km.source)
    # keep the indices: a layer that was nothing but the activation (a separate Softmax node) now has
    # no node; it stays in the listing as the identity on the logits that the model now outputs
    fresh = {layer.name: layer for layer in out.layers}
    views = []
    for old in km.layers:
        if old.name in fresh:
            view = fresh.pop(old.name)
        elif old.name in stripped:
            view = LayerView(0, old.name, stripped[old.name], (), old.output_shape, activations.linear, "Identity")
        else:  # pragma: no cover - removing an activation never removes another layer
            raise KerasVisError(f"layer {old.name!r} disappeared when its activation was removed")
        views.append(view)
    views.extend(fresh.values())
    for i, view in enumerate(views):
        view.index = i
        view._owner = weakref.ref(out)
    out.layers = views
    return out


def _clone_keras(model: Any, custom_objects: Any) -> Any:
    import keras

    try:
        if custom_objects:
            with keras.saving.custom_object_scope(custom_objects):
                clone = keras.models.clone_model(model)
        else:
            clone = keras.models.clone_model(model)
        clone.set_weights(model.get_weights())
    except Exception as e:  # subclassed models cannot be cloned from their config
        raise KerasVisError(f"cannot rebuild Keras model {getattr(model, 'name', '')!r} with its modifications "
                            f"({type(e).__name__}: {e}); the visualize_* functions also take the modified model "
                            "itself (Keras 3 applies a layer's new activation at once)") from e
    return clone


def normalize(array: Any, min_value: float = 0.0, max_value: float = 1.0) -> np.ndarray:
    """``array`` scaled linearly onto ``[min_value, max_value]`` (its minimum to ``min_value``, its
    maximum to ``max_value``); a constant array becomes ``min_value`` everywhere."""
    a = np.asarray(array, np.float64)
    lo, hi = float(a.min()), float(a.max())
    unit = (a - lo) / (hi - lo) if hi > lo else np.zeros_like(a)
    return (min_value + (max_value - min_value) * unit).astype(np.float32)


def deprocess_input(input_array: Any, input_range: Sequence[float] = (0, 255)) -> np.ndarray:
    """keras-vis' display rescaling of an optimized input: centred on 0.5 with a standard deviation
    of 0.1, clipped to [0, 1], then mapped onto ``input_range``. ``visualize_activation`` here
    returns the input itself (what the model scores); apply this for keras-vis' look."""
    a = np.asarray(input_array, np.float64)
    a = (a - a.mean()) / (a.std() + 1e-7) * 0.1 + 0.5
    lo, hi = float(input_range[0]), float(input_range[1])
    return ((hi - lo) * np.clip(a, 0.0, 1.0) + lo).astype(np.float32)


def stitch_images(images: Sequence[np.ndarray], margin: int = 5, cols: int = 5) -> np.ndarray | None:
    """The images (same shape, ``(H, W)`` or ``(H, W, C)``) in a grid of ``cols`` columns with
    ``margin`` pixels of zeros between them; ``None`` for no images."""
    if len(images) == 0:
        return None
    arrays = [np.asarray(im) for im in images]
    h, w = arrays[0].shape[:2]
    if any(a.shape != arrays[0].shape for a in arrays):
        raise KerasVisError("stitch_images needs images of one shape")
    cols = max(1, min(int(cols), len(arrays)))
    rows = -(-len(arrays) // cols)
    out = np.zeros((rows * h + (rows - 1) * margin, cols * w + (cols - 1) * margin) + arrays[0].shape[2:],
                   arrays[0].dtype)
    for k, a in enumerate(arrays):
        r, c = divmod(k, cols)
        out[r * (h + margin):r * (h + margin) + h, c * (w + margin):c * (w + margin) + w] = a
    return out


def load_img(path: str | os.PathLike, grayscale: bool = False, target_size: Sequence[int] | None = None) -> np.ndarray:
    """An image file as a uint8 array: ``(H, W, 3)`` RGB, or ``(H, W)`` with ``grayscale``;
    ``target_size`` = ``(H, W)`` resizes it (bilinear)."""
    from PIL import Image

    try:
        with Image.open(os.fspath(path)) as im:
            im = im.convert("L" if grayscale else "RGB")
            if target_size is not None:
                im = im.resize((int(target_size[1]), int(target_size[0])), Image.BILINEAR)
            return np.asarray(im, np.uint8).copy()
    except OSError as e:
        raise KerasVisError(f"cannot read image {os.fspath(path)!r}: {e}") from None

