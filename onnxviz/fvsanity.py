"""Does a feature visualization come from the model? The randomized-model control.

The attribution sanity check of Adebayo et al. 2018 ("Sanity Checks for Saliency Maps",
:func:`onnxviz.attribution.metrics.randomization_check`), carried over to activation maximization:
run the same recipe (settings, prior, seeds, units) on copies of the model whose weights are re-drawn
from the top weight layer down (cascading), then ask

- does the *trained* model recognise the copies' images as their targets? (for class outputs: its
  p(target) and whether its argmax is the target; for other layers: whether, among the chosen units,
  the image's own unit responds most relative to its response to its trained image);
- how do the copies respond to the trained images against their own images?
- how similar are the trained and the randomized images of the same unit and seed? (Spearman rank
  correlation of the pixels, SSIM — Wang, Bovik, Sheikh, Simoncelli 2004).

A visualization that shows what the model learned must lose its meaning when the model loses its
weights: the copies' images should be near chance for the trained model and look different. A prior
or a parameterization that paints the targets by itself (its images stay recognised whatever the
weights), or whose pictures do not depend on the model (alike whatever the weights), fails here.
"""

from __future__ import annotations

import dataclasses
import os
import time
from dataclasses import dataclass, field
from typing import Any, Sequence

import numpy as np
import onnx

from .attribution.metrics import WeightLayer, randomize_layers, spearman, weight_layers
from .errors import OnnxvizError
from .graphview import GraphView
from .maximize import Maximizer, parse_units
from .objectives import LayerRef, unit
from .priors import resolve_prior

__all__ = ["ssim", "recognition_test", "visualization_sanity", "VisualizationSanity", "SanityStage",
           "default_depths", "ALPHA", "SIMILARITY_LIMIT", "PERMUTATIONS"]

#: Significance level of the recognition test (one-sided, over all randomized stages together).
ALPHA = 0.01
#: Mean SSIM between trained and randomized images of the same unit and seed at or above which the
#: images count as the same picture (see :func:`visualization_sanity`).
SIMILARITY_LIMIT = 0.8
#: Random permutations of the targets behind a recognition p-value (smallest p: 1 / (1 + this)).
PERMUTATIONS = 10_000
#: Options of :class:`~onnxviz.maximize.Maximizer` itself; every other option goes to ``run``.
_ENGINE_OPTIONS = ("gradient", "providers", "input_name", "input_range", "input_shape", "modifier")
#: Record keys allowed to differ between the trained and a randomized run of one recipe.
_VARIABLE_KEYS = {"rescued_steps", "seconds", "model_sha256"}


# ----------------------------------------------------------------------------------- SSIM
def _gaussian_window(size: int, sigma: float) -> np.ndarray:
    t = np.arange(size, dtype=np.float64) - (size - 1) / 2.0
    g = np.exp(-0.5 * (t / sigma) ** 2)
    return g / g.sum()


def _filter_valid(x: np.ndarray, g: np.ndarray) -> np.ndarray:
    """Separable correlation of the last two axes with ``outer(g, g)``, keeping only the positions
    where the whole window lies inside the image (MATLAB's ``filter2(..., 'valid')``)."""
    k = len(g)
    h, w = x.shape[-2] - k + 1, x.shape[-1] - k + 1
    rows = sum(g[j] * x[..., j:j + h, :] for j in range(k))
    return sum(g[j] * rows[..., :, j:j + w] for j in range(k))


def ssim(a: np.ndarray, b: np.ndarray, *, data_range: float = 1.0, sigma: float = 1.5, size: int = 11,
         k1: float = 0.01, k2: float = 0.03) -> np.ndarray:
    """Mean structural similarity of image pairs (Wang et al. 2004), ``(N, C, H, W)`` -> ``(N,)``.

    Local means, variances and covariance under a Gaussian window (``size`` x ``size``, std
    ``sigma``: the paper's 11 x 11, 1.5), ``C1 = (k1 L)^2``, ``C2 = (k2 L)^2`` with ``L`` the data
    range; the SSIM map is averaged over the positions where the window fits inside the image, then
    over channels. Images smaller than the window use a window of their size (odd). 1 for equal
    images, symmetric, at most 1."""
    a = np.asarray(a, np.float64)
    b = np.asarray(b, np.float64)
    if a.shape != b.shape:
        raise OnnxvizError(f"images of different shapes: {a.shape} and {b.shape}")
    if a.ndim != 4:
        raise OnnxvizError(f"expected (N, C, H, W) images, got shape {a.shape}")
    size = min(int(size), a.shape[-2], a.shape[-1])
    size -= 1 - size % 2  # odd
    g = _gaussian_window(size, sigma)
    c1, c2 = (k1 * data_range) ** 2, (k2 * data_range) ** 2
    mu_a, mu_b = _filter_valid(a, g), _filter_valid(b, g)
    var_a = _filter_valid(a * a, g) - mu_a * mu_a
    var_b = _filter_valid(b * b, g) - mu_b * mu_b
    cov = _filter_valid(a * b, g) - mu_a * mu_b
    s = ((2 * mu_a * mu_b + c1) * (2 * cov + c2)) / ((mu_a * mu_a + mu_b * mu_b + c1) * (var_a + var_b + c2))
    return s.mean(axis=(1, 2, 3))


# ----------------------------------------------------------------------------------- recognition
def recognition_test(predicted: np.ndarray, targets: Sequence[int], *, permutations: int = PERMUTATIONS,
                     seed: int = 0) -> tuple[int, float, float]:
    """Are images read as their own targets more often than chance? ``predicted`` ``(seeds, n)``:
    what a judge reads in each image; ``targets`` ``(n,)``: what each image was made for.

    Returns (hits, chance hits, p-value). The null hypothesis: the reading has nothing to do with
    which unit an image was made for, so shuffling the targets among the images of one seed changes
    nothing. ``p = (1 + #{shuffles with >= hits}) / (1 + permutations)`` (a Monte-Carlo permutation
    test, deterministic for a given ``seed``). Unlike a binomial test at 1/classes it stays valid
    when the judge reads most junk images as one class, or when only some classes are shown."""
    predicted = np.atleast_2d(np.asarray(predicted))
    targets = np.asarray(targets)
    if predicted.shape[1:] != targets.shape:
        raise OnnxvizError(f"{predicted.shape[1]} readings per seed for {len(targets)} targets")
    hits = int((predicted == targets).sum())
    rng = np.random.default_rng(seed)
    null = np.zeros(permutations, np.int64)
    chunk = max(1, 4_000_000 // max(1, targets.size))
    for lo in range(0, permutations, chunk):
        m = min(chunk, permutations - lo)
        for row in predicted:
            order = rng.random((m, targets.size)).argsort(axis=1)
            null[lo:lo + m] += (row[None, :] == targets[order]).sum(axis=1)
    return hits, float(null.mean()), float((1 + (null >= hits).sum()) / (1 + permutations))


# ----------------------------------------------------------------------------------- results
@dataclass
class SanityStage:
    """One model of the cascade: the trained model (stage 0, ``layers`` empty) or copies whose
    ``layers`` (names, top down) were re-drawn — one copy per seed. Arrays are ``(seeds, images per
    seed)``; ``images`` is ``(seeds, images per seed, *input shape)`` in the model's layout and range.

    ``trained_p``: the trained model's p(target) on these images (class outputs; else ``None``);
    ``trained_relative``: the trained model's objective for the image's unit, relative to its value
    on the trained image of that unit and seed; ``predicted``: what the trained model reads in each
    image (its argmax class, or for other layers the chosen unit that responds most, each relative
    to its response to its own trained images); ``recognised``: ``predicted`` is the target.
    ``copy_on_trained`` / ``copy_on_own``: this stage's model on the trained images / on its own
    (p(target) for class outputs, the objective otherwise). ``ssim`` / ``spearman``: against the
    trained image of the same unit and seed (unit-range pixels). ``chance`` / ``p_value``: the
    recognition test (:func:`recognition_test`)."""

    index: int
    layers: list[str]
    images: np.ndarray
    values: np.ndarray
    trained_p: np.ndarray | None
    trained_relative: np.ndarray
    predicted: np.ndarray
    recognised: np.ndarray
    copy_on_trained: np.ndarray
    copy_on_own: np.ndarray
    ssim: np.ndarray
    spearman: np.ndarray
    chance: float
    p_value: float
    seconds: float = 0.0

    def summary(self) -> dict[str, Any]:
        """JSON-ready numbers (no images)."""
        return {
            "stage": self.index, "randomized": self.layers,
            "recognised": int(self.recognised.sum()), "images": int(self.recognised.size),
            "chance": self.chance, "p_value": self.p_value,
            "per_seed_recognised": self.recognised.sum(axis=1).astype(int).tolist(),
            "trained_p_mean": None if self.trained_p is None else float(self.trained_p.mean()),
            "trained_relative_mean": float(self.trained_relative.mean()),
            "copy_on_trained_mean": float(self.copy_on_trained.mean()),
            "copy_on_own_mean": float(self.copy_on_own.mean()),
            "ssim_mean": float(self.ssim.mean()), "spearman_mean": float(self.spearman.mean()),
            "seconds": self.seconds,
        }


@dataclass
class VisualizationSanity:
    """The randomized-model control of one recipe. ``verdict``: ``PASS`` (the randomized copies'
    images are read as their targets no more than chance allows and are unlike the trained images),
    ``FAIL`` (some are not: ``reasons`` say which and how), or ``INCONCLUSIVE`` (nothing failed but
    the check cannot tell: ``reasons`` say why)."""

    layer: str | None
    units: list[int]
    targets: list[int]  # the unit of each image of a seed
    labels: list[str]
    seeds: list[int]
    mode: str  # class | unit
    stages: list[SanityStage]
    verdict: str
    reasons: list[str]
    recognition: dict[str, float]  # the pooled test of the randomized stages: recognised, images, chance, p_value
    baseline: dict[str, float]
    thresholds: dict[str, float]
    layout: str
    value_range: tuple[float, float]
    settings: dict[str, Any]
    notes: list[str] = field(default_factory=list)
    seconds: float = 0.0

    @property
    def passed(self) -> bool:
        return self.verdict == "PASS"

    @property
    def trained(self) -> SanityStage:
        return self.stages[0]

    @property
    def randomized(self) -> list[SanityStage]:
        return self.stages[1:]

    HEADER = ("stage", "randomized layers", "recognised (chance)", "trained-model p", "SSIM", "Spearman")

    def rows(self) -> list[tuple[str, ...]]:
        """One row of text per stage under :attr:`HEADER` (the table the CLI prints). For layers
        other than class outputs the "p" column holds the relative response."""
        out = []
        for s in self.stages:
            response = s.trained_p if s.trained_p is not None else s.trained_relative
            layers = "none (trained)" if not s.layers else (
                s.layers[0] if len(s.layers) == 1 else f"top {len(s.layers)}: {s.layers[0]} .. {s.layers[-1]}")
            out.append((str(s.index), layers, f"{int(s.recognised.sum())}/{s.recognised.size} ({s.chance:.1f})",
                        f"{response.mean():.3f}", f"{s.ssim.mean():.3f}", f"{s.spearman.mean():.3f}"))
        return out

    def lines(self) -> list[str]:
        """The check as plain text: a title, the table of :meth:`rows`, the verdict and its reasons."""
        what = "p(target)" if self.mode == "class" else "response relative to the trained images"
        head = list(self.HEADER) if self.mode == "class" else [*self.HEADER[:3], "relative response", *self.HEADER[4:]]
        rows = [head] + [list(r) for r in self.rows()]
        widths = [max(len(r[i]) for r in rows) for i in range(len(head))]
        seeds = ", ".join(map(str, self.seeds))
        rec = self.recognition
        out = [f"sanity check: the same recipe on copies re-drawn from the top weight layer down (seed {seeds}; "
               f"one copy per seed and stage); the trained model judges every image ({what}), SSIM / Spearman "
               "against the trained image of the same unit and seed"]
        out += ["  " + "  ".join(c.ljust(w) for c, w in zip(r, widths)).rstrip() for r in rows]
        out.append(f"  randomized stages together: {int(rec['recognised'])}/{int(rec['images'])} read as their "
                   f"targets (chance {rec['chance']:.1f}, p = {rec['p_value']:.2g}); {self.seconds:.1f} s")
        out.append(f"sanity {self.verdict}" + (": " + "; ".join(self.reasons) if self.reasons else ""))
        return out

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready summary (no image data)."""
        return {"verdict": self.verdict, "reasons": self.reasons, "recognition": self.recognition,
                "layer": self.layer, "units": self.units,
                "labels": self.labels, "seeds": self.seeds, "mode": self.mode, "baseline": self.baseline,
                "thresholds": self.thresholds, "notes": self.notes, "seconds": self.seconds,
                "stages": [s.summary() for s in self.stages]}


# ----------------------------------------------------------------------------------- the check
def default_depths(count: int) -> list[int]:
    """How many weight layers (from the top) each randomized stage re-draws by default: the top
    layer, the top two, and all — at most three stages whatever the depth of the network."""
    return sorted({d for d in (1, 2, count) if 1 <= d <= count})


def _upstream(graph_model: onnx.ModelProto, tensor: str) -> set[str]:
    """Names (or first outputs) of the nodes ``tensor`` depends on."""
    producers = GraphView(graph_model).producers
    seen: set[str] = set()
    todo = [tensor]
    while todo:
        node = producers.get(todo.pop())
        if node is None:
            continue
        key = node.name or node.output[0]
        if key in seen:
            continue
        seen.add(key)
        todo.extend(i for i in node.input if i)
    return seen


def _cascade(model: onnx.ModelProto, layers: int | str | Sequence[str] | None,
             upstream: set[str]) -> list[list[WeightLayer]]:
    """The weight layers each stage re-draws, top down; only layers the visualized layer depends on
    (re-drawing a layer above it changes nothing it draws)."""
    top_down = [wl for wl in weight_layers(model)[::-1] if wl.node in upstream]
    if not top_down:
        raise OnnxvizError("no weight layers to randomize below the layer (Conv / Gemm / MatMul with initializers)")
    if layers is None:
        return [top_down[:d] for d in default_depths(len(top_down))]
    if isinstance(layers, str) and layers.strip().lower() == "all":
        return [top_down[:d] for d in range(1, len(top_down) + 1)]
    if isinstance(layers, (int, np.integer)) and not isinstance(layers, bool):
        if not 1 <= layers <= len(top_down):
            raise OnnxvizError(f"layers must be 1..{len(top_down)} (the model's weight layers), not {layers}")
        return [top_down[:d] for d in range(1, int(layers) + 1)]
    names = [layers] if isinstance(layers, str) else list(layers)
    by_name = {wl.node: wl for wl in top_down}
    missing = [nm for nm in names if nm not in by_name]
    if missing or not names:
        raise OnnxvizError(f"no weight layer {missing[0] if missing else ''!r} (top down: {', '.join(by_name)})")
    chosen = [by_name[nm] for nm in names]
    return [chosen[:d] for d in range(1, len(chosen) + 1)]


def _softmax(z: np.ndarray) -> np.ndarray:
    z = z.astype(np.float64) - z.max(axis=-1, keepdims=True)
    e = np.exp(z)
    return e / e.sum(axis=-1, keepdims=True)


class _Judge:
    """One model's responses to images: class probabilities (class outputs) and the chosen units'
    objective values, through the maximizer's own sessions."""

    def __init__(self, engine: Any, layer: Any, units: list[int], logits: bool, class_mode: bool):
        self.engine = engine
        self.ref = LayerRef(layer, True) if class_mode else LayerRef(layer, logits)
        self.bound = engine.bound(self.ref)
        self.vectors = np.stack([unit(self.ref, u).cotangents({self.ref: self.bound})[self.ref] for u in units])

    def _acts(self, images: np.ndarray) -> np.ndarray:
        fn = self.engine.function(self.ref)
        x = np.ascontiguousarray(images, np.float32)
        step = 1 if self.engine.input.batch == 1 else max(1, self.engine._auto_batch_size([self.ref]))
        return np.concatenate([fn.forward(x[i:i + step]) for i in range(0, len(x), step)]).astype(np.float64)

    def probabilities(self, images: np.ndarray) -> np.ndarray:
        """(n, classes): softmax of the logits."""
        return _softmax(self._acts(images).reshape(len(images), -1))

    def responses(self, images: np.ndarray) -> np.ndarray:
        """(n, units): each chosen unit's objective (unit value, channel mean) on each image."""
        acts = self._acts(images)
        axes = tuple(range(1, acts.ndim))
        return np.tensordot(acts, self.vectors, axes=(axes, axes))


def _is_class_output(engine: Any, layer: Any, logits: bool) -> bool:
    """A classifier's output: a layer read through its softmax, or a model output of class scores."""
    if not logits:
        return False
    bound = engine.bound(LayerRef(layer, True))
    if bound.stripped in ("Softmax", "LogSoftmax"):
        return True
    outputs = {o.name for o in engine.model.graph.output}
    return bound.tensor in outputs and len(bound.shape) == 1 and bound.shape[0] >= 2


def _differences(a: Any, b: Any, path: str = "") -> list[str]:
    """Keys whose values differ between two JSON-like records (except ``_VARIABLE_KEYS``)."""
    if isinstance(a, dict) and isinstance(b, dict):
        out = []
        for k in sorted(set(a) | set(b), key=str):
            if k not in _VARIABLE_KEYS:
                out.extend(_differences(a.get(k), b.get(k), f"{path}.{k}" if path else str(k)))
        return out
    return [] if a == b else [path or "(record)"]


def _priors(prior: Any, engine: Any, run_options: dict[str, Any]) -> tuple[Any, Any]:
    """(prior for the trained model's runs, prior for the copies' runs): the prior is found once,
    for the trained model (``"auto"`` looks beside its file), and the copies get the same prior
    released from the trained model's digest (a copy's weights differ by construction)."""
    param = run_options.get("param")
    if prior is None or (isinstance(prior, str) and prior.lower() == "none"):
        return None, None
    if param is not None and (not isinstance(param, str) or (isinstance(prior, str) and prior.lower() == "auto")):
        return prior, prior  # maximize's own rule: a parameterization given, "auto" finds nothing (or refuses both)
    found = resolve_prior(prior, engine.model, engine.source_path, engine.input)
    if found is None:
        return None, None
    spec = getattr(found, "spec", None)
    if dataclasses.is_dataclass(found) and getattr(spec, "model_sha256", None) is not None:
        return found, dataclasses.replace(found, spec=dataclasses.replace(spec, model_sha256=None))
    return found, found


def visualization_sanity(model: onnx.ModelProto | str | os.PathLike | bytes, layer: Any = None, units: Any = None, *,
                         prior: Any = "auto", seed: int | Sequence[int] = 0, steps: int | None = None,
                         layers: int | str | Sequence[str] | None = None, randomize_seed: int = 0,
                         logits: bool = True, **maximize_options: Any) -> VisualizationSanity:
    """Run one activation-maximization recipe on the trained model and on cascading randomized
    copies (same settings, prior, seeds and units), and judge whether the pictures come from the
    model.

    ``layers``: which copies, counting only the weight layers the visualized layer depends on
    (re-drawing a layer above it changes nothing) — ``None`` re-draws the top one, the top two, and
    all of them (:func:`default_depths`: at most three stages whatever the depth); an int ``n``: one
    stage per layer for the top ``n``; ``"all"``: every layer; names (top down): a cascade over
    those. Each seed gets its own copy, drawn from (``randomize_seed``, seed): several seeds are
    then independent draws, not one copy seen three times. ``prior`` (default ``"auto"``, as in
    :func:`onnxviz.maximize`) is found once for the trained model and used unchanged on every copy;
    ``maximize_options`` go to :class:`~onnxviz.maximize.Maximizer` / ``run`` unchanged.

    The verdict:

    - **recognition** — what the trained model reads in a copy's image: its argmax class (class
      outputs), or for other layers the chosen unit that responds most, each relative to its
      response to its own trained images. FAIL when the copies' images (all randomized stages
      together) are read as their own targets more often than chance: a permutation test
      (:func:`recognition_test`) with p < ``ALPHA`` = 0.01. One test, not one per stage, and at 1%:
      the check is meant to run routinely, so a recipe that works must rarely FAIL by luck (tests
      per stage at 5% would, about 1 run in 7 with three stages); a recipe that paints the right
      targets without the weights is read right in every stage (p ~ 1e-4). For 10 classes and three
      stages (30 images, chance 3) it fails at about 9 or more. Per-stage p-values are reported.
      Measured on the shipped MNIST CNN, 10 classes, default stages, seeds 0-2 one at a time: no
      prior, 1-2 of 10 per stage (pooled 4/30, p = 0.35), 32 further stage draws 0-3 of 10; with
      the shipped Gaussian prior 0-4 of 10 per stage (pooled 3-5/30, p >= 0.17).
    - **similarity** — FAIL when, in some stage, the mean SSIM between trained and randomized
      images of the same unit and seed reaches ``SIMILARITY_LIMIT`` = 0.8: the copies draw the
      trained model's pictures, so the picture comes from the recipe (a prior that dominates, a
      parameterization that ignores the gradient). Measured on the shipped MNIST CNN (seeds 0-2):
      no prior, the copies 0.00-0.08 (trained images of different classes 0.01, of one class across
      seeds 0.2); with the shipped prior 0.14-0.31 (different classes 0.15, one class across seeds
      0.94); the same prior at 10x its penalty weight 0.84-0.88 (FAIL: every image is the prior's);
      a copy that is really the trained model 1.0.

    INCONCLUSIVE when nothing failed but the check cannot tell: the trained model itself does not
    recognise its own images better than chance (p >= ``ALPHA`` and not all of them: the recipe
    does not work on it), too few units for even all of them recognised to beat chance, or a copy
    did not run the same recipe (``notes``). The Spearman correlations and the copies' responses
    are reported, not judged.

    Recognition by the trained model catches pictures of the *right* target that do not come from
    the weights (a prior or parameterization that knows the classes, a copy that is not random);
    a prior that paints *some* class-looking picture whatever the target shows as similarity to
    the trained images, or needs an independent judge (classifiers trained on real images)."""
    started = time.perf_counter()
    if maximize_options.get("objective") is not None:
        raise OnnxvizError("the sanity check needs units of a layer, not a custom objective")
    seeds = [int(seed)] if isinstance(seed, (int, np.integer)) else [int(s) for s in seed]
    if not seeds:
        raise OnnxvizError("no seed given")
    engine_options = {k: maximize_options.pop(k) for k in _ENGINE_OPTIONS if k in maximize_options}
    run_options = dict(maximize_options, steps=steps, logits=logits)
    trained_engine = Maximizer(model, **engine_options)
    proto = trained_engine.model
    unit_list = parse_units(units, trained_engine.layer_size(layer, logits))
    target_layer = trained_engine.bound(LayerRef(layer, logits))
    cascade = _cascade(proto, layers, _upstream(target_layer.model, target_layer.tensor))
    class_mode = _is_class_output(trained_engine, layer, logits)
    inp = trained_engine.input
    trained_prior, copy_prior = _priors(prior, trained_engine, run_options)

    def run(engine: Maximizer, s: int, prior_: Any) -> Any:
        return engine.run(layer, unit_list, seed=s, prior=prior_, **run_options)

    t0 = time.perf_counter()
    results0 = [run(trained_engine, s, trained_prior) for s in seeds]
    images0 = np.stack([r.images for r in results0])
    record, labels = results0[0].settings, results0[0].labels
    per_seed = images0.shape[1]
    targets = np.repeat(unit_list, per_seed // len(unit_list))
    unit_pos = np.repeat(np.arange(len(unit_list)), per_seed // len(unit_list))
    shape2 = (len(seeds), per_seed)
    flat = lambda a: a.reshape((-1,) + a.shape[2:])  # noqa: E731
    pick = lambda resp: np.take_along_axis(resp, np.broadcast_to(unit_pos, shape2)[..., None], -1)[..., 0]  # noqa: E731
    judge0 = _Judge(trained_engine, layer, unit_list, logits, class_mode)
    own0 = judge0.responses(flat(images0)).reshape(shape2 + (len(unit_list),))
    target0 = pick(own0)  # each trained image's own unit, on the trained model
    norm = np.stack([own0[:, unit_pos == j, j].mean() for j in range(len(unit_list))])
    norm = np.where(np.abs(norm) > 1e-12, norm, 1e-12)
    unit0 = inp.to_unit(flat(images0))

    def trained_view(images: np.ndarray) -> tuple[np.ndarray | None, np.ndarray, np.ndarray]:
        """(p(target) or None, relative response of the target unit, reading) of the trained model."""
        resp = judge0.responses(flat(images)).reshape(shape2 + (len(unit_list),))
        relative = pick(resp) / np.where(np.abs(target0) > 1e-12, target0, 1e-12)
        if class_mode:
            p = judge0.probabilities(flat(images)).reshape(shape2 + (-1,))
            p_target = np.take_along_axis(p, np.broadcast_to(targets, shape2)[..., None], -1)[..., 0]
            return p_target, relative, p.argmax(axis=-1)
        return None, relative, np.asarray(unit_list)[(resp / norm).argmax(axis=-1)]

    def copy_view(judge: _Judge, images: np.ndarray) -> np.ndarray:
        """The copy's p(target) (class outputs) or objective on one seed's images."""
        if class_mode:
            return judge.probabilities(images)[np.arange(per_seed), targets]
        return pick(judge.responses(images)[None])[0]

    def stage(index: int, chosen: list[str], images: np.ndarray, values: np.ndarray, on_trained: np.ndarray,
              on_own: np.ndarray, seconds: float) -> SanityStage:
        p, rel, predicted = trained_view(images)
        hits, chance, p_value = recognition_test(predicted, targets)
        units_s = inp.to_unit(flat(images))
        return SanityStage(index, chosen, images, values, p, rel, predicted, predicted == targets, on_trained,
                           on_own, ssim(unit0, units_s).reshape(shape2), spearman(unit0, units_s).reshape(shape2),
                           chance, p_value, seconds)

    on_own0 = np.stack([copy_view(judge0, images0[j]) for j in range(len(seeds))])
    stages = [stage(0, [], images0, np.stack([r.values for r in results0]), on_own0, on_own0,
                    time.perf_counter() - t0)]
    notes: list[str] = []
    for i, chosen in enumerate(cascade, start=1):
        t0 = time.perf_counter()
        images, values, on_trained, on_own = [], [], [], []
        for j, s in enumerate(seeds):
            engine = Maximizer(randomize_layers(proto, chosen, seed=_copy_seed(randomize_seed, s)), **engine_options)
            result = run(engine, s, copy_prior)
            changed = _differences(results0[j].settings, result.settings)
            if changed:
                notes.append(f"stage {i}, seed {s}: the copy did not run the trained model's recipe "
                             f"({', '.join(changed[:6])} differ)")
            judge = _Judge(engine, layer, unit_list, logits, class_mode)
            images.append(result.images)
            values.append(result.values)
            on_trained.append(copy_view(judge, images0[j]))
            on_own.append(copy_view(judge, result.images))
        stages.append(stage(i, [wl.node for wl in chosen], np.stack(images), np.stack(values), np.stack(on_trained),
                            np.stack(on_own), time.perf_counter() - t0))

    baseline = _baseline(unit0.reshape(shape2 + unit0.shape[1:]), targets)
    verdict, reasons, test = _verdict(stages, targets, notes)
    return VisualizationSanity(
        layer=None if layer is None else str(layer), units=unit_list, targets=[int(t) for t in targets],
        labels=list(labels), seeds=seeds, mode="class" if class_mode else "unit", stages=stages, verdict=verdict,
        reasons=reasons, recognition=test, baseline=baseline,
        thresholds={"alpha": ALPHA, "ssim": SIMILARITY_LIMIT, "permutations": float(PERMUTATIONS)},
        layout=inp.layout, value_range=(float(inp.value_range[0]), float(inp.value_range[1])), settings=record,
        notes=notes, seconds=time.perf_counter() - started)


def _copy_seed(randomize_seed: int, seed: int) -> int:
    """The seed of the copy for one recipe seed: its own draw per (randomize_seed, seed)."""
    return int(np.random.SeedSequence([int(randomize_seed), int(seed)]).generate_state(1)[0])


def _baseline(unit0: np.ndarray, targets: np.ndarray) -> dict[str, float]:
    """Reference similarities among the trained images ``(seeds, n, C, H, W)``: different units of
    one seed (unrelated pictures), and one unit over seeds (the recipe's own spread)."""
    out: dict[str, float] = {}
    seeds, n = unit0.shape[:2]
    a, b = np.triu_indices(n, 1)
    keep = targets[a] != targets[b]
    if keep.any():
        pa, pb = unit0[:, a[keep]].reshape((-1,) + unit0.shape[2:]), unit0[:, b[keep]].reshape((-1,) + unit0.shape[2:])
        out["ssim_other_units"] = float(ssim(pa, pb).mean())
        out["spearman_other_units"] = float(spearman(pa, pb).mean())
    if seeds > 1:
        sa, sb = np.triu_indices(seeds, 1)
        pa, pb = unit0[sa].reshape((-1,) + unit0.shape[2:]), unit0[sb].reshape((-1,) + unit0.shape[2:])
        out["ssim_same_unit_other_seeds"] = float(ssim(pa, pb).mean())
        out["spearman_same_unit_other_seeds"] = float(spearman(pa, pb).mean())
    return out


def _verdict(stages: list[SanityStage], targets: np.ndarray, notes: list[str]
             ) -> tuple[str, list[str], dict[str, float]]:
    """(verdict, reasons, the pooled recognition test of the randomized stages)."""
    randomized = stages[1:]
    hits, chance, p_value = recognition_test(np.concatenate([s.predicted for s in randomized]), targets)
    test = {"recognised": float(hits), "images": float(sum(s.recognised.size for s in randomized)),
            "chance": chance, "p_value": p_value}
    reasons = []
    if p_value < ALPHA:
        worst = max(randomized, key=lambda s: (int(s.recognised.sum()), -s.p_value))
        reasons.append(f"the trained model reads {hits} of {int(test['images'])} of the randomized copies' images "
                       f"as their targets (chance {chance:.1f}, p = {p_value:.2g} < {ALPHA}); most in stage "
                       f"{worst.index} ({int(worst.recognised.sum())}/{worst.recognised.size}, randomized "
                       f"{', '.join(worst.layers)})")
    for s in randomized:
        if s.ssim.mean() >= SIMILARITY_LIMIT:
            reasons.append(f"stage {s.index} (randomized {', '.join(s.layers)}): the randomized copies draw the "
                           f"trained model's pictures (mean SSIM {s.ssim.mean():.3f} >= {SIMILARITY_LIMIT})")
    if reasons:
        return "FAIL", reasons, test
    if notes:
        return "INCONCLUSIVE", list(notes), test
    rows = len(randomized) * stages[0].recognised.shape[0]
    best = recognition_test(np.broadcast_to(targets, (rows, len(targets))), targets)[2]
    if best >= ALPHA:
        return "INCONCLUSIVE", [f"{len(targets)} image(s) per seed: even all of them recognised would not beat "
                                f"chance (p = {best:.2g}); use more units or seeds"], test
    if stages[0].p_value >= ALPHA and not stages[0].recognised.all():
        return "INCONCLUSIVE", [f"the trained model reads only {int(stages[0].recognised.sum())} of "
                                f"{stages[0].recognised.size} of its own images as their targets: the recipe does "
                                "not work on the trained model, so the control says nothing"], test
    return "PASS", [], test
