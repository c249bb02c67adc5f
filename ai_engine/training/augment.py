"""Augmentation building blocks (MONAI dict transforms) shared by every model."""

from __future__ import annotations

import math
import warnings
from collections.abc import Sequence

import numpy as np
import torch
from monai.transforms import (
    CutMix,
    MapTransform,
    Rand3DElasticd,
    RandAdjustContrastd,
    RandAffined,
    RandFlipd,
    RandGaussianNoised,
    RandScaleIntensityd,
)


def spatial_augmentations(
    keys: Sequence[str],
    *,
    modes: Sequence[str] | None = None,
    flip_prob: float = 0.5,
    rotate_degrees: float = 15.0,
    scale_range: float = 0.1,
    affine_prob: float = 0.5,
    elastic_prob: float = 0.1,
    elastic_sigma: tuple[float, float] = (5.0, 7.0),
    elastic_magnitude: tuple[float, float] = (20.0, 60.0),
) -> list[MapTransform]:
    """Flips on every axis, rotation within +-`rotate_degrees` and scaling within
    +-`scale_range` (one affine resampling), and an occasional elastic deformation.

    Args:
        keys: image-like keys (images and their label maps, transformed together).
        modes: interpolation per key ("bilinear" for images, "nearest" for labels).
    """
    keys = list(keys)
    modes = list(modes) if modes is not None else ["bilinear"] * len(keys)
    rad = math.radians(rotate_degrees)
    out: list[MapTransform] = [
        RandFlipd(keys=keys, prob=flip_prob, spatial_axis=a) for a in range(3)
    ]
    out.append(
        RandAffined(
            keys=keys,
            mode=modes,
            prob=affine_prob,
            rotate_range=(rad, rad, rad),
            scale_range=(scale_range,) * 3,
            padding_mode="border",
        )
    )
    if elastic_prob > 0:
        out.append(
            Rand3DElasticd(
                keys=keys,
                mode=modes,
                prob=elastic_prob,
                sigma_range=elastic_sigma,
                magnitude_range=elastic_magnitude,
                padding_mode="border",
            )
        )
    return out


def intensity_augmentations(
    keys: Sequence[str],
    *,
    noise_prob: float = 0.2,
    noise_std: float = 0.02,
    contrast_prob: float = 0.2,
    gamma: tuple[float, float] = (0.8, 1.25),
    scale_prob: float = 0.2,
    scale_factor: float = 0.1,
) -> list[MapTransform]:
    """Gaussian noise, gamma contrast and intensity scaling (for images scaled to [0, 1])."""
    keys = list(keys)
    return [
        RandGaussianNoised(keys=keys, prob=noise_prob, std=noise_std),
        RandAdjustContrastd(keys=keys, prob=contrast_prob, gamma=gamma),
        RandScaleIntensityd(keys=keys, prob=scale_prob, factors=scale_factor),
    ]


class CutMixBatch:
    """3D CutMix on a batch (images and soft labels), for classifiers.

    MONAI's `CutMix.__call__` mixes the label tensor with the *image* box mask (1.6.1), which
    leaves a (B, C) classification label unmixed; this wrapper draws the box with MONAI's
    `CutMix` and mixes the labels by the volume fraction each sample actually keeps.

    Args:
        alpha: Beta(alpha, alpha) parameter of the mixing weight (and box size).
        prob: probability that a given batch is mixed at all.
    """

    def __init__(self, alpha: float = 1.0, prob: float = 0.5) -> None:
        self.alpha = alpha
        self.prob = prob
        self.R = np.random.RandomState()

    def set_random_state(self, seed: int | None = None) -> CutMixBatch:
        """Seed the draws (the trainer reseeds per epoch for reproducibility)."""
        self.R = np.random.RandomState(seed)
        return self

    def __call__(
        self, images: torch.Tensor, labels: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]:
        if self.R.rand() >= self.prob or images.shape[0] < 2:
            return images, labels
        mixer = CutMix(batch_size=images.shape[0], alpha=self.alpha)
        mixer.set_random_state(seed=int(self.R.randint(0, 2**31 - 1)))
        mixer.randomize(images)
        with warnings.catch_warnings():  # MONAI indexes with a list (a torch deprecation warning)
            warnings.simplefilter("ignore", UserWarning)
            mixed = mixer.apply(images)
        weights, perm, coords = mixer._params
        # Label weight = the volume fraction actually kept (the box is clipped at the border).
        dims = images.shape[2:]
        kept = []
        for w in weights.tolist():
            lengths = [d * math.sqrt(1 - w) for d in dims]
            box = 1
            for c, ln, d in zip(coords, lengths, dims, strict=True):
                c = int(c)
                box *= max(0, min(math.ceil(c + ln), d) - c)
            kept.append(1.0 - box / float(np.prod(dims)))
        lam = torch.tensor(kept, dtype=labels.dtype, device=labels.device)
        lam = lam.view(-1, *([1] * (labels.ndim - 1)))
        return mixed, lam * labels + (1 - lam) * labels[torch.as_tensor(perm)]
