"""Reading PNG / JPEG / NPY files and converting them to a model's input: values, channels, size,
layout and range, with a note of what was done; unreadable files and wrong ranks are ImageErrors."""

from __future__ import annotations

import numpy as np
import pytest
from onnx import TensorProto, helper
from PIL import Image

from onnxviz.errors import ImageError, ShapeError
from onnxviz.images import ModelInput, convert_image, load_images, model_input, read_image, resize_bilinear


def spec(layout="NHWC", c=1, h=8, w=8, lo=0.0, hi=1.0):
    shape = (h, w, c) if layout == "NHWC" else (c, h, w) if layout == "NCHW" else (h, w)
    return ModelInput("x", layout, shape, c, h, w, (lo, hi))


def _identity_model(shape, layout=None, value_range=None):
    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, shape)
    y = helper.make_tensor_value_info("y", TensorProto.FLOAT, shape)
    m = helper.make_model(helper.make_graph([helper.make_node("Identity", ["x"], ["y"])], "g", [x], [y]),
                          opset_imports=[helper.make_opsetid("", 18)])
    m.ir_version = 10
    if layout:
        m.metadata_props.add(key="onnxviz.input_layout", value=layout)
    if value_range:
        m.metadata_props.add(key="onnxviz.input_range", value=str(list(value_range)))
    return m


def test_model_input_layouts_and_shapes():
    s = model_input(_identity_model(["N", 3, 16, 12]))
    assert (s.layout, s.channels, s.height, s.width, s.batch) == ("NCHW", 3, 16, 12, None)
    s = model_input(_identity_model(["N", 28, 28, 1]))
    assert (s.layout, s.channels, s.height, s.width) == ("NHWC", 1, 28, 28)
    s = model_input(_identity_model([2, 10, 9]))
    assert (s.layout, s.shape, s.batch) == ("NHW", (10, 9), 2)
    s = model_input(_identity_model(["N", 3, "H", "W"]), input_shape=(1, 3, 32, 32))
    assert (s.height, s.width) == (32, 32)
    with pytest.raises(ShapeError, match="dynamic"):
        model_input(_identity_model(["N", 3, "H", "W"]))
    with pytest.raises(ShapeError, match="not an image"):
        model_input(_identity_model(["N", 10]))
    s = model_input(_identity_model(["N", 3, 4, 4], value_range=(-1, 1)))
    assert s.value_range == (-1.0, 1.0)


def test_to_model_and_back_round_trip():
    rng = np.random.default_rng(0)
    u = rng.random((2, 4, 5, 3)).astype(np.float32)
    s = ModelInput("x", "NCHW", (3, 4, 5), 3, 4, 5, (-1.0, 1.0))
    x = s.to_model(u)
    assert x.shape == (2, 3, 4, 5)
    np.testing.assert_allclose(x[1, 2, 3, 4], u[1, 3, 4, 2] * 2 - 1, rtol=1e-6)
    np.testing.assert_allclose(s.to_unit(x), u, atol=1e-6)


def test_png_gray_to_rgb_nchw_and_range(tmp_path):
    px = np.arange(64, dtype=np.uint8).reshape(8, 8) * 4
    Image.fromarray(px).save(tmp_path / "g.png")
    s = spec("NCHW", c=3, lo=-1.0, hi=1.0)
    loaded = load_images([tmp_path / "g.png"], s)
    assert loaded.batch.shape == (1, 3, 8, 8) and loaded.labels == ["g.png"]
    np.testing.assert_allclose(loaded.batch[0, 1], px / 255.0 * 2 - 1, atol=1e-6)
    assert "gray -> RGB" in loaded.notes[0] and "0..255 -> [-1, 1]" in loaded.notes[0]
    assert "resized" not in loaded.notes[0]


def test_rgb_png_to_gray_model_matches_pillow_luma(tmp_path):
    rng = np.random.default_rng(1)
    rgb = rng.integers(0, 256, (8, 8, 3), dtype=np.uint8)
    Image.fromarray(rgb).save(tmp_path / "c.png")
    loaded = load_images([tmp_path / "c.png"], spec())
    luma = np.asarray(Image.fromarray(rgb).convert("L"), np.float32) / 255.0
    np.testing.assert_allclose(loaded.batch[0, ..., 0], luma, atol=1.01 / 255)
    assert "RGB -> gray" in loaded.notes[0]


def test_rgba_and_resize_and_jpeg(tmp_path):
    rgba = np.zeros((20, 10, 4), np.uint8)
    rgba[..., 0] = 255
    rgba[..., 3] = 128
    Image.fromarray(rgba, "RGBA").save(tmp_path / "a.png")
    Image.fromarray(rgba[..., :3]).save(tmp_path / "b.jpg", quality=95)
    loaded = load_images([tmp_path / "a.png", tmp_path / "b.jpg"], spec("NHWC", c=3))
    assert loaded.batch.shape == (2, 8, 8, 3)
    assert "alpha dropped" in loaded.notes[0]
    assert "resized 10x20 -> 8x8 (aspect ratio not kept)" in loaded.notes[0]
    assert "JPEG" in loaded.notes[1]
    np.testing.assert_allclose(loaded.batch[0, ..., 0], 1.0, atol=1e-6)
    np.testing.assert_allclose(loaded.batch[1, ..., 0], 1.0, atol=0.03)


def test_sixteen_bit_png(tmp_path):
    px = (np.arange(64, dtype=np.uint16).reshape(8, 8) * 1000)
    Image.fromarray(px).save(tmp_path / "d.png")
    loaded = load_images([tmp_path / "d.png"], spec())
    np.testing.assert_allclose(loaded.batch[0, ..., 0], px / 65535.0, atol=1e-6)


@pytest.mark.parametrize("arr,want_n,note", [
    (np.full((8, 8), 255, np.uint8), 1, "0..255"),
    (np.full((8, 8, 1), 0.5, np.float32), 1, "taken as the model range"),
    (np.full((8, 8), 127.5, np.float64), 1, "read as 0..255 pixels"),
    (np.full((5, 8, 8), 0.25, np.float32), 5, "5 images"),
    (np.full((3, 1, 8, 8), 0.25, np.float32), 3, "3 images"),
    (np.full((1, 8, 8), 0.25, np.float32), 1, "NPY float32 (1, 8, 8)"),
])
def test_npy_shapes_and_values(tmp_path, arr, want_n, note):
    np.save(tmp_path / "a.npy", arr)
    loaded = load_images([tmp_path / "a.npy"], spec())
    assert len(loaded) == want_n and loaded.batch.shape == (want_n, 8, 8, 1)
    assert note in loaded.notes[0], loaded.notes[0]
    if want_n > 1:
        assert loaded.labels[1] == "a.npy[1]"


def test_npy_values_outside_the_range_are_used_as_is(tmp_path):
    np.save(tmp_path / "n.npy", np.full((8, 8), -3.0, np.float32))
    loaded = load_images([tmp_path / "n.npy"], spec())
    assert np.all(loaded.batch == -3.0) and "outside the model range" in loaded.notes[0]


@pytest.mark.parametrize("suffix,make,match", [
    (".png", lambda p: p.write_text("not an image"), "not a PNG/JPEG image"),
    (".png", lambda p: p.write_bytes(b"\x89PNG\r\n\x1a\n" + b"\0" * 20), "cannot read image"),
    (".jpg", lambda p: p.write_bytes(b"\xff\xd8\xff\xe0" + b"\0" * 10), "cannot read image"),
    (".npy", lambda p: np.save(p, np.zeros(10)), "rank 1"),
    (".npy", lambda p: np.save(p, np.zeros((1, 1, 4, 4, 1))), "rank 5"),
    (".npy", lambda p: np.save(p, np.array(["a", "b"])), "expected numbers"),
    (".npy", lambda p: p.write_bytes(b"\x93NUMPY garbage"), "not a readable .npy"),
    (".npy", lambda p: np.save(p, np.zeros((2, 5, 8, 8))), "no channel axis"),
])
def test_bad_images_raise_image_error(tmp_path, suffix, make, match):
    path = tmp_path / f"bad{suffix}"
    make(path)
    with pytest.raises(ImageError, match=match):
        load_images([path], spec())


def test_missing_file_and_directory(tmp_path):
    with pytest.raises(ImageError, match="no such file"):
        load_images([tmp_path / "nope.png"], spec())
    with pytest.raises(ImageError, match="directory"):
        read_image(tmp_path)
    with pytest.raises(ImageError, match="no images"):
        load_images([], spec())


def test_convert_image_direct_and_resize_bilinear():
    px = np.zeros((1, 4, 4, 3), np.uint8)
    u, notes = convert_image(px, spec("NHWC", c=3, h=4, w=4), scale=255.0)
    assert u.shape == (1, 4, 4, 3) and notes == ["0..255 -> [0, 1]"]
    two = ModelInput("x", "NCHW", (2, 4, 4), 2, 4, 4, (0.0, 1.0))
    with pytest.raises(ImageError, match="3 channel.* takes 2"):
        convert_image(px, two, scale=255.0)
    a = np.random.default_rng(2).random((2, 3, 4)).astype(np.float32)
    up = resize_bilinear(a, (6, 8))
    ref = np.asarray(Image.fromarray(a[1], "F").resize((8, 6), Image.BILINEAR))
    np.testing.assert_allclose(up[1], ref, atol=1e-6)
    assert resize_bilinear(a, (3, 4)).shape == (2, 3, 4)
