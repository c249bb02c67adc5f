"""The proxy's fast path for WADO-RS frames: Orthanc's raw frames, framed by the proxy.

Cornerstone3D fetches every frame of a series with
`Accept: multipart/related; type=application/octet-stream; transfer-syntax=*` ("the stored
encoding, untouched"). Orthanc's DICOMweb plugin answers that by reading and parsing the
whole DICOM file per request; Orthanc's core REST API serves the same bytes from
`GET /instances/{orthanc-id}/frames/{n-1}/raw` without that work. The proxy asks for
those and writes the multipart/related answer itself, in the plugin's dialect (checked
byte for byte by tests/dicomweb/test_proxy.py for every transfer syntax listed here):

    Content-Type: multipart/related; type="<media>; transfer-syntax=<ts>"; boundary=<b>

    --<b>\\r\\n
    Content-Location: <proxy URL of the frame>\\r\\n
    Content-Type: <media>; transfer-syntax=<ts>\\r\\n
    Content-Length: <n>\\r\\n
    MIME-Version: 1.0\\r\\n
    \\r\\n
    <frame bytes>\\r\\n
    --<b>--\\r\\n

The media type per transfer syntax is DICOM PS3.18's (Orthanc DICOMweb 1.7 writes the
same). Requests this path cannot answer exactly like the plugin (another Accept, an
instance without Orthanc id, a transfer syntax not listed) go the plugin's way.

Authorization is the same as every proxy route: DRF's token (or session) authentication,
then project membership and the index in one query per request (`frame_target`), never
cached, so a removed member or a deleted study is a 404 at once. The token and target
queries are compiled once per process (`CompiledQuery`): Django's query compilation cost
more than running them.
"""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from dataclasses import dataclass

from django.contrib.auth import get_user_model
from django.db import connections, router
from django.utils.translation import gettext as _
from rest_framework.authentication import TokenAuthentication
from rest_framework.authtoken.models import Token
from rest_framework.exceptions import AuthenticationFailed, NotFound

from imaging.models import Instance

# Stored transfer syntax -> media type of a frame (PS3.18 Table 8.7.3-2). Only syntaxes
# whose raw frame is the plugin's part payload are listed: native (uncompressed) pixel
# data in little endian, and encapsulated syntaxes where one frame is one item.
FRAME_MEDIA_TYPES: dict[str, str] = {
    "1.2.840.10008.1.2": "application/octet-stream",  # Implicit VR Little Endian
    "1.2.840.10008.1.2.1": "application/octet-stream",  # Explicit VR Little Endian
    "1.2.840.10008.1.2.4.50": "image/jpeg",  # JPEG Baseline
    "1.2.840.10008.1.2.4.51": "image/jpeg",  # JPEG Extended
    "1.2.840.10008.1.2.4.57": "image/jpeg",  # JPEG Lossless
    "1.2.840.10008.1.2.4.70": "image/jpeg",  # JPEG Lossless SV1
    "1.2.840.10008.1.2.4.80": "image/jls",  # JPEG-LS Lossless
    "1.2.840.10008.1.2.4.81": "image/jls",  # JPEG-LS Near-Lossless
    "1.2.840.10008.1.2.4.90": "image/jp2",  # JPEG 2000 Lossless
    "1.2.840.10008.1.2.4.91": "image/jp2",  # JPEG 2000
    "1.2.840.10008.1.2.5": "image/dicom-rle",  # RLE Lossless
}

OCTET_STREAM = "application/octet-stream"


def wants_stored_encoding(accept: str | None) -> bool:
    """True if `accept` asks for frames in their stored encoding, as Cornerstone3D does:
    one `multipart/related` range with `transfer-syntax=*` and type octet-stream (or none).
    A missing Accept counts (the proxy's default for frames is exactly that)."""
    if not accept:
        return True
    if "," in accept:
        return False  # several ranges: negotiation is the plugin's business
    media, *params = (piece.strip() for piece in accept.split(";"))
    if media.lower() != "multipart/related":
        return False
    values: dict[str, str] = {}
    for param in params:
        name, sep, value = param.partition("=")
        if not sep:
            return False
        values[name.strip().lower()] = value.strip().strip('"').lower()
    if set(values) - {"type", "transfer-syntax"}:
        return False  # e.g. a q-value or an unknown parameter
    return values.get("transfer-syntax") == "*" and values.get("type", OCTET_STREAM) == OCTET_STREAM


class CompiledQuery:
    """An ORM query compiled to SQL once per database, then run with new values.

    Compiling a four-join query costs Django about ten times what running it costs
    (SQLite: ~1 ms against ~0.05 ms); on the frame path that is most of the proxy's own
    time. `build(**marks)` builds the queryset with a marker for each value; its SQL and
    the order of its parameters are kept, and each call binds the real values in that
    order. The SQL is the ORM's own, so joins, quoting and table names stay Django's.
    """

    def __init__(self, model, build, marks: dict[str, object]) -> None:
        self.model = model
        self.build = build
        self.marks = marks
        self._compiled: dict[str, tuple[str, tuple[str, ...]]] = {}

    def compiled(self, using: str) -> tuple[str, tuple[str, ...]]:
        if using not in self._compiled:
            sql, params = self.build(**self.marks).query.sql_with_params()
            by_mark = {mark: name for name, mark in self.marks.items()}
            order = tuple(by_mark[param] for param in params)  # KeyError: a value not marked
            self._compiled[using] = (sql, order)
        return self._compiled[using]

    def first(self, **values) -> tuple | None:
        using = router.db_for_read(self.model)
        sql, order = self.compiled(using)
        with connections[using].cursor() as cursor:
            cursor.execute(sql, [values[name] for name in order])
            return cursor.fetchone()


def _token_user(key):
    return Token.objects.filter(key=key).values_list(
        "user_id", "user__is_active", "user__is_superuser"
    )[:1]


TOKEN_USER = CompiledQuery(Token, _token_user, {"key": "\x1ftoken-key\x1f"})


class FrameTokenAuthentication(TokenAuthentication):
    """DRF's token authentication (same header, same 401s) with a compiled query; the user
    is loaded with only what the frame path reads (`id`, `is_active`, `is_superuser`), any
    other field loads on first use."""

    def authenticate_credentials(self, key: str):
        row = TOKEN_USER.first(key=key)
        if row is None:
            raise AuthenticationFailed(_("Invalid token."))
        user_id, is_active, is_superuser = row
        if not is_active:
            raise AuthenticationFailed(_("User inactive or deleted."))
        User = get_user_model()
        known = {
            User._meta.pk.attname: user_id,
            "is_active": bool(is_active),
            "is_superuser": bool(is_superuser),
        }
        # `from_db` takes the loaded values in the model's field order.
        names = [f.attname for f in User._meta.concrete_fields if f.attname in known]
        user = User.from_db(router.db_for_read(User), names, [known[name] for name in names])
        return user, key


@dataclass(frozen=True)
class FrameTarget:
    """What the index knows of an instance the user may read."""

    pk: int
    orthanc_id: str
    number_of_frames: int
    transfer_syntax_uid: str


_TARGET_COLUMNS = ("pk", "orthanc_id", "number_of_frames", "transfer_syntax_uid")
_TARGET_MARKS: dict[str, object] = {
    "instance": "\x1finstance\x1f",
    "series": "\x1fseries\x1f",
    "study": "\x1fstudy\x1f",
    "slug": "\x1fslug\x1f",
}


def _target(instance, series, study, slug, **member):
    """The instance row, in the project `slug`, for a member (`user`) or a superuser (no
    `user`): the rule of `projects.selectors.projects_visible_to`, as joins."""
    rows = Instance.objects.filter(
        sop_instance_uid=instance,
        series__series_instance_uid=series,
        series__study__study_instance_uid=study,
        series__study__project__slug=slug,
    )
    if member:
        rows = rows.filter(series__study__project__memberships__user_id=member["user"])
    return rows.order_by().values_list(*_TARGET_COLUMNS)[:1]


MEMBER_TARGET = CompiledQuery(Instance, _target, {**_TARGET_MARKS, "user": -7_301_937})
SUPERUSER_TARGET = CompiledQuery(Instance, _target, _TARGET_MARKS)


def find_frame_target(
    user_id: int, is_superuser: bool, slug: str, study: str, series: str, instance: str
) -> FrameTarget | None:
    """The instance `study/series/instance` of project `slug` if the user may read it, in
    one query, else None. Membership is never cached."""
    values = {"instance": instance, "series": series, "study": study, "slug": slug}
    if is_superuser:
        row = SUPERUSER_TARGET.first(**values)
    else:
        row = MEMBER_TARGET.first(**values, user=user_id)
    return None if row is None else FrameTarget(*row)


def frame_target(user, slug: str, study: str, series: str, instance: str) -> FrameTarget:
    """`find_frame_target` for an authenticated `user`; 404 when not found (an unknown
    project, a non-member and another project's or another study's instance look the
    same)."""
    target = find_frame_target(user.pk, user.is_superuser, slug, study, series, instance)
    if target is None:
        raise NotFound(
            f"No instance {instance} in series {series} of study {study} in project '{slug}'."
        )
    return target


def token_key(authorization: str) -> str | None:
    """The key of a well-formed `Token <key>` header (DRF's keyword, any case), else None."""
    words = authorization.split()
    if len(words) == 2 and words[0].lower() == "token":
        return words[1]
    return None


def reader_of(request) -> tuple[int, bool] | None:
    """(user id, is superuser) of an active user, authenticated as DRF would do it on the
    frame route (a `Token` header, else the session), or None for anything else: no or
    malformed credentials, an unknown token, an inactive user (DRF answers those)."""
    authorization = request.META.get("HTTP_AUTHORIZATION")
    if authorization:
        key = token_key(authorization)
        row = TOKEN_USER.first(key=key) if key else None
        if row is None or not row[1]:
            return None
        return row[0], bool(row[2])
    user = request.user  # the session's (AuthenticationMiddleware)
    if not user.is_authenticated or not user.is_active:
        return None
    return user.pk, user.is_superuser


class MultipartFrames:
    """The multipart/related body of raw frames, in the plugin's dialect.

    `fetch(n)` returns Orthanc's raw frame `n` (1-based) as bytes, raising for an error
    answer; the caller reads the first frame before the response starts (`first`), so
    Orthanc's errors still become proper statuses; the others are read one after the
    other while streaming (an error there ends the body early, without a closing
    delimiter). Each part is written in one piece (head, frame, delimiter), so one frame
    is in memory, never the whole body.
    """

    def __init__(self, syntax: str, location: str, numbers: list[int], fetch, first: bytes):
        self.part_type = f"{FRAME_MEDIA_TYPES[syntax]}; transfer-syntax={syntax}"
        self.boundary = uuid.uuid4().hex
        self.location = location  # the frame's URL without its number
        self.numbers = numbers
        self.fetch = fetch
        self.first = first
        self._ending = f"--{self.boundary}--\r\n".encode()

    @property
    def content_type(self) -> str:
        return f'multipart/related; type="{self.part_type}"; boundary={self.boundary}'

    def head(self, number: int, length: int) -> bytes:
        lines = [
            f"--{self.boundary}",
            f"Content-Location: {self.location}{number}",
            f"Content-Type: {self.part_type}",
            f"Content-Length: {length}",
            "MIME-Version: 1.0",
        ]
        return ("\r\n".join(lines) + "\r\n\r\n").encode()

    def part(self, index: int, payload: bytes) -> bytes:
        pieces = [self.head(self.numbers[index], len(payload)), payload, b"\r\n"]
        if index == len(self.numbers) - 1:
            pieces.append(self._ending)
        return b"".join(pieces)

    def single(self) -> bytes | None:
        """The whole body when it is one frame (already read): sent with its length."""
        return self.part(0, self.first) if len(self.numbers) == 1 else None

    def __iter__(self) -> Iterator[bytes]:
        first, self.first = self.first, b""  # let the first frame go once sent
        yield self.part(0, first)
        for index in range(1, len(self.numbers)):
            yield self.part(index, self.fetch(self.numbers[index]))
