"""Linear ops: Conv, ConvTranspose, Gemm, MatMul, Einsum.

Each is linear in the differentiated input, so its gradient is the adjoint op: Conv <-> ConvTranspose
with the same weights and geometry, MatMul/Gemm with a transposed operand, Einsum with the operand's
subscripts moved to the output. Weights are constants (initializers): their gradients are not built.
"""

from __future__ import annotations

import numpy as np
from onnx import helper

from ...errors import ShapeError, UnsupportedOpError
from . import rule

_SAME = ("SAME_UPPER", "SAME_LOWER")
#: Stride-1 Conv backward passes producing fewer channels than this stay ConvTranspose (onnxruntime's
#: blocked Conv is slow at few output channels).
FLIP_MIN_CHANNELS = 16


def _window(node, w: str):
    """Kernel, strides and dilations of a Conv/ConvTranspose node (kernel from the attribute or W's shape)."""
    w_shape = node.shape(w) if w is not None else None
    kernel = node.attr("kernel_shape") or (list(w_shape[2:]) if w_shape else None)
    if kernel is None or any(not isinstance(k, int) for k in kernel):
        raise ShapeError(f"{node.op_type} node '{node.name}': kernel shape unknown")
    k = len(kernel)
    return list(kernel), list(node.attr("strides") or [1] * k), list(node.attr("dilations") or [1] * k)


def _spatial(node, x: str, k: int) -> list:
    x_shape = node.shape(x)
    return list(x_shape[2:]) if x_shape is not None else [None] * k


def _weight_error(node) -> UnsupportedOpError:
    return UnsupportedOpError({node.op_type: [node.name]},
                              f"gradient w.r.t. {node.op_type} weights is not supported (make them initializers)")


def conv_geometry(node, x: str, w: str):
    """Spatial geometry of a Conv/pool-like node: kernel, strides, dilations, explicit pads.

    ``auto_pad`` SAME_* is resolved to explicit pads, which needs static spatial input dims.
    Returns (kernel, strides, dilations, pads_begin, pads_end, spatial_in) — spatial_in may hold
    non-int entries when dims are symbolic (only allowed with explicit pads; the Conv rule handles
    SAME with symbolic dims at run time instead).
    """
    kernel, strides, dilations = _window(node, w)
    k = len(kernel)
    spatial = _spatial(node, x, k)
    auto_pad = node.attr("auto_pad", "NOTSET")
    if auto_pad in _SAME:
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
    return kernel, strides, dilations, pb, pe, spatial


def transpose_conv_back(g, node, gy: str, x: str, w: str, group: int) -> str:
    """dX of Conv(x, w): ConvTranspose of the cotangent with the same weights and geometry."""
    kernel, strides, dilations = _window(node, w)
    k = len(kernel)
    flipped = _stride_one_back(g, node, gy, w, group, kernel, dilations) if set(strides) == {1} else None
    if flipped is not None:
        return flipped
    common = dict(kernel_shape=kernel, strides=strides, dilations=dilations, group=group)
    spatial = _spatial(node, x, k)
    if node.attr("auto_pad", "NOTSET") in _SAME and any(not isinstance(d, int) for d in spatial):
        return _same_conv_back_dynamic(g, node, gy, x, w, common)
    _, _, _, pb, pe, spatial = conv_geometry(node, x, w)
    y_shape = node.shape(node.output[0])
    y_spatial = list(y_shape[2:]) if y_shape is not None else [None] * k
    if all(isinstance(d, int) for d in spatial + y_spatial):
        # Rows/cols the forward window never reached get zero gradient: output_padding adds them
        # (always < stride, as ConvTranspose requires).
        extra = [n + b + e - ((o - 1) * s + (kk - 1) * d + 1)
                 for n, b, e, o, s, kk, d in zip(spatial, pb, pe, y_spatial, strides, kernel, dilations)]
        return g.ConvTranspose(gy, w, pads=pb + pe, output_padding=extra, **common)
    # Dynamic spatial dims: the transposed conv covers the padded input from its start up to where
    # the last window ended; crop the leading pad, then fit to x's runtime size.
    back = g.ConvTranspose(gy, w, pads=pb + [0] * k, **common)
    return _fit_to(g, back, g.ints([0] * k), x, k)


def _stride_one_back(g, node, gy: str, w: str, group: int, kernel, dilations) -> str | None:
    """dX of a stride-1 Conv as another Conv: the full correlation of the cotangent with the
    kernel flipped in space and with input/output channels swapped (per group), padded by
    ``d * (k - 1) - pad`` on each side, because onnxruntime runs Conv on its blocked NCHWc path and
    ConvTranspose through col2im. The pads do not depend on the input size at stride 1, so symbolic spatial
    dims and auto_pad SAME_* need nothing at run time. None when a pad exceeds the kernel's reach
    (rare; the ConvTranspose path handles it)."""
    k = len(kernel)
    reach = [d * (kk - 1) for kk, d in zip(kernel, dilations)]
    auto_pad = node.attr("auto_pad", "NOTSET")
    if auto_pad in _SAME:
        pb = [r // 2 if auto_pad == "SAME_UPPER" else r - r // 2 for r in reach]
        pe = [r - b for r, b in zip(reach, pb)]
    elif auto_pad == "VALID":
        pb, pe = [0] * k, [0] * k
    else:
        pads = node.attr("pads") or [0] * (2 * k)
        pb, pe = list(pads[:k]), list(pads[k:])
    back_pads = [r - p for r, p in zip(reach, pb)] + [r - p for r, p in zip(reach, pe)]
    if min(back_pads) < 0:
        return None
    w_shape = node.static_shape(w)
    if w_shape is None or w_shape[1] * group < FLIP_MIN_CHANNELS:
        return None
    spatial_axes = list(range(2, 2 + k))
    if group == 1:
        swapped = g.Transpose(w, perm=[1, 0] + spatial_axes)
    else:
        m, c = w_shape[0], w_shape[1]  # W: (M, C/group, k...)
        grouped = g.Reshape(w, g.ints([group, m // group, c] + list(kernel)))
        swapped = g.Reshape(g.Transpose(grouped, perm=[0, 2, 1] + [a + 1 for a in spatial_axes]),
                            g.ints([group * c, m // group] + list(kernel)))
    # constant folding turns this into a new initializer when W is one
    w_back = g.Slice(swapped, g.ints([-1] * k), g.ints([np.iinfo(np.int64).min] * k), g.ints(spatial_axes),
                     g.ints([-1] * k))
    return g.Conv(gy, w_back, kernel_shape=list(kernel), dilations=list(dilations), group=group,
                  pads=back_pads)


def _spatial_dims(g, shape: str, k: int) -> str:
    return g.Slice(shape, g.ints([2]), g.ints([2 + k]))


def _fit_to(g, t: str, begin: str, x: str, k: int) -> str:
    """Spatial entries begin..begin+n of ``t`` (n: x's runtime spatial size), zero-padded at the end
    where ``t`` is shorter: the positions the forward window never reached get zero gradient."""
    n = _spatial_dims(g, g.shape_of(x), k)
    t = g.Slice(t, begin, g.Add(begin, n), g.ints(range(2, 2 + k)))
    tail = g.Sub(n, _spatial_dims(g, g.Shape(t), k))
    return g.Pad(t, g.Concat(g.ints([0] * (k + 2) + [0, 0]), tail, axis=0))


def _same_conv_back_dynamic(g, node, gy: str, x: str, w: str, common: dict) -> str:
    """dX of a SAME-padded Conv with symbolic spatial dims: its pads are only known at run time.

    The unpadded transposed conv covers the padded input; its leading pad is computed from the
    runtime sizes as in ``conv_geometry`` (total = max(full - n, 0)) and cropped.
    """
    k = len(common["kernel_shape"])
    full = g.ConvTranspose(gy, w, **common)
    total = g.Max(g.Sub(_spatial_dims(g, g.Shape(full), k), _spatial_dims(g, g.shape_of(x), k)),
                  g.ints([0] * k))
    half = g.Div(total, g.ints([2] * k))
    begin = half if node.attr("auto_pad") == "SAME_UPPER" else g.Sub(total, half)
    return _fit_to(g, full, begin, x, k)


def _bias_grad(g, node, gy, bias_index: int):
    if not node.needs[bias_index]:
        return None
    rank = node.rank(node.output[0])
    axes = [0] + list(range(2, rank))
    return g.ReduceSum(gy, g.ints(axes), keepdims=0)


@rule("Conv")
def conv(g, node, gy):
    """dX by a transposed conv; the bias gradient sums the cotangent over all but the channel axis."""
    x, w = node.input[:2]
    if node.needs[1]:
        raise _weight_error(node)
    group = node.attr("group", 1)
    dx = transpose_conv_back(g, node, gy[0], x, w, group) if node.needs[0] else None
    out = [dx, None]
    if node.has_input(2):
        out.append(_bias_grad(g, node, gy[0], 2))
    return out


def conv_transpose_crop(node, x: str, w: str):
    """What ConvTranspose crops from its full output, per spatial axis, as onnxruntime resolves it.

    Returns (kernel, strides, dilations, output_padding, head, tail): the output is the full
    transposed conv ``(n-1)*s + (k-1)*d + 1`` plus ``output_padding`` zeros at the end, minus ``head``
    leading and ``tail`` trailing entries (a negative tail extends it). ``output_shape`` and
    ``auto_pad`` SAME_* follow the spec's formulas: total = full + output_padding - target,
    SAME_UPPER crops ``total // 2`` at the head, NOTSET/SAME_LOWER ``total - total // 2``.
    """
    kernel, strides, dilations = _window(node, w)
    k = len(kernel)
    out_pad = list(node.attr("output_padding") or [0] * k)
    output_shape = node.attr("output_shape")
    auto_pad = node.attr("auto_pad", "NOTSET")
    if output_shape:
        spatial = _spatial(node, x, k)
        if any(not isinstance(n, int) for n in spatial):
            raise ShapeError(f"ConvTranspose node '{node.name}' sets output_shape with dynamic spatial dims; "
                             "give a static input shape")
        totals = [(n - 1) * s + (kk - 1) * d + 1 + a - o
                  for n, s, kk, d, a, o in zip(spatial, strides, kernel, dilations, out_pad, output_shape[-k:])]
    elif auto_pad in _SAME:  # target n * s: the total does not depend on n
        totals = [(kk - 1) * d + 1 + a - s for s, kk, d, a in zip(strides, kernel, dilations, out_pad)]
        totals = [max(t, 0) for t in totals]  # onnxruntime never extends here (nor does shape inference)
    elif auto_pad == "VALID":
        totals = [0] * k
    else:
        pads = node.attr("pads") or [0] * (2 * k)
        return kernel, strides, dilations, out_pad, list(pads[:k]), list(pads[k:])
    head = [0 if t <= 0 else (t // 2 if auto_pad == "SAME_UPPER" else t - t // 2) for t in totals]
    tail = [t - h for t, h in zip(totals, head)]
    return kernel, strides, dilations, out_pad, head, tail


@rule("ConvTranspose")
def conv_transpose(g, node, gy):
    """dX of ConvTranspose(x, W) is Conv(gy, W): W's layout (C_in, C_out/group, k...) is Conv's for the
    reverse direction; the crop becomes Conv's padding (the head exactly, the tail less output_padding)."""
    x, w = node.input[:2]
    if node.needs[1]:
        raise _weight_error(node)
    dx = None
    if node.needs[0]:
        kernel, strides, dilations, out_pad, head, tail = conv_transpose_crop(node, x, w)
        end = [max(t - a, 0) for t, a in zip(tail, out_pad)]
        dx = g.Conv(gy[0], w, kernel_shape=kernel, strides=strides, dilations=dilations,
                    group=node.attr("group", 1), pads=head + end)
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
    """dA = gz @ B^T, dB = A^T @ gz, summed over broadcast batch dims; 1-D operands promoted as numpy does."""
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
    full = _promoted_shape(z_shape, ra, rb) if z_shape is not None else (None,) * rz
    out = [None, None]
    if node.needs[0]:
        da = g.MatMul(gz, _swap_last(g, b2, max(rb, 2)))
        if ra == 1:
            da = g.Reshape(g.ReduceSum(da, g.ints(list(range(rz - 1))), keepdims=0), g.shape_of(a))
        else:
            da = g.unbroadcast(da, a, full[:-2] + tuple(node.shape(a)[-2:]))
        out[0] = da
    if node.needs[1]:
        db = g.MatMul(_swap_last(g, a2, max(ra, 2)), gz)
        if rb == 1:
            axes = list(range(rz - 2)) + [rz - 1]
            db = g.Reshape(g.ReduceSum(db, g.ints(axes), keepdims=0), g.shape_of(b))
        else:
            db = g.unbroadcast(db, b, full[:-2] + tuple(node.shape(b)[-2:]))
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
    """Z = alpha * A' @ B' + beta * C (A' = A or A^T, B' likewise): each operand's adjoint is one Gemm."""
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
            out.append(g.unbroadcast(scaled, c, node.shape(node.output[0]) or (None, None)))
        else:
            out.append(None)
    return out


def einsum_terms(equation: str) -> tuple[list[str], str]:
    """Input subscripts and explicit output subscript of an Einsum equation.

    Implicit mode (no ``->``) outputs the letters used exactly once, sorted, after the ellipsis if any.
    """
    lhs, arrow, rhs = equation.replace(" ", "").partition("->")
    terms = lhs.split(",")
    if not arrow:
        letters = [c for t in terms for c in t if c.isalpha()]
        once = sorted(c for c in set(letters) if letters.count(c) == 1)
        rhs = ("..." if any("..." in t for t in terms) else "") + "".join(once)
    return terms, rhs


@rule("Einsum")
def einsum(g, node, gy):
    """Gradient of operand k: einsum of the cotangent and the other operands -> operand k's subscripts.

    Letters only operand k has (summed out by the forward) come back through a ones tensor shaped
    like it; ellipsis dims broadcast from size 1 (or absent) are summed back.
    """
    terms, rhs = einsum_terms(node.attr("equation"))
    out_shape = node.shape(node.output[0])
    return [_einsum_operand_grad(g, node, gy[0], terms, rhs, k, out_shape) if node.needs[k] else None
            for k in range(len(node.input))]


def _einsum_operand_grad(g, node, gz, terms, rhs, k, out_shape):
    x, term = node.input[k], terms[k]
    letters = term.replace("...", "")
    if len(set(letters)) != len(letters):
        raise UnsupportedOpError({"Einsum": [node.name]}, f"operand {k} of '{node.attr('equation')}' repeats a "
                                 "subscript (a diagonal); its gradient is not supported")
    inputs = [(rhs, gz)] + [(t, name) for j, (t, name) in enumerate(zip(terms, node.input)) if j != k]
    if set(letters) - {c for t, _ in inputs for c in t}:  # summed out by the forward: re-expand
        ones = g.op("ConstantOfShape", [g.shape_of(x)], value=_scalar_tensor(1.0, node.dtype(x)))
        inputs.append((term, ones))
    if not any("..." in t for t, _ in inputs):
        return g.Einsum(*[n for _, n in inputs], equation=",".join(t for t, _ in inputs) + "->" + term)
    # The output must keep the ellipsis (runtimes require it): full broadcast ellipsis dims, then
    # sum those operand k lacks (leading ones) or holds with size 1.
    ranks = [node.rank(name) - len(t.replace("...", "")) for t, name in zip(terms, node.input) if "..." in t]
    full_rank = max(ranks)
    own_rank = node.rank(x) - len(letters) if "..." in term else 0
    target = term if "..." in term else "..." + term
    grad = g.Einsum(*[n for _, n in inputs], equation=",".join(t for t, _ in inputs) + "->" + target)
    at = target.index("...")
    if full_rank > own_rank:
        grad = g.ReduceSum(grad, g.ints(range(at, at + full_rank - own_rank)), keepdims=0)
    if own_rank == 0:
        return grad
    x_shape = node.shape(x)
    ell = (out_shape[rhs.index("..."):rhs.index("...") + full_rank] if out_shape is not None
           else (None,) * full_rank)
    grad_shape = tuple(x_shape[:at]) + tuple(ell[full_rank - own_rank:]) + tuple(x_shape[at + own_rank:])
    return g.unbroadcast(grad, x, grad_shape)


def _scalar_tensor(value: float, dtype: int):
    return helper.make_tensor("value", dtype, [1], [value])
