"""Rendering: display conversion, labelled grids, GIFs, overlays, .npy — and that files are written
whole or not at all."""

from __future__ import annotations

from types import SimpleNamespace

import numpy as np
import pytest
from PIL import Image

from onnxviz.errors import OnnxvizError
from onnxviz.render import grid_image, overlay, save_gif, save_grid, save_npy, save_result, to_display


def test_to_display_layouts_and_ranges():
    rng = np.random.default_rng(0)
    nchw = rng.uniform(-1, 1, size=(2, 3, 4, 5))
    a = to_display(nchw, "NCHW", (-1, 1))
    b = to_display(nchw.transpose(0, 2, 3, 1), "NHWC", (-1, 1))
    assert a.shape == (2, 4, 5, 3) and a.dtype == np.uint8 and np.array_equal(a, b)
    assert np.array_equal(to_display(np.array([[[[-1.0]], [[0.0]], [[1.0]]]]).transpose(0, 2, 3, 1), "NHWC",
                                     (-1, 1))[0, 0, 0], [0, 128, 255])
    gray = to_display(np.full((1, 6, 6), 0.5), "NHW")
    assert gray.shape == (1, 6, 6, 1) and gray.max() == 128
    flat = to_display(np.linspace(0, 1, 16)[None], "NF")
    assert flat.shape == (1, 4, 4, 1) and flat[0, 0, 0, 0] == 0 and flat[0, 3, 3, 0] == 255
    # out-of-range values are clipped; minmax stretches each image to 0..255
    assert to_display(np.full((1, 2, 2, 1), 7.0))[0].max() == 255
    stretched = to_display(np.array([[[[0.2], [0.3]]]]), normalize="minmax")
    assert stretched.min() == 0 and stretched.max() == 255
    with pytest.raises(OnnxvizError):
        to_display(nchw, "NCDHW")
    with pytest.raises(OnnxvizError):
        to_display(nchw, normalize="log")


def test_grid_layout_scale_and_labels():
    images = np.zeros((10, 28, 28, 1))
    for i in range(10):
        images[i, :, :i + 1] = 1.0  # a white band, i + 1 columns wide
    plain = grid_image(images, None, cols=5, pad=4)
    tile = 28 * 4  # scaled to >= 96 px with an integer factor (4)
    assert plain.size == (5 * tile + 6 * 4, 2 * tile + 3 * 4)
    arr = np.asarray(plain)
    # first tile: a 4-px-wide band (1 column x 4), then black
    assert (arr[4 + 10, 4:4 + 4] == 255).all() and (arr[4 + 10, 4 + 4:4 + tile] == 0).all()
    labelled = grid_image(images, [f"digit {i}" for i in range(10)], cols=5, pad=4)
    assert labelled.size[1] > plain.size[1]
    below = np.asarray(labelled)[4 + tile:4 + tile + 12, 4:4 + tile]
    assert (below < 128).any()  # dark label text under the first tile
    rgb = grid_image(np.random.default_rng(0).uniform(size=(3, 3, 8, 8)), layout="NCHW", tile=32, cols=3)
    assert rgb.mode == "RGB" and rgb.size[0] == 3 * 32 + 4 * 4
    auto = grid_image(images, None, pad=4)  # 10 images: 5 x 2 without empty cells
    assert auto.size == plain.size
    with pytest.raises(OnnxvizError):
        grid_image(np.zeros((0, 8, 8, 1)))


def test_saved_files_are_complete_and_atomic(tmp_path):
    images = np.random.default_rng(1).uniform(size=(4, 8, 8, 1))
    png = save_grid(tmp_path / "sub" / "grid.png", images, ["a", "b", "c", "d"])
    with Image.open(png) as im:
        assert im.format == "PNG" and im.size[0] > 0
    frames = np.stack([images * k / 5 for k in range(6)])
    gif = save_gif(tmp_path / "opt.gif", frames, ["a", "b", "c", "d"], steps=list(range(0, 60, 10)))
    with Image.open(gif) as im:
        assert im.format == "GIF" and im.n_frames == 6
    npy = save_npy(tmp_path / "raw.npy", images.astype(np.float32))
    assert np.array_equal(np.load(npy), images.astype(np.float32))
    # a failing write leaves nothing behind: the parent "folder" is a file
    blocker = tmp_path / "file"
    blocker.write_text("x")
    with pytest.raises((OnnxvizError, OSError)):
        save_grid(blocker / "grid.png", images)
    with pytest.raises(OnnxvizError):
        save_gif(tmp_path / "bad.gif", images)  # not (T, n, ...) frames of a grid
    assert sorted(p.name for p in tmp_path.iterdir()) == ["file", "opt.gif", "raw.npy", "sub"]


def test_save_result_checks_before_writing(tmp_path):
    result = SimpleNamespace(images=np.zeros((2, 4, 4, 1)), labels=["x", "y"], layout="NHWC",
                             value_range=(0.0, 1.0), frames=None, frame_steps=[])
    with pytest.raises(OnnxvizError, match="frames"):
        save_result(result, png=tmp_path / "a.png", gif=tmp_path / "a.gif")
    assert list(tmp_path.iterdir()) == []  # the PNG was not written either
    written = save_result(result, png=tmp_path / "a.png", npy=tmp_path / "a.npy")
    assert [p.name for p in written] == ["a.png", "a.npy"]


def test_overlay():
    image = np.full((8, 8, 1), 0.5)
    heat = np.zeros((4, 4))
    heat[0, 0] = 1.0
    none = overlay(image, heat, alpha=0.0)
    assert none.shape == (8, 8, 3) and (none == 128).all()
    full = overlay(image, heat, alpha=1.0, cmap="gray")
    assert full.shape == (8, 8, 3)
    assert full[0, 0].min() > 200 and full[7, 7].max() < 10  # hot corner white, cold corner black
    assert np.array_equal(overlay(np.full((8, 8), 0.5), heat, alpha=0.0), none)  # H x W input
    nchw = overlay(np.full((3, 8, 8), 0.5), heat, alpha=0.5, layout="NCHW")
    assert nchw.shape == (8, 8, 3)
    with pytest.raises(OnnxvizError):
        overlay(image, np.zeros(4))
