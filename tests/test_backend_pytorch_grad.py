"""`onnxviz grad` on every PyTorch-exported model of the onnx wheel's backend tests.

onnx ships, under ``onnx/backend/test/data/pytorch-converted`` and ``pytorch-operator``, the models
PyTorch exported for its layers and operators (mostly opset 6, tensors named "0", "1", ...), with
their inputs and expected outputs. For each one whose inputs are all float32 (109 of 117 in onnx
1.23; the others take int64 indices, or float64 with inputs stored from uninitialized memory,
~1e223), each graph output is targeted by its tensor name through the CLI, and the gradient model
it writes must be exact, as ``onnxviz check`` judges it:

- its float64 copy (onnx's reference evaluator) agrees with float64 central differences of the
  original model within ``check.GRAPH_TOLERANCE``, in random directions at the test's own input;
- onnxruntime runs the float32 model it wrote, its target matches the expected output stored with
  the test, and its gradient agrees with the float64 one.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
import pytest
from onnx import numpy_helper
from typer.testing import CliRunner

from gradcheck import ort_session, rel_error
from onnxviz import cli
from onnxviz.autodiff import COTANGENT
from onnxviz.check import GRAPH_TOLERANCE
from onnxviz.fd import Float64Reference

DATA = Path(onnx.__file__).parent / "backend" / "test" / "data"
SUITES = ("pytorch-converted", "pytorch-operator")
#: onnxruntime float32 gradient vs the float64 graph (relative to the largest entry).
RUNTIME_TOLERANCE = 1e-4

runner = CliRunner()


def _float_models() -> list[Path]:
    found = []
    for suite in SUITES:
        for case in sorted((DATA / suite).glob("test_*")):
            if not (case / "model.onnx").is_file():
                continue
            model = onnx.load(str(case / "model.onnx"), load_external_data=False)
            weights = {t.name for t in model.graph.initializer}
            inputs = [i for i in model.graph.input if i.name not in weights]
            if inputs and all(i.type.tensor_type.elem_type == onnx.TensorProto.FLOAT for i in inputs):
                found.append(case)
    return found


CASES = _float_models()


def _read(path: Path) -> np.ndarray:
    tensor = onnx.TensorProto()
    tensor.ParseFromString(path.read_bytes())
    return numpy_helper.to_array(tensor)


def _params():
    return [pytest.param(case, id=f"{case.parent.name}/{case.name}") for case in CASES]


def test_the_suite_is_there():
    """The selection is the 109 models issue 15 counts (a new onnx with other data: recount)."""
    if not DATA.is_dir():
        pytest.skip(f"onnx {onnx.__version__} ships no backend test data")
    assert len(CASES) == 109, [c.name for c in CASES]


@pytest.mark.parametrize("case", _params())
def test_grad_by_output_name_is_exact(case: Path, tmp_path: Path):
    model = onnx.load(str(case / "model.onnx"))
    weights = {t.name for t in model.graph.initializer}
    names = [i.name for i in model.graph.input if i.name not in weights]
    data = case / "test_data_set_0"
    feeds = {name: _read(data / f"input_{k}.pb") for k, name in enumerate(names)}
    oracle = Float64Reference(model)
    feeds64 = {k: v.astype(np.float64) for k, v in feeds.items()}
    rng = np.random.default_rng(0)

    for k, out in enumerate(o.name for o in model.graph.output):
        path = tmp_path / f"grad_{k}.onnx"
        result = runner.invoke(cli.app, ["grad", str(case / "model.onnx"), "-o", str(path), "--layer", out])
        assert result.exit_code == 0, f"--layer {out!r}: {result.output}"
        g = onnx.load(str(path))
        assert g.graph.output[0].name == out
        wrt = [o.name[: -len("_grad")] for o in g.graph.output[1:]]
        assert wrt == names

        y = oracle(feeds64, [out])[0]
        defined = np.isfinite(y)  # Pow of a negative base to a fractional power is NaN: left out
        cot = np.where(defined, rng.standard_normal(y.shape), 0.0)
        g64 = Float64Reference(g)(feeds64 | {COTANGENT: cot})
        np.testing.assert_allclose(g64[0], y, rtol=1e-10, atol=1e-12)
        grads = dict(zip(names, g64[1:]))

        # The written float32 model on onnxruntime: the stored expected output, the float64 gradient.
        got = ort_session(g).run(None, feeds | {COTANGENT: cot.astype(np.float32)})
        np.testing.assert_allclose(got[0], _read(data / f"output_{k}.pb"), rtol=1e-4, atol=1e-5)
        for name, grad32 in zip(names, got[1:]):
            finite = np.isfinite(grads[name])
            assert np.array_equal(np.isfinite(grad32), finite), f"{out}: onnxruntime d/d{name} undefined elsewhere"
            assert rel_error(grad32[finite], grads[name][finite]) < RUNTIME_TOLERANCE, f"{out}: onnxruntime d/d{name}"
        grads = {n: np.where(np.isfinite(gr), gr, 0.0) for n, gr in grads.items()}

        # The float64 gradient vs float64 central differences, as `onnxviz check` measures it: several
        # steps (a kink spoils large steps only), each direction keeping its best agreement.
        def objective(step: float, v: dict) -> float:
            shifted = {n: feeds64[n] + step * v[n] for n in names}
            return float(np.sum(np.where(defined, oracle(shifted, [out])[0] * cot, 0.0)))

        worst = 0.0
        for _ in range(2):
            v = {n: np.where(np.isfinite(g64[1 + i]), rng.standard_normal(feeds[n].shape), 0.0)
                 for i, n in enumerate(names)}  # no steps along coordinates where the gradient is NaN
            analytic = sum(float(np.sum(grads[n] * v[n])) for n in names)
            total = sum(float(np.abs(grads[n]).sum()) for n in names)
            errors = []
            for step in (1e-5, 1e-7):
                numeric = (objective(step, v) - objective(-step, v)) / (2 * step)
                errors.append(abs(numeric - analytic) / max(abs(numeric), 1e-3 * total, 1e-12))
            worst = max(worst, min(errors))
        assert worst <= GRAPH_TOLERANCE, f"{out}: gradient vs float64 differences: rel err {worst:.2e}"
