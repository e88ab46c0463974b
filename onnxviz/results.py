"""What activation maximization hands back: :class:`MaximizeResult` (the images, their objective
record and the settings that made them) and :class:`StepInfo` (what a callback sees after each step)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

__all__ = ["MaximizeResult", "StepInfo"]


@dataclass
class StepInfo:
    """What a callback receives after each step."""

    step: int  # 1-based
    steps: int
    chunk: int  # 0-based chunk (batch) index
    chunks: int
    images: slice  # which result images this chunk optimizes
    values: np.ndarray  # objective value per image of the chunk at this step
    elapsed: float  # seconds since the job started


@dataclass
class MaximizeResult:
    """Images (model layout and range), their objective record, and the settings that made them."""

    images: np.ndarray  # (n, *input shape without batch), final images
    values: np.ndarray  # (n,) objective of the final images, shown untransformed
    history: np.ndarray  # (steps, n) objective per step, as optimized (randomly transformed)
    best_images: np.ndarray  # (n, ...) best-so-far image per unit (keras-vis) by history value
    best_values: np.ndarray  # (n,)
    best_steps: np.ndarray  # (n,) 0-based step of the best image
    labels: list[str]
    objectives: list[str]  # description of each image's objective
    frames: np.ndarray | None  # (frames, n, ...) snapshots when record_every > 0
    frame_steps: list[int]
    layout: str
    value_range: tuple[float, float]
    settings: dict[str, Any]
    seconds: float = 0.0
    #: (n, H, W) in [0, 1]: where each image's objective gradient accumulated over the steps (MACO's
    #: transparency map: where the feature lives); only for Fourier-prior (phase) runs
    transparency: np.ndarray | None = None

    @property
    def units(self) -> list[Any]:
        return list(self.settings.get("units") or [])

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready summary (no image data)."""
        return {"labels": self.labels, "objectives": self.objectives, "values": self.values.tolist(),
                "best_values": self.best_values.tolist(), "best_steps": self.best_steps.tolist(),
                "final_history": self.history[-1].tolist() if len(self.history) else [],
                "shape": list(self.images.shape), "layout": self.layout, "value_range": list(self.value_range),
                "seconds": self.seconds, "settings": self.settings}
