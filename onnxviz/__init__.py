"""onnxviz: see what a trained neural network has learned (activation maximization, saliency, CAM)
for any ONNX model, on onnx + onnxruntime alone.

Importing onnxviz never imports a training framework (TensorFlow, Keras, PyTorch); onnxruntime is
imported on first use.
"""

from __future__ import annotations

import sys as _sys

if _sys.argv and _sys.argv[0].replace("\\", "/").rsplit("/", 1)[-1] in ("onnxviz", "onnxviz.exe", "onnxviz-script.py"):
    import signal as _signal

    def _interrupted_while_starting(signum: int, frame: object) -> None:
        """The console script, Ctrl-C during the imports below (~0.5 s): one line, not a traceback
        from inside numpy or onnx. ``onnxviz.cli.main`` puts Python's handler back."""
        _sys.stderr.write("error: interrupted; no file was written\n")
        raise SystemExit(128 + signum)

    _signal.signal(_signal.SIGINT, _interrupted_while_starting)

from .errors import (
    ConversionError,
    ImageError,
    LayerNotFoundError,
    MissingDependencyError,
    ModelLoadError,
    OnnxvizError,
    ParityError,
    RewriteError,
    ShapeError,
    UnsupportedOpError,
)
from .fileio import atomic_output, save_model
from .graph import (
    META_CLASSES,
    META_LAYOUT,
    META_RANGE,
    META_SOURCE,
    InputInfo,
    Layer,
    ModelLayer,
    class_names,
    find_layer,
    infer_shapes,
    input_info,
    layer_names,
    layer_output,
    layer_table,
    load_model,
    metadata,
    model_layer,
    model_layers,
    model_summary,
    opset_version,
    parameter_count,
    set_metadata,
    tensor_dtype,
    tensor_shape,
)
from .rewrite import FinalActivation, expose, final_activation, to_logits, truncate, upgrade_opset
from .runtime import available_providers, make_session
from .shipped import shipped_model_path, shipped_models
from .images import ModelInput, load_images, model_input
from .attribution import Attribution, Attributor, attribute, explain_files
from .maximize import MaximizeResult, Maximizer, Settings, StepInfo, default_settings, maximize, parse_units
from .objectives import Objective, channel, direction, diversity, neuron, unit
from .params import ImageParam, image_param
from .render import grid_image, overlay, save_gif, save_grid, save_npy, save_result, to_display
from .report import ReportRecord, build_report, write_report
from .version import __version__
from .fvsanity import VisualizationSanity, visualization_sanity
from . import regularizers, transforms  # noqa: E402 - namespaces for maximize(transforms=..., regularizers=...)



__all__ = [
    "__version__", "build_report", "write_report", "ReportRecord", "visualization_sanity", "VisualizationSanity",
    # errors
    "OnnxvizError", "ModelLoadError", "LayerNotFoundError", "RewriteError", "ShapeError",
    "UnsupportedOpError", "ConversionError", "ParityError", "MissingDependencyError", "ImageError",
    # graph
    "META_CLASSES", "META_LAYOUT", "META_RANGE", "META_SOURCE", "Layer", "InputInfo", "load_model",
    "infer_shapes", "layer_table", "layer_names", "tensor_shape", "tensor_dtype", "find_layer",
    "ModelLayer", "model_layers", "model_layer", "layer_output",
    "input_info", "metadata", "set_metadata", "class_names", "opset_version", "parameter_count",
    "model_summary",
    # rewrite
    "FinalActivation", "final_activation", "to_logits", "expose", "truncate", "upgrade_opset",
    # runtime
    "available_providers", "make_session",
    # files and shipped models
    "atomic_output", "save_model", "shipped_model_path", "shipped_models",
    # activation maximization
    "maximize", "Maximizer", "MaximizeResult", "StepInfo", "Settings", "default_settings", "parse_units",
    "Objective", "unit", "channel", "neuron", "direction", "diversity", "ImageParam", "image_param",
    "transforms", "regularizers",
    # rendering
    "to_display", "grid_image", "save_grid", "save_gif", "save_npy", "save_result", "overlay",
    # images and attribution
    "ModelInput", "model_input", "load_images", "Attribution", "Attributor", "attribute", "explain_files",
]
