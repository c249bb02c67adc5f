"""`manage.py demo`: users per role, a project, a kept password; safe to run again."""

from __future__ import annotations

import io

import pytest
from django.contrib.auth import get_user_model
from django.core.management import call_command
from django.core.management.base import CommandError
from django.test import Client

from projects.management.commands import demo
from projects.models import Membership, Project

pytestmark = pytest.mark.django_db


@pytest.fixture
def var_dir(settings, tmp_path, monkeypatch):
    settings.VAR_DIR = tmp_path
    monkeypatch.delenv("DEMO_PASSWORD", raising=False)
    return tmp_path


def _demo(**options) -> str:
    out = io.StringIO()
    call_command("demo", no_data=True, stdout=out, **options)
    return out.getvalue()


def test_creates_users_per_role_and_the_project(var_dir):
    output = _demo()
    password = (var_dir / "demo" / "password").read_text().strip()
    assert password in output
    assert oct((var_dir / "demo" / "password").stat().st_mode & 0o777) == "0o600"
    project = Project.objects.get(slug="demo")
    roles = dict(Membership.objects.filter(project=project).values_list("user__username", "role"))
    assert roles == {
        "demo-admin": "admin",
        "demo-radiologist": "radiologist",
        "demo-annotator": "annotator",
    }
    admin = get_user_model().objects.get(username="admin")
    assert admin.is_superuser and admin.is_staff and admin.check_password(password)
    assert "demo-radiologist" in (var_dir / "demo-credentials.txt").read_text()


def test_running_again_changes_nothing_and_keeps_the_password(var_dir):
    _demo()
    password = (var_dir / "demo" / "password").read_text().strip()
    user = get_user_model().objects.get(username="demo-annotator")
    user.set_password("changed-by-someone")
    user.save()
    Membership.objects.filter(user=user).update(role="admin")
    _demo()
    assert Project.objects.filter(slug="demo").count() == 1
    assert Membership.objects.filter(project__slug="demo").count() == 3
    user.refresh_from_db()
    assert user.check_password(password)  # reset to the demo password
    assert Membership.objects.get(user=user).role == "annotator"  # role restored


def test_demo_user_can_log_in_and_sees_the_demo_project(var_dir):
    _demo(password="a-long-demo-password")
    browser = Client()
    assert browser.login(username="demo-radiologist", password="a-long-demo-password")
    home = browser.get("/")
    assert home.status_code == 200 and "demo" in home.content.decode()


def test_password_from_the_environment(var_dir, monkeypatch):
    monkeypatch.setenv("DEMO_PASSWORD", "from-the-environment")
    _demo()
    assert (
        get_user_model().objects.get(username="demo-admin").check_password("from-the-environment")
    )


def test_too_short_password_is_refused(var_dir):
    with pytest.raises(CommandError, match="at least 12"):
        _demo(password="short")
    assert not Project.objects.filter(slug="demo").exists()


def test_missing_optional_steps_are_reported_as_skipped(var_dir, monkeypatch):
    monkeypatch.setattr(
        demo,
        "MODEL_STEPS",
        [("imaginary model", "ai_engine.no_such_module", [["x", "--out", "{out}"]])],
    )
    out = io.StringIO()
    command = demo.Command(stdout=out)
    command._models(var_dir)
    assert "skipped imaginary model: ai_engine.no_such_module does not exist yet" in out.getvalue()


def test_a_failing_step_is_reported_with_its_error(var_dir, monkeypatch):
    monkeypatch.setattr(
        demo,
        "MODEL_STEPS",
        [("broken model", "ai_engine", [["ai_engine", "no-such-group", "--out", "{out}/m"]])],
    )
    out = io.StringIO()
    demo.Command(stdout=out)._models(var_dir)
    assert "skipped broken model: exit 2" in out.getvalue()


def test_demo_models_are_registered_as_champions_and_queue_inference(var_dir, settings):
    """The demo's trained detector enters the registry and studies get inference jobs."""
    from ai_engine.cli import main as ai_engine_main
    from ai_engine.registry.models import Job, ModelVersion
    from tests.annotations.factories import make_study

    settings.MODEL_STORE_DIR = var_dir / "model-store"
    _demo()
    project = Project.objects.get(slug="demo")
    ct_study = make_study(project, modality="CT")
    make_study(project, modality="MR")
    models = var_dir / "demo" / "models"
    detection_args = ["detection", "train", "--demo", "--out", str(models / "detection")]
    assert ai_engine_main([*detection_args, "--no-progress"]) == 0

    out = io.StringIO()
    command = demo.Command(stdout=out)
    command.register_models(project, models)
    command.register_models(project, models)  # again: nothing new

    version = ModelVersion.objects.get(project=project)
    assert version.task == "nodule_detection" and version.status == "champion"
    assert (settings.MODEL_STORE_DIR / "demo").exists()
    jobs = Job.objects.filter(project=project, kind=Job.Kind.INFERENCE)
    assert [job.study_id for job in jobs] == [ct_study.pk]  # the MR study is not a CT
    text = out.getvalue()
    assert "registered version 1" in text and "registered already" in text
    assert "no model folder" in text  # the grading model was not made here


@pytest.mark.integration
def test_demo_studies_are_chest_cts_and_brain_mris_ingested_once(var_dir, orthanc, monkeypatch):
    """The demo's data step against a real Orthanc, with one case per set: a CT study for
    the detector, an MR study with its four sequences for the grader; a second run makes
    and ingests nothing again."""
    from imaging.models import Series, Study

    monkeypatch.setattr(
        demo,
        "PHANTOM_SETS",
        [
            (description, kind, 1, seed, folder)
            for description, kind, _, seed, folder in demo.PHANTOM_SETS
        ],
    )
    _demo()
    project = Project.objects.get(slug="demo")
    out = io.StringIO()
    demo.Command(stdout=out)._phantoms_and_ingest(project, var_dir / "demo")
    assert "skipped" not in out.getvalue(), out.getvalue()
    studies = Study.objects.filter(project=project)
    assert sorted(s.modalities_in_study for s in studies) == ["CT", "MR"]
    mr = studies.get(modalities_in_study="MR")
    assert Series.objects.filter(study=mr).count() == 4  # T1, T1c, T2, FLAIR
    # The MRIs are not the grading model's training cases (mr_00000 to mr_00005).
    assert [p.name for p in (var_dir / "demo" / "phantoms-mri").iterdir() if p.is_dir()] == [
        "mr_00100"
    ]

    again = io.StringIO()
    demo.Command(stdout=again)._phantoms_and_ingest(project, var_dir / "demo")
    text = again.getvalue()
    assert "phantom chest CTs already ingested" in text
    assert "phantom brain MRIs already ingested" in text
    assert Study.objects.filter(project=project).count() == 2
