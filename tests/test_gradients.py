"""GradientFunction (graph / fd / auto fallback) and the gradient check behind `onnxviz check`."""

from __future__ import annotations

import warnings

import numpy as np
import pytest
from onnx import TensorProto, helper, numpy_helper

from onnxviz.check import check_gradients
from onnxviz.errors import OnnxvizError, ShapeError, UnsupportedOpError
from onnxviz.gradients import FallbackWarning, GradientFunction, concrete_input_shape
from test_autodiff import small_cnn

RNG = np.random.default_rng(7)


def model_with_unsupported_op(broken_grad: bool = False):
    """x -> Gemm -> Cos (no rule) -> Gemm: differentiable in math, not by the graph (yet).

    ``broken_grad`` replaces Cos by Round, whose zero gradient makes finite differences and the
    graph disagree with nothing — used to show check's failure exit instead (see the CLI tests)."""
    w1 = RNG.standard_normal((6, 8)).astype(np.float32) * 0.3
    w2 = RNG.standard_normal((3, 6)).astype(np.float32) * 0.3
    nodes = [helper.make_node("Gemm", ["x", "w1"], ["h"], transB=1, name="fc1"),
             helper.make_node("Cos", ["h"], ["c"], name="cos1"),
             helper.make_node("Gemm", ["c", "w2"], ["y"], transB=1, name="fc2")]
    graph = helper.make_graph(nodes, "m", [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 8])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N", 3])],
                              initializer=[numpy_helper.from_array(w1, "w1"), numpy_helper.from_array(w2, "w2")])
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)], ir_version=10), w1, w2


def analytic(x, cot, w1, w2):
    h = x @ w1.T
    return ((cot @ w2) * -np.sin(h)) @ w1


def test_graph_method_matches_analytic():
    model, w1, w2 = model_with_unsupported_op()
    x = RNG.standard_normal((4, 8)).astype(np.float32)
    cot = RNG.standard_normal((4, 3)).astype(np.float32)
    with pytest.raises(UnsupportedOpError, match="Cos"):
        GradientFunction(model, method="graph")
    fn = GradientFunction(model, method="fd")
    y, g = fn(x, cot)
    assert fn.method == "fd"
    np.testing.assert_allclose(y, np.cos(x @ w1.T) @ w2.T, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(g, analytic(x, cot, w1, w2), rtol=2e-2, atol=2e-3)


def test_auto_falls_back_with_one_warning():
    model, w1, w2 = model_with_unsupported_op()
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        fn = GradientFunction(model, method="auto")
        x = RNG.standard_normal((2, 8)).astype(np.float32)
        fn(x, np.ones((2, 3), np.float32))
        fn(x, np.ones((2, 3), np.float32))
    fallbacks = [w for w in caught if issubclass(w.category, FallbackWarning)]
    assert len(fallbacks) == 1 and "Cos" in str(fallbacks[0].message)
    assert fn.method == "fd"


def test_modifier_needs_graph():
    model, *_ = model_with_unsupported_op()
    with pytest.raises(OnnxvizError, match="modifier"):
        GradientFunction(model, method="fd", modifier="guided")


def test_graph_function_on_cnn():
    model = small_cnn()
    fn = GradientFunction(model, "logits", method="auto")
    assert fn.method == "graph"
    x = RNG.standard_normal((3, 2, 6, 6)).astype(np.float32)
    cot = np.eye(5, dtype=np.float32)[[0, 2, 4]]
    y, g = fn(x, cot)
    assert y.shape == (3, 5) and g.shape == x.shape
    np.testing.assert_allclose(fn.forward(x), y, rtol=1e-6)
    est = GradientFunction(model, "logits", method="fd")(x, cot)[1]
    assert np.abs(est - g).max() < 2e-2 * np.abs(g).max()


def test_concrete_input_shape():
    assert concrete_input_shape(("N", 28, 28, 1)) == (1, 28, 28, 1)
    assert concrete_input_shape(("N", 3, "H", "W"), (2, 3, 32, 32)) == (2, 3, 32, 32)
    with pytest.raises(ShapeError, match="input-shape"):
        concrete_input_shape(("N", 3, "H", "W"))
    with pytest.raises(ShapeError, match="rank"):
        concrete_input_shape(("N", 3), (1, 3, 4))


def test_check_passes_on_graph_and_reports_fields():
    report = check_gradients(small_cnn(), input_shape=[2, 2, 6, 6])
    assert report.supported and report.method == "graph" and report.passed
    assert report.max_rel_error < 1e-4
    assert set(report.ops_with_rules) == {"Conv", "Relu", "MaxPool", "Reshape", "Gemm"}
    assert report.target == "probs"  # logits of the first output (softmax stripped, name kept)


def test_check_reports_unsupported_and_uses_fd():
    model, *_ = model_with_unsupported_op()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", FallbackWarning)
        report = check_gradients(model)
    assert not report.supported and report.unsupported_ops == ["Cos"]
    assert report.method == "fd" and report.passed
    assert report.max_rel_error < report.tolerance
