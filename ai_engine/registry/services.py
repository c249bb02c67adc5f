"""Write side of the registry: model versions and the champion rule, jobs and their lifecycle.

Views, tasks and signal handlers call these keyword-only functions; none of them talks to
Celery except through `_enqueue` (after the commit), so a rolled-back request queues nothing.
"""

from __future__ import annotations

import logging
import os
import shutil
import time
import uuid
from collections.abc import Sequence
from datetime import timedelta
from pathlib import Path
from typing import TYPE_CHECKING

from django.conf import settings
from django.db import IntegrityError, transaction
from django.db.models import Max
from django.utils import timezone

from ai_engine.registry.exceptions import (
    InvalidTransition,
    ModelStoreConflict,
    NoChampion,
)
from ai_engine.registry.models import (
    TASK_MODALITY,
    Job,
    ModelTask,
    ModelVersion,
    ProjectAISettings,
    PromotionEvent,
)
from imaging.models import AIStatus, Study
from projects.models import Project

if TYPE_CHECKING:
    from ai_engine.registry.inference import FindingData

logger = logging.getLogger(__name__)


# -- settings -----------------------------------------------------------------------------


def ai_settings_for(*, project: Project) -> ProjectAISettings:
    """The project's AI settings, created with defaults on first use."""
    found, _ = ProjectAISettings.objects.get_or_create(project=project)
    return found


# -- model versions -----------------------------------------------------------------------


def model_store_path(*, project: Project, task: str, version: int) -> Path:
    return Path(settings.MODEL_STORE_DIR) / project.slug / task / str(version)


def model_version_register(
    *,
    project: Project,
    task: str,
    source_dir: Path,
    provenance: str,
    metrics: dict | None = None,
    validation_metric_name: str = "",
    validation_metric: float | None = None,
    validation_set_hash: str = "",
    champion_metric_on_same_set: float | None = None,
    data_snapshot=None,
    parent: ModelVersion | None = None,
    created_by=None,
    mlflow_run_id: str = "",
    apply_rule: bool = True,
) -> ModelVersion:
    """Copy a model folder into the store as the next version and apply the champion rule.

    The copy goes to `MODEL_STORE_DIR/<project>/<task>/<version>/`, which must not exist:
    versions are never overwritten. `champion_metric_on_same_set` is the current champion's
    metric measured on this version's validation set, when the caller could measure it.
    """
    if task not in ModelTask.values:
        raise ValueError(f"task must be one of {ModelTask.values}, got {task!r}")
    source_dir = Path(source_dir)
    if not source_dir.is_dir():
        raise FileNotFoundError(source_dir)
    with transaction.atomic():
        # Lock the project row: version numbers are allocated one at a time.
        Project.objects.select_for_update().get(pk=project.pk)
        last = ModelVersion.objects.filter(project=project, task=task).aggregate(n=Max("version"))[
            "n"
        ]
        number = (last or 0) + 1
        dest = model_store_path(project=project, task=task, version=number)
        if dest.exists():
            raise ModelStoreConflict(
                f"{dest} already exists; model versions are never overwritten. "
                "Move the stray folder away and retry."
            )
        dest.parent.mkdir(parents=True, exist_ok=True)
        shutil.copytree(source_dir, dest)
        try:
            version = ModelVersion.objects.create(
                project=project,
                task=task,
                version=number,
                provenance=provenance,
                path=str(dest),
                metrics=metrics or {},
                validation_metric_name=validation_metric_name,
                validation_metric=validation_metric,
                validation_set_hash=validation_set_hash,
                data_snapshot=data_snapshot,
                parent=parent,
                created_by=created_by,
                mlflow_run_id=mlflow_run_id,
            )
            if apply_rule:
                champion_rule_apply(version=version, champion_metric=champion_metric_on_same_set)
                version.refresh_from_db()
        except BaseException:
            shutil.rmtree(dest, ignore_errors=True)
            raise
    return version


def current_champion(
    *, project: Project | int, task: str, lock: bool = False
) -> ModelVersion | None:
    query = ModelVersion.objects.filter(
        project=project, task=task, status=ModelVersion.Status.CHAMPION
    )
    if lock:
        query = query.select_for_update()
    return query.first()


@transaction.atomic
def champion_rule_apply(*, version: ModelVersion, champion_metric: float | None = None) -> bool:
    """Promote `version` when its validation metric is at least the champion's on the same set.

    The champion's metric counts only when it was measured on the same validation set:
    either passed in (`champion_metric`, measured on `version`'s set) or stored on the
    champion with the same `validation_set_hash`. Otherwise the version stays a candidate.
    Returns True when `version` became champion.
    """
    version = ModelVersion.objects.select_for_update().get(pk=version.pk)
    if version.status != ModelVersion.Status.CANDIDATE:
        return False
    champion = current_champion(project=version.project_id, task=version.task, lock=True)
    if champion is None:
        _make_champion(version=version, previous=None, reason=PromotionEvent.Reason.FIRST, by=None)
        return True
    if version.validation_metric is None:
        _note(version, "No validation metric: stays a candidate.")
        return False
    if champion_metric is None and champion.validation_set_hash == version.validation_set_hash:
        champion_metric = champion.validation_metric
    if champion_metric is None:
        _note(version, f"Champion v{champion.version} has no metric on the same validation set.")
        return False
    detail = {
        "metric": version.validation_metric_name,
        "candidate": version.validation_metric,
        "champion": champion_metric,
        "validation_set_hash": version.validation_set_hash,
    }
    if version.validation_metric >= champion_metric:
        _make_champion(
            version=version,
            previous=champion,
            reason=PromotionEvent.Reason.RULE,
            by=None,
            detail=detail,
        )
        return True
    _note(
        version,
        f"{version.validation_metric_name} {version.validation_metric:.4f} < champion "
        f"v{champion.version}'s {champion_metric:.4f} on the same set: stays a candidate.",
    )
    return False


def _note(version: ModelVersion, text: str) -> None:
    version.notes = f"{version.notes}\n{text}".strip()
    version.save(update_fields=["notes"])


def _make_champion(
    *,
    version: ModelVersion,
    previous: ModelVersion | None,
    reason: str,
    by,
    detail: dict | None = None,
) -> None:
    if previous is not None:
        previous.status = ModelVersion.Status.RETIRED
        previous.save(update_fields=["status"])
    version.status = ModelVersion.Status.CHAMPION
    version.promoted_at = timezone.now()
    version.save(update_fields=["status", "promoted_at"])
    PromotionEvent.objects.create(
        version=version, previous=previous, reason=reason, by=by, detail=detail or {}
    )


@transaction.atomic
def model_version_promote(*, version: ModelVersion, by) -> ModelVersion:
    """An admin makes `version` the champion of its task (the old champion is retired)."""
    version = ModelVersion.objects.select_for_update().get(pk=version.pk)
    if version.status == ModelVersion.Status.CHAMPION:
        raise InvalidTransition(f"v{version.version} is already the champion.")
    champion = current_champion(project=version.project_id, task=version.task, lock=True)
    _make_champion(version=version, previous=champion, reason=PromotionEvent.Reason.MANUAL, by=by)
    return version


@transaction.atomic
def model_version_rollback(*, project: Project, task: str, by) -> ModelVersion:
    """Give the championship back to the version the current champion replaced."""
    champion = current_champion(project=project, task=task, lock=True)
    if champion is None:
        raise NoChampion(
            f"Project {project.slug} has no champion for {task}; nothing to roll back."
        )
    event = champion.promotions.order_by("-created_at", "-id").first()
    previous = event.previous if event else None
    if previous is None:
        raise InvalidTransition(
            f"Champion v{champion.version} replaced no earlier version; there is nothing to roll back to."
        )
    previous = ModelVersion.objects.select_for_update().get(pk=previous.pk)
    _make_champion(
        version=previous, previous=champion, reason=PromotionEvent.Reason.ROLLBACK, by=by
    )
    return previous


# -- jobs: creation -----------------------------------------------------------------------


def _enqueue(job: Job) -> None:
    """Send the job's task after the surrounding transaction commits."""
    from worker import tasks

    task = {
        Job.Kind.INFERENCE: tasks.run_inference_job,
        Job.Kind.TRAINING: tasks.run_training_job,
        Job.Kind.SCORING: tasks.run_scoring_job,
    }[job.kind]
    job_id, task_id = job.pk, job.celery_task_id

    def send() -> None:
        task.apply_async(kwargs={"job_id": job_id}, task_id=task_id)

    transaction.on_commit(send)


def inference_job_create(
    *, study: Study, model_version: ModelVersion, created_by=None
) -> tuple[Job, bool]:
    """Queue `model_version` on `study`; returns (job, created). Idempotent while one is live."""
    if model_version.project_id != study.project_id:
        raise ValueError("model version and study belong to different projects")
    live = Job.objects.filter(
        kind=Job.Kind.INFERENCE, study=study, model_version=model_version, status__in=Job.ACTIVE
    ).first()
    if live is not None:
        return live, False
    try:
        with transaction.atomic():
            job = Job.objects.create(
                project_id=study.project_id,
                kind=Job.Kind.INFERENCE,
                task=model_version.task,
                study=study,
                model_version=model_version,
                queue="gpu",
                celery_task_id=str(uuid.uuid4()),
                created_by=created_by,
            )
            Study.objects.filter(pk=study.pk).update(ai_status=AIStatus.QUEUED)
            _enqueue(job)
    except IntegrityError:
        # Another request queued the same inference at the same moment.
        live = Job.objects.filter(
            kind=Job.Kind.INFERENCE, study=study, model_version=model_version, status__in=Job.ACTIVE
        ).first()
        if live is None:
            raise
        return live, False
    return job, True


def champions_for_study(*, study: Study) -> list[ModelVersion]:
    """The project's champions whose task fits a modality of the study."""
    modalities = set(study.modalities)
    tasks = [task for task, modality in TASK_MODALITY.items() if modality in modalities]
    return list(
        ModelVersion.objects.filter(
            project_id=study.project_id, task__in=tasks, status=ModelVersion.Status.CHAMPION
        )
    )


def inference_queue_for_study(*, study: Study, created_by=None) -> list[Job]:
    """Queue every fitting champion on a (new) study, when the project has auto inference on."""
    if not ai_settings_for(project=study.project).auto_inference:
        return []
    return [
        inference_job_create(study=study, model_version=version, created_by=created_by)[0]
        for version in champions_for_study(study=study)
    ]


def inference_queue_for_project(
    *, project: Project, task: str | None = None, created_by=None, only_missing: bool = True
) -> list[tuple[Job, bool]]:
    """Batch inference: the task's (or every) champion on every fitting study of the project.

    With `only_missing`, studies that already have a succeeded job of that champion are
    skipped. Returns (job, created) pairs: live jobs are reused, not queued twice.
    """
    champions = ModelVersion.objects.filter(project=project, status=ModelVersion.Status.CHAMPION)
    if task:
        champions = champions.filter(task=task)
    champions = list(champions)
    if not champions:
        raise NoChampion(
            f"Project {project.slug} has no champion model{f' for {task}' if task else ''}; "
            "train or promote one first."
        )
    jobs = []
    for version in champions:
        studies = Study.objects.filter(
            project=project, modalities_in_study__contains=TASK_MODALITY[version.task]
        )
        if only_missing:
            studies = studies.exclude(
                ai_jobs__model_version=version, ai_jobs__status=Job.Status.SUCCEEDED
            )
        for study in studies:
            jobs.append(
                inference_job_create(study=study, model_version=version, created_by=created_by)
            )
    return jobs


def run_job_create(
    *, project: Project, kind: str, task: str, created_by=None, params: dict | None = None
) -> tuple[Job, bool]:
    """Queue a training or scoring run for a project and task (one live run at a time)."""
    if kind not in (Job.Kind.TRAINING, Job.Kind.SCORING):
        raise ValueError(f"kind must be training or scoring, got {kind!r}")
    live = Job.objects.filter(project=project, kind=kind, task=task, status__in=Job.ACTIVE).first()
    if live is not None:
        return live, False
    try:
        with transaction.atomic():
            job = Job.objects.create(
                project=project,
                kind=kind,
                task=task,
                queue="gpu",
                params=params or {},
                celery_task_id=str(uuid.uuid4()),
                created_by=created_by,
                model_version=current_champion(project=project, task=task),
            )
            _enqueue(job)
    except IntegrityError:
        live = Job.objects.filter(
            project=project, kind=kind, task=task, status__in=Job.ACTIVE
        ).first()
        if live is None:
            raise
        return live, False
    return job, True


def retraining_start_if_due(*, project_id: int) -> list[Job]:
    """Start training for each task with at least `retrain_after_labels` new labels."""
    from ai_engine.registry.selectors import labels_since_last_training

    project = Project.objects.get(pk=project_id)
    threshold = ai_settings_for(project=project).retrain_after_labels
    if threshold <= 0:
        return []
    started = []
    for task in ModelTask.values:
        if labels_since_last_training(project=project, task=task) >= threshold:
            job, created = run_job_create(
                project=project, kind=Job.Kind.TRAINING, task=task, params={"reason": "labels"}
            )
            if created:
                started.append(job)
    return started


# -- jobs: lifecycle (called by tasks) -------------------------------------------------------


def job_cancel(*, job: Job, by=None) -> Job:
    """Cancel a queued job now, or ask a running one to stop (it writes nothing)."""
    with transaction.atomic():
        job = Job.objects.select_for_update().get(pk=job.pk)
        if job.status == Job.Status.QUEUED:
            job.transition_to(
                Job.Status.CANCELLED, message=f"Cancelled by {by or 'system'} while queued."
            )
            _study_status(job, AIStatus.NONE)
        elif job.status == Job.Status.RUNNING:
            job.cancel_requested = True
            job.message = f"Cancellation requested by {by or 'system'}."
            job.save(update_fields=["cancel_requested", "message", "updated_at"])
        else:
            raise InvalidTransition(
                f"Job {job.pk} is {job.status}; only queued or running jobs can be cancelled."
            )
    return job


#: A job whose worker died this many times is failed instead of run again (a job that
#: kills its worker every time, e.g. out of memory, must not block the queue forever).
#: Override with the setting JOB_MAX_LOST_ATTEMPTS.
MAX_LOST_ATTEMPTS = 3


def max_lost_attempts() -> int:
    return int(getattr(settings, "JOB_MAX_LOST_ATTEMPTS", MAX_LOST_ATTEMPTS))


def job_start(*, job_id: int, celery_task_id: str = "") -> Job | None:
    """Mark the job running (or resume it after a retry/redelivery); None when there is nothing to do.

    A job found running with its attempt still open lost its previous attempt: the worker
    died (SIGKILL, out of memory, lost machine) and the broker redelivered the task. This
    attempt takes the job over and counts the loss; after `max_lost_attempts()` losses the
    job fails instead. A job whose cancellation was requested while no attempt ran is
    cancelled here and its files (of a lost attempt) removed.
    """
    with transaction.atomic():
        job = Job.objects.select_for_update().filter(pk=job_id).first()
        if job is None or job.is_terminal:
            return None
        if job.cancel_requested:
            job.transition_to(
                Job.Status.CANCELLED,
                message="Cancelled before it ran."
                if job.status == Job.Status.QUEUED
                else "Stopped on request; nothing was written.",
            )
            _study_status(job, AIStatus.NONE)
            out_dir = job_output_dir(job=job)
            transaction.on_commit(lambda: shutil.rmtree(out_dir, ignore_errors=True))
            return None
        message = job.message
        if job.status == Job.Status.RUNNING and job.attempt_started_at is not None:
            job.lost_attempts += 1
            if job.lost_attempts >= max_lost_attempts():
                job.save(update_fields=["lost_attempts"])
                job.transition_to(
                    Job.Status.FAILED,
                    error=f"The worker running this job died {job.lost_attempts} times "
                    "(killed, out of memory or lost machine); it is not run again.",
                )
                _study_status(job, AIStatus.FAILED)
                out_dir = job_output_dir(job=job)
                transaction.on_commit(lambda: shutil.rmtree(out_dir, ignore_errors=True))
                return None
            message = f"Attempt {job.attempts} was lost with its worker; attempt {job.attempts + 1} takes over."
            logger.warning("job %s: %s", job.pk, message)
        if job.status == Job.Status.QUEUED:
            job.transition_to(Job.Status.RUNNING)
        job.attempts += 1
        job.attempt_started_at = timezone.now()
        job.message = message[:500]
        job.celery_task_id = celery_task_id or job.celery_task_id
        job.save(
            update_fields=[
                "attempts",
                "attempt_started_at",
                "lost_attempts",
                "message",
                "celery_task_id",
                "updated_at",
            ]
        )
        _study_status(job, AIStatus.RUNNING)
    return job


#: Test-only fault injection (inert unless this environment variable names a folder):
#: a job reaching progress checkpoint F while `<folder>/hold-F` exists (F as "%.2f") writes
#: `<folder>/job-<id>.held-F` (holding the pid of the process running it) and waits until
#: the hold file is removed (at most `TEST_GATE_MAX_WAIT_S`). The worker fault tests use it
#: to kill or cancel a job at a known point without making the product slow.
TEST_GATE_ENV = "PLATFORM_TEST_JOB_GATE_DIR"
TEST_GATE_MAX_WAIT_S = 300


def _test_gate(job_id: int, progress: float) -> None:
    folder = os.environ.get(TEST_GATE_ENV)
    if not folder:
        return
    hold = Path(folder) / f"hold-{progress:.2f}"
    if not hold.exists():
        return
    marker = Path(folder) / f"job-{job_id}.held-{progress:.2f}"
    partial = marker.with_name(marker.name + ".tmp")
    partial.write_text(str(os.getpid()))
    partial.replace(marker)  # the marker appears complete, never empty
    logger.warning("job %s held at %.2f by %s (test fault injection)", job_id, progress, hold)
    deadline = time.monotonic() + TEST_GATE_MAX_WAIT_S
    while hold.exists() and time.monotonic() < deadline:
        time.sleep(0.05)


def job_progress(*, job_id: int, progress: float, message: str = "") -> None:
    """Record progress (0-1) and an ETA; raise JobCancelled when cancellation was requested."""
    from ai_engine.registry.exceptions import JobCancelled

    progress = min(max(float(progress), 0.0), 1.0)
    job = Job.objects.only("started_at", "cancel_requested", "status").get(pk=job_id)
    if job.cancel_requested or job.status == Job.Status.CANCELLED:
        raise JobCancelled(job_id)
    now = timezone.now()
    eta = None
    if job.started_at and progress > 0.01:
        elapsed = (now - job.started_at).total_seconds()
        eta = now + timedelta(seconds=elapsed * (1 - progress) / progress)
    fields = {"progress": progress, "eta_at": eta, "updated_at": now}
    if message:
        fields["message"] = message[:500]
    Job.objects.filter(pk=job_id, status=Job.Status.RUNNING).update(**fields)
    _test_gate(job_id, progress)


def job_note_retry(*, job_id: int, message: str = "") -> None:
    """The attempt ends with a retry scheduled: close it (it was not lost) and say why."""
    fields = {"attempt_started_at": None, "updated_at": timezone.now()}
    if message:
        fields["message"] = message[:500]
    Job.objects.filter(pk=job_id).update(**fields)


def jobs_resend_orphaned(*, now=None) -> list[int]:
    """Send again the task of every running job that no worker can still be working on.

    A running attempt ends within the hard time limit, and the task of a worker that died
    is redelivered by the broker after its visibility timeout; a running job untouched for
    longer than both (plus a margin) has lost its task message (e.g. Redis restarted: it
    keeps nothing on disk) and would stay running forever, blocking new jobs for the same
    study and model. Its task is sent again; `job_start` counts the lost attempt. Called
    by the beat task `check_models`. Returns the ids of the jobs sent again.
    """
    visibility = settings.CELERY_BROKER_TRANSPORT_OPTIONS["visibility_timeout"]
    stale_after = timedelta(seconds=settings.CELERY_TASK_HARD_TIME_LIMIT_S + visibility + 120)
    cutoff = (now or timezone.now()) - stale_after
    sent = []
    for job_id in Job.objects.filter(status=Job.Status.RUNNING, updated_at__lt=cutoff).values_list(
        "pk", flat=True
    ):
        with transaction.atomic():
            job = Job.objects.select_for_update().get(pk=job_id)
            if job.status != Job.Status.RUNNING or job.updated_at >= cutoff:
                continue
            job.celery_task_id = str(uuid.uuid4())
            job.message = "No worker reported on this job for too long; its task was sent again."
            job.save(update_fields=["celery_task_id", "message", "updated_at"])
            _enqueue(job)
        logger.warning("job %s: orphaned while running; task sent again", job_id)
        sent.append(job_id)
    return sent


def job_fail(*, job_id: int, error: str) -> None:
    with transaction.atomic():
        job = Job.objects.select_for_update().get(pk=job_id)
        if job.is_terminal:
            return
        job.transition_to(Job.Status.FAILED, error=error)
        _study_status(job, AIStatus.FAILED)


def job_mark_cancelled(*, job_id: int) -> None:
    """The running task stopped on request: record it and remove anything it wrote to disk."""
    with transaction.atomic():
        job = Job.objects.select_for_update().get(pk=job_id)
        if job.is_terminal:
            return
        job.transition_to(Job.Status.CANCELLED, message="Stopped on request; nothing was written.")
        _study_status(job, AIStatus.NONE)
    shutil.rmtree(job_output_dir(job=job), ignore_errors=True)


def job_output_dir(*, job: Job) -> Path:
    """Where a job writes its files (heat maps, masks) under MEDIA_ROOT."""
    return Path(settings.MEDIA_ROOT) / "ai" / job.project.slug / f"job-{job.pk}"


def _study_status(job: Job, status: str) -> None:
    if job.kind == Job.Kind.INFERENCE and job.study_id:
        Study.objects.filter(pk=job.study_id).update(ai_status=status)


def job_lock_for_completion(*, job_id: int, cancelled_message: str) -> Job | None:
    """Inside the caller's transaction: the job row, locked, when it may write its results
    now; None when it is no longer running (finished by an earlier delivery, cancelled) or
    when a cancellation was requested (applied here, with `cancelled_message`)."""
    job = Job.objects.select_for_update().get(pk=job_id)
    if job.status != Job.Status.RUNNING:
        return None
    if job.cancel_requested:
        job.transition_to(Job.Status.CANCELLED, message=cancelled_message)
        _study_status(job, AIStatus.NONE)
        out_dir = job_output_dir(job=job)
        transaction.on_commit(lambda: shutil.rmtree(out_dir, ignore_errors=True))
        return None
    return job


def inference_complete(*, job_id: int, findings: Sequence[FindingData]) -> bool:
    """Write the findings and mark the job succeeded, in one transaction, exactly once.

    The job row is locked; a job that is no longer running (already succeeded after a
    redelivery, or cancelled) writes nothing. Returns True when this call wrote them.
    """
    from annotations.services import findings_record

    with transaction.atomic():
        job = job_lock_for_completion(
            job_id=job_id, cancelled_message="Stopped on request; nothing was written."
        )
        if job is None:
            return False
        rows = findings_record(job=job, findings=findings)
        job.result = {"findings": len(rows)}
        job.save(update_fields=["result"])
        job.transition_to(Job.Status.SUCCEEDED, message=f"{len(rows)} finding(s).")
        _study_status(job, AIStatus.DONE)
    return True


def inference_run(*, job: Job) -> list[FindingData]:
    """Run the job's model on its study, reporting progress (raises JobCancelled on request)."""
    from ai_engine.registry.inference import run_inference

    def progress(fraction: float, message: str = "") -> None:
        job_progress(job_id=job.pk, progress=fraction, message=message)

    out_dir = job_output_dir(job=job)
    # Start clean: a lost earlier attempt may have left files this one would not overwrite
    # (a mask when this run finds nothing). No other attempt of the job is alive here: the
    # hard time limit is below the broker's visibility timeout.
    shutil.rmtree(out_dir, ignore_errors=True)
    findings = run_inference(job.model_version, job.study, out_dir=out_dir, progress=progress)
    # Last checkpoint, after the files are written: a cancel seen here removes them.
    progress(0.95, f"Recording {len(findings)} finding(s)")
    return findings


def training_complete(
    *,
    job_id: int,
    source_dir: Path,
    snapshot,
    metrics: dict,
    metric_name: str,
    validation_set_hash: str,
    champion_metric: float | None,
    mlflow_run_id: str = "",
) -> ModelVersion | None:
    """Register the trained folder as a new version (champion rule applied) and finish the job.

    Exactly once: under the job row's lock; a job no longer running registers nothing.
    """
    with transaction.atomic():
        job = Job.objects.select_for_update().select_related("project").get(pk=job_id)
        if job.status != Job.Status.RUNNING:
            return job.produced_version
        if job.cancel_requested:
            job.transition_to(
                Job.Status.CANCELLED, message="Stopped on request; nothing was registered."
            )
            return None
        version = model_version_register(
            project=job.project,
            task=job.task,
            source_dir=source_dir,
            provenance=ModelVersion.Provenance.TRAINED,
            metrics=metrics,
            validation_metric_name=metric_name,
            validation_metric=float(metrics[metric_name]),
            validation_set_hash=validation_set_hash,
            champion_metric_on_same_set=champion_metric,
            data_snapshot=snapshot,
            parent=job.model_version,
            created_by=job.created_by,
            mlflow_run_id=mlflow_run_id,
        )
        job.produced_version = version
        job.result = {
            "version": version.version,
            "status": version.status,
            metric_name: version.validation_metric,
            "champion_" + metric_name: champion_metric,
            "snapshot": snapshot.sha256,
        }
        job.save(update_fields=["produced_version", "result"])
        job.transition_to(
            Job.Status.SUCCEEDED, message=f"v{version.version} registered as {version.status}."
        )
    return version
