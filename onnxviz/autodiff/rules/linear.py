"""Linear ops: Conv, ConvTranspose, Gemm, MatMul, Einsum."""

from __future__ import annotations

from ...errors import ShapeError, UnsupportedOpError
from . import rule


def conv_geometry(node, x: str, w: str):
    """Spatial geometry of a Conv/pool-like node: kernel, strides, dilations, explicit pads.

    ``auto_pad`` SAME_* is resolved to explicit pads, which needs static spatial input dims.
    Returns (kernel, strides, dilations, pads_begin, pads_end, spatial_in) — spatial_in may hold
    non-int entries when dims are symbolic (only allowed with explicit pads).
    """
    w_shape = node.shape(w) if w is not None else None
    kernel = node.attr("kernel_shape") or (list(w_shape[2:]) if w_shape else None)
    if kernel is None or any(not isinstance(k, int) for k in kernel):
        raise ShapeError(f"{node.op_type} node '{node.name}': kernel shape unknown")
    k = len(kernel)
    strides = node.attr("strides") or [1] * k
    dilations = node.attr("dilations") or [1] * k
    x_shape = node.shape(x)
    spatial = list(x_shape[2:]) if x_shape is not None else [None] * k
    auto_pad = node.attr("auto_pad", "NOTSET")
    if auto_pad in ("SAME_UPPER", "SAME_LOWER"):
        if any(not isinstance(d, int) for d in spatial):
            raise ShapeError(f"{node.op_type} node '{node.name}' uses auto_pad={auto_pad} with dynamic "
                             "spatial dims; give a static input shape")
        pb, pe = [], []
        for n, kk, s, d in zip(spatial, kernel, strides, dilations):
            out = -(-n // s)
            total = max((out - 1) * s + (kk - 1) * d + 1 - n, 0)
            small, big = total // 2, total - total // 2
            pb.append(small if auto_pad == "SAME_UPPER" else big)
            pe.append(big if auto_pad == "SAME_UPPER" else small)
    elif auto_pad == "VALID":
        pb, pe = [0] * k, [0] * k
    else:
        pads = node.attr("pads") or [0] * (2 * k)
        pb, pe = list(pads[:k]), list(pads[k:])
    return list(kernel), list(strides), list(dilations), pb, pe, spatial


def transpose_conv_back(g, node, gy: str, x: str, w: str, group: int) -> str:
    """dX of Conv(x, w): ConvTranspose of the cotangent with the same weights and geometry."""
    kernel, strides, dilations, pb, pe, spatial = conv_geometry(node, x, w)
    y_shape = node.shape(node.output[0])
    y_spatial = list(y_shape[2:]) if y_shape is not None else [None] * len(kernel)
    common = dict(kernel_shape=kernel, strides=strides, dilations=dilations, group=group)
    if all(isinstance(d, int) for d in spatial + y_spatial):
        # Rows/cols the forward window never reached get zero gradient: output_padding adds them.
        extra = [n + b + e - ((o - 1) * s + (kk - 1) * d + 1)
                 for n, b, e, o, s, kk, d in zip(spatial, pb, pe, y_spatial, strides, kernel, dilations)]
        if all(0 <= v < max(s, d) for v, s, d in zip(extra, strides, dilations)):
            return g.ConvTranspose(gy, w, pads=pb + pe, output_padding=extra, **common)
    # Dynamic spatial dims (or unusual geometry): transposed conv, then zero-pad the tail to x's size.
    back = g.ConvTranspose(gy, w, pads=pb + pe, **common)
    k = len(kernel)
    tail = g.Sub(g.Slice(g.shape_of(x), g.ints([2]), g.ints([2 + k])),
                 g.Slice(g.Shape(back), g.ints([2]), g.ints([2 + k])))
    pads = g.Concat(g.ints([0] * (k + 2)), g.ints([0, 0]), tail, axis=0)
    return g.Pad(back, pads)


def _bias_grad(g, node, gy, bias_index: int):
    if not node.needs[bias_index]:
        return None
    rank = node.rank(node.output[0])
    axes = [0] + list(range(2, rank))
    return g.ReduceSum(gy, g.ints(axes), keepdims=0)


@rule("Conv")
def conv(g, node, gy):
    x, w = node.input[:2]
    if node.needs[1]:
        raise UnsupportedOpError({"Conv": [node.name]}, "gradient w.r.t. convolution weights is not supported")
    group = node.attr("group", 1)
    dx = transpose_conv_back(g, node, gy[0], x, w, group) if node.needs[0] else None
    out = [dx, None]
    if node.has_input(2):
        out.append(_bias_grad(g, node, gy[0], 2))
    return out


def _swap_last(g, name: str, rank: int) -> str:
    perm = list(range(rank))
    perm[-1], perm[-2] = perm[-2], perm[-1]
    return g.Transpose(name, perm=perm)


@rule("MatMul")
def matmul(g, node, gy):
    a, b = node.input
    ra, rb = node.rank(a), node.rank(b)
    z_shape = node.shape(node.output[0])
    gz = gy[0]
    if ra == 1 and rb == 1:  # dot product
        return [g.Mul(gz, b) if node.needs[0] else None, g.Mul(gz, a) if node.needs[1] else None]
    # Promote 1-D operands to matrices (as numpy does) so one formula covers every case.
    a2, b2 = a, b
    if ra == 1:
        a2 = g.Unsqueeze(a, g.ints([0]))
        gz = g.Unsqueeze(gz, g.ints([-2]))
    if rb == 1:
        b2 = g.Unsqueeze(b, g.ints([1]))
        gz = g.Unsqueeze(gz, g.ints([-1]))
    rz = max(max(ra, 2), max(rb, 2))
    full = None if z_shape is None else _promoted_shape(z_shape, ra, rb)
    out = [None, None]
    if node.needs[0]:
        da = g.MatMul(gz, _swap_last(g, b2, max(rb, 2)))
        if ra == 1:
            da = g.Reshape(g.ReduceSum(da, g.ints(list(range(rz - 1))), keepdims=0), g.shape_of(a))
        else:
            da = g.unbroadcast(da, a, None if full is None else full[:-2] + tuple(node.shape(a)[-2:]))
        out[0] = da
    if node.needs[1]:
        db = g.MatMul(_swap_last(g, a2, max(ra, 2)), gz)
        if rb == 1:
            axes = list(range(rz - 2)) + [rz - 1]
            db = g.Reshape(g.ReduceSum(db, g.ints(axes), keepdims=0), g.shape_of(b))
        else:
            db = g.unbroadcast(db, b, None if full is None else full[:-2] + tuple(node.shape(b)[-2:]))
        out[1] = db
    return out


def _promoted_shape(z_shape, ra, rb):
    """Shape of the matrix product with 1-D operands promoted (what gz looks like after Unsqueeze)."""
    shape = list(z_shape)
    if ra == 1:
        shape.insert(len(shape) - (0 if rb == 1 else 1), 1)
    if rb == 1:
        shape.append(1)
    return tuple(shape)


@rule("Gemm")
def gemm(g, node, gy):
    a, b = node.input[:2]
    alpha = node.attr("alpha", 1.0)
    beta = node.attr("beta", 1.0)
    ta, tb = node.attr("transA", 0), node.attr("transB", 0)
    gz = gy[0]
    out = [None, None]
    if node.needs[0]:
        out[0] = (g.Gemm(b, gz, alpha=alpha, transA=tb, transB=1) if ta
                  else g.Gemm(gz, b, alpha=alpha, transB=0 if tb else 1))
    if node.needs[1]:
        out[1] = (g.Gemm(gz, a, alpha=alpha, transA=1, transB=ta) if tb
                  else g.Gemm(a, gz, alpha=alpha, transA=0 if ta else 1))
    if node.has_input(2):
        c = node.input[2]
        if node.needs[2]:
            scaled = gz if beta == 1.0 else g.Mul(gz, g.const(beta, like=c))
            out.append(g.unbroadcast(scaled, c, node.shape(node.output[0])))
        else:
            out.append(None)
    return out
