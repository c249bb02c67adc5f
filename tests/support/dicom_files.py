"""Small, valid DICOM test files made with pydicom: the one CT series factory of the tests.

Each dataset has a preamble and file meta, so Orthanc stores a proper Part 10 file (see
stack-facts: without them WADO-RS retrieval fails later). `tests/dicomweb/dicom_factory.py`
wraps it for the proxy tests and bench (`make_ct_series`, stored and indexed series).
"""

from __future__ import annotations

import io
from pathlib import Path

import numpy as np
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.uid import (
    PYDICOM_IMPLEMENTATION_UID,
    CTImageStorage,
    ExplicitVRLittleEndian,
    JPEGLSLossless,
    generate_uid,
)

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
    series_description: str | None = None,
    accession_number: str = "ACC-1",
    study_date: str = "20240115",
    origin_mm: tuple[float, float] = (-100.0, -100.0),
    pixel_spacing_mm: float = 0.8,
    slice_mm: float = 2.5,
    window: tuple[int, int] | None = None,
    jpeg_ls: bool = False,
    seed: int = 0,
) -> list[Dataset]:
    """`n` axial CT slices of one series with complete geometry and identifying attributes,
    16-bit signed random pixels; `jpeg_ls` encodes them JPEG-LS lossless (pyjpegls),
    `window` adds (center, width)."""
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
        ds.file_meta.ImplementationClassUID = PYDICOM_IMPLEMENTATION_UID
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
        ds.AccessionNumber = accession_number
        ds.StudyID = "1"
        ds.StudyDescription = study_description
        ds.SeriesDescription = series_description or f"{modality} axial"
        ds.Modality = modality
        ds.BodyPartExamined = "CHEST"
        ds.Manufacturer = "TestVendor"
        ds.SeriesNumber = series_number
        ds.InstanceNumber = k + 1
        ds.ImagePositionPatient = [*map(float, origin_mm), float(k) * slice_mm]
        ds.ImageOrientationPatient = [1.0, 0.0, 0.0, 0.0, 1.0, 0.0]
        ds.PixelSpacing = [pixel_spacing_mm, pixel_spacing_mm]
        ds.SliceThickness = slice_mm
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
        if window is not None:
            ds.WindowCenter, ds.WindowWidth = window
        pixels = rng.integers(-1000, 1000, (rows, columns), dtype=np.int16)
        if jpeg_ls:
            ds.compress(JPEGLSLossless, pixels, encoding_plugin="pyjpegls")
        else:
            ds.PixelData = pixels.tobytes()
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
