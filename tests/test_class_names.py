"""Class names in every label (issue 12, part 5): from the metadata, set at ``convert`` time, or per
command / API call over the metadata; read from a list, a file (one per line or a JSON list) or
``a,b,c``; a wrong count is one clear error; names are shown as text, never as markup."""

from __future__ import annotations

import json

import numpy as np
import onnx
import pytest
from typer.testing import CliRunner

import converters
import models as M
from onnxviz import cli
from onnxviz.attribution import Attributor, attribute, explain_files
from onnxviz.errors import ConversionError, OnnxvizError
from onnxviz.graph import META_CLASSES, check_class_names, class_names, metadata, read_class_names, set_metadata
from onnxviz.maximize import Maximizer, maximize
from onnxviz.render import grid_image, save_result
from onnxviz.report import build_report, write_report

from conftest import assert_user_error

runner = CliRunner()
NAMES = ["zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine"]
HOSTILE = ["[red]x[/red]", "[bold]b", "<script>alert(1)</script>", "a&b", "'quote'", "../../etc", "$(rm -rf)",
           "ünï cödé", "x\\y", "{c}"]


def invoke(*args):
    return runner.invoke(cli.app, [str(a) for a in args])


@pytest.fixture
def model_file(tmp_path):
    """A 10-class model (1x8x8, NCHW) without class names, as a file."""
    path = tmp_path / "net.onnx"
    onnx.save(M.conv_net(), str(path))
    return path


@pytest.fixture
def image_file(tmp_path):
    path = tmp_path / "x.npy"
    np.save(path, np.random.default_rng(0).uniform(size=(1, 1, 8, 8)).astype(np.float32))
    return path


# ------------------------------------------------------------------------------------ reading names
def test_read_class_names_from_lists_text_and_files(tmp_path):
    assert read_class_names(["a", "b"]) == ["a", "b"]
    assert read_class_names(("x", 3)) == ["x", "3"]
    assert read_class_names(" cat , dog,bird ") == ["cat", "dog", "bird"]
    lines = tmp_path / "names.txt"
    lines.write_bytes("\ufeffT-shirt/top\r\nTrouser, long\r\n  Pullover  \n\n".encode())  # BOM, CRLF, trailing blank
    assert read_class_names(lines) == ["T-shirt/top", "Trouser, long", "Pullover"]
    assert read_class_names(str(lines)) == ["T-shirt/top", "Trouser, long", "Pullover"]
    as_json = tmp_path / "names.json"
    as_json.write_text(json.dumps(["a,b", "[c]", "d"]))
    assert read_class_names(as_json) == ["a,b", "[c]", "d"]


@pytest.mark.parametrize("content, part", [("", "is empty"), ("\n\n", "is empty"), ("a\n\nb\n", "line 2 is empty"),
                                           ("[1, ", "not a JSON list"), ('[{"a": 1}]', "non-empty"),
                                           ('["a", ""]', "non-empty")])
def test_bad_names_files(tmp_path, content, part):
    path = tmp_path / "bad.txt"
    path.write_text(content)
    with pytest.raises(OnnxvizError, match=part):
        read_class_names(path)


def test_bad_names_text():
    with pytest.raises(OnnxvizError, match="no such file"):
        read_class_names("missing_names.txt")
    with pytest.raises(OnnxvizError, match="name 1 is empty"):
        read_class_names("a,,b")
    with pytest.raises(OnnxvizError, match="empty list"):
        read_class_names([])
    with pytest.raises(OnnxvizError, match="non-empty"):
        read_class_names(["a", None])
    with pytest.raises(OnnxvizError, match="list of names"):
        read_class_names(7)


def test_count_is_checked_against_the_output():
    model = M.conv_net()
    assert check_class_names(model, NAMES) == tuple(NAMES)
    with pytest.raises(OnnxvizError, match="3 class names given but the model's output has 10 units"):
        check_class_names(model, "a,b,c")


# ------------------------------------------------------------------------------------ maximize
def test_maximize_labels_from_argument_over_metadata():
    model = set_metadata(M.conv_net(), **{META_CLASSES: [f"m{i}" for i in range(10)]})
    assert maximize(model, None, [0, 2], steps=2).labels == ["m0", "m2"]  # the metadata's
    r = maximize(model, None, [0, 2], steps=2, class_names=NAMES)
    assert r.labels == ["zero", "two"]
    bare = maximize(M.conv_net(), None, [0, 2], steps=2)
    assert bare.labels == ["0", "2"]
    engine = Maximizer(model, class_names=",".join(NAMES))
    assert engine.run(None, [9], steps=2).labels == ["nine"]
    assert engine.run("relu_out", [1], steps=2).labels != ["one"]  # a conv layer's channels are not classes
    with pytest.raises(OnnxvizError, match="2 class names given"):
        maximize(model, None, [0], steps=2, class_names=["a", "b"])
    # the images do not depend on the labels
    np.testing.assert_array_equal(r.images, maximize(model, None, [0, 2], steps=2).images)


def test_labels_are_drawn_in_grids_and_gifs():
    """The grid draws each label under its image: other names, other pixels (and the same names,
    the same pixels); a GIF's frames carry the same labels."""
    r = maximize(M.conv_net(), None, [0, 1], steps=4, class_names=NAMES, record_every=2)
    a = np.asarray(grid_image(r.images, r.labels, layout=r.layout))
    b = np.asarray(grid_image(r.images, ["other", "labels"], layout=r.layout))
    unlabelled = np.asarray(grid_image(r.images, None, layout=r.layout))
    assert a.shape == b.shape and not np.array_equal(a, b) and a.shape[0] > unlabelled.shape[0]
    assert np.array_equal(a, np.asarray(grid_image(r.images, ["zero", "one"], layout=r.layout)))
    hostile = np.asarray(grid_image(r.images, HOSTILE[:2], layout=r.layout))  # markup-looking text is just drawn
    assert hostile.shape == a.shape


def test_save_result_with_hostile_names_writes_only_the_asked_files(tmp_path):
    r = maximize(M.conv_net(), None, [0, 1], steps=3, class_names=HOSTILE, record_every=1)
    written = save_result(r, png=tmp_path / "grid.png", gif=tmp_path / "run.gif")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["grid.png", "run.gif"] == sorted(p.name for p in written)


# ------------------------------------------------------------------------------------ attribution
def test_attribution_labels_from_argument():
    model = M.conv_net()
    x = np.random.default_rng(1).uniform(size=(2, 1, 8, 8)).astype(np.float32)
    att = Attributor(model, class_names=NAMES)
    assert att.unit_label(3) == "three" and att.resolve_units(x, "seven")[0].tolist() == [7, 7]
    assert Attributor(model).unit_label(3) == "3"
    with pytest.raises(OnnxvizError, match="11 class names given"):
        Attributor(model, class_names=NAMES + ["ten"])
    r = attribute(model, x, "vanilla", "nine", class_names=NAMES)
    assert r.units.tolist() == [9, 9]
    with pytest.raises(OnnxvizError, match="unknown unit 'nine'"):
        attribute(model, x, "vanilla", "nine")


def test_explain_files_takes_class_names(tmp_path, image_file):
    result = explain_files(M.conv_net(), [image_file], ["vanilla"], "four", class_names=NAMES)
    assert result.attributor.unit_label(4) == "four" and result.results[0].units.tolist() == [4]


# ------------------------------------------------------------------------------------ the report
def test_report_labels_and_escapes_the_names(tmp_path, image_file):
    page, record = build_report(M.conv_net(), steps=2, units_per_layer=1, images=[str(image_file)],
                                class_names=HOSTILE)
    assert "<script>alert(1)</script>" not in page and "[red]x[/red]" in page  # text, escaped where needed
    assert "&lt;script&gt;alert(1)&lt;/script&gt;" in page and "a&amp;b" in page
    classes = page[page.index('<section id="summary">'):page.index('<section id="layers">')]
    assert "Classes" in classes and "&#x27;quote&#x27;" in classes
    out = tmp_path / "report.html"
    with pytest.raises(OnnxvizError, match="2 class names given"):
        write_report(M.conv_net(), out, steps=2, class_names="a,b")
    assert not out.exists()


def test_report_predictions_use_the_names(tmp_path, image_file):
    model = M.conv_net()
    top = int(np.argmax(Attributor(model).probabilities(np.load(image_file))[0]))
    page, _ = build_report(model, steps=2, units_per_layer=1, images=[str(image_file)], class_names=NAMES)
    assert f"prediction: <b>{NAMES[top]}</b>" in page


# ------------------------------------------------------------------------------------ the CLI
def test_convert_stores_names_from_a_file(model_file, tmp_path):
    names = tmp_path / "classes.txt"
    names.write_text("\n".join(NAMES) + "\n")
    out = tmp_path / "named.onnx"
    result = invoke("convert", model_file, "-o", out, "--class-names", names)
    assert result.exit_code == 0, result.output
    assert class_names(onnx.load(str(out))) == NAMES
    assert "classes: zero, one, two" in result.stdout
    # then every command labels with them
    png = tmp_path / "classes.png"
    result = invoke("maximize", out, "-u", "0-2", "--steps", "2", "-o", png, "--json")
    assert result.exit_code == 0, result.output
    assert json.loads(result.stdout)["labels"] == ["zero", "one", "two"]
    # and a per-command list wins
    result = invoke("maximize", out, "-u", "0-2", "--steps", "2", "-o", png, "--json",
                    "--class-names", ",".join(n.upper() for n in NAMES))
    assert json.loads(result.stdout)["labels"] == ["ZERO", "ONE", "TWO"]


def test_convert_wrong_count_writes_nothing(model_file, tmp_path):
    out = tmp_path / "named.onnx"
    assert_user_error(invoke("convert", model_file, "-o", out, "--class-names", "a,b,c"), "3 class names")
    assert_user_error(invoke("convert", model_file, "-o", out, "--class-names", "nope.txt"), "no such file")
    assert not out.exists()
    with pytest.raises(ConversionError, match="3 class names"):
        converters.to_onnx(M.conv_net(), class_names="a,b,c")


def test_markup_looking_names_print_as_text(model_file, tmp_path):
    png = tmp_path / "grid.png"
    result = invoke("maximize", model_file, "-u", "0-2", "--steps", "2", "-o", png, "--class-names",
                    "[red]x[/red],[bold]b,<i>c</i>,d,e,f,g,h,i,j")
    assert result.exit_code == 0, result.output
    for name in ("[red]x[/red]: objective", "[bold]b: objective", "<i>c</i>: objective"):
        assert name in result.stdout
    assert sorted(p.name for p in tmp_path.iterdir()) == ["grid.png", "net.onnx"]


@pytest.mark.parametrize("command", ["saliency", "cam", "occlusion"])
def test_attribution_commands_take_class_names(model_file, image_file, tmp_path, command):
    out = tmp_path / f"{command}.png"
    result = invoke(command, model_file, image_file, "-o", out, "--unit", "[b]five", "--class-names",
                    "zero,one,two,three,four,[b]five,six,seven,eight,nine")
    assert result.exit_code == 0, result.output
    assert "explaining [b]five" in result.stdout and out.exists()
    bad = tmp_path / f"{command}_bad.png"
    assert_user_error(invoke(command, model_file, image_file, "-o", bad, "--class-names", "a,b"), "2 class names")
    assert not bad.exists()


def test_report_cli_takes_class_names(model_file, image_file, tmp_path):
    out = tmp_path / "report.html"
    result = invoke("report", model_file, "-o", out, "--steps", "2", "--units-per-layer", "1", "--images", image_file,
                    "--class-names", "<b>zero</b>,one,two,three,four,five,six,seven,eight,nine", "--json")
    assert result.exit_code == 0, result.output
    page = out.read_text(encoding="utf-8")
    assert "&lt;b&gt;zero&lt;/b&gt;" in page and "<b>zero</b>" not in page
    assert "--class-names" in json.loads(result.stdout)["command"]
    bad = tmp_path / "bad.html"
    assert_user_error(invoke("report", model_file, "-o", bad, "--steps", "2", "--class-names", "a,b"), "2 class names")
    assert not bad.exists()
    assert metadata(onnx.load(str(model_file))).get(META_CLASSES) is None  # the model file is not changed
