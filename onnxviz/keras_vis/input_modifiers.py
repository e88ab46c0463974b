"""keras-vis' input modifiers for ``visualize_activation(..., input_modifiers=[...])``.

keras-vis' ``Jitter(jitter)`` rolled the image by a random offset in ``[-jitter, jitter]`` pixels
along each image axis before every step (a value in ``(0, 1)`` is a fraction of the image size).
Here it becomes onnxviz's ``Translate`` transform with the ``wrap`` mode (a roll). Any onnxviz
transform (``onnxviz.transforms.Pad``, ``Jitter``, ``Scale``, ``Rotate`` ...) can be given in the
same list; other modifier objects are refused with a clear error.
"""

from __future__ import annotations

from typing import Any, Sequence

__all__ = ["Jitter", "InputModifier"]


class InputModifier:
    """Base class of the input modifiers this port understands."""


class Jitter(InputModifier):
    """Random roll by up to ``jitter`` pixels per axis (a number in ``(0, 1)``: that fraction of the
    image's longer side; a sequence: one value per image axis, which must come out equal)."""

    def __init__(self, jitter: float | Sequence[float] = 0.05):
        self.jitter = jitter

    def pixels(self, h: int, w: int) -> int:
        """The roll range in pixels for an ``h x w`` image."""
        from ._model import UnsupportedOptionError

        values = list(self.jitter) if isinstance(self.jitter, (list, tuple)) else [self.jitter, self.jitter]
        if len(values) != 2:
            raise UnsupportedOptionError(f"Jitter({self.jitter!r}): give one value, or one per image axis (2)")
        out = []
        for v, size in zip(values, (h, w)):
            v = float(v)
            if v < 0:
                raise UnsupportedOptionError(f"Jitter({self.jitter!r}): the jitter must be >= 0")
            out.append(int(round(v * size)) if 0 < v < 1 else int(round(v)))
        if out[0] != out[1]:
            raise UnsupportedOptionError(f"Jitter({self.jitter!r}) is {out[0]} px down and {out[1]} px across: onnxviz "
                                         "rolls both axes by the same range; give one value")
        if out[0] >= min(h, w):
            raise UnsupportedOptionError(f"Jitter({self.jitter!r}) = {out[0]} px is not smaller than the {h}x{w} image")
        return out[0]

    def __repr__(self) -> str:
        return f"Jitter({self.jitter!r})"


def is_keras_vis_jitter(obj: Any) -> bool:
    """This module's Jitter, or keras-vis' own (``vis.input_modifiers.Jitter``: same name, a
    ``jitter`` attribute)."""
    return isinstance(obj, Jitter) or (type(obj).__name__ == "Jitter" and hasattr(obj, "jitter")
                                       and not type(obj).__module__.startswith("onnxviz.transforms"))
