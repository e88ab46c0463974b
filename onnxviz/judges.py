"""Judges: simple classifiers trained on real images that say whether a visualization reads as its class.

A class image that convinces the model may still look like strokes to a person. The judges are a
stand-in for that person that the model never influenced: three small classifiers of different kinds
fitted on real images (k-nearest neighbours, multinomial logistic regression, a one-hidden-layer MLP),
numpy only. :meth:`Judges.score` counts, over every (judge, image) pair, how often the judge calls the
image its target class: 3 judges x 10 MNIST class images give a count out of 30.

What the judges see. Images are mapped linearly from ``value_range`` to [0, 1] and flattened per
sample in (H, W, C) order — nothing else: no per-image contrast stretch, centring or thresholding. A
visualization must therefore *look* like the real images (dark background, bright strokes, similar
ink) to be recognised; rescaling each image would forgive exactly the contrast defects readability is
about. The k-NN judge measures plain Euclidean distance between those pixels; logistic regression and
the MLP see them after a fixed standardization learned on the training images (per-pixel mean
subtracted, divided by one global standard deviation), which conditions training without giving
near-constant border pixels a huge weight.

    judges = Judges.fit(images, labels, layout="NHW")      # e.g. MNIST uint8 (N, 28, 28)
    result = onnxviz.maximize("models/mnist_cnn.onnx")
    judges.score(result.images, range(10), layout=result.layout)   # JudgeScore: 27/30 (knn 9/10, ...)
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Any, Sequence

import numpy as np

from .errors import ImageError, OnnxvizError, ShapeError
from .graph import check_value_range

__all__ = ["Judges", "JudgeScore", "JUDGE_NAMES", "to_features"]

#: The judges, in the order they vote.
JUDGE_NAMES = ("knn", "logistic", "mlp")

_LAYOUTS = ("NHWC", "NCHW", "NHW")


# ------------------------------------------------------------------------------------------ inputs
def to_features(images: Any, layout: str = "NHWC", value_range: Sequence[float] | None = None) -> np.ndarray:
    """``(N, H*W*C)`` float32 features in [0, 1] from a batch of images: what every judge is given.

    ``layout`` is ``"NHWC"``, ``"NCHW"`` or ``"NHW"``; a 3-D array is read as ``(N, H, W)`` in any
    layout (one channel). Values are mapped linearly from ``value_range`` to [0, 1] (default: 0..255
    for ``uint8`` arrays, 0..1 otherwise); values outside the range, NaN or inf raise
    :class:`~onnxviz.errors.ImageError` (a wrong range is a user error, not something to clip away).
    Channels are flattened last, so an NCHW batch gives the same features as its NHWC transpose.
    """
    return _prepare(images, layout, value_range)[0]


def _prepare(images: Any, layout: str, value_range: Sequence[float] | None) -> tuple[np.ndarray, tuple[int, int, int]]:
    if not isinstance(layout, str) or layout.upper() not in _LAYOUTS:
        raise OnnxvizError(f"unknown image layout {layout!r}; choose one of {', '.join(_LAYOUTS)}")
    layout = layout.upper()
    arr = np.asarray(images)
    if arr.dtype == object or not (np.issubdtype(arr.dtype, np.number) or arr.dtype == bool):
        raise ImageError(f"images must be a numeric array, got dtype {arr.dtype}")
    if arr.ndim == 3:
        arr = arr[..., None]
    elif arr.ndim == 4:
        if layout == "NHW":
            raise ShapeError(f"layout NHW expects images of shape (N, H, W), got {arr.shape}")
        if layout == "NCHW":
            arr = arr.transpose(0, 2, 3, 1)
    else:
        raise ShapeError(
            f"images must be a batch of shape (N, H, W) or 4-D in layout {layout} "
            f"({'(N, C, H, W)' if layout == 'NCHW' else '(N, H, W, C)'}), got shape {arr.shape}"
        )
    n, h, w, c = arr.shape
    if n == 0 or h == 0 or w == 0 or c == 0:
        raise ShapeError("images must be a non-empty batch with non-empty pictures, "
                         f"got shape {np.asarray(images).shape}")
    if value_range is None:
        lo, hi = (0.0, 255.0) if arr.dtype == np.uint8 else (0.0, 1.0)
    else:
        lo, hi = check_value_range(value_range, f"value_range {value_range!r}")
    x = arr.reshape(n, h * w * c).astype(np.float32)
    if not np.isfinite(x).all():
        raise ImageError("images contain NaN or inf")
    vmin, vmax = float(x.min()), float(x.max())
    tol = 1e-5 * (hi - lo)
    if vmin < lo - tol or vmax > hi + tol:
        hint = " (0..255 pixel values? pass uint8 or value_range=(0, 255))" if vmax > 1.5 and hi <= 1.0 else ""
        raise ImageError(f"image values span [{vmin:g}, {vmax:g}], outside value_range [{lo:g}, {hi:g}]{hint}")
    if (lo, hi) != (0.0, 1.0):
        x = (x - np.float32(lo)) / np.float32(hi - lo)
    return np.clip(x, 0.0, 1.0, out=x), (h, w, c)


# ------------------------------------------------------------------------------------------ scores
@dataclass
class JudgeScore:
    """How the judges voted on a batch of images with known targets.

    ``votes[name]`` is each judge's predicted label per image; ``recognised`` counts the (judge,
    image) pairs whose vote is the target, out of ``total`` = judges x images; ``per_judge`` splits
    that count by judge and ``per_image`` by image (how many judges recognised it).
    """

    targets: np.ndarray  # (n,)
    votes: dict[str, np.ndarray]  # judge -> (n,) predicted labels
    recognised: int
    total: int
    per_judge: dict[str, int]
    per_image: np.ndarray  # (n,) number of judges whose vote is the target

    @property
    def accuracy(self) -> dict[str, float]:
        """Fraction of the images each judge calls their target (held-out accuracy on real images)."""
        n = len(self.targets)
        return {name: count / n for name, count in self.per_judge.items()}

    @property
    def fraction(self) -> float:
        return self.recognised / self.total

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready record."""
        return {"recognised": self.recognised, "total": self.total, "per_judge": dict(self.per_judge),
                "targets": self.targets.tolist(), "votes": {k: v.tolist() for k, v in self.votes.items()},
                "per_image": self.per_image.tolist()}

    def __str__(self) -> str:
        n = len(self.targets)
        parts = ", ".join(f"{name} {count}/{n}" for name, count in self.per_judge.items())
        return f"{self.recognised}/{self.total} ({parts})"


# ------------------------------------------------------------------------------------------ judges
@dataclass
class Judges:
    """Three classifiers fitted on real images (see the module docstring for what they see).

    Build with :meth:`Judges.fit`; then :meth:`predict`, :meth:`probabilities` and :meth:`score`
    take images of the fitted picture shape in any layout. Same data and seed, same judges.
    """

    classes: np.ndarray  # (K,) the label values, sorted
    picture_shape: tuple[int, int, int]  # (H, W, C) of the training images
    k: int
    train_x: np.ndarray  # (N, D) float32 in [0, 1]: the k-NN memory
    train_y: np.ndarray  # (N,) class indices into ``classes``
    mean: np.ndarray  # (D,) per-pixel mean of the training features
    scale: float  # one global standard deviation of the centred training features
    logistic: tuple[np.ndarray, np.ndarray]  # W (D, K), b (K,)
    mlp: tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]  # W1 (D, H), b1, W2 (H, K), b2
    seed: int = 0
    fit_seconds: dict[str, float] = field(default_factory=dict)

    # ---------------------------------------------------------------------------------- training
    @classmethod
    def fit(cls, images: Any, labels: Any, *, layout: str = "NHWC", value_range: Sequence[float] | None = None,
            seed: int = 0, k: int = 3, hidden: int = 128, epochs: int = 10, logistic_l2: float = 1e-2,
            logistic_steps: int = 100) -> "Judges":
        """Fit the three judges on labelled real images (images as in :func:`to_features`).

        k-NN memorises the images (``k`` neighbours, Euclidean, majority vote; a tie goes to the
        class with the nearer neighbours). Logistic regression: softmax cross-entropy + ``logistic_l2``
        * ||W||^2 / 2, full-batch Adam (lr 0.01) for ``logistic_steps`` steps from zero (convex: the
        seed does not matter). MLP: ``hidden`` ReLU units, He-initialised from ``seed``, minibatch Adam
        (batch 128, lr 2e-3, 1e-4 L2) for ``epochs`` epochs shuffled from ``seed``. About 2 s for
        9,000 MNIST digits on 2 idle cores. ``labels`` are integers; predictions use the same values.
        """
        x, shape = _prepare(images, layout, value_range)
        y_raw = np.asarray(labels)
        if y_raw.ndim != 1:
            raise ShapeError(f"labels must be a 1-D array of class labels, got shape {y_raw.shape}")
        if len(y_raw) != len(x):
            raise ShapeError(f"{len(x)} images but {len(y_raw)} labels")
        if not np.issubdtype(y_raw.dtype, np.integer):
            whole = np.issubdtype(y_raw.dtype, np.floating) and np.isfinite(y_raw).all() \
                and (y_raw == np.round(y_raw)).all()
            if whole:
                y_raw = y_raw.astype(np.int64)
            else:
                raise OnnxvizError(f"labels must be integers, got dtype {y_raw.dtype}")
        classes, y = np.unique(y_raw, return_inverse=True)
        if len(classes) < 2:
            raise OnnxvizError(f"the judges need at least 2 classes to tell apart, got {len(classes)}")
        if not (isinstance(k, (int, np.integer)) and 1 <= k <= len(x)):
            raise OnnxvizError(f"k must be an integer in 1..{len(x)} (the number of images), got {k!r}")
        if not (isinstance(hidden, (int, np.integer)) and hidden >= 1):
            raise OnnxvizError(f"hidden must be a positive integer, got {hidden!r}")
        if not (isinstance(epochs, (int, np.integer)) and epochs >= 1):
            raise OnnxvizError(f"epochs must be a positive integer, got {epochs!r}")
        seconds: dict[str, float] = {"knn": 0.0}
        mean = x.mean(axis=0)
        scale = float((x - mean).std()) or 1.0
        z = (x - mean) / np.float32(scale)
        t0 = time.perf_counter()
        logistic = _fit_logistic(z, y, len(classes), l2=logistic_l2, steps=logistic_steps)
        seconds["logistic"] = time.perf_counter() - t0
        t0 = time.perf_counter()
        mlp = _fit_mlp(z, y, len(classes), hidden=int(hidden), epochs=int(epochs), seed=int(seed))
        seconds["mlp"] = time.perf_counter() - t0
        return cls(classes=classes, picture_shape=shape, k=int(k), train_x=x, train_y=y.astype(np.int64),
                   mean=mean, scale=scale, logistic=logistic, mlp=mlp, seed=int(seed), fit_seconds=seconds)

    # ---------------------------------------------------------------------------------- inference
    def _features(self, images: Any, layout: str, value_range: Sequence[float] | None) -> np.ndarray:
        x, shape = _prepare(images, layout, value_range)
        if shape != self.picture_shape:
            h, w, c = self.picture_shape
            raise ShapeError(f"the judges were fitted on {h}x{w} pictures with {c} channel(s); "
                             f"got {shape[0]}x{shape[1]} with {shape[2]} (layout {layout})")
        return x

    def probabilities(self, images: Any, *, layout: str = "NHWC",
                      value_range: Sequence[float] | None = None) -> dict[str, np.ndarray]:
        """Each judge's ``(n, K)`` class probabilities (k-NN: vote fractions), columns in ``classes`` order."""
        x = self._features(images, layout, value_range)
        z = (x - self.mean) / np.float32(self.scale)
        return {"knn": self._knn_votes(x) / self.k, "logistic": _softmax(_logistic_logits(z, *self.logistic)),
                "mlp": _softmax(_mlp_forward(z, *self.mlp)[0])}

    def predict(self, images: Any, *, layout: str = "NHWC",
                value_range: Sequence[float] | None = None) -> dict[str, np.ndarray]:
        """Each judge's predicted label per image: ``{"knn": (n,), "logistic": (n,), "mlp": (n,)}``."""
        x = self._features(images, layout, value_range)
        z = (x - self.mean) / np.float32(self.scale)
        knn = np.argmax(self._knn_votes(x, tiebreak=True), axis=1)
        return {"knn": self.classes[knn],
                "logistic": self.classes[np.argmax(_logistic_logits(z, *self.logistic), axis=1)],
                "mlp": self.classes[np.argmax(_mlp_forward(z, *self.mlp)[0], axis=1)]}

    def score(self, images: Any, targets: Any, *, layout: str = "NHWC",
              value_range: Sequence[float] | None = None) -> JudgeScore:
        """How many (judge, image) pairs call the image its target: e.g. ``score(result.images,
        range(10), layout=result.layout)`` for the 10 class images of an MNIST model."""
        try:
            t = np.asarray(targets if isinstance(targets, np.ndarray) else list(targets))
        except TypeError:
            raise ShapeError(f"targets must be a sequence of labels, one per image, got {targets!r}") from None
        if t.ndim != 1:
            raise ShapeError(f"targets must be a 1-D array of labels, got shape {t.shape}")
        votes = self.predict(images, layout=layout, value_range=value_range)
        n = len(next(iter(votes.values())))
        if len(t) != n:
            raise ShapeError(f"{n} images but {len(t)} targets")
        hits = {name: v == t for name, v in votes.items()}
        per_judge = {name: int(h.sum()) for name, h in hits.items()}
        per_image = np.sum([h for h in hits.values()], axis=0).astype(np.int64)
        return JudgeScore(targets=t, votes=votes, recognised=int(sum(per_judge.values())),
                          total=len(votes) * n, per_judge=per_judge, per_image=per_image)

    # ---------------------------------------------------------------------------------- k-NN
    def _knn_votes(self, x: np.ndarray, tiebreak: bool = False) -> np.ndarray:
        return _knn_votes(x, self.train_x, self.train_y, len(self.classes), self.k, tiebreak)


def _knn_votes(x: np.ndarray, train_x: np.ndarray, train_y: np.ndarray, n_classes: int, k: int,
               tiebreak: bool, chunk: int = 512) -> np.ndarray:
    """``(n, K)`` counts of each class among the ``k`` nearest training images (Euclidean). With
    ``tiebreak``, neighbour of rank r (0 = nearest) adds (k - r) / (k (k + 1)) on top: less than half a
    vote in all, so it only decides between classes with equal counts, for the nearer ones."""
    train_sq = np.einsum("ij,ij->i", train_x, train_x)
    rank_bonus = (k - np.arange(k)) / (k * (k + 1.0)) if tiebreak else np.zeros(k)
    out = np.zeros((len(x), n_classes), np.float64)
    for start in range(0, len(x), chunk):
        q = x[start:start + chunk]
        d = train_sq[None, :] - 2.0 * (q @ train_x.T)  # + ||q||^2, the same for every neighbour
        near = np.argpartition(d, k - 1, axis=1)[:, :k] if k < d.shape[1] else np.argsort(d, axis=1)
        order = np.argsort(np.take_along_axis(d, near, axis=1), axis=1, kind="stable")
        near = np.take_along_axis(near, order, axis=1)
        rows = np.arange(len(q))[:, None]
        np.add.at(out[start:start + chunk], (rows, train_y[near]), 1.0 + rank_bonus[None, :])
    return out


# ------------------------------------------------------------------------------------------ models
def _softmax(logits: np.ndarray) -> np.ndarray:
    e = np.exp(logits - logits.max(axis=1, keepdims=True))
    return e / e.sum(axis=1, keepdims=True)


def _logistic_logits(z: np.ndarray, w: np.ndarray, b: np.ndarray) -> np.ndarray:
    return z @ w + b


def _mlp_forward(z: np.ndarray, w1, b1, w2, b2) -> tuple[np.ndarray, np.ndarray]:
    h = np.maximum(z @ w1 + b1, 0.0)
    return h @ w2 + b2, h


class _Adam:
    """Adam (Kingma & Ba 2015) over a list of arrays, updated in place."""

    def __init__(self, params: list[np.ndarray], lr: float, b1: float = 0.9, b2: float = 0.999, eps: float = 1e-8):
        self.params, self.lr, self.b1, self.b2, self.eps, self.t = params, lr, b1, b2, eps, 0
        self.m = [np.zeros_like(p) for p in params]
        self.v = [np.zeros_like(p) for p in params]

    def step(self, grads: list[np.ndarray]) -> None:
        self.t += 1
        c1, c2 = 1.0 - self.b1 ** self.t, 1.0 - self.b2 ** self.t
        for p, g, m, v in zip(self.params, grads, self.m, self.v):
            m *= self.b1
            m += (1.0 - self.b1) * g
            v *= self.b2
            v += (1.0 - self.b2) * g * g
            p -= (self.lr / c1) * m / (np.sqrt(v / c2) + self.eps)


def _fit_logistic(z: np.ndarray, y: np.ndarray, n_classes: int, *, l2: float,
                  steps: int) -> tuple[np.ndarray, np.ndarray]:
    n, d = z.shape
    w = np.zeros((d, n_classes), np.float32)
    b = np.zeros(n_classes, np.float32)
    onehot = np.eye(n_classes, dtype=np.float32)[y]
    opt = _Adam([w, b], lr=0.01)
    for _ in range(steps):
        g = (_softmax(z @ w + b) - onehot) / np.float32(n)  # d(mean CE)/d logits
        opt.step([z.T @ g + np.float32(l2) * w, g.sum(axis=0)])
    return w, b


def _fit_mlp(z: np.ndarray, y: np.ndarray, n_classes: int, *, hidden: int, epochs: int, seed: int,
             batch: int = 128, lr: float = 2e-3, l2: float = 1e-4):
    rng = np.random.default_rng(seed)
    n, d = z.shape
    w1 = (rng.standard_normal((d, hidden)) * np.sqrt(2.0 / d)).astype(np.float32)
    b1 = np.zeros(hidden, np.float32)
    w2 = (rng.standard_normal((hidden, n_classes)) * np.sqrt(2.0 / hidden)).astype(np.float32)
    b2 = np.zeros(n_classes, np.float32)
    onehot = np.eye(n_classes, dtype=np.float32)[y]
    opt = _Adam([w1, b1, w2, b2], lr=lr)
    decay = np.float32(l2)
    for _ in range(epochs):
        order = rng.permutation(n)
        for start in range(0, n, batch):
            idx = order[start:start + batch]
            zb = z[idx]
            logits, h = _mlp_forward(zb, w1, b1, w2, b2)
            g = (_softmax(logits) - onehot[idx]) / np.float32(len(idx))
            gw2 = h.T @ g + decay * w2
            gh = (g @ w2.T) * (h > 0)
            opt.step([zb.T @ gh + decay * w1, gh.sum(axis=0), gw2, g.sum(axis=0)])
    return w1, b1, w2, b2
