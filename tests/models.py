"""Tiny ONNX models for tests, built with ``onnx.helper`` (no training framework).

Weights come from a seeded generator so every call gives the same model.
"""

from __future__ import annotations

from typing import Sequence

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

FLOAT = TensorProto.FLOAT


def _init(name: str, shape: Sequence[int], rng: np.random.Generator, scale: float = 0.5) -> onnx.TensorProto:
    return numpy_helper.from_array((rng.standard_normal(shape) * scale).astype(np.float32), name)


def _ints(name: str, values: Sequence[int]) -> onnx.TensorProto:
    return numpy_helper.from_array(np.asarray(values, dtype=np.int64), name)


def _model(nodes, inputs, outputs, inits, opset: int = 17, producer: str = "onnxviz-tests",
           name: str = "test") -> onnx.ModelProto:
    graph = helper.make_graph(nodes, name, inputs, outputs, initializer=inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)],
                              producer_name=producer)
    model.ir_version = min(model.ir_version, 8 if opset <= 18 else 10)
    model = onnx.shape_inference.infer_shapes(model)  # fills the output types left open
    del model.graph.value_info[:]  # like most exporters: no intermediate value_info
    onnx.checker.check_model(model, full_check=True)
    return model


def conv_net(batch: int | str = "N", final: str | None = "Softmax", classes: int = 10,
             tail: Sequence[str] = (), size: int = 8, channels: int = 1, seed: int = 0,
             opset: int = 17) -> onnx.ModelProto:
    """NCHW: x[batch,C,size,size] → Conv(4,3x3,pad 1) → Relu → MaxPool 2 → Flatten → Gemm →
    ``final`` (Softmax / LogSoftmax / Sigmoid / None) → ``tail`` ops (Identity / Reshape / Flatten /
    Squeeze / Unsqueeze), output ``probs``."""
    rng = np.random.default_rng(seed)
    half = size // 2
    inits = [_init("conv.w", [4, channels, 3, 3], rng), _init("conv.b", [4], rng),
             _init("fc.w", [4 * half * half, classes], rng, 0.3), _init("fc.b", [classes], rng)]
    nodes = [
        helper.make_node("Conv", ["x", "conv.w", "conv.b"], ["conv_out"], name="conv", pads=[1, 1, 1, 1]),
        helper.make_node("Relu", ["conv_out"], ["relu_out"], name="relu"),
        helper.make_node("MaxPool", ["relu_out"], ["pool_out"], name="pool", kernel_shape=[2, 2], strides=[2, 2]),
        helper.make_node("Flatten", ["pool_out"], ["flat"], name="flatten"),
        helper.make_node("Gemm", ["flat", "fc.w", "fc.b"], ["logits"], name="fc"),
    ]
    last = "logits"
    if final:
        nodes.append(helper.make_node(final, [last], ["act"], name=final.lower()))
        last = "act"
    for i, op in enumerate(tail):
        out = f"tail{i}"
        if op == "Reshape":
            inits.append(_ints(f"tail{i}.shape", [-1, classes]))
            nodes.append(helper.make_node(op, [last, f"tail{i}.shape"], [out], name=f"tail{i}"))
        elif op == "Unsqueeze":
            inits.append(_ints(f"tail{i}.axes", [1]))
            nodes.append(helper.make_node(op, [last, f"tail{i}.axes"], [out], name=f"tail{i}"))
        elif op == "Squeeze":  # undoes a preceding Unsqueeze
            inits.append(_ints(f"tail{i}.axes", [1]))
            nodes.append(helper.make_node(op, [last, f"tail{i}.axes"], [out], name=f"tail{i}"))
        else:
            nodes.append(helper.make_node(op, [last], [out], name=f"tail{i}"))
        last = out
    nodes[-1].output[0] = "probs"  # nothing consumes the last node's output
    x = helper.make_tensor_value_info("x", FLOAT, [batch, channels, size, size])
    y = helper.make_tensor_value_info("probs", FLOAT, None)
    y.type.tensor_type.ClearField("shape")
    return _model(nodes, [x], [y], inits, opset=opset)


def nhwc_net(batch: int | str = "N", size: int = 8, channels: int = 1, seed: int = 1) -> onnx.ModelProto:
    """NHWC input (as Keras exports): x[batch,size,size,C] → Transpose[0,3,1,2] → Conv → Relu →
    GlobalAveragePool → Flatten → Gemm → Softmax ``probs``."""
    rng = np.random.default_rng(seed)
    inits = [_init("w", [6, channels, 3, 3], rng), _init("b", [6], rng),
             _init("fc.w", [6, 5], rng), _init("fc.b", [5], rng)]
    nodes = [
        helper.make_node("Transpose", ["input_1"], ["nchw"], name="to_nchw", perm=[0, 3, 1, 2]),
        helper.make_node("Conv", ["nchw", "w", "b"], ["c"], name="conv", pads=[1, 1, 1, 1]),
        helper.make_node("Relu", ["c"], ["r"], name="relu"),
        helper.make_node("GlobalAveragePool", ["r"], ["g"], name="gap"),
        helper.make_node("Flatten", ["g"], ["f"], name="flatten"),
        helper.make_node("Gemm", ["f", "fc.w", "fc.b"], ["z"], name="fc"),
        helper.make_node("Softmax", ["z"], ["probs"], name="softmax"),
    ]
    x = helper.make_tensor_value_info("input_1", FLOAT, [batch, size, size, channels])
    y = helper.make_tensor_value_info("probs", FLOAT, [batch, 5])
    return _model(nodes, [x], [y], inits)


def keras_named(seed: int = 2, clean: bool = False) -> onnx.ModelProto:
    """Node names as the Keras 3.15 export (tf2onnx) writes them: every scope segment gets a
    ``_<digits>`` uniquifier (layer ``conv2d`` → ``conv2d_1``, layer ``conv2d_1`` → ``conv2d_1_2``,
    layer ``preds`` → ``preds_1``). Input NHWC [N,6,6,1].

    ``clean=True``: the other naming measured on Keras 3.15 exports (the shipped model): nodes
    named by the clean layer (``conv2d_1/BiasAdd``), the uniquified path only in tensor names
    (``mnist_cnn_1/conv2d_1_2/BiasAdd:0``)."""
    rng = np.random.default_rng(seed)
    inits = [_init("w1", [3, 1, 3, 3], rng), _init("b1", [3], rng), _init("w2", [4, 3, 3, 3], rng),
             _init("b2", [4], rng), _init("dw", [4 * 2 * 2, 10], rng, 0.3), _init("db", [10], rng),
             _ints("flat_shape", [-1, 16])]
    s = "sequential_1"
    nodes = [
        helper.make_node("Transpose", ["keras_tensor"], ["t0"], name=f"{s}/conv2d_1/convolution__5", perm=[0, 3, 1, 2]),
        helper.make_node("Conv", ["t0", "w1", "b1"], ["c1"], name=f"{s}/conv2d_1/convolution"),
        helper.make_node("Relu", ["c1"], ["r1"], name=f"{s}/conv2d_1/Relu"),
        helper.make_node("Conv", ["r1", "w2", "b2"], ["c2"], name=f"{s}/conv2d_1_2/convolution"),
        helper.make_node("Relu", ["c2"], ["r2"], name=f"{s}/conv2d_1_2/Relu"),
        helper.make_node("Transpose", ["r2"], ["t2"], name=f"{s}/flatten_1/Reshape__9", perm=[0, 2, 3, 1]),
        helper.make_node("Reshape", ["t2", "flat_shape"], ["f"], name=f"{s}/flatten_1/Reshape"),
        helper.make_node("MatMul", ["f", "dw"], ["mm"], name=f"{s}/preds_1/MatMul"),
        helper.make_node("Add", ["mm", "db"], ["add"], name=f"{s}/preds_1/Add"),
        helper.make_node("Softmax", ["add"], ["output_0"], name=f"{s}/preds_1/Softmax", axis=-1),
    ]
    if clean:
        tensors = {}
        for n in nodes:
            scope = n.name.split("/")
            layer = {"conv2d_1": "conv2d", "conv2d_1_2": "conv2d_1"}.get(scope[1], scope[1].rsplit("_", 1)[0])
            tensors[n.output[0]] = f"mnist_cnn_1/{scope[1]}/{scope[2]}:0"
            n.name = f"{layer}/{scope[2]}"
        tensors["output_0"] = "Identity:0"
        for n in nodes:
            n.input[:] = [tensors.get(i, i) for i in n.input]
            n.output[:] = [tensors[o] for o in n.output]
    x = helper.make_tensor_value_info("keras_tensor", FLOAT, ["N", 6, 6, 1])
    y = helper.make_tensor_value_info("Identity:0" if clean else "output_0", FLOAT, ["N", 10])
    return _model(nodes, [x], [y], inits, opset=18, producer="tf2onnx")


def torch_named(seed: int = 3) -> onnx.ModelProto:
    """Node names as ``torch.onnx.export`` (TorchScript) writes them: ``/layer1/layer1.0/conv1/Conv``."""
    rng = np.random.default_rng(seed)
    inits = [_init("stem.weight", [2, 1, 3, 3], rng)]
    nodes = [helper.make_node("Conv", ["input", "stem.weight"], ["/stem/Conv_output_0"], name="/stem/Conv",
                              pads=[1, 1, 1, 1])]
    last = "/stem/Conv_output_0"
    for block in range(2):
        for conv in (1, 2):
            w = f"layer1.{block}.conv{conv}.weight"
            inits.append(_init(w, [2, 2, 3, 3], rng))
            name = f"/layer1/layer1.{block}/conv{conv}/Conv"
            nodes.append(helper.make_node("Conv", [last, w], [name + "_output_0"], name=name, pads=[1, 1, 1, 1]))
            relu = f"/layer1/layer1.{block}/Relu" + ("" if conv == 1 else "_1")
            nodes.append(helper.make_node("Relu", [name + "_output_0"], [relu + "_output_0"], name=relu))
            last = relu + "_output_0"
    nodes.append(helper.make_node("GlobalAveragePool", [last], ["/pool/GlobalAveragePool_output_0"],
                                  name="/pool/GlobalAveragePool"))
    nodes.append(helper.make_node("Flatten", ["/pool/GlobalAveragePool_output_0"], ["/Flatten_output_0"],
                                  name="/Flatten"))
    inits += [_init("fc.weight", [3, 2], rng), _init("fc.bias", [3], rng)]
    nodes.append(helper.make_node("Gemm", ["/Flatten_output_0", "fc.weight", "fc.bias"], ["logits"],
                                  name="/fc/Gemm", transB=1))
    x = helper.make_tensor_value_info("input", FLOAT, ["batch_size", 1, 5, 5])
    y = helper.make_tensor_value_info("logits", FLOAT, ["batch_size", 3])
    return _model(nodes, [x], [y], inits, producer="pytorch")


def legacy_ops_net(opset: int = 13, seed: int = 4) -> onnx.ModelProto:
    """An old-opset model using ops whose signature changed since: Conv, MaxPool, ReduceMean (axes
    attribute until 18), Softmax, Dropout, Split (``split`` input since 13), Squeeze (axes input since
    13). x[1,2,6,6] → output ``y`` [1,4]."""
    rng = np.random.default_rng(seed)
    inits = [_init("w", [4, 2, 3, 3], rng), _init("b", [4], rng), _ints("split", [2, 2]),
             _ints("sq_axes", [2, 3])]
    nodes = [
        helper.make_node("Conv", ["x", "w", "b"], ["c"], pads=[1, 1, 1, 1], name="conv"),
        helper.make_node("MaxPool", ["c"], ["p"], kernel_shape=[2, 2], strides=[2, 2], name="pool"),
        helper.make_node("Dropout", ["p"], ["d"], name="dropout"),
        helper.make_node("Split", ["d", "split"], ["s0", "s1"], axis=1, name="split"),
        helper.make_node("Mul", ["s0", "s1"], ["m"], name="mul"),
        helper.make_node("Concat", ["m", "s1"], ["cat"], axis=1, name="concat"),
        helper.make_node("ReduceMean", ["cat"], ["rm"], axes=[2, 3], keepdims=1, name="mean"),
        helper.make_node("Squeeze", ["rm", "sq_axes"], ["sq"], name="squeeze"),
        helper.make_node("Softmax", ["sq"], ["y"], axis=1, name="softmax"),
    ]
    x = helper.make_tensor_value_info("x", FLOAT, [1, 2, 6, 6])
    y = helper.make_tensor_value_info("y", FLOAT, [1, 4])
    return _model(nodes, [x], [y], inits, opset=opset)


def two_input_net(seed: int = 5) -> onnx.ModelProto:
    """Two inputs a[N,3], b[N,3] with separate branches joined at the end: ``ha = Relu(a W)``,
    ``hb = Tanh(b)``, ``y = ha + hb`` (so truncating at ``ha`` needs only ``a``)."""
    rng = np.random.default_rng(seed)
    inits = [_init("W", [3, 3], rng), _init("unused", [2], rng)]
    nodes = [
        helper.make_node("MatMul", ["a", "W"], ["am"], name="matmul"),
        helper.make_node("Relu", ["am"], ["ha"], name="relu"),
        helper.make_node("Tanh", ["b"], ["hb"], name="tanh"),
        helper.make_node("Add", ["ha", "hb"], ["y"], name="add"),
    ]
    a = helper.make_tensor_value_info("a", FLOAT, ["N", 3])
    b = helper.make_tensor_value_info("b", FLOAT, ["N", 3])
    y = helper.make_tensor_value_info("y", FLOAT, ["N", 3])
    return _model(nodes, [a, b], [y], inits)


def random_input(model: onnx.ModelProto, batch: int = 2, seed: int = 0) -> dict[str, np.ndarray]:
    """Feeds for every graph input (symbolic dims → ``batch``), standard normal float32."""
    rng = np.random.default_rng(seed)
    inits = {t.name for t in model.graph.initializer}
    feeds = {}
    for vi in model.graph.input:
        if vi.name in inits:
            continue
        dims = [d.dim_value if d.HasField("dim_value") else batch for d in vi.type.tensor_type.shape.dim]
        feeds[vi.name] = rng.standard_normal(dims).astype(np.float32)
    return feeds


def run(model: onnx.ModelProto, feeds: dict[str, np.ndarray], outputs: Sequence[str] | None = None) -> list[np.ndarray]:
    """Run a model on onnxruntime's CPU provider."""
    import onnxruntime as ort

    opts = ort.SessionOptions()
    opts.log_severity_level = 3
    opts.intra_op_num_threads = 1
    sess = ort.InferenceSession(model.SerializeToString(), opts, providers=["CPUExecutionProvider"])
    return sess.run(list(outputs) if outputs else None, feeds)
