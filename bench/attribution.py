"""Time per image of every attribution method, batched, on the shipped MNIST CNN and on a
ResNet50-class network (keras.applications.ResNet50, weights=None, converted once with
``converters.to_onnx`` and cached in a temp folder).

    python bench/attribution.py            # MNIST: 100 held-out digits; ResNet50: 4 images
    python bench/attribution.py --quick    # fewer images, steps and samples (a few minutes on 2 CPUs)

Sessions are built before timing (one warm-up call per method on one image), so the numbers are the
steady state of a reused :class:`onnxviz.attribution.Attributor`. Score-CAM and occlusion report the
forward passes they used; IG / SmoothGrad the gradient evaluations. The first rows give the cost of
one forward pass and one gradient (logits + input gradient in one run) per image for reference.
Not a test: prints a table, asserts nothing.
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

from onnxviz.attribution import Attributor, attribute  # noqa: E402


def resnet50_path(cache: Path) -> Path:
    """keras.applications.ResNet50(weights=None) as ONNX, converted once into ``cache``."""
    path = cache / "resnet50_random.onnx"
    if path.exists():
        return path
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    import keras

    import converters

    cache.mkdir(parents=True, exist_ok=True)
    keras.utils.set_random_seed(0)
    model = keras.applications.ResNet50(weights=None, input_shape=(224, 224, 3))
    print(f"converting ResNet50 (weights=None) to {path} ...", flush=True)
    converters.to_onnx(model, output=path, input_range=(0.0, 1.0))
    return path


def mnist_images(n: int) -> np.ndarray:
    data = REPO.parent / "shared" / "data" / "mnist"
    try:
        from onnxviz.datasets import load_mnist

        images, _ = load_mnist(data)
        return (images[-1000:][:n].astype(np.float32) / 255.0)[..., None]
    except Exception:  # noqa: BLE001 - data absent: random digits-sized images time the same
        return np.random.default_rng(0).random((n, 28, 28, 1)).astype(np.float32)


def plans(quick: bool, big: bool) -> list[tuple[str, str, dict]]:
    """(row label, method, options) per method."""
    if big:
        ig, sg, top, occ = (16, 8, 32, dict(window=56, stride=56)) if quick else (64, 25, 256, {})
    else:
        ig, sg, top, occ = (32, 16, 16, {}) if quick else (64, 25, 16, {})
    rows = [
        ("vanilla", "vanilla", {}),
        (f"smoothgrad ({sg} samples)", "smoothgrad", dict(samples=sg)),
        ("gradxinput", "gradxinput", {}),
        (f"ig ({ig} steps)", "ig", dict(steps=ig)),
        ("guided", "guided", {}),
        ("deconvnet", "deconvnet", {}),
        ("gradcam", "gradcam", {}),
        ("gradcam++", "gradcam++", {}),
        ("layercam", "layercam", {}),
        ("guided-gradcam", "guided-gradcam", {}),
        (f"scorecam (top {top})", "scorecam", dict(top_n=top)),
        ("occlusion", "occlusion", occ),
    ]
    if not big:  # all 64 channels are affordable on MNIST
        rows.insert(10, ("scorecam (all channels)", "scorecam", {}))
    return rows


def bench_model(name: str, path: Path, x: np.ndarray, quick: bool, big: bool) -> list[tuple]:
    att = Attributor(path)
    n = len(x)
    rows = []
    # reference costs
    att.logits(x[:1])
    t = time.perf_counter()
    att.logits(x)
    fwd = (time.perf_counter() - t) / n
    units = att.predict(x)
    att.gradients(x[:1], units[:1])
    t = time.perf_counter()
    att.gradients(x, units)
    grad = (time.perf_counter() - t) / n
    rows.append((name, "forward pass", n, fwd * 1e3, "", ""))
    rows.append((name, "gradient (logits + d/dx)", n, grad * 1e3, "", f"{grad / fwd:.1f}x forward"))
    for label, method, options in plans(quick, big):
        attribute(att, x[:1], method, unit=units[:1], **options)  # build sessions
        t = time.perf_counter()
        r = attribute(att, x, method, unit=units, **options)
        dt = (time.perf_counter() - t) / n
        passes = r.info.get("forward_passes")
        extra = ""
        if "steps" in r.info:
            extra = f"{r.info['steps'] * n} gradient evals; completeness err max {np.max(r.info['completeness_error']):.2%}"
        elif "samples" in r.info:
            extra = f"{r.info['samples'] * n} gradient evals"
        elif "layer" in r.info:
            extra = f"layer {r.info['node']} {r.info['layout']} {r.info['feature_shape']}"
        if "windows" in r.info:
            extra = f"window {r.info['window']} stride {r.info['stride']}, {r.info['windows']} windows/image"
        rows.append((name, label, n, dt * 1e3, "" if passes is None else str(passes), extra))
        print(f"  {name:<9} {label:<26} {dt * 1e3:10.1f} ms/image", flush=True)
    return rows


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="fewer images, steps and samples")
    parser.add_argument("--mnist-images", type=int, default=None)
    parser.add_argument("--resnet-images", type=int, default=None)
    parser.add_argument("--skip-resnet", action="store_true")
    parser.add_argument("--cache", type=Path, default=Path(tempfile.gettempdir()) / "onnxviz-bench")
    args = parser.parse_args(argv)
    n_mnist = args.mnist_images or (32 if args.quick else 100)
    n_resnet = args.resnet_images or (2 if args.quick else 4)

    import onnxruntime as ort

    print(f"onnxruntime {ort.__version__}, providers {ort.get_available_providers()}, {os.cpu_count()} CPUs"
          f"{' (quick)' if args.quick else ''}", flush=True)
    rows = bench_model("mnist_cnn", REPO / "models" / "mnist_cnn.onnx", mnist_images(n_mnist), args.quick, False)
    if not args.skip_resnet:
        x = np.random.default_rng(0).random((n_resnet, 224, 224, 3)).astype(np.float32)
        rows += bench_model("resnet50", resnet50_path(args.cache), x, args.quick, True)
    print()
    print(f"| model | method | images | ms / image | forward passes | notes |")
    print("| --- | --- | ---: | ---: | ---: | --- |")
    for model, label, n, ms, passes, extra in rows:
        print(f"| {model} | {label} | {n} | {ms:.1f} | {passes} | {extra} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
