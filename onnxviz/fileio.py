"""Files written whole or not at all: write to a temp file in the target folder, then rename."""

from __future__ import annotations

import contextlib
import os
import shutil
import tempfile
from pathlib import Path
from typing import Iterator

import onnx

from .errors import OnnxvizError

__all__ = ["atomic_output", "save_model"]

_TWO_GB = 2**31 - 2**20


@contextlib.contextmanager
def atomic_output(path: str | os.PathLike) -> Iterator[Path]:
    """Yield a temp path beside ``path``; on success it replaces ``path`` atomically, on any
    exception it is deleted, so a failed command never leaves a half-written file. The parent
    folder is created when missing."""
    target = Path(os.fspath(path))
    if target.is_dir():
        raise OnnxvizError(f"cannot write '{target}': it is a directory")
    try:
        target.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp_name = tempfile.mkstemp(dir=target.parent, prefix=f".{target.name}.", suffix=".tmp")
    except OSError as e:
        raise OnnxvizError(f"cannot write '{target}': {e.strerror or e}") from None
    os.close(fd)
    tmp = Path(tmp_name)
    try:
        yield tmp
        _set_mode(tmp, target)
        os.replace(tmp, target)
    except BaseException:
        with contextlib.suppress(OSError):
            tmp.unlink()
        raise


def _set_mode(tmp: Path, target: Path) -> None:
    """mkstemp makes 0600 files: give the result the mode a plain ``open`` would have."""
    try:
        mode = target.stat().st_mode & 0o777
    except OSError:
        umask = os.umask(0)
        os.umask(umask)
        mode = 0o666 & ~umask
    with contextlib.suppress(OSError):
        os.chmod(tmp, mode)


def save_model(model: onnx.ModelProto, path: str | os.PathLike) -> Path:
    """Write ``model`` to ``path`` atomically. Models over 2 GB get their weights in
    ``<name>.data`` beside it (ONNX external data), each file renamed into place when complete."""
    target = Path(os.fspath(path))
    if model.ByteSize() <= _TWO_GB:
        data = model.SerializeToString()
        with atomic_output(target) as tmp:
            tmp.write_bytes(data)
        return target
    target.parent.mkdir(parents=True, exist_ok=True)
    tmpdir = Path(tempfile.mkdtemp(dir=target.parent, prefix=f".{target.name}."))
    try:
        location = target.name + ".data"
        copy = onnx.ModelProto()
        copy.CopyFrom(model)  # saving as external data rewrites the proto: not the caller's
        onnx.save_model(copy, str(tmpdir / target.name), save_as_external_data=True,
                        all_tensors_to_one_file=True, location=location)
        if (tmpdir / location).exists():
            os.replace(tmpdir / location, target.parent / location)
        os.replace(tmpdir / target.name, target)
    finally:
        shutil.rmtree(tmpdir, ignore_errors=True)
    return target
