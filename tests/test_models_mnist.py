"""The shipped models/mnist_cnn.onnx end to end: the gradient of every class logit, from the ONNX
gradient graph on onnxruntime (float32), against two independent oracles:

- float64 central differences of the model itself (``onnxviz.fd.Float64Reference``, onnx's reference
  evaluator on a float64 copy), in random directions — needs nothing but onnx;
- TensorFlow's GradientTape on a Keras rebuild of the architecture (models/train_mnist.py) with the
  ONNX weights copied in — needs the keras extra.

Batch 10, sample i differentiated for class i (the 10 one-hot cotangents in one run).
"""

from __future__ import annotations

import numpy as np
import onnx
import pytest

from onnxviz.fd import Float64Reference
from onnxviz.gradients import GradientFunction
from onnxviz.graph import load_model
from onnxviz.rewrite import to_logits

CLASSES = 10
DIRECTIONS = 4
EPS = 1e-7  # float64 central differences: small enough that few ReLU/MaxPool switches lie within reach


@pytest.fixture(scope="module")
def logits_model(mnist_model_path) -> onnx.ModelProto:
    return to_logits(load_model(mnist_model_path))


@pytest.fixture(scope="module")
def images() -> np.ndarray:
    """Ten seeded random images in the model's input range [0, 1], NHWC."""
    return np.random.default_rng(0).random((CLASSES, 28, 28, 1), dtype=np.float32)


@pytest.fixture(scope="module")
def onnx_gradient(logits_model, images) -> tuple[np.ndarray, np.ndarray]:
    """(logits, gradient): row i is d logit_i(x_i) / d x_i."""
    fn = GradientFunction(logits_model, method="graph", providers="cpu")
    assert fn.method == "graph"
    logits, grad = fn(images, np.eye(CLASSES, dtype=np.float32))
    assert logits.shape == (CLASSES, CLASSES) and grad.shape == images.shape
    return logits, grad


def test_logits_are_the_pre_softmax_values(logits_model, mnist_model_path, images, onnx_gradient):
    import onnxruntime as ort

    session = ort.InferenceSession(str(mnist_model_path), providers=["CPUExecutionProvider"])
    probs = session.run(None, {session.get_inputs()[0].name: images})[0]
    logits = onnx_gradient[0]
    softmax = np.exp(logits - logits.max(axis=1, keepdims=True))
    np.testing.assert_allclose(softmax / softmax.sum(axis=1, keepdims=True), probs, rtol=1e-5, atol=1e-7)


def test_each_class_logit_gradient_matches_float64_central_differences(logits_model, images, onnx_gradient):
    """Directional derivatives of logit_i at x_i along random directions: float64 central
    differences vs <ONNX gradient, direction>. All samples are perturbed in one batched run."""
    logits32, grad = onnx_gradient
    reference = Float64Reference(logits_model)
    name = reference.input_names[0]
    out = reference.output_names[0]
    x = images.astype(np.float64)
    logits64 = reference({name: x}, [out])[0]
    np.testing.assert_allclose(logits32, logits64, rtol=1e-4, atol=1e-4)
    rng = np.random.default_rng(1)
    worst = 0.0
    rows = np.arange(CLASSES)
    for _ in range(DIRECTIONS):
        v = rng.standard_normal(x.shape)
        plus = reference({name: x + EPS * v}, [out])[0][rows, rows]
        minus = reference({name: x - EPS * v}, [out])[0][rows, rows]
        numeric = (plus - minus) / (2 * EPS)  # one directional derivative per sample/class
        analytic = np.einsum("nhwc,nhwc->n", grad.astype(np.float64), v)
        # the spread of <g, v> over Gaussian directions is |g|_2: the natural scale of the error
        scale = np.linalg.norm(grad.reshape(CLASSES, -1).astype(np.float64), axis=1)
        worst = max(worst, float(np.max(np.abs(numeric - analytic) / scale)))
    print(f"\nmnist_cnn: class-logit gradients vs float64 central differences: max rel error {worst:.2e}")
    assert worst <= 1e-4, f"mnist_cnn gradient vs float64 central differences: max rel error {worst:.2e}"


def keras_rebuild(model: onnx.ModelProto):
    """The architecture of models/train_mnist.py, with linear logits, weights copied from ``model``
    (Conv kernels OIHW -> HWIO; MatMul/Add weights as they are, in graph order)."""
    keras = pytest.importorskip("keras", reason="the keras extra is not installed")
    from keras import layers
    from onnx import numpy_helper

    weights = {t.name: numpy_helper.to_array(t) for t in model.graph.initializer}
    nodes = list(model.graph.node)
    convs = [(weights[n.input[1]].transpose(2, 3, 1, 0), weights[n.input[2]])
             for n in nodes if n.op_type == "Conv"]
    dense = []
    for n in nodes:
        if n.op_type == "MatMul" and n.input[1] in weights:
            bias = next(weights[i] for m in nodes if m.op_type == "Add" and n.output[0] in m.input
                        for i in m.input if i in weights)
            dense.append((weights[n.input[1]], bias))
    assert len(convs) == 2 and len(dense) == 2, "unexpected mnist_cnn architecture"
    rebuilt = keras.Sequential([
        keras.Input(shape=(28, 28, 1)),
        layers.Conv2D(32, (3, 3), activation="relu"),
        layers.Conv2D(64, (3, 3), activation="relu"),
        layers.MaxPooling2D((2, 2)),
        layers.Flatten(),
        layers.Dense(128, activation="relu"),
        layers.Dense(10),
    ])
    for layer, values in zip([l for l in rebuilt.layers if l.weights], convs + dense):
        layer.set_weights(list(values))
    return rebuilt


@pytest.mark.slow
def test_each_class_logit_gradient_matches_tensorflow(logits_model, images, onnx_gradient):
    tf = pytest.importorskip("tensorflow", reason="the keras extra is not installed")
    rebuilt = keras_rebuild(logits_model)
    logits, grad = onnx_gradient
    x = tf.constant(images)
    with tf.GradientTape() as tape:
        tape.watch(x)
        y = rebuilt(x, training=False)
        objective = tf.reduce_sum(y * tf.eye(CLASSES))
    expected = tape.gradient(objective, x).numpy()
    np.testing.assert_allclose(logits, y.numpy(), rtol=1e-4, atol=1e-5)
    rel = float(np.abs(grad - expected).max() / np.abs(expected).max())
    # per sample too: a class whose gradient is small must not hide behind the others
    per_sample = max(float(np.abs(grad[i] - expected[i]).max() / np.abs(expected[i]).max())
                     for i in range(CLASSES))
    print(f"\nmnist_cnn: class-logit gradients vs TensorFlow: max rel error {rel:.2e} "
          f"(worst sample {per_sample:.2e})")
    assert rel <= 1e-4 and per_sample <= 1e-3, (
        f"mnist_cnn gradient vs TensorFlow GradientTape: max rel error {rel:.2e}, worst sample {per_sample:.2e}")
