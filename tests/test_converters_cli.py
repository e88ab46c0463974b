"""Format detection (no framework needed) and `onnxviz convert` on every format: the detected
format, the parity line, inputs/outputs; exit code 2 and no output file on bad input."""

from __future__ import annotations

import zipfile
from pathlib import Path

import numpy as np
import onnx
import pytest
from typer.testing import CliRunner

import converters
from onnxviz import cli
from onnxviz.errors import ConversionError

from conftest import assert_user_error

runner = CliRunner()


def invoke(*args) -> object:
    return runner.invoke(cli.app, [str(a) for a in args])


def assert_converted(result, fmt: str, out: Path) -> list[str]:
    assert result.exit_code == 0, result.output
    lines = result.stdout.splitlines()
    assert lines[0] == f"format: {fmt}"
    assert lines[1].startswith("parity: max abs diff ")
    assert float(lines[1].split()[4].rstrip(",")) < 1e-4
    assert any(line.startswith("input ") for line in lines) and any(line.startswith("output ") for line in lines)
    assert f"wrote{out}" in "".join(result.stdout.split())  # the console may wrap a long path
    onnx.checker.check_model(onnx.load(str(out)), full_check=True)
    assert sorted(p.name for p in out.parent.iterdir() if p.name.startswith(".")) == []  # no temp file left
    return lines


# --------------------------------------------------------------------------- detection without frameworks

def _zip(path: Path, names: list[str]) -> Path:
    with zipfile.ZipFile(path, "w") as archive:
        for name in names:
            archive.writestr(name, b"x")
    return path


def test_detection_by_suffix_and_content(tmp_path):
    """Files are recognised by suffix, and with another suffix by their first bytes."""
    hdf5 = tmp_path / "weights.bin"
    hdf5.write_bytes(b"\x89HDF\r\n\x1a\n" + b"\x00" * 64)
    tflite = tmp_path / "model.bin2"
    tflite.write_bytes(b"\x1c\x00\x00\x00TFL3" + b"\x00" * 64)
    script = _zip(tmp_path / "traced.zip", ["traced/code/__torch__/m.py", "traced/data.pkl", "traced/constants.pkl"])
    keras_zip = _zip(tmp_path / "model.zip", ["config.json", "metadata.json", "model.weights.h5"])
    saved = tmp_path / "export"
    saved.mkdir()
    (saved / "saved_model.pb").write_bytes(b"")
    expected = {hdf5: "h5", tflite: "tflite", script: "torchscript", keras_zip: "keras", saved: "savedmodel",
                tmp_path / "x.keras": "keras", tmp_path / "x.h5": "h5", tmp_path / "x.hdf5": "h5",
                tmp_path / "x.tflite": "tflite", tmp_path / "x.pt": "torchscript", tmp_path / "x.pth": "torchscript",
                tmp_path / "x.onnx": "onnx"}
    for source, name in expected.items():
        assert converters.detect_format(source).name == name, source
    assert converters.detect_format(onnx.ModelProto()).name == "onnx"


def test_unknown_inputs_list_the_supported_formats(tmp_path):
    random_file = tmp_path / "model.bin"
    random_file.write_bytes(np.random.default_rng(0).bytes(4096))
    with pytest.raises(ConversionError) as info:
        converters.detect_format(random_file)
    message = str(info.value)
    for part in ("unsupported format", "Keras 3 model object", ".keras file", ".h5 file", "SavedModel folder",
                 ".tflite file", "nn.Module", "TorchScript", ".onnx file"):
        assert part in message, part
    pickle = _zip(tmp_path / "ckpt.bin", ["archive/data.pkl", "archive/version"])
    with pytest.raises(ConversionError, match="torch.save pickle"):
        converters.detect_format(pickle)
    with pytest.raises(ConversionError, match="no such file or folder"):
        converters.to_onnx(tmp_path / "absent.bin")
    with pytest.raises(ConversionError, match="not a TensorFlow SavedModel"):
        converters.to_onnx(tmp_path)
    with pytest.raises(ConversionError, match="opset"):
        converters.to_onnx(onnx.ModelProto(), opset=3)


# --------------------------------------------------------------------------- bad input through the CLI

@pytest.mark.parametrize("kind", ["random", "truncated", "folder", "fake_saved_model", "missing"])
def test_cli_bad_input_exits_2_without_output(kind, tmp_path):
    out = tmp_path / "out" / "model.onnx"
    if kind == "random":
        src = tmp_path / "random.dat"
        src.write_bytes(np.random.default_rng(1).bytes(3000))
        expected = "unsupported format"
    elif kind == "truncated":
        graph = onnx.helper.make_graph(
            [onnx.helper.make_node("Relu", ["x"], ["y"], name="relu")], "g",
            [onnx.helper.make_tensor_value_info("x", onnx.TensorProto.FLOAT, [1, 4])],
            [onnx.helper.make_tensor_value_info("y", onnx.TensorProto.FLOAT, [1, 4])],
            [onnx.numpy_helper.from_array(np.zeros((256,), np.float32), "unused")])
        data = onnx.helper.make_model(graph, ir_version=8, opset_imports=[onnx.helper.make_opsetid("", 17)]).SerializeToString()
        src = tmp_path / "truncated.onnx"
        src.write_bytes(data[: len(data) // 2])
        expected = "truncated.onnx"
    elif kind == "folder":
        src = tmp_path / "not_a_model"
        src.mkdir()
        (src / "readme.txt").write_text("hi")
        expected = "not a TensorFlow SavedModel"
    elif kind == "fake_saved_model":
        src = tmp_path / "fake_saved"
        src.mkdir()
        (src / "saved_model.pb").write_bytes(np.random.default_rng(2).bytes(200))
        pytest.importorskip("tensorflow", reason="the keras extra is not installed")
        expected = "SavedModel"
    else:
        src = tmp_path / "absent.keras"
        expected = "no such file"
    assert_user_error(invoke("convert", src, "-o", out), expected)
    assert not out.exists()
    assert not out.parent.exists() or not list(out.parent.iterdir())


# --------------------------------------------------------------------------- every format through the CLI

@pytest.fixture(scope="module")
def keras_files(tmp_path_factory):
    keras = pytest.importorskip("keras", reason="the keras extra is not installed")
    tf = pytest.importorskip("tensorflow", reason="the keras extra is not installed")
    keras.utils.set_random_seed(7)
    layers = keras.layers
    inputs = keras.Input((12, 12, 3), name="pixels")
    x = layers.Conv2D(4, 3, activation="relu", name="conv")(inputs)
    x = layers.GlobalAveragePooling2D(name="gap")(x)
    outputs = layers.Dense(3, activation="softmax", name="preds")(x)
    model = keras.Model(inputs, outputs, name="cli_cnn")
    d = tmp_path_factory.mktemp("keras_files")
    model.save(d / "model.keras")
    model.save(d / "model.h5")
    model.export(str(d / "saved"), format="tf_saved_model", verbose=False)
    (d / "model.tflite").write_bytes(tf.lite.TFLiteConverter.from_keras_model(model).convert())
    return {"keras": d / "model.keras", "h5": d / "model.h5", "savedmodel": d / "saved", "tflite": d / "model.tflite"}


@pytest.mark.parametrize("fmt", ["keras", "h5", "savedmodel", "tflite"])
def test_cli_converts_tensorflow_formats(keras_files, fmt, tmp_path):
    out = tmp_path / f"{fmt}.onnx"
    lines = assert_converted(invoke("convert", keras_files[fmt], "-o", out, "--opset", "15"), fmt, out)
    (image,) = [line for line in lines if line.startswith("input ")]
    assert "(batch, 12, 12, 3)" in image and "layout=NHWC" in image
    assert {op.domain: op.version for op in onnx.load(str(out)).opset_import}[""] == 15


@pytest.fixture(scope="module")
def torchscript_file(tmp_path_factory) -> Path:
    torch = pytest.importorskip("torch", reason="the torch extra is not installed")
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Conv2d(3, 4, 3), torch.nn.ReLU(), torch.nn.AdaptiveAvgPool2d(1),
                                torch.nn.Flatten(), torch.nn.Linear(4, 2)).eval()
    path = tmp_path_factory.mktemp("torch") / "model.pt"
    torch.jit.save(torch.jit.script(model), str(path))
    return path


def test_cli_converts_torchscript(torchscript_file, tmp_path):
    out = tmp_path / "ts.onnx"
    assert_user_error(invoke("convert", torchscript_file, "-o", out), "input_shape")
    assert not out.exists()
    lines = assert_converted(invoke("convert", torchscript_file, "-o", out, "--input-shape", "1,3,10,10"),
                             "torchscript", out)
    (image,) = [line for line in lines if line.startswith("input ")]
    assert "(batch, 3, 10, 10)" in image and "layout=NCHW" in image
    names = [n.name for n in onnx.load(str(out)).graph.node]
    assert "0/Conv" in names and "4/Gemm" in names  # Sequential children: module paths "0", "4"


def test_cli_onnx_passthrough(torchscript_file, tmp_path):
    first = tmp_path / "first.onnx"
    converters.to_onnx(torchscript_file, input_shape=(1, 3, 8, 8), output=first)
    out = tmp_path / "copy.onnx"
    result = invoke("convert", first, "-o", out)
    assert result.exit_code == 0, result.output
    assert result.stdout.splitlines()[:2] == ["format: onnx", "parity: not checked"]
    assert onnx.load(str(out)).graph == onnx.load(str(first)).graph


# --------------------------------------------------------------------------- missing frameworks

BLOCK_FRAMEWORKS = """
import importlib.abc, sys

class Block(importlib.abc.MetaPathFinder):
    def find_spec(self, name, path=None, target=None):
        if name.split(".")[0] in {"keras", "tensorflow", "tf2onnx", "torch", "onnxscript"}:
            raise ModuleNotFoundError(f"No module named {name!r}", name=name)
        return None

sys.meta_path.insert(0, Block())
"""


def test_missing_framework_names_the_extra_for_every_file_format(tmp_path):
    """With TensorFlow/Keras and PyTorch unimportable, each file format fails with the extra to install,
    detected and checked without the framework; the CLI prints it as one line and exits 2."""
    import subprocess
    import sys

    (tmp_path / "model.h5").write_bytes(b"\x89HDF\r\n\x1a\n" + b"\x00" * 64)
    (tmp_path / "model.tflite").write_bytes(b"\x1c\x00\x00\x00TFL3" + b"\x00" * 64)
    (tmp_path / "saved").mkdir()
    (tmp_path / "saved" / "saved_model.pb").write_bytes(b"")
    (tmp_path / "model.keras").write_bytes(b"PK\x05\x06" + b"\x00" * 18)
    _zip(tmp_path / "model.pt", ["m/code/__torch__/m.py", "m/data.pkl"])
    expected = {"model.h5": "keras", "model.tflite": "keras", "saved": "keras", "model.keras": "keras",
                "model.pt": "torch"}
    code = BLOCK_FRAMEWORKS + f"""
import converters
from onnxviz.errors import MissingDependencyError
for name in {list(expected)!r}:
    try:
        converters.to_onnx({str(tmp_path)!r} + "/" + name, input_shape=(1, 3, 8, 8))
    except MissingDependencyError as e:
        print(name, "|", e)
    else:
        raise SystemExit("no error for " + name)
from onnxviz.cli import main
sys.argv = ["onnxviz", "convert", {str(tmp_path / "model.tflite")!r}, "-o", {str(tmp_path / "out.onnx")!r}]
main()
"""
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120,
                          cwd=Path(__file__).resolve().parents[1])
    assert done.returncode == 2, done.stderr
    lines = dict(line.split(" | ", 1) for line in done.stdout.splitlines())
    for name, extra in expected.items():
        assert f'pip install "onnxviz[{extra}]"' in lines[name], lines[name]
    assert done.stderr.startswith("error: ") and 'pip install "onnxviz[keras]"' in done.stderr
    assert "Traceback" not in done.stderr and not (tmp_path / "out.onnx").exists()


# --------------------------------------------------------------------------- ONNX in, another opset out

def _small_onnx(opset: int) -> onnx.ModelProto:
    rng = np.random.default_rng(3)
    graph = onnx.helper.make_graph(
        [onnx.helper.make_node("Conv", ["x", "w"], ["c"], name="conv", pads=[1, 1, 1, 1]),
         onnx.helper.make_node("Relu", ["c"], ["r"], name="relu"),
         onnx.helper.make_node("ReduceMean", ["r"], ["y"], name="mean", axes=[2, 3], keepdims=0)],
        "small", [onnx.helper.make_tensor_value_info("x", onnx.TensorProto.FLOAT, ["N", 3, 8, 8])],
        [onnx.helper.make_tensor_value_info("y", onnx.TensorProto.FLOAT, ["N", 4])],
        [onnx.numpy_helper.from_array(rng.standard_normal((4, 3, 3, 3)).astype(np.float32), "w")])
    return onnx.helper.make_model(graph, ir_version=8, opset_imports=[onnx.helper.make_opsetid("", opset)])


def test_onnx_to_another_opset_is_checked_against_the_original(tmp_path):
    source = tmp_path / "old.onnx"
    onnx.save(_small_onnx(13), str(source))
    result = converters.to_onnx(source, opset=18, output=tmp_path / "new.onnx")
    assert result.format == "onnx" and result.max_abs_diff is not None and result.max_abs_diff < 1e-5
    upgraded = onnx.load(str(tmp_path / "new.onnx"))
    assert {op.domain: op.version for op in upgraded.opset_import}[""] == 18
    assert upgraded.ir_version <= converters.MAX_IR_VERSION
    mean = next(n for n in upgraded.graph.node if n.op_type == "ReduceMean")
    assert len(mean.input) == 2  # opset 18 moved the axes to an input
    same = converters.to_onnx(source, opset=13)
    assert same.max_abs_diff is None  # nothing changed, nothing to check
    with pytest.raises(ConversionError, match="converting down"):
        converters.to_onnx(source, opset=11, output=tmp_path / "down.onnx")
    assert not (tmp_path / "down.onnx").exists()
