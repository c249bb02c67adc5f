"""Synthetic but anatomically plausible phantoms with ground truth, for tests and demos.

Chest CT (`make_chest_ct`): a miniature chest filling the field of view. The default matrix
is 160 x 160 x 64 (pass `shape` for others), with in-plane spacing 0.6-0.9 mm and slices
1-2.5 mm (random per case), so the field of view is about 100-145 mm wide: anatomy is scaled
to it, while nodules (3-30 mm) and vessels (1-6 mm) keep real sizes. Nodule diameters are
therefore capped so that each sphere fits inside a lung (about half the lung's width).
Contents: air outside (-1000 HU), body with a fat layer (~-100 HU) around soft tissue (~+35),
lungs (~-850), trachea and main bronchi (air, soft-tissue wall), branching vessel trees
(+40 HU, diameter 6 mm at the hilum down to 1 mm: their cross-sections look like small
nodules in single slices, the realistic false positives), ribs (~+700), spine and sternum,
Gaussian noise (sigma 15-25 HU), and 0-6 nodules: solid (~+30 HU) or part-solid (ground-glass
halo ~-500 HU around a solid core), placed wholly inside a lung, centers in LPS mm.

Brain MRI (`make_brain_mri`): four co-registered sequences T1, T1c, T2, FLAIR (default
96 x 96 x 64, ~2 mm in plane, 2.2-2.8 mm slices) of a head (scalp, skull, CSF, grey and white
matter, ventricles) with a tumor whose grade shows in its appearance:
grade 1 small, homogeneous, non-enhancing, little edema; grade 2 larger, patchy enhancement,
moderate edema; grade 3 large, enhancing rim around a necrotic core, extensive FLAIR edema.
Sizes, shape irregularity, contrasts, bias field and noise vary and overlap between grades.
Mask labels (BraTS-like): 1 necrotic / non-enhancing tumor, 2 edema, 3 enhancing tumor;
`mask > 0` is the whole lesion, `mask in (1, 3)` the tumor core.

Everything is deterministic for a seed: same seed, same pixels and UIDs.
"""

from __future__ import annotations

import datetime as dt
import math
from pathlib import Path
from typing import Any

import numpy as np
from scipy import ndimage

from ai_engine.io.dicom_write import deterministic_uid, volume_to_datasets, write_datasets
from ai_engine.io.nifti import save_nifti
from ai_engine.io.volume import Volume

CHEST_CT_SHAPE = (160, 160, 64)
BRAIN_MRI_SHAPE = (96, 96, 64)
MR_CHANNELS = ("T1", "T1c", "T2", "FLAIR")
UID_ROOT_TAG = "ai_engine-phantom"

_GIVEN = ["JANE", "JOHN", "MARIA", "AHMED", "YUKI", "OLGA", "PEDRO", "AMARA", "LI", "SVEN"]
_FAMILY = [
    "DOE",
    "SMITH",
    "GARCIA",
    "NGUYEN",
    "MUELLER",
    "ROSSI",
    "KOWALSKI",
    "OKAFOR",
    "TANAKA",
    "SILVA",
]
_CITIES = ["Springfield", "Riverton", "Lakeside", "Hillcrest", "Fairview"]


# ---------------------------------------------------------------------------------------
# shared helpers


def _grid_mm(
    shape: tuple[int, int, int], affine: np.ndarray
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Broadcastable LPS coordinates (mm) of voxel centres for an axis-aligned affine."""
    x = affine[0, 3] + affine[0, 0] * np.arange(shape[0], dtype=np.float32)
    y = affine[1, 3] + affine[1, 1] * np.arange(shape[1], dtype=np.float32)
    z = affine[2, 3] + affine[2, 2] * np.arange(shape[2], dtype=np.float32)
    return x[:, None, None], y[None, :, None], z[None, None, :]


def _check_shape(
    shape: tuple[int, int, int], minimum: tuple[int, int, int]
) -> tuple[int, int, int]:
    shape = tuple(int(n) for n in shape)  # type: ignore[assignment]
    if len(shape) != 3 or any(n < m for n, m in zip(shape, minimum, strict=True)):
        raise ValueError(f"shape must be three sizes of at least {minimum}, got {shape}")
    if math.prod(shape) > 512 * 512 * 512:
        raise ValueError(f"shape {shape} is too large for a phantom (at most 512^3 voxels)")
    return shape


def _bbox(
    center_vox: np.ndarray, radius_vox: np.ndarray, shape: tuple[int, ...]
) -> tuple[slice, ...] | None:
    lo = np.maximum(np.floor(center_vox - radius_vox).astype(int), 0)
    hi = np.minimum(np.ceil(center_vox + radius_vox).astype(int) + 1, shape)
    if np.any(hi <= lo):
        return None
    return tuple(slice(int(a), int(b)) for a, b in zip(lo, hi, strict=True))


def _blend_tube(
    image: np.ndarray,
    affine: np.ndarray,
    p0: np.ndarray,
    p1: np.ndarray,
    r0: float,
    r1: float,
    value: float,
    where: np.ndarray | None = None,
) -> None:
    """Paint a tapered tube from p0 to p1 (LPS mm, radii in mm) with a one-voxel soft edge."""
    spacing = np.abs(np.diag(affine)[:3])
    lo_mm = np.minimum(p0, p1) - max(r0, r1) - spacing
    hi_mm = np.maximum(p0, p1) + max(r0, r1) + spacing
    origin = affine[:3, 3]
    lo = np.maximum(np.floor((lo_mm - origin) / np.diag(affine)[:3]).astype(int), 0)
    hi = np.minimum(np.ceil((hi_mm - origin) / np.diag(affine)[:3]).astype(int) + 1, image.shape)
    if np.any(hi <= lo):
        return
    box = tuple(slice(int(a), int(b)) for a, b in zip(lo, hi, strict=True))
    xs = origin[0] + spacing[0] * np.arange(lo[0], hi[0], dtype=np.float32)
    ys = origin[1] + spacing[1] * np.arange(lo[1], hi[1], dtype=np.float32)
    zs = origin[2] + spacing[2] * np.arange(lo[2], hi[2], dtype=np.float32)
    axis = (p1 - p0).astype(np.float32)
    length2 = float(axis @ axis) or 1e-6
    dx = xs[:, None, None] - p0[0]
    dy = ys[None, :, None] - p0[1]
    dz = zs[None, None, :] - p0[2]
    t = np.clip((dx * axis[0] + dy * axis[1] + dz * axis[2]) / length2, 0.0, 1.0)
    dist = np.sqrt((dx - t * axis[0]) ** 2 + (dy - t * axis[1]) ** 2 + (dz - t * axis[2]) ** 2)
    radius = r0 + (r1 - r0) * t
    fraction = np.clip(0.5 - (dist - radius) / float(spacing.min()), 0.0, 1.0)
    if where is not None:
        fraction = fraction * where[box]
    region = image[box]
    region += fraction * (value - region)


def _identity_header(rng: np.random.Generator, seed: int, kind: str) -> dict[str, Any]:
    """Filled identifying attributes (so de-identification has something to remove)."""
    sex = "F" if rng.random() < 0.5 else "M"
    birth = dt.date(1940, 1, 1) + dt.timedelta(days=int(rng.integers(0, 365 * 60)))
    study = dt.date(2024, 1, 1) + dt.timedelta(days=int(rng.integers(0, 700)))
    family, given = _FAMILY[int(rng.integers(len(_FAMILY)))], _GIVEN[int(rng.integers(len(_GIVEN)))]
    city = _CITIES[int(rng.integers(len(_CITIES)))]
    age = (study - birth).days // 365
    return {
        "PatientName": f"{family}^{given}^^^",
        "PatientID": f"PH{seed:08d}",
        "PatientBirthDate": birth.strftime("%Y%m%d"),
        "PatientSex": sex,
        "PatientAge": f"{age:03d}Y",
        "PatientAddress": f"{int(rng.integers(1, 400))} Main Street, {city}",
        "OtherPatientIDs": f"MRN{int(rng.integers(10**6, 10**7))}",
        "InstitutionName": f"{city} General Hospital",
        "InstitutionAddress": f"1 Hospital Road, {city}",
        "ReferringPhysicianName": f"{_FAMILY[int(rng.integers(len(_FAMILY)))]}^REFERRER",
        "OperatorsName": f"{_FAMILY[int(rng.integers(len(_FAMILY)))]}^TECH",
        "StationName": f"{kind.upper()[:8]}-{int(rng.integers(1, 9))}",
        "AccessionNumber": f"ACC{seed:09d}",
        "StudyID": f"{seed % 100000}",
        "StudyDate": study.strftime("%Y%m%d"),
        "SeriesDate": study.strftime("%Y%m%d"),
        "ContentDate": study.strftime("%Y%m%d"),
        "StudyTime": f"{int(rng.integers(7, 19)):02d}{int(rng.integers(0, 60)):02d}00",
        "Manufacturer": "ai_engine phantom",
        "ManufacturerModelName": kind,
        "DeviceSerialNumber": f"SN{seed % 9973:05d}",
        "PatientIdentityRemoved": "NO",
    }


# ---------------------------------------------------------------------------------------
# chest CT


def make_chest_ct(
    seed: int, shape: tuple[int, int, int] = CHEST_CT_SHAPE, n_nodules: int | None = None
) -> tuple[Volume, list[dict[str, Any]]]:
    """Generate one chest CT phantom in memory.

    Args:
        seed: all randomness comes from it.
        shape: (X, Y, Z) matrix, at least (64, 64, 16).
        n_nodules: force a nodule count (0-6); random when None.

    Returns:
        (Volume of HU values, integer-valued as stored in DICOM, with meta), nodules as
        [{"center_lps_mm": [x, y, z], "diameter_mm": d, "kind": "solid"|"part-solid"}, ...].
    """
    shape = _check_shape(shape, (64, 64, 16))
    if n_nodules is not None and not 0 <= n_nodules <= 6:
        raise ValueError(f"n_nodules must be 0-6, got {n_nodules}")
    rng = np.random.default_rng([seed, 1])
    s_xy = float(rng.uniform(0.6, 0.9))
    s_z = float(rng.uniform(1.0, 2.5))
    fov = np.array([shape[0] * s_xy, shape[1] * s_xy, shape[2] * s_z])
    z_bottom = float(-rng.uniform(100.0, 250.0))
    affine = np.diag([s_xy, s_xy, s_z, 1.0])
    affine[:3, 3] = [-(shape[0] - 1) / 2 * s_xy, -(shape[1] - 1) / 2 * s_xy, z_bottom]
    x, y, z = _grid_mm(shape, affine)
    half_x, half_y = fov[0] / 2, fov[1] / 2
    u = x / half_x  # -1..1, + is patient left
    v = y / half_y  # -1..1, + is posterior
    w = (z - z_bottom) / fov[2]  # 0 bottom .. 1 top

    hu = np.full(shape, -1000.0, dtype=np.float32)
    body_a, body_b = rng.uniform(0.86, 0.95), rng.uniform(0.66, 0.76)
    r_body = np.sqrt((u / body_a) ** 2 + ((v - 0.03) / body_b) ** 2) * np.ones_like(w)
    body = r_body <= 1.0
    hu[body] = -100.0 + rng.normal(0, 5)  # fat
    fat_layer = rng.uniform(0.07, 0.12)
    hu[r_body <= 1.0 - fat_layer] = 35.0 + rng.normal(0, 5)  # muscle / soft tissue

    # ribs: tilted bands inside the body wall, skipping the spine and sternum
    angle = np.arctan2(v, u)
    rib_pitch = rng.uniform(14.0, 20.0)
    rib_half = rng.uniform(2.0, 3.2)
    rib_phase = rng.uniform(0, rib_pitch)
    rib_z = (z - z_bottom - rib_phase + 6.0 * (v + 1.0)) % rib_pitch
    rib_ring = (r_body >= 1.0 - fat_layer - 0.085) & (r_body <= 1.0 - fat_layer - 0.02)
    not_midline = np.abs(u) > 0.14
    ribs = rib_ring & (np.abs(rib_z - rib_pitch / 2) <= rib_half) & not_midline
    hu[ribs] = 700.0
    del rib_z, angle
    # spine (vertebral body and canal) and sternum
    spine_v = body_b * 0.62
    vert = (u**2 + (v - spine_v) ** 2) <= 0.11**2
    hu[np.broadcast_to(vert, shape)] = 450.0
    hu[np.broadcast_to((u**2 + (v - spine_v) ** 2 > 0.085**2) & vert, shape)] = 750.0
    canal = (u**2 + (v - spine_v - 0.16) ** 2) <= 0.045**2
    hu[np.broadcast_to(canal, shape)] = 15.0
    sternum = (np.abs(u) <= 0.07) & (np.abs(v + body_b * 0.88) <= 0.035)
    hu[np.broadcast_to(sternum, shape) & body] = 500.0

    # lungs: two ellipses, narrowing to the apex, domed diaphragm below, heart notch on the left
    lung = np.zeros(shape, dtype=bool)
    heart_u, heart_v = rng.uniform(0.05, 0.15), rng.uniform(-0.25, -0.1)
    heart = ((u - heart_u) / 0.33) ** 2 + ((v - heart_v) / 0.3) ** 2 + (
        (w - 0.15) / 0.45
    ) ** 2 <= 1.0
    for side in (-1.0, 1.0):
        cu = side * rng.uniform(0.38, 0.45)
        au, av = rng.uniform(0.26, 0.32), rng.uniform(0.45, 0.52)
        taper = np.sqrt(np.clip((1.05 - w) / 0.35, 0.0, 1.0))
        inside = ((u - cu) / au) ** 2 + ((v - 0.05) / av) ** 2 <= taper**2
        dome = 0.06 + 0.2 * np.clip(1.0 - ((u - cu) / au) ** 2 - ((v - 0.05) / av) ** 2, 0.0, 1.0)
        lung |= inside & (w >= dome)
    lung &= ~heart & body
    texture = _smooth_texture(rng, x, y, z, 12.0)
    hu[lung] = (-850.0 + rng.normal(0, 15) + texture[lung]).astype(np.float32)
    del texture
    hu[heart & body] = 40.0

    # airways: trachea from the top down to the carina, then a main bronchus into each lung
    trachea_r = rng.uniform(4.0, 6.0)
    carina = np.array(
        [rng.normal(0, 2.0), -0.05 * half_y, z_bottom + rng.uniform(0.55, 0.65) * fov[2]]
    )
    top = np.array([carina[0], carina[1] - 0.05 * half_y, z_bottom + fov[2] + 5.0])
    _blend_tube(hu, affine, top, carina, trachea_r + 1.5, trachea_r + 1.5, 40.0)
    _blend_tube(hu, affine, top, carina, trachea_r, trachea_r, -1000.0)
    for side in (-1.0, 1.0):
        end = carina + np.array([side * 0.32 * half_x, 0.1 * half_y, -0.12 * fov[2]])
        _blend_tube(hu, affine, carina, end, trachea_r * 0.75 + 1.2, trachea_r * 0.55 + 1.0, 40.0)
        _blend_tube(hu, affine, carina, end, trachea_r * 0.75, trachea_r * 0.55, -1000.0)

    # vessel trees inside the lungs (the false positives a detector must learn to reject)
    lung_f = lung.astype(np.float32)
    for side in (-1.0, 1.0):
        for _ in range(int(rng.integers(5, 8))):
            hilum = np.array(
                [
                    side * rng.uniform(0.2, 0.28) * half_x,
                    rng.uniform(-0.1, 0.2) * half_y,
                    z_bottom + rng.uniform(0.25, 0.75) * fov[2],
                ]
            )
            direction = np.array([side * 1.0, rng.normal(0, 0.6), rng.normal(0, 0.8)])
            _vessel_tree(hu, affine, rng, hilum, direction, float(rng.uniform(2.4, 3.0)), 0, lung_f)

    # nodules
    count = int(rng.integers(0, 7)) if n_nodules is None else n_nodules
    nodules = _place_nodules(hu, affine, lung, rng, count)

    hu += rng.normal(0.0, rng.uniform(15.0, 25.0), size=shape).astype(np.float32)
    np.clip(np.rint(hu, out=hu), -1024.0, 3071.0, out=hu)
    meta = {
        "source": "phantom",
        "modality": "CT",
        "units": "HU",
        "phantom": "chest-ct",
        "seed": int(seed),
        "spacing_irregular": False,
        "body_part_examined": "CHEST",
    }
    return Volume(hu, affine, meta), nodules


def _smooth_texture(
    rng: np.random.Generator, x: np.ndarray, y: np.ndarray, z: np.ndarray, amplitude: float
) -> np.ndarray:
    """Low-frequency variation (wavelengths 20-80 mm) as a sum of separable cosines (fast)."""
    out = np.zeros(np.broadcast_shapes(x.shape, y.shape, z.shape), dtype=np.float32)
    for _ in range(6):
        fx, fy, fz = (2 * np.pi / rng.uniform(20.0, 80.0, 3)).astype(np.float32)
        px, py, pz = rng.uniform(0, 2 * np.pi, 3).astype(np.float32)
        out += np.cos(fx * x + px) * np.cos(fy * y + py) * np.cos(fz * z + pz)
    return out * np.float32(amplitude / np.sqrt(6 / 8))


def _vessel_tree(
    hu: np.ndarray,
    affine: np.ndarray,
    rng: np.random.Generator,
    start: np.ndarray,
    direction: np.ndarray,
    radius: float,
    depth: int,
    lung_f: np.ndarray,
) -> None:
    direction = direction / np.linalg.norm(direction)
    length = float(rng.uniform(8.0, 16.0)) * (0.85**depth)
    end = start + direction * length
    r_end = max(radius * 0.85, 0.5)
    _blend_tube(hu, affine, start, end, radius, r_end, 40.0 + float(rng.normal(0, 5)), where=lung_f)
    if depth >= 5 or r_end <= 0.55:
        return
    for _ in range(2):
        child = direction + rng.normal(0, 0.65, size=3)
        _vessel_tree(
            hu,
            affine,
            rng,
            end,
            child,
            max(r_end * rng.uniform(0.68, 0.82), 0.5),
            depth + 1,
            lung_f,
        )


def _place_nodules(
    hu: np.ndarray, affine: np.ndarray, lung: np.ndarray, rng: np.random.Generator, count: int
) -> list[dict[str, Any]]:
    spacing = np.diag(affine)[:3]
    volume = Volume(np.zeros((1, 1, 1), np.float32), affine)
    # depth inside the lung on a grid halved in plane (an exact check follows); the largest
    # sphere that fits bounds the diameter (miniature field of view)
    depth_mm = ndimage.distance_transform_edt(lung[::2, ::2, :], sampling=spacing * [2, 2, 1])
    max_diameter = float(min(30.0, 2.0 * (depth_mm.max() - spacing.max()) * 0.85))
    candidates = np.argwhere(depth_mm > 1.5 + spacing.max())
    nodules: list[dict[str, Any]] = []
    if max_diameter < 3.0 or len(candidates) == 0:
        return nodules
    for _ in range(count):
        for _attempt in range(200):
            diameter = float(np.exp(rng.uniform(np.log(3.0), np.log(max_diameter))))
            radius = diameter / 2
            coarse = candidates[int(rng.integers(len(candidates)))]
            if depth_mm[tuple(coarse)] < radius + spacing.max():
                continue
            center_vox = coarse.astype(np.float64) * [2, 2, 1]
            if not _sphere_inside(lung, center_vox, radius + 0.5 * spacing.max(), spacing):
                continue
            center = volume.voxel_to_lps(center_vox[None])[0] + rng.uniform(-0.5, 0.5, 3) * spacing
            if any(
                np.linalg.norm(center - np.array(n["center_lps_mm"]))
                < radius + n["diameter_mm"] / 2 + 2.0
                for n in nodules
            ):
                continue
            kind = "part-solid" if rng.random() < 0.3 and diameter >= 6.0 else "solid"
            if kind == "part-solid":
                _blend_tube(
                    hu, affine, center, center, radius, radius, -500.0 + float(rng.normal(0, 60))
                )
                core = radius * float(rng.uniform(0.3, 0.6))
                _blend_tube(hu, affine, center, center, core, core, 30.0 + float(rng.normal(0, 10)))
            else:
                _blend_tube(
                    hu, affine, center, center, radius, radius, 30.0 + float(rng.normal(0, 10))
                )
            nodules.append(
                {
                    "center_lps_mm": [round(float(c), 3) for c in center],
                    "diameter_mm": round(diameter, 2),
                    "kind": kind,
                }
            )
            break
    return nodules


def _sphere_inside(
    mask: np.ndarray, center_vox: np.ndarray, radius_mm: float, spacing: np.ndarray
) -> bool:
    """True when every voxel within `radius_mm` of `center_vox` is set in `mask`."""
    box = _bbox(center_vox, radius_mm / spacing, mask.shape)
    if box is None:
        return False
    grids = np.ogrid[box]
    dist2 = sum(((g - c) * sp) ** 2 for g, c, sp in zip(grids, center_vox, spacing, strict=True))
    full = all(sl.start > 0 and sl.stop < n for sl, n in zip(box, mask.shape, strict=True))
    return bool(full and mask[box][dist2 <= radius_mm**2].all())


def chest_ct_datasets(volume: Volume, seed: int) -> list:
    """The DICOM datasets of a chest CT phantom (int16 with RescaleIntercept -1024)."""
    rng = np.random.default_rng([seed, 2])
    study_uid = deterministic_uid(UID_ROOT_TAG, "chest-ct", seed, "study")
    header = _identity_header(rng, seed, "chest-ct")
    header.update(
        {
            "Modality": "CT",
            "StudyInstanceUID": study_uid,
            "SeriesInstanceUID": deterministic_uid(UID_ROOT_TAG, "chest-ct", seed, "series"),
            "FrameOfReferenceUID": deterministic_uid(
                UID_ROOT_TAG, "chest-ct", seed, "frame-of-reference"
            ),
            "StudyDescription": "CT CHEST WITHOUT CONTRAST",
            "SeriesDescription": "AXIAL LUNG 1.25",
            "SeriesNumber": 2,
            "BodyPartExamined": "CHEST",
            "PatientPosition": "FFS",
            "ImageType": ["ORIGINAL", "PRIMARY", "AXIAL"],
            "KVP": "120",
            "ConvolutionKernel": "LUNG",
            "WindowCenter": ["-600", "40"],
            "WindowWidth": ["1500", "400"],
            "WindowCenterWidthExplanation": ["LUNG", "MEDIASTINUM"],
            "PositionReferenceIndicator": "",
        }
    )
    return volume_to_datasets(
        volume, header, rescale_intercept=-1024.0, rescale_slope=1.0, signed=True
    )


def write_chest_ct(
    case_dir: str | Path, seed: int, shape: tuple[int, int, int] = CHEST_CT_SHAPE
) -> list[dict[str, Any]]:
    """Write a chest CT phantom as one DICOM series into `case_dir`; returns its nodules."""
    volume, nodules = make_chest_ct(seed, shape=shape)
    write_datasets(chest_ct_datasets(volume, seed), case_dir)
    return nodules


# ---------------------------------------------------------------------------------------
# brain MRI

# relative intensities per tissue: scalp, skull, csf, grey, white, tumor, necrosis, edema
_MR_TISSUE = {
    "T1": (1.3, 0.08, 0.3, 0.72, 1.0, 0.62, 0.3, 0.8),
    "T1c": (1.3, 0.08, 0.3, 0.72, 1.0, 0.62, 0.3, 0.8),
    "T2": (1.0, 0.08, 2.0, 0.95, 0.7, 1.35, 1.9, 1.3),
    "FLAIR": (0.9, 0.08, 0.25, 1.0, 0.8, 1.35, 0.55, 1.55),
}


def make_brain_mri(
    seed: int, grade: int | None = None, shape: tuple[int, int, int] = BRAIN_MRI_SHAPE
) -> tuple[Volume, int, np.ndarray]:
    """Generate one brain MRI phantom in memory.

    Returns:
        (Volume (4, X, Y, Z) with channels T1, T1c, T2, FLAIR, integer-valued as stored in
        DICOM), the grade (1-3; random when `grade` is None), and a uint8 (X, Y, Z) label
        mask on the same grid (1 necrotic/non-enhancing, 2 edema, 3 enhancing).
    """
    shape = _check_shape(shape, (32, 32, 16))
    rng = np.random.default_rng([seed, 3])
    if grade is None:
        grade = int(rng.integers(1, 4))
    if grade not in (1, 2, 3):
        raise ValueError(f"grade must be 1, 2 or 3, got {grade}")
    s_xy = float(rng.uniform(1.8, 2.2))
    s_z = float(rng.uniform(2.2, 2.8))
    affine = np.diag([s_xy, s_xy, s_z, 1.0])
    affine[:3, 3] = [
        -(shape[0] - 1) / 2 * s_xy,
        -(shape[1] - 1) / 2 * s_xy,
        -(shape[2] - 1) / 2 * s_z,
    ]
    x, y, z = _grid_mm(shape, affine)
    fov = np.array(shape) * np.array([s_xy, s_xy, s_z])
    # head ellipsoid sized to the field of view
    axes = np.array([0.40 * fov[0], 0.46 * fov[1], 0.45 * fov[2]]) * rng.uniform(0.93, 1.0, 3)
    shift = rng.normal(0, 2.0, 3)
    r = np.sqrt(
        ((x - shift[0]) / axes[0]) ** 2
        + ((y - shift[1]) / axes[1]) ** 2
        + ((z - shift[2]) / axes[2]) ** 2
    )
    mean_axis = float(axes.mean())
    depth = (1.0 - r) * mean_axis  # approx. mm inside the head surface
    tissue = np.zeros(shape, dtype=np.uint8)  # 0 air
    tissue[depth >= 0] = 1  # scalp
    tissue[depth >= 5.0] = 2  # skull
    tissue[depth >= 11.0] = 3  # CSF
    tissue[depth >= 13.0] = 4  # grey matter
    tissue[depth >= 13.0 + rng.uniform(3.0, 5.0)] = 5  # white matter
    for side in (-1.0, 1.0):
        vent = (
            ((x - shift[0] - side * 6.0) / 4.5) ** 2
            + ((y - shift[1] + 2.0) / (0.22 * axes[1])) ** 2
            + ((z - shift[2] - 4.0) / 9.0) ** 2
        ) <= 1.0
        tissue[vent] = 3
    brain = tissue >= 3

    # tumor: irregular blob in the white matter, its looks set by the grade
    radius = {1: rng.uniform(5.0, 11.0), 2: rng.uniform(9.0, 17.0), 3: rng.uniform(13.0, 24.0)}[
        grade
    ]
    irregular = {
        1: rng.uniform(0.03, 0.15),
        2: rng.uniform(0.08, 0.25),
        3: rng.uniform(0.15, 0.35),
    }[grade]
    edema_mm = {1: rng.uniform(0.0, 2.5), 2: rng.uniform(3.0, 10.0), 3: rng.uniform(9.0, 22.0)}[
        grade
    ]
    limit = np.maximum(axes - 13.0 - radius - 2.0, 1.0)
    center = shift + rng.uniform(-0.6, 0.6, 3) * limit
    dx, dy, dz = x - center[0], y - center[1], z - center[2]
    dist = np.sqrt(dx**2 + dy**2 + dz**2) + 1e-6
    lobes = np.zeros(np.broadcast_shapes(dx.shape, dy.shape, dz.shape), dtype=np.float32)
    for _ in range(4):
        n = rng.normal(size=3)
        n /= np.linalg.norm(n)
        cos = (dx * n[0] + dy * n[1] + dz * n[2]) / dist
        lobes += np.cos(rng.integers(2, 5) * np.arccos(np.clip(cos, -1, 1)) + rng.uniform(0, 6.3))
    surface = radius * (1.0 + irregular * lobes / 2.0)
    d_norm = dist / surface
    tumor = (d_norm <= 1.0) & brain
    edema = (dist <= surface + edema_mm) & ~tumor & brain & (edema_mm > 1.0)
    mask = np.zeros(shape, dtype=np.uint8)
    mask[edema] = 2
    mask[tumor] = 1
    enhancing = np.zeros(shape, dtype=bool)
    necrosis = np.zeros(shape, dtype=bool)
    if grade == 2:
        field = ndimage.zoom(rng.normal(size=(6, 6, 6)), np.array(shape) / 6, order=1)
        threshold = (
            np.quantile(field[tumor], 1.0 - rng.uniform(0.1, 0.4)) if tumor.any() else np.inf
        )
        enhancing = tumor & (field >= threshold)
        enhancement = rng.uniform(0.25, 0.6)
    elif grade == 3:
        core = rng.uniform(0.45, 0.7)
        necrosis = tumor & (d_norm <= core)
        enhancing = tumor & ~necrosis
        enhancement = rng.uniform(0.7, 1.1)
    else:
        enhancement = 0.0
    mask[enhancing] = 3

    tissue_label = tissue.copy()
    tissue_label[edema] = 8
    tissue_label[tumor] = 6
    tissue_label[necrosis] = 7
    channels = np.zeros((4, *shape), dtype=np.float32)
    grid = np.stack(np.meshgrid(*(np.linspace(-1, 1, n) for n in shape), indexing="ij"))
    t1_table = np.zeros(9, dtype=np.float32)
    for index, name in enumerate(MR_CHANNELS):
        table = np.array((0.0, *_MR_TISSUE[name]), dtype=np.float32)
        if name == "T1c":
            table = t1_table.copy()
        else:
            table[6:] *= rng.uniform(0.9, 1.1, 3).astype(np.float32)  # lesion contrast varies
        if name == "T1":
            t1_table = table
        image = table[tissue_label]
        if name == "T1c" and enhancement:
            image[enhancing] *= 1.0 + enhancement
        image = ndimage.gaussian_filter(image, 0.6)
        if name != "T1c":  # post-contrast T1 is the same acquisition as T1: same scale and bias
            coeffs = rng.normal(0, 0.08, 6)
            bias = np.exp(
                coeffs[0] * grid[0]
                + coeffs[1] * grid[1]
                + coeffs[2] * grid[2]
                + coeffs[3] * grid[0] * grid[1]
                + coeffs[4] * grid[2] ** 2
                + coeffs[5] * grid[0] ** 2
            )
            level = rng.uniform(400.0, 900.0)
        signal = image * bias * level
        sigma = level * rng.uniform(0.02, 0.05)
        noisy = np.sqrt(
            (signal + rng.normal(0, sigma, shape)) ** 2 + rng.normal(0, sigma, shape) ** 2
        )  # Rician
        channels[index] = np.clip(np.rint(noisy), 0, 65535)
    meta = {
        "source": "phantom",
        "modality": "MR",
        "phantom": "brain-mri",
        "seed": int(seed),
        "channel_names": list(MR_CHANNELS),
        "missing_channels": [],
        "spacing_irregular": False,
        "tumor_center_lps_mm": [round(float(c), 3) for c in center],
    }
    return Volume(channels, affine, meta), grade, mask


_MR_DESCRIPTIONS = {
    "T1": ("T1 AX SE", "T1", "se2d1"),
    "T1c": ("T1c AX SE POST GD", "T1c", "se2d1"),
    "T2": ("T2 AX TSE", "T2", "tse2d1"),
    "FLAIR": ("FLAIR AX", "FLAIR", "tir2d1"),
}


def brain_mri_datasets(volume: Volume, seed: int) -> dict[str, list]:
    """DICOM datasets per sequence (one study, four series) of a brain MRI phantom."""
    rng = np.random.default_rng([seed, 4])
    base = _identity_header(rng, seed, "brain-mri")
    base.update(
        {
            "Modality": "MR",
            "StudyInstanceUID": deterministic_uid(UID_ROOT_TAG, "brain-mri", seed, "study"),
            "FrameOfReferenceUID": deterministic_uid(
                UID_ROOT_TAG, "brain-mri", seed, "frame-of-reference"
            ),
            "StudyDescription": "MRI BRAIN WITH AND WITHOUT CONTRAST",
            "BodyPartExamined": "BRAIN",
            "PatientPosition": "HFS",
            "MagneticFieldStrength": "1.5",
            "PositionReferenceIndicator": "",
        }
    )
    out = {}
    for number, name in enumerate(MR_CHANNELS, start=1):
        description, protocol, sequence = _MR_DESCRIPTIONS[name]
        header = dict(base)
        header.update(
            {
                "SeriesInstanceUID": deterministic_uid(
                    UID_ROOT_TAG, "brain-mri", seed, "series", name
                ),
                "SeriesDescription": description,
                "ProtocolName": protocol,
                "SequenceName": sequence,
                "SeriesNumber": number,
                "ImageType": ["ORIGINAL", "PRIMARY", "M"],
                "ScanningSequence": "IR" if name == "FLAIR" else "SE",
                "SequenceVariant": "SK",
                "MRAcquisitionType": "2D",
            }
        )
        if name == "T1c":
            header["ContrastBolusAgent"] = "GADOBUTROL"
        out[name] = volume_to_datasets(
            volume.channel(name if "channel_names" in volume.meta else number - 1),
            header,
            signed=False,
        )
    return out


def write_brain_mri(
    case_dir: str | Path,
    seed: int,
    grade: int | None = None,
    shape: tuple[int, int, int] = BRAIN_MRI_SHAPE,
) -> int:
    """Write a brain MRI phantom: `case_dir/{T1,T1c,T2,FLAIR}/` series and
    `case_dir/tumor_mask.nii.gz` (same grid as T1). Returns the grade."""
    case_dir = Path(case_dir)
    volume, grade, mask = make_brain_mri(seed, grade=grade, shape=shape)
    for name, datasets in brain_mri_datasets(volume, seed).items():
        write_datasets(datasets, case_dir / name)
    save_nifti(
        Volume(mask.astype(np.float32), volume.affine),
        case_dir / "tumor_mask.nii.gz",
        dtype=np.uint8,
    )
    return grade
