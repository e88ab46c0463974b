"""Model inspection: loading, shapes, the layer table, find_layer, input layout/range, metadata."""

from __future__ import annotations

import json
import os

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

import models as M
from onnxviz.errors import LayerNotFoundError, ModelLoadError, OnnxvizError
from onnxviz.graphview import dims
from onnxviz.graph import (
    META_CLASSES, META_LAYOUT, META_RANGE, class_names, find_layer, infer_shapes, input_info,
    layer_table, load_model, metadata, model_summary, opset_version, parameter_count, set_metadata,
    tensor_dtype, tensor_shape,
)


@pytest.fixture(scope="module")
def keras_model() -> onnx.ModelProto:
    return M.keras_named()


@pytest.fixture
def model_file(tmp_path):
    path = tmp_path / "net.onnx"
    onnx.save(M.conv_net(), str(path))
    return path


# ------------------------------------------------------------------------------------ loading
def test_load_from_path_bytes_and_proto(model_file):
    by_path = load_model(model_file)
    by_str = load_model(str(model_file))
    by_bytes = load_model(model_file.read_bytes())
    by_proto = load_model(by_path)
    for m in (by_str, by_bytes, by_proto):
        assert m.SerializeToString() == by_path.SerializeToString()
    assert [n.op_type for n in by_path.graph.node] == ["Conv", "Relu", "MaxPool", "Flatten", "Gemm", "Softmax"]


def test_load_proto_returns_a_copy():
    original = M.conv_net()
    loaded = load_model(original)
    assert loaded is not original
    loaded.graph.node[0].name = "changed"
    assert original.graph.node[0].name == "conv"


def _assert_one_line(err: pytest.ExceptionInfo, *parts: str) -> None:
    text = str(err.value)
    assert "\n" not in text
    for part in parts:
        assert part in text, text


def test_missing_file(tmp_path):
    with pytest.raises(ModelLoadError) as err:
        load_model(tmp_path / "nope.onnx")
    _assert_one_line(err, "nope.onnx", "no such file")


@pytest.mark.parametrize("content", [os.urandom(4096), b"hello world, not a model\n", b""],
                         ids=["random", "text", "empty"])
def test_not_an_onnx_file(tmp_path, content):
    path = tmp_path / "x.onnx"
    path.write_bytes(content)
    with pytest.raises(ModelLoadError) as err:
        load_model(path)
    _assert_one_line(err, "x.onnx")
    with pytest.raises(ModelLoadError):
        load_model(content)


def test_truncated_file(tmp_path, model_file):
    data = model_file.read_bytes()
    for cut in (len(data) // 2, len(data) - 7, 40):
        path = tmp_path / f"cut{cut}.onnx"
        path.write_bytes(data[:cut])
        with pytest.raises(ModelLoadError) as err:
            load_model(path)
        _assert_one_line(err, f"cut{cut}.onnx")


def test_directory_is_not_a_model(tmp_path):
    with pytest.raises(ModelLoadError) as err:
        load_model(tmp_path)
    _assert_one_line(err, "directory")


def test_invalid_graph_is_rejected_unless_check_false():
    model = M.conv_net()
    model.graph.node[1].input[0] = "undefined_tensor"
    with pytest.raises(ModelLoadError) as err:
        load_model(model)
    _assert_one_line(err, "invalid ONNX model")
    assert load_model(model, check=False).graph.node[1].input[0] == "undefined_tensor"


def test_external_data_loads_by_path(tmp_path):
    model = M.conv_net()
    want = {t.name: numpy_helper.to_array(t) for t in model.graph.initializer}
    path = tmp_path / "ext.onnx"
    onnx.save_model(model, str(path), save_as_external_data=True, location="ext.onnx.data",
                    size_threshold=0)  # (converts `model` in place)
    assert (tmp_path / "ext.onnx.data").exists()
    loaded = load_model(path)
    for t in loaded.graph.initializer:
        np.testing.assert_array_equal(numpy_helper.to_array(t), want[t.name])
    (tmp_path / "ext.onnx.data").unlink()
    with pytest.raises(ModelLoadError):
        load_model(path)


# ------------------------------------------------------------------------------------ shapes
def test_infer_shapes_keeps_symbolic_batch_and_does_not_mutate():
    model = M.conv_net(batch="N")
    before = model.SerializeToString()
    inferred = infer_shapes(model)
    assert model.SerializeToString() == before
    shapes = {vi.name: dims(vi.type) for vi in inferred.graph.value_info}
    assert shapes["conv_out"] == ("N", 4, 8, 8)
    assert shapes["pool_out"] == ("N", 4, 4, 4)


def test_layer_table_rows_and_shapes():
    rows = layer_table(M.conv_net(batch="N"))
    assert [r.index for r in rows] == list(range(6))
    assert [r.op_type for r in rows] == ["Conv", "Relu", "MaxPool", "Flatten", "Gemm", "Softmax"]
    by_name = {r.name: r for r in rows}
    assert by_name["conv"].shapes == (("N", 4, 8, 8),)
    assert by_name["pool"].shape == ("N", 4, 4, 4)
    assert by_name["fc"].output == "logits" and by_name["fc"].shape == ("N", 10)
    d = by_name["conv"].to_dict()
    assert d["index"] == 0 and d["op_type"] == "Conv" and d["outputs"] == ["conv_out"]
    assert d["shape"] == ["N", 4, 8, 8] and d["shapes"] == [["N", 4, 8, 8]]
    json.dumps([r.to_dict() for r in rows])  # JSON-ready


def test_layer_table_static_batch():
    rows = layer_table(M.conv_net(batch=3))
    assert rows[-1].shape == (3, 10)


def test_infer_shapes_with_large_weights():
    """Weights above the skeleton limit are left out of the inference copy, not out of the result."""
    w = np.random.default_rng(0).standard_normal((600, 1000)).astype(np.float32)  # 2.4 MB
    nodes = [helper.make_node("MatMul", ["x", "w"], ["h"]), helper.make_node("Relu", ["h"], ["y"])]
    g = helper.make_graph(nodes, "big", [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["B", 600])],
                          [helper.make_tensor_value_info("y", TensorProto.FLOAT, None)],
                          initializer=[numpy_helper.from_array(w, "w")])
    model = helper.make_model(g, opset_imports=[helper.make_opsetid("", 17)])
    inferred = infer_shapes(model)
    assert tensor_shape(inferred, "h") == ("B", 1000)
    np.testing.assert_array_equal(numpy_helper.to_array(inferred.graph.initializer[0]), w)


def test_tensor_shape_and_dtype_for_every_kind_of_value():
    model = M.conv_net(batch="N")
    assert tensor_shape(model, "x") == ("N", 1, 8, 8)  # input
    assert tensor_shape(model, "conv.w") == (4, 1, 3, 3)  # initializer
    assert tensor_shape(model, "relu_out") == ("N", 4, 8, 8)  # intermediate
    assert tensor_shape(model, "probs") == ("N", 10)  # output
    assert tensor_dtype(model, "relu_out") == TensorProto.FLOAT
    assert tensor_dtype(model, "conv.b") == TensorProto.FLOAT
    with pytest.raises(LayerNotFoundError) as err:
        tensor_shape(model, "relu_ou")
    assert "relu_out" in str(err.value)


# ------------------------------------------------------------------------------------ find_layer
def test_find_layer_by_index_name_and_tensor():
    model = M.conv_net()
    assert find_layer(model, 0).name == "conv"
    assert find_layer(model, -1).op_type == "Softmax"
    assert find_layer(model, -6).name == "conv"
    assert find_layer(model, "2").name == "pool"
    assert find_layer(model, "-2").name == "fc"
    assert find_layer(model, np.int64(1)).name == "relu"
    assert find_layer(model, "pool").index == 2
    assert find_layer(model, "flat").name == "flatten"  # tensor name -> producing node
    layer = find_layer(model, "fc")
    assert layer.outputs == ("logits",) and layer.shape == ("N", 10)


@pytest.mark.parametrize("index", [6, -7, 100])
def test_find_layer_index_out_of_range(index):
    with pytest.raises(LayerNotFoundError) as err:
        find_layer(M.conv_net(), index)
    assert "out of range" in str(err.value)


def test_find_layer_keras_export_names(keras_model):
    # layer `conv2d` -> scope conv2d_1, layer `conv2d_1` -> scope conv2d_1_2: the LAST node of each
    assert find_layer(keras_model, "conv2d").name == "sequential_1/conv2d_1/Relu"
    assert find_layer(keras_model, "conv2d_1").name == "sequential_1/conv2d_1_2/Relu"
    assert find_layer(keras_model, "preds").name == "sequential_1/preds_1/Softmax"
    assert find_layer(keras_model, "preds").output == "output_0"
    assert find_layer(keras_model, "flatten").op_type == "Reshape"
    assert find_layer(keras_model, "sequential/preds").op_type == "Softmax"
    assert find_layer(keras_model, "sequential_1/preds_1").op_type == "Softmax"
    assert find_layer(keras_model, "conv2d_1_2").name == "sequential_1/conv2d_1_2/Relu"  # exact segment
    assert find_layer(keras_model, "sequential_1/preds_1/MatMul").op_type == "MatMul"  # node name
    assert find_layer(keras_model, "add").name == "sequential_1/preds_1/Add"  # tensor name


def test_find_layer_keras_export_with_clean_node_names():
    """The shipped model's naming: clean layer names on nodes, uniquified paths on tensors."""
    model = M.keras_named(clean=True)
    assert [n.name for n in model.graph.node][1:4] == ["conv2d/convolution", "conv2d/Relu", "conv2d_1/convolution"]
    assert find_layer(model, "conv2d").name == "conv2d/Relu"
    assert find_layer(model, "conv2d_1").name == "conv2d_1/Relu"
    assert find_layer(model, "preds").name == "preds/Softmax"
    assert find_layer(model, "preds").output == "Identity:0"
    assert find_layer(model, "flatten").op_type == "Reshape"
    assert find_layer(model, "mnist_cnn_1/conv2d_1_2/Relu:0").name == "conv2d_1/Relu"  # tensor name


def test_exact_segments_win_for_other_producers(keras_model):
    other = onnx.ModelProto()
    other.CopyFrom(keras_model)
    other.producer_name = "some-exporter"
    assert find_layer(other, "conv2d_1").name == "sequential_1/conv2d_1/Relu"
    assert find_layer(other, "conv2d").name == "sequential_1/conv2d_1/Relu"  # stripped as fallback


def test_find_layer_torch_module_paths():
    model = M.torch_named()
    assert find_layer(model, "layer1.0.conv2").name == "/layer1/layer1.0/conv2/Conv"
    assert find_layer(model, "layer1.1.conv1").name == "/layer1/layer1.1/conv1/Conv"
    assert find_layer(model, "layer1.0").name == "/layer1/layer1.0/Relu_1"
    assert find_layer(model, "layer1").name == "/layer1/layer1.1/Relu_1"
    assert find_layer(model, "stem").name == "/stem/Conv"
    assert find_layer(model, "fc").op_type == "Gemm"


def test_find_layer_torch_dynamo_metadata():
    model = M.torch_named()
    node = model.graph.node[1]
    node.name = "node_conv2d_1"
    entry = node.metadata_props.add()
    entry.key, entry.value = "pkg.torch.onnx.name_scopes", "['', 'layer1', '0', 'conv1']"
    assert find_layer(model, "layer1.0.conv1").name == "node_conv2d_1"


def test_unknown_layer_lists_closest_names(keras_model):
    with pytest.raises(LayerNotFoundError) as err:
        find_layer(keras_model, "pred")
    msg = str(err.value)
    assert "'pred'" in msg and "preds" in msg and "\n" not in msg
    with pytest.raises(LayerNotFoundError) as err:
        find_layer(keras_model, "sequential_1/preds_1/Softmx")
    assert "sequential_1/preds_1/Softmax" in str(err.value)
    with pytest.raises(LayerNotFoundError) as err:
        find_layer(keras_model, "keras_tensor")  # an input is not a layer
    assert "input" in str(err.value)
    assert isinstance(err.value, KeyError) and isinstance(err.value, OnnxvizError)


# ------------------------------------------------------------------------------------ inputs
def test_input_layout_heuristics():
    assert input_info(M.conv_net())[0].layout == "NCHW"
    assert input_info(M.conv_net(channels=3))[0].layout == "NCHW"
    nhwc = input_info(M.nhwc_net(channels=3))[0]
    assert nhwc.layout == "NHWC" and nhwc.shape == ("N", 8, 8, 3)
    assert input_info(M.keras_named())[0].layout == "NHWC"
    assert input_info(M.two_input_net())[0].layout is None  # rank 2: not an image


def test_layout_from_transpose_when_dims_are_ambiguous():
    # [N, 3, 3, 3]: the dims cannot tell, the Transpose [0,3,1,2] after the input does
    model = M.nhwc_net(size=3, channels=3)
    assert input_info(model)[0].layout == "NHWC"


def _single_input(shape, elem=TensorProto.FLOAT) -> onnx.ModelProto:
    x = helper.make_tensor_value_info("x", elem, shape)
    y = helper.make_tensor_value_info("y", elem, shape)
    g = helper.make_graph([helper.make_node("Identity", ["x"], ["y"])], "g", [x], [y])
    return helper.make_model(g, opset_imports=[helper.make_opsetid("", 17)])


@pytest.mark.parametrize("shape,layout", [
    (["N", 28, 28, 1], "NHWC"), ([1, 224, 224, 3], "NHWC"), ([1, 3, 224, 224], "NCHW"),
    (["N", 1, "H", "W"], "NCHW"), ([1, 16, 16, 16], None), ([1, 3, 8, 8, 8], "NCDHW"),
    ([1, 8, 8, 8, 3], "NDHWC"), ([1, 3, 8], None),
])
def test_layout_from_dims(shape, layout):
    assert input_info(_single_input(shape))[0].layout == layout


def test_input_value_range_default_and_integer():
    info = input_info(M.conv_net())[0]
    assert info.value_range == (0.0, 1.0) and info.dtype == np.float32
    info = input_info(_single_input([1, 8, 8, 3], TensorProto.UINT8))[0]
    assert info.value_range == (0.0, 255.0) and info.dtype == np.uint8


def test_metadata_wins_for_layout_and_range():
    model = set_metadata(M.conv_net(), **{META_LAYOUT: "NHWC", META_RANGE: [-1, 1]})
    info = input_info(model)[0]
    assert info.layout == "NHWC" and info.value_range == (-1.0, 1.0)
    per_input = set_metadata(M.two_input_net(), **{META_RANGE: {"b": [0, 255]}})
    ranges = {i.name: i.value_range for i in input_info(per_input)}
    assert ranges == {"a": (0.0, 1.0), "b": (0.0, 255.0)}
    with pytest.raises(OnnxvizError):
        input_info(set_metadata(M.conv_net(), **{META_RANGE: "[0]"}))
    with pytest.raises(OnnxvizError):
        input_info(set_metadata(M.conv_net(), **{META_LAYOUT: "HWC?"}))


def test_input_info_skips_initializers_listed_as_inputs():
    model = M.conv_net()
    model.ir_version = 3
    for t in model.graph.initializer:
        model.graph.input.append(helper.make_tensor_value_info(t.name, t.data_type, list(t.dims)))
    assert [i.name for i in input_info(model)] == ["x"]


# ------------------------------------------------------------------------------------ metadata
def test_metadata_roundtrip_and_class_names():
    model = M.conv_net()
    tagged = set_metadata(model, **{META_CLASSES: [str(i) for i in range(10)], "note": "hi"})
    assert metadata(model) == {}  # the original is untouched
    assert metadata(tagged)["note"] == "hi"
    assert json.loads(metadata(tagged)[META_CLASSES])[3] == "3"
    assert class_names(tagged) == [str(i) for i in range(10)]
    assert class_names(model) is None
    assert metadata(set_metadata(tagged, note=None)).get("note") is None
    with pytest.raises(OnnxvizError):
        class_names(set_metadata(model, **{META_CLASSES: "not json"}))


def test_opset_parameters_and_summary():
    model = M.keras_named()
    assert opset_version(model) == 18
    assert opset_version(M.legacy_ops_net(13)) == 13
    assert parameter_count(model) == 3 * 9 + 3 + 4 * 27 + 4 + 160 + 10 + 2
    summary = model_summary(model)
    assert summary["inputs"][0]["layout"] == "NHWC"
    assert summary["outputs"][0] == {"name": "output_0", "shape": ["N", 10], "dtype": "float32"}
    assert summary["ops"]["Conv"] == 2 and summary["producer"] == "tf2onnx"
    json.dumps(summary)


# ------------------------------------------------------------------------------------ shipped model
def test_shipped_model_layers_by_keras_name(mnist_model_path):
    model = load_model(mnist_model_path)
    preds = find_layer(model, "preds")
    assert preds.op_type == "Softmax" and preds.output == model.graph.output[0].name
    assert find_layer(model, "conv2d").shape[1:] == (32, 26, 26)  # NCHW inside the graph
    assert find_layer(model, "conv2d_1").shape[1:] == (64, 24, 24)
    assert find_layer(model, "dense").shape[-1] == 128
    info = input_info(model)[0]
    assert info.layout == "NHWC" and info.value_range == (0.0, 1.0)
    assert info.shape[1:] == (28, 28, 1) and isinstance(info.shape[0], str)  # symbolic batch
    assert class_names(model) == [str(i) for i in range(10)]
