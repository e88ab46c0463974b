"""Attribution on ONNX: which input pixels made the model decide.

Gradient family (``saliency``), CAM family (``cam``), occlusion (``occlusion``), and the metrics
that check the maps (``metrics``: deletion / insertion AUC, model-parameter randomization). Every
method takes a model (path, bytes, ModelProto or a reusable :class:`Attributor`), a batch in the
model's input layout and range (see :func:`onnxviz.images.load_images` for files), and a unit
(``None``: each image's top class) and returns an :class:`Attribution` with ``(N, H, W)`` maps at
the input's resolution.

    from onnxviz.attribution import Attributor, attribute
    att = Attributor("models/mnist_cnn.onnx")
    res = attribute(att, x, "gradcam")          # res.maps: (N, 28, 28)
"""

from __future__ import annotations

from typing import Any, Callable

import numpy as np

from ..errors import OnnxvizError
from .cam import (CAM_METHODS, CamLayer, cam_gradient_model, default_cam_layer, feature_maps, gradcam,
                  gradcam_plus_plus, guided_gradcam, layercam, resolve_cam_layer, scorecam)
from .core import MODIFIERS, Attribution, Attributor, as_attributor, reduce_channels
from .explain import Explanation, explain_files
from .figure import attribution_figure, overlay_maps, save_figure, stack_maps
from .metrics import (RandomizationResult, WeightLayer, deletion_auc, deletion_curve, insertion_auc, random_maps,
                      randomization_check, randomize_layers, spearman, weight_layers)
from .occlusion import occlusion
from .saliency import (SMOOTHGRAD_VARIANTS, deconvnet, gradient_x_input, guided_backprop, integrated_gradients,
                       smoothgrad, vanilla_gradient)

__all__ = [
    "Attribution", "Attributor", "attribute", "METHODS", "SALIENCY_METHODS", "CAM_METHODS", "MODIFIERS",
    "vanilla_gradient", "smoothgrad", "gradient_x_input", "integrated_gradients", "guided_backprop",
    "deconvnet", "guided_gradcam", "gradcam", "gradcam_plus_plus", "layercam", "scorecam", "occlusion",
    "default_cam_layer", "resolve_cam_layer", "cam_gradient_model", "feature_maps", "CamLayer",
    "deletion_curve", "deletion_auc", "insertion_auc", "random_maps", "spearman", "weight_layers",
    "WeightLayer", "randomize_layers", "randomization_check", "RandomizationResult",
    "overlay_maps", "attribution_figure", "save_figure", "stack_maps", "reduce_channels", "as_attributor",
    "SMOOTHGRAD_VARIANTS", "method_name", "explain_files", "Explanation",
]

SALIENCY_METHODS = ("vanilla", "smoothgrad", "smoothgrad-squared", "vargrad", "gradxinput", "ig", "guided",
                    "deconvnet")

_METHODS: dict[str, Callable[..., Attribution]] = {
    "vanilla": vanilla_gradient,
    "smoothgrad": smoothgrad,
    "smoothgrad-squared": lambda m, x, unit=None, **o: smoothgrad(m, x, unit, variant="squared", **o),
    "vargrad": lambda m, x, unit=None, **o: smoothgrad(m, x, unit, variant="vargrad", **o),
    "gradxinput": gradient_x_input,
    "ig": integrated_gradients,
    "guided": guided_backprop,
    "deconvnet": deconvnet,
    "gradcam": gradcam,
    "gradcam++": gradcam_plus_plus,
    "layercam": layercam,
    "scorecam": scorecam,
    "guided-gradcam": guided_gradcam,
    "occlusion": occlusion,
}
_ALIASES = {"saliency": "vanilla", "gradient": "vanilla", "integrated-gradients": "ig",
            "integrated_gradients": "ig", "gradient-x-input": "gradxinput", "gxi": "gradxinput",
            "guided-backprop": "guided", "gradcampp": "gradcam++", "gradcam-plus-plus": "gradcam++",
            "guided_gradcam": "guided-gradcam", "guidedgradcam": "guided-gradcam", "smoothgrad2": "smoothgrad-squared"}
#: Every method name :func:`attribute` accepts (aliases aside).
METHODS = tuple(_METHODS)
#: Options each method accepts (anything else is ignored by :func:`attribute` when ``strict=False``).
_OPTIONS = {
    "vanilla": {"modifier"}, "guided": {"modifier"}, "deconvnet": {"modifier"}, "gradxinput": {"modifier"},
    "smoothgrad": {"samples", "noise", "variant", "modifier", "seed"},
    "smoothgrad-squared": {"samples", "noise", "seed"}, "vargrad": {"samples", "noise", "seed"},
    "ig": {"steps", "baseline", "modifier"},
    "gradcam": {"layer"}, "gradcam++": {"layer"}, "layercam": {"layer"},
    "scorecam": {"layer", "top_n", "baseline"}, "guided-gradcam": {"layer", "modifier"},
    "occlusion": {"window", "stride", "fill", "score"},
}


def method_name(method: str) -> str:
    """The canonical name of ``method`` (aliases and case resolved); unknown -> OnnxvizError."""
    key = str(method).strip().lower().replace(" ", "")
    key = _ALIASES.get(key, key)
    if key not in _METHODS:
        raise OnnxvizError(f"unknown attribution method {method!r} (choose: {', '.join(METHODS)})")
    return key


def attribute(model: Any, x: np.ndarray, method: str = "vanilla", unit: Any = None, *, strict: bool = False,
              **options: Any) -> Attribution:
    """Run one attribution ``method`` (see :data:`METHODS`) on a model-layout batch ``x``. Options
    a method does not take are dropped (``strict=True`` raises instead), so one set of settings can
    drive several methods. ``class_names=`` (a list, a names file or ``"a,b,c"``) labels the
    classes when ``model`` is not already an :class:`Attributor`."""
    name = method_name(method)
    names = options.pop("class_names", None)
    if names is not None:
        model = as_attributor(model, class_names=names)
    allowed = _OPTIONS[name]
    extra = {k for k, v in options.items() if k not in allowed and v is not None}
    if extra and strict:
        raise OnnxvizError(f"method {name!r} takes no option(s) {', '.join(sorted(extra))}")
    kwargs = {k: v for k, v in options.items() if k in allowed and v is not None}
    if "modifier" in options and "modifier" in allowed:
        kwargs["modifier"] = options["modifier"]  # None is a valid modifier (signed map)
    return _METHODS[name](model, x, unit, **kwargs)
