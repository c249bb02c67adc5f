"""Permission tables: every API endpoint x every role (and non-member, anonymous).

Each app lists its endpoints in `tests/<app>/permission_cases.py` as `CASES`; the table
test in `tests/test_permissions.py` runs them all and fails if any API URL pattern has a
method without a case, so a new endpoint cannot ship without its permission row.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from projects.models import Project

# Who asks: the three project roles, a logged-in user of no membership, nobody.
ACTORS = ("admin", "radiologist", "annotator", "non_member", "anonymous")


@dataclass(frozen=True)
class Case:
    """One endpoint and method with the status each actor must get.

    `url_name` is the Django URL name; `setup(project)` returns the URL kwargs besides
    `project` (creating whatever objects the URL points at, inside `project`);
    `data(project)` the request body. `expected` maps each actor to its status code.
    """

    url_name: str
    method: str
    expected: dict[str, int]
    setup: Callable[[Project], dict[str, Any]] = field(default=lambda project: {})
    data: Callable[[Project], Any] = field(default=lambda project: None)
    format: str = "json"
    project_scoped: bool = True
    # Fixtures the case needs active (e.g. ("orthanc",)), requested by the table test.
    needs: tuple[str, ...] = ()

    @property
    def id(self) -> str:
        return f"{self.method} {self.url_name}"


def table(
    admin: int, radiologist: int, annotator: int, non_member: int = 404, anonymous: int = 401
) -> dict[str, int]:
    return {
        "admin": admin,
        "radiologist": radiologist,
        "annotator": annotator,
        "non_member": non_member,
        "anonymous": anonymous,
    }
