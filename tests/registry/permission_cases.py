"""Permission rows of the registry API: members read (the active-learning queue too); admins
queue inference, training and scoring, cancel, promote, roll back."""

from ai_engine.registry.models import Job, ModelVersion
from ai_engine.registry.services import model_version_promote
from imaging.models import Study
from tests.annotations.factories import make_job, make_study, make_version
from tests.support.permissions import Case, table


def _champion_and_study(project):
    make_version(project)
    make_study(project)
    return {}


def _study_uid(project):
    return Study.objects.filter(project=project).first().study_instance_uid


def _ranked_queue(project):
    """A champion and a two-study queue, so the queue route answers with rows."""
    from ai_engine.registry.models import ActiveLearningScore

    version = make_version(project)
    for rank in (1, 2):
        ActiveLearningScore.objects.create(
            project=project,
            study=make_study(project),
            task=version.task,
            model_version=version,
            strategy=ActiveLearningScore.Strategy.UNCERTAINTY,
            rank=rank,
            score=1.0 / rank,
        )
    return {}


def _queued_job(project):
    job = make_job(make_study(project), make_version(project), status=Job.Status.QUEUED)
    return {"pk": job.pk}


def _version(project):
    return {"pk": make_version(project).pk}


def _candidate(project):
    make_version(project)
    return {"pk": make_version(project, status=ModelVersion.Status.CANDIDATE).pk}


def _replaced_champion(project):
    make_version(project)
    model_version_promote(
        version=make_version(project, status=ModelVersion.Status.CANDIDATE), by=None
    )
    return {}


CASES = [
    Case("job-list", "GET", table(200, 200, 200)),
    Case(
        "job-list",
        "POST",
        table(201, 403, 403),
        setup=_champion_and_study,
        data=lambda p: {"kind": "inference", "study": _study_uid(p)},
    ),
    Case(
        "job-list",
        "POST",
        table(201, 403, 403),
        setup=_champion_and_study,
        data=lambda p: {"kind": "scoring", "task": "nodule_detection", "strategy": "random"},
    ),
    Case("job-detail", "GET", table(200, 200, 200), setup=_queued_job),
    Case("job-cancel", "POST", table(200, 403, 403), setup=_queued_job),
    Case("model-version-list", "GET", table(200, 200, 200)),
    Case("model-version-detail", "GET", table(200, 200, 200), setup=_version),
    Case("model-version-promote", "POST", table(200, 403, 403), setup=_candidate),
    Case(
        "model-version-rollback",
        "POST",
        table(200, 403, 403),
        setup=_replaced_champion,
        data=lambda p: {"task": "nodule_detection"},
    ),
    Case("model-version-monitoring", "GET", table(200, 200, 200), setup=_version),
    Case("model-alert-list", "GET", table(200, 200, 200)),
    Case("ai-settings", "GET", table(200, 200, 200)),
    Case("ai-settings", "PATCH", table(200, 403, 403), data=lambda p: {"retrain_after_labels": 7}),
    Case("active-learning-queue", "GET", table(200, 200, 200), setup=_ranked_queue),
]
