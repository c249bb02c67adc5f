"""Read side of the registry: queue positions, labels since training, version listings,
labeled/unlabeled studies and the active-learning queue."""

from __future__ import annotations

from django.db.models import Q, QuerySet

from ai_engine.registry.models import (
    TASK_MODALITY,
    ActiveLearningScore,
    Job,
    ModelAlert,
    ModelTask,
    ModelVersion,
)
from imaging.models import Study
from projects.models import Project


def jobs_of_project(*, project: Project) -> QuerySet[Job]:
    return Job.objects.filter(project=project).select_related("study", "model_version")


def queue_position(*, job: Job) -> int | None:
    """1-based place of a queued job in its worker queue (all projects); None when not queued."""
    if job.status != Job.Status.QUEUED:
        return None
    ahead = Job.objects.filter(queue=job.queue, status=Job.Status.QUEUED).filter(
        Q(created_at__lt=job.created_at) | Q(created_at=job.created_at, pk__lt=job.pk)
    )
    return ahead.count() + 1


def versions_of_project(*, project: Project) -> QuerySet[ModelVersion]:
    return ModelVersion.objects.filter(project=project).select_related("data_snapshot", "parent")


def open_alerts(*, project: Project) -> QuerySet[ModelAlert]:
    return ModelAlert.objects.filter(
        version__project=project, resolved_at__isnull=True
    ).select_related("version")


def last_training_start(*, project: Project, task: str):
    """When the last training run that did not fail or get cancelled was created, or None."""
    job = (
        Job.objects.filter(project=project, task=task, kind=Job.Kind.TRAINING)
        .exclude(status__in=[Job.Status.FAILED, Job.Status.CANCELLED])
        .order_by("-created_at")
        .first()
    )
    return job.created_at if job else None


def finding_kind_for(task: str) -> str:
    """The kind of finding a task's models produce (and radiologists label)."""
    from annotations.models import KIND_TASK

    return next(kind for kind, of_task in KIND_TASK.items() if of_task == task)


def labeled_studies(*, project: Project, task: str) -> QuerySet[Study]:
    """Studies a radiologist labeled for `task`: a verdict on one of its findings of the
    task's kind (accept, reject or correct) or a finding of that kind added by hand."""
    kind = finding_kind_for(task)
    return Study.objects.filter(project=project).filter(
        Q(findings__kind=kind, findings__feedback__isnull=False) | Q(added_findings__kind=kind)
    )


def unlabeled_studies(*, project: Project, task: str) -> QuerySet[Study]:
    """The project's studies of the task's modality that nobody labeled for the task yet."""
    labeled = labeled_studies(project=project, task=task).values("pk")
    return (
        Study.objects.filter(project=project, modalities_in_study__contains=TASK_MODALITY[task])
        .exclude(pk__in=labeled)
        .order_by("pk")
    )


def active_learning_queue(
    *, project: Project, strategy: str, task: str | None = None
) -> QuerySet[ActiveLearningScore]:
    """The ranked queue of one strategy (rank 1 first), per task when the project has several.

    Studies labeled for the row's task since the scoring run are left out (their rank
    stays a gap until the next run re-ranks the queue)."""
    rows = ActiveLearningScore.objects.filter(project=project, strategy=strategy)
    if task:
        rows = rows.filter(task=task)
    for labeled_task in ModelTask.values:
        labeled = labeled_studies(project=project, task=labeled_task).values("pk")
        rows = rows.exclude(task=labeled_task, study__in=labeled)
    return rows.select_related("study", "model_version").order_by("task", "rank", "pk")


def labels_since_last_training(*, project: Project, task: str) -> int:
    """Ground-truth labels (accepts, corrections, added findings) made since the last training."""
    from annotations.models import AddedFinding, FindingFeedback, Verdict

    kind = finding_kind_for(task)
    since = last_training_start(project=project, task=task)
    feedback = FindingFeedback.objects.filter(
        finding__project=project,
        finding__kind=kind,
        verdict__in=[Verdict.ACCEPT, Verdict.CORRECT],
    )
    added = AddedFinding.objects.filter(project=project, kind=kind)
    if since is not None:
        feedback = feedback.filter(updated_at__gt=since)
        added = added.filter(created_at__gt=since)
    return feedback.count() + added.count()
