"""One view of a graph's structure: producers, consumers, value types and names, computed once.

Every module that walks a graph asks the same questions (who makes this tensor, who reads it, what
type and shape has it, is a name free); :class:`GraphView` answers them from one pass each, cached,
so that a caller building several rewrites of one model pays for them once.
"""

from __future__ import annotations

from functools import cached_property
from typing import Union

import onnx

__all__ = ["Shape", "GraphView", "dims", "value_types", "value_names", "taken_names", "fresh_name"]

Shape = tuple[Union[int, str, None], ...]


def dims(tp: onnx.TypeProto) -> Shape | None:
    """The dims of a tensor type (ints, symbolic names, ``None`` for unknown); ``None`` without a shape."""
    if tp.WhichOneof("value") != "tensor_type" or not tp.tensor_type.HasField("shape"):
        return None
    out: list[int | str | None] = []
    for d in tp.tensor_type.shape.dim:
        kind = d.WhichOneof("value")
        out.append(d.dim_value if kind == "dim_value" else d.dim_param if kind == "dim_param" else None)
    return tuple(out)


def value_types(model: onnx.ModelProto) -> dict[str, tuple[int, Shape | None]]:
    """name -> (elem type, shape) for every typed value: initializers, value_info, inputs, outputs,
    and Constant nodes' values (the better-known entry wins when a name is typed twice)."""
    g = model.graph
    types: dict[str, tuple[int, Shape | None]] = {}
    for t in g.initializer:
        types[t.name] = (t.data_type, tuple(int(d) for d in t.dims))
    for vi in list(g.value_info) + list(g.input) + list(g.output):
        if vi.type.WhichOneof("value") == "tensor_type":
            elem = vi.type.tensor_type.elem_type
            old = types.get(vi.name)
            shape = dims(vi.type)
            if old is not None and (shape is None or not elem):
                continue
            types[vi.name] = (elem, shape)
    for node in g.node:  # Constant nodes: shape from the attribute when inference did not record it
        if node.op_type == "Constant" and node.output and node.output[0] not in types:
            for a in node.attribute:
                if a.name == "value" and a.type == onnx.AttributeProto.TENSOR:
                    types[node.output[0]] = (a.t.data_type, tuple(int(d) for d in a.t.dims))
    return types


def value_names(model: onnx.ModelProto) -> list[str]:
    """Every value a user can name, in graph order, once each: inputs, initializers, node outputs."""
    g = model.graph
    names = [i.name for i in g.input] + [t.name for t in g.initializer]
    names += [o for n in g.node for o in n.output if o]
    return list(dict.fromkeys(names))


def taken_names(graph: onnx.GraphProto) -> set[str]:
    """Every name in use in ``graph`` (values, value_info, node names): what a new name must avoid."""
    names = {vi.name for vi in list(graph.input) + list(graph.output) + list(graph.value_info)}
    names |= {t.name for t in graph.initializer} | {n.name for n in graph.node}
    for n in graph.node:
        names.update(n.input)
        names.update(n.output)
    return names


def fresh_name(base: str, taken: set[str]) -> str:
    """``base``, or ``base_1``, ``base_2``, ... whichever is free first; the name is added to ``taken``."""
    name, i = base, 0
    while name in taken:
        i += 1
        name = f"{base}_{i}"
    taken.add(name)
    return name


class GraphView:
    """Read-only facts about ``model``'s main graph, each computed on first use and kept.

    The view does not follow later edits of ``model``: build a new one after changing the graph
    (names handed out by :meth:`fresh` are remembered, so rewrites through one view never collide)."""

    def __init__(self, model: onnx.ModelProto):
        self.model = model
        self.graph = model.graph

    @cached_property
    def producers(self) -> dict[str, onnx.NodeProto]:
        """tensor -> the node making it."""
        return {o: n for n in self.graph.node for o in n.output if o}

    @cached_property
    def consumers(self) -> dict[str, list[onnx.NodeProto]]:
        """tensor -> the nodes reading it, in graph order (a node reading it twice is listed once)."""
        out: dict[str, list[onnx.NodeProto]] = {}
        for node in self.graph.node:
            for name in dict.fromkeys(node.input):
                if name:
                    out.setdefault(name, []).append(node)
        return out

    @cached_property
    def initializers(self) -> dict[str, onnx.TensorProto]:
        return {t.name: t for t in self.graph.initializer}

    @cached_property
    def inputs(self) -> list[str]:
        """Graph inputs that are not initializers (what a caller feeds)."""
        inits = self.initializers
        return [i.name for i in self.graph.input if i.name not in inits]

    @cached_property
    def value_types(self) -> dict[str, tuple[int, Shape | None]]:
        return value_types(self.model)

    @cached_property
    def names(self) -> list[str]:
        return value_names(self.model)

    @cached_property
    def _taken(self) -> set[str]:
        return taken_names(self.graph)

    def fresh(self, base: str) -> str:
        """A name not used in the graph nor handed out before by this view."""
        return fresh_name(base, self._taken)
