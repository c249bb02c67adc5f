"""Writes of the imaging subsystem: ingest, indexing, study deletion.

Ingest: validate every file (`imaging.validation`), de-identify when the project asks for it
(`imaging.deid`; burned-in-text risk goes to quarantine), refuse studies owned by another
project, store by STOW-RS in batches and index exactly what Orthanc confirmed stored, one
transaction per batch. The API view and the `ingest` command both call `ingest_sources`
and return its summary.
"""

from __future__ import annotations

import contextlib
import logging
import os
import tempfile
from collections.abc import Iterable
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

import requests
from django.conf import settings
from django.db import transaction
from django.db.models import Count
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.uid import ExplicitVRLittleEndian

from imaging.exceptions import ImagingError, OrthancError, OrthancUnavailable
from imaging.models import Instance, Patient, QuarantinedFile, Series, Study, UploadBatch
from imaging.orthanc import OrthancClient
from imaging.records import InstanceRecord
from imaging.signals import study_indexed
from imaging.validation import Limits, Rejection, UploadSource, ValidFile, validate_sources
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


def _prepare(
    *, project: Project, valid_files: list[ValidFile], summary: IngestSummary
) -> list[tuple[str, Dataset]]:
    """De-identify (or quarantine) each valid file; (name, dataset to store) pairs."""
    if not project.deidentify:
        return [(v.name, v.dataset) for v in valid_files]
    deid = _deid_module()
    prepared = []
    for valid in valid_files:
        risk = deid.burned_in_text_risk(valid.dataset)
        if risk:
            quarantine_file(project=project, valid=valid, reason=risk)
            summary.quarantined.append(Rejection(valid.name, f"quarantined: {risk}"))
            continue
        try:
            prepared.append(
                (valid.name, deid.deidentify(valid.dataset, uid_secret=project.uid_secret))
            )
        except deid.DeidentificationError as exc:
            summary.rejected.append(Rejection(valid.name, f"de-identification failed: {exc}"))
    return prepared


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

    Raises:
        OrthancUnavailable: Orthanc cannot be reached; batches stored before that are indexed,
            nothing else is (the index never holds what Orthanc does not).
    """
    summary = IngestSummary()
    valid_files, rejected = validate_sources(sources, limits)
    summary.rejected.extend(rejected)
    client = client or OrthancClient()
    seen: set[str] = set()
    # Pipeline: while Orthanc stores batch N (one request in flight, in a worker thread),
    # this thread de-identifies batch N+1. The database is only touched from this thread.
    pending: Future | None = None
    pending_batch: list[tuple[str, Dataset, InstanceRecord]] = []
    try:
        with ThreadPoolExecutor(max_workers=1, thread_name_prefix="stow") as executor:
            try:
                for chunk in _batches(valid_files):
                    batch = _screen(
                        project=project,
                        prepared=_prepare(project=project, valid_files=chunk, summary=summary),
                        summary=summary,
                        seen=seen,
                    )
                    if pending is not None:
                        future, pending = pending, None
                        _record_stored(project, pending_batch, future.result(), summary)
                    if batch:
                        datasets = [ds for _, ds, _ in batch]
                        pending, pending_batch = executor.submit(_stow, client, datasets), batch
                if pending is not None:
                    future, pending = pending, None
                    _record_stored(project, pending_batch, future.result(), summary)
            finally:
                if pending is not None:  # failed while a batch was in flight: keep what
                    with contextlib.suppress(OrthancError):  # Orthanc confirmed stored
                        _record_stored(project, pending_batch, pending.result(), summary)
    finally:
        summary.study_uids = sorted(set(summary.study_uids))
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


def _screen(
    *,
    project: Project,
    prepared: list[tuple[str, Dataset]],
    summary: IngestSummary,
    seen: set[str],
) -> list[tuple[str, Dataset, InstanceRecord]]:
    """Drop studies of other projects and instances already indexed (or already in this upload)."""
    records = [(name, ds, InstanceRecord.from_dataset(ds)) for name, ds in prepared]
    foreign = set(
        Study.objects.filter(study_instance_uid__in={r.study_instance_uid for _, _, r in records})
        .exclude(project=project)
        .values_list("study_instance_uid", flat=True)
    )
    known = set(
        Instance.objects.filter(
            sop_instance_uid__in=[r.sop_instance_uid for _, _, r in records]
        ).values_list("sop_instance_uid", flat=True)
    )
    to_store = []
    for name, ds, record in records:
        if record.study_instance_uid in foreign:
            summary.rejected.append(
                Rejection(
                    name, f"study {record.study_instance_uid} already belongs to another project"
                )
            )
        elif record.sop_instance_uid in known or record.sop_instance_uid in seen:
            summary.already_present += 1
            summary.study_uids.append(record.study_instance_uid)
        else:
            seen.add(record.sop_instance_uid)
            to_store.append((name, ds, record))
    return to_store


def _record_stored(
    project: Project,
    batch: list[tuple[str, Dataset, InstanceRecord]],
    outcome: tuple[set[str], dict[str, str]],
    summary: IngestSummary,
) -> None:
    """Index what STOW-RS confirmed stored; list what Orthanc refused."""
    stored, failed = outcome
    for name, _, record in batch:
        if record.sop_instance_uid in failed:
            summary.rejected.append(
                Rejection(name, f"Orthanc refused it: {failed[record.sop_instance_uid]}")
            )
    ok = [record for _, _, record in batch if record.sop_instance_uid in stored]
    index_records(project=project, records=ok)
    summary.accepted += len(ok)
    summary.study_uids.extend(r.study_instance_uid for r in ok)


def _batches(
    valid_files: list[ValidFile], *, max_instances: int | None = None, max_bytes: int | None = None
):
    """Split into STOW-RS requests of at most N instances / about M bytes."""
    max_instances = max_instances or settings.INGEST_STOW_BATCH_INSTANCES
    max_bytes = max_bytes or settings.INGEST_STOW_BATCH_BYTES
    batch: list[ValidFile] = []
    size = 0
    for valid in valid_files:
        if batch and (len(batch) >= max_instances or size + len(valid.data) > max_bytes):
            yield batch
            batch, size = [], 0
        batch.append(valid)
        size += len(valid.data)
    if batch:
        yield batch


def _stow(client: OrthancClient, datasets: list[Dataset]) -> tuple[set[str], dict[str, str]]:
    """STOW-RS one batch; (SOPInstanceUIDs stored, {SOPInstanceUID: failure reason})."""
    try:
        dicomweb = client.dicomweb()
        # Fail fast: the caller answers 503 and the user retries (STOW is idempotent).
        dicomweb.set_http_retry_params(retry=False)
        response = dicomweb.store_instances([_ready_for_storage(ds) for ds in datasets])
    except (requests.ConnectionError, requests.Timeout) as exc:
        raise OrthancUnavailable(
            f"Orthanc at {client.url} is unreachable ({type(exc).__name__}); nothing more was "
            "stored, try again later."
        ) from exc
    except requests.HTTPError as exc:
        status = exc.response.status_code if exc.response is not None else "?"
        if status == 503 or (isinstance(status, int) and status >= 500):
            raise OrthancError(f"Orthanc failed to store the instances (HTTP {status}).") from exc
        raise OrthancError(f"Orthanc refused the STOW-RS request (HTTP {status}).") from exc
    stored = {
        str(item.get("ReferencedSOPInstanceUID", ""))
        for item in response.get("ReferencedSOPSequence", [])
    }
    failed = {
        str(
            item.get("ReferencedSOPInstanceUID", "")
        ): f"failure reason {item.get('FailureReason', '?')}"
        for item in response.get("FailedSOPSequence", [])
    }
    return stored - set(failed), failed


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


@transaction.atomic
def index_records(*, project: Project, records: list[InstanceRecord]) -> list[Study]:
    """Upsert Patient/Study/Series/Instance rows for `records` (stored in Orthanc) in `project`.

    Keyed by UIDs, so indexing again changes nothing. Studies that are new or changed get
    `study_indexed` after the commit. Returns the studies touched.
    """
    if not records:
        return []
    patients: dict[str, Patient] = {}
    studies: dict[str, tuple[Study, bool]] = {}
    series_rows: dict[str, Series] = {}
    for record in records:
        patient = patients.get(record.patient_id)
        if patient is None:
            patient, created = Patient.objects.get_or_create(
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
            study = Study.objects.filter(study_instance_uid=record.study_instance_uid).first()
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
            _assign(study, {f: getattr(record, f) for f in _STUDY_FIELDS})
            study.orthanc_id = record.orthanc_study_id or study.orthanc_id
            study.save()
            studies[record.study_instance_uid] = (study, created)
        study = studies[record.study_instance_uid][0]
        if record.series_instance_uid not in series_rows:
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
            )
            for r in records
        ],
        ignore_conflicts=True,
        batch_size=500,
    )
    touched = [study for study, _ in studies.values()]
    for study, created in studies.values():
        changed = update_study_counts(study=study)
        if created or changed:
            _send_indexed(study, created)
    return touched


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
