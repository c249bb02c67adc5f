"""The OpenAPI schema is valid and warning-free; the docs page loads no external scripts."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import pytest
import yaml
from django.contrib.staticfiles import finders
from django.test import Client

REPO = Path(__file__).resolve().parents[2]


def test_schema_validates_without_warnings(tmp_path):
    out = tmp_path / "schema.yml"
    done = subprocess.run(
        [sys.executable, "manage.py", "spectacular", "--validate", "--fail-on-warn", "--file", str(out)],
        cwd=REPO, capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert done.returncode == 0, done.stdout + done.stderr
    schema = yaml.safe_load(out.read_text())
    assert schema["openapi"].startswith("3.")
    for path in ("/api/health", "/api/projects", "/api/projects/{project}/members"):
        assert path in schema["paths"]


@pytest.mark.django_db
def test_schema_and_docs_are_served_without_a_cdn():
    client = Client()
    schema = client.get("/api/schema")
    assert schema.status_code == 200
    docs = client.get("/api/docs")
    assert docs.status_code == 200
    html = docs.content.decode()
    assert "swagger" in html.lower()
    urls = re.findall(r"""(?:src|href)\s*=\s*["']([^"']+)["']""", html)
    urls += re.findall(r"""["'](https?://[^"']+|//[^"']+)["']""", html)
    external = [u for u in urls if re.match(r"^(https?:)?//", u)]
    assert not external, external
    scripts = re.findall(r"""<script[^>]+src=["']([^"']+)""", html)
    assert scripts and all(s.startswith("/static/") for s in scripts), scripts
    for script in scripts:  # shipped by the sidecar package, served by whitenoise
        assert finders.find(script.removeprefix("/static/")), script
