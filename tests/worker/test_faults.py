"""Faults with a real worker: Orthanc down during a job (retry, then success, findings once)."""

from __future__ import annotations

import pytest
from django.urls import reverse

from ai_engine.registry.models import Job, ProjectAISettings
from annotations.models import Finding
from tests.worker.conftest import wait_for
from tests.worker.test_pipeline import grading_champion, grading_model_dir, upload, write_mri  # noqa: F401

pytestmark = [
    pytest.mark.integration,
    pytest.mark.slow,
    pytest.mark.django_db(transaction=True),
    pytest.mark.usefixtures("grading_champion"),
]


def test_orthanc_down_job_retries_and_succeeds_once_it_is_back(
    project,
    admin_client,
    live_worker,
    orthanc_server,
    tmp_path,
):
    ProjectAISettings.objects.filter(project=project).update(auto_inference=False)
    study_uid = upload(admin_client, project, write_mri(tmp_path / "mri", seed=21, grade=2))
    assert not Job.objects.exists()  # auto inference is off
    orthanc_server.stop()
    try:
        url = reverse("job-list", kwargs={"project": project.slug})
        response = admin_client.post(url, {"kind": "inference", "study": study_uid}, format="json")
        assert response.status_code == 201, response.data
        job_id = response.data[0]["id"]
        job = wait_for(
            lambda: Job.objects.filter(pk=job_id, message__contains="Orthanc unreachable").first(),
            timeout_s=60,
            what="a retry for Orthanc",
            worker=live_worker,
        )
        assert job.status == Job.Status.RUNNING and not Finding.objects.exists()
    finally:
        orthanc_server.start()
    job = wait_for(
        lambda: Job.objects.filter(pk=job_id, status__in=Job.TERMINAL).first(),
        timeout_s=90,
        what="the job to finish",
        worker=live_worker,
    )
    assert job.status == Job.Status.SUCCEEDED, (job.error, live_worker.log_tail())
    assert job.attempts >= 2
    assert Finding.objects.filter(job=job).count() == 1
