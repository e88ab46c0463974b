"""Do the maps mean something? Two standard checks.

- **Deletion / insertion** — Petsiuk, Das, Saenko, "RISE" (2018): remove the pixels from the most
  to the least important (deletion: replaced by black) and follow the model's probability of the
  class; the area under that curve is low when the map ranks the decisive pixels first. Insertion
  starts from a blurred copy and puts the pixels back, most important first; a high area is good.
  A random pixel order is the baseline to beat. All images x steps run in batches.
- **Model parameter randomization** — Adebayo et al., "Sanity Checks for Saliency Maps" (2018):
  re-initialize the weights of the layers from the top down (cascading) in the ONNX initializers
  and compare the new maps with the originals by Spearman rank correlation. A map that explains
  the model must change when the model does; a re-run with the same weights must give 1.0.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Callable, Sequence

import numpy as np
import onnx
from onnx import numpy_helper

from ..errors import OnnxvizError
from ..graphview import GraphView
from ..ops import WEIGHT_OPS, WEIGHT_PASS_THROUGH_OPS
from .core import Attribution, Attributor, as_attributor
from .saliency import resolve_baseline

__all__ = ["deletion_curve", "deletion_auc", "insertion_auc", "random_maps", "spearman",
           "weight_layers", "randomize_layers", "randomization_check", "RandomizationResult",
           "gaussian_blur"]


# --------------------------------------------------------------------------------------- deletion
def random_maps(n: int, height: int, width: int, seed: int = 0) -> np.ndarray:
    """``(n, H, W)`` uniform noise: a random pixel order, the baseline of deletion / insertion."""
    return np.random.default_rng(seed).random((n, height, width)).astype(np.float32)


def gaussian_blur(x_hwc: np.ndarray, sigma: float) -> np.ndarray:
    """Separable Gaussian blur of ``(N, H, W, C)`` pictures (edges replicated), numpy only."""
    if sigma <= 0:
        return x_hwc.copy()
    r = max(1, int(np.ceil(3 * sigma)))
    t = np.arange(-r, r + 1, dtype=np.float64)
    k = np.exp(-0.5 * (t / sigma) ** 2)
    k /= k.sum()
    out = x_hwc.astype(np.float64)
    for axis in (1, 2):
        pad = [(0, 0)] * out.ndim
        pad[axis] = (r, r)
        p = np.pad(out, pad, mode="edge")
        n = out.shape[axis]
        acc = np.zeros_like(out)
        for j, w in enumerate(k):
            acc += w * np.take(p, np.arange(j, j + n), axis=axis)
        out = acc
    return out.astype(np.float32)


def _substrate(att: Attributor, x: np.ndarray, substrate: Any) -> np.ndarray:
    if isinstance(substrate, str) and substrate.strip().lower() == "blur":
        sigma = max(att.spec.height, att.spec.width) / 20.0
        unit = att.spec.to_unit(x)
        return att.spec.to_model(gaussian_blur(unit, sigma))
    return resolve_baseline(att, x, substrate)


def deletion_curve(model: Any, x: np.ndarray, maps: np.ndarray, units: Any = None, *, mode: str = "deletion",
                   steps: int = 50, substrate: Any = None, score: str = "probability",
                   seed: int = 0) -> np.ndarray:
    """``(N, steps + 1)`` scores of the unit as pixels are deleted (``mode="deletion"``: from the
    image towards ``substrate``, default black) or inserted (``"insertion"``: from ``substrate``,
    default a blur, towards the image) in the order of decreasing map value; step ``t`` changes
    the first ``round(t * H * W / steps)`` pixels (all channels). Ties are broken at random
    (``seed``), so a constant map behaves like a random order. ``score``: ``probability`` (the
    model's own softmax / sigmoid) or ``logit``."""
    if mode not in ("deletion", "insertion"):
        raise OnnxvizError(f"unknown mode {mode!r} (deletion or insertion)")
    att = as_attributor(model)
    x = np.ascontiguousarray(x, np.float32)
    maps = np.asarray(maps, np.float64)
    n = len(x)
    H, W = att.spec.height, att.spec.width
    if maps.shape != (n, H, W):
        raise OnnxvizError(f"maps of shape {maps.shape} do not match {n} images of {H}x{W}")
    if units is None:
        units = att.predict(x)
    units = np.broadcast_to(np.asarray(units, np.int64), (n,))
    if substrate is None:
        substrate = "black" if mode == "deletion" else "blur"
    sub = _substrate(att, x, substrate)
    start, end = (x, sub) if mode == "deletion" else (sub, x)
    rng = np.random.default_rng(seed)
    ranks = np.empty((n, H * W), np.int64)
    for i in range(n):
        perm = rng.permutation(H * W)  # random tie-break: sort a shuffled copy stably
        order = perm[np.argsort(-maps[i].ravel()[perm], kind="stable")]
        ranks[i, order] = np.arange(H * W)
    ranks = ranks.reshape(n, H, W)
    counts = np.round(np.arange(steps + 1) * (H * W) / steps).astype(np.int64)
    rows_img = np.repeat(np.arange(n), steps + 1)
    rows_t = np.tile(np.arange(steps + 1), n)
    out = np.zeros(n * (steps + 1), np.float64)
    for sl in att.chunks(len(rows_img)):
        ri, rt = rows_img[sl], rows_t[sl]
        changed = (ranks[ri] < counts[rt][:, None, None]).astype(np.float32)
        m = att.spec.pixel_mask(changed)
        xs = start[ri] * (1.0 - m) + end[ri] * m
        z = att.logits(xs)
        s = att.probabilities_from_logits(z) if score == "probability" else z
        out[sl] = s[np.arange(len(ri)), units[ri]]
    return out.reshape(n, steps + 1)


def _auc(curve: np.ndarray) -> np.ndarray:
    steps = curve.shape[-1] - 1
    return ((curve[..., 1:] + curve[..., :-1]) / 2.0).sum(axis=-1) / steps


def deletion_auc(model: Any, x: np.ndarray, maps: np.ndarray | Attribution, units: Any = None,
                 **options: Any) -> np.ndarray:
    """Per-image area under the deletion curve (x axis: fraction of pixels deleted, 0..1). Lower
    is better."""
    if isinstance(maps, Attribution):
        units = maps.units if units is None else units
        maps = maps.maps
    return _auc(deletion_curve(model, x, maps, units, mode="deletion", **options))


def insertion_auc(model: Any, x: np.ndarray, maps: np.ndarray | Attribution, units: Any = None,
                  **options: Any) -> np.ndarray:
    """Per-image area under the insertion curve. Higher is better."""
    if isinstance(maps, Attribution):
        units = maps.units if units is None else units
        maps = maps.maps
    return _auc(deletion_curve(model, x, maps, units, mode="insertion", **options))


# --------------------------------------------------------------------------------------- ranks
def _rank(a: np.ndarray) -> np.ndarray:
    """Ranks 0..n-1 along the last axis, ties given their average rank."""
    flat = a.reshape(-1, a.shape[-1])
    out = np.empty(flat.shape, np.float64)
    for i, row in enumerate(flat):
        order = np.argsort(row, kind="mergesort")
        s = row[order]
        starts = np.r_[0, np.flatnonzero(s[1:] != s[:-1]) + 1]
        ends = np.r_[starts[1:], len(s)]
        avg = (starts + ends - 1) / 2.0
        r = np.empty(len(s), np.float64)
        r[order] = np.repeat(avg, ends - starts)
        out[i] = r
    return out.reshape(a.shape)


def spearman(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Spearman rank correlation of two maps per image (``(N, ...)`` -> ``(N,)``): the Pearson
    correlation of their average ranks. A constant map against anything gives 0."""
    a = np.asarray(a, np.float64)
    b = np.asarray(b, np.float64)
    if a.shape != b.shape:
        raise OnnxvizError(f"maps of different shapes: {a.shape} and {b.shape}")
    ra = _rank(a.reshape(len(a), -1))
    rb = _rank(b.reshape(len(b), -1))
    ra -= ra.mean(axis=1, keepdims=True)
    rb -= rb.mean(axis=1, keepdims=True)
    den = np.sqrt((ra * ra).sum(axis=1) * (rb * rb).sum(axis=1))
    return np.where(den > 0, (ra * rb).sum(axis=1) / np.where(den > 0, den, 1.0), 0.0)


# --------------------------------------------------------------------------------------- randomization


@dataclass(frozen=True)
class WeightLayer:
    """A node with trainable weights: its name, op, and the initializers holding them."""

    node: str
    op_type: str
    initializers: tuple[str, ...]


def _source_initializer(name: str, producers: dict, inits: set[str], depth: int = 0) -> str | None:
    if name in inits:
        return name
    node = producers.get(name)
    if node is None or depth > 4 or node.op_type not in WEIGHT_PASS_THROUGH_OPS or not node.input:
        return None
    return _source_initializer(node.input[0], producers, inits, depth + 1)


def weight_layers(model: onnx.ModelProto) -> list[WeightLayer]:
    """Nodes with weights, in graph order: Conv / ConvTranspose / Gemm / MatMul with an
    initializer operand (through Identity / Cast / Transpose / Reshape), with the bias of a
    following ``Add`` of an initializer for MatMul (as exporters write Dense layers)."""
    view = GraphView(model)
    inits, producers, consumers = view.initializers, view.producers, view.consumers
    layers = []
    for node in model.graph.node:
        if node.op_type not in WEIGHT_OPS or node.domain not in ("", "ai.onnx"):
            continue
        names = []
        for i in node.input[1:]:
            src = _source_initializer(i, producers, set(inits)) if i else None
            if src is not None and inits[src].data_type in (onnx.TensorProto.FLOAT, onnx.TensorProto.DOUBLE,
                                                           onnx.TensorProto.FLOAT16):
                names.append(src)
        if node.op_type == "MatMul":
            first = _source_initializer(node.input[0], producers, set(inits))
            if first is not None and not names:
                names.append(first)
            if names:
                nxt = consumers.get(node.output[0], [])
                if len(nxt) == 1 and nxt[0].op_type == "Add":
                    for i in nxt[0].input:
                        src = _source_initializer(i, producers, set(inits))
                        if src is not None:
                            names.append(src)
        if names and any(len(inits[nm].dims) >= 1 and int(np.prod(inits[nm].dims)) > 1 for nm in names):
            layers.append(WeightLayer(node.name or node.output[0], node.op_type, tuple(dict.fromkeys(names))))
    return layers


def randomize_layers(model: onnx.ModelProto, layers: Sequence[str | WeightLayer], seed: int = 0) -> onnx.ModelProto:
    """A copy of ``model`` whose named weight layers get fresh Gaussian weights with the standard
    deviation of the originals (per tensor; zero-std tensors such as fresh biases stay)."""
    by_name = {wl.node: wl for wl in weight_layers(model)}
    wanted: list[WeightLayer] = []
    for layer in layers:
        if isinstance(layer, WeightLayer):
            wanted.append(layer)
        elif layer in by_name:
            wanted.append(by_name[layer])
        else:
            raise OnnxvizError(f"no weight layer {layer!r} (layers with weights: {', '.join(by_name)})")
    names = {nm for wl in wanted for nm in wl.initializers}
    rng = np.random.default_rng(seed)
    out = onnx.ModelProto()
    out.CopyFrom(model)
    for k, t in enumerate(out.graph.initializer):
        if t.name not in names:
            continue
        arr = numpy_helper.to_array(t)
        std = float(arr.std())
        if std == 0.0:
            continue
        new = (rng.standard_normal(arr.shape) * std).astype(arr.dtype)
        out.graph.initializer[k].CopyFrom(numpy_helper.from_array(new, t.name))
    return out


@dataclass
class RandomizationResult:
    """Spearman correlations of maps after cascading randomization: ``layers[i]`` is the top-most
    layer randomized at step ``i`` (all layers above it too); ``correlations`` ``(steps, N)``;
    ``rerun`` the correlations of a re-run with the original weights.

    Adebayo et al. report rank correlations both with and without absolute values. Where the
    method's maps went through a modifier (``abs``, the display default of gradient methods),
    ``signed`` / ``signed_rerun`` hold the same check on the signed maps (the channel sum of the
    raw attributions), computed from the same runs; else ``None``. Absolute-value maps keep the
    input's structure (edges, strokes) whatever the top layers say, so they decorrelate less."""

    method: str
    layers: list[str]
    correlations: np.ndarray
    rerun: np.ndarray
    info: dict[str, Any] = field(default_factory=dict)
    signed: np.ndarray | None = None
    signed_rerun: np.ndarray | None = None

    @property
    def mean(self) -> np.ndarray:
        return self.correlations.mean(axis=1)

    @property
    def signed_mean(self) -> np.ndarray | None:
        return None if self.signed is None else self.signed.mean(axis=1)

    def rows(self, signed: bool = False) -> list[tuple[str, float]]:
        corr, rerun = (self.signed, self.signed_rerun) if signed else (self.correlations, self.rerun)
        if corr is None or rerun is None:
            return []
        return [("(same weights)", float(rerun.mean()))] + [
            (name, float(c)) for name, c in zip(self.layers, corr.mean(axis=1))]


def randomization_check(model: Any, x: np.ndarray, method: str | Callable[..., Attribution] = "vanilla",
                        unit: Any = None, *, layers: int | Sequence[str] | None = None, seed: int = 0,
                        **options: Any) -> RandomizationResult:
    """Cascading model-parameter randomization (Adebayo et al. 2018). ``layers``: how many weight
    layers to randomize from the top (default all), or their names in order. The units stay those
    of the original model. ``options`` go to the method (see :func:`onnxviz.attribution.attribute`)."""
    from . import attribute

    att = as_attributor(model)
    run: Callable[[Attributor, Any], Attribution]
    if callable(method):
        name = getattr(method, "__name__", "custom")
        run = lambda a, u: method(a, x, u, **options)  # noqa: E731
    else:
        name = method
        run = lambda a, u: attribute(a, x, method, unit=u, **options)  # noqa: E731
    original = run(att, unit)
    units = original.units
    with_signed = original.attributions is not None and original.info.get("modifier") is not None

    def signed(r: Attribution) -> np.ndarray:
        """The signed map: the channel sum of the raw attributions (what a ``None`` modifier gives)."""
        return att.spec.to_hwc(r.attributions).sum(axis=-1)

    def compare(r: Attribution) -> tuple[np.ndarray, np.ndarray | None]:
        return spearman(original.maps, r.maps), spearman(signed(original), signed(r)) if with_signed else None

    def fresh(m: onnx.ModelProto) -> Attributor:
        return Attributor(m, input_name=att.spec.name, input_shape=(att.spec.batch or 1,) + att.spec.shape,
                          value_range=att.spec.value_range, output=att.output, gradient=att.gradient,
                          providers=att.providers, batch_size=att._batch_size)

    rerun, signed_rerun = compare(run(fresh(att.source), units))
    all_layers = weight_layers(att.source)[::-1]  # top down
    if layers is None:
        chosen = all_layers
    elif isinstance(layers, int):
        chosen = all_layers[:layers]
    else:
        by_name = {wl.node: wl for wl in all_layers}
        missing = [nm for nm in layers if nm not in by_name]
        if missing:
            raise OnnxvizError(f"no weight layer {missing[0]!r} (top down: {', '.join(by_name)})")
        chosen = [by_name[nm] for nm in layers]
    corrs, signed_corrs = [], []
    for i in range(len(chosen)):
        randomized = randomize_layers(att.source, chosen[: i + 1], seed=seed)
        c, sc = compare(run(fresh(randomized), units))
        corrs.append(c)
        signed_corrs.append(sc)
    shape = (len(chosen), len(x))
    return RandomizationResult(name, [wl.node for wl in chosen], np.asarray(corrs).reshape(shape), rerun,
                               {"seed": seed, "modifier": original.info.get("modifier")},
                               np.asarray(signed_corrs).reshape(shape) if with_signed else None, signed_rerun)
