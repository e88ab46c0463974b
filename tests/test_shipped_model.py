"""The shipped models/mnist_cnn.onnx, checked with onnx + onnxruntime only (no training framework)."""

from __future__ import annotations

import hashlib
import json
import re
from collections import Counter
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import pytest

from onnxviz.datasets import load_mnist

README = Path(__file__).resolve().parents[1] / "models" / "README.md"
N_HELDOUT = 1000  # the last 1,000 digits of the t10k split; train_mnist.py trains on the first 9,000

# Metadata keys (as in onnxviz.graph).
META_LAYOUT = "onnxviz.input_layout"
META_RANGE = "onnxviz.input_range"
META_CLASSES = "onnxviz.class_names"
META_SOURCE = "onnxviz.source"


@pytest.fixture(scope="module")
def model(mnist_model_path) -> onnx.ModelProto:
    return onnx.load(str(mnist_model_path))


def test_heldout_accuracy(mnist_model_path, mnist_dir):
    images, labels = load_mnist(mnist_dir, split="t10k")
    x = (images[-N_HELDOUT:].astype(np.float32) / 255.0)[..., None]  # NHWC in [0, 1]
    y = labels[-N_HELDOUT:]
    session = ort.InferenceSession(str(mnist_model_path), providers=["CPUExecutionProvider"])
    probs = session.run(None, {session.get_inputs()[0].name: x})[0]
    assert probs.shape == (N_HELDOUT, 10)
    np.testing.assert_allclose(probs.sum(axis=1), 1.0, atol=1e-5)  # the final softmax is kept
    accuracy = float(np.mean(probs.argmax(axis=1) == y))
    assert accuracy >= 0.97, f"held-out accuracy {accuracy:.4f} < 0.97"


def test_valid_with_symbolic_batch(model):
    onnx.checker.check_model(model, full_check=True)
    (image,) = model.graph.input
    dims = image.type.tensor_type.shape.dim
    assert dims[0].dim_param and [d.dim_value for d in dims[1:]] == [28, 28, 1]
    session = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    for batch in (1, 5):
        out = session.run(None, {image.name: np.zeros((batch, 28, 28, 1), np.float32)})[0]
        assert out.shape == (batch, 10)


def test_architecture(model):
    ops = Counter(node.op_type for node in model.graph.node)
    assert ops["Conv"] == 2
    assert ops["MaxPool"] == 1
    assert ops["MatMul"] + ops["Gemm"] == 2
    assert ops["Relu"] == 3
    last = next(n for n in model.graph.node if model.graph.output[0].name in n.output)
    assert last.op_type == "Softmax"
    weights = {i.name: i for i in model.graph.initializer}
    kernels = [tuple(weights[n.input[1]].dims) for n in model.graph.node if n.op_type == "Conv"]
    assert kernels == [(32, 1, 3, 3), (64, 32, 3, 3)]
    pool = next(n for n in model.graph.node if n.op_type == "MaxPool")
    assert list(onnx.helper.get_attribute_value(next(a for a in pool.attribute if a.name == "kernel_shape"))) == [2, 2]


def test_layer_names(model):
    """Node names start with the Keras layer names (tf2onnx names a Conv with fused bias after its BiasAdd)."""
    by_name = {n.name: n.op_type for n in model.graph.node}
    assert [n.name.split("/")[0] for n in model.graph.node if n.op_type == "Conv"] == ["conv2d", "conv2d_1"]
    assert by_name["max_pooling2d/MaxPool2d"] == "MaxPool"
    assert by_name["dense/MatMul"] == "MatMul"
    assert by_name["preds/MatMul"] == "MatMul"
    assert by_name["preds/Softmax"] == "Softmax"


def test_metadata(model):
    meta = {p.key: p.value for p in model.metadata_props}
    assert meta[META_LAYOUT] == "NHWC"
    assert json.loads(meta[META_RANGE]) == [0.0, 1.0]
    assert json.loads(meta[META_CLASSES]) == [str(i) for i in range(10)]
    assert meta[META_SOURCE].startswith("keras ")


def test_readme_records_the_checksum(mnist_model_path):
    digest = hashlib.sha256(mnist_model_path.read_bytes()).hexdigest()
    recorded = re.findall(r"\b[0-9a-f]{64}\b", README.read_text())
    assert recorded, f"no sha256 in {README}"
    assert digest in recorded, f"sha256 of {mnist_model_path.name} is {digest}, README records {recorded}"
