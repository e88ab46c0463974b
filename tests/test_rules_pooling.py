"""Finite-difference checks of the pooling gradient rules over their attributes (hypothesis)."""

from __future__ import annotations

import numpy as np
import onnx
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from onnx import TensorProto, helper

from gradcheck import check_gradient, check_op
from onnxviz.autodiff import gradient_model
from onnxviz.fd import single_node_model

FD_TOL, ORT_TOL = 1e-5, 1e-4


def distinct(shape, seed=0):
    """Values in [-2, 2) without ties, at least 4/size apart: every window max is unique and stays
    the max under finite-difference perturbations."""
    size = int(np.prod(shape))
    return np.random.default_rng(seed).permutation(size).reshape(shape) * (4.0 / size) - 2.0


def assert_close(result, what=""):
    assert result.fd_error < FD_TOL, f"{what}: gradient vs finite differences: rel err {result.fd_error:.2e}"
    assert result.ort_error < ORT_TOL, f"{what}: onnxruntime vs float64: rel err {result.ort_error:.2e}"


def symbolic(model: onnx.ModelProto, dims: dict[int, str]) -> onnx.ModelProto:
    """``model`` with dims of its first input renamed to symbols (e.g. {0: "N"}), shapes re-inferred."""
    out = onnx.ModelProto()
    out.CopyFrom(model)
    shape = out.graph.input[0].type.tensor_type.shape
    for axis, name in dims.items():
        shape.dim[axis].Clear()
        shape.dim[axis].dim_param = name
    for o in out.graph.output:
        o.type.tensor_type.ClearField("shape")
    del out.graph.value_info[:]
    return onnx.shape_inference.infer_shapes(out)


def window_dropped(n, extent, stride, pad_begin, pad_end) -> bool:
    """ceil_mode's last window would start in the end padding, so the spec (and onnxruntime) drop it.

    ONNX shape inference ignores that rule: it declares one output more than onnxruntime computes,
    so onnxruntime rejects a cotangent of the true shape. Such cases are checked against the float64
    oracle only (test_ceil_mode_dropped_window).
    """
    span = n + pad_begin + pad_end - extent
    return (-(-span // stride)) * stride >= n + pad_begin


@st.composite
def pool_configs(draw, op: str):
    """Input shape and attributes of a valid MaxPool/AveragePool node (1-D to 3-D)."""
    k = draw(st.integers(1, 3))
    spatial = [draw(st.integers(3, 7 if k < 3 else 5)) for _ in range(k)]
    kernel = [draw(st.integers(1, 3)) for _ in range(k)]
    strides = [draw(st.integers(1, 3)) for _ in range(k)]
    dilations = [draw(st.integers(1, 2)) for _ in range(k)]
    auto_pad = draw(st.sampled_from(["NOTSET", "NOTSET", "VALID", "SAME_UPPER", "SAME_LOWER"]))
    if auto_pad.startswith("SAME"):
        # onnxruntime's pools resolve SAME padding from the undilated kernel and do not clamp it at
        # zero (kernel < stride), departing from the ONNX spec there; the rule and oracle follow the spec.
        dilations = [1] * k
        kernel = [max(kk, s) for kk, s in zip(kernel, strides)]
    pads = [0] * (2 * k)
    if auto_pad == "NOTSET":  # onnxruntime requires pads smaller than the kernel
        pads = [draw(st.integers(0, kk - 1)) for kk in kernel * 2]
    extents = [(kk - 1) * d + 1 for kk, d in zip(kernel, dilations)]
    if any(e > n + pads[i] + pads[k + i] for i, (e, n) in enumerate(zip(extents, spatial))):
        pads = [0] * (2 * k)
        spatial = [max(n, e) for n, e in zip(spatial, extents)]
    ceil_mode = draw(st.integers(0, 1))
    if ceil_mode and auto_pad != "SAME_UPPER" and auto_pad != "SAME_LOWER" and any(
            window_dropped(n, e, s, pads[i], pads[k + i])
            for i, (n, e, s) in enumerate(zip(spatial, extents, strides))):
        ceil_mode = 0  # see test_ceil_mode_dropped_window
    attrs = dict(kernel_shape=kernel, strides=strides, auto_pad=auto_pad, ceil_mode=ceil_mode)
    if auto_pad == "NOTSET":
        attrs["pads"] = pads
    if any(d > 1 for d in dilations) or op == "MaxPool":
        attrs["dilations"] = dilations
    if op == "MaxPool":
        attrs["storage_order"] = draw(st.integers(0, 1))
    else:
        attrs["count_include_pad"] = draw(st.integers(0, 1))
    return (2, 2, *spatial), attrs


# ---- MaxPool ---------------------------------------------------------------------------------------

@settings(max_examples=40, deadline=None)
@given(config=pool_configs("MaxPool"), seed=st.integers(0, 2**16))
def test_max_pool_attributes(config, seed):
    shape, attrs = config
    check_op("MaxPool", {"x": distinct(shape, seed)}, attrs)


@pytest.mark.parametrize("storage_order", [0, 1])
def test_max_pool_reuses_indices_used_downstream(storage_order):
    """The model already consumes MaxPool's Indices: the rule routes through them (no second pool)."""
    attrs = dict(kernel_shape=[2, 3], strides=[2, 1], pads=[1, 0, 0, 1], storage_order=storage_order)
    nodes = [helper.make_node("MaxPool", ["x"], ["y", "idx"], name="pool", **attrs),
             helper.make_node("Cast", ["idx"], ["idx_f"], to=TensorProto.FLOAT),
             helper.make_node("Mul", ["y", "idx_f"], ["out"])]
    graph = helper.make_graph(nodes, "pool_indices",
                              [helper.make_tensor_value_info("x", TensorProto.FLOAT, [2, 3, 5, 6])],
                              [helper.make_tensor_value_info("out", TensorProto.FLOAT, [2, 3, 3, 5])])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)], ir_version=10)
    x = distinct((2, 3, 5, 6)).astype(np.float32)
    assert_close(check_gradient(model, {"x": x}, of="out"), "MaxPool with Indices consumed")
    grad = gradient_model(model, of="out")
    pools = [n for n in grad.graph.node if n.op_type == "MaxPool"]
    assert len(pools) == 1 and list(pools[0].output) == ["y", "idx"]


@pytest.mark.parametrize("dims", [{0: "N"}, {0: "N", 2: "H", 3: "W"}])
def test_max_pool_symbolic_dims(dims):
    attrs = dict(kernel_shape=[3, 2], strides=[2, 2], pads=[1, 1, 0, 0], ceil_mode=1, storage_order=1)
    x = distinct((3, 2, 7, 6)).astype(np.float32)
    model = symbolic(single_node_model("MaxPool", {"x": x}, attrs), dims)
    assert_close(check_gradient(model, {"x": x}, of="out0"), f"MaxPool {dims}")
    # The same gradient model serves another batch size.
    x2 = distinct((5, 2, 7, 6), seed=1).astype(np.float32)
    assert_close(check_gradient(model, {"x": x2}, of="out0"), f"MaxPool {dims}, batch 5")


# ---- AveragePool -----------------------------------------------------------------------------------

@settings(max_examples=40, deadline=None)
@given(config=pool_configs("AveragePool"), seed=st.integers(0, 2**16))
def test_average_pool_attributes(config, seed):
    shape, attrs = config
    x = np.random.default_rng(seed).standard_normal(shape)
    check_op("AveragePool", {"x": x}, attrs, opset=19 if "dilations" in attrs else 18)


@pytest.mark.parametrize("count_include_pad", [0, 1])
@pytest.mark.parametrize("ceil_mode", [0, 1])
def test_average_pool_border_windows(count_include_pad, ceil_mode):
    """Pads, overhanging ceil_mode windows and both divisor conventions in one 2-D case."""
    attrs = dict(kernel_shape=[3, 3], strides=[2, 2], pads=[1, 0, 1, 2], ceil_mode=ceil_mode,
                 count_include_pad=count_include_pad)
    check_op("AveragePool", {"x": np.random.default_rng(1).standard_normal((2, 3, 8, 7))}, attrs)


@pytest.mark.parametrize("dims", [{0: "N"}, {0: "N", 2: "H", 3: "W"}])
@pytest.mark.parametrize("ceil_mode", [0, 1])
def test_average_pool_symbolic_dims(dims, ceil_mode):
    attrs = dict(kernel_shape=[3, 2], strides=[2, 2], pads=[1, 1, 0, 0], ceil_mode=ceil_mode, count_include_pad=1)
    x = np.random.default_rng(2).standard_normal((3, 2, 7, 6)).astype(np.float32)
    model = symbolic(single_node_model("AveragePool", {"x": x}, attrs), dims)
    assert_close(check_gradient(model, {"x": x}, of="out0"), f"AveragePool {dims}")
    x2 = np.random.default_rng(3).standard_normal((1, 2, 8, 5)).astype(np.float32)
    if len(dims) > 1:  # other spatial sizes too
        assert_close(check_gradient(model, {"x": x2}, of="out0"), f"AveragePool {dims}, other size")


def test_average_pool_plain_windows_use_a_constant_divisor():
    """No padding and no overhang: the divisor is the kernel size, no divisor map is built."""
    x = np.random.default_rng(4).standard_normal((2, 3, 6, 6))
    check_op("AveragePool", {"x": x}, dict(kernel_shape=[2, 2], strides=[2, 2]))
    model = single_node_model("AveragePool", {"x": x.astype(np.float32)}, dict(kernel_shape=[2, 2], strides=[2, 2]))
    ops = [n.op_type for n in gradient_model(model).graph.node]
    assert ops.count("AveragePool") == 1 and "Conv" not in ops


@pytest.mark.parametrize("op", ["MaxPool", "AveragePool"])
def test_ceil_mode_dropped_window(op):
    """Last ceil_mode window starting in the end padding is dropped (rule matches the spec);
    float64 oracle only, as onnxruntime rejects the cotangent shape ONNX inference declares."""
    attrs = dict(kernel_shape=[2, 3], strides=[3, 2], pads=[0, 0, 1, 2], ceil_mode=1)
    assert window_dropped(6, 2, 3, 0, 1) and window_dropped(6, 3, 2, 0, 2)
    if op == "AveragePool":
        attrs["count_include_pad"] = 1
    x = distinct((2, 2, 6, 6)).astype(np.float32)
    model = single_node_model(op, {"x": x}, attrs)
    result = check_gradient(model, {"x": x}, of="out0", run_ort=False)
    assert result.fd_error < FD_TOL
    assert result.grads["x"].shape == x.shape


# ---- global pools ----------------------------------------------------------------------------------

@pytest.mark.parametrize("op", ["GlobalAveragePool", "GlobalMaxPool"])
@pytest.mark.parametrize("shape", [(2, 3, 5), (2, 3, 4, 5), (2, 2, 3, 4, 3)])
def test_global_pools(op, shape):
    check_op(op, {"x": distinct(shape)})


@pytest.mark.parametrize("op", ["GlobalAveragePool", "GlobalMaxPool"])
@pytest.mark.parametrize("dims", [{0: "N"}, {0: "N", 2: "H", 3: "W"}])
def test_global_pools_symbolic_dims(op, dims):
    x = distinct((3, 2, 4, 5)).astype(np.float32)
    model = symbolic(single_node_model(op, {"x": x}), dims)
    assert_close(check_gradient(model, {"x": x}, of="out0"), f"{op} {dims}")
    x2 = distinct((1, 2, 3, 6), seed=1).astype(np.float32)
    if len(dims) > 1:
        assert_close(check_gradient(model, {"x": x2}, of="out0"), f"{op} {dims}, other size")


def first_max_routing(x: np.ndarray, gz: np.ndarray, kh: int, kw: int) -> np.ndarray:
    """numpy oracle: each window's cotangent to its first maximum in row-major order (what
    onnxruntime's Indices, TensorFlow and PyTorch pick at ties)."""
    n, c, h, w = x.shape
    win = x.reshape(n, c, h // kh, kh, w // kw, kw).transpose(0, 1, 2, 4, 3, 5).reshape(n, c, h // kh, w // kw, -1)
    pick = np.eye(kh * kw)[win.argmax(-1)] * gz[..., None]
    return pick.reshape(n, c, h // kh, w // kw, kh, kw).transpose(0, 1, 2, 4, 3, 5).reshape(n, c, h, w)


@pytest.mark.parametrize("kernel", [[2, 2], [3, 2], [1, 4]])
def test_tiling_max_pool_uses_no_indices_and_routes_ties_to_the_first_max(kernel):
    """kernel == stride without pads: no Indices asked of the forward MaxPool (which would move it
    off onnxruntime's fast kernel); ties go where onnxruntime's own Indices send them."""
    import onnxruntime as ort

    from onnxviz.autodiff import COTANGENT

    rng = np.random.default_rng(3)
    x = rng.permutation(2 * 3 * 6 * 8).reshape(2, 3, 6, 8).astype(np.float32) / 10 - 3
    result = check_op("MaxPool", {"x": x}, {"kernel_shape": kernel, "strides": kernel})
    assert result.fd_error < 1e-5
    model = single_node_model("MaxPool", {"x": x}, {"kernel_shape": kernel, "strides": kernel})
    grad = gradient_model(model)
    pools = [n for n in grad.graph.node if n.op_type == "MaxPool" and n.input[0] == "x"]
    assert len(pools) == 1 and len(pools[0].output) == 1
    assert not any(n.op_type == "ScatterElements" for n in grad.graph.node)
    # many exact ties (small integers, as saturated pixels give): same routing as the oracle
    ties = rng.integers(0, 3, size=(2, 3, 6, 8)).astype(np.float32)
    gz = rng.standard_normal((2, 3, 6 // kernel[0], 8 // kernel[1])).astype(np.float32)
    sess = ort.InferenceSession(grad.SerializeToString(), providers=["CPUExecutionProvider"])
    _, gx = sess.run(None, {"x": ties, COTANGENT: gz})
    np.testing.assert_array_equal(gx, first_max_routing(ties, gz, *kernel))


def test_tiling_max_pool_with_symbolic_batch_and_channels():
    """Only the spatial dims need to be static for the Indices-free rule (exported models have a
    symbolic batch); one graph serves every batch size. Other dtypes than float32 (no onnxruntime
    Resize kernel) route through the forward MaxPool's Indices."""
    for dtype in (np.float32, np.float64):
        x = distinct((1, 3, 6, 4)).astype(dtype)
        model = symbolic(single_node_model("MaxPool", {"x": x}, {"kernel_shape": [2, 2], "strides": [2, 2]}),
                         {0: "N", 1: "C"})
        ops = [n.op_type for n in gradient_model(model).graph.node]
        assert ("ScatterElements" in ops) == (dtype == np.float64) and ("Resize" in ops) == (dtype == np.float32), ops
        assert_close(check_gradient(model, {"x": x}, of="out0"), f"{dtype.__name__} batch 1")
        x3 = distinct((3, 2, 6, 4), seed=2).astype(dtype)
        assert_close(check_gradient(model, {"x": x3}, of="out0"), f"{dtype.__name__} batch 3, 2 channels")


@pytest.mark.parametrize("modifier", [None, "guided", "deconvnet"])
def test_relu_mask_applied_at_the_pooled_resolution(modifier):
    """conv -> relu -> 2x2 pool: the Relu's mask moves into the MaxPool rule (pooled resolution);
    the gradients equal those of the same net with an Identity between Relu and MaxPool (where
    nothing is fused), for every modifier, on inputs with many exact zeros and ties."""
    import onnxruntime as ort

    from onnxviz.autodiff import COTANGENT

    def net(identity: bool) -> onnx.ModelProto:
        nodes = [helper.make_node("Relu", ["x"], ["r"], name="relu")]
        pool_in = "r"
        if identity:
            nodes.append(helper.make_node("Identity", ["r"], ["r2"], name="id"))
            pool_in = "r2"
        nodes.append(helper.make_node("MaxPool", [pool_in], ["out0"], name="pool", kernel_shape=[2, 2], strides=[2, 2]))
        graph = helper.make_graph(nodes, "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 3, 6, 8])],
                                  [helper.make_tensor_value_info("out0", TensorProto.FLOAT, None)])
        return onnx.shape_inference.infer_shapes(
            helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)], ir_version=10))

    rng = np.random.default_rng(5)
    x = rng.integers(-2, 3, size=(2, 3, 6, 8)).astype(np.float32)  # zeros, negatives, positive ties
    gz = rng.standard_normal((2, 3, 3, 4)).astype(np.float32)
    fused, plain = (gradient_model(net(identity), modifier=modifier) for identity in (False, True))
    relu_masks = [n for n in fused.graph.node if n.op_type == "Greater" and n.input[0] == "r"]
    assert not relu_masks if modifier != "deconvnet" else True
    got, want = (ort.InferenceSession(m.SerializeToString(), providers=["CPUExecutionProvider"])
                 .run(None, {"x": x, COTANGENT: gz})[1] for m in (fused, plain))
    np.testing.assert_array_equal(got, want)
    if modifier is None:
        assert_close(check_gradient(net(False), {"x": distinct((1, 3, 6, 8)).astype(np.float32) - 0.5},
                                    of="out0"), "relu -> pool")
