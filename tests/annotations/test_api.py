"""Findings and feedback API: verdicts, history, added findings, and bad requests (table)."""

from __future__ import annotations

import pytest
from django.urls import reverse

from annotations.models import AddedFinding, FeedbackHistory, FindingFeedback, FindingKind
from tests.annotations.factories import make_finding, make_study

pytestmark = pytest.mark.django_db


def feedback_url(project, finding) -> str:
    return reverse("finding-feedback", kwargs={"project": project.slug, "pk": finding.pk})


def test_feedback_replaces_the_verdict_and_keeps_history(project, radiologist_client, users):
    finding = make_finding(project)
    url = feedback_url(project, finding)
    assert (
        radiologist_client.post(
            url, {"verdict": "accept", "time_spent_s": 4}, format="json"
        ).status_code
        == 201
    )
    response = radiologist_client.post(
        url,
        {
            "verdict": "correct",
            "corrected_center_lps_mm": [21, 19, 5],
            "corrected_diameter_mm": 9.5,
            "comment": "moved",
        },
        format="json",
    )
    assert response.status_code == 201, response.data
    current = FindingFeedback.objects.get(finding=finding, radiologist=users["radiologist"])
    assert current.verdict == "correct" and current.corrected_diameter_mm == 9.5
    assert FindingFeedback.objects.filter(finding=finding).count() == 1
    history = radiologist_client.get(
        reverse("finding-feedback-history", kwargs={"project": project.slug, "pk": finding.pk})
    ).data
    assert [h["verdict"] for h in history] == ["accept", "correct"]


def test_grade_can_be_corrected_to_another_grade(project, radiologist_client):
    finding = make_finding(project, kind=FindingKind.GRADE)
    response = radiologist_client.post(
        feedback_url(project, finding), {"verdict": "correct", "corrected_grade": 3}, format="json"
    )
    assert response.status_code == 201, response.data
    assert response.data["corrected_grade"] == 3


def test_findings_of_a_study_are_listed_with_feedback(
    project, annotator_client, radiologist_client
):
    finding = make_finding(project)
    make_finding(project)  # another study
    radiologist_client.post(feedback_url(project, finding), {"verdict": "reject"}, format="json")
    url = reverse(
        "study-findings",
        kwargs={"project": project.slug, "study_uid": finding.study.study_instance_uid},
    )
    data = annotator_client.get(url).data
    assert [f["id"] for f in data] == [finding.pk]
    assert data[0]["feedback"][0]["verdict"] == "reject"
    assert data[0]["center_lps_mm"] == [20.0, 20.0, 5.0]


# Every bad request: what is sent, the status and a word of the reason; nothing is written.
NODULE_BAD = [
    ({"verdict": "maybe"}, 400, "verdict"),
    ({"verdict": "accept", "time_spent_s": -3}, 400, "time_spent_s"),
    ({"verdict": "accept", "corrected_diameter_mm": 4}, 400, "correct"),
    ({"verdict": "correct"}, 400, "corrected_center_lps_mm"),
    ({"verdict": "correct", "corrected_center_lps_mm": [20, 20, 500]}, 400, "outside"),
    ({"verdict": "correct", "corrected_center_lps_mm": [-30, 20, 5]}, 400, "outside"),
    ({"verdict": "correct", "corrected_center_lps_mm": [1, 2]}, 400, "corrected_center_lps_mm"),
    ({"verdict": "correct", "corrected_diameter_mm": -2}, 400, "corrected_diameter_mm"),
    ({"verdict": "correct", "corrected_grade": 2}, 400, "grade"),
    ({"verdict": "accept", "coment": "seen"}, 400, "Unknown field"),  # a typo is not dropped
]
GRADE_BAD = [
    ({"verdict": "correct", "corrected_grade": 7}, 400, "corrected_grade"),
    ({"verdict": "correct", "corrected_grade": 2}, 400, "accept"),  # the model's own grade
    ({"verdict": "correct", "corrected_center_lps_mm": [1, 1, 1]}, 400, "corrected_grade"),
]


@pytest.mark.parametrize(
    ("kind", "body", "code", "reason"),
    [("nodule", *c) for c in NODULE_BAD] + [("grade", *c) for c in GRADE_BAD],
)
def test_bad_feedback_is_refused_with_the_reason(
    project, radiologist_client, kind, body, code, reason
):
    finding = make_finding(project, kind=kind)
    response = radiologist_client.post(feedback_url(project, finding), body, format="json")
    assert response.status_code == code, response.data
    assert reason in str(response.data)
    assert not FindingFeedback.objects.exists() and not FeedbackHistory.objects.exists()


def test_feedback_on_a_finding_of_another_project_is_404(
    project, other_project, radiologist_client
):
    foreign = make_finding(other_project)
    response = radiologist_client.post(
        feedback_url(project, foreign), {"verdict": "accept"}, format="json"
    )
    assert response.status_code == 404
    assert not FindingFeedback.objects.exists()


@pytest.mark.parametrize(
    ("modality", "body"),
    [
        ("CT", {"kind": "nodule", "center_lps_mm": [10, 10, 3], "diameter_mm": 5}),
        ("MR", {"kind": "grade", "grade": 3, "comment": "enhancing rim"}),
    ],
)
def test_added_finding_is_saved_and_listed_with_its_study(
    project, users, radiologist_client, annotator_client, modality, body
):
    study = make_study(project, modality=modality)
    make_study(project, modality=modality)  # another study: not listed with this one
    url = reverse("added-finding-list", kwargs={"project": project.slug})
    series_uid = study.series.get().series_instance_uid
    response = radiologist_client.post(
        url, {"series_instance_uid": series_uid, **body}, format="json"
    )
    assert response.status_code == 201, response.data
    assert response.data["radiologist"] == users["radiologist"].username
    for field, value in body.items():
        assert response.data[field] == value
    listed = annotator_client.get(url, {"study": study.study_instance_uid}).data
    assert [a["id"] for a in listed] == [response.data["id"]]
    assert listed[0]["series_instance_uid"] == series_uid


ADDED_BAD = [
    ("CT", {"kind": "nodule", "center_lps_mm": [10, 10, 3]}, 400, "diameter_mm"),
    ("CT", {"kind": "nodule", "center_lps_mm": [10, 10, 99], "diameter_mm": 5}, 400, "outside"),
    (
        "CT",
        {"kind": "nodule", "center_lps_mm": [10, 10, 3], "diameter_mm": 5, "time_spent_s": -1},
        400,
        "time_spent_s",
    ),
    ("MR", {"kind": "grade", "grade": 0}, 400, "grade"),
    ("MR", {"kind": "grade", "grade": 4}, 400, "grade"),
    ("CT", {"kind": "tumour"}, 400, "kind"),
    ("MR", {"kind": "grade", "grade": 2, "study": "1.2.3"}, 400, "Unknown field"),
    # Each kind on the modality its model reads, as the viewer offers it.
    ("MR", {"kind": "nodule", "center_lps_mm": [10, 10, 3], "diameter_mm": 5}, 400, "CT series"),
    ("CT", {"kind": "grade", "grade": 2}, 400, "MR series"),
    ("", {"kind": "grade", "grade": 2}, 400, "no recorded modality"),
]


@pytest.mark.parametrize(("modality", "body", "code", "reason"), ADDED_BAD)
def test_bad_added_findings_are_refused(project, radiologist_client, modality, body, code, reason):
    series = make_study(project, modality=modality).series.first()
    url = reverse("added-finding-list", kwargs={"project": project.slug})
    response = radiologist_client.post(
        url, {"series_instance_uid": series.series_instance_uid, **body}, format="json"
    )
    assert response.status_code == code, response.data
    assert reason in str(response.data)
    assert not AddedFinding.objects.exists()


def test_added_finding_in_another_projects_series_is_404(
    project, other_project, radiologist_client
):
    series = make_study(other_project).series.first()
    url = reverse("added-finding-list", kwargs={"project": project.slug})
    body = {
        "series_instance_uid": series.series_instance_uid,
        "kind": "nodule",
        "center_lps_mm": [1, 1, 1],
        "diameter_mm": 4,
    }
    assert radiologist_client.post(url, body, format="json").status_code == 404
    assert not AddedFinding.objects.exists()


def test_heatmap_of_a_finding_without_one_is_404(project, annotator_client):
    finding = make_finding(project)
    url = reverse("finding-heatmap", kwargs={"project": project.slug, "pk": finding.pk})
    response = annotator_client.get(url)
    assert response.status_code == 404 and "heatmap" in response.data["detail"]
