"""Image priors: the whitening math, files (round trip, refusal of other models and bad files), the
parameterizations' exact gradients, ``maximize(prior=...)``, feature accentuation, and the CLI."""

from __future__ import annotations

import shutil

import numpy as np
import onnx
import pytest
from onnx import numpy_helper
from typer.testing import CliRunner

import onnxviz
from onnxviz.cli import app
from onnxviz.priors import (
    MIN_COMPONENT_FRACTION, GaussianPrior, PriorError, fit_prior, find_prior, load_prior, model_digest, natural_prior, prior_path_for,
    save_prior,
)

from conftest import MODELS_DIR

MNIST = MODELS_DIR / "mnist_cnn.onnx"
SHIPPED_PRIOR = MODELS_DIR / "mnist_cnn.prior.npz"


def _correlated(n: int, d: int, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """n samples of a d-dim Gaussian with a known covariance (random rotation, decaying scales)."""
    rng = np.random.default_rng(seed)
    q, _ = np.linalg.qr(rng.normal(size=(d, d)))
    scales = 1.0 / (1.0 + np.arange(d))
    x = (rng.normal(size=(n, d)) * scales) @ q.T + 0.5
    return x, (q * scales ** 2) @ q.T


# ----------------------------------------------------------------------------------- whitening math
@pytest.mark.parametrize("n", [40, 400])  # fewer samples than values (Gram path) and more (covariance path)
def test_gaussian_prior_whitens_the_samples(n):
    x, _ = _correlated(n, 36)
    images = x.reshape(n, 1, 6, 6)
    prior = fit_prior(images, kind="gaussian", components=10)
    # orthonormal directions, decreasing standard deviations
    assert np.allclose(prior.components @ prior.components.T, np.eye(10), atol=1e-5)
    assert np.all(np.diff(prior.std) <= 1e-6)
    # the samples' coefficients are white: zero mean, unit variance, uncorrelated
    z = prior.encode(images)
    assert np.allclose(z.mean(axis=0), 0.0, atol=1e-5)
    assert np.allclose(np.cov(z, rowvar=False), np.eye(10), atol=1e-3)
    # std and mean against numpy's own covariance eigendecomposition
    evals = np.sort(np.linalg.eigvalsh(np.cov(x, rowvar=False)))[::-1]
    assert np.allclose(prior.std ** 2, evals[:10], rtol=1e-4)
    assert np.allclose(prior.mean.ravel(), x.mean(axis=0), atol=1e-6)
    # decode . encode is the orthogonal projection onto the kept directions
    zs = np.random.default_rng(1).normal(size=(5, 10))
    assert np.allclose(prior.encode(prior.decode(zs)), zs, atol=1e-4)
    proj = prior.decode(prior.encode(images)).reshape(n, -1) - prior.mean.reshape(1, -1)
    u = prior.components.astype(np.float64)
    assert np.allclose(proj, (x - x.mean(axis=0)) @ u.T @ u, atol=1e-4)


def test_gaussian_prior_k_from_explained_variance():
    x, _ = _correlated(300, 25)
    images = x.reshape(300, 1, 5, 5)
    full = fit_prior(images, kind="gaussian", components=25)
    cum = np.cumsum(full.explained)
    floor = round(MIN_COMPONENT_FRACTION * 25)
    for variance in (0.5, 0.8, 0.95):
        prior = fit_prior(images, kind="gaussian", variance=variance)
        assert cum[prior.k - 1] >= variance - 1e-6
        assert prior.k == floor or cum[prior.k - 2] < variance
    assert fit_prior(images, kind="gaussian", variance=0.01).k == floor  # never fewer than the floor
    assert abs(float(full.explained.sum()) - 1.0) < 1e-5


def test_fit_prior_rejects_bad_samples():
    with pytest.raises(PriorError, match="N, C, H, W"):
        fit_prior(np.zeros((4, 5, 5)))
    with pytest.raises(PriorError, match="all the same"):
        fit_prior(np.ones((4, 1, 5, 5)), kind="gaussian")
    with pytest.raises(PriorError, match="NaN"):
        fit_prior(np.full((4, 1, 5, 5), np.nan))
    with pytest.raises(PriorError, match="kind"):
        fit_prior(np.random.default_rng(0).random((4, 1, 5, 5)), kind="wavelet")


# ----------------------------------------------------------------------------------- parameterizations
def _vjp_matches_finite_differences(prm, p, rng):
    """<g, d forward(p) / dp . v> by central differences == <vjp(p, g), v>, away from the clip edges."""
    g = rng.normal(size=prm.forward(p).shape)
    v = rng.normal(size=p.shape)
    eps = 1e-6
    fd = (np.sum(g * prm.forward(p + eps * v)) - np.sum(g * prm.forward(p - eps * v))) / (2 * eps)
    exact = np.sum(prm.vjp(p, g) * v)
    assert abs(fd - exact) <= 1e-6 * max(1.0, abs(exact))


def test_prior_parameterizations_have_exact_gradients():
    rng = np.random.default_rng(0)
    x, _ = _correlated(50, 64)
    prior = fit_prior(np.clip(x, 0.05, 0.95).reshape(50, 1, 8, 8), kind="gaussian", components=6)
    prm = prior.param()
    _vjp_matches_finite_differences(prm, 0.01 * rng.normal(size=(2, 6)), rng)
    fourier = natural_prior(3, 8, 8, contrast=0.05)
    phase = fourier.param()
    _vjp_matches_finite_differences(phase, phase.init(rng, 2), rng)
    # the penalty's gradient is exact too
    z = rng.normal(size=(3, 6))
    values, grad = prm.penalty(z)
    v = rng.normal(size=z.shape)
    fd = (prm.penalty(z + 1e-6 * v)[0].sum() - prm.penalty(z - 1e-6 * v)[0].sum()) / 2e-6
    assert np.isclose(fd, np.sum(grad * v), rtol=1e-6)
    assert np.allclose(values, np.mean(z * z, axis=1))


def test_phase_parameterization_keeps_the_amplitude_spectrum():
    rng = np.random.default_rng(2)
    prior = fit_prior(rng.random((30, 3, 16, 16)) * 0.1 + 0.45, kind="fourier")
    prm = prior.param()
    pre = prm.pre_squash(prm.init(rng, 4))  # before clipping
    dec = np.einsum("ij,bjhw->bihw", np.linalg.inv(prior.color), pre - prior.offset.reshape(1, -1, 1, 1))
    amp = np.abs(np.fft.rfft2(dec))
    # every coefficient keeps the prior's amplitude, except where irfft2 keeps only the real part
    inner = amp[..., 1:-1]
    assert np.allclose(inner, np.broadcast_to(prior.amplitude[..., 1:-1], inner.shape), rtol=1e-6, atol=1e-9)


# ----------------------------------------------------------------------------------- files
@pytest.fixture(scope="module")
def mnist_model():
    return onnxviz.load_model(MNIST)


@pytest.fixture(scope="module")
def small_prior(mnist_model):
    """A prior for the shipped model fitted on blurred random strokes (no data needed)."""
    rng = np.random.default_rng(0)
    pics = np.zeros((200, 1, 28, 28))
    for k in range(200):
        r, c = rng.integers(6, 22, size=2)
        pics[k, 0, r - 4:r + 4, c - 1:c + 2] = 1.0
        pics[k, 0, r - 1:r + 2, c - 4:c + 4] = rng.random()
    return fit_prior(pics, kind="gaussian", components=20, model=mnist_model)


def test_prior_round_trip_gives_the_same_images(tmp_path, mnist_model, small_prior):
    path = save_prior(small_prior, tmp_path / "p.npz")
    loaded = load_prior(path, mnist_model)
    assert isinstance(loaded, GaussianPrior)
    for a, b in zip(small_prior.arrays().values(), loaded.arrays().values()):
        assert np.array_equal(a, b)
    assert loaded.spec == small_prior.spec and loaded.spec.model_sha256 == model_digest(mnist_model)
    first = onnxviz.maximize(mnist_model, units=[3, 7], steps=12, prior=small_prior, seed=4)
    again = onnxviz.maximize(mnist_model, units=[3, 7], steps=12, prior=path, seed=4)
    assert np.array_equal(first.images, again.images)
    assert first.settings["prior"]["components"] == 20
    other = onnxviz.maximize(mnist_model, units=[3, 7], steps=12, prior=path, seed=5)
    assert not np.array_equal(first.images, other.images)


def test_prior_of_another_model_is_a_clear_error(tmp_path, mnist_model, small_prior):
    path = save_prior(small_prior, tmp_path / "p.npz")
    changed = onnx.ModelProto()
    changed.CopyFrom(mnist_model)
    init = changed.graph.initializer[0]
    init.CopyFrom(numpy_helper.from_array(numpy_helper.to_array(init) * 1.01, init.name))
    with pytest.raises(PriorError, match="fitted for another model"):
        load_prior(path, changed)
    with pytest.raises(PriorError, match="fitted for another model"):
        onnxviz.maximize(changed, units=[1], steps=2, prior=path)
    shapes = onnxviz.load_model(MODELS_DIR / "shapes_cnn.onnx")
    with pytest.raises(PriorError, match="1x28x28 images; the model takes 3x64x64"):
        onnxviz.maximize(shapes, units=[1], steps=2, prior=path)


def test_bad_prior_files_are_refused(tmp_path, mnist_model):
    with pytest.raises(PriorError, match="no such prior file"):
        load_prior(tmp_path / "missing.npz")
    (tmp_path / "junk.npz").write_bytes(b"not a zip")
    with pytest.raises(PriorError, match="not an onnxviz prior file"):
        load_prior(tmp_path / "junk.npz")
    np.savez(tmp_path / "plain.npz", mean=np.zeros(3))
    with pytest.raises(PriorError, match="not a valid onnxviz prior file"):
        load_prior(tmp_path / "plain.npz")
    # an object array (a pickle) is never loaded
    np.savez(tmp_path / "pickled.npz", header=np.array([{"format": "onnxviz-prior/1"}], dtype=object))
    with pytest.raises(PriorError):
        load_prior(tmp_path / "pickled.npz")


def test_prior_beside_the_model_is_found(tmp_path, small_prior):
    model = tmp_path / "digits.onnx"
    shutil.copy(MNIST, model)
    assert find_prior(model) is None
    plain = onnxviz.maximize(str(model), units=[2], steps=3)
    assert plain.settings["prior"] is None
    save_prior(small_prior, prior_path_for(model))
    assert prior_path_for(model).name == "digits.prior.npz" and find_prior(model) == prior_path_for(model)
    auto = onnxviz.maximize(str(model), units=[2], steps=3)
    assert auto.settings["prior"]["kind"] == "gaussian" and auto.settings["preset"].startswith("small+prior")
    assert onnxviz.maximize(str(model), units=[2], steps=3, prior=None).settings["prior"] is None
    # an explicit parameterization name means no automatic prior
    assert onnxviz.maximize(str(model), units=[2], steps=3, param="pixel").settings["prior"] is None


# ----------------------------------------------------------------------------------- the shipped prior
def test_shipped_prior_makes_digits_the_model_recognises(mnist_model):
    prior = load_prior(SHIPPED_PRIOR, mnist_model)
    assert prior.samples == 9000 and 20 <= prior.k <= 200
    result = onnxviz.maximize(str(MNIST), seed=0)  # found beside the model
    assert result.settings["prior"]["components"] == prior.k
    probs = onnxviz.make_session(mnist_model).run(None, {"image": result.images})[0]
    assert np.all(probs.argmax(axis=1) == np.arange(10))
    assert probs[np.arange(10), np.arange(10)].min() >= 0.99
    # images stay typical of the prior: whitened coefficients of the size of real digits' (rms ~ 1)
    z = prior.encode(result.images.transpose(0, 3, 1, 2))
    assert np.sqrt(np.mean(z * z, axis=1)).max() < 2.0


def test_feature_accentuation_moves_a_real_digit_a_little(mnist_model, mnist_dir):
    from onnxviz.datasets import load_mnist

    images, labels = load_mnist(mnist_dir, split="t10k")
    k = 9000 + int(np.flatnonzero(labels[9000:] == 4)[0])  # a held-out 4
    start = (images[k].astype(np.float32) / 255.0)[..., None]
    session = onnxviz.make_session(mnist_model)
    before = session.run(None, {"image": start[None]})[0][0]
    assert before.argmax() == 4
    result = onnxviz.maximize(str(MNIST), units=[9, 7, 1], start=start, seed=0)
    after = session.run(None, {"image": result.images})[0]
    assert np.all(after[np.arange(3), [9, 7, 1]] >= 0.9), after[np.arange(3), [9, 7, 1]]
    moved = result.settings["accentuation"]
    assert max(moved["pixel_rms"]) < 0.25 and "prior_distance" in moved
    for image in result.images:  # still the same picture: strongly correlated with the start
        assert np.corrcoef(image.ravel(), start.ravel())[0, 1] > 0.7
    # accentuating the class it already is changes (almost) nothing
    own = onnxviz.maximize(str(MNIST), units=[4], start=start, seed=0)
    assert own.settings["accentuation"]["pixel_rms"][0] < min(0.05, min(moved["pixel_rms"]) / 3)


# ----------------------------------------------------------------------------------- CLI
def test_cli_prior_fit_and_maximize_with_it(tmp_path, small_prior):
    from PIL import Image

    rng = np.random.default_rng(0)
    folder = tmp_path / "samples"
    folder.mkdir()
    for k in range(12):
        pic = np.zeros((28, 28), np.uint8)
        r, c = rng.integers(6, 22, size=2)
        pic[r - 5:r + 5, c - 2:c + 2] = 255
        Image.fromarray(pic).save(folder / f"s{k}.png")
    runner = CliRunner()
    out = tmp_path / "p.npz"
    res = runner.invoke(app, ["prior", "fit", str(folder), "--model", str(MNIST), "-o", str(out), "-k", "5"])
    assert res.exit_code == 0, res.output
    assert "gaussian prior from 12 images (5 components" in res.output
    prior = load_prior(out, onnxviz.load_model(MNIST))
    assert prior.k == 5 and prior.samples == 12
    png = tmp_path / "m.png"
    res = runner.invoke(app, ["maximize", str(MNIST), "--units", "0-1", "--steps", "3", "--prior", str(out),
                              "-o", str(png)])
    assert res.exit_code == 0, res.output
    assert "gaussian prior" in res.output and png.exists()
    res = runner.invoke(app, ["maximize", str(MNIST), "--units", "0-1", "--steps", "3", "--prior", "none",
                              "--json"])
    assert res.exit_code == 0 and '"prior": null' in res.output


def test_cli_prior_errors_are_one_line(tmp_path):
    runner = CliRunner()
    shapes = MODELS_DIR / "shapes_cnn.onnx"
    res = runner.invoke(app, ["maximize", str(shapes), "--units", "1", "--steps", "2", "--prior", str(SHIPPED_PRIOR),
                              "-o", str(tmp_path / "x.png")])
    assert res.exit_code == 2 and not (tmp_path / "x.png").exists()
    assert res.output.strip().startswith("error:") and len(res.output.strip().splitlines()) == 1
    res = runner.invoke(app, ["prior", "fit", str(tmp_path / "nothing"), "--model", str(MNIST), "-o",
                              str(tmp_path / "p.npz")])
    assert res.exit_code == 2 and "error:" in res.output and not (tmp_path / "p.npz").exists()
    res = runner.invoke(app, ["maximize", str(MNIST), "--units", "1", "--prior-weight", "-1", "--json"])
    assert res.exit_code == 2 and "--prior-weight" in res.output


def _masked_sum_model(mask: np.ndarray) -> onnx.ModelProto:
    """y = sum(x * mask) over C, H, W: a 'feature' that lives exactly where ``mask`` is."""
    from onnx import TensorProto, helper

    c, h, w = mask.shape
    graph = helper.make_graph(
        [helper.make_node("Mul", ["x", "mask"], ["m"]),
         helper.make_node("ReduceSum", ["m", "axes"], ["y"], keepdims=0)],
        "masked", [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", c, h, w])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N"])],
        [numpy_helper.from_array(mask.astype(np.float32)[None], "mask"),
         numpy_helper.from_array(np.array([1, 2, 3], np.int64), "axes")])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    return model


def test_fourier_prior_run_gives_a_transparency_map_where_the_feature_lives():
    mask = np.zeros((3, 32, 32))
    mask[:, 4:14, 18:28] = 1.0
    model = _masked_sum_model(mask)
    result = onnxviz.maximize(model, objective=[onnxviz.neuron(None, 0)], prior=natural_prior(3, 32, 32), steps=30,
                              seed=0, logits=False)
    alpha = result.transparency
    assert alpha is not None and alpha.shape == (1, 32, 32) and np.isclose(alpha.max(), 1.0)
    inside, outside = alpha[0][mask[0] > 0].mean(), alpha[0][mask[0] == 0].mean()
    assert inside > 4 * outside, (inside, outside)
    assert result.settings["prior"]["kind"] == "fourier"
    # the objective rose: the phase moved the image's energy into the mask
    assert result.history[-5:].mean() > result.history[:5].mean()
    # no transparency map for other parameterizations
    assert onnxviz.maximize(model, objective=[onnxviz.neuron(None, 0)], steps=3, logits=False).transparency is None


def test_a_parameterization_and_a_prior_together_are_refused(small_prior):
    with pytest.raises(onnxviz.OnnxvizError, match="either a parameterization"):
        onnxviz.maximize(str(MNIST), units=[1], steps=2, param="pixel", prior=small_prior)
