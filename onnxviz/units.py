"""Unit specifications: which units (classes, channels) of a layer a job maximizes, from an int, a
sequence or text such as ``"1,4,7-9"``."""

from __future__ import annotations

from typing import Any

import numpy as np

from .errors import OnnxvizError

__all__ = ["parse_units", "MAX_UNITS"]

#: The most units one job may name (a typo like ``0-99999999999`` must fail, not fill the memory).
MAX_UNITS = 100_000


def _check_unit_bounds(lo: int, hi: int, count: int | None, before: int) -> None:
    """Refuse a unit range outside the layer or longer than :data:`MAX_UNITS` before building it."""
    if count is not None:
        for v in (lo, hi):
            if not -count <= v < count:
                raise OnnxvizError(f"unit {v} out of range: the layer has {count} units (0..{count - 1})")
    if before + hi - lo + 1 > MAX_UNITS:
        raise OnnxvizError(f"too many units ({before + hi - lo + 1:,}): at most {MAX_UNITS:,} per job")


def parse_units(spec: Any, count: int | None = None) -> list[int]:
    """Units from an int, a sequence, or text: ``"3"``, ``"0-9"``, ``"1,4,7-9"``, ``"all"``
    (needs ``count``). Negative indices count from the end when ``count`` is known."""
    if spec is None or (isinstance(spec, str) and spec.strip().lower() == "all"):
        if count is None:
            raise OnnxvizError("'all' units needs a layer of known size")
        return list(range(count))
    if isinstance(spec, (int, np.integer)) and not isinstance(spec, bool):
        values = [int(spec)]
    elif isinstance(spec, str):
        values = []
        for part in spec.replace(" ", "").split(","):
            if not part:
                continue
            try:
                if "-" in part[1:]:
                    cut = part.index("-", 1)
                    lo, hi = int(part[:cut]), int(part[cut + 1:])
                    if hi < lo:
                        raise OnnxvizError(f"bad unit range {part!r}: end before start")
                    _check_unit_bounds(lo, hi, count, len(values))
                    values.extend(range(lo, hi + 1))
                else:
                    values.append(int(part))
            except ValueError:
                raise OnnxvizError(f"bad units {spec!r}: expected e.g. 3, 0-9, 1,4,7-9 or all") from None
        if not values:
            raise OnnxvizError(f"bad units {spec!r}: no unit given")
    else:
        try:
            values = [int(v) for v in spec]
        except (TypeError, ValueError):
            raise OnnxvizError(f"bad units {spec!r}") from None
    if count is not None:
        for v in values:
            if not -count <= v < count:
                raise OnnxvizError(f"unit {v} out of range: the layer has {count} units (0..{count - 1})")
        values = [v % count for v in values]
    return values
