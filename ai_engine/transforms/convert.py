"""Volume <-> MONAI MetaTensor, and the LPS/RAS convention between them.

`Volume.affine` maps voxels to DICOM LPS mm; a MONAI MetaTensor's `affine` maps voxels to RAS
mm (what MONAI's Spacing and Orientation assume). The only difference is the sign of x and y:
`affine_ras = LPS_TO_RAS @ affine_lps`, `point_ras = (-x, -y, z)` of `point_lps`.
MONAI spatial transforms update `MetaTensor.affine`, so after any chain of them
`lps_mm_to_voxel(tensor, center_lps_mm)` still gives where a nodule center lies in the
transformed array, and `voxel_to_lps_mm` maps a predicted voxel back to patient space.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import torch
from monai.data import MetaTensor
from monai.transforms import MapTransform, Transform

from ai_engine.io import load_volume
from ai_engine.io.volume import LPS_TO_RAS, Volume


def lps_to_ras(points: np.ndarray) -> np.ndarray:
    """N x 3 points from LPS to RAS mm (and back: the map is its own inverse)."""
    pts = np.atleast_2d(np.asarray(points, dtype=np.float64))
    return pts * np.array([-1.0, -1.0, 1.0])


ras_to_lps = lps_to_ras


def volume_to_metatensor(volume: Volume) -> MetaTensor:
    """A channel-first float32 MetaTensor (1 or C channels) with the RAS affine of `volume`.

    `volume.meta` is copied into the tensor's meta (plain values only), plus
    `affine_lps` for reference.
    """
    array = volume.array[None] if volume.array.ndim == 3 else volume.array
    meta: dict[str, Any] = {
        k: v for k, v in volume.meta.items() if isinstance(v, str | int | float | bool)
    }
    meta["affine_lps"] = torch.as_tensor(volume.affine, dtype=torch.float64)
    return MetaTensor(
        torch.from_numpy(np.ascontiguousarray(array, dtype=np.float32)),
        affine=torch.as_tensor(LPS_TO_RAS @ volume.affine, dtype=torch.float64),
        meta=meta,
    )


def metatensor_to_volume(tensor: MetaTensor, meta: dict[str, Any] | None = None) -> Volume:
    """The inverse of `volume_to_metatensor`: a Volume with an LPS affine.

    A single channel becomes a scalar (X, Y, Z) volume; several stay (C, X, Y, Z).
    """
    array = (
        tensor.detach().cpu().numpy() if isinstance(tensor, torch.Tensor) else np.asarray(tensor)
    )
    if array.ndim != 4:
        raise ValueError(f"expected a channel-first (C, X, Y, Z) tensor, got shape {array.shape}")
    if array.shape[0] == 1:
        array = array[0]
    affine_ras = np.asarray(tensor.affine, dtype=np.float64)
    return Volume(array, LPS_TO_RAS @ affine_ras, dict(meta or {}))


def lps_mm_to_voxel(tensor: MetaTensor, points_lps_mm: np.ndarray) -> np.ndarray:
    """N x 3 LPS mm -> N x 3 fractional voxel indices of `tensor` (uses its RAS affine)."""
    affine_ras = np.asarray(tensor.affine, dtype=np.float64)
    ras = lps_to_ras(points_lps_mm)
    inv = np.linalg.inv(affine_ras)
    return ras @ inv[:3, :3].T + inv[:3, 3]


def voxel_to_lps_mm(tensor: MetaTensor, points_voxel: np.ndarray) -> np.ndarray:
    """N x 3 voxel indices of `tensor` -> N x 3 LPS mm."""
    affine_ras = np.asarray(tensor.affine, dtype=np.float64)
    pts = np.atleast_2d(np.asarray(points_voxel, dtype=np.float64))
    return ras_to_lps(pts @ affine_ras[:3, :3].T + affine_ras[:3, 3])


class LoadVolume(Transform):
    """Path (DICOM series folder or NIfTI) -> channel-first MetaTensor with a RAS affine."""

    def __call__(self, path: str | Path) -> MetaTensor:
        return volume_to_metatensor(load_volume(path))


class LoadVolumed(MapTransform):
    """Dict version of `LoadVolume` for the given `keys`."""

    def __init__(self, keys: Any, allow_missing_keys: bool = False) -> None:
        super().__init__(keys, allow_missing_keys)
        self._load = LoadVolume()

    def __call__(self, data: dict[str, Any]) -> dict[str, Any]:
        out = dict(data)
        for key in self.key_iterator(out):
            out[key] = self._load(out[key])
        return out
