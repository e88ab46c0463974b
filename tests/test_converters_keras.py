"""converters.to_onnx on Keras 3: parity, kept layer names, symbolic batch, metadata, errors."""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import pytest

import converters
from converters.keras import rename_exported_nodes
from onnxviz.errors import ConversionError, OnnxvizError, ParityError

REPO = Path(__file__).resolve().parents[1]
CLASSES = ["cat", "dog", "bird", "fish", "frog"]


def session(model: onnx.ModelProto) -> ort.InferenceSession:
    return ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])


def run_onnx(model: onnx.ModelProto, x: np.ndarray) -> np.ndarray:
    sess = session(model)
    return sess.run(None, {sess.get_inputs()[0].name: x})[0]


def metadata(model: onnx.ModelProto) -> dict[str, str]:
    return {p.key: p.value for p in model.metadata_props}


def run_python(code: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-c", textwrap.dedent(code)], cwd=REPO,
                          capture_output=True, text=True, timeout=300)


# --------------------------------------------------------------------------- pure name mapping (no TF)

def test_rename_strips_scope_and_one_suffix_per_segment():
    # Measured Keras 3.15 export of layers "a", "a_1", "a_1_1" in a model "my_model".
    tree = {"img": {}, "a": {}, "a_1": {}, "a_1_1": {}, "preds": {}}
    names = ["my_model_1/a_1/convolution__6", "my_model_1/a_1/convolution", "my_model_1/a_1_2/convolution",
             "my_model_1/a_1_1_2/convolution", "my_model_1/a_1_1_2/Relu", "Transpose__32",
             "my_model_1/preds_1/MatMul", "my_model_1/preds_1/Softmax"]
    assert rename_exported_nodes(names, "my_model", tree) == [
        "a/convolution__6", "a/convolution", "a_1/convolution", "a_1_1/convolution", "a_1_1/Relu",
        "Transpose__32", "preds/MatMul", "preds/Softmax"]


def test_rename_nested_models_and_plain_convention():
    tree = {"vec": {}, "inner": {"d": {}, "e": {}}, "d": {}}
    names = ["functional_1_1/inner_1/d_1/MatMul", "functional_1_1/inner_1/e_1/MatMul", "functional_1_1/d_1/MatMul"]
    assert rename_exported_nodes(names, "functional_1", tree) == ["inner/d/MatMul", "inner/e/MatMul", "d/MatMul"]
    # An exporter that does not suffix scopes: the model scope says so, names are taken as they are.
    plain = ["m/conv_1/Conv", "m/conv/Conv", "m/Cast"]
    assert rename_exported_nodes(plain, "m", {"conv": {}, "conv_1": {}}) == ["conv_1/Conv", "conv/Conv", "m/Cast"]


def test_rename_keeps_unknown_scopes_and_names_unique():
    tree = {"dense": {}}
    names = ["seq_1/dense_1/MatMul", "dense/MatMul", "seq_1/other_1/Add", "", ""]
    got = rename_exported_nodes(names, "seq", tree)
    assert got[0] == "dense/MatMul" and got[1] == "dense/MatMul__1"  # clash resolved, first keeps its name
    assert got[2] == "seq_1/other_1/Add"  # no such layer: untouched
    assert got[3:] == ["", ""]


# --------------------------------------------------------------------------- real Keras conversions

@pytest.fixture(scope="module")
def keras():
    return pytest.importorskip("keras", reason="the keras extra is not installed")


@pytest.fixture(scope="module")
def small_cnn(keras):
    """A small CNN whose layer names include the trap "block1_conv" / "block1_conv_1"."""
    keras.utils.set_random_seed(1)
    layers = keras.layers
    inputs = keras.Input((16, 16, 3), name="pixels")
    x = layers.Conv2D(6, 3, activation="relu", bias_initializer="random_normal", name="block1_conv")(inputs)
    x = layers.Conv2D(8, 3, activation="relu", bias_initializer="random_normal", name="block1_conv_1")(x)
    x = layers.MaxPooling2D(2, name="block1_pool")(x)
    x = layers.Flatten(name="flatten")(x)
    outputs = layers.Dense(len(CLASSES), activation="softmax", bias_initializer="random_normal", name="preds")(x)
    return keras.Model(inputs, outputs, name="small_cnn")


@pytest.fixture(scope="module")
def converted(small_cnn):
    return converters.to_onnx(small_cnn, input_range=(0.0, 1.0), class_names=CLASSES, seed=0)


def test_result_and_parity(converted, small_cnn, keras):
    assert converted.format == "keras"
    assert converted.source_version.startswith(f"keras {keras.__version__} / ")
    assert 0.0 <= converted.max_abs_diff < 1e-4
    assert 0.0 <= converted.max_rel_diff < 1e-3
    onnx.checker.check_model(converted.model, full_check=True)
    # The reported numbers are those of the seeded parity input: recompute them here.
    x = converters.random_inputs(converted.model, input_range=(0.0, 1.0), seed=0)[0]
    assert x.shape == (2, 16, 16, 3) and x.min() >= 0.0 and x.max() <= 1.0
    diff = np.abs(run_onnx(converted.model, x).astype(np.float64) - np.asarray(small_cnn(x, training=False), np.float64))
    assert converted.max_abs_diff == pytest.approx(float(diff.max()), abs=1e-9)
    # And on an independent input, with predictions that are not trivial.
    y = np.random.default_rng(42).uniform(0, 1, size=(4, 16, 16, 3)).astype(np.float32)
    expected = small_cnn.predict(y, verbose=0)
    np.testing.assert_allclose(run_onnx(converted.model, y), expected, atol=1e-5, rtol=1e-4)
    assert expected.std() > 1e-3


def test_node_names_are_keras_layer_names(converted, small_cnn):
    names = [n.name for n in converted.model.graph.node]
    assert len(set(names)) == len(names)
    assert not any(n.startswith("small_cnn") for n in names), names
    layer_names = {layer.name for layer in small_cnn.layers}
    scoped = {n.split("/")[0] for n in names if "/" in n}
    assert scoped <= layer_names, scoped - layer_names
    assert {"block1_conv", "block1_conv_1", "block1_pool", "flatten", "preds"} <= scoped
    by_name = {n.name: n for n in converted.model.graph.node}
    assert by_name["preds/Softmax"].op_type == "Softmax"
    assert by_name["block1_pool/MaxPool2d"].op_type == "MaxPool"


def test_names_point_at_the_right_layer(converted, small_cnn):
    """Each Conv named after a layer carries that layer's kernel: no off-by-one from the export suffix."""
    weights = {i.name: onnx.numpy_helper.to_array(i) for i in converted.model.graph.initializer}
    convs = [n for n in converted.model.graph.node if n.op_type == "Conv"]
    assert len(convs) == 2
    for node in convs:
        layer = small_cnn.get_layer(node.name.split("/")[0])
        kernel = np.asarray(layer.kernel)  # (kh, kw, in, out) -> ONNX (out, in, kh, kw)
        np.testing.assert_array_equal(weights[node.input[1]], kernel.transpose(3, 2, 0, 1))


def test_batch_is_symbolic(converted, small_cnn):
    graph = converted.model.graph
    assert graph.input[0].type.tensor_type.shape.dim[0].dim_param == "batch"
    assert graph.output[0].type.tensor_type.shape.dim[0].dim_param == "batch"
    rng = np.random.default_rng(3)
    for batch in (1, 3):
        x = rng.uniform(0, 1, size=(batch, 16, 16, 3)).astype(np.float32)
        got = run_onnx(converted.model, x)
        assert got.shape == (batch, len(CLASSES))
        np.testing.assert_allclose(got, small_cnn.predict(x, verbose=0), atol=1e-5, rtol=1e-4)


def test_metadata(converted):
    meta = metadata(converted.model)
    assert meta[converters.META_LAYOUT] == "NHWC"
    assert json.loads(meta[converters.META_RANGE]) == [0.0, 1.0]
    assert json.loads(meta[converters.META_CLASSES]) == CLASSES
    assert meta[converters.META_SOURCE] == converted.source_version
    assert "tensorflow" in meta[converters.META_SOURCE]
    assert [op.domain for op in converted.model.opset_import] == [""]


def test_parity_error_beyond_tolerance(converted, small_cnn):
    x = converters.random_inputs(converted.model, seed=5)

    def off_by_a_bit(inputs):
        return [np.asarray(small_cnn(inputs[0], training=False)) + 1e-3]

    with pytest.raises(ParityError, match="beyond tolerance"):
        converters.parity(converted.model, off_by_a_bit, x)
    max_abs, _ = converters.parity(converted.model, off_by_a_bit, x, atol=2e-3)
    assert max_abs == pytest.approx(1e-3, abs=1e-5)


def test_keras_file_to_onnx_file(small_cnn, tmp_path):
    path = tmp_path / "model.keras"
    small_cnn.save(path)
    out = tmp_path / "out" / "model.onnx"
    out.parent.mkdir()
    result = converters.to_onnx(path, output=out, opset=17, check=True)
    assert result.format == "keras" and result.output == out
    assert result.max_abs_diff < 1e-4
    assert sorted(p.name for p in out.parent.iterdir()) == ["model.onnx"]  # no temp file left
    saved = onnx.load(str(out))
    assert {op.domain: op.version for op in saved.opset_import}[""] == 17
    assert [n.name.split("/")[0] for n in saved.graph.node if n.op_type == "Conv"] == ["block1_conv", "block1_conv_1"]
    assert metadata(saved)[converters.META_LAYOUT] == "NHWC"
    x = np.random.default_rng(7).uniform(0, 1, size=(2, 16, 16, 3)).astype(np.float32)
    np.testing.assert_allclose(run_onnx(saved, x), small_cnn.predict(x, verbose=0), atol=1e-5, rtol=1e-4)


def test_never_built_model_needs_input_shape(keras):
    layers = keras.layers
    model = keras.Sequential([layers.Dense(4, name="hidden"), layers.Dense(2, name="out")], name="mlp")
    with pytest.raises(ConversionError, match="input_shape"):
        converters.to_onnx(model)
    result = converters.to_onnx(model, input_shape=(1, 6), check=False)
    assert result.max_abs_diff is None and result.max_rel_diff is None
    assert [n.name for n in result.model.graph.node if n.op_type == "MatMul"] == ["hidden/MatMul", "out/MatMul"]
    assert converters.META_LAYOUT not in metadata(result.model)  # not an image input
    x = np.ones((3, 6), np.float32)
    np.testing.assert_allclose(run_onnx(result.model, x), model.predict(x, verbose=0), atol=1e-5)


def test_class_name_count_is_checked(converted):
    with pytest.raises(ConversionError, match="3 class names"):
        converters.to_onnx(converted.model, class_names=["a", "b", "c"])
    with pytest.raises(ConversionError, match="list of names"):
        converters.to_onnx(converted.model, class_names="abcde")


# --------------------------------------------------------------------------- formats and bad input

def test_onnx_passthrough(converted, tmp_path):
    path = tmp_path / "in.onnx"
    onnx.save(converted.model, str(path))
    result = converters.to_onnx(path, output=tmp_path / "copy.onnx")
    assert result.format == "onnx" and result.max_abs_diff is None
    assert result.source_version.startswith("tf2onnx")
    assert onnx.load(str(tmp_path / "copy.onnx")).graph == converted.model.graph


def test_unknown_format_lists_supported(tmp_path):
    path = tmp_path / "weights.pb"
    path.write_bytes(b"\x08\x01")
    with pytest.raises(ConversionError) as info:
        converters.to_onnx(path)
    message = str(info.value)
    assert "unsupported format" in message
    for expected in ("Keras 3 model object", ".keras file", ".onnx file"):
        assert expected in message
    with pytest.raises(ConversionError, match="folder"):
        converters.to_onnx(tmp_path)
    with pytest.raises(ConversionError, match="Supported"):
        converters.to_onnx(object())


def test_missing_keras_file_fails_fast(tmp_path):
    with pytest.raises(ConversionError, match="no such file"):
        converters.to_onnx(tmp_path / "absent.keras")


def test_random_bytes_onnx_leaves_no_output(tmp_path):
    source = tmp_path / "garbage.onnx"
    source.write_bytes(np.random.default_rng(0).bytes(4096))
    out = tmp_path / "out.onnx"
    with pytest.raises(OnnxvizError):
        converters.to_onnx(source, output=out)
    assert not out.exists()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["garbage.onnx"]


def test_import_converters_imports_no_framework():
    done = run_python("""
        import sys, converters, converters.keras, converters.tf, converters.pytorch
        bad = sorted(m for m in ("tensorflow", "keras", "tf2onnx", "torch", "onnxscript") if m in sys.modules)
        assert not bad, bad
    """)
    assert done.returncode == 0, done.stderr


def test_missing_framework_names_the_extra(tmp_path):
    fake = tmp_path / "model.keras"
    fake.write_bytes(b"PK\x05\x06" + b"\x00" * 18)
    done = run_python(f"""
        import importlib.abc, sys

        class Block(importlib.abc.MetaPathFinder):
            def find_spec(self, name, path=None, target=None):
                if name.split(".")[0] in {{"keras", "tensorflow", "tf2onnx"}}:
                    raise ModuleNotFoundError(f"No module named {{name!r}}", name=name)
                return None

        sys.meta_path.insert(0, Block())
        import converters
        from onnxviz.errors import MissingDependencyError
        try:
            converters.to_onnx({str(fake)!r})
        except MissingDependencyError as e:
            assert isinstance(e, ImportError)
            print(e)
        else:
            raise SystemExit("no error")
    """)
    assert done.returncode == 0, done.stderr
    assert 'pip install "onnxviz[keras]"' in done.stdout
    assert "keras" in done.stdout.split(":")[0]


# --------------------------------------------------------------------------- .h5, several inputs, channels_first

def test_h5_file(small_cnn, tmp_path):
    """A legacy .h5 file (what tf.keras / Keras 2 `model.save("x.h5")` wrote) converts like the model."""
    path = tmp_path / "legacy.h5"
    small_cnn.save(path)
    out = tmp_path / "legacy.onnx"
    result = converters.to_onnx(path, output=out, input_range=(0, 1))
    assert result.format == "h5"
    assert result.source_version.endswith("(from .h5)") and result.max_abs_diff < 1e-5
    saved = onnx.load(str(out))
    assert metadata(saved)[converters.META_SOURCE] == result.source_version
    assert metadata(saved)[converters.META_LAYOUT] == "NHWC"
    assert [n.name.split("/")[0] for n in saved.graph.node if n.op_type == "Conv"] == ["block1_conv", "block1_conv_1"]
    x = np.random.default_rng(8).uniform(0, 1, size=(3, 16, 16, 3)).astype(np.float32)
    np.testing.assert_allclose(run_onnx(saved, x), small_cnn.predict(x, verbose=0), atol=1e-5, rtol=1e-4)


def test_h5_weights_only_is_a_clear_error(small_cnn, tmp_path):
    path = tmp_path / "only.weights.h5"
    small_cnn.save_weights(path)
    out = tmp_path / "out.onnx"
    with pytest.raises(ConversionError, match="weights-only"):
        converters.to_onnx(path, output=out)
    assert not out.exists()
    fake = tmp_path / "fake.h5"
    fake.write_bytes(b"not hdf5 at all" * 10)
    with pytest.raises(ConversionError, match="not an HDF5 file"):
        converters.to_onnx(fake)


def test_multi_input_multi_output(keras):
    keras.utils.set_random_seed(4)
    layers = keras.layers
    image = keras.Input((12, 12, 3), name="image")
    extra = keras.Input((5,), name="extra")
    x = layers.Conv2D(4, 3, activation="relu", name="conv")(image)
    x = layers.GlobalAveragePooling2D(name="gap")(x)
    y = layers.Dense(4, activation="tanh", name="extra_dense")(extra)
    z = layers.Concatenate(name="concat")([x, y])
    probs = layers.Dense(3, activation="softmax", name="probs")(z)
    score = layers.Dense(1, name="score")(z)
    model = keras.Model([image, extra], [probs, score], name="two_by_two")
    result = converters.to_onnx(model)
    graph = result.model.graph
    assert [i.name for i in graph.input] == ["image", "extra"]
    assert len(graph.output) == 2 and result.max_abs_diff < 1e-5
    for value in list(graph.input) + list(graph.output):
        assert value.type.tensor_type.shape.dim[0].dim_param == "batch"
    # Only the rank-4 input is an image: the layout is recorded for it alone.
    assert json.loads(metadata(result.model)[converters.META_LAYOUT]) == {"image": "NHWC"}
    from onnxviz.graph import find_layer, input_info

    assert {i.name: i.layout for i in input_info(result.model)} == {"image": "NHWC", "extra": None}
    assert find_layer(result.model, "extra_dense").op_type == "Tanh"
    rng = np.random.default_rng(9)
    a, b = rng.uniform(0, 1, (4, 12, 12, 3)).astype(np.float32), rng.standard_normal((4, 5)).astype(np.float32)
    got = session(result.model).run(None, {"image": a, "extra": b})
    expected = model.predict([a, b], verbose=0)
    for ours, theirs in zip(got, expected):
        np.testing.assert_allclose(ours, theirs, atol=1e-5, rtol=1e-4)


def test_channels_first(keras, tmp_path):
    """TensorFlow's CPU kernels refuse NCHW convolutions; the export still works (ONNX is NCHW) and
    the parity check runs the Keras side XLA-compiled."""
    keras.utils.set_random_seed(5)
    layers = keras.layers
    inputs = keras.Input((3, 14, 14), name="chw")
    x = layers.Conv2D(6, 3, activation="relu", data_format="channels_first", name="conv1")(inputs)
    x = layers.MaxPooling2D(2, data_format="channels_first", name="pool1")(x)
    x = layers.BatchNormalization(axis=1, beta_initializer="random_normal", name="bn")(x)
    x = layers.Conv2D(8, 3, padding="same", data_format="channels_first", name="conv2")(x)
    x = layers.Flatten(data_format="channels_first", name="flatten")(x)
    outputs = layers.Dense(5, name="logits")(x)
    model = keras.Model(inputs, outputs, name="nchw_net")
    result = converters.to_onnx(model, input_range=(0, 1))
    assert result.max_abs_diff < 1e-4
    assert metadata(result.model)[converters.META_LAYOUT] == "NCHW"
    first = next(n for n in result.model.graph.node if "chw" in n.input)
    assert first.op_type == "Conv"  # no layout transpose in front: the graph is NCHW like the model
    from onnxviz.graph import input_info

    assert input_info(result.model)[0].layout == "NCHW"
    x = np.random.default_rng(10).uniform(0, 1, (2, 3, 14, 14)).astype(np.float32)
    import tensorflow as tf

    expected = tf.function(lambda t: model(t, training=False), jit_compile=True)(x).numpy()
    np.testing.assert_allclose(run_onnx(result.model, x), expected, atol=1e-5, rtol=1e-4)


def test_normalization_constants_are_not_inputs(keras):
    """A Normalization layer built with mean/variance is a captured constant in the traced function;
    tf2onnx lists it as a model input: the converter makes it an initializer again."""
    layers = keras.layers
    inputs = keras.Input((6, 6, 3), name="rgb")
    x = layers.Normalization(mean=[0.4, 0.5, 0.6], variance=[0.04, 0.09, 0.16], name="norm")(inputs)
    x = layers.Conv2D(2, 3, name="conv")(x)
    model = keras.Model(inputs, layers.Flatten(name="flat")(x), name="normalized")
    result = converters.to_onnx(model, input_range=(0, 1))
    assert [i.name for i in result.model.graph.input] == ["rgb"]
    assert result.max_abs_diff < 1e-5
    x = np.random.default_rng(12).uniform(0, 1, (2, 6, 6, 3)).astype(np.float32)
    np.testing.assert_allclose(run_onnx(result.model, x), model.predict(x, verbose=0), atol=1e-5, rtol=1e-4)


def test_zero_padding_then_max_pool(keras):
    """ZeroPadding2D + MaxPooling2D (ResNet's stem) on negative values: the border windows' maximum
    is the padded 0. onnxruntime's Pad_Fusion rewrite gets this wrong; the parity check runs
    without it and so compares what the graph means."""
    layers = keras.layers
    inputs = keras.Input((6, 6, 1), name="img")
    x = layers.Conv2D(2, 1, kernel_initializer="ones", bias_initializer=keras.initializers.Constant(-5.0),
                      name="shift")(inputs)  # all values negative for inputs in [0, 1]
    x = layers.ZeroPadding2D(1, name="pad")(x)
    outputs = layers.MaxPooling2D(3, strides=2, name="pool")(x)
    model = keras.Model(inputs, outputs, name="pad_pool")
    result = converters.to_onnx(model, input_range=(0, 1))
    assert result.max_abs_diff < 1e-6
    x = np.random.default_rng(13).uniform(0, 1, (2, 6, 6, 1)).astype(np.float32)
    expected = model.predict(x, verbose=0)
    assert (expected[:, 0, :, :] == 0).all()  # the first row of windows holds padding
    sess = ort.InferenceSession(result.model.SerializeToString(), providers=["CPUExecutionProvider"],
                                disabled_optimizers=list(converters.ORT_DISABLED_OPTIMIZERS))
    np.testing.assert_allclose(sess.run(None, {"img": x})[0], expected, atol=1e-6)


def tiny_convnext(keras, drop_path_rate: float = 0.1):
    """keras.applications' ConvNeXt (the code ConvNeXtTiny runs) at 32x32 with 8-16 channels and one
    block per stage: depthwise 7x7 Conv2D(groups=C), LayerNormalization, Dense, exact GELU, LayerScale,
    StochasticDepth, the ImageNet Normalization. The LayerScale gammas (1e-6 when fresh, which leaves
    every block an identity to 1e-6) are randomized so that the blocks count in the output."""
    convnext = pytest.importorskip("keras.src.applications.convnext", reason="Keras moved its ConvNeXt code")
    keras.utils.set_random_seed(0)
    model = convnext.ConvNeXt(depths=[1, 1, 1, 1], projection_dims=[8, 8, 16, 16], drop_path_rate=drop_path_rate,
                              name="tiny_convnext", weights=None, input_shape=(32, 32, 3), classes=5,
                              classifier_activation=None)
    rng = np.random.default_rng(0)
    for layer in model.layers:
        if isinstance(layer, convnext.LayerScale):
            layer.gamma.assign(rng.uniform(0.5, 1.5, layer.gamma.shape).astype("float32"))
    return model


def test_convnext_keras_file_converts_and_its_gradient_checks(keras, tmp_path):
    """Issue 15: a ConvNeXt .keras file failed in `onnxviz convert` with "No Op registered for
    StatefulPartitionedCall" (the grouped depthwise convolution, which Keras runs XLA-compiled) and
    then on exact GELU's Erfc. It converts to standard ops, matches Keras, and `onnxviz check` passes."""
    from typer.testing import CliRunner

    from onnxviz import cli

    from keras.src.backend.tensorflow import nn as tf_nn

    keras_conv = tf_nn.conv
    model = tiny_convnext(keras)
    kinds = {type(layer).__name__ for layer in model.layers}
    assert {"LayerScale", "StochasticDepth", "LayerNormalization", "Conv2D"} <= kinds
    path, out = tmp_path / "convnext.keras", tmp_path / "convnext.onnx"
    model.save(path)
    runner = CliRunner()
    result = runner.invoke(cli.app, ["convert", str(path), "-o", str(out), "--input-range", "0,255"])
    assert result.exit_code == 0, result.output
    assert tf_nn.conv is keras_conv  # the export-time convolution is Keras' own again
    converted = onnx.load(str(out))
    onnx.checker.check_model(converted, full_check=True)
    assert {n.domain for n in converted.graph.node} <= {""}
    ops = {n.op_type for n in converted.graph.node}
    assert "Erf" in ops and not ops & {"StatefulPartitionedCall", "PartitionedCall", "Erfc"}, ops
    groups = {n.name.split("/")[0]: next((a.i for a in n.attribute if a.name == "group"), 1)
              for n in converted.graph.node if n.op_type == "Conv"}
    assert groups["tiny_convnext_stage_0_block_0_depthwise_conv"] == 8
    assert groups["tiny_convnext_stage_3_block_0_depthwise_conv"] == 16

    x = np.random.default_rng(5).uniform(0, 255, (2, 32, 32, 3)).astype(np.float32)
    expected = np.asarray(model(x, training=False))
    got = run_onnx(converted, x)
    assert float(np.abs(got - expected).max()) < 1e-4 * max(1.0, float(np.abs(expected).max()))
    assert expected.std() > 1e-3
    # The blocks' branches (depthwise conv, GELU, LayerScale) count: with the gammas at 0 the output moves.
    scales = [layer for layer in model.layers if type(layer).__name__ == "LayerScale"]
    gammas = [np.asarray(layer.gamma) for layer in scales]
    for layer in scales:
        layer.gamma.assign(np.zeros_like(gammas[0], shape=layer.gamma.shape))
    skipped = np.asarray(model(x, training=False))
    for layer, gamma in zip(scales, gammas):
        layer.gamma.assign(gamma)
    assert float(np.abs(skipped - expected).max()) > 1e-2 * float(np.abs(expected).max())

    check = runner.invoke(cli.app, ["check", str(out), "--json"])
    assert check.exit_code == 0, check.output
    report = json.loads(check.output)
    assert report["passed"] and report["method"] == "graph" and report["max_rel_error"] < 1e-4
    assert {"Conv", "Erf"} <= set(report["ops_with_rules"])


# --------------------------------------------------------------------------- keras.applications

# (name, smallest input side allowed with weights=None)
APPLICATIONS = [("VGG16", 32), ("ResNet50V2", 32), ("MobileNetV2", 32), ("MobileNetV3Small", 32),
                ("EfficientNetB0", 32), ("DenseNet121", 32), ("InceptionV3", 75), ("Xception", 71)]


def randomize_batchnorm(model, keras, seed: int = 0) -> None:
    """Give every BatchNormalization non-trivial statistics and affine parameters: with fresh ones
    (mean 0, variance 1) several applications output logits around 1e-12, where an absolute
    tolerance proves nothing."""
    rng = np.random.default_rng(seed)
    for layer in model.layers:
        if isinstance(layer, keras.layers.BatchNormalization):
            n = layer.moving_mean.shape[0]
            if layer.gamma is not None:  # scale=False (InceptionV3) has none
                layer.gamma.assign(rng.uniform(0.5, 1.5, n).astype("float32"))
            if layer.beta is not None:
                layer.beta.assign((0.1 * rng.standard_normal(n)).astype("float32"))
            layer.moving_mean.assign((0.1 * rng.standard_normal(n)).astype("float32"))
            layer.moving_variance.assign(rng.uniform(0.5, 1.5, n).astype("float32"))


@pytest.mark.slow
@pytest.mark.parametrize("name,side", APPLICATIONS, ids=[a[0] for a in APPLICATIONS])
def test_keras_applications(keras, name, side):
    """Each architecture converts and matches TensorFlow within 1e-4 absolute on its logits
    (classifier_activation=None: a softmax over 10 classes would hide differences), with its
    BatchNorms randomized (fresh ones hide errors: ResNet50V2's Pad+MaxPool difference showed only
    then), compared in an onnxruntime session without its faulty Pad_Fusion rewrite."""
    keras.utils.set_random_seed(0)
    build = getattr(keras.applications, name)
    model = build(weights=None, input_shape=(side, side, 3), classes=10, classifier_activation=None)
    randomize_batchnorm(model, keras)
    result = converters.to_onnx(model, input_range=(0, 1))
    print(f"{name} {side}x{side}: {result.summary()}")  # shown with pytest -rP
    assert result.max_abs_diff < 1e-4, result.summary()
    assert len(result.model.graph.input) == 1  # EfficientNet's Normalization constants are not inputs
    x = np.random.default_rng(11).uniform(0, 1, (2, side, side, 3)).astype(np.float32)
    expected = np.asarray(model(x, training=False))
    sess = ort.InferenceSession(result.model.SerializeToString(), providers=["CPUExecutionProvider"],
                                disabled_optimizers=list(converters.ORT_DISABLED_OPTIMIZERS))
    got = sess.run(None, {sess.get_inputs()[0].name: x})[0]
    assert got.shape == (2, 10)
    assert float(np.abs(got - expected).max()) < 1e-4
    assert float(np.abs(got - expected).max()) < 1e-3 * float(np.abs(expected).max())
    assert expected.std() > 1e-4  # not a degenerate output (VGG16, without BatchNorm, is the smallest)
    assert metadata(result.model)[converters.META_LAYOUT] == "NHWC"
    names = {n.name.split("/")[0] for n in result.model.graph.node}
    assert "predictions" in names or "logits" in names or "Logits" in names  # the classifier keeps its name
