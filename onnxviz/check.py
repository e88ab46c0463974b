"""``onnxviz check``: can this model be differentiated, and is the gradient right?

The gradient graph, built for a float64 copy of the model and run by onnx's reference evaluator,
is compared with float64 central differences of the same copy — the oracle float32 onnxruntime
cannot be (it lacks float64 kernels for Conv, Resize, Erf, ...). The float32 graph onnxruntime runs
is compared with the float64 one and reported beside it. When some op lacks a rule, the finite-
difference gradient the tools would use is compared with the float64 differences instead.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Sequence

import numpy as np
import onnx

from .autodiff import COTANGENT, RULES, gradient_model, plan, prepare
from .errors import RewriteError
from .fd import Float64Reference
from .gradients import GradientFunction, concrete_input_shape
from .graph import input_info, load_model
from .rewrite import expose, to_logits

#: The float64 gradient graph agrees with float64 differences to ~1e-7; this leaves room for depth.
GRAPH_TOLERANCE = 1e-4
#: Finite differences in float32 are noisy (1e-2 relative on correct gradients is common).
FD_TOLERANCE = 5e-2


@dataclass
class CheckReport:
    target: str
    supported: bool
    unsupported_ops: list[str]
    unsupported_nodes: dict[str, list[str]]
    ops_with_rules: list[str]
    method: str  # "graph" or "fd"
    max_rel_error: float  # gradient vs float64 directional finite differences
    runtime_rel_error: float | None  # onnxruntime float32 graph vs float64 graph (None for fd)
    tolerance: float
    directions: int
    input_shape: list[int]
    passed: bool = field(init=False)

    def __post_init__(self) -> None:
        self.passed = bool(self.max_rel_error <= self.tolerance)

    def to_dict(self) -> dict:
        return asdict(self)


def check_gradients(model: onnx.ModelProto | str | bytes, layer: str | int | None = None, *,
                    input_shape: Sequence[int] | None = None, directions: int = 3, seed: int = 0,
                    method: str = "auto", eps: float = 1e-7) -> CheckReport:
    """Build the gradient of ``layer`` (default: the logits of the first output) and measure its
    largest relative error against float64 directional finite differences on a random input."""
    model = load_model(model)
    if layer is None:
        try:
            model = to_logits(model)
        except RewriteError:
            pass
    prepared, target = prepare(model, layer)
    info = input_info(prepared)[0]
    the_plan = plan(prepared, target, [info.name])
    ops = sorted({n.op_type for n in the_plan.nodes})
    shape = concrete_input_shape(info.shape, input_shape, name=info.name)

    rng = np.random.default_rng(seed)
    lo, hi = info.value_range
    x = rng.uniform(lo, hi, size=shape).astype(np.float32)
    fn = GradientFunction(prepared, target, input_name=info.name, method=method, providers="cpu")
    y = fn.forward(x)
    cot = rng.standard_normal(y.shape).astype(np.float32)
    _, grad32 = fn(x, cot)  # what the tools will use: onnxruntime, float32

    exposed = prepared if target in [o.name for o in prepared.graph.output] else expose(prepared, [target])
    oracle = Float64Reference(exposed)
    x64, cot64 = x.astype(np.float64), cot.astype(np.float64)
    runtime_error = None
    if fn.method == "graph":
        # The rules are judged in float64, where kinks (ReLU at 0, max ties) cannot flip between the
        # gradient and the differences: a dead channel whose pre-activation is ~1e-9 flips sign
        # between float32 and float64 and would otherwise read as a gradient error.
        g64 = Float64Reference(gradient_model(oracle.model, of=target, wrt=[info.name]))
        grad = g64({info.name: x64, COTANGENT: cot64})[1]
        runtime_error = float(np.abs(grad32 - grad).max() / max(np.abs(grad).max(), 1e-12))
        # Several steps: a kink (a unit with pre-activation ~1e-8) spoils large steps only, while a
        # wrong gradient disagrees at every step; each direction keeps its best agreement.
        steps = [(hi - lo) * e for e in (eps * 100, eps, eps / 100)]
    else:
        grad = grad32.astype(np.float64)
        steps = [(hi - lo) * 1e-5]

    def objective(v: np.ndarray) -> float:
        return float(np.sum(oracle({info.name: v}, [target])[0] * cot64))

    worst = 0.0
    for _ in range(directions):
        v = rng.standard_normal(shape)
        analytic = float(np.sum(grad * v))
        errors = []
        for step in steps:
            numeric = (objective(x64 + step * v) - objective(x64 - step * v)) / (2 * step)
            denom = max(abs(numeric), 1e-3 * float(np.abs(grad).sum()), 1e-12)
            errors.append(abs(numeric - analytic) / denom)
        worst = max(worst, min(errors))
    return CheckReport(
        target=target, supported=the_plan.supported, unsupported_ops=sorted(the_plan.unsupported),
        unsupported_nodes=the_plan.unsupported, ops_with_rules=[o for o in ops if o in RULES],
        method=fn.method, max_rel_error=worst, runtime_rel_error=runtime_error,
        tolerance=GRAPH_TOLERANCE if fn.method == "graph" else FD_TOLERANCE,
        directions=directions, input_shape=list(shape))
