"""AI findings, radiologists' feedback on them (with history) and findings they add.

A job writes its findings exactly once: `Finding` is unique per (job, index) and the
worker writes all of them in the transaction that moves the job to succeeded.
Each radiologist has one current verdict per finding (unique); every change is also
kept as a `FeedbackHistory` row.
"""

from __future__ import annotations

from django.conf import settings
from django.db import models
from django.db.models import Q

from ai_engine.registry.models import TASK_MODALITY, ModelTask
from projects.models import Project

#: Grades the grading model and radiologists may give (WHO-like grade 1-3).
GRADES = (1, 2, 3)


class FindingKind(models.TextChoices):
    NODULE = "nodule", "Nodule"
    GRADE = "grade", "Tumor grade"


#: The task whose models make each kind of finding (and whose labels it is).
KIND_TASK: dict[str, str] = {
    FindingKind.NODULE: ModelTask.NODULE_DETECTION,
    FindingKind.GRADE: ModelTask.TUMOR_GRADING,
}
#: The modality of the series each kind of finding is read on: its task's
#: (`TASK_MODALITY`). A radiologist adds a missed finding on a series of that modality, as
#: the viewer offers it.
KIND_MODALITY: dict[str, str] = {kind: TASK_MODALITY[task] for kind, task in KIND_TASK.items()}


class Finding(models.Model):
    """One thing a model found in a series: a nodule (position, size, score) or a grade."""

    project = models.ForeignKey(Project, on_delete=models.CASCADE, related_name="findings")
    study = models.ForeignKey("imaging.Study", on_delete=models.CASCADE, related_name="findings")
    series = models.ForeignKey("imaging.Series", on_delete=models.CASCADE, related_name="findings")
    job = models.ForeignKey("registry.Job", on_delete=models.CASCADE, related_name="findings")
    model_version = models.ForeignKey(
        "registry.ModelVersion", on_delete=models.PROTECT, related_name="findings"
    )
    index = models.PositiveIntegerField(help_text="Position in the job's output (0-based).")
    kind = models.CharField(max_length=16, choices=FindingKind.choices)
    center_lps_mm = models.JSONField(null=True, blank=True)  # [x, y, z] patient LPS mm
    center_voxel = models.JSONField(null=True, blank=True)  # [i, j, k] in the series grid
    diameter_mm = models.FloatField(null=True, blank=True)
    score = models.FloatField(null=True, blank=True)
    grade = models.PositiveSmallIntegerField(null=True, blank=True)
    class_probabilities = models.JSONField(null=True, blank=True)  # {"1": p, "2": p, "3": p}
    # Relative to MEDIA_ROOT; NIfTI on the series grid; served by an authorized endpoint.
    heatmap_path = models.CharField(max_length=512, blank=True)
    mask_path = models.CharField(max_length=512, blank=True)
    created_at = models.DateTimeField(auto_now_add=True)

    class Meta:
        ordering = ["study", "job", "index"]
        constraints = [
            models.UniqueConstraint(fields=["job", "index"], name="one_finding_per_job_index"),
            models.CheckConstraint(
                condition=Q(score__isnull=True) | (Q(score__gte=0) & Q(score__lte=1)),
                name="finding_score_0_1",
            ),
            models.CheckConstraint(
                condition=Q(diameter_mm__isnull=True) | Q(diameter_mm__gt=0),
                name="finding_diameter_positive",
            ),
        ]
        indexes = [models.Index(fields=["project", "study"], name="finding_project_study")]

    def __str__(self) -> str:
        return f"{self.kind} #{self.index} of job {self.job_id}"


class Verdict(models.TextChoices):
    ACCEPT = "accept", "Accept"
    REJECT = "reject", "Reject"
    CORRECT = "correct", "Correct"


class FeedbackFields(models.Model):
    """What a radiologist said about a finding (shared by the current row and its history)."""

    verdict = models.CharField(max_length=16, choices=Verdict.choices)
    corrected_center_lps_mm = models.JSONField(null=True, blank=True)
    corrected_diameter_mm = models.FloatField(null=True, blank=True)
    corrected_grade = models.PositiveSmallIntegerField(null=True, blank=True)
    comment = models.TextField(blank=True)
    time_spent_s = models.FloatField(null=True, blank=True)

    class Meta:
        abstract = True


class FindingFeedback(FeedbackFields):
    """The current verdict of one radiologist on one finding."""

    finding = models.ForeignKey(Finding, on_delete=models.CASCADE, related_name="feedback")
    radiologist = models.ForeignKey(
        settings.AUTH_USER_MODEL, on_delete=models.CASCADE, related_name="finding_feedback"
    )
    created_at = models.DateTimeField(auto_now_add=True)
    updated_at = models.DateTimeField(auto_now=True)

    class Meta:
        ordering = ["-updated_at", "-id"]
        constraints = [
            models.UniqueConstraint(
                fields=["finding", "radiologist"], name="one_verdict_per_radiologist"
            ),
            models.CheckConstraint(
                condition=Q(time_spent_s__isnull=True) | Q(time_spent_s__gte=0),
                name="feedback_time_spent_nonnegative",
            ),
        ]

    def __str__(self) -> str:
        return f"{self.radiologist} {self.verdict} finding {self.finding_id}"


class FeedbackHistory(FeedbackFields):
    """Every verdict ever given (the current one included), in order."""

    feedback = models.ForeignKey(FindingFeedback, on_delete=models.CASCADE, related_name="history")
    recorded_at = models.DateTimeField(auto_now_add=True)

    class Meta:
        ordering = ["feedback", "recorded_at", "id"]
        verbose_name_plural = "feedback history"

    def __str__(self) -> str:
        return f"{self.verdict} at {self.recorded_at:%Y-%m-%d %H:%M:%S}"


class AddedFinding(models.Model):
    """A finding the model missed, added by a radiologist (ground truth for training)."""

    project = models.ForeignKey(Project, on_delete=models.CASCADE, related_name="added_findings")
    study = models.ForeignKey(
        "imaging.Study", on_delete=models.CASCADE, related_name="added_findings"
    )
    series = models.ForeignKey(
        "imaging.Series", on_delete=models.CASCADE, related_name="added_findings"
    )
    radiologist = models.ForeignKey(
        settings.AUTH_USER_MODEL, on_delete=models.CASCADE, related_name="added_findings"
    )
    kind = models.CharField(max_length=16, choices=FindingKind.choices)
    center_lps_mm = models.JSONField(null=True, blank=True)
    diameter_mm = models.FloatField(null=True, blank=True)
    grade = models.PositiveSmallIntegerField(null=True, blank=True)
    comment = models.TextField(blank=True)
    time_spent_s = models.FloatField(null=True, blank=True)
    created_at = models.DateTimeField(auto_now_add=True)

    class Meta:
        ordering = ["-created_at", "-id"]
        constraints = [
            models.CheckConstraint(
                condition=Q(time_spent_s__isnull=True) | Q(time_spent_s__gte=0),
                name="added_time_spent_nonnegative",
            ),
            models.CheckConstraint(
                condition=Q(diameter_mm__isnull=True) | Q(diameter_mm__gt=0),
                name="added_diameter_positive",
            ),
        ]

    def __str__(self) -> str:
        return f"added {self.kind} in {self.series_id} by {self.radiologist}"
