"""Tensors of a gradient graph as values with operators, so a rule reads like its formula.

``gz * z * (1 - z)`` emits ``Mul(Mul(gz, z), Sub(1, z))``: each operator emits one node through
the :class:`~onnxviz.autodiff.builder.GradBuilder`, and Python numbers become constants of the
element type of the forward tensor the value is tied to (``like``).
"""

from __future__ import annotations

from typing import Any

__all__ = ["Value"]


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

    def __add__(self, other: Any) -> "Value":
        return self._emit("Add", self.name, self._of(other))

    def __radd__(self, other: Any) -> "Value":
        return self._emit("Add", self._of(other), self.name)

    def __sub__(self, other: Any) -> "Value":
        return self._emit("Sub", self.name, self._of(other))

    def __rsub__(self, other: Any) -> "Value":
        return self._emit("Sub", self._of(other), self.name)

    def __mul__(self, other: Any) -> "Value":
        return self._emit("Mul", self.name, self._of(other))

    def __rmul__(self, other: Any) -> "Value":
        return self._emit("Mul", self._of(other), self.name)

    def __truediv__(self, other: Any) -> "Value":
        return self._emit("Div", self.name, self._of(other))

    def __rtruediv__(self, other: Any) -> "Value":
        return self._emit("Div", self._of(other), self.name)

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
