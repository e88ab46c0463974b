"""Pooling ops: MaxPool, AveragePool, GlobalAveragePool, GlobalMaxPool."""

from __future__ import annotations

import numpy as np
import onnx
from onnx import helper

from . import rule
from .elementwise import positive_mask
from .linear import conv_geometry


def _spatial_dims(g, node, x: str) -> list[str]:
    """One int64 scalar per spatial dim of ``x``: constants when static, else read from its shape."""
    shape = node.shape(x)
    rank = node.rank(x)
    dims = []
    for axis in range(2, rank):
        d = shape[axis]
        dims.append(g.const(d, dtype=np.int64) if isinstance(d, int) else
                    g.Gather(g.shape_of(x), g.const(axis, dtype=np.int64), axis=0))
    return dims


def _row_major(g, node, x: str, indices: str) -> str:
    """MaxPool Indices with storage_order=1 (spatial position column-major) -> row-major flat positions."""
    dims = _spatial_dims(g, node, x)
    plane = dims[0]
    for d in dims[1:]:
        plane = g.Mul(plane, d)
    within = g.Mod(indices, plane)
    rest, pos = within, []
    for d in dims:  # column-major: the first spatial axis varies fastest
        pos.append(g.Mod(rest, d))
        rest = g.Div(rest, d)
    flat = pos[0]
    for p, d in zip(pos[1:], dims[1:]):
        flat = g.Add(g.Mul(flat, d), p)
    return g.Add(g.Sub(indices, within), flat)


@rule("MaxPool")
def max_pool(g, node, gy):
    """Route each cotangent to the input element its window selected (MaxPool's Indices output).

    The indices are flat positions in the whole input tensor, so one ScatterElements(add) over the
    flattened input sums the contributions of overlapping windows. The Indices come from the
    forward node itself (added as a second output when absent), so the backward pass agrees with
    the runtime's windows whatever the padding, dilation or ceil_mode.
    """
    x = node.input[0]
    tiles = _tiling_windows(node, x)
    if tiles is not None:
        return [_max_pool_tiles(g, node, gy[0], x, *tiles)]
    if len(node.output) > 1 and node.output[1]:
        indices = node.output[1]
    else:
        indices = g.fresh("maxpool_indices")
        if len(node.proto.output) > 1:  # declared but unnamed
            node.proto.output[1] = indices
        else:
            node.proto.output.append(indices)  # ask the forward node for its argmax (no recomputation)
    if node.attr("storage_order", 0) and node.rank(x) > 3:
        indices = _row_major(g, node, x, indices)
    flat = g.ints([-1])
    zeros = g.Reshape(g.zeros_like(x), flat)
    routed = g.ScatterElements(zeros, g.Reshape(indices, flat), g.Reshape(gy[0], flat), axis=0, reduction="add")
    return [g.Reshape(routed, g.shape_of(x))]


def _tiling_windows(node, x: str):
    """(kernel, out) when a 2-D MaxPool's windows tile its input exactly (kernel == stride, no pads,
    no dilation, sizes divisible, Indices unused): the common 2x2/2 pool; else None."""
    shape = node.shape(x)  # batch and channels may be symbolic
    if shape is None or len(shape) != 4 or any(not isinstance(n, int) for n in shape[2:]) \
            or (len(node.output) > 1 and node.output[1]) or node.dtype(x) != onnx.TensorProto.FLOAT:
        return None  # (onnxruntime's Resize has no double/half kernels: those take the Indices path)
    kernel = list(node.attr("kernel_shape"))
    if (node.attr("strides") or [1, 1]) != kernel or any(node.attr("dilations") or [1, 1]) != 1 \
            or any(node.attr("pads") or [0] * 4) or node.attr("auto_pad", "NOTSET") not in ("NOTSET", "VALID"):
        return None
    if any(n % k for n, k in zip(shape[2:], kernel)):
        return None
    return kernel, [n // k for n, k in zip(shape[2:], kernel)]


def _max_pool_tiles(g, node, gz: str, x: str, kernel, out) -> str:
    """MaxPool over tiling windows without Indices: each window's cotangent goes to the FIRST
    element (row-major within the window) equal to its maximum, the element onnxruntime's Indices,
    TensorFlow and PyTorch pick, so gradients agree with theirs also at ties (saturated strokes of
    real digits tie exactly).

    Asking the forward MaxPool for Indices would move it off onnxruntime's fast pooling kernel
    (bench/README.md, "Measurements behind the code"). Here everything is elementwise at full
    resolution or a pooling: window values are replicated by a nearest-neighbour Resize, and the
    first maximum is found by giving each maximum a score that falls with its position in the
    window and max-pooling the scores (small integers, compared exactly).

    After a Relu (the common conv -> relu -> pool), the Relu's mask is applied here, at the pooled
    resolution: a window's maximum is 0 exactly when the Relu zeroed its first maximum, so masking
    the cotangent where the pooled value is 0 makes the result zero wherever the Relu's output is,
    and the Relu rule skips its full-resolution mask (not with deconvnet, which ignores the mask)."""
    (kh, kw), (oh, ow) = kernel, out
    producer = g.info.producers.get(x)
    fuse_relu = producer is not None and producer.op_type == "Relu" and g.modifier != "deconvnet"
    if fuse_relu:  # the ReLU rule's own 0/1 mask (float32: the tiling path's only dtype)
        gz = g.Mul(gz, positive_mask(g, node.output[0]))
    scales = g.const([1.0, 1.0, float(kh), float(kw)], dtype=np.float32)

    def up(t: str) -> str:
        return g.Resize(t, "", scales, mode="nearest", coordinate_transformation_mode="asymmetric",
                        nearest_mode="floor")

    rows, cols = np.arange(oh * kh) % kh, np.arange(ow * kw) % kw
    score = (kh * kw - (rows[:, None] * kw + cols[None, :])).astype(np.float32)  # kh*kw .. 1 per window
    hits = g.Cast(g.Equal(x, up(node.output[0])), to=onnx.TensorProto.FLOAT)
    scored = g.Mul(hits, g.const(score[None, None]))
    first = g.Cast(g.Equal(scored, up(g.MaxPool(scored, kernel_shape=[kh, kw], strides=[kh, kw]))),
                   to=onnx.TensorProto.FLOAT)
    dx = g.Mul(first, up(gz))
    if fuse_relu:
        g.relu_masked.add(dx)
    return dx


def pool_output_size(n: int, kernel: int, stride: int, dilation: int, pad_begin: int, pad_end: int,
                     ceil_mode: int, auto_pad: str) -> int:
    """Output length of one pooled axis (ONNX spec; ceil_mode drops a window starting in the end padding).

    Computed here because ONNX shape inference does not apply that last rule, so inferred output
    shapes can be one too large where onnxruntime (and the spec) drop the window.
    """
    if auto_pad in ("SAME_UPPER", "SAME_LOWER"):
        return -(-n // stride)
    span = n + pad_begin + pad_end - ((kernel - 1) * dilation + 1)
    out = (-(-span // stride) if ceil_mode else span // stride) + 1
    if ceil_mode and (out - 1) * stride >= n + pad_begin:
        out -= 1
    return out


@rule("AveragePool")
def average_pool(g, node, gy):
    """AveragePool is linear: dx = ConvTranspose(gy / divisor) with a ones kernel of the same geometry.

    The per-window divisor (constant inside, smaller at borders with pads, ceil_mode windows hanging
    over the end, count_include_pad=0) is taken from the forward op itself, so it matches the
    runtime's convention: on one (1, 1, *spatial) plane of ones, AveragePool(ones) = count/divisor
    with count = Conv(ones, ones kernel) the real input elements under each window, hence
    1/divisor = AveragePool(ones) / count. Where every window is full (no pads, or padding counted
    and no overhang) the divisor is the constant kernel size. The distribution folds channels into
    the batch, so the ConvTranspose kernel is one (1, 1, *kernel) tensor of ones for any channel count.
    """
    x = node.input[0]
    kernel, strides, dilations, pb, pe, spatial = conv_geometry(node, x, None)
    k = len(kernel)
    rank = k + 2
    ceil_mode = node.attr("ceil_mode", 0)
    auto_pad = node.attr("auto_pad", "NOTSET")
    static = all(isinstance(n, int) for n in spatial)
    extents = [(kk - 1) * d + 1 for kk, d in zip(kernel, dilations)]
    out = ([pool_output_size(n, kk, s, d, b, e, ceil_mode, auto_pad)
            for n, kk, s, d, b, e in zip(spatial, kernel, strides, dilations, pb, pe)] if static else None)
    # Windows reaching past the padded input (ceil_mode): end padding the Conv/ConvTranspose need.
    overhang = ([max(0, (o - 1) * s + ext - (n + b + e)) for o, s, ext, n, b, e
                 in zip(out, strides, extents, spatial, pb, pe)] if static
                else [s - 1 if ceil_mode else 0 for s in strides])
    ones_kernel = g.const(np.ones([1, 1] + kernel), like=x)
    geometry = dict(kernel_shape=kernel, strides=strides, dilations=dilations)

    full_windows = not any(overhang) and (node.attr("count_include_pad", 0) or not any(pb + pe))
    if full_windows:
        scaled = g.Mul(gy[0], g.const(1.0 / float(np.prod(kernel)), like=x))
    else:
        plane_shape = g.ints([1, 1] + spatial) if static else g.Concat(
            g.ints([1, 1]), g.Slice(g.shape_of(x), g.ints([2]), g.ints([rank])), axis=0)
        ones = g.Expand(g.const(np.ones([1] * rank), like=x), plane_shape)
        averaged = g.op("AveragePool", [ones], **_node_attrs(node))
        count = g.Conv(ones, ones_kernel, pads=pb + [e + o for e, o in zip(pe, overhang)], **geometry)
        if ceil_mode:  # the Conv may see more windows than the pool keeps: keep the first ones
            ends = g.ints(out) if static else g.Slice(g.Shape(averaged), g.ints([2]), g.ints([rank]))
            count = g.Slice(count, g.ints([0] * k), ends, g.ints(list(range(2, rank))))
        inverse = g.Div(averaged, g.Max(count, g.const(1.0, like=x)))
        scaled = g.Mul(gy[0], inverse)

    folded = g.Reshape(scaled, g.ints([-1, 1] + [0] * k))  # (N*C, 1, *out)
    if static:
        # ConvTranspose length: (o-1)*s + ext - pads_begin - pads_end + output_padding; make it n.
        surplus = [(o - 1) * s + ext - b - n for o, s, ext, b, n in zip(out, strides, extents, pb, spatial)]
        back = g.ConvTranspose(folded, ones_kernel, pads=pb + [max(t, 0) for t in surplus],
                               output_padding=[max(-t, 0) for t in surplus], **geometry)
    else:
        back = g.ConvTranspose(folded, ones_kernel, pads=pb + [0] * k, **geometry)
        back = _fit_spatial(g, back, x, rank)
    return [g.Reshape(back, g.shape_of(x))]


def _fit_spatial(g, t: str, x: str, rank: int) -> str:
    """Zero-extend or crop the spatial tail of ``t`` (N*C, 1, *spatial') to ``x``'s spatial size."""
    want = g.Slice(g.shape_of(x), g.ints([2]), g.ints([rank]))
    have = g.Slice(g.Shape(t), g.ints([2]), g.ints([rank]))
    grow = g.Max(g.Sub(want, have), g.ints([0]))
    padded = g.Pad(t, g.Concat(g.ints([0] * rank), g.ints([0, 0]), grow, axis=0))
    return g.Slice(padded, g.ints([0] * (rank - 2)), want, g.ints(list(range(2, rank))))


def _node_attrs(node) -> dict:
    out = {}
    for a in node.proto.attribute:
        v = helper.get_attribute_value(a)
        out[a.name] = v.decode() if isinstance(v, bytes) else v
    return out


@rule("GlobalAveragePool")
def global_average_pool(g, node, gy):
    """Every input element of a plane gets the plane's cotangent over the plane size."""
    x = node.input[0]
    rank = node.rank(x)
    spatial = node.shape(x)[2:]
    if all(isinstance(d, int) for d in spatial):
        scale = g.const(1.0 / float(np.prod(spatial)), like=x)
    else:
        dims = g.Slice(g.shape_of(x), g.ints([2]), g.ints([rank]))
        count = g.ReduceProd(dims, keepdims=0)
        scale = g.Reciprocal(g.Cast(count, to=node.dtype(x)))
    return [g.Expand(g.Mul(gy[0], scale), g.shape_of(x))]


@rule("GlobalMaxPool")
def global_max_pool(g, node, gy):
    """The cotangent goes to each plane's maximum; ties split evenly (still a true subgradient)."""
    x = node.input[0]
    z = node.output[0]
    hits = g.Cast(g.Equal(x, z), to=node.dtype(x))
    rank = node.rank(x)
    count = g.ReduceSum(hits, g.ints(list(range(2, rank))), keepdims=1)
    return [g.Mul(hits, g.Div(gy[0], count))]
