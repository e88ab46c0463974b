"""The shipped models/shapes_cnn.onnx (trained in PyTorch, exported through converters) and the
numpy generator of its images, checked with onnx + onnxruntime only (no training framework)."""

from __future__ import annotations

import hashlib
import json
import re
import subprocess
import sys
from collections import Counter
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import pytest

from onnxviz.datasets import SHAPE_CLASSES, SHAPE_COLORS, SHAPE_KINDS, make_shapes
from onnxviz.errors import OnnxvizError
from onnxviz.graph import find_layer, input_info

REPO = Path(__file__).resolve().parents[1]
MODEL = REPO / "models" / "shapes_cnn.onnx"
README = REPO / "models" / "README.md"
FRESH_SEED = 777  # neither the training seed (0) nor the README's held-out seed (20240)


# --------------------------------------------------------------------------- the generator

def test_make_shapes_is_deterministic_and_balanced():
    images, labels = make_shapes(90, size=32, seed=3)
    assert images.shape == (90, 32, 32, 3) and images.dtype == np.uint8
    assert labels.shape == (90,) and labels.dtype == np.int64
    assert np.bincount(labels, minlength=9).tolist() == [10] * 9
    again, again_labels = make_shapes(90, size=32, seed=3)
    assert np.array_equal(images, again) and np.array_equal(labels, again_labels)
    other, _ = make_shapes(90, size=32, seed=4)
    assert not np.array_equal(images, other)
    assert SHAPE_CLASSES[0] == "red circle" and SHAPE_CLASSES[-1] == "blue triangle" and len(SHAPE_CLASSES) == 9
    assert make_shapes(0)[0].shape == (0, 64, 64, 3)
    with pytest.raises(OnnxvizError):
        make_shapes(5, size=8)


def test_make_shapes_draws_the_named_colour_and_shape():
    """The shape's pixels carry its colour; shape areas stay in the same range (size is no cue)."""
    images, labels = make_shapes(450, size=64, seed=11)
    x = images.astype(np.float32) / 255
    # The shape is where the pixel is far from the (smooth, greyish) background: strong saturation.
    saturation = x.max(axis=-1) - x.min(axis=-1)
    areas = {k: [] for k in SHAPE_KINDS}
    for image, sat, label in zip(x, saturation, labels):
        colour, kind = SHAPE_COLORS[label // 3], SHAPE_KINDS[label % 3]
        mask = sat > 0.45
        assert mask.sum() > 30, (colour, kind)
        dominant = int(np.argmax(np.median(image[mask], axis=0)))
        assert dominant == SHAPE_COLORS.index(colour)
        areas[kind].append(mask.mean())
    medians = [np.median(a) for a in areas.values()]
    assert max(medians) / min(medians) < 1.5, medians


# --------------------------------------------------------------------------- the shipped model

@pytest.fixture(scope="module")
def model() -> onnx.ModelProto:
    assert MODEL.exists(), f"shipped model missing: {MODEL}"
    return onnx.load(str(MODEL))


def test_accuracy_on_fresh_images(model):
    images, labels = make_shapes(900, size=64, seed=FRESH_SEED)
    x = np.ascontiguousarray(images.transpose(0, 3, 1, 2), dtype=np.float32) / 255  # NCHW in [0, 1]
    session = ort.InferenceSession(str(MODEL), providers=["CPUExecutionProvider"])
    probs = session.run(None, {session.get_inputs()[0].name: x})[0]
    assert probs.shape == (900, 9)
    np.testing.assert_allclose(probs.sum(axis=1), 1.0, atol=1e-5)  # the final softmax is kept
    accuracy = float(np.mean(probs.argmax(axis=1) == labels))
    assert accuracy >= 0.95, f"accuracy on fresh images {accuracy:.4f} < 0.95"
    per_class = [float(np.mean(probs.argmax(axis=1)[labels == c] == c)) for c in range(9)]
    assert min(per_class) >= 0.85, per_class


def test_metadata_and_inputs(model):
    onnx.checker.check_model(model, full_check=True)
    meta = {p.key: p.value for p in model.metadata_props}
    assert json.loads(meta["onnxviz.class_names"]) == list(SHAPE_CLASSES)
    assert meta["onnxviz.input_layout"] == "NCHW"
    assert json.loads(meta["onnxviz.input_range"]) == [0.0, 1.0]
    assert meta["onnxviz.source"].startswith("torch ")
    (info,) = input_info(model)
    assert info.name == "image" and info.shape == ("batch", 3, 64, 64)
    assert info.layout == "NCHW" and info.value_range == (0.0, 1.0)
    assert model.ir_version <= 10
    assert [op.domain for op in model.opset_import] == [""]


def test_architecture_is_small_and_standard(model):
    ops = Counter(node.op_type for node in model.graph.node)
    assert set(ops) <= {"Conv", "Relu", "MaxPool", "GlobalAveragePool", "Flatten", "Gemm", "Softmax",
                        "BatchNormalization", "Reshape"}
    assert ops["Conv"] == 4 and ops["MaxPool"] == 3 and ops["Softmax"] == 1
    parameters = sum(int(np.prod(t.dims)) for t in model.graph.initializer)
    assert parameters < 100_000
    assert find_layer(model, "block4.conv").op_type == "Conv"
    assert find_layer(model, "block4").op_type == "Relu"
    assert find_layer(model, "fc").op_type == "Gemm"
    assert find_layer(model, "softmax").output == model.graph.output[0].name


def test_readme_records_the_shipped_file():
    text = README.read_text()
    section = text[text.index("## `shapes_cnn.onnx`"):]
    digest = hashlib.sha256(MODEL.read_bytes()).hexdigest()
    assert digest in section
    assert "python models/train_shapes.py" in section
    accuracy = re.search(r"held-out accuracy\*\* \| \*\*([\d.]+) %", section)
    assert accuracy and float(accuracy.group(1)) >= 95.0


def test_usable_without_any_training_framework():
    """Load, classify and look up layers with torch / tensorflow / keras unimportable."""
    code = """
import importlib.abc, sys
class Block(importlib.abc.MetaPathFinder):
    def find_spec(self, name, path=None, target=None):
        if name.split(".")[0] in {"torch", "tensorflow", "keras", "tf2onnx"}:
            raise ModuleNotFoundError(name)
sys.meta_path.insert(0, Block())
import numpy as np, onnxruntime as ort
from onnxviz.datasets import make_shapes
from onnxviz.graph import load_model, find_layer
from onnxviz.shipped import shipped_model_path
path = shipped_model_path("shapes_cnn")
model = load_model(path)
images, labels = make_shapes(45, seed=5)
x = images.transpose(0, 3, 1, 2).astype(np.float32) / 255
probs = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"]).run(None, {"image": x})[0]
print(find_layer(model, "block3.conv").op_type, float((probs.argmax(1) == labels).mean()))
"""
    done = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    op, accuracy = done.stdout.split()
    assert op == "Conv" and float(accuracy) >= 0.9
