"""Activation-maximization defaults for grayscale inputs of 64 px and up (issue 12, part 4): the
"gray" preset keeps the images inside the input range (the RGB preset saturated them into
black-and-white blobs), the model still reads them as their class, and the RGB and small presets
are what they were."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from onnx import TensorProto, helper

from gray_shapes import GRAY_CLASSES, MODEL_PATH, make_gray_shapes
from onnxviz.graph import input_info, load_model
from onnxviz.maximize import default_settings, maximize

pytestmark = pytest.mark.skipif(not MODEL_PATH.exists(), reason="tests/data/gray_shapes_cnn.onnx missing "
                                                                "(python tests/gray_shapes.py makes it)")


def saturated(images: np.ndarray, value_range) -> np.ndarray:
    """Per image: the fraction of values within 2% of either end of the range."""
    lo, hi = value_range
    u = (np.asarray(images, np.float64) - lo) / (hi - lo)
    return ((u < 0.02) | (u > 0.98)).reshape(len(u), -1).mean(axis=1)


def own_probability(model: onnx.ModelProto, images: np.ndarray) -> np.ndarray:
    """The model's probability of each image's own class (image i is class i)."""
    sess = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    p = sess.run(None, {sess.get_inputs()[0].name: images.astype(np.float32)})[0]
    return p[np.arange(len(p)), np.arange(len(p))]


@pytest.fixture(scope="module")
def gray_model() -> onnx.ModelProto:
    return load_model(str(MODEL_PATH))


def pooled(model: onnx.ModelProto, k: int) -> onnx.ModelProto:
    """The same classifier behind a k x k average pool: a (64 k) px grayscale model."""
    out = onnx.ModelProto()
    out.CopyFrom(model)
    g = out.graph
    inner, side = g.input[0].name, 64 * k
    front = [helper.make_node("Transpose", ["big"], ["big_nchw"], perm=[0, 3, 1, 2], name="front_t"),
             helper.make_node("AveragePool", ["big_nchw"], ["small_nchw"], kernel_shape=[k, k], strides=[k, k],
                              name="front_pool"),
             helper.make_node("Transpose", ["small_nchw"], [inner], perm=[0, 2, 3, 1], name="front_back")]
    nodes = list(g.node)
    del g.node[:]
    g.node.extend(front + nodes)
    del g.input[0]
    g.input.insert(0, helper.make_tensor_value_info("big", TensorProto.FLOAT, ["batch", side, side, 1]))
    onnx.checker.check_model(out)
    return out


# ------------------------------------------------------------------------------------ the presets
def test_presets_by_input_kind():
    gray = default_settings(1, 64, 64)
    assert gray.preset == "gray" and gray.param == "fft" and gray.decay == 1.5
    assert (gray.lr, gray.steps, gray.fill, gray.mode) == (0.02, 256, 0.5, "constant")
    assert gray.regularizers == () and gray.class_objective == "log_softmax"
    assert [t.describe()["type"] for t in gray.transforms] == ["pad", "jitter", "scale", "rotate", "jitter"]
    assert gray.transforms[0].n == 3  # lucid's pad 12 at 224 px, scaled to 64
    # a low-frequency coefficient moves a pixel by side**(decay - 1) per unit: lr scales back
    assert default_settings(1, 256, 256).lr == pytest.approx(0.01)
    assert default_settings(1, 128, 96).lr == pytest.approx(0.02 / np.sqrt(2))
    assert default_settings(4, 96, 96).preset == "gray"  # any channel count but RGB
    assert default_settings(2, 64, 64).preset == "gray"
    # unchanged: small images and RGB
    for c, h in ((1, 28), (1, 63), (3, 32)):
        small = default_settings(c, h, h)
        assert small.preset == "small" and small.param == "pixel" and small.lr == 0.1 and small.steps == 128
    rgb64, rgb224 = default_settings(3, 64, 64), default_settings(3, 224, 224)
    assert rgb64.preset == rgb224.preset == "large"
    assert (rgb64.lr, rgb64.decay, rgb64.steps) == (0.1, 2.0, 512)
    assert (rgb224.lr, rgb224.decay, rgb224.steps) == (0.05, 1.0, 512)


def test_the_gray_test_model_is_a_real_classifier(gray_model):
    """The fixture stands for a user's .h5: trained, NHWC, 7 classes, no range recorded (guessed)."""
    x, y = make_gray_shapes(350, seed=4321)
    sess = ort.InferenceSession(gray_model.SerializeToString(), providers=["CPUExecutionProvider"])
    p = sess.run(None, {"image": x})[0]
    assert p.shape == (350, len(GRAY_CLASSES))
    assert np.mean(p.argmax(axis=1) == y) >= 0.95
    (info,) = input_info(gray_model)
    assert info.layout == "NHWC" and info.shape == ("batch", 64, 64, 1)
    assert info.value_range == (0.0, 1.0) and info.range_guessed


# ------------------------------------------------------------------------------------ the images
def check_gray_result(model, result, max_saturated: float = 0.03):
    assert result.settings["preset"] == "gray"
    assert result.settings["param"]["basis"] == "fft" and result.settings["param"]["decorrelate"] is False
    lo, hi = result.value_range
    assert result.images.min() >= lo and result.images.max() <= hi
    sat = saturated(result.images, result.value_range)
    assert sat.max() <= max_saturated, f"saturated fractions {np.round(sat, 3)}"
    spread = ((result.images - lo) / (hi - lo)).reshape(len(sat), -1).std(axis=1)
    assert spread.min() >= 0.1, f"images use little of the range: std {np.round(spread, 3)}"
    p = own_probability(model, result.images)
    assert p.min() >= 0.9, f"p(target) {np.round(p, 3)}"


def test_gray_defaults_use_the_range_without_saturating(gray_model):
    """Default settings on the 64 px grayscale model: every class image stays off the ends of
    the range (the RGB recipe left 94-95% of the pixels there) and is still its class for the model."""
    r = maximize(gray_model, seed=0)
    check_gray_result(gray_model, r)
    assert r.labels == [str(i) for i in range(7)]  # no class names in this model's metadata
    again = maximize(gray_model, None, [3], seed=0)
    np.testing.assert_allclose(again.images[0], r.images[3], atol=1e-5)  # same seed, same image


@pytest.mark.slow
@pytest.mark.parametrize("seed", [1, 2])
def test_gray_defaults_other_seeds(gray_model, seed):
    check_gray_result(gray_model, maximize(gray_model, seed=seed))


@pytest.mark.slow
def test_gray_defaults_scale_with_the_side(gray_model):
    """At 128 px (the same classifier behind a 2x2 average pool) the lr shrinks by sqrt(2) and the
    images stay unsaturated; without that scaling they saturate more."""
    big = pooled(gray_model, 2)
    r = maximize(big, seed=0)
    assert r.settings["lr"] == pytest.approx(0.02 / np.sqrt(2))
    check_gray_result(big, r)
    unscaled = maximize(big, seed=0, lr=0.02)
    assert saturated(unscaled.images, unscaled.value_range).mean() > saturated(r.images, r.value_range).mean()


@pytest.mark.slow
def test_the_rgb_recipe_saturates_gray_images(gray_model):
    """Why the gray preset exists: the RGB preset (1/f**2, lr 0.1, 512 steps) on this model puts
    most pixels at the ends of the range, though the model is just as sure of them."""
    r = maximize(gray_model, seed=0, settings=default_settings(3, 64, 64))
    assert saturated(r.images, r.value_range).mean() > 0.5
    assert own_probability(gray_model, r.images).min() >= 0.9


def test_training_script_is_importable_without_a_framework():
    """tests/gray_shapes.py imports Keras only inside train(): the generator is numpy only."""
    import gray_shapes

    source = Path(gray_shapes.__file__).read_text()
    head = source.split("def train(")[0]
    assert "import keras" not in head and "import tensorflow" not in head
    x, y = make_gray_shapes(14, seed=0)
    assert x.shape == (14, 64, 64, 1) and x.dtype == np.float32 and 0 <= x.min() and x.max() <= 1
    assert np.bincount(y, minlength=7).tolist() == [2] * 7
    assert np.array_equal(make_gray_shapes(14, seed=0)[0], x)
