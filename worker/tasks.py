"""AI tasks: thin wrappers that load a job by id, check its state, call a service, record the outcome.

Every task may run twice (late ack + redelivery on worker loss, retries): `job_start`
returns None for a job already finished, and results are written in the transaction that
finishes the job (`inference_complete`), so a second run writes nothing. An attempt that
ends with a retry closes itself (`job_note_retry`); one still open when the next attempt
starts was lost with its worker and is counted (`Job.lost_attempts`, capped).
"""

from __future__ import annotations

import contextlib
import logging
import random
from collections.abc import Callable

from celery.exceptions import SoftTimeLimitExceeded
from django.db import OperationalError

from ai_engine.registry import services
from ai_engine.registry.exceptions import JobCancelled, StudyNotReady
from imaging.exceptions import OrthancUnavailable
from worker.celery import CPU_QUEUE, GPU_QUEUE, platform_task

logger = logging.getLogger(__name__)

ORTHANC_MAX_RETRIES = 8
ORTHANC_BACKOFF_MAX_S = 60
STUDY_NOT_READY_RETRIES = 5
DATABASE_RETRIES = 5


def _backoff_s(retries: int) -> float:
    """Exponential backoff with full jitter: 1, 2, 4 ... s (capped), times 0.5-1."""
    return min(2**retries, ORTHANC_BACKOFF_MAX_S) * random.uniform(0.5, 1.0)


def _run_job(task, job_id: int, body: Callable[[object], None]) -> str:
    """Shared lifecycle: start (or skip), run `body(job)`, record success/cancel/failure/retry."""
    job = services.job_start(job_id=job_id, celery_task_id=task.request.id or "")
    if job is None:
        return "skipped"
    try:
        body(job)
    except JobCancelled:
        services.job_mark_cancelled(job_id=job_id)
        return "cancelled"
    except OrthancUnavailable as exc:
        retries = task.request.retries
        if retries >= ORTHANC_MAX_RETRIES:
            services.job_fail(
                job_id=job_id, error=f"Orthanc stayed unreachable after {retries} retries: {exc}"
            )
            return "failed"
        countdown = _backoff_s(retries)
        services.job_note_retry(
            job_id=job_id, message=f"Orthanc unreachable; retry {retries + 1} in {countdown:.1f} s."
        )
        raise task.retry(exc=exc, countdown=countdown, max_retries=ORTHANC_MAX_RETRIES) from exc
    except StudyNotReady as exc:
        # Ingest indexes a study batch by batch: wait a little for the rest of its series.
        retries = task.request.retries
        if retries >= STUDY_NOT_READY_RETRIES:
            services.job_fail(job_id=job_id, error=str(exc))
            return "failed"
        services.job_note_retry(
            job_id=job_id, message=f"{exc} Waiting for ingest (retry {retries + 1})."
        )
        raise task.retry(
            exc=exc, countdown=1 + retries, max_retries=STUDY_NOT_READY_RETRIES
        ) from exc
    except OperationalError as exc:
        # Transient database trouble (e.g. SQLite "database is locked" under concurrent
        # writers, a PostgreSQL failover): nothing was committed, so run again shortly.
        retries = task.request.retries
        if retries >= DATABASE_RETRIES:
            services.job_fail(job_id=job_id, error=f"Database error: {exc}")
            return "failed"
        # Close the attempt; if even that fails, the next one counts it as lost (capped).
        with contextlib.suppress(OperationalError):
            services.job_note_retry(job_id=job_id)
        raise task.retry(
            exc=exc, countdown=_backoff_s(retries), max_retries=DATABASE_RETRIES
        ) from exc
    except SoftTimeLimitExceeded:
        services.job_fail(job_id=job_id, error="The job ran past its time limit and was stopped.")
        return "failed"
    except Exception as exc:
        logger.exception("job %s failed", job_id)
        services.job_fail(job_id=job_id, error=f"{type(exc).__name__}: {exc}")
        return "failed"
    return "done"


@platform_task(queue=GPU_QUEUE, ignore_result=True)
def run_inference_job(self, *, job_id: int) -> str:
    """Run one inference job: the model version on the study; findings written once."""

    def body(job) -> None:
        findings = services.inference_run(job=job)
        services.inference_complete(job_id=job.pk, findings=findings)

    return _run_job(self, job_id, body)


@platform_task(queue=GPU_QUEUE, ignore_result=True)
def run_training_job(self, *, job_id: int) -> str:
    """Snapshot ground truth, export it, train, register the version, apply the champion rule."""
    from ai_engine.registry.training import training_run

    return _run_job(self, job_id, lambda job: training_run(job=job))


@platform_task(queue=GPU_QUEUE, ignore_result=True)
def run_scoring_job(self, *, job_id: int) -> str:
    """Score unlabeled studies for active learning and store the ranked queue."""
    from ai_engine.registry.active_learning import scoring_run

    return _run_job(self, job_id, lambda job: scoring_run(job=job))


@platform_task(queue=CPU_QUEUE, ignore_result=True, hard_time_limit_s=600)
def check_models(self) -> dict:
    """Beat: refresh monitoring figures, start due retraining, resend orphaned running jobs."""
    from ai_engine.registry import monitoring
    from projects.models import Project

    flagged = monitoring.check_all()
    started = sum(
        len(services.retraining_start_if_due(project_id=pk))
        for pk in Project.objects.values_list("pk", flat=True)
    )
    resent = services.jobs_resend_orphaned()
    return {"flagged": flagged, "training_started": started, "jobs_resent": resent}
