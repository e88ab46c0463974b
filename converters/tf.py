"""TensorFlow SavedModel folder or ``.tflite`` file -> ONNX, through tf2onnx.

SavedModel: the serving signature (``serving_default``, else the first one; ``__call__`` when the
folder has no signature) is frozen by ``tf2onnx.tf_loader`` and converted by
``tf2onnx.convert.from_graph_def``; inputs and outputs take the signature's names, the parity
check calls the same signature. TFLite: ``tf2onnx.convert.from_tflite``, checked against the TFLite
interpreter (LiteRT's ``ai_edge_litert`` when installed, else ``tf.lite.Interpreter``) with its
reference kernels. TFLite models are NHWC by definition; a SavedModel's layout is read from the
converted graph (TensorFlow's CPU convolutions are NHWC, and tf2onnx transposes to NCHW for ONNX).

TensorFlow and tf2onnx come with the ``keras`` extra and are imported only when a conversion runs.
"""

from __future__ import annotations

import contextlib
import json
import os
import sys
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import onnx
from google.protobuf import text_format

from converters import (META_LAYOUT, META_SOURCE, Converted, ConvertOptions, first_line, layout_metadata,
                        missing_dependency)
from converters.keras import quiet_import, quiet_tensorflow
from onnxviz.errors import ConversionError
from onnxviz.graph import input_info

__all__ = ["convert_saved_model", "convert_tflite", "saved_model_signatures"]

EXTRA = "keras"
SAVED_MODEL_FILES = ("saved_model.pb", "saved_model.pbtxt")
TFLITE_IDENTIFIER = b"TFL3"
# tf.function wrappers that tf2onnx keeps as the first scope of every node of a SavedModel
_WRAPPER_SCOPES = ("StatefulPartitionedCall", "PartitionedCall")


def _import_tensorflow(what: str) -> tuple[Any, Any]:
    """(tensorflow, tf2onnx), imported quietly; a missing one names the extra to install."""
    tf, tf2onnx = quiet_import(["tensorflow", "tf2onnx"], what)
    return tf, tf2onnx


# --------------------------------------------------------------------------- SavedModel

def saved_model_signatures(path: Path) -> tuple[list[str], list[str]]:
    """(tags, signature names) of a SavedModel's first MetaGraph, read from ``saved_model.pb`` with
    protobuf alone (no TensorFlow graph is loaded). Raises ConversionError for an unreadable file."""
    from tensorflow.core.protobuf import saved_model_pb2

    saved_model = saved_model_pb2.SavedModel()
    pb, pbtxt = path / SAVED_MODEL_FILES[0], path / SAVED_MODEL_FILES[1]
    try:
        if pb.is_file():
            saved_model.ParseFromString(pb.read_bytes())
        else:
            text_format.Parse(pbtxt.read_text(), saved_model)
    except Exception as e:
        raise ConversionError(f"{path}: not a readable TensorFlow SavedModel ({first_line(e)})") from e
    if not saved_model.meta_graphs:
        raise ConversionError(f"{path}: the SavedModel holds no MetaGraph")
    meta_graph = saved_model.meta_graphs[0]
    signatures = [name for name in meta_graph.signature_def if not name.startswith("_")]
    return list(meta_graph.meta_info_def.tags), signatures


def convert_saved_model(source: Any, options: ConvertOptions) -> Converted:
    """A SavedModel folder's serving signature -> ONNX, checked against that signature."""
    path = Path(source)
    if not path.is_dir() or not any((path / name).is_file() for name in SAVED_MODEL_FILES):
        raise ConversionError(f"{path}: not a TensorFlow SavedModel (no saved_model.pb in it)")
    tf, tf2onnx = _import_tensorflow("converting a TensorFlow SavedModel")
    from tf2onnx import tf_loader

    tags, signatures = saved_model_signatures(path)
    signature = "serving_default" if "serving_default" in signatures else (signatures[0] if signatures else None)
    try:
        with quiet_tensorflow():
            graph_def, inputs, outputs, function, _imported, renames = tf_loader.from_saved_model(
                str(path), None, None, tag=tags or ["serve"],
                signatures=[signature] if signature else None,
                concrete_function=None if signature else 0,
                return_concrete_func=True, return_tensors_to_rename=True,
            )
    except Exception as e:
        raise ConversionError(f"{path}: cannot load the SavedModel's {signature or '__call__'} function: "
                              f"{first_line(e)}") from e
    if not inputs or not outputs:
        raise ConversionError(f"{path}: the {signature or '__call__'} function has no tensor inputs or outputs")

    declared = {t.name: tuple(t.shape.as_list()) if t.shape.rank is not None else () for t in function.inputs}
    shape_override = _shape_override(inputs, [declared.get(name, ()) for name in inputs], options)
    try:
        with quiet_tensorflow():
            onnx_model, _ = tf2onnx.convert.from_graph_def(
                graph_def, name=path.name, input_names=inputs, output_names=outputs, opset=options.opset,
                shape_override=shape_override, tensors_to_rename=renames,
            )
    except Exception as e:
        raise ConversionError(f"tf2onnx could not convert the SavedModel {path}: {first_line(e)}") from e
    _strip_wrapper_scope(onnx_model)

    input_names = [value.name for value in onnx_model.graph.input]
    output_names = [value.name for value in onnx_model.graph.output]
    by_signature = signature is not None

    def run_source(arrays: list[np.ndarray]) -> list[np.ndarray]:
        tensors = [tf.constant(a) for a in arrays]
        with quiet_tensorflow():
            if by_signature:  # a signature takes keyword arguments and returns a dict
                result = function(**dict(zip(input_names, tensors)))
            else:
                result = function(*tensors)
        if isinstance(result, dict) and all(name in result for name in output_names):
            values = [result[name] for name in output_names]
        else:
            values = tf.nest.flatten(result)
        return [np.asarray(v) for v in values]

    version = f"tensorflow {tf.__version__} (SavedModel)"
    metadata = {META_SOURCE: version}
    layout = _guessed_layout(onnx_model)
    if layout is not None:
        metadata[META_LAYOUT] = layout
    return Converted(onnx_model, version, run_source=run_source, metadata=metadata,
                     symbolic_batch=_batch_is_free(onnx_model))


def _shape_override(names: Sequence[str], shapes: Sequence[tuple], options: ConvertOptions) -> dict | None:
    """tf2onnx ``shape_override`` from the user's input_shape: given dims fill the free ones, the
    batch stays free when the source leaves it free."""
    if options.input_shape is None:
        return None
    order = ", ".join(f"{name} {_format_shape(shape)}" for name, shape in zip(names, shapes))
    if len(options.input_shape) != len(names):
        raise ConversionError(f"input_shape gives {len(options.input_shape)} shapes but the model has "
                              f"{len(names)} inputs (in this order: {order})")
    override = {}
    for name, declared, given in zip(names, shapes, options.input_shape):
        if len(declared) != len(given):
            raise ConversionError(f"input_shape {given} has rank {len(given)} but input {name!r} has rank "
                                  f"{len(declared)} (the inputs, in order: {order})")
        for axis, (have, want) in enumerate(zip(declared, given)):
            if have is not None and have != want and axis > 0:
                raise ConversionError(f"input_shape {given} does not fit input {name!r} of shape {tuple(declared)}")
        override[name] = [None if axis == 0 and declared[0] is None else int(d) for axis, d in enumerate(given)]
    return override


def _format_shape(shape: Sequence[int | None]) -> str:
    return "(" + ", ".join("?" if d is None else str(d) for d in shape) + ")"


def _strip_wrapper_scope(model: onnx.ModelProto) -> None:
    """``StatefulPartitionedCall/cnn_1/conv_1/Conv`` -> ``cnn_1/conv_1/Conv``: drop the tf.function
    wrapper scope tf2onnx puts in front of every node of a SavedModel (names stay unique: the
    stripped names are distinct when the originals are, and clashes with other names get ``__k``)."""
    nodes = model.graph.node
    scoped = [n for n in nodes if "/" in n.name]
    for wrapper in _WRAPPER_SCOPES:
        prefix = wrapper + "/"
        if scoped and all(n.name.startswith(prefix) for n in scoped):
            taken = {n.name for n in nodes}
            for node in scoped:
                name = node.name[len(prefix):]
                if name in taken:
                    k = 1
                    while f"{name}__{k}" in taken:
                        k += 1
                    name = f"{name}__{k}"
                taken.add(name)
                node.name = name
            return


def _guessed_layout(model: onnx.ModelProto) -> str | None:
    """The layout onnxviz reads from the converted graph (a Transpose to NCHW after an input means
    NHWC), recorded so that later readers need not guess."""
    layouts = {info.name: info.layout for info in input_info(model) if info.layout in ("NHWC", "NCHW")}
    kinds = set(layouts.values())
    if len(kinds) == 1:
        return layout_metadata(model, kinds.pop())
    if kinds:
        return json.dumps(layouts)
    return None


def _batch_is_free(model: onnx.ModelProto) -> bool:
    """Whether every graph input has a free first dimension (then it is named ``batch``)."""
    inputs = input_info(model)
    return bool(inputs) and all(i.shape and not isinstance(i.shape[0], int) for i in inputs)


# --------------------------------------------------------------------------- TFLite

def convert_tflite(source: Any, options: ConvertOptions) -> Converted:
    """A ``.tflite`` flatbuffer -> ONNX, checked against the TFLite interpreter."""
    path = Path(source)
    if not path.is_file():
        raise ConversionError(f"{path}: no such file")
    with path.open("rb") as f:
        head = f.read(8)
    if head[4:8] != TFLITE_IDENTIFIER:  # before importing TensorFlow or parsing anything
        raise ConversionError(f"{path}: not a TFLite model (no 'TFL3' identifier)")
    tf, tf2onnx = _import_tensorflow("converting a TFLite model")
    interpreter = _interpreter(path, tf)
    details = interpreter.get_input_details()
    names = [d["name"] for d in details]
    declared = [tuple(None if s < 0 else int(s) for s in d.get("shape_signature", d["shape"])) for d in details]
    shape_override = _shape_override(names, declared, options)
    try:
        with quiet_tensorflow(), _native_stderr_silenced():  # tf2onnx's own interpreter announces XNNPACK on fd 2
            onnx_model, _ = tf2onnx.convert.from_tflite(str(path), opset=options.opset, shape_override=shape_override)
    except Exception as e:
        raise ConversionError(f"tf2onnx could not convert the TFLite model {path}: {first_line(e)}") from e

    input_index = {d["name"]: d["index"] for d in details}
    output_index = {d["name"]: d["index"] for d in interpreter.get_output_details()}
    onnx_inputs = [v.name for v in onnx_model.graph.input]
    onnx_outputs = [v.name for v in onnx_model.graph.output]
    missing = [n for n in onnx_inputs if n not in input_index] + [n for n in onnx_outputs if n not in output_index]
    if missing:
        raise ConversionError(f"the converted TFLite model's tensors {missing} are not in the interpreter's inputs/outputs")

    def run_source(arrays: list[np.ndarray]) -> list[np.ndarray]:
        for name, array in zip(onnx_inputs, arrays):
            interpreter.resize_tensor_input(input_index[name], list(array.shape), strict=False)
        interpreter.allocate_tensors()
        for name, array in zip(onnx_inputs, arrays):
            interpreter.set_tensor(input_index[name], np.ascontiguousarray(array))
        interpreter.invoke()
        return [np.array(interpreter.get_tensor(output_index[name])) for name in onnx_outputs]

    version = f"tensorflow {tf.__version__} (TFLite)"
    metadata = {META_SOURCE: version}
    layout = layout_metadata(onnx_model, "NHWC")  # TFLite image tensors are NHWC by definition
    if layout is not None:
        metadata[META_LAYOUT] = layout
    free_batch = all(d and d[0] is None for d in declared)
    return Converted(onnx_model, version, run_source=run_source, metadata=metadata, symbolic_batch=free_batch)


@contextlib.contextmanager
def _native_stderr_silenced() -> Iterator[None]:
    """Send what C++ code writes to file descriptor 2 to /dev/null for the block (Python-level
    errors still arrive as exceptions); a no-op where fd 2 cannot be duplicated."""
    try:
        sys.stderr.flush()
        saved = os.dup(2)
    except (OSError, ValueError):
        yield
        return
    try:
        with open(os.devnull, "wb") as devnull:
            os.dup2(devnull.fileno(), 2)
            yield
    finally:
        os.dup2(saved, 2)
        os.close(saved)


def _interpreter(path: Path, tf: Any) -> Any:
    """A TFLite interpreter on the reference kernels (no XNNPACK delegate: the parity check compares
    against TFLite's own arithmetic); LiteRT when installed, else tf.lite (deprecated, still shipped)."""
    try:
        from ai_edge_litert import interpreter as litert

        interpreter_type, resolver = litert.Interpreter, litert.OpResolverType.BUILTIN_WITHOUT_DEFAULT_DELEGATES
    except ImportError:
        interpreter_type = getattr(getattr(tf, "lite", None), "Interpreter", None)
        if interpreter_type is None:
            raise missing_dependency(
                EXTRA, "checking a TFLite conversion",
                ModuleNotFoundError("No module named 'ai_edge_litert'", name="ai_edge_litert"),
            ) from None
        resolver = tf.lite.experimental.OpResolverType.BUILTIN_WITHOUT_DEFAULT_DELEGATES
    try:
        with quiet_tensorflow():
            return interpreter_type(model_path=str(path), experimental_op_resolver_type=resolver)
    except Exception as e:
        raise ConversionError(f"{path}: the TFLite interpreter cannot load it ({first_line(e)})") from e
