"""keras-vis code on onnxviz: the tutorial's calls, with one import changed.

keras-vis (``vis``) stopped working with TensorFlow 1 and tf-keras-vis does not run on Keras 3.
This package keeps their names, argument names and return shapes on top of onnxviz::

    from onnxviz.keras_vis import visualize_activation, visualize_saliency, visualize_cam, overlay, utils
    from keras import activations          # or: from onnxviz.keras_vis import activations

    layer_idx = utils.find_layer_idx(model, 'preds')
    model.layers[layer_idx].activation = activations.linear   # swap softmax for linear
    model = utils.apply_modifications(model)
    img = visualize_activation(model, layer_idx, filter_indices=3, input_range=(0., 1.))   # (28, 28, 1)
    grads = visualize_saliency(model, layer_idx, filter_indices=3, seed_input=x)             # (28, 28) in [0, 1]
    heat = visualize_cam(model, layer_idx, filter_indices=3, seed_input=x)                   # (28, 28) in [0, 1]

``model`` is a Keras 3 model (converted to ONNX on the fly with ``converters.to_onnx``, the only
place Keras is imported) or an ONNX model: ``model = utils.load_model("model.onnx")`` gives it the
``.layers`` that keras-vis code changes. See :mod:`onnxviz.keras_vis._model` for how layer indices
map to ONNX tensors, and the README section "Porting keras-vis code".
"""

from __future__ import annotations

from . import activations, input_modifiers, utils
from ._model import (KerasVisError, KerasVisLayerNotFoundError, KerasVisModel, LayerView, UnsupportedOptionError)
from .visualization import get_num_filters, overlay, visualize_activation, visualize_cam, visualize_saliency

__all__ = ["visualize_activation", "visualize_saliency", "visualize_cam", "overlay", "get_num_filters", "utils",
           "activations", "input_modifiers", "KerasVisModel", "LayerView", "KerasVisError",
           "KerasVisLayerNotFoundError", "UnsupportedOptionError"]
