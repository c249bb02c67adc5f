"""Write a scalar `Volume` as a DICOM series (one file per slice) or an enhanced multi-frame.

Used by the phantom generator and by tests that need real DICOM files (de-identification,
Orthanc ingest). Files carry the 128-byte preamble and file meta (dicomweb-client needs them).
"""

from __future__ import annotations

import shutil
import tempfile
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np
import pydicom
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.uid import (
    PYDICOM_IMPLEMENTATION_UID,
    CTImageStorage,
    ExplicitVRLittleEndian,
    MRImageStorage,
    generate_uid,
)

from ai_engine.io.volume import Volume

SOP_CLASS_BY_MODALITY = {"CT": CTImageStorage, "MR": MRImageStorage}


def deterministic_uid(*parts: object) -> str:
    """A UID that is the same for the same `parts` (pydicom's generate_uid with entropy sources)."""
    return generate_uid(entropy_srcs=[str(p) for p in parts])


def volume_to_datasets(
    volume: Volume,
    header: Mapping[str, Any],
    *,
    rescale_intercept: float = 0.0,
    rescale_slope: float = 1.0,
    signed: bool = True,
) -> list[Dataset]:
    """One single-frame image Dataset per slice k of a scalar Volume.

    Args:
        volume: scalar (X, Y, Z) volume; values are stored as
            round((value - rescale_intercept) / rescale_slope) in 16 bits.
        header: DICOM keywords -> values copied into every slice; must include Modality,
            StudyInstanceUID, SeriesInstanceUID and FrameOfReferenceUID. SOPInstanceUIDs are
            derived from the SeriesInstanceUID and the slice index (deterministic).
        signed: int16 (PixelRepresentation 1) or uint16 storage.
    """
    if volume.array.ndim != 3:
        raise ValueError("volume_to_datasets takes a scalar (X, Y, Z) volume")
    for keyword in ("Modality", "StudyInstanceUID", "SeriesInstanceUID", "FrameOfReferenceUID"):
        if not header.get(keyword):
            raise ValueError(f"header must give {keyword}")
    modality = str(header["Modality"])
    sop_class = header.get("SOPClassUID") or SOP_CLASS_BY_MODALITY.get(modality)
    if sop_class is None:
        raise ValueError(
            f"no default SOP class for Modality {modality!r}; give SOPClassUID in header"
        )
    spacing = volume.spacing
    direction = volume.direction
    row_dir, col_dir = direction[:, 0], direction[:, 1]
    info = np.iinfo(np.int16 if signed else np.uint16)
    stored = np.rint((volume.array - rescale_intercept) / rescale_slope)
    if stored.min() < info.min or stored.max() > info.max:
        raise ValueError(
            f"values do not fit 16-bit storage with intercept {rescale_intercept}, slope {rescale_slope}"
        )
    stored = stored.astype(np.int16 if signed else np.uint16)
    series_uid = str(header["SeriesInstanceUID"])
    datasets = []
    for k in range(volume.array.shape[2]):
        ds = Dataset()
        for keyword, value in header.items():
            setattr(ds, keyword, value)
        sop_uid = deterministic_uid(series_uid, "instance", k)
        meta = FileMetaDataset()
        meta.MediaStorageSOPClassUID = sop_class
        meta.MediaStorageSOPInstanceUID = sop_uid
        meta.TransferSyntaxUID = ExplicitVRLittleEndian
        meta.ImplementationClassUID = PYDICOM_IMPLEMENTATION_UID
        ds.file_meta = meta
        ds.preamble = b"\0" * 128
        ds.SOPClassUID = sop_class
        ds.SOPInstanceUID = sop_uid
        ds.InstanceNumber = k + 1
        position = volume.voxel_to_lps(np.array([[0.0, 0.0, float(k)]]))[0]
        ds.ImagePositionPatient = [_ds_number(v) for v in position]
        ds.ImageOrientationPatient = [_ds_number(v) for v in (*row_dir, *col_dir)]
        ds.PixelSpacing = [_ds_number(spacing[1]), _ds_number(spacing[0])]
        ds.SliceThickness = header.get("SliceThickness", _ds_number(spacing[2]))
        ds.SliceLocation = _ds_number(position[2])
        ds.SamplesPerPixel = 1
        ds.PhotometricInterpretation = "MONOCHROME2"
        ds.Rows, ds.Columns = volume.array.shape[1], volume.array.shape[0]
        ds.BitsAllocated = 16
        ds.BitsStored = 16
        ds.HighBit = 15
        ds.PixelRepresentation = 1 if signed else 0
        ds.RescaleIntercept = _ds_number(rescale_intercept)
        ds.RescaleSlope = _ds_number(rescale_slope)
        if modality == "CT":
            ds.RescaleType = "HU"
        ds.PixelData = np.ascontiguousarray(stored[:, :, k].T).tobytes()
        datasets.append(ds)
    return datasets


def _ds_number(value: float) -> str:
    """A DS string of at most 16 characters."""
    text = f"{float(value):.10g}"
    if len(text) > 16:
        text = f"{float(value):.8g}"
    return "0" if text == "-0" else text


def write_datasets(datasets: list[Dataset], folder: str | Path) -> list[Path]:
    """Write datasets as IM0001.dcm, ... into `folder` (created; must not exist or be empty).

    The files go to a temporary sibling folder first and are moved into place at the end,
    so an interrupted write leaves no partial series.
    """
    folder = Path(folder)
    if folder.exists() and any(folder.iterdir()):
        raise FileExistsError(f"{folder} is not empty")
    folder.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{folder.name}.", dir=folder.parent))
    try:
        names = []
        for index, ds in enumerate(datasets):
            name = f"IM{index + 1:04d}.dcm"
            pydicom.dcmwrite(tmp / name, ds, enforce_file_format=True)
            names.append(name)
        if folder.exists():
            folder.rmdir()
        tmp.rename(folder)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return [folder / n for n in names]


def datasets_to_enhanced_multiframe(datasets: list[Dataset], instance_number: int = 1) -> Dataset:
    """Convert single-frame CT/MR datasets of one series into one legacy-converted enhanced
    multi-frame instance (highdicom), with PerFrameFunctionalGroupsSequence/PlanePositionSequence.
    """
    import highdicom.legacy

    modality = str(datasets[0].Modality)
    cls = {
        "CT": highdicom.legacy.LegacyConvertedEnhancedCTImage,
        "MR": highdicom.legacy.LegacyConvertedEnhancedMRImage,
    }.get(modality)
    if cls is None:
        raise ValueError(f"no enhanced multi-frame conversion for Modality {modality!r}")
    series_uid = deterministic_uid(datasets[0].SeriesInstanceUID, "enhanced")
    image = cls(
        legacy_datasets=datasets,
        series_instance_uid=series_uid,
        series_number=int(datasets[0].get("SeriesNumber", 1) or 1) + 1000,
        sop_instance_uid=deterministic_uid(series_uid, "instance", instance_number),
        instance_number=instance_number,
    )
    image.preamble = b"\0" * 128
    return image
