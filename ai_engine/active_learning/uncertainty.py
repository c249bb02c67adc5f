"""Uncertainty measures from stochastic predictions, and the test-time augmentations.

With T stochastic class distributions p_t (MC-dropout passes) and their mean p̄:

* predictive entropy  H[p̄] = -Σ_c p̄_c log p̄_c (total uncertainty),
* mutual information  I = H[p̄] - (1/T) Σ_t H[p_t] (BALD, Houlsby et al. 2011: the part that
  comes from the model's uncertainty about its weights, not from the data),

both divided by log C so they lie in [0, 1] whatever the number of classes C. For voxel maps
(the detector's foreground probability) the same is done per voxel with C = 2 and then
averaged over a region.

Test-time augmentation (TTA) variance: the network is run (without dropout) on flipped and
slightly rescaled/shifted copies of the input (MONAI `Flip`, `ScaleIntensity`,
`ShiftIntensity`); dense outputs are flipped back. The variance of the class probabilities
across the copies, averaged over classes (over voxels for maps), measures how fragile the
prediction is to nuisance changes. Probabilities lie in [0, 1], so the variance is at most
1/4 and `4 * variance` is again in [0, 1].
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import torch
from monai.transforms import Flip, ScaleIntensity, ShiftIntensity

__all__ = [
    "DEFAULT_TTA_WEIGHT",
    "TTA",
    "binary_entropy",
    "class_balance_weight",
    "class_uncertainty",
    "combined_uncertainty",
    "entropy",
    "tta_transforms",
    "voxel_uncertainty",
]

_EPS = 1e-12

#: c in a study's u = (entropy + min(c * tta_variance, 1)) / 2: 4 maps the largest possible
#: variance (1/4) to 1. docs/active_learning.md has what other weights measured.
DEFAULT_TTA_WEIGHT = 4.0


def combined_uncertainty(entropy: float, tta_variance: float, tta_weight: float) -> float:
    """A study's u when TTA ran: its entropy averaged with min(tta_weight * tta_variance, 1)."""
    return (float(entropy) + min(tta_weight * float(tta_variance), 1.0)) / 2.0


def entropy(p: np.ndarray, axis: int = -1) -> np.ndarray:
    """Shannon entropy (nats) of distributions along `axis`."""
    p = np.clip(np.asarray(p, dtype=np.float64), _EPS, 1.0)
    return -(p * np.log(p)).sum(axis=axis)


def binary_entropy(p: np.ndarray) -> np.ndarray:
    """Entropy (nats) of Bernoulli(p), elementwise."""
    p = np.clip(np.asarray(p, dtype=np.float64), _EPS, 1.0 - _EPS)
    return -(p * np.log(p) + (1.0 - p) * np.log(1.0 - p))


def class_uncertainty(samples: np.ndarray) -> dict[str, float]:
    """Entropy and mutual information of (T, C) class distributions, both in [0, 1].

    Returns:
        `{"entropy": H[p̄]/log C, "bald": I/log C, "margin": 1 - (p̄_(1) - p̄_(2)),
        "mean_probabilities": p̄}` (p̄_(1) >= p̄_(2): the two largest mean probabilities).
    """
    samples = np.asarray(samples, dtype=np.float64)
    if samples.ndim != 2 or samples.shape[1] < 2:
        raise ValueError(f"expected (T, C) probabilities with C >= 2, got {samples.shape}")
    mean = samples.mean(axis=0)
    norm = np.log(samples.shape[1])
    total = float(entropy(mean)) / norm
    expected = float(entropy(samples, axis=1).mean()) / norm
    top2 = np.sort(mean)[-2:]
    return {
        "entropy": total,
        "bald": max(total - expected, 0.0),
        "margin": float(1.0 - (top2[1] - top2[0])),
        "mean_probabilities": [float(v) for v in mean],
    }


def class_balance_weight(mean_probabilities: np.ndarray, labeled_counts: np.ndarray) -> float:
    """How much a study's predicted classes lack labels: sum_c p̄_c * r_c.

    r_c = C * (1 / (n_c + 1)) / sum_c' (1 / (n_c' + 1)), n_c the labelled studies of class c:
    the inverse (add-one) class frequency scaled so that the classes' mean is 1. Equal counts
    give 1 for every study (plain uncertainty order); a study the model puts in a class with
    few labels weighs more than one it puts in a class with many. The weight lies in (0, C).
    This is class-balanced acquisition (imbalanced active learning), kept to one
    multiplicative term on the study's uncertainty.
    """
    p = np.asarray(mean_probabilities, dtype=np.float64)
    n = np.asarray(labeled_counts, dtype=np.float64)
    if p.shape != n.shape or p.ndim != 1:
        raise ValueError(
            f"expected matching (C,) probabilities and counts, got {p.shape}, {n.shape}"
        )
    if (n < 0).any():
        raise ValueError(f"labelled counts must be >= 0, got {n.tolist()}")
    inverse = 1.0 / (n + 1.0)
    rarity = len(n) * inverse / inverse.sum()
    return float(p @ rarity)


def voxel_uncertainty(samples: np.ndarray, region: np.ndarray) -> dict[str, float]:
    """Voxel-wise binary entropy and mutual information of (T, X, Y, Z) foreground
    probabilities, averaged over the boolean `region` (both in [0, 1])."""
    samples = np.asarray(samples, dtype=np.float64)
    if not region.any():
        return {"entropy": 0.0, "bald": 0.0}
    inside = samples[:, region]  # (T, N)
    total = binary_entropy(inside.mean(axis=0))
    expected = binary_entropy(inside).mean(axis=0)
    norm = np.log(2.0)
    return {
        "entropy": float(total.mean() / norm),
        "bald": float(np.maximum(total - expected, 0.0).mean() / norm),
    }


@dataclass(frozen=True)
class TTA:
    """One test-time augmentation: `forward` on the (C, *spatial) input, `invert` on a dense
    (C, *spatial) output (identity for intensity changes and class outputs)."""

    name: str
    forward: Callable[[torch.Tensor], torch.Tensor]
    invert: Callable[[torch.Tensor], torch.Tensor]


def _same(x: torch.Tensor) -> torch.Tensor:
    return x


def _plain(x: torch.Tensor) -> torch.Tensor:
    return torch.as_tensor(x).as_subclass(torch.Tensor)


def tta_transforms(scale: float = 0.1, shift: float = 0.1) -> list[TTA]:
    """Identity, a flip along each spatial axis, intensity x(1±`scale`) and +`shift`.

    `scale` and `shift` are in the units of the network input (z-scores for grading, the
    [0, 1] HU window for detection). The identity comes first.
    """
    out = [TTA("identity", _same, _same)]
    for axis in range(3):
        flip = Flip(spatial_axis=axis)
        out.append(
            TTA(f"flip{axis}", lambda x, f=flip: _plain(f(x)), lambda y, f=flip: _plain(f(y)))
        )
    for factor in (scale, -scale):
        op = ScaleIntensity(minv=None, maxv=None, factor=factor)
        out.append(TTA(f"scale{1 + factor:.2f}", lambda x, o=op: _plain(o(x)), _same))
    shift_op = ShiftIntensity(offset=shift)
    out.append(TTA(f"shift{shift:+.2f}", lambda x, o=shift_op: _plain(o(x)), _same))
    return out
