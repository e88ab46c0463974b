"""``onnxviz saliency | cam | occlusion``: figure and maps written, notes and numbers printed; bad
images and bad options end as one line, exit code 2 and no output file."""

from __future__ import annotations

import numpy as np
import pytest
from PIL import Image
from typer.testing import CliRunner

from onnxviz import cli
from onnxviz.attribution import Attributor, attribute

from conftest import assert_user_error

runner = CliRunner()


def invoke(*args):
    return runner.invoke(cli.app, [str(a) for a in args])


@pytest.fixture(scope="module")
def digits(tmp_path_factory, mnist_dir):
    from onnxviz.datasets import load_mnist

    images, labels = load_mnist(mnist_dir)
    d = tmp_path_factory.mktemp("digits")
    Image.fromarray(images[-1000]).save(d / "a.png")
    Image.fromarray(np.stack([images[-999]] * 3, -1)).resize((56, 56)).save(d / "b.jpg")
    np.save(d / "c.npy", images[-998:-996])
    (d / "bad.png").write_text("hello")
    np.save(d / "rank1.npy", np.zeros(784))
    return d, labels[-1000:-996]


def test_saliency_writes_figure_and_maps(digits, mnist_model_path, tmp_path):
    d, labels = digits
    out, npy = tmp_path / "s.png", tmp_path / "s.npy"
    r = invoke("saliency", mnist_model_path, d / "a.png", d / "b.jpg", d / "c.npy", "-o", out, "--save-npy", npy)
    assert r.exit_code == 0, r.output
    assert "b.jpg: JPEG 56x56 RGB -> image NHWC" in r.stdout and "RGB -> gray, resized 56x56 -> 28x28" in r.stdout
    assert f"c.npy[1]: top class {labels[3]}" in r.stdout
    maps = np.load(npy)
    assert maps.shape == (4, 28, 28) and maps.dtype == np.float32
    with Image.open(out) as im:
        assert im.format == "PNG" and im.width > 2 * 112
    # the saved maps are the library's maps for the same batch
    x = (np.asarray(Image.open(d / "a.png"), np.float32) / 255.0)[None, ..., None]
    np.testing.assert_allclose(maps[0], attribute(Attributor(mnist_model_path), x, "vanilla").maps[0], rtol=1e-5)


def test_saliency_several_methods_unit_and_metrics(digits, mnist_model_path, tmp_path):
    d, _ = digits
    npy = tmp_path / "m.npy"
    r = invoke("saliency", mnist_model_path, d / "a.png", "--method", "vanilla,ig,smoothgrad", "--unit", "3",
               "--steps", "16", "--samples", "4", "--metrics", "-o", tmp_path / "m.png", "--save-npy", npy)
    assert r.exit_code == 0, r.output
    assert "explaining 3" in r.stdout
    assert "ig: completeness error max" in r.stdout
    assert "random" in r.stdout and "deletion" in r.stdout
    assert np.load(npy).shape == (3, 1, 28, 28)


def test_cam_methods_layers_and_forward_passes(digits, mnist_model_path, tmp_path):
    d, _ = digits
    r = invoke("cam", mnist_model_path, d / "a.png", d / "c.npy", "--method", "gradcam,scorecam", "--top-n", "8",
               "-o", tmp_path / "c.png", "--save-npy", tmp_path / "c.npy")
    assert r.exit_code == 0, r.output
    assert "gradcam: layer Transpose__30 -> Transpose__30:0 NHWC (12, 12, 64)" in r.stdout
    assert "scorecam:" in r.stdout and "24 forward passes" in r.stdout  # 3 images x 8 channels
    assert np.load(tmp_path / "c.npy").shape == (2, 3, 28, 28)
    r = invoke("cam", mnist_model_path, d / "a.png", "--layer", "conv2d_1", "-o", tmp_path / "c2.png")
    assert r.exit_code == 0, r.output
    assert "NCHW (64, 24, 24)" in r.stdout


def test_occlusion_command(digits, mnist_model_path, tmp_path):
    d, _ = digits
    r = invoke("occlusion", mnist_model_path, d / "a.png", "--window", "7", "--stride", "7", "-o", tmp_path / "o.png",
               "--save-npy", tmp_path / "o.npy")
    assert r.exit_code == 0, r.output
    assert "17 forward passes" in r.stdout and "16 windows" in r.stdout
    assert np.load(tmp_path / "o.npy").shape == (1, 28, 28)


@pytest.mark.parametrize("args,parts", [
    (["saliency", "{model}", "{d}/bad.png"], ["bad.png", "not a PNG/JPEG image"]),
    (["cam", "{model}", "{d}/a.png", "{d}/rank1.npy"], ["rank1.npy", "rank 1"]),
    (["occlusion", "{model}", "{d}/missing.png"], ["missing.png", "no such file"]),
    (["saliency", "{model}", "{d}/a.png", "--method", "gradcam"], ["not a saliency method", "onnxviz cam"]),
    (["saliency", "{model}", "{d}/a.png", "--method", "lime"], ["unknown attribution method"]),
    (["cam", "{model}", "{d}/a.png", "--unit", "12"], ["out of range"]),
    (["cam", "{model}", "{d}/a.png", "--layer", "dense"], ["spatial feature map"]),
    (["cam", "{model}", "{d}/a.png", "--layer", "nope"], ["no layer named 'nope'"]),
])
def test_user_errors_are_one_line_and_write_nothing(digits, mnist_model_path, tmp_path, args, parts):
    d, _ = digits
    out, npy = tmp_path / "x.png", tmp_path / "x.npy"
    args = [a.format(model=mnist_model_path, d=d) for a in args] + ["-o", str(out), "--save-npy", str(npy)]
    r = invoke(*args)
    assert_user_error(r, *parts)
    assert not out.exists() and not npy.exists()
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]  # no temp files left


def test_sanity_flag_prints_the_randomization_check(digits, mnist_model_path, tmp_path):
    d, _ = digits
    r = invoke("saliency", mnist_model_path, d / "a.png", d / "c.npy", "--modifier", "none", "--sanity",
               "-o", tmp_path / "s.png")
    assert r.exit_code == 0, r.output
    line = next(ln for ln in r.stdout.splitlines() if ln.startswith("sanity vanilla:"))
    assert "(same weights) 1.000" in line
    top = float(line.split("preds/MatMul ")[1].split(",")[0])
    assert top < 0.5
    # the default |grad| maps: both lines, the signed one equal to the run above
    r2 = invoke("saliency", mnist_model_path, d / "a.png", d / "c.npy", "--sanity", "-o", tmp_path / "t.png")
    assert r2.exit_code == 0, r2.output
    lines = r2.stdout.splitlines()
    assert any(ln.startswith("sanity vanilla (abs maps):") for ln in lines)
    signed = next(ln for ln in lines if ln.startswith("sanity vanilla (signed maps):"))
    assert "(same weights) 1.000" in signed
    assert float(signed.split("preds/MatMul ")[1].split(",")[0]) == top
