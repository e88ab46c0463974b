"""PyTorch ``nn.Module`` (with an example input) or TorchScript file -> ONNX.

The exporter: ``torch.onnx.export`` with the TorchScript-based exporter (``dynamo=False``) first. In
torch 2.13 and 2.14 it still ships (deprecated, with a warning we hide), is the quicker of the two,
keeps module scopes in node names and is the only one that takes a ``ScriptModule``. When it is
gone, or fails on a model, the torch.export-based exporter (``dynamo=True``, needs ``onnxscript``)
is tried; a TorchScript file has no fallback. While TensorFlow is loaded, an export runs without
Triton (which torch._dynamo would import, and which crashes a process with TensorFlow in it).

Names: whatever the exporter, each node is renamed ``<module path>/<op>``: the second convolution
of ``layer4[1]`` becomes ``layer4.1.conv2/Conv``, and the chain of its modules is recorded in the
node's ``pkg.torch.onnx.name_scopes`` metadata, so ``find_layer(model, "layer4.1.conv2")`` (and
``"layer4.1"``, ``"layer4"``) works. The path comes from the node's parameters when it has named
ones (``layer4.1.conv2.weight``), else from the scopes the exporter recorded; nodes outside any
module (``torch.flatten`` in ``forward``) are named by their op. With BatchNorm folded into the
convolution before it (both exporters do that in eval mode), the Conv keeps the convolution's name. The batch dimension of every input is
exported free (``batch``), and of every output whose first dimension follows it.

PyTorch is imported only when a conversion runs; a module is put in eval mode for the export and
the parity check, and its previous mode is restored.
"""

from __future__ import annotations

import ast
import contextlib
import inspect
import io
import sys
import zipfile
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import onnx

from converters import (META_LAYOUT, META_SOURCE, Converted, ConvertOptions, first_line, layout_metadata,
                        missing_dependency)
from converters.keras import quiet_loggers, unique_names
from onnxviz.errors import ConversionError

__all__ = ["convert", "convert_torchscript", "export_module", "rename_torch_nodes", "name_nodes_by_module", "EXPORTERS"]

EXTRA = "torch"
BATCH = "batch"
#: The exporters, in the order they are tried for an nn.Module.
EXPORTERS = ("torchscript", "dynamo")
_NAME_SCOPES = "pkg.torch.onnx.name_scopes"  # node metadata written by the dynamo exporter


# --------------------------------------------------------------------------- quiet framework use

def _import_torch() -> Any:
    try:
        import torch
    except ImportError as e:
        raise missing_dependency(EXTRA, "converting a PyTorch model", e) from e
    return torch


@contextlib.contextmanager
def _quiet() -> Iterator[None]:
    """Hide the exporters' chatter (deprecation and tracer warnings, stdout, torch.onnx logs)."""
    with quiet_loggers(("torch.onnx", "torch.export", "torch._dynamo", "onnxscript")):
        yield


@contextlib.contextmanager
def _without_triton() -> Iterator[None]:
    """Keep Triton from being loaded during an export while TensorFlow is loaded; else a no-op.

    The torch.export-based exporter imports ``torch._dynamo``, which imports ``triton`` (installed
    with the CUDA build of torch, PyPI's default on Linux) only to see whether it is there. Once
    TensorFlow is loaded, its libraries' LLVM/MLIR symbols are visible to the whole process, the
    static initializers of ``libtriton.so`` (built on another LLVM) bind to them, and the process dies
    with a segmentation fault (Triton loaded before TensorFlow is fine). An export compiles nothing,
    so for its duration, and only when TensorFlow is loaded and Triton is not, ``import triton``
    raises ImportError, which torch takes as "no Triton". After it, ``sys.modules`` and the caches of
    ``torch.utils._triton`` (``has_triton_package()`` & co.) are as before; a torch module imported
    meanwhile keeps what it saw (no Triton): loading Triton in this process would crash it anyway.
    """
    if "triton" in sys.modules or "tensorflow" not in sys.modules:
        yield
        return
    sys.modules["triton"] = None  # type: ignore[assignment]  # `import triton` -> ImportError
    try:
        yield
    finally:
        if "triton" in sys.modules and sys.modules["triton"] is None:
            del sys.modules["triton"]
        helpers = sys.modules.get("torch.utils._triton")
        for value in vars(helpers).values() if helpers is not None else ():
            if getattr(value, "__module__", None) == helpers.__name__ and hasattr(value, "cache_clear"):
                value.cache_clear()


@contextlib.contextmanager
def _eval_mode(module: Any) -> Iterator[None]:
    """The module in eval mode for the block; its train/eval state (per submodule) restored after."""
    modes = [(m, m.training) for m in module.modules()]
    module.eval()
    try:
        yield
    finally:
        for m, training in modes:
            m.training = training


# --------------------------------------------------------------------------- entry points

def convert(source: Any, options: ConvertOptions) -> Converted:
    """An ``nn.Module`` (or an in-memory ``ScriptModule``) -> ONNX, traced on ``example_input``
    (or on random data of ``input_shape``)."""
    torch = _import_torch()
    if not isinstance(source, torch.nn.Module):
        raise ConversionError(f"expected a torch.nn.Module, got {type(source).__qualname__}")
    scripted = isinstance(source, torch.jit.ScriptModule)
    example = _example(options, torch, what="a PyTorch module")
    return _convert_module(source, example, options, torch, exporters=("torchscript",) if scripted else EXPORTERS,
                           label=type(source).__name__)


def convert_torchscript(source: Any, options: ConvertOptions) -> Converted:
    """A TorchScript file (``torch.jit.save``) -> ONNX; ``input_shape`` (or example_input) is required
    because the file does not record its input sizes."""
    path = Path(source)
    if not path.is_file():
        raise ConversionError(f"{path}: no such file")
    _check_torchscript_file(path)  # before importing torch
    if options.input_shape is None and options.example_input is None:
        raise ConversionError(f"{path}: a TorchScript file does not record its input size; pass input_shape "
                              "(batch first, e.g. 1,3,224,224)")
    torch = _import_torch()
    try:
        with _quiet():
            module = torch.jit.load(str(path), map_location="cpu")
    except Exception as e:
        raise ConversionError(f"{path}: torch.jit.load failed ({first_line(e)})") from e
    example = _example(options, torch, what="a TorchScript file")
    converted = _convert_module(module, example, options, torch, exporters=("torchscript",), label=path.name)
    converted.source_version += " (TorchScript)"
    converted.metadata[META_SOURCE] = converted.source_version
    return converted


def _check_torchscript_file(path: Path) -> None:
    try:
        with zipfile.ZipFile(path) as archive:
            names = archive.namelist()
    except (zipfile.BadZipFile, OSError) as e:
        raise ConversionError(f"{path}: not a TorchScript file (not a zip archive: {first_line(e)})") from None
    if not any("/code/" in name for name in names):
        hint = " (a torch.save pickle: save with torch.jit.save, or pass the nn.Module)" if any(
            n.endswith("data.pkl") for n in names) else ""
        raise ConversionError(f"{path}: not a TorchScript file (no code/ in the archive){hint}")


def _example(options: ConvertOptions, torch: Any, what: str) -> list[Any]:
    """The tracing inputs as tensors: example_input as given (float64 arrays, numpy's default, as
    float32: PyTorch's default weights are float32), else seeded random float32 of input_shape."""
    if options.example_input is not None:
        arrays = [a.astype(np.float32) if a.dtype == np.float64 else a for a in options.example_input]
        return [torch.from_numpy(np.ascontiguousarray(a)) for a in arrays]
    if options.input_shape is None:
        raise ConversionError(f"converting {what} needs example_input (array(s) it can run on) or input_shape "
                              "(batch first, e.g. (1, 3, 224, 224))")
    rng = np.random.default_rng(0)
    return [torch.from_numpy(rng.standard_normal(shape).astype(np.float32)) for shape in options.input_shape]


# --------------------------------------------------------------------------- the conversion

def _convert_module(module: Any, example: list[Any], options: ConvertOptions, torch: Any,
                    exporters: Sequence[str], label: str) -> Converted:
    with _eval_mode(module), torch.no_grad():
        try:
            with _quiet():
                outputs = _flatten(module(*example), torch)
        except Exception as e:
            raise ConversionError(f"running {label} on the example input failed: {first_line(e)}") from e
    if not outputs:
        raise ConversionError(f"{label} returned no tensor")

    input_names = _input_names(module, len(example))
    output_names = ["output"] if len(outputs) == 1 else [f"output_{i}" for i in range(len(outputs))]
    batch = int(example[0].shape[0]) if example[0].dim() > 0 else None
    free_outputs = [name for name, t in zip(output_names, outputs) if batch is not None and t.dim() > 0
                    and int(t.shape[0]) == batch]
    onnx_model, _exporter = export_module(module, example, input_names, output_names, free_outputs, options.opset,
                                         exporters=exporters, label=label)

    params = {name for name, _ in module.named_parameters()} | {name for name, _ in module.named_buffers()}
    modules = {name for name, _ in module.named_modules() if name}
    name_nodes_by_module(onnx_model, modules, params)

    version = f"torch {torch.__version__}"
    metadata = {META_SOURCE: version}
    layout = layout_metadata(onnx_model, "NCHW")  # PyTorch image tensors are NCHW by convention
    if layout is not None:
        metadata[META_LAYOUT] = layout

    def run_source(arrays: list[np.ndarray]) -> list[np.ndarray]:
        tensors = [torch.from_numpy(np.ascontiguousarray(a)) for a in arrays]
        with _eval_mode(module), torch.no_grad(), _quiet():
            result = module(*tensors)
        return [t.detach().cpu().numpy() for t in _flatten(result, torch)]

    return Converted(onnx_model, version, run_source=run_source, metadata=metadata, symbolic_batch=False)


def _flatten(value: Any, torch: Any) -> list[Any]:
    """The tensors of a (nested) forward() result, in the order the exporters flatten them."""
    if isinstance(value, torch.Tensor):
        return [value]
    if isinstance(value, (list, tuple)):
        return [t for item in value for t in _flatten(item, torch)]
    if isinstance(value, dict):
        return [t for item in value.values() for t in _flatten(item, torch)]
    return []


def _input_names(module: Any, count: int) -> list[str]:
    """forward()'s parameter names when they name every input (``x``, ``image``), else input_<i>."""
    try:
        forward = module.forward
        parameters = [p for p in inspect.signature(forward).parameters.values()
                      if p.kind in (p.POSITIONAL_ONLY, p.POSITIONAL_OR_KEYWORD)]
        names = [p.name for p in parameters[:count]]
    except (TypeError, ValueError, AttributeError):
        names = []
    if len(names) == count and len(set(names)) == count and all(n.isidentifier() for n in names):
        return names
    return ["input"] if count == 1 else [f"input_{i}" for i in range(count)]


def export_module(module: Any, example: list[Any], input_names: list[str], output_names: list[str],
                  free_outputs: Sequence[str], opset: int | None, *, exporters: Sequence[str] = EXPORTERS,
                  label: str = "the module") -> tuple[onnx.ModelProto, str]:
    """Export with the first of ``exporters`` that works; (model, exporter name). Every input's
    first dimension and each of ``free_outputs``' is exported as the free dimension ``batch``."""
    torch = _import_torch()
    errors = []
    for exporter in exporters:
        try:
            with _eval_mode(module), _quiet(), _without_triton():
                if exporter == "torchscript":
                    model = _export_torchscript(torch, module, example, input_names, output_names, free_outputs, opset)
                else:
                    model = _export_dynamo(torch, module, example, input_names, output_names, opset)
            return model, exporter
        except ImportError as e:  # onnxscript (dynamo) missing
            errors.append((exporter, missing_dependency(EXTRA, "the torch.export-based ONNX exporter", e)))
        except Exception as e:
            errors.append((exporter, e))
    if all(isinstance(e, ImportError) for _, e in errors):
        raise errors[-1][1]
    detail = "; ".join(f"{name} exporter: {first_line(e)}" for name, e in errors)
    raise ConversionError(f"torch.onnx.export of {label} failed ({detail})")


def _export_torchscript(torch: Any, module: Any, example: list[Any], input_names: list[str],
                        output_names: list[str], free_outputs: Sequence[str], opset: int | None) -> onnx.ModelProto:
    dynamic_axes = {name: {0: BATCH} for name, t in zip(input_names, example) if t.dim() > 0}
    dynamic_axes.update({name: {0: BATCH} for name in free_outputs})
    buffer = io.BytesIO()
    kwargs: dict[str, Any] = dict(input_names=input_names, output_names=output_names, dynamic_axes=dynamic_axes,
                                  do_constant_folding=True)
    if opset is not None:
        kwargs["opset_version"] = opset
    if "dynamo" in inspect.signature(torch.onnx.export).parameters:
        kwargs["dynamo"] = False
    torch.onnx.export(module, tuple(example), buffer, **kwargs)
    return onnx.load_from_string(buffer.getvalue())


def _export_dynamo(torch: Any, module: Any, example: list[Any], input_names: list[str], output_names: list[str],
                   opset: int | None) -> onnx.ModelProto:
    import onnxscript  # noqa: F401  - the dynamo exporter's dependency; its absence is reported by name

    batch = torch.export.Dim(BATCH)
    dynamic_shapes = tuple({0: batch} if t.dim() > 0 else None for t in example)
    kwargs: dict[str, Any] = dict(input_names=input_names, output_names=output_names, dynamo=True,
                                  dynamic_shapes=dynamic_shapes, verbose=False)
    if opset is not None:
        kwargs["opset_version"] = opset
    program = torch.onnx.export(module, tuple(example), **kwargs)
    return program.model_proto


# --------------------------------------------------------------------------- names

def name_nodes_by_module(model: onnx.ModelProto, modules: set[str], params: set[str]) -> None:
    """Rename the nodes in place (see :func:`rename_torch_nodes`) and record on each node the chain
    of modules it belongs to (``pkg.torch.onnx.name_scopes``, the dynamo exporter's key, which
    ``onnxviz.graph.find_layer`` reads), so that ``layer4`` and ``layer4.1`` find their last node."""
    paths = [_module_of(node, modules, params) for node in model.graph.node]
    for node, name, path in zip(model.graph.node, _names(model, paths), paths):
        node.name = name
        kept = [p for p in node.metadata_props if p.key != _NAME_SCOPES]
        del node.metadata_props[:]
        node.metadata_props.extend(kept)
        if path:
            parts = path.split(".")
            chain = [".".join(parts[: i + 1]) for i in range(len(parts))]
            node.metadata_props.add(key=_NAME_SCOPES, value=repr(chain))


def rename_torch_nodes(model: onnx.ModelProto, modules: set[str], params: set[str]) -> list[str]:
    """New node names: ``<module path>/<op>``, e.g. ``layer4.1.conv2/Conv``, like the Keras
    converter's ``<layer>/<op>``; nodes outside any module are named by their op (``Flatten``).

    The module comes from (1) a named parameter or buffer the node reads (``layer4.1.conv2.weight``
    -> ``layer4.1.conv2``), else (2) the dynamo exporter's ``pkg.torch.onnx.name_scopes`` metadata,
    else (3) the scopes of the TorchScript exporter's name ``/layer4/layer4.1/conv2/Conv`` (a segment
    extends the path or overlaps its end: ``layer4`` + ``layer4.1``; ``relu_1``, a module's second
    call, is ``relu``). Only real module paths (``modules``) are used. The op part is the TorchScript
    name's last segment (``Conv_1``) or the op type; names are made unique with ``__k``.
    """
    return _names(model, [_module_of(node, modules, params) for node in model.graph.node])


def _module_of(node: onnx.NodeProto, modules: set[str], params: set[str]) -> str | None:
    return _param_module(node, modules, params) or _metadata_module(node, modules) or _name_module(node.name, modules)


def _names(model: onnx.ModelProto, paths: list[str | None]) -> list[str]:
    names = []
    for node, path in zip(model.graph.node, paths):
        op = node.name.rsplit("/", 1)[-1] if node.name.startswith("/") else node.op_type
        names.append(f"{path}/{op}" if path else op)
    return unique_names(names)


def _param_module(node: onnx.NodeProto, modules: set[str], params: set[str]) -> str | None:
    for name in node.input:
        if name in params and "." in name:
            owner = name.rsplit(".", 1)[0]
            if owner in modules:
                return owner
    return None


def _metadata_module(node: onnx.NodeProto, modules: set[str]) -> str | None:
    for prop in node.metadata_props:
        if prop.key == _NAME_SCOPES:
            try:
                scopes = [str(s) for s in ast.literal_eval(prop.value) if s]
            except (ValueError, SyntaxError):
                return None
            found = [s for s in scopes if s in modules]
            return found[-1] if found else None
    return None


def _name_module(name: str, modules: set[str]) -> str | None:
    """The deepest real module along the scopes of a TorchScript-exporter name. Each segment names
    a module relative to an enclosing one: it extends the path (``layer4.1`` + ``conv2``) or
    overlaps its end (``layer4`` + ``layer4.1``; ``layer2.0.downsample`` + ``downsample.0``)."""
    segments = [s for s in name.split("/") if s][:-1]
    parts: list[str] = []
    best = None
    for segment in segments:
        candidate = _extend(parts, segment.split("."), modules)
        if candidate is None:
            break
        parts = candidate
        best = ".".join(parts)
    return best


def _extend(parts: list[str], segment: list[str], modules: set[str]) -> list[str] | None:
    """``parts`` extended by ``segment``, the largest overlap first, as a real module path; a
    module's repeated call (``relu_1``: the TorchScript exporter's name for the second call of
    ``relu``) counts as the module."""
    for overlap in range(min(len(parts), len(segment)), -1, -1):
        if parts[len(parts) - overlap:] != segment[:overlap]:
            continue
        candidate = parts + segment[overlap:]
        if ".".join(candidate) in modules:
            return candidate
        base, _, count = candidate[-1].rpartition("_")
        if count.isdigit() and ".".join(candidate[:-1] + [base]) in modules:
            return candidate[:-1] + [base]
    return None
