"""Models shipped with onnxviz: ``onnxviz/_models`` in an installed wheel, ``models/`` in a checkout."""

from __future__ import annotations

from pathlib import Path

from .errors import OnnxvizError

__all__ = ["shipped_model_path", "shipped_models"]

_PACKAGE_DIR = Path(__file__).resolve().parent


def _search_dirs() -> list[Path]:
    dirs = [_PACKAGE_DIR / "_models"]
    root = _PACKAGE_DIR.parent  # a source or editable checkout: <repo>/onnxviz and <repo>/models
    if (root / "pyproject.toml").is_file() and (root / "models").is_dir():
        dirs.append(root / "models")
    return dirs


def shipped_models() -> list[str]:
    """Names of the shipped models (``mnist_cnn`` ...), sorted."""
    names = {p.stem for d in _search_dirs() if d.is_dir() for p in d.glob("*.onnx")}
    return sorted(names)


def shipped_model_path(name: str = "mnist_cnn") -> Path:
    """Path of a shipped model by name (``.onnx`` optional); unknown → :class:`OnnxvizError`."""
    stem = name[:-5] if name.endswith(".onnx") else name
    for d in _search_dirs():
        path = d / f"{stem}.onnx"
        if path.is_file():
            return path
    available = ", ".join(shipped_models()) or "none (the package was installed without models/)"
    raise OnnxvizError(f"no shipped model named {name!r}; available: {available}")
