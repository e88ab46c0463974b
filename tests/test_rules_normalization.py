"""Finite-difference checks of the normalization gradient rules (inference semantics)."""

from __future__ import annotations

import numpy as np
import onnx
import pytest

from onnx.reference import ReferenceEvaluator

from gradcheck import check_gradient, check_op, ort_session, rel_error
from onnxviz.autodiff import COTANGENT, gradient_model
from onnxviz.autodiff.build import _build, plan
from onnxviz.errors import ModelLoadError, UnsupportedOpError
from onnxviz.fd import exact_reference_ops, single_node_model, to_float64
from onnxviz.graph import infer_shapes
from test_rules_pooling import assert_close, symbolic

RNG = np.random.default_rng(0)


def normal(*shape):
    return RNG.standard_normal(shape)


def positive(*shape):
    return RNG.uniform(0.5, 2.0, size=shape)


def shaped_like_x(model: onnx.ModelProto) -> onnx.ModelProto:
    """Give output 0 the type and shape of input 0 where ONNX shape inference leaves it untyped
    (GroupNormalization, BatchNormalization with training_mode=1)."""
    out = model.graph.output[0]
    if not out.type.tensor_type.elem_type or not out.type.tensor_type.HasField("shape"):
        out.type.CopyFrom(model.graph.input[0].type)
    return model


def one_node(op, feeds, attrs=None, initializers=None, opset=18):
    feeds = {k: np.asarray(v, np.float32) for k, v in feeds.items()}
    inits = {k: np.asarray(v, np.float32) for k, v in (initializers or {}).items()}
    return shaped_like_x(single_node_model(op, feeds, attrs, inits, opset=opset)), feeds


def check_symbolic(op, inputs, attrs=None, initializers=None, dims=None, opset=18, other=None):
    """Check ``op`` with symbolic dims of its first input (default: the batch), then on ``other``
    (feeds of another size) with the same gradient model."""
    model, feeds = one_node(op, inputs, attrs, initializers, opset)
    model = shaped_like_x(symbolic(model, dims or {0: "N"}))
    assert_close(check_gradient(model, feeds, of="out0"), f"{op} {dims}")
    if other is not None:
        feeds2 = {**feeds, **{k: np.asarray(v, np.float32) for k, v in other.items()}}
        assert_close(check_gradient(model, feeds2, of="out0"), f"{op} {dims}, other size")


# ---- BatchNormalization ----------------------------------------------------------------------------

@pytest.mark.parametrize("shape", [(4, 3), (2, 3, 5), (2, 3, 4, 5), (2, 3, 2, 3, 2)])
def test_batch_norm_constant_statistics(shape):
    c = shape[1]
    params = {"scale": normal(c), "B": normal(c), "mean": normal(c), "var": positive(c)}
    result = check_op("BatchNormalization", {"x": normal(*shape)}, {"epsilon": 1e-3}, params)
    assert list(result.grads) == ["x"]


@pytest.mark.parametrize("shape", [(4, 3), (2, 3, 4, 5)])
def test_batch_norm_parameters_as_inputs(shape):
    c = shape[1]
    inputs = {"x": normal(*shape), "scale": normal(c), "B": normal(c), "mean": normal(c), "var": positive(c)}
    result = check_op("BatchNormalization", inputs, {"epsilon": 0.01})
    assert list(result.grads) == ["x", "scale", "B", "mean", "var"]


def test_batch_norm_symbolic_batch():
    params = {"scale": normal(3), "B": normal(3), "mean": normal(3), "var": positive(3)}
    check_symbolic("BatchNormalization", {"x": normal(2, 3, 4, 4)}, {}, params, other={"x": normal(5, 3, 4, 4)})


def test_batch_norm_training_mode_is_refused():
    params = {"scale": normal(3), "B": normal(3), "mean": normal(3), "var": positive(3)}
    model, _ = one_node("BatchNormalization", {"x": normal(2, 3, 4)}, {"training_mode": 1}, params)
    with pytest.raises(UnsupportedOpError, match="training_mode"):
        gradient_model(model, of="out0")


# ---- InstanceNormalization -------------------------------------------------------------------------

@pytest.mark.parametrize("shape", [(2, 3, 6), (2, 3, 4, 5), (2, 2, 3, 2, 3)])
def test_instance_norm(shape):
    c = shape[1]
    check_op("InstanceNormalization", {"x": normal(*shape)}, {"epsilon": 1e-3}, {"s": normal(c), "b": normal(c)})


def test_instance_norm_parameters_as_inputs():
    result = check_op("InstanceNormalization", {"x": normal(2, 3, 4, 5), "s": normal(3), "b": normal(3)})
    assert list(result.grads) == ["x", "s", "b"]


@pytest.mark.parametrize("dims", [{0: "N"}, {0: "N", 2: "H", 3: "W"}])
def test_instance_norm_symbolic_dims(dims):
    check_symbolic("InstanceNormalization", {"x": normal(2, 3, 4, 5)}, {}, {"s": normal(3), "b": normal(3)},
                   dims, other={"x": normal(3, 3, 5, 2) if len(dims) > 1 else normal(3, 3, 4, 5)})


# ---- LayerNormalization ----------------------------------------------------------------------------

LAYER_NORM_CASES = [  # x shape, axis, scale shape, bias shape (None: no bias)
    ((2, 3, 5), -1, (5,), (5,)),
    ((2, 3, 5), 1, (3, 5), (1, 5)),  # scale over the normalized shape, bias broadcast
    ((2, 3, 4, 5), -2, (5,), None),  # scale broadcast over the normalized axes
    ((2, 3, 4, 5), -3, (3, 1, 5), (4, 1)),
    ((4, 6), 0, (4, 6), (6,)),  # normalize everything
]


@pytest.mark.parametrize("shape,axis,scale_shape,bias_shape", LAYER_NORM_CASES)
@pytest.mark.parametrize("params", ["constants", "inputs"])
def test_layer_norm(shape, axis, scale_shape, bias_shape, params):
    values = {"scale": normal(*scale_shape)}
    if bias_shape is not None:
        values["B"] = normal(*bias_shape)
    attrs = {"axis": axis, "epsilon": 1e-3}
    if params == "inputs":
        result = check_op("LayerNormalization", {"x": normal(*shape), **values}, attrs)
        assert list(result.grads) == ["x"] + list(values)
    else:
        check_op("LayerNormalization", {"x": normal(*shape)}, attrs, values)


def test_layer_norm_extra_outputs_unused():
    """Mean and InvStdDev are declared outputs that the target does not use."""
    attrs = {"axis": -1, "stash_type": 1}
    check_op("LayerNormalization", {"x": normal(2, 3, 5)}, attrs, {"scale": normal(5), "B": normal(5)}, n_outputs=3)


@pytest.mark.parametrize("target", ["out1", "out2"])
def test_layer_norm_mean_and_inv_std_outputs(target):
    """Mean (out1) and InvStdDev (out2) as the differentiated target."""
    check_op("LayerNormalization", {"x": normal(2, 3, 5)}, {"axis": -2}, {"scale": normal(5)}, n_outputs=3, of=target)


def test_layer_norm_symbolic_batch():
    check_symbolic("LayerNormalization", {"x": normal(2, 3, 5)}, {"axis": -1}, {"scale": normal(5), "B": normal(5)},
                   other={"x": normal(4, 3, 5)})


def test_layer_norm_symbolic_normalized_dims():
    check_symbolic("LayerNormalization", {"x": normal(2, 3, 5)}, {"axis": 1}, {"scale": normal(5)},
                   {0: "N", 1: "T"}, other={"x": normal(3, 4, 5)})


# ---- GroupNormalization ----------------------------------------------------------------------------

# Opset 21: one scale/bias per channel. (GroupNormalization-18, one per group, is deprecated:
# onnx.checker rejects it, see test_group_norm_opset18_per_group.)

@pytest.mark.parametrize("shape,groups", [((2, 6, 5), 3), ((2, 6, 3, 4), 2), ((2, 4, 3, 3), 1), ((2, 4, 3, 3), 4)])
def test_group_norm(shape, groups):
    params = {"scale": normal(shape[1]), "bias": normal(shape[1])}
    model, feeds = one_node("GroupNormalization", {"x": normal(*shape)}, {"num_groups": groups, "epsilon": 1e-3},
                            params, opset=21)
    assert_close(check_gradient(model, feeds, of="out0"), f"GroupNormalization {shape} G={groups}")


def test_group_norm_parameters_as_inputs():
    inputs = {"x": normal(2, 6, 2, 3), "scale": normal(6), "bias": normal(6)}
    model, feeds = one_node("GroupNormalization", inputs, {"num_groups": 3}, opset=21)
    result = check_gradient(model, feeds, of="out0")
    assert_close(result, "GroupNormalization")
    assert list(result.grads) == ["x", "scale", "bias"]


def test_group_norm_symbolic_dims():
    check_symbolic("GroupNormalization", {"x": normal(2, 4, 3, 3)}, {"num_groups": 2},
                   {"scale": normal(4), "bias": normal(4)}, {0: "N", 2: "H", 3: "W"}, opset=21,
                   other={"x": normal(3, 4, 2, 5)})


def test_group_norm_opset18_per_group():
    """GroupNormalization-18 (scale/bias per group) is deprecated: onnx.checker rejects the model, so
    gradient_model refuses it at load (and the version converter does not adapt it to opset 21).
    The rule still handles it: built here past the loader, its gradients must equal those of the
    equivalent opset-21 node (each group's scale/bias repeated over its channels), summed per group."""
    inputs = {"x": normal(2, 6, 2, 3), "scale": normal(3), "bias": normal(3)}
    m18, feeds = one_node("GroupNormalization", inputs, {"num_groups": 3}, opset=18)
    with pytest.raises(ModelLoadError, match="deprecated"):
        gradient_model(m18)
    m21, feeds21 = one_node("GroupNormalization", {**inputs, "scale": np.repeat(inputs["scale"], 2),
                                                   "bias": np.repeat(inputs["bias"], 2)}, {"num_groups": 3}, opset=21)
    cot = normal(2, 6, 2, 3)

    def gradients(model, feeds, float64=True, build=lambda m: gradient_model(m, of="out0")):
        grad = build(to_float64(model) if float64 else model)
        if float64:
            run = ReferenceEvaluator(grad, new_ops=exact_reference_ops()).run
            feeds = {k: v.astype(np.float64) for k, v in feeds.items()}
        else:
            run = ort_session(grad).run
        return run(None, {**feeds, COTANGENT: cot.astype(next(iter(feeds.values())).dtype)})[1:]

    def past_loader(model):
        model = infer_shapes(model)
        return _build(model, plan(model, "out0"), None)

    dx, dscale, dbias = gradients(m18, feeds, build=past_loader)
    dx21, dscale21, dbias21 = gradients(m21, feeds21)
    np.testing.assert_allclose(dx, dx21, rtol=1e-10, atol=1e-12)
    np.testing.assert_allclose(dscale, dscale21.reshape(3, 2).sum(axis=1), rtol=1e-10, atol=1e-12)
    np.testing.assert_allclose(dbias, dbias21.reshape(3, 2).sum(axis=1), rtol=1e-10, atol=1e-12)
    for got, want in zip(gradients(m18, feeds, float64=False, build=past_loader), (dx, dscale, dbias)):
        assert rel_error(got, want) < 1e-4  # onnxruntime, float32


# ---- LRN -------------------------------------------------------------------------------------------

@pytest.mark.parametrize("size,channels", [(1, 3), (3, 5), (5, 7), (5, 3)])  # (5, 3): window wider than C
def test_lrn(size, channels):
    attrs = {"size": size, "alpha": 0.5, "beta": 0.75, "bias": 1.5}
    check_op("LRN", {"x": normal(2, channels, 3, 4)}, attrs)


def test_lrn_default_attributes():
    check_op("LRN", {"x": normal(2, 6, 3, 3)}, {"size": 3})


def test_lrn_even_size_against_oracle_only():
    """Even sizes use an asymmetric window (ONNX spec); onnxruntime only runs odd sizes."""
    x = normal(2, 6, 3, 3).astype(np.float32)
    model = single_node_model("LRN", {"x": x}, {"size": 4, "alpha": 0.5, "beta": 0.6, "bias": 1.2})
    assert check_gradient(model, {"x": x}, of="out0", run_ort=False).fd_error < 1e-5


def test_lrn_symbolic_dims():
    check_symbolic("LRN", {"x": normal(2, 5, 3, 4)}, {"size": 3, "alpha": 0.4, "beta": 0.8, "bias": 1.1},
                   dims={0: "N", 2: "H", 3: "W"}, other={"x": normal(3, 5, 2, 2)})


# ---- float16 inputs: statistics in float32 (stash_type=1) ------------------------------------------

@pytest.mark.parametrize("op,attrs,params,opset", [
    ("LayerNormalization", {"axis": -1}, {"scale": (5,), "B": (5,)}, 18),
    ("GroupNormalization", {"num_groups": 3}, {"scale": (6,), "bias": (6,)}, 21),
])
def test_float16_input_computes_statistics_in_float32(op, attrs, params, opset):
    """A float16 model's gradient graph runs on onnxruntime and matches the float64 gradient to
    float16 accuracy; statistics and the backward formula run in float32 (Casts), as stash_type=1
    says. (onnxruntime's CPU provider upcasts float16 arithmetic anyway; GPU kernels would not.)"""
    rng = np.random.default_rng(5)
    x = rng.standard_normal((2, 6, 5)) * 3 + 2
    values = {k: rng.standard_normal(s) for k, s in params.items()}
    cot = rng.standard_normal(x.shape)
    model32, _ = one_node(op, {"x": x}, attrs, values, opset)
    g64 = gradient_model(to_float64(model32), of="out0")
    want = ReferenceEvaluator(g64, new_ops=exact_reference_ops()).run(None, {"x": x, COTANGENT: cot})[1]
    model16 = onnx.helper.make_model(onnx.helper.make_graph(
        [onnx.helper.make_node(op, ["x"] + list(params), ["y"], **attrs)], "half",
        [onnx.helper.make_tensor_value_info("x", onnx.TensorProto.FLOAT16, x.shape)],
        [onnx.helper.make_tensor_value_info("y", onnx.TensorProto.FLOAT16, x.shape)],
        initializer=[onnx.numpy_helper.from_array(v.astype(np.float16), k) for k, v in values.items()]),
        opset_imports=[onnx.helper.make_opsetid("", opset)], ir_version=10)
    g16 = gradient_model(model16)
    assert "Cast" in [n.op_type for n in g16.graph.node]
    got = ort_session(g16).run(None, {"x": x.astype(np.float16), COTANGENT: cot.astype(np.float16)})[1]
    assert got.dtype == np.float16
    assert rel_error(got, want) < 1e-2
