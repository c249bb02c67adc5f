"""Small, valid DICOM test files made with pydicom (and helpers to break them on purpose)."""

from __future__ import annotations

import io
from pathlib import Path

import numpy as np
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.uid import CTImageStorage, ExplicitVRLittleEndian, generate_uid

PREFIX = "1.2.826.0.1.3680043.8.498."  # pydicom's UID root, for test data


def ct_series(
    n: int = 4,
    *,
    rows: int = 32,
    columns: int = 32,
    patient_id: str = "PAT-001",
    patient_name: str = "Doe^Jane",
    study_uid: str | None = None,
    series_uid: str | None = None,
    study_description: str = "CT chest",
    modality: str = "CT",
    series_number: int = 1,
    study_date: str = "20240115",
    seed: int = 0,
) -> list[Dataset]:
    """`n` axial CT slices of one series with complete geometry and identifying attributes."""
    study_uid = study_uid or generate_uid(PREFIX)
    series_uid = series_uid or generate_uid(PREFIX)
    frame_uid = generate_uid(PREFIX)
    rng = np.random.default_rng(seed)
    out = []
    for k in range(n):
        ds = Dataset()
        ds.file_meta = FileMetaDataset()
        ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
        ds.file_meta.MediaStorageSOPClassUID = CTImageStorage
        ds.SOPInstanceUID = generate_uid(PREFIX)
        ds.file_meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
        ds.preamble = b"\0" * 128
        ds.SOPClassUID = CTImageStorage
        ds.StudyInstanceUID = study_uid
        ds.SeriesInstanceUID = series_uid
        ds.FrameOfReferenceUID = frame_uid
        ds.PatientID = patient_id
        ds.PatientName = patient_name
        ds.PatientBirthDate = "19700101"
        ds.PatientSex = "F"
        ds.StudyDate = study_date
        ds.StudyTime = "101500"
        ds.AccessionNumber = "ACC-1"
        ds.StudyDescription = study_description
        ds.SeriesDescription = f"{modality} axial"
        ds.Modality = modality
        ds.BodyPartExamined = "CHEST"
        ds.Manufacturer = "TestVendor"
        ds.SeriesNumber = series_number
        ds.InstanceNumber = k + 1
        ds.ImagePositionPatient = [-100.0, -100.0, float(k) * 2.5]
        ds.ImageOrientationPatient = [1.0, 0.0, 0.0, 0.0, 1.0, 0.0]
        ds.PixelSpacing = [0.8, 0.8]
        ds.SliceThickness = 2.5
        ds.Rows = rows
        ds.Columns = columns
        ds.SamplesPerPixel = 1
        ds.PhotometricInterpretation = "MONOCHROME2"
        ds.BitsAllocated = 16
        ds.BitsStored = 16
        ds.HighBit = 15
        ds.PixelRepresentation = 1
        ds.RescaleIntercept = 0
        ds.RescaleSlope = 1
        ds.PixelData = rng.integers(-1000, 1000, (rows, columns), dtype=np.int16).tobytes()
        out.append(ds)
    return out


def to_bytes(ds: Dataset) -> bytes:
    buffer = io.BytesIO()
    ds.save_as(buffer, enforce_file_format=True)
    return buffer.getvalue()


def write_series(datasets: list[Dataset], folder: Path) -> list[Path]:
    folder.mkdir(parents=True, exist_ok=True)
    paths = []
    for i, ds in enumerate(datasets):
        path = folder / f"slice{i:04d}.dcm"
        path.write_bytes(to_bytes(ds))
        paths.append(path)
    return paths
