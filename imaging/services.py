"""Writes of the imaging subsystem: ingest, indexing, study deletion.

Ingest: validate every file (`imaging.validation`), de-identify when the project asks for it
(`imaging.deid`; burned-in-text risk goes to quarantine), refuse studies owned by another
project, store by STOW-RS in batches and index exactly what Orthanc confirmed stored, one
transaction per batch. The API view and the `ingest` command both call `ingest_sources`
and return its summary.
"""

from __future__ import annotations

import collections
import io
import logging
import os
import struct
import tempfile
from collections.abc import Iterable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

import pydicom
from django.conf import settings
from django.db import transaction
from django.db.models import Count
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.filebase import DicomBytesIO
from pydicom.filewriter import write_dataset, write_file_meta_info
from pydicom.uid import UID, ExplicitVRLittleEndian

from imaging.exceptions import ImagingError, OrthancError
from imaging.models import Instance, Patient, QuarantinedFile, Series, Study, UploadBatch
from imaging.orthanc import OrthancClient
from imaging.records import InstanceRecord
from imaging.signals import study_indexed
from imaging.validation import (
    PIXEL_DATA,
    FileRejected,
    Limits,
    Rejection,
    UploadSource,
    ValidFile,
    expand_sources,
    validate_dicom,
)
from projects.models import Project

logger = logging.getLogger(__name__)


@dataclass
class IngestSummary:
    """What one ingest did: counts, the studies/series formed, every rejected file and why."""

    accepted: int = 0
    already_present: int = 0
    rejected: list[Rejection] = field(default_factory=list)
    quarantined: list[Rejection] = field(default_factory=list)
    study_uids: list[str] = field(default_factory=list)

    def as_dict(self) -> dict:
        studies = (
            Study.objects.filter(study_instance_uid__in=self.study_uids)
            .select_related("patient")
            .prefetch_related("series")
            .order_by("study_instance_uid")
        )
        return {
            "accepted": self.accepted,
            "already_present": self.already_present,
            "rejected_count": len(self.rejected),
            "quarantined_count": len(self.quarantined),
            "studies": [
                {
                    "study_instance_uid": study.study_instance_uid,
                    "patient_id": study.patient.patient_id,
                    "study_description": study.study_description,
                    "modalities_in_study": study.modalities,
                    "number_of_instances": study.number_of_instances,
                    "series": [
                        {
                            "series_instance_uid": series.series_instance_uid,
                            "modality": series.modality,
                            "series_description": series.series_description,
                            "number_of_instances": series.number_of_instances,
                        }
                        for series in study.series.all()
                    ],
                }
                for study in studies
            ],
            "rejected": [r.as_dict() for r in self.rejected],
            "quarantined": [q.as_dict() for q in self.quarantined],
        }


# -- ingest -----------------------------------------------------------------------------


def _deid_module():
    try:
        from imaging import deid
    except ImportError as exc:  # pragma: no cover - only while deid.py is missing
        raise ImagingError(
            "De-identification is on for this project but imaging.deid is not available.",
        ) from exc
    return deid


def _ready_for_storage(dataset: Dataset) -> Dataset:
    """Preamble and file meta consistent with the dataset (else WADO-RS later fails)."""
    if getattr(dataset, "preamble", None) is None:
        dataset.preamble = b"\0" * 128
    meta = getattr(dataset, "file_meta", None)
    if meta is None:
        meta = FileMetaDataset()
        meta.TransferSyntaxUID = ExplicitVRLittleEndian
        dataset.file_meta = meta
    meta.MediaStorageSOPClassUID = dataset.SOPClassUID
    meta.MediaStorageSOPInstanceUID = dataset.SOPInstanceUID
    return dataset


def _encode(dataset: Dataset) -> bytes:
    """The DICOM Part 10 bytes to store: written once, sent as they are by STOW-RS.

    The same bytes as `pydicom.dcmwrite` (tested), written with pydicom's own
    `write_file_meta_info` and `write_dataset`: `dcmwrite` first deep-copies the file meta
    and re-derives the encoding, a quarter of the encoding time of a CT slice. Anything
    unusual (a private, unknown or deflated transfer syntax, command or file meta elements
    in the dataset) goes through `dcmwrite` itself, which refuses what it must.
    """
    dataset = _ready_for_storage(dataset)
    meta = dataset.file_meta
    syntax = UID(str(meta.get("TransferSyntaxUID") or ""))
    if (
        not syntax.is_transfer_syntax
        or syntax.is_private
        or syntax.is_deflated
        or any(tag >> 16 in (0x0000, 0x0002) for tag in dataset.keys())  # noqa: SIM118
    ):
        with io.BytesIO() as buffer:
            pydicom.dcmwrite(buffer, dataset)
            return buffer.getvalue()
    fp = DicomBytesIO()
    fp.write(dataset.preamble)
    fp.write(b"DICM")
    write_file_meta_info(fp, meta, enforce_standard=False)
    fp.is_implicit_VR = syntax.is_implicit_VR
    fp.is_little_endian = syntax.is_little_endian
    if PIXEL_DATA in dataset:  # as dcmwrite: encapsulated pixel data has undefined length
        dataset[PIXEL_DATA].is_undefined_length = syntax.is_compressed
    write_dataset(fp, dataset)
    return fp.getvalue()


def _meta_matches(dataset: Dataset) -> bool:
    """The file's own meta names its SOP Class and Instance (so its bytes can go as they are)."""
    meta = dataset.file_meta
    return meta.get("MediaStorageSOPClassUID") == dataset.get("SOPClassUID") and meta.get(
        "MediaStorageSOPInstanceUID"
    ) == dataset.get("SOPInstanceUID")


def quarantine_file(*, project: Project, valid: ValidFile, reason: str) -> QuarantinedFile:
    """Keep the original bytes under MEDIA_ROOT/quarantine/<project>/ for admins to review."""
    sha = valid.sha256
    relative = Path("quarantine") / project.slug / f"{sha}.dcm"
    target = Path(settings.MEDIA_ROOT) / relative
    target.parent.mkdir(parents=True, exist_ok=True)
    if not target.exists():
        fd, tmp = tempfile.mkstemp(dir=target.parent, suffix=".part")
        with os.fdopen(fd, "wb") as fh:
            fh.write(valid.data)
        os.replace(tmp, target)
    quarantined, _ = QuarantinedFile.objects.get_or_create(
        project=project,
        sha256=sha,
        defaults={
            "reason": reason,
            "original_name": valid.name[-512:],
            "stored_path": str(relative),
        },
    )
    return quarantined


@dataclass
class _Prepared:
    """One file ready to store: its name, the bytes to send and its index record."""

    name: str
    payload: bytes
    record: InstanceRecord


@dataclass
class _Ingest:
    """State of one `ingest_sources` call (kept on one thread, the caller's)."""

    project: Project
    limits: Limits
    summary: IngestSummary
    #: Rejections by validation, listed first in the summary (input order).
    invalid: list[Rejection] = field(default_factory=list)
    #: SOPInstanceUIDs sent (or found indexed) in this upload.
    seen: set[str] = field(default_factory=set)
    #: StudyInstanceUID -> (study, created by this upload) of the studies indexed or changed.
    indexed: dict[str, tuple[Study, bool]] = field(default_factory=dict)
    #: Files sent (or queued) when Orthanc failed, not confirmed stored.
    unconfirmed: list[str] = field(default_factory=list)

    def prepare(self, name: str, data: bytes) -> _Prepared | None:
        """Validate, screen for burned-in text, de-identify and encode one file.

        The file is parsed once (`validate_dicom`); de-identification and the index record
        use that dataset; the result is encoded once. Pixel data is neither decoded nor
        copied. None when the file is rejected or quarantined (the summary says which).
        """
        try:
            valid = validate_dicom(name, data, self.limits)
        except FileRejected as exc:
            self.invalid.append(Rejection(name, str(exc)))
            return None
        dataset = valid.dataset
        try:
            if self.project.deidentify:
                deid = _deid_module()
                risk = deid.burned_in_text_risk(dataset)
                if risk:
                    quarantine_file(project=self.project, valid=valid, reason=risk)
                    self.summary.quarantined.append(Rejection(name, f"quarantined: {risk}"))
                    return None
                try:
                    dataset = deid.deidentify(dataset, uid_secret=self.project.uid_secret)
                except deid.DeidentificationError as exc:
                    self.summary.rejected.append(
                        Rejection(name, f"de-identification failed: {exc}")
                    )
                    return None
                payload = _encode(dataset)
            elif _meta_matches(dataset):
                payload = data  # validated as it is, stored as it is
            else:
                payload = _encode(dataset)
        except (ValueError, TypeError, struct.error, OverflowError) as exc:
            # A value pydicom parses lazily (first when writing) can still be malformed.
            self.summary.rejected.append(
                Rejection(name, f"cannot be encoded for storage ({type(exc).__name__}: {exc})")
            )
            return None
        return _Prepared(name, payload, InstanceRecord.from_dataset(dataset))

    def prepared(self, sources: Iterable[UploadSource]) -> Iterator[_Prepared]:
        for item in expand_sources(sources, self.limits):
            if isinstance(item, Rejection):
                self.invalid.append(item)
                continue
            prepared = self.prepare(*item)
            if prepared is not None:
                yield prepared

    def screen(self, batch: list[_Prepared]) -> list[_Prepared]:
        """Drop studies of other projects and instances already indexed (or in this upload)."""
        summary = self.summary
        foreign = set(
            Study.objects.filter(
                study_instance_uid__in={p.record.study_instance_uid for p in batch}
            )
            .exclude(project=self.project)
            .values_list("study_instance_uid", flat=True)
        )
        known = set(
            Instance.objects.filter(
                sop_instance_uid__in=[p.record.sop_instance_uid for p in batch]
            ).values_list("sop_instance_uid", flat=True)
        )
        to_store = []
        for item in batch:
            record = item.record
            if record.study_instance_uid in foreign:
                summary.rejected.append(
                    Rejection(
                        item.name,
                        f"study {record.study_instance_uid} already belongs to another project",
                    )
                )
            elif record.sop_instance_uid in known or record.sop_instance_uid in self.seen:
                summary.already_present += 1
                summary.study_uids.append(record.study_instance_uid)
            else:
                self.seen.add(record.sop_instance_uid)
                to_store.append(item)
        return to_store

    def record_stored(self, batch: list[_Prepared], response: Dataset) -> None:
        """Index what STOW-RS confirmed stored (one transaction); list what Orthanc refused."""
        stored = {
            str(item.get("ReferencedSOPInstanceUID", ""))
            for item in response.get("ReferencedSOPSequence", [])
        }
        failed = {
            str(item.get("ReferencedSOPInstanceUID", "")): item.get("FailureReason", "?")
            for item in response.get("FailedSOPSequence", [])
        }
        ok = []
        for item in batch:
            uid = item.record.sop_instance_uid
            if uid in failed:
                reason = f"Orthanc refused it: failure reason {failed[uid]}"
                self.summary.rejected.append(Rejection(item.name, reason))
            elif uid in stored:
                ok.append(item.record)
            else:
                reason = "Orthanc did not confirm storing it; upload it again"
                self.summary.rejected.append(Rejection(item.name, reason))
        for study, created, changed in _index_records(project=self.project, records=ok):
            if changed:
                was_created = self.indexed.get(study.study_instance_uid, (study, False))[1]
                self.indexed[study.study_instance_uid] = (study, was_created or created)
        self.summary.accepted += len(ok)
        self.summary.study_uids.extend(r.study_instance_uid for r in ok)


def ingest_sources(
    *,
    project: Project,
    sources: Iterable[UploadSource],
    uploaded_by=None,
    source: str = UploadBatch.Source.API,
    limits: Limits | None = None,
    client: OrthancClient | None = None,
) -> IngestSummary:
    """Validate, de-identify, store (STOW-RS) and index `sources` into `project`.

    A pipeline on two threads: this one reads, validates, de-identifies and encodes the
    files of batch N+1 (and indexes batch N) while a second thread sends batch N to
    Orthanc. At most two batches wait for or are in a request, so memory stays bounded
    by the batch size, whatever the size of the upload. Every file is validated before
    it is stored; the index and its `study_indexed` signals only ever follow what Orthanc
    confirmed stored. Each study new or changed by the upload gets one `study_indexed`
    once its last batch is indexed (after the commit).

    Raises:
        OrthancUnavailable, OrthancError: Orthanc cannot be reached or failed a request;
            batches it confirmed before that are indexed, nothing else is (the index never
            holds what Orthanc does not). The error's `extra` carries the summary so far
            and `not_stored`, the files that were not confirmed stored.
    """
    summary = IngestSummary()
    state = _Ingest(project=project, limits=limits or Limits.from_settings(), summary=summary)
    client = client or OrthancClient()
    queued: collections.deque[tuple[Future, list[_Prepared]]] = collections.deque()
    try:
        with ThreadPoolExecutor(max_workers=1, thread_name_prefix="stow") as executor:
            try:
                for chunk in _batches(state.prepared(sources)):
                    batch = state.screen(chunk)
                    if batch:
                        payloads = [item.payload for item in batch]
                        queued.append((executor.submit(client.store_instances, payloads), batch))
                    # One batch waits behind the one in flight, so Orthanc never idles; the
                    # older one is indexed while Orthanc stores the newer.
                    while len(queued) > 1:
                        _collect(state, queued)
                while queued:
                    _collect(state, queued)
            except BaseException as exc:
                # Orthanc failed: what is queued would fail too, send nothing more. Anything
                # else: let the batches already handed to Orthanc finish and index them.
                _settle(state, queued, cancel=isinstance(exc, OrthancError))
                if isinstance(exc, ImagingError):
                    summary.rejected[:0] = state.invalid
                    state.invalid = []
                    exc.extra = {**exc.extra, **summary.as_dict(), "not_stored": state.unconfirmed}
                raise
    finally:
        summary.rejected[:0] = state.invalid
        summary.study_uids = sorted(set(summary.study_uids))
        for study, created in state.indexed.values():
            _send_indexed(study, created)
        UploadBatch.objects.create(
            project=project,
            uploaded_by=uploaded_by if getattr(uploaded_by, "pk", None) else None,
            source=source,
            accepted=summary.accepted,
            already_present=summary.already_present,
            rejected=len(summary.rejected),
            quarantined=len(summary.quarantined),
            summary={
                "rejected": [r.as_dict() for r in summary.rejected],
                "quarantined": [q.as_dict() for q in summary.quarantined],
                "study_uids": summary.study_uids,
            },
        )
    return summary


def _collect(state: _Ingest, queued: collections.deque[tuple[Future, list[_Prepared]]]) -> None:
    """Wait for the oldest queued batch and index it; on failure it stays queued."""
    future, batch = queued[0]
    response = future.result()
    queued.popleft()
    state.record_stored(batch, response)


def _settle(
    state: _Ingest, queued: collections.deque[tuple[Future, list[_Prepared]]], *, cancel: bool
) -> None:
    """After a failure: index the queued batches Orthanc confirmed; with `cancel`, those not
    yet sent are not sent."""
    while queued:
        future, batch = queued.popleft()
        if cancel and future.cancel():
            state.unconfirmed.extend(item.name for item in batch)
            continue
        try:
            response = future.result()
        except Exception:  # this batch failed too (or was the failure): nothing to index
            state.unconfirmed.extend(item.name for item in batch)
            continue
        state.record_stored(batch, response)


def _batches(
    prepared: Iterable[_Prepared], *, max_instances: int | None = None, max_bytes: int | None = None
) -> Iterator[list[_Prepared]]:
    """Split into STOW-RS requests of at most N instances / about M bytes (of the payloads)."""
    max_instances = max_instances or settings.INGEST_STOW_BATCH_INSTANCES
    max_bytes = max_bytes or settings.INGEST_STOW_BATCH_BYTES
    batch: list[_Prepared] = []
    size = 0
    for item in prepared:
        if batch and size + len(item.payload) > max_bytes:
            yield batch
            batch, size = [], 0
        batch.append(item)
        size += len(item.payload)
        if len(batch) >= max_instances:
            yield batch
            batch, size = [], 0
    if batch:
        yield batch


# -- index ------------------------------------------------------------------------------

_SERIES_FIELDS = (
    "modality",
    "body_part_examined",
    "series_description",
    "series_number",
    "series_date",
    "rows",
    "columns",
    "pixel_spacing",
    "slice_thickness",
    "spacing_between_slices",
    "image_orientation_patient",
    "frame_of_reference_uid",
    "manufacturer",
    "manufacturer_model_name",
)
_STUDY_FIELDS = ("study_date", "study_time", "study_description", "accession_number")


def _assign(obj, values: dict) -> bool:
    changed = False
    for name, value in values.items():
        if value in (None, "") and getattr(obj, name) not in (None, ""):
            continue  # keep what another instance of the same series/study told us
        if getattr(obj, name) != value:
            setattr(obj, name, value)
            changed = True
    return changed


def index_records(*, project: Project, records: list[InstanceRecord]) -> list[Study]:
    """Upsert Patient/Study/Series/Instance rows for `records` (stored in Orthanc) in `project`.

    Keyed by UIDs, so indexing again changes nothing. Studies that are new or changed get
    `study_indexed` after the commit. Returns the studies touched.
    """
    with transaction.atomic():
        touched = _index_records(project=project, records=records)
        for study, created, changed in touched:
            if changed:
                _send_indexed(study, created)
    return [study for study, _, _ in touched]


@transaction.atomic
def _index_records(
    *, project: Project, records: list[InstanceRecord]
) -> list[tuple[Study, bool, bool]]:
    """`index_records` without signals: (study, created, created or changed) per study.

    A few queries per batch whatever its size: patients, studies and series are read in
    bulk, instances written in bulk, and only rows that are new or changed are saved.
    """
    if not records:
        return []
    patients = {
        p.patient_id: p
        for p in Patient.objects.filter(
            project=project, patient_id__in={r.patient_id for r in records}
        )
    }
    existing_studies = {
        s.study_instance_uid: s
        for s in Study.objects.filter(
            study_instance_uid__in={r.study_instance_uid for r in records}
        )
    }
    existing_series = {
        s.series_instance_uid: s
        for s in Series.objects.filter(
            series_instance_uid__in={r.series_instance_uid for r in records}
        )
    }
    studies: dict[str, tuple[Study, bool]] = {}
    series_rows: dict[str, Series] = {}
    for record in records:
        patient = patients.get(record.patient_id)
        if patient is None:
            patient, _ = Patient.objects.get_or_create(
                project=project,
                patient_id=record.patient_id,
                defaults={
                    "patient_name": record.patient_name,
                    "patient_birth_date": record.patient_birth_date,
                    "patient_sex": record.patient_sex,
                },
            )
            patients[record.patient_id] = patient
        if record.study_instance_uid not in studies:
            study = existing_studies.get(record.study_instance_uid)
            created = study is None
            if created:
                study = Study(
                    project=project,
                    patient=patient,
                    study_instance_uid=record.study_instance_uid,
                    orthanc_id=record.orthanc_study_id,
                )
            elif study.project_id != project.pk:
                raise ImagingError(
                    f"study {record.study_instance_uid} already belongs to another project"
                )
            changed = _assign(study, {f: getattr(record, f) for f in _STUDY_FIELDS})
            if record.orthanc_study_id and study.orthanc_id != record.orthanc_study_id:
                study.orthanc_id = record.orthanc_study_id
                changed = True
            if created or changed:
                study.save()
            studies[record.study_instance_uid] = (study, created)
        study = studies[record.study_instance_uid][0]
        if record.series_instance_uid not in series_rows:
            series = existing_series.get(record.series_instance_uid)
            if series is None:
                series, _ = Series.objects.get_or_create(
                    series_instance_uid=record.series_instance_uid,
                    defaults={"study": study, "orthanc_id": record.orthanc_series_id},
                )
            if _assign(series, {f: getattr(record, f) for f in _SERIES_FIELDS}) or (
                record.orthanc_series_id and series.orthanc_id != record.orthanc_series_id
            ):
                series.orthanc_id = record.orthanc_series_id or series.orthanc_id
                series.save()
            series_rows[record.series_instance_uid] = series
    Instance.objects.bulk_create(
        [
            Instance(
                series=series_rows[r.series_instance_uid],
                sop_instance_uid=r.sop_instance_uid,
                sop_class_uid=r.sop_class_uid,
                instance_number=r.instance_number,
                orthanc_id=r.orthanc_instance_id,
                image_position_patient=r.image_position_patient,
                number_of_frames=r.number_of_frames,
                transfer_syntax_uid=r.transfer_syntax_uid,
            )
            for r in records
        ],
        ignore_conflicts=True,
        batch_size=500,
    )
    return [
        (study, created, update_study_counts(study=study) or created)
        for study, created in studies.values()
    ]


def update_study_counts(*, study: Study) -> bool:
    """Recompute series/instance counts and ModalitiesInStudy; True if anything changed."""
    counts = dict(
        Instance.objects.filter(series__study=study)
        .values_list("series_id")
        .annotate(n=Count("id"))
        .values_list("series_id", "n")
    )
    modalities = set()
    for series in Series.objects.filter(study=study):
        n = counts.get(series.pk, 0)
        if series.number_of_instances != n:
            series.number_of_instances = n
            series.save(update_fields=["number_of_instances", "updated_at"])
        if series.modality:
            modalities.add(series.modality)
    values = {
        "number_of_series": len(counts),
        "number_of_instances": sum(counts.values()),
        "modalities_in_study": ",".join(sorted(modalities)),
    }
    changed = any(getattr(study, k) != v for k, v in values.items())
    if changed:
        for k, v in values.items():
            setattr(study, k, v)
        study.save(update_fields=[*values, "updated_at"])
    return changed


def _send_indexed(study: Study, created: bool) -> None:
    transaction.on_commit(lambda: study_indexed.send(sender=Study, study=study, created=created))


# -- delete -----------------------------------------------------------------------------


def study_delete(*, study: Study, client: OrthancClient | None = None) -> None:
    """Delete a study from Orthanc, then from the index (with its series and instances).

    Orthanc first: if it fails (unreachable, error) nothing changes and the error propagates
    (503/502). A study Orthanc no longer has is simply removed from the index.
    """
    client = client or OrthancClient()
    orthanc_study_id = study.orthanc_id or client.lookup_study(study.study_instance_uid)
    if orthanc_study_id:
        client.delete_study(orthanc_study_id)
    remove_study_from_index(study=study)


@transaction.atomic
def remove_study_from_index(*, study: Study) -> None:
    """Delete the study's index rows, and its patient when no other study refers to it."""
    patient_id = study.patient_id
    study.delete()
    Patient.objects.filter(pk=patient_id, studies__isnull=True).delete()
