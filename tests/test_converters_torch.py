"""converters.to_onnx on PyTorch: nn.Module (ResNet- and MobileNetV3-style), TorchScript files,
module paths as node names, free batch, parity, metadata and errors."""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap
from collections import Counter
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import pytest

import converters
from converters.pytorch import name_nodes_by_module, rename_torch_nodes
from onnxviz.errors import ConversionError, ParityError
from onnxviz.graph import find_layer, input_info
from onnxviz.rewrite import expose

torch = pytest.importorskip("torch", reason="the torch extra is not installed")
nn = torch.nn

REPO = Path(__file__).resolve().parents[1]


# --------------------------------------------------------------------------- models defined here

class BasicBlock(nn.Module):
    """torchvision's ResNet BasicBlock, written out: conv-bn-relu-conv-bn + (projected) shortcut."""

    def __init__(self, c_in: int, c_out: int, stride: int = 1):
        super().__init__()
        self.conv1 = nn.Conv2d(c_in, c_out, 3, stride, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(c_out)
        self.relu = nn.ReLU(inplace=True)
        self.conv2 = nn.Conv2d(c_out, c_out, 3, 1, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(c_out)
        self.downsample = None
        if stride != 1 or c_in != c_out:
            self.downsample = nn.Sequential(nn.Conv2d(c_in, c_out, 1, stride, bias=False), nn.BatchNorm2d(c_out))

    def forward(self, x):
        identity = x if self.downsample is None else self.downsample(x)
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        return self.relu(out + identity)


class TinyResNet(nn.Module):
    """A ResNet-18-shaped network (stem, layer1..layer4 of two BasicBlocks, avgpool, fc), narrow."""

    def __init__(self, num_classes: int = 7, widths=(8, 16, 24, 32)):
        super().__init__()
        self.conv1 = nn.Conv2d(3, widths[0], 7, 2, 3, bias=False)
        self.bn1 = nn.BatchNorm2d(widths[0])
        self.relu = nn.ReLU(inplace=True)
        self.maxpool = nn.MaxPool2d(3, 2, 1)
        c_in = widths[0]
        for i, width in enumerate(widths):
            stride = 1 if i == 0 else 2
            setattr(self, f"layer{i + 1}", nn.Sequential(BasicBlock(c_in, width, stride), BasicBlock(width, width)))
            c_in = width
        self.avgpool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(c_in, num_classes)

    def forward(self, x):
        x = self.maxpool(self.relu(self.bn1(self.conv1(x))))
        x = self.layer4(self.layer3(self.layer2(self.layer1(x))))
        return self.fc(torch.flatten(self.avgpool(x), 1))


class SqueezeExcite(nn.Module):
    def __init__(self, channels: int, squeezed: int):
        super().__init__()
        self.avgpool = nn.AdaptiveAvgPool2d(1)
        self.fc1 = nn.Conv2d(channels, squeezed, 1)
        self.relu = nn.ReLU()
        self.fc2 = nn.Conv2d(squeezed, channels, 1)
        self.scale_activation = nn.Hardsigmoid()

    def forward(self, x):
        return x * self.scale_activation(self.fc2(self.relu(self.fc1(self.avgpool(x)))))


def conv_bn_act(c_in, c_out, kernel, stride=1, groups=1, act=nn.Hardswish):
    return nn.Sequential(nn.Conv2d(c_in, c_out, kernel, stride, kernel // 2, groups=groups, bias=False),
                         nn.BatchNorm2d(c_out), act())


class InvertedResidual(nn.Module):
    """MobileNetV3's block: expand 1x1, depthwise kxk, squeeze-excite, project 1x1, residual."""

    def __init__(self, c_in, expanded, c_out, kernel, stride, se: bool, act):
        super().__init__()
        layers = []
        if expanded != c_in:
            layers.append(conv_bn_act(c_in, expanded, 1, act=act))
        layers.append(conv_bn_act(expanded, expanded, kernel, stride, groups=expanded, act=act))
        if se:
            layers.append(SqueezeExcite(expanded, max(8, expanded // 4)))
        layers.append(nn.Sequential(nn.Conv2d(expanded, c_out, 1, bias=False), nn.BatchNorm2d(c_out)))
        self.block = nn.Sequential(*layers)
        self.use_residual = stride == 1 and c_in == c_out

    def forward(self, x):
        y = self.block(x)
        return x + y if self.use_residual else y


class TinyMobileNetV3(nn.Module):
    def __init__(self, num_classes: int = 6):
        super().__init__()
        self.features = nn.Sequential(
            conv_bn_act(3, 16, 3, 2),
            InvertedResidual(16, 16, 16, 3, 2, se=True, act=nn.ReLU),
            InvertedResidual(16, 72, 24, 3, 2, se=False, act=nn.ReLU),
            InvertedResidual(24, 88, 24, 3, 1, se=False, act=nn.ReLU),
            InvertedResidual(24, 96, 40, 5, 2, se=True, act=nn.Hardswish),
            conv_bn_act(40, 96, 1),
        )
        self.avgpool = nn.AdaptiveAvgPool2d(1)
        self.classifier = nn.Sequential(nn.Linear(96, 64), nn.Hardswish(), nn.Dropout(0.2), nn.Linear(64, num_classes))

    def forward(self, x):
        return self.classifier(torch.flatten(self.avgpool(self.features(x)), 1))


class TwoInTwoOut(nn.Module):
    """An image and a vector in; logits and an embedding out."""

    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(3, 4, 3)
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.meta = nn.Linear(5, 4)
        self.head = nn.Linear(8, 3)

    def forward(self, image, extra):
        features = torch.cat([torch.flatten(self.pool(self.conv(image)), 1), self.meta(extra)], dim=1)
        return self.head(features), features


def randomize_batchnorm(module: nn.Module, seed: int = 0) -> nn.Module:
    """Give every BatchNorm non-trivial statistics and affine parameters (fresh ones are identities)."""
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for m in module.modules():
            if isinstance(m, nn.BatchNorm2d):
                m.running_mean.copy_(torch.randn(m.num_features, generator=generator) * 0.1)
                m.running_var.copy_(torch.rand(m.num_features, generator=generator) + 0.5)
                m.weight.copy_(torch.rand(m.num_features, generator=generator) + 0.5)
                m.bias.copy_(torch.randn(m.num_features, generator=generator) * 0.1)
    return module


def session(model: onnx.ModelProto) -> ort.InferenceSession:
    return ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])


def metadata(model: onnx.ModelProto) -> dict[str, str]:
    return {p.key: p.value for p in model.metadata_props}


def hooked(module: nn.Module, names: list[str], x: np.ndarray) -> dict[str, np.ndarray]:
    """The outputs of the named submodules on ``x`` (eval mode), by forward hooks."""
    seen: dict[str, np.ndarray] = {}
    handles = [module.get_submodule(name).register_forward_hook(
        lambda _m, _i, out, name=name: seen.__setitem__(name, out.detach().numpy().copy())) for name in names]
    try:
        module.eval()
        with torch.no_grad():
            module(torch.from_numpy(x))
    finally:
        for handle in handles:
            handle.remove()
    return seen


# --------------------------------------------------------------------------- ResNet-style

@pytest.fixture(scope="module")
def resnet():
    torch.manual_seed(0)
    return randomize_batchnorm(TinyResNet())


@pytest.fixture(scope="module")
def resnet_converted(resnet):
    resnet.train()  # the converter must use eval mode and give the mode back
    example = np.random.default_rng(0).uniform(0, 1, (1, 3, 48, 48)).astype(np.float32)
    result = converters.to_onnx(resnet, example_input=example, input_range=(0, 1),
                                class_names=[f"c{i}" for i in range(7)])
    return result


def test_resnet_parity_and_result(resnet_converted, resnet):
    result = resnet_converted
    assert result.format == "torch"
    assert result.source_version == f"torch {torch.__version__}"
    assert 0 <= result.max_abs_diff < 1e-4 and 0 <= result.max_rel_diff < 1e-2
    assert resnet.training and all(m.training for m in resnet.modules())  # mode given back
    onnx.checker.check_model(result.model, full_check=True)
    assert result.model.ir_version <= converters.MAX_IR_VERSION
    x = np.random.default_rng(1).uniform(0, 1, (3, 3, 48, 48)).astype(np.float32)  # another batch size
    sess = session(result.model)
    got = sess.run(None, {"x": x})[0]
    resnet.eval()
    with torch.no_grad():
        expected = resnet(torch.from_numpy(x)).numpy()
    resnet.train()
    np.testing.assert_allclose(got, expected, atol=1e-5, rtol=1e-4)
    assert expected.std() > 1e-2


def test_resnet_free_batch_and_metadata(resnet_converted):
    model = resnet_converted.model
    (image,) = model.graph.input
    assert image.name == "x"  # forward()'s parameter name
    assert [d.dim_param or d.dim_value for d in image.type.tensor_type.shape.dim] == ["batch", 3, 48, 48]
    (out,) = model.graph.output
    assert out.name == "output"
    assert [d.dim_param or d.dim_value for d in out.type.tensor_type.shape.dim] == ["batch", 7]
    meta = metadata(model)
    assert meta[converters.META_LAYOUT] == "NCHW"
    assert json.loads(meta[converters.META_RANGE]) == [0.0, 1.0]
    assert json.loads(meta[converters.META_CLASSES]) == [f"c{i}" for i in range(7)]
    assert meta[converters.META_SOURCE] == f"torch {torch.__version__}"
    (info,) = input_info(model)
    assert info.layout == "NCHW" and info.value_range == (0.0, 1.0)


def test_resnet_node_names_are_module_paths(resnet_converted, resnet):
    model = resnet_converted.model
    names = [n.name for n in model.graph.node]
    assert len(set(names)) == len(names)
    assert "layer4.1.conv2/Conv" in names
    assert "layer3.0.downsample.0/Conv" in names
    assert "Flatten" in names  # torch.flatten in forward(): no module
    modules = {name for name, _ in resnet.named_modules() if name}
    for node in model.graph.node:  # every name is "<module path>/<op>" or "<op>"
        path, _, op = node.name.rpartition("/")
        assert not path or path in modules, node.name
        scopes = {p.key: p.value for p in node.metadata_props}.get("pkg.torch.onnx.name_scopes")
        if path:
            chain = path.split(".")
            assert scopes == repr([".".join(chain[: i + 1]) for i in range(len(chain))])
    assert Counter(n.op_type for n in model.graph.node)["Conv"] == 1 + 8 * 2 + 3  # stem, blocks, projections


@pytest.mark.parametrize("key,module_name,op_type", [
    ("layer4.1.conv2", "layer4.1.bn2", "Conv"),  # the exporter folds bn2 into conv2's Conv
    ("layer4.1", "layer4.1", "Relu"),
    ("layer4", "layer4", "Relu"),
    ("layer2.0.downsample", "layer2.0.downsample", "Conv"),
    ("maxpool", "maxpool", "MaxPool"),
    ("fc", "fc", "Gemm"),
])
def test_find_layer_by_module_path(resnet_converted, resnet, key, module_name, op_type):
    """find_layer(model, "layer4.1.conv2") finds the node of that module, and its tensor has the
    module's values (hooked in PyTorch)."""
    model = resnet_converted.model
    layer = find_layer(model, key)
    assert layer.op_type == op_type, layer
    x = np.random.default_rng(2).uniform(0, 1, (2, 3, 48, 48)).astype(np.float32)
    exposed = expose(model, [layer.output])
    sess = session(exposed)
    got = dict(zip([o.name for o in sess.get_outputs()], sess.run(None, {"x": x})))[layer.output]
    expected = hooked(resnet, [module_name], x)[module_name]
    resnet.train()
    np.testing.assert_allclose(got, expected, atol=1e-5, rtol=1e-4)


# --------------------------------------------------------------------------- MobileNetV3-style

def test_mobilenetv3_style(tmp_path):
    torch.manual_seed(1)
    model = randomize_batchnorm(TinyMobileNetV3(), seed=1).eval()
    out = tmp_path / "mnv3.onnx"
    result = converters.to_onnx(model, example_input=torch.rand(1, 3, 64, 64), output=out, opset=17)
    assert result.format == "torch" and result.max_abs_diff < 1e-4
    saved = onnx.load(str(out))
    assert {op.domain: op.version for op in saved.opset_import}[""] == 17
    ops = Counter(n.op_type for n in saved.graph.node)
    assert ops["HardSwish"] >= 3 and ops["HardSigmoid"] == 2 and ops["Mul"] >= 2
    depthwise = find_layer(saved, "features.4.block.1.0")  # the 5x5 depthwise conv of the SE block
    group = next(a.i for a in saved.graph.node[depthwise.index].attribute if a.name == "group")
    assert depthwise.op_type == "Conv" and group == 96
    assert find_layer(saved, "features.1.block.0").op_type == "Relu"  # depthwise conv-bn-relu
    assert find_layer(saved, "features.1.block.1").op_type == "Mul"  # squeeze-excite: x * scale
    assert find_layer(saved, "features.4.block.2.scale_activation").op_type == "HardSigmoid"
    x = np.random.default_rng(3).uniform(0, 1, (4, 3, 64, 64)).astype(np.float32)
    with torch.no_grad():
        expected = model(torch.from_numpy(x)).numpy()
    np.testing.assert_allclose(session(saved).run(None, {"x": x})[0], expected, atol=1e-5, rtol=1e-4)


# --------------------------------------------------------------------------- several inputs and outputs

def test_two_inputs_two_outputs():
    torch.manual_seed(2)
    model = TwoInTwoOut()
    result = converters.to_onnx(model, example_input=[np.zeros((1, 3, 10, 10), np.float32),
                                                      np.zeros((1, 5), np.float32)])
    graph = result.model.graph
    assert [i.name for i in graph.input] == ["image", "extra"]
    assert [o.name for o in graph.output] == ["output_0", "output_1"]
    for value in list(graph.input) + list(graph.output):
        assert value.type.tensor_type.shape.dim[0].dim_param == "batch"
    assert json.loads(metadata(result.model)[converters.META_LAYOUT]) == {"image": "NCHW"}
    assert result.max_abs_diff < 1e-5
    rng = np.random.default_rng(4)
    image, extra = rng.standard_normal((3, 3, 10, 10)).astype(np.float32), rng.standard_normal((3, 5)).astype(np.float32)
    got = session(result.model).run(None, {"image": image, "extra": extra})
    with torch.no_grad():
        expected = [t.numpy() for t in model(torch.from_numpy(image), torch.from_numpy(extra))]
    for a, b in zip(got, expected):
        np.testing.assert_allclose(a, b, atol=1e-5, rtol=1e-4)


def test_module_needs_an_example_or_a_shape():
    model = TwoInTwoOut()
    with pytest.raises(ConversionError, match="example_input"):
        converters.to_onnx(model)
    result = converters.to_onnx(TinyResNet(), input_shape=(1, 3, 32, 32))  # a shape is enough too
    assert result.max_abs_diff < 1e-4
    with pytest.raises(ConversionError, match="example input failed"):
        converters.to_onnx(TinyResNet(), example_input=np.zeros((1, 5, 32, 32), np.float32))


def test_parity_failure_is_an_error():
    class Noisy(nn.Module):  # different on every call: the check must catch it
        def __init__(self):
            super().__init__()
            self.linear = nn.Linear(4, 3)

        def forward(self, x):
            return self.linear(x) + 0.01 * torch.rand(1)

    with pytest.raises(ParityError, match="beyond tolerance"):
        converters.to_onnx(Noisy(), example_input=np.zeros((1, 4), np.float32))


# --------------------------------------------------------------------------- TorchScript files

@pytest.mark.parametrize("how", ["script", "trace"])
def test_torchscript_file(resnet, tmp_path, how):
    resnet.eval()
    example = torch.rand(1, 3, 40, 40)
    scripted = torch.jit.script(resnet) if how == "script" else torch.jit.trace(resnet, example)
    resnet.train()
    path = tmp_path / "resnet.pt"
    torch.jit.save(scripted, str(path))
    out = tmp_path / "resnet.onnx"
    result = converters.to_onnx(path, input_shape=(1, 3, 40, 40), output=out)
    assert result.format == "torchscript" and result.source_version.endswith("(TorchScript)")
    assert result.max_abs_diff < 1e-4
    model = onnx.load(str(out))
    assert model.graph.input[0].type.tensor_type.shape.dim[0].dim_param == "batch"
    assert metadata(model)[converters.META_LAYOUT] == "NCHW"
    names = [n.name for n in model.graph.node]
    assert "layer4.1.conv2/Conv" in names or "layer4.1.conv2/Conv_1" in names
    assert find_layer(model, "layer4.1.conv2").op_type == "Conv"
    x = np.random.default_rng(5).uniform(0, 1, (2, 3, 40, 40)).astype(np.float32)
    resnet.eval()
    with torch.no_grad():
        expected = resnet(torch.from_numpy(x)).numpy()
    resnet.train()
    sess = session(model)
    np.testing.assert_allclose(sess.run(None, {sess.get_inputs()[0].name: x})[0], expected, atol=1e-5, rtol=1e-4)


def test_torchscript_needs_input_shape_and_rejects_pickles(tmp_path):
    path = tmp_path / "model.pt"
    torch.jit.save(torch.jit.script(nn.Linear(3, 2)), str(path))
    with pytest.raises(ConversionError, match="input_shape"):
        converters.to_onnx(path)
    result = converters.to_onnx(path, input_shape=(1, 3))
    assert result.format == "torchscript" and result.max_abs_diff < 1e-5
    pickle = tmp_path / "checkpoint.pt"
    torch.save(nn.Linear(3, 2), str(pickle))
    with pytest.raises(ConversionError, match="torch.jit.save"):
        converters.to_onnx(pickle, input_shape=(1, 3))
    state = tmp_path / "weights.pth"
    torch.save(nn.Linear(3, 2).state_dict(), str(state))
    with pytest.raises(ConversionError, match="not a TorchScript file"):
        converters.to_onnx(state, input_shape=(1, 3))
    garbage = tmp_path / "garbage.pt"
    garbage.write_bytes(np.random.default_rng(0).bytes(1000))
    with pytest.raises(ConversionError, match="not a TorchScript file"):
        converters.to_onnx(garbage, input_shape=(1, 3))


# --------------------------------------------------------------------------- the torch.export-based exporter

@pytest.mark.slow
def test_dynamo_exporter_gives_the_same_names(resnet):
    """The fallback exporter (torch.export + onnxscript) names nodes node_conv2d_4 and keeps the
    module in metadata: the renaming makes its names module paths too."""
    pytest.importorskip("onnxscript", reason="the torch.export-based exporter needs onnxscript")
    from converters.pytorch import export_module

    resnet.eval()
    example = [torch.rand(1, 3, 32, 32)]
    model, exporter = export_module(resnet, example, ["x"], ["output"], ["output"], None, exporters=("dynamo",))
    assert exporter == "dynamo"
    modules = {name for name, _ in resnet.named_modules() if name}
    params = {name for name, _ in resnet.named_parameters()}
    names = rename_torch_nodes(model, modules, params)
    assert "layer4.1.conv2/Conv" in names and "layer3.0.downsample.0/Conv" in names
    name_nodes_by_module(model, modules, params)
    assert [n.name for n in model.graph.node] == names
    x = np.random.default_rng(6).uniform(0, 1, (2, 3, 32, 32)).astype(np.float32)
    with torch.no_grad():
        expected = resnet(torch.from_numpy(x)).numpy()
    resnet.train()
    np.testing.assert_allclose(session(model).run(None, {"x": x})[0], expected, atol=1e-5, rtol=1e-4)
    assert find_layer(model, "layer4.1.conv2").op_type == "Conv"


def test_no_triton_during_an_export_only_while_tensorflow_is_loaded(monkeypatch):
    """Loading Triton (the CUDA build of torch's) after TensorFlow segfaults; the exporters keep it
    out for the export only, and only when TensorFlow is loaded, leaving sys.modules as it was."""
    import importlib.util
    import types

    from converters.pytorch import _without_triton

    monkeypatch.delitem(sys.modules, "triton", raising=False)
    monkeypatch.delitem(sys.modules, "tensorflow", raising=False)
    before = importlib.util.find_spec("triton")
    with _without_triton():
        assert "triton" not in sys.modules  # no TensorFlow: nothing changes
    monkeypatch.setitem(sys.modules, "tensorflow", types.ModuleType("tensorflow"))
    with _without_triton():
        assert importlib.util.find_spec("triton") is None
        with pytest.raises(ImportError):
            import triton  # noqa: F401
    assert "triton" not in sys.modules
    assert (importlib.util.find_spec("triton") is None) == (before is None)


@pytest.mark.slow
def test_dynamo_export_after_tensorflow():
    """In one process with TensorFlow loaded (as in the test suite, or a user converting both kinds
    of model), the torch.export-based exporter runs, even with the CUDA build of torch (Triton)."""
    pytest.importorskip("onnxscript", reason="the torch.export-based exporter needs onnxscript")
    pytest.importorskip("tensorflow", reason="the keras extra is not installed")
    code = textwrap.dedent("""
        import sys
        import tensorflow
        import torch
        from converters.pytorch import export_module

        model = torch.nn.Sequential(torch.nn.Conv2d(3, 4, 3), torch.nn.ReLU(), torch.nn.Flatten())
        onnx_model, exporter = export_module(model, [torch.rand(1, 3, 8, 8)], ["x"], ["output"], ["output"], None,
                                             exporters=("dynamo",))
        assert exporter == "dynamo" and len(onnx_model.graph.node) >= 2
        assert "triton" not in sys.modules or sys.modules["triton"] is not None
        print("exported")
    """)
    done = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, f"exit {done.returncode}\n{done.stderr[-3000:]}"
    assert "exported" in done.stdout


# --------------------------------------------------------------------------- naming without torch

def _node(name: str, op: str, inputs=()) -> onnx.NodeProto:
    return onnx.helper.make_node(op, list(inputs), [name + "_out"], name=name)


def test_rename_torch_nodes_rules():
    modules = {"layer4", "layer4.1", "layer4.1.conv2", "layer4.1.relu", "features", "features.0", "fc"}
    params = {"layer4.1.conv2.weight", "fc.weight", "fc.bias"}
    graph = onnx.helper.make_graph([
        _node("/layer4/layer4.1/conv2/Conv", "Conv", ["x", "layer4.1.conv2.weight"]),  # by param and by name
        _node("/layer4/1/Conv_1", "Conv", ["x", "layer4.1.conv2.weight"]),  # scripted: the param decides
        _node("/layer4/layer4.1/relu_1/Relu", "Relu"),  # second call of the same ReLU module
        _node("/layer4/layer4.1/Add", "Add"),
        _node("/Flatten", "Flatten"),  # no module
        _node("node_linear", "Gemm", ["x", "fc.weight", "fc.bias"]),  # dynamo
        _node("node_relu_3", "Relu"),
        _node("node_view", "Reshape"),
    ], "g", [], [])
    scopes = graph.node[6].metadata_props.add()
    scopes.key, scopes.value = "pkg.torch.onnx.name_scopes", "['', 'features', 'features.0', 'relu_3']"
    names = rename_torch_nodes(onnx.helper.make_model(graph), modules, params)
    assert names == [
        "layer4.1.conv2/Conv",
        "layer4.1.conv2/Conv_1",
        "layer4.1.relu/Relu",
        "layer4.1/Add",
        "Flatten",
        "fc/Gemm",
        "features.0/Relu",
        "Reshape",
    ]
    assert rename_torch_nodes(onnx.helper.make_model(onnx.helper.make_graph(
        [_node("/a/Relu", "Relu"), _node("/a/Relu__x", "Relu"), _node("/a/Relu", "Relu")], "g", [], [])),
        {"a"}, set()) == ["a/Relu", "a/Relu__x", "a/Relu__1"]
    # A legacy scope that overlaps the path's end: layer2.0 / downsample / downsample.0.
    downsample = onnx.helper.make_model(onnx.helper.make_graph(
        [_node("/layer2/layer2.0/downsample/downsample.0/Conv", "Conv")], "g", [], []))
    assert rename_torch_nodes(downsample, {"layer2", "layer2.0", "layer2.0.downsample", "layer2.0.downsample.0"},
                              set()) == ["layer2.0.downsample.0/Conv"]


# --------------------------------------------------------------------------- missing framework

def test_missing_torch_names_the_extra(tmp_path):
    path = tmp_path / "model.pt"
    torch.jit.save(torch.jit.script(nn.Linear(3, 2)), str(path))
    code = textwrap.dedent(f"""
        import importlib.abc, sys

        class Block(importlib.abc.MetaPathFinder):
            def find_spec(self, name, path=None, target=None):
                if name.split(".")[0] in {{"torch", "onnxscript"}}:
                    raise ModuleNotFoundError(f"No module named {{name!r}}", name=name)
                return None

        sys.meta_path.insert(0, Block())
        import converters
        from onnxviz.errors import MissingDependencyError
        try:
            converters.to_onnx({str(path)!r}, input_shape=(1, 3))
        except MissingDependencyError as e:
            print(e)
        else:
            raise SystemExit("no error")
    """)
    done = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    assert 'pip install "onnxviz[torch]"' in done.stdout
    assert "torch" in done.stdout.split(":")[0]
