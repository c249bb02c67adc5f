"""Nodule copy-paste: extra training scans in which copies of the training set's own small
nodules are moved next to a vessel or the chest wall.

The detector's remaining misses are small nodules touching a vessel (juxtavascular): a sphere
on a tube looks like a branching point, and a training set of a few dozen scans holds only a
handful of such nodules (10 of the bench's 36 training nodules under 5 mm touch anything).
Lesion copy-paste makes more of them from what the data already has: a nodule's voxels (a
sphere of its radius, read from its own scan at its own voxel size) are resampled into another
(or the same) training scan at a place in the lung whose nearest dense voxel lies within the
nodule's radius, so that the sphere touches a vessel or the pleura or takes in part of it
(as a nodule a vessel runs into), and blended in over a 1 mm edge. Each copy is a new scan item (a `Volume` with the HU values) whose
nodule list has the pasted nodules added (marked `"pasted": True`); the original items are left
untouched. Everything is drawn from one seed, so a resumed or repeated run pastes the same.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
from scipy import ndimage

from ai_engine.errors import InputError
from ai_engine.io.multimodal import resample_to_grid
from ai_engine.io.volume import Volume

#: HU above which a voxel is a vessel, the chest wall or the mediastinum ("dense")
DENSE_HU = -400.0
#: HU below which a voxel inside the body is aerated lung
LUNG_HU = -600.0
#: mm of lung (or dense tissue) that must surround a pasted nodule on every side
CLEARANCE_MM = 3.0


def lung_air(hu: np.ndarray) -> np.ndarray:
    """Aerated voxels inside the body: below `LUNG_HU` and enclosed, in their axial slice
    (the last axis), by tissue above -500 HU (the air around the patient is not)."""
    body = np.zeros(hu.shape, dtype=bool)
    dense = hu > -500.0
    for k in range(hu.shape[2]):
        body[:, :, k] = ndimage.binary_fill_holes(dense[:, :, k])
    return body & (hu < LUNG_HU)


def paste_sites(
    volume: Volume,
    radius_mm: float,
    attached: bool,
    lung: np.ndarray | None = None,
    dense_distance_mm: np.ndarray | None = None,
) -> np.ndarray:
    """Voxel indices (N, 3) where a nodule of `radius_mm` can be centred.

    A site's box of half-width radius + `CLEARANCE_MM` is at least 60 % aerated lung
    (`lung_air`). Attached: its distance to the nearest dense voxel is at most the radius (plus
    half the largest voxel edge), so the sphere touches a vessel or the wall or takes in part of
    it (a vessel running into the nodule, the juxtavascular nodules a U-Net misses most);
    free: the site is aerated lung at least the radius + 1.5 mm from every dense voxel.

    Args:
        volume: scalar HU volume.
        radius_mm: the nodule's radius.
        attached: touching a dense structure (True) or free-standing.
        lung, dense_distance_mm: `lung_air(volume.array)` and the distance (mm) of each voxel to
            the nearest one above `DENSE_HU`, when the caller has them already.
    """
    hu = volume.array
    spacing = volume.spacing
    if lung is None:
        lung = lung_air(hu)
    if dense_distance_mm is None:
        dense_distance_mm = ndimage.distance_transform_edt(hu <= DENSE_HU, sampling=spacing)
    half = np.maximum(np.ceil((radius_mm + CLEARANCE_MM) / spacing).astype(int), 1)
    share = ndimage.uniform_filter(lung.astype(np.float32), size=tuple(2 * half + 1))
    ok = share >= 0.6
    if attached:
        ok &= dense_distance_mm <= radius_mm + 0.5 * float(spacing.max())
    else:
        ok &= lung & (dense_distance_mm >= radius_mm + 1.5)
    return np.argwhere(ok)


def paste_nodule(
    target: np.ndarray,
    target_affine: np.ndarray,
    donor: Volume,
    donor_center_lps: np.ndarray,
    radius_mm: float,
    center_lps: np.ndarray,
) -> None:
    """Blend the sphere of `radius_mm` around `donor_center_lps` in `donor` into `target` (HU,
    modified in place; its LPS affine `target_affine`) around `center_lps`: weight 1 inside
    radius - 0.5 mm, 0 outside radius + 0.5 mm, linear between (the donor resampled in
    patient space by `resample_to_grid`, trilinear, so its voxel size does not matter)."""
    spacing = np.linalg.norm(target_affine[:3, :3], axis=0)
    inverse = np.linalg.inv(target_affine)
    center_vox = inverse[:3, :3] @ center_lps + inverse[:3, 3]
    reach = (radius_mm + 1.0) / spacing
    lo = np.maximum(np.floor(center_vox - reach).astype(int), 0)
    hi = np.minimum(np.ceil(center_vox + reach).astype(int) + 1, target.shape)
    if np.any(hi <= lo):
        return
    grid = np.stack(
        np.meshgrid(*[np.arange(a, b) for a, b in zip(lo, hi, strict=True)], indexing="ij"),
        axis=-1,
    ).reshape(-1, 3)
    offset_mm = grid @ target_affine[:3, :3].T + target_affine[:3, 3] - center_lps
    weight = np.clip(radius_mm + 0.5 - np.linalg.norm(offset_mm, axis=1), 0.0, 1.0)
    # the donor sampled on the target's box, moved so that its nodule centre lands on ours
    box_affine = target_affine.copy()
    box_affine[:3, 3] = target_affine[:3, :3] @ lo + target_affine[:3, 3]
    box_affine[:3, 3] += donor_center_lps - center_lps
    shape = tuple(int(v) for v in hi - lo)
    values = resample_to_grid(donor, box_affine, shape, order=1).reshape(-1)
    box = tuple(slice(int(a), int(b)) for a, b in zip(lo, hi, strict=True))
    region = target[box]
    blended = weight * values + (1.0 - weight) * region.reshape(-1)
    target[box] = blended.reshape(region.shape).astype(target.dtype)


def pasted_copies(
    items: Sequence[dict[str, Any]],
    copies: int,
    per_scan: int = 4,
    max_diameter_mm: float = 8.0,
    attached_share: float = 0.75,
    seed: int = 0,
) -> list[dict[str, Any]]:
    """`copies` new items per training item, each with up to `per_scan` nodules pasted.

    Donors are the items' nodules at most `max_diameter_mm` across; a share `attached_share`
    of the pasted ones touch a dense structure (`paste_sites`), the others stand free. A pasted
    nodule keeps 2 mm from every other nodule's sphere. A scan with no room for a nodule gets
    fewer.

    Args:
        items: datalist items `{"image": path or Volume, "nodules": [...]}`.
        copies: new items per item (0: none).
        per_scan: nodules pasted into each copy.
        max_diameter_mm: largest donor.
        attached_share: share of pasted nodules placed against a vessel or the wall.
        seed: the draw of donors and sites.

    Returns:
        The new items, `{"image": Volume, "nodules": original + pasted, "pasted_from": the
        item's image}` (each pasted nodule has `"pasted": True` and its donor's diameter).

    Raises:
        InputError: a bad count or share, or no nodule small enough to paste.
    """
    from ai_engine.detection.transforms import load_ct

    if copies < 0 or per_scan < 1:
        raise InputError(f"paste copies must be >= 0 and per scan >= 1, got {copies}, {per_scan}")
    if not 0.0 <= attached_share <= 1.0:
        raise InputError(f"paste attached share must be in [0, 1], got {attached_share}")
    if copies == 0 or not items:
        return []

    def volume_of(item: dict[str, Any]) -> Volume:
        image = item["image"]
        return image if isinstance(image, Volume) else load_ct(image)

    donors = [
        (i, nodule)
        for i, item in enumerate(items)
        for nodule in item.get("nodules", [])
        if float(nodule["diameter_mm"]) <= max_diameter_mm
    ]
    if not donors:
        raise InputError(f"no training nodule is at most {max_diameter_mm} mm across to paste")
    rng = np.random.default_rng([seed, 7919])
    cache: dict[int, Volume] = {}

    def donor_volume(i: int) -> Volume:
        if i not in cache:
            if len(cache) >= 8:
                cache.pop(next(iter(cache)))
            cache[i] = volume_of(items[i])
        return cache[i]

    out = []
    for item in items:
        source = volume_of(item)
        lung = lung_air(source.array)
        dense_mm = ndimage.distance_transform_edt(source.array <= DENSE_HU, sampling=source.spacing)
        for _copy in range(copies):
            hu = source.array.copy()
            nodules = [dict(n) for n in item.get("nodules", [])]
            for _ in range(per_scan):
                d_index, donor = donors[int(rng.integers(len(donors)))]
                radius = float(donor["diameter_mm"]) / 2.0
                attached = bool(rng.random() < attached_share)
                sites = paste_sites(source, radius, attached, lung, dense_mm)
                centers = source.voxel_to_lps(sites) if len(sites) else np.zeros((0, 3))
                for n in nodules:  # 2 mm from every other sphere
                    far = np.linalg.norm(centers - np.asarray(n["center_lps_mm"]), axis=1)
                    keep = far >= radius + float(n["diameter_mm"]) / 2.0 + 2.0
                    centers = centers[keep]
                if len(centers) == 0:
                    continue
                center = centers[int(rng.integers(len(centers)))]
                paste_nodule(
                    hu,
                    source.affine,
                    donor_volume(d_index),
                    np.asarray(donor["center_lps_mm"], dtype=np.float64),
                    radius,
                    center,
                )
                nodules.append(
                    {
                        "center_lps_mm": [round(float(v), 3) for v in center],
                        "diameter_mm": float(donor["diameter_mm"]),
                        "pasted": True,
                        "attached": attached,
                    }
                )
            out.append(
                {
                    "image": Volume(hu, source.affine.copy(), dict(source.meta)),
                    "nodules": nodules,
                    "pasted_from": str(item["image"])
                    if not isinstance(item["image"], Volume)
                    else "volume",
                }
            )
    return out
