"""Normalization ops: BatchNormalization (inference), Instance/Layer/Group normalization, LRN."""

from __future__ import annotations

from . import rule  # noqa: F401
