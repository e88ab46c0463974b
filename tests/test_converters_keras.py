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
        import sys, converters, converters.keras
        bad = sorted(m for m in ("tensorflow", "keras", "tf2onnx", "torch") if m in sys.modules)
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
