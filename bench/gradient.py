#!/usr/bin/env python
"""How fast are onnxviz gradient graphs? Prints tables (never asserts):

1. step / forward: one run of the gradient model (``GradientFunction``: target + input gradient)
   against one onnxruntime run of the logits model, for the shipped mnist_cnn (batch 1, 10) and a
   ResNet50 (keras.applications, weights=None, 224x224, batch 1). Physical floor ~3; target <= 3.5.
2. onnxviz step vs TensorFlow GradientTape in ``tf.function`` on the same Keras model and batch
   (mnist: the architecture of models/train_mnist.py rebuilt with the ONNX weights copied in).
   Target: >= 4x faster at batch 1, >= 1.5x at batch 10.
3. vs onnx-ad (PyPI) where it runs: it needs a static batch and opset >= 16, so it gets a static-batch
   copy upgraded to opset 18 (and the model as shipped, to show what happens there).
4. gradient-graph build time (target < 2 s for ResNet50) and peak memory of a ResNet50 step vs
   forward (target <= 3x), both measured in fresh subprocesses.
If a step/forward target is missed (or with --profile), the gradient session is profiled with
onnxruntime's profiler and the backward ops that dominate are listed.

Timing: every contender of a row is timed in the same loop, round robin (warm-up first, then
``repeats`` rounds; each round runs a contender enough times to last >= 0.1 s and records the mean
call time); the table shows the median over rounds. Ratios therefore compare numbers measured side
by side under the same machine load. Each onnxruntime session has its own intra-op thread pool, so
the pairs are kept small (forward + onnxviz; onnx-ad + onnxviz; TensorFlow + onnxviz). On a shared
VM the ratios still move by +-20% between runs: run it twice before reading a target.

    python bench/gradient.py            # full run (first run converts ResNet50 once, cached)
    python bench/gradient.py --quick    # mnist_cnn only, fewer repeats
"""

from __future__ import annotations

import argparse
import collections
import gc
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Callable

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import numpy as np  # noqa: E402
import onnx  # noqa: E402

from onnxviz.autodiff import gradient_model  # noqa: E402
from onnxviz.gradients import GradientFunction  # noqa: E402
from onnxviz.graph import load_model, opset_version  # noqa: E402
from onnxviz.rewrite import to_logits, upgrade_opset  # noqa: E402
from onnxviz.runtime import make_session  # noqa: E402

MNIST = REPO / "models" / "mnist_cnn.onnx"
DEFAULT_CACHE = Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache")) / "onnxviz-bench"
RESNET_SIZE = 224
ISSUE_REFERENCE = "issue 3 (another machine): TF 1.13 / 2.44 ms, onnxruntime forward 0.084 / 0.52 ms (mnist, batch 1 / 10)"


# ------------------------------------------------------------------------------------------ utils
def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--quick", action="store_true", help="mnist_cnn only, 5 rounds")
    p.add_argument("--repeats", type=int, default=None, help="timing rounds per row (default 25, quick 5)")
    p.add_argument("--providers", default="cpu", choices=["cpu", "cuda"], help="onnxruntime providers")
    p.add_argument("--cache", type=Path, default=DEFAULT_CACHE, help=f"converted models (default {DEFAULT_CACHE})")
    p.add_argument("--threads", type=int, default=None,
                   help="intra-op threads for onnxruntime and TensorFlow (default: each library's default)")
    p.add_argument("--skip-tf", action="store_true")
    p.add_argument("--skip-onnx-ad", action="store_true")
    p.add_argument("--profile", action="store_true", help="profile every gradient session, not only those missing the target")
    p.add_argument("--probe", nargs=4, metavar=("KIND", "MODEL", "BATCH", "PROVIDERS"), help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.repeats is None:
        args.repeats = 5 if args.quick else 25
    return args


def median_times(contenders: dict[str, Callable[[], object]], repeats: int, warmup: int = 3,
                 block_s: float = 0.1) -> dict[str, float]:
    """Median seconds per call of each contender, timed round robin (see module docstring)."""
    inner = {}
    for name, fn in contenders.items():
        for _ in range(warmup):
            fn()
        t0 = time.perf_counter()
        fn()
        one = max(time.perf_counter() - t0, 1e-6)
        inner[name] = max(1, min(200, int(block_s / one)))
    samples: dict[str, list[float]] = {name: [] for name in contenders}
    for _ in range(repeats):
        for name, fn in contenders.items():
            t0 = time.perf_counter()
            for _ in range(inner[name]):
                fn()
            samples[name].append((time.perf_counter() - t0) / inner[name])
    return {name: statistics.median(s) for name, s in samples.items()}


def table(title: str, header: list[str], rows: list[list[object]], notes: list[str] = ()) -> None:
    cells = [[str(c) for c in header]] + [[str(c) for c in r] for r in rows]
    widths = [max(len(r[i]) for r in cells) for i in range(len(header))]
    print(f"\n### {title}\n")
    print("| " + " | ".join(h.ljust(w) for h, w in zip(cells[0], widths)) + " |")
    print("|" + "|".join("-" * (w + 2) for w in widths) + "|")
    for r in cells[1:]:
        print("| " + " | ".join(c.ljust(w) for c, w in zip(r, widths)) + " |")
    for n in notes:
        print(f"\n{n}")
    sys.stdout.flush()


def ms(seconds: float | None) -> str:
    return "-" if seconds is None else f"{seconds * 1e3:.3f}" if seconds < 0.01 else f"{seconds * 1e3:.1f}"


def rel_error(got: np.ndarray, expected: np.ndarray) -> float:
    got, expected = np.asarray(got, np.float64), np.asarray(expected, np.float64)
    return float(np.abs(got - expected).max() / max(np.abs(expected).max(), 1e-30))


def one_line(error: BaseException, limit: int = 140) -> str:
    text = " ".join(f"{type(error).__name__}: {error}".split())
    return text if len(text) <= limit else text[: limit - 3] + "..."


def status_value(key: str) -> int:
    """A /proc/self/status entry in KiB (VmRSS, VmHWM)."""
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith(key + ":"):
                return int(line.split()[1])
    raise KeyError(key)


# ------------------------------------------------------------------------------------------ models
class Subject:
    """One model: its logits ONNX model, an input maker, and (optionally) the Keras model and a way
    to build it again in another dtype (for a float64 reference gradient)."""

    def __init__(self, name: str, logits: onnx.ModelProto, shape: tuple[int, ...], classes: int,
                 keras_model=None, note: str = "", rebuild: Callable[[], object] | None = None):
        self.name, self.logits, self.shape, self.classes = name, logits, shape, classes
        self.keras_model, self.note, self.rebuild = keras_model, note, rebuild

    def inputs(self, batch: int) -> tuple[np.ndarray, np.ndarray]:
        rng = np.random.default_rng(batch)
        x = rng.random((batch, *self.shape), dtype=np.float32)
        cotangent = np.zeros((batch, self.classes), np.float32)
        cotangent[np.arange(batch), np.arange(batch) % self.classes] = 1.0  # one class per sample
        return x, cotangent


def mnist_subject(with_keras: bool) -> Subject:
    logits = to_logits(load_model(MNIST))
    keras_model, note = None, ""
    if with_keras:
        try:
            keras_model = mnist_keras(logits)
        except Exception as e:  # noqa: BLE001 - report and go on without TF
            note = f"Keras rebuild failed: {one_line(e)}"
    return Subject("mnist_cnn", logits, (28, 28, 1), 10, keras_model, note)


def mnist_keras(logits: onnx.ModelProto):
    """models/train_mnist.py's architecture, softmax off, ONNX weights copied in, outputs verified."""
    import importlib.util

    import keras
    from onnx import numpy_helper

    spec = importlib.util.spec_from_file_location("train_mnist", REPO / "models" / "train_mnist.py")
    train_mnist = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(train_mnist)
    model = train_mnist.build_model()
    model.get_layer("preds").activation = keras.activations.linear
    weights = {t.name: numpy_helper.to_array(t) for t in logits.graph.initializer}
    nodes = list(logits.graph.node)
    values = [[weights[n.input[1]].transpose(2, 3, 1, 0), weights[n.input[2]]] for n in nodes if n.op_type == "Conv"]
    for n in nodes:
        if n.op_type == "MatMul" and n.input[1] in weights:
            add = next(m for m in nodes if m.op_type == "Add" and n.output[0] in m.input)
            values.append([weights[n.input[1]], next(weights[i] for i in add.input if i in weights)])
    layers = [layer for layer in model.layers if layer.weights]
    if len(layers) != len(values):
        raise RuntimeError(f"{len(layers)} Keras layers with weights, {len(values)} ONNX weight pairs")
    for layer, v in zip(layers, values):
        layer.set_weights(v)
    return model


def resnet_subject(cache: Path, with_keras: bool) -> Subject:
    """keras.applications.ResNet50(weights=None, 224x224), converted once with converters.to_onnx and
    cached (ONNX + Keras weights) under ``cache``."""
    cache.mkdir(parents=True, exist_ok=True)
    onnx_path = cache / f"resnet50_{RESNET_SIZE}.onnx"
    weights_path = cache / f"resnet50_{RESNET_SIZE}.weights.h5"
    keras_model, note = None, f"cached in {cache}"
    if not (onnx_path.exists() and weights_path.exists()):
        import keras

        import converters

        keras.utils.set_random_seed(0)
        model = keras.applications.ResNet50(weights=None, input_shape=(RESNET_SIZE, RESNET_SIZE, 3))
        t0 = time.perf_counter()
        result = converters.to_onnx(model)
        note = f"converted in {time.perf_counter() - t0:.0f} s (parity max abs diff {result.max_abs_diff:.2g}), {note}"
        onnx.save(result.model, str(onnx_path))
        model.save_weights(str(weights_path))
        keras_model = model
    logits = to_logits(load_model(onnx_path))
    if with_keras and keras_model is None:
        import keras

        keras_model = keras.applications.ResNet50(weights=None, input_shape=(RESNET_SIZE, RESNET_SIZE, 3))
        keras_model.load_weights(str(weights_path))
    rebuild = None
    if keras_model is not None:
        import keras

        keras_model.get_layer("predictions").activation = keras.activations.linear

        def rebuild_resnet():
            model = keras.applications.ResNet50(weights=None, input_shape=(RESNET_SIZE, RESNET_SIZE, 3))
            model.load_weights(str(weights_path))
            model.get_layer("predictions").activation = keras.activations.linear
            return model

        rebuild = rebuild_resnet
    return Subject("resnet50", logits, (RESNET_SIZE, RESNET_SIZE, 3), 1000, keras_model, note, rebuild)


# ------------------------------------------------------------------------------------------ contenders
def forward_fn(subject: Subject, x: np.ndarray, providers: str, threads: int | None):
    session = make_session(subject.logits, providers, threads=threads)
    feeds = {session.get_inputs()[0].name: x}
    return lambda: session.run(None, feeds)[0]


def onnxviz_fn(subject: Subject, x: np.ndarray, cotangent: np.ndarray, providers: str, threads: int | None):
    """A step is one call of GradientFunction; with an explicit thread count, one run of a session of
    its gradient model made with that many threads (what GradientFunction.__call__ does)."""
    fn = GradientFunction(subject.logits, method="graph", providers=providers)
    if threads is None:
        return fn, (lambda: fn(x, cotangent)[1])
    session = make_session(fn.model, providers, threads=threads)
    feeds = {session.get_inputs()[0].name: x, session.get_inputs()[-1].name: cotangent}
    return fn, (lambda: session.run(None, feeds)[1])


def tensorflow_fn(keras_model, x: np.ndarray, cotangent: np.ndarray):
    import tensorflow as tf

    @tf.function
    def step(x, cotangent):
        with tf.GradientTape() as tape:
            tape.watch(x)
            y = keras_model(x, training=False)
            objective = tf.reduce_sum(y * cotangent)
        return y, tape.gradient(objective, x)

    xt, ct = tf.constant(x), tf.constant(cotangent)
    return lambda: step(xt, ct)[1].numpy()


def tensorflow_float64_gradient(subject: Subject, x: np.ndarray, cotangent: np.ndarray) -> np.ndarray:
    """The input gradient of the same Keras model rebuilt under the float64 dtype policy (eager)."""
    import keras
    import tensorflow as tf

    policy = keras.config.dtype_policy()
    keras.config.set_dtype_policy("float64")
    try:
        model = subject.rebuild()
        xt = tf.constant(x.astype(np.float64))
        with tf.GradientTape() as tape:
            tape.watch(xt)
            objective = tf.reduce_sum(model(xt, training=False) * cotangent.astype(np.float64))
        return tape.gradient(objective, xt).numpy()
    finally:
        keras.config.set_dtype_policy(policy)


def static_batch(model: onnx.ModelProto, batch: int) -> onnx.ModelProto:
    out = onnx.ModelProto()
    out.CopyFrom(model)
    for value in list(out.graph.input) + list(out.graph.output):
        dim = value.type.tensor_type.shape.dim[0]
        dim.Clear()
        dim.dim_value = batch
    del out.graph.value_info[:]
    return onnx.shape_inference.infer_shapes(out)


def onnx_ad_fn(model: onnx.ModelProto, x: np.ndarray, cotangent: np.ndarray, providers: str,
               threads: int | None = None):
    """onnx-ad's reverse-mode model of ``model`` (its own input/output conventions: one seed per
    output with a trailing seed axis, layout="onnx"); returns (build seconds, step callable)."""
    import onnx_ad

    t0 = time.perf_counter()
    reverse = onnx_ad.reverse(model, layout="onnx")
    build_s = time.perf_counter() - t0
    reverse.ir_version = min(reverse.ir_version, 10)
    session = make_session(reverse, providers, threads=threads)
    names = [i.name for i in session.get_inputs()]
    feeds = {names[0]: x, names[1]: cotangent[..., None]}
    return build_s, lambda: session.run(None, feeds)[1][..., 0]


# ------------------------------------------------------------------------------------------ profile
def profile_gradient(fn: GradientFunction, x: np.ndarray, cotangent: np.ndarray, providers: str,
                     threads: int | None = None, runs: int = 20, warmup: int = 3) -> tuple[list[list[object]], float, float]:
    """Kernel time per run of the gradient session (onnxruntime profiler), split forward/backward
    (backward nodes are those the builder documents as "gradient of <node>"); rows for the backward
    op types, with the forward op they differentiate, that take the most time."""
    import onnxruntime as ort

    from onnxviz.runtime import resolve_providers

    backward_of = {n.name: n.doc_string.removeprefix("gradient of ") for n in fn.model.graph.node
                   if n.doc_string.startswith("gradient of ")}
    forward_op = {n.name: n.op_type for n in fn.model.graph.node}
    options = ort.SessionOptions()
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    options.log_severity_level = 3
    options.enable_profiling = True
    if threads:
        options.intra_op_num_threads = threads
    with tempfile.TemporaryDirectory(prefix="onnxviz-bench-") as tmp:
        options.profile_file_prefix = os.path.join(tmp, "profile")
        session = ort.InferenceSession(fn.model.SerializeToString(), options, providers=resolve_providers(providers))
        feeds = {session.get_inputs()[0].name: x, session.get_inputs()[-1].name: cotangent}
        for _ in range(warmup + runs):
            session.run(None, feeds)
        events = json.loads(Path(session.end_profiling()).read_text())
    starts = sorted(e["ts"] for e in events if e.get("cat") == "Session" and e.get("name") == "model_run")
    after = starts[warmup] if len(starts) > warmup else 0  # leave the warm-up runs out
    kernel: collections.Counter = collections.Counter()
    count: collections.Counter = collections.Counter()
    fwd_total = bwd_total = 0.0
    for e in events:
        if e.get("cat") != "Node" or not e["name"].endswith("_kernel_time") or e["ts"] < after:
            continue
        node = e["name"][: -len("_kernel_time")]
        if node in backward_of:
            key = (e.get("args", {}).get("op_name", "?"), forward_op.get(backward_of[node], "?"))
            kernel[key] += e["dur"]
            count[key] += 1
            bwd_total += e["dur"]
        else:
            fwd_total += e["dur"]
    rows = [[op, of, count[(op, of)] // runs, f"{total / runs / 1e3:.3f}", f"{100 * total / max(bwd_total, 1):.0f}%"]
            for (op, of), total in kernel.most_common(12)]
    return rows, fwd_total / runs / 1e6, bwd_total / runs / 1e6


# ------------------------------------------------------------------------------------------ memory
def probe(kind: str, model_path: str, batch: int, providers: str) -> None:
    """Subprocess body; prints one JSON line.

    ``build``: load the logits model, time ``gradient_model`` on it (a fresh process, like a user's
    first call). ``forward`` / ``step``: create a session on the saved logits / gradient model and
    measure memory from /proc/self/status. The parent starts these two with
    MALLOC_MMAP_THRESHOLD_=65536 (not ``build``: it would slow every large copy) and the session has onnxruntime's CPU arena off, so every tensor of
    64 KiB or more is its own mmap, mapped while it lives and unmapped when freed: RSS follows the
    live tensors. ``session_mib`` = RSS after creating the session minus RSS after the imports
    (weights, prepacked kernels, graph); ``run_mib`` = peak RSS during 3 runs (VmHWM, reset through
    /proc/self/clear_refs just before them) minus RSS before them (activations, saved forward values,
    gradients, workspace)."""
    import onnxruntime as ort

    from onnxviz.runtime import resolve_providers

    gc.collect()
    imports_kib = status_value("VmRSS")
    if kind == "build":
        model = load_model(model_path)
        t0 = time.perf_counter()
        gradient_model(model)
        print(json.dumps({"build_s": time.perf_counter() - t0}))
        return
    options = ort.SessionOptions()
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    options.log_severity_level = 3
    options.enable_cpu_mem_arena = False
    session = ort.InferenceSession(model_path, options, providers=resolve_providers(providers))
    rng = np.random.default_rng(0)
    feeds = {}
    for i, value in enumerate(session.get_inputs()):
        shape = [batch] + [int(d) for d in value.shape[1:]]
        if i == 0:
            feeds[value.name] = rng.random(shape, dtype=np.float32)
        else:  # the cotangent: one class per sample
            cotangent = np.zeros(shape, np.float32)
            cotangent[:, 0] = 1.0
            feeds[value.name] = cotangent
    gc.collect()
    with open("/proc/self/clear_refs", "w") as f:
        f.write("5")  # reset VmHWM to the current RSS
    before = status_value("VmRSS")
    for _ in range(3):
        session.run(None, feeds)
    peak = status_value("VmHWM")
    print(json.dumps({"session_mib": (before - imports_kib) / 1024, "run_mib": (peak - before) / 1024}))


def run_probe(kind: str, model_path: Path, batch: int, providers: str) -> dict:
    cmd = [sys.executable, str(Path(__file__).resolve()), "--probe", kind, str(model_path), str(batch), providers]
    env = dict(os.environ)
    if kind != "build":  # the memory probes only: build time is measured under the normal allocator
        env["MALLOC_MMAP_THRESHOLD_"] = "65536"
    done = subprocess.run(cmd, capture_output=True, text=True, timeout=1800, env=env)
    if done.returncode != 0:
        raise RuntimeError(done.stderr.strip().splitlines()[-1] if done.stderr.strip() else f"exit {done.returncode}")
    return json.loads(done.stdout.strip().splitlines()[-1])


# ------------------------------------------------------------------------------------------ main
def environment(args: argparse.Namespace) -> None:
    import onnxruntime as ort

    from onnxviz.runtime import available_providers, cuda_unavailable_reason

    print("# onnxviz gradient bench")
    print(f"\n- machine: {platform.machine()}, {os.cpu_count()} logical CPUs visible, "
          f"load average {', '.join(f'{v:.1f}' for v in os.getloadavg())} (1/5/15 min) at start")
    print(f"- python {platform.python_version()}, numpy {np.__version__}, onnx {onnx.__version__}, "
          f"onnxruntime {ort.__version__} ({args.providers}; "
          f"{args.threads or 'default'} intra-op threads)")
    if "CUDAExecutionProvider" in available_providers():
        print("- CUDA: available" + ("" if args.providers == "cuda" else " (run again with --providers cuda for the CUDA table)"))
    else:
        print(f"- CUDA: not available in this session ({cuda_unavailable_reason()}): no CUDA table")
    print(f"- timing: median of {args.repeats} round-robin rounds after warm-up; ms per call")
    sys.stdout.flush()


def main(argv=None) -> int:
    args = parse_args(argv)
    if args.probe:
        kind, path, batch, providers = args.probe
        probe(kind, path, int(batch), providers)
        return 0
    environment(args)
    with_tf = not args.skip_tf
    if with_tf:
        try:
            import tensorflow as tf

            if args.threads:
                tf.config.threading.set_intra_op_parallelism_threads(args.threads)
                tf.config.threading.set_inter_op_parallelism_threads(1)
            print(f"- tensorflow {tf.__version__} (CPU, {args.threads or 'default'} threads), keras "
                  f"{__import__('keras').__version__}")
        except ImportError as e:
            print(f"- tensorflow: not installed ({e}); TF rows skipped")
            with_tf = False
    with_ad = not args.skip_onnx_ad
    if with_ad:
        try:
            import importlib.metadata

            import onnx_ad  # noqa: F401

            print(f"- onnx-ad {importlib.metadata.version('onnx-ad')}")
        except ImportError as e:
            print(f"- onnx-ad: not installed ({e}); its rows skipped")
            with_ad = False

    subjects = [(mnist_subject(with_tf), [1, 10])]
    if not args.quick:
        t0 = time.perf_counter()
        subjects.append((resnet_subject(args.cache, with_tf), [1]))
        print(f"- resnet50: keras.applications.ResNet50(weights=None, {RESNET_SIZE}x{RESNET_SIZE}), "
              f"{subjects[-1][0].note}; ready in {time.perf_counter() - t0:.0f} s")
    for subject, _ in subjects:
        if subject.note and subject.name == "mnist_cnn":
            print(f"- mnist_cnn: {subject.note}")

    ratio_rows, tf_rows, ad_rows, checks = [], [], [], []
    to_profile = []
    for subject, batches in subjects:
        for batch in batches:
            x, cotangent = subject.inputs(batch)
            # group 1: onnxruntime contenders, round robin
            ort_group = {"forward": forward_fn(subject, x, args.providers, args.threads)}
            fn, ort_group["onnxviz"] = onnxviz_fn(subject, x, cotangent, args.providers, args.threads)
            ours = ort_group["onnxviz"]()
            ad_build = ad_error = None
            ad_note = ""
            if with_ad:
                try:
                    model = subject.logits
                    if opset_version(model) < 16:
                        model = upgrade_opset(model, 18)
                    ad_build, ort_group["onnx-ad"] = onnx_ad_fn(static_batch(model, batch), x, cotangent,
                                                                args.providers, args.threads)
                    ad_error = rel_error(ort_group["onnx-ad"](), ours)
                except Exception as e:  # noqa: BLE001 - a failure is a result here
                    ort_group.pop("onnx-ad", None)
                    ad_note = f"fails: {one_line(e)}"
            # each onnxruntime session has its own intra-op thread pool, whose workers spin for a
            # while after a run: 0.1 s blocks amortize a switch, and onnx-ad is timed in its own pair
            ad_fn = ort_group.pop("onnx-ad", None)
            times = median_times(ort_group, args.repeats, block_s=0.1)
            if ad_fn is not None:
                pair = median_times({"onnx-ad": ad_fn, "onnxviz": ort_group["onnxviz"]}, args.repeats, block_s=0.1)
                times["onnx-ad"] = pair["onnx-ad"] * times["onnxviz"] / pair["onnxviz"]
            fwd, step = times["forward"], times["onnxviz"]
            ratio = step / fwd
            ratio_rows.append([subject.name, batch, ms(fwd), ms(step), f"{ratio:.2f}",
                               "ok" if ratio <= 3.5 else "MISSED (<= 3.5)"])
            if ratio > 3.5 or args.profile:
                to_profile.append((subject, batch, fn, x, cotangent, ratio))
            if "onnx-ad" in times:
                ad_rows.append([subject.name, batch, "opset 18, static batch", f"{ad_build:.2f}", ms(times["onnx-ad"]),
                                f"{times['onnx-ad'] / fwd:.2f}", ms(step), f"{ratio:.2f}",
                                f"{times['onnx-ad'] / step:.2f}x", f"grad diff {ad_error:.1e}"])
            elif with_ad:
                ad_rows.append([subject.name, batch, "opset 18, static batch", "-", "-", "-", ms(step), f"{ratio:.2f}",
                                "-", ad_note])
            # group 2: TensorFlow vs the onnxviz step, round robin in longer blocks (two runtimes'
            # thread pools in one process: switching between them costs, longer blocks amortize it)
            if with_tf and subject.keras_model is not None:
                tf_group = {"tensorflow": tensorflow_fn(subject.keras_model, x, cotangent), "onnxviz": ort_group["onnxviz"]}
                tf_grad = tf_group["tensorflow"]()
                tf_error = rel_error(ours, tf_grad)
                out_error = rel_error(fn(x, cotangent)[0], subject.keras_model(x, training=False).numpy())
                check = (f"{subject.name} batch {batch}: Keras vs ONNX logits max rel diff {out_error:.1e}, "
                         f"TF vs onnxviz gradient max rel diff {tf_error:.1e}")
                if subject.rebuild is not None:
                    try:
                        g64 = tensorflow_float64_gradient(subject, x, cotangent)
                        check += (f"; against TF float64: TF float32 {rel_error(tf_grad, g64):.1e}, "
                                  f"onnxviz float32 {rel_error(ours, g64):.1e}")
                    except Exception as e:  # noqa: BLE001
                        check += f"; TF float64 reference failed: {one_line(e)}"
                checks.append(check)
                tf_times = median_times(tf_group, args.repeats, block_s=0.1)
                speedup = tf_times["tensorflow"] / tf_times["onnxviz"]
                target = {1: 4.0, 10: 1.5}.get(batch) if subject.name == "mnist_cnn" else None
                verdict = "-" if target is None else ("ok" if speedup >= target else "MISSED") + f" (>= {target}x)"
                tf_rows.append([subject.name, batch, ms(tf_times["tensorflow"]), ms(tf_times["onnxviz"]), ms(fwd),
                                f"{speedup:.2f}x", verdict])
                del tf_group
            elif with_tf:
                tf_rows.append([subject.name, batch, "-", ms(step), ms(fwd), "-", subject.note or "no Keras model"])
            del ort_group, fn
            gc.collect()
        if with_ad:  # the model as it is: dynamic batch, its own opset
            try:
                build, _ = onnx_ad_fn(subject.logits, *subject.inputs(1), args.providers, args.threads)
                as_is = f"builds in {build:.2f} s and runs"
            except Exception as e:  # noqa: BLE001
                as_is = f"fails: {one_line(e)}"
            ad_rows.append([subject.name, "N", f"as shipped (opset {opset_version(subject.logits)}, dynamic batch)",
                            "-", "-", "-", "-", "-", "-", as_is])

    table("Gradient step / forward (onnxruntime)",
          ["model", "batch", "forward ms", "step ms", "step/forward", "target <= 3.5"], ratio_rows,
          ["forward = one run of the logits model; step = one run of the gradient model via GradientFunction "
           "(target and input gradient together). Physical floor ~3."])
    if tf_rows:
        table("onnxviz step vs TensorFlow GradientTape (tf.function), same Keras model and batch",
              ["model", "batch", "TF ms", "onnxviz step ms", "ORT forward ms", "onnxviz speed-up", "target"], tf_rows,
              ["TF and onnxviz timed round robin in 0.1 s blocks (their own group); ORT forward from the table above.",
               ISSUE_REFERENCE] + [f"check: {c}" for c in checks])
    if ad_rows:
        table("vs onnx-ad (reverse mode, layout='onnx', one seed)",
              ["model", "batch", "onnx-ad input", "onnx-ad build s", "onnx-ad step ms", "onnx-ad/forward",
               "onnxviz step ms", "onnxviz/forward", "onnx-ad / onnxviz time", "note"], ad_rows,
              ["grad diff: max |onnx-ad - onnxviz| / max |onnxviz| on the same input and cotangent."])

    # build time and memory, in fresh processes
    mem_rows = []
    with tempfile.TemporaryDirectory(prefix="onnxviz-bench-") as tmp:
        for subject, batches in subjects:
            logits_path = Path(tmp) / f"{subject.name}_logits.onnx"
            grad_path = Path(tmp) / f"{subject.name}_gradient.onnx"
            onnx.save(subject.logits, str(logits_path))
            onnx.save(gradient_model(subject.logits), str(grad_path))
            target = " (target < 2 s)" if subject.name == "resnet50" else ""
            try:
                builds = [run_probe("build", logits_path, 1, args.providers)["build_s"] for _ in range(3)]
                fwd = run_probe("forward", logits_path, batches[0], args.providers)
                step = run_probe("step", grad_path, batches[0], args.providers)
            except Exception as e:  # noqa: BLE001
                mem_rows.append([subject.name, batches[0], "-", "-", "-", "-", "-", "-", f"probe failed: {one_line(e)}"])
                continue
            fwd_total, step_total = fwd["session_mib"] + fwd["run_mib"], step["session_mib"] + step["run_mib"]
            mem_rows.append([subject.name, batches[0], f"{statistics.median(builds):.2f}{target}",
                             f"{fwd['session_mib']:.0f} / {step['session_mib']:.0f}",
                             f"{fwd['run_mib']:.1f} / {step['run_mib']:.1f}",
                             f"{step['run_mib'] / max(fwd['run_mib'], 1e-3):.2f}",
                             f"{fwd_total:.0f} / {step_total:.0f}", f"{step_total / max(fwd_total, 1e-3):.2f}"])
    table("Gradient-graph build time and peak memory (fresh subprocess per measurement)",
          ["model", "batch", "build s", "session MiB fwd / step", "run peak MiB fwd / step", "run ratio",
           "total MiB fwd / step", "total ratio"], mem_rows,
          ["build s: median of 3 fresh processes, each timing gradient_model() on the loaded logits model "
           "(prepare = opset upgrade + checks + shape inference, then the rules).",
           "Memory: RSS from /proc/self/status in a fresh process per number, onnxruntime's CPU arena off and "
           "MALLOC_MMAP_THRESHOLD_=65536 so that RSS follows the live tensors. 'session' = RSS after creating the "
           "session minus RSS after the imports (weights, prepacked kernels, graph). 'run peak' = peak RSS (VmHWM, "
           "reset via /proc/self/clear_refs) during 3 runs minus RSS before them (activations, forward values kept "
           "for the backward pass, gradients, workspace). 'total' = session + run peak. "
           "Target for ResNet50: step <= 3x forward."])

    for subject, batch, fn, x, cotangent, ratio in to_profile:
        rows, fwd_s, bwd_s = profile_gradient(fn, x, cotangent, args.providers, args.threads)
        table(f"Profile: {subject.name} batch {batch} gradient session (step/forward {ratio:.2f})",
              ["backward op", "differentiates", "nodes", "ms per step", "share of backward"], rows,
              [f"kernel time per step: forward part {fwd_s * 1e3:.3f} ms, backward part {bwd_s * 1e3:.3f} ms "
               f"(onnxruntime profiler, {20} runs; forward part includes onnxruntime's layout reorders)."])
    return 0


if __name__ == "__main__":
    sys.exit(main())
