"""Spatial transforms: resampling to a target spacing and orientation to RAS (MONAI's own).

They act on channel-first MetaTensors whose affine is RAS (see `convert.volume_to_metatensor`)
and update that affine, so points in LPS mm can be mapped through them with
`convert.lps_mm_to_voxel`.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from monai.transforms import Orientation, Orientationd, Spacing, Spacingd

#: Target spacing of MONAI's lung nodule detection bundle (mm).
NODULE_SPACING_MM = (0.703125, 0.703125, 1.25)


def _check_spacing(pixdim: Sequence[float]) -> tuple[float, ...]:
    values = tuple(float(v) for v in pixdim)
    if len(values) != 3 or any(v <= 0 for v in values):
        raise ValueError(f"target spacing must be three positive numbers (mm), got {pixdim}")
    return values


def ResampleToSpacing(pixdim: Sequence[float], mode: str = "bilinear") -> Spacing:
    """Resample to `pixdim` mm (use mode="nearest" for label maps)."""
    return Spacing(pixdim=_check_spacing(pixdim), mode=mode)


def ResampleToSpacingd(keys: Any, pixdim: Sequence[float], mode: Any = "bilinear") -> Spacingd:
    """Dict version of `ResampleToSpacing`; `mode` may be a sequence, one per key."""
    return Spacingd(keys, pixdim=_check_spacing(pixdim), mode=mode)


def OrientRAS() -> Orientation:
    """Reorder/flip axes to "RAS": i increases towards the patient's Right, j towards
    Anterior, k towards Superior (the affine's diagonal becomes positive in RAS space).

    DICOM axial images come as "LPS" (i to the Left, j to Posterior), so this flips i and j.
    """
    return Orientation(axcodes="RAS", labels=None)


def OrientRASd(keys: Any) -> Orientationd:
    """Dict version of `OrientRAS`."""
    return Orientationd(keys, axcodes="RAS", labels=None)
