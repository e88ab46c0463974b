"""The shared graph view, op tables and layout detection."""

from __future__ import annotations

import onnx
from onnx import TensorProto, helper

from onnxviz.autodiff.rules import RULES
from onnxviz.graphview import GraphView, fresh_name, taken_names, value_names
from onnxviz.layout import guess_input_layout, tensor_channel_axis
from onnxviz.ops import ACTIVATIONS, CHANNELS_FIRST_OPS, SAME_LAYOUT_OPS


def _model() -> onnx.ModelProto:
    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 8, 8, 3])
    y = helper.make_tensor_value_info("y", TensorProto.FLOAT, None)
    w = helper.make_tensor("w", TensorProto.FLOAT, [4, 3, 1, 1], [0.1] * 12)
    nodes = [
        helper.make_node("Transpose", ["x"], ["t"], perm=[0, 3, 1, 2], name="to_nchw"),
        helper.make_node("Conv", ["t", "w"], ["c"], name="conv"),
        helper.make_node("Mul", ["c", "c"], ["sq"], name="square"),
        helper.make_node("Relu", ["c"], ["r"], name="relu"),
        helper.make_node("Add", ["sq", "r"], ["a"], name="add"),
        helper.make_node("Transpose", ["a"], ["y"], perm=[0, 2, 3, 1], name="to_nhwc"),
    ]
    graph = helper.make_graph(nodes, "g", [x], [y], [w])
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])


def test_producers_consumers_and_names():
    view = GraphView(_model())
    assert view.producers["c"].name == "conv" and "x" not in view.producers
    assert [n.name for n in view.consumers["c"]] == ["square", "relu"]  # Mul(c, c) listed once
    assert view.inputs == ["x"] and set(view.initializers) == {"w"}
    assert view.names == ["x", "w", "t", "c", "sq", "r", "a", "y"] == value_names(view.model)
    assert view.value_types["w"] == (TensorProto.FLOAT, (4, 3, 1, 1))


def test_fresh_names_avoid_values_nodes_and_earlier_hands():
    view = GraphView(_model())
    assert view.fresh("c") == "c_1" and view.fresh("c") == "c_2"
    assert view.fresh("conv") == "conv_1"  # node names are taken too
    assert view.fresh("new") == "new"
    taken = taken_names(_model().graph)
    assert fresh_name("relu", taken) == "relu_1" and "relu_1" in taken


def test_layout_of_input_and_tensors():
    model = _model()
    assert guess_input_layout(model, "x", (1, 8, 8, 3)) == "NHWC"
    layouts = {"x": "NHWC"}.get
    assert tensor_channel_axis(model, "x", 4, layouts) == 3
    assert tensor_channel_axis(model, "c", 4, layouts) == 1  # a Conv output is channels-first
    assert tensor_channel_axis(model, "a", 4, layouts) == 1  # through Mul / Relu / Add
    assert tensor_channel_axis(model, "y", 4, layouts) == 3  # the exporter's Transpose back
    assert tensor_channel_axis(model, "y", 2, layouts) == 1 and tensor_channel_axis(model, "y", 1, layouts) is None


def test_op_tables_agree_with_the_gradient_rules():
    assert ACTIVATIONS <= SAME_LAYOUT_OPS
    assert not ACTIVATIONS - set(RULES), "an activation without a gradient rule"
    assert not SAME_LAYOUT_OPS & CHANNELS_FIRST_OPS
