"""The proxy's fast frame path (`imaging.proxy_frames`) against a real Orthanc.

Every answer of the fast path is compared with what Orthanc's DICOMweb plugin answers for
the same request (the browser's alternative): same media types, same part headers, same
frame bytes. Authorization is checked with real token and session authentication (no
`force_authenticate`), including revocation and deletion between two requests.
"""

from __future__ import annotations

import re

import numpy as np
import pytest
import requests
from django.urls import reverse
from pydicom.encaps import generate_frames
from rest_framework.authtoken.models import Token
from rest_framework.test import APIClient

from imaging import proxy
from imaging.exceptions import OrthancError, OrthancUnavailable
from imaging.models import Instance, Study
from imaging.orthanc import UpstreamAnswer, raw_frame_reader
from imaging.proxy_frames import (
    FRAME_MEDIA_TYPES,
    FrameTokenAuthentication,
    wants_stored_encoding,
)
from projects.models import Membership, Role
from tests.dicomweb.dicom_factory import (
    ORTHANC_TRANSCODED,
    PYDICOM_ENCODED,
    CtSeries,
    index_series,
    make_ct_series,
    make_multiframe,
    store_series,
)
from tests.factories import UserFactory
from tests.support.orthanc import free_port

pytestmark = pytest.mark.integration

CORNERSTONE_FRAMES = "multipart/related; type=application/octet-stream; transfer-syntax=*"
FRAMES = "dicomweb-retrieve-instance-frames"


# --- helpers ---------------------------------------------------------------------------


def body_of(response) -> bytes:
    if getattr(response, "streaming", False):
        return b"".join(response.streaming_content)
    return response.content


def parse_multipart(content_type: str, body: bytes) -> list[tuple[dict[str, str], bytes]]:
    """(headers, payload) of each part; asserts the closing delimiter ends the body."""
    boundary = re.search(r'boundary="?([^";]+)"?', content_type).group(1).encode()
    assert body.endswith(b"--" + boundary + b"--\r\n")
    parts = []
    for raw in body.split(b"--" + boundary)[1:-1]:
        head, _, payload = raw.partition(b"\r\n\r\n")
        headers = dict(line.split(": ", 1) for line in head.decode().strip().split("\r\n"))
        assert payload.endswith(b"\r\n")
        parts.append((headers, payload[:-2]))
    return parts


def without_boundary(content_type: str) -> str:
    return re.sub(r";\s*boundary=[^;]+", "", content_type)


def frames_kwargs(series: CtSeries, frames: str, index: int = 0) -> dict[str, str]:
    return {
        "study": series.study_instance_uid,
        "series": series.series_instance_uid,
        "instance": series.sop_instance_uids[index],
        "frames": frames,
    }


def frames_url(project, series: CtSeries, frames: str = "1", index: int = 0) -> str:
    return reverse(FRAMES, kwargs={"project": project.slug, **frames_kwargs(series, frames, index)})


def plugin_answer(orthanc, series: CtSeries, frames: str, accept: str = CORNERSTONE_FRAMES):
    """The same request asked of Orthanc's DICOMweb plugin directly."""
    kw = frames_kwargs(series, frames)
    return requests.get(
        f"{orthanc.url}/dicom-web/studies/{kw['study']}/series/{kw['series']}"
        f"/instances/{kw['instance']}/frames/{frames}",
        headers={"Accept": accept},
        auth=(orthanc.username, orthanc.password),
        timeout=30,
    )


def token_client(user) -> APIClient:
    client = APIClient()
    client.credentials(HTTP_AUTHORIZATION=f"Token {Token.objects.create(user=user).key}")
    return client


@pytest.fixture
def upstream_paths(monkeypatch):
    """The Orthanc paths the proxy asks for (its thread's REST client and the process's
    raw-frame reader), in order."""
    paths: list[str] = []
    client = proxy.orthanc_client()
    original = client.request

    def spy(method, path, **kwargs):
        paths.append(path)
        return original(method, path, **kwargs)

    monkeypatch.setattr(client, "request", spy)
    frames = raw_frame_reader()
    read = frames.read

    def spy_read(orthanc_id, number):
        paths.append(f"/instances/{orthanc_id}/frames/{number - 1}/raw")
        return read(orthanc_id, number)

    monkeypatch.setattr(frames, "read", spy_read)
    return paths


@pytest.fixture
def reader(users):
    return users["radiologist"]


@pytest.fixture
def ct(orthanc, project):
    series = make_ct_series(slices=3, patient_id="FAST-1", seed=11)
    store_series(series, url=orthanc.url, auth=(orthanc.username, orthanc.password))
    index_series(project, series)
    return series


# --- the dialect: byte for byte against the plugin --------------------------------------

SYNTAXES = [*PYDICOM_ENCODED, *ORTHANC_TRANSCODED]


@pytest.mark.parametrize("syntax", SYNTAXES)
@pytest.mark.parametrize("frames", ["2", "1,3", "3,1,2"])
def test_fast_path_answers_like_the_plugin(
    orthanc, project, reader, upstream_paths, syntax, frames
):
    """Multi-frame instances in every listed syntax this stack can produce: the proxy's
    answer equals the plugin's but for the boundary and the Content-Location base."""
    series = make_multiframe(
        syntax, url=orthanc.url, auth=(orthanc.username, orthanc.password), seed=len(frames)
    )
    index_series(project, series)
    response = token_client(reader).get(
        frames_url(project, series, frames), HTTP_ACCEPT=CORNERSTONE_FRAMES
    )
    assert response.status_code == 200, body_of(response)[:300]
    assert not any("/dicom-web/" in path for path in upstream_paths), upstream_paths
    assert any(path.endswith("/raw") for path in upstream_paths)
    direct = plugin_answer(orthanc, series, frames)
    assert direct.status_code == 200
    assert without_boundary(response["Content-Type"]) == without_boundary(
        direct.headers["Content-Type"]
    )
    assert FRAME_MEDIA_TYPES[syntax] in response["Content-Type"]
    body = body_of(response)
    ours = parse_multipart(response["Content-Type"], body)
    theirs = parse_multipart(direct.headers["Content-Type"], direct.content)
    assert len(ours) == len(theirs) == len(frames.split(","))
    proxy_base = f"http://testserver/dicom-web/projects/{project.slug}"
    orthanc_base = f"{orthanc.url}/dicom-web"
    for (our_headers, our_payload), (their_headers, their_payload) in zip(
        ours, theirs, strict=True
    ):
        assert our_payload == their_payload
        assert list(our_headers) == list(their_headers)
        location = our_headers.pop("Content-Location")
        assert location.startswith(proxy_base)
        assert location.removeprefix(proxy_base) == their_headers.pop(
            "Content-Location"
        ).removeprefix(orthanc_base)
        assert our_headers == their_headers
    if syntax in PYDICOM_ENCODED:  # the stored frames themselves, from the dataset
        ds = series.datasets[0]
        numbers = [int(n) for n in frames.split(",")]
        if ds.file_meta.TransferSyntaxUID.is_encapsulated:
            stored = list(generate_frames(ds.PixelData, number_of_frames=3))
            assert [p for _, p in ours] == [stored[n - 1] for n in numbers]
        else:
            size = len(ds.PixelData) // 3
            assert [p for _, p in ours] == [
                ds.PixelData[(n - 1) * size : n * size] for n in numbers
            ]
    if "," not in frames:
        assert int(response["Content-Length"]) == len(body)


def test_transfer_syntax_is_learned_once_and_kept_in_the_index(
    orthanc, project, reader, upstream_paths
):
    series = make_multiframe(
        "1.2.840.10008.1.2.4.80", url=orthanc.url, auth=(orthanc.username, orthanc.password)
    )
    index_series(project, series)
    row = Instance.objects.get(sop_instance_uid=series.sop_instance_uids[0])
    assert row.transfer_syntax_uid == ""
    client = token_client(reader)
    assert client.get(frames_url(project, series, "1")).status_code == 200
    row.refresh_from_db()
    assert row.transfer_syntax_uid == "1.2.840.10008.1.2.4.80"
    assert sum("/metadata/TransferSyntax" in p for p in upstream_paths) == 1
    assert client.get(frames_url(project, series, "2")).status_code == 200
    assert sum("/metadata/TransferSyntax" in p for p in upstream_paths) == 1


# --- which requests take the plugin's way -----------------------------------------------


@pytest.mark.parametrize(
    ("accept", "stored"),
    [
        (None, True),
        ("multipart/related; type=application/octet-stream; transfer-syntax=*", True),
        ('multipart/related; type="application/octet-stream"; transfer-syntax="*"', True),
        ("Multipart/Related; transfer-syntax=*", True),
        ('multipart/related; type="application/octet-stream"', False),  # Explicit LE asked
        ("multipart/related; type=image/jls; transfer-syntax=*", False),
        ("multipart/related; type=application/octet-stream; transfer-syntax=*; q=0.9", False),
        ("multipart/related; transfer-syntax=*, application/json", False),
        ("application/json", False),
        ("*/*", False),
    ],
)
def test_which_accept_headers_ask_for_the_stored_encoding(accept, stored):
    assert wants_stored_encoding(accept) is stored


def test_explicit_little_endian_asked_goes_to_the_plugin_which_decodes(
    orthanc, project, reader, upstream_paths
):
    """A JPEG-LS instance asked for as uncompressed: Orthanc's plugin decodes it."""
    series = make_multiframe(
        "1.2.840.10008.1.2.4.80", url=orthanc.url, auth=(orthanc.username, orthanc.password)
    )
    index_series(project, series)
    response = token_client(reader).get(
        frames_url(project, series, "2"),
        HTTP_ACCEPT='multipart/related; type="application/octet-stream"',
    )
    assert response.status_code == 200
    assert any("/dicom-web/" in p for p in upstream_paths)
    assert "transfer-syntax=1.2.840.10008.1.2.1" in response["Content-Type"]
    [(_, payload)] = parse_multipart(response["Content-Type"], body_of(response))
    assert np.array_equal(
        np.frombuffer(payload, dtype=np.int16), series.datasets[0].pixel_array[1].ravel()
    )


def test_unlisted_syntax_or_unknown_orthanc_id_goes_to_the_plugin(
    ct, project, reader, upstream_paths
):
    client = token_client(reader)
    Instance.objects.filter(sop_instance_uid=ct.sop_instance_uids[0]).update(
        transfer_syntax_uid="1.2.840.10008.1.2.2"  # Explicit VR Big Endian: not listed
    )
    Instance.objects.filter(sop_instance_uid=ct.sop_instance_uids[1]).update(orthanc_id="")
    for index in (0, 1):
        upstream_paths.clear()
        response = client.get(frames_url(project, ct, "1", index), HTTP_ACCEPT=CORNERSTONE_FRAMES)
        assert [p for p in upstream_paths if "/raw" in p] == []
        assert any("/dicom-web/" in p for p in upstream_paths)
        if index == 1:
            assert response.status_code == 200
            [(_, payload)] = parse_multipart(response["Content-Type"], body_of(response))
            assert payload == ct.datasets[1].PixelData


# --- bad frame numbers -------------------------------------------------------------------


@pytest.mark.parametrize("frames", ["4", "1,4", "0", "2,0"])
def test_frame_out_of_range_is_400_as_orthanc_answers_it(orthanc, project, reader, frames):
    """Orthanc's plugin answers 400 "Parameter out of range" for a frame beyond the
    instance's count; the proxy answers 400 too, naming the count, before asking Orthanc."""
    series = make_multiframe(
        "1.2.840.10008.1.2.1", url=orthanc.url, auth=(orthanc.username, orthanc.password)
    )
    index_series(project, series)
    response = token_client(reader).get(
        frames_url(project, series, frames), HTTP_ACCEPT=CORNERSTONE_FRAMES
    )
    assert response.status_code == 400
    detail = response.json()["detail"]
    assert ("3 frames" in detail) if frames in {"4", "1,4"} else ("start at 1" in detail)
    if frames in {"4", "1,4"}:
        assert plugin_answer(orthanc, series, frames).status_code == 400


def test_frame_count_wrong_in_the_index_still_gets_orthancs_400(ct, project, reader):
    """The index says 5 frames, the file has 1: Orthanc's raw frame answers 400 and the
    proxy passes it on with Orthanc's reason (never a 200 with a broken body)."""
    Instance.objects.filter(sop_instance_uid=ct.sop_instance_uids[0]).update(number_of_frames=5)
    response = token_client(reader).get(frames_url(project, ct, "2"))
    assert response.status_code == 400
    assert "Orthanc" in response.json()["detail"]


# --- authorization on the fast path ------------------------------------------------------


def test_anonymous_is_401_and_bad_or_inactive_tokens_too(ct, project, reader):
    target = frames_url(project, ct)
    anonymous = APIClient().get(target)
    assert anonymous.status_code == 401
    assert anonymous["WWW-Authenticate"] == "Token"
    bad = APIClient().get(target, HTTP_AUTHORIZATION="Token 0123456789abcdef")
    assert bad.status_code == 401
    assert bad.json()["detail"] == "Invalid token."
    client = token_client(reader)
    assert client.get(target).status_code == 200
    reader.is_active = False
    reader.save(update_fields=["is_active"])
    inactive = client.get(target)
    assert inactive.status_code == 401
    assert inactive.json()["detail"] == "User inactive or deleted."


def test_session_authentication_reads_frames(ct, project, reader, client):
    client.force_login(reader)  # a real Django session cookie, as the browser sends
    response = client.get(frames_url(project, ct), HTTP_ACCEPT=CORNERSTONE_FRAMES)
    assert response.status_code == 200
    [(_, payload)] = parse_multipart(response["Content-Type"], body_of(response))
    assert payload == ct.datasets[0].PixelData


def test_revoked_membership_is_404_at_once(ct, project, reader):
    client = token_client(reader)
    target = frames_url(project, ct)
    assert client.get(target).status_code == 200
    Membership.objects.filter(project=project, user=reader).delete()
    assert client.get(target).status_code == 404
    Membership.objects.create(project=project, user=reader, role=Role.ANNOTATOR)
    assert client.get(target).status_code == 200


def test_deleted_study_is_404_at_once(ct, project, reader):
    client = token_client(reader)
    target = frames_url(project, ct)
    assert client.get(target).status_code == 200
    Study.objects.filter(study_instance_uid=ct.study_instance_uid).delete()
    response = client.get(target)
    assert response.status_code == 404
    assert ct.sop_instance_uids[0] in response.json()["detail"]


def test_another_projects_instance_is_404(orthanc, project, other_project, reader):
    theirs = make_ct_series(slices=1, patient_id="OTHER-1", seed=12)
    store_series(theirs, url=orthanc.url, auth=(orthanc.username, orthanc.password))
    index_series(other_project, theirs)
    client = token_client(reader)
    # Under this project's root, and under the other project's root (not a member).
    assert client.get(frames_url(project, theirs)).status_code == 404
    assert client.get(frames_url(other_project, theirs)).status_code == 404
    assert client.get(frames_url(project, theirs)).json()["detail"].startswith("No instance")


def test_superuser_reads_any_project_like_everywhere_else(ct, project):
    root = UserFactory(is_superuser=True, is_staff=True)
    assert not Membership.objects.filter(user=root).exists()
    assert token_client(root).get(frames_url(project, ct)).status_code == 200


@pytest.fixture
def drf_dispatches(monkeypatch):
    """The frame requests DRF's view handled (the others were answered directly)."""
    paths: list[str] = []
    original = proxy.RetrieveInstanceFrames.dispatch

    def spy(self, request, *args, **kwargs):
        paths.append(request.path)
        return original(self, request, *args, **kwargs)

    monkeypatch.setattr(proxy.RetrieveInstanceFrames, "dispatch", spy)
    return paths


def without_boundaries(response) -> tuple[dict, bytes]:
    boundary = re.search(r"boundary=(\w+)", response["Content-Type"]).group(1)
    headers = {k: v.replace(boundary, "B") for k, v in response.headers.items()}
    return headers, body_of(response).replace(boundary.encode(), b"B")


def test_frame_requests_skip_drf_once_the_syntax_is_known_and_answer_the_same(
    ct, project, reader, client, drf_dispatches, monkeypatch
):
    """Cornerstone3D's request by a member, token or session, is answered without DRF's
    request cycle (the first one ever learns the transfer syntax through DRF), with the
    same status, headers and body (but the boundary) as DRF's path."""
    tokens = token_client(reader)
    client.force_login(reader)
    url = frames_url(project, ct)
    assert tokens.get(url, HTTP_ACCEPT=CORNERSTONE_FRAMES).status_code == 200
    assert tokens.get(frames_url(project, ct, index=2)).status_code == 200
    assert len(drf_dispatches) == 2  # learned the transfer syntax of each
    direct = [
        tokens.get(url, HTTP_ACCEPT=CORNERSTONE_FRAMES),
        client.get(url, HTTP_ACCEPT=CORNERSTONE_FRAMES),
        tokens.get(frames_url(project, ct, index=2)),  # no Accept: the same request
    ]
    assert len(drf_dispatches) == 2
    monkeypatch.setattr(proxy.RetrieveInstanceFrames, "answer_directly", lambda *a, **k: None)
    through_drf = [
        tokens.get(url, HTTP_ACCEPT=CORNERSTONE_FRAMES),
        client.get(url, HTTP_ACCEPT=CORNERSTONE_FRAMES),
        tokens.get(frames_url(project, ct, index=2)),
    ]
    assert len(drf_dispatches) == 5
    for ours, drfs in zip(direct, through_drf, strict=True):
        assert ours.status_code == drfs.status_code == 200
        assert without_boundaries(ours) == without_boundaries(drfs)


@pytest.fixture
def url_resolutions(monkeypatch):
    """The paths Django's URL resolver was asked for."""
    from django.core.handlers.base import BaseHandler

    paths: list[str] = []
    original = BaseHandler.resolve_request

    def spy(self, request):
        paths.append(request.path)
        return original(self, request)

    monkeypatch.setattr(BaseHandler, "resolve_request", spy)
    return paths


def test_token_frame_requests_are_answered_ahead_of_the_url_resolver(
    ct, project, reader, client, url_resolutions, drf_dispatches
):
    """`FrameFastLane` answers a servable token request before the middleware below it and
    the resolver run, with the security headers of the stack; a session request (no
    Authorization header) and a request it cannot serve go down the stack."""
    Instance.objects.filter(sop_instance_uid__in=ct.sop_instance_uids).update(
        transfer_syntax_uid=str(ct.datasets[0].file_meta.TransferSyntaxUID)
    )
    url, tokens = frames_url(project, ct), token_client(reader)
    answer = tokens.get(url, HTTP_ACCEPT=CORNERSTONE_FRAMES)
    assert answer.status_code == 200 and url_resolutions == [] and drf_dispatches == []
    assert answer["X-Content-Type-Options"] == "nosniff"  # SecurityMiddleware's, above the lane
    assert answer["X-Frame-Options"] == "DENY" and int(answer["Content-Length"]) > 0
    client.force_login(reader)
    assert client.get(url, HTTP_ACCEPT=CORNERSTONE_FRAMES).status_code == 200
    assert url_resolutions == [url] and drf_dispatches == []  # resolved, then answered directly
    other = tokens.get(frames_url(project, ct, "2"))  # beyond the frame count
    assert other.status_code == 400 and url_resolutions == [url, frames_url(project, ct, "2")]


@pytest.mark.parametrize(
    "case",
    [
        "anonymous",
        "unknown token",
        "token without key",
        "basic auth",
        "inactive user",
        "not a member",
        "frame out of range",
        "frame 0",
        "syntax not yet known",
        "other accept",
        "HEAD",
        "orthanc down",
    ],
)
def test_everything_but_a_servable_frame_request_goes_to_drf(
    case, ct, project, reader, drf_dispatches, settings
):
    """Errors and unusual requests are DRF's alone (one source of statuses and messages):
    the direct answer is only for a request that will get its frames."""
    Instance.objects.filter(sop_instance_uid__in=ct.sop_instance_uids).update(
        transfer_syntax_uid=str(ct.datasets[0].file_meta.TransferSyntaxUID)
    )
    url, headers = frames_url(project, ct), {"HTTP_ACCEPT": CORNERSTONE_FRAMES}
    credentials = {"anonymous", "unknown token", "token without key", "basic auth"}
    client = APIClient() if case in credentials else token_client(reader)
    if case == "unknown token":
        headers["HTTP_AUTHORIZATION"] = "Token 0123456789abcdef"
    elif case == "token without key":
        headers["HTTP_AUTHORIZATION"] = "Token"
    elif case == "basic auth":
        headers["HTTP_AUTHORIZATION"] = "Basic cmVhZGVyOnNlY3JldA=="
    elif case == "inactive user":
        reader.is_active = False
        reader.save(update_fields=["is_active"])
    elif case == "not a member":
        Membership.objects.filter(user=reader, project=project).delete()
    elif case == "frame out of range":
        url = frames_url(project, ct, "2")
    elif case == "frame 0":
        url = frames_url(project, ct, "0")
    elif case == "syntax not yet known":
        Instance.objects.filter(sop_instance_uid=ct.sop_instance_uids[0]).update(
            transfer_syntax_uid=""
        )
    elif case == "other accept":
        headers["HTTP_ACCEPT"] = 'multipart/related; type="application/octet-stream"'
    elif case == "orthanc down":
        settings.ORTHANC_URL = f"http://127.0.0.1:{free_port()}"
    response = (client.head if case == "HEAD" else client.get)(url, **headers)
    assert drf_dispatches == [url]
    expected = {
        "anonymous": 401,
        "unknown token": 401,
        "token without key": 401,
        "basic auth": 401,
        "inactive user": 401,
        "not a member": 404,
        "frame out of range": 400,
        "frame 0": 400,
        "orthanc down": 503,
    }.get(case, 200)
    assert response.status_code == expected


def test_client_going_away_stops_reading_frames(orthanc, project, reader, upstream_paths):
    """A frame list is read from Orthanc one frame per part, as it is sent: a client that
    leaves after the first part costs Orthanc no further frame."""
    series = make_multiframe(
        "1.2.840.10008.1.2.1", url=orthanc.url, auth=(orthanc.username, orthanc.password), seed=5
    )
    index_series(project, series)
    response = token_client(reader).get(
        frames_url(project, series, "1,2,3"), HTTP_ACCEPT=CORNERSTONE_FRAMES
    )
    assert response.status_code == 200
    assert response.streaming
    first = next(iter(response.streaming_content))
    assert first.startswith(b"--") and b"Content-Location" in first
    response.close()  # what Django does when the client leaves before the body
    assert sum(path.endswith("/raw") for path in upstream_paths) == 1


def test_raw_frame_reader_maps_orthanc_answers(orthanc, settings):
    """Unreachable -> 503, wrong credentials -> 502, unknown instance -> its 404 answer."""
    reader = raw_frame_reader()
    missing = reader.read("00000000-00000000-00000000-00000000-00000000", 1)
    assert isinstance(missing, UpstreamAnswer) and missing.status == 404
    settings.ORTHANC_PASSWORD = "not-the-password"
    with pytest.raises(OrthancError, match="credentials"):
        raw_frame_reader().read("00000000-00000000-00000000-00000000-00000000", 1)
    settings.ORTHANC_URL = f"http://127.0.0.1:{free_port()}"
    with pytest.raises(OrthancUnavailable, match="unreachable"):
        raw_frame_reader().read("00000000-00000000-00000000-00000000-00000000", 1)


@pytest.mark.parametrize("superuser", [False, True])
def test_token_authentication_loads_the_users_own_flags(db, superuser):
    """The frame path's token query loads only id, is_active and is_superuser: each must
    land in its own field (a swap would make every reader a superuser)."""
    user = UserFactory(is_superuser=superuser)
    key = Token.objects.create(user=user).key
    loaded, token = FrameTokenAuthentication().authenticate_credentials(key)
    assert token == key
    assert (loaded.pk, loaded.is_active, loaded.is_superuser) == (user.pk, True, superuser)
    assert loaded.is_authenticated
    assert loaded.username == user.username  # a deferred field loads on use
