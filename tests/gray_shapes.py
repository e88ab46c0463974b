"""A 64x64 grayscale, 7-class test classifier like the third-party Keras ``.h5`` models of issue 12.

``make_gray_shapes`` draws the images (numpy only): one bright shape of seven kinds on a darker
background with a random gradient and pixel noise, at a random position, size and rotation.
``python tests/gray_shapes.py`` trains a small Keras CNN on them (about a minute on 2 CPU cores),
saves it as a legacy ``.h5`` file, converts that with ``converters.to_onnx`` (the path a user's
``.h5`` takes) and writes ``tests/data/gray_shapes_cnn.onnx``, which the tests read (no training
framework needed to run them). The input is NHWC float32 in [0, 1]; the output a softmax.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent
REPO = HERE.parent
MODEL_PATH = HERE / "data" / "gray_shapes_cnn.onnx"
GRAY_CLASSES = ("disk", "square", "triangle", "ring", "cross", "bar", "frame")
SIZE = 64


def make_gray_shapes(n: int, size: int = SIZE, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """``n`` images (float32 NHWC ``(n, size, size, 1)`` in [0, 1]) and their labels (balanced)."""
    rng = np.random.default_rng(seed)
    labels = rng.permutation(np.arange(n) % len(GRAY_CLASSES)).astype(np.int64)
    base = rng.uniform(0.05, 0.45, size=(n, 1, 1))
    contrast = rng.uniform(0.3, 0.55, size=(n, 1, 1))
    angle = rng.uniform(0, 2 * np.pi, size=(n, 1, 1))
    slope = rng.uniform(0.0, 0.25, size=(n, 1, 1))
    r = rng.uniform(0.18, 0.32, size=n) * size
    margin = r * 1.2 + 1
    cx = rng.uniform(margin, size - 1 - margin)[:, None, None]
    cy = rng.uniform(margin, size - 1 - margin)[:, None, None]
    theta = rng.uniform(0, 2 * np.pi, size=(n, 1, 1))
    sigma = rng.uniform(0.0, 0.05, size=(n, 1, 1))
    noise = rng.standard_normal(size=(n, size, size))

    grid = np.arange(size) / (size - 1) - 0.5
    ramp = np.cos(angle) * grid[None, None, :] + np.sin(angle) * grid[None, :, None]
    background = base + slope * ramp
    px = np.arange(size)[None, None, :] - cx
    py = np.arange(size)[None, :, None] - cy
    u = np.cos(theta) * px + np.sin(theta) * py
    v = np.cos(theta) * py - np.sin(theta) * px
    rr = r[:, None, None]
    distance = np.empty((n, size, size))
    for k, kind in enumerate(GRAY_CLASSES):
        s = labels == k
        uu, vv, rk = u[s], v[s], rr[s]
        if kind == "disk":
            d = np.hypot(uu, vv) - rk
        elif kind == "square":
            d = np.maximum(abs(uu), abs(vv)) - 0.85 * rk
        elif kind == "triangle":
            edges = [np.cos(a) * uu + np.sin(a) * vv for a in np.pi / 2 + np.arange(3) * 2 * np.pi / 3]
            d = np.maximum(np.maximum(edges[0], edges[1]), edges[2]) - 0.6 * rk
        elif kind == "ring":
            d = abs(np.hypot(uu, vv) - 0.8 * rk) - 0.2 * rk
        elif kind == "cross":
            d = np.minimum(np.maximum(abs(uu) - rk, abs(vv) - 0.25 * rk),
                           np.maximum(abs(vv) - rk, abs(uu) - 0.25 * rk))
        elif kind == "bar":
            d = np.maximum(abs(uu) - 1.1 * rk, abs(vv) - 0.3 * rk)
        else:  # frame: a hollow square
            d = abs(np.maximum(abs(uu), abs(vv)) - 0.75 * rk) - 0.18 * rk
        distance[s] = d
    alpha = np.clip(0.5 - distance, 0.0, 1.0)
    image = background + alpha * contrast + noise * sigma
    return np.clip(image, 0.0, 1.0).astype(np.float32)[..., None], labels


def train(out: Path = MODEL_PATH, n_train: int = 4200, epochs: int = 14, seed: int = 0) -> dict:
    """Train the Keras CNN, save it as .h5, convert it to ONNX at ``out``; returns what happened."""
    import keras
    from keras import layers

    sys.path.insert(0, str(REPO))
    from converters import to_onnx

    keras.utils.set_random_seed(seed)
    x, y = make_gray_shapes(n_train, seed=seed)
    xv, yv = make_gray_shapes(700, seed=seed + 1000)
    model = keras.Sequential([
        keras.Input((SIZE, SIZE, 1), name="image"),
        layers.Conv2D(16, 3, padding="same", activation="relu", name="conv1"),
        layers.MaxPooling2D(2, name="pool1"),
        layers.Conv2D(32, 3, padding="same", activation="relu", name="conv2"),
        layers.MaxPooling2D(2, name="pool2"),
        layers.Conv2D(48, 3, padding="same", activation="relu", name="conv3"),
        layers.MaxPooling2D(2, name="pool3"),
        layers.Conv2D(64, 3, padding="same", activation="relu", name="conv4"),
        layers.GlobalAveragePooling2D(name="gap"),
        layers.Dense(len(GRAY_CLASSES), activation="softmax", name="preds"),
    ])
    model.compile(optimizer=keras.optimizers.Adam(3e-3), loss="sparse_categorical_crossentropy",
                  metrics=["accuracy"])
    started = time.time()
    model.fit(x, y, batch_size=64, epochs=epochs, verbose=2, validation_data=(xv, yv))
    seconds = time.time() - started
    accuracy = float(np.mean(model.predict(xv, verbose=0).argmax(axis=1) == yv))
    with tempfile.TemporaryDirectory() as tmp:
        h5 = Path(tmp) / "gray_shapes_cnn.h5"
        model.save(h5)  # the legacy format third-party models come in
        out.parent.mkdir(parents=True, exist_ok=True)
        result = to_onnx(h5, output=out)  # no range, no class names: what a user's .h5 gives
    return {"accuracy": accuracy, "seconds": seconds, "parity": result.max_abs_diff, "out": str(out)}


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", type=Path, default=MODEL_PATH)
    parser.add_argument("--epochs", type=int, default=14)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    print(train(args.out, epochs=args.epochs, seed=args.seed))
