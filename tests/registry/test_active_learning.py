"""Active-learning scoring: which studies count as unlabeled, the queue's atomic replacement,
cancellation, the scoring job's API (with the status each bad input gets) and the queue API.

The worker end to end (real Redis, Celery worker, Orthanc and model) is in
tests/worker/test_active_learning.py.
"""

from __future__ import annotations

from pathlib import Path

import pytest
from django.contrib.auth import get_user_model
from django.urls import reverse
from pydicom.uid import generate_uid

from ai_engine.active_learning import StudyScore
from ai_engine.registry import active_learning, selectors, services
from ai_engine.registry.exceptions import JobCancelled, NoChampion
from ai_engine.registry.models import ActiveLearningScore, Job, ModelVersion
from annotations.models import AddedFinding, FindingFeedback, FindingKind
from imaging.exceptions import OrthancUnavailable
from imaging.models import Series, Study
from tests.annotations.factories import make_finding, make_job, make_study, make_version
from tests.imaging.uploads import upload
from tests.support.orthanc import free_port

pytestmark = pytest.mark.django_db

DETECTION, GRADING = "nodule_detection", "tumor_grading"


def _scoring_job(
    project, *, strategy="uncertainty", task=DETECTION, start=True, options=None
) -> Job:
    job, created = active_learning.scoring_job_create(
        project=project, task=task, strategy=strategy, options=options
    )
    assert created
    if start:
        services.job_start(job_id=job.pk)
        job.refresh_from_db()
    return job


def _queue(project, strategy="uncertainty", task=DETECTION) -> list[tuple[str, int]]:
    rows = selectors.active_learning_queue(project=project, strategy=strategy, task=task)
    return [(row.study.study_instance_uid, row.rank) for row in rows]


def _scores(*studies, start=1) -> list[StudyScore]:
    return [
        StudyScore(
            key=s.study_instance_uid,
            score=1.0 / rank,
            rank=rank,
            components={"entropy": 1.0 / rank, "diversity": float("nan")},
        )
        for rank, s in enumerate(studies, start=start)
    ]


def _complete(job, scores, **kwargs) -> bool:
    return active_learning.scoring_complete(
        job_id=job.pk,
        version=job.model_version,
        strategy=job.params["strategy"],
        scores=scores,
        considered=len(scores),
        skipped=[],
        **kwargs,
    )


# -- which studies are unlabeled -------------------------------------------------------------


def test_unlabeled_studies_leave_out_labeled_ones_and_other_modalities(project, users):
    make_version(project)
    radiologist = users["radiologist"]
    plain = make_study(project)  # no finding at all
    unreviewed = make_finding(project).study  # a finding nobody gave a verdict on
    rejected = make_finding(project)
    FindingFeedback.objects.create(finding=rejected, radiologist=radiologist, verdict="reject")
    accepted = make_finding(project)
    FindingFeedback.objects.create(finding=accepted, radiologist=radiologist, verdict="accept")
    added = make_study(project)
    AddedFinding.objects.create(
        project=project,
        study=added,
        series=added.series.first(),
        radiologist=radiologist,
        kind=FindingKind.NODULE,
        center_lps_mm=[1, 2, 3],
        diameter_mm=5,
    )
    # A study with a CT and an MR series: a grade added on its MR series labels it for
    # grading, not for nodule detection.
    graded_ct = make_study(project)
    mr_series = Series.objects.create(
        study=graded_ct, series_instance_uid=generate_uid(), modality="MR", series_number=2
    )
    Study.objects.filter(pk=graded_ct.pk).update(modalities_in_study="CT,MR")
    AddedFinding.objects.create(
        project=project,
        study=graded_ct,
        series=mr_series,
        radiologist=radiologist,
        kind=FindingKind.GRADE,
        grade=2,
    )
    mr = make_study(project, modality="MR")

    unlabeled = set(selectors.unlabeled_studies(project=project, task=DETECTION))
    labeled = set(selectors.labeled_studies(project=project, task=DETECTION))
    assert unlabeled == {plain, unreviewed, graded_ct}
    assert unlabeled.isdisjoint({rejected.study, accepted.study, added, mr})
    assert {rejected.study, accepted.study, added} <= labeled
    assert set(selectors.unlabeled_studies(project=project, task=GRADING)) == {mr}
    assert set(selectors.labeled_studies(project=project, task=GRADING)) == {graded_ct}


# -- the queue is replaced in one transaction, once -----------------------------------------


def test_a_scoring_run_replaces_its_queue_and_leaves_the_others(project):
    make_version(project)
    grading = make_version(project, task=GRADING)
    a, b, c = (make_study(project) for _ in range(3))
    mr = make_study(project, modality="MR")
    first = _scoring_job(project)
    assert _complete(first, _scores(a, b))
    assert _queue(project) == [(a.study_instance_uid, 1), (b.study_instance_uid, 2)]
    # Another strategy and another task have queues of their own.
    other = ActiveLearningScore.objects.create(
        project=project,
        study=mr,
        task=GRADING,
        model_version=grading,
        strategy="uncertainty",
        rank=1,
        score=0.3,
    )
    random_job = _scoring_job(project, strategy="random")
    assert _complete(random_job, _scores(c, a))

    second = _scoring_job(project)
    assert _complete(second, _scores(c, b))
    assert _queue(project) == [(c.study_instance_uid, 1), (b.study_instance_uid, 2)]
    assert _queue(project, "random") == [(c.study_instance_uid, 1), (a.study_instance_uid, 2)]
    assert ActiveLearningScore.objects.filter(pk=other.pk).exists()
    row = ActiveLearningScore.objects.get(project=project, strategy="uncertainty", study=c)
    # NaN is not JSON: stored as null so the API can render it.
    assert row.job == second and row.components == {"entropy": 1.0, "diversity": None}
    second.refresh_from_db()
    assert second.status == Job.Status.SUCCEEDED and second.progress == 1.0
    assert second.result["ranked"] == 2 and second.result["strategy"] == "uncertainty"

    # A redelivered run finds the job finished and writes nothing a second time.
    pks = set(ActiveLearningScore.objects.values_list("pk", flat=True))
    assert _complete(second, _scores(a)) is False
    assert set(ActiveLearningScore.objects.values_list("pk", flat=True)) == pks


def test_a_failing_write_leaves_the_previous_queue_and_the_job_running(project):
    make_version(project)
    a, b = make_study(project), make_study(project)
    assert _complete(_scoring_job(project), _scores(a))
    job = _scoring_job(project)
    broken = _scores(b)[0]
    unserializable = StudyScore(key=broken.key, score=0.5, rank=1, components={"x": object()})
    with pytest.raises(TypeError):
        _complete(job, [unserializable])
    assert _queue(project) == [(a.study_instance_uid, 1)]
    job.refresh_from_db()
    assert job.status == Job.Status.RUNNING
    with pytest.raises(ValueError, match="no finite score"):
        _complete(
            job, [StudyScore(key=b.study_instance_uid, score=float("nan"), rank=1, components={})]
        )
    assert _queue(project) == [(a.study_instance_uid, 1)]


def test_cancelled_run_keeps_the_previous_queue(project):
    make_version(project)
    a, b = make_study(project), make_study(project)
    assert _complete(_scoring_job(project), _scores(a))
    job = _scoring_job(project)
    services.job_cancel(job=job)
    # Cancelled while scoring: the progress callback stops the run before anything is written.
    with pytest.raises(JobCancelled):
        active_learning.scoring_run(job=job)
    services.job_mark_cancelled(job_id=job.pk)
    job.refresh_from_db()
    assert job.status == Job.Status.CANCELLED
    assert _queue(project) == [(a.study_instance_uid, 1)]
    # Cancelled between scoring and writing: the finishing transaction cancels instead.
    late = _scoring_job(project)
    services.job_cancel(job=late)
    assert _complete(late, _scores(b)) is False
    late.refresh_from_db()
    assert late.status == Job.Status.CANCELLED
    assert _queue(project) == [(a.study_instance_uid, 1)]


def test_scoring_run_fails_clearly_without_a_champion(project):
    champion = make_version(project)
    a = make_study(project)
    assert _complete(_scoring_job(project), _scores(a))
    job = _scoring_job(project)
    ModelVersion.objects.filter(pk=champion.pk).update(status=ModelVersion.Status.RETIRED)
    with pytest.raises(NoChampion, match="no champion model for nodule_detection"):
        active_learning.scoring_run(job=job)
    assert _queue(project) == [(a.study_instance_uid, 1)]


def test_studies_whose_series_do_not_fit_are_skipped_and_counted(project, users):
    make_version(project, task=GRADING)
    # MR studies whose single series is none of T1/T1c/T2/FLAIR cannot be graded.
    unfit = [make_study(project, modality="MR") for _ in range(2)]
    labeled = make_finding(project, kind=FindingKind.GRADE)
    FindingFeedback.objects.create(
        finding=labeled, radiologist=users["radiologist"], verdict="accept"
    )
    stale = ActiveLearningScore.objects.create(
        project=project,
        study=labeled.study,
        task=GRADING,
        model_version=ModelVersion.objects.get(task=GRADING),
        strategy="uncertainty",
        rank=1,
        score=0.9,
    )
    job = _scoring_job(project, task=GRADING)
    assert active_learning.scoring_run(job=job) is True
    job.refresh_from_db()
    assert job.status == Job.Status.SUCCEEDED
    assert (job.result["ranked"], job.result["considered"], job.result["skipped"]) == (0, 2, 2)
    assert {s["study"] for s in job.result["skipped_studies"]} == {
        s.study_instance_uid for s in unfit
    }
    assert "lacks MR sequences" in job.result["skipped_studies"][0]["reason"]
    assert "2 skipped" in job.message
    # The queue now says what is true: nothing unlabeled could be ranked (the stale row of
    # a study labeled since is gone).
    assert not ActiveLearningScore.objects.filter(pk=stale.pk).exists()


# -- scoring real studies from a real Orthanc (in process) ----------------------------------


@pytest.fixture(scope="module")
def untrained_grading_folder(tmp_path_factory) -> Path:
    """A real (randomly initialised, untrained) grading model folder on a 16^3 grid."""
    import torch

    from ai_engine.grading.config import TASK, GradingConfig
    from ai_engine.grading.train import preprocessing_record
    from ai_engine.modelfolder import Component, save_model_folder
    from ai_engine.networks import build_network

    config = GradingConfig(spatial_size=(16, 16, 16))
    kwargs = config.build_kwargs()
    torch.manual_seed(0)
    network = build_network(config.network, **kwargs)
    folder = tmp_path_factory.mktemp("al-grading") / "model"
    save_model_folder(
        folder,
        task=TASK,
        components={
            "model": Component(network=config.network, network_kwargs=kwargs, module=network)
        },
        preprocessing=preprocessing_record(config),
    )
    return folder


def _upload_mri(client, project, folder: Path, seed: int) -> Study:
    from ai_engine.data.phantoms import write_brain_mri

    write_brain_mri(folder, seed, grade=1 + seed % 3, shape=(32, 32, 16))
    files = {
        f"{p.parent.name}-{p.name}": p.read_bytes()
        for p in sorted(folder.rglob("*"))
        if p.is_file() and not p.name.endswith(".gz")
    }
    response = upload(client, project, files)
    assert response.status_code == 200, response.data
    (study,) = response.data["studies"]
    return Study.objects.get(study_instance_uid=study["study_instance_uid"])


@pytest.mark.integration
def test_inference_and_scoring_load_the_same_study_input(orthanc, project, admin_client, tmp_path):
    """`load_study_input` is the one loader: CT series in HU for detection, the 4 MR
    sequences stacked on the T1 grid for grading."""
    import numpy as np

    from ai_engine.registry.inference import load_study_input
    from imaging.volumes import load_series_volume
    from tests.imaging.uploads import dicom_files
    from tests.support.dicom_files import ct_series

    assert (
        upload(admin_client, project, dicom_files(ct_series(3, rows=20, columns=16))).status_code
        == 200
    )
    ct = Study.objects.get(modalities_in_study__contains="CT")
    seen: list[float] = []
    series, volume = load_study_input(make_version(project), ct, lambda f, m="": seen.append(f))
    assert series == ct.series.get() and volume.array.shape == (16, 20, 3) and seen == [0.0]
    np.testing.assert_array_equal(volume.array, load_series_volume(series).array)

    mr = _upload_mri(admin_client, project, tmp_path / "mri", 5)
    seen.clear()
    series, volume = load_study_input(
        make_version(project, task=GRADING), mr, lambda f, m="": seen.append(f)
    )
    assert series.series_description.startswith("T1 ") and seen == [0.0, 0.25, 0.5, 0.75]
    assert volume.array.shape == (4, 32, 32, 16)
    assert volume.meta["channel_names"] == ["T1", "T1c", "T2", "FLAIR"]
    np.testing.assert_allclose(volume.affine, load_series_volume(series).affine)


@pytest.mark.integration
def test_scoring_run_ranks_unlabeled_studies_loaded_from_orthanc(
    orthanc, project, users, admin_client, untrained_grading_folder, tmp_path, settings
):
    settings.MODEL_STORE_DIR = tmp_path / "models"
    studies = [_upload_mri(admin_client, project, tmp_path / f"mri{k}", k) for k in range(3)]
    champion = services.model_version_register(
        project=project,
        task=GRADING,
        source_dir=untrained_grading_folder,
        provenance="trained",
        validation_metric_name="macro_f1",
        validation_metric=0.0,
    )
    labeled = make_finding(
        project,
        study=studies[0],
        kind=FindingKind.GRADE,
        job=make_job(studies[0], champion),
    )
    FindingFeedback.objects.create(
        finding=labeled, radiologist=users["radiologist"], verdict="correct", corrected_grade=3
    )
    unlabeled = {s.study_instance_uid for s in studies[1:]}

    for strategy in ("uncertainty", "random"):
        job = _scoring_job(project, task=GRADING, strategy=strategy)
        assert active_learning.scoring_run(job=job) is True
        job.refresh_from_db()
        assert job.status == Job.Status.SUCCEEDED, job.error
        assert (job.result["ranked"], job.result["skipped"]) == (2, 0)
        rows = list(selectors.active_learning_queue(project=project, strategy=strategy))
        assert {r.study.study_instance_uid for r in rows} == unlabeled
        assert [r.rank for r in rows] == [1, 2] and rows[0].score >= rows[1].score
        assert all(r.model_version == champion and r.job == job for r in rows)
        expected = {"uncertainty": "entropy", "random": "random_draw"}[strategy]
        assert all(expected in r.components for r in rows), rows[0].components
    # the folder records no training grades: not a cold start, and the first study of the
    # queue has nothing to count a distance from
    assert rows[0].components.get("cold_start") is None  # random's rows
    uncertain = list(selectors.active_learning_queue(project=project, strategy="uncertainty"))
    assert uncertain[0].components["cold_start"] is False
    assert uncertain[0].components["min_cosine_distance"] is None

    # A champion whose training set lacked a grade (here grade 3) is a cold start: the
    # labelled study is read from Orthanc too and the queue counts every distance from it.
    from ai_engine.modelfolder import read_manifest, update_manifest

    made_by = read_manifest(champion.path).get("made_by_params") or {}
    counts = {"1": 4, "2": 2, "3": 0}
    update_manifest(champion.path, made_by_params={**made_by, "label_counts": counts})
    # a labelled study that cannot be read as a grading input (a CT study, nothing in
    # Orthanc) is left out of the distances; the run still succeeds
    graded_ct = make_study(project)
    AddedFinding.objects.create(
        project=project,
        study=graded_ct,
        series=graded_ct.series.first(),
        radiologist=users["radiologist"],
        kind=FindingKind.GRADE,
        grade=2,
    )
    job = _scoring_job(project, task=GRADING)
    assert active_learning.scoring_run(job=job) is True
    job.refresh_from_db()
    assert job.status == Job.Status.SUCCEEDED, job.error
    rows = list(selectors.active_learning_queue(project=project, strategy="uncertainty"))
    assert {r.study.study_instance_uid for r in rows} == unlabeled
    assert all(r.components["cold_start"] is True for r in rows)
    assert all(r.components["min_cosine_distance"] is not None for r in rows)
    # a project whose studies hold no case of some grade turns it off: no distances read
    job = _scoring_job(project, task=GRADING, options={"cold_start": False})
    assert active_learning.scoring_run(job=job) is True
    job.refresh_from_db()
    assert job.status == Job.Status.SUCCEEDED, job.error
    rows = list(selectors.active_learning_queue(project=project, strategy="uncertainty"))
    assert all(r.components["cold_start"] is False for r in rows)
    assert rows[0].components["min_cosine_distance"] is None

    # Orthanc unreachable: the error propagates (the task retries) and the queue stays.
    before = _queue(project, task=GRADING)
    job = _scoring_job(project, task=GRADING)
    settings.ORTHANC_URL = f"http://127.0.0.1:{free_port()}"
    with pytest.raises(OrthancUnavailable):
        active_learning.scoring_run(job=job)
    job.refresh_from_db()
    assert job.status == Job.Status.RUNNING
    assert _queue(project, task=GRADING) == before


# -- API --------------------------------------------------------------------------------------


def _jobs_url(project) -> str:
    return reverse("job-list", kwargs={"project": project.slug})


def _queue_url(project) -> str:
    return reverse("active-learning-queue", kwargs={"project": project.slug})


@pytest.mark.parametrize("strategy", ["uncertainty", "random", None])
def test_admin_queues_scoring_with_either_strategy(project, admin_client, strategy):
    champion = make_version(project)
    expected = strategy or "uncertainty"
    params = {"mc_samples": 4, "seed": 3} if expected == "uncertainty" else {"seed": 3}
    body = {"kind": "scoring", "task": DETECTION, "params": params}
    if strategy:
        body["strategy"] = strategy
    response = admin_client.post(_jobs_url(project), body, format="json")
    assert response.status_code == 201, response.data
    (job,) = response.data
    assert (job["kind"], job["task"], job["status"]) == ("scoring", DETECTION, "queued")
    assert job["params"] == {"strategy": expected, **params}
    assert job["model_version"] == champion.pk
    again = admin_client.post(_jobs_url(project), body, format="json")
    assert again.status_code == 200 and again.data[0]["id"] == job["id"]


def test_admin_turns_the_cold_start_off_through_the_api(project, admin_client):
    """`cold_start: false` (a project whose studies hold no case of some grade) reaches the
    job's params as a boolean, where `scoring_run` reads it (without it the params hold no
    such key and the run takes true: the test above)."""
    make_version(project, task=GRADING)
    body = {"kind": "scoring", "task": GRADING, "params": {"cold_start": False}}
    response = admin_client.post(_jobs_url(project), body, format="json")
    assert response.status_code == 201, response.data
    (job,) = response.data
    assert job["params"] == {"strategy": "uncertainty", "cold_start": False}
    assert Job.objects.get(pk=job["id"]).params["cold_start"] is False


def test_a_run_that_would_ignore_an_option_is_refused_below_the_api_too(project):
    """`scoring_job_create` checks the options itself, so a caller that skips the API's
    serializer cannot queue a run that differs from the one it asked for."""
    make_version(project)
    make_version(project, task=GRADING)
    with pytest.raises(ValueError, match="act only on uncertainty scoring"):
        active_learning.scoring_job_create(
            project=project, task=GRADING, strategy="random", options={"cold_start": False}
        )
    with pytest.raises(ValueError, match="act only on tumor_grading scoring"):
        active_learning.scoring_job_create(
            project=project, task=DETECTION, options={"cold_start": True}
        )
    assert not Job.objects.exists()
    job, created = active_learning.scoring_job_create(
        project=project, task=GRADING, strategy="random", options={"seed": 5}
    )
    assert created and job.params == {"strategy": "random", "seed": 5}


def test_the_api_checks_every_option_the_scoring_run_passes_on():
    """The options a scoring job's params may carry are listed twice: the serializer that
    checks them and `SCORING_OPTIONS`, which `scoring_run` passes to the library. An option
    in one list only would be refused by the API or never reach the library."""
    from ai_engine.registry.serializers import ScoringOptionsSerializer

    assert set(ScoringOptionsSerializer().fields) == set(active_learning.SCORING_OPTIONS)


SCORING_BAD = [
    ({"kind": "scoring"}, 400, "needs a task"),
    ({"kind": "scoring", "task": "liver_volumetry"}, 400, "task"),
    ({"kind": "scoring", "task": DETECTION, "strategy": "bogus"}, 400, "use one of: uncertainty, random"),
    ({"kind": "scoring", "task": DETECTION, "strategy": ""}, 400, "strategy"),
    ({"kind": "training", "task": DETECTION, "strategy": "random"}, 400, "Only scoring jobs"),
    ({"kind": "inference", "scope": "project", "strategy": "random"}, 400, "Only scoring jobs"),
    ({"kind": "scoring", "task": GRADING}, 409, "no champion model for tumor_grading"),
    ({"kind": "scoring", "task": DETECTION, "params": {"mc_samples": 0}}, 400, "mc_samples"),
    ({"kind": "scoring", "task": DETECTION, "params": {"mc_samples": "many"}}, 400, "mc_samples"),
    ({"kind": "scoring", "task": DETECTION, "params": {"diversity_weight": 2}}, 400, "diversity_weight"),
    ({"kind": "scoring", "task": DETECTION, "params": {"cold_start": "sometimes"}}, 400, "cold_start"),
    ({"kind": "scoring", "task": DETECTION, "params": {"strategy": "random"}}, 400, "Unknown scoring params"),
    ({"kind": "scoring", "task": DETECTION, "params": "fast"}, 400, "params"),
    # options the run would ignore: refused rather than queued and silently dropped
    ({"kind": "scoring", "task": DETECTION, "strategy": "random", "params": {"mc_samples": 4}}, 400, "['mc_samples'] act only on uncertainty scoring"),
    ({"kind": "scoring", "task": DETECTION, "strategy": "random", "params": {"tta": False, "diversity_weight": 0.5}}, 400, "['diversity_weight', 'tta'] act only on uncertainty"),
    ({"kind": "scoring", "task": DETECTION, "params": {"cold_start": False}}, 400, "['cold_start'] act only on tumor_grading scoring"),
]  # fmt: skip


@pytest.mark.parametrize(("body", "code", "reason"), SCORING_BAD)
def test_bad_scoring_requests(project, admin_client, body, code, reason):
    make_version(project)  # a detection champion; none for grading
    make_study(project)
    response = admin_client.post(_jobs_url(project), body, format="json")
    assert response.status_code == code, response.data
    assert reason in str(response.data)
    assert not Job.objects.exists()


def test_scoring_with_another_strategy_while_one_is_live_is_a_conflict(project, admin_client):
    make_version(project)
    body = {"kind": "scoring", "task": DETECTION, "strategy": "uncertainty"}
    first = admin_client.post(_jobs_url(project), body, format="json")
    assert first.status_code == 201
    response = admin_client.post(_jobs_url(project), {**body, "strategy": "random"}, format="json")
    assert response.status_code == 409, response.data
    assert (
        response.data["code"] == "scoring_running" and response.data["job"] == first.data[0]["id"]
    )
    assert Job.objects.count() == 1


def test_scoring_with_other_options_while_one_is_live_is_a_conflict(project, admin_client):
    """The live run would not use the new options: 409 naming it, not the live job as if
    it were the one asked for."""
    make_version(project)
    body = {"kind": "scoring", "task": DETECTION, "params": {"mc_samples": 4}}
    first = admin_client.post(_jobs_url(project), body, format="json")
    assert first.status_code == 201
    other = {**body, "params": {"mc_samples": 16}}
    response = admin_client.post(_jobs_url(project), other, format="json")
    assert response.status_code == 409, response.data
    assert response.data["code"] == "scoring_running" and "{'mc_samples': 4}" in str(response.data)
    assert (
        admin_client.post(_jobs_url(project), {**body, "params": {}}, format="json").status_code
        == 409
    )
    assert Job.objects.count() == 1


def test_only_admins_queue_scoring(project, radiologist_client, annotator_client):
    make_version(project)
    body = {"kind": "scoring", "task": DETECTION}
    for client in (radiologist_client, annotator_client):
        assert client.post(_jobs_url(project), body, format="json").status_code == 403
    assert not Job.objects.exists()


def test_job_list_and_detail_show_scoring_progress(project, admin_client, radiologist_client):
    make_version(project)
    job = _scoring_job(project, strategy="random")
    services.job_progress(job_id=job.pk, progress=0.4, message="Loading study 3/7 from Orthanc")
    detail = radiologist_client.get(
        reverse("job-detail", kwargs={"project": project.slug, "pk": job.pk})
    ).data
    assert (detail["kind"], detail["status"], detail["progress"]) == ("scoring", "running", 0.4)
    assert detail["message"] == "Loading study 3/7 from Orthanc" and detail["eta_at"] is not None
    listing = radiologist_client.get(_jobs_url(project), {"kind": "scoring"}).data["results"]
    assert [(j["id"], j["progress"]) for j in listing] == [(job.pk, 0.4)]
    cancel = admin_client.post(
        reverse("job-cancel", kwargs={"project": project.slug, "pk": job.pk})
    )
    assert cancel.status_code == 200 and cancel.data["cancel_requested"] is True


def test_queue_api_lists_ranks_with_study_version_and_job(project, annotator_client):
    champion = make_version(project)
    a, b, c = (make_study(project) for _ in range(3))
    a.study_description = "CT chest low dose"
    a.save()
    job = _scoring_job(project)
    assert _complete(job, _scores(b, a))
    assert _complete(_scoring_job(project, strategy="random"), _scores(c))

    response = annotator_client.get(_queue_url(project))
    assert response.status_code == 200
    rows = response.data["results"]
    assert [(r["rank"], r["study"]["study_instance_uid"]) for r in rows] == [
        (1, b.study_instance_uid),
        (2, a.study_instance_uid),
    ]
    second = rows[1]
    assert second["study"]["study_description"] == "CT chest low dose"
    assert second["score"] == 0.5 and second["strategy"] == "uncertainty"
    assert second["components"] == {"entropy": 0.5, "diversity": None}
    assert second["model_version"] == {"id": champion.pk, "task": DETECTION, "version": 1}
    assert second["task"] == DETECTION and second["job"] == job.pk and second["created_at"]

    random_rows = annotator_client.get(_queue_url(project), {"strategy": "random"}).data["results"]
    assert [r["study"]["study_instance_uid"] for r in random_rows] == [c.study_instance_uid]
    graded = annotator_client.get(_queue_url(project), {"task": GRADING}).data["results"]
    assert graded == []
    # An empty `?strategy=` is the default, like no strategy at all.
    empty = annotator_client.get(_queue_url(project), {"strategy": ""}).data["results"]
    assert [r["rank"] for r in empty] == [1, 2] and empty[0]["strategy"] == "uncertainty"


def test_a_study_labeled_after_the_run_leaves_the_queue_at_once(project, annotator_client, users):
    make_version(project)
    a, b, c = (make_study(project) for _ in range(3))
    assert _complete(_scoring_job(project), _scores(a, b, c))
    # A radiologist gives a verdict on a finding of b: b is labeled now.
    finding = make_finding(project, study=b)
    FindingFeedback.objects.create(
        finding=finding, radiologist=users["radiologist"], verdict="accept"
    )
    rows = annotator_client.get(_queue_url(project)).data["results"]
    assert [(r["rank"], r["study"]["study_instance_uid"]) for r in rows] == [
        (1, a.study_instance_uid),
        (3, c.study_instance_uid),
    ]


@pytest.mark.parametrize(
    ("query", "reason"),
    [
        ({"strategy": "bogus"}, "use one of: uncertainty, random"),
        ({"strategy": "Random"}, "use one of: uncertainty, random"),
        ({"task": "liver_volumetry"}, "task"),
    ],
)
def test_bad_queue_queries_are_400_not_an_empty_list(project, annotator_client, query, reason):
    response = annotator_client.get(_queue_url(project), query)
    assert response.status_code == 400, response.data
    assert reason in str(response.data)


def test_queue_of_another_project_is_hidden(project, other_project):
    outsider = get_user_model().objects.create(username="al-outsider")
    other_project.memberships.create(user=outsider, role="admin")
    from tests.conftest import client_for

    assert client_for(outsider).get(_queue_url(project)).status_code == 404
