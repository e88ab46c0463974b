"""onnxviz.keras_vis: the keras-vis tutorial's calls with one import changed, on the shipped ONNX
CNN (fast) and on a small Keras CNN trained here on generated bars (slow: TensorFlow).

The tutorial snippet is run as keras-vis users wrote it (find_layer_idx 'preds', swap the softmax
for linear, apply_modifications, visualize_activation / visualize_saliency / visualize_cam), and the
results are checked against the model itself (the class image scores highest for its class) and
against onnxviz's own attribution functions (equal up to normalisation) — on Keras, also against
TensorFlow's GradientTape.
"""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import onnx
import pytest

from onnxviz.errors import LayerNotFoundError, OnnxvizError

# --- the tutorial's imports, with the one line changed -------------------------------------------
from onnxviz.keras_vis import visualize_activation, visualize_saliency, visualize_cam, overlay, utils
from onnxviz.keras_vis import activations

from onnxviz.keras_vis import (KerasVisError, KerasVisLayerNotFoundError, KerasVisModel, UnsupportedOptionError,
                               get_num_filters)
from onnxviz.keras_vis.input_modifiers import Jitter

sys.path.insert(0, str(Path(__file__).resolve().parent))
import models as tiny_models  # noqa: E402  (tests/models.py: hand-built ONNX graphs)


def softmax(z):
    z = np.asarray(z, np.float64)
    e = np.exp(z - z.max(axis=-1, keepdims=True))
    return e / e.sum(axis=-1, keepdims=True)


def unit_normalize(a):
    a = np.asarray(a, np.float64)
    lo, hi = a.min(), a.max()
    return (a - lo) / (hi - lo) if hi > lo else np.zeros_like(a)


def synthetic_seven() -> np.ndarray:
    """A 28x28 handwritten-looking 7 drawn here, values in [0, 1]."""
    from PIL import Image, ImageDraw, ImageFilter

    im = Image.new("L", (28, 28), 0)
    draw = ImageDraw.Draw(im)
    draw.line([(7, 7), (21, 7)], fill=255, width=3)
    draw.line([(21, 7), (12, 23)], fill=255, width=3)
    im = im.filter(ImageFilter.GaussianBlur(0.6))
    return np.asarray(im, np.float32)[..., None] / 255.0


# ------------------------------------------------------------------------------------ ONNX path
@pytest.fixture(scope="module")
def onnx_model(mnist_model_path):
    """The tutorial's first lines on the shipped model (its Keras source is the keras-vis CNN)."""
    model = utils.load_model(mnist_model_path)
    layer_idx = utils.find_layer_idx(model, 'preds')
    model.layers[layer_idx].activation = activations.linear
    model = utils.apply_modifications(model)
    return model, layer_idx


@pytest.fixture(scope="module")
def digit():
    """(image (28, 28, 1) in [0, 1], its label): the first real test digit when the MNIST split is
    beside the project, else a drawn 7."""
    from conftest import MNIST_DIR

    if (MNIST_DIR / "t10k-images-idx3-ubyte.gz").exists():
        from onnxviz.datasets import load_mnist

        x, y = load_mnist(MNIST_DIR)
        return x[0].astype("float32")[..., None] / 255.0, int(y[0])
    return synthetic_seven(), 7


def test_layer_listing_and_find_layer_idx(mnist_model_path):
    model = utils.load_model(mnist_model_path)
    assert isinstance(model, KerasVisModel)
    names = [layer.name for layer in model.layers]
    # the Keras layers that leave nodes in the export (Dropout does not), in order
    assert names == ["conv2d", "conv2d_1", "max_pooling2d", "flatten", "dense", "preds"]
    idx = utils.find_layer_idx(model, "preds")
    assert idx == len(names) - 1  # keras-vis: "alternatively -1, the last layer"
    assert utils.find_layer_idx(str(mnist_model_path), "conv2d_1") == 1  # a path works too
    assert utils.find_layer_idx(onnx.load(str(mnist_model_path)), "dense") == 4
    assert model.layers[idx].activation is activations.softmax
    # the index -> tensor mapping is the one onnxviz's --layer uses
    import onnxviz

    for layer in model.layers:
        assert layer.tensor == onnxviz.find_layer(model.onnx_model, layer.name).output
    assert model.layers[0].output_shape == (None, 32, 26, 26)  # the ONNX tensor's (NCHW inside the graph)
    assert model.input_shape == (None, 28, 28, 1)
    assert get_num_filters(model.layers[1]) == 64 and get_num_filters(model.layers[idx]) == 10


def test_apply_modifications_swaps_softmax_for_logits(mnist_model_path, onnx_model):
    original = utils.load_model(mnist_model_path)
    model, layer_idx = onnx_model
    assert model is not original and model.layers[layer_idx].name == "preds"
    assert model.layers[layer_idx].activation is activations.linear
    assert [n.op_type for n in model.onnx_model.graph.node].count("Softmax") == 0
    x = np.random.default_rng(0).random((3, 28, 28, 1)).astype(np.float32)
    logits, probs = model.predict(x), original.predict(x)
    np.testing.assert_allclose(softmax(logits), probs, atol=1e-5)
    assert np.abs(logits).max() > 1.5  # really logits, not probabilities
    # nothing changed -> the same model back; the original keeps its softmax
    assert utils.apply_modifications(original) is original
    assert "Softmax" in [n.op_type for n in original.onnx_model.graph.node]


def test_visualize_activation_tutorial(onnx_model):
    model, layer_idx = onnx_model
    singles = []
    for class_idx in (0, 3):
        img = visualize_activation(model, layer_idx, filter_indices=class_idx, input_range=(0., 1.))
        assert img.shape == (28, 28, 1) and img.dtype == np.float32
        assert 0.0 <= img.min() and img.max() <= 1.0
        z = model.predict(img[None])[0]
        others = np.delete(z, class_idx)
        assert z.argmax() == class_idx and z[class_idx] > others.max() + 5.0, z
        singles.append(z)
    # several filters at once: one image for their sum (keras-vis' joint loss)
    img = visualize_activation(model, layer_idx, filter_indices=[1, 7], input_range=(0., 1.), max_iter=64)
    z = model.predict(img[None])[0]
    assert z[1] + z[7] > max(s[1] + s[7] for s in singles) + 10.0, z
    assert z[1] > 0 and z[7] > 0, z


def test_visualize_activation_keras_vis_options(onnx_model, digit):
    model, layer_idx = onnx_model
    # the tutorial's later cells: no regularization, jitter as an input modifier, more iterations
    img = visualize_activation(model, layer_idx, filter_indices=5, input_range=(0., 1.), tv_weight=0.,
                               lp_norm_weight=0., input_modifiers=[Jitter(2)], max_iter=40, verbose=False)
    assert img.shape == (28, 28, 1) and model.predict(img[None])[0].argmax() == 5
    # a seed image, a conv filter (its spatial mean), guided backprop
    x, _ = digit
    conv = utils.find_layer_idx(model, "conv2d_1")
    out = visualize_activation(model, conv, filter_indices=12, seed_input=x, max_iter=20, backprop_modifier="guided")
    assert out.shape == (28, 28, 1) and not np.allclose(out, x)
    from onnxviz.rewrite import truncate
    from onnxviz.runtime import make_session

    t = model.layers[conv].tensor
    sess = make_session(truncate(model.onnx_model, [t]), "cpu")
    before = sess.run([t], {"image": x[None]})[0][0, 12].mean()
    after = sess.run([t], {"image": out[None]})[0][0, 12].mean()
    assert after > before
    # conv layers count filters as channels
    assert get_num_filters(model.layers[conv]) == 64


def test_regularizer_mapping():
    from onnxviz.maximize import default_settings
    from onnxviz.keras_vis.visualization import _regularizers, _transforms
    from onnxviz.transforms import Rotate, Translate

    base = default_settings(1, 28, 28)
    same = _regularizers(base, None, None, 1, (0.0, 1.0))
    assert [r.describe() for r in same] == [r.describe() for r in base.regularizers]
    assert [r.describe() for r in _regularizers(base, 10, 10, 1, (0.0, 1.0))] == [r.describe() for r in base.regularizers]
    assert _regularizers(base, 0, 0, 1, (0.0, 1.0)) == ()
    half = _regularizers(base, 10, 10, 2, (-1.0, 1.0))
    assert [r.weight for r in half] == pytest.approx([0.05, 0.025])
    assert half[1].center == pytest.approx(0.5)  # the model's 0 of a [-1, 1] input, in the unit range
    spec = type("S", (), {"height": 28, "width": 28})()
    transforms, mode = _transforms([Jitter(16), Rotate(5.0)], spec)
    assert transforms == (Translate(16), Rotate(5.0)) and mode == "wrap"
    assert _transforms([Jitter(0.05)], spec)[0] == (Translate(1),)  # 5% of 28 px
    assert _transforms(None, spec) == (None, None) and _transforms([], spec) == ((), None)


def test_visualize_saliency_equals_onnxviz_saliency(mnist_model_path, onnx_model, digit):
    from onnxviz.attribution import deconvnet, guided_backprop, vanilla_gradient

    model, layer_idx = onnx_model
    x, class_idx = digit
    grads = visualize_saliency(model, layer_idx, filter_indices=class_idx, seed_input=x)
    assert grads.shape == (28, 28) and grads.dtype == np.float32
    assert grads.min() == 0.0 and grads.max() == 1.0
    # onnxviz's own saliency of the same class (on the logits: it strips the softmax itself)
    mine = vanilla_gradient(str(mnist_model_path), x[None], class_idx, modifier="abs").maps[0]
    np.testing.assert_allclose(grads, unit_normalize(mine), atol=1e-5)
    # the tutorial's loop over backprop modifiers, and keras-vis' grad modifiers
    for modifier, ours in ((None, vanilla_gradient), ("guided", guided_backprop), ("relu", deconvnet)):
        g = visualize_saliency(model, layer_idx, filter_indices=class_idx, seed_input=x, backprop_modifier=modifier)
        assert g.shape == (28, 28)
        np.testing.assert_allclose(g, unit_normalize(ours(str(mnist_model_path), x[None], class_idx).maps[0]),
                                   atol=1e-5)
    signed = vanilla_gradient(str(mnist_model_path), x[None], class_idx, modifier=None).maps[0]
    for grad_modifier, expected in (("relu", np.maximum(signed, 0)), (None, signed), ("negate", -signed)):
        # keras-vis' "negate" is the plain negation: after the [0, 1] normalisation zero gradients are mid-gray
        g = visualize_saliency(model, layer_idx, filter_indices=class_idx, seed_input=x, grad_modifier=grad_modifier)
        np.testing.assert_allclose(g, unit_normalize(expected), atol=1e-5)
    # keepdims keeps the channel axis; a batch of one and an (H, W) image work too
    assert visualize_saliency(model, layer_idx, class_idx, x, keepdims=True).shape == (28, 28, 1)
    np.testing.assert_allclose(visualize_saliency(model, layer_idx, class_idx, x[None]), grads, atol=1e-6)
    np.testing.assert_allclose(visualize_saliency(model, layer_idx, class_idx, x[..., 0]), grads, atol=1e-6)


def test_saliency_of_several_filters_and_of_probabilities(mnist_model_path, onnx_model, digit):
    from onnxviz.attribution import vanilla_gradient
    from onnxviz.gradients import GradientFunction
    from onnxviz.rewrite import to_logits

    model, layer_idx = onnx_model
    x, class_idx = digit
    path = str(mnist_model_path)
    # filter_indices=[a, b]: the gradient of their sum
    ga = vanilla_gradient(path, x[None], 2, modifier=None).attributions[0, ..., 0]
    gb = vanilla_gradient(path, x[None], 5, modifier=None).attributions[0, ..., 0]
    both = visualize_saliency(model, layer_idx, filter_indices=[2, 5], seed_input=x)
    np.testing.assert_allclose(both, unit_normalize(np.abs(ga + gb)), atol=1e-5)
    # without the swap keras-vis explains the softmax output: d p_k / dx = J_z^T p_k (e_k - p)
    # (for the runner-up class: the top class' p ~ 1 leaves a gradient float32 cannot resolve)
    raw = utils.load_model(mnist_model_path)
    fn = GradientFunction(to_logits(raw.onnx_model), input_name="image")
    z, _ = fn(x[None], np.zeros((1, 10), np.float32))
    p = softmax(z)[0]
    k = int(np.argsort(p)[-2])
    g_prob = visualize_saliency(raw, utils.find_layer_idx(raw, "preds"), k, x, grad_modifier=None)
    cot = (p[k] * (np.eye(10)[k] - p)).astype(np.float32)[None]
    _, g = fn(x[None], cot)
    np.testing.assert_allclose(g_prob, unit_normalize(g[0, ..., 0]), atol=1e-4)
    g_logit = visualize_saliency(model, layer_idx, k, x, grad_modifier=None)
    assert np.abs(g_prob - g_logit).max() > 0.05  # the swap matters
    # and a path / ModelProto works without load_model
    assert visualize_saliency(path, -1, class_idx, x).shape == (28, 28)


def test_visualize_cam_equals_onnxviz_gradcam(mnist_model_path, onnx_model, digit):
    from onnxviz.attribution import gradcam

    model, layer_idx = onnx_model
    x, class_idx = digit
    heat = visualize_cam(model, layer_idx, filter_indices=class_idx, seed_input=x)
    assert heat.shape == (28, 28) and heat.dtype == np.float32
    assert heat.min() == 0.0 and heat.max() == 1.0
    # keras-vis' default penultimate layer is the nearest Conv/Pooling layer: max_pooling2d, which
    # is also onnxviz's default CAM layer (the last spatial map before flatten)
    ref = gradcam(str(mnist_model_path), x[None], class_idx)
    np.testing.assert_allclose(heat, unit_normalize(ref.maps[0]), atol=1e-5)
    conv = utils.find_layer_idx(model, "conv2d_1")
    heat1 = visualize_cam(model, layer_idx, class_idx, x, penultimate_layer_idx=conv)
    ref1 = gradcam(str(mnist_model_path), x[None], class_idx, layer="conv2d_1")
    np.testing.assert_allclose(heat1, unit_normalize(ref1.maps[0]), atol=1e-5)
    # the tutorial's loop over backprop modifiers
    for modifier in (None, "guided", "relu"):
        h = visualize_cam(model, layer_idx, filter_indices=class_idx, seed_input=x, penultimate_layer_idx=conv,
                          backprop_modifier=modifier)
        assert h.shape == (28, 28) and np.isfinite(h).all() and h.max() == 1.0
    # and the overlay the tutorial draws
    jet = (np.stack([heat] * 3, -1) * 255).astype(np.uint8)
    img = (np.repeat(x, 3, -1) * 255).astype(np.uint8)
    blended = overlay(jet, img)
    assert blended.dtype == np.uint8 and blended.shape == (28, 28, 3)
    np.testing.assert_array_equal(overlay(jet, img, alpha=1.0), jet)
    np.testing.assert_array_equal(overlay(jet, img, alpha=0.0), img)


def test_nchw_model_and_hand_built_names():
    """A hand-built NCHW graph (no scoped names: each node is a layer): channels-last results."""
    model = utils.load_model(tiny_models.conv_net())
    assert [layer.name for layer in model.layers] == ["conv", "relu", "pool", "flatten", "fc", "softmax"]
    img = visualize_activation(model, -1, filter_indices=1, max_iter=10)
    assert img.shape == (8, 8, 1)
    x = np.random.default_rng(0).random((8, 8, 1)).astype(np.float32)
    assert visualize_saliency(model, -1, 1, x).shape == (8, 8)
    assert visualize_cam(model, -1, [1, 2], x).shape == (8, 8)  # penultimate: pool
    # a separate softmax layer keeps its index after the swap, as the identity on the logits
    model.layers[-1].activation = activations.linear
    swapped = utils.apply_modifications(model)
    assert [layer.name for layer in swapped.layers] == [layer.name for layer in model.layers]
    assert swapped.layers[-1].tensor == swapped.onnx_model.graph.output[0].name


def test_fallback_grouping_matches_onnxviz_listing(mnist_model_path, monkeypatch):
    """Without ``onnxviz.graph.model_layers`` the module groups nodes itself, to the same layers."""
    import onnxviz.graph

    sources = [mnist_model_path, tiny_models.conv_net()]
    expected = [[(layer.name, layer.tensor) for layer in utils.load_model(src).layers] for src in sources]
    monkeypatch.delattr(onnxviz.graph, "model_layers", raising=False)
    got = [[(layer.name, layer.tensor) for layer in utils.load_model(src).layers] for src in sources]
    assert got == expected


def test_errors_are_specific(onnx_model, digit, mnist_model_path):
    model, layer_idx = onnx_model
    x, _ = digit
    with pytest.raises(KerasVisLayerNotFoundError, match="'pred'.*closest: preds") as info:
        utils.find_layer_idx(model, "pred")
    assert isinstance(info.value, ValueError) and isinstance(info.value, LayerNotFoundError)
    with pytest.raises(KerasVisLayerNotFoundError, match="out of range"):
        visualize_saliency(model, 6, 0, x)
    with pytest.raises(UnsupportedOptionError, match="wrt_tensor"):
        visualize_activation(model, layer_idx, 0, wrt_tensor="foo")
    with pytest.raises(UnsupportedOptionError, match="grad_modifier"):
        visualize_activation(model, layer_idx, 0, grad_modifier="absolute")
    with pytest.raises(UnsupportedOptionError, match="step_size"):
        visualize_activation(model, layer_idx, 0, step_size=0.1)
    with pytest.raises(UnsupportedOptionError, match="callbacks"):
        visualize_activation(model, layer_idx, 0, callbacks=[object()])
    with pytest.raises(UnsupportedOptionError, match="input modifier"):
        visualize_activation(model, layer_idx, 0, input_modifiers=[object()])
    with pytest.raises(UnsupportedOptionError, match="act_max_weight"):
        visualize_activation(model, layer_idx, 0, act_max_weight=0)
    with pytest.raises(UnsupportedOptionError, match="backprop_modifier"):
        visualize_saliency(model, layer_idx, 0, x, backprop_modifier="bogus")
    with pytest.raises(UnsupportedOptionError, match="grad_modifier"):
        visualize_saliency(model, layer_idx, 0, x, grad_modifier="bogus")
    with pytest.raises(KerasVisError, match="one at a time"):
        visualize_saliency(model, layer_idx, 0, np.stack([x, x]))
    with pytest.raises(KerasVisError, match="does not fit"):
        visualize_saliency(model, layer_idx, 0, np.zeros((32, 32, 1)))
    with pytest.raises(OnnxvizError, match="out of range"):
        visualize_saliency(model, layer_idx, 10, x)
    with pytest.raises(KerasVisError, match="penultimate"):
        visualize_cam(model, 0, 0, x)  # nothing before the first conv
    with pytest.warns(UserWarning, match="outside the model's input range"):
        visualize_saliency(model, layer_idx, 0, x * 255.0)
    # an activation change an ONNX graph cannot take
    raw = utils.load_model(mnist_model_path)
    raw.layers[0].activation = activations.linear
    with pytest.raises(UnsupportedOptionError, match="conv2d"):
        utils.apply_modifications(raw)
    with pytest.raises(KerasVisError, match="alpha"):
        overlay(np.zeros(3), np.zeros(3), alpha=2)


def test_unswapped_model_maximizes_the_probability(mnist_model_path):
    raw = utils.load_model(mnist_model_path)  # no swap: keras-vis maximized the softmax output
    img = visualize_activation(raw, -1, filter_indices=4, max_iter=48)
    assert raw.predict(img[None])[0].argmax() == 4


def test_importing_needs_no_framework():
    import subprocess

    code = ("import sys, onnxviz.keras_vis as kv; kv.utils.load_model('models/mnist_cnn.onnx'); "
            "print(sorted(m for m in ('tensorflow', 'keras', 'torch') if m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code], cwd=Path(__file__).resolve().parents[1], capture_output=True,
                         text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "[]"


def test_array_helpers():
    np.testing.assert_allclose(utils.normalize(np.array([2.0, 4.0, 6.0])), [0.0, 0.5, 1.0])
    assert utils.normalize(np.ones(4)).tolist() == [0.0] * 4
    d = utils.deprocess_input(np.random.default_rng(0).normal(size=(8, 8, 1)), (0, 255))
    assert 0.0 <= d.min() and d.max() <= 255.0 and abs(d.mean() - 127.5) < 10
    grid = utils.stitch_images([np.ones((4, 5, 3))] * 7, margin=2, cols=3)
    assert grid.shape == (3 * 4 + 2 * 2, 3 * 5 + 2 * 2, 3) and grid.sum() == 7 * 4 * 5 * 3
    assert utils.stitch_images([]) is None


# ------------------------------------------------------------------------------------ Keras path
def _bars(n: int, rng: np.random.Generator):
    """MNIST-shaped images of 10 classes: a bright bar, horizontal (0-4) or vertical (5-9) at one
    of five positions, plus noise."""
    x = np.zeros((n, 28, 28, 1), np.float32)
    y = rng.integers(0, 10, n)
    for i, k in enumerate(y):
        p = 4 + (k % 5) * 4
        if k < 5:
            x[i, p:p + 3, 4:24, 0] = 1.0
        else:
            x[i, 4:24, p:p + 3, 0] = 1.0
    x += rng.normal(0.0, 0.1, x.shape).astype(np.float32)
    return np.clip(x, 0.0, 1.0), y


@pytest.mark.slow
def test_keras_tutorial_snippet():
    keras = pytest.importorskip("keras", reason="the keras extra is not installed")
    import tensorflow as tf

    keras.utils.set_random_seed(0)
    layers = keras.layers
    x_train, y_train = _bars(500, np.random.default_rng(0))
    model = keras.Sequential([
        keras.Input((28, 28, 1)),
        layers.Conv2D(8, 3, activation="relu"),
        layers.MaxPooling2D(2),
        layers.Dropout(0.25),
        layers.Flatten(),
        layers.Dense(10, activation="softmax", name="preds"),
    ], name="bars_cnn")
    model.compile("adam", "sparse_categorical_crossentropy", metrics=["accuracy"])
    model.fit(x_train, y_train, epochs=3, batch_size=32, verbose=0)
    assert model.evaluate(x_train, y_train, verbose=0)[1] > 0.9

    # ---- the keras-vis tutorial, verbatim but for the import line -----------------------------
    layer_idx = utils.find_layer_idx(model, 'preds')
    model.layers[layer_idx].activation = activations.linear
    model = utils.apply_modifications(model)
    img = visualize_activation(model, layer_idx, filter_indices=3, input_range=(0., 1.))
    # -------------------------------------------------------------------------------------------
    assert layer_idx == 4  # Keras' own index: the Dropout layer counts
    assert isinstance(model, keras.Model)  # apply_modifications gives a Keras model back
    assert img.shape == (28, 28, 1) and img.dtype == np.float32
    logits = model.predict(img[None], verbose=0)[0]  # the clone's predict: logits
    assert logits.argmax() == 3 and logits[3] > np.delete(logits, 3).max() + 2.0, logits

    seed, class_idx = x_train[0], int(y_train[0])
    grads = visualize_saliency(model, layer_idx, filter_indices=class_idx, seed_input=seed)
    assert grads.shape == (28, 28) and grads.min() == 0.0 and grads.max() == 1.0
    # TensorFlow's own gradient of the logit, keras-vis' map of it
    xt = tf.convert_to_tensor(seed[None])
    with tf.GradientTape() as tape:
        tape.watch(xt)
        score = model(xt, training=False)[0, class_idx]
    tf_grad = np.abs(tape.gradient(score, xt).numpy()[0]).max(axis=-1)
    np.testing.assert_allclose(grads, unit_normalize(tf_grad), atol=1e-4)

    heat = visualize_cam(model, layer_idx, filter_indices=class_idx, seed_input=seed)
    assert heat.shape == (28, 28) and 0.0 <= heat.min() and heat.max() <= 1.0
    from onnxviz.attribution import gradcam
    from onnxviz.keras_vis._model import as_model

    converted = as_model(model).onnx_model
    np.testing.assert_allclose(heat, unit_normalize(gradcam(converted, seed[None], class_idx).maps[0]), atol=1e-5)
    # (on this model every channel's mean gradient is negative — a bar elsewhere means another
    # class — so plain Grad-CAM is all zero; with keras-vis' grad_modifier='relu' it is not)
    # TensorFlow's gradient w.r.t. the pooled map (the default penultimate layer), keras-vis' Grad-CAM of it
    from onnxviz.images import resize_bilinear

    pool = model.layers[1]
    assert utils.find_layer_idx(model, pool.name) == 1
    trunk = keras.Model(model.inputs, pool.output)
    a = trunk(xt, training=False)
    with tf.GradientTape() as tape:
        tape.watch(a)
        z = a
        for layer in model.layers[2:]:
            z = layer(z, training=False)
        score = z[0, class_idx]
    g = np.maximum(tape.gradient(score, a).numpy()[0].astype(np.float64), 0.0)  # (h, w, C)
    cam = np.maximum(np.einsum("c,hwc->hw", g.mean(axis=(0, 1)), a.numpy()[0].astype(np.float64)), 0.0)
    expected = unit_normalize(resize_bilinear(cam[None], (28, 28))[0])
    heat = visualize_cam(model, layer_idx, filter_indices=class_idx, seed_input=seed, grad_modifier="relu")
    assert heat.max() == 1.0
    np.testing.assert_allclose(heat, expected, atol=1e-4)
    for modifier in ("guided", "relu"):
        assert visualize_saliency(model, layer_idx, class_idx, seed, backprop_modifier=modifier).shape == (28, 28)
        assert visualize_cam(model, layer_idx, class_idx, seed, backprop_modifier=modifier).shape == (28, 28)

    # Keras layers address Keras indices; a layer that leaves no ONNX node is a clear error
    assert get_num_filters(model.layers[0]) == 8
    with pytest.raises(KerasVisError, match="dropout"):
        visualize_saliency(model, utils.find_layer_idx(model, model.layers[2].name), 0, seed)
    with pytest.raises(KerasVisLayerNotFoundError):
        utils.find_layer_idx(model, "logits")
    # one conversion per state of the model: reused until the weights change
    first = as_model(model)
    assert as_model(model) is first
    model.layers[-1].bias.assign(model.layers[-1].bias + 1.0)
    assert as_model(model) is not first
