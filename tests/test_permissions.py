"""The permission table: every API endpoint x role, and that no endpoint is missing."""

from __future__ import annotations

import importlib
import re
from pathlib import Path

import pytest
from django.urls import URLPattern, URLResolver, get_resolver, reverse

from tests.conftest import client_for
from tests.support.permissions import ACTORS, Case

TESTS = Path(__file__).parent
MODULES = sorted(p.parent.name for p in TESTS.glob("*/permission_cases.py"))


def _load():
    cases: list[Case] = []
    public: set[tuple[str, str]] = set()
    for name in MODULES:
        module = importlib.import_module(f"tests.{name}.permission_cases")
        cases.extend(module.CASES)
        public |= set(getattr(module, "PUBLIC", set()))
    return cases, public


CASES, PUBLIC = _load()


def _api_endpoints():
    """(url name, method) for every API and DICOMweb-proxy route and method it serves."""

    def walk(patterns, prefix=""):
        for pattern in patterns:
            route = prefix + str(pattern.pattern)
            if isinstance(pattern, URLResolver):
                yield from walk(pattern.url_patterns, route)
            elif isinstance(pattern, URLPattern):
                yield route, pattern

    found = set()
    for route, pattern in walk(get_resolver().url_patterns):
        if not (route.startswith("api/") or route.startswith("dicom-web")):
            continue
        if pattern.name in {"api-schema", "api-docs"}:
            continue
        view = getattr(pattern.callback, "cls", None) or getattr(
            pattern.callback, "view_class", None
        )
        methods = {"GET", "POST", "PUT", "PATCH", "DELETE"}
        if view is not None:
            methods = {m for m in methods if hasattr(view, m.lower())}
            allowed = getattr(view, "http_method_names", None)
            if allowed:
                methods = {m for m in methods if m.lower() in allowed}
            actions = getattr(pattern.callback, "actions", None)
            if actions:
                methods = {m.upper() for m in actions}
        for method in methods:
            found.add((pattern.name, method))
    return found


def test_every_endpoint_has_a_permission_row():
    covered = {(case.url_name, case.method) for case in CASES} | PUBLIC
    missing = sorted(_api_endpoints() - covered)
    assert not missing, f"API endpoints without a permission case: {missing}"


@pytest.mark.django_db
@pytest.mark.parametrize("actor", ACTORS)
@pytest.mark.parametrize("case", CASES, ids=[c.id for c in CASES])
def test_permission_table(case: Case, actor: str, project, users, request):
    if getattr(case, "needs", None):
        for fixture in case.needs:
            request.getfixturevalue(fixture)
    kwargs = case.setup(project)
    if case.project_scoped:
        kwargs = {"project": project.slug, **kwargs}
    url = reverse(case.url_name, kwargs=kwargs)
    client = client_for(None if actor == "anonymous" else users[actor])
    response = getattr(client, case.method.lower())(
        url, data=case.data(project), format=case.format
    )
    assert response.status_code == case.expected[actor], (
        f"{case.id} as {actor}: got {response.status_code}, expected {case.expected[actor]}: "
        f"{getattr(response, 'data', b'')!r}"
    )
    if response.status_code == 403 and "needs" in str(response.data.get("detail", "")):
        # The reason names roles as users know them ("radiologist"), not Python enums.
        detail = str(response.data["detail"])
        assert "Role." not in detail, detail
        assert re.match(r"This action needs (the role|one of the roles) [a-z]", detail), detail
