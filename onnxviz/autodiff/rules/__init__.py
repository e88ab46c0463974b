"""The gradient-rule registry: one small function per op, registered by op type.

A rule has the signature ``rule(g, node, gy) -> list[str | None]`` (see ``..builder``): ``g`` emits
backward nodes, ``node`` describes the forward node, ``gy`` holds one cotangent (or None) per forward
output; the result holds one cotangent (or None) per forward input, and may stop after the last
input that gets one (shape, axes and other trailing inputs are left out). A rule only needs to
produce gradients for inputs where ``node.needs[i]`` is true.

Adding an op = one function decorated with ``@rule("OpType")`` in the family module, plus one test.
"""

from __future__ import annotations

from typing import Callable

RULES: dict[str, Callable] = {}

#: Ops whose float outputs are piecewise constant in their inputs: gradient zero everywhere it exists.
ZERO_GRADIENT_OPS = {"Floor", "Ceil", "Round", "Sign", "ArgMax", "ArgMin", "Shape", "Size",
                     "EyeLike", "RandomNormalLike", "RandomUniformLike", "Bernoulli"}


def rule(*op_types: str) -> Callable:
    """Register the decorated function as the gradient rule of each op type."""

    def register(fn: Callable) -> Callable:
        for op_type in op_types:
            if op_type in RULES:
                raise ValueError(f"duplicate gradient rule for {op_type}")
            RULES[op_type] = fn
        return fn

    return register


def supported_ops() -> list[str]:
    """Op types with a gradient rule (ops with zero gradient included)."""
    return sorted(set(RULES) | ZERO_GRADIENT_OPS)


# Importing the family modules fills RULES.
from . import elementwise, linear, pooling, normalization, movement, reduction  # noqa: E402,F401
