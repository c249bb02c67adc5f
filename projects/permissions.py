"""Project-scoped authorization for every API view.

A view under `/api/projects/<project>/...` declares which roles each HTTP method needs
(`project_roles`); `ProjectRolePermission` resolves the project from the URL and then:
- a non-member (or an unknown project) gets 404: another project's objects do not exist
  for them;
- a member without one of the roles gets 403 naming the roles needed.
The resolved project is stored on the view as `view.project` for querysets to filter on.
Objects looked up inside a project must always be filtered by `view.project`.
"""

from __future__ import annotations

from collections.abc import Mapping

from django.http import Http404
from rest_framework.exceptions import PermissionDenied
from rest_framework.permissions import BasePermission

from projects.models import ALL_ROLES, Project, Role
from projects.query import StrictQueryMixin
from projects.selectors import projects_visible_to, roles_of

READ_METHODS = ("GET", "HEAD", "OPTIONS")

# Common role tables views can use as `project_roles`.
MEMBERS_READ_ADMIN_WRITE: Mapping[str, frozenset[str]] = {
    **{m: ALL_ROLES for m in READ_METHODS},
    **{m: frozenset({Role.ADMIN}) for m in ("POST", "PUT", "PATCH", "DELETE")},
}
MEMBERS_ONLY: Mapping[str, frozenset[str]] = {
    m: ALL_ROLES for m in (*READ_METHODS, "POST", "PUT", "PATCH", "DELETE")
}
ADMIN_ONLY: Mapping[str, frozenset[str]] = {
    m: frozenset({Role.ADMIN}) for m in (*READ_METHODS, "POST", "PUT", "PATCH", "DELETE")
}


def resolve_project(user, slug: str) -> Project:
    """The project `slug` if `user` may see it, else 404 (never 403: no existence leak)."""
    try:
        return projects_visible_to(user).get(slug=slug)
    except Project.DoesNotExist as exc:
        raise Http404("No such project.") from exc


class ProjectRolePermission(BasePermission):
    """Checks membership and the role the view requires for the request's method."""

    project_url_kwarg = "project"

    def has_permission(self, request, view) -> bool:
        if not request.user or not request.user.is_authenticated:
            return False
        slug = view.kwargs.get(self.project_url_kwarg)
        if slug is None:
            raise RuntimeError(f"{type(view).__name__} has no <project> URL argument")
        project = resolve_project(request.user, slug)
        view.project = project
        required = required_roles(view, request.method)
        if not (roles_of(request.user, project) & required):
            names = sorted(str(role) for role in required)  # "radiologist", not Role.RADIOLOGIST
            needs = (
                f"the role {names[0]}"
                if len(names) == 1
                else f"one of the roles {', '.join(names)}"
            )
            raise PermissionDenied(f"This action needs {needs} in project '{project.slug}'.")
        return True


def required_roles(view, method: str) -> frozenset[str]:
    """Roles for `method`: a view's `get_project_roles()` or its `project_roles` table."""
    getter = getattr(view, "get_project_roles", None)
    table = getter() if getter else getattr(view, "project_roles", None)
    if table is None:
        raise RuntimeError(f"{type(view).__name__} declares no project_roles")
    roles = table.get(method.upper())
    if roles is None:
        # A method the view does not declare is open to nobody.
        return frozenset()
    return frozenset(roles)


class ProjectScopedMixin(StrictQueryMixin):
    """Mixin for views under /api/projects/<project>/: sets permission and `self.project`
    (and, through StrictQueryMixin, refuses query parameters the view does not read)."""

    permission_classes = [ProjectRolePermission]
    project_roles: Mapping[str, frozenset[str]] = MEMBERS_READ_ADMIN_WRITE
    # Set by ProjectRolePermission before any handler runs. None only where no request
    # was authorized (OpenAPI schema generation): querysets filtered by it are then empty.
    project: Project | None = None
