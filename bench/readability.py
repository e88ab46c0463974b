"""Readability of activation maximization on the shipped MNIST CNN: do its class images read as digits?

Judges (``onnxviz.judges``): k-NN, logistic regression and an MLP fitted on the first 9,000 real
digits of the MNIST t10k split (the shipped model's training images; their accuracy on the last 1,000
is printed first). Each judge classifies each of the 10 class images; a recipe scores the number of
(judge, image) pairs that name the target, out of 30. The judges see the images as they are, in [0, 1]
(no per-image rescaling).

Recipes, for each seed (default 0, 1, 2), with ``maximize``'s defaults otherwise:

- (a) ``onnxviz.maximize(model)`` with no prior (``prior=None`` once priors exist);
- (b) the same with the prior (``models/mnist_cnn.prior.npz``; fitted here on the 9,000 digits with
  ``fit_prior`` defaults when the file is missing); skipped with a message while ``onnxviz.priors``
  or ``maximize(prior=...)`` is not there;
- (c) the recipes of (a) and (b) on a copy of the model with every weight layer redrawn
  (``randomize_layers``, seeded by the seed): the control. Its images must stay near chance for the
  judges, or the prior, not the model, paints the digits. The prior there is the same arrays, not
  bound to a model digest.

Columns: judges' count /30 and per judge, and the p(target) of the model that made the images (its own
softmax; the randomized copy's for (c)): min and mean over the 10 classes. Then the cost of a step with
and without the prior at equal steps, interleaved, median of ``--repeats``. Not a test.

    python bench/readability.py [--seeds 0,1,2] [--repeats 3] [--save DIR]
"""

from __future__ import annotations

import argparse
import dataclasses
import inspect
import os
import statistics
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

import numpy as np  # noqa: E402

N_TRAIN = 9000


def prior_support():
    """(priors module, None) when ``maximize(prior=...)`` and ``onnxviz.priors`` exist, else (None, why)."""
    import onnxviz

    try:
        from onnxviz import priors
    except ImportError as exc:
        return None, f"onnxviz.priors is not importable ({exc})"
    if "prior" not in inspect.signature(onnxviz.maximize).parameters:
        return None, "onnxviz.maximize has no prior= argument yet"
    return priors, None


def unbound(prior):
    """The same prior, usable on any model with its input size (for the randomized copy)."""
    return dataclasses.replace(prior, spec=dataclasses.replace(prior.spec, model_sha256=None))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", type=Path, default=REPO / "models" / "mnist_cnn.onnx")
    parser.add_argument("--mnist", type=Path, default=REPO.parent / "shared" / "data" / "mnist")
    parser.add_argument("--prior", type=Path, default=None,
                        help="prior file for (b) (default: MODEL.prior.npz beside the model)")
    parser.add_argument("--seeds", default="0,1,2")
    parser.add_argument("--repeats", type=int, default=3, help="timing repeats for the step cost (>= 3)")
    parser.add_argument("--judge-seed", type=int, default=0)
    parser.add_argument("--save", type=Path, default=None, help="write each recipe's class images here as PNG")
    args = parser.parse_args(argv)
    seeds = [int(s) for s in args.seeds.split(",") if s.strip()]

    import onnx
    import onnxruntime as ort

    import onnxviz
    from onnxviz.attribution.metrics import randomize_layers, weight_layers
    from onnxviz.datasets import load_mnist
    from onnxviz.judges import JUDGE_NAMES, Judges

    # ---- judges
    images, labels = load_mnist(args.mnist, split="t10k")
    t0 = time.perf_counter()
    judges = Judges.fit(images[:N_TRAIN], labels[:N_TRAIN], layout="NHW", seed=args.judge_seed)
    fit_s = time.perf_counter() - t0
    held = judges.score(images[N_TRAIN:], labels[N_TRAIN:], layout="NHW")
    acc = ", ".join(f"{k} {v:.3f}" for k, v in held.accuracy.items())
    parts = ", ".join(f"{k} {v:.1f} s" for k, v in judges.fit_seconds.items() if k != "knn")
    print(f"judges fitted on the first {N_TRAIN} t10k digits in {fit_s:.1f} s ({parts}); "
          f"accuracy on the last {len(images) - N_TRAIN}: {acc}")

    # ---- models and priors
    model = onnx.load(str(args.model))
    priors, why = prior_support()
    prior_obj = None
    prior_note = ""
    if priors is None:
        print(f"(b) skipped: {why}")
    else:
        path = args.prior or priors.prior_path_for(args.model)
        if path.is_file():
            prior_obj = priors.load_prior(path, model=model)
            prior_note = f"{path.relative_to(REPO) if path.is_relative_to(REPO) else path}"
        else:
            unit = (images[:N_TRAIN].astype(np.float64) / 255.0)[:, None]
            prior_obj = priors.fit_prior(unit, model=model)
            prior_note = f"fitted here on {N_TRAIN} digits ({path.name} not found)"
        desc = prior_obj.describe()
        print(f"prior: {prior_note}: {desc.get('kind')}, {desc.get('components', '?')} components, "
              f"{desc.get('explained_variance', float('nan')):.3f} of the variance")

    def sessions(proto):
        probs = ort.InferenceSession(proto.SerializeToString(), providers=["CPUExecutionProvider"])
        return probs, probs.get_inputs()[0].name

    trained = sessions(model)

    def run(proto, seed, prior, steps=None):
        kwargs = {} if priors is None else {"prior": prior}
        return onnxviz.maximize(proto if proto is not model else str(args.model), seed=seed, steps=steps,
                                providers="cpu", **kwargs)

    rows = []  # (recipe, seed, score, pmin, pmean, seconds)
    labels_ = {"a": "(a) no prior", "b": "(b) prior", "c": "(c) random weights, no prior",
               "c_prior": "(c) random weights, prior"}

    def record(key, seed, result, session):
        recipe = labels_[key]
        probs, name = session
        x = np.ascontiguousarray(result.images, dtype=np.float32)
        p = probs.run(None, {name: x})[0][np.arange(len(x)), np.arange(len(x))]
        score = judges.score(result.images, range(len(x)), layout=result.layout, value_range=result.value_range)
        rows.append((recipe, seed, score, float(p.min()), float(p.mean()), result.seconds))
        if args.save is not None:
            args.save.mkdir(parents=True, exist_ok=True)
            onnxviz.save_grid(args.save / f"{key}_seed{seed}.png", result.images,
                              [f"{t}:{','.join(str(score.votes[j][t]) for j in JUDGE_NAMES)}" for t in range(len(x))],
                              layout=result.layout, value_range=result.value_range)

    for seed in seeds:
        record("a", seed, run(model, seed, None), trained)
        if prior_obj is not None:
            record("b", seed, run(model, seed, prior_obj), trained)
        rand = randomize_layers(model, [wl.node for wl in weight_layers(model)], seed=seed)
        rand_s = sessions(rand)
        record("c", seed, run(rand, seed, None), rand_s)
        if prior_obj is not None:
            record("c_prior", seed, run(rand, seed, unbound(prior_obj)), rand_s)

    # ---- step cost with / without the prior, equal steps, interleaved
    timing = None
    if prior_obj is not None:
        steps = onnxviz.default_settings(1, 28, 28).steps  # the prior-free default, for both
        run(model, 0, None, steps=4), run(model, 0, prior_obj, steps=4)  # warm-up
        plain, prior_t = [], []
        for _ in range(max(3, args.repeats)):
            plain.append(run(model, 0, None, steps=steps).seconds / steps)
            prior_t.append(run(model, 0, prior_obj, steps=steps).seconds / steps)
        timing = (steps, statistics.median(plain), statistics.median(prior_t))

    # ---- table
    n = 10
    load = ", ".join(f"{v:.1f}" for v in os.getloadavg())
    print(f"\n{os.cpu_count()} CPUs (load average {load}); seeds {args.seeds}; model {args.model.name}; "
          f"judges see the images as they are in [0, 1]")
    header = f"{'recipe':32} {'seed':>4} {'judges':>7} " + " ".join(f"{j:>8}" for j in JUDGE_NAMES) + \
             f" {'p min':>7} {'p mean':>7} {'run s':>6}"
    print(header)
    print("-" * len(header))
    for recipe, seed, score, pmin, pmean, secs in rows:
        print(f"{recipe:32} {seed:>4} {score.recognised:>4}/{score.total:<2} " +
              " ".join(f"{score.per_judge[j]:>5}/{n:<2}" for j in JUDGE_NAMES) +
              f" {pmin:7.3f} {pmean:7.3f} {secs:6.2f}")
    print()
    for key in labels_.values():
        mine = [r for r in rows if r[0] == key]
        if not mine:
            continue
        counts = [r[2].recognised for r in mine]
        print(f"{key:32} judges min {min(counts)}/30, mean {statistics.mean(counts):.1f}/30; "
              f"p(target) min {min(r[3] for r in mine):.3f}")
    if timing is not None:
        steps, a, b = timing
        print(f"\nstep cost at {steps} steps (median of {max(3, args.repeats)}, interleaved): no prior "
              f"{a * 1e3:.2f} ms, prior {b * 1e3:.2f} ms, ratio {b / a:.2f}x")
    else:
        print("\nstep cost with the prior: not measured (no prior support yet)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
