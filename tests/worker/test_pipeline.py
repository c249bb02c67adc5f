"""End to end with a real worker, Redis and Orthanc: upload -> findings -> feedback -> retraining.

The grading model is trained for a couple of steps in a session fixture through the
ai_engine CLI on phantom MRIs; nothing about the findings is fixed in advance.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
from django.urls import reverse

from ai_engine.registry import services
from ai_engine.registry.models import Job, ModelVersion, ProjectAISettings
from annotations.models import Finding
from tests.worker.conftest import REPO, wait_for

pytestmark = [pytest.mark.integration, pytest.mark.slow, pytest.mark.django_db(transaction=True)]

MR_SHAPE = (32, 32, 16)
TINY_TRAIN_ARGS = [
    "--spatial-size",
    "16,16,16",
    "--epochs",
    "1",
    "--max-steps",
    "2",
    "--batch-size",
    "3",
    "--quiet",
]


def write_mri(folder: Path, seed: int, grade: int) -> list[Path]:
    from ai_engine.data.phantoms import write_brain_mri

    write_brain_mri(folder, seed, grade=grade, shape=MR_SHAPE)
    return sorted(p for p in folder.rglob("*") if p.is_file() and p.suffix != ".gz")


@pytest.fixture(scope="session")
def grading_model_dir(tmp_path_factory) -> Path:
    """A grading model folder trained for two steps on four phantom MRIs (ai_engine CLI)."""
    root = tmp_path_factory.mktemp("grading-model")
    items = []
    for seed, grade in zip(range(4), (1, 2, 3, 2), strict=True):
        write_mri(root / f"case{seed}", 1000 + seed, grade)
        items.append(
            {"images": {n: f"case{seed}/{n}" for n in ("T1", "T1c", "T2", "FLAIR")}, "grade": grade}
        )
    (root / "datalist.json").write_text(
        json.dumps({"training": items[:3], "validation": items[3:]})
    )
    subprocess.run(
        [
            sys.executable,
            "-m",
            "ai_engine",
            "grading",
            "train",
            "--datalist",
            str(root / "datalist.json"),
            "--out",
            str(root / "model"),
            *TINY_TRAIN_ARGS,
        ],
        cwd=REPO,
        env={**os.environ, "PYTHONPATH": str(REPO), "OMP_NUM_THREADS": "1"},
        check=True,
        timeout=300,
    )
    return root / "model"


@pytest.fixture
def grading_champion(project, grading_model_dir, live_worker):
    ProjectAISettings.objects.create(
        project=project, retrain_after_labels=0, train_args={"tumor_grading": TINY_TRAIN_ARGS}
    )
    return services.model_version_register(
        project=project,
        task="tumor_grading",
        source_dir=grading_model_dir,
        provenance="trained",
        validation_metric_name="macro_f1",
        validation_metric=0.0,
        validation_set_hash="phantom-seed-1003",
    )


def upload(client, project, files: list[Path]) -> str:
    handles = [open(p, "rb") for p in files]  # noqa: SIM115
    try:
        response = client.post(
            reverse("upload", kwargs={"project": project.slug}),
            {"files": handles},
            format="multipart",
        )
    finally:
        for h in handles:
            h.close()
    assert response.status_code == 200, response.data
    (study,) = response.data["studies"]
    uid = study["study_instance_uid"]
    return uid


def wait_job(study_uid: str, worker, *, timeout_s: float = 90) -> Job:
    def done():
        job = Job.objects.filter(study__study_instance_uid=study_uid).first()
        return job if job and job.is_terminal else None

    job = wait_for(done, timeout_s=timeout_s, what=f"inference job of {study_uid}", worker=worker)
    assert job.status == Job.Status.SUCCEEDED, (job.status, job.error, worker.log_tail())
    return job


def test_uploaded_study_gets_findings_with_heatmap_and_feedback_moves_the_figures(
    project,
    users,
    admin_client,
    radiologist_client,
    grading_champion,
    live_worker,
    tmp_path,
    settings,
):
    study_uid = upload(admin_client, project, write_mri(tmp_path / "mri", seed=7, grade=3))
    job = wait_job(study_uid, live_worker)
    assert job.model_version_id == grading_champion.pk and job.progress == 1.0 and job.attempts >= 1

    findings = radiologist_client.get(
        reverse("study-findings", kwargs={"project": project.slug, "study_uid": study_uid})
    ).data
    assert len(findings) == 1
    finding = findings[0]
    assert finding["kind"] == "grade" and finding["grade"] in (1, 2, 3)
    assert abs(sum(finding["class_probabilities"].values()) - 1) < 1e-4
    assert finding["score"] == max(finding["class_probabilities"].values())

    response = radiologist_client.get(
        reverse("finding-heatmap", kwargs={"project": project.slug, "pk": finding["id"]})
    )
    assert response.status_code == 200
    path = tmp_path / "heat.nii.gz"
    path.write_bytes(b"".join(response.streaming_content))
    heat = nib.load(path)
    assert heat.shape == MR_SHAPE  # on the T1 series grid
    assert np.isfinite(heat.get_fdata()).all()  # Grad-CAM of a 2-step model may be flat

    # Feedback moves the version's figures.
    monitoring = reverse(
        "model-version-monitoring", kwargs={"project": project.slug, "pk": grading_champion.pk}
    )
    feedback = reverse("finding-feedback", kwargs={"project": project.slug, "pk": finding["id"]})
    assert radiologist_client.get(monitoring).data["verdicts"] == 0
    assert (
        radiologist_client.post(
            feedback, {"verdict": "accept", "time_spent_s": 9}, format="json"
        ).status_code
        == 201
    )
    assert radiologist_client.get(monitoring).data["acceptance"] == 1.0
    other = users["radiologist"].__class__.objects.create(username="second-reader")
    project.memberships.create(user=other, role="radiologist")
    from tests.conftest import client_for

    wrong = 1 if finding["grade"] != 1 else 2
    response = client_for(other).post(
        feedback, {"verdict": "correct", "corrected_grade": wrong}, format="json"
    )
    assert response.status_code == 201, response.data
    figures = radiologist_client.get(monitoring).data
    assert (figures["verdicts"], figures["acceptance"], figures["agreement"]) == (2, 0.5, 0.5)


def test_retraining_after_n_labels_applies_the_champion_rule(
    project, users, radiologist_client, admin_client, grading_champion, live_worker, tmp_path
):
    ProjectAISettings.objects.filter(project=project).update(retrain_after_labels=3)
    study_uids = [
        upload(admin_client, project, write_mri(tmp_path / f"mri{seed}", seed=seed, grade=grade))
        for seed, grade in ((11, 1), (12, 3), (13, 2))
    ]
    finding_ids = [wait_job(uid, live_worker).findings.get().pk for uid in study_uids]
    for n, pk in enumerate(finding_ids):
        assert not Job.objects.filter(kind="training").exists()  # not before the 3rd label
        url = reverse("finding-feedback", kwargs={"project": project.slug, "pk": pk})
        finding = Finding.objects.get(pk=pk)
        body = (
            {"verdict": "accept"}
            if n != 1
            else {"verdict": "correct", "corrected_grade": 1 + finding.grade % 3}
        )
        assert radiologist_client.post(url, body, format="json").status_code == 201

    training = Job.objects.get(kind="training")
    assert training.params == {"reason": "labels"}
    training = wait_for(
        lambda: Job.objects.filter(pk=training.pk, status__in=Job.TERMINAL).first(),
        timeout_s=180,
        what="training job",
        worker=live_worker,
    )
    assert training.status == Job.Status.SUCCEEDED, (training.error, live_worker.log_tail())
    new = training.produced_version
    assert (
        new.version == 2 and new.data_snapshot.n_items == 3 and len(new.data_snapshot.sha256) == 64
    )
    assert Path(new.path).is_dir() and Path(new.path) != Path(grading_champion.path)
    champion_metric = training.result["champion_macro_f1"]
    assert champion_metric is not None
    expected = "champion" if new.validation_metric >= champion_metric else "candidate"
    assert new.status == expected, training.result
    assert ModelVersion.objects.filter(project=project, status="champion").count() == 1
