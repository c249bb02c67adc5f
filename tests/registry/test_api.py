"""Model version routes return what they name."""

import pytest

from tests.annotations.factories import make_version

pytestmark = pytest.mark.django_db


def test_model_version_detail_is_that_version_and_list_is_all(admin_client, project):
    first = make_version(project, status="retired", metric=0.4)
    second = make_version(project, status="champion", metric=0.6)
    base = f"/api/projects/{project.slug}/models"
    detail = admin_client.get(f"{base}/{first.pk}")
    assert detail.status_code == 200
    assert detail.data["id"] == first.pk and detail.data["status"] == "retired"
    listing = admin_client.get(base)
    assert {item["id"] for item in listing.data["results"]} == {first.pk, second.pk}


def test_model_version_of_another_project_is_404(admin_client, project, other_project):
    foreign = make_version(other_project)
    response = admin_client.get(f"/api/projects/{project.slug}/models/{foreign.pk}")
    assert response.status_code == 404
