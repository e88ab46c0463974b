"""Files in, maps and numbers out: what the ``saliency`` / ``cam`` / ``occlusion`` commands do, as
one library call. Reads the images (a note per file), runs each method on the whole batch, and
optionally scores the maps (deletion / insertion AUC against a random order; the randomization
sanity check). Writing the figure and the ``.npy`` is left to :meth:`Explanation.save`, after
everything was computed, so a failure never leaves a partial output.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Sequence

import numpy as np

from ..fileio import write_files
from ..images import LoadedImages, load_images
from ..render import npy_bytes, picture_bytes
from .core import Attribution, Attributor, as_attributor
from .figure import attribution_figure, stack_maps
from .metrics import deletion_auc, insertion_auc, random_maps, randomization_check

__all__ = ["Explanation", "explain_files"]


@dataclass
class Explanation:
    """Everything one command computed: the images, one :class:`Attribution` per method, and
    optionally ``metrics`` (method -> {"deletion": (N,), "insertion": (N,)}, plus "random") and
    ``sanity`` (method -> RandomizationResult)."""

    attributor: Attributor
    images: LoadedImages
    results: list[Attribution]
    metrics: dict[str, dict[str, np.ndarray]] = field(default_factory=dict)
    sanity: dict[str, Any] = field(default_factory=dict)

    def figure(self, cmap: str = "jet", alpha: float = 0.5):
        return attribution_figure(self.images.unit, self.results, self.images.labels, cmap=cmap, alpha=alpha,
                                  unit_label=self.attributor.unit_label)

    def maps(self) -> np.ndarray:
        return stack_maps(self.results)

    def save(self, output: str | os.PathLike, save_npy: str | os.PathLike | None = None, *,
             cmap: str = "jet", alpha: float = 0.5) -> list[Path]:
        """Write the side-by-side figure (PNG or JPEG by suffix) and, when asked, the maps (``.npy``):
        both encoded in memory first, then written together or not at all."""
        files = [(output, picture_bytes(self.figure(cmap, alpha), output))]
        if save_npy is not None:
            files.append((save_npy, npy_bytes(save_npy, self.maps())))
        return write_files(files)


def explain_files(model: Any, paths: Sequence[str | os.PathLike], methods: Sequence[str], unit: Any = None, *,
                  metrics: bool = False, sanity: bool = False, metric_steps: int = 50, seed: int = 0,
                  attributor_options: dict[str, Any] | None = None, **options: Any) -> Explanation:
    """Read ``paths``, run ``methods`` (names as :func:`onnxviz.attribution.attribute` takes them,
    sharing ``options``) for ``unit`` (None: each image's top class). ``class_names=`` (or in
    ``attributor_options``) labels the classes over the metadata's names."""
    from . import attribute, method_name
    attributor_options = dict(attributor_options or {})
    if options.get("class_names") is not None:
        attributor_options["class_names"] = options.pop("class_names")
    options.pop("class_names", None)
    att = as_attributor(model, **attributor_options)
    loaded = load_images(paths, att.spec)
    x = loaded.batch
    names = [method_name(m) for m in methods]
    units, _ = att.resolve_units(x, unit)
    if "seed" not in options:
        options["seed"] = seed
    results = [attribute(att, x, m, unit=units, **options) for m in names]
    out = Explanation(att, loaded, results)
    if metrics:
        n = len(x)
        rand = random_maps(n, att.spec.height, att.spec.width, seed=seed)
        out.metrics["random"] = {"deletion": deletion_auc(att, x, rand, units, steps=metric_steps, seed=seed),
                                 "insertion": insertion_auc(att, x, rand, units, steps=metric_steps, seed=seed)}
        for r in results:
            out.metrics[r.method] = {"deletion": deletion_auc(att, x, r, steps=metric_steps, seed=seed),
                                     "insertion": insertion_auc(att, x, r, steps=metric_steps, seed=seed)}
    if sanity:
        for name, r in zip(names, results):
            method_options = {k: v for k, v in options.items() if k != "seed"}
            out.sanity[r.method] = randomization_check(att, x, name, units, seed=seed, **method_options)
    return out
