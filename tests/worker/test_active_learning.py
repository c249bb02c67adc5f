"""Active learning end to end with a real worker, Redis and Orthanc.

Three phantom MRI studies are uploaded and graded by the champion (a grading model trained
for two steps); a radiologist gives a verdict on one; an admin queues a scoring run per
strategy through the API, the worker scores the studies it loads from Orthanc, and the
queue API lists the two unlabeled studies ranked 1..2 with the parts of their scores. A
run cancelled after scoring (held at 95 % by the test-only job gate) leaves the queue as it was.
"""

from __future__ import annotations

import pytest
from django.urls import reverse

from ai_engine.registry.models import Job
from tests.worker.conftest import wait_for
from tests.worker.test_pipeline import (  # noqa: F401 - fixtures used by name
    grading_champion,
    grading_model_dir,
    upload,
    wait_job,
    write_mri,
)

pytestmark = [pytest.mark.integration, pytest.mark.slow, pytest.mark.django_db(transaction=True)]

COMPONENT = {"uncertainty": "entropy", "random": "random_draw"}
# Generous deadlines: the machine's 2 cores are shared with other test runs. They bound a
# hang; they measure nothing.
DEADLINE_S = 300


def _wait_scoring(job_id: int, worker) -> Job:
    job = wait_for(
        lambda: Job.objects.filter(pk=job_id, status__in=Job.TERMINAL).first(),
        timeout_s=DEADLINE_S,
        what=f"scoring job {job_id}",
        worker=worker,
    )
    assert job.status == Job.Status.SUCCEEDED, (job.status, job.error, worker.log_tail())
    return job


def test_scoring_ranks_the_unlabeled_studies_with_both_strategies(
    project,
    users,
    admin_client,
    radiologist_client,
    grading_champion,  # noqa: F811 - the fixture imported above
    live_worker,
    job_gate,
    tmp_path,
):
    uids = [
        upload(admin_client, project, write_mri(tmp_path / f"mri{seed}", seed=seed, grade=grade))
        for seed, grade in ((21, 1), (22, 2), (23, 3))
    ]
    findings = [wait_job(uid, live_worker, timeout_s=DEADLINE_S).findings.get() for uid in uids]
    feedback = reverse("finding-feedback", kwargs={"project": project.slug, "pk": findings[0].pk})
    assert (
        radiologist_client.post(feedback, {"verdict": "accept"}, format="json").status_code == 201
    )
    unlabeled = set(uids[1:])

    jobs_url = reverse("job-list", kwargs={"project": project.slug})
    queue_url = reverse("active-learning-queue", kwargs={"project": project.slug})
    for strategy in ("uncertainty", "random"):
        response = admin_client.post(
            jobs_url,
            {"kind": "scoring", "task": "tumor_grading", "strategy": strategy},
            format="json",
        )
        assert response.status_code == 201, response.data
        job = _wait_scoring(response.data[0]["id"], live_worker)
        assert job.model_version_id == grading_champion.pk and job.progress == 1.0
        assert job.result["ranked"] == 2 and job.result["skipped"] == 0, job.result

        detail = admin_client.get(
            reverse("job-detail", kwargs={"project": project.slug, "pk": job.pk})
        ).data
        assert (detail["status"], detail["progress"], detail["params"]["strategy"]) == (
            "succeeded",
            1.0,
            strategy,
        )

        rows = radiologist_client.get(queue_url, {"strategy": strategy}).data["results"]
        assert {r["study"]["study_instance_uid"] for r in rows} == unlabeled
        assert [r["rank"] for r in rows] == [1, 2]
        assert rows[0]["score"] >= rows[1]["score"]
        for row in rows:
            assert row["strategy"] == strategy and row["job"] == job.pk
            assert row["model_version"]["id"] == grading_champion.pk
            assert COMPONENT[strategy] in row["components"], row["components"]
            assert row["components"]["foreground"] is True  # phantom brains have tissue

    # Each strategy keeps its own queue.
    queues = {
        strategy: radiologist_client.get(queue_url, {"strategy": strategy}).data["results"]
        for strategy in ("uncertainty", "random")
    }
    for strategy, rows in queues.items():
        assert len(rows) == 2 and {r["strategy"] for r in rows} == {strategy}

    # A run cancelled after scoring, before writing, leaves the previous queue as it was.
    job_gate.hold(0.95)
    response = admin_client.post(
        jobs_url, {"kind": "scoring", "task": "tumor_grading"}, format="json"
    )
    assert response.status_code == 201, response.data
    job_id = response.data[0]["id"]
    job_gate.wait_held(job_id, 0.95, worker=live_worker, timeout_s=DEADLINE_S)
    cancel = admin_client.post(
        reverse("job-cancel", kwargs={"project": project.slug, "pk": job_id})
    )
    assert cancel.status_code == 200 and cancel.data["cancel_requested"] is True
    job_gate.release(0.95)
    cancelled = wait_for(
        lambda: Job.objects.filter(pk=job_id, status__in=Job.TERMINAL).first(),
        timeout_s=DEADLINE_S,
        what="the cancelled scoring job",
        worker=live_worker,
    )
    assert cancelled.status == Job.Status.CANCELLED, (cancelled.status, cancelled.error)
    assert radiologist_client.get(queue_url).data["results"] == queues["uncertainty"]
