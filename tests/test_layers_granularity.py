"""``onnxviz layers`` at layer granularity (issue 15.2): the layers as the framework knew them,
every ``--layer`` takes their names, and numeric tensor names are names before indices."""

from __future__ import annotations

import ast
import io
import json
import warnings
from pathlib import Path

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper
from typer.testing import CliRunner

import models as M
from conftest import MODELS_DIR, assert_user_error
from onnxviz import cli
from onnxviz.errors import LayerNotFoundError
from onnxviz.graph import find_layer, layer_output, model_layers, tensor_shape

runner = CliRunner()
MNIST = MODELS_DIR / "mnist_cnn.onnx"


def invoke(*args):
    return runner.invoke(cli.app, [str(a) for a in args], env={"COLUMNS": "80"})


def layers_json(path) -> list[dict]:
    result = invoke("layers", path, "--json")
    assert result.exit_code == 0, result.output
    return json.loads(result.stdout)


def keras_layers_of_train_mnist() -> list[tuple[str, str]]:
    """(class, name) of every layer ``models/train_mnist.py`` builds, read from its source."""
    tree = ast.parse((MODELS_DIR / "train_mnist.py").read_text())
    build = next(f for f in ast.walk(tree) if isinstance(f, ast.FunctionDef) and f.name == "build_model")
    return [(call.func.attr, kw.value.value) for call in ast.walk(build) if isinstance(call, ast.Call)
            and isinstance(call.func, ast.Attribute) and isinstance(getattr(call.func.value, "id", None), str)
            and call.func.value.id == "layers" for kw in call.keywords if kw.arg == "name"]


# ------------------------------------------------------------------------------ the shipped Keras CNN
def test_shipped_keras_model_lists_its_keras_layers():
    rows = layers_json(MNIST)
    model = onnx.load(str(MNIST))
    # Dropout is the identity at inference: the export has no node for it, so no row
    expected = [name for kind, name in keras_layers_of_train_mnist() if kind != "Dropout"]
    assert len(expected) == 6
    assert [r["name"] for r in rows] == ["image"] + expected
    assert rows[0]["kind"] == "input" and rows[0]["shape"] == list(tensor_shape(model, "image"))
    # every node is in exactly one layer: the shape plumbing (Shape__34, Gather__37, ...) is folded in
    assert sorted(i for r in rows for i in r["nodes"]) == list(range(len(model.graph.node)))
    flatten = next(r for r in rows if r["name"] == "flatten")
    assert {"Shape__34", "Gather__37", "flatten/strided_slice", "Transpose__30"} <= set(flatten["node_names"])
    assert flatten["op_types"][:2] == ["Transpose", "Reshape"] and "Shape" in flatten["op_types"]
    # parameters as Keras counts them, from the architecture in train_mnist.py
    conv1, conv2 = 3 * 3 * 1 * 32 + 32, 3 * 3 * 32 * 64 + 64
    dense, preds = 12 * 12 * 64 * 128 + 128, 128 * 10 + 10
    params = {r["name"]: r["parameters"] for r in rows[1:]}
    assert params == {"conv2d": conv1, "conv2d_1": conv2, "max_pooling2d": 0, "flatten": 0, "dense": dense,
                      "preds": preds}
    last = rows[-1]
    assert last["output"] == model.graph.output[0].name and last["shape"] == list(tensor_shape(model, last["output"]))
    assert last["shape"][1:] == [10]
    assert next(r for r in rows if r["name"] == "conv2d_1")["shape"][1:] == [64, 24, 24]  # NCHW inside the graph


def test_shipped_keras_model_matches_the_keras_model():
    """The same numbers from Keras itself: count_params and output shape (NHWC there, NCHW in ONNX)."""
    pytest.importorskip("keras", reason="the keras extra is not installed")
    import sys

    sys.path.insert(0, str(MODELS_DIR))
    try:
        import train_mnist
    finally:
        sys.path.remove(str(MODELS_DIR))
    keras_model = train_mnist.build_model()
    rows = {r["name"]: r for r in layers_json(MNIST)}
    for layer in keras_model.layers:
        if type(layer).__name__ == "Dropout":
            assert layer.name not in rows
            continue
        row, shape = rows[layer.name], list(layer.output.shape)
        assert row["parameters"] == layer.count_params(), layer.name
        assert row["shape"][1:] == ([shape[-1], *shape[1:-1]] if len(shape) == 4 else shape[1:]), layer.name


def test_table_fits_80_columns_and_shows_the_layers():
    result = invoke("layers", MNIST)
    assert result.exit_code == 0, result.output
    lines = result.stdout.rstrip("\n").splitlines()
    assert max(len(line) for line in lines) <= 80
    rows = layers_json(MNIST)
    assert len(lines) == len(rows) + 4  # file, header, rule, one line per row, total
    for r in rows:
        assert any(line.startswith(r["name"] + " ") for line in lines), r["name"]
    assert "Shape__34" not in result.stdout and "strided_slice" not in result.stdout
    total = sum(r["parameters"] for r in rows)
    assert f"{total:,} parameters in 6 layers" in lines[-1]
    assert f"{rows[-1]['parameters']:,}" in next(line for line in lines if line.startswith("preds "))


def test_long_and_hostile_names_stay_on_one_line_as_plain_text(tmp_path):
    long = "encoder/" + "very_long_scope_name_" * 6 + "conv"
    nodes = [helper.make_node("Relu", ["x"], ["[bold red]x\x1b[2J" + "y" * 90], name=f"{long}/Relu"),
             helper.make_node("Neg", ["[bold red]x\x1b[2J" + "y" * 90], ["out"], name="[red]evil\x1b]0;t\x07/Neg")]
    graph = helper.make_graph(nodes, "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 4])],
                              [helper.make_tensor_value_info("out", TensorProto.FLOAT, [1, 4])])
    path = tmp_path / "names.onnx"
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]), str(path))
    for args in ((), ("--nodes",)):
        result = invoke("layers", path, *args)
        assert result.exit_code == 0, result.output
        assert "\x1b" not in result.stdout and "\x07" not in result.stdout
        assert "\\x1b" in result.stdout and "[red]evil" in result.stdout  # shown, never markup or escapes
    lines = invoke("layers", path).stdout.rstrip("\n").splitlines()
    assert max(len(line) for line in lines) <= 80 and len(lines) == 4 + 3  # input + 2 layers
    assert any(line.startswith("encoder/very_") and "…" in line.split()[0] for line in lines)  # elided


# ------------------------------------------------------------------------------ PyTorch module paths
def test_shipped_torch_model_shows_module_paths():
    rows = layers_json(MODELS_DIR / "shapes_cnn.onnx")
    names = [r["name"] for r in rows]
    assert names[:4] == ["image", "block1.conv", "block1.relu", "block1.pool"]
    assert {"block4.conv", "pool", "fc", "softmax"} <= set(names)
    fc = next(r for r in rows if r["name"] == "fc")
    assert fc["op_types"] == ["Gemm"] and fc["parameters"] == 64 * 9 + 9 and fc["shape"][1:] == [9]


def test_torchscript_export_groups_nodes_by_module():
    torch = pytest.importorskip("torch", reason="the torch extra is not installed")
    nn = torch.nn

    class Block(nn.Module):  # a residual block: its own Add between two submodules
        def __init__(self):
            super().__init__()
            self.conv, self.relu = nn.Conv2d(4, 4, 3, padding=1), nn.ReLU()

        def forward(self, x):
            return self.relu(self.conv(x) + x)

    class Net(nn.Module):
        def __init__(self):
            super().__init__()
            self.features = nn.Sequential(nn.Conv2d(1, 4, 3), nn.ReLU(), Block(), nn.MaxPool2d(2))
            self.classifier = nn.Sequential(nn.Linear(36, 8), nn.ReLU(), nn.Linear(8, 3))

        def forward(self, x):
            y = self.features(x)
            return self.classifier(y.view(y.size(0), -1))  # Shape/Gather/Concat plumbing outside any module

    net = Net().eval()
    buffer = io.BytesIO()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(net, (torch.zeros(1, 1, 8, 8),), buffer, dynamo=False, input_names=["x"],
                          dynamic_axes={"x": {0: "batch"}})
    model = onnx.load_from_string(buffer.getvalue())
    assert any(n.name.startswith("/features/") for n in model.graph.node)  # the raw exporter's names
    rows = model_layers(model)
    leaves = {name: m for name, m in net.named_modules() if name and not list(m.children())}
    assert [r.name for r in rows if r.name in leaves] == list(leaves)
    for r in rows:
        if r.name in leaves:
            assert r.parameters == sum(p.numel() for p in leaves[r.name].parameters()), r.name
    # the block's row: its own Add; its output is the block's (after its relu), and comes after its parts
    names = [r.name for r in rows]
    block = rows[names.index("features.2")]
    assert block.op_types == ("Add",) and block.parameters == 0
    assert block.output == rows[names.index("features.2.relu")].output == layer_output(model, "features.2")
    assert names.index("features.2") == names.index("features.2.relu") + 1
    others = [r for r in rows[1:] if r.name not in dict(net.named_modules())]
    assert [r.op_types[0] for r in others] == ["Reshape"]  # view(): Shape, Gather, ... folded into it
    assert {"Shape", "Gather", "Concat"} <= set(others[0].op_types)
    assert sorted(i for r in rows for i in r.nodes) == list(range(len(model.graph.node)))


def _dynamo_node(op, inputs, output, name, scopes, classes, namespace):
    node = helper.make_node(op, inputs, [output], name=name)
    for key, value in (("pkg.torch.onnx.name_scopes", repr(scopes)), ("pkg.torch.onnx.class_hierarchy", repr(classes)),
                       ("namespace", namespace)):
        if value is not None:
            entry = node.metadata_props.add()
            entry.key, entry.value = key, value
    return node


def test_dynamo_export_metadata_gives_module_paths():
    """Metadata as torch 2.13's dynamo exporter writes it: the lists start with the root module and
    end with the op's own name; a Conv with a BatchNorm folded in carries the BatchNorm's scopes but
    reads the conv's weight."""
    rng = np.random.default_rng(0)
    inits = [numpy_helper.from_array(rng.standard_normal(s).astype(np.float32), n)
             for n, s in (("features.0.weight", [4, 1, 3, 3]), ("features.0.bias", [4]))]
    inits.append(numpy_helper.from_array(np.array([1, -1], np.int64), "val_12"))
    net, relu = "__main__.Net", "torch.nn.modules.activation.ReLU"
    nodes = [
        _dynamo_node("Conv", ["x", "features.0.weight", "features.0.bias"], "getitem", "node_Conv_12",
                     ["", "features", "features.1", "_native_batch_norm_legit_no_training"],
                     [net, "torch.nn.modules.container.Sequential", "torch.nn.modules.batchnorm.BatchNorm2d",
                      "aten._native_batch_norm_legit_no_training.default"], None),
        _dynamo_node("Relu", ["getitem"], "relu", "node_relu", ["", "features", "features.2", "relu"],
                     [net, "torch.nn.modules.container.Sequential", relu, "aten.relu.default"], None),
        _dynamo_node("Reshape", ["relu", "val_12"], "view", "node_view", None, None,
                     f": {net}/view: aten.view.default"),
    ]
    graph = helper.make_graph(nodes, "main_graph", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 1, 5, 5])],
                              [helper.make_tensor_value_info("view", TensorProto.FLOAT, [1, 36])],
                              initializer=inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)], producer_name="pytorch")
    rows = model_layers(model)
    assert [(r.name, r.output, r.parameters) for r in rows[1:]] == [
        ("features.0", "getitem", 4 * 9 + 4), ("features.2", "relu", 0), ("node_view", "view", 0)]
    assert layer_output(model, "features.2") == "relu"


# ------------------------------------------------------------------------------ --layer takes the table's names
def test_layer_names_resolve_to_the_layer_output_on_every_command(tmp_path):
    rows = {r["name"]: r for r in layers_json(MNIST)}
    model = onnx.load(str(MNIST))
    for name, row in rows.items():
        if row["kind"] == "layer":
            assert layer_output(model, name) == row["output"]
            assert row["output"] in find_layer(model, name).outputs
    grad = invoke("grad", MNIST, "--layer", "preds", "-o", tmp_path / "g.onnx")
    assert grad.exit_code == 0, grad.output
    target = onnx.load(str(tmp_path / "g.onnx")).graph.output[0].name
    assert target == rows["preds"]["output"] == model.graph.output[0].name  # the logits/preds target's tensor
    check = invoke("check", MNIST, "--layer", "conv2d_1", "--json")
    assert check.exit_code == 0, check.output
    assert json.loads(check.stdout)["target"] == rows["conv2d_1"]["output"]
    one = json.loads(invoke("layers", MNIST, "--layer", "Gather__37", "--json").stdout)  # a node -> its layer
    assert [r["name"] for r in one] == ["flatten"]


def test_unknown_layer_is_one_clear_error(tmp_path):
    for args in (("layers", MNIST), ("grad", MNIST, "-o", tmp_path / "g.onnx"), ("check", MNIST),
                 ("maximize", MNIST, "--json")):
        assert_user_error(invoke(*args, "--layer", "pred"), "no layer named 'pred'", "preds")
    with pytest.raises(LayerNotFoundError):
        layer_output(onnx.load(str(MNIST)), "conv3d")


# ------------------------------------------------------------------------------ numeric tensor names
def numbered_model() -> onnx.ModelProto:
    """As an opset-6 PyTorch export (IR 3) writes it: unnamed nodes, values numbered, weights listed
    as graph inputs too. Tensor ``3`` is the Conv's output; node 3 is the Flatten."""
    rng = np.random.default_rng(0)
    inits = [numpy_helper.from_array(rng.standard_normal(s).astype(np.float32), n)
             for n, s in (("1", [2, 1, 3, 3]), ("2", [2]), ("7", [3, 2]), ("8", [3]))]
    nodes = [helper.make_node("Conv", ["0", "1", "2"], ["3"], pads=[1, 1, 1, 1]),
             helper.make_node("Relu", ["3"], ["4"]),
             helper.make_node("GlobalAveragePool", ["4"], ["5"]),
             helper.make_node("Flatten", ["5"], ["6"]),
             helper.make_node("Gemm", ["6", "7", "8"], ["9"], transB=1, broadcast=1),
             helper.make_node("Softmax", ["9"], ["10"])]
    inputs = [helper.make_tensor_value_info("0", TensorProto.FLOAT, [1, 1, 6, 6])]
    inputs += [helper.make_tensor_value_info(t.name, t.data_type, t.dims) for t in inits]
    graph = helper.make_graph(nodes, "torch-jit-export", inputs,
                              [helper.make_tensor_value_info("10", TensorProto.FLOAT, [1, 3])], initializer=inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 6)], producer_name="pytorch")
    model.ir_version = 3
    onnx.checker.check_model(model)
    return model


@pytest.fixture(scope="module")
def numbered(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("numbered") / "numbered.onnx"
    onnx.save(numbered_model(), str(path))
    return path


def test_numeric_tensor_name_is_a_name_before_an_index(numbered, tmp_path):
    model = numbered_model()
    assert find_layer(model, "3").op_type == "Conv" and find_layer(model, 3).op_type == "Flatten"
    grad = invoke("grad", numbered, "--layer", "3", "-o", tmp_path / "g.onnx")
    assert grad.exit_code == 0, grad.output
    assert onnx.load(str(tmp_path / "g.onnx")).graph.output[0].name == "3"
    check = invoke("check", numbered, "--layer", "3", "--json")
    assert check.exit_code == 0, check.output
    assert json.loads(check.stdout)["target"] == "3"
    maximize = invoke("maximize", numbered, "--layer", "3", "--steps", "2", "--json")
    assert maximize.exit_code == 0, maximize.output
    assert json.loads(maximize.stdout)["settings"]["tensors"] == {"3": "3"}
    assert [r["name"] for r in json.loads(invoke("layers", numbered, "--layer", "3", "--json").stdout)] == ["3"]


def test_an_integer_that_names_nothing_is_a_node_index(numbered):
    model = numbered_model()
    assert layer_output(model, "-2") == "9"  # no value is named -2: node -2, the Gemm
    result = invoke("check", numbered, "--layer", "-2", "--json")
    assert result.exit_code == 0, result.output
    assert json.loads(result.stdout)["target"] == "9"
    # '7' names a weight: not a layer output, and not silently node 7 either
    assert_user_error(invoke("maximize", numbered, "--layer", "7", "--json"), "'7'", "weight")
    assert_user_error(invoke("layers", numbered, "--layer", "42"), "out of range")


def test_integer_text_is_not_matched_against_scope_segments():
    """``/features/3/Relu`` has the scope segment ``3``; ``--layer 3`` is still node 3."""
    model = M.torch_named()
    for node in model.graph.node[:3]:
        node.name = node.name.replace("/layer1/", "/features/3/")
    assert find_layer(model, "3").index == 3
