"""Does a study show anything worth labelling? (body / brain tissue present)

Used by the random baseline (studies without foreground go last) and reported by the
uncertainty strategy. A blank, all-air or constant study is a failed acquisition, not a
labelling candidate.
"""

from __future__ import annotations

import numpy as np

__all__ = ["MIN_FOREGROUND_FRACTION", "body_fraction", "tissue_fraction"]

#: A study has foreground when at least this fraction of its voxels is tissue.
MIN_FOREGROUND_FRACTION = 0.01


def tissue_fraction(array: np.ndarray, relative_threshold: float = 0.1) -> float:
    """Fraction of voxels that hold tissue in an MRI stack (C, X, Y, Z) or volume (X, Y, Z).

    A voxel is tissue in a channel when it is above `relative_threshold` times the channel's
    99.5th percentile (MRI background is near zero; this ignores noise floors and a few hot
    voxels). A constant or all-zero channel holds no tissue. The largest fraction over the
    channels is returned (a missing, zero-filled sequence does not hide the others).
    """
    arr = np.asarray(array, dtype=np.float32)
    channels = arr if arr.ndim == 4 else arr[None]
    best = 0.0
    for channel in channels:
        finite = channel[np.isfinite(channel)]
        if finite.size == 0 or float(finite.max()) == float(finite.min()):
            continue
        high = float(np.percentile(finite, 99.5))
        if high <= 0:
            continue
        best = max(best, float(np.mean(finite > relative_threshold * high)))
    return best


def body_fraction(ct_hu: np.ndarray, threshold_hu: float = -500.0) -> float:
    """Fraction of CT voxels denser than `threshold_hu` (body, not air)."""
    arr = np.asarray(ct_hu)
    return float(np.mean(arr > threshold_hu)) if arr.size else 0.0
