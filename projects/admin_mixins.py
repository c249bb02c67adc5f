"""Building blocks shared by the apps' Django admin modules."""

from __future__ import annotations

from django.http import HttpRequest


class ReadOnlyAdminMixin:
    """Rows written by services, the API and the worker: viewable in the admin, never added,
    edited or deleted there (their rules live in the services)."""

    def has_add_permission(self, request: HttpRequest, obj=None) -> bool:
        return False

    def has_change_permission(self, request: HttpRequest, obj=None) -> bool:
        return False

    def has_delete_permission(self, request: HttpRequest, obj=None) -> bool:
        return False
