"""Faults with a real worker, Redis and Orthanc.

- Orthanc down during a job: the job retries and succeeds once Orthanc is back.
- A worker SIGKILLed during inference, either its pool process (the kernel's OOM killer:
  the parent sees the loss and requeues the task) or the whole worker (a lost machine: the
  task stays unacked in Redis until the visibility timeout, then another worker gets it):
  the job still finishes once, with exactly one set of findings.
- A cancelled job stops and writes nothing: cancelled at a progress checkpoint, after its
  files were written but before it finished, or while still queued (it never runs).

Jobs are held at a progress checkpoint with the test-only `job_gate` (no sleeping and no
timing assumptions): the grading inference reports 0.50 after loading its four series
from Orthanc and 0.95 after writing its heat map.
"""

from __future__ import annotations

import os
import signal
from pathlib import Path

import pytest
from django.conf import settings
from django.urls import reverse

from ai_engine.registry import services
from ai_engine.registry.models import Job, ProjectAISettings
from annotations.models import Finding
from imaging.models import Study
from tests.worker.conftest import wait_for
from tests.worker.test_pipeline import grading_champion, grading_model_dir, upload, write_mri  # noqa: F401

pytestmark = [
    pytest.mark.integration,
    pytest.mark.slow,
    pytest.mark.django_db(transaction=True),
    pytest.mark.usefixtures("grading_champion"),
]

LOADED = 0.50  # checkpoint after the series were read from Orthanc, before the model runs
WRITTEN = 0.95  # checkpoint after the heat map was written, before the job finishes


@pytest.fixture
def study_uid(project, admin_client, tmp_path):
    ProjectAISettings.objects.filter(project=project).update(auto_inference=False)
    uid = upload(admin_client, project, write_mri(tmp_path / "mri", seed=21, grade=2))
    assert not Job.objects.exists()  # auto inference is off
    return uid


def queue_inference(client, project, study_uid: str) -> int:
    url = reverse("job-list", kwargs={"project": project.slug})
    response = client.post(url, {"kind": "inference", "study": study_uid}, format="json")
    assert response.status_code == 201, response.data
    return response.data[0]["id"]


def cancel(client, project, job_id: int):
    return client.post(reverse("job-cancel", kwargs={"project": project.slug, "pk": job_id}))


def wait_finished(job_id: int, worker, timeout_s: float = 120) -> Job:
    return wait_for(
        lambda: Job.objects.filter(pk=job_id, status__in=Job.TERMINAL).first(),
        timeout_s=timeout_s,
        what=f"job {job_id} to finish",
        worker=worker,
    )


def output_dir(job: Job) -> Path:
    return services.job_output_dir(job=job)


def assert_finished_once(job: Job, worker) -> None:
    assert job.status == Job.Status.SUCCEEDED, (job.error, worker.log_tail())
    assert job.attempts >= 2 and job.lost_attempts == 1, (job.attempts, job.lost_attempts)
    assert job.attempt_started_at is None
    by_job = Finding.objects.filter(job=job)
    by_study_version = Finding.objects.filter(study=job.study, model_version=job.model_version)
    assert by_job.count() == 1 and by_study_version.count() == 1  # one grade per study
    assert list(by_job.values_list("index", flat=True)) == [0]
    assert Job.objects.filter(study=job.study).count() == 1
    (finding,) = by_job
    assert finding.heatmap_path and (Path(settings.MEDIA_ROOT) / finding.heatmap_path).is_file()
    assert sorted(p.name for p in output_dir(job).iterdir()) == [
        Path(finding.heatmap_path).name
    ]  # nothing else left by the lost attempt
    assert Study.objects.get(pk=job.study_id).ai_status == "done"


def test_orthanc_down_job_retries_and_succeeds_once_it_is_back(
    project, admin_client, live_worker, orthanc_server, study_uid
):
    orthanc_server.stop()
    try:
        job_id = queue_inference(admin_client, project, study_uid)
        job = wait_for(
            lambda: Job.objects.filter(pk=job_id, message__contains="Orthanc unreachable").first(),
            timeout_s=60,
            what="a retry for Orthanc",
            worker=live_worker,
        )
        assert job.status == Job.Status.RUNNING and not Finding.objects.exists()
    finally:
        orthanc_server.start()
    job = wait_finished(job_id, live_worker, timeout_s=90)
    assert job.status == Job.Status.SUCCEEDED, (job.error, live_worker.log_tail())
    assert job.attempts >= 2
    assert job.lost_attempts == 0  # a retry is not a lost attempt
    assert Finding.objects.filter(job=job).count() == 1


def test_pool_process_sigkilled_mid_inference_job_finishes_once(
    project, admin_client, live_worker, job_gate, study_uid
):
    """The OOM killer's case: the pool process dies, the worker requeues its task."""
    job_gate.hold(LOADED)
    job_id = queue_inference(admin_client, project, study_uid)
    pid = job_gate.wait_held(job_id, LOADED, worker=live_worker)
    job = Job.objects.get(pk=job_id)
    assert (job.status, job.attempts, job.progress) == (Job.Status.RUNNING, 1, LOADED)
    assert pid in live_worker.child_pids()  # the task runs in the pool process, not the parent

    os.kill(pid, signal.SIGKILL)
    job_gate.release(LOADED)

    job = wait_finished(job_id, live_worker)
    assert_finished_once(job, live_worker)
    assert "WorkerLostError" in live_worker.log_tail(400)
    assert live_worker.process.poll() is None  # the worker itself lived on


def test_whole_worker_sigkilled_mid_inference_job_finishes_once_on_a_fresh_worker(
    project, admin_client, fast_redelivery_worker, job_gate, study_uid
):
    """A lost machine: nothing acks or rejects the task; Redis redelivers it after the
    visibility timeout to a worker started afterwards."""
    worker = fast_redelivery_worker
    job_gate.hold(LOADED)
    job_id = queue_inference(admin_client, project, study_uid)
    job_gate.wait_held(job_id, LOADED, worker=worker)
    assert Job.objects.get(pk=job_id).status == Job.Status.RUNNING

    worker.kill_main()
    job_gate.release(LOADED)
    assert Job.objects.get(pk=job_id).status == Job.Status.RUNNING  # nobody finished it
    worker.start()  # a fresh worker: new process, same broker

    job = wait_finished(job_id, worker, timeout_s=180)
    assert_finished_once(job, worker)


@pytest.mark.parametrize(
    "checkpoint",
    [LOADED, WRITTEN],
    ids=["at-a-progress-checkpoint", "after-the-work-before-completion"],
)
def test_cancelled_running_job_stops_writes_nothing_and_frees_the_worker(
    project, admin_client, live_worker, job_gate, study_uid, checkpoint
):
    job_gate.hold(checkpoint)
    job_id = queue_inference(admin_client, project, study_uid)
    job_gate.wait_held(job_id, checkpoint, worker=live_worker)
    job = Job.objects.get(pk=job_id)
    if checkpoint == WRITTEN:
        # The heat map is on disk: the cancel must remove it, and the completion
        # transaction (job row locked) must see the request and write no findings.
        assert any(output_dir(job).glob("*-gradcam.nii.gz"))

    response = cancel(admin_client, project, job_id)
    assert response.status_code == 200, response.data
    assert response.data["status"] == "running" and response.data["cancel_requested"] is True
    job_gate.release(checkpoint)

    job = wait_finished(job_id, live_worker)
    assert job.status == Job.Status.CANCELLED, (job.status, job.error, live_worker.log_tail())
    assert "nothing was written" in job.message
    assert not Finding.objects.filter(job=job).exists()
    assert not output_dir(job).exists()
    assert Study.objects.get(pk=job.study_id).ai_status == "none"
    # Cancelling a finished job is refused with the reason.
    again = cancel(admin_client, project, job_id)
    assert again.status_code == 409 and "only queued or running" in str(again.data)

    # The worker is free: the same inference queued again runs to the end.
    next_id = queue_inference(admin_client, project, study_uid)
    assert next_id != job_id
    following = wait_finished(next_id, live_worker)
    assert following.status == Job.Status.SUCCEEDED, (following.error, live_worker.log_tail())
    assert Finding.objects.filter(job=following).count() == 1
    assert Finding.objects.filter(study=job.study).count() == 1


def test_job_cancelled_while_queued_never_runs(
    project, admin_client, live_worker, job_gate, study_uid, tmp_path
):
    other_uid = upload(admin_client, project, write_mri(tmp_path / "mri2", seed=22, grade=1))
    job_gate.hold(LOADED)
    busy_id = queue_inference(admin_client, project, study_uid)
    job_gate.wait_held(busy_id, LOADED, worker=live_worker)  # the one worker slot is taken
    queued_id = queue_inference(admin_client, project, other_uid)
    assert Job.objects.get(pk=queued_id).status == Job.Status.QUEUED

    response = cancel(admin_client, project, queued_id)
    assert response.status_code == 200 and response.data["status"] == "cancelled"
    job_gate.release(LOADED)

    assert wait_finished(busy_id, live_worker).status == Job.Status.SUCCEEDED
    queued = Job.objects.get(pk=queued_id)
    # The worker still receives the task, and skips it.
    skipped = f"[{queued.celery_task_id}] succeeded"
    wait_for(
        lambda: any(
            skipped in line and line.endswith("'skipped'")
            for line in live_worker.log_tail(400).splitlines()
        ),
        timeout_s=60,
        what="the cancelled job's task to be skipped",
        worker=live_worker,
    )
    queued.refresh_from_db()
    assert queued.status == Job.Status.CANCELLED
    assert (queued.attempts, queued.started_at, queued.progress) == (0, None, 0.0)
    assert not Finding.objects.filter(job=queued).exists()
    assert not output_dir(queued).exists()
    assert Study.objects.get(pk=queued.study_id).ai_status == "none"
