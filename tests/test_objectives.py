"""Objectives: layer resolution (logits, layouts), values against numpy on real activations, the
cotangents they compile to, arithmetic, and the nonlinear objectives' gradients against finite
differences."""

from __future__ import annotations

import numpy as np
import onnx
import onnxruntime as ort
import pytest

import models as M
from onnxviz.errors import OnnxvizError
from onnxviz.graph import META_CLASSES, set_metadata
from onnxviz.objectives import (BoundLayer, LayerRef, LinearObjective, as_objective, bind_layer, channel,
                                channel_axis, direction, diversity, neuron, resolve_layer, unit)
from onnxviz.rewrite import expose


def activations(model: onnx.ModelProto, x: np.ndarray, tensors: list[str]) -> list[np.ndarray]:
    m = expose(model, tensors)
    sess = ort.InferenceSession(m.SerializeToString(), providers=["CPUExecutionProvider"])
    return sess.run(tensors, {sess.get_inputs()[0].name: x})


@pytest.fixture(scope="module")
def net() -> onnx.ModelProto:
    return set_metadata(M.conv_net(), **{META_CLASSES: [f"c{i}" for i in range(10)]})


def test_output_layer_resolves_to_logits(net):
    b = bind_layer(net, LayerRef(None))
    assert b.tensor == "probs" and b.stripped == "Softmax" and b.shape == (10,)
    assert b.class_names == tuple(f"c{i}" for i in range(10))
    assert not any(n.op_type == "Softmax" for n in b.model.graph.node)  # through to_logits
    x = np.random.default_rng(0).uniform(size=(3, 1, 8, 8)).astype(np.float32)
    logits, probs = activations(net, x, ["logits", "probs"])
    (via,) = activations(b.model, x, ["probs"])
    assert np.allclose(via, logits, atol=1e-6)
    # logits=False keeps the probabilities
    kept = bind_layer(net, LayerRef(None, logits=False))
    assert kept.stripped is None and kept.tensor == "probs"
    values, _ = unit(None, 3, logits=False).evaluate({kept.ref: probs}, {kept.ref: kept})
    assert np.allclose(values, probs[:, 3])
    # naming the softmax node (a layer name) also reads its input
    assert bind_layer(net, LayerRef("softmax")).stripped == "Softmax"


def test_log_softmax_reading(net):
    """log_softmax=True puts a LogSoftmax on the logits: a unit is log p_k, class names kept."""
    b = bind_layer(net, LayerRef(None, log_softmax=True))
    assert b.stripped == "Softmax" and b.tensor.endswith("__log_softmax") and b.shape == (10,)
    assert b.class_names == tuple(f"c{i}" for i in range(10))
    assert [n.op_type for n in b.model.graph.node].count("LogSoftmax") == 1
    assert not any(n.op_type == "Softmax" for n in b.model.graph.node)
    x = np.random.default_rng(5).uniform(size=(3, 1, 8, 8)).astype(np.float32)
    (probs,) = activations(net, x, ["probs"])
    (log_p,) = activations(b.model, x, [b.tensor])
    assert np.allclose(log_p, np.log(probs), atol=1e-5)
    keras = bind_layer(M.keras_named(), LayerRef("preds", log_softmax=True))  # through a named layer
    assert keras.tensor == "output_0__log_softmax"
    # no softmax: nothing to do
    plain = bind_layer(M.conv_net(final=None), LayerRef(None, log_softmax=True))
    assert plain.tensor == "probs" and plain.stripped is None


def test_intermediate_softmax_reads_its_input():
    model, tensor, stripped = resolve_layer(M.keras_named(), LayerRef("preds"))
    assert stripped == "Softmax" and tensor == "output_0"


def test_feature_map_layouts():
    keras = M.keras_named()  # Conv outputs NCHW; "t2" is the exporter's NHWC transpose before Flatten
    assert channel_axis(keras, "r2", 4) == 1
    assert channel_axis(keras, "t2", 4) == 3
    assert channel_axis(keras, "keras_tensor", 4) == 3  # an NHWC graph input
    assert channel_axis(keras, "add", 2) == 1
    nchw = bind_layer(keras, LayerRef("r2"))
    nhwc = bind_layer(keras, LayerRef("t2"))
    assert (nchw.shape, nchw.channel_axis) == ((4, 2, 2), 0)
    assert (nhwc.shape, nhwc.channel_axis) == ((2, 2, 4), 2)
    # the same channel through both layouts gives the same value
    x = np.random.default_rng(1).uniform(size=(2, 6, 6, 1)).astype(np.float32)
    r2, t2 = activations(keras, x, ["r2", "t2"])
    bound = {nchw.ref: nchw, nhwc.ref: nhwc}
    for c in range(4):
        v1, _ = channel("r2", c).evaluate({nchw.ref: r2}, bound)
        v2, _ = channel("t2", c).evaluate({nhwc.ref: t2}, bound)
        assert np.allclose(v1, r2[:, c].mean(axis=(1, 2)))
        assert np.allclose(v1, v2, atol=1e-6)
    # an explicit layout overrides the detection
    assert bind_layer(keras, LayerRef("t2"), layout="NCHW").channel_axis == 0


def test_linear_objective_values_and_cotangents(net):
    x = np.random.default_rng(2).uniform(size=(2, 1, 8, 8)).astype(np.float32)
    (conv,) = activations(net, x, ["relu_out"])
    b = bind_layer(net, LayerRef("relu_out"))
    bound = {b.ref: b}
    acts = {b.ref: conv}
    cases = {
        channel("relu_out", 2): conv[:, 2].mean(axis=(1, 2)),
        unit("relu_out", 1): conv[:, 1].mean(axis=(1, 2)),  # a unit of a feature map is its channel mean
        neuron("relu_out", 3, (1, 5)): conv[:, 3, 1, 5],
        neuron("relu_out", 0): conv[:, 0, 4, 4],  # the center
        direction("relu_out", [1.0, -2.0, 0.0, 0.5]): np.einsum("bchw,c->b", conv, [1.0, -2.0, 0.0, 0.5]) / 64,
    }
    for objective, expected in cases.items():
        values, grads = objective.evaluate(acts, bound)
        assert np.allclose(values, expected, rtol=1e-5, atol=1e-7), objective
        cot = objective.cotangents(bound)[b.ref]
        assert cot.shape == (4, 8, 8)
        assert np.allclose(grads[b.ref], cot[None])  # the gradient IS the constant cotangent
    # dense units: one-hot
    dense = bind_layer(net, LayerRef("flat"))
    assert dense.shape == (64,) and dense.channels == 64
    cot = unit("flat", 5).cotangents({dense.ref: dense})[dense.ref]
    assert cot.sum() == 1.0 and cot[5] == 1.0


def test_arithmetic(net):
    rng = np.random.default_rng(3)
    b_out, b_conv = bind_layer(net, LayerRef(None)), bind_layer(net, LayerRef("relu_out"))
    bound = {b_out.ref: b_out, b_conv.ref: b_conv}
    acts = {b_out.ref: rng.normal(size=(3, 10)), b_conv.ref: rng.normal(size=(3, 4, 8, 8))}
    a, b, c = unit(None, 1), unit(None, 4), channel("relu_out", 2)
    combo = 2 * a - b + 0.5 * c + 3 - a / 4
    assert isinstance(combo, LinearObjective) and combo.linear
    va, vb, vc = (o.evaluate(acts, bound)[0] for o in (a, b, c))
    values, grads = combo.evaluate(acts, bound)
    assert np.allclose(values, 1.75 * va - vb + 0.5 * vc + 3)
    cots = combo.cotangents(bound)
    assert set(cots) == {b_out.ref, b_conv.ref}  # one cotangent per layer, terms on a layer added
    assert np.allclose(cots[b_out.ref], 1.75 * np.eye(10)[1] - np.eye(10)[4])
    assert np.allclose((-a).evaluate(acts, bound)[0], -va)
    assert np.allclose((1 - a).evaluate(acts, bound)[0], 1 - va)
    assert np.allclose(as_objective(2.5).evaluate(acts, bound)[0], 2.5)
    with pytest.raises(TypeError):
        a + "x"


def _fd_check(objective, acts, bound, rng, rel=1e-5):
    values, grads = objective.evaluate(acts, bound)
    for _ in range(3):
        v = {r: rng.normal(size=a.shape) for r, a in acts.items()}
        eps = 1e-6
        plus = {r: a + eps * v[r] for r, a in acts.items()}
        minus = {r: a - eps * v[r] for r, a in acts.items()}
        fd = (objective.evaluate(plus, bound)[0].sum() - objective.evaluate(minus, bound)[0].sum()) / (2 * eps)
        analytic = sum(float(np.sum(grads[r] * v[r])) for r in grads)
        assert analytic == pytest.approx(fd, rel=rel, abs=1e-9)
    return values


def test_product_and_diversity_gradients(net):
    rng = np.random.default_rng(4)
    b_out, b_conv = bind_layer(net, LayerRef(None)), bind_layer(net, LayerRef("relu_out"))
    bound = {b_out.ref: b_out, b_conv.ref: b_conv}
    acts = {b_out.ref: rng.normal(size=(4, 10)), b_conv.ref: rng.uniform(size=(4, 4, 8, 8))}
    product = unit(None, 2) * channel("relu_out", 1)
    assert not product.linear
    values = _fd_check(product, acts, bound, rng)
    assert np.allclose(values, acts[b_out.ref][:, 2] * acts[b_conv.ref][:, 1].mean(axis=(1, 2)))
    div = diversity("relu_out", 4)
    assert div.images == 4 and not div.linear
    _fd_check(div, acts, bound, rng)
    _fd_check(channel("relu_out", 0) + 10 * diversity("relu_out", 4), acts, bound, rng)
    _fd_check(unit(None, 3) + diversity(None, 4), acts, bound, rng)  # dense layer: one position
    # identical images are maximally similar: diversity = -(n - 1) / n per image
    same = {b_conv.ref: np.repeat(acts[b_conv.ref][:1], 4, axis=0)}
    assert np.allclose(div.evaluate(same, bound)[0], -3 / 4)
    spread = div.evaluate(acts, bound)[0]
    assert np.all(spread > -3 / 4)


def test_errors(net):
    b = bind_layer(net, LayerRef(None))
    with pytest.raises(OnnxvizError, match="out of range"):
        unit(None, 10).cotangents({b.ref: b})
    with pytest.raises(OnnxvizError, match="entries"):
        direction(None, [1, 2]).cotangents({b.ref: b})
    with pytest.raises(OnnxvizError, match="different numbers of images"):
        diversity(None, 2) + diversity(None, 3)
    with pytest.raises(OnnxvizError):
        diversity(None, 1)
    conv = bind_layer(net, LayerRef("relu_out"))
    with pytest.raises(OnnxvizError, match="outside"):
        neuron("relu_out", 0, (9, 0)).cotangents({conv.ref: conv})
    assert isinstance(conv, BoundLayer) and conv.label == "relu_out"
