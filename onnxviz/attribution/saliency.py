"""The gradient family: maps from d logit[unit] / d input, computed by the ONNX gradient graph.

- vanilla gradient — Simonyan, Vedaldi, Zisserman, "Deep Inside Convolutional Networks" (2014):
  ``max_c |d S_c / d x|`` (modifiers: ``abs``, ``relu`` for positive evidence, ``negate`` for what
  lowers the score, ``None`` for the signed channel sum).
- SmoothGrad — Smilkov et al. (2017): the mean gradient over ``samples`` noisy copies
  ``x + N(0, sigma^2)``, ``sigma = noise * (hi - lo)`` of the input range; ``variant="squared"``
  averages squared gradients (SmoothGrad-Squared, Hooker et al. 2019), ``"vargrad"`` takes their
  variance (Adebayo et al. 2018).
- gradient x input — Shrikumar et al. (2016): ``x * grad``, summed over channels.
- integrated gradients — Sundararajan, Taly, Yan (2017): ``(x - x') * mean_k grad(x' + a_k (x - x'))``
  with midpoint nodes ``a_k = (k + 1/2) / steps``; completeness (the attributions add up to
  ``S(x) - S(x')``) is checked and reported per image.
- guided backpropagation — Springenberg et al. (2015), and deconvnet — Zeiler & Fergus (2014):
  the gradient graph built with the ``guided`` / ``deconvnet`` ReLU modifiers.

Every method runs batched: all images x samples (or steps) go through onnxruntime in chunks, one
run per chunk computing logits and input gradients together.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from ..errors import OnnxvizError
from .core import Attribution, Attributor, as_attributor, reduce_channels, sample_count

__all__ = ["vanilla_gradient", "smoothgrad", "gradient_x_input", "integrated_gradients",
           "guided_backprop", "deconvnet", "resolve_baseline", "SMOOTHGRAD_VARIANTS"]

SMOOTHGRAD_VARIANTS = ("mean", "squared", "vargrad")


def _setup(model: Any, x: np.ndarray, unit: Any) -> tuple[Attributor, np.ndarray, np.ndarray, np.ndarray | None]:
    """(attributor, float32 batch, units, logits or None). The logits come from a forward pass
    only when the default unit (the top class) needs them; explicit units cost nothing here."""
    att = as_attributor(model)
    x = np.ascontiguousarray(x, np.float32)
    if x.shape[1:] != att.spec.shape:
        raise OnnxvizError(f"images of shape {x.shape[1:]} do not fit the model input {att.spec.shape}")
    units, z = att.resolve_units(x, unit)
    return att, x, units, z


def _gradient_method(name: str, modifier_graph: str | None, model: Any, x: np.ndarray, unit: Any,
                     modifier: str | None) -> Attribution:
    att, x, units, _ = _setup(model, x, unit)
    z, g = att.gradients(x, units, modifier_graph)
    maps = reduce_channels(att.spec.to_hwc(g), modifier, "max")
    return Attribution(name, maps, units, z[np.arange(len(x)), units], z.argmax(1), {"modifier": modifier}, g)


def vanilla_gradient(model: Any, x: np.ndarray, unit: Any = None, *, modifier: str | None = "abs") -> Attribution:
    """Vanilla saliency: the channel maximum of ``modifier(d logit[unit] / d x)``."""
    return _gradient_method("vanilla", None, model, x, unit, modifier)


def guided_backprop(model: Any, x: np.ndarray, unit: Any = None, *, modifier: str | None = "abs") -> Attribution:
    """Guided backpropagation: ReLUs pass only positive gradients through positive inputs."""
    return _gradient_method("guided", "guided", model, x, unit, modifier)


def deconvnet(model: Any, x: np.ndarray, unit: Any = None, *, modifier: str | None = "abs") -> Attribution:
    """Deconvnet: ReLUs pass positive gradients whatever their forward input."""
    return _gradient_method("deconvnet", "deconvnet", model, x, unit, modifier)


def gradient_x_input(model: Any, x: np.ndarray, unit: Any = None, *, modifier: str | None = "abs") -> Attribution:
    """Gradient x input, summed over channels, then ``modifier``."""
    att, x, units, _ = _setup(model, x, unit)
    z, g = att.gradients(x, units)
    a = g * x
    maps = reduce_channels(att.spec.to_hwc(a), modifier, "sum")
    return Attribution("gradxinput", maps, units, z[np.arange(len(x)), units], z.argmax(1), {"modifier": modifier}, a)


def smoothgrad(model: Any, x: np.ndarray, unit: Any = None, *, samples: int = 25, noise: float = 0.15,
               variant: str = "mean", modifier: str | None = "abs", seed: int = 0) -> Attribution:
    """SmoothGrad over ``samples`` noisy copies per image (all in one batched pass). The noise is
    Gaussian with ``sigma = noise * (hi - lo)``; ``variant`` mean / squared / vargrad."""
    if variant not in SMOOTHGRAD_VARIANTS:
        raise OnnxvizError(f"unknown SmoothGrad variant {variant!r} (choose {', '.join(SMOOTHGRAD_VARIANTS)})")
    samples = sample_count(samples, "SmoothGrad samples")
    if not noise >= 0:
        raise OnnxvizError(f"SmoothGrad noise must be >= 0, got {noise}")
    att, x, units, z = _setup(model, x, unit)
    if z is None:
        z = att.logits(x)
    lo, hi = att.spec.value_range
    sigma = np.float32(noise * (hi - lo))
    n = len(x)
    rng = np.random.default_rng(seed)
    idx = np.repeat(np.arange(n), samples)
    total = np.zeros_like(x, dtype=np.float64)
    total_sq = np.zeros_like(x, dtype=np.float64)
    fn = att.gradient_function(None)
    k = att.classes
    size = att.batch_size
    for sl in att.chunks(len(idx), size):
        rows = idx[sl]
        xs = x[rows] + sigma * rng.standard_normal((len(rows),) + x.shape[1:], dtype=np.float32)
        _, g = att.run_chunked(lambda xc, uc: fn(xc, _one_hot(uc, k)), xs, units[rows])
        g = g.astype(np.float64)
        np.add.at(total, rows, g)
        np.add.at(total_sq, rows, g * g)
    mean = total / samples
    if variant == "mean":
        a, how = mean, "max"
        maps = reduce_channels(att.spec.to_hwc(a), modifier, how)
    elif variant == "squared":
        a = total_sq / samples
        maps = att.spec.to_hwc(a).max(axis=-1).astype(np.float32)
    else:
        a = np.maximum(total_sq / samples - mean * mean, 0.0)
        maps = att.spec.to_hwc(a).max(axis=-1).astype(np.float32)
    scores = z[np.arange(n), units]
    name = {"mean": "smoothgrad", "squared": "smoothgrad-squared", "vargrad": "vargrad"}[variant]
    info = {"samples": samples, "noise": float(noise), "sigma": float(sigma), "variant": variant,
            "modifier": modifier if variant == "mean" else None, "seed": seed}
    return Attribution(name, maps, units, scores, z.argmax(1), info, a.astype(np.float32))


def _one_hot(units: np.ndarray, k: int) -> np.ndarray:
    out = np.zeros((len(units), k), np.float32)
    out[np.arange(len(units)), units] = 1.0
    return out


def resolve_baseline(att: Attributor, x: np.ndarray, baseline: Any) -> np.ndarray:
    """A baseline batch like ``x`` (model layout and range): ``"black"`` the low end of the input
    range, ``"white"`` the high end, ``"zero"`` literal zeros, a number (model units), or an array
    shaped like one image or like the batch."""
    lo, hi = att.spec.value_range
    if isinstance(baseline, str):
        value = {"black": lo, "white": hi, "zero": 0.0}.get(baseline.strip().lower())
        if value is None:
            try:
                value = float(baseline)
            except ValueError:
                raise OnnxvizError(f"unknown baseline {baseline!r} (black, white, zero, a number or an array)") from None
        return np.full_like(x, value, dtype=np.float32)
    if baseline is None:
        return np.full_like(x, lo, dtype=np.float32)
    b = np.asarray(baseline, np.float32)
    if b.ndim == 0:
        return np.full_like(x, float(b), dtype=np.float32)
    if b.shape == x.shape[1:]:
        return np.broadcast_to(b, x.shape).astype(np.float32)
    if b.shape == x.shape:
        return b.astype(np.float32)
    raise OnnxvizError(f"baseline of shape {b.shape} fits neither one image {x.shape[1:]} nor the batch {x.shape}")


def integrated_gradients(model: Any, x: np.ndarray, unit: Any = None, *, steps: int = 64,
                         baseline: Any = "black", modifier: str | None = "abs") -> Attribution:
    """Integrated gradients along the straight path from ``baseline`` to ``x`` (midpoint rule,
    ``steps`` gradient evaluations per image, all batched). ``info["completeness_error"]`` is
    ``|sum(attr) - (S(x) - S(x'))| / |S(x) - S(x')|`` per image."""
    steps = sample_count(steps, "IG steps")
    att, x, units, z = _setup(model, x, unit)
    base = resolve_baseline(att, x, baseline)
    n = len(x)
    alphas = ((np.arange(steps) + 0.5) / steps).astype(np.float32)
    idx = np.repeat(np.arange(n), steps)
    alpha_rows = np.tile(alphas, n)
    fn = att.gradient_function(None)
    k = att.classes
    total = np.zeros_like(x, dtype=np.float64)
    for sl in att.chunks(len(idx)):
        rows = idx[sl]
        a = alpha_rows[sl].reshape((-1,) + (1,) * (x.ndim - 1))
        xs = base[rows] + a * (x[rows] - base[rows])
        _, g = att.run_chunked(lambda xc, uc: fn(xc, _one_hot(uc, k)), xs, units[rows])
        np.add.at(total, rows, g.astype(np.float64))
    attr = (x - base).astype(np.float64) * (total / steps)
    if z is None:
        z, zb = np.split(att.logits(np.concatenate([x, base])), 2)
    else:
        zb = att.logits(base)
    scores = z[np.arange(n), units]
    delta = scores.astype(np.float64) - zb[np.arange(n), units]
    sums = attr.reshape(n, -1).sum(axis=1)
    err = np.abs(sums - delta) / np.maximum(np.abs(delta), 1e-12)
    maps = reduce_channels(att.spec.to_hwc(attr), modifier, "sum")
    info = {"steps": steps, "baseline": baseline if isinstance(baseline, (str, float, int)) else "array",
            "modifier": modifier, "completeness_error": err, "attribution_sum": sums, "score_difference": delta}
    return Attribution("ig", maps, units, scores, z.argmax(1), info, attr.astype(np.float32))
