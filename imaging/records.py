"""One instance's index attributes, read from a pydicom Dataset or from Orthanc's tags JSON.

Ingest (which holds the datasets it stored) and sync (which reads Orthanc's simplified tags)
build the same `InstanceRecord`, so the index is filled one way whatever the source.
"""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass
from typing import Any

from pydicom.datadict import tag_for_keyword
from pydicom.dataset import Dataset
from pydicom.multival import MultiValue

from imaging.orthanc import orthanc_id


def parse_da(value: Any) -> dt.date | None:
    """DICOM DA (YYYYMMDD) -> date; None when empty or invalid."""
    text = str(value or "").strip()
    if len(text) != 8 or not text.isdigit():
        return None
    try:
        return dt.date(int(text[:4]), int(text[4:6]), int(text[6:8]))
    except ValueError:
        return None


def parse_tm(value: Any) -> dt.time | None:
    """DICOM TM (HH[MM[SS[.F{1,6}]]]) -> time; None when empty or invalid."""
    text = str(value or "").strip().replace(":", "")
    main, _, fraction = text.partition(".")
    if not main.isdigit() or len(main) not in (2, 4, 6):
        return None
    try:
        return dt.time(
            int(main[:2]),
            int(main[2:4] or 0),
            min(int(main[4:6] or 0), 59),
            int((fraction + "000000")[:6]) if fraction.isdigit() else 0,
        )
    except ValueError:
        return None


def _numbers(value: Any) -> list[float] | None:
    """A DS/IS multi-value (pydicom MultiValue or Orthanc's 'a\\b' string) -> floats."""
    if value in (None, ""):
        return None
    if isinstance(value, str):
        items = value.split("\\")
    elif isinstance(value, list | tuple | MultiValue):
        items = list(value)
    else:
        items = [value]
    try:
        return [float(v) for v in items]
    except (TypeError, ValueError):
        return None


def _number(value: Any, kind: type = float) -> Any:
    numbers = _numbers(value)
    if not numbers:
        return None
    try:
        return kind(numbers[0])
    except (TypeError, ValueError, OverflowError):
        return None


def _text(value: Any, max_length: int) -> str:
    if value is None:
        return ""
    if isinstance(value, list | tuple | MultiValue):
        value = "\\".join(str(v) for v in value)
    return str(value).strip()[:max_length]


@dataclass
class InstanceRecord:
    """What the index keeps of one instance (and of its series, study and patient)."""

    patient_id: str
    patient_name: str
    patient_birth_date: dt.date | None
    patient_sex: str
    study_instance_uid: str
    study_date: dt.date | None
    study_time: dt.time | None
    study_description: str
    accession_number: str
    series_instance_uid: str
    modality: str
    body_part_examined: str
    series_description: str
    series_number: int | None
    series_date: dt.date | None
    rows: int | None
    columns: int | None
    pixel_spacing: list[float] | None
    slice_thickness: float | None
    spacing_between_slices: float | None
    image_orientation_patient: list[float] | None
    frame_of_reference_uid: str
    manufacturer: str
    manufacturer_model_name: str
    sop_instance_uid: str
    sop_class_uid: str
    instance_number: int | None
    image_position_patient: list[float] | None
    number_of_frames: int
    orthanc_study_id: str = ""
    orthanc_series_id: str = ""
    orthanc_instance_id: str = ""
    # The stored encoding (file meta); blank when unknown (the proxy then asks Orthanc).
    transfer_syntax_uid: str = ""

    @classmethod
    def from_tags(cls, get) -> InstanceRecord:
        """Build from a keyword getter (`get(keyword) -> value or None`)."""
        record = cls(
            patient_id=_text(get("PatientID"), 64),
            patient_name=_text(get("PatientName"), 324),
            patient_birth_date=parse_da(get("PatientBirthDate")),
            patient_sex=_text(get("PatientSex"), 16),
            study_instance_uid=_text(get("StudyInstanceUID"), 64),
            study_date=parse_da(get("StudyDate")),
            study_time=parse_tm(get("StudyTime")),
            study_description=_text(get("StudyDescription"), 256),
            accession_number=_text(get("AccessionNumber"), 64),
            series_instance_uid=_text(get("SeriesInstanceUID"), 64),
            modality=_text(get("Modality"), 16),
            body_part_examined=_text(get("BodyPartExamined"), 64),
            series_description=_text(get("SeriesDescription"), 256),
            series_number=_number(get("SeriesNumber"), int),
            series_date=parse_da(get("SeriesDate")),
            rows=_number(get("Rows"), int),
            columns=_number(get("Columns"), int),
            pixel_spacing=_numbers(get("PixelSpacing")),
            slice_thickness=_number(get("SliceThickness")),
            spacing_between_slices=_number(get("SpacingBetweenSlices")),
            image_orientation_patient=_numbers(get("ImageOrientationPatient")),
            frame_of_reference_uid=_text(get("FrameOfReferenceUID"), 64),
            manufacturer=_text(get("Manufacturer"), 64),
            manufacturer_model_name=_text(get("ManufacturerModelName"), 64),
            sop_instance_uid=_text(get("SOPInstanceUID"), 64),
            sop_class_uid=_text(get("SOPClassUID"), 64),
            instance_number=_number(get("InstanceNumber"), int),
            image_position_patient=_numbers(get("ImagePositionPatient")),
            number_of_frames=_number(get("NumberOfFrames"), int) or 1,
        )
        return record

    @classmethod
    def from_dataset(cls, dataset: Dataset) -> InstanceRecord:
        """From a dataset about to be stored; Orthanc ids computed from the DICOM ids.

        Looks elements up by tag (the keyword -> tag translation of `Dataset.get(keyword)`
        was most of the cost) and converts each of them once.
        """
        get_item = dataset.get

        def get(keyword: str) -> Any:
            element = get_item(_TAGS[keyword])
            return None if element is None else element.value

        record = cls.from_tags(get)
        ids = (record.patient_id, record.study_instance_uid)
        record.orthanc_study_id = orthanc_id(*ids)
        record.orthanc_series_id = orthanc_id(*ids, record.series_instance_uid)
        record.orthanc_instance_id = orthanc_id(
            *ids, record.series_instance_uid, record.sop_instance_uid
        )
        file_meta = getattr(dataset, "file_meta", None)
        record.transfer_syntax_uid = _text(
            file_meta.get("TransferSyntaxUID") if file_meta is not None else None, 64
        )
        return record

    @classmethod
    def from_orthanc(
        cls, tags: dict[str, Any], *, instance_id: str, study_id: str
    ) -> InstanceRecord:
        """From Orthanc's `?simplify` tags of an instance and the ids Orthanc reported."""
        record = cls.from_tags(lambda keyword: tags.get(keyword))
        record.orthanc_instance_id = instance_id
        record.orthanc_study_id = study_id
        record.orthanc_series_id = orthanc_id(
            record.patient_id, record.study_instance_uid, record.series_instance_uid
        )
        return record


#: Tag of each keyword `InstanceRecord.from_tags` reads.
_TAGS = {
    keyword: tag_for_keyword(keyword)
    for keyword in (
        "PatientID PatientName PatientBirthDate PatientSex StudyInstanceUID StudyDate "
        "StudyTime StudyDescription AccessionNumber SeriesInstanceUID Modality "
        "BodyPartExamined SeriesDescription SeriesNumber SeriesDate Rows Columns PixelSpacing "
        "SliceThickness SpacingBetweenSlices ImageOrientationPatient FrameOfReferenceUID "
        "Manufacturer ManufacturerModelName SOPInstanceUID SOPClassUID InstanceNumber "
        "ImagePositionPatient NumberOfFrames"
    ).split()
}
