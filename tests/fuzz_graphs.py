"""Random small ONNX graphs over the ops that have gradient rules, for tests/test_fuzz_gradients.py.

:func:`graphs` is a hypothesis strategy. It draws the list of ops first (1-4 of them, from
:data:`BUILDERS`), then each op's shapes and attributes against the tensor the previous op produced,
so hypothesis shrinks a failure by deleting ops and moving each to an earlier (simpler) entry
before it touches a shape or an attribute. Graphs are chains: every op reads the previous op's output;
second operands are new graph inputs (differentiated), constants, or earlier tensors (fan-out,
e.g. ``Mul(x, x)``). Ops that need a rank or a positive argument get small adapters (Unsqueeze /
Reshape, ``x * x + 0.25``), which are rule ops too.

Every configuration drawn is one onnxruntime runs and ONNX shape inference sizes right; quirks of
either are kept out by construction (each noted where it is avoided). Values are not drawn here:
:meth:`Case.feeds` makes them from a seed, and :func:`kink_margins` measures how far a graph's
intermediate values are from the ops' kinks (ReLU at 0, max ties, clip bounds, ...), so that the
test can redraw values that are too close for finite differences.
"""

from __future__ import annotations

import math
from typing import Callable

import numpy as np
import onnx
from hypothesis import assume
from hypothesis import strategies as st
from onnx import TensorProto, helper, numpy_helper

F32 = TensorProto.FLOAT
BASE_OPSET = 18
#: Largest tensor a graph may hold (keeps the float64 reference evaluator and the FD cheap).
MAX_ELEMENTS = 1200
INT64_MAX, INT64_MIN = 2**63 - 1, -(2**63)


# ---- values -----------------------------------------------------------------------------------------

def sample_values(shape, domain: str, rng: np.random.Generator) -> np.ndarray:
    """float32 values: ``any`` has |x| in [0.2, 2] with a random sign (off ReLU's kink), ``pos`` [0.5, 2],
    ``weight`` small (about unit gain for a conv or matmul)."""
    shape = tuple(shape)
    if domain == "pos":
        values = rng.uniform(0.5, 2.0, size=shape)
    elif domain == "weight":
        values = rng.uniform(-1.0, 1.0, size=shape)
    else:
        values = rng.uniform(0.2, 2.0, size=shape) * rng.choice([-1.0, 1.0], size=shape)
    return np.asarray(values, dtype=np.float32)


class Case:
    """A drawn graph: the float32 model, its differentiated inputs and how to fill them."""

    def __init__(self, model: onnx.ModelProto, inputs: dict[str, tuple[tuple[int, ...], str]], ops: list[str],
                 types: dict[str, tuple[int, tuple[int, ...]]]):
        self.model = model
        self.inputs = inputs  # name -> (shape, domain)
        self.ops = ops  # the drawn op list (builders), for reports and coverage counts
        self.types = types  # every tensor's (element type, static shape)
        # tensors the model leaves without a shape (ONNX cannot infer them: GroupNormalization's output)
        self.hidden = [vi for vi in types if vi not in {v.name for v in model.graph.value_info}
                       and vi not in {o.name for o in model.graph.output} and vi not in inputs
                       and any(vi in n.output for n in model.graph.node)]

    def exposed(self) -> onnx.ModelProto:
        """The model with every node output a graph output too (typed from the draft's shapes)."""
        out = onnx.ModelProto()
        out.CopyFrom(self.model)
        have = {o.name for o in out.graph.output}
        for node in out.graph.node:
            for name in node.output:
                if name and name not in have:
                    elem, shape = self.types[name]
                    out.graph.output.append(helper.make_tensor_value_info(name, elem, shape))
        return out

    def feeds(self, seed: int) -> dict[str, np.ndarray]:
        rng = np.random.default_rng(seed)
        return {name: sample_values(shape, domain, rng) for name, (shape, domain) in self.inputs.items()}

    @property
    def op_types(self) -> set[str]:
        return {n.op_type for n in self.model.graph.node}

    def text(self) -> str:
        """The model in ONNX's text format (``onnx.parser.parse_model`` reads it back)."""
        return onnx.printer.to_text(self.model)

    def __repr__(self) -> str:  # what hypothesis prints for a falsifying example
        domains = {k: d for k, (_, d) in self.inputs.items()}
        return f"Case(ops={self.ops}, domains={domains}) =\n{self.text()}"


# ---- the graph under construction ---------------------------------------------------------------------

class Draft:
    """A graph being drawn: nodes, inputs, constants, and the static shape of every tensor."""

    def __init__(self, draw):
        self.draw = draw
        self.nodes: list[onnx.NodeProto] = []
        self.inputs: dict[str, tuple[tuple[int, ...], str]] = {}
        self.inits: dict[str, np.ndarray] = {}
        self.shapes: dict[str, tuple[int, ...]] = {}
        self.dtypes: dict[str, int] = {}
        self.pool: list[str] = []  # float tensors a later op may read again (fan-out)
        self.min_opset, self.max_opset = BASE_OPSET, 23
        self.hidden: dict[str, bool] = {}  # tensors shape inference cannot size -> left undeclared?
        self._count = 0

    # -- drawing
    def pick(self, options, label: str | None = None):
        return self.draw(st.sampled_from(list(options)), label=label)

    def integer(self, lo: int, hi: int, label: str | None = None) -> int:
        return self.draw(st.integers(lo, hi), label=label)

    def flag(self, label: str | None = None) -> bool:
        return self.draw(st.booleans(), label=label)

    def seed(self) -> int:
        return self.draw(st.integers(0, 2**16), label="constant seed")

    def need_opset(self, lo: int = BASE_OPSET, hi: int = 23) -> None:
        self.min_opset, self.max_opset = max(self.min_opset, lo), min(self.max_opset, hi)
        assume(self.min_opset <= self.max_opset)

    # -- tensors
    def fresh(self, hint: str) -> str:
        self._count += 1
        return f"{hint}{self._count}"

    def shape(self, name: str) -> tuple[int, ...]:
        return self.shapes[name]

    def rank(self, name: str) -> int:
        return len(self.shapes[name])

    def input(self, shape, domain: str = "any") -> str:
        name = self.fresh("in")
        self.inputs[name] = (tuple(int(d) for d in shape), domain)
        self.shapes[name], self.dtypes[name] = tuple(int(d) for d in shape), F32
        self.pool.append(name)
        return name

    def const(self, value, hint: str = "c") -> str:
        arr = np.asarray(value)
        name = self.fresh(hint)
        self.inits[name] = arr
        self.shapes[name] = tuple(arr.shape)
        self.dtypes[name] = helper.np_dtype_to_tensor_dtype(arr.dtype)
        return name

    def ints(self, values) -> str:
        return self.const(np.asarray(list(values), dtype=np.int64), "i")

    def fconst(self, shape, domain: str = "any") -> str:
        # a stream of its own: a constant never repeats an input's values (an exact Max tie is a kink)
        return self.const(sample_values(shape, domain, np.random.default_rng([self.seed(), 1])), "w")

    def operand(self, shape, domain: str = "any", label: str = "operand") -> str:
        """A float tensor of ``shape``: a new graph input, a constant, or an earlier tensor."""
        shape = tuple(shape)
        reusable = [t for t in self.pool if self.shapes.get(t) == shape]
        kind = self.pick(["input", "const"] + (["reuse"] if reusable else []), label=label)
        if kind == "input":
            return self.input(shape, domain)
        if kind == "const":
            return self.fconst(shape, domain)
        t = self.pick(reusable, label=label + " reused")
        return positive(self, t) if domain == "pos" else t

    # -- nodes
    def emit(self, op: str, inputs, n_out: int = 1, **attrs):
        outs = [self.fresh(op.lower()) for _ in range(n_out)]
        attrs = {k: v for k, v in attrs.items() if v is not None}
        self.nodes.append(helper.make_node(op, list(inputs), outs, name=self.fresh(op + "_"), **attrs))
        self._infer()
        if op == "GroupNormalization" and outs[0] not in self.shapes:
            # ONNX shape inference does not see through GroupNormalization (a function op, onnx 1.23):
            # the output is x's shape. Declaring it in the model is drawn: without it the rules
            # downstream meet a tensor of unknown shape, as in a real model.
            self.shapes[outs[0]], self.dtypes[outs[0]] = self.shapes[inputs[0]], F32
            self.hidden[outs[0]] = not self.flag(label="declare GroupNormalization shape")
        for o in outs:
            if self.dtypes.get(o) == F32:
                size = int(np.prod(self.shapes[o]))
                assume(0 < size <= MAX_ELEMENTS)
                self.pool.append(o)
        return outs[0] if n_out == 1 else outs

    def model(self, outputs: list[str] | None = None, *, final: bool = False) -> onnx.ModelProto:
        """The graph so far (``outputs`` as its outputs). Tensors shape inference cannot size are
        declared in ``value_info``, except, in the ``final`` model, those drawn to stay unknown."""
        declared = [helper.make_tensor_value_info(name, F32, self.shapes[name]) for name, hidden
                    in self.hidden.items() if not (final and hidden) and name not in (outputs or [])]
        graph = helper.make_graph(
            self.nodes, "fuzz",
            [helper.make_tensor_value_info(k, F32, s) for k, (s, _) in self.inputs.items()],
            [helper.make_tensor_value_info(o, self.dtypes[o], self.shapes[o]) for o in outputs or []],
            initializer=[numpy_helper.from_array(v, k) for k, v in self.inits.items()], value_info=declared)
        return helper.make_model(graph, opset_imports=[helper.make_opsetid("", self.min_opset)], ir_version=10)

    def _infer(self) -> None:
        inferred = onnx.shape_inference.infer_shapes(self.model(), strict_mode=True)
        for vi in inferred.graph.value_info:
            t = vi.type.tensor_type
            self.dtypes[vi.name] = t.elem_type
            dims = [d.dim_value if d.HasField("dim_value") else None for d in t.shape.dim]
            if not t.HasField("shape") or None in dims:
                raise AssertionError(f"fuzz generator: no static shape for {vi.name}:\n"
                                     + onnx.printer.to_text(self.model()))
            self.shapes[vi.name] = tuple(dims)


# ---- adapters ---------------------------------------------------------------------------------------------

def positive(d: Draft, x: str) -> str:
    """``x * x + 0.25``: a tensor >= 0.25 for ops that need a positive argument."""
    return d.emit("Add", [d.emit("Mul", [x, x]), d.const(np.float32(0.25))])


def at_least_rank(d: Draft, x: str, lo: int) -> str:
    if d.rank(x) >= lo:
        return x
    return d.emit("Unsqueeze", [x, d.ints(range(lo - d.rank(x)))])


def rank_between(d: Draft, x: str, lo: int, hi: int) -> str:
    x = at_least_rank(d, x, lo)
    shape = d.shape(x)
    if len(shape) > hi:  # merge the trailing dims
        x = d.emit("Reshape", [x, d.ints(list(shape[:hi - 1]) + [int(np.prod(shape[hi - 1:]))])])
    return x


def broadcast_shape(d: Draft, shape, label: str = "broadcast") -> tuple[int, ...]:
    """A shape numpy-broadcastable against ``shape``: the same, or with 1s, growing 1s, fewer or more dims."""
    shape = tuple(shape)
    how = d.pick(["same", "broadcast"], label=label)
    if how == "same":
        return shape
    out = []
    for dim in shape:
        if dim == 1:
            out.append(d.pick([1, 2, 3]))
        else:
            out.append(d.pick([dim, 1]))
    lead = d.integer(-len(out), 1 if len(out) < 5 else 0, label="rank change")
    if lead < 0:
        out = out[-lead:]
    elif lead > 0:
        out = [d.pick([1, 2])] + out
    return tuple(out)


def broadcast(*shapes) -> tuple[int, ...]:
    return tuple(np.broadcast_shapes(*[tuple(s) for s in shapes]))


def divisors(n: int) -> list[int]:
    return [k for k in range(1, n + 1) if n % k == 0]


def factorize(n: int) -> list[int]:
    out, p = [], 2
    while n > 1:
        while n % p == 0:
            out.append(p)
            n //= p
        p += 1
    return out


# ---- builders: one per op (plus adapters), each ``fn(draft, x) -> new current tensor`` --------------------

BUILDERS: dict[str, Callable[[Draft, str], str]] = {}


def builder(*names: str):
    def register(fn):
        for name in names:
            BUILDERS[name] = (lambda f, n: (lambda d, x: f(d, x, n)))(fn, name)
        return fn
    return register


@builder("Identity", "Neg", "Exp", "Sigmoid", "Tanh", "Softplus", "Softsign", "Erf", "Relu", "Abs", "HardSwish")
def _plain_unary(d, x, op):
    if op == "Softsign":  # onnx's reference Softsign fails on 0-d tensors (returns a numpy scalar)
        x = at_least_rank(d, x, 1)
    return d.emit(op, [x])


@builder("Log", "Sqrt", "Reciprocal")
def _positive_unary(d, x, op):
    return d.emit(op, [positive(d, x)])


@builder("Gelu")
def _gelu(d, x, op):
    d.need_opset(20)
    return d.emit("Gelu", [x], approximate=d.pick([None, "none", "tanh"], label="approximate"))


@builder("LeakyRelu")
def _leaky_relu(d, x, op):
    return d.emit(op, [x], alpha=d.pick([None, 0.2, -0.5, 1.5], label="alpha"))


@builder("Elu")
def _elu(d, x, op):
    return d.emit(op, [x], alpha=d.pick([None, 0.5, 2.0], label="alpha"))


@builder("Selu")
def _selu(d, x, op):
    return d.emit(op, [x], alpha=d.pick([None, 1.2], label="alpha"), gamma=d.pick([None, 0.8], label="gamma"))


@builder("HardSigmoid")
def _hard_sigmoid(d, x, op):
    return d.emit(op, [x], alpha=d.pick([None, 0.5, -0.3], label="alpha"), beta=d.pick([None, 0.1], label="beta"))


@builder("Clip")
def _clip(d, x, op):
    lo = d.pick([None, 0.0, -0.5], label="min")
    hi = d.pick([None, 6.0, 1.0, 0.5], label="max")  # 0 < hi: the float32 ReLU6 mask path
    inputs = [x, d.const(np.float32(lo)) if lo is not None else "", d.const(np.float32(hi)) if hi is not None else ""]
    while inputs[-1] == "":
        inputs.pop()
    return d.emit("Clip", inputs)


@builder("PRelu")
def _prelu(d, x, op):
    x = at_least_rank(d, x, 1)
    shape = d.shape(x)
    # slope broadcasts unidirectionally to x: trailing dims, each the same or 1
    n = d.integer(1, len(shape), label="slope rank")
    slope = tuple(d.pick([s, 1]) for s in shape[-n:])
    return d.emit("PRelu", [x, d.operand(slope, label="slope")])


@builder("Floor", "Ceil", "Round", "Sign")
def _zero_gradient(d, x, op):
    # piecewise constant: no gradient through it, but the product keeps x's
    return d.emit("Mul", [x, d.emit(op, [x])])


@builder("Cast")
def _cast(d, x, op):
    if d.flag(label="through double"):
        return d.emit("Cast", [d.emit("Cast", [x], to=TensorProto.DOUBLE)], to=F32)
    return d.emit("Cast", [x], to=F32)


@builder("CastLike")
def _cast_like(d, x, op):
    return d.emit("CastLike", [x, d.const(np.float32(1.0))])


@builder("Dropout")
def _dropout(d, x, op):
    inputs = [x]
    form = d.pick(["plain", "ratio", "training_mode"], label="dropout form")
    if form != "plain":
        inputs.append(d.const(np.float32(0.3)))
    if form == "training_mode":
        inputs.append(d.const(np.array(False)))
    out = d.emit("Dropout", inputs, n_out=d.pick([1, 2], label="outputs"))
    return out[0] if isinstance(out, list) else out


def _operands(d, x, count_lo, count_hi, domain="any"):
    """x plus 0-2 operands broadcast against each other; x at a random position."""
    shapes = [d.shape(x)]
    others = []
    for _ in range(d.integer(count_lo, count_hi, label="operands")):
        shape = broadcast_shape(d, broadcast(*shapes))
        shapes.append(shape)
        others.append(d.operand(shape, domain))
    at = d.integer(0, len(others), label="x position")
    return others[:at] + [x] + others[at:]


@builder("Add", "Sub", "Mul")
def _arith(d, x, op):
    return d.emit(op, _operands(d, x, 1, 1))


@builder("Max", "Min", "Sum", "Mean")
def _variadic(d, x, op):
    return d.emit(op, _operands(d, x, 0, 2))


@builder("Div")
def _div(d, x, op):
    shape = broadcast_shape(d, d.shape(x))
    if d.pick(["x / y", "y / x"], label="side") == "x / y":
        return d.emit("Div", [x, d.operand(shape, "pos")])
    return d.emit("Div", [d.operand(shape), positive(d, x)])


@builder("Pow")
def _pow(d, x, op):
    form = d.pick(["square", "int64", "fractional", "operand", "x as exponent"], label="pow form")
    if form == "square":
        return d.emit("Pow", [x, d.const(np.float32(d.pick([2.0, 3.0])))])
    if form == "int64":  # an exponent of another type: the rule casts it
        return d.emit("Pow", [x, d.const(np.int64(d.pick([2, 3])))])
    if form == "fractional":
        return d.emit("Pow", [positive(d, x), d.const(np.float32(d.pick([0.5, -1.5, 1.7])))])
    shape = broadcast_shape(d, d.shape(x))
    if form == "operand":
        return d.emit("Pow", [positive(d, x), d.operand(shape)])
    return d.emit("Pow", [d.operand(shape, "pos"), x])


@builder("Where")
def _where(d, x, op):
    shapes = [d.shape(x)]
    cond_shape = broadcast_shape(d, shapes[0], label="condition shape")
    other_shape = broadcast_shape(d, broadcast(shapes[0], cond_shape))
    rng = np.random.default_rng(d.seed())
    cond = d.const(rng.random(cond_shape) < 0.5)
    other = d.operand(other_shape)
    pair = [x, other] if d.flag(label="x first") else [other, x]
    return d.emit("Where", [cond] + pair)


# -- reductions

REDUCE_OPS = ["ReduceSum", "ReduceMean", "ReduceMax", "ReduceMin", "ReduceProd", "ReduceL1", "ReduceL2",
              "ReduceSumSquare", "ReduceLogSum", "ReduceLogSumExp"]


@builder(*REDUCE_OPS)
def _reduce(d, x, op):
    x = at_least_rank(d, x, 1)
    if op == "ReduceLogSum":
        x = positive(d, x)
    r = d.rank(x)
    form = d.pick(["axes", "default", "empty axes"], label="axes form")
    inputs = [x]
    noop = None
    if form == "axes":
        axes = d.draw(st.lists(st.integers(0, r - 1), min_size=1, max_size=r, unique=True), label="axes")
        axes = [a - r if d.flag(label="negative") else a for a in axes]
        inputs.append(d.ints(axes))
    else:
        if form == "empty axes":
            inputs.append(d.ints([]))
        noop = d.pick([None, 0, 1], label="noop_with_empty_axes")
    return d.emit(op, inputs, keepdims=d.pick([None, 0, 1], label="keepdims"), noop_with_empty_axes=noop)


@builder("Softmax", "LogSoftmax")
def _softmax(d, x, op):
    x = at_least_rank(d, x, 1)
    r = d.rank(x)
    return d.emit(op, [x], axis=d.pick([None] + list(range(-r, r)), label="axis"))


# -- linear

@builder("MatMul")
def _matmul(d, x, op):
    x = at_least_rank(d, x, 1)
    shape = d.shape(x)
    side = d.pick(["x @ B", "A @ x"], label="side")
    form = d.pick(["matrix", "vector", "batched"], label="operand form")
    n = d.integer(1, 4, label="free dim")
    if side == "x @ B":
        k = shape[-1]
        other = {"vector": (k,), "matrix": (k, n)}.get(form)
    else:
        k = shape[0] if len(shape) == 1 else shape[-2]
        other = {"vector": (k,), "matrix": (n, k)}.get(form)
    if other is None:  # batch dims broadcast against x's
        batch = broadcast_shape(d, shape[:-2], label="batch dims") if len(shape) > 2 else (d.pick([1, 2]),)
        other = batch + ((k, n) if side == "x @ B" else (n, k))
    b = d.operand(other)
    return d.emit("MatMul", [x, b] if side == "x @ B" else [b, x])


@builder("Gemm")
def _gemm(d, x, op):
    x = at_least_rank(d, x, 1)
    if d.rank(x) == 1:
        x = d.emit("Unsqueeze", [x, d.ints([0])])
    elif d.rank(x) > 2:
        x = d.emit("Flatten", [x], axis=d.integer(1, d.rank(x) - 1, label="flatten axis"))
    p, q = d.shape(x)
    ta, tb = d.pick([0, 1], label="transA"), d.pick([0, 1], label="transB")
    free = d.integer(1, 4, label="free dim")
    if d.pick(["A", "B"], label="x is") == "A":
        m, k = (q, p) if ta else (p, q)
        n = free
        a, b = x, d.operand((n, k) if tb else (k, n), label="B")
    else:
        k, n = (q, p) if tb else (p, q)
        m = free
        a, b = d.operand((k, m) if ta else (m, k), label="A"), x
    inputs = [a, b]
    c_shape = d.pick([None, (), (1,), (n,), (1, n), (m, 1), (m, n)], label="C shape")
    if c_shape is not None:
        inputs.append(d.operand(c_shape, label="C"))
    return d.emit("Gemm", inputs, transA=ta or None, transB=tb or None,
                  alpha=d.pick([None, 0.5, -2.0], label="alpha"), beta=d.pick([None, 0.5, -2.0], label="beta"))


@builder("Einsum")
def _einsum(d, x, op):
    x = at_least_rank(d, x, 1)
    shape = d.shape(x)
    r = len(shape)
    ell = d.integer(0, r - 1, label="ellipsis dims") if r >= 2 else 0
    letters = "abcde"[:r - ell]
    sizes = dict(zip(letters, shape[ell:]))
    term0 = ("..." if ell else "") + letters
    terms, names = [term0], [x]
    if d.flag(label="second operand"):
        shared = d.draw(st.permutations(letters), label="order")[:d.integer(0, len(letters), label="shared")]
        own = "z" if d.flag(label="own letter") else ""
        sizes["z"] = d.integer(1, 3, label="own size")
        term1 = "".join(shared) + own
        other = tuple(sizes[c] for c in term1)
        if ell and d.flag(label="ellipsis in second"):
            term1 = "..." + term1
            # onnx shape inference wants as many ellipsis dims in every operand: 1s broadcast only
            other = tuple(d.pick([s, 1], label="ellipsis dim") for s in shape[:ell]) + other
        terms.append(term1)
        names.append(d.operand(other))
    used = sorted(set("".join(terms).replace(".", "")))
    if d.flag(label="implicit"):
        equation = ",".join(terms)
    else:
        out = d.draw(st.permutations(used), label="output order")[:d.integer(0, len(used), label="kept")]
        equation = ",".join(terms) + "->" + ("..." if ell else "") + "".join(out)
    return d.emit("Einsum", names, equation=equation)


def _window_axis(d, n: int, *, pool: bool, padding: str):
    """kernel, stride, dilation, pad_begin, pad_end of one spatial axis of length n (fits n)."""
    same = padding.startswith("SAME")
    kk, s = d.integer(1, 3, label="kernel"), d.pick([1, 1, 2, 3], label="stride")
    # onnxruntime rejects SAME Conv with dilations > 1 and resolves SAME pools from the undilated kernel
    dil = 1 if same else d.integer(1, 2, label="dilation")
    if same and pool:
        kk = max(kk, s)  # onnxruntime's SAME pools do not clamp a negative total pad
    hi = kk - 1 if pool else 2  # onnxruntime's pools need pads < kernel
    pb, pe = (d.integer(0, hi, label="pad"), d.integer(0, hi, label="pad")) if padding == "pads" else (0, 0)
    if (kk - 1) * dil + 1 > n + pb + pe:  # the window must fit the padded axis
        dil, kk = 1, min(kk, n + pb + pe)
    return kk, s, dil, pb, pe


def _geometry(d, spatial, *, pool: bool):
    padding = d.pick(["none", "pads", "VALID", "SAME_UPPER", "SAME_LOWER"], label="padding")
    axes = [_window_axis(d, n, pool=pool, padding=padding) for n in spatial]
    kernel, strides, dilations, pb, pe = (list(v) for v in zip(*axes))
    attrs = dict(strides=strides if any(s > 1 for s in strides) or d.flag(label="explicit strides") else None,
                 dilations=dilations if any(v > 1 for v in dilations) else None,
                 pads=pb + pe if padding == "pads" else None,
                 auto_pad=padding if padding not in ("none", "pads") else None)
    return kernel, strides, dilations, pb, pe, attrs


@builder("Conv")
def _conv(d, x, op):
    x = rank_between(d, x, 3, 5)
    n, c, *spatial = d.shape(x)
    group = d.pick(divisors(c), label="group")
    m = group * d.pick([1, 2] + ([16 // group] if 16 % group == 0 and 16 // group > 2 else []), label="out/group")
    kernel, strides, dilations, pb, pe, attrs = _geometry(d, spatial, pool=False)
    w = d.const((sample_values((m, c // group, *kernel), "weight", np.random.default_rng(d.seed()))
                 / math.sqrt(c // group * np.prod(kernel))).astype(np.float32), "w")
    inputs = [x, w]
    bias = d.pick([None, "const", "input"], label="bias")
    if bias:
        inputs.append(d.input((m,)) if bias == "input" else d.fconst((m,)))
    return d.emit("Conv", inputs, group=group if group > 1 else None,
                  kernel_shape=kernel if d.flag(label="kernel_shape attr") else None, **attrs)


@builder("ConvTranspose")
def _conv_transpose(d, x, op):
    x = rank_between(d, x, 3, 5)
    n, c, *spatial = d.shape(x)
    group = d.pick(divisors(c), label="group")
    per_group = d.pick([1, 2], label="out/group")
    padding = d.pick(["none", "pads", "VALID", "SAME_UPPER", "SAME_LOWER", "output_shape"], label="padding")
    kernel, strides, dilations = [], [], []
    for _ in spatial:
        kernel.append(d.integer(1, 3, label="kernel"))
        strides.append(d.integer(1, 3, label="stride"))
        dilations.append(d.integer(1, 2, label="dilation"))
    k = len(spatial)
    # onnxruntime needs output_padding < stride; with SAME and no output_shape, onnx shape inference
    # adds output_padding where onnxruntime does not (onnx 1.23): none there.
    out_pad = [0 if padding.startswith("SAME") else d.integer(0, s - 1, label="output_padding") for s in strides]
    full = [(nn - 1) * s + (kk - 1) * dl + 1 + a for nn, s, kk, dl, a in zip(spatial, strides, kernel, dilations, out_pad)]
    attrs = dict(strides=strides if any(s > 1 for s in strides) else None,
                 dilations=dilations if any(v > 1 for v in dilations) else None,
                 output_padding=out_pad if any(out_pad) or d.flag(label="explicit output_padding") else None)
    if padding == "pads":
        pads = [d.integer(0, 2, label="pad") for _ in range(2 * k)]
        if any(f - b - e < 1 for f, b, e in zip(full, pads[:k], pads[k:])):
            pads = [0] * (2 * k)
        attrs["pads"] = pads
    elif padding == "output_shape":
        # crop up to 3, or extend by less than stride - output_padding (more: onnxruntime refuses);
        # entries below the input size make onnx shape inference give a wrong rank (onnx 1.23)
        crops = [d.integer(-(s - 1 - a), 3, label="crop") for s, a in zip(strides, out_pad)]
        attrs["output_shape"] = [max(f - cr, nn) for f, cr, nn in zip(full, crops, spatial)]
        attrs["auto_pad"] = d.pick([None, "NOTSET", "SAME_UPPER", "SAME_LOWER"], label="auto_pad")
    elif padding != "none":
        attrs["auto_pad"] = padding
    w = d.const((sample_values((c, per_group, *kernel), "weight", np.random.default_rng(d.seed()))
                 / math.sqrt(c * np.prod(kernel) / max(strides))).astype(np.float32), "w")
    inputs = [x, w]
    bias = d.pick([None, "const", "input"], label="bias")
    if bias:
        m = per_group * group
        inputs.append(d.input((m,)) if bias == "input" else d.fconst((m,)))
    return d.emit("ConvTranspose", inputs, group=group if group > 1 else None,
                  kernel_shape=kernel if d.flag(label="kernel_shape attr") else None, **attrs)


def window_dropped(n, extent, stride, pad_begin, pad_end) -> bool:
    """ceil_mode's last window would start in the end padding: the spec and onnxruntime drop it, ONNX
    shape inference does not (onnx 1.23), so such configurations are not drawn."""
    span = n + pad_begin + pad_end - extent
    return (-(-span // stride)) * stride >= n + pad_begin


@builder("MaxPool", "AveragePool")
def _pool(d, x, op):
    x = rank_between(d, x, 3, 5)
    n, c, *spatial = d.shape(x)
    if op == "MaxPool" and len(spatial) == 2 and all(s % 2 == 0 for s in spatial) \
            and d.flag(label="2x2/2 tiling"):  # the float32 fast path without Indices
        return d.emit("MaxPool", [x], kernel_shape=[2, 2], strides=[2, 2])
    kernel, strides, dilations, pb, pe, attrs = _geometry(d, spatial, pool=True)
    ceil = d.pick([None, 0, 1], label="ceil_mode")
    if ceil and not (attrs["auto_pad"] or "").startswith("SAME") and any(
            window_dropped(nn, (kk - 1) * dl + 1, s, b, e)
            for nn, kk, dl, s, b, e in zip(spatial, kernel, dilations, strides, pb, pe)):
        ceil = 0
    attrs.update(kernel_shape=kernel, ceil_mode=ceil)
    if op == "AveragePool":
        if attrs["dilations"]:
            d.need_opset(19)  # AveragePool's dilations came with opset 19
        return d.emit("AveragePool", [x], count_include_pad=d.pick([None, 0, 1], label="count_include_pad"), **attrs)
    attrs["storage_order"] = d.pick([None, 0, 1], label="storage_order")
    indices = d.pick(["none", "declared", "used"], label="indices")
    if indices == "none":
        return d.emit("MaxPool", [x], **attrs)
    y, idx = d.emit("MaxPool", [x], n_out=2, **attrs)
    if indices == "declared":
        return y
    return d.emit("Mul", [y, d.emit("Cast", [idx], to=F32)])  # Indices are piecewise constant


@builder("GlobalAveragePool", "GlobalMaxPool")
def _global_pool(d, x, op):
    return d.emit(op, [rank_between(d, x, 3, 5)])


# -- normalization

@builder("BatchNormalization")
def _batch_norm(d, x, op):
    x = rank_between(d, x, 2, 5)
    c = d.shape(x)[1]
    params = [d.input((c,), dom) if d.flag(label=f"{what} is an input") else d.fconst((c,), dom)
              for what, dom in [("scale", "any"), ("bias", "any"), ("mean", "any"), ("var", "pos")]]
    return d.emit(op, [x] + params, epsilon=d.pick([None, 1e-3], label="epsilon"))


@builder("InstanceNormalization")
def _instance_norm(d, x, op):
    x = rank_between(d, x, 3, 5)
    c = d.shape(x)[1]
    return d.emit(op, [x, d.operand((c,), label="scale"), d.operand((c,), label="bias")],
                  epsilon=d.pick([None, 1e-3], label="epsilon"))


@builder("LayerNormalization")
def _layer_norm(d, x, op):
    x = at_least_rank(d, x, 1)
    shape = d.shape(x)
    r = len(shape)
    axis = d.pick([None] + list(range(-r, r)), label="axis")
    normalized = shape[(-1 if axis is None else axis) % r:]
    # scale / bias broadcast to the normalized shape
    cut = d.integer(0, len(normalized) - 1, label="scale rank cut")
    scale_shape = tuple(d.pick([s, 1]) for s in normalized[cut:])
    inputs = [x, d.operand(scale_shape, label="scale")]
    if d.flag(label="bias"):
        inputs.append(d.operand(scale_shape, label="bias"))
    stats = d.pick(["Y", "Y + Mean", "Y * InvStdDev", "all"], label="outputs used")
    outs = d.emit(op, inputs, n_out=1 if stats == "Y" else 3, axis=axis, epsilon=d.pick([None, 1e-3], label="epsilon"))
    if stats == "Y":
        return outs
    y, mean, inv = outs
    if stats in ("Y + Mean", "all"):
        y = d.emit("Add", [y, mean])
    if stats in ("Y * InvStdDev", "all"):
        y = d.emit("Mul", [y, inv])
    return y


@builder("GroupNormalization")
def _group_norm(d, x, op):
    # opset 21: one scale/bias per channel (GroupNormalization-18, one per group, is deprecated and
    # refused at load, see tests/test_rules_normalization.py)
    d.need_opset(21)
    x = rank_between(d, x, 3, 5)
    c = d.shape(x)[1]
    return d.emit(op, [x, d.operand((c,), label="scale"), d.operand((c,), label="bias")],
                  num_groups=d.pick(divisors(c), label="num_groups"), epsilon=d.pick([None, 1e-3], label="epsilon"))


@builder("LRN")
def _lrn(d, x, op):
    x = rank_between(d, x, 4, 4)  # onnxruntime's LRN is 4-D only, and odd sizes only
    return d.emit(op, [x], size=d.pick([1, 3, 5], label="size"), alpha=d.pick([None, 0.5], label="alpha"),
                  beta=d.pick([None, 0.5, 1.0], label="beta"), bias=d.pick([None, 2.0, 0.5], label="bias"))


# -- movement

@builder("Reshape")
def _reshape(d, x, op):
    shape = d.shape(x)
    size = int(np.prod(shape))
    r = d.integer(0 if size == 1 else 1, 4, label="new rank")
    target = [1] * r
    if r:
        for p in factorize(size):
            target[d.integer(0, r - 1, label="factor slot")] *= p
    if r and d.flag(label="-1 entry"):
        target[d.integer(0, r - 1)] = -1
    for i in range(min(r, len(shape))):
        if target[i] == shape[i] and d.flag(label="0 entry"):
            target[i] = 0
    return d.emit("Reshape", [x, d.ints(target)])


@builder("Flatten")
def _flatten(d, x, op):
    x = at_least_rank(d, x, 1)  # the default axis 1 is out of range for a 0-d tensor
    r = d.rank(x)
    return d.emit(op, [x], axis=d.pick([None] + list(range(-r, r + 1)), label="axis"))


@builder("Unsqueeze")
def _unsqueeze(d, x, op):
    r = d.rank(x)
    count = d.integer(1, 2 if r < 4 else 1, label="new axes")
    out_rank = r + count
    axes = d.draw(st.lists(st.integers(0, out_rank - 1), min_size=count, max_size=count, unique=True), label="axes")
    return d.emit(op, [x, d.ints([a - out_rank if d.flag(label="negative") else a for a in axes])])


@builder("Squeeze")
def _squeeze(d, x, op):
    ones = [i for i, s in enumerate(d.shape(x)) if s == 1]
    if not ones:
        x = d.emit("Unsqueeze", [x, d.ints([d.integer(0, d.rank(x))])])
        ones = [i for i, s in enumerate(d.shape(x)) if s == 1]
    r = d.rank(x)
    if d.flag(label="axes omitted"):
        return d.emit(op, [x])
    axes = d.draw(st.lists(st.sampled_from(ones), min_size=1, max_size=len(ones), unique=True), label="axes")
    return d.emit(op, [x, d.ints([a - r if d.flag(label="negative") else a for a in axes])])


@builder("Transpose")
def _transpose(d, x, op):
    r = d.rank(x)
    if r == 0 or d.flag(label="default perm"):
        return d.emit(op, [x])
    return d.emit(op, [x], perm=list(d.draw(st.permutations(range(r)), label="perm")))


@builder("Concat")
def _concat(d, x, op):
    x = at_least_rank(d, x, 1)
    shape = d.shape(x)
    r = len(shape)
    axis = d.integer(-r, r - 1, label="axis")
    parts = [x]
    for _ in range(d.integer(1, 2, label="others")):
        other = list(shape)
        other[axis] = d.pick([shape[axis], 1, 2], label="length")
        parts.insert(d.integer(0, len(parts), label="position"), d.operand(other))
    return d.emit(op, parts, axis=axis)


@builder("Split")
def _split(d, x, op):
    x = at_least_rank(d, x, 1)
    shape = d.shape(x)
    r = len(shape)
    axis = d.integer(-r, r - 1, label="axis")
    length = shape[axis]
    if length < 2:
        x = d.emit("Concat", [x, d.operand(shape)], axis=axis)
        shape, length = d.shape(x), 2 * length
    parts = d.integer(2, min(length, 3), label="parts")
    if d.flag(label="num_outputs"):
        # num_outputs: pieces of ceil(length / parts), the last one smaller; onnx shape inference
        # and onnxruntime agree when every piece is non-empty
        piece = -(-length // parts)
        assume((parts - 1) * piece < length)
        outs = d.emit("Split", [x], n_out=parts, axis=axis, num_outputs=parts)
    else:
        cuts = sorted(d.draw(st.lists(st.integers(1, length - 1), min_size=parts - 1, max_size=parts - 1,
                                      unique=True), label="cuts"))
        sizes = [b - a for a, b in zip([0] + cuts, cuts + [length])]
        outs = d.emit("Split", [x, d.ints(sizes)], n_out=parts, axis=axis)
    return outs[d.integer(0, parts - 1, label="output kept")]  # the others stay in the pool


@builder("Expand")
def _expand(d, x, op):
    shape = d.shape(x)
    target = [d.pick([1, 2, 3]) if s == 1 else d.pick([s, 1]) for s in shape]
    if len(shape) < 4 and d.flag(label="new leading dim"):
        target = [d.pick([1, 2])] + target
    return d.emit(op, [x, d.ints(target)])


def slice_length(dim, start, end, step):
    """Output length of ONNX Slice on one axis (negative indices wrap, then clamp by step sign)."""
    start, end = start + dim if start < 0 else start, end + dim if end < 0 else end
    if step > 0:
        start, end = min(max(start, 0), dim), min(max(end, 0), dim)
    else:
        start, end = min(max(start, 0), dim - 1), min(max(end, -1), dim - 1)
    return max(0, -(-(end - start) // step))


SLICE_BOUNDS = [0, 1, 2, 3, -1, -2, -4, 9, -9, INT64_MAX, INT64_MIN]


@builder("Slice")
def _slice(d, x, op):
    x = at_least_rank(d, x, 1)
    shape = d.shape(x)
    r = len(shape)
    axes = d.draw(st.lists(st.integers(0, r - 1), min_size=1, max_size=r, unique=True), label="axes")
    starts, ends, steps = [], [], []
    for a in axes:
        step = d.pick([1, 2, -1, -2, 3], label="step")
        start, end = d.pick(SLICE_BOUNDS, label="start"), d.pick(SLICE_BOUNDS, label="end")
        # a start below the axis with a negative step: the spec clamps it to 0 (one element),
        # onnxruntime takes none
        if step < 0 and start < 0 and start + shape[a] < 0:
            start = -1
        if slice_length(shape[a], start, end, step) == 0:
            start, end = (0, INT64_MAX) if step > 0 else (-1, INT64_MIN)
        starts.append(start), ends.append(end), steps.append(step)
    inputs = [x, d.ints(starts), d.ints(ends)]
    form = d.pick(["axes and steps", "axes", "neither"] if axes == list(range(len(axes))) and set(steps) == {1}
                  else ["axes and steps"], label="optional inputs")
    if form != "neither":
        inputs.append(d.ints([a - r if d.flag(label="negative") else a for a in axes]))
    if form == "axes and steps":
        inputs.append(d.ints(steps))
    return d.emit(op, inputs)


@builder("Gather")
def _gather(d, x, op):
    x = at_least_rank(d, x, 1)
    shape = d.shape(x)
    r = len(shape)
    axis = d.integer(-r, r - 1, label="axis")
    dim = shape[axis]
    index_shape = d.pick([(), (2,), (3,), (2, 2)], label="indices shape")
    rng = np.random.default_rng(d.seed())
    indices = rng.integers(-dim, dim, size=index_shape)  # negatives and repeats
    return d.emit(op, [x, d.const(np.asarray(indices, np.int64))], axis=axis if axis or d.flag() else None)


@builder("GatherElements")
def _gather_elements(d, x, op):
    x = at_least_rank(d, x, 1)
    shape = d.shape(x)
    axis = d.integer(0, len(shape) - 1, label="axis")  # onnx's reference mishandles negative axes
    index_shape = list(shape)
    index_shape[axis] = d.integer(1, 4, label="length")  # the reference wants other dims equal to x's
    indices = np.random.default_rng(d.seed()).integers(-shape[axis], shape[axis], size=index_shape)
    return d.emit(op, [x, d.const(np.asarray(indices, np.int64))], axis=axis)


@builder("Tile")
def _tile(d, x, op):
    x = at_least_rank(d, x, 1)
    return d.emit(op, [x, d.ints([d.pick([1, 2]) for _ in d.shape(x)])])


@builder("DepthToSpace")
def _depth_to_space(d, x, op):
    x = rank_between(d, x, 4, 4)
    c = d.shape(x)[1]
    block = d.pick([b for b in (1, 2, 3) if c % (b * b) == 0], label="blocksize")
    return d.emit(op, [x], blocksize=block, mode=d.pick([None, "DCR", "CRD"], label="mode"))


@builder("SpaceToDepth")
def _space_to_depth(d, x, op):
    x = rank_between(d, x, 4, 4)
    h, w = d.shape(x)[2:]
    block = d.pick([b for b in (1, 2, 3) if h % b == 0 and w % b == 0], label="blocksize")
    return d.emit(op, [x], blocksize=block)


@builder("Pad")
def _pad(d, x, op):
    x = at_least_rank(d, x, 1)
    shape = d.shape(x)
    r = len(shape)
    mode = d.pick(["constant", "reflect", "edge", "wrap"], label="mode")
    if mode == "wrap":
        d.need_opset(19)
    if d.flag(label="axes input"):
        axes = d.draw(st.lists(st.integers(-r, r - 1), min_size=1, max_size=r, unique_by=lambda a: a % r), label="axes")
    else:
        axes = None
    begins, ends = [], []
    for a in axes if axes is not None else range(r):
        dim = shape[a % r]
        b, e = d.integer(-2, 3, label="pad begin"), d.integer(-2, 3, label="pad end")  # negative: crop
        b, e = max(b, -(dim - 1)), max(e, -(dim - 1))
        if dim - max(-b, 0) - max(-e, 0) < 1:
            b, e = max(b, 0), max(e, 0)
        kept = dim - max(-b, 0) - max(-e, 0)
        if mode == "reflect":  # onnxruntime crops first, then pads; reflect needs pads < the kept length
            b, e = min(b, kept - 1), min(e, kept - 1)
        begins.append(b), ends.append(e)
    inputs = [x, d.ints(begins + ends)]
    value = d.pick([None, 0.0, 1.5], label="constant_value") if mode == "constant" else None
    inputs.append(d.const(np.float32(value)) if value is not None else "")
    if axes is not None:
        inputs.append(d.ints(axes))
    while inputs[-1] == "":
        inputs.pop()
    return d.emit(op, inputs, mode=mode if mode != "constant" or d.flag(label="explicit mode") else None)


RESIZE_CTMS = ["half_pixel", "asymmetric", "align_corners", "pytorch_half_pixel", "half_pixel_symmetric",
               "tf_crop_and_resize"]
DYADIC_SCALES = [2.0, 0.5, 1.5, 0.75, 1.25, 2.5, 3.0]
DYADIC_ROI = [0.0, 0.125, 0.25, 0.375, 0.5, 0.625, 0.75, 0.875, 1.0]


@builder("Resize")
def _resize(d, x, op):
    """Resize of the last two axes of a 4-D tensor (onnxruntime's linear/cubic kernels want outer scales
    of 1), only where onnx's reference (the float64 oracle) agrees with onnxruntime: dyadic scales and
    roi, integral lengths under align_corners / tf_crop_and_resize / half_pixel_symmetric, lengths that
    change, pytorch_half_pixel above length 1 (see tests/test_rules_movement.py)."""
    x = rank_between(d, x, 4, 4)
    h, w = d.shape(x)[2:]
    mode = d.pick(["nearest", "linear", "cubic"], label="mode")
    ctm = d.pick(RESIZE_CTMS, label="coordinate_transformation_mode")
    if ctm == "half_pixel_symmetric":
        d.need_opset(19)
    attrs = {"mode": mode, "coordinate_transformation_mode": ctm}
    if mode == "nearest":
        attrs["nearest_mode"] = d.pick([None, "round_prefer_floor", "round_prefer_ceil", "floor", "ceil"], label="nearest_mode")
    if mode == "cubic":
        attrs["cubic_coeff_a"] = d.pick([None, -0.5], label="cubic_coeff_a")
        attrs["exclude_outside"] = d.pick([None, 1], label="exclude_outside")
    if mode != "nearest" and ctm != "tf_crop_and_resize":
        attrs["antialias"] = d.pick([None, 1], label="antialias")
    use_sizes = d.flag(label="sizes")
    integral = use_sizes or ctm in ("align_corners", "tf_crop_and_resize", "half_pixel_symmetric")
    factors = []
    for n in (h, w):
        ok = [f for f in DYADIC_SCALES if int(f * n) >= 1 and int(f * n) != n and (not integral or float(f * n).is_integer())]
        factors.append(d.pick(ok or [2.0], label="scale"))
    lengths = [int(f * n) for f, n in zip(factors, (h, w))]
    assume(ctm != "pytorch_half_pixel" or min(lengths) > 1)
    inputs = [x]
    if ctm == "tf_crop_and_resize":
        starts = [d.pick(DYADIC_ROI[:5], label="roi start") for _ in range(2)]
        ends = [d.pick(DYADIC_ROI[4:], label="roi end") for _ in range(2)]
        inputs.append(d.const(np.array([0, 0, *starts, 1, 1, *ends], np.float32)))
        attrs["extrapolation_value"] = d.pick([None, -1.5], label="extrapolation_value")
    else:
        inputs.append("")
    if use_sizes:
        inputs += ["", d.ints([*d.shape(x)[:2], *lengths])]
    else:
        inputs.append(d.const(np.array([1, 1, *factors], np.float32)))
    return d.emit("Resize", inputs, **attrs)


@builder("FlatSoftmaxSum")
def _flat(d, x, op):
    """A graph whose output does not depend on x (sum of a softmax): gradient exactly zero."""
    x = at_least_rank(d, x, 1)
    y = d.emit("Softmax", [x], axis=-1)
    return d.emit("ReduceSum", [y, d.ints([-1])], keepdims=1)


#: Op types each builder covers (the focus list of the per-op tests): every builder but the adapters.
FOCUS_OPS = ["Identity"] + sorted(set(BUILDERS) - {"Identity"})  # Identity first: what ops shrink to


# ---- the strategy ---------------------------------------------------------------------------------------

def initial_shape(draw) -> tuple[int, ...]:
    rank = draw(st.integers(1, 5), label="input rank")
    shape = [draw(st.integers(1, {1: 8, 2: 6, 3: 5, 4: 4}.get(rank, 3)), label="dim") for _ in range(rank)]
    if rank >= 3 and draw(st.booleans(), label="16 channels"):  # Conv's flipped stride-1 backward path
        shape[1] = 16
        shape = shape[:2] + [min(s, 3) for s in shape[2:]]
    return tuple(shape)


@st.composite
def graphs(draw, focus: str | None = None, max_ops: int = 4) -> Case:
    """A random graph of 1-``max_ops`` ops (``focus`` always among them), its input drawn first."""
    ops = draw(st.lists(st.sampled_from(FOCUS_OPS), min_size=0 if focus else 1,
                        max_size=max_ops - 1 if focus else max_ops), label="ops")
    if focus is not None:
        ops.insert(draw(st.integers(0, len(ops)), label="focus position"), focus)
    d = Draft(draw)
    x = d.input(initial_shape(draw))
    for op in ops:
        x = BUILDERS[op](d, x)
    model = d.model([x], final=True)
    types = {name: (d.dtypes[name], d.shapes[name]) for name in d.shapes if name in d.dtypes}
    return Case(onnx.shape_inference.infer_shapes(model), d.inputs, ops, types)


# ---- kinks ---------------------------------------------------------------------------------------------------

def _gap(values: np.ndarray, kinks) -> float:
    """Smallest non-zero distance of ``values`` to any of the ``kinks`` (sitting exactly on one is
    allowed: exact hits come from locally constant tensors, e.g. ReLU zeros, padding, clipped values)."""
    best = math.inf
    values = np.asarray(values, np.float64).reshape(-1)
    for k in kinks:
        dist = np.abs(values - np.asarray(k, np.float64).reshape(-1) if np.ndim(k) else values - k)
        dist = dist[dist > 0]
        if dist.size:
            best = min(best, float(dist.min()))
    return best


def _tie_gap(values: np.ndarray, best: np.ndarray) -> float:
    """Smallest non-zero distance between the selected values (``best``, broadcast) and the others."""
    dist = np.abs(np.asarray(values, np.float64) - np.asarray(best, np.float64))
    dist = dist[dist > 0]
    return float(dist.min()) if dist.size else math.inf


def _attr(node, name, default=None):
    for a in node.attribute:
        if a.name == name:
            v = helper.get_attribute_value(a)
            return v.decode() if isinstance(v, bytes) else v
    return default


def _pool_windows(x: np.ndarray, node) -> np.ndarray:
    """MaxPool windows of x: (N, C, *out, taps), -inf where a tap falls in the padding."""
    k = x.ndim - 2
    kernel = _attr(node, "kernel_shape")
    strides = _attr(node, "strides") or [1] * k
    dilations = _attr(node, "dilations") or [1] * k
    pads = _attr(node, "pads") or [0] * (2 * k)
    auto_pad = _attr(node, "auto_pad", "NOTSET")
    ceil = _attr(node, "ceil_mode", 0)
    axes = []
    for i, (n, kk, s, dl) in enumerate(zip(x.shape[2:], kernel, strides, dilations)):
        ext = (kk - 1) * dl + 1
        if auto_pad in ("SAME_UPPER", "SAME_LOWER"):
            out = -(-n // s)
            total = max((out - 1) * s + ext - n, 0)
            pb = total // 2 if auto_pad == "SAME_UPPER" else total - total // 2
        else:
            pb, pe = (0, 0) if auto_pad == "VALID" else (pads[i], pads[k + i])
            span = n + pb + pe - ext
            out = (-(-span // s) if ceil else span // s) + 1
            if ceil and (out - 1) * s >= n + pb:
                out -= 1
        axes.append(np.arange(out)[:, None] * s - pb + np.arange(kk)[None, :] * dl)  # (out, kk)
    padded = np.pad(np.asarray(x, np.float64), [(0, 0), (0, 0)] + [(1, 1)] * k, constant_values=-np.inf)
    index = [np.clip(p + 1, 0, n + 1) for p, n in zip(axes, x.shape[2:])]
    index = [np.where((p >= 0) & (p < n), ix, 0) for p, ix, n in zip(axes, index, x.shape[2:])]
    grids = np.meshgrid(*[ix.reshape(-1) for ix in index], indexing="ij")  # each (out0*kk0, out1*kk1, ...)
    values = padded[(slice(None), slice(None)) + tuple(grids)]
    shape = [x.shape[0], x.shape[1]]
    for p in axes:
        shape += list(p.shape)
    values = values.reshape(shape)
    order = [0, 1] + [2 + 2 * i for i in range(k)] + [3 + 2 * i for i in range(k)]
    values = values.transpose(order)
    return values.reshape(values.shape[:2 + k] + (-1,))


def _reduced_axes(node, x: np.ndarray, values: dict) -> tuple[int, ...] | None:
    """Axes a Reduce* node reduces (None: all, (): none, with noop_with_empty_axes)."""
    axes = values.get(node.input[1]) if len(node.input) > 1 and node.input[1] else None
    if axes is not None and axes.size:
        return tuple(int(a) % x.ndim for a in axes.reshape(-1))
    return () if _attr(node, "noop_with_empty_axes", 0) else None


def largest_partial_product(model: onnx.ModelProto, values: dict[str, np.ndarray]) -> float:
    """The largest product of a ReduceProd group's non-zero |elements|: ReduceProd's gradient (the
    product of the others) reaches it, float32 overflows beyond 3e38 where float64 does not."""
    best = 0.0
    for node in model.graph.node:
        if node.op_type == "ReduceProd":
            x = np.abs(values[node.input[0]])
            axes = _reduced_axes(node, x, values)
            if axes != ():
                best = max(best, float(np.where(x == 0, 1.0, x).prod(axis=axes).max(initial=0)))
    return best


def kink_margins(model: onnx.ModelProto, values: dict[str, np.ndarray]) -> list[tuple[str, float, float]]:
    """(node name, distance to the nearest kink, scale of the values there) for each node with kinks,
    from the float64 values of every tensor (inputs, constants, intermediates)."""
    out = []

    def add(node, gap, *arrays):
        scale = max([1.0] + [float(np.abs(a[np.isfinite(a)]).max(initial=0)) for a in arrays])
        out.append((node.name, gap, scale))

    for node in model.graph.node:
        op = node.op_type
        ins = [values.get(i) if i else None for i in node.input]
        outs = [values.get(o) for o in node.output]
        x = ins[0] if ins else None
        if op in ("Relu", "LeakyRelu", "PRelu", "Elu", "Selu", "Abs", "Sign", "ReduceL1"):
            add(node, _gap(x, [0.0]), x)
        elif op == "Clip":
            bounds = [v for v in ins[1:] if v is not None]
            add(node, _gap(x, bounds), x)
        elif op == "HardSigmoid":
            alpha, beta = _attr(node, "alpha", 0.2), _attr(node, "beta", 0.5)
            add(node, _gap(x, [-beta / alpha, (1 - beta) / alpha]), x)
        elif op == "HardSwish":
            add(node, _gap(x, [-3.0, 3.0]), x)
        elif op in ("Floor", "Ceil"):
            add(node, _gap(x, [np.round(x)]), x)
        elif op == "Round":
            add(node, _gap(x, [np.floor(x) + 0.5]), x)
        elif op in ("Max", "Min"):
            y = outs[0]
            add(node, min(_tie_gap(np.broadcast_to(v, y.shape), y) for v in ins), y)
        elif op in ("ReduceMax", "ReduceMin"):
            axes = _reduced_axes(node, x, values)
            if axes == ():
                continue
            best = x.max(axis=axes, keepdims=True) if op == "ReduceMax" else x.min(axis=axes, keepdims=True)
            add(node, _tie_gap(x, best), x)
        elif op == "GlobalMaxPool":
            add(node, _tie_gap(x, x.max(axis=tuple(range(2, x.ndim)), keepdims=True)), x)
        elif op == "MaxPool":
            windows = _pool_windows(x, node)
            assert windows.shape[2:-1] == outs[0].shape[2:], f"{node.name}: pool windows {windows.shape} vs {outs[0].shape}"
            best = windows.max(axis=-1, keepdims=True)
            finite = np.where(np.isfinite(windows), windows, best)  # padding is never a tie
            add(node, _tie_gap(finite, best), x)
        elif op == "ReduceL2":
            add(node, _gap(outs[0], [0.0]), outs[0])
        elif op in ("Log", "Sqrt", "Reciprocal"):
            add(node, _gap(x, [0.0]), x)
        elif op == "Div":
            add(node, _gap(ins[1], [0.0]), ins[1])
    return out


def smallest_variance(model: onnx.ModelProto, values: dict[str, np.ndarray]) -> float:
    """The smallest variance a normalization node standardizes by (inf without one). Near zero (e.g.
    copies of one element normalized together) the op amplifies float32 rounding by 1/sqrt(epsilon):
    float32 and float64 gradients then differ by far more than rounding, correct as both are."""
    best = math.inf
    for node in model.graph.node:
        x = values.get(node.input[0]) if node.input else None
        if x is None:
            continue
        if node.op_type == "LayerNormalization":
            axis = _attr(node, "axis", -1) % x.ndim
            groups = x.reshape(x.shape[:axis] + (-1,))
        elif node.op_type == "InstanceNormalization":
            groups = x.reshape(x.shape[:2] + (-1,))
        elif node.op_type == "GroupNormalization":
            groups = x.reshape(x.shape[0], _attr(node, "num_groups"), -1)
        else:
            continue
        best = min(best, float(groups.var(axis=-1).min(initial=math.inf)))
    return best
