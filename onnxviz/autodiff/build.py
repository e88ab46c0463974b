"""Reverse-mode differentiation of an ONNX graph into another ONNX graph.

``gradient_model`` walks the forward nodes that lie between the differentiated tensors (``wrt``:
graph inputs or intermediate tensors) and the target in reverse topological order, asks each node's
rule (``rules.RULES``) for the cotangents of its inputs, sums fan-out contributions, and returns one
model computing the target and the vector-Jacobian products. The walk stops at the ``wrt`` tensors:
an intermediate tensor's gradient is its accumulated cotangent, evaluated at the forward values, and
nothing upstream of it is differentiated. Only standard ``ai.onnx`` ops are emitted.
"""

from __future__ import annotations

import difflib
import json
from dataclasses import dataclass
from typing import Sequence

import onnx
from onnx import helper

from ..errors import LayerNotFoundError, OnnxvizError, RewriteError, UnsupportedOpError
from ..graphview import taken_names
from .builder import FLOAT_TYPES, ForwardNode, GradBuilder, GraphInfo
from .rules import RULES, ZERO_GRADIENT_OPS

#: Opset every gradient graph is built at (models below are upgraded first).
GRADIENT_OPSET = 18
#: IR version of the models we write: the newest every supported onnxruntime reads.
IR_VERSION = 10

MODIFIERS = (None, "guided", "deconvnet")
COTANGENT = "onnxviz_cotangent"
META_TARGET = "onnxviz.grad.target"
META_INPUTS = "onnxviz.grad.wrt"


@dataclass(frozen=True)
class GradientPlan:
    """What differentiating ``target`` w.r.t. ``wrt`` involves, before anything is built."""

    target: str
    wrt: tuple[str, ...]
    nodes: tuple[onnx.NodeProto, ...]  # active forward nodes, topological order
    unsupported: dict[str, list[str]]  # op type -> node names lacking a rule

    @property
    def supported(self) -> bool:
        return not self.unsupported


def prepare(model: onnx.ModelProto | str | bytes, of: str | int | None = None,
            wrt: Sequence[str] | None = None) -> tuple[onnx.ModelProto, str]:
    """Load, upgrade to GRADIENT_OPSET, truncate to the target tensor and infer shapes.

    Intermediate ``wrt`` tensors are kept even when the target does not depend on them (their
    gradient is then zero, which needs the tensor); unknown ``wrt`` names raise
    ``LayerNotFoundError`` here, before truncation would lose the names to suggest.
    """
    from ..graph import infer_shapes, layer_output, load_model, opset_version
    from ..rewrite import truncate, upgrade_opset

    model = load_model(model)
    if of is None:
        target = model.graph.output[0].name
    elif isinstance(of, str) and of in _value_names(model):
        target = of
    else:
        target = layer_output(model, of)
    if opset_version(model) < GRADIENT_OPSET:
        try:
            model = upgrade_opset(model, GRADIENT_OPSET)
        except RewriteError as exc:
            raise OnnxvizError(f"cannot upgrade the model to opset {GRADIENT_OPSET} for differentiation: {exc}") from exc
    inputs = list(model.graph.input)
    weights = {t.name for t in model.graph.initializer}  # IR < 4 lists them as inputs too
    kept_wrt: list[str] = []
    if wrt is not None:
        _check_wrt_names(model, wrt)
        graph_inputs = {i.name for i in inputs}
        kept_wrt = [n for n in wrt if n not in graph_inputs and n != target]
    model = truncate(model, [target] + kept_wrt)
    # Keep every original input (the gradient model's contract), even those the target ignores.
    kept = {i.name for i in model.graph.input}
    if len(kept) < len(inputs):
        del model.graph.input[:]
        model.graph.input.extend(i for i in inputs if i.name in kept or i.name not in weights)
    return infer_shapes(model), target


def _check_wrt_names(model: onnx.ModelProto, wrt: Sequence[str]) -> None:
    """Raise ``LayerNotFoundError`` (listing the closest names) for a ``wrt`` name that is neither a
    graph input nor any node's output: a typo must not pass as "zero gradient"."""
    if isinstance(wrt, str):
        raise OnnxvizError(f"wrt must be a list of tensor names, not the string {wrt!r}")
    names = _value_names(model)
    weights = {t.name for t in model.graph.initializer}
    for name in wrt:
        if name in names or name in weights:
            continue
        inputs = [i.name for i in model.graph.input if i.name not in weights]
        close = difflib.get_close_matches(str(name), sorted(names), n=3, cutoff=0.6)
        hint = f"; closest tensor names: {', '.join(close)}" if close else ""
        raise LayerNotFoundError(
            f"cannot differentiate w.r.t. '{name}': no tensor of that name in the model (not a floating-point "
            f"model input, nor any node's output; inputs: {', '.join(inputs) or 'none'}){hint}")


def _value_names(model: onnx.ModelProto) -> set[str]:
    names = {i.name for i in model.graph.input}
    for node in model.graph.node:
        names.update(node.output)
    return names


def plan(model: onnx.ModelProto, target: str, wrt: Sequence[str] | None = None) -> GradientPlan:
    """Find the nodes that carry gradient from ``wrt`` to ``target`` (model already prepared, with
    the same ``wrt`` when it names intermediate tensors the target does not depend on).

    ``wrt``: floating-point graph inputs or intermediate tensors (default: every floating-point
    input). A node is active when it reads a tensor that depends on ``wrt`` and the target needs one
    of its outputs, so the producers of an intermediate ``wrt`` tensor (and everything upstream of
    it) are active only when they lie between another ``wrt`` tensor and the target.
    """
    info = GraphInfo(model)
    initializers = {i.name for i in model.graph.initializer}
    float_inputs = [i.name for i in model.graph.input
                    if i.name not in initializers and info.dtype(i.name) in FLOAT_TYPES]
    if wrt is None:
        wrt = float_inputs
    else:
        wrt = list(dict.fromkeys(wrt))
        _check_wrt_names(model, wrt)
        graph_inputs = {i.name for i in model.graph.input}
        for name in wrt:
            if name in initializers or name in info.constants:
                raise OnnxvizError(f"cannot differentiate w.r.t. '{name}': it is a constant (a weight or a "
                                   "Constant node's output), not a model input or a computed tensor")
            if name in graph_inputs and name not in float_inputs:
                raise OnnxvizError(
                    f"cannot differentiate w.r.t. '{name}': not a floating-point model input "
                    f"(inputs: {', '.join(float_inputs) or 'none'})")
            if name not in graph_inputs and info.dtype(name) not in FLOAT_TYPES:
                kind = "unknown (shape inference failed)" if not info.dtype(name) else \
                    onnx.TensorProto.DataType.Name(info.dtype(name))
                raise OnnxvizError(f"cannot differentiate w.r.t. '{name}': not a floating-point tensor "
                                   f"(element type {kind})")
    # Forward sweep: which tensors depend differentiably on wrt, and which nodes carry that dependence.
    live = set(wrt)
    carries: set[int] = set()
    for k, node in enumerate(model.graph.node):
        if node.op_type in ZERO_GRADIENT_OPS:
            continue
        if any(i in live for i in node.input):
            carries.add(k)
            # an unknown type (shape inference failed) may be float: never drop such a path silently
            live.update(o for o in node.output if o and (info.dtype(o) in FLOAT_TYPES or not info.dtype(o)))
    # Backward sweep: which of those the target needs. A node that only produces a wrt tensor from
    # tensors independent of wrt does not carry gradient: the walk stops at that wrt tensor.
    needed = {target}
    active: list[onnx.NodeProto] = []
    for k in range(len(model.graph.node) - 1, -1, -1):
        node = model.graph.node[k]
        if k in carries and any(o in needed and o in live for o in node.output):
            active.append(node)
            needed.update(i for i in node.input if i in live)
    active.reverse()
    unsupported: dict[str, list[str]] = {}
    for node in active:
        if node.op_type not in RULES or node.domain not in ("", "ai.onnx"):
            unsupported.setdefault(node.op_type, []).append(node.name or node.output[0])
    return GradientPlan(target, tuple(wrt), tuple(active), unsupported)


def gradient_model(
    model: onnx.ModelProto | str | bytes,
    of: str | int | None = None,
    wrt: Sequence[str] | None = None,
    modifier: str | None = None,
) -> onnx.ModelProto:
    """Build the model ``(inputs..., cotangent) -> (target, d<cotangent.target>/d wrt...)``.

    ``of`` is a tensor name or anything ``find_layer`` accepts (default: the first graph output);
    ``wrt`` the tensors to differentiate, by name (default: every floating-point input): graph
    inputs or intermediate tensors, in any mix. An intermediate tensor ``t`` gets the gradient of the
    target w.r.t. ``t`` at the forward values, as if a perturbation were added to ``t`` before every
    node reading it: paths to the target that avoid ``t`` are held fixed, paths through other ``wrt``
    tensors downstream of ``t`` count (why: the CAM family needs dS/dA for a feature map ``A`` in
    one run, without cutting the graph). Each gradient output is named ``<wrt>_grad`` (made unique).
    The graph inputs stay the model's inputs plus the cotangent, whatever ``wrt`` is.
    ``modifier`` ``"guided"`` or ``"deconvnet"`` changes the backward pass of the ReLU family.
    Raises ``LayerNotFoundError`` for a ``wrt`` name that is no tensor of the model,
    ``OnnxvizError`` for a ``wrt`` tensor that is integer or constant, and ``UnsupportedOpError``
    naming every op lacking a rule.
    """
    if modifier not in MODIFIERS:
        raise OnnxvizError(f"unknown backprop modifier '{modifier}' (choose: guided, deconvnet)")
    model, target = prepare(model, of, wrt)
    the_plan = plan(model, target, wrt)
    if not the_plan.supported:
        raise UnsupportedOpError(the_plan.unsupported)
    return _build(model, the_plan, modifier)


def _build(model: onnx.ModelProto, the_plan: GradientPlan, modifier: str | None) -> onnx.ModelProto:
    info = GraphInfo(model)
    graph = model.graph
    taken = taken_names(graph)
    g = GradBuilder(info, taken)
    g.modifier = modifier

    live = set(the_plan.wrt)
    for node in the_plan.nodes:
        live.update(node.output)
    target = the_plan.target

    cotangent = COTANGENT if COTANGENT not in taken else g.fresh("cotangent")
    contributions: dict[str, list[str]] = {target: [cotangent]}

    def total(name: str) -> str | None:
        parts = contributions.get(name)
        if not parts:
            return None
        if len(parts) == 1:
            return parts[0]
        summed = g.Sum(*parts) if len(parts) > 2 else g.Add(*parts)
        contributions[name] = [summed]
        return summed

    for proto in reversed(the_plan.nodes):
        gy = [total(o) if o else None for o in proto.output]
        if all(v is None for v in gy):
            continue
        needs = [bool(i) and i in live for i in proto.input]
        fnode = ForwardNode(proto, info, needs)
        g.node = fnode
        gx = RULES[proto.op_type](g, fnode, gy)
        g.node = None
        for name, grad, need in zip(proto.input, gx, needs):  # a rule may leave out trailing inputs
            if need and grad is not None:
                contributions.setdefault(name, []).append(grad)

    outputs = []
    grad_names = []
    for name in the_plan.wrt:
        grad = total(name)
        if grad is None:  # the target does not depend on this input
            grad = g.zeros_like(name)
        out_name = name + "_grad" if name + "_grad" not in taken else g.fresh(name + "_grad")
        g.nodes.append(helper.make_node("Identity", [grad], [out_name], name=g.fresh("output")))
        grad_names.append(out_name)

    target_vi = _value_info(graph, target)
    cot_vi = onnx.ValueInfoProto()
    cot_vi.CopyFrom(target_vi)
    cot_vi.name = cotangent
    outputs.append(target_vi)
    for inp, out_name in zip(the_plan.wrt, grad_names):
        vi = onnx.ValueInfoProto()
        vi.CopyFrom(_value_info(graph, inp, info))
        vi.name = out_name
        outputs.append(vi)

    new_graph = helper.make_graph(
        list(graph.node) + g.nodes,
        (graph.name or "model") + "_gradient",
        list(graph.input) + [cot_vi],
        outputs,
        initializer=list(graph.initializer) + g.initializers,
        value_info=list(graph.value_info),
    )
    out = helper.make_model(new_graph, opset_imports=list(model.opset_import),
                            producer_name="onnxviz.autodiff", ir_version=min(model.ir_version or IR_VERSION, IR_VERSION))
    if out.ir_version < 8:
        out.ir_version = IR_VERSION
    for prop in model.metadata_props:
        out.metadata_props.add(key=prop.key, value=prop.value)
    helper.set_model_props(out, {**{p.key: p.value for p in out.metadata_props},
                                 META_TARGET: target, META_INPUTS: json.dumps(list(the_plan.wrt))})
    return out


def _value_info(graph: onnx.GraphProto, name: str, info: GraphInfo | None = None) -> onnx.ValueInfoProto:
    for vi in list(graph.output) + list(graph.input) + list(graph.value_info):
        if vi.name == name:
            return vi
    if info is not None and info.dtype(name) in FLOAT_TYPES:  # an intermediate tensor inference left untyped
        return helper.make_tensor_value_info(name, info.dtype(name), info.shape(name))
    raise OnnxvizError(f"no type information for tensor '{name}'")
