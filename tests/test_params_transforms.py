"""Image-space pieces of activation maximization: parameterizations, transforms and regularizers.

Every linear piece is checked with the adjoint identity <T x, y> = <x, T* y>; every nonlinear piece
(the full parameterization VJP, the regularizer gradients) against float64 central differences; the
geometric transforms against exact numpy equivalents (np.pad, slicing, np.roll, np.rot90).
"""

from __future__ import annotations

import math

import numpy as np
import pytest

from onnxviz.errors import OnnxvizError
from onnxviz.params import (COLOR_CORRELATION_SVD_SQRT, Clip, ColorDecorrelation, FourierBasis, ImageParam,
                            PixelBasis, Sigmoid, image_param, rfft2_frequencies)
from onnxviz.regularizers import Blur, LpNorm, TotalVariation, regularizer_from_dict
from onnxviz.transforms import (MODES, CenterCrop, Jitter, Pad, Pipeline, Rotate, Scale, Translate, Warp,
                                _rotation)


def inner(a: np.ndarray, b: np.ndarray) -> float:
    return float(np.sum(np.asarray(a, np.float64) * np.asarray(b, np.float64)))


def assert_adjoint(forward, adjoint, x: np.ndarray, y: np.ndarray, rtol: float = 1e-10) -> None:
    lhs, rhs = inner(forward(x), y), inner(x, adjoint(y))
    assert abs(lhs - rhs) <= rtol * max(1.0, abs(lhs)), (lhs, rhs)


def central_difference(f, x: np.ndarray, v: np.ndarray, eps: float = 1e-6) -> float:
    return (f(x + eps * v) - f(x - eps * v)) / (2 * eps)


# ------------------------------------------------------------------------------- parameterizations
@pytest.mark.parametrize("h,w", [(28, 28), (7, 9), (8, 5), (1, 4), (64, 48)])
def test_fourier_basis_adjoint(h, w):
    rng = np.random.default_rng(h * 100 + w)
    basis = FourierBasis(h, w, decay=1.0)
    x = rng.normal(size=(2, *basis.param_shape(3, h, w)))
    y = rng.normal(size=(2, 3, h, w))
    assert_adjoint(basis.forward, basis.adjoint, x, y)


def test_fourier_basis_follows_the_1_over_f_spectrum():
    """A unit coefficient at frequency f becomes a cosine of amplitude ∝ 1/f (lucid's scaling)."""
    h = w = 16
    basis = FourierBasis(h, w, decay=1.0)
    freqs = rfft2_frequencies(h, w)
    amplitudes = {}
    for fy, fx in [(0, 1), (0, 2), (0, 4)]:
        p = np.zeros((1, 1, *basis.param_shape(1, h, w)[1:]))
        p[0, 0, fy, fx, 0] = 1.0
        img = basis.forward(p)[0, 0]
        amplitudes[fx] = img.max() - img.min()
        # a pure cosine along x
        assert np.allclose(img, img[0:1, :])
    assert freqs[0, 2] == pytest.approx(2 * freqs[0, 1])
    assert amplitudes[1] / amplitudes[2] == pytest.approx(2.0, rel=1e-9)
    assert amplitudes[2] / amplitudes[4] == pytest.approx(2.0, rel=1e-9)


def test_color_decorrelation_matrix_and_adjoint():
    rng = np.random.default_rng(0)
    color = ColorDecorrelation()
    norms = np.linalg.norm(color.matrix, axis=0)
    assert norms.max() == pytest.approx(1.0)
    assert np.allclose(color.matrix * np.max(np.linalg.norm(COLOR_CORRELATION_SVD_SQRT, axis=0)),
                       COLOR_CORRELATION_SVD_SQRT)
    x, y = rng.normal(size=(2, 3, 5, 6)), rng.normal(size=(2, 3, 5, 6))
    assert_adjoint(color.forward, color.adjoint, x, y)
    # each pixel's channels are mixed by the matrix
    assert np.allclose(color.forward(x)[1, :, 2, 3], color.matrix @ x[1, :, 2, 3])


def test_pixel_basis_is_identity():
    x = np.random.default_rng(0).normal(size=(2, 1, 4, 4))
    assert PixelBasis().forward(x) is x and PixelBasis().adjoint(x) is x


@pytest.mark.parametrize("spec,channels", [("pixel", 1), ("pixel", 3), ("fft", 1), ("fft", 3), ("fft-clip", 3),
                                           ("pixel-clip", 1)])
def test_param_vjp_matches_finite_differences(spec, channels):
    """The whole chain basis -> colour -> squash, VJP against float64 central differences."""
    h, w = 6, 7
    prm = image_param(spec, channels, h, w)
    rng = np.random.default_rng(1)
    p = prm.init(rng, 2)
    if spec == "fft-clip":
        p *= 2.0  # a few pixels outside [0, 1], where the clip's VJP is 0
    g = rng.normal(size=(2, channels, h, w))
    grad = prm.vjp(p, g)
    assert grad.shape == p.shape
    for k in range(3):
        v = rng.normal(size=p.shape)
        fd = central_difference(lambda q: inner(prm.forward(q), g), p, v)
        assert inner(grad, v) == pytest.approx(fd, rel=1e-6, abs=1e-9)


def test_param_ranges_and_defaults():
    rng = np.random.default_rng(0)
    for spec in ("pixel", "fft"):
        prm = image_param(spec, 3, 16, 16)
        x = prm.forward(prm.init(rng, 4) * 100)  # far outside: the sigmoid still keeps (0, 1)
        assert x.shape == (4, 3, 16, 16)
        assert x.min() >= 0.0 and x.max() <= 1.0
    assert image_param("fft", 3, 8, 8).color is not None  # RGB: decorrelated by default
    assert image_param("fft", 1, 8, 8).color is None
    clip = image_param("pixel-clip", 1, 8, 8)
    p = clip.init(rng, 1) + 5.0
    assert clip.project(p).max() == 1.0
    with pytest.raises(OnnxvizError):
        image_param("wavelet", 1, 8, 8)
    with pytest.raises(OnnxvizError):
        ImageParam(1, 8, 8, decorrelate=True)


def test_squashes():
    x = np.array([-50.0, -1.0, 0.0, 1.0, 50.0])
    s = Sigmoid().forward(x)
    assert np.allclose(s, 1 / (1 + np.exp(-x)))
    g = np.ones_like(x)
    assert np.allclose(Sigmoid().vjp(x, g), s * (1 - s))
    assert np.array_equal(Clip().vjp(np.array([-0.5, 0.0, 0.5, 1.0, 1.5]), np.ones(5)), [0, 1, 1, 1, 0])


# ------------------------------------------------------------------------------- transforms
ALL_TRANSFORMS = [Pad(3), Jitter(4), Translate(2), Scale(0.8, 1.25), Rotate(30.0), CenterCrop(5, 6)]


@pytest.mark.parametrize("transform", ALL_TRANSFORMS, ids=lambda t: t.describe()["type"])
@pytest.mark.parametrize("mode", MODES)
def test_each_transform_has_an_exact_adjoint(transform, mode):
    rng = np.random.default_rng(3)
    pipe = Pipeline([transform], mode=mode, fill=0.0)
    warp = pipe.realize([np.random.default_rng(i) for i in range(3)], 2, (9, 11))
    x = rng.normal(size=(3, 2, 9, 11))
    y = rng.normal(size=(3, 2, *warp.out_size))
    assert_adjoint(warp.apply, warp.adjoint, x, y)


@pytest.mark.parametrize("mode", MODES)
def test_pipeline_composes_into_one_exact_warp(mode):
    rng = np.random.default_rng(4)
    pipe = Pipeline([Pad(4), Jitter(3), Scale(0.9, 1.1), Rotate(10), Jitter(2)], mode=mode, fill=0.0,
                    out_size=(16, 12))
    warp = pipe.realize([np.random.default_rng(i) for i in range(4)], 3, (16, 12))
    assert warp.out_size == (16, 12)  # back to the model's size
    x, y = rng.normal(size=(4, 3, 16, 12)), rng.normal(size=(4, 3, 16, 12))
    assert_adjoint(warp.apply, warp.adjoint, x, y)


def test_transforms_match_numpy_exactly():
    rng = np.random.default_rng(5)
    x = rng.normal(size=(2, 3, 7, 9))
    # pad with a constant
    w = Pipeline([Pad(2)], fill=0.5).realize([rng, rng], 3, (7, 9))
    assert np.array_equal(w.apply(x), np.pad(x, ((0, 0), (0, 0), (2, 2), (2, 2)), constant_values=0.5))
    # pad in the other modes is numpy's
    for mode, np_mode in (("edge", "edge"), ("reflect", "reflect"), ("wrap", "wrap")):
        w = Pipeline([Pad(2)], mode=mode).realize([rng, rng], 3, (7, 9))
        assert np.allclose(w.apply(x), np.pad(x, ((0, 0), (0, 0), (2, 2), (2, 2)), mode=np_mode))
    # jitter is a crop at the drawn offset
    u = np.array([[0.99, 0.0]])
    m, size = Jitter(3).sample(u, (7, 9))
    assert size == (4, 6) and m[0, 0, 2] == 3 and m[0, 1, 2] == 0
    w = Warp(m, (7, 9), size, 3)
    assert np.array_equal(w.apply(x[:1]), x[:1, :, 3:7, 0:6])
    # translate with wrap is np.roll
    m, _ = Translate(3).sample(np.array([[0.0, 0.99]]), (7, 9))  # shift (-3, +3)
    w = Warp(m, (7, 9), (7, 9), 3, mode="wrap")
    assert np.array_equal(w.apply(x[:1]), np.roll(x[:1], (-3, 3), axis=(2, 3)))
    # a quarter turn is np.rot90 (counter-clockwise), bilinear weights exact on integer coordinates
    w = Warp(np.concatenate([_rotation(math.pi / 2, (7, 9), (9, 7))] * 2), (7, 9), (9, 7), 3)
    assert np.array_equal(w.apply(x), np.rot90(x, axes=(2, 3)))
    # scale 1 and rotate 0 are the identity; center crop is slicing
    for t in (Scale(1.0, 1.0), Rotate(0.0)):
        w = Pipeline([t]).realize([rng, rng], 3, (7, 9))
        assert np.array_equal(w.apply(x), x)
    w = Pipeline([CenterCrop(5, 5)]).realize([rng, rng], 3, (7, 9))
    assert np.array_equal(w.apply(x), x[:, :, 1:6, 2:7])


def test_scale_zooms_about_the_center():
    x = np.zeros((1, 1, 9, 9))
    x[0, 0, 4, 6] = 1.0  # two pixels right of the center
    m, _ = Scale(2.0, 2.0).sample(np.zeros((1, 1)), (9, 9))
    out = Warp(m, (9, 9), (9, 9), 1).apply(x)[0, 0]
    # zoom x2: the output pixel (4, 8) samples input (4, 6); its neighbours get half of it
    assert out[4, 8] == pytest.approx(1.0)
    assert out[4, 7] == pytest.approx(0.5) and out[4, 4] == 0.0


def test_constant_fill_is_affine_and_coverage_weighted():
    x = np.zeros((1, 1, 5, 5))
    w = Pipeline([Pad(1)], fill=0.25).realize([np.random.default_rng(0)], 1, (5, 5))
    out = w.apply(x)
    assert out[0, 0, 0, 0] == 0.25 and out[0, 0, 3, 3] == 0.0
    # the adjoint (of the linear part) ignores the fill
    assert np.array_equal(w.adjoint(np.ones((1, 1, 7, 7))), np.ones((1, 1, 5, 5)))


def test_realize_is_seeded_and_per_image():
    pipe = Pipeline([Pad(2), Jitter(4), Scale(0.9, 1.1), Rotate(10)], out_size=(12, 12))
    a = pipe.realize([np.random.default_rng([7, i]) for i in range(3)], 1, (12, 12))
    b = pipe.realize([np.random.default_rng([7, i]) for i in range(3)], 1, (12, 12))
    c = pipe.realize([np.random.default_rng([7, 1])], 1, (12, 12))  # image 1 alone
    d = pipe.realize([np.random.default_rng([8, i]) for i in range(3)], 1, (12, 12))
    assert np.array_equal(a.matrices, b.matrices)
    assert np.array_equal(a.matrices[1], c.matrices[0])  # independent of its batch mates
    assert not np.allclose(a.matrices, d.matrices)


@pytest.mark.parametrize("mode", MODES)
def test_realize_many_equals_one_step_at_a_time(mode):
    """maximize realizes a few steps' warps at once: same random draws, same tables, same images."""
    pipe = Pipeline([Pad(2), Jitter(4), Scale(0.9, 1.1), Rotate(10)], mode=mode, fill=0.25, out_size=(12, 10))
    many = pipe.realize_many([np.random.default_rng([3, i]) for i in range(2)], 3, (12, 10), 4)
    rngs = [np.random.default_rng([3, i]) for i in range(2)]
    x = np.random.default_rng(0).random((2, 3, 12, 10))
    g = np.random.default_rng(1).random((2, 3, 12, 10))
    assert len(many) == 4
    for w in many:
        one = pipe.realize(rngs, 3, (12, 10))
        assert np.array_equal(w.matrices, one.matrices)
        assert np.array_equal(w.index, one.index) and np.array_equal(w.weight, one.weight)
        assert np.array_equal(w.apply(x), one.apply(x)) and np.array_equal(w.adjoint(g), one.adjoint(g))
    assert not np.array_equal(many[0].matrices, many[1].matrices)


def test_bad_transform_settings():
    with pytest.raises(OnnxvizError):
        Pipeline([Jitter(9)]).realize([np.random.default_rng(0)], 1, (8, 8))
    with pytest.raises(OnnxvizError):
        Pipeline([], mode="mirror")


# ------------------------------------------------------------------------------- regularizers
REGULARIZERS = [TotalVariation(0.7), TotalVariation(0.5, beta=2.0), LpNorm(0.3, p=1.0, center=0.2),
                LpNorm(0.4, p=6.0), Blur(0.9, sigma=1.0), Blur(1.1, sigma=0.6)]


@pytest.mark.parametrize("reg", REGULARIZERS, ids=repr)
def test_regularizer_gradients_match_finite_differences(reg):
    rng = np.random.default_rng(6)
    x = rng.uniform(0, 1, size=(3, 2, 6, 7))
    values, grad = reg.value_and_grad(x)
    assert values.shape == (3,) and grad.shape == x.shape
    for i in range(3):  # per image: the value of image i depends on image i only
        f = lambda q: float(reg.value_and_grad(q)[0][i])  # noqa: E731
        v = np.zeros_like(x)
        v[i] = rng.normal(size=x.shape[1:])
        assert inner(grad, v) == pytest.approx(central_difference(f, x, v), rel=1e-5, abs=1e-10)


def test_regularizer_values():
    flat = np.full((1, 1, 8, 8), 0.3)
    tv = TotalVariation(1.0, eps=0.0)
    assert tv.value_and_grad(flat)[0][0] == pytest.approx(0.0, abs=1e-12)
    stripes = np.zeros((1, 1, 8, 8))
    stripes[..., ::2] = 1.0  # every horizontal difference is 1
    assert tv.value_and_grad(stripes)[0][0] == pytest.approx(1.0)
    assert LpNorm(2.0, p=1.0).value_and_grad(flat)[0][0] == pytest.approx(0.6)
    assert LpNorm(1.0, p=2.0, eps=0.0).value_and_grad(flat)[0][0] == pytest.approx(0.3)
    blur = Blur(1.0, sigma=1.0)
    assert blur.value_and_grad(stripes)[0][0] > 10 * blur.value_and_grad(flat)[0][0]
    # the blur operator is self-adjoint (symmetric kernel, zero padding)
    rng = np.random.default_rng(0)
    a, b = rng.normal(size=(2, 1, 9, 8)), rng.normal(size=(2, 1, 9, 8))
    assert_adjoint(blur.blur, blur.blur, a, b)
    for reg in REGULARIZERS:
        assert repr(regularizer_from_dict(reg.describe())) == repr(reg)
