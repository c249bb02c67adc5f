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


class OrthancNotFound(OrthancError):
    """Orthanc has no such resource (HTTP 404)."""

    status_code = status.HTTP_404_NOT_FOUND
    code = "orthanc_not_found"


class InvalidUpload(ImagingError):
    """A file or archive failed validation; `reason` says why (one per rejected file)."""

    code = "invalid_upload"


class EmptyUpload(ImagingError):
    """The upload had no files."""

    code = "empty_upload"


class NothingAccepted(ImagingError):
    """Every file of an upload was rejected; the summary lists why, file by file."""

    code = "nothing_accepted"


class StudyBelongsToAnotherProject(ImagingError):
    status_code = status.HTTP_409_CONFLICT
    code = "study_in_another_project"


class SyncNotConfigured(ImagingError):
    """The sync has no project to put studies that reach Orthanc directly."""

    code = "sync_not_configured"
