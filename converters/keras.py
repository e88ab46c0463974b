"""Keras 3 model object, ``.keras`` file or legacy ``.h5`` file -> ONNX.

Uses Keras' own exporter (``model.export(path, format="onnx")``, tf2onnx inside) because
``tf2onnx.convert.from_keras`` fails on Keras 3 (KeyError 'keras_tensor_N'). The export is then
made friendly to onnxviz: node names carry the Keras layer names again, the batch dimension is
symbolic, and the metadata records the source and the input layout. ``to_onnx`` (in
``converters``) adds the parity check and writes the file.

A legacy Keras 2 / tf.keras ``.h5`` file (a whole Sequential or functional model, as
``model.save("x.h5")`` writes it) is loaded by Keras 3's ``load_model`` and then converted the same
way. Keras ``channels_first`` models work although TensorFlow's CPU kernels refuse NCHW convolutions:
the export only traces the graph (tf2onnx maps NCHW convolutions onto ONNX's own layout), and when
eager execution fails the source side of the parity check runs the model XLA-compiled instead.
Constants the exporter leaves as extra graph inputs (a Normalization layer's mean and variance, as in
EfficientNet) are turned back into initializers.

Keras and TensorFlow are imported only when a conversion runs.
"""

from __future__ import annotations

import contextlib
import importlib
import io
import logging
import os
import re
import sys
import tempfile
import warnings
from collections import Counter
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import onnx

from converters import (META_LAYOUT, META_SOURCE, Converted, ConvertOptions, first_line, is_hdf5, layout_metadata,
                        missing_dependency)
from onnxviz.errors import ConversionError

__all__ = ["convert", "convert_h5", "rename_exported_nodes", "layer_tree", "quiet_import", "quiet_loggers",
           "quiet_tensorflow", "unique_names"]

EXTRA = "keras"

# Keras 3.15's exporter opens one TensorFlow name scope per model and per layer, and TensorFlow
# makes each scope unique with one "_<digits>" suffix: model "sequential", layers "conv2d" and
# "conv2d_1" export as "sequential_1/conv2d_1/..." and "sequential_1/conv2d_1_2/...".
_SUFFIXED = re.compile(r"^(?P<base>.+)_(?P<n>\d+)$")

LayerTree = dict[str, "LayerTree"]


# --------------------------------------------------------------------------- quiet framework use

def quiet_import(modules: Sequence[str], what: str) -> list[Any]:
    """Import TensorFlow-side ``modules`` in order, naming the extra to install when one is missing.

    When TensorFlow is not imported yet and the user set no level, its C++ start-up logs are
    silenced: TF_CPP_MIN_LOG_LEVEL is set for the import only (TensorFlow reads it once, at its first
    log line) and the environment is restored afterwards.
    """
    quiet = "TF_CPP_MIN_LOG_LEVEL" not in os.environ and "tensorflow" not in sys.modules
    if quiet:
        os.environ["TF_CPP_MIN_LOG_LEVEL"] = "2"
    try:
        with quiet_tensorflow():
            return [importlib.import_module(name) for name in modules]
    except ImportError as e:
        raise missing_dependency(EXTRA, what, e) from e
    finally:
        if quiet:
            os.environ.pop("TF_CPP_MIN_LOG_LEVEL", None)


def _import_keras() -> Any:
    if "keras" in sys.modules:
        return sys.modules["keras"]
    return quiet_import(["keras"], "converting a Keras model")[0]


@contextlib.contextmanager
def quiet_loggers(names: Sequence[str]) -> Iterator[None]:
    """For the block only: the named loggers at ERROR, Python warnings off, stdout swallowed —
    how every exporter here hides its chatter; every setting is restored afterwards."""
    loggers = [logging.getLogger(name) for name in names]
    levels = [logger.level for logger in loggers]
    for logger in loggers:
        logger.setLevel(logging.ERROR)
    try:
        with warnings.catch_warnings(), contextlib.redirect_stdout(io.StringIO()):
            warnings.simplefilter("ignore")
            yield
    finally:
        for logger, level in zip(loggers, levels):
            logger.setLevel(level)


@contextlib.contextmanager
def quiet_tensorflow() -> Iterator[None]:
    """Hide what the exporter prints (stdout chatter, Python warnings, tf2onnx/TF info logs) for
    the duration of the block only, restoring every setting afterwards (tf2onnx also sets
    TF_CPP_MIN_LOG_LEVEL=3 in os.environ when imported: that is undone too)."""
    env_level = os.environ.get("TF_CPP_MIN_LOG_LEVEL")
    try:
        with quiet_loggers(("tf2onnx", "tensorflow", "absl")):
            yield
    finally:
        if env_level is None:
            os.environ.pop("TF_CPP_MIN_LOG_LEVEL", None)
        else:
            os.environ["TF_CPP_MIN_LOG_LEVEL"] = env_level


def _source_version(keras: Any) -> str:
    backend = keras.backend.backend()
    module = sys.modules.get(backend)
    if module is None:
        try:
            module = importlib.import_module(backend)
        except ImportError:
            module = None
    version = getattr(module, "__version__", "unknown")
    return f"keras {keras.__version__} / {backend} {version}"


# --------------------------------------------------------------------------- the conversion

def convert(source: Any, options: ConvertOptions) -> Converted:
    """Export a Keras 3 model (object or ``.keras`` path) to ONNX with Keras layer names kept."""
    if isinstance(source, (str, os.PathLike)):
        path = Path(source)
        if not path.is_file():  # before importing TensorFlow: a typo should fail fast
            raise ConversionError(f"{path}: no such file")
        keras = _import_keras()
        model = _load_keras_file(path, keras)
    else:
        keras = _import_keras()
        model = source
    return _convert_model(model, options, keras)


def convert_h5(source: Any, options: ConvertOptions) -> Converted:
    """A legacy Keras 2 / tf.keras ``.h5`` file: loaded by Keras 3, then exported like any Keras model."""
    path = Path(source)
    if not path.is_file():
        raise ConversionError(f"{path}: no such file")
    if not is_hdf5(path):  # before importing TensorFlow
        raise ConversionError(f"{path}: not an HDF5 file (no HDF5 signature)")
    keras = _import_keras()
    try:
        with quiet_tensorflow():
            model = keras.models.load_model(path, compile=False)
    except Exception as e:
        raise ConversionError(
            f"{path}: cannot load as a Keras model ({first_line(e)}); a weights-only .h5 (save_weights) "
            "needs its model: build it, load the weights, and pass the model object"
        ) from e
    converted = _convert_model(model, options, keras)
    converted.source_version += " (from .h5)"
    converted.metadata[META_SOURCE] = converted.source_version
    return converted


def _convert_model(model: Any, options: ConvertOptions, keras: Any) -> Converted:
    if not isinstance(model, keras.Model):
        raise ConversionError(f"expected a keras.Model, got {type(model).__qualname__}")

    _ensure_called(model, options, keras)
    with tempfile.TemporaryDirectory(prefix="onnxviz-keras-") as tmp:
        exported = Path(tmp) / "model.onnx"
        _export(model, exported, options, keras)
        try:
            onnx_model = onnx.load(str(exported))
        except Exception as e:
            raise ConversionError(f"Keras' ONNX export produced an unreadable file: {first_line(e)}") from e
    _freeze_captured_inputs(onnx_model, model, keras)

    tree = layer_tree(model)
    nodes = onnx_model.graph.node
    for node, name in zip(nodes, rename_exported_nodes([n.name for n in nodes], model.name, tree)):
        node.name = name

    metadata = {META_SOURCE: _source_version(keras)}
    layout = _image_layout(model, keras)
    layout = layout_metadata(onnx_model, layout)
    if layout is not None:
        metadata[META_LAYOUT] = layout

    def run_source(inputs: list[np.ndarray]) -> list[np.ndarray]:
        return _run_keras(model, inputs, keras)

    return Converted(onnx_model, metadata[META_SOURCE], run_source=run_source, metadata=metadata)


def _load_keras_file(path: Path, keras: Any) -> Any:
    try:
        with quiet_tensorflow():
            return keras.saving.load_model(path, compile=False)
    except Exception as e:
        raise ConversionError(f"{path}: cannot load as a Keras model ({first_line(e)})") from e


def _is_functional(model: Any) -> bool:
    return any(cls.__name__ == "Functional" for cls in type(model).__mro__)


def _declared_inputs(model: Any) -> list[Any] | None:
    """The model's symbolic inputs (KerasTensors), or None when it has none yet (subclassed,
    or a Sequential without an Input that was never built)."""
    try:
        inputs = model.inputs
    except (AttributeError, ValueError):
        return None
    return list(inputs) if inputs else None


def _ensure_called(model: Any, options: ConvertOptions, keras: Any) -> None:
    """Keras' exporter needs a model that has been called once: call it on a dummy batch if not."""
    if model.built and getattr(model, "_called", True):
        return
    if options.example_input is not None:
        batch = list(options.example_input)
    else:
        shapes = options.input_shape
        declared = _declared_inputs(model)
        if shapes is None and declared is not None:
            shapes = []
            for tensor in declared:
                dims = list(tensor.shape)
                if any(d is None for d in dims[1:]):
                    raise ConversionError(
                        f"model input {tensor.name!r} has free dimensions {tuple(dims)}; pass input_shape"
                    )
                shapes.append((1, *dims[1:]))
        if shapes is None:
            raise ConversionError(
                f"Keras model {model.name!r} has never been built or called; pass input_shape "
                "(batch first, e.g. (1, 28, 28, 1)) or example_input"
            )
        dtypes = [keras.backend.standardize_dtype(t.dtype) for t in declared] if declared else ["float32"] * len(shapes)
        batch = [np.zeros(shape, dtype=dtype) for shape, dtype in zip(shapes, dtypes)]
    try:
        _call_keras(model, batch, keras)
    except Exception as e:
        raise ConversionError(f"calling Keras model {model.name!r} on a dummy batch failed: {first_line(e)}") from e


def _input_signature(model: Any, shapes: Sequence[tuple[int, ...]], keras: Any) -> list[Any]:
    """An export signature from user-given shapes: batch left free, other dims fixed."""
    declared = _declared_inputs(model) or []
    if declared and len(declared) != len(shapes):
        raise ConversionError(f"input_shape gives {len(shapes)} shapes but the model has {len(declared)} inputs")
    specs = []
    for i, shape in enumerate(shapes):
        tensor = declared[i] if declared else None
        dtype = keras.backend.standardize_dtype(tensor.dtype) if tensor is not None else "float32"
        name = getattr(tensor, "name", None)
        specs.append(keras.InputSpec(shape=(None, *shape[1:]), dtype=dtype, name=name))
    if len(specs) > 1 and _is_functional(model):
        return [specs]  # a functional model takes one positional argument: the list of its inputs
    return specs


def _export(model: Any, path: Path, options: ConvertOptions, keras: Any) -> None:
    kwargs: dict[str, Any] = {"format": "onnx", "verbose": False}
    if options.opset is not None:
        kwargs["opset_version"] = int(options.opset)
    if options.input_shape is not None:
        kwargs["input_signature"] = _input_signature(model, options.input_shape, keras)
    try:
        with quiet_tensorflow(), _exportable_ops(keras):
            model.export(str(path), **kwargs)
    except ImportError as e:  # tf2onnx (or the backend's exporter) missing
        raise missing_dependency(EXTRA, "exporting a Keras model to ONNX", e) from e
    except Exception as e:
        raise ConversionError(f"Keras' ONNX export of {model.name!r} failed: {first_line(e)}") from e
    if not path.is_file():
        raise ConversionError(f"Keras' ONNX export of {model.name!r} wrote no file")


@contextlib.contextmanager
def _exportable_ops(keras: Any) -> Iterator[None]:
    """For the export only, on the TensorFlow backend: two ops tf2onnx cannot convert as Keras
    traces them (ConvNeXt has both) are traced as ops it can.

    - Grouped convolutions (``Conv2D(groups=...)``: ConvNeXt's depthwise 7x7) and channels_first 3-D
      ones: TensorFlow's CPU kernels lack them, so Keras runs them in an XLA-compiled ``tf.function``,
      which traces as a ``StatefulPartitionedCall`` that grappler never inlines (functions marked for
      XLA are left alone) and the ONNX model keeps as a TensorFlow op. Here they trace as the plain
      ``tf.nn.convolution`` (tf2onnx maps a grouped Conv2D to ONNX ``Conv`` with ``group``); the export
      only traces them, never runs them. Other convolutions go through Keras' own code unchanged.
    - ``Erfc``, which exact GELU traces to (``tf.nn.gelu``: ``0.5 x erfc(-x / sqrt 2)``) and tf2onnx has
      no handler for: one is registered, ``1 - Erf``.
    """
    if keras.backend.backend() != "tensorflow":
        yield
        return
    _register_erfc()
    try:
        import tensorflow as tf
        from keras.src.backend import standardize_data_format
        from keras.src.backend.tensorflow import nn as tf_nn
        original, to_tf_format = tf_nn.conv, tf_nn._convert_data_format
    except (ImportError, AttributeError):  # another Keras layout: export as Keras does
        yield
        return

    def conv(inputs: Any, kernel: Any, strides: Any = 1, padding: str = "valid", data_format: Any = None,
             dilation_rate: Any = 1) -> Any:
        layout = standardize_data_format(data_format)
        channels = inputs.shape[-1] if layout == "channels_last" else inputs.shape[1]
        if channels == kernel.shape[-2] and not (layout == "channels_first" and len(inputs.shape) == 5):
            return original(inputs, kernel, strides, padding, data_format, dilation_rate)
        return tf.nn.convolution(inputs, kernel, strides, padding.upper(),
                                 data_format=to_tf_format(layout, len(inputs.shape)), dilations=dilation_rate)

    tf_nn.conv = conv
    try:
        yield
    finally:
        tf_nn.conv = original


def _register_erfc() -> None:
    """Give tf2onnx a handler for TensorFlow's ``Erfc``: ``Sub(1, Erf(x))`` (ONNX Erf: opset 9)."""
    from tf2onnx import constants, utils
    from tf2onnx.handler import tf_op

    if any("Erfc" in handlers for handlers in tf_op.get_opsets().get(constants.ONNX_DOMAIN, [])):
        return

    class Erfc:
        @classmethod
        def version_9(cls, ctx: Any, node: Any, **kwargs: Any) -> None:
            dtype = utils.map_onnx_to_numpy_type(ctx.get_dtype(node.input[0]))
            one = ctx.make_const(utils.make_name(f"{node.name}_one"), np.array(1, dtype))
            node.type = "Erf"
            sub = ctx.insert_new_node_on_output("Sub", node.output[0], name=utils.make_name(node.name),
                                                inputs=[one.output[0], node.output[0]])
            ctx.set_dtype(sub.output[0], ctx.get_dtype(node.output[0]))
            ctx.copy_shape(node.output[0], sub.output[0])

    tf_op("Erfc")(Erfc)


_TF_TENSOR_NAME = re.compile(r"^.+/.+:\d+$")  # "efficientnetb0_1/normalization_1/Sub/y:0"


def _freeze_captured_inputs(onnx_model: onnx.ModelProto, model: Any, keras: Any) -> None:
    """Turn constants the export left as graph inputs back into initializers.

    tf2onnx's ``from_function`` (inside Keras' exporter) lists every non-resource input of the
    traced function as a model input, captured constants included: a Normalization layer built with
    ``mean=``/``variance=`` (EfficientNet has one) exports as a model with extra inputs
    ``efficientnetb0_1/normalization_1/Sub/y:0``. Tracing the model once more with the same inputs
    gives the same graph names, and each capture's value; such inputs become initializers.
    """
    graph = onnx_model.graph
    initializers = {t.name for t in graph.initializer}
    inputs = [v for v in graph.input if v.name not in initializers]
    suspects = [v for v in inputs if _TF_TENSOR_NAME.match(v.name)]
    if not suspects or keras.backend.backend() != "tensorflow":
        return
    import tensorflow as tf

    user_inputs = [v for v in inputs if v not in suspects]
    specs = []
    for value in user_inputs:
        tensor_type = value.type.tensor_type
        shape = [d.dim_value if d.HasField("dim_value") else None for d in tensor_type.shape.dim]
        dtype = tf.as_dtype(onnx.helper.tensor_dtype_to_np_dtype(tensor_type.elem_type))
        specs.append(tf.TensorSpec([None, *shape[1:]] if shape else shape, dtype))

    def call(*args: Any) -> Any:
        return model(args[0] if len(args) == 1 else list(args), training=False)

    try:
        with quiet_tensorflow():
            traced = tf.function(call, autograph=False).get_concrete_function(*specs)
    except Exception as e:
        raise ConversionError(f"the export left inputs {[v.name for v in suspects]} that are constants of the model, "
                              f"and tracing it to recover them failed: {first_line(e)}") from e
    captured = {inner.name: outer for outer, inner in traced.graph.captures if outer.dtype != tf.resource}
    missing = [v.name for v in suspects if v.name not in captured]
    if missing:
        raise ConversionError(f"the export left inputs {missing} that are not inputs of the model and could not be "
                              "recovered as constants")
    for value in suspects:
        array = np.asarray(captured[value.name])
        graph.initializer.append(onnx.numpy_helper.from_array(array, value.name))
        graph.input.remove(value)


def _run_keras(model: Any, inputs: list[np.ndarray], keras: Any) -> list[np.ndarray]:
    """The source side of the parity check: Keras inference, outputs flattened in export order."""
    outputs = _call_keras(model, inputs, keras)
    return [np.asarray(keras.ops.convert_to_numpy(t)) for t in keras.tree.flatten(outputs)]


def _call_keras(model: Any, inputs: list[np.ndarray], keras: Any) -> Any:
    """``model(inputs, training=False)``; on the TensorFlow backend, when eager execution fails
    (TensorFlow's CPU kernels refuse NCHW convolutions and pooling of ``channels_first`` models),
    the same call compiled by XLA, which supports every layout."""
    batch = inputs[0] if len(inputs) == 1 else list(inputs)
    try:
        with quiet_tensorflow():
            return model(batch, training=False)
    except Exception as eager_error:
        if keras.backend.backend() != "tensorflow":
            raise
        import tensorflow as tf

        compiled = tf.function(lambda x: model(x, training=False), jit_compile=True)
        try:
            with quiet_tensorflow():
                return compiled(batch)
        except Exception:
            raise eager_error from None  # XLA could not help: report what eager execution said


# --------------------------------------------------------------------------- layout

def _walk_layers(layer: Any) -> Iterator[Any]:
    for child in _sublayers(layer):
        yield child
        yield from _walk_layers(child)


def _image_layout(model: Any, keras: Any) -> str:
    """"NHWC" or "NCHW" for the model's image inputs, from the first layer that declares a
    data_format (else Keras' global image_data_format)."""
    data_format = next(
        (layer.data_format for layer in _walk_layers(model)
         if getattr(layer, "data_format", None) in ("channels_last", "channels_first")),
        keras.config.image_data_format(),
    )
    return "NCHW" if data_format == "channels_first" else "NHWC"


# --------------------------------------------------------------------------- names

def _sublayers(layer: Any) -> list[Any]:
    """Direct sub-layers: ``Model.layers``, else the layers tracked by a composite layer."""
    layers = getattr(layer, "layers", None)
    if layers is None:
        flatten = getattr(layer, "_flatten_layers", None)
        layers = list(flatten(include_self=False, recursive=False)) if callable(flatten) else []
    return list(layers)


def layer_tree(layer: Any) -> LayerTree:
    """The names of a model's layers, nested for models/layers that contain layers."""
    return {child.name: layer_tree(child) for child in _sublayers(layer)}


def _model_scope(node_names: Sequence[str], model_name: str) -> tuple[str | None, bool | None]:
    """Find the exported model scope and whether the export suffixes scopes.

    Keras knows the model's exact name, so the first path segment tells the convention: equal to
    the name -> scopes are plain; the name plus one ``_<digits>`` -> every scope carries one suffix.
    Returns (scope, suffixed), or (None, None) when no segment matches the model's name.
    """
    counts = Counter(name.split("/", 1)[0] for name in node_names if "/" in name)
    for segment, _ in counts.most_common():
        if segment == model_name:
            return segment, False
        match = _SUFFIXED.match(segment)
        if match and match["base"] == model_name:
            return segment, True
    return None, None


def _match_layer(segment: str, level: LayerTree, suffixed: bool | None) -> str | None:
    """The layer that scope ``segment`` belongs to at this level, under the export's convention."""
    match = _SUFFIXED.match(segment)
    stripped = match["base"] if match else None
    if suffixed is True:
        return stripped if stripped in level else None
    if suffixed is False:
        return segment if segment in level else None
    # Convention unknown (no model scope found): prefer the suffixed reading, as Keras 3 exports.
    if stripped in level:
        return stripped
    return segment if segment in level else None


def rename_exported_nodes(node_names: Sequence[str], model_name: str, tree: LayerTree) -> list[str]:
    """Map Keras-exported node names back to Keras layer names.

    ``sequential_1/conv2d_1_2/convolution`` -> ``conv2d_1/convolution`` for a model ``sequential``
    whose layers (``tree``) include ``conv2d_1``: the model scope is dropped and each layer scope
    loses its one export suffix, checked against the real layer names level by level (nested models
    keep their path, ``inner/dense/MatMul``). A node whose scope is no layer (nodes tf2onnx added,
    such as ``Transpose__32``) keeps its name. Names stay unique (a clash gets ``__<k>``).
    """
    scope, suffixed = _model_scope(node_names, model_name)
    renamed = []
    for name in node_names:
        parts = name.split("/")
        if scope is not None:
            if parts[0] != scope or len(parts) < 3:
                renamed.append(name)
                continue
            start = 1
        else:
            start = 0
        mapped: list[str] = []
        level = tree
        index = start
        while index < len(parts) - 1:  # the last segment is the op, never a layer scope
            layer = _match_layer(parts[index], level, suffixed)
            if layer is None:
                break
            mapped.append(layer)
            level = level[layer]
            index += 1
        renamed.append("/".join(mapped + parts[index:]) if mapped else name)
    return unique_names(renamed)


def unique_names(names: list[str]) -> list[str]:
    """Keep the first of equal non-empty names; later ones get ``__<k>`` (a name not yet taken)."""
    taken = set(names)
    used: set[str] = set()
    result = []
    for name in names:
        if name and name in used:
            k = 1
            while f"{name}__{k}" in taken:
                k += 1
            name = f"{name}__{k}"
            taken.add(name)
        used.add(name)
        result.append(name)
    return result
