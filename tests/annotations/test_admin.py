"""Annotations admin: read-only pages of findings (feedback and its history inline),
feedback and added findings render with real rows; filters and search narrow the lists."""

from __future__ import annotations

import pytest
from django.contrib import admin
from django.test import Client
from django.urls import reverse

from annotations.models import AddedFinding, FeedbackHistory, Finding, FindingFeedback
from annotations.services import added_finding_create, feedback_submit
from tests.annotations.factories import make_finding, make_study
from tests.factories import UserFactory

pytestmark = pytest.mark.django_db

MODELS = [Finding, FindingFeedback, AddedFinding]


def _url(model, view: str, *args) -> str:
    return reverse(f"admin:{model._meta.app_label}_{model._meta.model_name}_{view}", args=args)


@pytest.fixture
def root() -> Client:
    client = Client()
    client.force_login(UserFactory(username="root", is_staff=True, is_superuser=True))
    return client


@pytest.fixture
def rows(project, users):
    """A nodule with two verdicts over time, an untouched grade, and an added nodule."""
    radiologist = users["radiologist"]
    nodule = make_finding(project)
    grade = make_finding(project, kind="grade")
    feedback_submit(finding=nodule, radiologist=radiologist, verdict="accept")
    feedback = feedback_submit(
        finding=nodule,
        radiologist=radiologist,
        verdict="correct",
        corrected_diameter_mm=5.5,
        comment="smaller than it looks",
    )
    study = make_study(project)
    added = added_finding_create(
        study=study,
        series=study.series.get(),
        radiologist=radiologist,
        kind="nodule",
        center_lps_mm=[10.0, 10.0, 3.0],
        diameter_mm=6.0,
    )
    return {"nodule": nodule, "grade": grade, "feedback": feedback, "added": added}


def test_models_are_registered_and_history_is_not_a_page_of_its_own():
    for model in MODELS:
        assert admin.site.is_registered(model)
    assert not admin.site.is_registered(FeedbackHistory)  # shown inline instead


@pytest.mark.parametrize("model", MODELS, ids=lambda m: m.__name__)
def test_changelist_and_change_pages_render(root, rows, model):
    response = root.get(_url(model, "changelist"))
    assert response.status_code == 200
    assert response.context["cl"].result_count == model.objects.count() > 0
    for obj in model.objects.all():
        assert root.get(_url(model, "change", obj.pk)).status_code == 200


def test_finding_page_shows_feedback_with_its_history(root, rows):
    page = root.get(_url(Finding, "change", rows["nodule"].pk)).content.decode()
    assert "smaller than it looks" in page and "5.5 mm" in page
    # Both verdicts of the history, oldest first, in the feedback row.
    assert page.index(" accept (-)") < page.index(" correct (5.5 mm)")
    page = root.get(_url(FindingFeedback, "change", rows["feedback"].pk)).content.decode()
    assert page.count("<tr") >= 3 and "history" in page


def test_findings_are_read_only(root, rows):
    nodule = rows["nodule"]
    assert root.get(_url(Finding, "add")).status_code == 403
    assert root.get(_url(Finding, "delete", nodule.pk)).status_code == 403
    assert root.get(_url(FindingFeedback, "delete", rows["feedback"].pk)).status_code == 403
    response = root.post(_url(Finding, "change", nodule.pk), {"score": 0.1})
    assert response.status_code == 403
    nodule.refresh_from_db()
    assert nodule.score == 0.9
    page = root.get(_url(Finding, "change", nodule.pk)).content.decode()
    assert 'name="_save"' not in page


@pytest.mark.parametrize(
    ("model", "query", "expected"),
    [
        (Finding, {"kind__exact": "nodule"}, ["nodule"]),
        (Finding, {"kind__exact": "grade"}, ["grade"]),
        (Finding, {"model_version__task__exact": "tumor_grading"}, ["grade"]),
        (Finding, {"feedback__verdict__exact": "correct"}, ["nodule"]),
        (Finding, {"feedback__verdict__exact": "reject"}, []),
        (FindingFeedback, {"verdict__exact": "correct"}, ["feedback"]),
        (FindingFeedback, {"verdict__exact": "accept"}, []),  # the accept is history now
        (AddedFinding, {"kind__exact": "nodule"}, ["added"]),
        (AddedFinding, {"kind__exact": "grade"}, []),
    ],
)
def test_filters(root, rows, model, query, expected):
    response = root.get(_url(model, "changelist"), query)
    assert {o.pk for o in response.context["cl"].result_list} == {rows[n].pk for n in expected}


def test_search(root, rows, project, other_project):
    nodule, added = rows["nodule"], rows["added"]
    elsewhere = make_finding(other_project)
    url = _url(Finding, "changelist")

    def found(query: dict, at: str = url) -> set[int]:
        return {o.pk for o in root.get(at, query).context["cl"].result_list}

    assert found({"q": nodule.study.study_instance_uid}) == {nodule.pk}
    assert nodule.pk in found({"q": str(nodule.pk)})  # by id (UIDs with that digit match too)
    assert found({"q": "not-a-uid"}) == set()
    assert found({"project__id__exact": other_project.pk}) == {elsewhere.pk}
    added_url = _url(AddedFinding, "changelist")
    assert found({"q": "radiologist"}, added_url) == {added.pk}
    assert found({"q": "nobody-by-that-name"}, added_url) == set()


@pytest.mark.parametrize("model", MODELS, ids=lambda m: m.__name__)
def test_non_staff_users_are_sent_to_login(rows, users, model):
    for user in (None, users["radiologist"]):
        client = Client()
        if user is not None:
            client.force_login(user)
        response = client.get(_url(model, "changelist"))
        assert response.status_code == 302
        assert response["Location"].startswith(reverse("admin:login"))
