"""`/api/health` against real services: Orthanc (the test server) and Redis."""

from __future__ import annotations

import pytest
from rest_framework.test import APIClient

from tests.support.orthanc import free_port

pytestmark = [pytest.mark.django_db, pytest.mark.integration]


def _health():
    response = APIClient().get("/api/health")
    return response.status_code, response.json()


def test_all_up_gives_200(orthanc):
    status, body = _health()
    assert status == 200, body
    assert body["status"] == "ok" and body["down"] == []
    assert {name: c["status"] for name, c in body["components"].items()} == {
        "database": "up",
        "redis": "up",
        "orthanc": "up",
    }


def test_stopping_orthanc_gives_503_naming_it_and_starting_it_gives_200(orthanc, orthanc_server):
    try:
        orthanc_server.stop()
        status, body = _health()
        assert status == 503, body
        assert body["status"] == "degraded"
        assert body["down"] == ["orthanc"]
        assert body["components"]["orthanc"]["error"]
        assert body["components"]["redis"]["status"] == "up"
    finally:
        orthanc_server.start()  # later tests get a running server
    status, body = _health()
    assert status == 200, body


def test_wrong_orthanc_credentials_count_as_down(orthanc, settings):
    settings.ORTHANC_PASSWORD = "not-the-password"
    status, body = _health()
    assert status == 503 and body["down"] == ["orthanc"]
    assert "credentials" in body["components"]["orthanc"]["error"]


def test_redis_down_gives_503_naming_redis(orthanc, settings):
    settings.REDIS_URL = f"redis://127.0.0.1:{free_port()}/0"  # nothing listens there
    status, body = _health()
    assert status == 503, body
    assert body["down"] == ["redis"]
    assert body["components"]["orthanc"]["status"] == "up"


def test_redis_and_orthanc_down_names_both(orthanc, settings):
    settings.REDIS_URL = f"redis://127.0.0.1:{free_port()}/0"
    settings.ORTHANC_URL = f"http://127.0.0.1:{free_port()}"
    status, body = _health()
    assert status == 503 and body["down"] == ["orthanc", "redis"]


def test_deep_check_with_redis_down_reports_the_worker_down_too(orthanc, settings):
    settings.REDIS_URL = f"redis://127.0.0.1:{free_port()}/0"
    response = APIClient().get("/api/health?deep=1")
    body = response.json()
    assert response.status_code == 503
    assert body["down"] == ["redis", "worker"]
