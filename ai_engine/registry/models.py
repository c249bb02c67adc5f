"""Model versions, the data they were trained on, jobs (with their state machine) and alerts.

Every model version is kept: its folder is copied once into
`MODEL_STORE_DIR/<project>/<task>/<version>/` and never overwritten. At most one version
per project and task is the champion (a conditional unique constraint); the champion is
what new studies are run through.
"""

from __future__ import annotations

from django.conf import settings
from django.core.exceptions import ValidationError
from django.db import models
from django.db.models import Q
from django.utils import timezone

from ai_engine.registry.exceptions import InvalidTransition
from projects.models import Project


class ModelTask(models.TextChoices):
    """What a model does; each task fits certain modalities."""

    NODULE_DETECTION = "nodule_detection", "Lung nodule detection (CT)"
    TUMOR_GRADING = "tumor_grading", "Tumor grading (multimodal MR)"


#: The modality a study must contain for a task's models to run on it.
TASK_MODALITY: dict[str, str] = {
    ModelTask.NODULE_DETECTION: "CT",
    ModelTask.TUMOR_GRADING: "MR",
}


class ProjectAISettings(models.Model):
    """Per-project AI settings: auto inference, retraining trigger, monitoring window."""

    project = models.OneToOneField(Project, on_delete=models.CASCADE, related_name="ai_settings")
    auto_inference = models.BooleanField(
        default=True, help_text="Queue new studies for the champion models that fit them."
    )
    retrain_after_labels = models.PositiveIntegerField(
        default=50,
        help_text="Start a training run after this many new labels since the last one (0: never).",
    )
    monitoring_window = models.PositiveIntegerField(
        default=50, help_text="Number of most recent verdicts the rolling figures use."
    )
    alert_margin = models.FloatField(
        default=0.1, help_text="Flag a version when a rolling figure falls this far below baseline."
    )
    train_args = models.JSONField(
        default=dict,
        blank=True,
        help_text="Extra `python -m ai_engine <group> train` arguments per task, e.g. "
        '{"tumor_grading": ["--epochs", "20"]}; a task without an entry trains with the '
        "defaults. Paths (--pretrained, --init-weights) are names inside the pretrained folder.",
    )
    updated_at = models.DateTimeField(auto_now=True)

    class Meta:
        verbose_name = "project AI settings"
        verbose_name_plural = "project AI settings"
        constraints = [
            models.CheckConstraint(
                condition=Q(alert_margin__gte=0) & Q(alert_margin__lte=1),
                name="ai_settings_alert_margin_0_1",
            ),
            models.CheckConstraint(
                condition=Q(monitoring_window__gte=1), name="ai_settings_window_positive"
            ),
        ]

    def __str__(self) -> str:
        return f"AI settings of {self.project}"

    def clean(self) -> None:
        """The Django admin's check of `train_args` (the API's serializer runs the same)."""
        from ai_engine.registry.training import train_args_by_task_problem

        problem = train_args_by_task_problem(self.train_args)
        if problem:
            raise ValidationError({"train_args": problem})


class DataSnapshot(models.Model):
    """The ground truth a training run used: its hash, size and exported datalist."""

    project = models.ForeignKey(Project, on_delete=models.CASCADE, related_name="data_snapshots")
    task = models.CharField(max_length=32, choices=ModelTask.choices)
    sha256 = models.CharField(max_length=64)
    n_items = models.PositiveIntegerField()
    n_labels = models.PositiveIntegerField(help_text="Feedback verdicts and added findings used.")
    # Absolute path of the datalist JSON written for the ai_engine CLI.
    datalist_path = models.CharField(max_length=1024, blank=True)
    created_at = models.DateTimeField(auto_now_add=True)

    class Meta:
        ordering = ["-created_at", "-id"]
        constraints = [
            models.UniqueConstraint(
                fields=["project", "task", "sha256"], name="one_snapshot_per_content"
            ),
        ]

    def __str__(self) -> str:
        return f"{self.project}/{self.task}@{self.sha256[:12]}"


class ModelVersion(models.Model):
    """One trained (or derived) model of a project and task, kept forever."""

    class Status(models.TextChoices):
        CANDIDATE = "candidate", "Candidate"
        CHAMPION = "champion", "Champion"
        RETIRED = "retired", "Retired"

    class Provenance(models.TextChoices):
        TRAINED = "trained", "Trained"
        EXPORTED = "exported", "Exported"
        QUANTIZED = "quantized", "Quantized"
        DISTILLED = "distilled", "Distilled"
        IMPORTED = "imported", "Imported"

    project = models.ForeignKey(Project, on_delete=models.CASCADE, related_name="model_versions")
    task = models.CharField(max_length=32, choices=ModelTask.choices)
    version = models.PositiveIntegerField()
    status = models.CharField(max_length=16, choices=Status.choices, default=Status.CANDIDATE)
    provenance = models.CharField(max_length=16, choices=Provenance.choices)
    parent = models.ForeignKey(
        "self", null=True, blank=True, on_delete=models.PROTECT, related_name="derived"
    )
    data_snapshot = models.ForeignKey(
        DataSnapshot, null=True, blank=True, on_delete=models.PROTECT, related_name="versions"
    )
    # Absolute path of the copy under MODEL_STORE_DIR.
    path = models.CharField(max_length=1024)
    metrics = models.JSONField(default=dict, blank=True)
    validation_metric_name = models.CharField(max_length=64, blank=True)
    validation_metric = models.FloatField(null=True, blank=True)
    # Hash of the validation set `validation_metric` was measured on: versions are only
    # compared on the same set.
    validation_set_hash = models.CharField(max_length=64, blank=True)
    # Monitoring: the figures of the first full window of verdicts, then frozen.
    baseline_acceptance = models.FloatField(null=True, blank=True)
    baseline_agreement = models.FloatField(null=True, blank=True)
    mlflow_run_id = models.CharField(max_length=64, blank=True)
    notes = models.TextField(blank=True)
    created_by = models.ForeignKey(
        settings.AUTH_USER_MODEL, null=True, blank=True, on_delete=models.SET_NULL
    )
    created_at = models.DateTimeField(auto_now_add=True)
    promoted_at = models.DateTimeField(null=True, blank=True)

    class Meta:
        ordering = ["project", "task", "-version"]
        constraints = [
            models.UniqueConstraint(
                fields=["project", "task", "version"], name="one_version_number_per_task"
            ),
            models.UniqueConstraint(
                fields=["project", "task"],
                condition=Q(status="champion"),
                name="one_champion_per_task",
            ),
        ]

    def __str__(self) -> str:
        return f"{self.project}/{self.task}/v{self.version} ({self.status})"


class PromotionEvent(models.Model):
    """Audit of champion changes: automatic by the rule, or by an admin (promote, rollback)."""

    class Reason(models.TextChoices):
        FIRST = "first", "First version of the task"
        RULE = "rule", "Validation metric at least the champion's"
        MANUAL = "manual", "Promoted by an admin"
        ROLLBACK = "rollback", "Rolled back by an admin"

    version = models.ForeignKey(ModelVersion, on_delete=models.CASCADE, related_name="promotions")
    previous = models.ForeignKey(
        ModelVersion, null=True, blank=True, on_delete=models.SET_NULL, related_name="+"
    )
    reason = models.CharField(max_length=16, choices=Reason.choices)
    by = models.ForeignKey(
        settings.AUTH_USER_MODEL, null=True, blank=True, on_delete=models.SET_NULL
    )
    detail = models.JSONField(default=dict, blank=True)
    created_at = models.DateTimeField(auto_now_add=True)

    class Meta:
        ordering = ["-created_at", "-id"]

    def __str__(self) -> str:
        return f"{self.version} <- {self.reason}"


class Job(models.Model):
    """A unit of AI work (inference, training, scoring) run by the worker.

    The status only changes through `transition_to`, which enforces `TRANSITIONS`.
    """

    class Kind(models.TextChoices):
        INFERENCE = "inference", "Inference"
        TRAINING = "training", "Training"
        SCORING = "scoring", "Active-learning scoring"

    class Status(models.TextChoices):
        QUEUED = "queued", "Queued"
        RUNNING = "running", "Running"
        SUCCEEDED = "succeeded", "Succeeded"
        FAILED = "failed", "Failed"
        CANCELLED = "cancelled", "Cancelled"

    TRANSITIONS: dict[str, frozenset[str]] = {
        Status.QUEUED: frozenset({Status.RUNNING, Status.CANCELLED, Status.FAILED}),
        Status.RUNNING: frozenset({Status.SUCCEEDED, Status.FAILED, Status.CANCELLED}),
        Status.SUCCEEDED: frozenset(),
        Status.FAILED: frozenset(),
        Status.CANCELLED: frozenset(),
    }
    ACTIVE = (Status.QUEUED, Status.RUNNING)
    TERMINAL = (Status.SUCCEEDED, Status.FAILED, Status.CANCELLED)

    project = models.ForeignKey(Project, on_delete=models.CASCADE, related_name="jobs")
    kind = models.CharField(max_length=16, choices=Kind.choices)
    task = models.CharField(max_length=32, choices=ModelTask.choices)
    status = models.CharField(max_length=16, choices=Status.choices, default=Status.QUEUED)
    study = models.ForeignKey(
        "imaging.Study", null=True, blank=True, on_delete=models.CASCADE, related_name="ai_jobs"
    )
    model_version = models.ForeignKey(
        ModelVersion, null=True, blank=True, on_delete=models.PROTECT, related_name="jobs"
    )
    # Training: the version the run produced.
    produced_version = models.ForeignKey(
        ModelVersion, null=True, blank=True, on_delete=models.SET_NULL, related_name="+"
    )
    queue = models.CharField(max_length=16, default="gpu")
    params = models.JSONField(default=dict, blank=True)
    result = models.JSONField(default=dict, blank=True)
    progress = models.FloatField(default=0.0)
    eta_at = models.DateTimeField(null=True, blank=True)
    message = models.CharField(max_length=500, blank=True)
    error = models.TextField(blank=True)
    cancel_requested = models.BooleanField(default=False)
    attempts = models.PositiveIntegerField(default=0)
    # When the current attempt started; cleared when it ends (retry scheduled, or a final
    # state). Still set when the next attempt starts: the previous one died with its worker.
    attempt_started_at = models.DateTimeField(null=True, blank=True)
    lost_attempts = models.PositiveIntegerField(
        default=0, help_text="Attempts whose worker died (SIGKILL, out of memory, lost machine)."
    )
    celery_task_id = models.CharField(max_length=64, blank=True)
    created_by = models.ForeignKey(
        settings.AUTH_USER_MODEL, null=True, blank=True, on_delete=models.SET_NULL
    )
    created_at = models.DateTimeField(auto_now_add=True)
    started_at = models.DateTimeField(null=True, blank=True)
    finished_at = models.DateTimeField(null=True, blank=True)
    updated_at = models.DateTimeField(auto_now=True)

    class Meta:
        ordering = ["-created_at", "-id"]
        indexes = [
            models.Index(fields=["project", "status"], name="job_project_status"),
            models.Index(fields=["queue", "status", "created_at"], name="job_queue_order"),
        ]
        constraints = [
            models.CheckConstraint(
                condition=Q(progress__gte=0) & Q(progress__lte=1), name="job_progress_0_1"
            ),
            # One live inference per study and model version: queueing twice is a no-op.
            models.UniqueConstraint(
                fields=["study", "model_version"],
                condition=Q(kind="inference", status__in=["queued", "running"]),
                name="one_active_inference_per_study_version",
            ),
            # One live training (and one live scoring) run per project and task.
            models.UniqueConstraint(
                fields=["project", "task", "kind"],
                condition=Q(kind__in=["training", "scoring"], status__in=["queued", "running"]),
                name="one_active_training_or_scoring_per_task",
            ),
            models.CheckConstraint(
                condition=~Q(kind="inference")
                | (Q(study__isnull=False) & Q(model_version__isnull=False)),
                name="inference_job_has_study_and_version",
            ),
        ]

    def __str__(self) -> str:
        return f"{self.kind} job {self.pk} ({self.status})"

    @property
    def is_terminal(self) -> bool:
        return self.status in self.TERMINAL

    def transition_to(self, status: str, *, error: str = "", message: str = "") -> None:
        """Move to `status` (allowed by `TRANSITIONS`) and save; raises InvalidTransition."""
        if status not in self.TRANSITIONS[self.status]:
            raise InvalidTransition(
                f"Job {self.pk} cannot go from {self.status} to {status}.",
                extra={"status": self.status},
            )
        now = timezone.now()
        self.status = status
        fields = ["status", "updated_at"]
        if status == self.Status.RUNNING:
            self.started_at = self.started_at or now
            fields.append("started_at")
        if status in self.TERMINAL:
            self.finished_at = now
            self.eta_at = None
            self.attempt_started_at = None
            fields += ["finished_at", "eta_at", "attempt_started_at"]
        if status == self.Status.SUCCEEDED:
            self.progress = 1.0
            fields.append("progress")
        if error:
            self.error = error
            fields.append("error")
        if message:
            self.message = message[:500]
            fields.append("message")
        self.save(update_fields=fields)


class ModelAlert(models.Model):
    """A model version whose rolling acceptance or agreement fell below its baseline."""

    version = models.ForeignKey(ModelVersion, on_delete=models.CASCADE, related_name="alerts")
    figures = models.JSONField(help_text="Baseline, rolling values, window and margin.")
    message = models.CharField(max_length=500)
    created_at = models.DateTimeField(auto_now_add=True)
    resolved_at = models.DateTimeField(null=True, blank=True)

    class Meta:
        ordering = ["-created_at", "-id"]
        constraints = [
            models.UniqueConstraint(
                fields=["version"],
                condition=Q(resolved_at__isnull=True),
                name="one_open_alert_per_version",
            ),
        ]

    def __str__(self) -> str:
        return self.message


class ActiveLearningScore(models.Model):
    """A study's place in a project's active-learning queue: one queue per project, task and
    strategy, one row per study in it."""

    class Strategy(models.TextChoices):
        UNCERTAINTY = "uncertainty", "Uncertainty (MC dropout + TTA) with diversity"
        RANDOM = "random", "Foreground-aware random"

    project = models.ForeignKey(Project, on_delete=models.CASCADE, related_name="al_scores")
    study = models.ForeignKey("imaging.Study", on_delete=models.CASCADE, related_name="al_scores")
    task = models.CharField(max_length=32, choices=ModelTask.choices)
    model_version = models.ForeignKey(
        ModelVersion, null=True, blank=True, on_delete=models.SET_NULL, related_name="+"
    )
    strategy = models.CharField(max_length=16, choices=Strategy.choices)
    rank = models.PositiveIntegerField()
    score = models.FloatField()
    components = models.JSONField(default=dict, blank=True)
    job = models.ForeignKey(Job, null=True, blank=True, on_delete=models.SET_NULL, related_name="+")
    created_at = models.DateTimeField(auto_now_add=True)

    class Meta:
        ordering = ["project", "task", "strategy", "rank"]
        constraints = [
            models.UniqueConstraint(
                fields=["project", "task", "strategy", "study"], name="one_al_score_per_study"
            ),
        ]

    def __str__(self) -> str:
        return f"{self.project} {self.strategy} #{self.rank}: {self.study_id}"
