"""OpenAPI schema hooks (drf-spectacular)."""

from __future__ import annotations


def exclude_dicomweb(endpoints):
    """Leave the DICOMweb proxy out of the REST schema: DICOMweb (PS3.18) is its contract."""
    return [e for e in endpoints if not e[0].startswith("/dicom-web/")]
