"""Fuzzing the gradient rules: random small graphs checked against float64 finite differences.

Hypothesis draws graphs of 1-4 ops over the ops with gradient rules (tests/fuzz_graphs.py: numpy
broadcasting, reductions with axes/keepdims, MatMul/Gemm/Einsum, Conv/ConvTranspose with strides,
pads, dilations and groups, pooling with pads/ceil_mode/count_include_pad, normalizations, movement
ops, Resize, ...). For each graph:

1. values are drawn, and redrawn (a few seeds) until every kink (ReLU at 0, max ties, clip bounds,
   ...) is at least ``KINK_TOL`` (relative) away from the float64 intermediate values;
2. onnxruntime's float32 forward must agree with the float64 oracle (onnx's reference evaluator with
   the library's exact kernels, ``onnxviz.fd.Float64Reference``), else the oracle cannot judge;
3. the float64 gradient graph must agree with float64 central differences of ``sum(y * cotangent)``
   (``tests/gradcheck.check_gradient``, the library's checker) within ``FD_TOL`` relative;
4. the float32 gradient graph on onnxruntime must agree with the float64 one within ``ORT_TOL``.

``test_fuzz_op[<op>]`` puts one op in every graph it draws (so each op gets examples), and
``test_fuzz_mixed`` draws any ops. Failures shrink to a minimal graph: ops are drawn before shapes
and attributes, and the falsifying example prints the graph in ONNX's text format
(``onnx.parser.parse_model`` reads it back; tests/test_fuzz_regressions.py keeps the shrunk graphs
of past bugs).

Runs:
- CI: ``pytest tests/test_fuzz_gradients.py`` — fixed examples (the ``deterministic`` profile of
  tests/conftest.py derandomizes), ``PER_OP`` per op plus ``MIXED`` mixed ones.
- Longer campaign: ``ONNXVIZ_FUZZ_EXAMPLES=2000 HYPOTHESIS_PROFILE=explore pytest -m fuzz`` —
  about that many examples in all, three quarters spread over the ops, a quarter mixed; new ones
  each run with ``explore``.
- Reproduce a failure: the report prints ``@reproduce_failure(...)`` (``print_blob``); paste it above
  the test, or rebuild the printed graph with ``onnx.parser.parse_model`` and feed
  ``Case.feeds(seed)`` values (seed printed as ``values seed``).
"""

from __future__ import annotations

import json
import math
import os

import numpy as np
import onnx
import pytest
from hypothesis import HealthCheck, event, given, note, reject, settings
from hypothesis import strategies as st
from onnx import numpy_helper

from fuzz_graphs import FOCUS_OPS, Case, graphs, kink_margins, largest_partial_product, smallest_variance
from gradcheck import check_gradient, ort_session
from onnxviz.autodiff import COTANGENT, gradient_model
from onnxviz.errors import ShapeError
from onnxviz.fd import Float64Reference, to_float64

pytestmark = pytest.mark.fuzz

#: float64 gradient graph vs float64 central differences (directional, relative).
FD_TOL = 1e-5
#: The same where the largest gradient entry is below 1e-4 x the output (FD is then mostly noise).
FLAT_FD_TOL = 1e-3
#: onnxruntime float32 gradient graph vs the float64 one (relative to the largest gradient entry).
ORT_TOL = 2e-3
#: onnxruntime float32 forward vs the float64 oracle (relative to max(1, largest value)).
FORWARD_TOL = 1e-4
#: Values closer than this (relative to max(1, |values|)) to a kink are redrawn.
KINK_TOL = 1e-4
#: Intermediate values beyond this are redrawn (float32 then loses the digits the checks need).
VALUE_LIMIT = 1e4
VALUE_TRIES = 4

_TOTAL = int(os.environ.get("ONNXVIZ_FUZZ_EXAMPLES", "0") or 0)
PER_OP = max(1, math.ceil(0.75 * _TOTAL / len(FOCUS_OPS))) if _TOTAL else 10
MIXED = max(1, math.ceil(0.25 * _TOTAL)) if _TOTAL else 120
_LOG = os.environ.get("ONNXVIZ_FUZZ_LOG")  # append one JSON line per checked graph (coverage counts)

FUZZ_SETTINGS = dict(deadline=None, suppress_health_check=[HealthCheck.too_slow, HealthCheck.filter_too_much,
                                                           HealthCheck.data_too_large])


def _initializers(model: onnx.ModelProto) -> dict[str, np.ndarray]:
    return {t.name: numpy_helper.to_array(t) for t in model.graph.initializer}


def _values(case: Case, seed: int):
    """Feeds (float32) whose float64 intermediate values keep off every kink, and those values."""
    exposed = case.exposed()
    oracle = Float64Reference(exposed)
    consts = _initializers(oracle.model)
    for attempt in range(VALUE_TRIES):
        feeds = case.feeds(seed + attempt)
        values = {**consts, **{k: v.astype(np.float64) for k, v in feeds.items()},
                  **dict(zip(oracle.output_names, oracle(feeds)))}
        floats = [v for v in values.values() if v.dtype.kind == "f"]
        if not all(np.isfinite(v).all() and np.abs(v).max(initial=0) <= VALUE_LIMIT for v in floats) \
                or largest_partial_product(case.model, values) > VALUE_LIMIT:
            continue
        close = [(name, gap, scale) for name, gap, scale in kink_margins(case.model, values)
                 if gap < KINK_TOL * scale]
        if not close:
            return feeds, values, exposed, seed + attempt
        note(f"values seed {seed + attempt}: too close to a kink at {close}")
    event("rejected: values near kinks or too large")
    reject()


def _check_forward(case: Case, exposed: onnx.ModelProto, feeds: dict, values: dict) -> None:
    """onnxruntime (float32) computes what the float64 oracle computes, tensor by tensor."""
    session = ort_session(exposed)
    got = dict(zip([o.name for o in session.get_outputs()], session.run(None, feeds)))
    producer = {o: n for n in case.model.graph.node for o in n.output}
    for name, runtime in got.items():
        want = values[name]
        where = f"{name} ({producer[name].op_type} node {producer[name].name})" if name in producer else name
        assert runtime.shape == want.shape, f"onnxruntime shape {runtime.shape} vs oracle {want.shape} at {where}"
        if want.dtype.kind != "f":
            continue
        err = float(np.abs(runtime - want).max(initial=0)) / max(1.0, float(np.abs(want).max(initial=0)))
        assert err < FORWARD_TOL, f"oracle and onnxruntime disagree at {where}: rel err {err:.2e}"


def _flat(case: Case, feeds: dict, seed: int, eps: float = 1e-6) -> bool:
    """The output does not move along random directions (for graphs whose true gradient is zero,
    e.g. the sum of a softmax: the relative FD error then measures rounding noise only)."""
    oracle = Float64Reference(case.model)
    rng = np.random.default_rng(seed)
    x = {k: v.astype(np.float64) for k, v in feeds.items()}
    y = oracle(x)[0]
    cot = rng.standard_normal(y.shape)
    scale = 1.0 + float(np.sum(np.abs(y * cot)))
    for _ in range(3):
        v = {k: rng.standard_normal(a.shape) for k, a in x.items()}
        up = np.sum(oracle({k: a + eps * v[k] for k, a in x.items()})[0] * cot)
        down = np.sum(oracle({k: a - eps * v[k] for k, a in x.items()})[0] * cot)
        if abs(up - down) / (2 * eps) > 1e-6 * scale:
            return False
    return True


def _check_runtime(case: Case, feeds: dict, seed: int) -> float:
    """Worst gap between onnxruntime's float32 gradients and the float64 gradient graph's (0 where
    the float64 gradients are beyond what float32 can carry, e.g. a ReduceProd of many large values)."""
    g64 = Float64Reference(gradient_model(to_float64(case.model)))
    y = Float64Reference(case.model)(feeds)[0]
    cot = np.random.default_rng(seed + 7).standard_normal(y.shape)
    want = g64({**feeds, COTANGENT: cot})[1:]
    if max(float(np.abs(w).max(initial=0)) for w in want) > VALUE_LIMIT ** 2:
        event("float64 gradient too large for a float32 comparison")
        return 0.0
    session = ort_session(gradient_model(case.model))
    got = session.run(None, {**feeds, COTANGENT: cot.astype(np.float32)})[1:]
    scale = max(max(float(np.abs(w).max(initial=0)) for w in want),
                1e-3 * max(1.0, float(np.abs(y).max(initial=0))))
    return max(float(np.abs(g - w).max(initial=0)) for g, w in zip(got, want)) / scale


def check_case(case: Case, seed: int) -> None:
    feeds, values, exposed, seed = _values(case, seed)
    note(f"values seed {seed}")
    # a normalization of (near) zero variance amplifies float32 rounding by 1/sqrt(epsilon): float32
    # and float64 then differ by far more than rounding, both right
    degenerate = smallest_variance(case.model, values) < 1e-3
    if degenerate:
        event("float32 comparisons skipped: a normalization of (near) zero variance")
    else:
        _check_forward(case, exposed, feeds, values)
    if case.hidden:  # rules that need a rank refuse a tensor of unknown shape, by a clear ShapeError
        try:
            gradient_model(case.model)
        except ShapeError as exc:
            assert "unknown" in str(exc), exc
            event("refused: a tensor of unknown rank")
            return
    result = check_gradient(case.model, feeds, directions=3, eps=1e-6, seed=seed, run_ort=False)
    for name, grad in result.grads.items():  # (a NaN would pass the FD comparison unseen)
        assert np.isfinite(grad).all(), f"non-finite float64 gradient for {name}: {grad}"
    largest = max(float(np.abs(g).max(initial=0)) for g in result.grads.values())
    output = max(1.0, float(np.abs(values[case.model.graph.output[0].name]).max(initial=0)))
    # Nearly flat graphs (gradients tiny next to the output, e.g. a LayerNormalization of two
    # elements) leave finite differences mostly rounding noise: a looser tolerance there.
    tolerance = FD_TOL if largest > 1e-4 * output else FLAT_FD_TOL
    fd_error = result.fd_error
    for eps in (1e-4, 1e-5):  # rounding noise at a small step? a wrong gradient disagrees at every step
        if fd_error < tolerance:
            break
        fd_error = min(fd_error, check_gradient(case.model, feeds, directions=3, eps=eps, seed=seed,
                                                run_ort=False).fd_error)
    if fd_error >= tolerance and largest <= 1e-7 * output and _flat(case, feeds, seed):
        event("flat graph (zero gradient)")
        fd_error = 0.0
    assert fd_error < tolerance, f"gradient vs float64 finite differences: rel err {fd_error:.2e}"
    ort_error = 0.0 if degenerate else _check_runtime(case, feeds, seed)
    assert ort_error < ORT_TOL, f"onnxruntime float32 gradient vs float64 gradient: rel err {ort_error:.2e}"
    for op in sorted(case.op_types):
        event(f"op {op}")
    if _LOG:
        with open(_LOG, "a") as f:
            f.write(json.dumps({"ops": case.ops, "op_types": sorted(case.op_types), "fd_error": fd_error,
                                "ort_error": ort_error, "largest": max(int(v.size) for v in values.values())}) + "\n")


@pytest.mark.parametrize("op", FOCUS_OPS)
@settings(max_examples=PER_OP, **FUZZ_SETTINGS)
@given(data=st.data())
def test_fuzz_op(op, data):
    case = data.draw(graphs(focus=op), label="graph")
    check_case(case, data.draw(st.integers(0, 2**16), label="values seed"))


@settings(max_examples=MIXED, **FUZZ_SETTINGS)
@given(case=graphs(), seed=st.integers(0, 2**16))
def test_fuzz_mixed(case, seed):
    check_case(case, seed)
