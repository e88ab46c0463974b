"""Model inspection: load and validate, infer shapes, the node table and the layers as the framework
knew them (``model_layers``), ``find_layer``, input layout and value range, and the ``onnxviz.*``
metadata keys.

Everything here reads a model and never changes the caller's ``ModelProto``; functions that return a
model return a new one.
"""

from __future__ import annotations

import ast
import json
import math
import os
import re
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterable, Union

import numpy as np
import onnx
from onnx import helper

from .errors import LayerNotFoundError, ModelLoadError, OnnxvizError, ShapeError, not_found, one_line
from .graphview import GraphView, Shape, dims, value_names, value_types
from .layout import guess_input_layout
from .ops import ACTIVATIONS, CONV_OPS

__all__ = [
    "META_CLASSES", "META_LAYOUT", "META_RANGE", "META_RANGE_SOURCE", "META_SOURCE", "DEFAULT_VALUE_RANGE",
    "Shape", "Layer", "ModelLayer", "InputInfo", "ModelSource",
    "load_model", "infer_shapes", "layer_table", "conv_layers", "model_layers", "model_layer", "layer_output",
    "tensor_shape", "tensor_dtype", "find_layer",
    "layer_names", "input_info", "metadata", "set_metadata", "class_names", "opset_version",
    "parameter_count", "model_summary", "check_value_range", "RANGE_SOURCES", "read_class_names",
    "check_class_names", "output_units",
]

#: Metadata key: image layout of the inputs, ``"NHWC"``/``"NCHW"`` (all image inputs) or a JSON
#: object ``{"input name": "NHWC", ...}``.
META_LAYOUT = "onnxviz.input_layout"
#: Metadata key: value range of the inputs, JSON ``[lo, hi]`` (or ``{"input name": [lo, hi]}``).
META_RANGE = "onnxviz.input_range"
#: Metadata key: where ``onnxviz.input_range`` came from: ``user`` (given at conversion),
#: ``source`` (known from the source model) or ``guess`` (nobody said; ``onnxviz info`` says so).
META_RANGE_SOURCE = "onnxviz.input_range_source"
RANGE_SOURCES = ("user", "source", "guess")
#: Metadata key: class names of the (first) output, JSON list of strings.
META_CLASSES = "onnxviz.class_names"
#: Metadata key: where the model came from (file name, framework, converter).
META_SOURCE = "onnxviz.source"

#: Range assumed for float inputs without ``onnxviz.input_range`` metadata (see ``input_info``).
DEFAULT_VALUE_RANGE = (0.0, 1.0)

#: A tensor shape: one entry per dim, ``int`` static, ``str`` symbolic (``"N"``), ``None`` unknown.
ModelSource = Union[str, os.PathLike, bytes, onnx.ModelProto]

_TWO_GB = 2**31
# producers whose exports append a ``_<digits>`` uniquifier to every scope segment
_KERAS_PRODUCERS = ("tf2onnx", "keras", "tensorflow", "tf")


# --------------------------------------------------------------------------------------- loading
def load_model(source: ModelSource, *, check: bool = True) -> onnx.ModelProto:
    """Load a model from a path, serialized bytes or a ``ModelProto`` (copied, never mutated).

    Every failure — missing file, not an ONNX file, truncated file, invalid graph — raises
    :class:`ModelLoadError` with one line naming the source. External data (models > 2 GB) loads
    when given by path. ``check`` runs ``onnx.checker`` on the result.
    """
    if isinstance(source, onnx.ModelProto):
        label = "<ModelProto>"
        model = onnx.ModelProto()
        model.CopyFrom(source)
        if check:
            _check(model, label)
        return model
    if isinstance(source, (bytes, bytearray, memoryview)):
        label = f"<{len(source)} bytes>"
        model = _parse(bytes(source), label)
        if check:
            _check(model, label)
        return model
    if not isinstance(source, (str, os.PathLike)):
        raise ModelLoadError(f"cannot read model of type {type(source).__name__}: "
                             "expected a path, bytes or onnx.ModelProto")
    path = Path(os.fspath(source))
    label = f"'{path}'"
    if not path.exists():
        raise ModelLoadError(f"cannot read model {label}: no such file")
    if path.is_dir():
        raise ModelLoadError(f"cannot read model {label}: it is a directory, not an ONNX file")
    if not path.is_file():  # /dev/zero would be read forever
        raise ModelLoadError(f"cannot read model {label}: not a regular file (a device, pipe or socket)")
    if path.stat().st_size > 2**31:
        raise ModelLoadError(f"cannot read model {label}: {path.stat().st_size:,} bytes, over the 2 GB an ONNX "
                             "file can hold (larger models keep their weights in external data)")
    try:
        data = path.read_bytes()
    except OSError as e:
        raise ModelLoadError(f"cannot read model {label}: {e.strerror or e}") from None
    model = _parse(data, label)
    if _uses_external_data(model):
        try:
            onnx.load_external_data_for_model(model, str(path.parent))
        except Exception as e:  # missing/short .data file
            raise ModelLoadError(f"cannot read model {label}: external data: {one_line(e)}") from None
    if check:
        _check(model, label, path=path)
    return model


def _parse(data: bytes, label: str) -> onnx.ModelProto:
    model = onnx.ModelProto()
    if not data:
        raise ModelLoadError(f"cannot read model {label}: empty file")
    try:
        model.ParseFromString(data)
    except Exception:
        raise ModelLoadError(f"cannot read model {label}: not an ONNX file (protobuf parse failed; "
                             "truncated or not a model)") from None
    # protobuf happily parses many byte strings; a real model has an IR version and a graph.
    if model.ir_version <= 0 or not model.HasField("graph"):
        raise ModelLoadError(f"cannot read model {label}: not an ONNX file (no IR version or graph)")
    return model


def _check(model: onnx.ModelProto, label: str, path: Path | None = None) -> None:
    try:
        check_structure(model)
    except Exception as e:
        raise ModelLoadError(f"cannot read model {label}: invalid ONNX model: {one_line(e)}") from None


def check_structure(model: onnx.ModelProto, full_check: bool = False) -> None:
    """``onnx.checker.check_model`` without the cost of the weights: large initializers are
    checked as typed graph inputs, so the checker never serializes them (fast on large models)
    and models over 2 GB can be checked in memory. Raises what the checker raises."""
    onnx.checker.check_model(weights_as_inputs(model), full_check=full_check)


def weights_as_inputs(model: onnx.ModelProto, limit: int = 1 << 16) -> onnx.ModelProto:
    """A copy of ``model`` whose initializers above ``limit`` bytes are graph inputs of the same
    type and shape: all that the checker, shape inference and the version converter need of them,
    without copying or serializing the weights."""
    graph = model.graph
    out = onnx.ModelProto()
    for field, value in model.ListFields():  # everything but the graph, rebuilt below
        if field.name == "graph":
            continue
        if hasattr(value, "extend"):  # repeated field (works across protobuf versions)
            getattr(out, field.name).extend(value)
        elif field.message_type is not None:
            getattr(out, field.name).CopyFrom(value)
        else:
            setattr(out, field.name, value)
    g = out.graph
    g.name, g.doc_string = graph.name, graph.doc_string
    g.node.extend(graph.node)
    g.output.extend(graph.output)
    g.value_info.extend(graph.value_info)
    g.sparse_initializer.extend(graph.sparse_initializer)
    g.input.extend(graph.input)
    declared = {i.name for i in graph.input}
    for t in graph.initializer:
        if t.data_location != onnx.TensorProto.EXTERNAL and _tensor_nbytes(t) <= limit:
            g.initializer.append(t)
        elif t.name not in declared:
            g.input.append(helper.make_tensor_value_info(t.name, t.data_type, list(t.dims)))
    return out


def _uses_external_data(model: onnx.ModelProto) -> bool:
    return any(t.data_location == onnx.TensorProto.EXTERNAL for t in model.graph.initializer)


# --------------------------------------------------------------------------------------- shapes
def infer_shapes(model: onnx.ModelProto) -> onnx.ModelProto:
    """A copy of ``model`` with ONNX shape inference applied (``value_info`` filled, symbolic dims
    such as ``N``/``batch_size`` kept). Works for > 2 GB models: weights are left out of the copy
    given to the inference engine (it needs only their shapes)."""
    skeleton = weights_as_inputs(model)  # inference needs only the weights' types and shapes
    try:
        inferred = onnx.shape_inference.infer_shapes(skeleton, check_type=False, strict_mode=False,
                                                     data_prop=True)
    except Exception:  # inference must never make inspection fail: keep what the model declares
        inferred = skeleton
    out = onnx.ModelProto()
    out.CopyFrom(model)
    del out.graph.value_info[:]
    out.graph.value_info.extend(inferred.graph.value_info)
    for dst, src in zip(out.graph.output, inferred.graph.output):
        if src.name == dst.name and src.HasField("type"):
            dst.type.CopyFrom(src.type)
    return out


def _tensor_nbytes(t: onnx.TensorProto) -> int:
    if t.raw_data:
        return len(t.raw_data)
    n = 1
    for d in t.dims:
        n *= d
    return n * 4


def tensor_shape(model: onnx.ModelProto, name: str) -> Shape | None:
    """Shape of any value (input, output, intermediate, initializer); ``None`` when the rank is
    unknown. Unknown name → :class:`LayerNotFoundError` with suggestions."""
    return _tensor_type(model, name)[1]


def tensor_dtype(model: onnx.ModelProto, name: str) -> int:
    """ONNX element type (``onnx.TensorProto.FLOAT`` ...) of any value; 0 when unknown."""
    return _tensor_type(model, name)[0]


def _tensor_type(model: onnx.ModelProto, name: str) -> tuple[int, Shape | None]:
    types = value_types(model)
    if name in types and types[name][1] is not None and types[name][0]:
        return types[name]
    types = value_types(infer_shapes(model))
    if name in types:
        return types[name]
    names = value_names(model)
    if name in names:
        return (0, None)
    raise LayerNotFoundError(not_found("tensor", name, names))


# --------------------------------------------------------------------------------------- layers
@dataclass(frozen=True)
class Layer:
    """One node of the graph, with the shapes of its outputs (from shape inference)."""

    index: int
    name: str
    op_type: str
    inputs: tuple[str, ...]
    outputs: tuple[str, ...]
    shapes: tuple[Shape | None, ...]

    @property
    def output(self) -> str:
        """The first output tensor — what a layer "is" for visualization."""
        return self.outputs[0] if self.outputs else ""

    @property
    def shape(self) -> Shape | None:
        return self.shapes[0] if self.shapes else None

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready: index, name, op_type, inputs, outputs, shape (first output), shapes."""
        return {
            "index": self.index,
            "name": self.name,
            "op_type": self.op_type,
            "inputs": list(self.inputs),
            "outputs": list(self.outputs),
            "shape": None if self.shape is None else list(self.shape),
            "shapes": [None if s is None else list(s) for s in self.shapes],
        }


def layer_table(model: onnx.ModelProto) -> list[Layer]:
    """One :class:`Layer` per node, in graph (topological) order, shapes from shape inference."""
    types = value_types(infer_shapes(model))
    rows = []
    for i, node in enumerate(model.graph.node):
        rows.append(Layer(
            index=i,
            name=node.name,
            op_type=node.op_type if node.domain in ("", "ai.onnx") else f"{node.domain}.{node.op_type}",
            inputs=tuple(node.input),
            outputs=tuple(node.output),
            shapes=tuple(types.get(o, (0, None))[1] if o else None for o in node.output),
        ))
    return rows


def _layer(model: onnx.ModelProto, index: int) -> Layer:
    node = model.graph.node[index]
    types = value_types(infer_shapes(model))
    return Layer(index, node.name, node.op_type, tuple(node.input), tuple(node.output),
                 tuple(types.get(o, (0, None))[1] if o else None for o in node.output))


_UNIQ = re.compile(r"_\d+$")


def _node_scopes(node: onnx.NodeProto, stripped_first: bool) -> list[tuple[int, str]]:
    """(priority, scope key) pairs under which a node can be found by a layer/scope name.

    Lower priority wins. Keras/tf2onnx: ``sequential_1/conv2d_1_2/convolution`` belongs to the
    layer ``conv2d_1`` (one ``_<digits>`` uniquifier per segment stripped; preferred when
    ``stripped_first``) and to the exact segment ``conv2d_1_2``; any contiguous run of scope
    segments is a key (``sequential/conv2d_1``). PyTorch: ``/layer4/layer4.1/conv2/Conv`` belongs
    to the modules ``layer4``, ``layer4.1`` and ``layer4.1.conv2``.
    """
    keys: list[tuple[int, str]] = []
    scope = _scope(node.name)
    stripped_pri, exact_pri = (0, 1) if stripped_first else (1, 0)
    for variant, pri in ((scope, exact_pri), ([_UNIQ.sub("", s) for s in scope], stripped_pri)):
        for i in range(len(variant)):
            for j in range(i + 1, len(variant) + 1):
                keys.append((pri, "/".join(variant[i:j])))
    if stripped_first:
        return keys
    # PyTorch module paths (from the name, or from the dynamo exporter's metadata)
    scopes = _listed(node, _TORCH_SCOPES)
    keys += [(exact_pri, m) for m in _module_chain([s for s in scopes if s] if scopes is not None else scope)]
    return keys


_TORCH_SCOPES = "pkg.torch.onnx.name_scopes"


def _listed(node: onnx.NodeProto, key: str) -> list[str] | None:
    """A node metadata value holding a Python list of strings (the torch exporter's), else None."""
    for p in node.metadata_props:
        if p.key == key:
            try:
                value = ast.literal_eval(p.value)
            except (ValueError, SyntaxError):
                return None
            return [str(s) for s in value] if isinstance(value, (list, tuple)) else None
    return None


def _module_chain(segments: Iterable[str]) -> list[str]:
    """Module paths of nested scopes: ``layer4, layer4.1, conv2`` (or ``layer4, 1, conv2``) ->
    ``layer4``, ``layer4.1``, ``layer4.1.conv2``."""
    chain: list[str] = []
    for seg in segments:
        module = chain[-1] if chain else ""
        chain.append(seg if (not module or seg.startswith(module + ".")) else f"{module}.{seg}")
    return chain


def _scope(name: str) -> list[str]:
    """Scope segments of a node name (the last segment, the op itself, left out)."""
    segments = [s for s in name.split("/") if s]
    return segments[:-1] if len(segments) > 1 else []


def layer_names(model: onnx.ModelProto) -> list[str]:
    """The layer/scope names ``find_layer`` understands (besides node and tensor names), in order of
    first appearance."""
    stripped_first = _names_are_uniquified(model)
    seen: dict[str, None] = {}
    for node in model.graph.node:
        for _, key in _node_scopes(node, stripped_first):
            seen.setdefault(key, None)
    return list(seen)


def _names_are_uniquified(model: onnx.ModelProto) -> bool:
    """Whether node names carry the Keras 3 export's ``_<digits>`` uniquifiers.

    Measured on Keras 3.15 exports: one path names nodes ``sequential_1/conv2d_1_2/convolution``
    (every segment uniquified, the model scope first), another names them by the clean layer,
    ``conv2d_1/BiasAdd``, and keeps the uniquified path in the tensor names only. Only the first
    kind has the model scope, uniquified, as the first segment of every scoped node.
    """
    if not _is_keras(model):
        return False
    firsts = [scope[0] for scope in (_scope(n.name) for n in model.graph.node) if scope]
    return bool(firsts) and all(_UNIQ.search(f) for f in firsts)


def find_layer(model: onnx.ModelProto, key: str | int) -> Layer:
    """The node that ``key`` names; names come first, tried in this order:

    1. an ``int`` index (negative counts from the end, like Python);
    2. an exact node name;
    3. a tensor name (the node producing it);
    4. a layer as :func:`model_layers` lists it (``preds``, ``conv2d_1``, ``layer4.1.conv2``): the
       node producing the layer's output;
    5. a scope name: a Keras layer name despite the export's ``_<digits>`` uniquifiers, a scope
       path (``sequential/preds``), or a PyTorch module path (``layer4``, ``layer4.1``). A name
       covering several nodes gives the LAST of them in topological order (its output);
    6. a text that is an integer (``"3"``, ``"-1"``) and names nothing above: a node index. Such a
       text is never matched against scope segments, and when it is the name of a graph input or
       weight (opset-6 PyTorch exports number their values) it is ambiguous and refused.

    Anything else raises :class:`LayerNotFoundError` listing the closest names.
    """
    return _layer(model, _resolve(model, key)[0])


def layer_output(model: onnx.ModelProto, key: str | int) -> str:
    """The tensor ``key`` names: a tensor name is itself; else, in :func:`find_layer`'s order, a
    node's first output, a layer's ``output`` (``preds`` -> ``Identity:0``), a node index's first output."""
    if isinstance(key, str) and any(key in node.output for node in model.graph.node):
        return key
    return _resolve(model, key)[1]


def _resolve(model: onnx.ModelProto, key: str | int) -> tuple[int, str]:
    """(node index, tensor) for ``key`` (see :func:`find_layer`)."""
    nodes = model.graph.node
    if isinstance(key, (int, np.integer)) and not isinstance(key, bool):
        return _by_index(model, int(key))
    if not isinstance(key, str):
        raise LayerNotFoundError(f"layer key must be a name or an index, not {type(key).__name__}")
    for i, node in enumerate(nodes):
        if node.name == key:
            return i, _first_output(node)
    for i, node in enumerate(nodes):
        if key in node.output:
            return i, key
    groups = _groups(model, value_types(infer_shapes(model)))
    for name, _, at, tensor in groups:
        if name == key:
            return at, tensor
    values = {i.name for i in model.graph.input} | {t.name for t in model.graph.initializer}
    if re.fullmatch(r"[+-]?\d+", key.strip()):
        if key in values:
            raise LayerNotFoundError(f"{key!r} is a graph input or weight of the model, not a layer output; "
                                     "for a node by index give its output tensor (`onnxviz layers MODEL --nodes`)")
        return _by_index(model, int(key))
    if key in values:
        raise LayerNotFoundError(f"{key!r} is a graph input or weight, not the output of a layer")
    want = key.strip().strip("/")
    best: tuple[int, int] | None = None  # (priority, -index)
    stripped_first = _names_are_uniquified(model)
    for i, node in enumerate(nodes):
        for pri, scope in _node_scopes(node, stripped_first):
            if scope == want and (best is None or (pri, -i) < best):
                best = (pri, -i)
    if best is not None:
        return -best[1], _first_output(nodes[-best[1]])
    candidates = [g[0] for g in groups] + layer_names(model) + [n.name for n in nodes if n.name]
    raise LayerNotFoundError(not_found("layer", key, candidates,
                                        hint="run `onnxviz layers MODEL` to list them"))


def _first_output(node: onnx.NodeProto) -> str:
    return node.output[0] if node.output else ""


def _by_index(model: onnx.ModelProto, index: int) -> tuple[int, str]:
    n = len(model.graph.node)
    if not -n <= index < n:
        raise LayerNotFoundError(f"layer index {index} out of range: the model has {n} nodes "
                                 f"(valid: {-n}..{n - 1})")
    return index % n, _first_output(model.graph.node[index % n])


# ------------------------------------------------------------------------ layers as users know them
@dataclass(frozen=True)
class ModelLayer:
    """A layer as the framework that exported the model knew it (a Keras layer, a PyTorch module),
    or a graph input (``kind == "input"``, no nodes).

    ``output``: the last tensor its nodes produce that is read outside it or is a graph output (a
    data tensor before a shape one); a module whose submodules have rows of their own spans them
    (a ResNet block ``layer4.1``: its own Add, and the block's output after ``layer4.1.relu``).
    ``parameters``: elements of the initializers its nodes read, each counted in the first layer
    reading it; shapes, axes and indices are left out (int64/bool initializers, and those read by
    nodes that compute shapes). ``op_types``: its nodes' distinct op types, data ops first, then
    the ops that only compute shapes. ``nodes``: the indices of its nodes in the graph
    (``node_names`` their names).
    """

    name: str
    kind: str  # "layer" | "input"
    output: str
    shape: Shape | None
    parameters: int
    op_types: tuple[str, ...]
    nodes: tuple[int, ...]
    node_names: tuple[str, ...]

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready: name, kind, output, shape, parameters, op_types, nodes, node_names."""
        return {"name": self.name, "kind": self.kind, "output": self.output,
                "shape": None if self.shape is None else list(self.shape), "parameters": self.parameters,
                "op_types": list(self.op_types), "nodes": list(self.nodes), "node_names": list(self.node_names)}


def model_layers(model: onnx.ModelProto) -> list[ModelLayer]:
    """The layers as the model's framework knew them — what Keras' ``model.summary()`` lists —
    after one row per graph input, in the graph order of their outputs.

    Nodes are grouped by the names exporters give them. Keras / TensorFlow (tf2onnx): the first
    scope segment below the model scopes all nodes share (``conv2d_1/BiasAdd`` and the raw export's
    ``sequential_1/conv2d_1_2/convolution`` are in layer ``conv2d_1``). PyTorch: the innermost
    module, from the exporters' node metadata (``pkg.torch.onnx.name_scopes``, ``namespace``), a
    parameter the node reads (``fc.weight``) or the TorchScript name (``/features/features.0/Conv``
    -> ``features.0``). Other producers: the node name's scope path. A node outside every scope
    that only computes shapes or indices (a Constant, or int64/int32/bool outputs: Shape, Gather,
    Concat ...), or that tf2onnx added (``Transpose__30``), joins the layer reading its output; any
    other node outside every scope is a layer of its own, named as the node (or its output).
    """
    types = value_types(infer_shapes(model))
    inits = {t.name: t for t in model.graph.initializer}
    rows = [ModelLayer(i.name, "input", i.name, types.get(i.name, (0, None))[1], 0, (), (), ())
            for i in model.graph.input if i.name not in inits]
    nodes = model.graph.node
    # shapes, axes and indices are no parameters: int64/bool initializers, and what shape ops read
    counted = {t.name for t in inits.values() if t.data_type in (onnx.TensorProto.INT64, onnx.TensorProto.BOOL)}
    counted.update(t for n in nodes if _is_plumbing(n, types) for t in n.input)
    for name, indices, _, tensor in _groups(model, types):
        params = 0
        for t in (t for i in indices for t in nodes[i].input):
            if t in inits and t not in counted:
                counted.add(t)
                params += int(np.prod([int(d) for d in inits[t].dims]))
        ops = sorted(indices, key=lambda i: _is_plumbing(nodes[i], types))  # stable: data ops first
        rows.append(ModelLayer(name, "layer", tensor, types.get(tensor, (0, None))[1], params,
                               tuple(dict.fromkeys(_op_label(nodes[i]) for i in ops)), tuple(indices),
                               tuple(nodes[i].name for i in indices)))
    return rows


def model_layer(model: onnx.ModelProto, key: str | int) -> ModelLayer:
    """The row of :func:`model_layers` that ``key`` names (a layer or graph input name), else the
    row holding the node :func:`find_layer` finds for it."""
    rows = model_layers(model)
    for row in rows:
        if row.name == key:
            return row
    index = _resolve(model, key)[0]
    return next(row for row in rows if index in row.nodes)


def _op_label(node: onnx.NodeProto) -> str:
    return node.op_type if node.domain in ("", "ai.onnx") else f"{node.domain}.{node.op_type}"


_INDEX_TYPES = (onnx.TensorProto.INT64, onnx.TensorProto.INT32, onnx.TensorProto.BOOL)
_TF2ONNX_ADDED = re.compile(r"__\d+$")  # tf2onnx's names for the nodes it adds: Transpose__30
_TORCH_PARAM = re.compile(r"[A-Za-z_]\w*(?:\.\w+)+")  # features.0.weight (not onnx::Conv_27)


def _is_plumbing(node: onnx.NodeProto, types: dict[str, tuple[int, Shape | None]]) -> bool:
    """A Constant, or a node whose outputs are all shapes / indices / masks."""
    outs = [o for o in node.output if o]
    return node.op_type == "Constant" or (bool(outs) and all(types.get(o, (0,))[0] in _INDEX_TYPES for o in outs))


def _groups(model: onnx.ModelProto, types: dict[str, tuple[int, Shape | None]]
            ) -> list[tuple[str, list[int], int, str]]:
    """(layer name, node indices, index of the node producing the output, output tensor) per layer,
    in the order of their outputs (see :func:`model_layers`)."""
    nodes = model.graph.node
    readers: dict[str, list[int]] = {}
    for j, node in enumerate(nodes):
        for t in node.input:
            readers.setdefault(t, []).append(j)
    keys, sep = _scope_keys(model)
    scoped = {k for k in keys if k is not None}
    for i in range(len(nodes) - 1, -1, -1):  # readers come later in the graph: already keyed
        node = nodes[i]
        if keys[i] is None and (_is_plumbing(node, types) or (_is_keras(model) and _TF2ONNX_ADDED.search(node.name))):
            keys[i] = next((keys[j] for t in node.output if t for j in readers.get(t, ()) if keys[j]), None)
        if keys[i] is None:
            keys[i] = node.name or _first_output(node) or f"{node.op_type}_{i}"
    members: dict[str, list[int]] = {}
    for i, key in enumerate(keys):
        members.setdefault(key, []).append(i)
    subtree = {k: set(v) for k, v in members.items()}  # a module with rows of its own below it spans them
    for key in scoped if sep else ():
        parts = key.split(sep)
        for n in range(1, len(parts)):
            if sep.join(parts[:n]) in scoped:
                subtree[sep.join(parts[:n])].update(members[key])
    graph_outputs = {o.name for o in model.graph.output}
    groups = []
    for name, indices in members.items():
        span = subtree[name]
        leaving = [(i, t) for i in sorted(span) for t in nodes[i].output if t and (
            t in graph_outputs or any(j not in span for j in readers.get(t, ())))]
        data = [(i, t) for i, t in leaving if types.get(t, (0,))[0] not in _INDEX_TYPES]
        at, tensor = (data or leaving or [(indices[-1], _first_output(nodes[indices[-1]]))])[-1]
        groups.append((at, len(span), name, indices, tensor))
    return [(name, indices, at, tensor) for at, _, name, indices, tensor in sorted(groups)]  # a module after its parts


def _is_keras(model: onnx.ModelProto) -> bool:
    return any(model.producer_name.lower().startswith(p) for p in _KERAS_PRODUCERS)


def _scope_keys(model: onnx.ModelProto) -> tuple[list[str | None], str | None]:
    """Per node: the layer its name or metadata puts it in, ``None`` when outside every scope; and
    the separator of nested layer names (``layer4.1.conv2``, ``a/b``), ``None`` for Keras layers."""
    nodes = model.graph.node
    if model.producer_name.lower().startswith("pytorch") or any(_listed(n, _TORCH_SCOPES) is not None for n in nodes):
        params = {t.name for t in model.graph.initializer}
        return [_torch_module(n, params) for n in nodes], "."
    scopes = [_scope(n.name) for n in nodes]
    if not _is_keras(model):
        return ["/".join(s) or None for s in scopes], "/"
    scoped = [s for s in scopes if s]
    drop = 0  # model scopes around every node (sequential_1/, StatefulPartitionedCall/)
    while scoped and drop < min(map(len, scoped)) - 1 and len({s[drop] for s in scoped}) == 1:
        drop += 1
    strip = _names_are_uniquified(model)
    return [(_UNIQ.sub("", s[drop]) if strip else s[drop]) if s else None for s in scopes], None


def _torch_module(node: onnx.NodeProto, params: set[str]) -> str | None:
    """The innermost PyTorch module of a node, ``None`` outside every module, as onnxviz's torch
    converter names nodes: the owner of a parameter it reads (``features.0.weight`` ->
    ``features.0``: a Conv with a BatchNorm folded in is the conv's), else the scopes in its
    metadata (``pkg.torch.onnx.name_scopes``, then ``namespace``), else its TorchScript name."""
    text = next((p.value for p in node.metadata_props if p.key == "namespace"), None)
    namespace = None if text is None else [e.split(":", 1)[0].strip() for e in text.split("/")]
    owner = next((t.rsplit(".", 1)[0] for t in node.input if t in params and _TORCH_PARAM.fullmatch(t)), "")
    for scopes in ([owner], _modules_only(_listed(node, _TORCH_SCOPES)), _modules_only(namespace), _scope(node.name)):
        chain = _module_chain(s for s in scopes if s)
        if chain:
            return chain[-1]
    return None


def _modules_only(scopes: list[str] | None) -> list[str]:
    """The modules of a scope list: the dynamo exporter's start with the root module (``''``) and
    end with the op's own name (``['', 'features', 'features.2', 'relu']``); onnxviz's converter
    writes modules only."""
    if not scopes:
        return []
    return scopes[1:-1] if scopes[0] == "" else scopes


def conv_layers(model: onnx.ModelProto, op_types: Iterable[str] = CONV_OPS) -> list[str]:
    """Output tensors of the convolution layers in graph order, after their activation when a conv
    feeds exactly one elementwise activation (what a Keras ``Conv2D(activation=...)`` layer outputs)."""
    wanted = set(op_types)
    readers = GraphView(model).consumers
    out = []
    for node in model.graph.node:
        if node.op_type not in wanted:
            continue
        tensor = node.output[0]
        after = readers.get(tensor, [])
        if len(after) == 1 and after[0].op_type in ACTIVATIONS and after[0].input[0] == tensor:
            tensor = after[0].output[0]
        out.append(tensor)
    return out


# --------------------------------------------------------------------------------------- inputs
@dataclass(frozen=True)
class InputInfo:
    """A graph input (initializers excluded) with its image layout and value range."""

    name: str
    shape: Shape | None
    elem_type: int
    dtype: np.dtype
    layout: str | None  # "NCHW" / "NHWC" (rank 4), "NCDHW" / "NDHWC" (rank 5), else None
    value_range: tuple[float, float]
    #: True when nobody said what the range is: no metadata (the float default), or metadata a
    #: converter wrote as a guess (``onnxviz.input_range_source`` = ``guess``)
    range_guessed: bool = False

    def to_dict(self) -> dict[str, Any]:
        return {"name": self.name, "shape": None if self.shape is None else list(self.shape),
                "dtype": str(self.dtype), "layout": self.layout, "range": list(self.value_range),
                "range_guessed": self.range_guessed}


def input_info(model: onnx.ModelProto) -> list[InputInfo]:
    """Graph inputs with layout and value range.

    Layout: metadata ``onnxviz.input_layout`` wins; else a Transpose with perm ``[0,3,1,2]`` right
    after the input (through Cast/arithmetic preprocessing) means NHWC, a direct Conv/pool consumer
    means NCHW; else the dims decide (last dim in 1/3/4 and dim 1 not → NHWC, dim 1 in 1/3/4 →
    NCHW). Inputs that are not rank 4 (rank 5: NCDHW/NDHWC) have no layout (``None``).

    Value range: metadata ``onnxviz.input_range`` (JSON ``[lo, hi]``) wins. Otherwise float inputs
    default to ``(0.0, 1.0)``: the range of Keras/TF tutorials and of the shipped model, and the
    range images are displayed in, so a visualization never has to guess a normalisation;
    integer inputs default to their dtype's range (``uint8`` → ``(0, 255)``). Models trained on
    other ranges (``[-1, 1]``, ImageNet mean/std) should record it with ``set_metadata`` (or
    ``onnxviz convert --input-range``). ``range_guessed`` says when the float default was used or
    the metadata is marked as a guess (``onnxviz.input_range_source`` = ``guess``).
    """
    meta = metadata(model)
    layouts = _per_input(meta.get(META_LAYOUT), META_LAYOUT)
    ranges = _per_input(meta.get(META_RANGE), META_RANGE, is_range=True)
    marked_guess = meta.get(META_RANGE_SOURCE, "").strip().lower() == "guess"
    inits = {t.name for t in model.graph.initializer}
    infos = []
    for vi in model.graph.input:
        if vi.name in inits:
            continue
        elem = vi.type.tensor_type.elem_type if vi.type.HasField("tensor_type") else 0
        shape = dims(vi.type)
        try:
            dtype = np.dtype(helper.tensor_dtype_to_np_dtype(elem)) if elem else np.dtype(np.float32)
        except Exception:
            dtype = np.dtype(np.float32)
        layout = layouts.get(vi.name, layouts.get("*"))
        if layout is None:
            layout = guess_input_layout(model, vi.name, shape)
        value_range = ranges.get(vi.name, ranges.get("*"))
        guessed = value_range is not None and marked_guess
        if value_range is None:
            if np.issubdtype(dtype, np.integer):
                info = np.iinfo(dtype)
                value_range = (float(info.min), float(info.max))
            else:
                value_range, guessed = DEFAULT_VALUE_RANGE, True
        infos.append(InputInfo(vi.name, shape, elem, dtype, layout, value_range, guessed))
    return infos


def _per_input(raw: str | None, key: str, is_range: bool = False) -> dict[str, Any]:
    """Parse a metadata value that applies to all inputs (``"*"``) or is a per-input JSON object."""
    if raw is None:
        return {}
    try:
        value = json.loads(raw)
    except json.JSONDecodeError:
        value = raw  # a bare layout string like NHWC
    if isinstance(value, dict):
        items = value.items()
    else:
        items = [("*", value)]
    out: dict[str, Any] = {}
    for name, v in items:
        if is_range:
            if not (isinstance(v, (list, tuple)) and len(v) == 2
                    and all(isinstance(x, (int, float)) and not isinstance(x, bool) for x in v)):
                raise OnnxvizError(f"metadata {key!r} must be JSON [lo, hi], got {raw!r}")
            out[name] = check_value_range(v, f"metadata {key!r}")
        else:
            v = str(v).strip().upper()
            if v not in ("NCHW", "NHWC", "NCDHW", "NDHWC", "NONE", ""):
                raise OnnxvizError(f"metadata {key!r} must be NCHW or NHWC, got {raw!r}")
            out[name] = None if v in ("NONE", "") else v
    return out


def check_value_range(values: Any, what: str = "input range") -> tuple[float, float]:
    """``(lo, hi)`` as floats from two finite numbers with ``lo < hi``; else one clear
    :class:`OnnxvizError` naming ``what`` (e.g. ``--input-range '1,0'``)."""
    try:
        lo, hi = (float(v) for v in values)
    except (TypeError, ValueError):
        raise OnnxvizError(f"bad {what}: expected two numbers lo, hi like 0,1 or -1,1") from None
    if not (math.isfinite(lo) and math.isfinite(hi)):
        raise OnnxvizError(f"bad {what}: [{lo:g}, {hi:g}] is not finite; expected two numbers like 0,1 or -1,1")
    if not lo < hi:
        raise OnnxvizError(f"bad {what}: [{lo:g}, {hi:g}]: the low end must be below the high end")
    return lo, hi


#: The most values an input (every dim, batch included) may hold: 2**26 float32 is 256 MiB, far
#: above any image model's input (224x224x3 is 150,528), far below a typo's (100000x100000 is 37 GiB).
MAX_INPUT_VALUES = 2**26


def check_input_shape(name: str, model_shape: Shape | None, given: Iterable[int]) -> tuple[int, ...]:
    """``given`` (every dim of input ``name``, batch first) as ints, checked before anything runs:
    positive, the rank and every fixed dim of ``model_shape`` matched (onnxruntime would fail later
    with an opaque error), at most :data:`MAX_INPUT_VALUES` values (no gigabyte allocations)."""
    dims = tuple(int(d) for d in given)
    shown = ",".join(map(str, dims))
    if not dims or any(d < 1 for d in dims):
        raise ShapeError(f"bad --input-shape {shown}: every dim must be a positive integer")
    if model_shape is not None:
        if len(model_shape) != len(dims):
            raise ShapeError(f"--input-shape {shown} has rank {len(dims)} but input {name!r} has rank "
                             f"{len(model_shape)} {tuple(model_shape)}")
        for axis, (fixed, dim) in enumerate(zip(model_shape, dims)):
            if isinstance(fixed, int) and fixed > 0 and fixed != dim:
                raise ShapeError(f"--input-shape {shown} does not fit input {name!r} of shape {tuple(model_shape)}: "
                                 f"axis {axis} is fixed at {fixed}")
    if math.prod(dims) > MAX_INPUT_VALUES:
        raise ShapeError(f"--input-shape {shown} holds {math.prod(dims):,} values; onnxviz takes at most "
                         f"{MAX_INPUT_VALUES:,} per input (e.g. 1,3,4096,4096)")
    return dims


def check_one_input(model: onnx.ModelProto, name: str, fed: Iterable[str] = ()) -> None:
    """Refuse a model that needs graph inputs besides ``name`` (and those in ``fed``): onnxviz
    feeds one image input, and onnxruntime would only fail later, on the missing feed."""
    inits = {t.name for t in model.graph.initializer}
    others = [i.name for i in model.graph.input if i.name not in inits and i.name != name and i.name not in set(fed)]
    if others:
        raise OnnxvizError(f"the model needs {len(others) + 1} inputs ({', '.join([name, *others])}): onnxviz feeds "
                           f"one image input ({name!r}) and has nothing to give {', '.join(map(repr, others))}")


# --------------------------------------------------------------------------------------- metadata
def metadata(model: onnx.ModelProto) -> dict[str, str]:
    """``metadata_props`` as a dict (later duplicates win)."""
    return {p.key: p.value for p in model.metadata_props}


def set_metadata(model: onnx.ModelProto, **kv: Any) -> onnx.ModelProto:
    """A copy of ``model`` with metadata keys set; non-string values are stored as JSON.
    Keys with dots go through a dict: ``set_metadata(m, **{META_RANGE: [0, 1]})``. ``None`` removes
    a key."""
    out = onnx.ModelProto()
    out.CopyFrom(model)
    props = metadata(out)
    for k, v in kv.items():
        if v is None:
            props.pop(k, None)
        else:
            props[k] = v if isinstance(v, str) else json.dumps(v)
    del out.metadata_props[:]
    for k, v in props.items():
        entry = out.metadata_props.add()
        entry.key, entry.value = k, v
    return out


def class_names(model: onnx.ModelProto) -> list[str] | None:
    """Class names from metadata ``onnxviz.class_names`` (JSON list), ``None`` when absent."""
    raw = metadata(model).get(META_CLASSES)
    if raw is None:
        return None
    try:
        value = json.loads(raw)
    except json.JSONDecodeError:
        raise OnnxvizError(f"metadata {META_CLASSES!r} is not a JSON list: {raw[:80]!r}") from None
    if isinstance(value, dict):  # {"0": "cat", ...} as some exporters write it
        try:
            return [str(v) for _, v in sorted(value.items(), key=lambda kv: int(kv[0]))]
        except ValueError:
            pass
    if not isinstance(value, list):
        raise OnnxvizError(f"metadata {META_CLASSES!r} is not a JSON list: {raw[:80]!r}")
    return [str(v) for v in value]


def read_class_names(spec: Any) -> list[str]:
    """Class names from what a user gives: a list of names; a text file holding a JSON list or one
    name per line (each line, stripped, is a name; blank lines before and after are ignored); or
    names separated by commas (``cat,dog,bird``). A name is any non-empty text: it is shown, never
    interpreted (labels are drawn and HTML-escaped, never used as markup, file names or code)."""
    if spec is None:
        raise OnnxvizError("no class names given")
    if isinstance(spec, (str, os.PathLike)):
        text = os.fspath(spec)
        path = Path(text)
        if text.strip() and path.is_file():
            return _names_from_file(path)
        if "," not in text:
            raise OnnxvizError(f"class names {text!r}: no such file; give a list of names, a file with one name "
                               "per line (or a JSON list), or names separated by commas: a,b,c")
        names = [n.strip() for n in text.split(",")]
        empty = [i for i, n in enumerate(names) if not n]
        if empty:
            raise OnnxvizError(f"class names {text!r}: name {empty[0]} is empty (put names with commas in a file)")
        return names
    try:
        names = list(spec)
    except TypeError:
        raise OnnxvizError("class names must be a list of names, a file or a,b,c text, "
                           f"not {type(spec).__name__}") from None
    if not names:
        raise OnnxvizError("no class names given (an empty list)")
    for i, n in enumerate(names):
        if not isinstance(n, (str, int, np.integer)) or isinstance(n, bool) or not str(n).strip():
            raise OnnxvizError(f"class name {i} is {n!r}: names must be non-empty text")
    return [str(n) for n in names]


def _names_from_file(path: Path) -> list[str]:
    try:
        text = path.read_text(encoding="utf-8-sig")
    except (OSError, UnicodeDecodeError) as e:
        raise OnnxvizError(f"cannot read class names from {str(path)!r}: {getattr(e, 'strerror', None) or e}") from None
    if text.lstrip().startswith("["):
        try:
            value = json.loads(text)
        except json.JSONDecodeError as e:
            raise OnnxvizError(f"class names file {str(path)!r}: not a JSON list ({e.msg}, line {e.lineno})") from None
        if not isinstance(value, list):
            raise OnnxvizError(f"class names file {str(path)!r}: not a JSON list")
        try:
            return read_class_names(value)
        except OnnxvizError as e:
            raise OnnxvizError(f"class names file {str(path)!r}: {e}") from None
    lines = [line.strip() for line in text.splitlines()]
    while lines and not lines[-1]:
        lines.pop()
    start = next((i for i, line in enumerate(lines) if line), len(lines))
    lines = lines[start:]
    if not lines:
        raise OnnxvizError(f"class names file {str(path)!r} is empty (expected one name per line)")
    blank = next((i for i, line in enumerate(lines) if not line), None)
    if blank is not None:
        raise OnnxvizError(f"class names file {str(path)!r}: line {start + blank + 1} is empty (one name per line)")
    return lines


def output_units(model: onnx.ModelProto) -> int | None:
    """Units per example of the first output (the classes of a classifier), ``None`` when unknown."""
    if not model.graph.output:
        return None
    try:
        shape = tensor_shape(model, model.graph.output[0].name)
    except OnnxvizError:
        return None
    if not shape or len(shape) < 2 or any(not isinstance(d, int) for d in shape[1:]):
        return None
    return int(np.prod([int(d) for d in shape[1:]]))


def check_class_names(model: onnx.ModelProto, names: Any, units: int | None = None) -> tuple[str, ...]:
    """``names`` (see :func:`read_class_names`) checked against the units of the first output
    (``units`` when the caller knows them); a wrong count is one clear :class:`OnnxvizError`."""
    listed = read_class_names(names)
    k = units if units is not None else output_units(model)
    if k is not None and len(listed) != k:
        raise OnnxvizError(f"{len(listed)} class name{'s' if len(listed) != 1 else ''} given but the model's output "
                           f"has {k} unit{'s' if k != 1 else ''}")
    return tuple(listed)


def opset_version(model: onnx.ModelProto) -> int:
    """The opset of the default (``ai.onnx``) domain; 0 when the model imports none."""
    versions = [o.version for o in model.opset_import if o.domain in ("", "ai.onnx")]
    return max(versions) if versions else 0


def parameter_count(model: onnx.ModelProto) -> int:
    """Number of weight elements: initializers plus tensors of Constant nodes."""
    def count(dims: Iterable[int]) -> int:
        n = 1
        for d in dims:
            n *= int(d)
        return n
    total = sum(count(t.dims) for t in model.graph.initializer)
    for node in model.graph.node:
        if node.op_type == "Constant":
            for a in node.attribute:
                if a.name == "value" and a.type == onnx.AttributeProto.TENSOR:
                    total += count(a.t.dims)
    return total


def _dtype_name(elem: int) -> str | None:
    if not elem:
        return None
    try:
        return str(np.dtype(helper.tensor_dtype_to_np_dtype(elem)))
    except Exception:  # bfloat16, float8 ...: no plain numpy dtype
        return helper.tensor_dtype_to_string(elem).split(".")[-1].lower()


def model_summary(model: onnx.ModelProto) -> dict[str, Any]:
    """What ``onnxviz info`` shows, JSON-ready: inputs (shape, dtype, layout, range), outputs,
    opset, IR version, producer, parameter count, op histogram, metadata."""
    inferred = infer_shapes(model)
    types = value_types(inferred)
    outputs = []
    for o in model.graph.output:
        elem, shape = types.get(o.name, (0, None))
        outputs.append({"name": o.name, "shape": None if shape is None else list(shape),
                        "dtype": _dtype_name(elem)})
    return {
        "graph": model.graph.name,
        "inputs": [i.to_dict() for i in input_info(model)],
        "outputs": outputs,
        "opset": opset_version(model),
        "ir_version": model.ir_version,
        "producer": " ".join(x for x in (model.producer_name, model.producer_version) if x),
        "parameters": parameter_count(model),
        "nodes": len(model.graph.node),
        "ops": dict(Counter(n.op_type for n in model.graph.node).most_common()),
        "metadata": metadata(model),
    }
