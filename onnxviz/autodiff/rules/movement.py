"""Shape and data-movement ops.

Most of these only copy input elements to output positions. Their gradient uses one mechanism,
the *index map*: run the same op on a tensor holding each input element's flat position, then
scatter-add the cotangent back to those positions. Duplicated elements (Gather, Tile, reflect
padding) are summed, dropped ones get zero. Cheap special cases (Reshape, Transpose, Concat, Split,
Expand) use direct inverses instead. Resize/Upsample are linear and separable: their adjoint applies
one constant interpolation matrix per resized axis, transposed.
"""

from __future__ import annotations

import numpy as np
import onnx
from onnx import helper, numpy_helper

from ...errors import ShapeError, UnsupportedOpError
from ...runtime import make_session
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
    return g.Reshape(routed, g.shape_of(x), allowzero=1)  # a 0 in x's shape means 0, not "copy"


#: Movement ops without int64 kernels in onnxruntime: their index map travels as float64
#: (exact for tensors below 2**53 elements). Pad (no int64 CUDA kernel) does the same in its rule.
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
    return [scatter_back(g, x, moved, gy[0])]


def _attrs(node) -> dict:
    return {a.name: _attr_value(a) for a in node.proto.attribute}


def _attr_value(a):
    v = helper.get_attribute_value(a)
    return v.decode() if isinstance(v, bytes) else v


@rule("Reshape", "Flatten", "Squeeze", "Unsqueeze")
def reshape_like(g, node, gy):
    """Element order is unchanged: reshape the cotangent back to the input's shape."""
    # allowzero: the target is a real shape, so a 0 in it is an empty dim, never "copy".
    return [g.Reshape(gy[0], g.shape_of(node.input[0]), allowzero=1)]


@rule("Transpose")
def transpose(g, node, gy):
    perm = node.attr("perm")
    if perm is None:
        perm = list(reversed(range(node.rank(node.input[0]))))
    if len(perm) < 2:  # a 0-d or 1-d tensor: the identity (and an empty perm is no valid attribute)
        return [gy[0]]
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
    return [g.Concat(*pieces, axis=axis)]


@rule("Expand")
def expand(g, node, gy):
    return [g.unbroadcast(gy[0], node.input[0], node.shape(node.output[0])), None]


@rule("Slice", "Gather", "GatherElements", "Tile", "DepthToSpace", "SpaceToDepth")
def gather_like(g, node, gy):
    return _through_index_map(g, node, gy)


@rule("Pad")
def pad(g, node, gy):
    """Index map through the same Pad (negative pads crop); constant cells map to a dropped sentinel."""
    x = node.input[0]
    mode = node.attr("mode", "constant")
    positions = g.Cast(index_map(g, x), to=11)  # DOUBLE: Pad has no int64 kernel on CUDA
    if mode == "constant":
        # Padded cells read the sentinel position `size`, which scatter_back discards.
        size = g.Cast(g.ReduceProd(g.shape_of(x), keepdims=0), to=11)
        inputs = [positions, node.input[1], size] + node.input[3:4]
        moved = g.Cast(g.op("Pad", inputs, mode="constant"), to=7)
        return [scatter_back(g, x, moved, gy[0], sentinel=True)]
    if mode in ("reflect", "edge", "wrap"):
        inputs = [positions, node.input[1], ""] + node.input[3:4]
        moved = g.Cast(g.op("Pad", inputs, mode=mode), to=7)
        return [scatter_back(g, x, moved, gy[0])]
    raise ShapeError(f"Pad mode '{mode}' is not differentiable here")


# ---- Resize / Upsample ------------------------------------------------------------------------------
# Resize is linear in X (extrapolation_value only adds a constant) and separable: each resized axis
# applies one (out_len x in_len) interpolation matrix, and the gradient contracts the cotangent with
# each matrix (MatMul; Transposes only for axes other than the last two). A matrix is measured at
# build time by running the node's own configuration (attributes, scales or sizes, roi) on an
# identity: unit vectors along a batch-like axis, only the probed axis resized. It runs twice: on
# onnx's reference evaluator in float64 (exact weights) and on onnxruntime in float32 (the runtime).
# Where they disagree beyond float32 rounding, onnxruntime's matrix is used, since it is what the
# forward pass computes: they differ for fractional output lengths (scale * length not an integer)
# under align_corners / tf_crop_and_resize / pytorch_half_pixel at length 1, at nearest-rounding
# ties (float32 vs float64 coordinates) and for Upsample (the reference lacks most of it); and
# onnxruntime copies X whenever the output shape equals the input shape, whatever the scales or roi
# (with antialias, along each axis whose length is unchanged), so a probe always grows a dummy axis
# and such a node's gradient is the identity; see tests/test_rules_movement.py.

#: Attributes a probe copies from the Resize node (extrapolation_value is set to 0: constant part).
_RESIZE_ATTRS = ("mode", "coordinate_transformation_mode", "cubic_coeff_a", "exclude_outside",
                 "nearest_mode", "antialias")


@rule("Resize", "Upsample")
def resize(g, node, gy):
    """Adjoint of a separable linear resize: contract each resized axis with its matrix."""
    x = node.input[0]
    rank = node.rank(x)
    grad = gy[0]
    for axis, matrix in resize_matrices(node):
        grad = _contract_axis(g, grad, matrix, axis, rank, like=x)
    return [grad]


def _contract_axis(g, t: str, matrix: np.ndarray, axis: int, rank: int, like: str) -> str:
    """``t`` with axis ``axis`` (length out) contracted against ``matrix`` (out, in): it becomes in."""
    if axis == rank - 1:
        return g.MatMul(t, g.const(matrix, like=like))
    if axis == rank - 2:
        return g.MatMul(g.const(np.ascontiguousarray(matrix.T), like=like), t)
    perm = list(range(rank))
    perm[axis], perm[-1] = perm[-1], perm[axis]  # a swap is its own inverse
    moved = g.MatMul(g.Transpose(t, perm=perm), g.const(matrix, like=like))
    return g.Transpose(moved, perm=perm)


def resize_matrices(node) -> list[tuple[int, np.ndarray]]:
    """``(axis, matrix)`` for each axis a Resize/Upsample node changes; matrix is (out, in) float64."""
    shape = node.shape(node.input[0])
    rank = node.rank(node.input[0])
    out_shape = node.shape(node.output[0])
    if shape is not None and out_shape is not None and len(out_shape) == rank \
            and all(d is not None and d == e for d, e in zip(shape, out_shape)):
        return []  # onnxruntime copies X when the shape does not change, whatever the scales or roi
    if node.op_type == "Upsample":
        attrs, probes = {"mode": node.attr("mode", "nearest")}, _upsample_probes(node, shape)
    else:
        attrs = {k: node.attr(k) for k in _RESIZE_ATTRS if node.attr(k) is not None}
        probes = _resize_probes(node, shape, rank, attrs.get("coordinate_transformation_mode", "half_pixel"))
    return [(axis, _probe_matrix(node, attrs, probe)) for axis, probe in probes]


def _static_len(node, shape, axis: int) -> int:
    dim = shape[axis] if shape is not None else None
    if not isinstance(dim, int):
        raise ShapeError(
            f"{node.op_type} node '{node.name}': axis {axis} of '{node.input[0]}' is resized but has no "
            f"static size ({dim}); its gradient needs static sizes on resized axes "
            "(give the model a static input shape, e.g. --input-shape)")
    return dim


def _resize_input(node, i: int, what: str) -> np.ndarray | None:
    """Constant input ``i`` of a Resize node (None when absent or empty); raise when not constant."""
    if not node.has_input(i):
        return None
    value = node.value(i)
    if value is None:
        raise ShapeError(f"Resize node '{node.name}': {what} must be a constant to differentiate")
    return value.reshape(-1) if value.size else None


def _resize_probes(node, shape, rank, ctm):
    """One probe (what to run on the identity) per axis the node changes."""
    axes = node.attr("axes")
    axes = list(range(rank)) if axes is None else [a % rank for a in axes]
    n = len(axes)
    roi = _resize_input(node, 1, "roi") if ctm == "tf_crop_and_resize" else None
    if ctm == "tf_crop_and_resize" and roi is None:
        raise ShapeError(f"Resize node '{node.name}': tf_crop_and_resize needs a constant roi")
    scales = _resize_input(node, 2, "scales")
    sizes = None if scales is not None else _sizes_or_output_shape(node, axes)
    policy = node.attr("keep_aspect_ratio_policy", "stretch")

    def crop(i):
        pair = (float(roi[i]), float(roi[n + i])) if roi is not None else (0.0, 1.0)
        return None if pair == (0.0, 1.0) else pair

    probes = []
    if sizes is not None and policy != "stretch":
        # One scale for all axes (min or max of sizes/in); the probe reproduces it with a second,
        # constant axis whose ratio a/b is the same fraction.
        lengths = [_static_len(node, shape, a) for a in axes]
        ratios = [int(s) / m for s, m in zip(sizes, lengths)]
        pick = int(np.argmin(ratios) if policy == "not_larger" else np.argmax(ratios))
        a, b = int(sizes[pick]), lengths[pick]
        k = int(np.gcd(a, b))
        for i, axis in enumerate(axes):
            if a != b or crop(i) is not None:
                probes.append((axis, dict(length=lengths[i], size=int(sizes[i]), crop=crop(i),
                                          policy=(policy, a // k, b // k))))
        return probes
    for i, axis in enumerate(axes):
        if scales is not None:
            if np.float32(scales[i]) == 1 and crop(i) is None:
                continue
            probes.append((axis, dict(length=_static_len(node, shape, axis), scale=float(scales[i]),
                                      crop=crop(i))))
            continue
        if sizes[i] is None:  # a symbolic dim the output shares with the input: unchanged
            if crop(i) is not None:
                raise ShapeError(f"Resize node '{node.name}': axis {axis} is cropped but has no static size")
            continue
        if shape is not None and shape[axis] == int(sizes[i]) and crop(i) is None:
            continue
        probes.append((axis, dict(length=_static_len(node, shape, axis), size=int(sizes[i]), crop=crop(i))))
    return probes


def _sizes_or_output_shape(node, axes) -> list:
    """Constant ``sizes``; for computed sizes (stretch only) the inferred output shape stands in,
    where a symbolic dim equal to the input's (e.g. a dynamic batch) means unchanged (None)."""
    if node.has_input(3) and node.value(3) is None and node.attr("keep_aspect_ratio_policy", "stretch") == "stretch":
        out, inp = node.shape(node.output[0]), node.shape(node.input[0])
        sizes = []
        for a in axes:
            if out is not None and isinstance(out[a], int):
                sizes.append(out[a])
            elif out is not None and inp is not None and isinstance(out[a], str) and out[a] == inp[a]:
                sizes.append(None)
            else:
                raise ShapeError(f"Resize node '{node.name}': sizes is computed at run time and output axis "
                                 f"{a} has no static size; give the model a static input shape to differentiate")
        return sizes
    sizes = _resize_input(node, 3, "sizes")
    if sizes is None:
        raise ShapeError(f"Resize node '{node.name}' has neither scales nor sizes")
    return list(sizes)


def _upsample_probes(node, shape):
    """Upsample (opset 7-9): scales from the input (opset 9) or the attribute (opset 7)."""
    scales = node.value(1) if node.has_input(1) else node.attr("scales")
    if scales is None:
        raise ShapeError(f"Upsample node '{node.name}': scales must be a constant to differentiate")
    return [(axis, dict(length=_static_len(node, shape, axis), scale=float(s), crop=None))
            for axis, s in enumerate(np.asarray(scales).reshape(-1)) if np.float32(s) != 1]


#: Largest difference between the reference's and onnxruntime's weights still taken as rounding.
_PROBE_AGREEMENT = 1e-5


def _probe_matrix(node, attrs: dict, probe: dict) -> np.ndarray:
    """The (out, in) float64 matrix of one axis: the node's configuration run on an identity."""
    model = _probe_model(node, attrs, probe)
    data = np.eye(probe["length"], dtype=np.float32)
    if "policy" in probe:
        data = np.repeat(data[None, :, :, None], probe["policy"][2], axis=3)
    else:
        data = data[None, :, None, :]
    try:
        runtime = make_session(model, "cpu", threads=1).run(None, {"P": data})[0]
    except Exception as exc:  # a configuration onnxruntime cannot run cannot be differentiated either
        detail = ", ".join(f"{k}={v}" for k, v in attrs.items())
        raise UnsupportedOpError({node.op_type: [node.name or node.output[0]]},
                                 f"onnxruntime cannot run {detail} on one axis: {exc}") from exc
    matrix = np.asarray(runtime, np.float64)
    exact = _reference_probe(model, data)
    if exact is not None and exact.shape == matrix.shape and np.abs(exact - matrix).max(initial=0) <= _PROBE_AGREEMENT:
        matrix = exact
    matrix = matrix[0, :, :, 0] if "policy" in probe else matrix[0, :, 0, :]
    return np.ascontiguousarray(matrix.T)


def _reference_probe(model, data: np.ndarray) -> np.ndarray | None:
    """The probe on onnx's reference evaluator in float64, or None where it cannot run it."""
    from onnx.reference import ReferenceEvaluator  # ~0.1 s to import: only when a Resize is differentiated

    m64 = onnx.ModelProto()
    m64.CopyFrom(model)
    for vi in list(m64.graph.input) + list(m64.graph.output):
        vi.type.tensor_type.elem_type = onnx.TensorProto.DOUBLE
    try:
        return np.asarray(ReferenceEvaluator(m64).run(None, {"P": data.astype(np.float64)})[0], np.float64)
    except Exception:
        return None


def _probe_model(node, attrs: dict, probe: dict):
    """One-node model resizing the probed axis of a float input ``P``.

    ``P`` is (1, length, 1, length): unit vectors along axis 1 (kept), the probed axis last, and a
    dummy axis of length 1 grown to 2 (any mode copies it) so the output shape always changes.
    """
    length, crop = probe["length"], probe.get("crop") or (0.0, 1.0)
    shape = [1, length, 1, length]
    consts: dict[str, np.ndarray] = {}
    if node.op_type == "Upsample":  # opset 9 form: Upsample(X, scales)
        inputs, node_attrs, opset = ["P", "scales"], dict(attrs), 9
        consts["scales"] = np.array([1.0, 1.0, 2.0, probe["scale"]], np.float32)
    else:
        inputs, node_attrs, opset = ["P", "roi", "", ""], dict(attrs, extrapolation_value=0.0), 19
        if "policy" in probe:  # keep_aspect_ratio_policy: axis 3 (constant) fixes the common scale
            policy, a, b = probe["policy"]
            shape = [1, length, length, b]
            node_attrs.update(axes=[2, 3], keep_aspect_ratio_policy=policy)
            consts["roi"] = np.array([crop[0], 0.0, crop[1], 1.0], np.float32)
            consts["sizes"] = np.array([probe["size"], a], np.int64)
        else:
            consts["roi"] = np.array([0.0, 0.0, 0.0, crop[0], 1.0, 1.0, 1.0, crop[1]], np.float32)
            if "scale" in probe:
                consts["scales"] = np.array([1.0, 1.0, 2.0, probe["scale"]], np.float32)
            else:
                consts["sizes"] = np.array([1, length, 2, probe["size"]], np.int64)
        inputs[2 if "scales" in consts else 3] = "scales" if "scales" in consts else "sizes"
    graph = helper.make_graph(
        [helper.make_node(node.op_type, inputs, ["Q"], **node_attrs)], "probe",
        [helper.make_tensor_value_info("P", onnx.TensorProto.FLOAT, shape)],
        [helper.make_tensor_value_info("Q", onnx.TensorProto.FLOAT, None)],
        initializer=[numpy_helper.from_array(v, k) for k, v in consts.items()])
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)], ir_version=10)
