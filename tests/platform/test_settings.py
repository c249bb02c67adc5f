"""Settings come from the environment; production settings pass `check --deploy`."""

from __future__ import annotations

import json
import os
import re
import secrets
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
ENV_NAMES = (
    "DATABASE_URL", "REDIS_URL", "CELERY_BROKER_URL", "CELERY_RESULT_BACKEND", "ORTHANC_URL",
    "ORTHANC_USERNAME", "ORTHANC_PASSWORD", "DJANGO_SECRET_KEY", "DJANGO_ALLOWED_HOSTS",
    "DJANGO_DEBUG", "PLATFORM_VAR_DIR",
)  # fmt: skip
PROBE = """
import json, django
django.setup()
from django.conf import settings as s
db = s.DATABASES["default"]
print(json.dumps({
    "debug": s.DEBUG, "engine": db["ENGINE"], "db_name": str(db["NAME"]), "db_host": db.get("HOST"),
    "redis": s.REDIS_URL, "broker": s.CELERY_BROKER_URL, "orthanc": s.ORTHANC_URL,
    "orthanc_user": s.ORTHANC_USERNAME, "orthanc_password": s.ORTHANC_PASSWORD,
    "hosts": s.ALLOWED_HOSTS, "secret": s.SECRET_KEY,
}))
"""


def _run(args: list[str], **env: str) -> subprocess.CompletedProcess:
    clean = {k: v for k, v in os.environ.items() if k not in ENV_NAMES}
    clean["DJANGO_SETTINGS_MODULE"] = "config.settings"
    return subprocess.run(
        [sys.executable, *args], cwd=REPO, env={**clean, **env}, capture_output=True, text=True,
        timeout=120,
    )  # fmt: skip


def _settings(**env: str) -> dict:
    done = _run(["-c", PROBE], **env)
    assert done.returncode == 0, done.stderr
    return json.loads(done.stdout.strip().splitlines()[-1])


def test_defaults_are_the_local_development_setup(tmp_path):
    s = _settings(PLATFORM_VAR_DIR=str(tmp_path))
    assert s["debug"] is True
    assert s["engine"] == "django.db.backends.sqlite3"
    assert s["db_name"] == str(tmp_path / "db.sqlite3")
    assert s["redis"] == s["broker"] == "redis://127.0.0.1:6379/0"
    assert s["orthanc"] == "http://127.0.0.1:8042"


def test_everything_is_read_from_the_environment():
    s = _settings(
        DATABASE_URL="postgres://platform:pw@db.internal:5433/imaging",
        REDIS_URL="redis://cache.internal:6380/3",
        ORTHANC_URL="http://orthanc.internal:8042/",
        ORTHANC_USERNAME="svc",
        ORTHANC_PASSWORD="s3cret",
        DJANGO_ALLOWED_HOSTS="a.example.org, b.example.org",
        DJANGO_DEBUG="false",
        DJANGO_SECRET_KEY="k" * 60,
    )
    assert s["engine"] == "django.db.backends.postgresql"
    assert (s["db_name"], s["db_host"]) == ("imaging", "db.internal")
    assert s["redis"] == s["broker"] == "redis://cache.internal:6380/3"
    assert s["orthanc"] == "http://orthanc.internal:8042"  # trailing slash dropped
    assert (s["orthanc_user"], s["orthanc_password"]) == ("svc", "s3cret")
    assert s["hosts"] == ["a.example.org", "b.example.org"]
    assert s["debug"] is False and s["secret"] == "k" * 60


@pytest.mark.parametrize(
    ("env", "message"),
    [
        ({"DJANGO_DEBUG": "false"}, "DJANGO_SECRET_KEY must be set"),
        ({"DJANGO_DEBUG": "maybe"}, "DJANGO_DEBUG must be true or false"),
        ({"DJANGO_DEBUG": "0", "DJANGO_SECRET_KEY": ""}, "DJANGO_SECRET_KEY must be set"),
    ],
    ids=["production without secret", "debug not a boolean", "empty secret"],
)
def test_bad_environment_fails_at_startup_with_a_clear_message(env, message):
    done = _run(["-c", PROBE], **env)
    assert done.returncode != 0
    assert message in done.stderr


def test_production_settings_pass_check_deploy_without_warnings(tmp_path):
    done = _run(
        ["manage.py", "check", "--deploy", "--fail-level", "WARNING"],
        DJANGO_DEBUG="false",
        DJANGO_SECRET_KEY=secrets.token_urlsafe(64),
        DJANGO_ALLOWED_HOSTS="platform.example.org",
        PLATFORM_VAR_DIR=str(tmp_path),
    )
    output = done.stdout + done.stderr
    # drf-spectacular's schema warnings are test_api_docs.py's business; everything else
    # (security, database, models, URLs) must be clean.
    others = [
        line for line in output.splitlines()
        if re.match(r"^\S*: \([\w.]+\.[EWC]\d+\)", line) and "(drf_spectacular." not in line
    ]  # fmt: skip
    assert not others, output
    if not any("(drf_spectacular." in line for line in output.splitlines()):
        assert done.returncode == 0, output
        assert "WARNINGS" not in output and "ERRORS" not in output, output


def test_production_security_checks_pass(tmp_path):
    done = _run(
        ["manage.py", "check", "--deploy", "--tag", "security", "--fail-level", "WARNING"],
        DJANGO_DEBUG="false",
        DJANGO_SECRET_KEY=secrets.token_urlsafe(64),
        DJANGO_ALLOWED_HOSTS="platform.example.org",
        PLATFORM_VAR_DIR=str(tmp_path),
    )
    output = done.stdout + done.stderr
    assert done.returncode == 0, output
    assert "no issues" in output, output


def test_development_settings_fail_check_deploy():
    """The check really inspects security settings: the debug defaults do not pass."""
    done = _run(["manage.py", "check", "--deploy", "--fail-level", "WARNING"])
    assert done.returncode != 0
    assert "security.W018" in done.stderr + done.stdout  # DEBUG=True in deployment
