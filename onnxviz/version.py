"""The installed onnxviz version (from the package metadata, or pyproject.toml in a source checkout)."""

from __future__ import annotations

import re
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path

__all__ = ["__version__"]


def _version() -> str:
    try:
        return version("onnxviz")
    except PackageNotFoundError:  # a source checkout that was never installed: read pyproject.toml
        try:
            text = (Path(__file__).resolve().parent.parent / "pyproject.toml").read_text()
            found = re.search(r'^version\s*=\s*"([^"]+)"', text, re.M)
            return found.group(1) if found else "0+unknown"
        except OSError:
            return "0+unknown"


__version__ = _version()
