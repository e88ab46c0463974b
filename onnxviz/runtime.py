"""onnxruntime sessions: one factory with providers ``auto|cpu|cuda``.

``auto`` uses CUDA only when it really loads. onnxruntime-gpu lists ``CUDAExecutionProvider`` even
when the CUDA/cuDNN libraries are missing and then prints loud errors while falling back to CPU, so
the probe creates a session on a tiny model with file descriptors 1 and 2 redirected and keeps what
it printed as the reason CUDA is unavailable.
"""

from __future__ import annotations

import os
import re
import sys
import tempfile
import threading
from pathlib import Path
from typing import TYPE_CHECKING, Any, Sequence

import numpy as np
import onnx

from .errors import ModelLoadError, OnnxvizError, one_line

if TYPE_CHECKING:
    import onnxruntime

__all__ = ["PROVIDER_CHOICES", "available_providers", "cuda_unavailable_reason", "make_session", "resolve_providers"]

PROVIDER_CHOICES = ("auto", "cpu", "cuda")
#: onnxruntime graph rewrites every session turns off because they change results. "Pad_Fusion"
#: (onnxruntime >= 1.17, still in 1.31) folds a zero ``Pad`` into the ``MaxPool`` after it, but
#: MaxPool pads with -inf: windows at the border whose values are all negative then give their
#: maximum instead of 0 (Keras' ZeroPadding2D + MaxPooling2D, e.g. ResNet50V2's pool1).
DISABLED_OPTIMIZERS = ("Pad_Fusion",)
CPU = "CPUExecutionProvider"
CUDA = "CUDAExecutionProvider"

_PROTO_LIMIT = 2**31 - 2**20  # protobuf serializes messages below 2 GB only
_lock = threading.Lock()
_probe: tuple[list[str], str] | None = None  # (providers, reason CUDA is unavailable)


def available_providers() -> list[str]:
    """``[CUDA, CPU]`` when a CUDA session really works in this process, else ``[CPU]``.
    Probed once per process, silently (nothing reaches stdout/stderr)."""
    return list(_probe_providers()[0])


def cuda_unavailable_reason() -> str:
    """Why CUDA is not used ("" when it is): the first line onnxruntime printed, or the error."""
    return _probe_providers()[1]


def _probe_providers() -> tuple[list[str], str]:
    global _probe
    with _lock:
        if _probe is None:
            _probe = _run_probe()
        return _probe


def _run_probe() -> tuple[list[str], str]:
    import onnxruntime as ort

    if CUDA not in ort.get_available_providers():
        return [CPU], "this onnxruntime build has no CUDAExecutionProvider"
    x = onnx.helper.make_tensor_value_info("x", onnx.TensorProto.FLOAT, [2])
    y = onnx.helper.make_tensor_value_info("y", onnx.TensorProto.FLOAT, [2])
    graph = onnx.helper.make_graph([onnx.helper.make_node("Add", ["x", "x"], ["y"])], "probe", [x], [y])
    probe = onnx.helper.make_model(graph, opset_imports=[onnx.helper.make_opsetid("", 13)])
    probe.ir_version = 7
    reason = ""
    ok = False
    with tempfile.TemporaryFile(mode="w+b") as captured:
        with _redirect_fds(captured.fileno()):
            try:
                # warnings on: they name the missing library, and they go to the captured file only
                ort.set_default_logger_severity(2)
                opts = ort.SessionOptions()
                opts.log_severity_level = 2
                sess = ort.InferenceSession(probe.SerializeToString(), opts, providers=[CUDA, CPU])
                if sess.get_providers()[:1] == [CUDA]:
                    out = sess.run(None, {"x": np.ones(2, np.float32)})[0]
                    ok = bool(np.allclose(out, 2.0))
                    reason = "" if ok else "CUDA session computed wrong values"
                else:
                    reason = "CUDAExecutionProvider failed to load"
            except Exception as e:  # noqa: BLE001 - any failure means "no CUDA"
                reason = one_line(e)
            finally:
                ort.set_default_logger_severity(3)
        if not ok:
            captured.seek(0)
            reason = _explain(captured.read().decode("utf-8", "replace"), reason)
    return ([CUDA, CPU], "") if ok else ([CPU], reason or "CUDA provider unavailable")


def _explain(log: str, reason: str) -> str:
    """The useful part of what onnxruntime printed while failing to load CUDA."""
    parts = []
    missing = re.search(r"with error:\s*([^\n\x1b]+)", log)
    if missing:
        parts.append(missing.group(1).strip())
    needs = re.search(r"Require (cuDNN[^\n.]*\.\* and CUDA [^\n.]*\.\*)", log)
    if needs:
        parts.append("onnxruntime-gpu requires " + needs.group(1))
    if not parts:
        lines = [ln.strip() for ln in re.sub(r"\x1b\[[0-9;]*m", "", log).splitlines() if ln.strip()]
        if lines:
            parts.append(lines[0])
    detail = one_line("; ".join(parts), 300)
    return f"{reason} ({detail})" if detail and reason else (detail or reason)


class _redirect_fds:
    """Point fds 1 and 2 at ``target`` (C/C++ output included), restore them afterwards."""

    def __init__(self, target: int):
        self.target = target
        self.saved: list[tuple[int, int]] = []

    def __enter__(self) -> None:
        for stream in (sys.stdout, sys.stderr):
            try:
                stream.flush()
            except Exception:  # noqa: BLE001
                pass
        for fd in (1, 2):
            try:
                self.saved.append((fd, os.dup(fd)))
                os.dup2(self.target, fd)
            except OSError:
                pass

    def __exit__(self, *exc: Any) -> None:
        for fd, copy in self.saved:
            os.dup2(copy, fd)
            os.close(copy)


def resolve_providers(providers: str | Sequence[str]) -> list[str]:
    """onnxruntime's provider list for ``auto`` / ``cpu`` / ``cuda`` (or an explicit list, kept);
    ``cuda`` where CUDA is unavailable, or an unknown choice, is an :class:`OnnxvizError`."""
    if not isinstance(providers, str):
        return list(providers)
    choice = providers.strip().lower()
    if choice == "auto":
        return available_providers()
    if choice == "cpu":
        return [CPU]
    if choice == "cuda":
        avail, reason = _probe_providers()
        if CUDA not in avail:
            raise OnnxvizError(f"CUDA requested but not available: {reason}")
        return [CUDA, CPU]
    raise OnnxvizError(f"unknown providers {providers!r}: expected one of {', '.join(PROVIDER_CHOICES)}")


def make_session(model: onnx.ModelProto | bytes | str | os.PathLike,
                 providers: str | Sequence[str] = "auto", *,
                 threads: int | None = None) -> "onnxruntime.InferenceSession":
    """An onnxruntime session for ``model`` (proto, bytes or path) on ``providers``
    (``auto|cpu|cuda`` or an explicit provider list), full graph optimization (but
    :data:`DISABLED_OPTIMIZERS`), quiet logs,
    ``threads`` intra-op threads (onnxruntime's default when ``None``)."""
    import onnxruntime as ort

    provider_list = resolve_providers(providers)
    opts = ort.SessionOptions()
    opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    opts.log_severity_level = 3
    if threads:
        opts.intra_op_num_threads = int(threads)
    tmpdir = None
    try:
        if isinstance(model, onnx.ModelProto):
            if model.ByteSize() > _PROTO_LIMIT:  # protobuf cannot serialize it: go through a file
                tmpdir = tempfile.TemporaryDirectory(prefix="onnxviz-")
                path = os.path.join(tmpdir.name, "model.onnx")
                big = onnx.ModelProto()
                big.CopyFrom(model)  # saving as external data rewrites the proto: not the caller's
                onnx.save_model(big, path, save_as_external_data=True, location="model.onnx.data")
                del big
                source: Any = path
            else:
                source = model.SerializeToString()
        elif isinstance(model, (bytes, bytearray)):
            source = bytes(model)
        else:
            path = Path(os.fspath(model))
            if not path.is_file():
                raise ModelLoadError(f"cannot read model '{path}': no such file")
            source = str(path)
        try:
            return ort.InferenceSession(source, opts, providers=provider_list,
                                        disabled_optimizers=list(DISABLED_OPTIMIZERS))
        except Exception as e:  # onnxruntime cannot load/run this graph (unsupported op, bad model)
            raise ModelLoadError(f"onnxruntime cannot load the model: {one_line(e)}") from None
    finally:
        if tmpdir is not None:
            tmpdir.cleanup()


