"""What does the shipped shapes_cnn take as evidence of a triangle? Lone strokes against closed shapes.

For each colour, ``--n`` images (default 300) of one kind of mark on a flat grey background with
pixel noise, at random positions and angles, drawn in the colour of the class the way
``onnxviz.datasets.make_shapes`` paints shapes:

- ``bar``: one straight stroke, 3 px wide, 20-36 px long (one edge of a triangle, no shape);
- ``corner``: two such strokes meeting at 60 degrees (one corner of a triangle);
- ``outline``: a hollow triangle (three strokes);
- ``filled``: the shapes of ``make_shapes`` itself (the training distribution), for reference.

Columns: the share of images whose top class is each class, and the mean p(colour triangle). If a
lone bar reads as a triangle with p ~ 1, the model's triangle evidence is straight edges, and a
faithful class visualization draws edges, not closed triangles. Not a test.

    python bench/shapes_evidence.py [--n 300] [--seed 0]
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

import onnxviz  # noqa: E402
from onnxviz.datasets import SHAPE_CLASSES, make_shapes  # noqa: E402

SIZE = 64
COLOURS = ("red", "green", "blue")


def _strokes(kind: str, colour: int, n: int, rng: np.random.Generator) -> np.ndarray:
    """``n`` NHWC float images in [0, 1] with one mark of ``kind`` each."""
    yy, xx = np.mgrid[0:SIZE, 0:SIZE].astype(np.float32)

    def stroke(x0, y0, angle, length):
        u = (xx - x0) * np.cos(angle) + (yy - y0) * np.sin(angle)
        v = -(xx - x0) * np.sin(angle) + (yy - y0) * np.cos(angle)
        return (u > 0) & (u < length) & (np.abs(v) < 1.5)

    images = np.empty((n, SIZE, SIZE, 3), np.float32)
    for i in range(n):
        image = np.full((SIZE, SIZE, 3), rng.uniform(0.15, 0.85), np.float32)
        paint = rng.uniform(0.0, 0.3, 3)
        paint[colour] = rng.uniform(0.7, 1.0)
        cx, cy = rng.uniform(20, 44, 2)
        theta = rng.uniform(0, 2 * np.pi)
        length = rng.uniform(20, 36)
        if kind == "bar":
            mask = stroke(cx - length / 2 * np.cos(theta), cy - length / 2 * np.sin(theta), theta, length)
        elif kind == "corner":
            mask = stroke(cx, cy, theta, length) | stroke(cx, cy, theta + np.pi / 3, length)
        else:  # outline: an equilateral triangle of circumradius length / 2
            corners = [(cx + length / 2 * np.cos(theta + k * 2 * np.pi / 3),
                        cy + length / 2 * np.sin(theta + k * 2 * np.pi / 3)) for k in range(3)]
            mask = np.zeros((SIZE, SIZE), bool)
            for k in range(3):
                (x0, y0), (x1, y1) = corners[k], corners[(k + 1) % 3]
                mask |= stroke(x0, y0, np.arctan2(y1 - y0, x1 - x0), np.hypot(x1 - x0, y1 - y0))
        image[mask] = paint
        images[i] = np.clip(image + rng.normal(0, 0.03, image.shape), 0, 1)
    return images


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, default=300)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    rng = np.random.default_rng(args.seed)
    session = onnxviz.runtime.make_session(onnxviz.graph.load_model(REPO / "models" / "shapes_cnn.onnx"))
    name = session.get_inputs()[0].name

    def probabilities(nhwc: np.ndarray) -> np.ndarray:
        return session.run(None, {name: nhwc.transpose(0, 3, 1, 2).astype(np.float32)})[0]

    shapes, labels = make_shapes(9 * args.n // 3, size=SIZE, seed=args.seed)
    print(f"| colour | mark | top class: share of {args.n} | mean p(colour triangle) |")
    print("|---|---|---|---|")
    for colour, colour_name in enumerate(COLOURS):
        for kind in ("bar", "corner", "outline", "filled"):
            if kind == "filled":
                pick = labels == colour * 3 + 2
                p = probabilities(shapes[pick] / 255.0)
            else:
                p = probabilities(_strokes(kind, colour, args.n, rng))
            counts = np.bincount(p.argmax(1), minlength=len(SHAPE_CLASSES))
            shares = ", ".join(f"{SHAPE_CLASSES[c]} {counts[c] / len(p):.2f}" for c in np.argsort(-counts) if counts[c])
            label = "filled (make_shapes)" if kind == "filled" else kind
            print(f"| {colour_name} | {label} | {shares} | {p[:, colour * 3 + 2].mean():.2f} |")


if __name__ == "__main__":
    main()
