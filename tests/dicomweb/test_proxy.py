"""The DICOMweb proxy against a real Orthanc: QIDO and WADO-RS through `/dicom-web/projects/...`.

Request shapes are those of Cornerstone3D's dicom-image-loader (frames, series metadata)
and OHIF's study list (includefield, limit/offset, fuzzymatching, date ranges, wildcards).
"""

from __future__ import annotations

import io
import json
import re
import tracemalloc
from types import SimpleNamespace

import pytest
from django.urls import reverse
from PIL import Image
from pydicom import dcmread
from pydicom.encaps import generate_frames
from rest_framework.authtoken.models import Token
from rest_framework.test import APIClient

from imaging import proxy
from projects.models import Membership, Role
from tests.conftest import client_for
from tests.dicomweb.dicom_factory import CtSeries, index_series, make_ct_series, store_series
from tests.factories import UserFactory

pytestmark = pytest.mark.integration

CORNERSTONE_FRAMES = "multipart/related; type=application/octet-stream; transfer-syntax=*"
DICOM_JSON = "application/dicom+json"
EXPLICIT_LE = "1.2.840.10008.1.2.1"
JPEG_LS_LOSSLESS = "1.2.840.10008.1.2.4.80"


# --- helpers ---------------------------------------------------------------------------


def body_of(response) -> bytes:
    if response.streaming:
        return b"".join(response.streaming_content)
    return response.content


def json_of(response):
    return json.loads(body_of(response))


def multipart_parts(response) -> list[tuple[dict[str, str], bytes]]:
    """(headers, payload) of each part of a multipart/related response."""
    boundary = re.search(r'boundary="?([^";]+)"?', response["Content-Type"]).group(1).encode()
    parts = []
    for raw in body_of(response).split(b"--" + boundary)[1:]:
        if raw.startswith(b"--"):
            break
        head, _, payload = raw.partition(b"\r\n\r\n")
        headers = dict(
            line.split(": ", 1) for line in head.decode().strip().split("\r\n") if ": " in line
        )
        parts.append((headers, payload.removesuffix(b"\r\n")))
    return parts


def study_uids(entries: list[dict]) -> list[str]:
    return [entry["0020000D"]["Value"][0] for entry in entries]


def url(name: str, project, **kwargs) -> str:
    return reverse(name, kwargs={"project": project.slug, **kwargs})


def store(orthanc, series: CtSeries) -> None:
    store_series(series, url=orthanc.url, auth=(orthanc.username, orthanc.password))


@pytest.fixture(autouse=True)
def _fresh_index_cache():
    """Database rows roll back between tests; the proxy's per-process path cache must too."""
    proxy.index_cache.clear()
    yield
    proxy.index_cache.clear()


@pytest.fixture
def data(orthanc, project, other_project):
    """Project A: a1 (8 slices, uncompressed) and a2 (8 slices, JPEG-LS); project B: b1."""
    a1 = make_ct_series(patient_id="A1", study_date="20240115", seed=1)
    a2 = make_ct_series(
        patient_id="A2", patient_name="Roe^Richard", study_date="20240301", jpeg_ls=True, seed=2
    )
    b1 = make_ct_series(slices=2, patient_id="B1", study_date="20240120", seed=3)
    for series in (a1, a2, b1):
        store(orthanc, series)
    index_series(project, a1)
    index_series(project, a2)
    index_series(other_project, b1)
    return SimpleNamespace(a1=a1, a2=a2, b1=b1)


@pytest.fixture
def member(users) -> APIClient:
    return client_for(users["annotator"])


@pytest.fixture(params=["uid-list", "scan"])
def qido_mode(request, monkeypatch):
    """Both ways of restricting study QIDO: naming the project's UIDs, or paging and
    filtering (forced with a list limit of 0 and a page of 2 to cross page boundaries)."""
    if request.param == "scan":
        monkeypatch.setattr(proxy, "UID_LIST_MAX", 0)
        monkeypatch.setattr(proxy, "SCAN_PAGE", 2)
    return request.param


def instance_kwargs(series: CtSeries, index: int = 0) -> dict[str, str]:
    return {
        "study": series.study_instance_uid,
        "series": series.series_instance_uid,
        "instance": series.sop_instance_uids[index],
    }


# --- QIDO-RS ---------------------------------------------------------------------------


def test_search_for_studies_shows_only_the_projects_studies(
    data, member, project, orthanc, qido_mode
):
    response = member.get(url("dicomweb-search-for-studies", project), HTTP_ACCEPT=DICOM_JSON)
    assert response.status_code == 200
    assert response["Content-Type"].startswith(DICOM_JSON)
    entries = json_of(response)
    assert sorted(study_uids(entries)) == sorted(
        [data.a1.study_instance_uid, data.a2.study_instance_uid]
    )
    # RetrieveURL points at the proxy, never at Orthanc.
    for entry in entries:
        retrieve_url = entry["00081190"]["Value"][0]
        assert retrieve_url.startswith(
            f"http://testserver/dicom-web/projects/{project.slug}/studies/"
        )
    assert orthanc.url.encode() not in json.dumps(entries).encode()


def test_search_for_studies_pages_with_limit_and_offset(
    data, member, project, other_project, orthanc, qido_mode
):
    a3 = make_ct_series(slices=1, patient_id="A3", seed=4)
    b2 = make_ct_series(slices=1, patient_id="B2", seed=5)
    store(orthanc, a3)
    store(orthanc, b2)
    index_series(project, a3)
    index_series(other_project, b2)
    seen = []
    for offset in range(4):
        response = member.get(
            url("dicomweb-search-for-studies", project), {"limit": "1", "offset": str(offset)}
        )
        assert response.status_code == 200
        seen.append(study_uids(json_of(response)))
    assert [len(page) for page in seen] == [1, 1, 1, 0]
    assert sorted(uid for page in seen for uid in page) == sorted(
        [data.a1.study_instance_uid, data.a2.study_instance_uid, a3.study_instance_uid]
    )
    two = member.get(url("dicomweb-search-for-studies", project), {"limit": "2", "offset": "1"})
    assert study_uids(json_of(two)) == seen[1] + seen[2]


def test_search_for_studies_ohif_study_list_shape(data, member, project, qido_mode):
    """OHIF's study list: wildcard name, date range, includefield, limit/offset, fuzzy."""
    query = (
        "PatientName=Doe*&StudyDate=20240101-20240201&includefield=00081030,00080060"
        "&limit=101&offset=0&fuzzymatching=false"
    )
    response = member.get(
        f"{url('dicomweb-search-for-studies', project)}?{query}", HTTP_ACCEPT=DICOM_JSON
    )
    assert response.status_code == 200
    entries = json_of(response)
    assert study_uids(entries) == [data.a1.study_instance_uid]
    assert entries[0]["00081030"]["Value"] == ["CT CHEST"]
    assert entries[0]["00080061"]["Value"] == ["CT"]


def test_search_for_studies_by_uid_of_another_project_finds_nothing(
    data, member, project, qido_mode
):
    response = member.get(
        url("dicomweb-search-for-studies", project),
        {"StudyInstanceUID": f"{data.b1.study_instance_uid},{data.a2.study_instance_uid}"},
    )
    assert response.status_code == 200
    assert study_uids(json_of(response)) == [data.a2.study_instance_uid]
    response = member.get(
        url("dicomweb-search-for-studies", project), {"0020000D": data.b1.study_instance_uid}
    )
    assert json_of(response) == []


@pytest.mark.parametrize(
    ("query", "reason"),
    [
        ({"limit": "abc"}, "limit"),
        ({"limit": "0"}, "limit"),
        ({"offset": "-1"}, "offset"),
        ({"fuzzymatching": "maybe"}, "fuzzymatching"),
        ({"includefield": "00081030,NotAnAttribute"}, "NotAnAttribute"),
        ({"format": "json"}, "format"),
    ],
)
def test_bad_qido_query_is_400_with_reason(data, member, project, query, reason):
    for name, kwargs in (
        ("dicomweb-search-for-studies", {}),
        ("dicomweb-search-for-series", {"study": data.a1.study_instance_uid}),
    ):
        response = member.get(url(name, project, **kwargs), query)
        assert response.status_code == 400, name
        assert reason in response.json()["detail"]


def test_search_for_series_and_instances(data, member, project):
    a1 = data.a1
    response = member.get(
        url("dicomweb-search-for-series", project, study=a1.study_instance_uid),
        {"includefield": "SeriesDescription", "Modality": "CT"},
        HTTP_ACCEPT=DICOM_JSON,
    )
    assert response.status_code == 200
    series = json_of(response)
    assert [s["0020000E"]["Value"][0] for s in series] == [a1.series_instance_uid]
    for name, kwargs in (
        (
            "dicomweb-search-for-instances",
            {"study": a1.study_instance_uid, "series": a1.series_instance_uid},
        ),
        ("dicomweb-search-for-study-instances", {"study": a1.study_instance_uid}),
    ):
        response = member.get(url(name, project, **kwargs))
        assert response.status_code == 200, name
        instances = json_of(response)
        assert sorted(i["00080018"]["Value"][0] for i in instances) == sorted(a1.sop_instance_uids)
    limited = member.get(
        url("dicomweb-search-for-study-instances", project, study=a1.study_instance_uid),
        {"limit": "3"},
    )
    assert len(json_of(limited)) == 3


# --- WADO-RS ---------------------------------------------------------------------------


def test_series_metadata_cornerstone_shape_rewrites_bulkdata_uris(data, member, project, orthanc):
    a1 = data.a1
    response = member.get(
        url(
            "dicomweb-retrieve-series-metadata",
            project,
            study=a1.study_instance_uid,
            series=a1.series_instance_uid,
        ),
        HTTP_ACCEPT=DICOM_JSON,
    )
    assert response.status_code == 200
    assert response.streaming
    raw = body_of(response)
    assert orthanc.url.encode() not in raw
    metadata = json.loads(raw)
    assert sorted(m["00080018"]["Value"][0] for m in metadata) == sorted(a1.sop_instance_uids)
    first = next(m for m in metadata if m["00080018"]["Value"][0] == a1.sop_instance_uids[0])
    bulk_uri = first["7FE00010"]["BulkDataURI"]
    expected = "http://testserver" + url(
        "dicomweb-retrieve-bulkdata", project, tag="7fe00010", **instance_kwargs(a1)
    )
    assert bulk_uri == expected
    # The rewritten BulkDataURI is served by the proxy and holds the pixel data.
    bulk = member.get(bulk_uri.removeprefix("http://testserver"))
    assert bulk.status_code == 200
    [(_, payload)] = multipart_parts(bulk)
    assert payload == a1.datasets[0].PixelData


@pytest.mark.parametrize("name", ["study", "instance"])
def test_study_and_instance_metadata(data, member, project, orthanc, name):
    kwargs = instance_kwargs(data.a2)
    if name == "study":
        kwargs = {"study": kwargs["study"]}
    response = member.get(url(f"dicomweb-retrieve-{name}-metadata", project, **kwargs))
    assert response.status_code == 200
    raw = body_of(response)
    assert orthanc.url.encode() not in raw
    assert len(json.loads(raw)) == (8 if name == "study" else 1)


def test_frames_uncompressed_cornerstone_shape(data, member, project, orthanc):
    a1 = data.a1
    response = member.get(
        url("dicomweb-retrieve-instance-frames", project, frames="1", **instance_kwargs(a1, 3)),
        HTTP_ACCEPT=CORNERSTONE_FRAMES,
    )
    assert response.status_code == 200
    # One frame is one read from Orthanc: sent whole, with its length (a list streams).
    assert not response.streaming
    assert int(response["Content-Length"]) == len(response.content)
    assert response["Content-Type"].startswith("multipart/related")
    assert EXPLICIT_LE in response["Content-Type"]
    [(headers, payload)] = multipart_parts(response)
    assert payload == a1.datasets[3].PixelData
    assert headers["Content-Location"].startswith(
        f"http://testserver/dicom-web/projects/{project.slug}/studies/{a1.study_instance_uid}/"
    )


def test_frames_jpeg_ls_with_any_transfer_syntax_returns_stored_encoding(data, member, project):
    a2 = data.a2
    response = member.get(
        url("dicomweb-retrieve-instance-frames", project, frames="1", **instance_kwargs(a2, 2)),
        HTTP_ACCEPT=CORNERSTONE_FRAMES,
    )
    assert response.status_code == 200
    assert JPEG_LS_LOSSLESS in response["Content-Type"]
    [(_, payload)] = multipart_parts(response)
    stored = next(generate_frames(a2.datasets[2].PixelData, number_of_frames=1))
    assert payload.startswith(b"\xff\xd8")  # JPEG-LS SOI
    assert payload.rstrip(b"\0") == stored.rstrip(b"\0")


@pytest.mark.parametrize(("frames", "status"), [("0", 400), ("2", 400), ("1,0", 400)])
def test_bad_frame_numbers_are_400(data, member, project, frames, status):
    response = member.get(
        url(
            "dicomweb-retrieve-instance-frames", project, frames=frames, **instance_kwargs(data.a1)
        ),
        HTTP_ACCEPT=CORNERSTONE_FRAMES,
    )
    assert response.status_code == status
    assert response.json()["detail"]


def test_frames_with_an_accept_orthanc_cannot_serve_is_400_with_reason(data, member, project):
    response = member.get(
        url("dicomweb-retrieve-instance-frames", project, frames="1", **instance_kwargs(data.a1)),
        HTTP_ACCEPT="application/json",
    )
    assert response.status_code == 400
    assert "multipart/related" in response.json()["detail"]


LEVELS = ("study", "series", "instance", "frames")


def _level_kwargs(series: CtSeries, level: str) -> dict[str, str]:
    kwargs = {**instance_kwargs(series), "frames": "1"}
    keep = {"study": 1, "series": 2, "instance": 3, "frames": 4}[level]
    return dict(list(kwargs.items())[:keep])


@pytest.mark.parametrize("level", LEVELS)
def test_rendered_and_thumbnail(data, member, project, level):
    kwargs = _level_kwargs(data.a1, level)
    rendered = member.get(url(f"dicomweb-retrieve-{level}-rendered", project, **kwargs))
    assert rendered.status_code == 200
    assert rendered["Content-Type"] == "image/jpeg"
    assert Image.open(io.BytesIO(body_of(rendered))).size == (64, 64)
    png = member.get(
        url(f"dicomweb-retrieve-{level}-rendered", project, **kwargs), HTTP_ACCEPT="image/png"
    )
    assert png["Content-Type"] == "image/png"
    assert body_of(png).startswith(b"\x89PNG")
    thumbnail = member.get(
        url(f"dicomweb-retrieve-{level}-thumbnail", project, **kwargs), {"viewport": "32,32"}
    )
    assert thumbnail.status_code == 200
    assert Image.open(io.BytesIO(body_of(thumbnail))).size == (32, 32)


def test_rendered_rejects_unknown_parameters(data, member, project):
    response = member.get(
        url("dicomweb-retrieve-study-rendered", project, study=data.a1.study_instance_uid),
        {"annotation": "patient"},
    )
    assert response.status_code == 400
    assert "annotation" in response.json()["detail"]


def test_retrieve_series_streams_in_bounded_memory(orthanc, project, member):
    """A 2 MiB series goes through in 64 KiB chunks without the proxy holding it whole."""
    big = make_ct_series(slices=16, rows=256, columns=256, patient_id="BIG", seed=9)
    store(orthanc, big)
    index_series(project, big)
    response = member.get(
        url(
            "dicomweb-retrieve-series",
            project,
            study=big.study_instance_uid,
            series=big.series_instance_uid,
        ),
        HTTP_ACCEPT='multipart/related; type="application/dicom"; transfer-syntax=*',
    )
    assert response.status_code == 200
    assert response.streaming
    tracemalloc.start()
    try:
        sizes = [len(chunk) for chunk in response.streaming_content]
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    response.close()
    total = sum(sizes)
    assert total > 16 * 256 * 256 * 2
    assert len(sizes) > 16
    assert max(sizes) <= proxy.CHUNK_BYTES + 1024
    assert peak < total / 4, f"peak {peak} B while streaming {total} B"


def test_retrieve_instance_is_part10_dicom(data, member, project):
    response = member.get(url("dicomweb-retrieve-instance", project, **instance_kwargs(data.a2, 1)))
    assert response.status_code == 200
    [(headers, payload)] = multipart_parts(response)
    assert headers["Content-Type"].startswith("application/dicom")
    ds = dcmread(io.BytesIO(payload))
    assert ds.SOPInstanceUID == data.a2.sop_instance_uids[1]


# --- authorization ---------------------------------------------------------------------

ROUTES = [
    ("dicomweb-search-for-series", "study"),
    ("dicomweb-search-for-study-instances", "study"),
    ("dicomweb-search-for-instances", "series"),
    ("dicomweb-retrieve-study", "study"),
    ("dicomweb-retrieve-series", "series"),
    ("dicomweb-retrieve-instance", "instance"),
    ("dicomweb-retrieve-study-metadata", "study"),
    ("dicomweb-retrieve-series-metadata", "series"),
    ("dicomweb-retrieve-instance-metadata", "instance"),
    ("dicomweb-retrieve-instance-frames", "frames"),
    ("dicomweb-retrieve-bulkdata", "bulk"),
    *[
        (f"dicomweb-retrieve-{level}-{kind}", level)
        for kind in ("rendered", "thumbnail")
        for level in LEVELS
    ],
]


def _route_kwargs(series: CtSeries, level: str) -> dict[str, str]:
    if level == "bulk":
        return {**instance_kwargs(series), "tag": "7fe00010"}
    return _level_kwargs(series, level)


def test_every_route_is_covered_here():
    from imaging.proxy_urls import urlpatterns

    names = {p.name for p in urlpatterns} - {"dicomweb-search-for-studies"}
    assert names == {name for name, _ in ROUTES}


def test_a_study_of_another_project_is_404_on_every_route(data, member, project, other_project):
    """b1 is in the same Orthanc but in another project: it does not exist for a member of
    `project`, while a member of its own project gets it on every route."""
    owner = UserFactory()
    Membership.objects.create(project=other_project, user=owner, role=Role.ANNOTATOR)
    own = client_for(owner)
    for name, level in ROUTES:
        kwargs = _route_kwargs(data.b1, level)
        response = member.get(url(name, project, **kwargs))
        assert response.status_code == 404, name
        assert own.get(url(name, other_project, **kwargs)).status_code == 200, name


def test_a_series_or_instance_of_another_study_is_404(data, member, project):
    """a2's series and instances named under a1's study (same project) do not exist."""
    mixed = {**instance_kwargs(data.a2), "study": data.a1.study_instance_uid}
    for name, level in ROUTES:
        if level == "study":
            continue
        kwargs = {**mixed, "frames": "1", "tag": "7fe00010"}
        keep = {"series": 2, "instance": 3, "frames": 4, "bulk": 3}[level]
        kwargs = dict(list(kwargs.items())[:keep]) | (
            {"tag": "7fe00010"} if level == "bulk" else {}
        )
        response = member.get(url(name, project, **kwargs))
        assert response.status_code == 404, name
    # An instance of a1 under a1's study but another series (a2's) is 404 as well.
    wrong_series = {**instance_kwargs(data.a1), "series": data.a2.series_instance_uid}
    response = member.get(
        url("dicomweb-retrieve-instance-frames", project, frames="1", **wrong_series)
    )
    assert response.status_code == 404


def test_non_member_gets_404_and_anonymous_401(data, users, project):
    target = url("dicomweb-retrieve-series-metadata", project, **_level_kwargs(data.a1, "series"))
    assert client_for(users["non_member"]).get(target).status_code == 404
    anonymous = APIClient().get(target)
    assert anonymous.status_code == 401
    assert anonymous["WWW-Authenticate"].startswith("Token")
    studies = APIClient().get(url("dicomweb-search-for-studies", project))
    assert studies.status_code == 401


def test_token_and_session_authentication(data, users, project, client):
    target = url("dicomweb-search-for-studies", project)
    user = users["radiologist"]
    token = Token.objects.create(user=user)
    by_token = APIClient().get(target, HTTP_AUTHORIZATION=f"Token {token.key}")
    assert by_token.status_code == 200
    assert len(json_of(by_token)) == 2
    assert APIClient().get(target, HTTP_AUTHORIZATION="Token not-a-token").status_code == 401
    client.force_login(user)  # the browser: a Django session cookie
    by_session = client.get(target, HTTP_ACCEPT=DICOM_JSON)
    assert by_session.status_code == 200
    assert len(json_of(by_session)) == 2


# --- faults ----------------------------------------------------------------------------


def test_orthanc_down_is_503_with_reason(data, member, project, orthanc_server):
    orthanc_server.kill()  # the `orthanc` fixture restarts it for the next test
    for target in (
        url("dicomweb-search-for-studies", project),
        url("dicomweb-retrieve-instance-frames", project, frames="1", **instance_kwargs(data.a1)),
    ):
        response = member.get(target, HTTP_ACCEPT=CORNERSTONE_FRAMES)
        assert response.status_code == 503
        assert "unreachable" in response.json()["detail"]


def test_client_going_away_closes_the_upstream_response(data, member, project, monkeypatch):
    """Django closes the streaming iterator when the client leaves; Orthanc's response
    (still mid-body) must be closed with it, not left holding a connection."""
    upstreams = []
    client = proxy.orthanc_client()
    original = client.request

    def spy(*args, **kwargs):
        upstreams.append(original(*args, **kwargs))
        return upstreams[-1]

    monkeypatch.setattr(client, "request", spy)
    response = member.get(
        url(
            "dicomweb-retrieve-series",
            project,
            study=data.a1.study_instance_uid,
            series=data.a1.series_instance_uid,
        )
    )
    assert response.status_code == 200
    first = next(iter(response.streaming_content))
    assert first.startswith(b"--")
    [upstream] = upstreams
    assert not upstream.raw.closed
    response.close()
    assert upstream.raw.closed


@pytest.mark.parametrize("chunk", [1, 2, 3, 5, 7, 64])
def test_rewrite_stream_replaces_across_chunk_boundaries(chunk):
    old, new = b"http://orthanc:8042/dicom-web", b"https://platform/dicom-web/projects/p"
    text = b"a" + old + b"/x " + old + old + b" tail http://orthanc:8042/dicom-we"
    pieces = [text[i : i + chunk] for i in range(0, len(text), chunk)]
    assert b"".join(proxy.rewrite_stream(iter(pieces), old, new)) == text.replace(old, new)
