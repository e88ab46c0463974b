"""Shrunk graphs from tests/test_fuzz_gradients.py that once exposed a bug, kept as fixed checks.

Each graph is the falsifying example hypothesis printed, in ONNX's text format.
"""

from __future__ import annotations

import numpy as np
import onnx
import pytest

from gradcheck import check_gradient
from onnxviz.autodiff import gradient_model
from onnxviz.errors import UnsupportedOpError
from onnxviz.fd import Float64Reference

pytestmark = pytest.mark.fuzz

FD_TOL = 1e-5


def parse(text: str) -> onnx.ModelProto:
    model = onnx.parser.parse_model(text)
    onnx.checker.check_model(model)
    return model


def feeds_for(model: onnx.ModelProto, seed: int = 0) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(seed)
    out = {}
    for vi in model.graph.input:
        shape = [d.dim_value for d in vi.type.tensor_type.shape.dim]
        out[vi.name] = (rng.uniform(0.2, 2.0, shape) * rng.choice([-1.0, 1.0], shape)).astype(np.float32)
    return out


# GroupNormalization: ONNX shape inference gives its output no type (a function op, onnx 1.23), nor
# anything downstream. The gradient builder took such tensors for non-float and dropped the path: a
# zero gradient, silently. Now untyped outputs of rule ops take their data input's type, and any
# other untyped tensor on a path counts as carrying gradient (so a missing rule is reported).
GROUP_NORM_IDENTITY = """
<ir_version: 10, opset_import: ["" : 21]>
fuzz (float[1] in1, float[1] in5, float[1] in6) => (float[1,1,1] identity9)
   <int64[2] i2 = {0,1}>
{
   unsqueeze3 = Unsqueeze (in1, i2)
   groupnormalization7 = GroupNormalization <num_groups: int = 1> (unsqueeze3, in5, in6)
   identity9 = Identity (groupnormalization7)
}
"""


@pytest.mark.parametrize("shape", [(1, 1, 1), (2, 4, 3)])
def test_untyped_group_norm_output_carries_gradient(shape):
    n, c, w = shape
    model = parse(f"""
<ir_version: 10, opset_import: ["" : 21]>
g (float[{n},{c},{w}] x, float[{c}] s, float[{c}] b) => (float[{n},{c},{w}] z)
{{
   y = GroupNormalization <num_groups: int = {2 if c % 2 == 0 else 1}> (x, s, b)
   z = Identity (y)
}}
""")
    assert not onnx.shape_inference.infer_shapes(model).graph.value_info  # y has no type
    result = check_gradient(model, feeds_for(model), run_ort=True)
    assert result.fd_error < FD_TOL and result.ort_error < 1e-4
    assert np.abs(result.grads["b"]).max() > 0.1  # dz/db is the cotangent summed, never zero


def test_shrunk_group_norm_identity():
    model = parse(GROUP_NORM_IDENTITY)
    result = check_gradient(model, feeds_for(model), run_ort=True)
    assert result.fd_error < FD_TOL and result.ort_error < 1e-4


def test_untyped_tensor_into_an_op_without_rule_is_reported():
    model = parse("""
<ir_version: 10, opset_import: ["" : 21]>
g (float[1,2,3] x, float[2] s, float[2] b) => (float[1,2,3] z)
{
   y = GroupNormalization <num_groups: int = 1> (x, s, b)
   z = Mish (y)
}
""")
    with pytest.raises(UnsupportedOpError, match="Mish"):
        gradient_model(model)


# The float64 oracle: onnx's reference Mean adds in place into its first operand, so a first operand
# smaller than the broadcast result raised (numpy "non-broadcastable output operand").
MEAN_BROADCAST = """
<ir_version: 10, opset_import: ["" : 18]>
fuzz (float[1] in1, float[2] in2) => (float[2] mean3)
{
   mean3 = Mean (in1, in2)
}
"""


def test_oracle_mean_broadcasts_its_first_operand():
    model = parse(MEAN_BROADCAST)
    feeds = feeds_for(model)
    got = Float64Reference(model)(feeds)[0]
    np.testing.assert_allclose(got, (feeds["in1"].astype(np.float64) + feeds["in2"]) / 2, rtol=1e-12)
    result = check_gradient(model, feeds, run_ort=True)
    assert result.fd_error < FD_TOL and result.ort_error < 1e-4


# ReduceL2's gradient x / ||x|| was 0 / 0 = NaN where a group is all zeros (a locally constant zero:
# here ceil(x) = 0 for x in (-1, 0]; in a network, a dead ReLU channel). The norm's minimal
# subgradient there is 0, which is also the true gradient of such a locally zero input.
CEIL_REDUCE_L2 = """
<ir_version: 10, opset_import: ["" : 18]>
fuzz (float[1] in1) => (float[1] reducel26)
{
   ceil2 = Ceil (in1)
   mul4 = Mul (in1, ceil2)
   reducel26 = ReduceL2 (mul4)
}
"""


def test_reduce_l2_of_zeros_has_zero_gradient():
    model = parse(CEIL_REDUCE_L2)
    result = check_gradient(model, {"in1": np.array([-0.5], np.float32)}, run_ort=True)
    assert np.isfinite(result.grads["in1"]).all() and result.ort_error == 0.0
    assert result.fd_error < FD_TOL


@pytest.mark.parametrize("attrs", ["", "<keepdims: int = 0>", "<noop_with_empty_axes: int = 1>"])
def test_reduce_l2_after_a_dead_relu(attrs):
    axes = ", axes" if "keepdims" in attrs else ""
    model = parse(f"""
<ir_version: 10, opset_import: ["" : 18]>
g (float[2,3] x) => (float[{'2' if axes else '2,3' if 'noop' in attrs else '1,1'}] y)
   <int64[1] axes = {{1}}>
{{
   r = Relu (x)
   y = ReduceL2 {attrs} (r{axes})
}}
""")
    x = np.array([[-1.0, -0.5, -2.0], [0.5, -1.0, 1.5]], np.float32)  # row 0: a dead channel
    result = check_gradient(model, {"x": x}, run_ort=True)
    assert np.isfinite(result.grads["x"]).all() and result.ort_error < 1e-4
    assert result.fd_error < FD_TOL


def test_transpose_of_a_scalar():
    # the rule emitted Transpose(perm=[]), which onnx.helper cannot build (ValueError)
    model = parse("""
<ir_version: 10, opset_import: ["" : 18]>
fuzz (float[1] in1) => (float transpose6)
   <int64[1] i4 = {0}>
{
   r = ReduceL1 <keepdims: int = 0> (in1, i4)
   transpose6 = Transpose (r)
}
""")
    result = check_gradient(model, {"in1": np.array([-0.7], np.float32)}, run_ort=True)
    assert result.fd_error < FD_TOL and result.ort_error < 1e-4


# The float64 oracle: onnx's reference runs HardSwish's function body, HardSigmoid with alpha =
# float32(1/6), a relative error of 3e-8 in the slope. The rule is exact; where a direction's
# derivative cancels, finite differences of the inexact oracle read as a 2e-5 gradient error.
MAX_HARD_SWISH = """
<ir_version: 10, opset_import: ["" : 18]>
fuzz (float[2] in1) => (float[2] hardswish6)
{
   max2 = Max (in1)
   hardswish4 = HardSwish (max2)
   hardswish6 = HardSwish (hardswish4)
}
"""


def test_oracle_hard_swish_is_exact_in_float64():
    model = parse(MAX_HARD_SWISH)
    x = np.array([-1.346531, -0.6856161], np.float32)
    hs = lambda v: v * np.clip(v / 6 + 0.5, 0, 1)  # noqa: E731
    got = Float64Reference(model)({"in1": x})[0]
    np.testing.assert_allclose(got, hs(hs(x.astype(np.float64))), rtol=1e-15)
    result = check_gradient(model, {"in1": x}, directions=3, seed=0, run_ort=True)
    assert result.fd_error < FD_TOL and result.ort_error < 1e-4
