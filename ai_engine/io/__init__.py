"""Volumes from DICOM and NIfTI in one convention (see `ai_engine.io.volume`).

`load_volume(path)` takes a folder holding one DICOM series or a .nii/.nii.gz file;
`load_dicom_series` also takes lists of files or pydicom Datasets (from Orthanc);
`load_multimodal` stacks MRI sequences; `save_nifti` writes a Volume (RAS affine on disk).
"""

from __future__ import annotations

from pathlib import Path

from ai_engine.errors import InputError
from ai_engine.io.dicom import MR_SEQUENCES, identify_mr_sequence, load_dicom_series
from ai_engine.io.multimodal import load_multimodal, resample_to_grid
from ai_engine.io.nifti import is_nifti_path, load_nifti, save_nifti
from ai_engine.io.volume import LPS_TO_RAS, Volume


def load_volume(path: str | Path) -> Volume:
    """Load a DICOM series folder or a NIfTI file as a Volume (LPS affine).

    Raises:
        InputError: the path is missing, or is neither a series folder nor a NIfTI file.
    """
    path = Path(path)
    if not path.exists():
        raise InputError(f"{path} does not exist")
    if path.is_dir():
        return load_dicom_series(path)
    if is_nifti_path(path):
        return load_nifti(path)
    raise InputError(
        f"{path} is neither a folder holding one DICOM series nor a .nii/.nii.gz file "
        "(for single DICOM files use load_dicom_series([path]))"
    )


__all__ = [
    "LPS_TO_RAS",
    "MR_SEQUENCES",
    "Volume",
    "identify_mr_sequence",
    "load_dicom_series",
    "load_multimodal",
    "load_nifti",
    "load_volume",
    "resample_to_grid",
    "save_nifti",
]
