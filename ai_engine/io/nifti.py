"""NIfTI read/write for `Volume`s. NIfTI stores a RAS affine; `Volume` keeps LPS."""

from __future__ import annotations

from pathlib import Path

import nibabel as nib
import numpy as np

from ai_engine.errors import InputError
from ai_engine.io.volume import LPS_TO_RAS, Volume

NIFTI_SUFFIXES = (".nii", ".nii.gz")


def is_nifti_path(path: str | Path) -> bool:
    """True when the file name ends in .nii or .nii.gz."""
    return str(path).lower().endswith(NIFTI_SUFFIXES)


def load_nifti(path: str | Path) -> Volume:
    """Load a 3D (or 4D channel-last, as NIfTI stores it) NIfTI file as a Volume in LPS.

    A 4D file (X, Y, Z, C) becomes a channel-first (C, X, Y, Z) Volume.
    """
    path = Path(path)
    if not path.is_file():
        raise InputError(f"{path} does not exist")
    try:
        image = nib.load(str(path))
        data = np.asarray(image.dataobj, dtype=np.float32)
    except Exception as exc:
        raise InputError(f"{path} could not be read as NIfTI: {exc}") from None
    if data.ndim == 4 and data.shape[3] == 1:
        data = data[..., 0]
    if data.ndim == 4:
        data = np.moveaxis(data, 3, 0)
    elif data.ndim != 3:
        raise InputError(
            f"{path} has {data.ndim} dimensions; a 3D volume or a 4D channel stack is expected"
        )
    affine_lps = LPS_TO_RAS @ image.affine
    return Volume(np.ascontiguousarray(data), affine_lps, {"source": "nifti", "path": str(path)})


def save_nifti(volume: Volume, path: str | Path, dtype: np.dtype | type | None = None) -> Path:
    """Write a Volume to .nii/.nii.gz with its affine converted to RAS; returns the path.

    Channel-first (C, X, Y, Z) arrays are written channel-last (X, Y, Z, C) as NIfTI expects.
    The file is written to a temporary name and renamed, so no half-written file is left.
    """
    path = Path(path)
    if not is_nifti_path(path):
        raise InputError(f"{path}: a NIfTI file name must end in .nii or .nii.gz")
    data = volume.array if dtype is None else volume.array.astype(dtype)
    if data.ndim == 4:
        data = np.moveaxis(data, 0, 3)
    image = nib.Nifti1Image(np.ascontiguousarray(data), LPS_TO_RAS @ volume.affine)
    image.header.set_xyzt_units("mm")
    path.parent.mkdir(parents=True, exist_ok=True)
    suffix = ".nii.gz" if str(path).lower().endswith(".gz") else ".nii"
    tmp = path.with_name(f".{path.name}.partial{suffix}")
    nib.save(image, str(tmp))
    tmp.replace(path)
    return path
