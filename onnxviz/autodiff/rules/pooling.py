"""Pooling ops: MaxPool, AveragePool, GlobalAveragePool, GlobalMaxPool."""

from __future__ import annotations

from . import rule


@rule("MaxPool")
def max_pool(g, node, gy):
    """Route each cotangent to the input element its window selected (MaxPool's Indices output).

    The indices are flat positions in the whole input tensor, so one ScatterElements(add) over the
    flattened input sums the contributions of overlapping windows.
    """
    x = node.input[0]
    if len(node.output) > 1 and node.output[1]:
        indices = node.output[1]
    else:
        indices = g.fresh("maxpool_indices")
        node.proto.output.append(indices)  # ask the forward node for its argmax (no recomputation)
    flat = g.ints([-1])
    zeros = g.Reshape(g.zeros_like(x), flat)
    routed = g.ScatterElements(zeros, g.Reshape(indices, flat), g.Reshape(gy[0], flat), axis=0, reduction="add")
    return [g.Reshape(routed, g.shape_of(x))]


@rule("GlobalAveragePool")
def global_average_pool(g, node, gy):
    x = node.input[0]
    rank = node.rank(x)
    spatial = node.static_shape(x)
    if spatial is not None:
        count = 1
        for d in spatial[2:]:
            count *= d
        scale = g.const(1.0 / count, like=x)
    else:
        dims = g.Slice(g.shape_of(x), g.ints([2]), g.ints([rank]))
        count = g.ReduceProd(dims, keepdims=0)
        scale = g.Reciprocal(g.Cast(count, to=node.dtype(x)))
    return [g.Expand(g.Mul(gy[0], scale), g.shape_of(x))]


@rule("GlobalMaxPool")
def global_max_pool(g, node, gy):
    x = node.input[0]
    z = node.output[0]
    # The cotangent goes to the maxima; ties split evenly so the rule stays a true subgradient.
    hits = g.Cast(g.Equal(x, z), to=node.dtype(x))
    rank = node.rank(x)
    count = g.ReduceSum(hits, g.ints(list(range(2, rank))), keepdims=1)
    return [g.Mul(hits, g.Div(gy[0], count))]
