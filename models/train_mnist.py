"""Train the shipped MNIST CNN in Keras and export it to models/mnist_cnn.onnx through converters.

The architecture is exactly the one of the keras-vis MNIST tutorial:
Conv2D(32, 3x3, relu) -> Conv2D(64, 3x3, relu) -> MaxPooling2D(2x2) -> Dropout(0.25) -> Flatten
-> Dense(128, relu) -> Dropout(0.5) -> Dense(10, softmax, name="preds"); input 28x28x1 in [0, 1].

    python models/train_mnist.py --data ../shared/data/mnist    # offline: the IDX files of the 10k split
    python models/train_mnist.py                                 # online: keras.datasets.mnist

With ``--data`` the model trains on the first 9,000 images of the t10k split and is evaluated on the
last 1,000 (never seen in training). The same training images then fit the model's image prior,
``models/mnist_cnn.prior.npz`` (a Gaussian prior, see ``onnxviz.priors``): a fitted prior is a model
artifact like the weights. ``--prior-only`` refits just the prior for the existing model file. Without it, it trains on the 60,000 training images and is
evaluated on the same last 1,000 test images, so the two numbers are comparable.
"""

from __future__ import annotations

import argparse
import hashlib
import os
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:  # run as a script from a checkout: make onnxviz/converters importable
    sys.path.insert(0, str(REPO))

N_TRAIN = 9000  # first images of the t10k split used for training with --data
N_HELDOUT = 1000  # last images of the t10k split, held out for evaluation
CLASS_NAMES = [str(i) for i in range(10)]


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--data", type=Path, default=None,
                        help="folder with the MNIST IDX files (t10k-images-idx3-ubyte.gz, t10k-labels-idx1-ubyte.gz); "
                             "default: download with keras.datasets.mnist")
    parser.add_argument("--epochs", type=int, default=8)
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", type=Path, default=REPO / "models" / "mnist_cnn.onnx")
    parser.add_argument("--prior-only", action="store_true",
                        help="only fit the image prior for the existing --out model from the training images")
    return parser.parse_args(argv)


def write_prior(model_path: Path, x_train) -> Path:
    """Fit the Gaussian image prior on the training images and store it beside the model."""
    import numpy as np

    import onnxviz
    from onnxviz.priors import fit_prior, prior_path_for, save_prior

    model = onnxviz.load_model(model_path)
    prior = fit_prior(np.asarray(x_train, np.float64).transpose(0, 3, 1, 2), kind="gaussian", model=model)
    path = save_prior(prior, prior_path_for(model_path))
    info = prior.describe()
    print(f"prior: {info['components']} components ({info['explained_variance']:.1%} of the variance) "
          f"from {info['samples']} training images; wrote {path}")
    return path


def load_data(data_dir: Path | None):
    """(x_train, y_train, x_eval, y_eval): float32 images (N, 28, 28, 1) in [0, 1], int labels."""
    import numpy as np

    if data_dir is not None:
        from onnxviz.datasets import load_mnist

        images, labels = load_mnist(data_dir, split="t10k")
        if len(images) < N_TRAIN + N_HELDOUT:
            raise SystemExit(f"{data_dir}: need {N_TRAIN + N_HELDOUT} images, found {len(images)}")
        train_images, train_labels = images[:N_TRAIN], labels[:N_TRAIN]
        eval_images, eval_labels = images[-N_HELDOUT:], labels[-N_HELDOUT:]
    else:
        import keras

        (train_images, train_labels), (test_images, test_labels) = keras.datasets.mnist.load_data()
        eval_images, eval_labels = test_images[-N_HELDOUT:], test_labels[-N_HELDOUT:]

    def prepare(images):
        return (images.astype(np.float32) / 255.0)[..., None]

    return (prepare(train_images), train_labels.astype(np.int64),
            prepare(eval_images), eval_labels.astype(np.int64))


def build_model():
    """The tutorial's CNN; layer names are given so the export does not depend on Keras' counters."""
    import keras
    from keras import layers

    return keras.Sequential(
        [
            keras.Input(shape=(28, 28, 1), name="image"),
            layers.Conv2D(32, (3, 3), activation="relu", name="conv2d"),
            layers.Conv2D(64, (3, 3), activation="relu", name="conv2d_1"),
            layers.MaxPooling2D((2, 2), name="max_pooling2d"),
            layers.Dropout(0.25, name="dropout"),
            layers.Flatten(name="flatten"),
            layers.Dense(128, activation="relu", name="dense"),
            layers.Dropout(0.5, name="dropout_1"),
            layers.Dense(10, activation="softmax", name="preds"),
        ],
        name="mnist_cnn",
    )


def onnx_accuracy(path: Path, images, labels) -> float:
    """Accuracy of the exported file, run by onnxruntime alone (what users of onnxviz get)."""
    import numpy as np
    import onnxruntime as ort

    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    probs = session.run(None, {session.get_inputs()[0].name: images})[0]
    return float(np.mean(probs.argmax(axis=1) == labels))


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if args.prior_only:
        write_prior(args.out, load_data(args.data)[0])
        return 0
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    import keras

    import converters

    keras.utils.set_random_seed(args.seed)
    try:
        import tensorflow as tf

        tf.config.experimental.enable_op_determinism()
    except (ImportError, AttributeError):
        pass

    x_train, y_train, x_eval, y_eval = load_data(args.data)
    model = build_model()
    model.compile(optimizer=keras.optimizers.Adam(1e-3), loss="sparse_categorical_crossentropy", metrics=["accuracy"])
    started = time.perf_counter()
    model.fit(x_train, y_train, batch_size=args.batch_size, epochs=args.epochs, verbose=2, shuffle=True)
    train_seconds = time.perf_counter() - started
    _, keras_accuracy = model.evaluate(x_eval, y_eval, batch_size=500, verbose=0)

    result = converters.to_onnx(
        model,
        output=args.out,
        input_range=(0.0, 1.0),
        class_names=CLASS_NAMES,
        seed=args.seed,
    )
    digest = hashlib.sha256(args.out.read_bytes()).hexdigest()
    accuracy = onnx_accuracy(args.out, x_eval, y_eval)
    opset = next(op.version for op in result.model.opset_import if op.domain in ("", "ai.onnx"))
    source = "first 9,000 of t10k" if args.data is not None else "the 60,000 training images"

    print(f"trained on {source} for {args.epochs} epochs in {train_seconds:.0f} s (seed {args.seed})")
    print(f"held-out accuracy (last {N_HELDOUT} of t10k): keras {keras_accuracy:.4f}, onnxruntime {accuracy:.4f}")
    print(f"parity: max abs diff {result.max_abs_diff:.3g}, max rel diff {result.max_rel_diff:.3g}")
    print(f"source: {result.source_version}; opset {opset}")
    print(f"nodes: {[n.name for n in result.model.graph.node]}")
    print(f"wrote {args.out}")
    print(f"sha256 {digest}")
    write_prior(args.out, x_train)
    return 0


if __name__ == "__main__":
    sys.exit(main())
