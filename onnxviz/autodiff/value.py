"""Tensors of a gradient graph as values with operators, so a rule reads like its formula.

``gz * z * (1 - z)`` emits ``Mul(Mul(gz, z), Sub(1, z))``: each operator emits one node through
the :class:`~onnxviz.autodiff.builder.GradBuilder`, and Python numbers become constants of the
element type of the forward tensor the value is tied to (``like``).
"""

from __future__ import annotations

from typing import Any

__all__ = ["Value"]


def _binary(op_type: str, reflected: bool = False):
    """The operator method emitting ``op_type(self, other)``, or ``op_type(other, self)`` reflected."""

    def method(self: "Value", other: Any) -> "Value":
        a, b = self.name, self._of(other)
        return self._emit(op_type, *((b, a) if reflected else (a, b)))

    return method


class Value:
    """One tensor name in a gradient graph under construction, with ``+ - * /``, unary ``-`` and
    the few elementwise functions rules need (``exp``, ``sign``, ``abs``, ``sigmoid``)."""

    __slots__ = ("g", "name", "like")

    def __init__(self, g: Any, name: str, like: str):
        self.g, self.name, self.like = g, name, like

    def __str__(self) -> str:
        return self.name

    def _of(self, other: Any) -> str:
        return other.name if isinstance(other, Value) else self.g.const(float(other), like=self.like)

    def _emit(self, op_type: str, *inputs: str) -> "Value":
        return Value(self.g, self.g.op(op_type, inputs), self.like)

    __add__, __radd__ = _binary("Add"), _binary("Add", reflected=True)
    __sub__, __rsub__ = _binary("Sub"), _binary("Sub", reflected=True)
    __mul__, __rmul__ = _binary("Mul"), _binary("Mul", reflected=True)
    __truediv__, __rtruediv__ = _binary("Div"), _binary("Div", reflected=True)

    def __neg__(self) -> "Value":
        return self._emit("Neg", self.name)

    def __abs__(self) -> "Value":
        return self._emit("Abs", self.name)

    def exp(self) -> "Value":
        return self._emit("Exp", self.name)

    def sign(self) -> "Value":
        return self._emit("Sign", self.name)

    def sigmoid(self) -> "Value":
        return self._emit("Sigmoid", self.name)
