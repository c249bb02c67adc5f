"""MLflow logging of platform training runs (optional; the registry stays the source of truth).

The full-run tests train a real (tiny) grading model on phantom MRIs ingested into a real
Orthanc, through `training_run`, and read what was logged back with the MLflow client
from a file store; the failure test points at a port nothing listens on.
"""

from __future__ import annotations

import io
import json
import logging
import sys
from pathlib import Path

import pytest
from django.core.management import call_command

from ai_engine.registry import tracking
from ai_engine.registry.models import DataSnapshot, Job, ModelVersion, ProjectAISettings
from ai_engine.registry.training import training_run
from annotations.services import added_finding_create
from imaging.models import Study
from tests.annotations.factories import make_job, make_study, make_version
from tests.support.orthanc import free_port

pytest.importorskip("mlflow", reason="the mlflow extra (mlflow-skinny) is not installed")
from mlflow import MlflowClient

pytestmark = pytest.mark.django_db

TINY_TRAIN_ARGS = [
    "--spatial-size", "16,16,16", "--epochs", "2", "--max-steps", "4", "--batch-size", "2",
    "--quiet",
]  # fmt: skip
MR_SHAPE = (32, 32, 16)


@pytest.fixture
def mlflow_env(monkeypatch):
    """MLflow's file store is opt-in since 3.x; keep the HTTP bounds the module sets local."""
    monkeypatch.setenv("MLFLOW_ALLOW_FILE_STORE", "true")
    for name, value in tracking.HTTP_DEFAULTS.items():
        monkeypatch.setenv(name, value)
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)


@pytest.fixture
def training_job(orthanc, project, users, settings, tmp_path, monkeypatch, mlflow_env) -> Job:
    """A running training job of a project with three graded phantom MRI studies in Orthanc."""
    from ai_engine.data.phantoms import write_brain_mri

    settings.MODEL_STORE_DIR = tmp_path / "models"
    monkeypatch.setenv("OMP_NUM_THREADS", "1")
    ProjectAISettings.objects.create(
        project=project,
        auto_inference=False,
        retrain_after_labels=0,
        train_args={"tumor_grading": TINY_TRAIN_ARGS},
    )
    for seed, grade in ((21, 1), (22, 3), (23, 2)):
        folder = tmp_path / f"mri{seed}"
        write_brain_mri(folder, 2000 + seed, grade=grade, shape=MR_SHAPE)
        series = [str(folder / name) for name in ("T1", "T1c", "T2", "FLAIR")]
        call_command("ingest", *series, "--project", project.slug, stdout=io.StringIO())
        study = Study.objects.filter(project=project).order_by("-pk").first()
        added_finding_create(
            study=study,
            series=study.series.first(),
            radiologist=users["radiologist"],
            kind="grade",
            grade=grade,
        )
    assert Study.objects.filter(project=project).count() == 3
    job = Job.objects.create(project=project, kind="training", task="tumor_grading")
    job.transition_to(Job.Status.RUNNING)
    return job


def _epoch_log(version: ModelVersion) -> list[dict]:
    text = (Path(version.path) / "log.jsonl").read_text()
    return [json.loads(line) for line in text.splitlines() if line.strip()]


@pytest.mark.integration
@pytest.mark.slow
def test_training_run_logs_params_curves_and_the_model_folder(training_job, settings, tmp_path):
    store = tmp_path / "mlruns"
    settings.MLFLOW_TRACKING_URI = store.as_uri()
    version = training_run(job=training_job)

    training_job.refresh_from_db()
    assert training_job.status == Job.Status.SUCCEEDED and "MLflow" not in training_job.message
    assert version.mlflow_run_id
    client = MlflowClient(tracking_uri=store.as_uri())
    run = client.get_run(version.mlflow_run_id)
    assert run.info.status == "FINISHED"
    experiment = client.get_experiment(run.info.experiment_id)
    assert experiment.name == f"{training_job.project.slug}/tumor_grading"

    params, tags = run.data.params, run.data.tags
    manifest = json.loads((Path(version.path) / "model.json").read_text())
    network = manifest["components"]["model"]["network"]
    assert params["task"] == "tumor_grading"
    assert params["data_snapshot_sha256"] == version.data_snapshot.sha256
    assert params["data_snapshot_items"] == "3"
    assert params["model_version_id"] == str(version.pk)
    assert params["validation_set_hash"] == version.validation_set_hash
    assert params["network.model"] == network["name"]
    assert params["made_by.train_config.epochs"] == "2"
    assert params["train_args"] == " ".join(TINY_TRAIN_ARGS)
    assert tags["platform.model_version_id"] == str(version.pk)
    assert tags["platform.model_version"] == f"v{version.version}"
    assert tags["platform.status"] == version.status

    # Curves: one point per epoch of the model folder's log.jsonl, step losses per step.
    epochs = _epoch_log(version)
    assert len(epochs) == 2
    history = client.get_metric_history(run.info.run_id, "train_loss")
    assert [(m.step, m.value) for m in history] == [(e["epoch"], e["train_loss"]) for e in epochs]
    steps = client.get_metric_history(run.info.run_id, "train_step_loss")
    assert [m.value for m in sorted(steps, key=lambda m: m.step)] == [
        loss for e in epochs for loss in e["step_losses"]
    ]
    assert sorted(m.step for m in steps) == list(range(1, epochs[-1]["step"] + 1))
    assert run.data.metrics["validation/macro_f1"] == version.validation_metric

    # Artifacts: the model folder's own files, byte for byte; no trainer scratch.
    listed = {f.path for f in client.list_artifacts(run.info.run_id, "model")}
    assert {"model/model.json", "model/weights.pt", "model/log.jsonl"} <= listed
    assert not any(p.startswith("model/training") for p in listed)
    local = client.download_artifacts(run.info.run_id, "model/model.json", str(tmp_path / "dl"))
    assert Path(local).read_bytes() == (Path(version.path) / "model.json").read_bytes()


@pytest.mark.integration
@pytest.mark.slow
def test_unreachable_server_does_not_fail_the_job(training_job, settings, caplog):
    url = f"http://127.0.0.1:{free_port()}"  # nothing listens there
    settings.MLFLOW_TRACKING_URI = url
    with caplog.at_level(logging.WARNING, logger="ai_engine.registry.tracking"):
        version = training_run(job=training_job)
    training_job.refresh_from_db()
    assert training_job.status == Job.Status.SUCCEEDED
    assert training_job.produced_version == version and version.mlflow_run_id == ""
    assert training_job.message.startswith(f"v{version.version} registered as")
    assert "MLflow logging failed" in training_job.message
    assert "127.0.0.1" in training_job.result["mlflow_error"]
    assert "MLflow logging failed" in caplog.text


# -- the module alone (no training) -----------------------------------------------------------


@pytest.fixture
def finished(project, tmp_path, mlflow_env):
    """A training job, its snapshot and a model folder as the trainer writes it."""
    folder = tmp_path / "model"
    (folder / "training").mkdir(parents=True)
    (folder / "training" / "last.pt").write_bytes(b"scratch")
    (folder / "weights.pt").write_bytes(b"weights")
    lines = [
        {"epoch": 0, "train_loss": 1.0, "step_losses": [1.2, 0.8], "step": 2, "val": {"f1": 0.2}},
        {"epoch": 1, "train_loss": 0.5, "step_losses": [0.6, 0.4], "step": 4, "val": {"f1": 0.4}},
    ]
    (folder / "log.jsonl").write_text("".join(json.dumps(x) + "\n" for x in lines))
    (folder / "model.json").write_text(
        json.dumps(
            {
                "made_by": "trained",
                "made_by_params": {"train_config": {"lr": 0.001}},
                "components": {"model": {"file": "weights.pt", "network": {"name": "densenet121"}}},
                "files": ["log.jsonl"],
            }
        )
    )
    job = make_job(make_study(project), make_version(project))
    job.params = {"reason": "labels"}
    snapshot = DataSnapshot.objects.create(
        project=project, task="nodule_detection", sha256="cd" * 32, n_items=2, n_labels=2
    )
    return {
        "job": job,
        "model_dir": folder,
        "snapshot": snapshot,
        "metrics": {"cpm": 0.7, "per_fp": {"0.125": 0.5}, "note": "text"},
        "metric_name": "cpm",
        "validation_set_hash": "valset",
        "champion_metric": 0.6,
        "train_args": [],
    }


def test_the_module_logs_curves_and_only_the_model_files(finished, settings, tmp_path):
    settings.MLFLOW_TRACKING_URI = (tmp_path / "store").as_uri()
    logged = tracking.training_run_log(**finished)
    assert logged.error == "" and logged.run_id
    client = MlflowClient(tracking_uri=settings.MLFLOW_TRACKING_URI)
    run = client.get_run(logged.run_id)
    assert run.info.status == "RUNNING"  # until the version is registered
    assert run.data.params["job.reason"] == "labels"
    assert run.data.params["network.model"] == "densenet121"
    assert run.data.params["made_by.train_config.lr"] == "0.001"
    assert run.data.metrics["validation/per_fp/0.125"] == 0.5
    assert run.data.metrics["champion/cpm"] == 0.6 and "validation/note" not in run.data.metrics
    assert [m.value for m in client.get_metric_history(logged.run_id, "val/f1")] == [0.2, 0.4]
    listed = {f.path for f in client.list_artifacts(logged.run_id, "model")}
    assert listed == {"model/model.json", "model/weights.pt", "model/log.jsonl"}
    # A cancelled job registers no version: the run is closed as killed.
    assert tracking.training_run_finish(run_id=logged.run_id, version=None) == ""
    assert client.get_run(logged.run_id).info.status == "KILLED"


def test_without_a_uri_nothing_is_logged(finished, settings, tmp_path, monkeypatch):
    settings.MLFLOW_TRACKING_URI = ""
    # mlflow's own default (./mlruns) and environment variable must not be used either.
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("MLFLOW_TRACKING_URI", (tmp_path / "env-store").as_uri())
    assert tracking.training_run_log(**finished) == tracking.RunLog()
    assert tracking.training_run_finish(run_id="", version=None) == ""
    assert not (tmp_path / "mlruns").exists() and not (tmp_path / "env-store").exists()


def test_without_mlflow_installed_nothing_is_logged(
    finished, settings, tmp_path, monkeypatch, caplog
):
    settings.MLFLOW_TRACKING_URI = (tmp_path / "store").as_uri()
    monkeypatch.setitem(sys.modules, "mlflow", None)  # `import mlflow` raises ImportError
    with caplog.at_level(logging.WARNING, logger="ai_engine.registry.tracking"):
        assert tracking.training_run_log(**finished) == tracking.RunLog()
    assert "mlflow is not installed" in caplog.text
    assert not (tmp_path / "store").exists()


@pytest.mark.parametrize(
    ("uri", "allow_file_store", "reason"),
    [
        ("nosuchscheme://somewhere", "true", "nosuchscheme"),
        (None, "false", "MLFLOW_ALLOW_FILE_STORE"),  # file store without the 3.x opt-in
    ],
    ids=["unknown scheme", "file store not enabled"],
)
def test_a_bad_uri_gives_an_error_text_not_an_exception(
    finished, settings, tmp_path, monkeypatch, uri, allow_file_store, reason
):
    monkeypatch.setenv("MLFLOW_ALLOW_FILE_STORE", allow_file_store)
    settings.MLFLOW_TRACKING_URI = uri or (tmp_path / "store").as_uri()
    logged = tracking.training_run_log(**finished)
    assert logged.run_id == "" and reason in logged.error
