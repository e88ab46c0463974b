"""Layout detection: where the channels are, for graph inputs and for any tensor.

One module answers both questions so that inputs, objectives and CAM agree: an input's layout from
its first consumers (an exporter's Transpose, a Conv) and, failing that, its dims; a tensor's
channel axis by walking back to the op that fixed it (ONNX's channels-first ops, a Transpose, an
input).
"""

from __future__ import annotations

from typing import Callable, Mapping, Sequence

import onnx

from .graphview import GraphView
from .ops import CHANNELS_FIRST_OPS, CONSTANT_OPS, INPUT_PREPROCESSING_OPS, SAME_LAYOUT_OPS

__all__ = ["CHANNELS_LAST", "guess_input_layout", "tensor_channel_axis"]

#: Layout names whose channels are the last axis.
CHANNELS_LAST = ("NHWC", "NDHWC")
_COLOUR_DIMS = (1, 3, 4)
_MAX_DEPTH = 64


def guess_input_layout(model: onnx.ModelProto, name: str, shape: Sequence[int | None] | None) -> str | None:
    """NCHW/NHWC (NCDHW/NDHWC for rank 5) of graph input ``name``, or ``None`` for other ranks.

    A Transpose with perm ``[0,3,1,2]`` right after the input (through a few preprocessing ops)
    means channels-last; a channels-first consumer (Conv, pooling, normalization) means
    channels-first; else the dims decide (last dim in 1/3/4 and dim 1 not: channels-last)."""
    if shape is None or len(shape) not in (4, 5):
        return None
    first, last = ("NCHW", "NHWC") if len(shape) == 4 else ("NCDHW", "NDHWC")
    to_first = [0, 3, 1, 2] if len(shape) == 4 else [0, 4, 1, 2, 3]
    consumers = GraphView(model).consumers
    frontier, seen = [name], set()
    for _ in range(4):  # a few preprocessing nodes deep
        nxt = []
        for t in frontier:
            for node in consumers.get(t, []):
                if id(node) in seen:
                    continue
                seen.add(id(node))
                if node.op_type == "Transpose" and node.input[0] == t:
                    perm = next((list(a.ints) for a in node.attribute if a.name == "perm"), None)
                    if perm == to_first:
                        return last
                    return first if perm is not None else None
                if node.op_type in CHANNELS_FIRST_OPS and node.input[0] == t:
                    return first
                if node.op_type in INPUT_PREPROCESSING_OPS:
                    nxt.extend(o for o in node.output if o)
        frontier = nxt
    if shape[-1] in _COLOUR_DIMS and shape[1] not in _COLOUR_DIMS:
        return last
    if shape[1] in _COLOUR_DIMS:
        return first
    return None


def tensor_channel_axis(model: onnx.ModelProto, tensor: str, rank: int,
                        input_layout: Callable[[str], str | None],
                        producers: Mapping[str, onnx.NodeProto] | None = None) -> int | None:
    """Axis of the full (batched) tensor holding channels: 1 after ONNX's channels-first ops and
    for dense ``(N, units)`` tensors, ``rank - 1`` after an exporter's Transpose to channels-last
    or for a channels-last graph input (``input_layout(name)`` gives an input's layout). Walks
    back through layout-preserving ops; ``None`` below rank 2."""
    if rank <= 2:
        return 1 if rank == 2 else None
    if producers is None:
        producers = GraphView(model).producers
    inputs = {i.name for i in model.graph.input}
    for _ in range(_MAX_DEPTH):
        if tensor in inputs:
            return rank - 1 if input_layout(tensor) in CHANNELS_LAST else 1
        node = producers.get(tensor)
        if node is None or node.op_type in CHANNELS_FIRST_OPS:
            return 1
        if node.op_type == "Transpose":
            perm = next((list(a.ints) for a in node.attribute if a.name == "perm"), None)
            if perm is None or len(perm) != rank:
                return 1
            return perm.index(tensor_channel_axis(model, node.input[0], rank, input_layout, producers))
        if node.op_type not in SAME_LAYOUT_OPS:
            return 1
        # follow the first input on the data path (broadcast constants are not)
        data = next((name for name in node.input if name in inputs or (
            producers.get(name) is not None and producers[name].op_type not in CONSTANT_OPS)), None)
        if data is None:
            return 1
        tensor = data
    return 1
