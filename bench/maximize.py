"""Activation maximization speed: onnxviz vs a tf-keras-vis-style TensorFlow loop, same model, same work.

Workload (issue 4): the 10 class logits of the shipped MNIST CNN, 200 steps, one batch of 10 images.

- onnxviz: ``maximize`` with its defaults (pixel/sigmoid, Adam, pad+jitter/scale/rotate, TV + L1), at 200
  steps, at its default step count, and at the fewest steps whose final logits (mean and min) are at
  least those of the reference's best run.
- tf-keras-vis itself (the reference when it can be imported: it needs ``tf_keras``, e.g.
  ``pip install tf-keras-vis==0.8.7 tf-keras==<your TensorFlow version>`` in a venv given by
  ``--tf-python``): its ``ActivationMaximization`` with every default, on a ``tf_keras`` twin.
- tf-keras-vis style: the loop tf-keras-vis 0.8 runs, written here on the same Keras model (weights
  copied out of the ONNX file, outputs verified equal): eager ``tf.GradientTape`` on a copy of the model
  whose softmax is swapped for linear, RMSprop(lr 1.0, rho 0.999), its default input modifiers applied
  to the images each step outside the tape (random roll by up to 4 px, "jitter 4", and a random
  rotation by up to 1 degree with scipy, "rotate 1"), total variation (weight 1) + L1 norm (weight 0.3),
  both divided by the number of values as tf-keras-vis does, seed input uniform in the range, result
  clipped to the range. Also the same loop with the tape part compiled by ``tf.function`` (what a
  careful TF user would write).

Printed: wall time, per-step time, final logits (on the final images, untransformed) and the softmax
probability of the target class; and onnxviz's per-step time against one plain onnxruntime forward
pass of the same batch. Timings are the median of ``--repeats`` runs, interleaved; TensorFlow runs in
a child process (its idle thread pools spin and would slow onnxruntime down in a shared process; the
engine itself never imports it). Not a test.

    python bench/maximize.py [--model models/mnist_cnn.onnx] [--steps 200] [--repeats 3]
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import numpy as np  # noqa: E402


def keras_from_onnx(path: Path):
    """The Keras tutorial CNN with its weights copied from the ONNX initializers."""
    import keras
    import onnx
    from onnx import numpy_helper

    sys.path.insert(0, str(REPO / "models"))
    from train_mnist import build_model

    keras_file = path.with_suffix(".keras")
    if keras_file.exists():
        return keras.models.load_model(keras_file)
    model = build_model()
    proto = onnx.load(str(path))
    inits = {t.name: numpy_helper.to_array(t) for t in proto.graph.initializer}
    producer = {o: n for n in proto.graph.node for o in n.output}

    def weight(name):
        if name in inits:
            return inits[name]
        node = producer[name]  # a Constant node
        return numpy_helper.to_array(node.attribute[0].t)

    convs = [n for n in proto.graph.node if n.op_type == "Conv"]
    matmuls = [n for n in proto.graph.node if n.op_type in ("MatMul", "Gemm")]
    adds = {n.input[0]: n for n in proto.graph.node if n.op_type == "Add"}
    kconvs = [l for l in model.layers if l.__class__.__name__ == "Conv2D"]
    kdense = [l for l in model.layers if l.__class__.__name__ == "Dense"]
    for layer, node in zip(kconvs, convs):
        w = weight(node.input[1]).transpose(2, 3, 1, 0)  # OIHW -> HWIO
        layer.set_weights([w, weight(node.input[2])])
    for layer, node in zip(kdense, matmuls):
        w = weight(node.input[1])
        b = weight(node.input[2]) if node.op_type == "Gemm" else weight(adds[node.output[0]].input[1])
        layer.set_weights([w, b.reshape(-1)])
    return model


def tf_keras_vis_loop(linear_model, steps: int, seed: int, compiled: bool):
    """tf-keras-vis' ActivationMaximization loop with its defaults (issue 4), on 10 classes at once.

    Per step, as tf-keras-vis 0.8 does it: the input modifiers change the current images in place,
    outside the tape (Jitter(4): ``tf.roll`` by integers in [-4, 4); Rotate2D(1): scipy's bilinear
    ``ndimage.rotate`` by a uniform angle in [-1, 1] degrees, reflect mode); the images are copied
    into the variable; the tape records the model and the regularizers; RMSprop updates the
    variable. The images are clipped to the input range only for the result. ``compiled``: the tape
    part in ``tf.function`` (what a careful TF user would add; the modifiers stay numpy/eager)."""
    import tensorflow as tf
    from scipy.ndimage import rotate

    tf.random.set_seed(seed)
    rng = np.random.default_rng(seed)
    values = rng.uniform(0.0, 1.0, size=(10, 28, 28, 1)).astype(np.float32)
    x = tf.Variable(values)
    opt = tf.keras.optimizers.RMSprop(learning_rate=1.0, rho=0.999)
    classes = tf.constant(np.arange(10))
    size = float(28 * 28)

    def step():
        with tf.GradientTape(watch_accessed_variables=False) as tape:
            tape.watch(x)
            seen = x.value()
            logits = linear_model(seen, training=False)
            score = tf.gather(logits, classes, axis=1, batch_dims=1)
            tv = tf.image.total_variation(seen) / size  # TotalVariation2D(weight=1)
            l1 = tf.reduce_sum(tf.abs(tf.reshape(seen, (10, -1))), axis=1) / size  # Norm(weight=0.3, p=1)
            loss = -score + 1.0 * tv + 0.3 * l1
        grads = tape.gradient(loss, x)
        opt.apply_gradients([(grads, x)])
        return score

    run = tf.function(step) if compiled else step
    shifts = rng.integers(-4, 4, size=(steps, 2))
    angles = rng.uniform(-1.0, 1.0, size=steps)

    def one(s):
        nonlocal values
        moved = tf.roll(values, shift=tuple(int(v) for v in shifts[s]), axis=(1, 2)).numpy()  # Jitter(4)
        values = rotate(moved, angles[s], axes=(1, 2), reshape=False, order=1, mode="reflect", prefilter=False)
        x.assign(values)
        run()
        values = x.numpy()

    one(0)  # warm-up / trace (its effect is part of the run, as in tf-keras-vis)
    t0 = time.perf_counter()
    for s in range(1, steps):
        one(s)
    seconds = (time.perf_counter() - t0) * steps / max(1, steps - 1)
    return np.clip(values, 0.0, 1.0), seconds


def real_tkv_part(model: Path, steps: int, seed: int, out: Path) -> None:
    """Child process (``TF_USE_LEGACY_KERAS=1``): tf-keras-vis itself, when it is installed with
    ``tf_keras`` (it runs on Keras 2 only): ``ActivationMaximization`` with its defaults on a
    ``tf_keras`` twin of the model (weights copied from the Keras 3 twin, outputs checked equal),
    softmax swapped for linear by its own ``ReplaceToLinear``, ``CategoricalScore`` of the 10
    classes, seed input uniform in [0, 1], ``input_range=(0, 1)``. Writes ``available=False`` when
    tf-keras-vis or tf_keras cannot be imported."""
    try:
        import tensorflow as tf
        import tf_keras
        import tf_keras_vis
        from tf_keras_vis.activation_maximization import ActivationMaximization
        from tf_keras_vis.utils.model_modifiers import ReplaceToLinear
        from tf_keras_vis.utils.scores import CategoricalScore
    except ImportError as exc:
        np.savez(out, available=False, reason=str(exc))
        return
    from tf_keras import layers

    source = keras_from_onnx(model)
    twin = tf_keras.Sequential([
        tf_keras.Input(shape=(28, 28, 1)), layers.Conv2D(32, 3, activation="relu"),
        layers.Conv2D(64, 3, activation="relu"), layers.MaxPooling2D(2), layers.Dropout(0.25), layers.Flatten(),
        layers.Dense(128, activation="relu"), layers.Dropout(0.5), layers.Dense(10, activation="softmax")])
    for dst, src in zip([l for l in twin.layers if l.weights], [l for l in source.layers if l.weights]):
        dst.set_weights(src.get_weights())
    check = np.random.default_rng(1).uniform(0, 1, (16, 28, 28, 1)).astype(np.float32)
    diff = float(np.abs(twin.predict(check, verbose=0) - source.predict(check, verbose=0)).max())
    tf.random.set_seed(seed)
    np.random.seed(seed)
    am = ActivationMaximization(twin, model_modifier=ReplaceToLinear(), clone=True)
    start = np.random.default_rng(seed).uniform(0.0, 1.0, size=(10, 28, 28, 1)).astype(np.float32)
    t0 = time.perf_counter()
    images = am(CategoricalScore(list(range(10))), seed_input=start, input_range=(0.0, 1.0), steps=steps)
    seconds = time.perf_counter() - t0
    np.savez(out, available=True, images=np.clip(np.asarray(images), 0.0, 1.0), seconds=seconds, diff=diff,
             version=f"tf-keras-vis {tf_keras_vis.__version__}", keras=f"tf_keras {tf_keras.__version__}")


def tf_part(model: Path, steps: int, seed: int, out: Path) -> None:
    """Child process: the Keras twin (checked against the ONNX model) and both TF loops; writes the
    images and timings to ``out`` (.npz). TensorFlow lives in this process only: its thread pools keep
    spinning after work and would slow onnxruntime down in a shared process."""
    import keras
    import onnx
    import onnxruntime as ort

    from onnxviz.rewrite import to_logits

    kmodel = keras_from_onnx(model)
    check = np.random.default_rng(1).uniform(0, 1, (16, 28, 28, 1)).astype(np.float32)
    probs = ort.InferenceSession(str(model), providers=["CPUExecutionProvider"])
    logits = ort.InferenceSession(to_logits(onnx.load(str(model))).SerializeToString(),
                                  providers=["CPUExecutionProvider"])
    name = probs.get_inputs()[0].name
    diff = float(np.abs(kmodel.predict(check, verbose=0) - probs.run(None, {name: check})[0]).max())
    kmodel.layers[-1].activation = keras.activations.linear  # keras-vis' "swap softmax for linear"
    kdiff = float(np.abs(kmodel(check, training=False).numpy() - logits.run(None, {name: check})[0]).max())
    eager, eager_s = tf_keras_vis_loop(kmodel, steps, seed, compiled=False)
    compiled, compiled_s = tf_keras_vis_loop(kmodel, steps, seed, compiled=True)
    np.savez(out, eager=eager, eager_s=eager_s, compiled=compiled, compiled_s=compiled_s, diff=diff, kdiff=kdiff)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", type=Path, default=REPO / "models" / "mnist_cnn.onnx")
    parser.add_argument("--steps", type=int, default=200)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--tf-python", default=sys.executable,
                        help="the Python that runs the TensorFlow side (e.g. a venv with tf-keras-vis and tf_keras)")
    parser.add_argument("--tf-part", type=Path, default=None, help=argparse.SUPPRESS)
    parser.add_argument("--tkv-part", type=Path, default=None, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.tf_part is not None:
        tf_part(args.model, args.steps, args.seed, args.tf_part)
        return 0
    if args.tkv_part is not None:
        real_tkv_part(args.model, args.steps, args.seed, args.tkv_part)
        return 0

    import subprocess
    import tempfile

    import onnx
    import onnxruntime as ort

    from onnxviz.maximize import Maximizer, default_settings
    from onnxviz.rewrite import to_logits

    proto_path = str(args.model)
    probs_session = ort.InferenceSession(proto_path, providers=["CPUExecutionProvider"])
    logits_session = ort.InferenceSession(to_logits(onnx.load(proto_path)).SerializeToString(),
                                          providers=["CPUExecutionProvider"])
    name = probs_session.get_inputs()[0].name

    def verdict(images):
        logits = logits_session.run(None, {name: images})[0][np.arange(10), np.arange(10)]
        probs = probs_session.run(None, {name: images})[0][np.arange(10), np.arange(10)]
        return logits, probs

    engine = Maximizer(str(args.model), providers="cpu")
    default_steps = default_settings(1, 28, 28).steps
    engine.run(None, "all", steps=2)  # sessions built and warm
    rows: dict[str, list] = {}

    def record(label, seconds, images, steps):
        logits, probs = verdict(images)
        rows.setdefault(label, []).append((seconds, steps, logits, probs))

    # the ceiling: the step's onnxruntime gradient run alone, back to back (no numpy between),
    # timed right after each onnxviz run
    fn = engine.function(next(iter(engine._functions))[0])
    xs = np.ascontiguousarray(engine.run(None, "all", steps=1, seed=args.seed).images, dtype=np.float32)
    cot = np.eye(10, dtype=np.float32)
    for _ in range(20):
        fn(xs, cot)

    def ceiling():
        t0 = time.perf_counter()
        for _ in range(args.steps):
            fn(xs, cot)
        rows.setdefault(f"its gradient run alone x{args.steps} (ceiling)", []).append(
            (time.perf_counter() - t0, args.steps, None, None))

    eager_label = f"tf-keras-vis-style eager ({args.steps} steps)"
    real_label = None
    child = [args.tf_python, __file__, "--model", str(args.model), "--steps", str(args.steps), "--seed", str(args.seed)]
    with tempfile.TemporaryDirectory() as tmp:
        for rep in range(args.repeats):
            r = engine.run(None, "all", steps=args.steps, seed=args.seed)
            record(f"onnxviz ({args.steps} steps)", r.seconds, r.images, args.steps)
            ceiling()
            r = engine.run(None, "all", seed=args.seed)
            record(f"onnxviz (default {default_steps} steps)", r.seconds, r.images, default_steps)
            out = Path(tmp) / f"tf{rep}.npz"
            proc = subprocess.run(child + ["--tf-part", str(out)], capture_output=True, text=True)
            if proc.returncode != 0:
                print(proc.stderr[-3000:])
                return 1
            tf = np.load(out)
            real = Path(tmp) / f"tkv{rep}.npz"
            proc = subprocess.run(child + ["--tkv-part", str(real)], capture_output=True, text=True,
                                  env={**os.environ, "TF_USE_LEGACY_KERAS": "1"})
            if proc.returncode != 0:
                print(proc.stderr[-3000:])
                return 1
            tkv = np.load(real)
            if not bool(tkv["available"]):
                if rep == 0:
                    print(f"tf-keras-vis itself not run ({tkv['reason']}); the tf-keras-vis-style loop is the "
                          "reference (install tf-keras-vis and tf_keras, or give --tf-python)")
            else:
                real_label = f"{tkv['version']} itself ({args.steps} steps)"
                if rep == 0:
                    print(f"{tkv['version']} on {tkv['keras']}: tf_keras twin vs Keras twin, max |probability diff| "
                          f"{float(tkv['diff']):.2e}")
                record(real_label, float(tkv["seconds"]), tkv["images"], args.steps)
            if rep == 0:
                print(f"Keras twin vs ONNX: max |probability diff| {float(tf['diff']):.2e}, "
                      f"max |logit diff| {float(tf['kdiff']):.2e}")
            record(eager_label, float(tf["eager_s"]), tf["eager"], args.steps)
            record(f"TF loop in tf.function ({args.steps} steps)", float(tf["compiled_s"]), tf["compiled"], args.steps)

    reference = real_label or eager_label
    # the fewest onnxviz steps that reach the reference's final logits (mean and min of its best run)
    tf_logits = max((r[2] for r in rows[reference]), key=lambda v: v.mean())
    for k in (4, 8, 12, 16, 24, 32, 48, 64, 96, 128, args.steps):
        r = engine.run(None, "all", steps=k, seed=args.seed)
        logits, _ = verdict(r.images)
        if logits.mean() >= tf_logits.mean() and logits.min() >= tf_logits.min():
            label = f"onnxviz, fewest steps matching it ({k})"
            record(label, r.seconds, r.images, k)
            for _ in range(args.repeats - 1):
                r = engine.run(None, "all", steps=k, seed=args.seed)
                record(label, r.seconds, r.images, k)
            break

    # plain forward pass of the same batch, for the per-step ratio
    batch = np.random.default_rng(0).uniform(0, 1, (10, 28, 28, 1)).astype(np.float32)
    for _ in range(20):
        logits_session.run(None, {name: batch})
    fwd = []
    for _ in range(args.repeats):
        t0 = time.perf_counter()
        for _ in range(100):
            logits_session.run(None, {name: batch})
        fwd.append((time.perf_counter() - t0) / 100)
    forward_ms = statistics.median(fwd) * 1e3

    ref = statistics.median(s for s, *_ in rows[reference])
    print(f"\nworkload: 10 classes of {args.model.name}, batch of 10, {args.repeats} repeats (median); "
          f"{os.cpu_count()} CPUs")
    print(f"reference (1.0x): {reference}; logits: mean over runs of the 10 final logits, min over runs")
    header = f"{'method':44} {'wall s':>8} {'ms/step':>8} {'vs reference':>15} {'logit mean':>10} " \
             f"{'logit min':>9} {'prob min':>8}"
    print(header)
    print("-" * len(header))
    for label, runs in rows.items():
        seconds = statistics.median(s for s, *_ in runs)
        steps = runs[0][1]
        line = f"{label:44} {seconds:8.2f} {seconds / steps * 1e3:8.2f} {ref / seconds:14.1f}x"
        if runs[0][2] is not None:
            mean = float(np.mean([r[2].mean() for r in runs]))
            low = float(min(r[2].min() for r in runs))
            prob = float(min(r[3].min() for r in runs))
            line += f" {mean:10.2f} {low:9.2f} {prob:8.3f}"
        print(line)
    step_ms = statistics.median(s for s, *_ in rows[f"onnxviz ({args.steps} steps)"]) / args.steps * 1e3
    print(f"\nonnxruntime forward pass, batch 10: {forward_ms:.2f} ms; onnxviz step (gradient run + "
          f"parameterization, warp, regularizers, Adam): {step_ms:.2f} ms = {step_ms / forward_ms:.1f} forward passes")
    return 0


if __name__ == "__main__":
    sys.exit(main())
