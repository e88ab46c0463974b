"""``onnxviz check``: can this model be differentiated, and is the gradient right?

The gradient (graph, or finite differences when some op lacks a rule) is compared with float64
central differences of a float64 copy of the model run by onnx's reference evaluator — the oracle
float32 onnxruntime cannot be (it lacks float64 kernels for Conv, Resize, Erf, ...).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Sequence

import numpy as np
import onnx

from .errors import RewriteError

#: A float32 gradient graph agrees with the float64 oracle to ~1e-6; this leaves room for depth.
GRAPH_TOLERANCE = 1e-3
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
    max_rel_error: float
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
                    method: str = "auto", eps: float = 1e-5) -> CheckReport:
    """Build the gradient of ``layer`` (default: the logits of the first output) and measure its
    largest relative error against float64 directional finite differences on a random input."""
    from .autodiff import RULES, plan, prepare
    from .fd import Float64Reference
    from .gradients import GradientFunction, concrete_input_shape
    from .graph import input_info, load_model
    from .rewrite import expose, to_logits

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
    shape = concrete_input_shape(info.shape, input_shape)

    rng = np.random.default_rng(seed)
    lo, hi = info.value_range
    x = rng.uniform(lo, hi, size=shape).astype(np.float32)
    fn = GradientFunction(prepared, target, input_name=info.name, method=method, providers="cpu")
    y = fn.forward(x)
    cot = rng.standard_normal(y.shape).astype(np.float32)
    _, grad = fn(x, cot)

    oracle = Float64Reference(expose(prepared, [target]) if target not in
                              [o.name for o in prepared.graph.output] else prepared)
    x64, cot64, grad64 = x.astype(np.float64), cot.astype(np.float64), grad.astype(np.float64)
    scale = (hi - lo) * eps

    def objective(v: np.ndarray) -> float:
        return float(np.sum(oracle({info.name: v}, [target])[0] * cot64))

    worst = 0.0
    for _ in range(directions):
        v = rng.standard_normal(shape)
        numeric = (objective(x64 + scale * v) - objective(x64 - scale * v)) / (2 * scale)
        analytic = float(np.sum(grad64 * v))
        denom = max(abs(numeric), 1e-3 * float(np.abs(grad64).sum()), 1e-12)
        worst = max(worst, abs(numeric - analytic) / denom)
    return CheckReport(
        target=target, supported=the_plan.supported, unsupported_ops=sorted(the_plan.unsupported),
        unsupported_nodes=the_plan.unsupported, ops_with_rules=[o for o in ops if o in RULES],
        method=fn.method, max_rel_error=worst,
        tolerance=GRAPH_TOLERANCE if fn.method == "graph" else FD_TOLERANCE,
        directions=directions, input_shape=list(shape))
