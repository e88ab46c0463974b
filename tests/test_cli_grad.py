"""`onnxviz grad` and `onnxviz check`: outputs, JSON fields, exit codes 0 / 1 / 2."""

from __future__ import annotations

import json
import os

import numpy as np
import onnx
import pytest
from typer.testing import CliRunner

from onnxviz import cli
from onnxviz.autodiff import COTANGENT
from onnxviz.autodiff.rules import RULES
from test_autodiff import small_cnn
from test_gradients import model_with_unsupported_op

runner = CliRunner()


def invoke(*args):
    return runner.invoke(cli.app, [str(a) for a in args])


@pytest.fixture(scope="module")
def cnn_path(tmp_path_factory):
    path = tmp_path_factory.mktemp("grad") / "cnn.onnx"
    onnx.save(small_cnn(), str(path))
    return path


def test_grad_writes_a_runnable_gradient_model(cnn_path, tmp_path):
    out = tmp_path / "g.onnx"
    result = invoke("grad", cnn_path, "-o", out, "--layer", "fc")
    assert result.exit_code == 0, result.output
    g = onnx.load(str(out))
    onnx.checker.check_model(g, full_check=True)
    assert [i.name for i in g.graph.input] == ["x", COTANGENT]
    assert [o.name for o in g.graph.output] == ["logits", "x_grad"]
    import onnxruntime as ort

    sess = ort.InferenceSession(out.read_bytes(), providers=["CPUExecutionProvider"])
    x = np.zeros((2, 2, 6, 6), np.float32)
    logits, gx = sess.run(None, {"x": x, COTANGENT: np.ones((2, 5), np.float32)})
    assert logits.shape == (2, 5) and gx.shape == x.shape


def test_check_json_passes_on_mnist(mnist_model_path):
    result = invoke("check", mnist_model_path, "--json")
    assert result.exit_code == 0, result.output
    data = json.loads(result.output)
    assert data["supported"] is True and data["unsupported_ops"] == [] and data["method"] == "graph"
    assert data["max_rel_error"] < 1e-4


@pytest.mark.parametrize("layer", ["conv2d", "conv2d_1", "-3", "mnist_cnn_1/dense_1/Relu:0"])
def test_check_intermediate_layers_of_mnist(mnist_model_path, layer):
    result = invoke("check", mnist_model_path, "--layer", layer, "--json")
    assert result.exit_code == 0, result.output
    assert json.loads(result.output)["max_rel_error"] < 1e-4


def test_check_falls_back_to_fd_for_unsupported_ops(tmp_path):
    path = tmp_path / "cos.onnx"
    onnx.save(model_with_unsupported_op()[0], str(path))
    result = invoke("check", path, "--json")
    assert result.exit_code == 0, result.output
    data = json.loads(result.output)
    assert data["supported"] is False and data["unsupported_ops"] == ["Cos"] and data["method"] == "fd"


def test_check_exits_1_when_a_rule_is_wrong(cnn_path, monkeypatch):
    def wrong_relu(g, node, gy):  # forgets the mask: a plausible bug
        return [gy[0]]

    monkeypatch.setitem(RULES, "Relu", wrong_relu)
    result = invoke("check", cnn_path, "--json")
    assert result.exit_code == 1, result.output
    data = json.loads(result.output)
    assert data["max_rel_error"] > 1e-2 and data["method"] == "graph"


def test_bad_input_exit_2(tmp_path, cnn_path):
    junk = tmp_path / "junk.onnx"
    junk.write_bytes(os.urandom(1000))
    for args in (["check", junk], ["grad", junk, "-o", tmp_path / "x.onnx"],
                 ["check", tmp_path / "missing.onnx"], ["check", cnn_path, "--layer", "nope"]):
        result = invoke(*args)
        assert result.exit_code == 2, (args, result.output)
        assert "Traceback" not in result.output
    assert not (tmp_path / "x.onnx").exists()


def test_dynamic_spatial_dims_need_input_shape(tmp_path):
    model = small_cnn()
    dims = model.graph.input[0].type.tensor_type.shape.dim
    dims[2].dim_param, dims[3].dim_param = "H", "W"
    path = tmp_path / "dyn.onnx"
    onnx.save(model, str(path))
    result = invoke("check", path)
    assert result.exit_code == 2 and "--input-shape" in result.output
    ok = invoke("check", path, "--input-shape", "1,2,6,6", "--json")
    assert ok.exit_code == 0, ok.output
