"""Errors of the imaging subsystem (Orthanc link, ingest, index)."""

from __future__ import annotations

from rest_framework import status

from projects.exceptions import PlatformError, ServiceUnavailable


class ImagingError(PlatformError):
    """Base for imaging errors."""


class OrthancError(ImagingError):
    """Orthanc answered with an error we did not expect."""

    status_code = status.HTTP_502_BAD_GATEWAY
    code = "orthanc_error"


class OrthancUnavailable(OrthancError, ServiceUnavailable):
    """Orthanc cannot be reached (down, refused, timed out)."""

    status_code = status.HTTP_503_SERVICE_UNAVAILABLE
    code = "orthanc_unavailable"
