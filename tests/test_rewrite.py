"""Graph rewrites: every result is valid (full_check) and computes the same values as the original
for what it keeps (checked in onnxruntime)."""

from __future__ import annotations

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

import models as M
from onnxviz.errors import LayerNotFoundError, RewriteError
from onnxviz.graph import find_layer, input_info, opset_version, tensor_shape
from onnxviz.rewrite import expose, final_activation, to_logits, truncate, upgrade_opset


def full_check(model: onnx.ModelProto) -> None:
    onnx.checker.check_model(model, full_check=True)


def unchanged(model: onnx.ModelProto):
    """Context: assert a rewrite leaves its input byte-for-byte alone."""
    before = model.SerializeToString()

    class _Guard:
        def __enter__(self):
            return model

        def __exit__(self, *exc):
            assert model.SerializeToString() == before, "the input model was mutated"

    return _Guard()


# ------------------------------------------------------------------------------------ to_logits
@pytest.mark.parametrize("final", ["Softmax", "LogSoftmax", "Sigmoid"])
@pytest.mark.parametrize("tail", [(), ("Identity",), ("Reshape",), ("Flatten",),
                                  ("Reshape", "Flatten", "Identity"), ("Unsqueeze", "Squeeze")],
                         ids=lambda t: "+".join(t) or "direct")
def test_to_logits_gives_the_pre_activation(final, tail):
    model = M.conv_net(final=final, tail=tail)
    with unchanged(model):
        logits_model = to_logits(model)
    full_check(logits_model)
    assert [o.name for o in logits_model.graph.output] == ["probs"]  # same output name
    assert not any(n.op_type == final for n in logits_model.graph.node)
    assert tensor_shape(logits_model, "probs") == tensor_shape(model, "probs")
    feeds = M.random_input(model, batch=3)
    want = M.run(expose(model, ["logits"]), feeds, ["logits"])[0]  # the Gemm output of the original
    got = M.run(logits_model, feeds)[0]
    np.testing.assert_allclose(got, want.reshape(got.shape), rtol=1e-6, atol=1e-6)
    probs = M.run(model, feeds)[0]
    assert not np.allclose(got, probs)


def test_final_activation_describes_what_is_stripped():
    act = final_activation(M.conv_net(final="LogSoftmax", tail=("Reshape", "Identity")))
    assert act.op_type == "LogSoftmax" and act.node == "logsoftmax" and act.output == "probs"
    assert act.pre_activation == "logits" and act.pass_through == ("Reshape", "Identity")
    assert final_activation(M.torch_named()) is None


def test_to_logits_keras_names_output_and_layer():
    model = M.keras_named()
    logits_model = to_logits(model)
    full_check(logits_model)
    assert logits_model.graph.output[0].name == "output_0"
    # the layer `preds` now ends in its Add, which produces the model output
    assert find_layer(logits_model, "preds").outputs == ("output_0",)
    assert find_layer(logits_model, "preds").op_type == "Add"
    feeds = M.random_input(model)
    want = M.run(expose(model, ["add"]), feeds, ["add"])[0]
    np.testing.assert_allclose(M.run(logits_model, feeds)[0], want, rtol=1e-6, atol=1e-6)


def test_to_logits_keeps_probabilities_for_other_consumers():
    """Softmax output also feeds ArgMax (a second output): that consumer keeps the probabilities."""
    model = M.conv_net()
    model.graph.node.append(helper.make_node("ArgMax", ["probs"], ["label"], axis=1, keepdims=0))
    model.graph.output.append(helper.make_tensor_value_info("label", TensorProto.INT64, ["N"]))
    full_check(model)
    logits_model = to_logits(model)
    full_check(logits_model)
    feeds = M.random_input(model, batch=4)
    probs, label = M.run(model, feeds)
    logits, label2 = M.run(logits_model, feeds)
    np.testing.assert_array_equal(label, label2)
    np.testing.assert_allclose(logits, M.run(expose(model, ["logits"]), feeds, ["logits"])[0], atol=1e-6)


def test_to_logits_softmax_directly_on_input_and_selected_output():
    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 5])
    nodes = [helper.make_node("Softmax", ["x"], ["p"]), helper.make_node("Sigmoid", ["x"], ["s"]),
             helper.make_node("Relu", ["x"], ["r"])]
    outs = [helper.make_tensor_value_info(n, TensorProto.FLOAT, ["N", 5]) for n in ("p", "s", "r")]
    model = helper.make_model(helper.make_graph(nodes, "g", [x], outs),
                              opset_imports=[helper.make_opsetid("", 17)], ir_version=8)
    feeds = M.random_input(model)
    stripped = to_logits(model)  # first output, the softmax: now an Identity of the input
    full_check(stripped)
    np.testing.assert_array_equal(M.run(stripped, feeds)[0], feeds["x"])
    stripped = to_logits(model, output="s")
    got = M.run(stripped, feeds)
    np.testing.assert_array_equal(got[1], feeds["x"])
    np.testing.assert_allclose(got[0], M.run(model, feeds)[0])  # the softmax output is untouched
    assert [o.name for o in to_logits(model, output=1).graph.output] == ["p", "s", "r"]
    with pytest.raises(RewriteError, match="ends in Relu"):
        to_logits(model, output=-1)
    with pytest.raises(LayerNotFoundError, match="outputs: p, s, r"):
        to_logits(model, output="q")
    with pytest.raises(LayerNotFoundError):
        to_logits(model, output=3)


def test_to_logits_error_when_there_is_none():
    with pytest.raises(RewriteError) as err:
        to_logits(M.conv_net(final=None))
    assert "no final Softmax/LogSoftmax/Sigmoid" in str(err.value)
    assert "ends in Gemm" in str(err.value)
    with pytest.raises(RewriteError, match="ends in Gemm"):
        to_logits(M.conv_net(final=None, tail=("Identity", "Flatten")))


# ------------------------------------------------------------------------------------ expose
def test_expose_intermediates_typed_with_symbolic_batch():
    model = M.conv_net()
    with unchanged(model):
        exposed = expose(model, ["relu_out", "flat", "probs"])
    full_check(exposed)
    outs = {o.name: o for o in exposed.graph.output}
    assert list(outs) == ["probs", "relu_out", "flat"]
    assert tensor_shape(exposed, "relu_out") == ("N", 4, 8, 8)
    assert outs["relu_out"].type.tensor_type.elem_type == TensorProto.FLOAT
    feeds = M.random_input(model, batch=2)
    probs, relu, flat = M.run(exposed, feeds)
    np.testing.assert_allclose(probs, M.run(model, feeds)[0], rtol=1e-6)
    assert relu.shape == (2, 4, 8, 8) and relu.min() >= 0
    pooled = relu.reshape(2, 4, 4, 2, 4, 2).max(axis=(3, 5))  # MaxPool 2x2 by hand
    np.testing.assert_allclose(flat, pooled.reshape(2, -1), rtol=1e-6)


def test_expose_values_match_numpy():
    model = M.two_input_net()
    exposed = expose(model, ["ha", "hb"])
    full_check(exposed)
    feeds = M.random_input(model, batch=5)
    w = numpy_helper.to_array(model.graph.initializer[0])
    _, ha, hb = M.run(exposed, feeds)
    np.testing.assert_allclose(ha, np.maximum(feeds["a"] @ w, 0), rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(hb, np.tanh(feeds["b"]), rtol=1e-5, atol=1e-6)


def test_expose_noop_and_unknown():
    model = M.conv_net()
    assert expose(model, ["probs"]).SerializeToString() == model.SerializeToString()
    with pytest.raises(LayerNotFoundError) as err:
        expose(model, ["relu_ou"])
    assert "relu_out" in str(err.value)


# ------------------------------------------------------------------------------------ truncate
def test_truncate_keeps_only_dependencies():
    model = M.two_input_net()
    with unchanged(model):
        cut = truncate(model, ["ha"])
    full_check(cut)
    assert [i.name for i in cut.graph.input] == ["a"]  # b is not needed
    assert [n.name for n in cut.graph.node] == ["matmul", "relu"]
    assert [t.name for t in cut.graph.initializer] == ["W"]  # `unused` dropped
    assert [o.name for o in cut.graph.output] == ["ha"]
    assert tensor_shape(cut, "ha") == ("N", 3)
    feeds = M.random_input(model, batch=3)
    want = M.run(expose(model, ["ha"]), feeds, ["ha"])[0]
    np.testing.assert_allclose(M.run(cut, {"a": feeds["a"]})[0], want)


def test_truncate_several_outputs_in_order():
    model = M.keras_named()
    cut = truncate(model, ["r2", "r1"])
    full_check(cut)
    assert [o.name for o in cut.graph.output] == ["r2", "r1"]
    assert cut.graph.node[-1].name == "sequential_1/conv2d_1_2/Relu"
    assert cut.producer_name == "tf2onnx" and opset_version(cut) == 18
    feeds = M.random_input(model)
    for got, want in zip(M.run(cut, feeds), M.run(expose(model, ["r2", "r1"]), feeds, ["r2", "r1"])):
        np.testing.assert_allclose(got, want)
    assert input_info(cut)[0].layout == "NHWC"


def test_truncate_errors():
    model = M.conv_net()
    with pytest.raises(LayerNotFoundError):
        truncate(model, ["nope"])
    with pytest.raises(RewriteError):
        truncate(model, [])


# ------------------------------------------------------------------------------------ opset
@pytest.mark.parametrize("opset", [13, 15])
def test_upgrade_opset_keeps_values(opset):
    model = M.legacy_ops_net(opset)
    with unchanged(model):
        upgraded = upgrade_opset(model, 18)
    full_check(upgraded)
    assert opset_version(upgraded) == 18
    ops = {n.op_type: n for n in upgraded.graph.node}
    assert not any(a.name == "axes" for a in ops["ReduceMean"].attribute)  # axes became an input
    feeds = M.random_input(model)
    np.testing.assert_allclose(M.run(upgraded, feeds)[0], M.run(model, feeds)[0], rtol=1e-6, atol=1e-7)


def test_upgrade_opset_noop_and_failure():
    model = M.keras_named()
    same = upgrade_opset(model, 17)
    assert same is not model and same.SerializeToString() == model.SerializeToString()
    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, [2])
    y = helper.make_tensor_value_info("y", TensorProto.FLOAT, [2])
    bad = helper.make_model(helper.make_graph([helper.make_node("NoSuchOp", ["x"], ["y"])], "g", [x], [y]),
                            opset_imports=[helper.make_opsetid("", 13)])
    with pytest.raises(RewriteError, match="cannot upgrade opset 13 to 18"):
        upgrade_opset(bad)


@pytest.mark.parametrize("x_shape", [(2, 3, 4), (2, 3, 5, 3), (1, 3, 2, 3, 3)])
def test_upgrade_opset_aligns_legacy_prelu_slopes(x_shape):
    """PRelu-6 lines a (C,) slope up with axis 1 (PyTorch's opset-6 exports); opset 7+ would
    broadcast it against the last axis — an error, or silently the wrong axis when that is also C."""
    slope = np.array([0.1, -0.5, 2.0], np.float32)
    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, list(x_shape))
    y = helper.make_tensor_value_info("y", TensorProto.FLOAT, list(x_shape))
    listed = helper.make_tensor_value_info("slope", TensorProto.FLOAT, [3])  # IR 3 lists weights as inputs
    graph = helper.make_graph([helper.make_node("PRelu", ["x", "slope"], ["y"], name="prelu")], "g", [x, listed],
                              [y], initializer=[numpy_helper.from_array(slope, "slope")])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 6)], ir_version=3)
    with unchanged(model):
        upgraded = upgrade_opset(model, 18)
    full_check(upgraded)
    feeds = {"x": np.random.default_rng(0).standard_normal(x_shape).astype(np.float32)}
    per_channel = slope.reshape((3,) + (1,) * (len(x_shape) - 2))
    want = np.where(feeds["x"] > 0, feeds["x"], feeds["x"] * per_channel)
    np.testing.assert_allclose(M.run(upgraded, feeds)[0], want, rtol=1e-6)


def test_rewrites_compose():
    """upgrade -> to_logits -> truncate on the old-opset model still checks and matches."""
    model = M.legacy_ops_net(13)
    logits = to_logits(upgrade_opset(model))
    full_check(logits)
    cut = truncate(logits, ["cat"])
    full_check(cut)
    feeds = M.random_input(model)
    want = M.run(expose(model, ["cat"]), feeds, ["cat"])[0]
    np.testing.assert_allclose(M.run(cut, feeds)[0], want, rtol=1e-6)


def test_to_logits_on_the_shipped_model(mnist_model_path):
    from onnxviz.graph import load_model

    model = load_model(mnist_model_path)
    act = final_activation(model)
    assert act is not None and act.op_type == "Softmax"
    logits_model = to_logits(model)
    full_check(logits_model)
    feeds = {input_info(model)[0].name: np.random.default_rng(0).random((3, 28, 28, 1), dtype=np.float32)}
    want = M.run(expose(model, [act.pre_activation]), feeds, [act.pre_activation])[0]
    np.testing.assert_allclose(M.run(logits_model, feeds)[0], want, rtol=1e-5, atol=1e-5)
