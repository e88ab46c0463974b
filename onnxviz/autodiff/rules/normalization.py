"""Normalization ops: BatchNormalization (inference), Instance/Layer/Group normalization, LRN.

Instance, layer and group normalization share one backward formula. With xhat = (x - mean) * inv_std
over a set of axes (M elements) and g = dL/dxhat:

    dx = inv_std * (g - mean(g) - xhat * mean(g * xhat))

The statistics are recomputed from x in the backward graph (cheap reductions) rather than
recovered from the output, which would divide by the scale.
"""

from __future__ import annotations

import numpy as np
from onnx import TensorProto, helper

from ...errors import ShapeError, UnsupportedOpError
from . import rule

_LOW_PRECISION = {TensorProto.FLOAT16, TensorProto.BFLOAT16}


def _const(g, value, dtype: int) -> str:
    return g.const(value, dtype=helper.tensor_dtype_to_np_dtype(dtype or TensorProto.FLOAT))


def _standardize(g, x: str, axes: list[int], epsilon: float, dtype: int):
    """(xhat, inv_std) of ``x`` (element type ``dtype``) over ``axes``, kept as size-1 dims."""
    axes_t = g.ints(axes)
    centered = g.Sub(x, g.ReduceMean(x, axes_t, keepdims=1))
    variance = g.ReduceMean(g.Mul(centered, centered), axes_t, keepdims=1)
    inv_std = g.Reciprocal(g.Sqrt(g.Add(variance, _const(g, epsilon, dtype))))
    return g.Mul(centered, inv_std), inv_std


def _standardize_back(g, gxhat: str, xhat: str, inv_std: str, axes: list[int]) -> str:
    """dx from dL/dxhat: inv_std * (g - mean(g) - xhat * mean(g * xhat)) over ``axes``."""
    axes_t = g.ints(axes)
    mean_g = g.ReduceMean(gxhat, axes_t, keepdims=1)
    mean_gx = g.ReduceMean(g.Mul(gxhat, xhat), axes_t, keepdims=1)
    return g.Mul(inv_std, g.Sub(g.Sub(gxhat, mean_g), g.Mul(xhat, mean_gx)))


def _stash_type(node, x: str) -> int:
    """Element type the statistics are computed in: float32 for float16/bfloat16 inputs when
    stash_type=1 (the default), as the forward op does; else the input's own type."""
    dtype = node.dtype(x) or TensorProto.FLOAT
    return TensorProto.FLOAT if node.attr("stash_type", 1) == 1 and dtype in _LOW_PRECISION else dtype


def _cast(g, t: str, frm: int, to: int) -> str:
    return t if frm == to else g.Cast(t, to=to)


def _per_channel(g, t: str, rank: int) -> str:
    """A (C,) tensor shaped (C, 1, ..., 1) to broadcast along axis 1 of a rank-``rank`` tensor."""
    return t if rank <= 2 else g.Unsqueeze(t, g.ints(list(range(1, rank - 1))))


def _sum_but_channels(g, t: str, rank: int) -> str:
    """Sum over every axis but 1: the gradient of a per-channel (C,) parameter."""
    return g.ReduceSum(t, g.ints([0] + list(range(2, rank))), keepdims=0)


@rule("BatchNormalization")
def batch_normalization(g, node, gy):
    """Inference mode: y = (x - mean) * scale / sqrt(var + eps) + B, per channel (axis 1).

    dx = gy * scale / sqrt(var + eps), folded into one constant when scale and var are constants.
    """
    if node.attr("training_mode", 0):
        raise UnsupportedOpError({"BatchNormalization": [node.name]},
                                 "training_mode=1 (batch statistics) is not supported; export in inference mode")
    x, scale, bias, mean, var = node.input[:5]
    rank = node.rank(x)
    eps = node.attr("epsilon", 1e-5)
    out = [None] * len(node.input)
    gz = gy[0]
    scale_v, var_v = node.value(1), node.value(4)
    if scale_v is not None and var_v is not None:
        factor = (scale_v.astype(np.float64) / np.sqrt(var_v.astype(np.float64) + eps))
        factor_t = g.const(factor.reshape((-1,) + (1,) * (rank - 2)), like=x)
        inv_std = None
    else:
        inv_std = g.Reciprocal(g.Sqrt(g.Add(var, g.const(eps, like=var))))
        factor_t = _per_channel(g, g.Mul(scale, inv_std), rank)
    if node.needs[0]:
        out[0] = g.Mul(gz, factor_t)
    if not any(node.needs[1:5]):
        return out
    if inv_std is None:
        inv_std = g.Reciprocal(g.Sqrt(g.Add(var, g.const(eps, like=var))))
    centered = g.Sub(x, _per_channel(g, mean, rank))
    sum_gy = _sum_but_channels(g, gz, rank)
    sum_gy_xc = _sum_but_channels(g, g.Mul(gz, centered), rank)
    if node.needs[1]:
        out[1] = g.Mul(sum_gy_xc, inv_std)
    if node.needs[2]:
        out[2] = sum_gy
    if node.needs[3]:
        out[3] = g.Neg(g.Mul(sum_gy, g.Mul(scale, inv_std)))
    if node.needs[4]:  # d/dvar (var + eps)^(-1/2) = -1/2 inv_std^3
        cube = g.Mul(inv_std, g.Mul(inv_std, inv_std))
        out[4] = g.Mul(g.Mul(sum_gy_xc, scale), g.Mul(cube, g.const(-0.5, like=var)))
    return out


@rule("InstanceNormalization")
def instance_normalization(g, node, gy):
    """Each (sample, channel) plane is standardized over its spatial axes, then scaled per channel."""
    x, scale, bias = node.input
    rank = node.rank(x)
    spatial = list(range(2, rank))
    xhat, inv_std = _standardize(g, x, spatial, node.attr("epsilon", 1e-5), node.dtype(x))
    out = [None, None, None]
    if node.needs[0]:
        gxhat = g.Mul(gy[0], _per_channel(g, scale, rank))
        out[0] = _standardize_back(g, gxhat, xhat, inv_std, spatial)
    if node.needs[1]:
        out[1] = _sum_but_channels(g, g.Mul(gy[0], xhat), rank)
    if node.needs[2]:
        out[2] = _sum_but_channels(g, gy[0], rank)
    return out


@rule("LayerNormalization")
def layer_normalization(g, node, gy):
    """Standardize over axes [axis, rank), then y = xhat * Scale + B (numpy broadcasting).

    The optional Mean and InvStdDev outputs are differentiable too: d mean/dx = 1/M and
    d inv_std/dx = -inv_std^2 * xhat / M, with M the number of normalized elements.
    """
    x, scale = node.input[:2]
    rank = node.rank(x)
    axes = list(range(node.attr("axis", -1) % rank, rank))
    dtype, stat = node.dtype(x) or TensorProto.FLOAT, _stash_type(node, x)
    xhat, inv_std = _standardize(g, _cast(g, x, dtype, stat), axes, node.attr("epsilon", 1e-5), stat)
    out = [None] * len(node.input)
    gz, g_mean, g_inv = (list(gy) + [None, None])[:3]
    if node.needs[0]:
        parts = []
        if gz is not None:
            parts.append(_standardize_back(g, _cast(g, g.Mul(gz, scale), dtype, stat), xhat, inv_std, axes))
        if g_mean is not None or g_inv is not None:
            count = _element_count(g, node, x, axes, stat)
        if g_mean is not None:
            parts.append(g.Expand(g.Div(_cast(g, g_mean, node.dtype(node.output[1]), stat), count), g.shape_of(x)))
        if g_inv is not None:
            g_inv = _cast(g, g_inv, node.dtype(node.output[2]), stat)
            parts.append(g.Neg(g.Mul(g.Div(g.Mul(g_inv, g.Mul(inv_std, inv_std)), count), xhat)))
        if parts:
            out[0] = _cast(g, parts[0] if len(parts) == 1 else g.Sum(*parts), stat, dtype)
    if gz is not None:
        y_shape = node.shape(node.output[0])
        if node.needs[1]:
            out[1] = g.unbroadcast(g.Mul(gz, _cast(g, xhat, stat, dtype)), scale, y_shape)
        if node.has_input(2) and node.needs[2]:
            out[2] = g.unbroadcast(gz, node.input[2], y_shape)
    return out


def _element_count(g, node, x: str, axes: list[int], dtype: int) -> str:
    """Number of elements of ``x`` over ``axes``, as a scalar of element type ``dtype``."""
    shape = node.shape(x)
    dims = [shape[a] for a in axes]
    if all(isinstance(d, int) for d in dims):
        return _const(g, float(np.prod(dims)), dtype)
    sizes = g.Gather(g.shape_of(x), g.ints(axes), axis=0)
    return g.Cast(g.ReduceProd(sizes, keepdims=0), to=dtype)


@rule("GroupNormalization")
def group_normalization(g, node, gy):
    """Standardize x reshaped (N, G, C/G * spatial) over its last axis, then scale and shift.

    Opset 18 has one scale/bias per group, opset 21 one per channel: told apart by the scale's
    length (when it equals num_groups both readings agree if C == G, and only the first is valid else).
    """
    x, scale, bias = node.input
    rank = node.rank(x)
    groups = node.attr("num_groups")
    scale_shape = node.shape(scale)
    if scale_shape is None or not isinstance(scale_shape[0], int):
        raise ShapeError(f"GroupNormalization node '{node.name}': the length of scale must be static")
    per_group = scale_shape[0] == groups
    dtype, stat = node.dtype(x) or TensorProto.FLOAT, _stash_type(node, x)
    grouped = g.ints([0, groups, -1])
    xhat, inv_std = _standardize(g, g.Reshape(_cast(g, x, dtype, stat), grouped), [2],
                                 node.attr("epsilon", 1e-5), stat)
    # Per-group parameters act on the grouped view (N, G, K), per-channel ones on x's own layout.
    gz = g.Reshape(gy[0], grouped) if per_group else gy[0]
    out = [None, None, None]
    if node.needs[0]:
        scaled = g.Mul(gz, g.Unsqueeze(scale, g.ints([1])) if per_group else _per_channel(g, scale, rank))
        gxhat = _cast(g, scaled if per_group else g.Reshape(scaled, grouped), dtype, stat)
        dx = _standardize_back(g, gxhat, xhat, inv_std, [2])
        out[0] = g.Reshape(_cast(g, dx, stat, dtype), g.shape_of(x))
    param_axes = [0, 2] if per_group else [0] + list(range(2, rank))
    if node.needs[1]:
        xhat_p = _cast(g, xhat, stat, dtype)
        xhat_p = xhat_p if per_group else g.Reshape(xhat_p, g.shape_of(x))
        out[1] = g.ReduceSum(g.Mul(gz, xhat_p), g.ints(param_axes), keepdims=0)
    if node.needs[2]:
        out[2] = g.ReduceSum(gz, g.ints(param_axes), keepdims=0)
    return out


@rule("LRN")
def lrn(g, node, gy):
    """y_c = x_c * S_c^-beta with S_c = bias + alpha/size * sum of x^2 over the channel window of c.

    dx_j = gy_j * S_j^-beta - 2 alpha beta / size * x_j * sum over windows c containing j of
    gy_c x_c S_c^(-beta-1). Window sums over channels are AveragePools (count_include_pad, so the
    divisor is always ``size``) over a view with the channels as a spatial axis; the second sum
    uses the mirrored window (the same one when size is odd).
    """
    x = node.input[0]
    rank = node.rank(x)
    size = node.attr("size")
    alpha, beta, bias = node.attr("alpha", 1e-4), node.attr("beta", 0.75), node.attr("bias", 1.0)
    lo, hi = (size - 1) // 2, size // 2  # window of c: [c - lo, c + hi]

    def window_mean(t: str, before: int, after: int) -> str:
        pads = [before] + [0] * (rank - 2) + [after] + [0] * (rank - 2)
        pooled = g.AveragePool(g.Unsqueeze(t, g.ints([1])), kernel_shape=[size] + [1] * (rank - 2),
                               pads=pads, count_include_pad=1)
        return g.Squeeze(pooled, g.ints([1]))

    s = g.Add(g.const(bias, like=x), g.Mul(g.const(alpha, like=x), window_mean(g.Mul(x, x), lo, hi)))
    s_pow = g.Pow(s, g.const(-beta, like=x))  # S^-beta
    direct = g.Mul(gy[0], s_pow)
    spread = window_mean(g.Div(g.Mul(direct, x), s), hi, lo)  # mean over windows containing j
    return [g.Sub(direct, g.Mul(g.const(2.0 * alpha * beta, like=x), g.Mul(x, spread)))]
