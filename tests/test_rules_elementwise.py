"""Finite-difference checks of the elementwise gradient rules, with numpy broadcasting."""

from __future__ import annotations

import numpy as np
import pytest

from gradcheck import check_op

RNG = np.random.default_rng(0)


def away_from_zero(shape, low=0.2, high=2.0, rng=RNG):
    """Random values with |x| in [low, high]: keeps kinks (ReLU at 0, |x|, ...) out of FD's way."""
    return rng.uniform(low, high, size=shape) * rng.choice([-1.0, 1.0], size=shape)


def positive(shape, low=0.3, high=2.0):
    return RNG.uniform(low, high, size=shape)


BROADCAST_SHAPES = [((2, 3, 4), (2, 3, 4)), ((2, 3, 4), (4,)), ((2, 1, 4), (3, 1)), ((1,), (2, 3)),
                    ((2, 3, 1, 5), (1, 3, 4, 1))]


@pytest.mark.parametrize("op", ["Add", "Sub", "Mul", "Div"])
@pytest.mark.parametrize("shapes", BROADCAST_SHAPES)
def test_binary_arithmetic(op, shapes):
    a = away_from_zero(shapes[0])
    b = away_from_zero(shapes[1]) if op != "Div" else positive(shapes[1])
    check_op(op, {"a": a, "b": b})


@pytest.mark.parametrize("shapes", BROADCAST_SHAPES[:3])
def test_pow(shapes):
    check_op("Pow", {"a": positive(shapes[0]), "b": away_from_zero(shapes[1], 0.5, 2.0)})


def test_pow_integer_exponent_constant():
    check_op("Pow", {"a": away_from_zero((3, 4))}, initializers={"b": np.array(3, dtype=np.int64)})


def test_binary_with_constant_operand_only_differentiates_input():
    result = check_op("Mul", {"a": away_from_zero((2, 3))}, initializers={"b": away_from_zero((3,))})
    assert list(result.grads) == ["a"]


UNARY = {
    "Neg": (away_from_zero, {}), "Abs": (away_from_zero, {}), "Sqrt": (positive, {}),
    "Exp": (away_from_zero, {}), "Log": (positive, {}), "Reciprocal": (away_from_zero, {}),
    "Relu": (away_from_zero, {}), "LeakyRelu": (away_from_zero, {"alpha": 0.1}),
    "Elu": (away_from_zero, {"alpha": 0.7}), "Selu": (away_from_zero, {}),
    "Sigmoid": (away_from_zero, {}), "HardSigmoid": (away_from_zero, {"alpha": 0.3, "beta": 0.4}),
    "HardSwish": (lambda s: RNG.uniform(-5, 5, s), {}), "Tanh": (away_from_zero, {}),
    "Softplus": (away_from_zero, {}), "Softsign": (away_from_zero, {}), "Erf": (away_from_zero, {}),
    "Gelu": (away_from_zero, {}), "Identity": (away_from_zero, {}), "Dropout": (away_from_zero, {}),
}


@pytest.mark.parametrize("op", sorted(UNARY))
def test_unary(op):
    make, attrs = UNARY[op]
    x = make((2, 3, 5))
    if op == "HardSwish":  # keep away from the kinks at +-3
        x = np.where(np.abs(np.abs(x) - 3) < 0.2, 1.0, x)
    if op == "HardSigmoid":  # kinks where 0.3 x + 0.4 is 0 or 1
        u = 0.3 * x + 0.4
        x = np.where((np.abs(u) < 0.05) | (np.abs(u - 1) < 0.05), 0.5, x)
    check_op(op, {"x": x}, attrs, opset=20 if op == "Gelu" else 18)


def test_gelu_tanh_approximation():
    check_op("Gelu", {"x": away_from_zero((4, 5))}, {"approximate": "tanh"}, opset=20)


def test_prelu_broadcast_slope():
    check_op("PRelu", {"x": away_from_zero((2, 3, 4, 4)), "slope": positive((3, 1, 1), 0.1, 0.5)})


@pytest.mark.parametrize("bounds", [(-0.5, 0.7), (0.0, 6.0), (None, 0.5), (-0.5, None)])
def test_clip(bounds):
    x = RNG.uniform(-1.5, 7.0, size=(3, 4, 5))
    lo, hi = bounds
    for bound in (lo, hi):  # keep away from the bounds
        if bound is not None:
            x = np.where(np.abs(x - bound) < 0.05, bound + 0.3, x)
    inits = {}
    order = ["x"]
    if lo is not None:
        inits["lo"] = np.array(lo, np.float32)
        order.append("lo")
    else:
        order.append("")
    if hi is not None:
        inits["hi"] = np.array(hi, np.float32)
        order.append("hi")
    check_op("Clip", {"x": x}, initializers=inits, input_order=order)


@pytest.mark.parametrize("op", ["Max", "Min", "Sum", "Mean"])
def test_variadic(op):
    a, b, c = away_from_zero((2, 3, 4)), away_from_zero((3, 4)), away_from_zero((2, 1, 4))
    check_op(op, {"a": a, "b": b, "c": c})


def test_where_broadcast():
    cond = RNG.random((2, 3, 4)) > 0.5
    check_op("Where", {"cond": cond, "a": away_from_zero((3, 4)), "b": away_from_zero((2, 1, 4))})


def test_cast_roundtrip_float_types():
    check_op("Cast", {"x": away_from_zero((3, 4))}, {"to": 11})  # float -> double


def _relu_model(shape, conv_channels: int = 0):
    """x -> Relu -> y, or x -> Conv(c->c, 3x3, pad 1) -> Relu -> Conv -> y (blocked NCHWc path in
    onnxruntime when c >= 8)."""
    from onnx import TensorProto, helper, numpy_helper

    nodes, inits, src = [], [], "x"
    if conv_channels:
        rng = np.random.default_rng(3)
        for i in range(2):
            w = rng.standard_normal((conv_channels, conv_channels, 3, 3)).astype(np.float32) * 0.3
            inits.append(numpy_helper.from_array(w, f"w{i}"))
        nodes.append(helper.make_node("Conv", ["x", "w0"], ["c0"], pads=[1, 1, 1, 1]))
        src = "c0"
    nodes.append(helper.make_node("Relu", [src], ["r"]))
    nodes.append(helper.make_node("Conv", ["r", "w1"], ["y"], pads=[1, 1, 1, 1]) if conv_channels else
                 helper.make_node("Identity", ["r"], ["y"]))
    graph = helper.make_graph(nodes, "relu", [helper.make_tensor_value_info("x", TensorProto.FLOAT, shape)],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, shape)], inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    return model


@pytest.mark.parametrize("modifier", [None, "guided"])
def test_relu_mask_is_exact_at_zero_denormals_and_extremes(modifier):
    """The float32 ReLU mask (two HardSigmoid(2^127) nodes, run on onnxruntime's blocked layout) is
    exactly [z > 0]: 0 at z = 0, 1 for the smallest denormal and for the largest float."""
    from onnxviz.gradients import GradientFunction

    tiny = np.finfo(np.float32).smallest_subnormal
    special = np.array([0.0, -0.0, tiny, 2 * tiny, 1e-40, 1.2e-38, 1e-30, 1.0, 3.0e38, -tiny, -1.0, -3.0e38],
                       np.float32)
    x = np.resize(special, (2, 3, 4, 4)).astype(np.float32)
    fn = GradientFunction(_relu_model([2, 3, 4, 4]), "y", method="graph", modifier=modifier)
    assert "HardSigmoid" in {n.op_type for n in fn.model.graph.node}
    cot = np.resize(np.array([1.5, -2.0, 0.25], np.float32), x.shape).astype(np.float32)
    _, g = fn(x, cot)
    expected = cot * (x > 0)
    if modifier == "guided":
        expected = np.maximum(expected, 0)
    np.testing.assert_array_equal(g, expected)


@pytest.mark.parametrize("modifier", [None, "guided"])
def test_relu_mask_between_convolutions_matches_where(modifier, monkeypatch):
    """Between two 16-channel convolutions (onnxruntime keeps both in NCHWc) the HardSigmoid mask
    gives bit-identical gradients to the Greater + Where mask."""
    import onnxviz.autodiff.rules.elementwise as rules
    from onnxviz.gradients import GradientFunction

    model = _relu_model([2, 16, 9, 9], conv_channels=16)
    x = np.random.default_rng(4).standard_normal((2, 16, 9, 9)).astype(np.float32)
    cot = np.random.default_rng(5).standard_normal((2, 16, 9, 9)).astype(np.float32)
    _, fast = GradientFunction(model, "y", method="graph", modifier=modifier)(x, cot)
    monkeypatch.setattr(rules, "positive_mask", lambda g, z: None)
    plain = GradientFunction(model, "y", method="graph", modifier=modifier)
    assert "HardSigmoid" not in {n.op_type for n in plain.model.graph.node}
    _, reference = plain(x, cot)
    assert np.count_nonzero(reference) > 0.2 * reference.size
    np.testing.assert_array_equal(fast, reference)


@pytest.mark.parametrize("modifier", [None, "guided"])
@pytest.mark.parametrize("hi", [6.0, 1.0, 0.75, 3e20, 0.01, 2.0 ** -90])
def test_relu6_mask_is_exact_at_both_bounds(hi, modifier):
    """Clip(0, hi) (ReLU6 for hi = 6) takes the HardSigmoid masks: the gradient passes exactly where
    0 < x < hi — not at 0 or hi, yes at the smallest denormal and one float below hi."""
    from onnx import TensorProto, helper, numpy_helper

    from onnxviz.gradients import GradientFunction

    hi32 = np.float32(hi)
    below = np.nextafter(hi32, np.float32(0))
    tiny = np.finfo(np.float32).smallest_subnormal
    special = np.array([0.0, tiny, 1e-39, 1e-20, below, hi32, np.nextafter(hi32, np.float32(np.inf)), 2 * hi32,
                        -tiny, -1.0, hi32 / 2, np.float32(3e38)], np.float32)
    x = np.resize(special, (2, 2, 3, 4)).astype(np.float32)
    graph = helper.make_graph(
        [helper.make_node("Clip", ["x", "lo", "hi"], ["y"])], "clip",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, list(x.shape))],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, list(x.shape))],
        [numpy_helper.from_array(np.array(0.0, np.float32), "lo"), numpy_helper.from_array(np.array(hi32), "hi")])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    fn = GradientFunction(model, "y", method="graph", modifier=modifier)
    assert "HardSigmoid" in {n.op_type for n in fn.model.graph.node}
    cot = np.resize(np.array([1.5, -2.0, 0.25], np.float32), x.shape).astype(np.float32)
    _, g = fn(x, cot)
    expected = cot * ((x > 0) & (x < hi32))
    if modifier == "guided":
        expected = np.maximum(expected, 0)
    np.testing.assert_array_equal(g, expected)
