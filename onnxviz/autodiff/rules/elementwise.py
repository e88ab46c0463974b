"""Elementwise ops (numpy broadcasting): arithmetic, activations, selection, casts.

Notation in comments: x, y inputs; z the forward output; gz its cotangent.
"""

from __future__ import annotations

import math

import onnx

from ...errors import UnsupportedOpError
from ..value import Value
from . import rule


def _out_shape(node):
    return node.shape(node.output[0])


def _rest(inputs, i):
    """The operands other than the i-th (what it was broadcast against)."""
    return [x for j, x in enumerate(inputs) if j != i]


def _binary(g, node, ga, gb):
    """Unbroadcast per-operand gradients (None where not needed)."""
    a, b = node.input[:2]
    shape = _out_shape(node)
    return [g.unbroadcast(ga(), a, shape, others=[b]) if node.needs[0] else None,
            g.unbroadcast(gb(), b, shape, others=[a]) if node.needs[1] else None]


@rule("Add")
def add(g, node, gy):
    return _binary(g, node, lambda: gy[0], lambda: gy[0])


@rule("Sub")
def sub(g, node, gy):
    return _binary(g, node, lambda: gy[0], lambda: g.Neg(gy[0]))


@rule("Mul")
def mul(g, node, gy):
    a, b = node.input
    return _binary(g, node, lambda: g.Mul(gy[0], b), lambda: g.Mul(gy[0], a))


@rule("Div")
def div(g, node, gy):
    a, b = node.input
    z = node.output[0]
    # dz/da = 1/b ; dz/db = -z/b
    return _binary(g, node, lambda: g.Div(gy[0], b), lambda: g.Neg(g.Div(g.Mul(gy[0], z), b)))


@rule("Pow")
def pow_(g, node, gy):
    a, b = node.input
    z = node.output[0]
    if node.dtype(b) != node.dtype(a):
        b_float = g.Cast(b, to=node.dtype(a))
    else:
        b_float = b
    one = g.const(1.0, like=a)
    # dz/da = b * a^(b-1) ; dz/db = z * log(a)  (0 where a <= 0, the usual convention)
    def da():
        return g.Mul(gy[0], g.Mul(b_float, g.Pow(a, g.Sub(b_float, one))))

    def db():
        zero = g.const(0.0, like=a)
        positive = g.Greater(a, zero)
        safe_a = g.Where(positive, a, one)
        return g.Mul(gy[0], g.Where(positive, g.Mul(z, g.Log(safe_a)), zero))

    if node.needs[1] and node.dtype(b) != node.dtype(a):
        return [g.unbroadcast(da(), a, _out_shape(node)) if node.needs[0] else None, None]
    return _binary(g, node, da, db)


# ---- unary elementwise ops: one line each, gx = f(gz, x, z) --------------------------------------
#: Op -> its input's cotangent from the output's cotangent ``gz``, the input ``x`` and the output ``z``
#: (:class:`~onnxviz.autodiff.value.Value` operands). Adding a unary elementwise op is one line here.
UNARY = {
    "Neg": lambda gz, x, z: -gz,
    "Abs": lambda gz, x, z: gz * x.sign(),
    "Sqrt": lambda gz, x, z: gz / (2 * z),
    "Exp": lambda gz, x, z: gz * z,
    "Log": lambda gz, x, z: gz / x,
    "Reciprocal": lambda gz, x, z: -(gz * (z * z)),
    "Sigmoid": lambda gz, x, z: gz * (z * (1 - z)),
    "Tanh": lambda gz, x, z: gz * (1 - z * z),
    "Softplus": lambda gz, x, z: gz * x.sigmoid(),
    "Softsign": lambda gz, x, z: (lambda d: gz / (d * d))(1 + abs(x)),
    "Erf": lambda gz, x, z: gz * (2.0 / math.sqrt(math.pi) * (-(x * x)).exp()),
}


def _unary_rule(formula):
    def unary(g, node, gy):
        x, z = node.input[0], node.output[0]
        return [formula(Value(g, gy[0], x), Value(g, x, x), Value(g, z, x)).name]
    return unary


for _op, _formula in UNARY.items():
    rule(_op)(_unary_rule(_formula))


@rule("Identity", "Dropout")
def identity(g, node, gy):
    # Dropout is differentiated in inference mode (identity), which is how visualization runs it.
    if node.op_type == "Dropout" and node.has_input(2):
        mode = node.value(2)
        if mode is not None and bool(mode):
            raise UnsupportedOpError({"Dropout": [node.name]}, "training_mode=1 is not differentiable")
    return [gy[0]]


@rule("Cast", "CastLike")
def cast(g, node, gy):
    x = node.input[0]
    back = g.Cast(gy[0], to=node.dtype(x))
    return [back]


@rule("Gelu")
def gelu(g, node, gy):
    x = node.input[0]
    c = lambda v: g.const(v, like=x)  # noqa: E731
    if node.attr("approximate", "none") == "tanh":
        # z = x/2 (1 + tanh(u)), u = k (x + 0.044715 x^3), k = sqrt(2/pi)
        k = math.sqrt(2.0 / math.pi)
        x2 = g.Mul(x, x)
        u = g.Mul(c(k), g.Add(x, g.Mul(c(0.044715), g.Mul(x2, x))))
        t = g.Tanh(u)
        du = g.Mul(c(k), g.Add(c(1.0), g.Mul(c(3 * 0.044715), x2)))
        d = g.Add(g.Mul(c(0.5), g.Add(c(1.0), t)),
                  g.Mul(g.Mul(c(0.5), x), g.Mul(g.Sub(c(1.0), g.Mul(t, t)), du)))
    else:
        # z = x Phi(x): dz/dx = Phi(x) + x phi(x)
        phi = g.Mul(c(1.0 / math.sqrt(2 * math.pi)), g.Exp(g.Mul(c(-0.5), g.Mul(x, x))))
        cdf = g.Mul(c(0.5), g.Add(c(1.0), g.Erf(g.Mul(x, c(1.0 / math.sqrt(2.0))))))
        d = g.Add(cdf, g.Mul(x, phi))
    return [g.Mul(gy[0], d)]


# ---- ReLU family: these honour the guided / deconvnet backprop modifiers --------------------------

def _modified(g, grad_through, gy0, like):
    """Apply the modifier: guided keeps only positive cotangents; deconvnet ignores the forward."""
    zero = g.const(0.0, like=like)
    if g.modifier == "guided":
        return g.Where(g.Greater(gy0, zero), grad_through, zero)
    return grad_through


#: HardSigmoid slope for exact 0/1 masks of float32 tensors (see :func:`positive_mask`)
_MASK_SLOPE = 2.0 ** 127


def positive_mask(g, z: str) -> str | None:
    """``[z > 0]`` as 0/1 floats for a float32 ``z >= 0`` (a ReLU's output), from two
    HardSigmoid(alpha=2^127, beta=0) nodes: ``min(1, 2^127 z)`` is 1 for z >= 2^-127 and at least
    2^-22 for the smallest denormal, so a second one gives exactly 1 for every z > 0, 0 for z = 0.
    onnxruntime runs HardSigmoid and Mul on its blocked NCHWc layout, so a ReLU mask between two
    convolutions stays in that layout (a Greater + Where pair forces two reorders to NCHW).
    ``None`` for other dtypes (the exactness argument is float32's)."""
    if g.info.dtype(z) != onnx.TensorProto.FLOAT:
        return None
    once = g.HardSigmoid(z, alpha=_MASK_SLOPE, beta=0.0)
    return g.HardSigmoid(once, alpha=_MASK_SLOPE, beta=0.0)


@rule("Relu")
def relu(g, node, gy):
    # The mask comes from the output (z > 0 exactly when x > 0): reading only z keeps
    # onnxruntime's Conv+Relu / Gemm+Relu fusions intact in the forward half.
    z = node.output[0]
    if g.modifier == "deconvnet":
        return [g.Relu(gy[0])]
    if gy[0] in g.relu_masked:
        through = gy[0]
    else:
        mask = positive_mask(g, z)
        if mask is None:
            zero = g.const(0.0, like=z)
            through = g.Where(g.Greater(z, zero), gy[0], zero)
        else:
            through = g.Mul(gy[0], mask)
    if g.modifier == "guided":
        return [g.Relu(through)]  # = gy [gy > 0] [z > 0], as the mask is 0 or 1
    return [through]


@rule("LeakyRelu")
def leaky_relu(g, node, gy):
    x = node.input[0]
    alpha = node.attr("alpha", 0.01)
    zero = g.const(0.0, like=x)
    if g.modifier == "deconvnet":
        return [g.Relu(gy[0])]
    if g.modifier == "guided":
        # guided: positive cotangent through positive inputs only (as for ReLU)
        through = g.Where(g.Greater(x, zero), gy[0], zero)
        return [_modified(g, through, gy[0], x)]
    return [g.Where(g.Greater(x, zero), gy[0], g.Mul(gy[0], g.const(alpha, like=x)))]


@rule("PRelu")
def prelu(g, node, gy):
    x, slope = node.input
    zero = g.const(0.0, like=x)
    positive = g.Greater(x, zero)
    shape = _out_shape(node)
    return [g.Where(positive, gy[0], g.Mul(gy[0], slope)) if node.needs[0] else None,
            g.unbroadcast(g.Where(positive, zero, g.Mul(gy[0], x)), slope, shape) if node.needs[1] else None]


def _relu6_mask(g, z: str, lo: str | None, hi: str | None) -> str | None:
    """``[0 < z < hi]`` as 0/1 floats for a float32 Clip with constant bounds lo = 0 and hi > 0
    (ReLU6: MobileNets), else None. ``[z > 0]`` is :func:`positive_mask`; ``[z < hi]`` is
    HardSigmoid(z, alpha=-s, beta=s*hi) with s = 2^k (k <= 127) putting s*hi at 2^125-2^126
    (at least 2^30 for small hi): -s*z and s*hi are exact, so their sum is 0 exactly at z = hi
    and otherwise at least s * ulp(hi) / 2 >= 2^6, which the HardSigmoid clamps to exactly 1."""
    lo_v = g.info.constant(lo) if lo is not None else None
    hi_v = g.info.constant(hi) if hi is not None else None
    if lo_v is None or hi_v is None or lo_v.size != 1 or hi_v.size != 1:
        return None
    lo_f, hi_f = float(lo_v.reshape(())), float(hi_v.reshape(()))
    if lo_f != 0.0 or not 2.0 ** -97 <= hi_f < 2.0 ** 120:
        return None
    above = positive_mask(g, z)
    if above is None:
        return None
    scale = 2.0 ** min(127, 126 - math.ceil(math.log2(hi_f)))
    below = g.HardSigmoid(z, alpha=-scale, beta=scale * hi_f)
    return g.Mul(above, below)


@rule("Clip")
def clip(g, node, gy):
    x = node.input[0]
    lo = node.input[1] if node.has_input(1) else None
    hi = node.input[2] if node.has_input(2) else None
    zero = g.const(0.0, like=x)
    if g.modifier == "deconvnet" and lo is not None:
        return [g.Relu(gy[0]), None, None][: len(node.input)]
    inside = None
    # Gradient flows where lo < x < hi (ties at the bounds get zero, as for ReLU at 0). The output
    # z = clip(x) tells the same (lo < z < hi exactly when lo < x < hi) and keeps Conv+Clip fused.
    z = node.output[0]
    mask = _relu6_mask(g, z, lo, hi)
    if mask is not None:  # ReLU6 and friends: 0/1 masks onnxruntime runs in its NCHWc layout
        through = g.Mul(gy[0], mask)
        return [g.Relu(through) if g.modifier == "guided" else through]
    if lo is not None:
        inside = g.Greater(z, lo)
    if hi is not None:
        below = g.Less(z, hi)
        inside = below if inside is None else g.And(inside, below)
    through = gy[0] if inside is None else g.Where(inside, gy[0], zero)
    if lo is not None:
        through = _modified(g, through, gy[0], x)
    return [through]


@rule("Elu")
def elu(g, node, gy):
    x = node.input[0]
    z = node.output[0]
    alpha = g.const(node.attr("alpha", 1.0), like=x)
    zero = g.const(0.0, like=x)
    return [g.Where(g.Greater(x, zero), gy[0], g.Mul(gy[0], g.Add(z, alpha)))]


@rule("Selu")
def selu(g, node, gy):
    x = node.input[0]
    alpha = node.attr("alpha", 1.67326319217681884765625)
    gamma = node.attr("gamma", 1.05070102214813232421875)
    zero = g.const(0.0, like=x)
    neg = g.Mul(g.const(alpha * gamma, like=x), g.Exp(x))
    return [g.Mul(gy[0], g.Where(g.Greater(x, zero), g.const(gamma, like=x), neg))]


@rule("HardSigmoid")
def hard_sigmoid(g, node, gy):
    x = node.input[0]
    alpha = node.attr("alpha", 0.2)
    beta = node.attr("beta", 0.5)
    u = g.Add(g.Mul(x, g.const(alpha, like=x)), g.const(beta, like=x))
    inside = g.And(g.Greater(u, g.const(0.0, like=x)), g.Less(u, g.const(1.0, like=x)))
    return [g.Where(inside, g.Mul(gy[0], g.const(alpha, like=x)), g.const(0.0, like=x))]


@rule("HardSwish")
def hard_swish(g, node, gy):
    # z = x * clip(x/6 + 1/2, 0, 1): dz/dx = 0 (x < -3), x/3 + 1/2 (-3 < x < 3), 1 (x > 3)
    x = node.input[0]
    c = lambda v: g.const(v, like=x)  # noqa: E731
    mid = g.Add(g.Div(x, c(3.0)), c(0.5))
    d = g.Where(g.Less(x, c(-3.0)), c(0.0), g.Where(g.Greater(x, c(3.0)), c(1.0), mid))
    return [g.Mul(gy[0], d)]


# ---- selection ------------------------------------------------------------------------------------

@rule("Max", "Min")
def max_min(g, node, gy):
    """Variadic max/min: the cotangent goes to the (first) operand that was selected."""
    z = node.output[0]
    shape = _out_shape(node)
    zero = g.const(0.0, like=z)
    out = []
    taken = None  # elements already claimed by an earlier operand (ties go to the first)
    for i, x in enumerate(node.input):
        chosen = g.Equal(x, z)
        free = chosen if taken is None else g.And(chosen, g.Not(taken))
        if node.needs[i]:
            out.append(g.unbroadcast(g.Where(free, gy[0], zero), x, shape, others=_rest(node.input, i)))
        else:
            out.append(None)
        taken = chosen if taken is None else g.Or(taken, chosen)
    return out


@rule("Sum")
def sum_(g, node, gy):
    shape = _out_shape(node)
    return [g.unbroadcast(gy[0], x, shape, others=_rest(node.input, i)) if need else None
            for i, (x, need) in enumerate(zip(node.input, node.needs))]


@rule("Mean")
def mean(g, node, gy):
    shape = _out_shape(node)
    scaled = g.Div(gy[0], g.const(float(len(node.input)), like=node.output[0]))
    return [g.unbroadcast(scaled, x, shape, others=_rest(node.input, i)) if need else None
            for i, (x, need) in enumerate(zip(node.input, node.needs))]


@rule("Where")
def where(g, node, gy):
    cond, a, b = node.input
    shape = _out_shape(node)
    zero = g.const(0.0, like=node.output[0])
    return [None,
            g.unbroadcast(g.Where(cond, gy[0], zero), a, shape, others=[cond, b]) if node.needs[1] else None,
            g.unbroadcast(g.Where(cond, zero, gy[0]), b, shape, others=[cond, a]) if node.needs[2] else None]
