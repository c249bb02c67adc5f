"""Read-side helpers: which projects a user sees and which role they hold there."""

from __future__ import annotations

from collections.abc import Iterable

from django.contrib.auth.models import AbstractBaseUser, AnonymousUser
from django.db.models import QuerySet

from projects.models import ALL_ROLES, Membership, Project, Role


def projects_visible_to(user: AbstractBaseUser | AnonymousUser) -> QuerySet[Project]:
    if not user.is_authenticated:
        return Project.objects.none()
    if user.is_superuser:
        return Project.objects.all()
    return Project.objects.filter(memberships__user=user).distinct()


def roles_of(user: AbstractBaseUser | AnonymousUser, project: Project) -> frozenset[str]:
    """Roles `user` holds in `project`; superusers hold every role everywhere."""
    if not user.is_authenticated:
        return frozenset()
    if user.is_superuser:
        return ALL_ROLES
    return frozenset(
        Membership.objects.filter(project=project, user=user).values_list("role", flat=True)
    )


def has_role(user, project: Project, roles: Iterable[str]) -> bool:
    return bool(roles_of(user, project) & set(roles))


def is_project_admin(user, project: Project) -> bool:
    return has_role(user, project, {Role.ADMIN})
