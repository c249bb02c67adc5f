"""What the image says around a candidate: the surroundings that tell a nodule from a vessel.

The rescoring (`ai_engine.detection.rescore`) started from what the two networks and the image
say at a candidate's centre. The detector's remaining errors lie around it: a vessel seen end
on or a bronchus end has a dense centre too, but dense tissue runs on past it; a nodule sits
alone in aerated lung, or is a round bulge on a vessel. Each number here is a classical CAD
measurement of that, read on the preprocessed grid in millimetres (so any resampling spacing
gives the same values):

- `blob_max_3mm`: the blob channel's highest response within 3 mm of the centre (the centre of
  mass of a probability region lies a voxel or two off the filter's peak on a small nodule);
- `shell_tissue`: the share of a sphere 2 mm outside the candidate's radius that is denser
  than -400 HU (0 for a nodule alone in the lung, two spots for a vessel, most of it at the
  chest wall);
- `blobness`: l3 / l1 of the Hessian at the centre at a scale matched to the radius (1 for a
  sphere, 0 for a tube or a plate, -1 where the centre is no bright extremum);
- `log_connected`: log of the volume of the dense structure connected to the centre within
  6 mm beyond the radius, over the candidate's sphere (a vessel or the wall fills far more);
- `elongation`: log of the largest over the smallest principal variance of that structure;
- `prob_mass`: log(1 + the U-Net's probability summed within 6 mm beyond the radius, in mm^3);
- `log_core`: log(0.5 + the radius in mm of the thickest solid ball (denser than -600 HU) whose
  centre lies within the candidate's radius + 1 mm: the distance transform's maximum there, on
  the patch upsampled 2x so that a 3 mm nodule's core is resolved);
- `core_to_neck`: log of (0.5 + that core) over (0.5 + the thickness of what the dense
  structure runs on into, 2-6 mm beyond the radius: the median of its distance transform's
  ridge, 0 where nothing runs on). A nodule on a vessel is much thicker than the vessel (a
  5 mm nodule on a 2 mm vessel: ~0.7), a vessel junction hardly thicker than its branches
  (~0.3), a vessel 0: the one number that tells the attached nodules the others count against;
- `fine_max_2mm`: the fine dot filter's highest response within 2 mm (the pipeline's
  `fine_blob_sigma_mm`, matched to 2-4 mm nodules; 0 without it).

Pure numpy/scipy on a patch per candidate (10-20 ms for a nodule-sized one on a CPU; the core
numbers' upsampled distance transform makes a 30 mm region ~0.15 s).
"""

from __future__ import annotations

import numpy as np
from scipy import ndimage

#: the numbers `context_features` returns, in order
CONTEXT_FEATURES = (
    "blob_max_3mm",
    "shell_tissue",
    "blobness",
    "log_connected",
    "elongation",
    "prob_mass",
    "log_core",
    "core_to_neck",
    "fine_max_2mm",
)
#: dense tissue: what a nodule, a vessel or the wall has and aerated lung has not
TISSUE_HU = -400.0
_SHELL_GAP_MM = 2.0
_REACH_MM = 6.0
_MIN_RADIUS_MM = 1.5
#: a solid core: denser than ground glass and than partial volume at a small nodule's rim
CORE_HU = -600.0
_CORE_UPSAMPLING = 2
_NECK_GAP_MM = 2.0


def _sphere_directions(n: int = 256) -> np.ndarray:
    """`n` unit vectors spread evenly over the sphere (Fibonacci lattice)."""
    i = np.arange(n) + 0.5
    polar = np.arccos(1.0 - 2.0 * i / n)
    azimuth = np.pi * (1.0 + 5**0.5) * i
    return np.stack(
        [np.cos(azimuth) * np.sin(polar), np.sin(azimuth) * np.sin(polar), np.cos(polar)], axis=1
    )


_DIRECTIONS = _sphere_directions()


def _blobness(patch: np.ndarray, at: np.ndarray, sigma_mm: float, spacing: np.ndarray) -> float:
    """l3 / l1 (eigenvalues l1 <= l2 <= l3) of the smoothed patch's Hessian at `at`, clipped
    to [-1, 1]; -1 where the centre is no bright extremum (l1 >= 0: a dark spot or flat), 0
    on a grid too coarse for the 5-voxel stencil (voxels of ~10 mm)."""
    smooth = ndimage.gaussian_filter(patch.astype(np.float64), sigma_mm / spacing, mode="nearest")
    lo = np.maximum(at - 2, 0)
    sub = smooth[tuple(slice(a, a + 5) for a in lo)]
    if min(sub.shape) < 5:
        return 0.0
    grads = np.gradient(sub, *spacing)
    hessian = np.empty((3, 3))
    for i in range(3):
        second = np.gradient(grads[i], *spacing)
        for j in range(3):
            hessian[i, j] = second[j][tuple(at - lo)]
    l1, _l2, l3 = np.linalg.eigvalsh((hessian + hessian.T) / 2.0)
    if l1 >= 0:
        return -1.0
    return float(np.clip(l3 / l1, -1.0, 1.0))


def _core_and_neck(
    img: np.ndarray,
    half: np.ndarray,
    offset_mm: np.ndarray,
    spacing: np.ndarray,
    level: float,
    radius: float,
    reach: float,
) -> tuple[float, float]:
    """(core, neck) in mm on a patch centred at voxel `half` (+ `offset_mm`): the distance
    transform of the dense voxels (> `level`), upsampled, at its maximum within `radius` + 1 mm
    of the centre, and the median of its ridge (local maxima) over the dense structure
    connected to the centre, `_NECK_GAP_MM`-`reach` mm from it (0 where there is none)."""
    up = _CORE_UPSAMPLING
    fine_axes = [h + np.arange(-up * h, up * h + 1) / up for h in half]
    coords = np.stack(np.meshgrid(*fine_axes, indexing="ij"))
    fine = ndimage.map_coordinates(img, coords.reshape(3, -1), order=1).reshape(coords.shape[1:])
    step = spacing / up
    rel = [(c - h) * s - o for c, h, s, o in zip(coords, half, spacing, offset_mm, strict=True)]
    dist = np.sqrt(sum(r * r for r in rel))
    dense = fine > level
    if not dense.any():
        return 0.0, 0.0
    edt = ndimage.distance_transform_edt(dense, sampling=step)
    inner = dist <= radius + 1.0
    core = float(edt[inner].max())
    labels, _ = ndimage.label(dense & (dist <= reach))
    at_core = np.unravel_index(int(np.argmax(np.where(inner, edt, -1.0))), edt.shape)
    own = int(labels[at_core])
    if own == 0:
        return core, 0.0
    beyond = (labels == own) & (dist > radius + _NECK_GAP_MM)
    if not beyond.any():
        return core, 0.0
    ridge = beyond & (edt >= ndimage.maximum_filter(edt, size=3) - 1e-6)
    return core, float(np.median(edt[ridge] if ridge.any() else edt[beyond]))


def context_features(
    image: np.ndarray,
    blob: np.ndarray | None,
    prob: np.ndarray,
    center_voxel: np.ndarray,
    diameter_mm: float,
    spacing_mm: np.ndarray,
    hu_range: tuple[float, float],
    fine: np.ndarray | None = None,
) -> dict[str, float]:
    """The `CONTEXT_FEATURES` of one candidate.

    Args:
        image: (X, Y, Z) windowed CT in [0, 1] (the preprocessed image's first channel).
        blob: (X, Y, Z) blob channel, or None (then `blob_max_3mm` is 0).
        prob: (X, Y, Z) U-Net foreground probability on the same grid.
        center_voxel: the candidate's centre (fractional voxel indices of that grid).
        diameter_mm: the candidate's equivalent diameter.
        spacing_mm: the grid's voxel size along each axis.
        hu_range: the HU window `image` was mapped from.
        fine: (X, Y, Z) fine dot-filter response, or None (then `fine_max_2mm` is 0).
    """
    # imported here: the detection CLI's parser (which the web process builds to check
    # training arguments) reaches this module, and extract_patches needs torch
    from ai_engine.detection.patches import extract_patches

    spacing = np.asarray(spacing_mm, dtype=np.float64).reshape(3)
    radius = max(float(diameter_mm) / 2.0, _MIN_RADIUS_MM)
    reach = radius + _REACH_MM
    half = np.ceil((reach + 2.0) / spacing).astype(int)
    center = np.asarray(center_voxel, dtype=np.float64).reshape(1, 3)

    def patch(array: np.ndarray) -> np.ndarray:  # zero (air, no response) beyond the scan
        return extract_patches(array, center, 2 * half + 1)[0, 0]

    img = patch(image)
    grid = np.meshgrid(
        *(np.arange(-h, h + 1) * s for h, s in zip(half, spacing, strict=True)), indexing="ij"
    )
    dist = np.sqrt(sum(g * g for g in grid))
    lo_hu, hi_hu = hu_range
    level = (TISSUE_HU - lo_hu) / (hi_hu - lo_hu)

    out: dict[str, float] = {}
    near = dist <= 3.0
    out["blob_max_3mm"] = float(patch(blob)[near].max()) if blob is not None else 0.0

    shell = half + _DIRECTIONS * (radius + _SHELL_GAP_MM) / spacing
    on_shell = ndimage.map_coordinates(img, shell.T, order=1, mode="constant")
    out["shell_tissue"] = float((on_shell > level).mean())

    sigma = float(np.clip(radius / 1.7, 1.0, 4.0))
    out["blobness"] = _blobness(img, half, sigma, spacing)

    dense = (img > level) & (dist <= reach)
    labels, _ = ndimage.label(dense)
    own = int(labels[tuple(half)])
    if own == 0:  # a faint centre: the largest dense part within the radius
        inside = labels[(dist <= radius) & (labels > 0)]
        own = int(np.bincount(inside).argmax()) if inside.size else 0
    if own:
        part = labels == own
        voxel_mm3 = float(np.prod(spacing))
        sphere_mm3 = 4.0 / 3.0 * np.pi * radius**3
        out["log_connected"] = float(np.log(part.sum() * voxel_mm3 / sphere_mm3))
        points = np.argwhere(part) * spacing
        if len(points) > 3:
            variances = np.linalg.eigvalsh(np.cov(points.T)) + 0.1
            out["elongation"] = float(np.log(variances[2] / variances[0]))
        else:
            out["elongation"] = 0.0
    else:  # nothing dense: what a dark candidate (air, ground glass) gives
        out["log_connected"], out["elongation"] = -3.0, 0.0

    mass = patch(prob)[dist <= reach].sum() * float(np.prod(spacing))
    out["prob_mass"] = float(np.log1p(mass))

    offset = (center[0] - np.rint(center[0])) * spacing
    core_level = (CORE_HU - lo_hu) / (hi_hu - lo_hu)
    core, neck = _core_and_neck(img, half, offset, spacing, core_level, radius, reach)
    out["log_core"] = float(np.log(0.5 + core))
    out["core_to_neck"] = float(np.log((0.5 + core) / (0.5 + neck)))
    out["fine_max_2mm"] = float(patch(fine)[dist <= 2.0].max()) if fine is not None else 0.0
    return out
