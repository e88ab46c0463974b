"""Finite-difference checks of the linear gradient rules: Conv, ConvTranspose, Gemm, MatMul, Einsum.

These ops are linear in the differentiated input, so no input needs keeping away from kinks. Every
Conv/ConvTranspose case also checks that onnxruntime's forward agrees with the float64 oracle's, so the
oracle judges the op onnxruntime actually runs.
"""

from __future__ import annotations

import contextlib

import numpy as np
import onnx
import pytest
from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st
from onnx import TensorProto, helper, numpy_helper

from gradcheck import check_gradient, check_op, ort_session, rel_error
from onnxviz.autodiff import gradient_model
from onnxviz.autodiff.rules import linear as linear_rules
from onnxviz.errors import ShapeError, UnsupportedOpError
from onnxviz.fd import Float64Reference, single_node_model

RNG = np.random.default_rng(0)
HYPOTHESIS = settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])


def normal(*shape, rng=RNG):
    return rng.standard_normal(shape).astype(np.float32)


def assert_forward_matches_onnxruntime(model: onnx.ModelProto, feeds: dict) -> None:
    """The float64 oracle computes what onnxruntime computes (same output shape and values)."""
    got = ort_session(model).run(None, feeds)[0]
    want = Float64Reference(model)(feeds)[0]
    assert got.shape == want.shape, f"onnxruntime {got.shape} vs oracle {want.shape}"
    assert rel_error(got, want) < 1e-4


def check_conv(op, x, w, attrs, bias=None, bias_grad=False):
    """Check dX (and the bias gradient when ``bias_grad``) of Conv/ConvTranspose with constant weights."""
    inputs, inits, order = {"x": x}, {"w": w}, ["x", "w"]
    if bias is not None:
        (inputs if bias_grad else inits)["b"] = bias
        order.append("b")
    model = single_node_model(op, inputs, attrs, inits, input_order=order)
    assert_forward_matches_onnxruntime(model, inputs)
    result = check_op(op, inputs, attrs, inits, input_order=order)
    assert set(result.grads) == set(inputs)
    return result


# ---- Conv ------------------------------------------------------------------------------------------

CONV_CASES = {
    "1d": ((2, 3, 9), (4, 3, 3), {}),
    "1d_stride_dilation_pads": ((1, 2, 11), (3, 2, 3), {"strides": [2], "dilations": [2], "pads": [2, 1]}),
    "2d": ((2, 3, 6, 7), (4, 3, 3, 3), {}),
    "2d_asym_pads": ((1, 2, 6, 7), (3, 2, 3, 2), {"pads": [0, 2, 1, 0]}),
    "2d_stride_uneven": ((1, 2, 8, 7), (3, 2, 3, 3), {"strides": [3, 2]}),  # rows/cols never reached
    "2d_dilation": ((1, 2, 8, 9), (2, 2, 3, 2), {"dilations": [2, 3], "pads": [1, 1, 2, 0]}),
    "2d_groups": ((1, 4, 6, 6), (6, 2, 3, 3), {"group": 2, "strides": [2, 2], "pads": [1, 1, 1, 1]}),
    "2d_depthwise": ((2, 3, 6, 7), (3, 1, 3, 3), {"group": 3, "pads": [1, 1, 1, 1]}),
    "2d_depthwise_multiplier": ((1, 3, 7, 6), (6, 1, 3, 2), {"group": 3, "strides": [2, 1], "dilations": [1, 2]}),
    "2d_same_upper": ((1, 2, 7, 6), (3, 2, 3, 2), {"auto_pad": "SAME_UPPER", "strides": [2, 2]}),
    "2d_same_lower": ((1, 2, 7, 6), (3, 2, 2, 4), {"auto_pad": "SAME_LOWER", "strides": [2, 3]}),
    "2d_same_stride1": ((1, 2, 5, 5), (2, 2, 2, 3), {"auto_pad": "SAME_UPPER"}),
    "2d_valid": ((1, 2, 7, 8), (3, 2, 3, 3), {"auto_pad": "VALID", "strides": [2, 3]}),
    "2d_notset_kernel_attr": ((1, 2, 5, 6), (2, 2, 3, 3), {"auto_pad": "NOTSET", "kernel_shape": [3, 3],
                                                          "pads": [1, 0, 0, 1]}),
    "2d_pads_beyond_kernel": ((1, 1, 4, 4), (2, 1, 2, 2), {"pads": [3, 0, 0, 3], "strides": [2, 2]}),
    "3d": ((1, 2, 4, 5, 4), (2, 2, 2, 3, 2), {"strides": [1, 2, 2], "pads": [1, 0, 1, 0, 1, 0]}),
    "3d_groups_dilation": ((1, 4, 5, 5, 4), (4, 2, 2, 2, 2), {"group": 2, "dilations": [2, 1, 2]}),
    "3d_same_lower": ((1, 2, 4, 5, 3), (2, 2, 2, 2, 3), {"auto_pad": "SAME_LOWER", "strides": [2, 2, 1]}),
}


@pytest.mark.parametrize("case", sorted(CONV_CASES))
def test_conv(case):
    x_shape, w_shape, attrs = CONV_CASES[case]
    check_conv("Conv", normal(*x_shape), normal(*w_shape), attrs)


@pytest.mark.parametrize("bias_grad", [False, True])
def test_conv_bias(bias_grad):
    result = check_conv("Conv", normal(2, 2, 5, 6), normal(3, 2, 3, 3), {"pads": [1, 1, 1, 1], "strides": [2, 1]},
                        bias=normal(3), bias_grad=bias_grad)
    if bias_grad:  # sum of the cotangent over batch and space; the FD check covered it, the shape too
        assert result.grads["b"].shape == (3,)


@st.composite
def conv_config(draw, transpose: bool):
    """A random Conv/ConvTranspose: rank, channels/groups (plain, grouped, depthwise), window, padding."""
    k = draw(st.integers(1, 3))
    sizes = draw(st.lists(st.integers(2, 6 if k < 3 else 4), min_size=k, max_size=k))
    kernel = draw(st.lists(st.integers(1, 3), min_size=k, max_size=k))
    strides = draw(st.lists(st.integers(1, 3), min_size=k, max_size=k))
    dilations = draw(st.lists(st.integers(1, 2), min_size=k, max_size=k))
    grouping = draw(st.sampled_from(["plain", "grouped", "depthwise"]))
    if grouping == "plain":
        group, c_in, c_out = 1, draw(st.integers(1, 3)), draw(st.integers(1, 3))
    elif grouping == "grouped":
        group, c_in, c_out = 2, 2 * draw(st.integers(1, 2)), 2 * draw(st.integers(1, 2))
    else:  # group == C_in, channel multiplier 1 or 2
        c_in = draw(st.integers(2, 3))
        group, c_out = c_in, c_in * draw(st.integers(1, 2))
    attrs = {"strides": strides, "dilations": dilations, "group": group}
    if draw(st.booleans()):
        attrs["kernel_shape"] = kernel
    padding = draw(st.sampled_from(["pads", "none", "NOTSET", "VALID", "SAME_UPPER", "SAME_LOWER"]
                                   + (["output_shape"] if transpose else [])))
    if padding == "pads":
        attrs["pads"] = draw(st.lists(st.integers(0, 2), min_size=2 * k, max_size=2 * k))
    elif padding != "none" and padding != "output_shape":
        attrs["auto_pad"] = padding
    if not transpose and padding.startswith("SAME"):
        # onnxruntime rejects Conv with auto_pad SAME_* and dilations > 1 ("Dilation not supported").
        attrs["dilations"] = dilations = [1] * k
    window = [(kk - 1) * d + 1 for kk, d in zip(kernel, dilations)]
    if transpose:
        # onnxruntime requires output_padding < stride. With auto_pad SAME_* and no output_shape, onnx
        # shape inference sizes the output n * stride + output_padding where onnxruntime (and the spec)
        # give n * stride (onnx 1.23): the model's static shapes are wrong and the checker rejects its
        # gradient graph, so no output_padding there.
        same_only = padding.startswith("SAME")
        out_pad = [0 if same_only else draw(st.integers(0, s - 1)) for s in strides]
        attrs["output_padding"] = out_pad
        full = [(n - 1) * s + w + a for n, s, w, a in zip(sizes, strides, window, out_pad)]
        if padding == "output_shape":
            # Crop up to 3 in total, or extend the end by less than (stride - output_padding): more is
            # rejected by onnxruntime as inconsistent.
            crops = [draw(st.integers(-(s - 1 - a), 3)) for s, a in zip(strides, out_pad)]
            attrs["output_shape"] = [f - c for f, c in zip(full, crops)]
            if draw(st.booleans()):
                attrs["auto_pad"] = draw(st.sampled_from(["NOTSET", "VALID", "SAME_UPPER", "SAME_LOWER"]))
        pads = attrs.get("pads", [0] * (2 * k))
        assume(all(f - b - e >= 1 for f, b, e in zip(full, pads[:k], pads[k:])))
        # onnx shape inference stops at an output_shape entry below the input size, leaving the output
        # with a wrong static rank (onnx 1.23): keep output_shape >= the input size.
        assume(all(o >= n for o, n in zip(attrs.get("output_shape", sizes), sizes)))
        w_shape = (c_in, c_out // group, *kernel)
    else:
        pads = attrs.get("pads", [0] * (2 * k)) if padding in ("pads", "none", "NOTSET") else [0] * (2 * k)
        assume(all(n + b + e >= w for n, b, e, w in zip(sizes, pads[:k], pads[k:], window)))
        w_shape = (c_out, c_in // group, *kernel)
    batch = draw(st.integers(1, 2))
    bias = draw(st.sampled_from([None, "constant", "input"]))
    return (batch, c_in, *sizes), w_shape, attrs, bias, c_out


def _check_config(op, config, seed):
    x_shape, w_shape, attrs, bias, c_out = config
    rng = np.random.default_rng(seed)
    check_conv(op, normal(*x_shape, rng=rng), normal(*w_shape, rng=rng), attrs,
               bias=None if bias is None else normal(c_out, rng=rng), bias_grad=bias == "input")


@HYPOTHESIS
@given(config=conv_config(transpose=False), seed=st.integers(0, 2**16))
def test_conv_hypothesis(config, seed):
    _check_config("Conv", config, seed)


@contextlib.contextmanager
def flipped_conv_backward():
    """Take the stride-1 "flipped-kernel Conv" backward path at any channel count (it is normally
    kept for >= FLIP_MIN_CHANNELS output channels, where it is faster than ConvTranspose)."""
    saved = linear_rules.FLIP_MIN_CHANNELS
    linear_rules.FLIP_MIN_CHANNELS = 0
    try:
        yield
    finally:
        linear_rules.FLIP_MIN_CHANNELS = saved


@pytest.mark.parametrize("case", sorted(c for c, (_, _, a) in CONV_CASES.items() if set(a.get("strides", [1])) == {1}))
def test_conv_stride_one_backward_as_flipped_conv(case):
    x_shape, w_shape, attrs = CONV_CASES[case]
    with flipped_conv_backward():
        model = single_node_model("Conv", {"x": normal(*x_shape)}, attrs, {"w": normal(*w_shape)})
        ops = [n.op_type for n in gradient_model(model).graph.node]
        k = len(w_shape) - 2
        reach = [d * (kk - 1) for kk, d in zip(w_shape[2:], attrs.get("dilations", [1] * k))]
        pads = attrs.get("pads", [0] * 2 * k)
        if all(p <= r for p, r in zip(pads, reach + reach)):
            assert "ConvTranspose" not in ops and ops.count("Conv") == 2, ops
        else:  # a pad beyond the kernel's reach: the backward Conv would need negative pads
            assert "ConvTranspose" in ops
        check_conv("Conv", normal(*x_shape), normal(*w_shape), attrs)


@HYPOTHESIS
@given(config=conv_config(transpose=False), seed=st.integers(0, 2**16))
def test_conv_hypothesis_flipped_backward(config, seed):
    with flipped_conv_backward():
        _check_config("Conv", config, seed)


def test_conv_backward_path_follows_channel_count():
    """Wide stride-1 convs get the flipped Conv; narrow ones (an RGB/grayscale image gradient) and
    strided ones keep ConvTranspose."""
    def back_ops(c_in, strides):
        model = single_node_model("Conv", {"x": normal(1, c_in, 6, 6)}, {"strides": strides, "pads": [1, 1, 1, 1]},
                                  {"w": normal(4, c_in, 3, 3)})
        return {n.op_type for n in gradient_model(model).graph.node}

    assert "ConvTranspose" not in back_ops(linear_rules.FLIP_MIN_CHANNELS, [1, 1])
    assert "ConvTranspose" in back_ops(3, [1, 1])
    assert "ConvTranspose" in back_ops(linear_rules.FLIP_MIN_CHANNELS, [2, 1])
    check_conv("Conv", normal(2, 16, 5, 6), normal(8, 16, 3, 3), {"pads": [1, 0, 2, 1]})
    check_conv("Conv", normal(1, 16, 5, 6), normal(16, 2, 3, 3), {"group": 8, "dilations": [2, 1], "pads": [2, 1, 2, 1]})


def test_conv_weight_gradient_is_unsupported():
    model = single_node_model("Conv", {"x": normal(1, 2, 5, 5), "w": normal(3, 2, 3, 3)})
    with pytest.raises(UnsupportedOpError, match="Conv weights"):
        gradient_model(model)
    # Only the input: fine.
    assert gradient_model(model, wrt=["x"]) is not None


def symbolic_model(op, x_dims, w, attrs, bias=None, bias_input=False):
    """One Conv-like node whose input has symbolic dims (dim_param strings)."""
    inputs = [helper.make_tensor_value_info("x", TensorProto.FLOAT, x_dims)]
    names = ["x", "w"]
    inits = [numpy_helper.from_array(w, "w")]
    if bias is not None:
        names.append("b")
        if bias_input:
            inputs.append(helper.make_tensor_value_info("b", TensorProto.FLOAT, bias.shape))
        else:
            inits.append(numpy_helper.from_array(bias, "b"))
    node = helper.make_node(op, names, ["out0"], name=op.lower(), **attrs)
    return hand_model(node, inputs, [x_dims[0]] + [None] * (len(x_dims) - 1), inits)


def hand_model(node, inputs, out_dims, initializers=()):
    """A one-node opset-18 model from value infos (symbolic dims allowed); the output is ``out0``."""
    out = helper.make_tensor_value_info("out0", TensorProto.FLOAT, out_dims)
    graph = helper.make_graph([node], node.op_type.lower(), inputs, [out], initializer=list(initializers))
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)], ir_version=10)


def check_symbolic(model, shapes, bias=None):
    """Run one gradient graph at several input sizes, each against the float64 oracle."""
    for i, shape in enumerate(shapes):
        rng = np.random.default_rng(i)
        feeds = {"x": normal(*shape, rng=rng)}
        if bias is not None:
            feeds["b"] = bias
        assert_forward_matches_onnxruntime(model, feeds)
        result = check_gradient(model, feeds, of="out0")
        assert result.fd_error < 1e-5, f"{shape}: gradient vs finite differences: {result.fd_error:.2e}"
        assert result.ort_error < 1e-4, f"{shape}: onnxruntime vs float64: {result.ort_error:.2e}"
        assert result.grads["x"].shape == shape


SYMBOLIC_CONV = {
    # batch only symbolic: the static output_padding branch
    "batch": (["N", 2, 7, 6], {"strides": [2, 2], "pads": [1, 0, 0, 1]}, [(1, 2, 7, 6), (3, 2, 7, 6)]),
    # symbolic spatial dims, explicit pads: transposed conv then a runtime tail Pad (7 rows: one never
    # reached by the stride-2 window; 8 rows: none)
    "spatial_pads": (["N", 2, "H", "W"], {"strides": [2, 2], "pads": [1, 0, 0, 1]}, [(1, 2, 7, 6), (2, 2, 8, 9)]),
    "spatial_dilation": (["N", 2, "H", "W"], {"strides": [3, 1], "dilations": [1, 2]}, [(1, 2, 8, 7), (2, 2, 9, 6)]),
    # symbolic spatial dims with SAME padding: pads only known at run time
    "spatial_same_upper": (["N", 2, "H", "W"], {"auto_pad": "SAME_UPPER", "strides": [2, 2]},
                           [(1, 2, 7, 6), (2, 2, 8, 5)]),
    "spatial_same_lower": (["N", 2, "H", "W"], {"auto_pad": "SAME_LOWER", "strides": [2, 1]},
                           [(1, 2, 7, 6), (2, 2, 4, 5)]),
}


@pytest.mark.parametrize("case", sorted(SYMBOLIC_CONV))
def test_conv_symbolic_dims(case):
    dims, attrs, shapes = SYMBOLIC_CONV[case]
    w = normal(3, 2, 3, 2) if "same" in case else normal(3, 2, 3, 3)
    model = symbolic_model("Conv", dims, w, attrs)
    check_symbolic(model, shapes)
    if "spatial" in case:  # the dynamic branch was taken
        ops = {n.op_type for n in gradient_model(model).graph.node}
        assert "Pad" in ops


@pytest.mark.parametrize("auto_pad", ["SAME_UPPER", "SAME_LOWER", "NOTSET"])
def test_conv_symbolic_spatial_stride_one_flipped(auto_pad):
    """At stride 1 the pads do not depend on the input size: symbolic H, W need no runtime Pad."""
    attrs = {"auto_pad": auto_pad} if auto_pad != "NOTSET" else {"pads": [1, 0, 0, 2]}
    with flipped_conv_backward():
        model = symbolic_model("Conv", ["N", 2, "H", "W"], normal(3, 2, 2, 3), attrs)
        ops = {n.op_type for n in gradient_model(model).graph.node}
        assert not ops & {"Pad", "ConvTranspose"}, ops
        check_symbolic(model, [(1, 2, 7, 6), (2, 2, 4, 5)])


def test_conv_symbolic_spatial_bias_gradient():
    bias = normal(3)
    model = symbolic_model("Conv", ["N", 2, "H", "W"], normal(3, 2, 2, 2), {"strides": [2, 2]}, bias, True)
    check_symbolic(model, [(1, 2, 5, 6), (2, 2, 6, 3)], bias=bias)


# ---- ConvTranspose ---------------------------------------------------------------------------------

CONV_TRANSPOSE_CASES = {
    "1d": ((2, 3, 5), (3, 2, 3), {}),
    "1d_stride_dilation": ((1, 2, 5), (2, 3, 3), {"strides": [3], "dilations": [2], "pads": [1, 2]}),
    "2d": ((1, 2, 4, 5), (2, 3, 3, 3), {}),
    "2d_stride_asym_pads": ((1, 2, 4, 3), (2, 3, 3, 2), {"strides": [2, 3], "pads": [1, 0, 2, 1]}),
    "2d_output_padding": ((1, 2, 4, 3), (2, 2, 3, 3), {"strides": [2, 3], "output_padding": [1, 2],
                                                       "pads": [1, 1, 0, 0]}),
    "2d_output_padding_dilation": ((1, 2, 3, 4), (2, 2, 2, 3), {"strides": [3, 2], "dilations": [2, 3],
                                                                "output_padding": [2, 1]}),
    "2d_groups": ((1, 4, 3, 4), (4, 3, 3, 3), {"group": 2, "strides": [2, 2], "pads": [1, 1, 1, 1]}),
    "2d_depthwise": ((1, 3, 4, 4), (3, 1, 3, 3), {"group": 3, "strides": [2, 1]}),
    "2d_depthwise_multiplier": ((2, 3, 3, 4), (3, 2, 2, 3), {"group": 3, "strides": [2, 2], "pads": [0, 1, 1, 0]}),
    "2d_same_upper": ((1, 2, 3, 4), (2, 2, 3, 3), {"auto_pad": "SAME_UPPER", "strides": [2, 2]}),
    "2d_same_lower": ((1, 2, 3, 4), (2, 2, 3, 2), {"auto_pad": "SAME_LOWER", "strides": [2, 1]}),
    # total padding (k-1)d + 1 + output_padding - s is negative on the first axis: nothing to crop
    "2d_same_short_kernel": ((1, 2, 3, 4), (2, 2, 1, 3), {"auto_pad": "SAME_UPPER", "strides": [3, 2],
                                                          "dilations": [1, 2]}),
    "2d_valid": ((1, 2, 3, 4), (2, 2, 3, 3), {"auto_pad": "VALID", "strides": [2, 2], "output_padding": [1, 0]}),
    "2d_output_shape": ((1, 2, 3, 4), (2, 2, 3, 3), {"strides": [3, 2], "output_shape": [8, 7]}),
    "2d_output_shape_same_upper": ((1, 2, 3, 4), (2, 2, 3, 3), {"strides": [3, 2], "output_shape": [7, 8],
                                                                "auto_pad": "SAME_UPPER"}),
    "2d_output_shape_same_lower": ((1, 2, 3, 4), (2, 2, 3, 3), {"strides": [3, 2], "output_shape": [7, 8],
                                                                "auto_pad": "SAME_LOWER"}),
    # output_shape beyond the full output: onnxruntime zero-extends the end
    "2d_output_shape_extends": ((1, 2, 3, 4), (2, 2, 2, 2), {"strides": [3, 2], "output_shape": [10, 9]}),
    "3d": ((1, 2, 3, 2, 3), (2, 2, 2, 3, 2), {"strides": [2, 1, 2], "pads": [1, 0, 0, 0, 1, 1]}),
    "3d_groups_output_padding": ((1, 4, 2, 3, 2), (4, 1, 2, 2, 3), {"group": 2, "strides": [2, 2, 2],
                                                                     "output_padding": [1, 0, 1]}),
    "3d_same_upper": ((1, 2, 2, 3, 2), (2, 2, 2, 3, 3), {"auto_pad": "SAME_UPPER", "strides": [2, 1, 2]}),
}


@pytest.mark.parametrize("case", sorted(CONV_TRANSPOSE_CASES))
def test_conv_transpose(case):
    x_shape, w_shape, attrs = CONV_TRANSPOSE_CASES[case]
    check_conv("ConvTranspose", normal(*x_shape), normal(*w_shape), attrs)


@pytest.mark.parametrize("bias_grad", [False, True])
def test_conv_transpose_bias(bias_grad):
    check_conv("ConvTranspose", normal(2, 2, 3, 4), normal(2, 3, 3, 3), {"strides": [2, 2], "pads": [1, 1, 0, 0]},
               bias=normal(3), bias_grad=bias_grad)


@HYPOTHESIS
@given(config=conv_config(transpose=True), seed=st.integers(0, 2**16))
def test_conv_transpose_hypothesis(config, seed):
    _check_config("ConvTranspose", config, seed)


def test_conv_transpose_weight_gradient_is_unsupported():
    model = single_node_model("ConvTranspose", {"x": normal(1, 2, 3, 3), "w": normal(2, 3, 3, 3)})
    with pytest.raises(UnsupportedOpError, match="ConvTranspose weights"):
        gradient_model(model)


@pytest.mark.parametrize("attrs", [{"strides": [2, 2], "pads": [1, 0, 0, 1], "output_padding": [1, 0]},
                                   {"auto_pad": "SAME_LOWER", "strides": [2, 3]}])
def test_conv_transpose_symbolic_dims(attrs):
    model = symbolic_model("ConvTranspose", ["N", 2, "H", "W"], normal(2, 3, 3, 3), attrs)
    check_symbolic(model, [(1, 2, 3, 4), (2, 2, 4, 2)])


def test_conv_transpose_output_shape_needs_static_spatial_dims():
    model = symbolic_model("ConvTranspose", ["N", 2, "H", "W"], normal(2, 3, 3, 3),
                           {"strides": [2, 2], "output_shape": [7, 7]})
    with pytest.raises(ShapeError, match="output_shape"):
        gradient_model(model)


# ---- Gemm ------------------------------------------------------------------------------------------

M, K, N = 3, 4, 5


def gemm_operands(trans_a, trans_b):
    return normal(*((K, M) if trans_a else (M, K))), normal(*((N, K) if trans_b else (K, N)))


@pytest.mark.parametrize("trans_a", [0, 1])
@pytest.mark.parametrize("trans_b", [0, 1])
@pytest.mark.parametrize("alpha,beta", [(1.0, 1.0), (0.5, -2.0)])
def test_gemm(trans_a, trans_b, alpha, beta):
    a, b = gemm_operands(trans_a, trans_b)
    result = check_op("Gemm", {"a": a, "b": b, "c": normal(M, N)},
                      {"alpha": alpha, "beta": beta, "transA": trans_a, "transB": trans_b})
    assert set(result.grads) == {"a", "b", "c"}


@pytest.mark.parametrize("c_shape", [(), (1,), (N,), (1, N), (M, 1), (1, 1), (M, N)])
def test_gemm_bias_broadcast(c_shape):
    a, b = gemm_operands(1, 1)
    check_op("Gemm", {"a": a, "b": b, "c": normal(*c_shape)}, {"alpha": 1.5, "beta": 0.25, "transA": 1, "transB": 1})


def test_gemm_without_bias():
    a, b = gemm_operands(0, 1)
    check_op("Gemm", {"a": a, "b": b}, {"alpha": -0.5, "transB": 1})


def test_gemm_dense_layer_constant_weights():
    """The common export: x @ W^T + bias with W, bias initializers; only x gets a gradient."""
    result = check_op("Gemm", {"x": normal(2, K)}, {"transB": 1}, {"w": normal(N, K), "bias": normal(N)},
                      input_order=["x", "w", "bias"])
    assert list(result.grads) == ["x"]


def test_gemm_symbolic_batch():
    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", K])
    c = helper.make_tensor_value_info("c", TensorProto.FLOAT, [1, N])
    node = helper.make_node("Gemm", ["x", "w", "c"], ["out0"], transB=1, beta=0.5)
    model = hand_model(node, [x, c], ["N", N], [numpy_helper.from_array(normal(N, K), "w")])
    for batch in (1, 3):
        result = check_gradient(model, {"x": normal(batch, K), "c": normal(1, N)}, of="out0")
        assert result.fd_error < 1e-5 and result.ort_error < 1e-4


# ---- MatMul ----------------------------------------------------------------------------------------

MATMUL_SHAPES = [
    ((3, 4), (4, 5)),
    ((2, 3, 4), (2, 4, 5)),  # batched
    ((2, 1, 3, 4), (5, 4, 2)),  # broadcast batch dims on both sides
    ((3, 4), (2, 4, 5)),  # matrix times a batch
    ((2, 3, 4), (4, 5)),
    ((4,), (4, 5)),  # 1-D on the left
    ((4,), (2, 3, 4, 5)),
    ((3, 4), (4,)),  # 1-D on the right
    ((2, 1, 3, 4), (4,)),
    ((4,), (4,)),  # dot product
]


@pytest.mark.parametrize("shapes", MATMUL_SHAPES, ids=str)
def test_matmul(shapes):
    result = check_op("MatMul", {"a": normal(*shapes[0]), "b": normal(*shapes[1])})
    assert result.grads["a"].shape == shapes[0] and result.grads["b"].shape == shapes[1]


@pytest.mark.parametrize("constant", ["a", "b"])
def test_matmul_one_constant_operand(constant):
    shapes = {"a": (2, 3, 4), "b": (4, 5)}
    other = "b" if constant == "a" else "a"
    result = check_op("MatMul", {other: normal(*shapes[other])}, initializers={constant: normal(*shapes[constant])},
                      input_order=["a", "b"])
    assert list(result.grads) == [other]


def test_matmul_symbolic_batch_broadcast():
    a = helper.make_tensor_value_info("a", TensorProto.FLOAT, ["N", 1, 3, 4])
    b = helper.make_tensor_value_info("b", TensorProto.FLOAT, [2, 4, 5])
    model = hand_model(helper.make_node("MatMul", ["a", "b"], ["out0"]), [a, b], ["N", 2, 3, 5])
    for batch in (1, 3):
        result = check_gradient(model, {"a": normal(batch, 1, 3, 4), "b": normal(2, 4, 5)}, of="out0")
        assert result.fd_error < 1e-5 and result.ort_error < 1e-4
        assert result.grads["a"].shape == (batch, 1, 3, 4) and result.grads["b"].shape == (2, 4, 5)


# ---- Einsum ----------------------------------------------------------------------------------------

EINSUM_CASES = {
    "matmul": ("ij,jk->ik", [(3, 4), (4, 5)]),
    "batched_bilinear": ("bij,bjk->bik", [(2, 3, 4), (2, 4, 5)]),
    "outer": ("i,j->ij", [(3,), (4,)]),
    "full_contraction": ("ij,ij->", [(3, 4), (3, 4)]),
    "transposed_output": ("ij,jk->ki", [(3, 4), (4, 5)]),
    "chain": ("ij,jk,kl->il", [(2, 3), (3, 4), (4, 2)]),
    "summed_out": ("ij->i", [(3, 4)]),
    "summed_out_other_operand": ("ij,jk->i", [(3, 4), (4, 5)]),  # k only in operand 1
    "summed_out_both": ("ij,kl->ik", [(2, 3), (4, 5)]),
    "uppercase": ("bA,Ac->cb", [(2, 3), (3, 4)]),
    "spaces": ("b i j , b j k -> b k i", [(2, 3, 4), (2, 4, 3)]),
    "ellipsis": ("...ij,...jk->...ik", [(2, 3, 4), (2, 4, 5)]),
    "ellipsis_broadcast": ("...ij,...jk->...ik", [(2, 1, 3, 4), (1, 5, 4, 2)]),
    "ellipsis_middle": ("i...j,j...k->i...k", [(2, 5, 3), (3, 5, 4)]),
    "ellipsis_one_operand": ("i...,j->...ij", [(3, 2, 5), (4,)]),
    "ellipsis_summed_letter": ("...ij->...i", [(2, 3, 4)]),
    "implicit_matmul": ("ij,jk", [(3, 4), (4, 5)]),
    "implicit_sorted_output": ("kj,ji", [(3, 4), (4, 5)]),  # output "ik": the transpose of k @ j
    "implicit_full_contraction": ("ij,ij", [(3, 4), (3, 4)]),
    "implicit_ellipsis": ("...ij,...jk", [(2, 3, 4), (1, 4, 5)]),
}


@pytest.mark.parametrize("case", sorted(EINSUM_CASES))
def test_einsum(case):
    equation, shapes = EINSUM_CASES[case]
    inputs = {f"x{i}": normal(*s) for i, s in enumerate(shapes)}
    result = check_op("Einsum", inputs, {"equation": equation})
    for name, shape in zip(inputs, shapes):
        assert result.grads[name].shape == shape


def test_einsum_diagonal_of_a_constant_operand():
    """A repeated subscript in an operand that needs no gradient is fine (it is just read)."""
    result = check_op("Einsum", {"v": normal(3)}, {"equation": "ii,i->i"}, {"m": normal(3, 3)},
                      input_order=["m", "v"])
    assert list(result.grads) == ["v"]


def test_einsum_diagonal_gradient_is_unsupported():
    model = single_node_model("Einsum", {"m": normal(3, 3)}, {"equation": "ii->i"})
    with pytest.raises(UnsupportedOpError, match="repeats a subscript"):
        gradient_model(model)


def test_einsum_same_tensor_twice():
    """x used as two operands: both contributions add up (d/dx of x.x is 2x)."""
    x = normal(4)
    model = single_node_model("Einsum", {"x": x}, {"equation": "i,i->"}, input_order=["x", "x"])
    result = check_gradient(model, {"x": x}, of="out0")
    assert result.fd_error < 1e-5 and result.ort_error < 1e-4
    np.testing.assert_allclose(result.grads["x"] / (2 * x), result.grads["x"][0] / (2 * x[0]), rtol=1e-10)


def test_einsum_symbolic_batch():
    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 3, 4])
    y = helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 4, 2])
    node = helper.make_node("Einsum", ["x", "y"], ["out0"], equation="...ij,...jk->...ik")
    model = hand_model(node, [x, y], ["N", 3, 2])
    for batch in (1, 3):
        result = check_gradient(model, {"x": normal(batch, 3, 4), "y": normal(1, 4, 2)}, of="out0")
        assert result.fd_error < 1e-5 and result.ort_error < 1e-4
        assert result.grads["y"].shape == (1, 4, 2)
