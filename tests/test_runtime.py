"""Session factory: providers auto|cpu|cuda, a silent CUDA probe, clear errors."""

from __future__ import annotations

import numpy as np
import pytest
from onnx import TensorProto, helper

import models as M
from onnxviz import runtime
from onnxviz.errors import ModelLoadError, OnnxvizError
from onnxviz.runtime import available_providers, make_session


def _cuda_works() -> bool:
    return "CUDAExecutionProvider" in available_providers()


def test_probe_prints_nothing_and_is_cached(capfd, monkeypatch):
    monkeypatch.setattr(runtime, "_probe", None)  # force a fresh probe inside this test
    first = available_providers()
    out, err = capfd.readouterr()
    assert out == "" and err == "", f"the CUDA probe printed: {(out + err)[:300]!r}"
    assert first[-1] == "CPUExecutionProvider"
    assert set(first) <= {"CUDAExecutionProvider", "CPUExecutionProvider"}
    probed = runtime._probe
    assert available_providers() == first and runtime._probe is probed  # cached, not re-probed
    if "CUDAExecutionProvider" not in first:
        assert runtime.cuda_unavailable_reason()  # there is a reason to show the user


def test_auto_session_runs_quietly(capfd):
    model = M.conv_net()
    sess = make_session(model, "auto", threads=1)
    feeds = M.random_input(model, batch=2)
    out = sess.run(None, feeds)[0]
    assert out.shape == (2, 10)
    np.testing.assert_allclose(out.sum(axis=1), 1.0, rtol=1e-5)
    np.testing.assert_allclose(out, M.run(model, feeds)[0], rtol=1e-5)
    assert sess.get_providers() == available_providers()
    o, e = capfd.readouterr()
    assert o == "" and e == ""


def test_session_from_bytes_and_path(tmp_path):
    model = M.two_input_net()
    path = tmp_path / "m.onnx"
    path.write_bytes(model.SerializeToString())
    feeds = M.random_input(model)
    want = M.run(model, feeds)[0]
    for source in (model.SerializeToString(), path, str(path)):
        sess = make_session(source, "cpu")
        assert sess.get_providers() == ["CPUExecutionProvider"]
        np.testing.assert_allclose(sess.run(None, feeds)[0], want)


def test_cuda_unavailable_is_a_user_error():
    if _cuda_works():
        pytest.skip("CUDA really works on this machine")
    with pytest.raises(OnnxvizError, match="CUDA requested but not available"):
        make_session(M.conv_net(), "cuda")


def test_bad_provider_and_bad_models(tmp_path):
    with pytest.raises(OnnxvizError, match="auto, cpu, cuda"):
        make_session(M.conv_net(), "tpu")
    with pytest.raises(ModelLoadError, match="no such file"):
        make_session(tmp_path / "missing.onnx", "cpu")
    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, [2])
    y = helper.make_tensor_value_info("y", TensorProto.FLOAT, [2])
    unknown_op = helper.make_model(helper.make_graph([helper.make_node("NoSuchOp", ["x"], ["y"])], "g", [x], [y]),
                                   opset_imports=[helper.make_opsetid("", 17)], ir_version=8)
    with pytest.raises(ModelLoadError, match="onnxruntime cannot load the model"):
        make_session(unknown_op, "cpu")


def test_session_for_a_model_too_big_to_serialize(monkeypatch):
    """Over the protobuf limit the model goes through an external-data file; the caller's proto stays."""
    monkeypatch.setattr(runtime, "_PROTO_LIMIT", 100)
    model = M.conv_net()
    before = model.SerializeToString()
    feeds = M.random_input(model)
    np.testing.assert_allclose(make_session(model, "cpu").run(None, feeds)[0], M.run(model, feeds)[0], rtol=1e-6)
    assert model.SerializeToString() == before
