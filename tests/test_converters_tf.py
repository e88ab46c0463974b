"""converters.to_onnx on TensorFlow files: SavedModel folders and .tflite files (through tf2onnx)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import pytest

import converters
from onnxviz.errors import ConversionError
from onnxviz.graph import find_layer, input_info

keras = pytest.importorskip("keras", reason="the keras extra is not installed")
tf = pytest.importorskip("tensorflow", reason="the keras extra is not installed")
pytest.importorskip("tf2onnx", reason="the keras extra is not installed")


def session(model: onnx.ModelProto) -> ort.InferenceSession:
    return ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])


def metadata(model: onnx.ModelProto) -> dict[str, str]:
    return {p.key: p.value for p in model.metadata_props}


def dims(value: onnx.ValueInfoProto) -> list:
    return [d.dim_param or d.dim_value for d in value.type.tensor_type.shape.dim]


@pytest.fixture(scope="module")
def small_cnn():
    keras.utils.set_random_seed(3)
    layers = keras.layers
    inputs = keras.Input((20, 20, 3), name="pixels")
    x = layers.Conv2D(6, 3, activation="relu", bias_initializer="random_normal", name="conv_a")(inputs)
    x = layers.MaxPooling2D(2, name="pool")(x)
    x = layers.Conv2D(8, 3, activation="relu", bias_initializer="random_normal", name="conv_b")(x)
    x = layers.GlobalAveragePooling2D(name="gap")(x)
    outputs = layers.Dense(4, activation="softmax", bias_initializer="random_normal", name="preds")(x)
    return keras.Model(inputs, outputs, name="small_cnn")


def random_images(batch: int, seed: int) -> np.ndarray:
    return np.random.default_rng(seed).uniform(0, 1, (batch, 20, 20, 3)).astype(np.float32)


# --------------------------------------------------------------------------- SavedModel

@pytest.fixture(scope="module")
def saved_model(small_cnn, tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("tf") / "saved"
    small_cnn.export(str(path), format="tf_saved_model", verbose=False)
    return path


def test_saved_model(saved_model, small_cnn, tmp_path):
    out = tmp_path / "model.onnx"
    result = converters.to_onnx(saved_model, output=out, input_range=(0, 1))
    assert result.format == "savedmodel"
    assert result.source_version == f"tensorflow {tf.__version__} (SavedModel)"
    assert 0 <= result.max_abs_diff < 1e-5
    model = onnx.load(str(out))
    (image,), (probs,) = model.graph.input, model.graph.output
    assert image.name == "pixels" and dims(image) == ["batch", 20, 20, 3]  # the signature's names
    assert probs.name == "output_0" and dims(probs) == ["batch", 4]
    meta = metadata(model)
    assert meta[converters.META_LAYOUT] == "NHWC" and json.loads(meta[converters.META_RANGE]) == [0.0, 1.0]
    assert meta[converters.META_SOURCE] == result.source_version
    assert [op.domain for op in model.opset_import] == [""]
    names = [n.name for n in model.graph.node]
    assert not any(n.startswith("StatefulPartitionedCall/") for n in names), names  # wrapper scope dropped
    assert find_layer(model, "conv_b").op_type in ("Relu", "Conv")
    assert find_layer(model, "preds").op_type == "Softmax"
    x = random_images(3, 1)
    np.testing.assert_allclose(session(model).run(None, {"pixels": x})[0], small_cnn.predict(x, verbose=0),
                               atol=1e-5, rtol=1e-4)


class TwoHeads(tf.Module):
    """A plain tf.Module (no Keras) with two inputs, free spatial dims, and a dict of two outputs."""

    def __init__(self):
        super().__init__()
        rng = np.random.default_rng(0)
        self.kernel = tf.Variable(rng.standard_normal((3, 3, 3, 4)).astype(np.float32))
        self.dense = tf.Variable(rng.standard_normal((2, 4)).astype(np.float32))

    @tf.function(input_signature=[tf.TensorSpec((None, None, None, 3), tf.float32, name="image"),
                                  tf.TensorSpec((None, 2), tf.float32, name="extra")])
    def __call__(self, image, extra):
        features = tf.reduce_mean(tf.nn.relu(tf.nn.conv2d(image, self.kernel, 1, "SAME")), axis=[1, 2])
        return {"features": features, "score": tf.reduce_sum(features + extra @ self.dense, axis=1, keepdims=True)}


def test_saved_model_two_inputs_two_outputs_free_dims(tmp_path):
    module = TwoHeads()
    path = tmp_path / "two_heads"
    tf.saved_model.save(module, str(path), signatures=module.__call__)
    # Inputs come in the signature's (sorted) order: extra, image. Free spatial dims need a shape.
    with pytest.raises(ConversionError, match="free dimension"):
        converters.to_onnx(path)
    with pytest.raises(ConversionError, match="in order: extra"):
        converters.to_onnx(path, input_shape=[(1, 12, 10, 3), (1, 2)])
    result = converters.to_onnx(path, input_shape=[(1, 2), (1, 12, 10, 3)])
    model = result.model
    assert result.max_abs_diff < 1e-4
    assert [(v.name, dims(v)) for v in model.graph.input] == [("extra", ["batch", 2]), ("image", ["batch", 12, 10, 3])]
    assert [(v.name, dims(v)) for v in model.graph.output] == [("features", ["batch", 4]), ("score", ["batch", 1])]
    assert json.loads(metadata(model)[converters.META_LAYOUT]) == {"image": "NHWC"}
    assert {i.name: i.layout for i in input_info(model)} == {"extra": None, "image": "NHWC"}
    rng = np.random.default_rng(2)
    image, extra = rng.uniform(0, 1, (2, 12, 10, 3)).astype(np.float32), rng.standard_normal((2, 2)).astype(np.float32)
    got = session(model).run(None, {"image": image, "extra": extra})
    expected = module(tf.constant(image), tf.constant(extra))
    np.testing.assert_allclose(got[0], expected["features"].numpy(), atol=1e-5, rtol=1e-4)
    np.testing.assert_allclose(got[1], expected["score"].numpy(), atol=1e-4, rtol=1e-4)


def test_folder_that_is_not_a_saved_model(tmp_path):
    (tmp_path / "variables").mkdir()
    (tmp_path / "notes.txt").write_text("hello")
    with pytest.raises(ConversionError, match="not a TensorFlow SavedModel"):
        converters.to_onnx(tmp_path)
    (tmp_path / "saved_model.pb").write_bytes(np.random.default_rng(0).bytes(300))
    with pytest.raises(ConversionError, match="SavedModel"):
        converters.to_onnx(tmp_path, output=tmp_path / "out.onnx")
    assert not (tmp_path / "out.onnx").exists()


# --------------------------------------------------------------------------- TFLite

@pytest.fixture(scope="module")
def tflite_file(small_cnn, tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("tflite") / "small_cnn.tflite"
    converter = tf.lite.TFLiteConverter.from_keras_model(small_cnn)
    path.write_bytes(converter.convert())
    return path


def test_tflite(tflite_file, small_cnn, tmp_path):
    out = tmp_path / "from_tflite.onnx"
    result = converters.to_onnx(tflite_file, output=out, input_range=(0, 1), class_names=["a", "b", "c", "d"])
    assert result.format == "tflite"
    assert result.source_version == f"tensorflow {tf.__version__} (TFLite)"
    assert 0 <= result.max_abs_diff < 1e-5
    model = onnx.load(str(out))
    (image,), (probs,) = model.graph.input, model.graph.output
    assert dims(image) == ["batch", 20, 20, 3] and dims(probs) == ["batch", 4]
    meta = metadata(model)
    assert meta[converters.META_LAYOUT] == "NHWC"
    assert json.loads(meta[converters.META_CLASSES]) == ["a", "b", "c", "d"]
    assert [op.domain for op in model.opset_import] == [""]
    ops = {n.op_type for n in model.graph.node}
    assert {"Conv", "MaxPool", "Softmax"} <= ops
    x = random_images(5, 4)
    np.testing.assert_allclose(session(model).run(None, {image.name: x})[0], small_cnn.predict(x, verbose=0),
                               atol=1e-5, rtol=1e-4)


def test_tflite_with_fixed_batch(tmp_path):
    """A TFLite model made for batch 1 keeps its fixed batch (it has no free one to preserve)."""
    keras.utils.set_random_seed(6)
    inputs = keras.Input((8, 8, 2), batch_size=1, name="fixed")
    x = keras.layers.Conv2D(3, 3, activation="relu", name="conv")(inputs)
    outputs = keras.layers.Dense(2, name="dense")(keras.layers.Flatten(name="flatten")(x))
    model = keras.Model(inputs, outputs)
    path = tmp_path / "fixed.tflite"
    path.write_bytes(tf.lite.TFLiteConverter.from_keras_model(model).convert())
    result = converters.to_onnx(path)
    assert dims(result.model.graph.input[0]) == [1, 8, 8, 2]
    assert dims(result.model.graph.output[0]) == [1, 2]
    assert result.max_abs_diff < 1e-5


def test_not_a_tflite_file(tmp_path):
    path = tmp_path / "model.tflite"
    path.write_bytes(np.random.default_rng(0).bytes(512))
    with pytest.raises(ConversionError, match="not a TFLite model"):
        converters.to_onnx(path, output=tmp_path / "out.onnx")
    assert not (tmp_path / "out.onnx").exists()
