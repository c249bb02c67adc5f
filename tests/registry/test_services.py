"""Registry services: job state machine, champion rule, promotion/rollback, exactly-once findings, monitoring."""

from __future__ import annotations

import pytest
from django.db import IntegrityError, transaction
from django.urls import reverse

from ai_engine.registry import monitoring, services
from ai_engine.registry.exceptions import InvalidTransition, ModelStoreConflict
from ai_engine.registry.inference import FindingData
from ai_engine.registry.models import Job, ModelAlert, ModelVersion, ProjectAISettings
from ai_engine.registry.selectors import labels_since_last_training, queue_position
from annotations.models import Finding, FindingFeedback
from annotations.services import feedback_submit
from tests.annotations.factories import make_finding, make_job, make_study, make_version

pytestmark = pytest.mark.django_db

S = Job.Status
ALLOWED = {
    (S.QUEUED, S.RUNNING),
    (S.QUEUED, S.CANCELLED),
    (S.QUEUED, S.FAILED),
    (S.RUNNING, S.SUCCEEDED),
    (S.RUNNING, S.FAILED),
    (S.RUNNING, S.CANCELLED),
}


@pytest.mark.parametrize("source", S.values)
@pytest.mark.parametrize("target", S.values)
def test_job_transitions_follow_the_table(project, source, target):
    job = make_job(make_study(project), make_version(project), status=source)
    if (source, target) in ALLOWED:
        job.transition_to(target)
        job.refresh_from_db()
        assert job.status == target
        assert (job.finished_at is not None) == (target in Job.TERMINAL)
    else:
        with pytest.raises(InvalidTransition):
            job.transition_to(target)
        job.refresh_from_db()
        assert job.status == source


def test_one_live_inference_per_study_and_version(project):
    study, version = make_study(project), make_version(project)
    first, created = services.inference_job_create(study=study, model_version=version)
    again, created_again = services.inference_job_create(study=study, model_version=version)
    assert created and not created_again and again.pk == first.pk
    with pytest.raises(IntegrityError), transaction.atomic():
        make_job(study, version, status=S.QUEUED)


def test_queue_position_counts_queued_jobs_ahead(project):
    version = make_version(project)
    jobs = [
        services.inference_job_create(study=make_study(project), model_version=version)[0]
        for _ in range(3)
    ]
    assert [queue_position(job=j) for j in jobs] == [1, 2, 3]
    jobs[0].transition_to(S.RUNNING)
    assert queue_position(job=jobs[0]) is None
    assert queue_position(job=jobs[2]) == 2


def test_findings_are_written_exactly_once(project):
    study, version = make_study(project), make_version(project)
    job, _ = services.inference_job_create(study=study, model_version=version)
    assert services.job_start(job_id=job.pk) is not None
    series_uid = study.series.first().series_instance_uid
    findings = [
        FindingData(
            kind="nodule",
            series_instance_uid=series_uid,
            center_lps_mm=[1, 2, 3],
            diameter_mm=5,
            score=0.8,
        )
    ]
    assert services.inference_complete(job_id=job.pk, findings=findings) is True
    assert services.inference_complete(job_id=job.pk, findings=findings) is False  # redelivered
    assert services.job_start(job_id=job.pk) is None
    assert Finding.objects.filter(job=job).count() == 1
    job.refresh_from_db()
    assert job.status == S.SUCCEEDED and job.progress == 1.0
    study.refresh_from_db()
    assert study.ai_status == "done"


def test_cancelled_running_job_writes_nothing(project):
    study, version = make_study(project), make_version(project)
    job, _ = services.inference_job_create(study=study, model_version=version)
    services.job_start(job_id=job.pk)
    services.job_cancel(job=job)
    series_uid = study.series.first().series_instance_uid
    done = services.inference_complete(
        job_id=job.pk,
        findings=[
            FindingData(kind="nodule", series_instance_uid=series_uid, score=0.5, diameter_mm=3)
        ],
    )
    assert done is False and not Finding.objects.exists()
    job.refresh_from_db()
    assert job.status == S.CANCELLED
    with pytest.raises(InvalidTransition):
        services.job_cancel(job=job)


def _register(project, tmp_path, metric, valset="v1", champion_metric=None):
    folder = tmp_path / f"src-{metric}-{valset}"
    folder.mkdir(exist_ok=True)
    (folder / "model.pt").write_bytes(f"{metric}".encode())
    return services.model_version_register(
        project=project,
        task="nodule_detection",
        source_dir=folder,
        provenance="trained",
        validation_metric_name="cpm",
        validation_metric=metric,
        validation_set_hash=valset,
        champion_metric_on_same_set=champion_metric,
    )


@pytest.mark.parametrize(
    ("metric", "valset", "champion_metric", "promoted"),
    [
        (0.6, "v1", None, True),  # better on the same set
        (0.5, "v1", None, True),  # equal counts ("at least")
        (0.4, "v1", None, False),  # worse
        (0.9, "v2", None, False),  # another validation set, champion not measured on it
        (0.9, "v2", 0.95, False),  # champion measured on v2 does better
        (0.9, "v2", 0.85, True),  # champion measured on v2 does worse
    ],
)
def test_champion_rule(project, tmp_path, settings, metric, valset, champion_metric, promoted):
    settings.MODEL_STORE_DIR = tmp_path / "store"
    first = _register(project, tmp_path, 0.5)
    assert (
        first.status == "champion"
        and (tmp_path / "store" / project.slug / "nodule_detection" / "1" / "model.pt").exists()
    )
    second = _register(project, tmp_path, metric, valset, champion_metric)
    second.refresh_from_db()
    first.refresh_from_db()
    assert (second.status == "champion") == promoted
    assert first.status == ("retired" if promoted else "champion")
    assert ModelVersion.objects.filter(status="champion").count() == 1


def test_model_store_is_never_overwritten(project, tmp_path, settings):
    settings.MODEL_STORE_DIR = tmp_path / "store"
    (tmp_path / "store" / project.slug / "nodule_detection" / "1").mkdir(parents=True)
    with pytest.raises(ModelStoreConflict):
        _register(project, tmp_path, 0.5)
    assert not ModelVersion.objects.exists()


def test_promote_and_rollback_by_api(project, admin_client, tmp_path, settings):
    settings.MODEL_STORE_DIR = tmp_path / "store"
    v1 = _register(project, tmp_path, 0.5)
    v2 = _register(project, tmp_path, 0.1)
    assert v2.status == "candidate"
    url = reverse("model-version-promote", kwargs={"project": project.slug, "pk": v2.pk})
    assert admin_client.post(url).status_code == 200
    assert admin_client.post(url).status_code == 409  # already champion
    rollback = reverse("model-version-rollback", kwargs={"project": project.slug})
    response = admin_client.post(rollback, {"task": "nodule_detection"}, format="json")
    assert response.status_code == 200 and response.data["version"] == 1
    v1.refresh_from_db(), v2.refresh_from_db()
    assert (v1.status, v2.status) == ("champion", "retired")
    assert admin_client.post(rollback, {"task": "tumor_grading"}, format="json").status_code == 409


JOB_BAD = [
    ({"kind": "inference"}, 400, "study"),
    ({"kind": "training"}, 400, "task"),
    ({"kind": "teleport", "task": "nodule_detection"}, 400, "kind"),
    ({"kind": "inference", "study": "1.2.3.404"}, 404, ""),
    ({"kind": "inference", "scope": "project", "task": "tumor_grading"}, 409, "champion"),
]


@pytest.mark.parametrize(("body", "code", "reason"), JOB_BAD)
def test_bad_job_requests(project, admin_client, body, code, reason):
    make_version(project)
    make_study(project)
    response = admin_client.post(
        reverse("job-list", kwargs={"project": project.slug}), body, format="json"
    )
    assert response.status_code == code, response.data
    assert reason in str(response.data)
    assert not Job.objects.exists()


def test_batch_inference_covers_fitting_studies_only(project, admin_client):
    make_version(project)
    ct = [make_study(project) for _ in range(3)]
    make_study(project, modality="MR")
    url = reverse("job-list", kwargs={"project": project.slug})
    response = admin_client.post(url, {"kind": "inference", "scope": "project"}, format="json")
    assert response.status_code == 201
    assert sorted(j["study_instance_uid"] for j in response.data) == sorted(
        s.study_instance_uid for s in ct
    )
    again = admin_client.post(url, {"kind": "inference", "scope": "project"}, format="json")
    assert again.status_code == 200 and Job.objects.count() == 3


FIELDS_REFUSED = [
    ({"kind": "training", "task": "tumor_grading", "study": "1.2.3"}, "study", "Only inference jobs take a study"),
    ({"kind": "scoring", "task": "tumor_grading", "scope": "project"}, "scope", "Only inference jobs take a scope"),
    ({"kind": "inference", "scope": "project", "study": "1.2.3"}, "study", "scope=project covers every study"),
]  # fmt: skip


@pytest.mark.parametrize(("body", "field", "reason"), FIELDS_REFUSED)
def test_fields_a_job_would_ignore_are_400(project, admin_client, body, field, reason):
    """A field the job would not read is refused rather than silently dropped."""
    response = admin_client.post(
        reverse("job-list", kwargs={"project": project.slug}), body, format="json"
    )
    assert response.status_code == 400, response.data
    assert reason in str(response.data[field])
    assert not Job.objects.exists()


def test_bad_settings_are_refused(project, admin_client):
    url = reverse("ai-settings", kwargs={"project": project.slug})
    for body in ({"alert_margin": 2}, {"monitoring_window": 0}, {"retrain_after_labels": -1}):
        assert admin_client.patch(url, body, format="json").status_code == 400
    # a typo is a 400 naming the field, not a 200 that changes nothing
    response = admin_client.patch(url, {"retrain_after_label": 5}, format="json")
    assert response.status_code == 400 and "Unknown field" in str(response.data)
    assert "retrain_after_labels" in str(response.data["retrain_after_label"])
    assert ProjectAISettings.objects.get(project=project).retrain_after_labels == 50


def test_monitoring_flags_a_falling_acceptance(project, users):
    ProjectAISettings.objects.create(project=project, monitoring_window=4, alert_margin=0.2)
    version = make_version(project)
    radiologist = users["radiologist"]
    findings = [make_finding(project, index=0) for _ in range(8)]
    for finding in findings[:4]:
        feedback_submit(finding=finding, radiologist=radiologist, verdict="accept")
    assert monitoring.version_check(version_id=version.pk) is None
    version.refresh_from_db()
    assert version.baseline_acceptance == 1.0
    for finding in findings[4:6]:
        feedback_submit(finding=finding, radiologist=radiologist, verdict="reject")
    alert = monitoring.version_check(version_id=version.pk)
    assert alert is not None and alert.figures["rolling_acceptance"] == 0.5
    assert "acceptance fell 50%" in alert.message
    for finding in findings[6:]:
        feedback_submit(finding=finding, radiologist=radiologist, verdict="accept")
    for finding in findings[4:6]:
        feedback_submit(finding=finding, radiologist=radiologist, verdict="accept")
    assert monitoring.version_check(version_id=version.pk) is None
    assert ModelAlert.objects.get().resolved_at is not None


def test_labels_since_training_count_accepts_corrections_and_added(project, users):
    make_version(project)
    radiologist = users["radiologist"]
    a, b, c = (make_finding(project) for _ in range(3))
    feedback_submit(finding=a, radiologist=radiologist, verdict="accept")
    feedback_submit(finding=b, radiologist=radiologist, verdict="reject")
    feedback_submit(finding=c, radiologist=radiologist, verdict="correct", corrected_diameter_mm=6)
    assert labels_since_last_training(project=project, task="nodule_detection") == 2
    assert labels_since_last_training(project=project, task="tumor_grading") == 0
    assert FindingFeedback.objects.count() == 3


# -- attempts lost with their worker, orphaned jobs ------------------------------------------


def _running_job(project, version=None):
    study, version = make_study(project), version or make_version(project)
    job, _ = services.inference_job_create(study=study, model_version=version)
    assert services.job_start(job_id=job.pk, celery_task_id="first") is not None
    return job


def test_an_attempt_lost_with_its_worker_is_taken_over_and_counted(
    project, tmp_path, settings, radiologist_client
):
    settings.MEDIA_ROOT = tmp_path
    job = _running_job(project)
    # The worker died (no retry noted, no final state): the redelivered task takes over.
    again = services.job_start(job_id=job.pk, celery_task_id="second")
    assert again is not None
    again.refresh_from_db()
    assert (again.status, again.attempts, again.lost_attempts) == (S.RUNNING, 2, 1)
    assert again.celery_task_id == "second" and "Attempt 1 was lost" in again.message
    # The API shows it (members read jobs).
    url = reverse("job-detail", kwargs={"project": project.slug, "pk": job.pk})
    shown = radiologist_client.get(url).data
    assert (shown["attempts"], shown["lost_attempts"]) == (2, 1)
    assert shown["attempt_started_at"] is not None
    # An attempt that ends with a retry is not lost.
    services.job_note_retry(job_id=job.pk, message="Orthanc unreachable; retry 1 in 1.0 s.")
    services.job_start(job_id=job.pk)
    again.refresh_from_db()
    assert (again.attempts, again.lost_attempts) == (3, 1)
    assert services.inference_complete(job_id=job.pk, findings=[]) is True
    again.refresh_from_db()
    assert again.status == S.SUCCEEDED and again.attempt_started_at is None


def test_a_job_that_keeps_killing_its_worker_fails_after_the_cap(
    project, tmp_path, settings, django_capture_on_commit_callbacks
):
    settings.MEDIA_ROOT = tmp_path
    settings.JOB_MAX_LOST_ATTEMPTS = 2
    job = _running_job(project)
    out_dir = services.job_output_dir(job=job)
    out_dir.mkdir(parents=True)
    (out_dir / "partial.nii.gz").write_bytes(b"left by a dead attempt")
    assert services.job_start(job_id=job.pk) is not None  # first loss: run again
    with django_capture_on_commit_callbacks(execute=True):
        assert services.job_start(job_id=job.pk) is None  # second loss: give up
    job.refresh_from_db()
    assert (job.status, job.lost_attempts, job.attempts) == (S.FAILED, 2, 2)
    assert "died 2 times" in job.error and job.study.ai_status == "failed"
    assert not out_dir.exists() and not Finding.objects.filter(job=job).exists()
    assert services.job_start(job_id=job.pk) is None  # a later redelivery does nothing


def test_cancel_of_a_job_whose_worker_died_is_applied_by_the_redelivery(
    project, tmp_path, settings, django_capture_on_commit_callbacks
):
    settings.MEDIA_ROOT = tmp_path
    job = _running_job(project)
    out_dir = services.job_output_dir(job=job)
    out_dir.mkdir(parents=True)
    (out_dir / "heat.nii.gz").write_bytes(b"partial")
    services.job_cancel(job=job)
    with django_capture_on_commit_callbacks(execute=True):
        assert services.job_start(job_id=job.pk) is None
    job.refresh_from_db()
    assert job.status == S.CANCELLED and "nothing was written" in job.message
    assert job.study.ai_status == "none" and not out_dir.exists()


def test_cancel_after_the_work_but_before_completion_removes_the_files(
    project, tmp_path, settings, django_capture_on_commit_callbacks
):
    settings.MEDIA_ROOT = tmp_path
    job = _running_job(project)
    out_dir = services.job_output_dir(job=job)
    out_dir.mkdir(parents=True)
    (out_dir / "heat.nii.gz").write_bytes(b"written")
    services.job_cancel(job=job)
    series_uid = job.study.series.first().series_instance_uid
    with django_capture_on_commit_callbacks(execute=True):
        done = services.inference_complete(
            job_id=job.pk,
            findings=[FindingData(kind="grade", series_instance_uid=series_uid, grade=2)],
        )
    assert done is False and not Finding.objects.exists() and not out_dir.exists()


def test_orphaned_running_jobs_are_sent_again(
    project, settings, django_capture_on_commit_callbacks
):
    from datetime import timedelta

    from django.utils import timezone

    visibility = settings.CELERY_BROKER_TRANSPORT_OPTIONS["visibility_timeout"]
    silence = settings.CELERY_TASK_HARD_TIME_LIMIT_S + visibility  # no live attempt after it
    later = timezone.now() + timedelta(seconds=silence + 121)
    version = make_version(project)
    orphan, fresh = _running_job(project, version), _running_job(project, version)
    queued, _ = services.inference_job_create(study=make_study(project), model_version=version)
    Job.objects.filter(pk=fresh.pk).update(updated_at=later - timedelta(seconds=10))
    with django_capture_on_commit_callbacks(execute=False) as sent:
        assert services.jobs_resend_orphaned(now=later) == [orphan.pk]
    assert len(sent) == 1  # one task sent, after the commit
    orphan.refresh_from_db()
    assert orphan.celery_task_id not in ("", "first") and "sent again" in orphan.message
    assert services.jobs_resend_orphaned() == []  # none is silent now
    # The resent task takes the job over and counts the lost attempt.
    assert services.job_start(job_id=orphan.pk) is not None
    orphan.refresh_from_db()
    assert (orphan.attempts, orphan.lost_attempts) == (2, 1)
    queued.refresh_from_db()
    assert queued.status == S.QUEUED  # queued jobs are left to the broker
