"""Op categories: the one place that says which ONNX ops belong to which group.

Every module that asks "is this op an activation / layout-preserving / channels-first / a spatial
collapse?" reads these sets, so that the answers cannot disagree between modules.
"""

from __future__ import annotations

__all__ = [
    "ACTIVATIONS", "SAME_LAYOUT_OPS", "CHANNELS_FIRST_OPS", "INPUT_PREPROCESSING_OPS", "FINAL_ACTIVATIONS",
    "SHAPE_ONLY_OPS", "SPATIAL_COLLAPSING_OPS", "CONV_OPS", "CONV_POOL_OPS", "WEIGHT_OPS",
    "WEIGHT_PASS_THROUGH_OPS", "CONSTANT_OPS",
]

#: Elementwise activations a layer's output may pass through (a Keras ``Conv2D(activation=...)``
#: layer's output is after them). Every one has a gradient rule.
ACTIVATIONS = frozenset({
    "Relu", "LeakyRelu", "PRelu", "Elu", "Selu", "Sigmoid", "HardSigmoid", "HardSwish", "Tanh",
    "Softplus", "Clip", "Gelu",
})

#: Ops whose output keeps the channel axis of their data input.
SAME_LAYOUT_OPS = ACTIVATIONS | {
    "Softsign", "Identity", "Dropout", "Erf", "Abs", "Neg", "Exp", "Add", "Sub", "Mul", "Div", "Max",
    "Min", "Sum", "Mean", "Cast", "Sqrt", "Pow", "Where",
}

#: Ops that read and write channels-first tensors (ONNX's own convention for them).
CHANNELS_FIRST_OPS = frozenset({
    "Conv", "ConvTranspose", "MaxPool", "AveragePool", "GlobalAveragePool", "GlobalMaxPool", "LpPool",
    "BatchNormalization", "InstanceNormalization", "GroupNormalization", "LRN", "DepthToSpace",
    "SpaceToDepth", "MaxUnpool", "Upsample",
})

#: Preprocessing between a graph input and its first real layer (scaling, casts) that layout
#: detection looks through.
INPUT_PREPROCESSING_OPS = frozenset({"Cast", "Identity", "Div", "Sub", "Mul", "Add", "Clip", "CastLike"})

#: Final activations that ``rewrite.to_logits`` strips.
FINAL_ACTIVATIONS = ("Softmax", "LogSoftmax", "Sigmoid")

#: Ops that only reshape: looked through between logits and a final activation.
SHAPE_ONLY_OPS = ("Identity", "Reshape", "Flatten", "Squeeze", "Unsqueeze")

#: Ops that end the spatial part of a network (global pooling, flatten, a reshape to vectors).
SPATIAL_COLLAPSING_OPS = frozenset({
    "GlobalAveragePool", "GlobalMaxPool", "GlobalLpPool", "Flatten", "Reshape", "ReduceMean",
    "ReduceMax", "ReduceSum", "ReduceL2", "AveragePool", "MaxPool", "Squeeze",
})

#: Convolutions, and convolutions or poolings (keras-vis' "Conv or Pooling" layer).
CONV_OPS = ("Conv", "ConvTranspose")
CONV_POOL_OPS = frozenset({"Conv", "ConvTranspose", "MaxPool", "AveragePool", "LpPool"})

#: Ops with trainable weights (what the randomization checks re-draw).
WEIGHT_OPS = frozenset({"Conv", "ConvTranspose", "Gemm", "MatMul", "BatchNormalization"})

#: Ops between an initializer and the weight input it feeds (casts, dequantization, reshapes).
WEIGHT_PASS_THROUGH_OPS = frozenset({"Identity", "Cast", "Transpose", "Reshape", "Unsqueeze", "Squeeze",
                                     "DequantizeLinear"})

#: Ops that make constants (not a data path).
CONSTANT_OPS = ("Constant", "ConstantOfShape")
