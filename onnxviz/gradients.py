"""Input gradients as a function: ``x, cotangent -> (target, grad)``, by the gradient graph or, for
models with ops lacking rules, by finite differences.

This is what maximization and attribution call in their inner loops: one onnxruntime session,
built once, one ``run`` per step.
"""

from __future__ import annotations

import warnings
from typing import Literal, Sequence

import numpy as np
import onnx

from .errors import OnnxvizError, ShapeError, UnsupportedOpError

Method = Literal["auto", "graph", "fd"]
METHODS = ("auto", "graph", "fd")
#: Inputs up to this many values per sample use exact central differences; larger ones use SPSA.
FD_EXACT_LIMIT = 4096


def check_method(method: str) -> str:
    """``method`` if it is one of :data:`METHODS`; else one clear :class:`OnnxvizError`."""
    if method not in METHODS:
        raise OnnxvizError(f"unknown gradient method '{method}' (choose: auto, graph, fd)")
    return method


class FallbackWarning(UserWarning):
    """Raised (as a warning) once when gradient="auto" falls back to finite differences."""


def concrete_input_shape(shape: Sequence, input_shape: Sequence[int] | None = None,
                         batch: int = 1, name: str = "x") -> tuple[int, ...]:
    """A runnable shape: ``input_shape`` when given (checked against ``shape``'s rank and fixed dims
    by :func:`~onnxviz.graph.check_input_shape`), else ``shape`` with a symbolic first dim as
    ``batch``. Other unknown dims need ``input_shape`` (ShapeError). ``name``: the input's, for messages."""
    if input_shape is not None:
        from .graph import check_input_shape

        return check_input_shape(name, shape, input_shape)
    if shape is None:
        raise ShapeError("the model input has no known shape; give --input-shape")
    out = []
    for i, d in enumerate(shape):
        if isinstance(d, int) and d > 0:
            out.append(d)
        elif i == 0:
            out.append(batch)
        else:
            raise ShapeError(f"the model input has a dynamic dimension ({d or '?'}) at axis {i}; "
                             "give --input-shape (e.g. 1,3,224,224)")
    return tuple(out)


class GradientFunction:
    """Gradient of ``sum(cotangent * target(x))`` w.r.t. one model input ``x``.

    ``method``: "graph" builds the ONNX gradient graph (raises UnsupportedOpError when some op has
    no rule); "fd" uses finite differences (exact central differences for small inputs, SPSA for
    large ones); "auto" uses the graph when possible and otherwise falls back to "fd" with one
    warning. ``modifier`` ("guided"/"deconvnet") needs the graph.
    """

    def __init__(self, model: onnx.ModelProto | str | bytes, of: str | int | None = None, *,
                 input_name: str | None = None, modifier: str | None = None, method: Method = "auto",
                 providers: str = "auto", extra_feeds: dict[str, np.ndarray] | None = None,
                 fd_samples: int = 64, seed: int = 0):
        from .autodiff import gradient_model, plan, prepare
        from .graph import check_one_input
        from .runtime import make_session

        check_method(method)
        prepared, target = prepare(model, of)
        inputs = [i.name for i in prepared.graph.input
                  if i.name not in {t.name for t in prepared.graph.initializer}]
        self.input_name = input_name or inputs[0]
        if self.input_name not in inputs:
            raise OnnxvizError(f"model has no input '{self.input_name}' (inputs: {', '.join(inputs)})")
        self.target_name = target
        self.extra_feeds = dict(extra_feeds or {})
        check_one_input(prepared, self.input_name, self.extra_feeds)
        self.unsupported: dict[str, list[str]] = plan(prepared, target, [self.input_name]).unsupported
        if method == "auto" and self.unsupported:
            if modifier is not None:
                raise UnsupportedOpError(self.unsupported, f"the '{modifier}' modifier needs the gradient graph")
            warnings.warn(f"{UnsupportedOpError(self.unsupported)}; using finite differences (slower, approximate)",
                          FallbackWarning, stacklevel=2)
            method = "fd"
        elif method == "auto":
            method = "graph"
        if method == "fd" and modifier is not None:
            raise OnnxvizError(f"the '{modifier}' modifier needs the gradient graph, not finite differences")
        self.method = method
        self.modifier = modifier
        self._fd_samples = fd_samples
        self._rng = np.random.default_rng(seed)
        if method == "graph":
            self.model = gradient_model(prepared, of=target, wrt=[self.input_name], modifier=modifier)
            self.session = make_session(self.model, providers)
            self._cotangent = self.session.get_inputs()[len(self.session.get_inputs()) - 1].name
        else:
            self.model = prepared
            self.session = make_session(prepared, providers)
        self.forward_session = None
        self._providers = providers

    def __call__(self, x: np.ndarray, cotangent: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """(target(x), d sum(cotangent * target) / dx), both as numpy arrays."""
        x = np.ascontiguousarray(x, dtype=np.float32)
        cotangent = np.ascontiguousarray(cotangent, dtype=np.float32)
        if self.method == "graph":
            target, grad = self.session.run(None, {self.input_name: x, self._cotangent: cotangent,
                                                   **self.extra_feeds})
            return target, grad
        from . import fd

        target = self.forward(x)
        f = self.forward
        if x[0].size <= FD_EXACT_LIMIT:
            grad = fd.exact_gradient(f, x, cotangent, eps=1e-3)
        else:
            grad = fd.spsa_gradient(f, x, cotangent, samples=self._fd_samples, eps=1e-2,
                                    seed=int(self._rng.integers(2**31)))
        return target, grad

    def forward(self, x: np.ndarray) -> np.ndarray:
        """target(x) alone (no gradient)."""
        x = np.ascontiguousarray(x, dtype=np.float32)
        if self.method == "graph":
            if self.forward_session is None:
                from .rewrite import truncate
                from .runtime import make_session

                self.forward_session = make_session(truncate(self.model, [self.target_name]), self._providers)
            return self.forward_session.run([self.target_name], {self.input_name: x, **self.extra_feeds})[0]
        return self.session.run([self.target_name], {self.input_name: x, **self.extra_feeds})[0]
