"""The one place that talks to Orthanc: its REST API and its DICOMweb endpoints.

Only the platform talks to Orthanc (it has no CSRF protection and no per-project
authorization); browsers go through the authorizing proxy in `imaging.proxy`.
"""

from __future__ import annotations

import base64
import hashlib
import threading
import uuid
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlsplit

import requests
import urllib3
from dicomweb_client.api import DICOMwebClient
from django.conf import settings
from pydicom.dataset import Dataset

from imaging.exceptions import OrthancError, OrthancNotFound, OrthancUnavailable

__all__ = [
    "OrthancClient",
    "OrthancError",
    "OrthancNotFound",
    "OrthancUnavailable",
    "RawFrameReader",
    "UpstreamAnswer",
    "orthanc_id",
    "raw_frame_reader",
]


def orthanc_id(*dicom_ids: str) -> str:
    """Orthanc's identifier of a resource: SHA-1 of its DICOM identifiers joined by '|'.

    Patient: (PatientID,), study: (PatientID, StudyInstanceUID), series: (..., SeriesInstanceUID),
    instance: (..., SOPInstanceUID), written as five dash-separated groups of 8 hex digits
    (documented in the Orthanc Book, "Orthanc identifiers"). Lets ingest index the Orthanc
    ids without a lookup per instance; the tests check it against Orthanc itself.
    """
    digest = hashlib.sha1("|".join(dicom_ids).encode()).hexdigest()  # an id, not a MAC
    return "-".join(digest[i : i + 8] for i in range(0, 40, 8))


def raise_for_orthanc_status(status: int, method: str, path: str, body: Callable[[], str]) -> None:
    """Orthanc's answers the platform cannot pass on: 401 (our credentials) and 5xx. `body`
    is read only for the error (a streamed answer's body must stay unread)."""
    if status == 401:
        raise OrthancError("Orthanc rejected the platform's credentials (HTTP 401).")
    if status >= 500:
        raise OrthancError(f"Orthanc failed on {method} {path}: HTTP {status} {body()[:200]}")


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
        raise_for_orthanc_status(response.status_code, method, path, lambda: response.text)
        return response

    def get_json(self, path: str, **kwargs: Any) -> Any:
        response = self.request("GET", path, **kwargs)
        if response.status_code == 404:
            raise OrthancNotFound(f"Orthanc has no {path}", extra={"orthanc_status": 404})
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

    def store_instances(self, instances: Sequence[bytes]) -> Dataset:
        """STOW-RS (PS3.18 10.5) of encoded DICOM Part 10 files in one request.

        Returns the response (ReferencedSOPSequence, FailedSOPSequence) as a Dataset.
        Posted on this client's session (one keep-alive connection for a whole ingest),
        without retries: the caller answers 503 and the user retries (STOW is idempotent).
        dicomweb-client's `store_instances` takes only Datasets and encodes each again with
        `dcmwrite`; ingest already holds the bytes it validated or de-identified, so the
        multipart/related body (PS3.18 8.6.1.2) is written here, with a random boundary
        per request so no file's content can end its part early.

        Raises:
            OrthancUnavailable: Orthanc cannot be reached.
            OrthancError: Orthanc refused the request (4xx) or failed (5xx); a 4xx whose
                body is a STOW-RS response (every instance failed) is returned instead.
        """
        boundary = uuid.uuid4().hex
        delimiter = f"\r\n--{boundary}\r\nContent-Type: application/dicom\r\n\r\n".encode()
        body = b"".join(part for instance in instances for part in (delimiter, instance))
        body += f"\r\n--{boundary}--".encode()
        response = self.request(
            "POST",
            f"{settings.ORTHANC_DICOMWEB_ROOT}/studies",
            data=body,
            headers={
                "Content-Type": (
                    f'multipart/related; type="application/dicom"; boundary="{boundary}"'
                ),
                "Accept": "application/dicom+json",
            },
        )
        is_json = "json" in response.headers.get("Content-Type", "")
        if response.status_code >= 400 and not (response.status_code == 409 and is_json):
            raise OrthancError(
                f"Orthanc refused the STOW-RS request (HTTP {response.status_code}) "
                f"{response.text[:200]}"
            )
        if not response.content or not is_json:
            return Dataset()
        try:
            return Dataset.from_json(response.json())
        except ValueError as exc:
            raise OrthancError(f"Orthanc's STOW-RS response is not DICOM JSON ({exc})") from exc

    def changes(self, *, since: int, limit: int = 100) -> dict:
        """GET /changes: `{"Changes": [...], "Done": bool, "Last": seq}` after sequence `since`."""
        return self.get_json("/changes", params={"since": since, "limit": limit})

    def last_change(self) -> int:
        """The sequence number of the newest change (0 when none)."""
        return int(self.get_json("/changes", params={"last": ""}).get("Last", 0))

    def studies(self) -> list[str]:
        """GET /studies: every study's Orthanc id."""
        return self.get_json("/studies")

    def study(self, orthanc_study_id: str) -> dict:
        """GET /studies/{id}: main DICOM tags, series ids, patient id."""
        return self.get_json(f"/studies/{orthanc_study_id}")

    def study_statistics(self, orthanc_study_id: str) -> dict:
        """GET /studies/{id}/statistics: CountSeries, CountInstances, disk sizes."""
        return self.get_json(f"/studies/{orthanc_study_id}/statistics")

    def study_instances_tags(self, orthanc_study_id: str) -> dict[str, dict]:
        """GET /studies/{id}/instances-tags?simplify: instance id -> tags (names -> strings)."""
        return self.get_json(f"/studies/{orthanc_study_id}/instances-tags", params={"simplify": ""})

    def statistics(self) -> dict:
        """GET /statistics: counts of patients, studies, series, instances and disk use."""
        return self.get_json("/statistics")

    def lookup(self, dicom_id: str) -> list[dict]:
        """POST /tools/lookup: resources whose DICOM identifier (UID, PatientID) is `dicom_id`."""
        response = self.request("POST", "/tools/lookup", data=dicom_id)
        response.raise_for_status()
        return response.json()

    def lookup_study(self, study_instance_uid: str) -> str | None:
        """The Orthanc id of the study with this StudyInstanceUID, or None."""
        for hit in self.lookup(study_instance_uid):
            if hit.get("Type") == "Study":
                return hit["ID"]
        return None

    def delete_study(self, orthanc_study_id: str) -> bool:
        """DELETE /studies/{id}; True if deleted, False if Orthanc did not have it."""
        response = self.request("DELETE", f"/studies/{orthanc_study_id}")
        if response.status_code == 404:
            return False
        response.raise_for_status()
        return True


# --- raw frames, for the proxy's hot path ---------------------------------------------


@dataclass(frozen=True)
class UpstreamAnswer:
    """An Orthanc answer that is not a frame: its status, reason and body (for the error)."""

    status: int
    reason: str
    body: bytes


class RawFrameReader:
    """Orthanc's raw frames over a pool of keep-alive connections (urllib3, no `requests`).

    `requests` costs about 0.5 ms of Python per call on top of urllib3 (session merging,
    hooks, cookie jars); Orthanc itself answers a raw frame in about 0.15 ms, so on the
    frame path `requests` was most of the upstream time. The pool is per process and
    thread-safe (granian's blocking threads share it); errors are `OrthancClient`'s:
    unreachable -> `OrthancUnavailable` (503), 401 or 5xx -> `OrthancError` (502), any
    other non-200 comes back as an `UpstreamAnswer` for the caller to map.
    """

    def __init__(self, url: str, username: str, password: str, timeout_s: float) -> None:
        parts = urlsplit(url)
        self.url = url
        self.prefix = parts.path.rstrip("/")
        self.pool = urllib3.connection_from_url(
            url,
            maxsize=16,
            timeout=urllib3.Timeout(connect=timeout_s, read=timeout_s),
            # One new connection if a kept-alive one turned out dead (Orthanc restarted);
            # never a second read: a GET that reached Orthanc is answered or fails.
            retries=urllib3.Retry(total=1, connect=1, read=0, redirect=0, status=0),
        )
        credentials = base64.b64encode(f"{username}:{password}".encode()).decode()
        self.headers = {"Authorization": f"Basic {credentials}"}

    def read(self, orthanc_id: str, number: int) -> bytes | UpstreamAnswer:
        """Frame `number` (1-based) of the instance, as stored."""
        path = f"{self.prefix}/instances/{orthanc_id}/frames/{number - 1}/raw"
        try:
            answer = self.pool.request("GET", path, headers=self.headers)
        except urllib3.exceptions.HTTPError as exc:
            raise OrthancUnavailable(
                f"Orthanc at {self.url} is unreachable ({type(exc).__name__}); try again later."
            ) from exc
        if answer.status == 200:
            return answer.data
        raise_for_orthanc_status(
            answer.status, "GET", path, lambda: answer.data.decode(errors="replace")
        )
        return UpstreamAnswer(answer.status, answer.reason or "", answer.data)


_readers: dict[tuple, RawFrameReader] = {}
_readers_lock = threading.Lock()


def raw_frame_reader() -> RawFrameReader:
    """The process's reader for the configured Orthanc (rebuilt when tests change it)."""
    key = (
        settings.ORTHANC_URL,
        settings.ORTHANC_USERNAME,
        settings.ORTHANC_PASSWORD,
        settings.ORTHANC_TIMEOUT_S,
    )
    reader = _readers.get(key)
    if reader is None:
        with _readers_lock:
            reader = _readers.setdefault(key, RawFrameReader(*key))
    return reader
