"""Framework models -> ONNX, with a parity check after every conversion.

This package is the only place in onnxviz that touches a training framework, and it does so
lazily: importing ``converters`` imports onnx and numpy only. ``to_onnx`` detects what it was
given (by type, file suffix or the file's first bytes, never by importing a framework), hands it
to the matching format module, then does the steps every format shares: metadata, validation, the
parity check against the source framework, and the atomic write of the output file.

=============  ==========================================  ==========================================
format         source                                      how it converts
=============  ==========================================  ==========================================
keras          Keras 3 model object, ``.keras`` file       ``model.export(format="onnx")`` (tf2onnx)
h5             legacy Keras 2 / tf.keras ``.h5`` file       ``keras.models.load_model``, then as keras
savedmodel     TensorFlow SavedModel folder                tf2onnx from the frozen serving signature
tflite         ``.tflite`` flatbuffer                      ``tf2onnx.convert.from_tflite``
torch          PyTorch ``nn.Module`` + ``example_input``   ``torch.onnx.export`` (TorchScript-based,
                                                           else the torch.export-based exporter)
torchscript    ``.pt``/``.pth`` from ``torch.jit.save``    ``torch.jit.load``, then as torch
onnx           ``.onnx`` file or ``onnx.ModelProto``        validated, passed through
=============  ==========================================  ==========================================

Adding a format means one module with a ``convert(source, options) -> Converted`` function and
one :class:`SourceFormat` entry in :data:`FORMATS`; nothing else changes.
"""

from __future__ import annotations

import importlib
import json
import os
import sys
import zipfile
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import onnx

from onnxviz.errors import (ConversionError, MissingDependencyError, ModelLoadError, OnnxvizError, ParityError,
                            RewriteError)
from onnxviz.fileio import save_model
from onnxviz.graph import (DEFAULT_VALUE_RANGE, META_CLASSES, META_LAYOUT, META_RANGE, META_RANGE_SOURCE,
                           META_SOURCE, InputInfo, check_value_range, input_info, load_model, read_class_names,
                           set_metadata)
from onnxviz.rewrite import upgrade_opset
from onnxviz.runtime import DISABLED_OPTIMIZERS, make_session

#: The range recorded for float inputs when nobody gave one (marked as a guess in the metadata): the
#: one ``onnxviz.graph.input_info`` assumes for them.
GUESSED_RANGE = DEFAULT_VALUE_RANGE

__all__ = [
    "to_onnx",
    "ConversionResult",
    "Converted",
    "ConvertOptions",
    "SourceFormat",
    "FORMATS",
    "supported_formats",
    "detect_format",
    "parity",
    "random_inputs",
    "missing_dependency",
    "first_line",
    "is_hdf5",
    "layout_metadata",
    "ORT_DISABLED_OPTIMIZERS",
    "drop_unused_opset_imports",
    "META_LAYOUT",
    "META_RANGE",
    "META_CLASSES",
    "META_SOURCE",
    "META_RANGE_SOURCE",
    "GUESSED_RANGE",
]

Shape = Sequence[int]

DEFAULT_ATOL = 1e-4
DEFAULT_RTOL = 1e-4
PARITY_BATCH = 2  # > 1 so that the parity run also proves the batch dimension is really free
MIN_OPSET = 9  # older opsets lack the ops every exporter here needs (and onnxruntime's support wanes)
MAX_IR_VERSION = 10  # onnxruntime 1.18+ reads IR <= 10; onnx 1.23 writes 14 unless told otherwise
#: onnxruntime graph rewrites that change results, off in the parity session as in every engine
#: session (see onnxviz.runtime.DISABLED_OPTIMIZERS: Pad_Fusion breaks ZeroPadding2D + MaxPool).
ORT_DISABLED_OPTIMIZERS = DISABLED_OPTIMIZERS


@dataclass
class ConversionResult:
    """What ``to_onnx`` produced: the model and how closely it matches its source.

    ``format`` is the :class:`SourceFormat` name (``keras``, ``h5``, ``savedmodel``, ``tflite``,
    ``torch``, ``torchscript``, ``onnx``). ``max_abs_diff`` / ``max_rel_diff`` are ``None`` when no
    parity check ran (``check=False``, or an ONNX file passed through unchanged; an ONNX file
    upgraded to another ``opset`` is checked against the original). ``max_rel_diff`` is computed like
    ``numpy.testing.assert_allclose`` reports it: max |onnx - source| / |source| over the
    elements where the source is non-zero.
    """

    model: onnx.ModelProto
    format: str
    max_abs_diff: float | None
    max_rel_diff: float | None
    source_version: str
    output: Path | None = None

    def summary(self) -> str:
        """One line for humans, e.g. for the CLI."""
        if self.max_abs_diff is None:
            parity_text = "parity not checked"
        else:
            parity_text = f"parity max abs diff {self.max_abs_diff:.3g}, max rel diff {self.max_rel_diff:.3g}"
        where = f" -> {self.output}" if self.output else ""
        return f"{self.format} ({self.source_version}): {parity_text}{where}"


@dataclass
class ConvertOptions:
    """The caller's options, as every format module receives them."""

    input_shape: list[tuple[int, ...]] | None = None  # one full shape (batch first) per input
    opset: int | None = None
    example_input: list[np.ndarray] | None = None


@dataclass
class Converted:
    """What a format module returns; ``to_onnx`` does the rest (metadata, parity, saving).

    ``run_source`` runs the source framework on a list of numpy inputs (in the ONNX graph's input
    order) and returns its outputs in the graph's output order; ``None`` means there is nothing to
    compare against (ONNX passthrough). ``metadata`` is merged into the model's metadata_props.
    ``symbolic_batch``: name the free first dimension of every graph input/output ``batch`` (fixed
    first dimensions stay); formats that name it themselves, or whose batch is fixed, say False.
    """

    model: onnx.ModelProto
    source_version: str
    run_source: Callable[[list[np.ndarray]], list[np.ndarray]] | None = None
    metadata: dict[str, str] = field(default_factory=dict)
    symbolic_batch: bool = True


@dataclass(frozen=True)
class SourceFormat:
    """One supported source: how to recognise it (without importing its framework) and where
    its converter lives (imported only when used)."""

    name: str
    description: str
    matches: Callable[[Any], bool]
    module: str  # "package.module:function"
    extra: str | None = None  # the pip extra that provides its framework

    def load_converter(self) -> Callable[[Any, ConvertOptions], Converted]:
        module_name, _, function = self.module.partition(":")
        return getattr(importlib.import_module(module_name), function)


def _as_path(source: Any) -> Path | None:
    if isinstance(source, (str, os.PathLike)):
        return Path(source)
    return None


def _has_suffix(*suffixes: str) -> Callable[[Any], bool]:
    def matches(source: Any) -> bool:
        path = _as_path(source)
        return path is not None and path.suffix.lower() in suffixes

    return matches


def _head(path: Path, size: int = 8) -> bytes:
    """The first ``size`` bytes of a regular file (b"" for folders and unreadable paths)."""
    try:
        if not path.is_file():
            return b""
        with path.open("rb") as f:
            return f.read(size)
    except OSError:
        return b""


def _zip_names(path: Path) -> list[str]:
    """Member names when ``path`` is a zip archive, else []."""
    if _head(path, 4) != b"PK\x03\x04":
        return []
    try:
        with zipfile.ZipFile(path) as archive:
            return archive.namelist()
    except (zipfile.BadZipFile, OSError, ValueError):
        return []


_HDF5_MAGIC = b"\x89HDF\r\n\x1a\n"


def is_hdf5(path: Path) -> bool:
    """Whether ``path`` is a file with HDF5's signature (a legacy Keras ``.h5``)."""
    # HDF5's signature sits at offset 0, 512, 1024, ... (a user block may precede it).
    try:
        if not path.is_file():
            return False
        with path.open("rb") as f:
            for offset in (0, 512, 1024, 2048):
                f.seek(offset)
                if f.read(8) == _HDF5_MAGIC:
                    return True
    except OSError:
        pass
    return False


def _is_torchscript_archive(names: Sequence[str]) -> bool:
    # torch.jit.save writes <archive>/code/__torch__/...; torch.save (a pickle) has no code/ folder.
    return any("/code/" in name for name in names)


def _file_format(*suffixes: str, sniff: Callable[[Path], bool]) -> Callable[[Any], bool]:
    """A path with one of ``suffixes``, or a file with another suffix whose content ``sniff`` recognises."""
    by_suffix = _has_suffix(*suffixes)

    def matches(source: Any) -> bool:
        path = _as_path(source)
        if path is None:
            return False
        if by_suffix(source):
            return True
        return path.suffix.lower() not in _KNOWN_SUFFIXES and sniff(path)

    return matches


def _is_keras_model(source: Any) -> bool:
    # Only a process that already imported keras can hold a Keras model: never import it here.
    keras = sys.modules.get("keras")
    model_type = getattr(keras, "Model", None) if keras is not None else None
    return model_type is not None and isinstance(source, model_type)


def _is_torch_module(source: Any) -> bool:
    # Only a process that already imported torch can hold a module (a ScriptModule is one too).
    torch = sys.modules.get("torch")
    module_type = getattr(getattr(torch, "nn", None), "Module", None) if torch is not None else None
    return module_type is not None and isinstance(source, module_type)


def _is_model_proto(source: Any) -> bool:
    return isinstance(source, onnx.ModelProto)


def _is_saved_model(source: Any) -> bool:
    path = _as_path(source)
    return path is not None and path.is_dir() and any(
        (path / name).is_file() for name in ("saved_model.pb", "saved_model.pbtxt"))


_KNOWN_SUFFIXES = {".keras", ".h5", ".hdf5", ".tflite", ".pt", ".pth", ".torchscript", ".onnx"}

FORMATS: list[SourceFormat] = [
    SourceFormat("keras", "a Keras 3 model object", _is_keras_model, "converters.keras:convert", "keras"),
    SourceFormat("torch", "a PyTorch nn.Module (with example_input or input_shape)", _is_torch_module,
                 "converters.pytorch:convert", "torch"),
    SourceFormat("keras", "a Keras 3 .keras file",
                 _file_format(".keras", sniff=lambda p: "config.json" in _zip_names(p) and "metadata.json" in _zip_names(p)),
                 "converters.keras:convert", "keras"),
    SourceFormat("h5", "a legacy Keras 2 / tf.keras .h5 file", _file_format(".h5", ".hdf5", sniff=is_hdf5),
                 "converters.keras:convert_h5", "keras"),
    SourceFormat("savedmodel", "a TensorFlow SavedModel folder", _is_saved_model,
                 "converters.tf:convert_saved_model", "keras"),
    SourceFormat("tflite", "a .tflite file", _file_format(".tflite", sniff=lambda p: _head(p, 8)[4:8] == b"TFL3"),
                 "converters.tf:convert_tflite", "keras"),
    SourceFormat("torchscript", "a TorchScript .pt/.pth file from torch.jit.save (with input_shape)",
                 _file_format(".pt", ".pth", ".torchscript", sniff=lambda p: _is_torchscript_archive(_zip_names(p))),
                 "converters.pytorch:convert_torchscript", "torch"),
    SourceFormat("onnx", "an .onnx file or onnx.ModelProto (validated, passed through)",
                 lambda s: _is_model_proto(s) or _has_suffix(".onnx")(s), "converters:_convert_onnx"),
]


def supported_formats() -> str:
    """The supported sources as one human-readable line (used in error messages)."""
    return "; ".join(f.description for f in FORMATS)


def detect_format(source: Any) -> SourceFormat:
    """The :class:`SourceFormat` that handles ``source``, or ConversionError listing the supported ones.

    Detection never imports a framework: objects are recognised only when their framework is
    already imported, files by suffix or, for other suffixes, by their first bytes (HDF5 and zip
    signatures, the TFLite identifier), folders by ``saved_model.pb``.
    """
    for source_format in FORMATS:
        if source_format.matches(source):
            return source_format
    path = _as_path(source)
    if path is None:
        what = f"an object of type {type(source).__module__}.{type(source).__qualname__}"
        raise ConversionError(f"cannot convert {what}: unsupported format. Supported: {supported_formats()}")
    if not path.exists():
        raise ConversionError(f"{path}: no such file or folder")
    if path.is_dir():
        raise ConversionError(
            f"cannot convert '{path}': a folder that is not a TensorFlow SavedModel (no saved_model.pb in it). "
            f"Supported: {supported_formats()}"
        )
    hint = ""
    names = _zip_names(path)
    if names and any(name.endswith("data.pkl") for name in names):
        hint = " (it looks like a torch.save pickle: save the model with torch.jit.save, or pass the nn.Module)"
    raise ConversionError(f"cannot convert '{path}': unsupported format{hint}. Supported: {supported_formats()}")


def to_onnx(
    source: Any,
    *,
    output: str | os.PathLike | None = None,
    input_shape: Shape | Sequence[Shape] | None = None,
    opset: int | None = None,
    example_input: Any = None,
    check: bool = True,
    atol: float = DEFAULT_ATOL,
    rtol: float = DEFAULT_RTOL,
    input_range: tuple[float, float] | None = None,
    class_names: Sequence[str] | None = None,
    seed: int = 0,
    input_layout: str | None = None,
) -> ConversionResult:
    """Convert a framework model (or validate an ONNX one) and check it against its source.

    ``source``: a Keras 3 model, a PyTorch ``nn.Module``, an ``onnx.ModelProto``, or a path to a
    ``.keras`` / ``.h5`` / ``.tflite`` / TorchScript ``.pt`` / ``.onnx`` file or a SavedModel folder
    (see :data:`FORMATS`). ``input_shape``: full shape(s), batch first, for inputs whose size is not
    fixed (required for TorchScript files and never-built Keras models). ``example_input``: array(s)
    (numpy or torch) to trace or build the model with; required for an ``nn.Module`` unless
    ``input_shape`` is given. ``opset``: the ONNX opset to export to (default: the exporter's).

    The parity check runs the source framework and onnxruntime on the same seeded random batch
    (shaped like ``input_shape`` / ``example_input``; a free batch dimension gets 2 rows, which also
    proves it is free), uniform in ``input_range`` when given, else standard normal; an element with
    |onnx - source| > atol + rtol * |source| raises :class:`ParityError`. ``input_range`` and
    ``class_names`` (a list, a file with one name per line or a JSON list, or ``"a,b,c"``; as many
    as the output has units) are stored in the model's metadata; without ``input_range``, a range
    the source does not record is stored as :data:`GUESSED_RANGE` for float inputs and marked
    ``onnxviz.input_range_source = guess`` (``onnxviz info`` then says "guessed"). ``input_layout``
    (``NHWC`` / ``NCHW``) overrides the layout the format module records for rank-4 inputs.
    ``output``, when given, is written atomically: on any error no file (partial or otherwise) is
    left there.
    """
    path = _as_path(source)
    if path is not None and not path.exists():
        raise ConversionError(f"{path}: no such file or folder")
    source_format = detect_format(source)
    options = ConvertOptions(
        input_shape=_normalize_shapes(input_shape),
        opset=_validate_opset(opset),
        example_input=_normalize_arrays(example_input),
    )
    if input_range is not None:
        input_range = _validate_range(input_range)
    if input_layout is not None:
        input_layout = _validate_layout(input_layout)
    try:
        converter = source_format.load_converter()
    except ImportError as e:  # the format module itself could not be imported
        raise missing_dependency(source_format.extra or source_format.name, f"converting {source_format.description}", e) from e
    converted = converter(source, options)
    model = converted.model

    if converted.run_source is not None:  # a conversion happened: tidy what exporters leave
        drop_unused_opset_imports(model)
        _limit_ir_version(model)
    if converted.symbolic_batch:
        _make_batch_symbolic(model)
    metadata = dict(converted.metadata)
    if input_layout is not None:
        layout = layout_metadata(model, input_layout)
        if layout is None:
            raise ConversionError(f"input_layout {input_layout}: the model has no rank-4 (image) input")
        metadata[META_LAYOUT] = layout
    if input_range is not None:
        metadata[META_RANGE] = json.dumps([input_range[0], input_range[1]])
        metadata[META_RANGE_SOURCE] = "user"
    elif META_RANGE in metadata:  # the format module read it from the source
        metadata.setdefault(META_RANGE_SOURCE, "source")
    elif not any(p.key == META_RANGE for p in model.metadata_props):  # an ONNX model keeps its own
        guess = _guessed_range(model)
        if guess is not None:
            metadata[META_RANGE] = guess
            metadata[META_RANGE_SOURCE] = "guess"
    if class_names is not None:
        class_names = _read_class_names(class_names)
        _check_class_count(model, class_names)
        metadata[META_CLASSES] = json.dumps(class_names)
    if metadata:  # no keys: the model stays as it came (set_metadata would also merge duplicate keys)
        model = set_metadata(model, **metadata)

    try:
        onnx.checker.check_model(model, full_check=True)
    except Exception as e:
        raise ConversionError(f"the converted model is not valid ONNX: {first_line(e)}") from e

    max_abs = max_rel = None
    if check and converted.run_source is not None:
        shapes = options.input_shape
        if shapes is None and options.example_input is not None:
            shapes = [tuple(a.shape) for a in options.example_input]
        inputs = random_inputs(model, shapes, input_range, seed)
        max_abs, max_rel = parity(model, converted.run_source, inputs, atol=atol, rtol=rtol)

    out_path = None
    if output is not None:
        out_path = save_model(model, output)  # temp file + os.replace: never a partial file
    return ConversionResult(model, source_format.name, max_abs, max_rel, converted.source_version, out_path)


def missing_dependency(extra: str, what: str, error: ImportError) -> MissingDependencyError:
    """The error raised when a format's framework cannot be imported; it names the extra to install."""
    missing = getattr(error, "name", None) or "a package that is not installed"
    return MissingDependencyError(f"{what} needs {missing} ({error}): pip install \"onnxviz[{extra}]\"")


# --------------------------------------------------------------------------- option checking

def _normalize_shapes(input_shape: Shape | Sequence[Shape] | None) -> list[tuple[int, ...]] | None:
    if input_shape is None:
        return None
    items = list(input_shape)
    if items and all(isinstance(d, (int, np.integer)) for d in items):
        items = [items]
    shapes = []
    for shape in items:
        try:
            dims = tuple(int(d) for d in shape)
        except (TypeError, ValueError):
            raise ConversionError(f"input_shape must be a shape or a list of shapes of ints, got {input_shape!r}") from None
        if not dims or any(d <= 0 for d in dims):
            raise ConversionError(f"input_shape dims must be positive, batch first, got {dims}")
        shapes.append(dims)
    return shapes


def _normalize_arrays(example: Any) -> list[np.ndarray] | None:
    """One array or a list/tuple of arrays (numpy, or anything with ``.detach()``/``.numpy()`` such
    as torch tensors) -> a list of numpy arrays."""
    if example is None:
        return None
    items = list(example) if isinstance(example, (list, tuple)) else [example]
    arrays = []
    for item in items:
        if hasattr(item, "detach") and hasattr(item, "cpu"):  # a torch tensor, without importing torch
            item = item.detach().cpu().numpy()
        elif hasattr(item, "numpy") and not isinstance(item, np.ndarray):  # a TensorFlow tensor
            item = item.numpy()
        arrays.append(np.asarray(item))
    return arrays


def _validate_opset(opset: int | None) -> int | None:
    if opset is None:
        return None
    if isinstance(opset, bool) or not isinstance(opset, (int, np.integer)):
        raise ConversionError(f"opset must be an integer, got {opset!r}")
    newest = onnx.defs.onnx_opset_version()
    if not MIN_OPSET <= int(opset) <= newest:
        raise ConversionError(f"opset {opset} is not supported: choose {MIN_OPSET}..{newest}")
    return int(opset)


def _validate_range(input_range: tuple[float, float]) -> tuple[float, float]:
    """onnxviz.graph.check_value_range, raising ConversionError."""
    try:
        return check_value_range(input_range, f"input_range {input_range!r}")
    except OnnxvizError as e:
        raise ConversionError(str(e)) from None


def _validate_layout(layout: str) -> str:
    text = str(layout).strip().upper()
    if text not in ("NHWC", "NCHW"):
        raise ConversionError(f"input_layout must be NHWC or NCHW, got {layout!r}")
    return text


def _read_class_names(class_names: Any) -> list[str]:
    """A list of names, a names file or ``"a,b,c"`` (onnxviz.graph.read_class_names) -> list."""
    try:
        return read_class_names(class_names)
    except OnnxvizError as e:
        raise ConversionError(str(e)) from None


def _guessed_range(model: onnx.ModelProto) -> str | None:
    """The ``onnxviz.input_range`` value for a model nobody gave a range for: GUESSED_RANGE for
    its float inputs (all of them: one value; some: a per-input object), None when it has none."""
    inputs = _graph_inputs(model)
    floats = [i.name for i in inputs if i.dtype.kind == "f"]
    if not floats:
        return None
    value = [GUESSED_RANGE[0], GUESSED_RANGE[1]]
    return json.dumps(value) if len(floats) == len(inputs) else json.dumps({name: value for name in floats})


def _check_class_count(model: onnx.ModelProto, class_names: list[str]) -> None:
    outputs = model.graph.output
    if len(outputs) != 1:
        return
    dims = outputs[0].type.tensor_type.shape.dim
    if dims and dims[-1].HasField("dim_value") and dims[-1].dim_value != len(class_names):
        raise ConversionError(
            f"{len(class_names)} class names given but the model's output has {dims[-1].dim_value} classes"
        )


def first_line(error: BaseException) -> str:
    """An error's first line (its type's name when it says nothing): the detail in one-line errors."""
    text = str(error).strip()
    return text.splitlines()[0] if text else type(error).__name__


# --------------------------------------------------------------------------- shared model edits

def _make_batch_symbolic(model: onnx.ModelProto, name: str = "batch") -> None:
    """Give the first dimension of every graph input and output the symbolic name ``name``.

    Exporters leave an anonymous name for a free batch (tf2onnx: ``unk__40``); one shared name says
    that inputs and outputs share the batch. Fixed first dimensions (a model exported for batch 1,
    an output that is not batch-major) and rank-0 values are left alone.
    """
    for value in list(model.graph.input) + list(model.graph.output):
        tensor_type = value.type.tensor_type
        if not tensor_type.HasField("shape") or not tensor_type.shape.dim:
            continue
        dim = tensor_type.shape.dim[0]
        if dim.HasField("dim_value"):
            continue
        dim.Clear()
        dim.dim_param = name


def drop_unused_opset_imports(model: onnx.ModelProto) -> None:
    """Keep only the opset imports some node uses (tf2onnx declares ``ai.onnx.ml`` even when unused);
    the default domain always stays."""
    used = {node.domain or "" for node in model.graph.node}
    for function in model.functions:
        used.update(node.domain or "" for node in function.node)
        used.add(function.domain)
    kept = [op for op in model.opset_import if (op.domain or "") in ("", "ai.onnx") or op.domain in used]
    del model.opset_import[:]
    model.opset_import.extend(kept)


def _limit_ir_version(model: onnx.ModelProto) -> None:
    """Lower an IR version above :data:`MAX_IR_VERSION` to the lowest one the model's opsets allow,
    so that onnxruntime can load it (exporters built on a newer onnx write its newest IR)."""
    if model.ir_version <= MAX_IR_VERSION:
        return
    try:
        needed = onnx.helper.find_min_ir_version_for(list(model.opset_import), ignore_unknown=True)
    except Exception:  # an opset this onnx does not know: leave the model as it is
        return
    if needed <= MAX_IR_VERSION:
        model.ir_version = max(needed, 3)


def layout_metadata(model: onnx.ModelProto, layout: str) -> str | None:
    """The ``onnxviz.input_layout`` value for a model whose image inputs use ``layout`` ("NCHW" or
    "NHWC"): the plain layout when every input is rank 4, a JSON object naming the rank-4 inputs when
    only some are (a per-input value, as ``onnxviz.graph.input_info`` reads it), None when none is."""
    ranks = {i.name: len(i.shape) for i in _graph_inputs(model) if i.shape is not None}
    images = [name for name, rank in ranks.items() if rank == 4]
    if not images:
        return None
    if len(images) == len(ranks):
        return layout
    return json.dumps({name: layout for name in images})


# --------------------------------------------------------------------------- parity

def _graph_inputs(model: onnx.ModelProto) -> list[InputInfo]:
    """``input_info`` (names, dtypes, shapes) of the graph inputs, read without the model's metadata:
    a malformed ``onnxviz.*`` value must not fail a conversion that never reads it."""
    initializers = {t.name for t in model.graph.initializer}
    inputs_only = onnx.ModelProto()
    inputs_only.graph.input.extend(v for v in model.graph.input if v.name not in initializers)
    return input_info(inputs_only)


def random_inputs(
    model: onnx.ModelProto,
    input_shape: list[tuple[int, ...]] | None = None,
    input_range: tuple[float, float] | None = None,
    seed: int = 0,
    batch: int = PARITY_BATCH,
) -> list[np.ndarray]:
    """A seeded random batch for every graph input: uniform in ``input_range`` (else standard
    normal) for floats, small non-negative integers for ints. Free dims come from ``input_shape``
    (batch excepted: a free batch gets ``batch``)."""
    rng = np.random.default_rng(seed)
    specs = _graph_inputs(model)
    if input_shape is not None and len(input_shape) != len(specs):
        raise ConversionError(f"input_shape gives {len(input_shape)} shapes but the model has {len(specs)} inputs")
    arrays = []
    for i, spec in enumerate(specs):
        name, dtype = spec.name, spec.dtype
        dims = [d if isinstance(d, int) else None for d in spec.shape or ()]  # a named dim is free
        given = input_shape[i] if input_shape is not None else None
        if given is not None and len(given) != len(dims):
            raise ConversionError(f"input_shape {given} has rank {len(given)} but input {name!r} has rank {len(dims)}")
        shape = []
        for axis, dim in enumerate(dims):
            if dim is not None:
                shape.append(dim)
            elif axis == 0:
                shape.append(batch)
            elif given is not None:
                shape.append(given[axis])
            else:
                raise ConversionError(
                    f"input {name!r} has a free dimension at axis {axis}; pass input_shape to fix it"
                )
        if dtype.kind == "f":
            if input_range is not None:
                data = rng.uniform(input_range[0], input_range[1], size=shape)
            else:
                data = rng.standard_normal(size=shape)
        elif dtype.kind in "iu":
            data = rng.integers(0, 10, size=shape)
        elif dtype.kind == "b":
            data = rng.integers(0, 2, size=shape).astype(bool)
        else:
            raise ConversionError(f"input {name!r} has dtype {dtype}; cannot make random data for it")
        arrays.append(np.asarray(data).astype(dtype))
    return arrays


def parity(
    model: onnx.ModelProto,
    run_source: Callable[[list[np.ndarray]], list[np.ndarray]],
    inputs: list[np.ndarray],
    *,
    atol: float = DEFAULT_ATOL,
    rtol: float = DEFAULT_RTOL,
) -> tuple[float, float]:
    """Run the source and onnxruntime (CPU, :data:`ORT_DISABLED_OPTIMIZERS` off) on ``inputs``;
    return (max abs diff, max rel diff).

    Raises :class:`ParityError` when outputs differ in number or shape, or any element has
    |onnx - source| > atol + rtol * |source|.
    """
    try:
        session = make_session(model, "cpu")
    except ModelLoadError as e:  # keep this wording; the detail is onnxruntime's own first line
        detail = first_line(e.__context__ or e)  # the engine raises from None: the original is the context
        raise ConversionError(f"onnxruntime cannot load the converted model: {detail}") from e
    names = [i.name for i in session.get_inputs()]
    if len(names) != len(inputs):
        raise ConversionError(f"the model has {len(names)} inputs but {len(inputs)} parity inputs were given")
    try:
        got = session.run(None, dict(zip(names, inputs)))
    except Exception as e:
        raise ConversionError(f"onnxruntime cannot run the converted model: {first_line(e)}") from e
    expected = [np.asarray(a) for a in run_source(inputs)]
    if len(got) != len(expected):
        raise ParityError(f"the ONNX model has {len(got)} outputs, the source has {len(expected)}")
    max_abs = max_rel = 0.0
    for index, (ours, theirs) in enumerate(zip(got, expected)):
        if ours.shape != theirs.shape:
            raise ParityError(f"output {index}: ONNX shape {ours.shape} != source shape {theirs.shape}")
        ours = ours.astype(np.float64)
        theirs = theirs.astype(np.float64)
        error = np.abs(ours - theirs)
        if error.size == 0:
            continue
        if not np.all(np.isfinite(error)) and not np.array_equal(ours, theirs, equal_nan=True):
            raise ParityError(f"output {index}: non-finite values differ between ONNX and the source")
        error = np.where(np.isfinite(error), error, 0.0)
        nonzero = theirs != 0
        max_abs = max(max_abs, float(error.max()))
        if nonzero.any():
            max_rel = max(max_rel, float((error[nonzero] / np.abs(theirs[nonzero])).max()))
        bad = error > atol + rtol * np.abs(theirs)
        if bad.any():
            where = np.unravel_index(int(np.argmax(error)), error.shape)
            raise ParityError(
                f"output {index}: ONNX differs from the source beyond tolerance (atol={atol:g}, rtol={rtol:g}): "
                f"max abs diff {float(error.max()):.3g} at {tuple(int(i) for i in where)}, "
                f"{int(bad.sum())} of {error.size} elements out of tolerance"
            )
    return max_abs, max_rel


# --------------------------------------------------------------------------- ONNX passthrough

def _convert_onnx(source: Any, options: ConvertOptions) -> Converted:
    """An ONNX model in: load and validate it; no conversion, so nothing to compare against."""
    is_proto = isinstance(source, onnx.ModelProto)
    label = "the given ModelProto" if is_proto else str(Path(source))
    if not is_proto and not Path(source).is_file():
        raise ConversionError(f"{label}: no such file")
    try:
        model = load_model(source, check=False)  # a copy of a ModelProto; fully checked below
    except ModelLoadError as e:  # an unreadable file: the engine's message, as ``onnxviz info`` gives it
        raise ConversionError(str(e)) from e
    if not model.graph.node and not model.graph.output:
        raise ConversionError(f"{label}: not an ONNX model (no graph)")
    try:
        onnx.checker.check_model(model, full_check=True)
    except Exception as e:
        raise ConversionError(f"{label}: invalid ONNX model ({first_line(e)})") from e
    producer = f"{model.producer_name} {model.producer_version}".strip() or "onnx"
    current = max((op.version for op in model.opset_import if op.domain in ("", "ai.onnx")), default=0)
    if options.opset is None or options.opset == current:
        return Converted(model, producer, run_source=None, symbolic_batch=False)
    # An opset was asked for: upgrade (onnx's version converter), checked against the original.
    if options.opset < current:
        raise ConversionError(f"{label}: has opset {current}; converting down to {options.opset} is not supported")
    try:
        upgraded = upgrade_opset(model, options.opset)
    except RewriteError as e:
        raise ConversionError(f"{label}: {e}") from e

    def run_original(inputs: list[np.ndarray]) -> list[np.ndarray]:
        session = make_session(model, "cpu")
        names = [i.name for i in session.get_inputs()]
        return session.run(None, dict(zip(names, inputs)))

    return Converted(upgraded, f"{producer} (opset {current})", run_source=run_original, symbolic_batch=False)
