"""The study index: what Orthanc holds, per project, in the attributes a worklist and the AI need.

Rows are keyed by DICOM UIDs (unique), so indexing the same instance twice changes nothing.
Orthanc is the source of truth for pixel data; the index only ever holds what Orthanc
confirmed stored (ingest) or reported (sync). `SyncState` remembers where the change-feed
sync stopped; `QuarantinedFile` keeps files held back for burned-in-text risk.
"""

from __future__ import annotations

from django.conf import settings
from django.db import models

from projects.models import Project

UID_MAX = 64  # DICOM UI value representation: at most 64 characters.
ORTHANC_ID_MAX = 44  # Orthanc's SHA-1 based identifiers (8-8-8-8-8 hex groups).


class AIStatus(models.TextChoices):
    """Where a study stands with AI inference (set by the worker)."""

    NONE = "none", "None"
    QUEUED = "queued", "Queued"
    RUNNING = "running", "Running"
    DONE = "done", "Done"
    FAILED = "failed", "Failed"


class Patient(models.Model):
    """A patient as seen inside one project (de-identified when the project asks for it)."""

    project = models.ForeignKey(Project, on_delete=models.CASCADE, related_name="patients")
    patient_id = models.CharField(max_length=64, blank=True)
    patient_name = models.CharField(max_length=324, blank=True)
    patient_birth_date = models.DateField(null=True, blank=True)
    patient_sex = models.CharField(max_length=16, blank=True)

    class Meta:
        ordering = ["project", "patient_id"]
        constraints = [
            models.UniqueConstraint(
                fields=["project", "patient_id"], name="one_patient_id_per_project"
            ),
        ]

    def __str__(self) -> str:
        return f"{self.project.slug}:{self.patient_id}"


class Study(models.Model):
    """One DICOM study stored in Orthanc, belonging to exactly one project."""

    project = models.ForeignKey(Project, on_delete=models.CASCADE, related_name="studies")
    patient = models.ForeignKey(Patient, on_delete=models.PROTECT, related_name="studies")
    study_instance_uid = models.CharField(max_length=UID_MAX, unique=True)
    orthanc_id = models.CharField(max_length=ORTHANC_ID_MAX, blank=True, db_index=True)
    study_date = models.DateField(null=True, blank=True)
    study_time = models.TimeField(null=True, blank=True)
    study_description = models.CharField(max_length=256, blank=True)
    accession_number = models.CharField(max_length=64, blank=True)
    # Comma-separated, sorted, e.g. "CT,SEG" (ModalitiesInStudy); filtered with contains.
    modalities_in_study = models.CharField(max_length=128, blank=True)
    number_of_series = models.PositiveIntegerField(default=0)
    number_of_instances = models.PositiveIntegerField(default=0)
    ai_status = models.CharField(max_length=16, choices=AIStatus.choices, default=AIStatus.NONE)
    created_at = models.DateTimeField(auto_now_add=True)
    updated_at = models.DateTimeField(auto_now=True)

    class Meta:
        ordering = ["-study_date", "-id"]
        verbose_name_plural = "studies"
        indexes = [
            models.Index(fields=["project", "study_date"], name="study_project_date"),
            models.Index(fields=["project", "created_at"], name="study_project_created"),
            models.Index(fields=["project", "ai_status"], name="study_project_ai_status"),
            models.Index(
                fields=["project", "modalities_in_study"], name="study_project_modalities"
            ),
            models.Index(fields=["project", "accession_number"], name="study_project_accession"),
        ]

    def __str__(self) -> str:
        return self.study_instance_uid

    @property
    def modalities(self) -> list[str]:
        return [m for m in self.modalities_in_study.split(",") if m]


class Series(models.Model):
    """One series of a study, with the geometry the AI and viewer need."""

    study = models.ForeignKey(Study, on_delete=models.CASCADE, related_name="series")
    series_instance_uid = models.CharField(max_length=UID_MAX, unique=True)
    orthanc_id = models.CharField(max_length=ORTHANC_ID_MAX, blank=True, db_index=True)
    modality = models.CharField(max_length=16, blank=True, db_index=True)
    body_part_examined = models.CharField(max_length=64, blank=True)
    series_description = models.CharField(max_length=256, blank=True)
    series_number = models.IntegerField(null=True, blank=True)
    series_date = models.DateField(null=True, blank=True)
    number_of_instances = models.PositiveIntegerField(default=0)
    rows = models.PositiveIntegerField(null=True, blank=True)
    columns = models.PositiveIntegerField(null=True, blank=True)
    pixel_spacing = models.JSONField(null=True, blank=True)  # [row, column] mm
    slice_thickness = models.FloatField(null=True, blank=True)
    spacing_between_slices = models.FloatField(null=True, blank=True)
    image_orientation_patient = models.JSONField(null=True, blank=True)  # 6 direction cosines
    frame_of_reference_uid = models.CharField(max_length=UID_MAX, blank=True)
    manufacturer = models.CharField(max_length=64, blank=True)
    manufacturer_model_name = models.CharField(max_length=64, blank=True)
    created_at = models.DateTimeField(auto_now_add=True)
    updated_at = models.DateTimeField(auto_now=True)

    class Meta:
        ordering = ["study", "series_number", "id"]
        verbose_name_plural = "series"

    def __str__(self) -> str:
        return self.series_instance_uid


class Instance(models.Model):
    """One SOP instance (image) of a series."""

    series = models.ForeignKey(Series, on_delete=models.CASCADE, related_name="instances")
    sop_instance_uid = models.CharField(max_length=UID_MAX, unique=True)
    sop_class_uid = models.CharField(max_length=UID_MAX)
    instance_number = models.IntegerField(null=True, blank=True)
    orthanc_id = models.CharField(max_length=ORTHANC_ID_MAX, blank=True)
    image_position_patient = models.JSONField(null=True, blank=True)  # [x, y, z] LPS mm
    number_of_frames = models.PositiveIntegerField(default=1)
    # The stored file's TransferSyntaxUID (file meta 0002,0010); blank = not known yet. The
    # DICOMweb proxy labels raw frames with it (and fills it from Orthanc on first use).
    transfer_syntax_uid = models.CharField(max_length=UID_MAX, blank=True)

    class Meta:
        ordering = ["series", "instance_number", "id"]

    def __str__(self) -> str:
        return self.sop_instance_uid


def _quarantine_upload_to(instance: QuarantinedFile, filename: str) -> str:
    return f"quarantine/{instance.project.slug}/{filename}"


class QuarantinedFile(models.Model):
    """A file held back from Orthanc (e.g. burned-in text risk); visible to project admins."""

    project = models.ForeignKey(Project, on_delete=models.CASCADE, related_name="quarantined_files")
    reason = models.TextField()
    original_name = models.CharField(max_length=512)
    sha256 = models.CharField(max_length=64, db_index=True)
    # Relative to MEDIA_ROOT: quarantine/<project>/<sha256>.dcm
    stored_path = models.CharField(max_length=512)
    created_at = models.DateTimeField(auto_now_add=True)

    class Meta:
        ordering = ["-created_at", "-id"]
        constraints = [
            models.UniqueConstraint(fields=["project", "sha256"], name="one_quarantine_per_file"),
        ]

    def __str__(self) -> str:
        return f"{self.original_name} ({self.reason})"


class UploadBatch(models.Model):
    """One ingest call (API upload or CLI run) and its summary, for audit."""

    class Source(models.TextChoices):
        API = "api", "API upload"
        CLI = "cli", "ingest command"

    project = models.ForeignKey(Project, on_delete=models.CASCADE, related_name="upload_batches")
    uploaded_by = models.ForeignKey(
        settings.AUTH_USER_MODEL, null=True, blank=True, on_delete=models.SET_NULL
    )
    source = models.CharField(max_length=8, choices=Source.choices)
    accepted = models.PositiveIntegerField(default=0)
    already_present = models.PositiveIntegerField(default=0)
    rejected = models.PositiveIntegerField(default=0)
    quarantined = models.PositiveIntegerField(default=0)
    summary = models.JSONField(default=dict)
    created_at = models.DateTimeField(auto_now_add=True)

    class Meta:
        ordering = ["-created_at", "-id"]
        verbose_name_plural = "upload batches"

    def __str__(self) -> str:
        return f"{self.project.slug} {self.source} {self.created_at:%Y-%m-%d %H:%M}"


class SyncState(models.Model):
    """The last Orthanc change sequence number the sync has processed (one row per feed)."""

    name = models.CharField(max_length=64, unique=True)
    last_seq = models.BigIntegerField(default=0)
    updated_at = models.DateTimeField(auto_now=True)

    def __str__(self) -> str:
        return f"{self.name}@{self.last_seq}"
