"""The CLI: commands print what the library returns; user errors are one line and exit code 2."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from types import SimpleNamespace

import onnx
import pytest
from typer.testing import CliRunner

import models as M
from onnxviz import cli
from onnxviz.errors import ConversionError

REPO = Path(__file__).resolve().parents[1]
from conftest import assert_user_error

runner = CliRunner()


@pytest.fixture(scope="module")
def files(tmp_path_factory) -> dict[str, Path]:
    d = tmp_path_factory.mktemp("cli")
    good = d / "keras.onnx"
    onnx.save(M.keras_named(), str(good))
    data = good.read_bytes()
    (d / "truncated.onnx").write_bytes(data[: len(data) // 2])
    (d / "random.onnx").write_bytes(os.urandom(2048))
    return {"good": good, "truncated": d / "truncated.onnx", "random": d / "random.onnx",
            "missing": d / "missing.onnx"}


def invoke(*args: str):
    return runner.invoke(cli.app, [str(a) for a in args])


def test_layers_nodes_json(files):
    result = invoke("layers", files["good"], "--nodes", "--json")
    assert result.exit_code == 0, result.output
    rows = json.loads(result.stdout)
    assert len(rows) == 10
    for key in ("index", "name", "op_type", "outputs", "shape"):
        assert key in rows[0]
    assert rows[-1]["name"] == "sequential_1/preds_1/Softmax"
    assert rows[-1]["outputs"] == ["output_0"] and rows[-1]["shape"] == ["N", 10]
    assert rows[1]["shape"] == ["N", 3, 4, 4]


def test_layers_table_and_single_layer(files):
    result = invoke("layers", files["good"], "--nodes")
    assert result.exit_code == 0
    assert "Softmax" in result.stdout and "output_0" in result.stdout
    one = json.loads(invoke("layers", files["good"], "--nodes", "--layer", "preds", "--json").stdout)
    assert [r["op_type"] for r in one] == ["Softmax"]


def test_info_json(files):
    result = invoke("info", files["good"], "--json")
    assert result.exit_code == 0, result.output
    info = json.loads(result.stdout)
    assert info["inputs"][0]["layout"] == "NHWC" and info["inputs"][0]["range"] == [0.0, 1.0]
    assert info["opset"] == 18 and info["ops"]["Conv"] == 2 and info["parameters"] > 0
    text = invoke("info", files["good"]).stdout
    assert "NHWC" in text and "keras_tensor" in text


@pytest.mark.parametrize("which,expect", [("missing", "no such file"), ("random", "not an ONNX file"),
                                          ("truncated", "not an ONNX file")])
def test_bad_model_files(files, which, expect):
    for command in ("layers", "info"):
        assert_user_error(invoke(command, files[which]), str(files[which]), expect)


def test_unknown_layer(files):
    assert_user_error(invoke("layers", files["good"], "--layer", "pred"), "'pred'", "preds")
    assert_user_error(invoke("layers", files["good"], "--layer", "42"), "out of range")


def test_convert_prints_result_and_reports_errors(files, tmp_path, monkeypatch):
    import converters

    calls = {}

    def fake_to_onnx(src, *, output=None, input_shape=None, opset=None):
        calls.update(src=src, output=output, input_shape=input_shape, opset=opset)
        return SimpleNamespace(model=M.keras_named(), format="keras", max_abs_diff=1.5e-7,
                               max_rel_diff=2e-6)

    monkeypatch.setattr(converters, "to_onnx", fake_to_onnx)
    out = tmp_path / "out.onnx"
    result = invoke("convert", "model.keras", "-o", out, "--input-shape", "1,6,6,1", "--opset", "17")
    assert result.exit_code == 0, result.output
    assert calls == {"src": "model.keras", "output": out, "input_shape": (1, 6, 6, 1), "opset": 17}
    assert "keras" in result.stdout and "1.5e-07" in result.stdout and "NHWC" in result.stdout

    assert_user_error(invoke("convert", "model.keras", "-o", out, "--input-shape", "1,x"), "--input-shape")

    def failing(*a, **k):
        raise ConversionError("cannot convert 'model.keras':\nunsupported layer Foo")

    monkeypatch.setattr(converters, "to_onnx", failing)
    assert_user_error(invoke("convert", "model.keras", "-o", out), "unsupported layer Foo")


# The demo (activation maximization on the shipped model) is tested in test_maximize.py.


def test_help_and_version():
    result = invoke("--help")
    assert result.exit_code == 0
    for name in ("layers", "info", "convert", "demo"):
        assert name in result.stdout
    result = invoke("--version")
    assert result.exit_code == 0 and result.stdout.startswith("onnxviz ")


def test_new_commands_get_the_error_handling(files):
    """A command added later with @command() inherits the one-line error behaviour."""
    from onnxviz.graph import find_layer, load_model

    @cli.command("_probe_cmd", hidden=True)
    def _probe_cmd(model: str, layer: str) -> None:
        find_layer(load_model(model), layer)

    try:
        assert_user_error(invoke("_probe_cmd", files["good"], "nope"), "no layer named 'nope'")
    finally:
        cli.app.registered_commands = [c for c in cli.app.registered_commands if c.name != "_probe_cmd"]


def test_subprocess_error_is_one_line_without_traceback(files):
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    proc = subprocess.run([sys.executable, "-m", "onnxviz.cli", "layers", str(files["truncated"])],
                          capture_output=True, text=True, env=env, cwd=REPO, timeout=120)
    assert proc.returncode == 2
    assert proc.stdout == ""
    assert proc.stderr.count("\n") == 1 and proc.stderr.startswith("error: cannot read model")
    proc = subprocess.run([sys.executable, "-m", "onnxviz.cli", "--help"], capture_output=True, text=True,
                          env=env, cwd=REPO, timeout=120)
    assert proc.returncode == 0 and "layers" in proc.stdout


# ------------------------------------------------------------------------------------ files
def test_atomic_output_leaves_no_partial_file(tmp_path):
    from onnxviz.fileio import atomic_output

    target = tmp_path / "sub" / "out.bin"
    with atomic_output(target) as tmp:
        assert tmp.parent == target.parent and tmp != target
        tmp.write_bytes(b"complete")
        assert not target.exists()
    assert target.read_bytes() == b"complete"
    umask = os.umask(0)
    os.umask(umask)
    assert target.stat().st_mode & 0o777 == 0o666 & ~umask  # as open() would make it, not mkstemp's 0600
    with pytest.raises(RuntimeError):
        with atomic_output(target) as tmp:
            tmp.write_bytes(b"half")
            raise RuntimeError("boom")
    assert target.read_bytes() == b"complete"  # the old file is untouched
    assert sorted(p.name for p in target.parent.iterdir()) == ["out.bin"]  # temp file removed


def test_save_model_roundtrip_and_external_data(tmp_path, monkeypatch):
    from onnxviz import fileio

    model = M.conv_net()
    path = fileio.save_model(model, tmp_path / "m.onnx")
    assert onnx.load(str(path)).SerializeToString() == model.SerializeToString()
    monkeypatch.setattr(fileio, "_TWO_GB", 100)  # take the > 2 GB path on a small model
    before = model.SerializeToString()
    path = fileio.save_model(model, tmp_path / "big.onnx")
    assert model.SerializeToString() == before
    assert (tmp_path / "big.onnx.data").is_file()
    from onnxviz.graph import load_model

    loaded = load_model(path)
    feeds = M.random_input(model)
    import numpy as np

    np.testing.assert_allclose(M.run(loaded, feeds)[0], M.run(model, feeds)[0])
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]
