"""Fixtures shared by every test: users per role, API clients, a real Orthanc."""

from __future__ import annotations

import pytest
from rest_framework.test import APIClient

from projects.models import Role
from tests.factories import MembershipFactory, ProjectFactory, UserFactory
from tests.support.orthanc import make_orthanc


@pytest.fixture
def project(db):
    return ProjectFactory()


@pytest.fixture
def other_project(db):
    return ProjectFactory()


@pytest.fixture
def users(project):
    """One user per role in `project`, plus a user who is a member elsewhere only."""
    made = {}
    for role in (Role.ADMIN, Role.RADIOLOGIST, Role.ANNOTATOR):
        made[str(role)] = MembershipFactory(
            project=project, user=UserFactory(username=f"{role}-{project.slug}"), role=role
        ).user
    outsider = UserFactory(username=f"outsider-{project.slug}")
    MembershipFactory(user=outsider, role=Role.ADMIN)  # admin of another project
    made["non_member"] = outsider
    return made


def client_for(user) -> APIClient:
    client = APIClient()
    if user is not None:
        client.force_authenticate(user=user)
    return client


@pytest.fixture
def api_client():
    return APIClient()


@pytest.fixture
def admin_client(users):
    return client_for(users["admin"])


@pytest.fixture
def radiologist_client(users):
    return client_for(users["radiologist"])


@pytest.fixture
def annotator_client(users):
    return client_for(users["annotator"])


def pytest_configure(config):
    from django.conf import settings

    # Password hashing is deliberately slow; tests create many users.
    settings.PASSWORD_HASHERS = ["django.contrib.auth.hashers.MD5PasswordHasher"]


# --- Orthanc -------------------------------------------------------------------------


@pytest.fixture(scope="session")
def orthanc_server(tmp_path_factory):
    """One real Orthanc for the whole session on a free port (storage in a temp dir)."""
    server = make_orthanc(tmp_path_factory.mktemp("orthanc"))
    server.start()
    yield server
    server.stop()


@pytest.fixture
def orthanc(orthanc_server, settings):
    """The session's Orthanc, emptied, with the platform's settings pointing at it."""
    if orthanc_server.process is None or orthanc_server.process.poll() is not None:
        orthanc_server.start()  # a fault test may have stopped it
    orthanc_server.clear()
    settings.ORTHANC_URL = orthanc_server.url
    settings.ORTHANC_USERNAME = orthanc_server.username
    settings.ORTHANC_PASSWORD = orthanc_server.password
    return orthanc_server
