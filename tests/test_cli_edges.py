"""Edges of the command line found by a probe (issue 15): hostile text in models, odd destinations,
signals, failing disks, bad numbers and sizes. Each ends as one ``error:`` line and exit code 2 (or
130 / 143 for Ctrl-C / SIGTERM), never a traceback, and never with a partial or wrong output file."""

from __future__ import annotations

import errno
import json
import os
import signal
import struct
import subprocess
import sys
import zlib
from pathlib import Path

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper
from PIL import Image
from typer.testing import CliRunner

import models as M
from conftest import assert_user_error
from onnxviz import cli, fileio
from onnxviz.errors import OnnxvizError

REPO = Path(__file__).resolve().parents[1]
runner = CliRunner()


def invoke(*args):
    return runner.invoke(cli.app, [str(a) for a in args])


def files_in(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.iterdir())


@pytest.fixture(scope="module")
def corpus(tmp_path_factory) -> dict[str, Path]:
    """Small models and images: a static 8x8 CNN, one with two image inputs, one with a fully
    dynamic input, one with escape sequences and rich markup in its names, a PNG and a NaN array."""
    d = tmp_path_factory.mktemp("edges")
    out = {"model": d / "m.onnx", "two": d / "two.onnx", "dynamic": d / "dyn.onnx", "evil": d / "evil.onnx",
           "image": d / "img.png", "nan": d / "nan.npy"}
    onnx.save(M.conv_net(batch=1), str(out["model"]))
    two = M.conv_net(batch=1)
    two.graph.input.append(helper.make_tensor_value_info("x2", TensorProto.FLOAT, [1, 1, 8, 8]))
    two.graph.node.insert(0, helper.make_node("Add", ["x", "x2"], ["xs"], name="add"))
    two.graph.node[1].input[0] = "xs"
    onnx.save(two, str(out["two"]))
    dyn = M.conv_net()
    for axis in (2, 3):
        dim = dyn.graph.input[0].type.tensor_type.shape.dim[axis]
        dim.ClearField("dim_value")
        dim.dim_param = "HW"
    onnx.save(dyn, str(out["dynamic"]))
    evil = M.conv_net(batch=1)
    for node in evil.graph.node:
        if node.name == "conv":
            node.name = "conv\x1b]0;PWNED\x07\x1b[2J[/i]2"
        node.output[:] = ["probs[/x]" if o == "probs" else o for o in node.output]
    evil.graph.output[0].name = "probs[/x]"
    helper.set_model_props(evil, {"note": "\x1b[31mred\x1b[0m [/x]"})
    onnx.save(evil, str(out["evil"]))
    Image.fromarray((np.random.default_rng(0).random((8, 8)) * 255).astype(np.uint8)).save(out["image"])
    np.save(out["nan"], np.full((1, 1, 8, 8), np.nan, np.float32))
    return out


# ------------------------------------------------------------------ 1, 6: text from the model file
def test_escape_sequences_from_the_model_are_written_out(corpus):
    for command in ("info", "layers"):
        result = invoke(command, corpus["evil"])
        assert result.exit_code == 0, result.output
        assert "\x1b" not in result.stdout and "\x07" not in result.stdout
        assert "\\x1b" in result.stdout
    assert "\\x1b[31mred\\x1b[0m [/x]" in invoke("info", corpus["evil"]).stdout  # metadata, markup kept literal
    result = invoke("maximize", corpus["model"], "-l", "no\x1b[2Jsuch", "-o", "x.png")  # echoed in the error line
    assert_user_error(result, "\\x1b[2J")
    assert "\x1b" not in result.stderr


def test_rich_markup_in_names_and_paths_is_plain_text(corpus, tmp_path):
    folder = tmp_path / "a["
    folder.mkdir()
    path = folder / "x].onnx"  # the file a[/x].onnx
    path.write_bytes(corpus["evil"].read_bytes())
    for args in (("info", path), ("layers", path), ("check", path),
                 ("maximize", path, "--steps", "2", "-o", tmp_path / "m[/b].png"),
                 ("grad", path, "-o", tmp_path / "g[/x].onnx"),
                 ("saliency", path, corpus["image"], "-o", tmp_path / "s.png")):
        result = invoke(*args)
        assert result.exit_code == 0, (args, result.output)
        assert "Traceback" not in result.output
    assert "probs[/x]" in invoke("info", path).stdout


# ------------------------------------------------------------------ 2, 18: where a file may go
def test_a_device_or_pipe_is_refused_and_left_alone(corpus, tmp_path):
    fifo = tmp_path / "pipe"
    os.mkfifo(fifo)
    assert_user_error(invoke("grad", corpus["model"], "-o", fifo), "not a regular file")
    assert fifo.is_fifo()
    with pytest.raises(OnnxvizError, match="not a regular file"):
        fileio.write_files([(os.devnull, b"x")])
    assert Path(os.devnull).is_char_device()


def test_a_file_in_the_way_is_not_a_directory(corpus, tmp_path):
    (tmp_path / "plainfile").write_text("x")
    assert_user_error(invoke("maximize", corpus["model"], "--steps", "2", "-o", tmp_path / "plainfile" / "x.png"),
                      "plainfile' is not a directory")  # not "File exists"
    assert files_in(tmp_path) == ["plainfile"]


# ------------------------------------------------------------------ 4, 5, 7: all or nothing, right format
def _full_disk_at(monkeypatch, suffix: str) -> None:
    """Writing any temp file of a name ending in ``suffix`` fails with ENOSPC."""
    real = fileio._write

    def write(tmp, data):
        if f"{suffix}." in tmp.name:  # .NAME.npy.XXXX.tmp
            with open(tmp, "wb") as f:
                f.write(data[: len(data) // 2])
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        real(tmp, data)

    monkeypatch.setattr(fileio, "_write", write)


def test_several_outputs_are_written_all_or_none(corpus, tmp_path, monkeypatch):
    old = tmp_path / "a.png"
    old.write_bytes(b"old picture")
    _full_disk_at(monkeypatch, ".npy")
    assert_user_error(invoke("saliency", corpus["model"], corpus["image"], "-o", old, "--save-npy", tmp_path / "a.npy"),
                      "a.npy", "No space left on device")
    _full_disk_at(monkeypatch, ".gif")
    assert_user_error(invoke("maximize", corpus["model"], "--steps", "2", "-o", old, "--gif", tmp_path / "a.gif"),
                      "a.gif", "No space left on device")
    assert old.read_bytes() == b"old picture" and files_in(tmp_path) == ["a.png"]  # no temp file either


def test_disk_full_is_one_line_for_every_writer(corpus, tmp_path, monkeypatch):
    _full_disk_at(monkeypatch, "")
    for args in (("maximize", corpus["model"], "--steps", "2", "-o", tmp_path / "m.png"),
                 ("report", corpus["model"], "--steps", "2", "--units-per-layer", "1", "-o", tmp_path / "r.html"),
                 ("grad", corpus["model"], "-o", tmp_path / "g.onnx"),
                 ("saliency", corpus["model"], corpus["image"], "-o", tmp_path / "s.png")):
        assert_user_error(invoke(*args), "cannot write", "No space left on device")
    assert files_in(tmp_path) == []


def test_outputs_get_the_format_their_name_says(corpus, tmp_path):
    jpg = tmp_path / "x.jpg"
    assert invoke("maximize", corpus["model"], "--steps", "2", "-o", jpg).exit_code == 0
    assert jpg.read_bytes()[:2] == b"\xff\xd8" and Image.open(jpg).format == "JPEG"
    assert_user_error(invoke("maximize", corpus["model"], "--steps", "2", "-o", tmp_path / "x.bmp"), ".png or .jpg")
    assert_user_error(invoke("maximize", corpus["model"], "--steps", "2", "-o", tmp_path / "a.png", "--gif",
                             tmp_path / "a.png"), "a.png' twice")
    assert_user_error(invoke("maximize", corpus["model"], "--steps", "2", "--gif", tmp_path / "a.png"), "end in .gif")
    assert_user_error(invoke("report", corpus["model"], "-o", tmp_path / "r.png"), "end in .html")
    assert_user_error(invoke("saliency", corpus["model"], corpus["image"], "-o", tmp_path / "s.png", "--save-npy",
                             tmp_path / "s.txt"), "end in .npy")
    (tmp_path / "same.gif").symlink_to(tmp_path / "b.png")  # two names, one file
    assert_user_error(invoke("maximize", corpus["model"], "--steps", "2", "-o", tmp_path / "b.png", "--gif",
                             tmp_path / "same.gif"), "twice")
    assert files_in(tmp_path) == ["same.gif", "x.jpg"]


# ------------------------------------------------------------------ 8, 9, 10: models and sizes
def test_a_model_with_two_inputs_is_one_clear_error(corpus, tmp_path):
    for args in (("maximize", corpus["two"], "--steps", "2", "-o", tmp_path / "t.png"), ("check", corpus["two"]),
                 ("saliency", corpus["two"], corpus["image"], "-o", tmp_path / "s.png"),
                 ("occlusion", corpus["two"], corpus["image"], "-o", tmp_path / "o.png")):
        assert_user_error(invoke(*args), "2 inputs", "'x2'")


def test_an_input_shape_that_does_not_fit_a_static_model(corpus, tmp_path):
    for args in (("maximize", corpus["model"], "--steps", "2", "-o", tmp_path / "w.png"), ("check", corpus["model"])):
        assert_user_error(invoke(*args, "--input-shape", "1,1,9,9"), "--input-shape 1,1,9,9", "axis 2 is fixed at 8")
        assert_user_error(invoke(*args, "--input-shape", "8,8"), "rank")


def test_sizes_are_bounded_before_anything_is_allocated(corpus, tmp_path):
    from onnxviz.maximize import parse_units

    out = tmp_path / "w.png"
    assert_user_error(invoke("maximize", corpus["model"], "--units", "0-99999999999", "-o", out), "out of range")
    with pytest.raises(OnnxvizError, match="too many units"):
        parse_units("0-30000000")  # no layer size known: bounded all the same, without building the range
    assert_user_error(invoke("maximize", corpus["dynamic"], "--input-shape", "1,1,100000,100000", "-o", out),
                      "10,000,000,000 values")
    fifo = tmp_path / "model.onnx"
    os.mkfifo(fifo)  # would block, like /dev/zero would read forever
    assert_user_error(invoke("info", fifo), "not a regular file")
    if os.path.exists("/dev/zero"):
        assert_user_error(invoke("info", "/dev/zero"), "not a regular file")
    assert not out.exists()


# ------------------------------------------------------------------ 11, 12, 14, 15: bad values
def _png_header_only(width: int, height: int) -> bytes:
    """A tiny PNG whose header claims ``width`` x ``height`` grayscale pixels."""
    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    return (b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0))
            + chunk(b"IDAT", zlib.compress(b"\x00" * 64)) + chunk(b"IEND", b""))


def test_bad_values_are_refused(corpus, tmp_path):
    out = tmp_path / "s.png"
    image = corpus["image"]
    assert_user_error(invoke("saliency", corpus["model"], image, "-o", out, "--cmap", "bogus"), "colormap 'bogus'")
    bomb = tmp_path / "bomb.png"
    bomb.write_bytes(_png_header_only(20000, 20000))
    assert_user_error(invoke("saliency", corpus["model"], bomb, "-o", out), "bomb.png", "too large")
    assert_user_error(invoke("saliency", corpus["model"], corpus["nan"], "-o", out), "NaN")
    for alpha in ("nan", "5", "-0.5"):
        assert_user_error(invoke("saliency", corpus["model"], image, "-o", out, "--alpha", alpha), "--alpha")
    assert_user_error(invoke("maximize", corpus["model"], "--steps", "2", "-o", out, "--lr", "inf"), "learning rate")
    for option in ("--window", "--stride"):  # 0 is not "the default"
        assert_user_error(invoke("occlusion", corpus["model"], image, "-o", out, option, "0"), "window and stride")
    for command in ("saliency", "cam"):  # cam once ignored an unknown method
        assert_user_error(invoke(command, corpus["model"], image, "-o", out, "--gradient", "nope"),
                          "unknown gradient method 'nope'")
    assert files_in(tmp_path) == ["bomb.png"]


# ------------------------------------------------------------------ 16: usage errors
def test_usage_errors_are_one_line(corpus):
    assert_user_error(invoke("maximize", corpus["model"], "--steps", "abc"), "--steps", "onnxviz maximize --help")
    assert_user_error(invoke("maximize", corpus["model"], "--bogus"), "No such option: --bogus")
    assert_user_error(invoke("bogus"), "No such command 'bogus'")
    result = invoke()
    assert result.exit_code == 2 and "Usage" in result.output  # no arguments: the help, as before


@pytest.mark.slow
def test_tensorflow_convert_error_is_one_line(tmp_path):
    pytest.importorskip("tensorflow", reason="the keras extra is not installed")
    src = tmp_path / "saved"
    src.mkdir()
    (src / "saved_model.pb").write_bytes(np.random.default_rng(2).bytes(200))
    env = {k: v for k, v in os.environ.items() if k != "TF_CPP_MIN_LOG_LEVEL"}
    done = subprocess.run([sys.executable, "-m", "onnxviz.cli", "convert", str(src), "-o", str(tmp_path / "o.onnx")],
                          capture_output=True, text=True, env={**env, "PYTHONPATH": str(REPO)}, cwd=tmp_path,
                          timeout=300)
    assert done.returncode == 2 and done.stderr.count("\n") == 1, done.stderr  # no absl / oneDNN lines
    assert done.stderr.startswith("error: ") and "SavedModel" in done.stderr


# ------------------------------------------------------------------ 3, 13, 17: interrupts
def _run_python(code: str, cwd: Path) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=cwd, timeout=300,
                          env={**os.environ, "PYTHONPATH": f"{REPO}{os.pathsep}{REPO / 'tests'}"})


def test_sigterm_while_writing_removes_the_temp_file(corpus, tmp_path):
    code = f"""
import os, signal, sys
from onnxviz import cli, fileio
def write(tmp, data):  # half the file, then SIGTERM
    with open(tmp, "wb") as f:
        f.write(data[: len(data) // 2])
    os.kill(os.getpid(), signal.SIGTERM)
fileio._write = write
sys.argv = ["onnxviz", "maximize", {str(corpus["model"])!r}, "--steps", "2", "-o", "out.png"]
cli.main()
"""
    done = _run_python(code, tmp_path)
    assert done.returncode == 128 + signal.SIGTERM, done.stderr
    assert done.stderr == "error: interrupted; no file was written\n"
    assert files_in(tmp_path) == []  # neither out.png nor .out.png.*.tmp


def test_ctrl_c_while_starting_is_one_line(tmp_path):
    code = """
import os, signal, sys
class CtrlC:  # Ctrl-C arrives while onnx is being imported
    def find_spec(self, name, path=None, target=None):
        if name == "onnx":
            sys.meta_path.remove(self)
            os.kill(os.getpid(), signal.SIGINT)
sys.meta_path.insert(0, CtrlC())
sys.argv = ["/usr/bin/onnxviz", "--help"]  # as the console script runs
from onnxviz.cli import main
main()
"""
    done = _run_python(code, tmp_path)
    assert done.returncode == 130 and "Traceback" not in done.stderr, done.stderr
    assert done.stderr == "error: interrupted; no file was written\n"


def test_ctrl_c_says_what_was_written(corpus, tmp_path, monkeypatch):
    from onnxviz import fvsanity
    from onnxviz.maximize import Maximizer

    def ctrl_c(*args, **kwargs):
        raise KeyboardInterrupt

    out = tmp_path / "m.png"
    with monkeypatch.context() as m:
        m.setattr(Maximizer, "run", ctrl_c)
        result = invoke("maximize", corpus["model"], "--steps", "2", "-o", out)
    assert result.exit_code == 130 and result.stderr == "error: interrupted; no file was written\n"
    assert not out.exists()
    monkeypatch.setattr(fvsanity, "visualization_sanity", ctrl_c)  # after the picture was written
    result = invoke("maximize", corpus["model"], "--steps", "2", "-o", out, "--sanity")
    assert result.exit_code == 130 and result.stderr == "error: interrupted after writing 1 file\n" and out.exists()


# ------------------------------------------------------------------ 19: bounded report
def test_report_work_is_bounded_by_its_options_on_a_1000_class_model(tmp_path, monkeypatch):
    from onnxviz.maximize import Maximizer

    path = tmp_path / "wide.onnx"
    onnx.save(M.conv_net(batch=1, classes=1000), str(path))
    images = []
    real = Maximizer.run

    def counted(self, layer=None, units=None, **kwargs):
        result = real(self, layer, units, **kwargs)
        images.append(len(result.images))
        return result

    monkeypatch.setattr(Maximizer, "run", counted)
    result = invoke("report", path, "-o", tmp_path / "r.html", "--steps", "2", "--units-per-layer", "1", "--json")
    assert result.exit_code == 0, result.output
    record = json.loads(result.stdout)
    assert record["classes"] == [0, 111, 222, 333, 444, 555, 666, 777, 888, 999]  # 10 of 1000, spread
    # 1 channel + 10 classes + the randomized-model control's (at most 3 stages) 10 each, never 1000s
    assert sum(images) <= 1 + 10 + 3 * 10, images
    page = (tmp_path / "r.html").read_text(encoding="utf-8")
    assert "10 of 1000 output units" in page
