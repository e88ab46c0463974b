"""Reductions and softmax: ReduceMean/Sum/Prod/Max/Min/L1/L2/SumSquare/LogSum/LogSumExp, Softmax,
LogSoftmax.

Every reduction's backward pass has the same shape: put the reduced axes back into the cotangent
(``keepdims``), broadcast it over the input, multiply by the local derivative.
"""

from __future__ import annotations

from ...errors import ShapeError
from . import rule


def reduced_axes(node) -> list[int] | None:
    """Normalised axes of a Reduce* node (opset 18 input or older attribute); None = identity."""
    rank = node.rank(node.input[0])
    if node.has_input(1):
        value = node.value(1)
        if value is None:
            raise ShapeError(f"{node.op_type} node '{node.name}': axes must be a constant to differentiate")
        axes = [int(a) for a in value.reshape(-1)]
    else:
        axes = node.attr("axes")
    if not axes:
        if node.attr("noop_with_empty_axes", 0):
            return None
        axes = list(range(rank))
    return sorted(a % rank for a in axes)


def _kept(g, node, name: str, axes: list[int]) -> str:
    """``name`` (a reduced tensor or its cotangent) with the reduced axes present as size 1."""
    if node.attr("keepdims", 1):
        return name
    return g.Unsqueeze(name, g.ints(axes))


def _count(g, node, axes: list[int]) -> str:
    x = node.input[0]
    shape = node.shape(x)
    dims = [shape[a] for a in axes] if shape is not None else [None]
    if all(isinstance(d, int) for d in dims):
        count = 1
        for d in dims:
            count *= d
        return g.const(float(count), like=x)
    sizes = g.Gather(g.shape_of(x), g.ints(axes), axis=0)
    return g.Cast(g.ReduceProd(sizes, keepdims=0), to=node.dtype(x))


def _reduce_rule(local, elementwise: bool = False):
    """Make a rule from ``local(g, node, x, z_kept, gz_kept, axes) -> input cotangent``.

    With noop_with_empty_axes and no axes each element is reduced alone (ReduceSumSquare squares,
    ReduceL1 takes |x|, ...): ``elementwise`` ops then apply ``local`` with no axes, others pass
    the cotangent through.
    """

    def grad(g, node, gy):
        axes = reduced_axes(node)
        x = node.input[0]
        if axes is None:
            dx = local(g, node, x, node.output[0], gy[0], []) if elementwise else gy[0]
            return [dx]
        gz = _kept(g, node, gy[0], axes)
        z = _kept(g, node, node.output[0], axes)
        dx = local(g, node, x, z, gz, axes)
        return [dx]

    return grad


def _expand(g, node, t):
    return g.Expand(t, g.shape_of(node.input[0]))


rule("ReduceSum")(_reduce_rule(lambda g, node, x, z, gz, axes: _expand(g, node, gz)))
rule("ReduceMean")(_reduce_rule(lambda g, node, x, z, gz, axes: _expand(g, node, g.Div(gz, _count(g, node, axes)))))
rule("ReduceSumSquare")(_reduce_rule(
    lambda g, node, x, z, gz, axes: g.Mul(g.Mul(x, g.const(2.0, like=x)), gz), elementwise=True))
rule("ReduceL1")(_reduce_rule(lambda g, node, x, z, gz, axes: g.Mul(g.Sign(x), gz), elementwise=True))


def _l2(g, node, x, z, gz, axes):
    # dz/dx = x / z; where the norm is 0 (so is x) the gradient is 0, the minimal subgradient
    # (x / z would be 0 / 0 = NaN there, e.g. on a dead ReLU channel)
    safe = g.Where(g.Equal(z, g.const(0.0, like=x)), g.const(1.0, like=x), z)
    return g.Mul(x, g.Div(gz, safe))


rule("ReduceL2")(_reduce_rule(_l2, elementwise=True))
rule("ReduceLogSum")(_reduce_rule(
    lambda g, node, x, z, gz, axes: _expand(g, node, g.Div(gz, g.Exp(z))), elementwise=True))
rule("ReduceLogSumExp")(_reduce_rule(lambda g, node, x, z, gz, axes: g.Mul(g.Exp(g.Sub(x, z)), gz)))


def _extremum(g, node, x, z, gz, axes):
    # The cotangent goes to the extreme elements; ties share it evenly (a valid subgradient).
    hits = g.Cast(g.Equal(x, z), to=node.dtype(x))
    count = g.ReduceSum(hits, g.ints(axes), keepdims=1)
    return g.Mul(hits, g.Div(gz, count))


rule("ReduceMax", "ReduceMin")(_reduce_rule(_extremum))


def _product(g, node, x, z, gz, axes):
    # dz/dx_i is the product of the other elements: z / x_i without zeros in the group; with one
    # zero only that element gets the product of the rest; with two or more every element gets 0.
    zero = g.const(0.0, like=x)
    is_zero = g.Equal(x, zero)
    zeros = g.ReduceSum(g.Cast(is_zero, to=node.dtype(x)), g.ints(axes), keepdims=1)
    safe = g.Where(is_zero, g.const(1.0, like=x), x)
    others = g.ReduceProd(safe, g.ints(axes), keepdims=1)  # product of the non-zero elements
    no_zero = g.Div(others, safe)
    one_zero = g.Where(is_zero, others, zero)
    local = g.Where(g.Equal(zeros, zero), no_zero,
                    g.Where(g.Equal(zeros, g.const(1.0, like=x)), one_zero, zero))
    return g.Mul(local, gz)


rule("ReduceProd")(_reduce_rule(_product))


@rule("Softmax")
def softmax(g, node, gy):
    # dx = z * (gz - sum(gz * z, axis))
    z = node.output[0]
    axis = node.attr("axis", -1)
    dot = g.ReduceSum(g.Mul(gy[0], z), g.ints([axis]), keepdims=1)
    return [g.Mul(z, g.Sub(gy[0], dot))]


@rule("LogSoftmax")
def log_softmax(g, node, gy):
    # dx = gz - softmax(x) * sum(gz, axis)
    z = node.output[0]
    axis = node.attr("axis", -1)
    total = g.ReduceSum(gy[0], g.ints([axis]), keepdims=1)
    return [g.Sub(gy[0], g.Mul(g.Exp(z), total))]
