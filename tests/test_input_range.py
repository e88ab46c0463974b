"""The input value range and layout a conversion records (issue 12, part 4): given with
``--input-range`` / ``--layout``, else guessed and marked as a guess so that ``onnxviz convert`` and
``onnxviz info`` say so; bad ranges are one clear error (exit code 2) everywhere."""

from __future__ import annotations

import json
import math

import numpy as np
import onnx
import pytest
from typer.testing import CliRunner

import converters
import models as M
from onnxviz import cli
from onnxviz.errors import ConversionError, OnnxvizError
from onnxviz.graph import (META_LAYOUT, META_RANGE, META_RANGE_SOURCE, check_value_range, input_info, metadata,
                           set_metadata)
from onnxviz.maximize import maximize

from conftest import assert_user_error

runner = CliRunner()


def invoke(*args):
    return runner.invoke(cli.app, [str(a) for a in args])


def flat(text: str) -> str:
    """Console output without the line wrapping and table borders (rich wraps at 80 columns)."""
    return " ".join(text.replace("│", " ").split())


@pytest.fixture
def bare(tmp_path):
    """An ONNX file without any onnxviz metadata: 1x8x8 NCHW, 10 classes."""
    path = tmp_path / "bare.onnx"
    onnx.save(M.conv_net(), str(path))
    return path


# ------------------------------------------------------------------------------------ the library
def test_check_value_range():
    assert check_value_range((0, 255)) == (0.0, 255.0)
    assert check_value_range(["-1", "1"]) == (-1.0, 1.0)
    for bad, part in (((1, 0), "low end must be below"), ((1, 1), "low end must be below"),
                      ((0, math.nan), "not finite"), ((-math.inf, 1), "not finite"), ((0, math.inf), "not finite"),
                      ((1,), "two numbers"), ((0, 1, 2), "two numbers"), ("ab", "two numbers"), (None, "two numbers")):
        with pytest.raises(OnnxvizError, match=part):
            check_value_range(bad, "--input-range")


def test_guessed_user_and_source_ranges_in_metadata():
    plain = M.conv_net()
    (info,) = input_info(plain)
    assert info.value_range == (0.0, 1.0) and info.range_guessed  # no metadata: the float default
    guessed = converters.to_onnx(plain).model
    meta = metadata(guessed)
    assert json.loads(meta[META_RANGE]) == [0.0, 1.0] and meta[META_RANGE_SOURCE] == "guess"
    assert input_info(guessed)[0].range_guessed and input_info(guessed)[0].to_dict()["range_guessed"] is True
    given = converters.to_onnx(plain, input_range=(-1, 1)).model
    assert json.loads(metadata(given)[META_RANGE]) == [-1.0, 1.0] and metadata(given)[META_RANGE_SOURCE] == "user"
    assert input_info(given)[0].value_range == (-1.0, 1.0) and not input_info(given)[0].range_guessed
    # an ONNX model that records its range keeps it, unmarked (known from the source)
    known = set_metadata(plain, **{META_RANGE: [0, 255]})
    kept = converters.to_onnx(known).model
    assert META_RANGE_SOURCE not in metadata(kept) and input_info(kept)[0].value_range == (0.0, 255.0)
    assert not input_info(kept)[0].range_guessed
    # converting a guessed model again keeps the mark; a range given then replaces it
    again = converters.to_onnx(guessed).model
    assert metadata(again)[META_RANGE_SOURCE] == "guess"
    assert metadata(converters.to_onnx(guessed, input_range=(0, 1)).model)[META_RANGE_SOURCE] == "user"
    # integer inputs take their dtype's range: not a guess, nothing written
    from onnx import TensorProto, helper

    graph = helper.make_graph([helper.make_node("Cast", ["ids"], ["y"], to=TensorProto.FLOAT, name="cast")], "ints",
                              [helper.make_tensor_value_info("ids", TensorProto.UINT8, ["N", 4])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N", 4])])
    ints = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], ir_version=8)
    converted = converters.to_onnx(ints).model
    assert META_RANGE not in metadata(converted) and META_RANGE_SOURCE not in metadata(converted)
    (info,) = input_info(converted)
    assert info.value_range == (0.0, 255.0) and not info.range_guessed


def test_layout_is_recorded_and_checked():
    model = converters.to_onnx(M.conv_net(), input_layout="nhwc").model
    assert metadata(model)[META_LAYOUT] == "NHWC"
    assert input_info(converters.to_onnx(M.nhwc_net(), input_layout="NCHW").model)[0].layout == "NCHW"
    with pytest.raises(ConversionError, match="NHWC or NCHW"):
        converters.to_onnx(M.conv_net(), input_layout="CHW")
    with pytest.raises(ConversionError, match="no rank-4"):
        converters.to_onnx(M.two_input_net(), input_layout="NHWC")


def test_bad_metadata_range_is_a_clear_error():
    for raw in ([1, 0], [0, 1e400]):
        model = set_metadata(M.conv_net(), **{META_RANGE: json.dumps(raw)})
        with pytest.raises(OnnxvizError, match="onnxviz.input_range"):
            input_info(model)
    with pytest.raises(OnnxvizError, match="not finite"):
        maximize(M.conv_net(), None, [0], steps=2, input_range=(0, math.inf))
    with pytest.raises(OnnxvizError, match="low end"):
        maximize(M.conv_net(), None, [0], steps=2, input_range=(1, -1))


# ------------------------------------------------------------------------------------ the CLI
def test_convert_says_guessed_and_records_what_is_given(bare, tmp_path):
    out = tmp_path / "guessed.onnx"
    result = invoke("convert", bare, "-o", out)
    assert result.exit_code == 0, result.output
    assert "range=[0, 1] (guessed; set with --input-range)" in flat(result.stdout)
    assert metadata(onnx.load(str(out)))[META_RANGE_SOURCE] == "guess"
    info = invoke("info", out)
    assert info.exit_code == 0, info.output
    assert "[0, 1] (guessed; set with --input-range)" in flat(info.stdout)
    as_json = json.loads(invoke("info", out, "--json").stdout)
    assert as_json["inputs"][0]["range"] == [0.0, 1.0] and as_json["inputs"][0]["range_guessed"] is True

    given = tmp_path / "given.onnx"
    result = invoke("convert", bare, "-o", given, "--input-range", "-1,1", "--layout", "NHWC")
    assert result.exit_code == 0, result.output
    assert "range=[-1, 1]" in flat(result.stdout) and "(guessed" not in result.stdout
    meta = metadata(onnx.load(str(given)))
    assert json.loads(meta[META_RANGE]) == [-1.0, 1.0] and meta[META_RANGE_SOURCE] == "user"
    assert meta[META_LAYOUT] == "NHWC"
    info = invoke("info", given)
    assert "[-1, 1]" in flat(info.stdout) and "(guessed" not in info.stdout
    assert json.loads(invoke("info", given, "--json").stdout)["inputs"][0]["range_guessed"] is False


@pytest.mark.parametrize("text, part", [("1,0", "low end must be below"), ("0,0", "low end must be below"),
                                        ("nan,1", "not finite"), ("0,inf", "not finite"), ("-inf,0", "not finite"),
                                        ("0", "two numbers"), ("0,1,2", "two numbers"), ("a,b", "two numbers")])
def test_bad_input_range_is_one_line_and_exit_2(bare, tmp_path, text, part):
    out = tmp_path / "out.onnx"
    assert_user_error(invoke("convert", bare, "-o", out, "--input-range", text), "--input-range", part)
    assert not out.exists()
    png = tmp_path / "max.png"
    assert_user_error(invoke("maximize", bare, "-o", png, "--steps", "2", "--input-range", text), "--input-range", part)
    assert not png.exists()


def test_bad_range_on_attribution_commands(bare, tmp_path):
    image = tmp_path / "x.npy"
    np.save(image, np.zeros((1, 1, 8, 8), np.float32))
    for command in ("saliency", "occlusion"):
        out = tmp_path / f"{command}.png"
        assert_user_error(invoke(command, bare, image, "-o", out, "--input-range", "2,1"), "--input-range")
        assert not out.exists()


def test_bad_layout_is_one_line(bare, tmp_path):
    out = tmp_path / "out.onnx"
    assert_user_error(invoke("convert", bare, "-o", out, "--layout", "HWC"), "--layout", "NHWC or NCHW")
    assert not out.exists()
    two = tmp_path / "two.onnx"
    onnx.save(M.two_input_net(), str(two))
    assert_user_error(invoke("convert", two, "-o", out, "--layout", "NCHW"), "no rank-4")
    assert not out.exists()


@pytest.mark.slow
def test_keras_h5_range_guessed_then_given(tmp_path):
    """A legacy .h5 knows nothing of its range: `onnxviz convert` says it guessed, and
    --input-range -1,1 records the user's."""
    keras = pytest.importorskip("keras", reason="the keras extra is not installed")
    model = keras.Sequential([keras.Input((12, 12, 1), name="image"),
                              keras.layers.Conv2D(2, 3, activation="relu", name="conv"),
                              keras.layers.GlobalAveragePooling2D(name="gap"),
                              keras.layers.Dense(3, activation="softmax", name="preds")])
    h5 = tmp_path / "legacy.h5"
    model.save(h5)
    out = tmp_path / "legacy.onnx"
    result = invoke("convert", h5, "-o", out)
    assert result.exit_code == 0, result.output
    assert "format: h5" in result.stdout and "(guessed; set with --input-range)" in flat(result.stdout)
    result = invoke("convert", h5, "-o", out, "--input-range", "-1,1", "--class-names", "a,b,c")
    assert result.exit_code == 0, result.output
    (info,) = input_info(onnx.load(str(out)))
    assert info.value_range == (-1.0, 1.0) and not info.range_guessed and info.layout == "NHWC"
    assert "classes: a, b, c" in result.stdout
