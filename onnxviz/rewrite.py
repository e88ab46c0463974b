"""Graph rewrites, pure ONNX in and out: ``to_logits`` (strip a final Softmax/LogSoftmax/Sigmoid),
``expose`` (intermediate tensors as outputs), ``truncate`` (keep only what some tensors depend on)
and ``upgrade_opset``.

Every function takes a ``ModelProto``, leaves it untouched and returns a new one that passes
``onnx.checker.check_model(..., full_check=True)`` and computes the same values for what it keeps.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Iterable, Sequence

import onnx
from onnx import helper

from .errors import LayerNotFoundError, RewriteError, ShapeError, not_found, one_line
from .graph import check_structure, infer_shapes, opset_version, weights_as_inputs
from .graphview import fresh_name, taken_names, value_names, value_types
from .ops import FINAL_ACTIVATIONS, SHAPE_ONLY_OPS

__all__ = ["FINAL_ACTIVATIONS", "PASS_THROUGH_OPS", "FinalActivation", "final_activation", "to_logits",
           "expose", "truncate", "upgrade_opset"]

#: Ops ``to_logits`` strips (all keep the shape and dtype of their input).
#: Ops allowed between the activation and the graph output (data is their first input).
PASS_THROUGH_OPS = SHAPE_ONLY_OPS  # the public name of these ops here


@dataclass(frozen=True)
class FinalActivation:
    """The activation ``to_logits`` would strip for one graph output."""

    output: str  # the graph output
    node: str  # name of the activation node (may be empty when the exporter gave none)
    index: int  # its position in the graph
    op_type: str  # Softmax / LogSoftmax / Sigmoid
    pre_activation: str  # the logits tensor feeding it
    pass_through: tuple[str, ...]  # op types between the activation and the output, in order


# ------------------------------------------------------------------------------------ utilities
def _copy(model: onnx.ModelProto) -> onnx.ModelProto:
    out = onnx.ModelProto()
    out.CopyFrom(model)
    return out


def _subgraph_refs(node: onnx.NodeProto) -> set[str]:
    """Names a node's subgraphs (If/Loop/Scan bodies) may read from the enclosing scope."""
    refs: set[str] = set()
    for a in node.attribute:
        graphs = [a.g] if a.type == onnx.AttributeProto.GRAPH else list(a.graphs)
        for g in graphs:
            for n in g.node:
                refs.update(i for i in n.input if i)
                refs |= _subgraph_refs(n)
    return refs


def _node_reads(node: onnx.NodeProto) -> set[str]:
    return {i for i in node.input if i} | _subgraph_refs(node)


def _remove_dead(graph: onnx.GraphProto) -> None:
    """Drop nodes whose outputs nobody reads, then initializers nobody reads, then stale value_info."""
    outputs = {o.name for o in graph.output}
    while True:
        reads = set(outputs)
        for n in graph.node:
            reads |= _node_reads(n)
        keep = [n for n in graph.node if any(o in reads for o in n.output if o)]
        if len(keep) == len(graph.node):
            break
        del graph.node[:]
        graph.node.extend(keep)
    reads = set(outputs)
    for n in graph.node:
        reads |= _node_reads(n)
    dead = {t.name for t in graph.initializer if t.name not in reads}
    if dead:
        inits = [t for t in graph.initializer if t.name not in dead]
        del graph.initializer[:]
        graph.initializer.extend(inits)
        inputs = [i for i in graph.input if i.name not in dead]  # IR < 4 lists weights as inputs
        del graph.input[:]
        graph.input.extend(inputs)
    _prune_value_info(graph)


def _prune_value_info(graph: onnx.GraphProto) -> None:
    produced = {o for n in graph.node for o in n.output if o}
    outputs = {o.name for o in graph.output}
    keep = [vi for vi in graph.value_info if vi.name in produced and vi.name not in outputs]
    del graph.value_info[:]
    graph.value_info.extend(keep)


def _output_value_info(model: onnx.ModelProto, names: Iterable[str]) -> dict[str, onnx.ValueInfoProto]:
    """Typed ``ValueInfoProto`` for each name (existing outputs reused, others from inference)."""
    existing = {o.name: o for o in model.graph.output}
    missing = [n for n in names if n not in existing]
    result = {n: existing[n] for n in names if n in existing}
    if missing:
        types = value_types(infer_shapes(model))
        for n in missing:
            elem, shape = types.get(n, (0, None))
            if not elem:
                raise ShapeError(f"cannot make {n!r} an output: its type is unknown "
                                 "(shape inference could not infer it)")
            result[n] = helper.make_tensor_value_info(n, elem, None if shape is None else list(shape))
            if shape is None:
                result[n].type.tensor_type.ClearField("shape")
    return result


def _check_names(model: onnx.ModelProto, names: Sequence[str]) -> None:
    known = set(value_names(model))
    for n in names:
        if n not in known:
            raise LayerNotFoundError(not_found("tensor", n, value_names(model)))


def _graph_output(model: onnx.ModelProto, output: str | int | None) -> str:
    outs = [o.name for o in model.graph.output]
    if not outs:
        raise RewriteError("the model has no outputs")
    if output is None:
        return outs[0]
    if isinstance(output, int) and not isinstance(output, bool):
        if not -len(outs) <= output < len(outs):
            raise LayerNotFoundError(f"output index {output} out of range: the model has "
                                     f"{len(outs)} output(s): {', '.join(outs)}")
        return outs[output]
    if output in outs:
        return output
    raise LayerNotFoundError(not_found("graph output", str(output), outs) +
                             f" (outputs: {', '.join(outs)})")


# ------------------------------------------------------------------------------------ to_logits
def _walk_back(model: onnx.ModelProto, out: str) -> tuple[int | None, list[int], str]:
    """From a graph output back through pass-through ops: (activation index or None, pass-through
    node indices from the output backwards, description of where the walk stopped)."""
    producer = {o: i for i, n in enumerate(model.graph.node) for o in n.output if o}
    chain: list[int] = []
    t = out
    while True:
        i = producer.get(t)
        if i is None:
            return None, chain, f"graph input {t!r}"
        node = model.graph.node[i]
        default = node.domain in ("", "ai.onnx")
        if default and node.op_type in PASS_THROUGH_OPS and node.input and node.input[0]:
            chain.append(i)
            t = node.input[0]
            continue
        if default and node.op_type in FINAL_ACTIVATIONS and node.input and node.input[0]:
            return i, chain, node.op_type
        return None, chain, node.op_type


def final_activation(model: onnx.ModelProto, output: str | int | None = None) -> FinalActivation | None:
    """The Softmax/LogSoftmax/Sigmoid feeding graph ``output`` (default: the first), looking
    through trailing Identity/Reshape/Flatten/Squeeze/Unsqueeze; ``None`` when there is none."""
    out = _graph_output(model, output)
    act, chain, _ = _walk_back(model, out)
    if act is None:
        return None
    node = model.graph.node[act]
    return FinalActivation(out, node.name, act, node.op_type, node.input[0],
                           tuple(model.graph.node[i].op_type for i in reversed(chain)))


def to_logits(model: onnx.ModelProto, output: str | int | None = None) -> onnx.ModelProto:
    """Remove the final Softmax/LogSoftmax/Sigmoid feeding graph ``output`` (default: the first),
    also through trailing Identity/Reshape/Flatten/Squeeze/Unsqueeze. The output keeps its name
    (and type: these activations keep shape and dtype) and now carries the pre-activation values,
    so class-score objectives and attribution work on logits (keras-vis' "swap softmax for linear").
    Other consumers of the probabilities keep them. No such activation → :class:`RewriteError`.
    """
    out = _graph_output(model, output)
    act, chain, stop = _walk_back(model, out)
    if act is None:
        raise RewriteError(f"output {out!r} has no final Softmax/LogSoftmax/Sigmoid to strip "
                           f"(ends in {stop})")
    m = _copy(model)
    g = m.graph
    nodes = list(g.node)
    taken = taken_names(g)
    x = nodes[act].input[0]
    # the old producer of `out` keeps working under a new name for anyone else who reads it
    last = chain[0] if chain else act
    old_out = fresh_name(out + "__probs", taken)
    nodes[last] = _with_output(nodes[last], out, old_out)
    for i, n in enumerate(nodes):
        if i != last and out in _node_reads(n):
            nodes[i] = _rename_reads(n, {out: old_out})
    # build the replacement: a copy of the pass-through chain reading the logits, or an Identity
    new_nodes: list[onnx.NodeProto] = []
    src = x
    if chain:
        for j, i in enumerate(reversed(chain)):
            c = onnx.NodeProto()
            c.CopyFrom(model.graph.node[i])
            c.name = fresh_name((c.name or c.op_type) + "__logits", taken)
            c.input[0] = src
            del c.output[1:]
            c.output[0] = out if j == len(chain) - 1 else fresh_name(c.output[0] + "__logits", taken)
            src = c.output[0]
            new_nodes.append(c)
    else:
        new_nodes.append(helper.make_node("Identity", [x], [out],
                                          name=fresh_name((nodes[act].name or "logits") + "__logits", taken)))
    nodes[last + 1:last + 1] = new_nodes
    del g.node[:]
    g.node.extend(nodes)
    _remove_dead(g)
    _fold_identity(g, out)
    return m


def _with_output(node: onnx.NodeProto, old: str, new: str) -> onnx.NodeProto:
    c = onnx.NodeProto()
    c.CopyFrom(node)
    for k, o in enumerate(c.output):
        if o == old:
            c.output[k] = new
    return c


def _rename_reads(node: onnx.NodeProto, mapping: dict[str, str]) -> onnx.NodeProto:
    c = onnx.NodeProto()
    c.CopyFrom(node)
    for k, i in enumerate(c.input):
        if i in mapping:
            c.input[k] = mapping[i]
    for a in c.attribute:  # outer-scope reads inside subgraphs
        for sub in ([a.g] if a.type == onnx.AttributeProto.GRAPH else list(a.graphs)):
            for n in sub.node:
                for k, i in enumerate(n.input):
                    if i in mapping:
                        n.input[k] = mapping[i]
    return c


def _fold_identity(g: onnx.GraphProto, out: str) -> None:
    """``P -> x -> Identity -> out`` becomes ``P -> out`` when nothing else needs ``x``."""
    nodes = list(g.node)
    ident = next((i for i, n in enumerate(nodes) if n.op_type == "Identity" and out in n.output), None)
    if ident is None:
        return
    x = nodes[ident].input[0]
    producer = next((i for i, n in enumerate(nodes) if x in n.output), None)
    if producer is None or x in {o.name for o in g.output}:
        return
    if any(x in _node_reads(n) for i, n in enumerate(nodes) if i != ident):
        return
    nodes[producer] = _with_output(nodes[producer], x, out)
    del nodes[ident]
    del g.node[:]
    g.node.extend(nodes)
    _prune_value_info(g)


# ------------------------------------------------------------------------------------ expose / truncate
def expose(model: onnx.ModelProto, tensors: Sequence[str]) -> onnx.ModelProto:
    """Add ``tensors`` (intermediate values, inputs or weights) as graph outputs, typed and shaped by
    shape inference (symbolic dims kept). Names already output are left alone; an unknown name raises
    :class:`LayerNotFoundError` with suggestions."""
    if isinstance(tensors, str):
        tensors = [tensors]
    names = list(dict.fromkeys(tensors))
    _check_names(model, names)
    m = _copy(model)
    existing = {o.name for o in m.graph.output}
    new = [n for n in names if n not in existing]
    if not new:
        return m
    infos = _output_value_info(model, new)
    m.graph.output.extend(infos[n] for n in new)
    _prune_value_info(m.graph)
    return m


def truncate(model: onnx.ModelProto, outputs: Sequence[str]) -> onnx.ModelProto:
    """The graph with exactly ``outputs`` (in that order) as outputs, keeping only the nodes,
    weights and inputs they depend on (inputs they do not need are dropped)."""
    if isinstance(outputs, str):
        outputs = [outputs]
    names = list(dict.fromkeys(outputs))
    if not names:
        raise RewriteError("truncate needs at least one output tensor")
    _check_names(model, names)
    infos = _output_value_info(model, names)
    g = model.graph
    needed = set(names)
    keep: list[bool] = [False] * len(g.node)
    for i in range(len(g.node) - 1, -1, -1):
        node = g.node[i]
        if any(o in needed for o in node.output if o):
            keep[i] = True
            needed |= _node_reads(node)
    m = onnx.ModelProto()
    m.ir_version = model.ir_version
    m.producer_name, m.producer_version = model.producer_name, model.producer_version
    m.domain, m.model_version, m.doc_string = model.domain, model.model_version, model.doc_string
    m.opset_import.extend(model.opset_import)
    m.metadata_props.extend(model.metadata_props)
    m.functions.extend(model.functions)
    ng = m.graph
    ng.name, ng.doc_string = g.name, g.doc_string
    if hasattr(g, "metadata_props"):
        ng.metadata_props.extend(g.metadata_props)
    ng.node.extend(n for n, k in zip(g.node, keep) if k)
    ng.input.extend(i for i in g.input if i.name in needed)
    ng.initializer.extend(t for t in g.initializer if t.name in needed)
    ng.sparse_initializer.extend(t for t in g.sparse_initializer if t.values.name in needed)
    ng.output.extend(infos[n] for n in names)
    ng.value_info.extend(vi for vi in g.value_info if vi.name in needed)
    _prune_value_info(ng)
    return m


# ------------------------------------------------------------------------------------ opset
def upgrade_opset(model: onnx.ModelProto, target: int = 18) -> onnx.ModelProto:
    """Convert ``model`` to opset ``target`` with ``onnx.version_converter`` when it is older (a copy
    otherwise). A failed or invalid conversion raises :class:`RewriteError` with the reason; the
    caller decides whether to go on with the original."""
    current = opset_version(model)
    if current >= target:
        return _copy(model)
    if current == 0:
        raise RewriteError("cannot upgrade the opset: the model imports no ai.onnx opset")
    light = weights_as_inputs(model)  # the converter serializes its input: leave the weights out
    try:
        converted = onnx.version_converter.convert_version(light, target)
    except Exception as e:
        reason = re.sub(r"^\S+\.cc:\d+:\s*\w+:\s*", "", one_line(e))  # drop the C++ source location
        raise RewriteError(f"cannot upgrade opset {current} to {target}: {reason}") from None
    _restore_weights(model, light, converted)
    if current < 7 <= target:
        _align_legacy_prelu_slopes(model, converted)
    if current < 11:
        _keep_legacy_resize_coordinates(model, converted)
    ops = [(o.domain, o.version) for o in converted.opset_import]
    try:
        converted.ir_version = max(converted.ir_version, helper.find_min_ir_version_for(
            [helper.make_opsetid(d, v) for d, v in ops], ignore_unknown=True))
    except Exception:
        pass
    if not converted.metadata_props and model.metadata_props:
        converted.metadata_props.extend(model.metadata_props)
    try:
        check_structure(converted)
    except Exception as e:
        raise RewriteError(f"opset {current} to {target} conversion gave an invalid model: "
                           f"{one_line(e)}") from None
    return converted


def _restore_weights(model: onnx.ModelProto, light: onnx.ModelProto, converted: onnx.ModelProto) -> None:
    """Put back the weights ``weights_as_inputs`` turned into inputs (same names, same order)."""
    light_weights = {t.name for t in light.graph.initializer}
    moved = [t for t in model.graph.initializer if t.name not in light_weights]
    if not moved:
        return
    added = {t.name for t in moved} - {i.name for i in model.graph.input}  # inputs only for the converter
    kept = [i for i in converted.graph.input if i.name not in added]
    del converted.graph.input[:]
    converted.graph.input.extend(kept)
    converted.graph.initializer.extend(moved)


def _align_legacy_prelu_slopes(old: onnx.ModelProto, new: onnx.ModelProto) -> None:
    """PRelu before opset 7 lines its slope up with X from axis 1: a per-channel slope of shape (C,)
    for an (N, C, ...) input, as PyTorch's opset-6 exports write it. From opset 7 the slope broadcasts
    numpy-style from the last axis, where (C,) meets the width, and onnx's version converter keeps the
    slope as it is (onnxruntime then fails, or broadcasts the wrong axis). Reshape such slopes to
    (C, 1, ..., 1) in front of their PRelu; a slope of one value means the same either way."""
    types = value_types(infer_shapes(old))
    taken = taken_names(new.graph)
    nodes: list[onnx.NodeProto] = []
    for node in new.graph.node:
        if node.op_type == "PRelu" and len(node.input) == 2:
            x_shape = types.get(node.input[0], (0, None))[1]
            slope_shape = types.get(node.input[1], (0, None))[1]
            pad = len(x_shape) - 1 - len(slope_shape) if x_shape is not None and slope_shape is not None else 0
            if pad > 0 and not all(d == 1 for d in slope_shape):
                slope = node.input[1]
                dims = [d if isinstance(d, int) and d > 0 else 0 for d in slope_shape] + [1] * pad  # 0: keep
                shape = fresh_name(f"{slope}_legacy_shape", taken)
                new.graph.initializer.append(helper.make_tensor(shape, onnx.TensorProto.INT64, [len(dims)], dims))
                aligned = fresh_name(f"{slope}_legacy_aligned", taken)
                nodes.append(helper.make_node("Reshape", [slope, shape], [aligned],
                                              name=fresh_name(f"{node.name or 'PRelu'}_legacy_slope", taken)))
                node.input[1] = aligned
        nodes.append(node)
    del new.graph.node[:]
    new.graph.node.extend(nodes)


def _keep_legacy_resize_coordinates(old: onnx.ModelProto, new: onnx.ModelProto) -> None:
    """Upsample-9 / Resize-10 map output to input coordinates asymmetrically (x_in = x_out / scale)
    and round nearest down; onnx's version converter emits Resize-11+ with the defaults half_pixel /
    round_prefer_floor instead, which computes something else. Restore the old meaning."""
    legacy = {n.output[0] for n in old.graph.node if n.op_type in ("Upsample", "Resize")}
    for node in new.graph.node:
        if node.op_type != "Resize" or node.output[0] not in legacy:
            continue
        attrs = {a.name: a for a in node.attribute}
        for name, value in (("coordinate_transformation_mode", "asymmetric"), ("nearest_mode", "floor")):
            if name in attrs:
                attrs[name].s = value.encode()
            else:
                node.attribute.append(helper.make_attribute(name, value))
