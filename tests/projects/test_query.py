"""Query strings: every API endpoint refuses a parameter it does not read (400 naming it),
after authentication and permissions, and an ordering term a list cannot order by."""

from __future__ import annotations

import pytest
from django.urls import resolve, reverse
from django_filters.rest_framework import DjangoFilterBackend
from drf_spectacular.generators import SchemaGenerator

from ai_engine.registry.models import Job
from annotations.models import Finding
from projects.query import known_query_params
from tests.annotations.factories import make_finding, make_job, make_study, make_version
from tests.conftest import client_for
from tests.support.permissions import ACTORS
from tests.test_permissions import CASES

pytestmark = pytest.mark.django_db

# The DICOMweb proxy passes QIDO-RS attribute filters on to Orthanc; its own checks of
# what it forwards are tested in tests/dicomweb.
API_CASES = [
    c
    for c in CASES
    if not c.url_name.startswith("dicomweb-") and any(200 <= c.expected[a] < 300 for a in ACTORS)
]


def _call(case, project, users, request, query: str):
    for fixture in case.needs:
        request.getfixturevalue(fixture)
    kwargs = case.setup(project)
    if case.project_scoped:
        kwargs = {"project": project.slug, **kwargs}
    actor = next(a for a in ACTORS if 200 <= case.expected[a] < 300)
    client = client_for(users[actor])
    url = reverse(case.url_name, kwargs=kwargs) + query
    return getattr(client, case.method.lower())(url, data=case.data(project), format=case.format)


@pytest.mark.parametrize("case", API_CASES, ids=[c.id for c in API_CASES])
def test_every_endpoint_refuses_a_query_parameter_it_does_not_read(case, project, users, request):
    response = _call(case, project, users, request, "?no_such_param=1")
    assert response.status_code == 400, (case.id, response.status_code, response.data)
    assert "no_such_param" in response.data
    assert "Unknown query parameter" in str(response.data["no_such_param"])


@pytest.mark.parametrize("case", [c for c in API_CASES if c.method == "GET"], ids=lambda c: c.id)
def test_every_endpoint_takes_the_format_override(case, project, users, request):
    response = _call(case, project, users, request, "?format=json")
    assert response.status_code == 200, (case.id, response.data)


def test_health_refuses_an_unknown_parameter_or_value_before_asking_any_service(api_client):
    # Health is public: the 400 comes without touching the database, Redis or Orthanc.
    response = api_client.get("/api/health?deeep=1")
    assert response.status_code == 400
    assert "['deep', 'format']" in str(response.data["deeep"])
    # ?deep=2 used to run the shallow check and answer 200 as if asked for it.
    response = api_client.get("/api/health?deep=2")
    assert response.status_code == 400
    assert "deep" in response.data


def test_a_typo_in_a_filter_is_refused_not_answered_with_the_whole_list(project, admin_client):
    version = make_version(project)
    make_job(make_study(project), version, status=Job.Status.FAILED)
    make_job(make_study(project), version, status=Job.Status.SUCCEEDED)
    url = reverse("job-list", kwargs={"project": project.slug})
    refused = admin_client.get(url, {"stauts": "failed"})
    assert refused.status_code == 400
    message = str(refused.data["stauts"])
    for name in ("status", "kind", "task", "ordering", "page", "format"):
        assert f"'{name}'" in message
    filtered = admin_client.get(url, {"status": "failed"})
    assert filtered.status_code == 200
    assert [j["status"] for j in filtered.data["results"]] == ["failed"]


def test_range_filters_take_their_after_and_before_names_only(project, admin_client):
    url = reverse("study-list", kwargs={"project": project.slug})
    assert admin_client.get(url, {"study_date_after": "2020-01-01"}).status_code == 200
    assert admin_client.get(url, {"study_date_before": "2020-01-01"}).status_code == 200
    # django-filter reads only the suffixed names: a bare study_date filtered nothing.
    assert "study_date" in admin_client.get(url, {"study_date": "2020-01-01"}).data


def test_an_ordering_term_the_list_cannot_order_by_is_refused(project, admin_client):
    low, high = make_finding(project), make_finding(project)
    Finding.objects.filter(pk=low.pk).update(score=0.2)
    Finding.objects.filter(pk=high.pk).update(score=0.9)
    url = reverse("finding-list", kwargs={"project": project.slug})
    refused = admin_client.get(url, {"ordering": "-scroe"})
    assert refused.status_code == 400
    assert "['created_at', 'score']" in str(refused.data["ordering"])
    assert "-scroe" in str(refused.data["ordering"])
    ordered = admin_client.get(url, {"ordering": "-score"})
    assert [f["score"] for f in ordered.data["results"]] == [0.9, 0.2]


def test_views_reading_their_own_parameters_declare_them(project, admin_client, users):
    finding = make_finding(project)
    base = {"project": project.slug}
    assert (
        admin_client.get(
            reverse("finding-list", kwargs=base), {"study": finding.study.study_instance_uid}
        ).status_code
        == 200
    )
    history = reverse("finding-feedback-history", kwargs={**base, "pk": finding.pk})
    assert admin_client.get(history, {"radiologist": "someone"}).status_code == 200
    queue = reverse("active-learning-queue", kwargs=base)
    assert (
        admin_client.get(queue, {"strategy": "random", "task": "tumor_grading"}).status_code == 200
    )
    assert "stratgey" in admin_client.get(queue, {"stratgey": "random"}).data
    # The study of a study's findings is in the URL; ?study= there would be ignored.
    study_findings = reverse(
        "study-findings", kwargs={**base, "study_uid": finding.study.study_instance_uid}
    )
    assert "study" in admin_client.get(study_findings, {"study": "1.2.3"}).data


def test_who_may_not_ask_learns_nothing_from_the_query_check(project, users, api_client):
    url = reverse("job-list", kwargs={"project": project.slug}) + "?no_such_param=1"
    assert api_client.get(url).status_code == 401
    assert client_for(users["non_member"]).get(url).status_code == 404


def test_a_refused_query_writes_nothing(project, admin_client):
    url = reverse("job-list", kwargs={"project": project.slug}) + "?dry_run=1"
    response = admin_client.post(url, {"kind": "inference"}, format="json")
    assert response.status_code == 400
    assert "dry_run" in response.data
    assert not Job.objects.filter(project=project).exists()
    assert not Finding.objects.filter(project=project).exists()


def test_options_is_not_checked(project, admin_client):
    url = reverse("job-list", kwargs={"project": project.slug}) + "?no_such_param=1"
    assert admin_client.options(url).status_code == 200


def test_a_write_takes_no_filter_or_page_parameters(project, admin_client):
    url = reverse("job-list", kwargs={"project": project.slug})
    response = admin_client.post(url + "?status=failed", {"kind": "inference"}, format="json")
    assert response.status_code == 400
    assert "['format']" in str(response.data["status"])


def test_the_openapi_schema_lists_exactly_what_each_endpoint_takes():
    """Every read in the schema names the query parameters its view reads, no fewer and
    no more (spectacular alone listed `search` on lists with nothing to search, and none
    of the parameters views read themselves)."""
    schema = SchemaGenerator().get_schema(request=None, public=True)
    sample = {"project": "p", "id": "1", "study_uid": "1.2.3"}
    checked = 0
    for path, operations in schema["paths"].items():
        if "get" not in operations:
            continue
        match = resolve(path.format(**sample))
        view = match.func.cls(**match.func.initkwargs)
        view.kwargs, view.request, view.format_kwarg = match.kwargs, None, None
        listed = {p["name"] for p in operations["get"].get("parameters", []) if p["in"] == "query"}
        assert listed == known_query_params(view) - {"format"}, path
        checked += 1
    assert checked >= 20
    findings = schema["paths"]["/api/projects/{project}/findings"]["get"]["parameters"]
    assert "study" in {p["name"] for p in findings}


def test_the_token_endpoint_refuses_a_query_parameter_too(api_client, users):
    response = api_client.post(
        "/api/auth/token?remember=1", {"username": "x", "password": "y"}, format="json"
    )
    assert response.status_code == 400
    assert "remember" in response.data


def test_known_parameters_follow_lookups_search_fields_and_the_paginator():
    """Branches no view of today's API uses; a view that starts using one keeps working."""
    from rest_framework import generics
    from rest_framework.filters import SearchFilter
    from rest_framework.pagination import LimitOffsetPagination

    from projects.query import StrictOrderingFilter

    class Lookups(generics.ListAPIView):
        filterset_fields = {"score": ["exact", "gte"]}
        search_fields = ["comment"]
        filter_backends = [DjangoFilterBackend, StrictOrderingFilter, SearchFilter]
        pagination_class = LimitOffsetPagination

    assert known_query_params(Lookups()) == {
        "score",
        "score__gte",
        "search",
        "ordering",
        "limit",
        "offset",
        "format",
    }
    assert known_query_params(Lookups(), "POST") == {"format"}
