"""Gradient checking for tests: a rule is right when its float64 gradient graph agrees with float64
central differences (the reference evaluator), and the float32 graph runs on onnxruntime and agrees
with the float64 one.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import onnx
import onnxruntime as ort
from onnx.reference import ReferenceEvaluator

from onnxviz.autodiff import COTANGENT, gradient_model
from onnxviz.fd import Float64Reference, exact_reference_ops, single_node_model, to_float64


@dataclass
class GradCheck:
    fd_error: float  # worst relative error of directional derivatives (float64 graph vs float64 FD)
    ort_error: float  # worst relative error of onnxruntime float32 grads vs float64 graph grads
    grads: dict  # float64 gradients by input name


def rel_error(a: np.ndarray, b: np.ndarray) -> float:
    a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
    scale = max(np.abs(b).max(initial=0.0), 1e-12)
    return float(np.abs(a - b).max(initial=0.0) / scale)


def ort_session(model: onnx.ModelProto) -> ort.InferenceSession:
    return ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])


def check_gradient(model: onnx.ModelProto, feeds: dict[str, np.ndarray], *, of=None, wrt=None,
                   directions: int = 4, eps: float = 1e-6, seed: int = 0, run_ort: bool = True) -> GradCheck:
    """Check the gradient graph of ``model`` at ``feeds`` (float32 arrays); returns the errors."""
    rng = np.random.default_rng(seed)
    g32 = gradient_model(model, of=of, wrt=wrt)
    onnx.checker.check_model(g32, full_check=True)
    assert all(n.domain in ("", "ai.onnx") for n in g32.graph.node), "gradient uses a non-default domain"
    grad_inputs = [i.name for i in g32.graph.input if i.name not in {t.name for t in g32.graph.initializer}]
    assert grad_inputs[-1] == COTANGENT
    outputs = [o.name for o in g32.graph.output]

    m64 = to_float64(model)
    g64 = gradient_model(m64, of=of, wrt=wrt)
    ref = ReferenceEvaluator(g64, new_ops=exact_reference_ops())
    feeds64 = {k: (v.astype(np.float64) if v.dtype.kind == "f" else v) for k, v in feeds.items()}
    fwd = Float64Reference(m64)
    target_name = outputs[0]
    y = fwd(feeds64, [target_name])[0] if target_name in [o.name for o in fwd.model.graph.output] else None
    if y is None:
        from onnxviz.rewrite import expose

        fwd = Float64Reference(expose(m64, [target_name]))
        y = fwd(feeds64, [target_name])[0]
    cot = rng.standard_normal(y.shape)
    results = ref.run(None, {**feeds64, COTANGENT: cot})
    wrt_names = grad_inputs[:-1] if wrt is None else list(wrt)
    wrt_names = [n for n in wrt_names if feeds[n].dtype.kind == "f"]
    grads = dict(zip(wrt_names, results[1:]))
    np.testing.assert_allclose(results[0], y, rtol=1e-10, atol=1e-12)

    def objective(shifted: dict) -> float:
        return float(np.sum(fwd(shifted, [target_name])[0] * cot))

    fd_err = 0.0
    for _ in range(directions):
        v = {k: rng.standard_normal(feeds64[k].shape) for k in wrt_names}
        plus = {**feeds64, **{k: feeds64[k] + eps * v[k] for k in wrt_names}}
        minus = {**feeds64, **{k: feeds64[k] - eps * v[k] for k in wrt_names}}
        numeric = (objective(plus) - objective(minus)) / (2 * eps)
        analytic = sum(float(np.sum(grads[k] * v[k])) for k in wrt_names)
        scale = max(abs(numeric), sum(float(np.abs(grads[k]).sum()) for k in wrt_names) * 1e-3, 1e-9)
        fd_err = max(fd_err, abs(numeric - analytic) / scale)

    ort_err = 0.0
    if run_ort:
        sess = ort_session(g32)
        cot_type = next(i.type for i in sess.get_inputs() if i.name == COTANGENT)
        got = sess.run(None, {**feeds, COTANGENT: cot.astype(np.float64 if cot_type == "tensor(double)" else np.float32)})
        for k, gk in zip(wrt_names, got[1:]):
            ort_err = max(ort_err, rel_error(gk, grads[k]))
    return GradCheck(fd_err, ort_err, grads)


def check_op(op_type: str, inputs: dict[str, np.ndarray], attrs: dict | None = None,
             initializers: dict[str, np.ndarray] | None = None, *, n_outputs: int = 1, of: str | None = None,
             input_order: list[str] | None = None, opset: int = 18, fd_tol: float = 1e-5,
             ort_tol: float = 1e-4, **kwargs) -> GradCheck:
    """Build a one-node model and assert its gradient rule is right (see module docstring)."""
    inputs = {k: np.asarray(v, np.float32) if np.asarray(v).dtype.kind == "f" else np.asarray(v)
              for k, v in inputs.items()}
    initializers = {k: (np.asarray(v, np.float32) if np.asarray(v).dtype.kind == "f" else np.asarray(v))
                    for k, v in (initializers or {}).items()}
    model = single_node_model(op_type, inputs, attrs, initializers, n_outputs=n_outputs, opset=opset,
                              input_order=input_order)
    result = check_gradient(model, inputs, of=of or "out0", **kwargs)
    assert result.fd_error < fd_tol, f"{op_type} {attrs}: gradient vs finite differences: rel err {result.fd_error:.2e}"
    assert result.ort_error < ort_tol, f"{op_type} {attrs}: onnxruntime vs float64: rel err {result.ort_error:.2e}"
    return result
