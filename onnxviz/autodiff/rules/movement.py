"""Shape and data-movement ops.

Most of these only copy input elements to output positions. Their gradient uses one mechanism,
the *index map*: run the same op on a tensor holding each input element's flat position, then
scatter-add the cotangent back to those positions. Duplicated elements (Gather, Tile, reflect
padding, nearest upsampling) are summed, dropped ones get zero. Cheap special cases (Reshape,
Transpose, Concat, Split, Expand) use direct inverses instead.
"""

from __future__ import annotations

from ...errors import ShapeError
from . import rule


def index_map(g, x: str) -> str:
    """int64 tensor shaped like ``x`` holding 0..size-1 (each element's flat position)."""
    shape = g.shape_of(x)
    size = g.ReduceProd(shape, keepdims=0)
    flat = g.Range(g.const(0, dtype="int64"), size, g.const(1, dtype="int64"))
    return g.Reshape(flat, shape)


def scatter_back(g, x: str, positions: str, gz: str, sentinel: bool = False) -> str:
    """Scatter-add cotangent ``gz`` into zeros shaped like ``x`` at flat ``positions``.

    With ``sentinel`` the zeros get one extra trailing slot that absorbs positions equal to the
    input size (used to mark padding) and is dropped afterwards.
    """
    minus_one = g.ints([-1])
    zeros = g.Reshape(g.zeros_like(x), minus_one)
    if sentinel:
        zeros = g.Concat(zeros, g.const([0.0], like=x), axis=0)
    routed = g.ScatterElements(zeros, g.Reshape(positions, minus_one), g.Reshape(gz, minus_one),
                               axis=0, reduction="add")
    if sentinel:
        routed = g.Slice(routed, g.ints([0]), g.ints([-1]))
    return g.Reshape(routed, g.shape_of(x))


#: Movement ops without int64 kernels in onnxruntime: their index map travels as float64
#: (exact for tensors below 2**53 elements).
NO_INT_KERNEL = {"DepthToSpace", "SpaceToDepth"}


def _through_index_map(g, node, gy, **attrs):
    """Gradient of a pure data-movement op: apply it to the index map, scatter back."""
    x = node.input[0]
    positions = index_map(g, x)
    if node.op_type in NO_INT_KERNEL:
        positions = g.Cast(positions, to=11)  # DOUBLE
    moved = g.op(node.op_type, [positions] + node.input[1:], **(attrs or _attrs(node)))
    if node.op_type in NO_INT_KERNEL:
        moved = g.Cast(moved, to=7)  # INT64
    return [scatter_back(g, x, moved, gy[0])] + [None] * (len(node.input) - 1)


def _attrs(node) -> dict:
    return {a.name: _attr_value(a) for a in node.proto.attribute}


def _attr_value(a):
    from onnx import helper

    v = helper.get_attribute_value(a)
    return v.decode() if isinstance(v, bytes) else v


@rule("Reshape", "Flatten", "Squeeze", "Unsqueeze")
def reshape_like(g, node, gy):
    """Element order is unchanged: reshape the cotangent back to the input's shape."""
    return [g.Reshape(gy[0], g.shape_of(node.input[0]))] + [None] * (len(node.input) - 1)


@rule("Transpose")
def transpose(g, node, gy):
    perm = node.attr("perm")
    if perm is None:
        perm = list(reversed(range(node.rank(node.input[0]))))
    inverse = [0] * len(perm)
    for i, p in enumerate(perm):
        inverse[p] = i
    return [g.Transpose(gy[0], perm=inverse)]


@rule("Concat")
def concat(g, node, gy):
    axis = node.attr("axis") % node.rank(node.output[0])
    sizes = [node.shape(x)[axis] if node.shape(x) is not None else None for x in node.input]
    if all(isinstance(s, int) for s in sizes):
        split = g.ints(sizes)
    else:
        split = g.Concat(*[g.Slice(g.shape_of(x), g.ints([axis]), g.ints([axis + 1])) for x in node.input],
                         axis=0)
    parts = g.op("Split", [gy[0], split], n_out=len(node.input), axis=axis)
    parts = parts if isinstance(parts, list) else [parts]
    return [p if need else None for p, need in zip(parts, node.needs)]


@rule("Split")
def split(g, node, gy):
    x = node.input[0]
    axis = node.attr("axis", 0) % node.rank(x)
    pieces = [gz if gz is not None else g.zeros_like(out) for gz, out in zip(gy, node.output)]
    return [g.Concat(*pieces, axis=axis)] + [None] * (len(node.input) - 1)


@rule("Expand")
def expand(g, node, gy):
    return [g.unbroadcast(gy[0], node.input[0], node.shape(node.output[0])), None]


@rule("Slice", "Gather", "GatherElements", "Tile", "DepthToSpace", "SpaceToDepth")
def gather_like(g, node, gy):
    return _through_index_map(g, node, gy)


@rule("Pad")
def pad(g, node, gy):
    x = node.input[0]
    mode = node.attr("mode", "constant")
    if mode == "constant":
        # Padded cells read the sentinel position `size`, which scatter_back discards.
        size = g.ReduceProd(g.shape_of(x), keepdims=0)
        inputs = [index_map(g, x), node.input[1], size] + node.input[3:4]
        moved = g.op("Pad", inputs, mode="constant")
        return [scatter_back(g, x, moved, gy[0], sentinel=True)] + [None] * (len(node.input) - 1)
    if mode in ("reflect", "edge", "wrap"):
        inputs = [index_map(g, x), node.input[1], ""] + node.input[3:4]
        moved = g.op("Pad", inputs, mode=mode)
        return [scatter_back(g, x, moved, gy[0])] + [None] * (len(node.input) - 1)
    raise ShapeError(f"Pad mode '{mode}' is not differentiable here")
