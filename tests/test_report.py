"""`onnxviz report`: one self-contained HTML page, checked in real headless Chromium."""

from __future__ import annotations

import re
import warnings

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

import browser
from onnxviz.errors import OnnxvizError
from onnxviz.report import auto_layers, build_report, conv_layers, write_report

SECTIONS = ["summary", "layers", "channels", "classes", "sanity", "attribution", "reproducibility"]


@pytest.fixture(scope="module")
def mnist_report(tmp_path_factory, mnist_model_path):
    out = tmp_path_factory.mktemp("report") / "report.html"
    record = write_report(mnist_model_path, out, steps=64, units_per_layer=4, seed=0)
    return out, record


def test_report_is_self_contained(mnist_report):
    path, record = mnist_report
    page = path.read_text(encoding="utf-8")
    assert "<script" not in page and "<link" not in page
    assert not re.search(r"""(src|href)\s*=\s*["'](?!data:)""", page), "every resource must be embedded"
    assert page.count('src="data:image/png;base64,') >= 3 + 4 * 4  # 2 layers + classes + 4 examples x 4
    assert record.sections == SECTIONS
    assert record.gradient_method == "graph" and record.unsupported_ops == []


def test_report_sections_and_facts(mnist_report):
    page = mnist_report[0].read_text(encoding="utf-8")
    for section in SECTIONS:
        assert f'<section id="{section}">' in page
    assert "NHWC" in page and "[0, 1]" in page  # input layout and range
    assert "1,199,893 parameters" in page  # the tutorial CNN's parameter count
    assert "seed" in page and "onnxruntime" in page and "time taken" in page


def test_report_sanity_section(mnist_report):
    page = mnist_report[0].read_text(encoding="utf-8")
    section = page[page.index('<section id="sanity">'):]
    section = section[:section.index("</section>")]
    record = mnist_report[1]
    stages = record.sanity["stages"]
    assert [s["randomized"][:1] for s in stages] == [[], ["preds/MatMul"], ["preds/MatMul"], ["preds/MatMul"]]
    assert section.count('src="data:image/png;base64,') == len(stages)  # trained + each randomized copy
    assert f"verdict: {record.sanity['verdict']}" in section and record.sanity["verdict"] == "PASS"
    # near chance (1 in 10): one randomized stage reaches 4 on some BLAS builds, identically at the previous main
    assert stages[0]["recognised"] >= 9 and all(s["recognised"] <= 4 for s in stages[1:])


@pytest.mark.slow
def test_report_in_headless_chromium(mnist_report, tmp_path):
    binary = browser.chromium()
    if binary is None:
        pytest.skip("no chromium on this machine (.ci/run installs Debian's chromium)")
    path, _ = mnist_report
    seen = browser.inspect_page(path, binary)
    assert seen["errors"] == [] and seen["console"] == [] and seen["log"] == []
    assert seen["sections"] == SECTIONS
    assert len(seen["images"]) >= 19
    assert all(img["complete"] and img["w"] > 0 and img["h"] > 0 for img in seen["images"]), seen["images"]
    shot = browser.screenshot(path, tmp_path / "shot.png", binary)
    from PIL import Image

    pixels = np.asarray(Image.open(shot).convert("L"), np.float32)
    assert pixels.shape[0] > 500 and pixels.std() > 10, "the screenshot is blank"
    assert (pixels < 100).mean() > 0.01, "no dark content (text, images) on the page"


def test_auto_layers_pick_start_and_end(mnist_model_path):
    model = onnx.load(str(mnist_model_path))
    convs = conv_layers(model)
    assert convs == ["mnist_cnn_1/conv2d_1/Relu:0", "mnist_cnn_1/conv2d_1_2/Relu:0"]
    assert auto_layers(model) == convs


def cos_model():
    """(N,1,8,8) -> Conv -> Cos (no gradient rule) -> GlobalAveragePool -> Flatten -> Gemm -> Softmax."""
    rng = np.random.default_rng(0)
    w = rng.standard_normal((4, 1, 3, 3)).astype(np.float32)
    fc = rng.standard_normal((3, 4)).astype(np.float32)
    nodes = [helper.make_node("Conv", ["x", "w"], ["c"], name="conv", pads=[1, 1, 1, 1]),
             helper.make_node("Cos", ["c"], ["cos"], name="cos"),
             helper.make_node("GlobalAveragePool", ["cos"], ["g"], name="gap"),
             helper.make_node("Flatten", ["g"], ["f"], name="flatten"),
             helper.make_node("Gemm", ["f", "fc"], ["logits"], name="fc", transB=1),
             helper.make_node("Softmax", ["logits"], ["probs"], name="softmax")]
    graph = helper.make_graph(nodes, "cosnet", [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 1, 8, 8])],
                              [helper.make_tensor_value_info("probs", TensorProto.FLOAT, ["N", 3])],
                              initializer=[numpy_helper.from_array(w, "w"), numpy_helper.from_array(fc, "fc")])
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)], ir_version=10)


def test_report_of_a_model_without_gradient_rules_uses_finite_differences(tmp_path):
    model_path = tmp_path / "cos.onnx"
    onnx.save(cos_model(), str(model_path))
    image = tmp_path / "img.npy"
    np.save(image, np.random.default_rng(1).uniform(0, 1, (8, 8)).astype(np.float32))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        page, record = build_report(str(model_path), steps=8, units_per_layer=2, images=[str(image)])
    assert record.gradient_method == "fd" and record.unsupported_ops == ["Cos"]
    assert "No gradient rule for: Cos" in page and "finite differences" in page
    assert page.count('src="data:image/png;base64,') >= 2 + 4  # 1 conv layer + classes + 1 image x 4


def test_write_report_refuses_a_directory_and_leaves_nothing(tmp_path, mnist_model_path):
    with pytest.raises(OnnxvizError, match="directory"):
        write_report(mnist_model_path, tmp_path)
    with pytest.raises(OnnxvizError):
        write_report(mnist_model_path, tmp_path / "r.html", layers=["no_such_layer"])
    assert list(tmp_path.iterdir()) == []


def test_report_cli(tmp_path, mnist_model_path):
    import json

    from typer.testing import CliRunner

    from onnxviz import cli

    runner = CliRunner()
    out = tmp_path / "r.html"
    result = runner.invoke(cli.app, ["report", str(mnist_model_path), "-o", str(out), "--steps", "16",
                                     "--units-per-layer", "2", "--layers", "conv2d_1", "--json"])
    assert result.exit_code == 0, result.output
    data = json.loads(result.output)
    assert data["layers"] == ["mnist_cnn_1/conv2d_1_2/Relu:0"] and data["steps"] == 16
    assert out.exists() and "onnxviz report" in data["command"]
    for args in (["report", str(tmp_path / "missing.onnx"), "-o", str(tmp_path / "x.html")],
                 ["report", str(mnist_model_path), "-o", str(tmp_path / "x.html"), "--layers", "nope"]):
        bad = runner.invoke(cli.app, args)
        assert bad.exit_code == 2 and "Traceback" not in bad.output
    assert not (tmp_path / "x.html").exists()
