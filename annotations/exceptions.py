"""Errors of findings and feedback (user-facing, 4xx with the reason)."""

from __future__ import annotations

from rest_framework import status

from projects.exceptions import PlatformError


class AnnotationError(PlatformError):
    """Base of annotation errors: bad feedback or an added finding that does not fit."""


class InvalidGeometry(AnnotationError):
    """A position lies outside the series volume, or the series has no known geometry."""

    code = "invalid_geometry"


class InvalidFeedback(AnnotationError):
    """The verdict and its corrections do not fit the finding (unknown grade, bad size...)."""

    code = "invalid_feedback"


class HeatmapMissing(AnnotationError):
    status_code = status.HTTP_404_NOT_FOUND
    code = "heatmap_missing"
