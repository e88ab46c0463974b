"""The recipes activation maximization starts from: :class:`Settings` (everything that shapes an
optimization besides the objective and the seed), the preset per input kind
(:func:`default_settings`) and its variants for an image prior or a start image
(:func:`prior_settings`).

The presets follow keras-vis, tf-keras-vis and lucid; the README section "Activation maximization
defaults" gives the reasons, bench/README.md the measurements behind the numbers that differ.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, replace
from typing import Any

from .priors import GaussianPrior, Prior
from .regularizers import LpNorm, Regularizer, TotalVariation
from .transforms import Jitter, Pad, Rotate, Scale, Transform

__all__ = ["Settings", "default_settings", "prior_settings", "CLASS_OBJECTIVES"]

#: What a unit of a softmax layer means: ``logit`` maximizes the bare logit z_k (keras-vis' "swap
#: softmax for linear"), ``log_softmax`` log p_k computed from the logits. Defaults by input kind.
CLASS_OBJECTIVES = ("log_softmax", "logit")
#: Adam's step in a Gaussian prior's whitened coefficients (units of the samples' standard
#: deviations): large enough that every class leaves the prior's mean within the preset's steps.
PRIOR_LR = 0.5
#: Feature accentuation of a class stops pushing once its probability reaches this (in the
#: transformed views); its distance weight is lower than visualization's and its transforms lighter
#: (pad and jitter only): the start image is real, so it needs less help to stay natural.
ACCENTUATE_TO = 0.98
ACCENTUATE_WEIGHT = 0.05


@dataclass(frozen=True)
class Settings:
    """Everything that shapes the optimization besides the objective and the seed."""

    steps: int
    lr: float
    param: str  # pixel | pixel-clip | fft | fft-clip
    transforms: tuple[Transform, ...]
    regularizers: tuple[Regularizer, ...]
    mode: str = "constant"  # what lies outside the image for the transforms
    fill: float = 0.0  # the constant outside (unit range)
    decay: float = 1.0  # Fourier spectrum decay
    init_std: float | None = None
    #: regularizer weights relative to each image's objective gradient (see ``maximize._Step``)
    relative_regularizers: bool = True
    #: what a unit of a softmax layer means: see CLASS_OBJECTIVES
    class_objective: str = "logit"
    preset: str = "custom"
    #: weight of the parameterization's own penalty (a prior's ``mean(z**2)``), relative like the regularizers
    prior_weight: float = 1.0
    #: an objective value past which an image's objective gradient stops (feature accentuation: the
    #: image changes only until the unit is there, then the distance penalty alone acts)
    objective_ceiling: float | None = None

    def describe(self) -> dict[str, Any]:
        return {
            "preset": self.preset, "steps": self.steps, "lr": self.lr, "param": self.param,
            "decay": self.decay, "init_std": self.init_std,
            "transforms": [t.describe() for t in self.transforms], "mode": self.mode, "fill": self.fill,
            "regularizers": [r.describe() for r in self.regularizers],
            "relative_regularizers": self.relative_regularizers, "class_objective": self.class_objective,
            "prior_weight": self.prior_weight, "objective_ceiling": self.objective_ceiling,
        }


def default_settings(channels: int, h: int, w: int) -> Settings:
    """The preset for a ``channels`` x ``h`` x ``w`` input, chosen by its longest side and channels;
    they work without tuning (lucid's recipe where it applies, adapted where it fails).

    - ``small`` (longest side < 64 px, e.g. 28x28 MNIST-like grayscale): pixel parameterization
      through a sigmoid, Adam lr 0.1, 128 steps; pad 2, jitter 4, scale 0.9-1.1, rotate 8 degrees
      (lucid's transforms scaled down from 224 px), black fill (the background of MNIST-like data);
      total variation 0.1 + L1 toward black 0.05 (keras-vis' TV + Lp pair); class units as bare logits.
    - ``large`` (3 channels, 64 px and up): lucid's recipe — Fourier parameterization (1/f scaling,
      decorrelated colour, sigmoid), Adam lr 0.05, 512 steps; pad 12, jitter 8, scale 0.9-1.1, rotate
      10 degrees, jitter 4 (pixel counts scaled by side / 224), gray fill 0.5; no regularizer (the
      basis and the transforms regularize); class units as log-softmax (bare logits fail there).
      Below 160 px the spectrum decays as 1/f**2 and lr is 0.1: lucid's 1/f and 0.05 leave classes
      unreached at 64 px.
    - ``gray`` (any channel count but 3, 64 px and up): the large recipe without colour
      decorrelation, 1/f**1.5 spectrum, Adam lr ``0.02 * sqrt(64 / side)``, 256 steps: the RGB
      recipe saturates grayscale images into black-and-white blobs; the lr scaling makes a
      low-frequency coefficient move the image by the same amount at any size.
    """
    side = max(h, w)
    if side < 64:
        return Settings(
            steps=128, lr=0.1, param="pixel",
            transforms=(Pad(2), Jitter(4), Scale(0.9, 1.1), Rotate(8.0)),
            regularizers=(TotalVariation(0.1), LpNorm(0.05, p=1.0, center=0.0)),
            mode="constant", fill=0.0, class_objective="logit", preset="small",
        )
    k = side / 224.0
    px = lambda n: max(1, int(round(n * k)))  # noqa: E731
    if channels != 3:
        return Settings(
            steps=256, lr=0.02 * math.sqrt(64.0 / side), param="fft", decay=1.5,
            transforms=(Pad(px(12)), Jitter(px(8)), Scale(0.9, 1.1), Rotate(10.0), Jitter(px(4))),
            regularizers=(), mode="constant", fill=0.5, class_objective="log_softmax", preset="gray",
        )
    below = side < 160  # the regime measured here (64 px); lucid's own numbers where lucid measured (224 px)
    return Settings(
        steps=512, lr=0.1 if below else 0.05, param="fft", decay=2.0 if below else 1.0,
        transforms=(Pad(px(12)), Jitter(px(8)), Scale(0.9, 1.1), Rotate(10.0), Jitter(px(4))),
        regularizers=(), mode="constant", fill=0.5, class_objective="log_softmax", preset="large",
    )


def prior_settings(base: Settings, prior: Prior | None, accentuate: bool = False) -> Settings:
    """``base`` adapted to a prior (its penalty replaces the image regularizers; a Gaussian prior's
    whitened coefficients take :data:`PRIOR_LR`) or to feature accentuation (class units read as
    log p_k up to :data:`ACCENTUATE_TO`, so that the target's probability rises and then stops)."""
    changes: dict[str, Any] = {"regularizers": ()}
    if isinstance(prior, GaussianPrior) and not accentuate:  # accentuation keeps the preset's smaller steps
        changes["lr"] = PRIOR_LR
    if accentuate:
        pad = next((t.n for t in base.transforms if isinstance(t, Pad)), 2)
        changes.update(class_objective="log_softmax", objective_ceiling=math.log(ACCENTUATE_TO),
                       prior_weight=ACCENTUATE_WEIGHT, transforms=(Pad(pad), Jitter(pad)))
    tag = "+prior" if prior is not None else ""
    return replace(base, preset=base.preset + tag + ("+accentuate" if accentuate else ""), **changes)
