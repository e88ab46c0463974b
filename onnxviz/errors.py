"""Exception types. Every error a user can cause derives from :class:`OnnxvizError`;
the CLI prints its message as one line and exits with code 2."""

from __future__ import annotations

import difflib
from typing import Iterable


class OnnxvizError(Exception):
    """A problem with what the user gave us (path, model, layer, option) — never a bug."""


class ModelLoadError(OnnxvizError):
    """The file or bytes are not a loadable, valid ONNX model."""


class LayerNotFoundError(OnnxvizError, KeyError):
    """No node, tensor or layer matches the key; the message lists the closest names."""

    def __str__(self) -> str:  # KeyError would repr() the message
        return str(self.args[0]) if self.args else ""


class RewriteError(OnnxvizError):
    """A graph rewrite cannot be applied (e.g. no final softmax to strip)."""


class ShapeError(OnnxvizError):
    """A shape is missing or inconsistent (e.g. a dynamic dim without --input-shape)."""


class UnsupportedOpError(OnnxvizError):
    """The gradient graph cannot be built: some ops have no gradient rule.

    ``ops`` maps each op type lacking a rule to the names of the nodes that use it.
    """

    def __init__(self, ops: dict[str, list[str]], detail: str = ""):
        self.ops = {k: list(v) for k, v in sorted(ops.items())}
        parts = [f"{op} (nodes: {', '.join(names[:3])}{', ...' if len(names) > 3 else ''})"
                 for op, names in self.ops.items()]
        msg = "no gradient rule for: " + "; ".join(parts)
        if detail:
            msg += f" — {detail}"
        super().__init__(msg)


class ConversionError(OnnxvizError):
    """A framework model could not be converted to ONNX."""


class ParityError(ConversionError):
    """The converted ONNX model disagrees with its source beyond tolerance."""


class MissingDependencyError(OnnxvizError, ImportError):
    """An optional framework is needed; the message names the extra to install."""


class ImageError(OnnxvizError):
    """An input image cannot be read or does not fit the model."""


def one_line(e: BaseException | str, limit: int = 300) -> str:
    """``e``'s message on one line (whitespace runs collapsed), cut to ``limit`` characters: what
    the CLI prints for an error from onnx or onnxruntime, whose messages span many lines."""
    text = " ".join(str(e).split())
    return text if len(text) <= limit else text[: limit - 3] + "..."


def not_found(what: str, key: str, candidates: Iterable[str], hint: str = "") -> str:
    """"no {what} named {key!r}", with up to 5 close names from ``candidates`` (similar spelling,
    else containing ``key``), or ``hint`` when none is close."""
    pool = list(dict.fromkeys(c for c in candidates if c))
    close = difflib.get_close_matches(str(key), pool, n=5, cutoff=0.5)
    if not close:  # substring hits help with long scoped names
        close = [c for c in pool if str(key).lower() in c.lower()][:5]
    msg = f"no {what} named {key!r}"
    if close:
        msg += "; closest: " + ", ".join(close)
    elif hint:
        msg += f" ({hint})"
    return msg
