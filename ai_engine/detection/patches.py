"""Cubic patches around candidate centers (classifier input) and the classifier's samples."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
import torch


def extract_patches(
    image: np.ndarray | torch.Tensor, centers_voxel: np.ndarray, size: int
) -> np.ndarray:
    """(N, C, size, size, size) float32 patches of a (X, Y, Z) (C = 1) or (C, X, Y, Z) image
    centred on the rounded centers; outside the image is 0 (air after the HU window, no blob)."""
    array = image.detach().cpu().numpy() if isinstance(image, torch.Tensor) else np.asarray(image)
    if array.ndim == 3:
        array = array[None]
    centers = np.rint(np.asarray(centers_voxel, dtype=np.float64).reshape(-1, 3)).astype(int)
    out = np.zeros((len(centers), array.shape[0], size, size, size), dtype=np.float32)
    half = size // 2
    shape = np.array(array.shape[1:])
    for n, c in enumerate(centers):
        lo = c - half
        hi = lo + size
        src_lo = np.maximum(lo, 0)
        src_hi = np.minimum(hi, shape)
        if np.any(src_hi <= src_lo):
            continue
        dst_lo = src_lo - lo
        dst_hi = dst_lo + (src_hi - src_lo)
        out[(n, slice(None), *(slice(a, b) for a, b in zip(dst_lo, dst_hi, strict=True)))] = array[
            (slice(None), *(slice(a, b) for a, b in zip(src_lo, src_hi, strict=True)))
        ]
    return out


def label_points(points_mm: np.ndarray, nodules_mm: np.ndarray, radii_mm: np.ndarray) -> np.ndarray:
    """1 where a point lies within the radius of some nodule, else 0 (LUNA16's hit rule)."""
    points_mm = np.asarray(points_mm, dtype=np.float64).reshape(-1, 3)
    if len(nodules_mm) == 0:
        return np.zeros(len(points_mm), dtype=np.float32)
    dist = np.linalg.norm(points_mm[:, None, :] - np.asarray(nodules_mm)[None], axis=-1)
    return (dist <= np.asarray(radii_mm)[None]).any(axis=1).astype(np.float32)


def random_tissue_points(
    image: np.ndarray,
    n: int,
    rng: np.random.Generator,
    low: float,
    high: float,
    exclude_mm: np.ndarray | None = None,
    exclude_radius_mm: np.ndarray | None = None,
    affine_vox_to_mm: np.ndarray | None = None,
) -> np.ndarray:
    """Up to `n` random voxels whose value lies in [low, high] (soft tissue after the window:
    vessels, chest wall, heart) and outside the given spheres; (n, 3) voxel indices."""
    array = image[0] if image.ndim == 4 else image
    idx = np.argwhere((array >= low) & (array <= high))
    if len(idx) == 0 or n <= 0:
        return np.zeros((0, 3))
    pick = idx[rng.choice(len(idx), size=min(n * 3, len(idx)), replace=False)].astype(np.float64)
    if exclude_mm is not None and len(exclude_mm) and affine_vox_to_mm is not None:
        mm = pick @ affine_vox_to_mm[:3, :3].T + affine_vox_to_mm[:3, 3]
        dist = np.linalg.norm(mm[:, None] - np.asarray(exclude_mm)[None], axis=-1)
        pick = pick[(dist > np.asarray(exclude_radius_mm)[None] + 3.0).all(axis=1)]
    return pick[:n]


def balance(
    items: Sequence[dict[str, Any]], rng: np.random.Generator, pos_fraction: float = 0.3
) -> list[dict[str, Any]]:
    """Repeat positive samples so they make about `pos_fraction` of the list."""
    pos = [x for x in items if float(np.asarray(x["label"]).reshape(-1)[0]) > 0.5]
    neg = [x for x in items if float(np.asarray(x["label"]).reshape(-1)[0]) <= 0.5]
    if not pos or not neg:
        return list(items)
    want = int(np.ceil(pos_fraction * len(neg) / (1.0 - pos_fraction)))
    reps = max(1, int(np.ceil(want / len(pos))))
    extra = [pos[i % len(pos)] for i in range(max(0, min(want, reps * len(pos)) - len(pos)))]
    out = list(items) + extra
    order = rng.permutation(len(out))
    return [out[i] for i in order]
