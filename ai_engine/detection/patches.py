"""Cubic patches around candidate centers (classifier input) and the classifier's samples."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
import torch


def extract_patches(
    image: np.ndarray | torch.Tensor, centers_voxel: np.ndarray, size: int | Sequence[int]
) -> np.ndarray:
    """(N, C, *size) float32 patches of a (X, Y, Z) (C = 1) or (C, X, Y, Z) image centred on
    the rounded centers (voxel size // 2 of the patch); outside the image is 0 (air after the
    HU window, no blob). `size`: one edge for a cube, or one per axis."""
    array = image.detach().cpu().numpy() if isinstance(image, torch.Tensor) else np.asarray(image)
    if array.ndim == 3:
        array = array[None]
    edges = np.broadcast_to(np.asarray(size, dtype=int), (3,))
    centers = np.rint(np.asarray(centers_voxel, dtype=np.float64).reshape(-1, 3)).astype(int)
    out = np.zeros((len(centers), array.shape[0], *edges.tolist()), dtype=np.float32)
    half = edges // 2
    shape = np.array(array.shape[1:])
    for n, c in enumerate(centers):
        lo = c - half
        hi = lo + edges
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


def nodule_arrays(nodules: Sequence[dict]) -> tuple[np.ndarray, np.ndarray]:
    """Centres (N, 3, LPS mm) and radii (N,) of datalist nodules."""
    centers = np.array([n["center_lps_mm"] for n in nodules], dtype=np.float64).reshape(-1, 3)
    return centers, np.array([n["diameter_mm"] / 2.0 for n in nodules], dtype=np.float64)


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
    items: Sequence[dict[str, Any]],
    rng: np.random.Generator,
    pos_fraction: float = 0.3,
    hard: Sequence[bool] | None = None,
    hard_fraction: float = 0.0,
) -> list[dict[str, Any]]:
    """Repeat the hard negatives (`hard[i]` true for a negative `items[i]`) so they make about
    `hard_fraction` of the negatives (never fewer than once each), then the positives so they
    make about `pos_fraction` of the list."""
    is_pos = [float(np.asarray(x["label"]).reshape(-1)[0]) > 0.5 for x in items]
    pos = [x for x, p in zip(items, is_pos, strict=True) if p]
    neg = [x for x, p in zip(items, is_pos, strict=True) if not p]
    if not pos or not neg:
        return list(items)
    out = list(items)
    flags = list(hard) if hard is not None else [False] * len(items)
    tough = [x for x, p, h in zip(items, is_pos, flags, strict=True) if h and not p]
    if tough and 0.0 < hard_fraction < 1.0:
        # t + k = f (n + k): k more hard negatives make them a share f of n + k negatives
        more = int(np.ceil((hard_fraction * len(neg) - len(tough)) / (1.0 - hard_fraction)))
        out += [tough[i % len(tough)] for i in range(max(0, more))]
        neg_count = len(neg) + max(0, more)
    else:
        neg_count = len(neg)
    want = int(np.ceil(pos_fraction * neg_count / (1.0 - pos_fraction)))
    reps = max(1, int(np.ceil(want / len(pos))))
    out += [pos[i % len(pos)] for i in range(max(0, min(want, reps * len(pos)) - len(pos)))]
    order = rng.permutation(len(out))
    return [out[i] for i in order]
