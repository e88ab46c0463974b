"""Finite differences: the fallback gradient when a graph has ops without rules, and the oracle
that proves the rules.

Two engines evaluate a model:
- :func:`session_function` — onnxruntime, float32, batched: fast, used for the fallback.
- :class:`Float64Reference` — onnx's reference evaluator on a float64 copy of the model: slow but
  exact enough (directional differences agree with true gradients to ~1e-7), used as the oracle.
  onnxruntime lacks float64 kernels for Conv, AveragePool, Resize, Erf and more, hence this path.

Estimators take ``f(x) -> y`` mapping a batch of inputs (B, ...) to outputs (B, ...), so each
evaluates its perturbations as batches, never one at a time.
"""

from __future__ import annotations

from typing import Callable

import numpy as np
import onnx
from onnx import helper, numpy_helper
from .graph import load_model, opset_version
from .rewrite import upgrade_opset
from .runtime import make_session

BatchFn = Callable[[np.ndarray], np.ndarray]

_F32, _F64 = onnx.TensorProto.FLOAT, onnx.TensorProto.DOUBLE


# ---- float64 oracle --------------------------------------------------------------------------------

def to_float64(model: onnx.ModelProto) -> onnx.ModelProto:
    """A copy of ``model`` where every float32 tensor (inputs, weights, constants, casts) is float64."""
    out = onnx.ModelProto()
    out.CopyFrom(model)
    _graph_to_float64(out.graph)
    return out


def _graph_to_float64(graph: onnx.GraphProto) -> None:
    for vi in list(graph.input) + list(graph.output) + list(graph.value_info):
        if vi.type.tensor_type.elem_type == _F32:
            vi.type.tensor_type.elem_type = _F64
    for i, init in enumerate(graph.initializer):
        if init.data_type == _F32:
            arr = numpy_helper.to_array(init).astype(np.float64)
            graph.initializer[i].CopyFrom(numpy_helper.from_array(arr, init.name))
    for node in graph.node:
        for attr in node.attribute:
            if attr.name == "to" and attr.i == _F32 and node.op_type == "Cast":
                attr.i = _F64
            if attr.type == onnx.AttributeProto.TENSOR and attr.t.data_type == _F32:
                arr = numpy_helper.to_array(attr.t).astype(np.float64)
                attr.t.CopyFrom(numpy_helper.from_array(arr, attr.t.name))
            if attr.type == onnx.AttributeProto.GRAPH:
                _graph_to_float64(attr.g)


def exact_reference_ops() -> list:
    """Reference kernels that lose float64 precision, replaced by exact ones."""
    import functools
    import math

    from onnx.reference.op_run import OpRun

    class Erf(OpRun):  # onnx's reference Erf rounds through float32
        op_domain = ""

        def _run(self, x):
            return (np.vectorize(math.erf, otypes=[x.dtype])(x) if x.size else x.copy(),)

    class Gelu(OpRun):  # the reference's exact mode also goes through a float32 erf
        op_domain = ""

        def _run(self, x, approximate="none"):
            if approximate == "tanh":
                inner = np.sqrt(2 / np.pi) * (x + 0.044715 * x ** 3)
                return ((0.5 * x * (1 + np.tanh(inner))).astype(x.dtype),)
            erf = np.vectorize(math.erf, otypes=[x.dtype])(x / np.sqrt(2)) if x.size else x
            return ((0.5 * x * (1 + erf)).astype(x.dtype),)

    from onnx.reference.ops.op_conv_transpose import ConvTranspose as ReferenceConvTranspose

    class ConvTranspose(ReferenceConvTranspose):  # the reference lacks group > 1
        def _run(self, X, W, B=None, group=None, **attrs):
            attrs = _explicit_conv_transpose_pads(X.shape[2:], W.shape[2:], attrs)
            if not group or group == 1:
                return super()._run(X, W, B, group=1, **attrs)
            xs, ws = np.split(X, group, axis=1), np.split(W, group, axis=0)
            bs = np.split(B, group) if B is not None else [None] * group
            outs = [super(ConvTranspose, self)._run(x, w, b, group=1, **attrs)[0] for x, w, b in zip(xs, ws, bs)]
            return (np.concatenate(outs, axis=1),)

    from onnx.reference.ops.op_pad import Pad_18

    class Pad(Pad_18):  # the reference rejects negative pads; onnxruntime crops first, then pads
        def _run(self, data, pads, constant_value=None, axes=None, mode=None):
            rank = data.ndim
            axes = list(range(rank)) if axes is None else [int(a) % rank for a in axes]
            pads, n = [int(p) for p in pads], len(axes)
            crop = [slice(None)] * rank
            for i, a in enumerate(axes):
                crop[a] = slice(max(-pads[i], 0), data.shape[a] - max(-pads[n + i], 0))
            kept = np.array([max(p, 0) for p in pads], dtype=np.int64)
            return super()._run(data[tuple(crop)], kept, constant_value, axes, mode=mode)

    def pool_windows(x, kernel_shape, strides, dilations, pads, auto_pad, ceil_mode):
        """ONNX pool windows (spec semantics): input positions, in-input mask and in-padding mask,
        each shaped (*out, taps); values shaped (N, C, *out, taps)."""
        k = len(kernel_shape)
        strides, dilations, pads = strides or [1] * k, dilations or [1] * k, pads or [0] * (2 * k)
        auto_pad = auto_pad.decode() if isinstance(auto_pad, bytes) else (auto_pad or "NOTSET")
        pos, valid, inpad = [], [], []
        for i, (n, kk, s, d) in enumerate(zip(x.shape[2:], kernel_shape, strides, dilations)):
            extent = (kk - 1) * d + 1
            if auto_pad in ("SAME_UPPER", "SAME_LOWER"):
                out = -(-n // s)
                total = max((out - 1) * s + extent - n, 0)
                pb = total // 2 if auto_pad == "SAME_UPPER" else total - total // 2
                pe = total - pb
            else:
                pb, pe = (0, 0) if auto_pad == "VALID" else (pads[i], pads[k + i])
                span = n + pb + pe - extent
                out = (-(-span // s) if ceil_mode else span // s) + 1
                if ceil_mode and (out - 1) * s >= n + pb:  # no window may start in the end padding
                    out -= 1
            shape = [1] * (2 * k)
            shape[2 * i], shape[2 * i + 1] = out, kk
            p = ((np.arange(out) * s - pb)[:, None] + np.arange(kk)[None, :] * d).reshape(shape)
            pos.append(p)
            valid.append((p >= 0) & (p < n))
            inpad.append((p >= -pb) & (p < n + pe))
        order = [2 * i for i in range(k)] + [2 * i + 1 for i in range(k)]
        full = np.broadcast_shapes(*[p.shape for p in pos])
        outs = tuple(full[2 * i] for i in range(k))

        def windows(a):  # (o0, k0, o1, k1, ...) -> (*out, taps)
            return np.broadcast_to(a, full).transpose(order).reshape(outs + (-1,))

        clipped = tuple(np.clip(p, 0, n - 1) for p, n in zip(pos, x.shape[2:]))
        values = x[(slice(None), slice(None)) + clipped]
        values = values.transpose([0, 1] + [2 + j for j in order]).reshape(x.shape[:2] + outs + (-1,))
        return (values, [windows(p) for p in pos], windows(functools.reduce(np.logical_and, valid)),
                windows(functools.reduce(np.logical_and, inpad)))

    class MaxPool(OpRun):  # the reference loses Indices' offsets at unit strides, mis-sizes auto_pad/pads
        op_domain = ""

        def _run(self, x, auto_pad=None, ceil_mode=0, dilations=None, kernel_shape=None, pads=None,
                 storage_order=0, strides=None):
            values, pos, valid, _ = pool_windows(x, kernel_shape, strides, dilations, pads, auto_pad, ceil_mode)
            values = np.where(valid, values, -np.inf)
            best = values.argmax(axis=-1)[..., None]
            y = np.take_along_axis(values, best, axis=-1)[..., 0].astype(x.dtype)
            if len(self.output) == 1:
                return (y,)
            dims = list(x.shape[2:])
            flat = np.zeros_like(pos[0])
            for i in (range(len(dims)) if not storage_order else reversed(range(len(dims)))):
                flat = flat * dims[i] + pos[i]
            flat = np.broadcast_to(flat, values.shape)
            plane = np.arange(x.shape[0] * x.shape[1]).reshape(x.shape[:2] + (1,) * (y.ndim - 2))
            index = np.take_along_axis(flat, best, axis=-1)[..., 0] + plane * int(np.prod(dims))
            return y, index.astype(np.int64)

    class AveragePool(OpRun):  # the reference shifts windows when dilations meet ceil_mode, mis-sizes auto_pad
        op_domain = ""

        def _run(self, x, auto_pad=None, ceil_mode=0, count_include_pad=0, dilations=None, kernel_shape=None,
                 pads=None, strides=None):
            values, _, valid, inpad = pool_windows(x, kernel_shape, strides, dilations, pads, auto_pad, ceil_mode)
            total = np.where(valid, values, 0).sum(axis=-1)
            return ((total / (inpad if count_include_pad else valid).sum(axis=-1)).astype(x.dtype),)

    class LRN(OpRun):  # the reference sums over the wrong channel range (loops over the batch size)
        op_domain = ""

        def _run(self, x, alpha=1e-4, beta=0.75, bias=1.0, size=None):
            lo, hi = (size - 1) // 2, size // 2  # window [c - floor((size-1)/2), c + ceil((size-1)/2)]
            squares = np.pad(x * x, [(0, 0), (lo, hi)] + [(0, 0)] * (x.ndim - 2))
            total = sum(squares[:, i:i + x.shape[1]] for i in range(size))
            return ((x / (bias + alpha / size * total) ** beta).astype(x.dtype),)

    class GroupNormalization(OpRun):  # the function body rounds through float32 (stash_type)
        op_domain = ""

        def _run(self, X, scale, bias, epsilon=1e-5, num_groups=None, stash_type=1):
            n, c = X.shape[:2]
            grouped = X.reshape(n, num_groups, -1)
            mean = grouped.mean(axis=-1, keepdims=True)
            var = ((grouped - mean) ** 2).mean(axis=-1, keepdims=True)
            normal = (grouped - mean) / np.sqrt(var + epsilon)
            if scale.size == num_groups:  # opset 18: one scale/bias per group (== per channel if C == G)
                y = normal * scale.reshape(-1, 1) + bias.reshape(-1, 1)
                return (y.reshape(X.shape).astype(X.dtype),)
            per_channel = (c,) + (1,) * (X.ndim - 2)  # opset 21: one scale/bias per channel
            y = normal.reshape(X.shape) * scale.reshape(per_channel) + bias.reshape(per_channel)
            return (y.astype(X.dtype),)

    class GlobalMaxPool(OpRun):  # the reference reduces the wrong axes for 1-D and 3-D inputs
        op_domain = ""

        def _run(self, x):
            return (x.max(axis=tuple(range(2, x.ndim)), keepdims=True),)

    class HardSwish(OpRun):  # the reference runs the function body, HardSigmoid with alpha = float32(1/6)
        op_domain = ""

        def _run(self, x):
            return ((x * np.clip(x / 6 + 0.5, 0, 1)).astype(x.dtype),)

    class Mean(OpRun):  # the reference adds in place into the first operand: no broadcasting it up
        op_domain = ""

        def _run(self, *args):
            return ((sum(args) / len(args)).astype(args[0].dtype),)

    return [Erf, Gelu, ConvTranspose, Pad, MaxPool, AveragePool, LRN, GroupNormalization, GlobalMaxPool, Mean,
            HardSwish]


def _explicit_conv_transpose_pads(spatial, kernel, attrs: dict) -> dict:
    """ConvTranspose attributes with ``output_shape`` / ``auto_pad`` SAME_* turned into explicit pads.

    The reference evaluator crashes on ``output_shape`` without pads and extends SAME outputs where
    onnxruntime does not; onnxruntime follows the spec's formulas (total = full + output_padding -
    target; SAME_UPPER crops total // 2 at the head, otherwise total - total // 2), never crops a
    negative total, and zero-extends the end up to an ``output_shape``.
    """
    auto_pad = attrs.get("auto_pad") or "NOTSET"
    auto_pad = auto_pad.decode() if isinstance(auto_pad, bytes) else auto_pad
    output_shape = attrs.get("output_shape")
    if not output_shape and auto_pad not in ("SAME_UPPER", "SAME_LOWER"):
        return attrs
    k = len(spatial)
    strides = list(attrs.get("strides") or [1] * k)
    dilations = list(attrs.get("dilations") or [1] * k)
    out_pad = list(attrs.get("output_padding") or [0] * k)
    targets = list(output_shape)[-k:] if output_shape else [n * s for n, s in zip(spatial, strides)]
    begin, end = [], []
    for i in range(k):
        total = strides[i] * (spatial[i] - 1) + out_pad[i] + (kernel[i] - 1) * dilations[i] + 1 - targets[i]
        if total < 0 and output_shape:
            out_pad[i] -= total
        total = max(total, 0)
        begin.append(total // 2 if auto_pad == "SAME_UPPER" else total - total // 2)
        end.append(total - begin[-1])
    return {**attrs, "auto_pad": "NOTSET", "output_shape": None, "pads": begin + end, "output_padding": out_pad}


class Float64Reference:
    """Evaluate a model exactly in float64 with onnx's reference evaluator.

    Opsets below 17 are upgraded first: on some opset-11/12 exports the reference evaluator
    disagrees with onnxruntime until converted.
    """

    def __init__(self, model: onnx.ModelProto):
        from onnx.reference import ReferenceEvaluator

        if opset_version(model) < 17:
            model = upgrade_opset(model, 18)
        self.model = to_float64(model)
        self._evaluator = ReferenceEvaluator(self.model, new_ops=exact_reference_ops())
        self.input_names = [i.name for i in self.model.graph.input
                            if i.name not in {t.name for t in self.model.graph.initializer}]
        self.output_names = [o.name for o in self.model.graph.output]

    def __call__(self, feeds: dict[str, np.ndarray], outputs: list[str] | None = None) -> list[np.ndarray]:
        cast = {k: (np.asarray(v, np.float64) if np.asarray(v).dtype.kind == "f" else np.asarray(v))
                for k, v in feeds.items()}
        return [np.asarray(r) for r in self._evaluator.run(outputs, cast)]


# ---- estimators ------------------------------------------------------------------------------------

def _chunks(total: int, size: int):
    for start in range(0, total, size):
        yield start, min(start + size, total)


def exact_gradient(f: BatchFn, x: np.ndarray, cotangent: np.ndarray, eps: float = 1e-3,
                   batch_size: int = 256) -> np.ndarray:
    """Central differences over every input coordinate of every sample: grad of sum(f(x) * cotangent).

    ``x`` has shape (N, ...) and ``f`` must treat samples independently (true of inference-mode
    networks). Perturbed copies of each sample are stacked and evaluated ``batch_size`` at a time;
    cost: 2 * x[0].size forward samples per sample.
    """
    x = np.asarray(x)
    n = x.shape[0]
    sample_size = int(np.prod(x.shape[1:]))
    grad = np.zeros((n, sample_size), dtype=np.float64)
    flat = x.reshape(n, sample_size)
    cot = np.asarray(cotangent).reshape(n, -1)
    for i in range(n):
        coords = np.arange(sample_size)
        for start, stop in _chunks(sample_size, max(1, batch_size // 2)):
            idx = coords[start:stop]
            k = len(idx)
            pert = np.repeat(flat[i:i + 1], 2 * k, axis=0)
            pert[np.arange(k), idx] += eps
            pert[k + np.arange(k), idx] -= eps
            out = np.asarray(f(pert.reshape((2 * k,) + x.shape[1:]).astype(x.dtype)), dtype=np.float64)
            values = out.reshape(2 * k, -1) @ cot[i].astype(np.float64)
            grad[i, idx] = (values[:k] - values[k:]) / (2 * eps)
    return grad.reshape(x.shape).astype(x.dtype)


def spsa_gradient(f: BatchFn, x: np.ndarray, cotangent: np.ndarray, samples: int = 64,
                  eps: float = 1e-2, seed: int = 0, batch_size: int = 256) -> np.ndarray:
    """Stochastic (SPSA) estimate of grad of sum(f(x) * cotangent) with Rademacher directions.

    Unbiased up to O(eps^2); variance falls as 1/samples. Cost: 2 * samples forward samples per
    input sample, independent of the input size — the estimator for large inputs.
    """
    x = np.asarray(x)
    n = x.shape[0]
    rng = np.random.default_rng(seed)
    cot = np.asarray(cotangent).reshape(n, -1).astype(np.float64)
    grad = np.zeros(x.shape, dtype=np.float64)
    for i in range(n):
        deltas = rng.choice(np.array([-1.0, 1.0]), size=(samples,) + x.shape[1:])
        values = np.empty(2 * samples)
        pert = np.concatenate([x[i] + eps * deltas, x[i] - eps * deltas]).astype(x.dtype)
        for start, stop in _chunks(2 * samples, batch_size):
            out = np.asarray(f(pert[start:stop]), dtype=np.float64)
            values[start:stop] = out.reshape(stop - start, -1) @ cot[i]
        diff = (values[:samples] - values[samples:]) / (2 * eps)
        # For Rademacher deltas 1/delta == delta.
        grad[i] = np.tensordot(diff, deltas, axes=1) / samples
    return grad.astype(x.dtype)


def session_function(model: onnx.ModelProto | bytes | str, output: str | None = None,
                     providers: str = "auto") -> BatchFn:
    """Wrap a single-input model in ``f(x) -> y`` on onnxruntime (one session, reused)."""
    model = load_model(model)
    session = make_session(model, providers)
    name = session.get_inputs()[0].name
    out = [output] if output else [session.get_outputs()[0].name]
    return lambda x: session.run(out, {name: x})[0]


def single_node_model(op_type: str, inputs: dict[str, np.ndarray], attrs: dict | None = None,
                      initializers: dict[str, np.ndarray] | None = None, n_outputs: int = 1,
                      opset: int = 18, input_order: list[str] | None = None) -> onnx.ModelProto:
    """A one-node model (graph inputs ``inputs``, constants ``initializers``) — for checking rules."""
    initializers = initializers or {}
    order = input_order or list(inputs) + list(initializers)
    graph_inputs = [helper.make_tensor_value_info(k, helper.np_dtype_to_tensor_dtype(v.dtype), v.shape)
                    for k, v in inputs.items()]
    outs = [f"out{i}" for i in range(n_outputs)]
    node = helper.make_node(op_type, order, outs, name=op_type.lower(), **(attrs or {}))
    graph = helper.make_graph(
        [node], op_type.lower(), graph_inputs,
        [helper.make_tensor_value_info(o, onnx.TensorProto.UNDEFINED, None) for o in outs],
        initializer=[numpy_helper.from_array(np.asarray(v), k) for k, v in initializers.items()])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)], ir_version=10)
    inferred = onnx.shape_inference.infer_shapes(model)
    # Give outputs their inferred types so the model is valid.
    vis = {vi.name: vi for vi in inferred.graph.value_info}
    for out in inferred.graph.output:
        if out.name in vis:
            out.CopyFrom(vis[out.name])
    return inferred
