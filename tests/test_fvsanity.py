"""The feature-visualization sanity check (onnxviz.fvsanity): SSIM, the recognition test, and the
randomized-model control telling the trained MNIST CNN from its randomized copies."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
from typer.testing import CliRunner

import onnxviz.fvsanity as fv
from onnxviz import cli
from onnxviz.errors import OnnxvizError
from onnxviz.fvsanity import ALPHA, default_depths, recognition_test, ssim, visualization_sanity

C1, C2 = (0.01 * 1.0) ** 2, (0.03 * 1.0) ** 2


# ----------------------------------------------------------------------------------- SSIM
def _window_ssim(a: np.ndarray, b: np.ndarray, sigma: float = 1.5) -> float:
    """Wang et al.'s formula on one window covering the whole (H, W) image, written out with the
    2-D Gaussian weights (no separable filtering): the test's own oracle."""
    h, w = a.shape
    yy, xx = np.mgrid[0:h, 0:w]
    wts = np.exp(-((yy - (h - 1) / 2) ** 2 + (xx - (w - 1) / 2) ** 2) / (2 * sigma ** 2))
    wts /= wts.sum()
    ma, mb = (wts * a).sum(), (wts * b).sum()
    va, vb = (wts * (a - ma) ** 2).sum(), (wts * (b - mb) ** 2).sum()
    cov = (wts * (a - ma) * (b - mb)).sum()
    return ((2 * ma * mb + C1) * (2 * cov + C2)) / ((ma ** 2 + mb ** 2 + C1) * (va + vb + C2))


def test_ssim_of_constant_images_is_the_luminance_term():
    # hand-computed: no variance, so SSIM = (2 ab + C1) / (a^2 + b^2 + C1)
    a = np.full((1, 1, 11, 11), 0.2)
    b = np.full((1, 1, 11, 11), 0.6)
    assert ssim(a, b)[0] == pytest.approx((2 * 0.2 * 0.6 + 1e-4) / (0.2 ** 2 + 0.6 ** 2 + 1e-4), rel=1e-12)
    assert ssim(a, b)[0] == pytest.approx(0.2401 / 0.4001, rel=1e-12)


def test_ssim_matches_the_formula_window_by_window():
    rng = np.random.default_rng(0)
    a, b = rng.random((13, 13)), rng.random((13, 13))
    b = 0.5 * a + 0.5 * b  # correlated
    # 11 x 11 image: exactly one window
    assert ssim(a[None, None, :11, :11], b[None, None, :11, :11])[0] == pytest.approx(
        _window_ssim(a[:11, :11], b[:11, :11]), rel=1e-10)
    # 13 x 13: the mean over the 3 x 3 positions where the window fits
    expected = np.mean([_window_ssim(a[i:i + 11, j:j + 11], b[i:i + 11, j:j + 11]) for i in range(3) for j in range(3)])
    assert ssim(a[None, None], b[None, None])[0] == pytest.approx(expected, rel=1e-10)


def test_ssim_properties():
    rng = np.random.default_rng(1)
    x = rng.random((3, 2, 28, 28))
    y = rng.random((3, 2, 28, 28))
    np.testing.assert_allclose(ssim(x, x), 1.0, atol=1e-12)
    np.testing.assert_allclose(ssim(x, y), ssim(y, x), atol=1e-12)
    assert (ssim(x, y) < 0.2).all()  # independent noise images share no structure
    noise = rng.standard_normal(x.shape)
    values = [ssim(x, np.clip(x + s * noise, 0, 1)).mean() for s in (0.0, 0.02, 0.05, 0.1, 0.2, 0.4)]
    assert values[0] == pytest.approx(1.0)
    assert all(later < earlier for earlier, later in zip(values, values[1:])), values
    assert (ssim(x, 1.0 - x) < 0).all()  # inverted contrast: negative structure term
    with pytest.raises(OnnxvizError):
        ssim(x, y[:, :1])


# ----------------------------------------------------------------------------------- recognition test
def _fixed_point_tail(n: int, k: int) -> float:
    """P(a uniform random permutation of n has >= k fixed points), exactly (derangement numbers)."""
    d = [1, 0]
    for m in range(2, n + 1):
        d.append((m - 1) * (d[-1] + d[-2]))
    return sum(math.comb(n, j) * d[n - j] for j in range(k, n + 1)) / math.factorial(n)


def test_recognition_test_against_the_exact_permutation_null():
    targets = np.arange(10)
    for k in (2, 4, 6):
        # readings: a permutation of the targets with exactly k fixed points
        predicted = targets.copy()
        rest = targets[k:]
        predicted[k:] = np.roll(rest, 1)
        hits, chance, p = recognition_test(predicted[None], targets)
        exact = _fixed_point_tail(10, k)
        assert hits == k
        assert chance == pytest.approx(1.0, abs=0.05)
        assert p == pytest.approx(exact, abs=4 * math.sqrt(exact * (1 - exact) / 1e4) + 1e-4)


def test_recognition_test_all_right_and_one_class_for_everything():
    targets = np.arange(10)
    hits, _, p = recognition_test(np.stack([targets, targets]), targets)
    assert hits == 20 and p == pytest.approx(1 / 10_001)
    # a judge that reads every image as "2" hits once per seed, as any shuffle does
    hits, chance, p = recognition_test(np.full((3, 10), 2), targets)
    assert hits == 3 and chance == pytest.approx(3.0) and p == 1.0


def test_default_depths():
    assert default_depths(1) == [1]
    assert default_depths(2) == [1, 2]
    assert default_depths(4) == [1, 2, 4]
    assert default_depths(50) == [1, 2, 50]


# ----------------------------------------------------------------------------------- the shipped model
@pytest.fixture(scope="module")
def no_prior(mnist_model_path):
    """The shipped CNN's class images without a prior, 64 steps, seed 0, default stages."""
    return visualization_sanity(mnist_model_path, prior=None, seed=0, steps=64)


def test_the_trained_model_recognises_its_own_images(no_prior):
    trained = no_prior.trained
    assert no_prior.mode == "class" and no_prior.units == list(range(10))
    assert trained.layers == []
    assert trained.recognised.sum() >= 9
    assert trained.trained_p.mean() > 0.9
    assert trained.p_value < ALPHA


def test_randomized_copies_images_are_near_chance_and_unlike(no_prior):
    stages = no_prior.randomized
    assert [len(s.layers) for s in stages] == [1, 2, 4]  # top layer, top two, all
    assert stages[0].layers == ["preds/MatMul"]
    assert stages[-1].layers[-1] == "conv2d/BiasAdd"
    for s in stages:
        assert s.recognised.sum() <= 3, s.summary()  # chance: 1 of 10
        assert s.trained_p.mean() < 0.35, s.summary()
        assert s.ssim.mean() < 0.3 and abs(s.spearman.mean()) < 0.3, s.summary()
        # the copy responds to its own images more than to the trained ones
        assert s.copy_on_own.mean() > s.copy_on_trained.mean()
    assert no_prior.recognition["p_value"] >= ALPHA
    assert no_prior.verdict == "PASS" and no_prior.passed and no_prior.reasons == []
    assert no_prior.notes == []


def test_a_copy_that_is_the_trained_model_fails(monkeypatch, mnist_model_path):
    # the constructed failure: the "randomized" copies keep the trained weights, so the recipe
    # paints the classes whatever happens to the weights — as a prior that knew them would
    monkeypatch.setattr(fv, "randomize_layers", lambda model, layers, seed=0: model)
    check = visualization_sanity(mnist_model_path, prior=None, seed=0, steps=32)
    assert check.verdict == "FAIL" and not check.passed
    for s in check.randomized:
        np.testing.assert_array_equal(s.images, check.trained.images)
        np.testing.assert_allclose(s.ssim, 1.0)
        np.testing.assert_allclose(s.spearman, 1.0)
        assert s.recognised.sum() == check.trained.recognised.sum()
    assert check.recognition["p_value"] < ALPHA
    text = " ".join(check.reasons)
    assert "read" in text and "as their targets" in text and "SSIM" in text


def test_the_shipped_prior_is_used_on_every_copy_and_passes(mnist_model_path):
    check = visualization_sanity(mnist_model_path, seed=0, steps=64)  # prior "auto": MODEL.prior.npz
    assert check.settings["prior"] is not None
    assert check.notes == []  # every copy ran the trained model's recipe, prior included
    assert check.trained.trained_p.mean() > 0.9
    assert all(s.recognised.sum() <= 4 for s in check.randomized)
    assert check.verdict == "PASS", check.reasons


def test_a_prior_that_paints_the_images_itself_fails(mnist_model_path):
    # a prior penalty so heavy that every image is the prior's, whatever the weights
    check = visualization_sanity(mnist_model_path, seed=0, steps=32, prior_weight=100.0)
    assert check.verdict == "FAIL"
    assert all(s.ssim.mean() > 0.9 for s in check.randomized)
    assert any("SSIM" in r for r in check.reasons)


def test_a_hidden_layer_is_checked_on_the_layers_below_it(mnist_model_path):
    check = visualization_sanity(mnist_model_path, "conv2d_1", [0, 1, 2, 3], prior=None, steps=32)
    assert check.mode == "unit"
    # re-drawing the dense layers above conv2d_1 would change nothing it draws
    assert [s.layers for s in check.randomized] == [["conv2d_1/BiasAdd"], ["conv2d_1/BiasAdd", "conv2d/BiasAdd"]]
    assert check.trained.trained_p is None
    np.testing.assert_allclose(check.trained.trained_relative, 1.0)
    for s in check.randomized:
        assert s.ssim.mean() < 0.5
    assert check.verdict in ("PASS", "INCONCLUSIVE")


def test_layer_choice_and_errors(mnist_model_path):
    check = visualization_sanity(mnist_model_path, None, [3, 7], prior=None, steps=4, layers=["preds/MatMul"])
    assert [s.layers for s in check.randomized] == [["preds/MatMul"]]
    check = visualization_sanity(mnist_model_path, None, [3, 7], prior=None, steps=4, layers=2, seed=[0, 1])
    assert [s.layers for s in check.randomized] == [["preds/MatMul"], ["preds/MatMul", "dense/MatMul"]]
    assert check.trained.images.shape == (2, 2, 28, 28, 1)
    # one copy per seed: the two seeds' copies are different draws
    assert not np.array_equal(check.randomized[0].images[0], check.randomized[0].images[1])
    with pytest.raises(OnnxvizError, match="no weight layer 'nope'"):
        visualization_sanity(mnist_model_path, prior=None, steps=4, layers=["nope"])
    from onnxviz import unit

    with pytest.raises(OnnxvizError, match="objective"):
        visualization_sanity(mnist_model_path, prior=None, steps=4, objective=unit(None, 3))


def test_one_unit_cannot_beat_chance(mnist_model_path):
    check = visualization_sanity(mnist_model_path, None, [3], prior=None, steps=8, layers=1)
    assert check.verdict == "INCONCLUSIVE"
    assert "beat chance" in check.reasons[0]


# ----------------------------------------------------------------------------------- CLI
runner = CliRunner()


def test_cli_maximize_sanity_prints_the_table_and_verdict(tmp_path, mnist_model_path):
    out = tmp_path / "digits.png"
    result = runner.invoke(cli.app, ["maximize", str(mnist_model_path), "-o", str(out), "--steps", "64",
                                     "--prior", "none", "--sanity"])
    assert result.exit_code == 0, result.output
    assert out.exists()
    lines = result.stdout.splitlines()
    head = next(i for i, line in enumerate(lines) if line.strip().startswith("stage"))
    assert "SSIM" in lines[head] and "Spearman" in lines[head] and "trained-model p" in lines[head]
    assert lines[head + 1].split()[:2] == ["0", "none"]
    assert lines[head + 2].split()[:2] == ["1", "preds/MatMul"]
    assert lines[-1] == "sanity PASS"


def test_cli_maximize_sanity_json_and_exit_code_on_fail(monkeypatch, mnist_model_path):
    args = ["maximize", str(mnist_model_path), "--json", "--steps", "32", "--units", "0-9", "--prior", "none",
            "--sanity"]
    result = runner.invoke(cli.app, args)
    assert result.exit_code == 0, result.output
    record = json.loads(result.stdout)
    sanity = record["sanity"]
    assert sanity["verdict"] == "PASS" and sanity["mode"] == "class"
    assert [s["stage"] for s in sanity["stages"]] == [0, 1, 2, 3]
    assert sanity["stages"][0]["recognised"] >= 9 and sanity["stages"][3]["recognised"] <= 3
    monkeypatch.setattr(fv, "randomize_layers", lambda model, layers, seed=0: model)
    result = runner.invoke(cli.app, args)
    assert result.exit_code == 1
    assert json.loads(result.stdout)["sanity"]["verdict"] == "FAIL"


def test_cli_sanity_does_not_apply_to_accentuation(tmp_path, mnist_model_path):
    img = tmp_path / "x.npy"
    np.save(img, np.zeros((28, 28, 1), np.float32))
    result = runner.invoke(cli.app, ["maximize", str(mnist_model_path), "--json", "--from", str(img), "--sanity"])
    assert result.exit_code == 2
    assert "--sanity" in result.output and "Traceback" not in result.output


# ----------------------------------------------------------------------------------- report
def test_report_section_escapes_names(no_prior):
    from dataclasses import replace

    from onnxviz.report import sanity_section

    evil = "<script>alert(1)</script>&[bold]"
    stages = [replace(s, layers=[evil] if s.layers else []) for s in no_prior.stages]
    check = replace(no_prior, stages=stages, labels=[evil] * len(no_prior.labels),
                    reasons=[f"layer {evil} failed"], verdict="FAIL")
    html_text = sanity_section(check)
    assert "<script>" not in html_text and "&lt;script&gt;" in html_text
    assert html_text.count('src="data:image/png;base64,') == len(stages)
    assert "verdict: FAIL" in html_text and "&amp;[bold]" in html_text
