"""Finite-difference checks of the reduction and softmax gradient rules: every Reduce* op with
keepdims 0/1, axes (none, negative, several), noop_with_empty_axes, the older attribute form, ties
of ReduceMax/ReduceMin, zeros in ReduceProd; Softmax/LogSoftmax over each axis."""

from __future__ import annotations

import numpy as np
import onnx
import onnxruntime as ort
import pytest

from gradcheck import check_op
from onnxviz.autodiff import COTANGENT, gradient_model
from onnxviz.fd import single_node_model

RNG = np.random.default_rng(0)
SHAPE = (2, 3, 4)


def away_from_zero(shape, low=0.3, high=1.5):
    return RNG.uniform(low, high, size=shape) * RNG.choice([-1.0, 1.0], size=shape)


def distinct(shape):
    """Values at least 0.05 apart: no ties for ReduceMax/ReduceMin, so FD stays off the kinks."""
    return RNG.permutation(np.arange(int(np.prod(shape)))).reshape(shape) * 0.05 + RNG.uniform(0, 0.01, shape)


INPUTS = {
    "ReduceSum": away_from_zero, "ReduceMean": away_from_zero, "ReduceSumSquare": away_from_zero,
    "ReduceL1": away_from_zero, "ReduceL2": away_from_zero, "ReduceLogSumExp": away_from_zero,
    "ReduceLogSum": lambda s: RNG.uniform(0.3, 1.5, s),  # log of a positive sum
    "ReduceMax": distinct, "ReduceMin": distinct, "ReduceProd": away_from_zero,
}
AXES = [None, [-1], [0, 2], [1, -1]]


def ort_run(model, feeds):
    sess = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    return sess.run(None, feeds)


@pytest.mark.parametrize("op", sorted(INPUTS))
@pytest.mark.parametrize("keepdims", [0, 1])
@pytest.mark.parametrize("axes", AXES, ids=str)
def test_reduce(op, keepdims, axes):
    inits = {"axes": np.array(axes, np.int64)} if axes is not None else None
    check_op(op, {"x": INPUTS[op](SHAPE)}, {"keepdims": keepdims}, inits)


@pytest.mark.parametrize("op", sorted(INPUTS))
def test_reduce_noop_with_empty_axes_is_identity(op):
    x = INPUTS[op](SHAPE)
    result = check_op(op, {"x": x}, {"keepdims": 0, "noop_with_empty_axes": 1})
    assert result.grads["x"].shape == SHAPE


@pytest.mark.parametrize("op", ["ReduceMean", "ReduceSum", "ReduceMax"])
def test_reduce_empty_axes_input_reduces_everything(op):
    check_op(op, {"x": INPUTS[op](SHAPE)}, {"keepdims": 0}, {"axes": np.array([], np.int64)})


# Ops whose axes are an attribute at opset 13 (ReduceSum: until opset 11), upgraded internally.
ATTRIBUTE_FORM = {op: 13 for op in INPUTS if op != "ReduceSum"} | {"ReduceSum": 11}


@pytest.mark.parametrize("op", sorted(ATTRIBUTE_FORM))
@pytest.mark.parametrize("keepdims, axes", [(0, [-1, 0]), (1, [1]), (0, None)], ids=str)
def test_reduce_attribute_form_older_opset(op, keepdims, axes):
    attrs = {"keepdims": keepdims}
    if axes is not None:
        attrs["axes"] = axes
    check_op(op, {"x": INPUTS[op](SHAPE)}, attrs, opset=ATTRIBUTE_FORM[op])


def test_reduce_symbolic_batch():
    x = away_from_zero(SHAPE).astype(np.float32)
    model = single_node_model("ReduceMean", {"x": x}, {"keepdims": 0}, {"axes": np.array([0, 2], np.int64)})
    model.graph.input[0].type.tensor_type.shape.dim[0].dim_param = "N"
    del model.graph.value_info[:]
    model.graph.output[0].type.tensor_type.ClearField("shape")
    model = onnx.shape_inference.infer_shapes(model)
    grad = gradient_model(model)
    for n in (1, 3):  # ReduceMean over the batch: the count is the runtime batch
        c = RNG.standard_normal(3).astype(np.float32)
        got = ort_run(grad, {"x": np.ones((n, 3, 4), np.float32), COTANGENT: c})[1]
        np.testing.assert_allclose(got, np.broadcast_to(c[None, :, None] / (n * 4), (n, 3, 4)), rtol=1e-6)


@pytest.mark.parametrize("op, pick", [("ReduceMax", np.max), ("ReduceMin", np.min)])
def test_reduce_extremum_ties_share_the_cotangent_evenly(op, pick):
    # No finite differences at a tie (no derivative there): the rule's subgradient is asserted.
    x = np.array([[1.0, 3.0, 3.0, 2.0], [-1.0, -1.0, -1.0, 0.5], [0.0, 0.0, 0.0, 0.0]], np.float32)
    model = single_node_model(op, {"x": x}, {"keepdims": 0}, {"axes": np.array([1], np.int64)})
    c = np.array([1.0, 2.0, 3.0], np.float32)
    got = ort_run(gradient_model(model), {"x": x, COTANGENT: c})[1]
    hits = (x == pick(x, axis=1, keepdims=True)).astype(np.float32)
    expected = hits * (c / hits.sum(axis=1))[:, None]
    np.testing.assert_allclose(got, expected, rtol=1e-6)
    np.testing.assert_allclose(got[2], np.full(4, 0.75), rtol=1e-6)  # four-way tie: 3 / 4 each


@pytest.mark.parametrize("zeros", [[(0, 1)], [(0, 1), (0, 3)], [(0, 1), (1, 2)]])
def test_reduce_prod_with_zeros(zeros):
    # One zero in a group: it gets the product of the others, the rest 0; two zeros: all 0.
    # (The product is multilinear, so finite differences stay exact at zeros.)
    x = away_from_zero((2, 4))
    for index in zeros:
        x[index] = 0.0
    check_op("ReduceProd", {"x": x}, {"keepdims": 0}, {"axes": np.array([-1], np.int64)})
    model = single_node_model("ReduceProd", {"x": x.astype(np.float32)}, {"keepdims": 0},
                              {"axes": np.array([-1], np.int64)})
    got = ort_run(gradient_model(model), {"x": x.astype(np.float32), COTANGENT: np.ones(2, np.float32)})[1]
    expected = np.zeros_like(x)
    for row in range(2):
        for col in range(4):
            expected[row, col] = np.prod(np.delete(x[row], col))
    np.testing.assert_allclose(got, expected, rtol=1e-6)
    assert np.count_nonzero(got[0]) == (1 if len(zeros) != 2 or zeros[1][0] == 1 else 0)


@pytest.mark.parametrize("op", ["Softmax", "LogSoftmax"])
@pytest.mark.parametrize("axis", [None, -1, 0, 1, -2])
def test_softmax(op, axis):
    check_op(op, {"x": away_from_zero(SHAPE, 0.1, 2.0)}, {"axis": axis} if axis is not None else None)


@pytest.mark.parametrize("op", ["Softmax", "LogSoftmax"])
@pytest.mark.parametrize("axis", [1, 0])
def test_softmax_opset11_coerces_to_2d(op, axis):
    # Before opset 13, softmax normalises over all axes from `axis` on; the upgrade must keep that.
    x = away_from_zero(SHAPE, 0.1, 2.0)
    check_op(op, {"x": x}, {"axis": axis}, opset=11)
    model = single_node_model(op, {"x": x.astype(np.float32)}, {"axis": axis}, opset=11)
    grad = gradient_model(model)
    target = ort_run(grad, {"x": x.astype(np.float32), COTANGENT: np.zeros(SHAPE, np.float32)})[0]
    np.testing.assert_allclose(target, ort_run(model, {"x": x.astype(np.float32)})[0], rtol=1e-6, atol=1e-7)
