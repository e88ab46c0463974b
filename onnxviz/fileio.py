"""Files written whole or not at all: write to a temp file in the target folder, then rename.

A command's outputs go together (:func:`write_files`): every destination is checked and every temp
file written before the first is renamed into place, so a failure (disk full, a bad second path,
Ctrl-C) leaves no output and no temp file behind. Failures are :class:`OnnxvizError` naming the file.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import stat
import tempfile
from pathlib import Path
from typing import Iterable, Iterator, Sequence

import onnx

from .errors import OnnxvizError

__all__ = ["atomic_output", "check_destination", "check_outputs", "check_suffix", "save_model", "write_files"]

_TWO_GB = 2**31 - 2**20
#: Files this process has renamed into place: the CLI's Ctrl-C message says whether a command wrote any.
files_written = 0


def check_destination(path: str | os.PathLike) -> Path:
    """``path`` as a :class:`Path`, refused when no file of ours can go there: a directory, an
    existing file that is not a regular file (a device or a pipe — renaming over ``/dev/null``
    would replace it), or a path below something that is not a directory."""
    target = Path(os.fspath(path))
    try:
        mode = os.stat(target).st_mode
    except (FileNotFoundError, NotADirectoryError):
        mode = None
    except OSError as e:
        raise OnnxvizError(f"cannot write '{target}': {e.strerror or e}") from None
    if mode is not None:
        if stat.S_ISDIR(mode):
            raise OnnxvizError(f"cannot write '{target}': it is a directory")
        if not stat.S_ISREG(mode):
            raise OnnxvizError(f"cannot write '{target}': it exists and is not a regular file (a device, pipe "
                               "or socket); onnxviz only replaces regular files")
        return target
    for folder in target.parents:  # the nearest existing folder above must be a folder
        if folder.exists() or folder.is_symlink():
            if not folder.is_dir():
                raise OnnxvizError(f"cannot write '{target}': '{folder}' is not a directory")
            break
    return target


def check_outputs(paths: Iterable[str | os.PathLike | None]) -> list[Path]:
    """The given destinations (``None`` skipped), each checked as :func:`check_destination`, no
    two the same file: commands check them all before the work, not after it."""
    targets = [check_destination(p) for p in paths if p is not None]
    seen: dict[Path, Path] = {}
    for target in targets:
        key = target.resolve()
        if key in seen:
            raise OnnxvizError(f"cannot write '{target}' twice: two outputs name the same file"
                               + (f" ('{seen[key]}')" if str(seen[key]) != str(target) else ""))
        seen[key] = target
    return targets


def check_suffix(path: str | os.PathLike, suffixes: Sequence[str], what: str) -> Path:
    """``path``, refused unless its suffix (any case) is one of ``suffixes``: a file is written in
    the format its name says, or not at all."""
    target = Path(os.fspath(path))
    if target.suffix.lower() not in suffixes:
        raise OnnxvizError(f"cannot write '{target}': {what} file names end in {' or '.join(suffixes)}")
    return target


def _write(tmp: Path, data: bytes) -> None:
    with open(tmp, "wb") as f:
        f.write(data)


def _temp_beside(target: Path) -> Path:
    """An empty temp file in ``target``'s folder (created when missing)."""
    try:
        target.parent.mkdir(parents=True, exist_ok=True)
        fd, name = tempfile.mkstemp(dir=target.parent, prefix=f".{target.name}.", suffix=".tmp")
    except OSError as e:
        raise OnnxvizError(f"cannot write '{target}': {e.strerror or e}") from None
    os.close(fd)
    return Path(name)


def write_files(files: Sequence[tuple[str | os.PathLike, bytes]]) -> list[Path]:
    """Write ``(path, data)`` pairs all or none: the paths are checked (:func:`check_outputs`),
    every temp file is written, and only then is each renamed into place. Any failure removes
    the temp files and leaves every destination as it was. Returns the paths written."""
    targets = check_outputs(path for path, _ in files)
    temps: list[Path] = []
    try:
        for target, (_, data) in zip(targets, files):
            temps.append(_temp_beside(target))
            try:
                _write(temps[-1], data)
            except OSError as e:  # disk full, quota, I/O error
                raise OnnxvizError(f"cannot write '{target}': {e.strerror or e}") from None
            _set_mode(temps[-1], target)
        for tmp, target in zip(temps, targets):
            _commit(tmp, target)
    except BaseException:  # also Ctrl-C and SIGTERM (raised as KeyboardInterrupt by the CLI)
        for tmp in temps:
            with contextlib.suppress(OSError):
                tmp.unlink()
        raise
    return targets


@contextlib.contextmanager
def atomic_output(path: str | os.PathLike) -> Iterator[Path]:
    """Yield a temp path beside ``path``; on success it replaces ``path`` atomically, on any
    exception it is deleted, so a failed command never leaves a half-written file. The parent
    folder is created when missing; an OSError while writing (disk full) becomes an OnnxvizError."""
    target = check_destination(path)
    tmp = _temp_beside(target)
    try:
        try:
            yield tmp
        except OSError as e:
            raise OnnxvizError(f"cannot write '{target}': {e.strerror or e}") from None
        _set_mode(tmp, target)
        _commit(tmp, target)
    except BaseException:
        with contextlib.suppress(OSError):
            tmp.unlink()
        raise


def _commit(tmp: str | os.PathLike, target: str | os.PathLike) -> None:
    global files_written
    os.replace(tmp, target)
    files_written += 1


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
    if model.ByteSize() <= _TWO_GB:
        return write_files([(path, model.SerializeToString())])[0]
    target = check_destination(path)
    try:
        target.parent.mkdir(parents=True, exist_ok=True)
        tmpdir = Path(tempfile.mkdtemp(dir=target.parent, prefix=f".{target.name}."))
        try:
            location = target.name + ".data"
            copy = onnx.ModelProto()
            copy.CopyFrom(model)  # saving as external data rewrites the proto: not the caller's
            onnx.save_model(copy, str(tmpdir / target.name), save_as_external_data=True,
                            all_tensors_to_one_file=True, location=location)
            if (tmpdir / location).exists():
                _commit(tmpdir / location, target.parent / location)
            _commit(tmpdir / target.name, target)
        finally:
            shutil.rmtree(tmpdir, ignore_errors=True)
    except OSError as e:
        raise OnnxvizError(f"cannot write '{target}': {e.strerror or e}") from None
    return target
