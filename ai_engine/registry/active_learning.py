"""Active-learning scoring jobs: rank a project's unlabeled studies for labelling next.

A scoring job (`Job.Kind.SCORING`, run by `worker.tasks.run_scoring_job`) takes the
project's champion for its task, selects the studies of the task's modality that nobody
labeled for the task (`selectors.unlabeled_studies`), loads each one's input Volume from
Orthanc exactly as inference does (`inference.load_study_input`) and hands them to
`ai_engine.active_learning.score_studies` with the job's strategy (`params["strategy"]`:
uncertainty or random). The ranking replaces the project's queue of that strategy and
task in the transaction that finishes the job (`scoring_complete`): a cancelled or failed
run leaves the previous queue as it was, and a redelivered run writes nothing twice.
"""

from __future__ import annotations

import math
from collections.abc import Iterator
from typing import Any

from django.db import transaction
from rest_framework import status

from ai_engine.registry import selectors, services
from ai_engine.registry.exceptions import NoChampion, RegistryError, StudyNotReady
from ai_engine.registry.models import ActiveLearningScore, Job, ModelTask, ModelVersion
from imaging.models import Study
from projects.models import Project

STRATEGIES: tuple[str, ...] = tuple(ActiveLearningScore.Strategy.values)
DEFAULT_STRATEGY = ActiveLearningScore.Strategy.UNCERTAINTY
#: Scoring options a job may carry in `params` besides the strategy (checked by the API's
#: serializer), passed to `score_studies` as keyword arguments.
SCORING_OPTIONS = ("mc_samples", "tta", "diversity_weight", "seed", "cold_start")
#: The options that act only on some runs; a run of another strategy or task would ignore
#: them, so a job that names one is refused (`seed` acts on every run).
_UNCERTAINTY_ONLY = ("mc_samples", "tta", "diversity_weight", "cold_start")
_GRADING_ONLY = ("cold_start",)
#: How many skipped studies a job's result lists by name (the count is always complete).
SKIPPED_LISTED = 50

# The job's progress bar: studies selected at 2 %, then loaded and scored one by one up
# to 95 %, then the queue is written.
_SELECTED_AT = 0.02
_SCORED_BY = 0.95


class ScoringConflict(RegistryError):
    """A scoring run of the task with another strategy is already queued or running."""

    status_code = status.HTTP_409_CONFLICT
    code = "scoring_running"


def ignored_options(*, task: str, strategy: str, options: dict[str, Any]) -> str | None:
    """Why a run of `strategy` for `task` would ignore some of `options`, or None when each
    one acts on it. The API refuses such a job (400) rather than queue a run that silently
    differs from the one asked for."""
    reasons = []
    uncertainty_only = sorted(k for k in options if k in _UNCERTAINTY_ONLY)
    if strategy != ActiveLearningScore.Strategy.UNCERTAINTY and uncertainty_only:
        reasons.append(
            f"{uncertainty_only} act only on uncertainty scoring; a {strategy} run takes `seed`."
        )
    grading_only = sorted(k for k in options if k in _GRADING_ONLY)
    if task != ModelTask.TUMOR_GRADING and grading_only:
        reasons.append(f"{grading_only} act only on {ModelTask.TUMOR_GRADING} scoring.")
    return " ".join(reasons) or None


def scoring_job_create(
    *,
    project: Project,
    task: str,
    strategy: str = DEFAULT_STRATEGY,
    options: dict[str, Any] | None = None,
    created_by=None,
) -> tuple[Job, bool]:
    """Queue a scoring run of `task`'s champion with `strategy`; returns (job, created).

    Raises NoChampion (409) when the task has no champion and ScoringConflict (409) when a
    run with another strategy or other options is live (one live scoring run per project
    and task). A live run with the same strategy and options is returned as it is (created
    False). ValueError for an unknown strategy or an option the run would ignore
    (`ignored_options`; the API checks both first and answers 400).
    """
    if strategy not in STRATEGIES:
        raise ValueError(f"strategy must be one of {list(STRATEGIES)}, got {strategy!r}")
    ignored = ignored_options(task=task, strategy=strategy, options=options or {})
    if ignored:
        raise ValueError(ignored)
    from ai_engine.registry.services import current_champion, run_job_create

    if current_champion(project=project, task=task) is None:
        raise NoChampion(
            f"Project {project.slug} has no champion model for {task}; scoring ranks studies "
            "with the champion, so train or promote one first."
        )
    job, created = run_job_create(
        project=project,
        kind=Job.Kind.SCORING,
        task=task,
        created_by=created_by,
        params={"strategy": strategy, **(options or {})},
    )
    live_strategy = job.params.get("strategy", DEFAULT_STRATEGY)
    live_options = {k: v for k, v in job.params.items() if k in SCORING_OPTIONS}
    if not created and (live_strategy, live_options) != (strategy, options or {}):
        raise ScoringConflict(
            f"A {live_strategy} scoring run for {task} with options {live_options} is already "
            f"{job.status} (job {job.pk}); wait for it or cancel it before starting a "
            f"{strategy} run with options {options or {}}.",
            extra={"job": job.pk},
        )
    return job, created


def scoring_run(*, job: Job) -> bool:
    """The whole scoring job; returns True when this run wrote the queue.

    Raises JobCancelled (from the progress callback) on request, NoChampion without a
    champion and `imaging.exceptions.OrthancUnavailable` when Orthanc cannot be reached
    (the task retries); the previous queue is untouched in each case.
    """
    from ai_engine.active_learning import missing_grades, score_studies
    from ai_engine.errors import AIEngineError
    from ai_engine.registry.services import current_champion, job_progress

    strategy = job.params.get("strategy", DEFAULT_STRATEGY)
    if strategy not in STRATEGIES:
        raise ValueError(f"strategy must be one of {list(STRATEGIES)}, got {strategy!r}")
    options = {k: v for k, v in job.params.items() if k in SCORING_OPTIONS}
    champion = current_champion(project=job.project_id, task=job.task)
    if champion is None:
        raise NoChampion(
            f"Project {job.project.slug} has no champion model for {job.task} any more; "
            "train or promote one and queue scoring again."
        )
    if job.model_version_id != champion.pk:  # the champion changed since the job was queued
        Job.objects.filter(pk=job.pk).update(model_version=champion)

    reached = 0.0

    def step(fraction: float) -> float:
        return _SELECTED_AT + (_SCORED_BY - _SELECTED_AT) * fraction

    def report(fraction: float, message: str) -> None:
        # score_studies reads the studies lazily (one in memory at a time): loading and
        # scoring study n report the same fraction. Never move the bar back, but let every
        # call check for cancellation.
        nonlocal reached
        reached = max(reached, min(fraction, _SCORED_BY))
        job_progress(job_id=job.pk, progress=reached, message=message)

    report(_SELECTED_AT, "Selecting unlabeled studies")
    candidates, skipped = _candidates(champion=champion, project=job.project, task=job.task)
    considered = len(candidates) + len(skipped)
    loaded, exhausted = 0, False

    def inputs() -> Iterator[tuple[str, Any]]:
        nonlocal loaded, exhausted
        from ai_engine.registry.inference import load_study_input
        from imaging.exceptions import OrthancError, OrthancUnavailable

        for n, study in enumerate(candidates):
            report(
                step(n / len(candidates)), f"Loading study {n + 1}/{len(candidates)} from Orthanc"
            )
            try:
                _, volume = load_study_input(champion, study)
            except OrthancUnavailable:
                raise
            except (StudyNotReady, OrthancError, AIEngineError) as exc:
                skipped.append({"study": study.study_instance_uid, "reason": str(exc)})
                continue
            loaded += 1
            yield study.study_instance_uid, volume
        exhausted = True

    scores = []
    if candidates:
        # A champion whose training set lacked a grade is a cold start: the library queues by
        # distance from the labelled studies, so they are read too (only then: each costs a
        # read from Orthanc).
        labeled = None
        cold = options.get("cold_start", True)
        if strategy == "uncertainty" and cold and missing_grades(champion.path):
            labeled = _labeled_inputs(champion=champion, project=job.project, task=job.task)
        try:
            scores = score_studies(
                champion.path,
                inputs(),
                strategy=strategy,
                progress=lambda fraction, message="": report(step(fraction), message),
                total=len(candidates),
                labeled=labeled,
                **options,
            )
        except AIEngineError:
            # Every candidate was unreadable (skipped): the queue is empty. Anything else is
            # a real scoring error.
            if not (exhausted and loaded == 0):
                raise
    report(_SCORED_BY, "Writing the queue")
    return scoring_complete(
        job_id=job.pk,
        version=champion,
        strategy=strategy,
        scores=scores,
        considered=considered,
        skipped=skipped,
    )


def _labeled_inputs(
    *, champion: ModelVersion, project: Project, task: str
) -> Iterator[tuple[str, Any]]:
    """The labelled studies' input Volumes, read from Orthanc as inference reads them; one that
    cannot be read is left out (the distance counts from the others), an unreachable Orthanc
    propagates (the task retries)."""
    from ai_engine.errors import AIEngineError
    from ai_engine.registry.inference import load_study_input
    from imaging.exceptions import OrthancError, OrthancUnavailable

    for study in selectors.labeled_studies(project=project, task=task).distinct().order_by("pk"):
        try:
            _, volume = load_study_input(champion, study)
        except OrthancUnavailable:
            raise
        except (StudyNotReady, OrthancError, AIEngineError):
            continue
        yield study.study_instance_uid, volume


def _candidates(
    *, champion: ModelVersion, project: Project, task: str
) -> tuple[list[Study], list[dict[str, str]]]:
    """Unlabeled studies whose series fit the task, and those skipped with the reason."""
    from ai_engine.registry.inference import input_series

    fit, skipped = [], []
    for study in selectors.unlabeled_studies(project=project, task=task):
        try:
            input_series(champion, study)
        except StudyNotReady as exc:
            skipped.append({"study": study.study_instance_uid, "reason": str(exc)})
            continue
        fit.append(study)
    return fit, skipped


def _json_safe(value: Any) -> Any:
    """`value` as strict JSON: numpy scalars as Python numbers, NaN and infinities as None."""
    if isinstance(value, dict):
        return {str(k): _json_safe(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_json_safe(v) for v in value]
    if hasattr(value, "item") and callable(value.item):  # numpy scalar
        value = value.item()
    if isinstance(value, float) and not math.isfinite(value):
        return None
    return value


def scoring_complete(
    *,
    job_id: int,
    version: ModelVersion,
    strategy: str,
    scores: list,
    considered: int,
    skipped: list[dict[str, str]],
) -> bool:
    """Replace the queue of the job's project, task and strategy and finish the job, once.

    Under the job row's lock, in one transaction: the old rows are deleted and the new
    ones created together with the job's move to succeeded. A job no longer running
    (finished by an earlier delivery, or cancelled) writes nothing; one whose cancellation
    was requested is cancelled here and the old queue stays. Returns True when it wrote.
    """
    with transaction.atomic():
        job = services.job_lock_for_completion(
            job_id=job_id, cancelled_message="Stopped on request; the previous queue is kept."
        )
        if job is None:
            return False
        bad = [s.key for s in scores if not math.isfinite(s.score)]
        if bad:
            raise ValueError(f"Scoring gave no finite score for {bad[:5]}; the queue is unchanged.")
        ordered = sorted(scores, key=lambda s: s.rank)
        studies = Study.objects.in_bulk([s.key for s in ordered], field_name="study_instance_uid")
        # A study deleted while the job ran drops out; the others keep their order.
        ordered = [
            s for s in ordered if s.key in studies and studies[s.key].project_id == job.project_id
        ]
        ActiveLearningScore.objects.filter(
            project_id=job.project_id, task=job.task, strategy=strategy
        ).delete()
        ActiveLearningScore.objects.bulk_create(
            ActiveLearningScore(
                project_id=job.project_id,
                study=studies[s.key],
                task=job.task,
                model_version=version,
                strategy=strategy,
                rank=rank,
                score=float(s.score),
                components=_json_safe(dict(s.components)),
                job=job,
            )
            for rank, s in enumerate(ordered, start=1)
        )
        job.result = {
            "strategy": strategy,
            "model_version": version.version,
            "ranked": len(ordered),
            "considered": considered,
            "skipped": len(skipped),
            "skipped_studies": skipped[:SKIPPED_LISTED],
        }
        job.save(update_fields=["result"])
        note = f"; {len(skipped)} skipped (series missing or unreadable)" if skipped else ""
        job.transition_to(
            Job.Status.SUCCEEDED,
            message=f"Ranked {len(ordered)} unlabeled studies by {strategy}{note}.",
        )
    return True
