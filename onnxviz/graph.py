"""Model inspection: load and validate, infer shapes, the layer table, ``find_layer``, input layout
and value range, and the ``onnxviz.*`` metadata keys.

Everything here reads a model and never changes the caller's ``ModelProto``; functions that return a
model return a new one.
"""

from __future__ import annotations

import ast
import difflib
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

from .errors import LayerNotFoundError, ModelLoadError, OnnxvizError

__all__ = [
    "META_CLASSES", "META_LAYOUT", "META_RANGE", "META_RANGE_SOURCE", "META_SOURCE", "DEFAULT_VALUE_RANGE",
    "Shape", "Layer", "InputInfo", "ModelSource",
    "load_model", "infer_shapes", "layer_table", "tensor_shape", "tensor_dtype", "find_layer",
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
Shape = tuple[Union[int, str, None], ...]
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
    try:
        data = path.read_bytes()
    except OSError as e:
        raise ModelLoadError(f"cannot read model {label}: {e.strerror or e}") from None
    model = _parse(data, label)
    if _uses_external_data(model):
        try:
            onnx.load_external_data_for_model(model, str(path.parent))
        except Exception as e:  # missing/short .data file
            raise ModelLoadError(f"cannot read model {label}: external data: {_one_line(e)}") from None
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
        raise ModelLoadError(f"cannot read model {label}: invalid ONNX model: {_one_line(e)}") from None


def check_structure(model: onnx.ModelProto, full_check: bool = False) -> None:
    """``onnx.checker.check_model`` without the cost of the weights: large initializers are
    checked as typed graph inputs, so the checker never serializes them (ResNet50: 1.2 s -> 0.1 s)
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


def _one_line(e: BaseException | str, limit: int = 300) -> str:
    text = " ".join(str(e).split())
    return text if len(text) <= limit else text[: limit - 3] + "..."


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


def _dims(tp: onnx.TypeProto) -> Shape | None:
    if tp.WhichOneof("value") != "tensor_type" or not tp.tensor_type.HasField("shape"):
        return None
    dims: list[int | str | None] = []
    for d in tp.tensor_type.shape.dim:
        kind = d.WhichOneof("value")
        dims.append(d.dim_value if kind == "dim_value" else d.dim_param if kind == "dim_param" else None)
    return tuple(dims)


def _value_types(model: onnx.ModelProto) -> dict[str, tuple[int, Shape | None]]:
    """name -> (elem type, shape) for every typed value: inputs, initializers, value_info, outputs."""
    g = model.graph
    types: dict[str, tuple[int, Shape | None]] = {}
    for t in g.initializer:
        types[t.name] = (t.data_type, tuple(int(d) for d in t.dims))
    for vi in list(g.value_info) + list(g.input) + list(g.output):
        if vi.type.WhichOneof("value") == "tensor_type":
            elem = vi.type.tensor_type.elem_type
            old = types.get(vi.name)
            shape = _dims(vi.type)
            if old is not None and (shape is None or not elem):  # keep the better-known entry
                continue
            types[vi.name] = (elem, shape)
    for node in g.node:  # Constant nodes: shape from the attribute when inference did not record it
        if node.op_type == "Constant" and node.output and node.output[0] not in types:
            for a in node.attribute:
                if a.name == "value" and a.type == onnx.AttributeProto.TENSOR:
                    types[node.output[0]] = (a.t.data_type, tuple(int(d) for d in a.t.dims))
    return types


def _all_value_names(model: onnx.ModelProto) -> list[str]:
    g = model.graph
    names = [i.name for i in g.input] + [t.name for t in g.initializer]
    names += [o for n in g.node for o in n.output if o]
    seen: set[str] = set()
    return [n for n in names if not (n in seen or seen.add(n))]


def tensor_shape(model: onnx.ModelProto, name: str) -> Shape | None:
    """Shape of any value (input, output, intermediate, initializer); ``None`` when the rank is
    unknown. Unknown name → :class:`LayerNotFoundError` with suggestions."""
    return _tensor_type(model, name)[1]


def tensor_dtype(model: onnx.ModelProto, name: str) -> int:
    """ONNX element type (``onnx.TensorProto.FLOAT`` ...) of any value; 0 when unknown."""
    return _tensor_type(model, name)[0]


def _tensor_type(model: onnx.ModelProto, name: str) -> tuple[int, Shape | None]:
    types = _value_types(model)
    if name in types and types[name][1] is not None and types[name][0]:
        return types[name]
    types = _value_types(infer_shapes(model))
    if name in types:
        return types[name]
    names = _all_value_names(model)
    if name in names:
        return (0, None)
    raise LayerNotFoundError(_not_found("tensor", name, names))


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
    types = _value_types(infer_shapes(model))
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
    types = _value_types(infer_shapes(model))
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
    torch_scopes: list[str] = list(scope)
    for p in node.metadata_props:
        if p.key == "pkg.torch.onnx.name_scopes":
            try:
                value = ast.literal_eval(p.value)
                torch_scopes = [str(s) for s in value if s]
            except (ValueError, SyntaxError):
                pass
    module = ""
    for seg in torch_scopes:
        module = seg if (not module or seg.startswith(module + ".")) else f"{module}.{seg}"
        keys.append((exact_pri, module))
    return keys


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
    producer = model.producer_name.lower()
    if not any(producer.startswith(p) for p in _KERAS_PRODUCERS):
        return False
    firsts = [scope[0] for scope in (_scope(n.name) for n in model.graph.node) if scope]
    return bool(firsts) and all(_UNIQ.search(f) for f in firsts)


def find_layer(model: onnx.ModelProto, key: str | int) -> Layer:
    """The node that ``key`` names, tried in this order:

    1. an ``int`` index (negative counts from the end, like Python);
    2. an exact node name;
    3. a tensor name (the node producing it);
    4. a string that is an integer index;
    5. a layer/scope name: a Keras layer name (``preds``, ``conv2d_1``) despite the export's
       ``_<digits>`` uniquifiers, a scope path (``sequential/preds``), or a PyTorch module path
       (``layer4.1.conv2``). A name covering several nodes gives the LAST of them in topological
       order (``preds`` → its Softmax), i.e. the layer's output.

    Anything else raises :class:`LayerNotFoundError` listing the closest names.
    """
    nodes = model.graph.node
    if isinstance(key, (int, np.integer)) and not isinstance(key, bool):
        return _by_index(model, int(key))
    if not isinstance(key, str):
        raise LayerNotFoundError(f"layer key must be a name or an index, not {type(key).__name__}")
    for i, node in enumerate(nodes):
        if node.name == key:
            return _layer(model, i)
    for i, node in enumerate(nodes):
        if key in node.output:
            return _layer(model, i)
    if re.fullmatch(r"[+-]?\d+", key.strip()):
        return _by_index(model, int(key))
    if key in {i.name for i in model.graph.input} | {t.name for t in model.graph.initializer}:
        raise LayerNotFoundError(f"{key!r} is a graph input or weight, not the output of a layer")
    want = key.strip().strip("/")
    best: tuple[int, int] | None = None  # (priority, -index)
    stripped_first = _names_are_uniquified(model)
    for i, node in enumerate(nodes):
        for pri, scope in _node_scopes(node, stripped_first):
            if scope == want and (best is None or (pri, -i) < best):
                best = (pri, -i)
    if best is not None:
        return _layer(model, -best[1])
    candidates = layer_names(model) + [n.name for n in nodes if n.name]
    raise LayerNotFoundError(_not_found("layer", key, candidates,
                                        hint="run `onnxviz layers MODEL` to list them"))


def _by_index(model: onnx.ModelProto, index: int) -> Layer:
    n = len(model.graph.node)
    if not -n <= index < n:
        raise LayerNotFoundError(f"layer index {index} out of range: the model has {n} nodes "
                                 f"(valid: {-n}..{n - 1})")
    return _layer(model, index % n)


def _not_found(what: str, key: str, candidates: Iterable[str], hint: str = "") -> str:
    pool = list(dict.fromkeys(c for c in candidates if c))
    close = difflib.get_close_matches(str(key), pool, n=5, cutoff=0.5)
    if not close:  # substring hits help with long scoped names
        close = [c for c in pool if str(key).lower() in c.lower()][:5]
    msg = f"no {what} named {key!r}"
    if close:
        msg += "; closest: " + ", ".join(close)
    elif hint:
        msg += f" ({hint})"
    return msg


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


_PASS_THROUGH = {"Cast", "Identity", "Div", "Sub", "Mul", "Add", "Clip", "CastLike"}
_CHANNELS_FIRST_OPS = {"Conv", "ConvTranspose", "MaxPool", "AveragePool", "GlobalAveragePool",
                       "GlobalMaxPool", "BatchNormalization", "InstanceNormalization", "LpPool"}


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
        shape = _dims(vi.type)
        try:
            dtype = np.dtype(helper.tensor_dtype_to_np_dtype(elem)) if elem else np.dtype(np.float32)
        except Exception:
            dtype = np.dtype(np.float32)
        layout = layouts.get(vi.name, layouts.get("*"))
        if layout is None:
            layout = _guess_layout(model, vi.name, shape)
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


def _guess_layout(model: onnx.ModelProto, name: str, shape: Shape | None) -> str | None:
    if shape is None or len(shape) not in (4, 5):
        return None
    first, last = ("NCHW", "NHWC") if len(shape) == 4 else ("NCDHW", "NDHWC")
    to_first = [0, 3, 1, 2] if len(shape) == 4 else [0, 4, 1, 2, 3]
    consumers: dict[str, list[onnx.NodeProto]] = {}
    for node in model.graph.node:
        for i in node.input:
            consumers.setdefault(i, []).append(node)
    frontier, seen = [name], set()
    for _ in range(4):  # look through a few preprocessing nodes
        nxt = []
        for t in frontier:
            for node in consumers.get(t, []):
                if id(node) in seen:
                    continue
                seen.add(id(node))
                if node.op_type == "Transpose" and node.input[0] == t:
                    perm = next((list(a.ints) for a in node.attribute if a.name == "perm"), None)
                    if perm == to_first:
                        return last
                    return first if perm is not None else None
                if node.op_type in _CHANNELS_FIRST_OPS and node.input[0] == t:
                    return first
                if node.op_type in _PASS_THROUGH:
                    nxt.extend(o for o in node.output if o)
        frontier = nxt
    chans = (1, 3, 4)
    if shape[-1] in chans and shape[1] not in chans:
        return last
    if shape[1] in chans:
        return first
    return None


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
    types = _value_types(inferred)
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
