from projects.models import Membership, Role
from tests.factories import UserFactory
from tests.support.permissions import Case, table


def _membership(project):
    user = UserFactory()
    membership = Membership.objects.create(project=project, user=user, role=Role.ANNOTATOR)
    return {"pk": membership.pk}


def _new_member(project):
    return {"username": UserFactory().username, "role": "annotator"}


CASES = [
    Case("project-list", "GET", table(200, 200, 200, 200, 401), project_scoped=False),
    Case(
        "project-list",
        "POST",
        table(403, 403, 403, 403, 401),
        project_scoped=False,
        data=lambda p: {"slug": "new-project", "name": "New"},
    ),
    Case("project-detail", "GET", table(200, 200, 200)),
    Case(
        "project-detail",
        "PUT",
        table(200, 403, 403),
        data=lambda p: {"name": "Renamed", "description": "", "deidentify": True},
    ),
    Case("project-detail", "PATCH", table(200, 403, 403), data=lambda p: {"name": "Renamed"}),
    Case("membership-list", "GET", table(200, 200, 200)),
    Case("membership-list", "POST", table(201, 403, 403), data=_new_member),
    Case("membership-detail", "GET", table(200, 403, 403), setup=_membership),
    Case(
        "membership-detail",
        "PATCH",
        table(200, 403, 403),
        setup=_membership,
        data=lambda p: {"role": "radiologist"},
    ),
    Case("membership-detail", "DELETE", table(204, 403, 403), setup=_membership),
    Case("me", "GET", table(200, 200, 200, 200, 401), project_scoped=False),
]

# Endpoints open to everyone by design (no permission row needed).
PUBLIC = {("health", "GET"), ("auth-token", "POST")}
