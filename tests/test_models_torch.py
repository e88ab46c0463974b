"""Model-level proof on PyTorch: a ResNet-style and a MobileNetV3-style network defined here (eval
mode, seeded random init with non-trivial BatchNorm statistics), exported with ``torch.onnx.export``
(dynamic batch axis), differentiated by onnxviz and compared with torch autograd.

Targets, at batch 1 and 3 (the graph is exported once, with a symbolic batch):
- one class logit;
- the spatial mean of one channel of a convolution in the middle of the network (the exporter folds
  each BatchNorm into the Conv before it, so the ONNX Conv output is the BatchNorm module's output;
  it is found with ``find_layer`` by the module path, and both sides are NCHW).

Bar: max |onnx - torch| / max |torch| <= 1e-3 on the input gradient, float32.
"""

from __future__ import annotations

import io
import warnings

import numpy as np
import onnx
import pytest

from onnxviz.gradients import GradientFunction
from onnxviz.graph import find_layer

torch = pytest.importorskip("torch", reason="the torch extra is not installed")
nn = torch.nn
F = torch.nn.functional

pytestmark = pytest.mark.slow

TOLERANCE = 1e-3
SIZE = 32
CLASSES = 10
TARGET_CLASS = 7
CHANNEL = 3
SEED = 0


# ----------------------------------------------------------------------------------- the networks

class BasicBlock(nn.Module):
    """ResNet basic block: conv-bn-relu-conv-bn + (projected) shortcut, then relu."""

    def __init__(self, cin: int, cout: int, stride: int = 1):
        super().__init__()
        self.conv1 = nn.Conv2d(cin, cout, 3, stride, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(cout)
        self.conv2 = nn.Conv2d(cout, cout, 3, 1, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(cout)
        self.shortcut = nn.Sequential()
        if stride != 1 or cin != cout:
            self.shortcut = nn.Sequential(nn.Conv2d(cin, cout, 1, stride, bias=False), nn.BatchNorm2d(cout))

    def forward(self, x):
        y = F.relu(self.bn1(self.conv1(x)))
        y = self.bn2(self.conv2(y))
        return F.relu(y + self.shortcut(x))


class TinyResNet(nn.Module):
    """Stem conv7x7/2-bn-relu, maxpool 3x3/2, three stages of basic blocks, global avgpool, linear."""

    def __init__(self, classes: int = CLASSES):
        super().__init__()
        self.conv1 = nn.Conv2d(3, 16, 7, 2, 3, bias=False)
        self.bn1 = nn.BatchNorm2d(16)
        self.maxpool = nn.MaxPool2d(3, 2, 1)
        self.layer1 = nn.Sequential(BasicBlock(16, 16), BasicBlock(16, 16))
        self.layer2 = nn.Sequential(BasicBlock(16, 32, 2), BasicBlock(32, 32))
        self.layer3 = nn.Sequential(BasicBlock(32, 64, 2), BasicBlock(64, 64))
        self.avgpool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(64, classes)

    def forward(self, x):
        x = self.maxpool(F.relu(self.bn1(self.conv1(x))))
        x = self.layer3(self.layer2(self.layer1(x)))
        return self.fc(torch.flatten(self.avgpool(x), 1))


class ConvBNAct(nn.Sequential):
    def __init__(self, cin: int, cout: int, kernel: int, stride: int = 1, groups: int = 1, act: type | None = nn.ReLU):
        layers = [nn.Conv2d(cin, cout, kernel, stride, kernel // 2, groups=groups, bias=False), nn.BatchNorm2d(cout)]
        if act is not None:
            layers.append(act())
        super().__init__(*layers)


class SqueezeExcite(nn.Module):
    """Global avgpool, 1x1 reduce + relu, 1x1 expand + hardsigmoid, channel scaling."""

    def __init__(self, channels: int, reduced: int):
        super().__init__()
        self.reduce = nn.Conv2d(channels, reduced, 1)
        self.expand = nn.Conv2d(reduced, channels, 1)

    def forward(self, x):
        s = F.adaptive_avg_pool2d(x, 1)
        s = F.hardsigmoid(self.expand(F.relu(self.reduce(s))))
        return x * s


class InvertedResidual(nn.Module):
    """MobileNetV3 block: 1x1 expand, depthwise kxk, optional squeeze-excite, 1x1 project, residual."""

    def __init__(self, cin: int, expanded: int, cout: int, kernel: int, stride: int, se: bool, act: type):
        super().__init__()
        self.residual = stride == 1 and cin == cout
        self.expand = ConvBNAct(cin, expanded, 1, act=act) if expanded != cin else nn.Identity()
        self.depthwise = ConvBNAct(expanded, expanded, kernel, stride, groups=expanded, act=act)
        self.se = SqueezeExcite(expanded, max(8, expanded // 4)) if se else nn.Identity()
        self.project = ConvBNAct(expanded, cout, 1, act=None)

    def forward(self, x):
        y = self.project(self.se(self.depthwise(self.expand(x))))
        return x + y if self.residual else y


class TinyMobileNetV3(nn.Module):
    def __init__(self, classes: int = CLASSES):
        super().__init__()
        hs, re = nn.Hardswish, nn.ReLU
        self.stem = ConvBNAct(3, 16, 3, 2, act=hs)
        self.blocks = nn.Sequential(
            InvertedResidual(16, 16, 16, 3, 2, True, re),
            InvertedResidual(16, 72, 24, 3, 2, False, re),
            InvertedResidual(24, 88, 24, 3, 1, False, re),
            InvertedResidual(24, 96, 40, 5, 2, True, hs),
            InvertedResidual(40, 120, 40, 5, 1, True, hs),
        )
        self.head = ConvBNAct(40, 96, 1, act=hs)
        self.classifier = nn.Sequential(nn.Linear(96, 128), nn.Hardswish(), nn.Dropout(0.2), nn.Linear(128, classes))

    def forward(self, x):
        x = self.head(self.blocks(self.stem(x)))
        return self.classifier(torch.flatten(F.adaptive_avg_pool2d(x, 1), 1))


# name -> (constructor, find_layer key of the target, module whose output it is in torch, its ONNX op)
NETWORKS = {
    # the exporter folds bn1 into conv1: the ONNX Conv output is bn1's output
    "resnet": (TinyResNet, "layer2.1.conv1", "layer2.1.bn1", "Conv"),
    # the depthwise conv unit of block 3 (conv, folded bn, hardswish): find_layer gives its last node
    "mobilenetv3": (TinyMobileNetV3, "blocks.3.depthwise", "blocks.3.depthwise", "HardSwish"),
}


def randomize_batchnorm(model: nn.Module, generator: torch.Generator) -> None:
    """Give every BatchNorm non-trivial statistics and affine parameters (the defaults are 0/1),
    so the exporter's folding of BatchNorm into Conv is really exercised."""
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, nn.BatchNorm2d):
                n = m.num_features
                m.running_mean.copy_(torch.randn(n, generator=generator) * 0.1)
                m.running_var.copy_(torch.rand(n, generator=generator) + 0.5)
                m.weight.copy_(torch.rand(n, generator=generator) + 0.5)
                m.bias.copy_(torch.randn(n, generator=generator) * 0.1)


def export(model: nn.Module) -> onnx.ModelProto:
    """torch.onnx.export with a dynamic batch axis. The TorchScript exporter (dynamo=False) is used:
    torch 2.13's default dynamo exporter needs onnxscript, which the torch extra does not install."""
    buffer = io.BytesIO()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # the TorchScript exporter's deprecation notice
        torch.onnx.export(model, (torch.zeros(2, 3, SIZE, SIZE),), buffer, dynamo=False, opset_version=17,
                          input_names=["image"], output_names=["logits"],
                          dynamic_axes={"image": {0: "batch"}, "logits": {0: "batch"}})
    model_proto = onnx.load_from_string(buffer.getvalue())
    onnx.checker.check_model(model_proto, full_check=True)
    return model_proto


@pytest.fixture(scope="module", params=sorted(NETWORKS))
def network(request):
    torch.manual_seed(SEED)
    build, layer_key, torch_module, op_type = NETWORKS[request.param]
    model = build().eval()
    randomize_batchnorm(model, torch.Generator().manual_seed(SEED))
    exported = export(model)
    assert exported.graph.input[0].type.tensor_type.shape.dim[0].dim_param == "batch"
    return request.param, model, exported, layer_key, torch_module, op_type


def rel_error(got: np.ndarray, expected: np.ndarray) -> float:
    return float(np.abs(got.astype(np.float64) - expected).max() / max(np.abs(expected).max(), 1e-30))


def inputs(batch: int) -> np.ndarray:
    return np.random.default_rng(batch).standard_normal((batch, 3, SIZE, SIZE)).astype(np.float32)


@pytest.mark.parametrize("batch", [1, 3])
def test_logit_gradient_matches_autograd(network, batch):
    name, model, exported = network[:3]
    x = inputs(batch)
    fn = GradientFunction(exported, method="graph", providers="cpu")
    cotangent = np.zeros((batch, CLASSES), np.float32)
    cotangent[:, TARGET_CLASS] = 1.0
    logits, grad = fn(x, cotangent)

    xt = torch.tensor(x, requires_grad=True)
    torch_logits = model(xt)
    (torch_grad,) = torch.autograd.grad(torch_logits[:, TARGET_CLASS].sum(), xt)
    assert rel_error(logits, torch_logits.detach().numpy()) <= 1e-4, f"{name}: ONNX logits differ from torch's"
    error = rel_error(grad, torch_grad.numpy())
    print(f"\n{name} batch {batch}: logit {TARGET_CLASS} input gradient vs torch autograd: max rel error {error:.2e}")
    assert error <= TOLERANCE, f"{name} batch {batch}: logit gradient vs torch autograd: max rel error {error:.2e}"


@pytest.mark.parametrize("batch", [1, 3])
def test_intermediate_channel_mean_gradient_matches_autograd(network, batch):
    name, model, exported, layer_key, torch_module, op_type = network
    layer = find_layer(exported, layer_key)
    assert layer.op_type == op_type, f"{layer_key} maps to a {layer.op_type} node"
    x = inputs(batch)
    fn = GradientFunction(exported, of=layer.output, method="graph", providers="cpu")

    captured = {}
    hook = model.get_submodule(torch_module).register_forward_hook(lambda m, i, o: captured.update(out=o))
    try:
        xt = torch.tensor(x, requires_grad=True)
        model(xt)
    finally:
        hook.remove()
    out = captured["out"]
    (torch_grad,) = torch.autograd.grad(out[:, CHANNEL].mean(dim=(1, 2)).sum(), xt)

    cotangent = np.zeros(tuple(out.shape), np.float32)  # NCHW on both sides
    cotangent[:, CHANNEL] = 1.0 / (out.shape[2] * out.shape[3])
    activation, grad = fn(x, cotangent)
    assert activation.shape == tuple(out.shape)
    assert rel_error(activation, out.detach().numpy()) <= 1e-4, f"{name}: ONNX {layer.output} differs from {torch_module}"
    error = rel_error(grad, torch_grad.numpy())
    print(f"\n{name} batch {batch}: mean of channel {CHANNEL} of {layer_key} input gradient vs torch autograd: "
          f"max rel error {error:.2e}")
    assert error <= TOLERANCE, (
        f"{name} batch {batch}: channel-mean gradient of {layer_key} vs torch autograd: max rel error {error:.2e}")
