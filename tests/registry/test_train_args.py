"""Extra training arguments (project settings per task, a training job's params): what each
bad value gets, and that none reaches `ai_engine <group> train`.

Project admins set them, and they are appended to the platform's own `train` call: `--out`
would write a model folder anywhere the worker may write, a path option would read any file.
"""

from __future__ import annotations

import importlib
import os
import subprocess
import sys

import pytest
from django.urls import reverse

from ai_engine.registry.exceptions import TrainArgsRefused
from ai_engine.registry.models import Job, ProjectAISettings
from ai_engine.registry.training import (
    resolved_train_args,
    train_args_for,
    train_args_problem,
    training_job_create,
    training_root,
    training_run,
)

DETECTION, GRADING = "nodule_detection", "tumor_grading"


@pytest.fixture
def pretrained(settings, tmp_path):
    """A pretrained folder holding one weights file, `brain.pt`."""
    root = tmp_path / "pretrained"
    root.mkdir()
    (root / "brain.pt").write_bytes(b"weights")
    (tmp_path / "elsewhere.pt").write_bytes(b"weights")
    settings.PRETRAINED_DIR = root
    return root


ACCEPTED = [
    (GRADING, []),
    (GRADING, ["--epochs", "5", "--lr", "3e-4", "--quiet"]),
    (GRADING, ["--pretrained", "brain.pt"]),
    (GRADING, ["--pretrained=brain.pt"]),
    (DETECTION, ["--fp-epochs", "3", "--init-weights", "brain.pt"]),
]


@pytest.mark.parametrize(("task", "args"), ACCEPTED)
def test_arguments_the_task_takes_are_accepted(pretrained, task, args):
    assert train_args_problem(task, args) is None


REFUSED = [
    (GRADING, "--epochs 5", "must be a list of strings"),
    (GRADING, ["--epochs", 5], "must be a list of strings"),
    (GRADING, ["--fp-epochs", "3"], "unrecognized arguments: --fp-epochs 3"),  # detection's
    (DETECTION, ["--spatial-size", "16,16,16"], "unrecognized arguments"),  # grading's
    (GRADING, ["--epochs", "many"], "invalid int value: 'many'"),
    (GRADING, ["--network", "unet"], "invalid choice: 'unet'"),
    (GRADING, ["stray"], "unrecognized arguments: stray"),
    (GRADING, ["-h"], "-h/--help is no training option"),
    # what the platform sets itself, spelled out or abbreviated as argparse allows
    (GRADING, ["--out", "/srv/other-project/models/1"], "--out: set by the platform"),
    (GRADING, ["--ou=/srv/x"], "--out: set by the platform"),
    (GRADING, ["--datalist", "/srv/other.json"], "--datalist: set by the platform"),
    (DETECTION, ["--data", "/srv/other.json"], "--data: set by the platform"),
    (DETECTION, ["--demo"], "--demo: set by the platform"),
    (GRADING, ["--resume"], "--resume: set by the platform"),
    # paths: only names inside the pretrained folder, written in full
    (
        GRADING,
        ["--pretrained", "../elsewhere.pt"],
        "name a file or folder inside the pretrained folder",
    ),
    (
        GRADING,
        ["--pretrained", "/etc/passwd"],
        "name a file or folder inside the pretrained folder",
    ),
    (DETECTION, ["--init-weights", "missing.pt"], "no such file or folder"),
    (DETECTION, ["--candidates-from", "../"], "name a file or folder inside the pretrained folder"),
    (
        GRADING,
        ["--pretrained", ""],
        "name a file or folder inside the pretrained folder",
    ),  # the folder itself
    (GRADING, ["--pre", "brain.pt"], "write --pretrained in full"),
]


@pytest.mark.parametrize(("task", "args", "reason"), REFUSED)
def test_each_bad_argument_list_gets_its_reason(pretrained, task, args, reason):
    problem = train_args_problem(task, args)
    assert problem is not None and reason in problem, problem


def test_path_values_reach_the_cli_absolute_inside_the_pretrained_folder(pretrained):
    weights = str(pretrained / "brain.pt")
    assert resolved_train_args(["--epochs", "2", "--pretrained", "brain.pt"]) == [
        "--epochs",
        "2",
        "--pretrained",
        weights,
    ]
    assert resolved_train_args(["--pretrained=brain.pt"]) == [f"--pretrained={weights}"]


def test_the_check_does_not_load_torch_into_the_web_process():
    """The web process builds both CLIs' parsers to check train_args; torch (hundreds of MB
    per web worker) must stay out of it."""
    code = (
        "import sys, django; django.setup()\n"
        "from ai_engine.registry.training import train_args_problem\n"
        "assert train_args_problem('nodule_detection', ['--epochs', '2']) is None\n"
        "assert train_args_problem('tumor_grading', ['--epochs', '2']) is None\n"
        "print(sorted(m for m in ('torch', 'monai') if m in sys.modules))\n"
    )
    env = {**os.environ, "DJANGO_SETTINGS_MODULE": "config.settings"}
    done = subprocess.run(
        [sys.executable, "-c", code], env=env, capture_output=True, text=True, check=True
    )
    assert done.stdout.strip() == "[]", done.stdout + done.stderr


# -- project settings -------------------------------------------------------------------------


def _settings_url(project) -> str:
    return reverse("ai-settings", kwargs={"project": project.slug})


SETTINGS_REFUSED = [
    (["--epochs", "5"], "must be an object of task -> arguments"),
    ({"liver_volumetry": []}, "unknown tasks ['liver_volumetry']"),
    ({GRADING: ["--out", "/srv/x"]}, "tumor_grading: --out: set by the platform"),
    ({DETECTION: ["--spatial-size", "16"]}, "nodule_detection: detection train refuses"),
    ({GRADING: "--epochs 5"}, "tumor_grading: train_args must be a list of strings"),
]


@pytest.mark.parametrize(("value", "reason"), SETTINGS_REFUSED)
def test_bad_settings_train_args_are_400_and_change_nothing(project, admin_client, value, reason):
    ProjectAISettings.objects.create(project=project, train_args={GRADING: ["--epochs", "7"]})
    response = admin_client.patch(_settings_url(project), {"train_args": value}, format="json")
    assert response.status_code == 400, response.data
    assert reason in str(response.data["train_args"])
    assert ProjectAISettings.objects.get(project=project).train_args == {GRADING: ["--epochs", "7"]}


def test_each_task_keeps_its_own_train_args(project, admin_client, pretrained):
    value = {
        GRADING: ["--epochs", "5", "--pretrained", "brain.pt"],
        DETECTION: ["--fp-epochs", "2"],
    }
    response = admin_client.patch(_settings_url(project), {"train_args": value}, format="json")
    assert response.status_code == 200, response.data
    assert ProjectAISettings.objects.get(project=project).train_args == value


# -- training jobs ----------------------------------------------------------------------------


def _jobs_url(project) -> str:
    return reverse("job-list", kwargs={"project": project.slug})


JOB_REFUSED = [
    ({"kind": "training", "task": GRADING, "params": {"epochs": 5}}, "Unknown training params ['epochs']"),
    ({"kind": "training", "task": GRADING, "params": {"train_args": ["--out", "/srv/x"]}}, "--out: set by the platform"),
    ({"kind": "training", "task": DETECTION, "params": {"train_args": ["--epochs", "x"]}}, "invalid int value"),
    ({"kind": "inference", "scope": "project", "params": {"threshold": 0.9}}, "Inference jobs take no params"),
]  # fmt: skip


@pytest.mark.parametrize(("body", "reason"), JOB_REFUSED)
def test_bad_job_params_are_400_and_queue_nothing(project, admin_client, body, reason):
    response = admin_client.post(_jobs_url(project), body, format="json")
    assert response.status_code == 400, response.data
    assert reason in str(response.data["params"])
    assert not Job.objects.exists()


def test_a_training_job_carries_its_checked_train_args(project, admin_client):
    body = {"kind": "training", "task": GRADING, "params": {"train_args": ["--epochs", "3"]}}
    response = admin_client.post(_jobs_url(project), body, format="json")
    assert response.status_code == 201, response.data
    assert Job.objects.get().params == {"train_args": ["--epochs", "3"]}


def test_a_training_run_with_other_train_args_while_one_is_live_is_a_conflict(
    project, admin_client
):
    body = {"kind": "training", "task": GRADING, "params": {"train_args": ["--epochs", "3"]}}
    first = admin_client.post(_jobs_url(project), body, format="json")
    assert first.status_code == 201
    again = admin_client.post(_jobs_url(project), body, format="json")
    assert again.status_code == 200 and again.data[0]["id"] == first.data[0]["id"]
    for other in ({"train_args": ["--epochs", "9"]}, {}):
        response = admin_client.post(_jobs_url(project), {**body, "params": other}, format="json")
        assert response.status_code == 409, response.data
        assert response.data["code"] == "training_running"
        assert response.data["job"] == first.data[0]["id"]
    assert Job.objects.count() == 1


def test_bad_train_args_are_refused_below_the_api_too(project):
    """`training_job_create` checks them itself, so a caller that skips the API's serializer
    cannot queue a run with them."""
    with pytest.raises(TrainArgsRefused, match="--out: set by the platform"):
        training_job_create(project=project, task=GRADING, train_args=["--out", "/srv/x"])
    assert not Job.objects.exists()


def test_a_run_takes_the_jobs_args_else_the_tasks_setting_else_the_defaults(project):
    def job(**params):
        return Job(project=project, kind=Job.Kind.TRAINING, task=GRADING, params=params)

    assert train_args_for(job()) == ["--quiet"]  # no settings: the defaults
    ProjectAISettings.objects.filter(project=project).update(
        train_args={GRADING: ["--epochs", "4"], DETECTION: ["--fp-epochs", "1"]}
    )
    assert train_args_for(job()) == ["--epochs", "4"]
    assert train_args_for(job(train_args=["--epochs", "9"])) == ["--epochs", "9"]
    assert train_args_for(job(train_args=[])) == []  # none, not the settings'
    ProjectAISettings.objects.filter(project=project).update(train_args={GRADING: []})
    assert train_args_for(job()) == []
    ProjectAISettings.objects.filter(project=project).update(train_args=["--epochs", "4"])
    with pytest.raises(TrainArgsRefused, match="must be an object of task -> arguments"):
        train_args_for(job())  # the old list form, written past the API and the migration


def test_stored_settings_the_check_refuses_stop_the_run_before_it_reads_anything(project):
    """Settings stored before the check existed (or written to the database directly) are
    checked again when the run starts: the job fails with the reason, nothing is exported."""
    ProjectAISettings.objects.create(project=project, train_args={GRADING: ["--out", "/srv/x"]})
    job = Job.objects.create(
        project=project, kind=Job.Kind.TRAINING, task=GRADING, status=Job.Status.RUNNING
    )
    with pytest.raises(TrainArgsRefused, match="--out: set by the platform"):
        training_run(job=job)
    assert not (training_root() / project.slug).exists()


def test_the_migration_gives_a_stored_list_to_every_task(project):
    """Before 0004 one list went to every task's `train`; each task keeps it, so every
    project trains as before the change."""
    migration = importlib.import_module("ai_engine.registry.migrations.0004_train_args_per_task")
    from django.apps import apps

    row = ProjectAISettings.objects.create(project=project, train_args=["--epochs", "4"])
    other = ProjectAISettings.objects.create(
        project=type(project).objects.create(slug="other", name="Other"), train_args=[]
    )
    migration.list_to_per_task(apps, None)
    row.refresh_from_db(), other.refresh_from_db()
    assert row.train_args == {DETECTION: ["--epochs", "4"], GRADING: ["--epochs", "4"]}
    assert other.train_args == {}
    migration.per_task_to_list(apps, None)
    row.refresh_from_db()
    assert row.train_args == ["--epochs", "4"]
