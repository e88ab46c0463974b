"""The vocabulary gradient rules are written in.

A rule receives a :class:`GradBuilder` ``g`` (emits backward nodes), a :class:`ForwardNode` ``node``
(the forward node, its attributes, static shapes and constant inputs) and ``gy`` (one cotangent
name, or None, per forward output). It returns one cotangent name (or None) per forward input.

``g.Mul(a, b)`` emits a ``Mul`` node and returns its output name; any ONNX op works the same way
(capitalised attribute access), attributes as keyword arguments; ``g.op(..., n_out=k)`` for several
outputs. Nothing here knows about any particular op.
"""

from __future__ import annotations

from typing import Any, Sequence

import numpy as np
import onnx
from onnx import helper, numpy_helper

Dim = int | str | None
Shape = tuple[Dim, ...] | None

FLOAT_TYPES = {
    onnx.TensorProto.FLOAT,
    onnx.TensorProto.DOUBLE,
    onnx.TensorProto.FLOAT16,
    onnx.TensorProto.BFLOAT16,
}


class ForwardNode:
    """Read-only view of a forward node for a rule: inputs, outputs, attributes, shapes, constants."""

    def __init__(self, proto: onnx.NodeProto, graph_info: "GraphInfo", needs: Sequence[bool]):
        self.proto = proto
        self.op_type = proto.op_type
        self.name = proto.name
        self.input = list(proto.input)
        self.output = list(proto.output)
        self.needs = list(needs)  # needs[i]: does input i want a gradient?
        self._info = graph_info
        self._attrs = {a.name: helper.get_attribute_value(a) for a in proto.attribute}

    def attr(self, name: str, default: Any = None) -> Any:
        value = self._attrs.get(name, default)
        if isinstance(value, bytes):
            return value.decode()
        if isinstance(value, list):
            return [v.decode() if isinstance(v, bytes) else v for v in value]
        return value

    def has_input(self, i: int) -> bool:
        return len(self.input) > i and self.input[i] != ""

    def shape(self, name_or_index: str | int) -> Shape:
        return self._info.shape(self._name(name_or_index))

    def rank(self, name_or_index: str | int) -> int:
        shape = self.shape(name_or_index)
        if shape is None:
            raise _rank_unknown(self, self._name(name_or_index))
        return len(shape)

    def static_shape(self, name_or_index: str | int) -> tuple[int, ...] | None:
        """The shape when every dim is a known integer, else None."""
        shape = self.shape(name_or_index)
        if shape is None or any(not isinstance(d, int) for d in shape):
            return None
        return tuple(shape)  # type: ignore[return-value]

    def value(self, i: int) -> np.ndarray | None:
        """Constant value of input i (initializer or Constant node output), else None."""
        if not self.has_input(i):
            return None
        return self._info.constant(self.input[i])

    def dtype(self, name_or_index: str | int) -> int:
        return self._info.dtype(self._name(name_or_index))

    def _name(self, name_or_index: str | int) -> str:
        if isinstance(name_or_index, int):
            return self.input[name_or_index]
        return name_or_index


def _rank_unknown(node: ForwardNode, name: str) -> Exception:
    from ..errors import ShapeError

    return ShapeError(
        f"rank of tensor '{name}' (input of {node.op_type} node '{node.name}') is unknown; "
        "give the model static input ranks (e.g. --input-shape)"
    )


class GraphInfo:
    """Static facts about the forward graph: shapes, dtypes and constant tensors."""

    def __init__(self, model: onnx.ModelProto):
        graph = model.graph
        self.shapes: dict[str, Shape] = {}
        self.dtypes: dict[str, int] = {}
        for vi in list(graph.input) + list(graph.value_info) + list(graph.output):
            t = vi.type.tensor_type
            if not vi.type.HasField("tensor_type"):
                continue
            self.dtypes[vi.name] = t.elem_type
            if t.HasField("shape"):
                self.shapes[vi.name] = tuple(
                    d.dim_value if d.HasField("dim_value") else (d.dim_param or None) for d in t.shape.dim
                )
        self.producers: dict[str, onnx.NodeProto] = {o: n for n in graph.node for o in n.output if o}
        self.constants: dict[str, np.ndarray] = {}
        for init in graph.initializer:
            arr = numpy_helper.to_array(init)
            self.constants[init.name] = arr
            self.shapes[init.name] = tuple(arr.shape)
            self.dtypes[init.name] = init.data_type
        for node in graph.node:
            if node.op_type == "Constant" and len(node.attribute) == 1 and node.attribute[0].name == "value":
                arr = numpy_helper.to_array(node.attribute[0].t)
                self.constants[node.output[0]] = arr
                self.shapes[node.output[0]] = tuple(arr.shape)
                self.dtypes[node.output[0]] = node.attribute[0].t.data_type
        self._propagate_dtypes(graph)

    def _propagate_dtypes(self, graph: onnx.GraphProto) -> None:
        """Element types shape inference left unknown, for ops with gradient rules: their outputs
        take their data input's type. ONNX infers nothing for some function ops (GroupNormalization,
        onnx 1.23), nor for anything downstream: unknown, such a tensor would not carry gradient."""
        from .rules import RULES

        for node in graph.node:
            if node.op_type not in RULES or all(self.dtypes.get(o) for o in node.output if o):
                continue
            i = 1 if node.op_type in ("Where", "CastLike") else 0  # Where's X (after the condition), CastLike's target
            data = self.dtypes.get(node.input[i], 0) if len(node.input) > i else 0
            types = [data] * len(node.output)
            if node.op_type == "Cast":
                types = [next((a.i for a in node.attribute if a.name == "to"), 0)]
            elif node.op_type == "MaxPool":
                types = [data, onnx.TensorProto.INT64]
            elif node.op_type == "Dropout":
                types = [data, onnx.TensorProto.BOOL]
            for o, t in zip(node.output, types):
                if o and t and not self.dtypes.get(o):
                    self.dtypes[o] = t

    def shape(self, name: str) -> Shape:
        return self.shapes.get(name)

    def dtype(self, name: str) -> int:
        return self.dtypes.get(name, onnx.TensorProto.UNDEFINED)

    def constant(self, name: str) -> np.ndarray | None:
        return self.constants.get(name)


def _dim_from_end(shape: tuple, k: int) -> Dim:
    """The k-th dim counted from the end (1-based); 1 when the shape has fewer dims (broadcast)."""
    return shape[-k] if k <= len(shape) else 1


class GradBuilder:
    """Emits backward nodes and constants with fresh, collision-free names."""

    def __init__(self, info: GraphInfo, taken: set[str], prefix: str = "grad"):
        self.info = info
        self.nodes: list[onnx.NodeProto] = []
        self.initializers: list[onnx.TensorProto] = []
        self._taken = taken
        self._prefix = prefix
        self._count = 0
        self._consts: dict[tuple, str] = {}
        self._shapes: dict[str, str] = {}
        self.node: ForwardNode | None = None  # the forward node whose rule is running
        self.modifier: str | None = None
        # gradients already zero wherever their Relu's output is 0 (a rule downstream applied the
        # Relu's mask where it was cheaper): the Relu rule passes them through
        self.relu_masked: set[str] = set()

    # ---- names ---------------------------------------------------------------------------------
    def fresh(self, hint: str) -> str:
        while True:
            self._count += 1
            name = f"{self._prefix}/{self._count}_{hint}"
            if name not in self._taken:
                self._taken.add(name)
                return name

    # ---- nodes ---------------------------------------------------------------------------------
    def op(self, op_type: str, inputs: Sequence[str], n_out: int = 1, **attrs: Any) -> Any:
        """Emit one node; returns its output name, or a list of names when n_out > 1."""
        outputs = [self.fresh(op_type) for _ in range(n_out)]
        where = self.node.name if self.node is not None else ""
        attrs = {k: v for k, v in attrs.items() if v is not None}
        node = helper.make_node(op_type, list(inputs), outputs, name=self.fresh(op_type + "_node"), **attrs)
        if where:
            node.doc_string = f"gradient of {where}"
        self.nodes.append(node)
        return outputs[0] if n_out == 1 else outputs

    def __getattr__(self, op_type: str):
        if not op_type[:1].isupper():
            raise AttributeError(op_type)
        return lambda *inputs, **attrs: self.op(op_type, inputs, **attrs)

    # ---- constants -----------------------------------------------------------------------------
    def const(self, value: Any, like: str | None = None, dtype: Any = None) -> str:
        """A constant tensor; float constants take the element type of tensor ``like``."""
        if like is not None:
            dtype = onnx.helper.tensor_dtype_to_np_dtype(self.info.dtype(like) or onnx.TensorProto.FLOAT)
        arr = np.asarray(value, dtype=dtype)
        key = (arr.dtype.str, arr.shape, arr.tobytes())
        if key not in self._consts:
            name = self.fresh("const")
            self.initializers.append(numpy_helper.from_array(arr, name))
            self._consts[key] = name
        return self._consts[key]

    def ints(self, values: Sequence[int]) -> str:
        return self.const(np.asarray(list(values), dtype=np.int64))

    def shape_of(self, name: str) -> str:
        """Runtime shape of tensor ``name`` (one Shape node per tensor)."""
        if name not in self._shapes:
            self._shapes[name] = self.Shape(name)
        return self._shapes[name]

    def zeros_like(self, name: str) -> str:
        zero = onnx.helper.make_tensor("zero", self.info.dtype(name) or onnx.TensorProto.FLOAT, [1], [0])
        return self.op("ConstantOfShape", [self.shape_of(name)], value=zero)

    # ---- broadcasting --------------------------------------------------------------------------
    def unbroadcast(self, grad: str, like: str, grad_shape: Shape, others: Sequence[str] = ()) -> str:
        """Sum ``grad`` (shaped ``grad_shape``) down to the shape of forward tensor ``like``.

        ``others`` are the operands ``like`` was broadcast against: an axis where all of them have
        size 1 (or no axis at all) cannot have been broadcast, whatever the symbolic dims say.
        Static shapes give static axes; unknown dims fall back to axes computed at run time.
        """
        target = self.info.shape(like)
        if grad_shape is None or target is None:
            return self._unbroadcast_dynamic(grad, like, grad_shape)
        lead = len(grad_shape) - len(target)
        other_shapes = [self.info.shape(o) for o in others]
        axes: list[int] = list(range(lead))
        for i, dt in enumerate(target):
            dg = grad_shape[lead + i]
            if dt == dg and dt is not None:
                continue
            if others and all(s is not None and _dim_from_end(s, len(target) - i) == 1 for s in other_shapes):
                continue  # nothing else had a size > 1 here, so `like` was not expanded
            if dt == 1:
                axes.append(lead + i)
            else:  # unknown relation (symbolic vs other): decide at run time
                return self._unbroadcast_dynamic(grad, like, grad_shape)
        if not axes:
            return grad
        out = self.ReduceSum(grad, self.ints(axes), keepdims=1)
        if lead:
            out = self.Reshape(out, self.shape_of(like))
        return out

    def _unbroadcast_dynamic(self, grad: str, like: str, grad_shape: Shape) -> str:
        target = self.info.shape(like)
        if grad_shape is None or target is None:
            from ..errors import ShapeError

            raise ShapeError(f"cannot unbroadcast gradient to '{like}': rank unknown")
        lead = len(grad_shape) - len(target)
        like_shape = self.shape_of(like)
        if lead:
            like_shape = self.Concat(self.ints([1] * lead), like_shape, axis=0)
        differs = self.Not(self.Equal(like_shape, self.Shape(grad)))
        axes = self.Reshape(self.NonZero(differs), self.ints([-1]))
        out = self.ReduceSum(grad, axes, keepdims=1, noop_with_empty_axes=1)
        return self.Reshape(out, self.shape_of(like))
