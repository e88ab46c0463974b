"""Attribution methods against oracles on small ONNX models built here: closed-form gradients of
linear and one-hidden-layer nets (vanilla / guided / deconvnet / IG / SmoothGrad / occlusion),
class activation mapping's identity for global-average-pooled nets (Grad-CAM), NCHW and NHWC
feature maps, batching invariance, metrics' identities, and Spearman against scipy."""

from __future__ import annotations

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

from onnxviz.attribution import (Attributor, attribute, cam_gradient_model, default_cam_layer, deletion_curve,
                                 deletion_auc, feature_maps, insertion_auc, randomization_check, randomize_layers,
                                 resolve_cam_layer, spearman, weight_layers)
from onnxviz.autodiff import COTANGENT
from onnxviz.errors import OnnxvizError, ShapeError
from onnxviz.fd import Float64Reference
from onnxviz.graph import load_model
from onnxviz.rewrite import to_logits
from onnxviz.runtime import make_session

FLOAT = TensorProto.FLOAT


def _model(nodes, x_shape, inits, out="probs", out_shape=None, meta=None, name="t"):
    x = helper.make_tensor_value_info("x", FLOAT, x_shape)
    y = helper.make_tensor_value_info(out, FLOAT, out_shape)
    graph = helper.make_graph(nodes, name, [x], [y], initializer=inits)
    m = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)], producer_name="onnxviz-tests")
    m.ir_version = 10
    for k, v in (meta or {}).items():
        m.metadata_props.add(key=k, value=v)
    onnx.checker.check_model(m, full_check=True)
    return m


def _t(name, arr):
    return numpy_helper.from_array(np.asarray(arr, np.float32), name)


def linear_net(c=2, h=5, w=6, classes=3, seed=0, layout="NCHW"):
    """x -> Flatten -> Gemm -> Softmax; the logit is linear in x: every oracle is closed-form."""
    rng = np.random.default_rng(seed)
    W = rng.standard_normal((c * h * w, classes)).astype(np.float32)
    b = rng.standard_normal(classes).astype(np.float32)
    shape = ["N", c, h, w] if layout == "NCHW" else ["N", h, w, c]
    nodes = [helper.make_node("Flatten", ["x"], ["f"], name="flatten"),
             helper.make_node("Gemm", ["f", "W", "b"], ["z"], name="fc"),
             helper.make_node("Softmax", ["z"], ["probs"], name="softmax")]
    meta = {"onnxviz.input_layout": layout}
    return _model(nodes, shape, [_t("W", W), _t("b", b)], out_shape=["N", classes], meta=meta), W, b


def mlp_net(h=4, w=4, hidden=6, classes=3, seed=1):
    """x (N,1,h,w) -> Flatten -> Gemm W1 -> Relu -> Gemm W2 -> Softmax (one ReLU layer)."""
    rng = np.random.default_rng(seed)
    W1 = rng.standard_normal((h * w, hidden)).astype(np.float32)
    W2 = rng.standard_normal((hidden, classes)).astype(np.float32)
    nodes = [helper.make_node("Flatten", ["x"], ["f"], name="flatten"),
             helper.make_node("Gemm", ["f", "W1"], ["a"], name="fc1"),
             helper.make_node("Relu", ["a"], ["r"], name="relu"),
             helper.make_node("Gemm", ["r", "W2"], ["z"], name="fc2"),
             helper.make_node("Softmax", ["z"], ["probs"], name="softmax")]
    return _model(nodes, ["N", 1, h, w], [_t("W1", W1), _t("W2", W2)], out_shape=["N", classes]), W1, W2


def gap_net(c=3, size=10, k=5, classes=4, seed=2, nhwc_map=False, batch="N"):
    """NCHW RGB: Conv(k, 3x3, pad 1) -> Relu -> GlobalAveragePool -> Flatten -> Gemm -> Softmax.
    ``nhwc_map``: the map is transposed to NHWC and pooled by ReduceMean over axes 1, 2 (as
    TensorFlow exports do)."""
    rng = np.random.default_rng(seed)
    cw = (rng.standard_normal((k, c, 3, 3)) * 0.5).astype(np.float32)
    cb = (rng.standard_normal(k) * 0.1).astype(np.float32)
    W = rng.standard_normal((k, classes)).astype(np.float32)
    b = rng.standard_normal(classes).astype(np.float32)
    nodes = [helper.make_node("Conv", ["x", "cw", "cb"], ["c"], name="conv", pads=[1, 1, 1, 1]),
             helper.make_node("Relu", ["c"], ["r"], name="relu")]
    if nhwc_map:
        nodes += [helper.make_node("Transpose", ["r"], ["rt"], name="to_nhwc", perm=[0, 2, 3, 1]),
                  helper.make_node("ReduceMean", ["rt", "axes"], ["g"], name="gap", keepdims=0)]
        inits = [numpy_helper.from_array(np.array([1, 2], np.int64), "axes")]
    else:
        nodes += [helper.make_node("GlobalAveragePool", ["r"], ["gp"], name="gap"),
                  helper.make_node("Flatten", ["gp"], ["g"], name="flatten")]
        inits = []
    nodes += [helper.make_node("Gemm", ["g", "W", "b"], ["z"], name="fc"),
              helper.make_node("Softmax", ["z"], ["probs"], name="softmax")]
    inits += [_t("cw", cw), _t("cb", cb), _t("W", W), _t("b", b)]
    m = _model(nodes, [batch, c, size, size], inits, out_shape=[batch, classes])
    return m, W


def _rand(shape, seed=0):
    return np.random.default_rng(seed).random(shape).astype(np.float32)


def _run(model, x, outputs=None):
    return make_session(model).run(outputs, {"x": x})


# ------------------------------------------------------------------------------------ gradient family
def test_vanilla_gradient_and_modifiers_on_linear_model():
    m, W, b = linear_net()
    x = _rand((4, 2, 5, 6))
    att = Attributor(m)
    unit = 1
    g = W[:, unit].reshape(2, 5, 6)  # d logit_1 / dx, the same for every image
    r = attribute(att, x, "vanilla", unit=unit)
    np.testing.assert_allclose(r.attributions, np.broadcast_to(g, x.shape), rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(r.maps, np.broadcast_to(np.abs(g).max(0), (4, 5, 6)), rtol=1e-5)
    np.testing.assert_allclose(attribute(att, x, "vanilla", unit=unit, modifier="relu").maps[0],
                               np.maximum(g, 0).max(0), rtol=1e-5)
    np.testing.assert_allclose(attribute(att, x, "vanilla", unit=unit, modifier="negate").maps[0],
                               np.maximum(-g, 0).max(0), rtol=1e-5)
    np.testing.assert_allclose(attribute(att, x, "vanilla", unit=unit, modifier=None).maps[0], g.sum(0), rtol=1e-5)
    assert r.units.tolist() == [unit] * 4
    np.testing.assert_allclose(r.scores, (x.reshape(4, -1) @ W + b)[:, unit], rtol=1e-5)


def test_default_unit_is_top_class_and_units_per_image():
    m, W, b = linear_net(seed=3)
    x = _rand((6, 2, 5, 6), seed=4)
    att = Attributor(m)
    logits = x.reshape(6, -1) @ W + b
    r = attribute(att, x, "vanilla")
    assert r.units.tolist() == logits.argmax(1).tolist() == r.predicted.tolist()
    np.testing.assert_allclose(r.scores, logits.max(1), rtol=1e-5)
    r2 = attribute(att, x, "gradxinput", unit=[0, 1, 2, 0, 1, 2])
    assert r2.units.tolist() == [0, 1, 2, 0, 1, 2]
    with pytest.raises(OnnxvizError, match="out of range"):
        attribute(att, x, "vanilla", unit=3)
    with pytest.raises(OnnxvizError, match="2 units given for 6 images"):
        attribute(att, x, "vanilla", unit=[0, 1])


def test_gradient_x_input_and_integrated_gradients_are_exact_on_linear_model():
    m, W, _ = linear_net()
    x = _rand((3, 2, 5, 6), seed=1)
    att = Attributor(m)
    g = W[:, 2].reshape(2, 5, 6)
    gxi = attribute(att, x, "gradxinput", unit=2, modifier=None)
    np.testing.assert_allclose(gxi.attributions, x * g, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(gxi.maps, (x * g).sum(1), rtol=1e-4, atol=1e-6)
    ig = attribute(att, x, "ig", unit=2, steps=3, baseline=0.25, modifier=None)
    np.testing.assert_allclose(ig.attributions, (x - 0.25) * g, rtol=1e-4, atol=1e-6)
    assert ig.info["completeness_error"].max() < 1e-4


def test_integrated_gradients_completeness_and_baselines_on_relu_net():
    m, W1, W2 = mlp_net()
    x = _rand((5, 1, 4, 4), seed=2)
    att = Attributor(m)
    ig = attribute(att, x, "ig", steps=64)
    assert ig.info["completeness_error"].max() < 0.02
    np.testing.assert_allclose(ig.attributions.reshape(5, -1).sum(1), ig.info["score_difference"], rtol=0.02)
    # baseline "white" is the top of the range; an array baseline equals the same constant
    white = attribute(att, x, "ig", steps=8, baseline="white")
    arr = attribute(att, x, "ig", steps=8, baseline=np.ones((1, 4, 4), np.float32))
    np.testing.assert_allclose(white.attributions, arr.attributions, rtol=1e-6)
    with pytest.raises(OnnxvizError, match="baseline"):
        attribute(att, x, "ig", baseline=np.ones(3))


def test_guided_backprop_and_deconvnet_closed_form():
    """y = W2' relu(W1' x): vanilla W1 (w2 * [a>0]); guided W1 (relu(w2) * [a>0]) (Springenberg);
    deconvnet W1 relu(w2) (Zeiler & Fergus: the forward sign is ignored)."""
    m, W1, W2 = mlp_net()
    x = _rand((4, 1, 4, 4), seed=5) - 0.5
    att = Attributor(m)
    a = x.reshape(4, -1) @ W1
    unit = 0
    w2 = W2[:, unit]
    want = {"vanilla": (w2 * (a > 0)) @ W1.T, "guided": (np.maximum(w2, 0) * (a > 0)) @ W1.T,
            "deconvnet": np.broadcast_to(np.maximum(w2, 0) @ W1.T, (4, 16))}
    for method, expected in want.items():
        r = attribute(att, x, method, unit=unit, modifier=None)
        np.testing.assert_allclose(r.attributions.reshape(4, -1), expected, rtol=1e-4, atol=1e-5, err_msg=method)


def test_smoothgrad_variants_and_batching():
    m, W, _ = linear_net()
    x = _rand((3, 2, 5, 6), seed=6)
    att = Attributor(m)
    g = W[:, 0].reshape(2, 5, 6)
    # a linear model's gradient ignores the noise: mean = vanilla, squared = g^2, variance = 0
    sg = attribute(att, x, "smoothgrad", unit=0, samples=7, noise=0.3)
    np.testing.assert_allclose(sg.maps, attribute(att, x, "vanilla", unit=0).maps, rtol=1e-5)
    np.testing.assert_allclose(attribute(att, x, "smoothgrad-squared", unit=0, samples=4).maps[0], (g * g).max(0),
                               rtol=1e-4)
    assert np.abs(attribute(att, x, "vargrad", unit=0, samples=4).maps).max() < 1e-8
    # on a ReLU net the samples matter; the result does not depend on how they are batched
    mm, _, _ = mlp_net()
    xm = _rand((5, 1, 4, 4), seed=7) - 0.5
    a = attribute(Attributor(mm, batch_size=4), xm, "smoothgrad", samples=9, noise=0.5, seed=3)
    b = attribute(Attributor(mm, batch_size=64), xm, "smoothgrad", samples=9, noise=0.5, seed=3)
    np.testing.assert_allclose(a.maps, b.maps, rtol=1e-5)
    c = attribute(Attributor(mm), xm, "smoothgrad", samples=9, noise=0.5, seed=4)
    assert not np.allclose(a.maps, c.maps)
    v = attribute(Attributor(mm), xm, "smoothgrad", samples=9, noise=0.0)
    np.testing.assert_allclose(v.maps, attribute(Attributor(mm), xm, "vanilla").maps, rtol=1e-5)
    with pytest.raises(OnnxvizError, match="variant"):
        attribute(att, x, "smoothgrad", variant="median")


def test_nhwc_input_layout():
    m, W, _ = linear_net(layout="NHWC")
    x = _rand((2, 5, 6, 2), seed=8)
    att = Attributor(m)
    assert att.spec.layout == "NHWC" and (att.spec.height, att.spec.width, att.spec.channels) == (5, 6, 2)
    g = W[:, 1].reshape(5, 6, 2)
    r = attribute(att, x, "vanilla", unit=1)
    np.testing.assert_allclose(r.maps[0], np.abs(g).max(-1), rtol=1e-5)


def test_fixed_batch_model_is_padded():
    m, W = gap_net(batch=1)
    x = _rand((3, 3, 10, 10), seed=9)
    att = Attributor(m)
    assert att.spec.batch == 1 and att.batch_size == 1
    r = attribute(att, x, "gradcam")
    free = attribute(Attributor(gap_net()[0]), x, "gradcam")
    np.testing.assert_allclose(r.maps, free.maps, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(attribute(att, x, "vanilla").maps, attribute(Attributor(gap_net()[0]), x, "vanilla").maps,
                               rtol=1e-5)


# ------------------------------------------------------------------------------------ CAM family
def _cam_oracle(model, W, x, units):
    """CAM (Zhou et al. 2016): for GAP + linear, Grad-CAM = relu(sum_k W[k, c] A_k) / (h w)."""
    a = _run(onnx_expose(model, "r"), x, ["r"])[0]
    hw = a.shape[2] * a.shape[3]
    return np.maximum(np.einsum("nk,nkhw->nhw", W[:, units].T, a) / hw, 0), a


def onnx_expose(model, name):
    from onnxviz.rewrite import expose

    return expose(model, [name])


def test_default_cam_layer_found_in_the_graph(mnist_model_path):
    from onnxviz.graph import load_model

    assert default_cam_layer(gap_net()[0]) == "r"
    assert default_cam_layer(gap_net(nhwc_map=True)[0]) == "rt"
    mnist = load_model(mnist_model_path)
    assert default_cam_layer(mnist) == "Transpose__30:0"  # the max-pool output, NHWC, read by Flatten
    att = Attributor(mnist)
    cl = resolve_cam_layer(att)
    assert (cl.layout, cl.shape, cl.channels, cl.spatial) == ("NHWC", (12, 12, 64), 64, (12, 12))
    named = resolve_cam_layer(att, "conv2d_1")
    assert (named.tensor, named.layout, named.shape) == ("mnist_cnn_1/conv2d_1_2/Relu:0", "NCHW", (64, 24, 24))
    with pytest.raises(ShapeError, match="spatial feature map"):
        resolve_cam_layer(att, "dense")
    with pytest.raises(OnnxvizError):
        resolve_cam_layer(att, "no_such_layer")


def test_gradcam_equals_cam_on_global_average_pooled_net():
    m, W = gap_net()
    x = _rand((4, 3, 10, 10), seed=10)
    att = Attributor(m)
    r = attribute(att, x, "gradcam")
    want, a = _cam_oracle(m, W, x, r.units)
    np.testing.assert_allclose(r.info["layer_maps"], want, rtol=1e-4, atol=1e-6)
    np.testing.assert_allclose(r.maps, want, rtol=1e-4, atol=1e-6)  # 10x10 map on a 10x10 input
    assert r.info["layout"] == "NCHW"
    # the gradient model: dS/dA of GAP + Gemm is W[k, c] / (h w) everywhere
    cl, units, _, _, A, G = feature_maps(att, x, r.units)
    np.testing.assert_allclose(A, a, rtol=1e-5)
    np.testing.assert_allclose(G, np.broadcast_to((W[:, units].T / 100.0)[:, :, None, None], G.shape), rtol=1e-4)


def test_cam_family_formulas_on_known_gradients():
    m, W = gap_net(seed=11)
    x = _rand((3, 3, 10, 10), seed=12)
    att = Attributor(m)
    units = np.array([0, 1, 3])
    a = _run(onnx_expose(m, "r"), x, ["r"])[0].astype(np.float64)
    g = np.broadcast_to((W[:, units].T / 100.0)[:, :, None, None], a.shape)
    # Grad-CAM++ (Chattopadhay et al., eq. 19) and LayerCAM (Jiang et al.) from the same A and g
    alpha = g**2 / np.where(2 * g**2 + a.sum((2, 3), keepdims=True) * g**3 != 0,
                            2 * g**2 + a.sum((2, 3), keepdims=True) * g**3, 1)
    wpp = (alpha * np.maximum(g, 0)).sum((2, 3))
    pp = np.maximum(np.einsum("nk,nkhw->nhw", wpp, a), 0)
    lc = np.maximum((np.maximum(g, 0) * a).sum(1), 0)
    np.testing.assert_allclose(attribute(att, x, "gradcam++", unit=units).maps, pp, rtol=1e-4, atol=1e-7)
    np.testing.assert_allclose(attribute(att, x, "layercam", unit=units).maps, lc, rtol=1e-4, atol=1e-7)


def test_nchw_and_nhwc_feature_maps_give_the_same_cam():
    m_nhwc, W = gap_net(nhwc_map=True, seed=13)
    x = _rand((2, 3, 10, 10), seed=14)
    att = Attributor(m_nhwc)
    default = attribute(att, x, "gradcam")
    assert default.info["layer"] == "rt" and default.info["layout"] == "NHWC"
    nchw = attribute(att, x, "gradcam", layer="r")
    assert nchw.info["layout"] == "NCHW"
    np.testing.assert_allclose(default.maps, nchw.maps, rtol=1e-5, atol=1e-7)
    want, _ = _cam_oracle(m_nhwc, W, x, default.units)
    np.testing.assert_allclose(default.maps, want, rtol=1e-4, atol=1e-7)


def test_cam_gradient_model_keeps_the_trunk_and_is_plain_onnx(mnist_model_path):
    """The gradient w.r.t. the intermediate CAM layer on the shipped model: Flatten reads the Shape
    of the max-pool output (a tensor before the CAM layer), which a split at the layer would lose."""
    from onnxviz.graph import load_model
    from onnxviz.rewrite import to_logits

    model = to_logits(load_model(mnist_model_path))
    g = cam_gradient_model(model, "Identity:0", "Transpose__30:0")
    onnx.checker.check_model(g)
    assert all(n.domain in ("", "ai.onnx") for n in g.graph.node)
    assert [o.name for o in g.graph.output][-1] == "Transpose__30:0"
    assert len(g.graph.output) == 3


def test_cam_gradient_model_needs_no_extra_input_and_matches_finite_differences(mnist_model_path):
    """wrt the CAM layer itself: the inputs are the model's plus the cotangent, and dS/dA agrees with
    central differences that perturb A alone (the head re-run on A + eps v, the trunk untouched)."""
    model = to_logits(load_model(mnist_model_path))
    feature = "Transpose__30:0"
    g = cam_gradient_model(model, "Identity:0", feature)
    inputs = [i.name for i in model.graph.input if i.name not in {t.name for t in model.graph.initializer}]
    assert [i.name for i in g.graph.input] == inputs + [COTANGENT]
    x = _rand((1,) + tuple(d.dim_value for d in model.graph.input[0].type.tensor_type.shape.dim[1:]), seed=40)
    cot = np.zeros((1, 10), np.float32)
    cot[0, 3] = 1.0
    sess = make_session(g, "cpu")
    z, grad, a = sess.run(None, {inputs[0]: x, COTANGENT: cot})
    # oracle: the model with A as an input (its producer dropped), perturbed along a random direction
    head = onnx.ModelProto()
    head.CopyFrom(model)
    head.graph.node.remove(next(n for n in head.graph.node if feature in n.output))
    head.graph.input.append(helper.make_tensor_value_info(feature, TensorProto.FLOAT, list(a.shape)))
    hs = Float64Reference(head)
    np.testing.assert_allclose(hs({inputs[0]: x, feature: a})[0], z, rtol=1e-4, atol=1e-5)
    v = np.random.default_rng(41).standard_normal(a.shape)
    eps = 1e-6  # float64, and the head is piecewise linear: no kink is crossed at this step
    a64 = a.astype(np.float64)
    fp = hs({inputs[0]: x, feature: a64 + eps * v})[0][0, 3]
    fm = hs({inputs[0]: x, feature: a64 - eps * v})[0][0, 3]
    numeric = (float(fp) - float(fm)) / (2 * eps)
    analytic = float(np.sum(grad.astype(np.float64) * v))
    assert abs(numeric - analytic) <= 1e-3 * max(abs(analytic), np.abs(grad).sum() * 1e-3)


def test_gradcam_on_flattened_map_matches_the_dense_weights():
    """conv -> relu -> maxpool -> flatten -> gemm: dS/dA at the pool output is the weight column."""
    import models as M

    m = M.conv_net(size=8, channels=3, seed=15)
    fc = {t.name: numpy_helper.to_array(t) for t in m.graph.initializer}["fc.w"]
    x = _rand((2, 3, 8, 8), seed=16)
    att = Attributor(m)
    cl, units, _, _, A, G = feature_maps(att, x)
    assert cl.tensor == "pool_out" and cl.layout == "NCHW"
    np.testing.assert_allclose(G, fc[:, units].T.reshape(2, 4, 4, 4), rtol=1e-5, atol=1e-7)
    r = attribute(att, x, "gradcam")
    assert r.maps.shape == (2, 8, 8)


def test_scorecam_weights_and_forward_pass_count():
    m, W = gap_net(seed=17)
    x = _rand((2, 3, 10, 10), seed=18)
    att = Attributor(m)
    r = attribute(att, x, "scorecam")
    assert r.info["forward_passes"] == 2 * 5 and r.info["channels_used"] == 5
    # oracle: mask the image with each channel's min-max normalized map, read the probability
    a = _run(onnx_expose(m, "r"), x, ["r"])[0]
    cam = np.zeros((2, 10, 10))
    for i in range(2):
        for k in range(5):
            mk = a[i, k]
            mk = (mk - mk.min()) / (mk.max() - mk.min()) if mk.max() > mk.min() else np.zeros_like(mk)
            p = _run(m, (x[i:i + 1] * mk[None, None]).astype(np.float32))[0][0, r.units[i]]
            cam[i] += p * a[i, k]
    np.testing.assert_allclose(r.maps, np.maximum(cam, 0), rtol=1e-4, atol=1e-6)
    top = attribute(att, x, "scorecam", top_n=2)
    assert top.info["forward_passes"] == 2 * 2 and top.info["channels_used"] == 2
    full = attribute(att, x, "scorecam", top_n=99)
    np.testing.assert_allclose(full.maps, r.maps, rtol=1e-6)


def test_guided_gradcam_is_the_product():
    m, _ = gap_net(seed=19)
    x = _rand((2, 3, 10, 10), seed=20)
    att = Attributor(m)
    gg = attribute(att, x, "guided-gradcam")
    np.testing.assert_allclose(gg.maps, attribute(att, x, "guided").maps * attribute(att, x, "gradcam").maps,
                               rtol=1e-5, atol=1e-8)


# ------------------------------------------------------------------------------------ occlusion
def test_occlusion_closed_form_on_linear_model():
    m, W, _ = linear_net()
    x = _rand((2, 2, 5, 6), seed=21)
    att = Attributor(m)
    g = W[:, 1].reshape(2, 5, 6)
    r = attribute(att, x, "occlusion", unit=1, window=1, stride=1, fill=0.0)
    np.testing.assert_allclose(r.maps, (x * g).sum(1), rtol=1e-4, atol=1e-5)
    assert r.info["windows"] == 30 and r.info["forward_passes"] == 2 * 30 + 2
    # 2x2 windows with stride 2 on 5x6: rows 0,2,3 (last moved to the border), cols 0,2,4
    r2 = attribute(att, x, "occlusion", unit=1, window=2, stride=2, fill="black")
    assert r2.info["windows"] == 9
    contrib = (x * g).sum(1)
    y, xx = 0, 2
    assert np.isclose(r2.maps[0, 1, 3], contrib[0, y:y + 2, xx:xx + 2].sum(), rtol=1e-4)
    # small batches give the same map
    r3 = attribute(Attributor(m, batch_size=3), x, "occlusion", unit=1, window=2, stride=2)
    np.testing.assert_allclose(r3.maps, r2.maps, rtol=1e-5)


# ------------------------------------------------------------------------------------ metrics
def test_deletion_and_insertion_curves():
    m, W, b = linear_net(classes=3, seed=22)
    x = _rand((3, 2, 5, 6), seed=23)
    att = Attributor(m)
    probs = att.probabilities(x)
    units = probs.argmax(1)
    good = attribute(att, x, "gradxinput", unit=units, modifier="relu").maps
    curve = deletion_curve(att, x, good, units, steps=10)
    assert curve.shape == (3, 11)
    np.testing.assert_allclose(curve[:, 0], probs[np.arange(3), units], rtol=1e-5)
    black = att.probabilities(np.zeros_like(x))
    np.testing.assert_allclose(curve[:, -1], black[np.arange(3), units], rtol=1e-5)
    ins = deletion_curve(att, x, good, units, steps=10, mode="insertion", substrate="black")
    np.testing.assert_allclose(ins[:, 0], black[np.arange(3), units], rtol=1e-5)
    np.testing.assert_allclose(ins[:, -1], probs[np.arange(3), units], rtol=1e-5)
    # deleting the positive evidence first beats deleting it last
    assert (deletion_auc(att, x, good, units, steps=10) < deletion_auc(att, x, -good, units, steps=10)).all()
    assert (insertion_auc(att, x, good, units, steps=10, substrate="black")
            > insertion_auc(att, x, -good, units, steps=10, substrate="black")).all()


def test_spearman_matches_scipy_with_ties():
    stats = pytest.importorskip("scipy.stats")
    rng = np.random.default_rng(0)
    a = rng.integers(0, 5, (4, 30)).astype(float)
    b = a + rng.normal(0, 2, a.shape)
    b[:, :10] = 0.0
    ours = spearman(a, b)
    for i in range(4):
        assert np.isclose(ours[i], stats.spearmanr(a[i], b[i]).statistic)
    assert np.allclose(spearman(a, a), 1.0)
    assert spearman(np.zeros((1, 5)), a[:1, :5])[0] == 0.0


def test_weight_layers_and_randomization(mnist_model_path):
    from onnxviz.graph import load_model

    model = load_model(mnist_model_path)
    layers = weight_layers(model)
    assert [wl.node for wl in layers] == ["conv2d/BiasAdd", "conv2d_1/BiasAdd", "dense/MatMul", "preds/MatMul"]
    assert layers[-1].initializers == ("mnist_cnn_1/preds_1/Cast/ReadVariableOp:0",
                                       "mnist_cnn_1/preds_1/BiasAdd/ReadVariableOp:0")
    rnd = randomize_layers(model, ["preds/MatMul"], seed=1)
    before = {t.name: numpy_helper.to_array(t) for t in model.graph.initializer}
    after = {t.name: numpy_helper.to_array(t) for t in rnd.graph.initializer}
    changed = {n for n in before if not np.array_equal(before[n], after[n])}
    assert changed == set(layers[-1].initializers)
    w = "mnist_cnn_1/preds_1/Cast/ReadVariableOp:0"
    assert abs(after[w].std() / before[w].std() - 1) < 0.2
    with pytest.raises(OnnxvizError, match="no weight layer"):
        randomize_layers(model, ["nope"])


def test_randomization_check_on_small_net():
    m, W1, W2 = mlp_net(seed=24)
    x = _rand((6, 1, 4, 4), seed=25) - 0.5
    r = randomization_check(m, x, "vanilla", modifier=None)
    assert r.layers == ["fc2", "fc1"]
    np.testing.assert_allclose(r.rerun, 1.0)
    assert r.correlations.shape == (2, 6)
    assert r.mean.max() < 0.9
    assert r.rows()[0] == ("(same weights)", 1.0)


def test_randomization_check_reports_signed_maps_too():
    """With a modifier (|grad|, the default), the check also correlates the signed maps (channel
    sums of the raw gradients) from the same runs: equal to a check run with ``modifier=None``."""
    m, _ = gap_net(seed=7)
    x = _rand((5, 3, 10, 10), seed=26) - 0.5
    absolute = randomization_check(m, x, "vanilla")
    signed = randomization_check(m, x, "vanilla", modifier=None)
    assert absolute.info["modifier"] == "abs" and signed.signed is None
    np.testing.assert_allclose(absolute.signed, signed.correlations, atol=1e-12)
    np.testing.assert_allclose(absolute.signed_rerun, 1.0)
    assert not np.allclose(absolute.correlations, absolute.signed)
    assert absolute.rows(signed=True)[1:] == signed.rows()[1:]
    assert signed.rows(signed=True) == []


def test_unknown_method_and_bad_shapes():
    m, _, _ = linear_net()
    att = Attributor(m)
    with pytest.raises(OnnxvizError, match="unknown attribution method"):
        attribute(att, _rand((1, 2, 5, 6)), "lime")
    with pytest.raises(OnnxvizError, match="do not fit"):
        attribute(att, _rand((1, 2, 6, 5)), "vanilla")
    with pytest.raises(OnnxvizError, match="takes no option"):
        attribute(att, _rand((1, 2, 5, 6)), "vanilla", strict=True, steps=3)
