"""The one place that talks to Orthanc: its REST API and its DICOMweb endpoints.

Only the platform talks to Orthanc (it has no CSRF protection and no per-project
authorization); browsers go through the authorizing proxy in `imaging.proxy`.
"""

from __future__ import annotations

from typing import Any

import requests
from dicomweb_client.api import DICOMwebClient
from django.conf import settings

from imaging.exceptions import OrthancError, OrthancUnavailable

__all__ = ["OrthancClient", "OrthancError", "OrthancUnavailable"]


class OrthancClient:
    """A small client for Orthanc's REST API with explicit timeouts and clear errors."""

    def __init__(
        self,
        url: str | None = None,
        *,
        username: str | None = None,
        password: str | None = None,
        timeout_s: float | None = None,
    ) -> None:
        self.url = (url or settings.ORTHANC_URL).rstrip("/")
        self.timeout_s = timeout_s if timeout_s is not None else settings.ORTHANC_TIMEOUT_S
        self.session = requests.Session()
        self.session.auth = (
            username if username is not None else settings.ORTHANC_USERNAME,
            password if password is not None else settings.ORTHANC_PASSWORD,
        )

    # -- plumbing -------------------------------------------------------------------
    def request(self, method: str, path: str, **kwargs: Any) -> requests.Response:
        kwargs.setdefault("timeout", self.timeout_s)
        try:
            response = self.session.request(method, f"{self.url}{path}", **kwargs)
        except (requests.ConnectionError, requests.Timeout) as exc:
            raise OrthancUnavailable(
                f"Orthanc at {self.url} is unreachable ({type(exc).__name__}); try again later."
            ) from exc
        if response.status_code == 401:
            raise OrthancError("Orthanc rejected the platform's credentials (HTTP 401).")
        if response.status_code >= 500:
            raise OrthancError(
                f"Orthanc failed on {method} {path}: HTTP {response.status_code} "
                f"{response.text[:200]}"
            )
        return response

    def get_json(self, path: str, **kwargs: Any) -> Any:
        response = self.request("GET", path, **kwargs)
        if response.status_code == 404:
            raise OrthancError(f"Orthanc has no {path}", extra={"orthanc_status": 404})
        response.raise_for_status()
        return response.json()

    # -- REST API -------------------------------------------------------------------
    def system(self) -> dict:
        """GET /system: version and name; the cheapest liveness check."""
        return self.get_json("/system")

    def dicomweb(self) -> DICOMwebClient:
        """A dicomweb-client bound to Orthanc's DICOMweb root with our credentials."""
        return DICOMwebClient(
            url=f"{self.url}{settings.ORTHANC_DICOMWEB_ROOT}", session=self.session
        )
