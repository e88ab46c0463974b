"""Model-level proof on Keras: the ONNX gradient graph of real architectures (keras.applications,
``weights=None``, seeded, 32x32 inputs), converted with ``converters.to_onnx``, against TensorFlow's
GradientTape on the same Keras model.

Two targets per model, each at batch 2 on a seeded random input, float32 on both sides:
- a class logit: the final softmax is stripped from the ONNX model with ``to_logits``; on the Keras
  side the ``predictions`` layer's activation is switched to linear after the conversion;
- the spatial mean of one channel of a convolution in the middle of the network (the ONNX tensor of
  the Keras layer, found with ``find_layer``; tf2onnx keeps NCHW inside the graph, Keras is NHWC, so
  the layout is read from the shapes and the cotangent built to match).

The oracle is GradientTape on a float64 copy of the Keras model (same weights; the dtype policy set
to float64); the ONNX side runs in float32 on onnxruntime. Bar: max |onnx - tf| / max |tf| <= 1e-4,
ten times tighter than issue 3's 1e-3. TF's own float32 gradient is also computed and its difference
printed, not asserted: it is the less precise of the two (measured here: MobileNetV2 TF float32 is
7.6e-4 away from TF float64 where onnxviz float32 is 1.4e-6 away; ResNet50 at 224x224: 6.8e-3 vs
5e-7), and it moves with TF's thread count. Run with ``-s`` to see the errors; the module prints a
summary table at the end.
"""

from __future__ import annotations

import os
from dataclasses import dataclass

import numpy as np
import onnx
import pytest

from onnxviz.gradients import GradientFunction
from onnxviz.graph import find_layer
from onnxviz.rewrite import to_logits

pytestmark = pytest.mark.slow

TOLERANCE = 1e-4  # vs TF float64 (issue 3 asks for 1e-3)
SIZE = 32  # the smallest input keras.applications accepts: keeps the module in minutes on 2 cores
BATCH = 2
CLASSES = 10
TARGET_CLASS = 3
CHANNEL = 5
SEED = 0


@dataclass(frozen=True)
class Case:
    name: str  # keras.applications constructor
    layer: str  # a convolution in the middle of the network (see the ONNX node it maps to below)
    input_range: tuple[float, float]  # the model's own input convention


CASES = [
    # block3_conv2: Conv2D with its ReLU -> ONNX Conv + Relu (find_layer gives the Relu)
    Case("VGG16", "block3_conv2", (-1.0, 1.0)),
    # tf2onnx folds each BatchNormalization into the Conv before it: the conv's own output is gone,
    # the BN layer's output is that of an ONNX Conv node.
    Case("ResNet50", "conv3_block2_2_bn", (-1.0, 1.0)),
    Case("MobileNetV2", "block_6_expand_BN", (-1.0, 1.0)),
    # DenseNet is pre-activation (BN-ReLU-Conv): the 3x3 conv output is an ONNX Conv as it is
    Case("DenseNet121", "conv3_block6_2_conv", (-1.0, 1.0)),
    # EfficientNet rescales 0..255 inputs itself (Rescaling + Normalization layers)
    Case("EfficientNetB0", "block4a_expand_bn", (0.0, 255.0)),
]

SUMMARY: dict[str, dict[str, float]] = {}


def rel_error(got: np.ndarray, expected: np.ndarray) -> float:
    return float(np.abs(got.astype(np.float64) - expected).max() / max(np.abs(expected).max(), 1e-30))


@pytest.fixture(scope="module")
def keras():
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    pytest.importorskip("tensorflow", reason="the keras extra is not installed")
    return pytest.importorskip("keras", reason="the keras extra is not installed")


@pytest.fixture(scope="module", autouse=True)
def summary():
    yield
    if SUMMARY:
        print("\n\nkeras.applications (weights=None, 32x32, batch 2): max relative error of the onnxviz "
              "float32 input gradient vs TF GradientTape float64 (vs TF float32 in brackets)")
        print(f"{'model':<16}{'logit':>24}{'channel mean':>24}   layer")
        for case in CASES:
            if case.name not in SUMMARY:
                continue
            row = SUMMARY[case.name]
            cells = [f"{row[k]:.2e} ({row[k + '32']:.2e})" if k in row else "-" for k in ("logit", "channel")]
            print(f"{case.name:<16}{cells[0]:>24}{cells[1]:>24}   {case.layer}")


def drop_dangling_inputs(model: onnx.ModelProto) -> onnx.ModelProto:
    """Work around a converter bug (reported): Keras' ONNX export of a model with an adapt-style
    ``Normalization`` layer (EfficientNet) declares the mean and variance that layer captures as
    extra graph inputs, which no node reads (the values are folded into the graph). Drop them."""
    read = {i for n in model.graph.node for i in n.input}
    dangling = [i for i in model.graph.input[1:] if i.name not in read]
    if not dangling:
        return model
    cleaned = onnx.ModelProto()
    cleaned.CopyFrom(model)
    for value in dangling:
        cleaned.graph.input.remove(value)
    onnx.checker.check_model(cleaned, full_check=True)
    return cleaned


@dataclass
class Converted:
    case: Case
    keras_model: object  # float32, converted
    keras_model64: object  # the same weights, float64: the oracle
    onnx_model: onnx.ModelProto
    x: np.ndarray


@pytest.fixture(scope="module", params=CASES, ids=[c.name for c in CASES])
def converted(request, keras, tmp_path_factory) -> Converted:
    import converters

    case: Case = request.param
    keras.utils.set_random_seed(SEED)
    model = getattr(keras.applications, case.name)(weights=None, input_shape=(SIZE, SIZE, 3), classes=CLASSES)
    lo, hi = case.input_range
    x = np.random.default_rng(SEED).uniform(lo, hi, (BATCH, SIZE, SIZE, 3)).astype(np.float32)
    # EfficientNet's export carries unused extra inputs (converter bug): to_onnx's parity check
    # cannot run; the logits test below compares the outputs instead.
    dangling_inputs = case.name.startswith("EfficientNet")
    result = converters.to_onnx(model, check=not dangling_inputs, input_range=case.input_range)
    onnx_model = drop_dangling_inputs(result.model)
    # TF side: the classifier's softmax switched off (after the export), and a float64 copy
    model.get_layer("predictions").activation = keras.activations.linear
    weights = tmp_path_factory.mktemp("weights") / f"{case.name}.weights.h5"
    model.save_weights(str(weights))
    policy = keras.config.dtype_policy()
    keras.config.set_dtype_policy("float64")
    try:
        model64 = getattr(keras.applications, case.name)(weights=None, input_shape=(SIZE, SIZE, 3), classes=CLASSES)
    finally:
        keras.config.set_dtype_policy(policy)
    model64.load_weights(str(weights))
    model64.get_layer("predictions").activation = keras.activations.linear
    return Converted(case, model, model64, onnx_model, x)


def tf_input_gradient(model, x: np.ndarray, cotangent: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(model(x), d sum(cotangent * model(x)) / dx) with tf.GradientTape, inference mode, in the
    model's dtype."""
    import tensorflow as tf

    dtype = model.inputs[0].dtype  # a functional wrapper's own policy can differ from its layers'
    xt = tf.constant(x.astype(dtype))
    with tf.GradientTape() as tape:
        tape.watch(xt)
        y = model(xt, training=False)
        objective = tf.reduce_sum(y * tf.constant(cotangent.astype(y.dtype.as_numpy_dtype)))
    return y.numpy(), tape.gradient(objective, xt).numpy()


def test_logit_gradient_matches_tensorflow(converted):
    case = converted.case
    logits_model = to_logits(converted.onnx_model)
    fn = GradientFunction(logits_model, method="graph", providers="cpu")
    cotangent = np.zeros((BATCH, CLASSES), np.float32)
    cotangent[:, TARGET_CLASS] = 1.0
    logits, grad = fn(converted.x, cotangent)
    tf_logits, tf_grad = tf_input_gradient(converted.keras_model64, converted.x, cotangent)
    _, tf_grad32 = tf_input_gradient(converted.keras_model, converted.x, cotangent)

    forward_error = rel_error(logits, tf_logits)
    assert forward_error <= 1e-4, f"{case.name}: ONNX logits differ from Keras' (rel {forward_error:.2e})"
    assert np.abs(tf_grad).max() > 0, f"{case.name}: TF gradient is zero (dead network: test says nothing)"
    error, error32 = rel_error(grad, tf_grad), rel_error(grad, tf_grad32)
    SUMMARY.setdefault(case.name, {}).update(logit=error, logit32=error32)
    print(f"\n{case.name}: logit {TARGET_CLASS} input gradient vs TF float64: max rel error {error:.2e} "
          f"(vs TF float32: {error32:.2e})")
    assert error <= TOLERANCE, (f"{case.name}: logit gradient vs tf.GradientTape float64: max rel error {error:.2e} "
                                f"(vs TF float32: {error32:.2e})")


def test_intermediate_channel_mean_gradient_matches_tensorflow(converted, keras):
    case = converted.case
    layer = find_layer(converted.onnx_model, case.layer)
    assert layer.op_type in ("Conv", "Relu"), f"{case.layer} maps to a {layer.op_type} node"
    fn = GradientFunction(converted.onnx_model, of=layer.output, method="graph", providers="cpu")

    sub_model = keras.Model(converted.keras_model64.input, converted.keras_model64.get_layer(case.layer).output)
    sub_model32 = keras.Model(converted.keras_model.input, converted.keras_model.get_layer(case.layer).output)
    nhwc = (BATCH,) + tuple(int(d) for d in sub_model.output.shape[1:])
    onnx_shape = fn.forward(converted.x).shape
    if onnx_shape == nhwc:
        layout, to_nhwc = "NHWC", (0, 1, 2, 3)
    else:
        assert onnx_shape == (nhwc[0], nhwc[3], nhwc[1], nhwc[2]), f"{case.name}: {onnx_shape} vs Keras {nhwc}"
        layout, to_nhwc = "NCHW", (0, 2, 3, 1)
    height, width = nhwc[1], nhwc[2]
    tf_cotangent = np.zeros(nhwc, np.float32)
    tf_cotangent[..., CHANNEL] = 1.0 / (height * width)  # d(spatial mean of the channel)
    onnx_cotangent = np.ascontiguousarray(tf_cotangent.transpose(np.argsort(to_nhwc)))
    assert onnx_cotangent.shape == onnx_shape

    activation, grad = fn(converted.x, onnx_cotangent)
    tf_activation, tf_grad = tf_input_gradient(sub_model, converted.x, tf_cotangent)
    _, tf_grad32 = tf_input_gradient(sub_model32, converted.x, tf_cotangent)
    forward_error = rel_error(activation.transpose(to_nhwc), tf_activation)
    assert forward_error <= 1e-4, f"{case.name}: ONNX {layer.output} ({layout}) differs from Keras' {case.layer}"
    assert np.abs(tf_grad).max() > 0, f"{case.name}: TF gradient is zero (dead channel: test says nothing)"
    error, error32 = rel_error(grad, tf_grad), rel_error(grad, tf_grad32)
    SUMMARY.setdefault(case.name, {}).update(channel=error, channel32=error32)
    print(f"\n{case.name}: mean of channel {CHANNEL} of {case.layer} ({layout} in ONNX) input gradient vs TF "
          f"float64: max rel error {error:.2e} (vs TF float32: {error32:.2e})")
    assert error <= TOLERANCE, (
        f"{case.name}: channel-mean gradient of {case.layer} vs tf.GradientTape float64: max rel error {error:.2e} "
        f"(vs TF float32: {error32:.2e})")
