"""Model-free descriptors of a study, for ranking before a model knows every grade.

A grading model trained on a handful of studies has penultimate features shaped by those few
studies; ranking by distance in them (the cold start's k-center order) finds a grade the
labels lack only a little better than chance on the active-learning benchmark's development
seeds (docs/active_learning.md). The descriptor here needs no training: the 50th, 90th, 95th
and 99th percentiles of each channel of the model's own input (`grading.data.preprocess`:
resampled to the model grid and z-scored per channel), i.e. the shape of each sequence's
intensity histogram. Its upper percentiles follow how much of the brain is bright on each
sequence: contrast enhancement on T1c and oedema on FLAIR and T2, which is what separates the
tumour grades radiologically. These are first-order intensity features in the radiomics sense
(the "Percentile" features of the IBSI first-order family), computed on the normalised image.

Distances are taken after `standardized` puts each feature on the scale of the studies being
compared (pool and labelled set together), so that no sequence dominates by its spread.
"""

from __future__ import annotations

import numpy as np

__all__ = ["INTENSITY_PERCENTILES", "intensity_descriptor", "standardized"]

#: percentiles of each channel that make up `intensity_descriptor`
INTENSITY_PERCENTILES = (50.0, 90.0, 95.0, 99.0)


def intensity_descriptor(image: np.ndarray) -> np.ndarray:
    """(C * 4,) float64: the `INTENSITY_PERCENTILES` of each channel of a (C, X, Y, Z) model
    input, channel by channel. A channel that is not finite everywhere is refused."""
    arr = np.asarray(image, dtype=np.float64)
    if arr.ndim != 4 or arr.shape[0] == 0 or arr[0].size == 0:
        raise ValueError(f"expected a (C, X, Y, Z) image, got shape {arr.shape}")
    if not np.all(np.isfinite(arr)):
        raise ValueError("the image holds non-finite values")
    return np.concatenate([np.percentile(ch, INTENSITY_PERCENTILES) for ch in arr])


def standardized(rows: np.ndarray) -> np.ndarray:
    """Each column of (n, d) `rows` z-scored over the rows; a constant column becomes 0."""
    rows = np.asarray(rows, dtype=np.float64)
    if rows.ndim != 2:
        raise ValueError(f"expected (n, d) rows, got shape {rows.shape}")
    sd = rows.std(axis=0)
    return (rows - rows.mean(axis=0)) / np.where(sd > 0, sd, 1.0)
