"""Whole-graph behaviour of gradient_model: the contract, dynamic shapes, integer subgraphs,
pruning, fan-out, modifiers, unsupported ops, opset upgrade, finite-difference estimators."""

from __future__ import annotations

import numpy as np
import onnx
import onnx.reference
import pytest
from onnx import TensorProto, helper, numpy_helper

from gradcheck import check_gradient, ort_session, rel_error
from onnxviz import fd
from onnxviz.autodiff import COTANGENT, gradient_model, plan, prepare, supported_ops
from onnxviz.errors import LayerNotFoundError, OnnxvizError, UnsupportedOpError

RNG = np.random.default_rng(1)


def _model(nodes, inputs, outputs, inits=(), opset=18):
    graph = helper.make_graph(nodes, "m", inputs, outputs,
                              initializer=[numpy_helper.from_array(np.asarray(v), k) for k, v in inits])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)], ir_version=10)
    onnx.checker.check_model(model, full_check=True)
    return model


def small_cnn(batch="N", opset=18):
    """Conv-Relu-MaxPool-Flatten(by Shape/Gather/Concat/Reshape, as PyTorch exports)-Gemm-Softmax."""
    w = RNG.standard_normal((4, 2, 3, 3)).astype(np.float32) * 0.5
    b = RNG.standard_normal(4).astype(np.float32) * 0.1
    fc = RNG.standard_normal((5, 4 * 3 * 3)).astype(np.float32) * 0.3
    nodes = [
        helper.make_node("Conv", ["x", "w", "b"], ["c"], name="conv", pads=[1, 1, 1, 1]),
        helper.make_node("Relu", ["c"], ["r"], name="relu"),
        helper.make_node("MaxPool", ["r"], ["p"], name="pool", kernel_shape=[2, 2], strides=[2, 2]),
        helper.make_node("Shape", ["p"], ["s"], name="shape"),
        helper.make_node("Gather", ["s", "zero"], ["n"], name="batch", axis=0),
        helper.make_node("Unsqueeze", ["n", "axes0"], ["n1"], name="unsq"),
        helper.make_node("Concat", ["n1", "minus1"], ["newshape"], name="cat", axis=0),
        helper.make_node("Reshape", ["p", "newshape"], ["flat"], name="flatten"),
        helper.make_node("Gemm", ["flat", "fc"], ["logits"], name="fc", transB=1),
        helper.make_node("Softmax", ["logits"], ["probs"], name="softmax", axis=1),
    ]
    inits = [("w", w), ("b", b), ("fc", fc), ("zero", np.array(0, np.int64)),
             ("axes0", np.array([0], np.int64)), ("minus1", np.array([-1], np.int64))]
    return _model(nodes, [helper.make_tensor_value_info("x", TensorProto.FLOAT, [batch, 2, 6, 6])],
                  [helper.make_tensor_value_info("probs", TensorProto.FLOAT, [batch, 5])], inits, opset)


def test_contract_inputs_outputs_and_metadata():
    g = gradient_model(small_cnn(), of="logits")
    onnx.checker.check_model(g, full_check=True)
    assert [i.name for i in g.graph.input] == ["x", COTANGENT]
    assert [o.name for o in g.graph.output] == ["logits", "x_grad"]
    assert all(n.domain in ("", "ai.onnx") for n in g.graph.node)
    cot_dims = [d.dim_param or d.dim_value for d in g.graph.input[1].type.tensor_type.shape.dim]
    assert cot_dims == ["N", 5]
    props = {p.key: p.value for p in g.metadata_props}
    assert props["onnxviz.grad.target"] == "logits"


@pytest.mark.parametrize("batch", [1, 3])
def test_dynamic_batch_and_integer_subgraph(batch):
    x = RNG.standard_normal((batch, 2, 6, 6)).astype(np.float32)
    result = check_gradient(small_cnn(), {"x": x}, of="logits")
    assert result.fd_error < 1e-5 and result.ort_error < 1e-4


def test_target_through_softmax_and_by_layer_name():
    x = RNG.standard_normal((2, 2, 6, 6)).astype(np.float32)
    assert check_gradient(small_cnn(), {"x": x}).fd_error < 1e-5  # default: first output (probs)
    by_name = gradient_model(small_cnn(), of="fc")  # node name -> its output tensor
    assert by_name.graph.output[0].name == "logits"


def test_integer_ops_carry_no_gradient_and_unneeded_nodes_are_pruned():
    model, target = prepare(small_cnn(), "logits")
    p = plan(model, target)
    ops = [n.op_type for n in p.nodes]
    assert "Shape" not in ops and "Gather" not in ops and "Concat" not in ops
    assert "Softmax" not in ops  # after the target: pruned
    assert ops == ["Conv", "Relu", "MaxPool", "Reshape", "Gemm"]
    g = gradient_model(small_cnn(), of="logits")
    assert "Softmax" not in [n.op_type for n in g.graph.node]


def test_fan_out_accumulates():
    # y = x * x + sigmoid(x): x feeds three places
    nodes = [helper.make_node("Mul", ["x", "x"], ["sq"]), helper.make_node("Sigmoid", ["x"], ["s"]),
             helper.make_node("Add", ["sq", "s"], ["y"])]
    model = _model(nodes, [helper.make_tensor_value_info("x", TensorProto.FLOAT, [3, 4])],
                   [helper.make_tensor_value_info("y", TensorProto.FLOAT, [3, 4])])
    x = RNG.standard_normal((3, 4)).astype(np.float32)
    sess = ort_session(gradient_model(model))
    ones = np.ones_like(x)
    _, gx = sess.run(None, {"x": x, COTANGENT: ones})
    s = 1 / (1 + np.exp(-x))
    np.testing.assert_allclose(gx, 2 * x + s * (1 - s), rtol=1e-5)


def test_two_inputs_wrt_and_unused_input_gets_zero_gradient():
    nodes = [helper.make_node("Mul", ["a", "b"], ["y"])]
    model = _model(nodes, [helper.make_tensor_value_info("a", TensorProto.FLOAT, [2, 3]),
                           helper.make_tensor_value_info("b", TensorProto.FLOAT, [2, 3])],
                   [helper.make_tensor_value_info("y", TensorProto.FLOAT, [2, 3])])
    a, b = RNG.standard_normal((2, 2, 3)).astype(np.float32)
    g = gradient_model(model, wrt=["b"])
    assert [o.name for o in g.graph.output] == ["y", "b_grad"]
    _, gb = ort_session(g).run(None, {"a": a, "b": b, COTANGENT: np.ones_like(a)})
    np.testing.assert_allclose(gb, a)
    # an input the target ignores stays an input and gets a zero gradient
    nodes = [helper.make_node("Relu", ["a"], ["y"])]
    model2 = _model(nodes, [helper.make_tensor_value_info("a", TensorProto.FLOAT, [2, 3]),
                            helper.make_tensor_value_info("b", TensorProto.FLOAT, [2, 3])],
                    [helper.make_tensor_value_info("y", TensorProto.FLOAT, [2, 3])])
    g2 = gradient_model(model2)
    assert [i.name for i in g2.graph.input] == ["a", "b", COTANGENT]
    _, ga, gb = ort_session(g2).run(None, {"a": a, "b": b, COTANGENT: np.ones_like(a)})
    np.testing.assert_array_equal(gb, np.zeros_like(b))
    np.testing.assert_array_equal(ga, (a > 0).astype(np.float32))
    with pytest.raises(OnnxvizError, match="not a floating-point model input"):
        gradient_model(model, wrt=["nope"])


def test_opset_13_model_is_upgraded():
    x = RNG.standard_normal((2, 2, 6, 6)).astype(np.float32)
    model = small_cnn(opset=13)
    g = gradient_model(model, of="logits")
    assert g.opset_import[0].version >= 18
    assert check_gradient(model, {"x": x}, of="logits").fd_error < 1e-5


def test_unsupported_op_error_names_ops_and_nodes():
    nodes = [helper.make_node("Det", ["x"], ["d"], name="det1"), helper.make_node("Relu", ["d"], ["y"])]
    model = _model(nodes, [helper.make_tensor_value_info("x", TensorProto.FLOAT, [2, 3, 3])],
                   [helper.make_tensor_value_info("y", TensorProto.FLOAT, [2])])
    with pytest.raises(UnsupportedOpError) as err:
        gradient_model(model)
    assert err.value.ops == {"Det": ["det1"]}
    assert "Det" in str(err.value) and "det1" in str(err.value)
    assert not plan(*prepare(model)).supported
    assert "Relu" in supported_ops() and "Det" not in supported_ops()


def _relu_net():
    """y = W2 relu(W1 x): a net where guided backprop and deconvnet differ from the gradient."""
    w1 = RNG.standard_normal((6, 4)).astype(np.float32)
    w2 = RNG.standard_normal((3, 6)).astype(np.float32)
    nodes = [helper.make_node("Gemm", ["x", "w1"], ["h"], transB=1), helper.make_node("Relu", ["h"], ["r"]),
             helper.make_node("Gemm", ["r", "w2"], ["y"], transB=1)]
    model = _model(nodes, [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 4])],
                   [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N", 3])], [("w1", w1), ("w2", w2)])
    return model, w1, w2


@pytest.mark.parametrize("modifier", [None, "guided", "deconvnet"])
def test_backprop_modifiers(modifier):
    model, w1, w2 = _relu_net()
    x = RNG.standard_normal((5, 4)).astype(np.float32)
    cot = RNG.standard_normal((5, 3)).astype(np.float32)
    _, gx = ort_session(gradient_model(model, modifier=modifier)).run(None, {"x": x, COTANGENT: cot})
    h = x @ w1.T
    gr = cot @ w2
    if modifier is None:
        gh = gr * (h > 0)
    elif modifier == "guided":
        gh = gr * (h > 0) * (gr > 0)
    else:
        gh = np.maximum(gr, 0)
    np.testing.assert_allclose(gx, gh @ w1, rtol=1e-5, atol=1e-6)


def test_unknown_modifier():
    with pytest.raises(OnnxvizError, match="unknown backprop modifier"):
        gradient_model(_relu_net()[0], modifier="smooth")


def test_finite_difference_estimators_match_analytic_gradient():
    model, w1, w2 = _relu_net()
    f = fd.session_function(model, providers="cpu")
    x = RNG.standard_normal((2, 4)).astype(np.float64).astype(np.float32)
    cot = RNG.standard_normal((2, 3)).astype(np.float32)
    _, exact = ort_session(gradient_model(model)).run(None, {"x": x, COTANGENT: cot})
    est = fd.exact_gradient(f, x, cot, eps=1e-2)
    assert rel_error(est, exact) < 1e-2
    spsa = fd.spsa_gradient(f, x, cot, samples=4000, eps=1e-2, seed=0)
    # SPSA is a noisy estimate: direction right, error well below the signal.
    cos = float(np.sum(spsa * exact) / np.linalg.norm(spsa) / np.linalg.norm(exact))
    assert cos > 0.95
    again = fd.spsa_gradient(f, x, cot, samples=64, eps=1e-2, seed=3)
    np.testing.assert_array_equal(again, fd.spsa_gradient(f, x, cot, samples=64, eps=1e-2, seed=3))


def test_float64_reference_matches_onnxruntime():
    model = small_cnn()
    x = RNG.standard_normal((2, 2, 6, 6)).astype(np.float32)
    ref = fd.Float64Reference(model)(({"x": x}))[0]
    got = ort_session(model).run(None, {"x": x})[0]
    assert ref.dtype == np.float64
    assert rel_error(got, ref) < 1e-5


# ---------------------------------------------------------------- wrt = an intermediate tensor
def _fan_out_net(elem=TensorProto.FLOAT):
    """y = t*t + sigmoid(t) * exp(a), t = tanh(a), a = x * c: ``t`` feeds three places downstream
    (twice into one Mul) and exp(a) is a branch to y that avoids ``t``."""
    dtype = helper.tensor_dtype_to_np_dtype(elem)
    c = np.linspace(0.5, 1.5, 12).reshape(3, 4).astype(dtype)
    nodes = [helper.make_node("Mul", ["x", "c"], ["a"], name="scale"),
             helper.make_node("Tanh", ["a"], ["t"], name="tanh"),
             helper.make_node("Mul", ["t", "t"], ["sq"], name="square"), helper.make_node("Sigmoid", ["t"], ["s"]),
             helper.make_node("Exp", ["a"], ["e"], name="branch"), helper.make_node("Mul", ["s", "e"], ["m"]),
             helper.make_node("Add", ["sq", "m"], ["y"]),
             helper.make_node("Shape", ["t"], ["t_shape"]), helper.make_node("Neg", ["x"], ["unrelated"])]
    return _model(nodes, [helper.make_tensor_value_info("x", elem, [3, 4])],
                  [helper.make_tensor_value_info("y", elem, [3, 4]),
                   helper.make_tensor_value_info("t_shape", TensorProto.INT64, [2]),
                   helper.make_tensor_value_info("unrelated", elem, [3, 4])], [("c", c)])


def _exposed(model, tensor):
    """Oracle: ``model`` with ``tensor`` as a graph input (its producer dropped), so that it can be
    perturbed while every other tensor stays a function of the original inputs."""
    m = onnx.ModelProto()
    m.CopyFrom(model)
    producer = next(n for n in m.graph.node if tensor in n.output)
    m.graph.node.remove(producer)
    m.graph.input.append(helper.make_tensor_value_info(tensor, m.graph.input[0].type.tensor_type.elem_type, [3, 4]))
    return m


def _central_differences(model, feeds, name, cot, output="y", eps=1e-6):
    """d sum(cot * output) / d feeds[name], element by element, float64 reference evaluator."""
    ref = onnx.reference.ReferenceEvaluator(model)
    grad = np.zeros_like(feeds[name])
    for i in np.ndindex(grad.shape):
        plus, minus = feeds[name].copy(), feeds[name].copy()
        plus[i] += eps
        minus[i] -= eps
        fp = ref.run([output], {**feeds, name: plus})[0]
        fm = ref.run([output], {**feeds, name: minus})[0]
        grad[i] = np.sum(cot * (fp - fm)) / (2 * eps)
    return grad


def _forward64(x):
    a = x * np.linspace(0.5, 1.5, 12).reshape(3, 4)
    return a, np.tanh(a)


def test_gradient_wrt_an_intermediate_tensor_with_fan_out_matches_finite_differences():
    x = RNG.standard_normal((3, 4)).astype(np.float32)
    cot = RNG.standard_normal((3, 4)).astype(np.float32)
    g = gradient_model(_fan_out_net(), of="y", wrt=["t"])
    onnx.checker.check_model(g, full_check=True)
    assert [i.name for i in g.graph.input] == ["x", COTANGENT]  # no extra input: the graph is not cut
    assert [o.name for o in g.graph.output] == ["y", "t_grad"]
    y, gt = ort_session(g).run(None, {"x": x, COTANGENT: cot})
    np.testing.assert_allclose(y, ort_session(_fan_out_net()).run(["y"], {"x": x})[0], rtol=1e-6)
    # oracle: perturb t itself (exposed as an input), exp(a) held at its forward value
    x64, cot64 = x.astype(np.float64), cot.astype(np.float64)
    _, t64 = _forward64(x64)
    want = _central_differences(_exposed(_fan_out_net(TensorProto.DOUBLE), "t"), {"x": x64, "t": t64}, "t", cot64)
    np.testing.assert_allclose(gt, want, rtol=1e-4, atol=1e-6)
    a64 = _forward64(x64)[0]
    s = 1 / (1 + np.exp(-t64))
    np.testing.assert_allclose(gt, cot64 * (2 * t64 + s * (1 - s) * np.exp(a64)), rtol=1e-5, atol=1e-6)


def test_gradient_wrt_an_intermediate_tensor_stops_the_walk_there():
    model, target = prepare(_fan_out_net(), "y", ["t"])
    ops = [n.name or n.op_type for n in plan(model, target, ["t"]).nodes]
    assert ops == ["square", "Sigmoid", "Mul", "Add"]  # not tanh, scale nor the branch exp(a)
    g = gradient_model(_fan_out_net(), of="y", wrt=["t"])
    backward = [n for n in g.graph.node if n.doc_string.startswith("gradient of")]
    assert not any(n.doc_string in ("gradient of tanh", "gradient of scale", "gradient of branch") for n in backward)


def test_several_wrt_tensors_upstream_and_downstream_of_each_other():
    """wrt a and t (t = tanh(a)) and x: each gets its total derivative, paths through the other
    wrt tensors included, as finite differences perturbing that tensor alone."""
    x = RNG.standard_normal((3, 4)).astype(np.float32)
    cot = RNG.standard_normal((3, 4)).astype(np.float32)
    g = gradient_model(_fan_out_net(), of="y", wrt=["t", "x", "a"])
    assert [o.name for o in g.graph.output] == ["y", "t_grad", "x_grad", "a_grad"]
    _, gt, gx, ga = ort_session(g).run(None, {"x": x, COTANGENT: cot})
    x64, cot64 = x.astype(np.float64), cot.astype(np.float64)
    a64, t64 = _forward64(x64)
    net64 = _fan_out_net(TensorProto.DOUBLE)
    np.testing.assert_allclose(gt, _central_differences(_exposed(net64, "t"), {"x": x64, "t": t64}, "t", cot64),
                               rtol=1e-4, atol=1e-6)
    np.testing.assert_allclose(ga, _central_differences(_exposed(net64, "a"), {"x": x64, "a": a64}, "a", cot64),
                               rtol=1e-4, atol=1e-6)
    np.testing.assert_allclose(gx, _central_differences(net64, {"x": x64}, "x", cot64), rtol=1e-4, atol=1e-6)
    # and the same gradients as asking for each one alone
    _, alone = ort_session(gradient_model(_fan_out_net(), of="y", wrt=["a"])).run(None, {"x": x, COTANGENT: cot})
    np.testing.assert_allclose(ga, alone, rtol=1e-6, atol=1e-7)


def test_wrt_the_target_itself_or_a_tensor_the_target_ignores():
    x = RNG.standard_normal((3, 4)).astype(np.float32)
    cot = RNG.standard_normal((3, 4)).astype(np.float32)
    g = gradient_model(_fan_out_net(), of="t", wrt=["t", "unrelated"])
    _, gt, gu = ort_session(g).run(None, {"x": x, COTANGENT: cot})
    np.testing.assert_array_equal(gt, cot)
    np.testing.assert_array_equal(gu, np.zeros_like(x))


def test_unknown_or_unusable_wrt_names_raise():
    with pytest.raises(LayerNotFoundError, match=r"cannot differentiate w.r.t. 'tt': no tensor of that name.*"
                                                 r"closest tensor names: t\b"):
        gradient_model(_fan_out_net(), of="y", wrt=["tt"])
    with pytest.raises(LayerNotFoundError, match="no tensor of that name"):
        plan(*prepare(_fan_out_net(), "y"), ["nope"])
    with pytest.raises(OnnxvizError, match="'t_shape': not a floating-point tensor"):
        gradient_model(_fan_out_net(), of="y", wrt=["t_shape"])
    with pytest.raises(OnnxvizError, match="'c': it is a constant"):
        gradient_model(_fan_out_net(), of="y", wrt=["c"])
    with pytest.raises(OnnxvizError, match="list of tensor names"):
        gradient_model(_fan_out_net(), of="y", wrt="t")
