"""Small synthetic CT series built with pydicom, for DICOMweb proxy tests and bench.

Each dataset has a preamble and file meta so Orthanc stores a proper Part 10 file (see
stack-facts: without them WADO-RS retrieval fails later). `jpeg_ls=True` encodes the pixel
data JPEG-LS lossless (pydicom + pyjpegls) to test transfer-syntax negotiation.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from io import BytesIO

import numpy as np
import requests
from pydicom import dcmread
from pydicom.dataset import Dataset

from tests.support.dicom_files import ct_series


@dataclass
class CtSeries:
    """A generated series: its UIDs and the datasets (in slice order)."""

    study_instance_uid: str
    series_instance_uid: str
    patient_id: str
    datasets: list[Dataset] = field(default_factory=list)

    @property
    def sop_instance_uids(self) -> list[str]:
        return [str(ds.SOPInstanceUID) for ds in self.datasets]

    def part10(self) -> list[bytes]:
        """Each dataset as Part 10 bytes (for Orthanc's REST `POST /instances`)."""
        out = []
        for ds in self.datasets:
            buffer = BytesIO()
            ds.save_as(buffer, enforce_file_format=True)
            out.append(buffer.getvalue())
        return out


def make_ct_series(
    *,
    slices: int = 8,
    rows: int = 64,
    columns: int = 64,
    patient_id: str = "PAT-1",
    patient_name: str = "Doe^Jane",
    study_date: str = "20240115",
    study_description: str = "CT CHEST",
    study_instance_uid: str | None = None,
    jpeg_ls: bool = False,
    seed: int = 0,
    modality: str = "CT",
) -> CtSeries:
    """A CT series of `slices` slices, `rows` x `columns`, 16-bit signed pixels, 0.7 mm
    pixels 1 mm apart (`tests.support.dicom_files.ct_series`); `modality` relabels it (an
    "MR" series where only the modality matters)."""
    datasets = ct_series(
        slices,
        rows=rows,
        columns=columns,
        patient_id=patient_id,
        patient_name=patient_name,
        study_uid=study_instance_uid,
        study_description=study_description,
        series_description="Axial 1mm",
        accession_number=f"ACC-{patient_id}",
        study_date=study_date,
        origin_mm=(0.0, 0.0),
        pixel_spacing_mm=0.7,
        slice_mm=1.0,
        window=(40, 400),
        jpeg_ls=jpeg_ls,
        seed=seed,
        modality=modality,
    )
    first = datasets[0]
    return CtSeries(str(first.StudyInstanceUID), str(first.SeriesInstanceUID), patient_id, datasets)


def store_series(series: CtSeries, *, url: str, auth: tuple[str, str]) -> None:
    """Store every instance in Orthanc with REST `POST /instances` (the fastest path)."""
    with requests.Session() as session:
        session.auth = auth
        for blob in series.part10():
            response = session.post(f"{url}/instances", data=blob, timeout=30)
            response.raise_for_status()


def index_series(project, series: CtSeries):
    """Create the index rows (Patient, Study, Series, Instances) for `series` in `project`.

    Done with the ORM directly so proxy tests do not depend on the ingest service. Like
    ingest, it records each instance's Orthanc id (computed, `imaging.orthanc.orthanc_id`)
    and frame count; the transfer syntax is left for the proxy to learn from Orthanc.
    """
    from imaging.models import Instance, Patient, Series, Study
    from imaging.orthanc import orthanc_id

    first = series.datasets[0]
    patient, _ = Patient.objects.get_or_create(project=project, patient_id=series.patient_id)
    study, _ = Study.objects.get_or_create(
        study_instance_uid=series.study_instance_uid,
        defaults={
            "project": project,
            "patient": patient,
            "study_description": str(first.StudyDescription),
            "modalities_in_study": str(first.Modality),
        },
    )
    row = Series.objects.create(
        study=study,
        series_instance_uid=series.series_instance_uid,
        modality=str(first.Modality),
        number_of_instances=len(series.datasets),
        rows=int(first.Rows),
        columns=int(first.Columns),
    )
    Instance.objects.bulk_create(
        Instance(
            series=row,
            sop_instance_uid=str(ds.SOPInstanceUID),
            sop_class_uid=str(ds.SOPClassUID),
            instance_number=int(ds.InstanceNumber),
            orthanc_id=orthanc_id(
                str(ds.PatientID),
                series.study_instance_uid,
                series.series_instance_uid,
                str(ds.SOPInstanceUID),
            ),
            number_of_frames=int(ds.get("NumberOfFrames") or 1),
        )
        for ds in series.datasets
    )
    return study


# Multi-frame objects, pixel data encoded with pydicom (native, RLE, JPEG-LS) or, for the
# JPEG lossless syntaxes pydicom cannot encode, transcoded by Orthanc itself (DCMTK).
PYDICOM_ENCODED = {
    "1.2.840.10008.1.2": "native",  # Implicit VR Little Endian
    "1.2.840.10008.1.2.1": "native",
    "1.2.840.10008.1.2.5": None,  # RLE Lossless: pydicom's own encoder
    "1.2.840.10008.1.2.4.80": "pyjpegls",
    "1.2.840.10008.1.2.4.81": "pyjpegls",
}
ORTHANC_TRANSCODED = ("1.2.840.10008.1.2.4.57", "1.2.840.10008.1.2.4.70")
MULTIFRAME_WORD_SC = "1.2.840.10008.5.1.4.1.1.7.3"  # Multi-frame Grayscale Word SC


def make_multiframe(
    syntax: str, *, url: str, auth: tuple[str, str], frames: int = 3, size: int = 16, seed: int = 0
) -> CtSeries:
    """Store one multi-frame instance of `frames` frames in `syntax` in Orthanc and return
    it as a one-instance series (the dataset as stored: UIDs, frame count, syntax)."""
    series = make_ct_series(slices=1, rows=size, columns=size, patient_id=f"MF-{seed}", seed=seed)
    ds = series.datasets[0]
    ds.SOPClassUID = ds.file_meta.MediaStorageSOPClassUID = MULTIFRAME_WORD_SC
    ds.NumberOfFrames = frames
    pixels = np.random.default_rng(seed).integers(
        -1000, 1000, size=(frames, size, size), dtype=np.int16
    )
    encoder = PYDICOM_ENCODED.get(syntax, "native")
    if encoder == "native":
        ds.PixelData = pixels.tobytes()
        if syntax == "1.2.840.10008.1.2":
            ds.file_meta.TransferSyntaxUID = syntax
    else:
        kwargs = {"encoding_plugin": encoder} if encoder else {}
        if syntax == "1.2.840.10008.1.2.4.81":
            kwargs["jls_error"] = 3
        ds.compress(syntax, pixels, **kwargs)
    blob = BytesIO()
    ds.save_as(blob, implicit_vr=syntax == "1.2.840.10008.1.2", enforce_file_format=True)
    with requests.Session() as session:
        session.auth = auth
        stored = session.post(f"{url}/instances", data=blob.getvalue(), timeout=30)
        stored.raise_for_status()
        if syntax in ORTHANC_TRANSCODED:
            native_id = stored.json()["ID"]
            modified = session.post(
                f"{url}/instances/{native_id}/modify",
                json={"Transcode": syntax, "Force": True},
                timeout=30,
            )
            modified.raise_for_status()
            session.delete(f"{url}/instances/{native_id}", timeout=30).raise_for_status()
            session.post(f"{url}/instances", data=modified.content, timeout=30).raise_for_status()
            ds = dcmread(BytesIO(modified.content))
            series = CtSeries(
                str(ds.StudyInstanceUID), str(ds.SeriesInstanceUID), str(ds.PatientID), [ds]
            )
    assert str(ds.file_meta.TransferSyntaxUID) == syntax
    return series
