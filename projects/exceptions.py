"""API error handling shared by every app.

Every subsystem raises its own `PlatformError` subclass carrying an HTTP status; this
handler turns them (and Django's own validation errors) into 4xx/503 JSON responses with
a `detail` that says what was wrong, so bad input never becomes a 500.
"""

from __future__ import annotations

from django.core.exceptions import ValidationError as DjangoValidationError
from rest_framework import status


class PlatformError(Exception):
    """Base of the platform's user-facing errors. Subsystems subclass it."""

    status_code = status.HTTP_400_BAD_REQUEST
    code = "invalid"

    def __init__(self, message: str, *, extra: dict | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.extra = extra or {}


class ServiceUnavailable(PlatformError):
    """A backing service (Orthanc, Redis) does not answer; retry later."""

    status_code = status.HTTP_503_SERVICE_UNAVAILABLE
    code = "service_unavailable"


class Conflict(PlatformError):
    status_code = status.HTTP_409_CONFLICT
    code = "conflict"


def api_exception_handler(exc, context):
    # Imported here so that modules raising these errors import without Django settings.
    from rest_framework.response import Response
    from rest_framework.views import exception_handler

    if isinstance(exc, PlatformError):
        return Response(
            {"detail": exc.message, "code": exc.code, **exc.extra}, status=exc.status_code
        )
    if isinstance(exc, DjangoValidationError):
        detail = exc.message_dict if hasattr(exc, "error_dict") else {"detail": exc.messages}
        return Response(detail, status=status.HTTP_400_BAD_REQUEST)
    return exception_handler(exc, context)
