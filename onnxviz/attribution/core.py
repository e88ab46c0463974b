"""What every attribution method shares: the model turned into class logits, its image input, the
onnxruntime sessions (built once, reused), batched runs, the target units, and the result type.

An :class:`Attributor` is built once per model and reused by every method and metric: it holds one
forward session and one gradient session per backprop modifier (plain / guided / deconvnet) and one
CAM gradient model per feature-map layer. Every run is chunked along the batch dimension, so many
images (and SmoothGrad samples, IG steps, occluded windows, Score-CAM masks) go through
onnxruntime together.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Callable, Iterator, Sequence

import numpy as np
import onnx

from ..errors import OnnxvizError, ShapeError
from ..gradients import GradientFunction, check_method
from ..graph import check_class_names, check_one_input, load_model, tensor_shape
from ..graph import class_names as metadata_names
from ..images import ModelInput, model_input
from ..rewrite import final_activation, to_logits, truncate
from ..runtime import make_session

__all__ = ["Attribution", "Attributor", "as_attributor", "reduce_channels", "MODIFIERS"]

#: Map modifiers of the signed per-pixel quantity (keras-vis' ``grad_modifier``).
MODIFIERS = ("abs", "relu", "negate", None)
#: Input values per chunk when the batch size is automatic (about 8 MB of float32 inputs).
_AUTO_CHUNK_VALUES = 2**21
_MAX_AUTO_BATCH = 256


@dataclass
class Attribution:
    """Maps of one method for a batch of images.

    ``maps`` is ``(N, H, W)`` float32 at the model input's resolution, larger = more important for
    the target unit (signed only for ``modifier=None``); ``units`` the class each map explains;
    ``scores`` that class's logit on the image; ``predicted`` the model's top class; ``info``
    method-specific numbers (IG's completeness error, forward passes used, CAM layer ...);
    ``attributions`` the per-channel values in the model's layout when the method has them."""

    method: str
    maps: np.ndarray
    units: np.ndarray
    scores: np.ndarray
    predicted: np.ndarray
    info: dict[str, Any] = field(default_factory=dict)
    attributions: np.ndarray | None = None

    def __len__(self) -> int:
        return len(self.maps)


def _modify(a: np.ndarray, modifier: str | None) -> np.ndarray:
    if modifier is None:
        return a
    if modifier == "abs":
        return np.abs(a)
    if modifier == "relu":
        return np.maximum(a, 0)
    if modifier == "negate":
        return np.maximum(-a, 0)
    raise OnnxvizError(f"unknown map modifier {modifier!r} (choose abs, relu, negate or none)")


def reduce_channels(a_hwc: np.ndarray, modifier: str | None = "abs", how: str = "max") -> np.ndarray:
    """``(N, H, W, C)`` -> ``(N, H, W)``. ``how="max"`` (gradients, Simonyan et al. 2014): the
    modifier per channel, then the channel maximum (the sum when ``modifier`` is None, to keep the
    sign meaningful). ``how="sum"`` (attributions that add up: gradient x input, IG): the channel
    sum, then the modifier."""
    if how == "sum":
        return _modify(a_hwc.sum(axis=-1), modifier).astype(np.float32)
    if modifier is None:
        return a_hwc.sum(axis=-1).astype(np.float32)
    return _modify(a_hwc, modifier).max(axis=-1).astype(np.float32)


def _softmax(z: np.ndarray) -> np.ndarray:
    z = z - z.max(axis=-1, keepdims=True)
    e = np.exp(z)
    return e / e.sum(axis=-1, keepdims=True)


class Attributor:
    """A model ready for attribution: its class logits (a final Softmax/LogSoftmax/Sigmoid is
    stripped with ``to_logits``, keras-vis' "swap softmax for linear"), its image input, and cached
    sessions.

    ``output``: which graph output holds the class scores (default the first; it must be
    ``(N, classes)``). ``gradient``: ``auto|graph|fd`` as :class:`~onnxviz.gradients.GradientFunction`.
    ``batch_size``: images per onnxruntime run (default: about 8 MB of inputs, at most 256).
    ``class_names``: labels of the classes (a list, a names file or ``"a,b,c"``; as many as the
    output has classes) over the metadata's ``onnxviz.class_names``.
    """

    def __init__(self, model: onnx.ModelProto | str | bytes, *, input_name: str | None = None,
                 input_shape: Sequence[int] | None = None, value_range: Sequence[float] | None = None,
                 output: str | int | None = None, gradient: str = "auto", providers: str = "auto",
                 batch_size: int | None = None, class_names: Any = None):
        self.source = load_model(model)
        self.spec: ModelInput = model_input(self.source, input_name, input_shape, value_range)
        self.output = _output_name(self.source, output)
        act = final_activation(self.source, self.output)
        self.activation = act.op_type if act is not None else None
        self.model = to_logits(self.source, self.output) if act is not None else self.source
        check_one_input(truncate(self.model, [self.output]), self.spec.name)
        shape = tensor_shape(self.model, self.output)
        if shape is not None and len(shape) != 2:
            raise ShapeError(f"output {self.output!r} has shape {tuple(shape)}: attribution explains a "
                             "class score, so it needs an (N, classes) output")
        self.gradient = check_method(gradient)
        self.providers = providers
        self._batch_size = batch_size
        self._sessions: dict[Any, Any] = {}
        self._classes: int | None = None
        self.forward_passes = 0  # images run forward (alone, not as part of a gradient run)
        if class_names is not None:  # the caller's names win over the metadata's (counted against the output)
            self.class_names: list[str] | None = list(check_class_names(self.source, class_names, self.classes))
        else:
            try:
                self.class_names = metadata_names(self.source)
            except OnnxvizError:
                self.class_names = None

    # ------------------------------------------------------------------------------ batching
    @property
    def batch_size(self) -> int:
        if self.spec.batch is not None:
            return self.spec.batch
        if self._batch_size:
            return int(self._batch_size)
        per = int(np.prod(self.spec.shape))
        return int(max(1, min(_MAX_AUTO_BATCH, _AUTO_CHUNK_VALUES // max(per, 1))))

    def chunks(self, n: int, size: int | None = None) -> Iterator[slice]:
        size = max(1, int(size or self.batch_size))
        for start in range(0, n, size):
            yield slice(start, min(n, start + size))

    def run_chunked(self, fn: Callable[..., Sequence[np.ndarray]], *arrays: np.ndarray,
                    size: int | None = None) -> list[np.ndarray]:
        """``fn(*chunk_arrays) -> tuple of arrays`` over chunks of the leading axis, concatenated.
        A model with a fixed batch size gets every chunk padded to that size (padding dropped)."""
        n = len(arrays[0])
        fixed = self.spec.batch
        size = fixed or size
        parts: list[list[np.ndarray]] = []
        for sl in self.chunks(n, size):
            chunk = [a[sl] for a in arrays]
            m = sl.stop - sl.start
            if fixed and m < fixed:
                chunk = [np.concatenate([c, np.repeat(c[:1], fixed - m, axis=0)]) for c in chunk]
            out = fn(*chunk)
            parts.append([o[:m] for o in out])
        return [np.concatenate([p[k] for p in parts]) for k in range(len(parts[0]))]

    # ------------------------------------------------------------------------------ forward
    def session(self, key: Any, build: Callable[[], Any]) -> Any:
        """A cached object (session, gradient function) built once per key."""
        if key not in self._sessions:
            self._sessions[key] = build()
        return self._sessions[key]

    def _forward_session(self):
        return self.session("forward", lambda: make_session(truncate(self.model, [self.output]), self.providers))

    def logits(self, x: np.ndarray) -> np.ndarray:
        """Class logits ``(N, classes)`` of a model-layout batch (float32)."""
        sess = self._forward_session()
        x = np.asarray(x, np.float32)
        self.forward_passes += len(x)
        (out,) = self.run_chunked(lambda c: sess.run([self.output], {self.spec.name: np.ascontiguousarray(c)}), x)
        return out.reshape(len(x), -1)

    def probabilities_from_logits(self, z: np.ndarray) -> np.ndarray:
        """The model's own probabilities for its logits: sigmoid for a Sigmoid output, else softmax
        (also for models without a final activation)."""
        if self.activation == "Sigmoid":
            return 1.0 / (1.0 + np.exp(-z))
        return _softmax(z)

    def probabilities(self, x: np.ndarray) -> np.ndarray:
        return self.probabilities_from_logits(self.logits(x))

    def predict(self, x: np.ndarray) -> np.ndarray:
        return self.logits(x).argmax(axis=1)

    def resolve_units(self, x: np.ndarray, unit: Any = None,
                      logits: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray | None]:
        """(units, logits): ``unit`` None -> each image's top class (one forward pass, whose
        logits are returned); an int or class name -> that class for every image; a sequence ->
        one per image (no forward pass: logits is what was given, maybe None)."""
        z = logits
        if unit is None:
            if z is None:
                z = self.logits(x)
            return z.argmax(axis=1).astype(np.int64), z
        n, k = len(x), self.classes
        if isinstance(unit, (str, int, np.integer)):
            units = [self._unit_index(unit, k)] * n
        else:
            units = [self._unit_index(u, k) for u in unit]
            if len(units) == 1:
                units = units * n
            if len(units) != n:
                raise OnnxvizError(f"{len(units)} units given for {n} images (give one, or one per image)")
        return np.asarray(units, np.int64), z

    def _unit_index(self, unit: Any, k: int) -> int:
        if isinstance(unit, str):
            text = unit.strip()
            names = self.class_names or []
            if text in names:
                return names.index(text)
            try:
                unit = int(text)
            except ValueError:
                raise OnnxvizError(f"unknown unit {text!r}: give a class index 0..{k - 1}"
                                   + (f" or a class name ({', '.join(names[:10])}...)" if names else "")) from None
        unit = int(unit)
        if not -k <= unit < k:
            raise OnnxvizError(f"unit {unit} out of range: the output has {k} classes (0..{k - 1})")
        return unit % k

    def unit_label(self, unit: int) -> str:
        names = self.class_names
        return names[unit] if names and 0 <= unit < len(names) and names[unit] != str(unit) else str(unit)

    # ------------------------------------------------------------------------------ gradients
    def gradient_function(self, modifier: str | None = None):
        """The cached :class:`~onnxviz.gradients.GradientFunction` of the logits w.r.t. the input
        (``modifier`` None / "guided" / "deconvnet")."""
        method = self.gradient if modifier is None else ("graph" if self.gradient == "auto" else self.gradient)
        return self.session(("grad", modifier), lambda: GradientFunction(
            self.model, self.output, input_name=self.spec.name, modifier=modifier, method=method,
            providers=self.providers))

    def gradients(self, x: np.ndarray, units: np.ndarray, modifier: str | None = None,
                  size: int | None = None) -> tuple[np.ndarray, np.ndarray]:
        """(logits ``(N, classes)``, d logit[unit] / d x in the model layout), batched: one
        onnxruntime run per chunk computes the logits and the gradient."""
        fn = self.gradient_function(modifier)
        x = np.asarray(x, np.float32)
        units = np.asarray(units, np.int64)

        k = self.classes

        def run(xc, uc):
            z, g = fn(xc, _one_hot(uc, k))
            return z.reshape(len(xc), -1), g

        logits, grads = self.run_chunked(run, x, units, size=size)
        return logits, grads

    @property
    def classes(self) -> int:
        """Number of classes of the output (from shape inference, else one probe run)."""
        if self._classes is None:
            shape = tensor_shape(self.model, self.output)
            k = shape[1] if shape is not None and isinstance(shape[1], int) else None
            if k is None:
                probe = np.full((self.spec.batch or 1,) + self.spec.shape, self.spec.value_range[0], np.float32)
                k = int(self.logits(probe).shape[1])
                self.forward_passes -= len(probe)
            self._classes = int(k)
        return self._classes


def _output_name(model: onnx.ModelProto, output: str | int | None) -> str:
    outs = [o.name for o in model.graph.output]
    if not outs:
        raise OnnxvizError("the model has no outputs")
    if output is None:
        return outs[0]
    if isinstance(output, (int, np.integer)) and not isinstance(output, bool):
        if not -len(outs) <= int(output) < len(outs):
            raise OnnxvizError(f"output index {output} out of range (outputs: {', '.join(outs)})")
        return outs[int(output)]
    if output not in outs:
        raise OnnxvizError(f"no graph output named {output!r} (outputs: {', '.join(outs)})")
    return str(output)


def _one_hot(units: np.ndarray, k: int) -> np.ndarray:
    out = np.zeros((len(units), k), np.float32)
    out[np.arange(len(units)), units] = 1.0
    return out


def as_attributor(model: Any, **options: Any) -> Attributor:
    """An :class:`Attributor` as given, or one built for a model path / bytes / ModelProto."""
    if isinstance(model, Attributor):
        if options:
            unknown = {k: v for k, v in options.items() if v is not None}
            if unknown:
                raise OnnxvizError(f"options {sorted(unknown)} apply when building an Attributor, "
                                   "not to an existing one")
        return model
    return Attributor(model, **{k: v for k, v in options.items() if v is not None})


def sample_count(n: int, what: str, minimum: int = 1) -> int:
    n = int(n)
    if n < minimum:
        raise OnnxvizError(f"{what} must be at least {minimum}, got {n}")
    return n
