"""The authorizing DICOMweb proxy: the browser's only way to Orthanc's DICOMweb endpoints.

One DICOMweb root per project, `/dicom-web/projects/<project>` (see docs/dicomweb-proxy.md):
- every request is authenticated (session or `Authorization: Token ...`; none -> 401) and
  authorized by project membership (any role reads; a non-member gets 404);
- every UID in the path is checked against the study index (`imaging.models`): a study of
  another project, or a series/instance that is not in the study named by the path, is 404;
- study-level QIDO is restricted to the project's studies (`search_for_studies`);
- responses are streamed from Orthanc in 64 KiB chunks (never a whole multipart body in
  memory), with Orthanc's own URL rewritten to the proxy's (RetrieveURL, BulkDataURI,
  multipart Content-Location) so the browser never learns Orthanc's address.

Orthanc DICOMweb 1.7 implements `rendered` at study, series, instance and frame level but
not `thumbnail` (404): the proxy's `thumbnail` is Orthanc's `rendered` with a small
`viewport` (128,128 unless the client asks for another).
"""

from __future__ import annotations

import json
import re
import threading
import time
from collections.abc import Iterator
from typing import Any
from urllib.parse import quote, urlencode

import requests
from django.conf import settings
from django.http import HttpRequest, HttpResponse, StreamingHttpResponse
from django.http.response import HttpResponseBase
from django.urls import reverse
from django.views.decorators.csrf import csrf_exempt
from pydicom.datadict import tag_for_keyword
from rest_framework import status
from rest_framework.authentication import SessionAuthentication
from rest_framework.exceptions import NotFound
from rest_framework.permissions import IsAuthenticated
from rest_framework.renderers import JSONRenderer
from rest_framework.request import Request
from rest_framework.views import APIView

from imaging.exceptions import ImagingError, OrthancError
from imaging.models import Instance, Series, Study
from imaging.orthanc import OrthancClient, UpstreamAnswer, raw_frame_reader
from imaging.proxy_frames import (
    FRAME_MEDIA_TYPES,
    FrameTarget,
    FrameTokenAuthentication,
    MultipartFrames,
    find_frame_target,
    frame_target,
    reader_of,
    wants_stored_encoding,
)
from projects.models import Project
from projects.permissions import resolve_project

CHUNK_BYTES = 64 * 1024
DICOM_JSON = "application/dicom+json"
# Study-level QIDO: when a project has at most this many studies, Orthanc is asked for
# exactly them (`StudyInstanceUID=<uid>,<uid>,...`, so limit/offset stay Orthanc's); above
# it, the proxy pages through Orthanc's matches and keeps the project's (see
# `search_for_studies`). 100 UIDs keep the query string under ~7 KB.
UID_LIST_MAX = 100
SCAN_PAGE = 500
QIDO_MAX_LIMIT = 5000
THUMBNAIL_VIEWPORT = "128,128"
RENDERED_PARAMS = frozenset({"viewport", "quality", "window"})
# An upstream error status the browser may see as is; anything else becomes 502.
PASSED_THROUGH_ERRORS = frozenset({400, 404, 406, 409, 410, 413, 415})

_ATTRIBUTE = re.compile(r"^[0-9A-Fa-f]{8}$")


class DicomwebProxyError(ImagingError):
    """A request the proxy refuses (bad query) or an error Orthanc answered with."""

    code = "dicomweb_error"

    def __init__(self, message: str, *, status_code: int = status.HTTP_400_BAD_REQUEST) -> None:
        super().__init__(message)
        self.status_code = status_code


# --- Orthanc link ----------------------------------------------------------------------

_local = threading.local()


def orthanc_client() -> OrthancClient:
    """This thread's Orthanc client (its pooled keep-alive connections save a TCP handshake
    per frame); rebuilt when the Orthanc settings change (tests point them elsewhere)."""
    key = (
        settings.ORTHANC_URL,
        settings.ORTHANC_USERNAME,
        settings.ORTHANC_PASSWORD,
        settings.ORTHANC_TIMEOUT_S,
    )
    cached = getattr(_local, "client", None)
    if cached is None or cached[0] != key:
        client = OrthancClient()
        # Orthanc is an internal service: never route to it through an HTTP(S)_PROXY of the
        # environment, and skip requests' per-request environment lookup (~0.2 ms a frame).
        client.session.trust_env = False
        cached = (key, client)
        _local.client = cached
    return cached[1]


def orthanc_dicomweb_base() -> str:
    """The base Orthanc writes into its answers (it builds it from our Host header)."""
    return f"{settings.ORTHANC_URL.rstrip('/')}/{settings.ORTHANC_DICOMWEB_ROOT.strip('/')}"


def query_string(params: list[tuple[str, str]] | None) -> str:
    """`?a=b&...` keeping commas literal: Orthanc does not decode `%2C` in list values
    (viewport, includefield, UID lists), which `requests`' own encoding would produce."""
    if not params:
        return ""
    return "?" + urlencode(params, safe=",*", quote_via=quote)


def _upstream_error(upstream: requests.Response) -> DicomwebProxyError:
    """Map an Orthanc error answer to one for the browser, with Orthanc's reason."""
    try:
        body = upstream.content
    finally:
        upstream.close()
    return _answer_error(upstream.status_code, upstream.reason, body)


def _answer_error(status_code: int, reason: str, body: bytes) -> DicomwebProxyError:
    """The browser's error for an Orthanc answer `status_code` (reason from its JSON body)."""
    try:
        details = json.loads(body)
        reason = details.get("Details") or details.get("Message") or reason
    except (ValueError, AttributeError):
        reason = reason or f"HTTP {status_code}"
    reason = str(reason).replace(orthanc_dicomweb_base(), "")
    if status_code in PASSED_THROUGH_ERRORS:
        return DicomwebProxyError(f"Orthanc: {reason}", status_code=status_code)
    return DicomwebProxyError(
        f"Orthanc answered HTTP {status_code}: {reason}",
        status_code=status.HTTP_502_BAD_GATEWAY,
    )


def rewrite_stream(chunks: Iterator[bytes], old: bytes, new: bytes) -> Iterator[bytes]:
    """Yield `chunks` with every `old` replaced by `new`, also across chunk boundaries.

    Holds back at most `len(old) - 1` bytes between chunks, so memory stays one chunk.
    """
    keep = len(old) - 1
    tail = b""
    for chunk in chunks:
        data = tail + chunk if tail else chunk
        cut = len(data) - keep  # a match starting before `cut` lies wholly inside `data`
        out: list[bytes] = []
        pos = 0
        while True:
            hit = data.find(old, pos)
            if hit == -1 or hit >= cut:
                break
            out.append(data[pos:hit])
            out.append(new)
            pos = hit + len(old)
        end = max(pos, cut)
        out.append(data[pos:end])
        tail = data[end:]
        piece = b"".join(out)
        if piece:
            yield piece
    if tail:
        yield tail


def _close_after(upstream: requests.Response, chunks: Iterator[bytes]) -> Iterator[bytes]:
    """Yield `chunks`, closing the upstream response when done or when the client leaves
    (Django closes the streaming iterator, which runs this `finally`)."""
    try:
        yield from chunks
    finally:
        upstream.close()


class IndexCache:
    """Recently confirmed (project, study, series, instance) paths, per process.

    A viewer fetches hundreds of frames of one series; remembering that a path belongs to
    the project saves one query per frame. Only index facts are cached (a UID never moves
    to another project; a deleted study is gone from Orthanc too), never membership, which
    is checked on every request so a removed member loses access at once.
    """

    def __init__(self, ttl_s: float = 300.0, max_entries: int = 100_000) -> None:
        self.ttl_s = ttl_s
        self.max_entries = max_entries
        self._seen: dict[tuple, float] = {}
        self._lock = threading.Lock()

    def hit(self, key: tuple) -> bool:
        expires = self._seen.get(key)
        return expires is not None and expires > time.monotonic()

    def add(self, key: tuple) -> None:
        with self._lock:
            if len(self._seen) >= self.max_entries:
                self._seen.clear()
            self._seen[key] = time.monotonic() + self.ttl_s

    def clear(self) -> None:
        with self._lock:
            self._seen.clear()


index_cache = IndexCache()


# --- views -----------------------------------------------------------------------------


class DicomwebView(APIView):
    """Base of the proxy views: authentication, project membership and Orthanc forwarding.

    DRF does the authentication (so an anonymous request gets 401 with WWW-Authenticate);
    errors are JSON. Content negotiation never fails here: the Accept header is Orthanc's
    business (multipart/related, image/jpeg...) and is forwarded.
    """

    permission_classes = [IsAuthenticated]
    renderer_classes = [JSONRenderer]
    project: Project
    # Accept sent to Orthanc when the browser sends none.
    default_accept: str = DICOM_JSON

    def perform_content_negotiation(self, request: Request, force: bool = False):
        # No negotiation at all: DRF's, forced, ends the same way but first builds a
        # translated NotAcceptable for every frame Accept header (~0.7 ms a request).
        renderer = self.renderer_classes[0]()
        return renderer, renderer.media_type

    def initial(self, request: Request, *args: Any, **kwargs: Any) -> None:
        super().initial(request, *args, **kwargs)
        self.project = resolve_project(request.user, kwargs["project"])

    # -- index checks (404, never 403: another project's objects do not exist) ---------
    def check_path(self, study: str, series: str | None = None, instance: str | None = None):
        """404 unless the path's deepest UID is indexed under the path's study, in this
        project. One query; positive answers are remembered briefly (`IndexCache`)."""
        key = (self.project.pk, study, series, instance)
        if index_cache.hit(key):
            return
        if instance is not None:
            found = Instance.objects.filter(
                sop_instance_uid=instance,
                series__series_instance_uid=series,
                series__study__study_instance_uid=study,
                series__study__project=self.project,
            ).exists()
            what = f"instance {instance} in series {series} of study {study}"
        elif series is not None:
            found = Series.objects.filter(
                series_instance_uid=series,
                study__study_instance_uid=study,
                study__project=self.project,
            ).exists()
            what = f"series {series} in study {study}"
        else:
            found = Study.objects.filter(project=self.project, study_instance_uid=study).exists()
            what = f"study {study}"
        if not found:
            raise NotFound(f"No {what} in project '{self.project.slug}'.")
        index_cache.add(key)

    # -- forwarding ---------------------------------------------------------------------
    def proxy_base(self) -> str:
        """This project's DICOMweb root as the browser sees it (absolute URL)."""
        root = reverse("dicomweb-search-for-studies", kwargs={"project": self.kwargs["project"]})
        return self.request.build_absolute_uri(root.removesuffix("/studies"))

    def forward(
        self,
        path: str,
        *,
        params: list[tuple[str, str]] | None = None,
        accept: str | None = None,
    ) -> HttpResponseBase:
        """GET `path` (under Orthanc's DICOMweb root) and stream Orthanc's answer back."""
        accept = accept or self.request.headers.get("Accept") or self.default_accept
        upstream = orthanc_client().request(
            "GET",
            f"/{settings.ORTHANC_DICOMWEB_ROOT.strip('/')}{path}{query_string(params)}",
            headers={"Accept": accept},
            stream=True,
        )
        if upstream.status_code != 200:
            raise _upstream_error(upstream)
        content_type = upstream.headers.get("Content-Type", "application/octet-stream")
        chunks: Iterator[bytes] = upstream.iter_content(CHUNK_BYTES)
        orthanc = orthanc_dicomweb_base().encode()
        proxy = self.proxy_base().encode()
        length = upstream.headers.get("Content-Length")
        if content_type.startswith(("application/dicom+json", "application/json")):
            # RetrieveURL (0008,1190) and BulkDataURI values.
            chunks = rewrite_stream(chunks, orthanc, proxy)
            length = None
        elif content_type.startswith("multipart/"):
            # Only the part headers: pixel data is never touched.
            chunks = rewrite_stream(
                chunks, b"Content-Location: " + orthanc, b"Content-Location: " + proxy
            )
            length = None
        response = StreamingHttpResponse(_close_after(upstream, chunks), content_type=content_type)
        if length is not None:
            response["Content-Length"] = length
        response["Cache-Control"] = "private"
        response["Vary"] = "Cookie, Authorization"
        return response


def _bad(message: str) -> DicomwebProxyError:
    return DicomwebProxyError(message, status_code=status.HTTP_400_BAD_REQUEST)


def _is_attribute(name: str) -> bool:
    """A DICOM attribute as QIDO names it: keyword or 8 hex digits, dotted for sequences."""
    return all(_ATTRIBUTE.match(part) or tag_for_keyword(part) for part in name.split("."))


def _integer(name: str, value: str, low: int, high: int) -> int:
    if not value.isdigit() or not low <= int(value) <= high:
        raise _bad(f"'{name}' must be an integer from {low} to {high}, got {value!r}.")
    return int(value)


def qido_params(request: Request) -> list[tuple[str, str]]:
    """The request's QIDO-RS query, validated: attributes, includefield, limit, offset,
    fuzzymatching. Anything else is a 400 naming the parameter."""
    out: list[tuple[str, str]] = []
    for name, values in request.query_params.lists():
        lowered = name.lower()
        for value in values:
            if lowered == "limit":
                _integer(name, value, 1, QIDO_MAX_LIMIT)
            elif lowered == "offset":
                _integer(name, value, 0, 10**9)
            elif lowered == "fuzzymatching":
                if value.lower() not in {"true", "false"}:
                    raise _bad(f"'fuzzymatching' must be true or false, got {value!r}.")
            elif lowered == "includefield":
                fields = [f.strip() for f in value.split(",")]
                bad = [f for f in fields if f.lower() != "all" and not _is_attribute(f)]
                if bad:
                    raise _bad(f"'includefield' names unknown attributes: {bad}.")
            elif not _is_attribute(name):
                raise _bad(
                    f"Unknown query parameter {name!r}: QIDO-RS takes DICOM attributes "
                    "(keyword or tag), includefield, limit, offset and fuzzymatching."
                )
            out.append((name, value))
    return out


def rendered_params(request: Request, *, thumbnail: bool = False) -> list[tuple[str, str]]:
    """The rendered/thumbnail query (viewport, quality, window); anything else is a 400."""
    unknown = sorted(set(request.query_params) - RENDERED_PARAMS)
    if unknown:
        raise _bad(f"Unknown query parameters {unknown}: rendered takes {sorted(RENDERED_PARAMS)}.")
    params = [(k, v) for k, vs in request.query_params.lists() for v in vs]
    if thumbnail and "viewport" not in request.query_params:
        params.append(("viewport", THUMBNAIL_VIEWPORT))
    return params


def _uids_in(value: str) -> set[str]:
    """The UIDs of a QIDO UID-list match (comma or backslash separated)."""
    return {uid.strip() for uid in re.split(r"[,\\]", value) if uid.strip()}


# --- QIDO-RS ---------------------------------------------------------------------------


class SearchForStudies(DicomwebView):
    """QIDO-RS `GET {root}/studies`, restricted to the project's studies."""

    def get(self, request: Request, project: str) -> HttpResponseBase:
        params = qido_params(request)
        asked: set[str] | None = None
        rest: list[tuple[str, str]] = []
        for name, value in params:
            if name.lower() in {"studyinstanceuid", "0020000d"}:
                uids = _uids_in(value)
                asked = uids if asked is None else asked & uids
            else:
                rest.append((name, value))
        studies = Study.objects.filter(project=self.project)
        if asked is not None:
            studies = studies.filter(study_instance_uid__in=asked)
        visible = list(studies.values_list("study_instance_uid", flat=True)[: UID_LIST_MAX + 1])
        if not visible:
            return HttpResponse(b"[]", content_type=DICOM_JSON)
        if len(visible) <= UID_LIST_MAX:
            return self.forward("/studies", params=[*rest, ("StudyInstanceUID", ",".join(visible))])
        return self.search_by_scanning(
            rest, set(studies.values_list("study_instance_uid", flat=True))
        )

    def search_by_scanning(
        self, params: list[tuple[str, str]], visible: set[str]
    ) -> HttpResponseBase:
        """Page through Orthanc's matches, keep the project's, then apply offset/limit.

        Used when the project has too many studies to name them in the query. Orthanc
        answers pages in a stable order, so offset/limit count only visible studies.
        """
        limit = offset = None
        query: list[tuple[str, str]] = []
        for name, value in params:
            if name.lower() == "limit":
                limit = int(value)
            elif name.lower() == "offset":
                offset = int(value)
            else:
                query.append((name, value))
        skip, kept, page_offset = offset or 0, [], 0
        client = orthanc_client()
        path = f"/{settings.ORTHANC_DICOMWEB_ROOT.strip('/')}/studies"
        while limit is None or len(kept) < limit:
            page_query = [*query, ("limit", str(SCAN_PAGE)), ("offset", str(page_offset))]
            upstream = client.request(
                "GET",
                path + query_string(page_query),
                headers={"Accept": DICOM_JSON},
            )
            if upstream.status_code != 200:
                raise _upstream_error(upstream)
            page = upstream.json()
            for entry in page:
                uid = (entry.get("0020000D", {}).get("Value") or [None])[0]
                if uid not in visible:
                    continue
                if skip:
                    skip -= 1
                    continue
                kept.append(entry)
                if limit is not None and len(kept) >= limit:
                    break
            if len(page) < SCAN_PAGE:
                break
            page_offset += SCAN_PAGE
        body = json.dumps(kept).replace(orthanc_dicomweb_base(), self.proxy_base())
        return HttpResponse(body.encode(), content_type=DICOM_JSON)


class SearchForSeries(DicomwebView):
    """QIDO-RS `GET {root}/studies/{study}/series`."""

    def get(self, request: Request, project: str, study: str) -> HttpResponseBase:
        params = qido_params(request)
        self.check_path(study)
        return self.forward(f"/studies/{study}/series", params=params)


class SearchForStudyInstances(DicomwebView):
    """QIDO-RS `GET {root}/studies/{study}/instances`."""

    def get(self, request: Request, project: str, study: str) -> HttpResponseBase:
        params = qido_params(request)
        self.check_path(study)
        return self.forward(f"/studies/{study}/instances", params=params)


class SearchForInstances(DicomwebView):
    """QIDO-RS `GET {root}/studies/{study}/series/{series}/instances`."""

    def get(self, request: Request, project: str, study: str, series: str) -> HttpResponseBase:
        params = qido_params(request)
        self.check_path(study, series)
        return self.forward(f"/studies/{study}/series/{series}/instances", params=params)


# --- WADO-RS ---------------------------------------------------------------------------


def _resource_path(study: str, series: str | None = None, instance: str | None = None) -> str:
    path = f"/studies/{study}"
    if series is not None:
        path += f"/series/{series}"
    if instance is not None:
        path += f"/instances/{instance}"
    return path


class RetrieveResource(DicomwebView):
    """WADO-RS retrieve of a study, series or instance (multipart/related DICOM)."""

    default_accept = 'multipart/related; type="application/dicom"'

    def get(
        self,
        request: Request,
        project: str,
        study: str,
        series: str | None = None,
        instance: str | None = None,
    ) -> HttpResponseBase:
        self.check_path(study, series, instance)
        return self.forward(_resource_path(study, series, instance))


class RetrieveMetadata(DicomwebView):
    """WADO-RS metadata of a study, series or instance (application/dicom+json)."""

    def get(
        self,
        request: Request,
        project: str,
        study: str,
        series: str | None = None,
        instance: str | None = None,
    ) -> HttpResponseBase:
        self.check_path(study, series, instance)
        return self.forward(_resource_path(study, series, instance) + "/metadata")


def frame_numbers(numbers: list[int], number_of_frames: int) -> list[int]:
    """The 1-based frame list, checked against the index: a number outside
    1..number_of_frames is a 400, as Orthanc answers it (400 "Parameter out of range")."""
    bad = [n for n in numbers if not 1 <= n <= number_of_frames]
    if bad:
        raise _bad(
            f"Frame {bad[0]} is out of range: the instance has {number_of_frames} "
            f"frame{'s' if number_of_frames != 1 else ''} (frame numbers start at 1)."
        )
    return numbers


def frame_list(frames: str) -> list[int]:
    """The frame numbers of a `frames` path segment (the URL converter admits only digits
    and commas); numbers start at 1."""
    numbers = [int(n) for n in frames.split(",")]
    if min(numbers) < 1:
        raise _bad(f"Frame numbers start at 1, got {frames!r}.")
    return numbers


def raw_frames_response(
    request: HttpRequest, target: FrameTarget, syntax: str, numbers: list[int]
) -> HttpResponseBase:
    """Orthanc's raw frames `numbers` of `target` as the plugin's multipart/related."""
    reader = raw_frame_reader()

    def fetch(number: int) -> bytes:
        frame = reader.read(target.orthanc_id, number)
        if isinstance(frame, UpstreamAnswer):
            raise _answer_error(frame.status, frame.reason, frame.body)
        return frame

    path = request.path
    location = request.build_absolute_uri(path[: path.rindex("/frames/") + 8])
    body = MultipartFrames(syntax, location, numbers, fetch, fetch(numbers[0]))
    single = body.single()
    if single is not None:  # Cornerstone3D's case: one frame, sent with its length
        response: HttpResponseBase = HttpResponse(single, content_type=body.content_type)
    else:
        response = StreamingHttpResponse(body, content_type=body.content_type)
    response["Cache-Control"] = "private"
    response["Vary"] = "Cookie, Authorization"
    return response


class RetrieveInstanceFrames(DicomwebView):
    """WADO-RS `.../instances/{instance}/frames/{frames}` (frame list "1,2,3").

    Cornerstone3D asks with `Accept: multipart/related; type=application/octet-stream;
    transfer-syntax=*` and gets the stored encoding (e.g. JPEG-LS) untouched. That request,
    hundreds of times per series, takes the fast path (`imaging.proxy_frames`): membership
    and index in one query, Orthanc's raw frames (core REST API, no DICOM file parsing)
    framed as multipart/related by the proxy. Other Accept headers, instances without an
    Orthanc id and unlisted transfer syntaxes go through Orthanc's DICOMweb plugin.

    `as_view` puts `answer_directly` in front of DRF: a request that will get its frames
    (active user, member, frames in range, stored syntax known) is answered without DRF's
    request cycle (~0.4 ms of the ~2 ms a frame costs); every other request, and every
    error, is DRF's, so statuses and messages have one source.
    """

    default_accept = 'multipart/related; type="application/octet-stream"; transfer-syntax=*'
    authentication_classes = [FrameTokenAuthentication, SessionAuthentication]

    @classmethod
    def allow_header(cls) -> str:
        """DRF's `Allow` header of this view (for the answers DRF does not make)."""
        probe = cls()
        probe.setup(None)  # as DRF's view does per request (adds HEAD)
        return ", ".join(probe.allowed_methods)

    @classmethod
    def as_view(cls, **initkwargs):
        drf_view = super().as_view(**initkwargs)

        def view(request: HttpRequest, **kwargs: str) -> HttpResponseBase:
            response = cls.direct_response(request, **kwargs)
            return drf_view(request, **kwargs) if response is None else response

        view.cls = cls  # type: ignore[attr-defined]
        view.initkwargs = initkwargs  # type: ignore[attr-defined]
        return csrf_exempt(view)

    _allow: str | None = None

    @classmethod
    def direct_response(cls, request: HttpRequest, **kwargs: str) -> HttpResponseBase | None:
        """`answer_directly` with DRF's `Allow` header (the view's and `FrameFastLane`'s
        way in), or None when DRF must answer."""
        response = cls.answer_directly(request, **kwargs)
        if response is not None:
            if cls._allow is None:
                cls._allow = cls.allow_header()
            response["Allow"] = cls._allow
        return response

    @classmethod
    def answer_directly(
        cls, request: HttpRequest, project: str, study: str, series: str, instance: str, frames: str
    ) -> HttpResponseBase | None:
        """The frames when nothing needs DRF, else None."""
        if request.method != "GET" or not wants_stored_encoding(request.META.get("HTTP_ACCEPT")):
            return None
        reader = reader_of(request)
        if reader is None:
            return None
        target = find_frame_target(*reader, project, study, series, instance)
        if target is None or target.transfer_syntax_uid not in FRAME_MEDIA_TYPES:
            return None
        numbers = [int(n) for n in frames.split(",")]
        if not target.orthanc_id or not all(1 <= n <= target.number_of_frames for n in numbers):
            return None
        try:
            return raw_frames_response(request, target, target.transfer_syntax_uid, numbers)
        except (DicomwebProxyError, OrthancError):
            return None  # DRF's path meets the same answer and reports it

    def initial(self, request: Request, *args: Any, **kwargs: Any) -> None:
        # Authentication only: membership is checked with the instance (`frame_target`).
        APIView.initial(self, request, *args, **kwargs)

    def get(
        self, request: Request, project: str, study: str, series: str, instance: str, frames: str
    ) -> HttpResponseBase:
        numbers = frame_list(frames)
        target = frame_target(request.user, project, study, series, instance)
        numbers = frame_numbers(numbers, target.number_of_frames)
        if target.orthanc_id and wants_stored_encoding(request.headers.get("Accept")):
            syntax = self.stored_transfer_syntax(target)
            if syntax in FRAME_MEDIA_TYPES:
                return raw_frames_response(request, target, syntax, numbers)
        return self.forward(f"{_resource_path(study, series, instance)}/frames/{frames}")

    def stored_transfer_syntax(self, target: FrameTarget) -> str:
        """The index's transfer syntax of the instance, else Orthanc's (metadata
        `TransferSyntax`), then written to the index: Orthanc is asked once per instance."""
        if target.transfer_syntax_uid:
            return target.transfer_syntax_uid
        upstream = orthanc_client().request(
            "GET", f"/instances/{target.orthanc_id}/metadata/TransferSyntax"
        )
        if upstream.status_code != 200:
            raise _upstream_error(upstream)
        syntax = upstream.text.strip()
        if syntax:
            Instance.objects.filter(pk=target.pk, transfer_syntax_uid="").update(
                transfer_syntax_uid=syntax
            )
        return syntax


class RetrieveBulkdata(DicomwebView):
    """WADO-RS bulk data (the BulkDataURI values of the metadata, rewritten to point here)."""

    default_accept = 'multipart/related; type="application/octet-stream"'

    def get(
        self, request: Request, project: str, study: str, series: str, instance: str, tag: str
    ) -> HttpResponseBase:
        self.check_path(study, series, instance)
        return self.forward(f"{_resource_path(study, series, instance)}/bulk/{tag}")


class RetrieveRendered(DicomwebView):
    """WADO-RS rendered (image/jpeg or image/png) of a study, series, instance or frame."""

    default_accept = "image/jpeg"
    thumbnail = False

    def get(
        self,
        request: Request,
        project: str,
        study: str,
        series: str | None = None,
        instance: str | None = None,
        frames: str | None = None,
    ) -> HttpResponseBase:
        params = rendered_params(request, thumbnail=self.thumbnail)
        if frames is not None and (not frames.isdigit() or int(frames) < 1):
            raise _bad(f"rendered takes one frame number from 1, got {frames!r}.")
        self.check_path(study, series, instance)
        path = _resource_path(study, series, instance)
        if frames is not None:
            path += f"/frames/{frames}"
        accept = self.request.headers.get("Accept") or ""
        if "image/" not in accept:
            accept = self.default_accept  # browsers send text/html,*/*: pick JPEG
        return self.forward(f"{path}/rendered", params=params, accept=accept)


class RetrieveThumbnail(RetrieveRendered):
    """Thumbnail: Orthanc's `rendered` with a 128x128 viewport (Orthanc 1.7 has no thumbnail)."""

    thumbnail = True
