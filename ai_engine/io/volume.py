"""The `Volume`: a voxel array plus the affine that places it in DICOM patient space (LPS, mm).

Conventions (shared by every loader and writer in `ai_engine`):

* `array[i, j, k]` for one channel, `array[c, i, j, k]` for a channel stack.
  `i` runs along the DICOM row direction (first three values of ImageOrientationPatient,
  i.e. across columns), `j` along the column direction (down the rows), `k` along slices in
  increasing position, so `array[i, j, k] == pixel_array_of_slice_k[j, i]`.
* `affine` maps the homogeneous voxel index `(i, j, k, 1)` to LPS millimetres
  (x towards the patient's Left, y Posterior, z Superior), the frame of
  ImagePositionPatient. NIfTI and MONAI use RAS; convert with `LPS_TO_RAS`.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np

#: Multiplying an LPS affine (or point) by this gives RAS and vice versa (it is its own inverse).
LPS_TO_RAS: np.ndarray = np.diag([-1.0, -1.0, 1.0, 1.0])


@dataclass
class Volume:
    """A scalar (X, Y, Z) or channel-first (C, X, Y, Z) float32 volume with an LPS affine."""

    array: np.ndarray
    affine: np.ndarray
    meta: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        self.array = np.asarray(self.array, dtype=np.float32)
        self.affine = np.asarray(self.affine, dtype=np.float64)
        if self.array.ndim not in (3, 4):
            raise ValueError(
                f"Volume.array must be 3D (X,Y,Z) or 4D (C,X,Y,Z), got shape {self.array.shape}"
            )
        if self.affine.shape != (4, 4):
            raise ValueError(f"Volume.affine must be 4x4, got shape {self.affine.shape}")
        if not np.allclose(self.affine[3], [0, 0, 0, 1]):
            raise ValueError("Volume.affine last row must be [0, 0, 0, 1]")
        if abs(np.linalg.det(self.affine[:3, :3])) < 1e-9:
            raise ValueError("Volume.affine is singular (zero spacing or degenerate orientation)")

    @property
    def spatial_shape(self) -> tuple[int, int, int]:
        """(X, Y, Z) whether or not the volume has a channel axis."""
        return tuple(int(n) for n in self.array.shape[-3:])  # type: ignore[return-value]

    @property
    def n_channels(self) -> int:
        """1 for a scalar volume, C for a (C, X, Y, Z) stack."""
        return 1 if self.array.ndim == 3 else int(self.array.shape[0])

    @property
    def spacing(self) -> np.ndarray:
        """Millimetres per voxel step along i, j, k (norms of the affine's columns)."""
        return np.linalg.norm(self.affine[:3, :3], axis=0)

    @property
    def direction(self) -> np.ndarray:
        """3x3 matrix whose columns are the unit LPS directions of the i, j, k axes."""
        return self.affine[:3, :3] / self.spacing

    @property
    def origin_lps_mm(self) -> np.ndarray:
        """LPS position (mm) of the centre of voxel (0, 0, 0)."""
        return self.affine[:3, 3].copy()

    def voxel_to_lps(self, points_voxel: np.ndarray) -> np.ndarray:
        """Map N x 3 (fractional) voxel indices (i, j, k) to N x 3 LPS millimetres."""
        pts = np.atleast_2d(np.asarray(points_voxel, dtype=np.float64))
        _check_points(pts)
        return pts @ self.affine[:3, :3].T + self.affine[:3, 3]

    def lps_to_voxel(self, points_lps_mm: np.ndarray) -> np.ndarray:
        """Map N x 3 LPS millimetres to N x 3 fractional voxel indices (i, j, k)."""
        pts = np.atleast_2d(np.asarray(points_lps_mm, dtype=np.float64))
        _check_points(pts)
        inv = np.linalg.inv(self.affine)
        return pts @ inv[:3, :3].T + inv[:3, 3]

    def channel(self, name_or_index: str | int) -> Volume:
        """One channel of a stack as a scalar Volume (by index or by `meta["channel_names"]`)."""
        if self.array.ndim != 4:
            raise ValueError("channel() needs a (C, X, Y, Z) volume")
        if isinstance(name_or_index, str):
            names = list(self.meta.get("channel_names", []))
            if name_or_index not in names:
                raise KeyError(f"no channel {name_or_index!r}; channels are {names}")
            index = names.index(name_or_index)
        else:
            index = int(name_or_index)
        meta = {k: v for k, v in self.meta.items() if k != "channel_names"}
        return Volume(self.array[index].copy(), self.affine.copy(), meta)


def _check_points(pts: np.ndarray) -> None:
    if pts.ndim != 2 or pts.shape[1] != 3:
        raise ValueError(f"points must be an N x 3 array, got shape {pts.shape}")


def affine_from_geometry(
    image_position_patient: np.ndarray,
    image_orientation_patient: np.ndarray,
    pixel_spacing: np.ndarray,
    slice_step_lps_mm: np.ndarray,
) -> np.ndarray:
    """Build the voxel->LPS affine from DICOM geometry.

    Args:
        image_position_patient: LPS position of the first voxel of the first slice.
        image_orientation_patient: the six direction cosines (row direction, column direction).
        pixel_spacing: DICOM PixelSpacing = (row spacing, column spacing), i.e. (dj, di).
        slice_step_lps_mm: LPS vector from one slice's origin to the next one's.
    """
    iop = np.asarray(image_orientation_patient, dtype=np.float64)
    row_dir, col_dir = iop[:3], iop[3:]
    affine = np.eye(4)
    affine[:3, 0] = row_dir * float(pixel_spacing[1])
    affine[:3, 1] = col_dir * float(pixel_spacing[0])
    affine[:3, 2] = np.asarray(slice_step_lps_mm, dtype=np.float64)
    affine[:3, 3] = np.asarray(image_position_patient, dtype=np.float64)
    return affine
