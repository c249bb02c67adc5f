"""Registry admin: every page renders with real rows, filters and search narrow the lists,
and the promote / roll back / cancel actions go through the services (refusals shown)."""

from __future__ import annotations

import json
from html import escape

import pytest
from django.contrib import admin
from django.contrib.auth.models import Permission
from django.contrib.messages import get_messages
from django.test import Client
from django.urls import reverse

from ai_engine.registry import monitoring, services
from ai_engine.registry.models import (
    ActiveLearningScore,
    DataSnapshot,
    Job,
    ModelAlert,
    ModelVersion,
    ProjectAISettings,
    PromotionEvent,
)
from annotations.services import feedback_submit
from tests.annotations.factories import make_finding, make_job, make_study
from tests.factories import ProjectFactory, UserFactory

pytestmark = pytest.mark.django_db

REGISTRY_MODELS = [
    ProjectAISettings,
    DataSnapshot,
    ModelVersion,
    PromotionEvent,
    ModelAlert,
    Job,
    ActiveLearningScore,
]


def _client(user) -> Client:
    client = Client()
    client.force_login(user)
    return client


@pytest.fixture
def superuser(db):
    return UserFactory(username="root", is_staff=True, is_superuser=True)


@pytest.fixture
def root(superuser) -> Client:
    return _client(superuser)


def _model_folder(tmp_path, name: str):
    """A source folder with a manifest like the ai_engine's (the admin reads model.json)."""
    folder = tmp_path / name
    folder.mkdir()
    (folder / "weights.pt").write_bytes(b"weights")
    (folder / "model.json").write_text(
        json.dumps(
            {
                "format_version": 1,
                "made_by": "trained",
                "made_by_params": {"train_config": {"epochs": 3, "lr": 0.001}},
                "components": {
                    "model": {
                        "format": "state_dict",
                        "file": "weights.pt",
                        "network": {"name": "densenet121", "kwargs": {"in_channels": 4}},
                    }
                },
            }
        )
    )
    return folder


def _register(project, tmp_path, name: str, metric: float, snapshot=None) -> ModelVersion:
    return services.model_version_register(
        project=project,
        task="nodule_detection",
        source_dir=_model_folder(tmp_path, name),
        provenance="trained",
        validation_metric_name="cpm",
        validation_metric=metric,
        validation_set_hash="valset",
        data_snapshot=snapshot,
    )


@pytest.fixture
def rows(project, users, tmp_path, settings):
    """Real rows of every registry model, made through the services where they exist."""
    settings.MODEL_STORE_DIR = tmp_path / "store"
    ProjectAISettings.objects.create(project=project, monitoring_window=2, alert_margin=0.2)
    snapshot = DataSnapshot.objects.create(
        project=project, task="nodule_detection", sha256="ab" * 32, n_items=4, n_labels=6
    )
    v1 = _register(project, tmp_path, "v1", 0.5, snapshot)  # first: champion
    v2 = _register(project, tmp_path, "v2", 0.4, snapshot)  # worse: candidate
    study = make_study(project)
    job = make_job(study, v1, status=Job.Status.QUEUED)
    radiologist = users["radiologist"]
    findings = [make_finding(project, study=study, index=i, job=job) for i in range(4)]
    for finding in findings[:2]:
        feedback_submit(finding=finding, radiologist=radiologist, verdict="accept")
    monitoring.version_check(version_id=v1.pk)  # baseline 100 %
    for finding in findings[2:]:
        feedback_submit(finding=finding, radiologist=radiologist, verdict="reject")
    alert = monitoring.version_check(version_id=v1.pk)  # rolling 0 %: flagged
    assert alert is not None
    ActiveLearningScore.objects.create(
        project=project,
        study=study,
        task=v1.task,
        model_version=v1,
        strategy="random",
        rank=1,
        score=0.3,
    )
    return {"v1": v1, "v2": v2, "job": job, "alert": alert, "snapshot": snapshot, "study": study}


def _url(model, view: str, *args) -> str:
    return reverse(f"admin:{model._meta.app_label}_{model._meta.model_name}_{view}", args=args)


def _messages(response) -> list[str]:
    return [str(m) for m in get_messages(response.wsgi_request)]


def test_every_registry_model_is_registered():
    for model in REGISTRY_MODELS:
        assert admin.site.is_registered(model), model


@pytest.mark.parametrize("model", REGISTRY_MODELS, ids=lambda m: m.__name__)
def test_changelist_and_change_page_render(root, rows, model):
    assert model.objects.exists()
    response = root.get(_url(model, "changelist"))
    assert response.status_code == 200
    assert response.context["cl"].result_count == model.objects.count()
    for obj in model.objects.all():
        response = root.get(_url(model, "change", obj.pk))
        assert response.status_code == 200, (model, obj.pk)


def test_version_pages_show_how_it_was_made_metrics_and_the_alert(root, rows):
    v1, alert = rows["v1"], rows["alert"]
    page = root.get(_url(ModelVersion, "change", v1.pk)).content.decode()
    for text in (
        "densenet121",  # network from model.json
        '"lr": 0.001',  # training config
        rows["snapshot"].sha256,
        "cpm",
        "0.5",
        alert.message,
        "baseline",
    ):
        assert escape(text) in page, text
    listing = root.get(_url(ModelVersion, "changelist")).content.decode()
    assert escape(alert.message) in listing  # the flag shows on the list
    assert "&#9888;" in listing or "\u26a0" in listing


def test_version_without_its_folder_says_so(root, rows):
    v2 = rows["v2"]
    ModelVersion.objects.filter(pk=v2.pk).update(path="/nonexistent/folder")
    page = root.get(_url(ModelVersion, "change", v2.pk)).content.decode()
    assert "/nonexistent/folder/model.json is missing" in page


def test_alert_shows_its_figures(root, rows):
    alert = rows["alert"]
    assert alert.figures["baseline_acceptance"] == 1.0 and alert.figures["rolling_acceptance"] == 0
    listing = root.get(_url(ModelAlert, "changelist")).content.decode()
    assert "100% -&gt; 0%" in listing and "OPEN" in listing
    page = root.get(_url(ModelAlert, "change", alert.pk)).content.decode()
    assert "FLAGGED" in page and "-100%" in page and "margin 20%" in page


@pytest.mark.parametrize(
    ("model", "query", "expected"),
    [
        (ModelVersion, {"status__exact": "champion"}, ["v1"]),
        (ModelVersion, {"status__exact": "candidate"}, ["v2"]),
        (ModelVersion, {"flagged": "yes"}, ["v1"]),
        (ModelVersion, {"flagged": "no"}, ["v2"]),
        (ModelVersion, {"task__exact": "tumor_grading"}, []),
        (ModelVersion, {"q": "abababab"}, ["v1", "v2"]),  # data snapshot hash
        (ModelVersion, {"q": "no-such-thing"}, []),
        (Job, {"status__exact": "queued"}, ["job"]),
        (Job, {"status__exact": "running"}, []),
        (Job, {"kind__exact": "inference"}, ["job"]),
        (ModelAlert, {"state": "open"}, ["alert"]),
        (ModelAlert, {"state": "resolved"}, []),
        (DataSnapshot, {"q": "abab"}, ["snapshot"]),
    ],
)
def test_filters_and_search(root, rows, model, query, expected):
    response = root.get(_url(model, "changelist"), query)
    assert response.status_code == 200
    found = {obj.pk for obj in response.context["cl"].result_list}
    assert found == {rows[name].pk for name in expected}


def test_project_filter_and_search_by_slug(root, rows, tmp_path):
    other = ProjectFactory(slug="elsewhere")
    services.model_version_register(
        project=other,
        task="nodule_detection",
        source_dir=_model_folder(tmp_path, "other"),
        provenance="imported",
    )
    url = _url(ModelVersion, "changelist")
    by_project = root.get(url, {"project__id__exact": other.pk}).context["cl"].result_list
    assert [v.project_id for v in by_project] == [other.pk]
    assert [v.project_id for v in root.get(url, {"q": "elsewhere"}).context["cl"].result_list] == [
        other.pk
    ]


def _act(client, model, action: str, objs):
    return client.post(
        _url(model, "changelist"),
        {"action": action, "_selected_action": [o.pk for o in objs]},
        follow=True,
    )


def test_promote_and_roll_back_go_through_the_services(root, rows, superuser):
    v1, v2 = rows["v1"], rows["v2"]
    form = root.get(_url(ModelVersion, "changelist")).context["action_form"]
    assert {"promote_to_champion", "roll_back"} <= set(dict(form.fields["action"].choices))
    response = _act(root, ModelVersion, "promote_to_champion", [v2])
    assert response.status_code == 200
    assert any("v2 is now the champion" in m for m in _messages(response))
    v1.refresh_from_db(), v2.refresh_from_db()
    assert (v1.status, v2.status) == ("retired", "champion")
    event = v2.promotions.get()
    assert (event.reason, event.previous, event.by) == ("manual", v1, superuser)

    response = _act(root, ModelVersion, "roll_back", [v2])
    assert any("rolled back to v1" in m for m in _messages(response))
    v1.refresh_from_db(), v2.refresh_from_db()
    assert (v1.status, v2.status) == ("champion", "retired")
    assert v1.promotions.order_by("-id").first().reason == "rollback"


def test_refusals_show_the_services_message_and_change_nothing(root, rows):
    v1, v2 = rows["v1"], rows["v2"]
    response = _act(root, ModelVersion, "promote_to_champion", [v1])
    assert "v1 is already the champion." in _messages(response)
    # v1 was the first version: there is nothing before it to roll back to.
    response = _act(root, ModelVersion, "roll_back", [v1])
    assert any("there is nothing to roll back to" in m for m in _messages(response))
    # Two versions of one task at once: refused before any service call.
    response = _act(root, ModelVersion, "promote_to_champion", [v1, v2])
    assert any("one version per project and task" in m for m in _messages(response))
    v1.refresh_from_db(), v2.refresh_from_db()
    assert (v1.status, v2.status) == ("champion", "candidate")
    assert PromotionEvent.objects.filter(reason="manual").count() == 0


def test_roll_back_without_a_champion_says_so(root, rows):
    ModelVersion.objects.filter(pk=rows["v1"].pk).update(status="retired")
    response = _act(root, ModelVersion, "roll_back", [rows["v2"]])
    assert any("has no champion for nodule_detection" in m for m in _messages(response))


def test_cancel_action(root, rows):
    queued = rows["job"]
    running = make_job(rows["study"], rows["v2"], status=Job.Status.RUNNING)
    done = make_job(rows["study"], rows["v1"], status=Job.Status.SUCCEEDED)
    response = _act(root, Job, "cancel", [queued, running, done])
    texts = _messages(response)
    assert f"Job {queued.pk}: cancelled." in texts
    assert f"Job {running.pk}: asked to stop." in texts
    assert any(f"Job {done.pk} is succeeded" in m for m in texts)
    queued.refresh_from_db(), running.refresh_from_db(), done.refresh_from_db()
    assert queued.status == "cancelled" and "root" in queued.message
    assert running.status == "running" and running.cancel_requested
    assert done.status == "succeeded" and not done.cancel_requested


def test_ai_settings_bad_values_get_form_errors(root, rows, project):
    settings_row = ProjectAISettings.objects.get(project=project)
    url = _url(ProjectAISettings, "change", settings_row.pk)
    body = {
        "project": project.pk,
        "auto_inference": "on",
        "retrain_after_labels": 10,
        "monitoring_window": 50,
        "alert_margin": 2,
        "train_args": "{}",
    }
    response = root.post(url, body)
    assert response.status_code == 200  # the form again, with the error
    assert "ai_settings_alert_margin_0_1" in response.content.decode()
    # train_args the platform cannot pass on (tests/registry/test_train_args.py has them all)
    bad = {**body, "alert_margin": 0.3, "train_args": '{"tumor_grading": ["--out", "/srv/x"]}'}
    response = root.post(url, bad)
    assert response.status_code == 200
    assert "--out: set by the platform" in response.content.decode()
    assert ProjectAISettings.objects.get(project=project).alert_margin != 0.3
    response = root.post(url, {**body, "alert_margin": 0.3})
    assert response.status_code == 302
    settings_row.refresh_from_db()
    assert (settings_row.alert_margin, settings_row.retrain_after_labels) == (0.3, 10)


def _inline_management(client, url: str) -> dict:
    """The management-form fields of the page's (read-only) inlines, as the browser sends them."""
    data = {}
    for inline in client.get(url).context["inline_admin_formsets"]:
        form = inline.formset.management_form
        data.update({form.add_prefix(k): v for k, v in form.initial.items()})
    return data


def test_versions_and_jobs_cannot_be_added_edited_or_deleted_here(root, rows):
    v2, job = rows["v2"], rows["job"]
    assert root.get(_url(ModelVersion, "add")).status_code == 403
    assert root.get(_url(Job, "add")).status_code == 403
    assert root.get(_url(ModelVersion, "delete", v2.pk)).status_code == 403
    assert root.get(_url(Job, "delete", job.pk)).status_code == 403
    # A posted status is ignored: only notes are editable on a version.
    url = _url(ModelVersion, "change", v2.pk)
    response = root.post(url, {**_inline_management(root, url), "notes": "hi", "status": "x"})
    assert response.status_code == 302
    v2.refresh_from_db()
    assert (v2.notes.endswith("hi"), v2.status) == (True, "candidate")


@pytest.mark.parametrize("model", REGISTRY_MODELS, ids=lambda m: m.__name__)
def test_non_staff_users_are_sent_to_login(rows, users, model):
    for client in (Client(), _client(users["admin"])):  # anonymous; project admin, not staff
        response = client.get(_url(model, "changelist"))
        assert response.status_code == 302
        assert response["Location"].startswith(reverse("admin:login"))


def test_staff_with_view_permission_only_gets_no_actions(rows):
    viewer = UserFactory(username="viewer", is_staff=True)
    viewer.user_permissions.add(
        *Permission.objects.filter(codename__in=["view_modelversion", "view_job"])
    )
    client = _client(viewer)
    for model, action in ((ModelVersion, "promote_to_champion"), (Job, "cancel")):
        response = client.get(_url(model, "changelist"))
        assert response.status_code == 200
        form = response.context["action_form"]
        assert form is None or action not in dict(form.fields["action"].choices)
    response = _act(client, ModelVersion, "promote_to_champion", [rows["v2"]])
    rows["v2"].refresh_from_db()
    assert rows["v2"].status == "candidate"
    # Without any permission on the model a staff user gets 403, not the page.
    assert client.get(_url(ModelAlert, "changelist")).status_code == 403
