"""Validation of untrusted uploads before anything is stored.

Every file (or archive member) is checked, within bounded time and memory, before it can
reach Orthanc or the index: size limits, archive limits (members, total size, compression
ratio, paths, nested archives), DICOM Part 10 file meta, bounded parsing (deferred large
values, sequence depth, element lengths within the file), required UIDs and pixel data
length consistent with the image attributes. A file that fails gets a `Rejection` with a
reason a person can act on; nothing of it is kept.
"""

from __future__ import annotations

import hashlib
import io
import math
import posixpath
import re
import struct
import zipfile
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO

import pydicom
from django.conf import settings
from pydicom.datadict import dictionary_VR
from pydicom.dataelem import RawDataElement
from pydicom.dataset import Dataset
from pydicom.encaps import parse_basic_offsets, parse_fragments
from pydicom.errors import InvalidDicomError
from pydicom.uid import UID

UNDEFINED_LENGTH = 0xFFFFFFFF
PIXEL_DATA = 0x7FE00010
REQUIRED_UIDS = ("StudyInstanceUID", "SeriesInstanceUID", "SOPInstanceUID", "SOPClassUID")
UID_PATTERN = re.compile(r"^(0|[1-9][0-9]*)(\.(0|[1-9][0-9]*))*$")
ZIP_MAGIC = b"PK\x03\x04"
EMPTY_ZIP_MAGIC = b"PK\x05\x06"


@dataclass(frozen=True)
class Limits:
    """Bounds on what one upload may contain (defaults from settings, see docs/imaging.md)."""

    max_file_bytes: int
    max_archive_members: int
    max_archive_bytes: int
    max_compression_ratio: float
    max_sequence_depth: int
    defer_size: int

    @classmethod
    def from_settings(cls) -> Limits:
        return cls(
            max_file_bytes=settings.UPLOAD_MAX_FILE_BYTES,
            max_archive_members=settings.INGEST_MAX_ARCHIVE_MEMBERS,
            max_archive_bytes=settings.INGEST_MAX_ARCHIVE_BYTES,
            max_compression_ratio=settings.INGEST_MAX_COMPRESSION_RATIO,
            max_sequence_depth=settings.INGEST_MAX_SEQUENCE_DEPTH,
            defer_size=settings.INGEST_DEFER_SIZE,
        )


@dataclass(frozen=True)
class UploadSource:
    """One uploaded file or file on disk: a display name, its size and a way to open it."""

    name: str
    size: int
    path: Path | None = None
    fileobj: BinaryIO | None = None

    @classmethod
    def from_path(cls, path: Path, *, name: str | None = None) -> UploadSource:
        return cls(name=name or str(path), size=path.stat().st_size, path=path)

    def read(self, limit: int) -> bytes:
        """Read at most `limit` + 1 bytes (so an oversized stream is detected, not loaded)."""
        if self.path is not None:
            with self.path.open("rb") as fh:
                return fh.read(limit + 1)
        assert self.fileobj is not None
        self.fileobj.seek(0)
        return self.fileobj.read(limit + 1)

    def head(self, n: int = 4) -> bytes:
        if self.path is not None:
            with self.path.open("rb") as fh:
                return fh.read(n)
        assert self.fileobj is not None
        self.fileobj.seek(0)
        data = self.fileobj.read(n)
        self.fileobj.seek(0)
        return data

    def open(self) -> BinaryIO:
        if self.path is not None:
            return self.path.open("rb")
        assert self.fileobj is not None
        self.fileobj.seek(0)
        return self.fileobj


@dataclass(frozen=True)
class Rejection:
    """A file (or archive member, `archive.zip/member`) that was not accepted, and why."""

    name: str
    reason: str

    def as_dict(self) -> dict[str, str]:
        return {"name": self.name, "reason": self.reason}


@dataclass
class ValidFile:
    """A file that passed validation: its parsed dataset and original bytes."""

    name: str
    data: bytes
    dataset: Dataset

    @property
    def sha256(self) -> str:
        return hashlib.sha256(self.data).hexdigest()


class FileRejected(Exception):
    """Raised inside validation; becomes a `Rejection` with this message."""


def _is_zip(head: bytes) -> bool:
    return head.startswith(ZIP_MAGIC) or head.startswith(EMPTY_ZIP_MAGIC)


def expand_sources(
    sources: Iterable[UploadSource], limits: Limits
) -> Iterator[tuple[str, bytes] | Rejection]:
    """Yield (name, bytes) for every file, archive members included, or a `Rejection`."""
    for source in sources:
        if source.size > limits.max_file_bytes and not _is_zip(source.head()):
            yield Rejection(
                source.name,
                f"file is {source.size} bytes, over the limit of {limits.max_file_bytes} bytes",
            )
            continue
        if _is_zip(source.head()):
            yield from _expand_zip(source, limits)
            continue
        data = source.read(limits.max_file_bytes)
        if len(data) > limits.max_file_bytes:
            yield Rejection(source.name, f"file is over the limit of {limits.max_file_bytes} bytes")
            continue
        yield source.name, data


def _archive_problem(infos: list[zipfile.ZipInfo], limits: Limits) -> str | None:
    """Why the archive as a whole is refused (checked before any member is read)."""
    if len(infos) > limits.max_archive_members:
        return f"archive has {len(infos)} members, over the limit of {limits.max_archive_members}"
    total = sum(info.file_size for info in infos)
    if total > limits.max_archive_bytes:
        return (
            f"archive expands to {total} bytes, over the limit of {limits.max_archive_bytes} bytes"
        )
    for info in infos:
        name = info.filename.replace("\\", "/")
        if name.startswith("/") or re.match(r"^[A-Za-z]:", name):
            return f"member {info.filename!r} has an absolute path"
        if ".." in posixpath.normpath(name).split("/"):
            return f"member {info.filename!r} points outside the archive ('..')"
        if info.file_size > limits.max_file_bytes:
            return (
                f"member {info.filename!r} is {info.file_size} bytes, over the per-file limit "
                f"of {limits.max_file_bytes} bytes"
            )
        ratio = info.file_size / max(info.compress_size, 1)
        if info.file_size > 1024 * 1024 and ratio > limits.max_compression_ratio:
            return (
                f"member {info.filename!r} has compression ratio {ratio:.0f}:1, over the "
                f"limit of {limits.max_compression_ratio:.0f}:1 (possible zip bomb)"
            )
    return None


def _expand_zip(source: UploadSource, limits: Limits) -> Iterator[tuple[str, bytes] | Rejection]:
    fh = source.open()
    try:
        try:
            archive = zipfile.ZipFile(fh)
        except (zipfile.BadZipFile, OSError, ValueError) as exc:
            yield Rejection(source.name, f"not a readable zip archive ({exc})")
            return
        with archive:
            infos = [info for info in archive.infolist() if not info.is_dir()]
            problem = _archive_problem(infos, limits)
            if problem:
                yield Rejection(
                    source.name, f"archive refused: {problem}; nothing in it was stored"
                )
                return
            for info in infos:
                member_name = f"{source.name}/{info.filename}"
                if info.flag_bits & 0x1:
                    yield Rejection(member_name, "encrypted archive members are not supported")
                    continue
                try:
                    with archive.open(info) as member:
                        data = member.read(limits.max_file_bytes + 1)
                except (
                    zipfile.BadZipFile,
                    OSError,
                    EOFError,
                    ValueError,
                    NotImplementedError,
                ) as exc:
                    yield Rejection(member_name, f"cannot be extracted ({exc})")
                    continue
                if len(data) > limits.max_file_bytes:
                    yield Rejection(
                        member_name, f"over the per-file limit of {limits.max_file_bytes} bytes"
                    )
                elif _is_zip(data[:4]):
                    yield Rejection(
                        member_name, "nested archives are not accepted; upload it directly"
                    )
                else:
                    yield member_name, data
    finally:
        if source.path is not None:
            fh.close()


def validate_dicom(name: str, data: bytes, limits: Limits) -> ValidFile:
    """Parse `data` with bounds and check it; raise `FileRejected` with the reason."""
    if len(data) < 132 or data[128:132] != b"DICM":
        if len(data) >= 4 and data[:2] in (b"\x08\x00", b"\x02\x00"):
            raise FileRejected(
                "DICOM dataset without file meta information (no 128-byte preamble and 'DICM' "
                "prefix); export it as a DICOM Part 10 file"
            )
        raise FileRejected("not a DICOM file (no 128-byte preamble and 'DICM' prefix)")
    try:
        dataset = pydicom.dcmread(io.BytesIO(data), defer_size=limits.defer_size)
        _check_structure(dataset, size=len(data), depth=0, limit=limits.max_sequence_depth)
    except FileRejected:
        raise
    except RecursionError as exc:
        raise FileRejected(
            f"sequences nested too deeply (more than {limits.max_sequence_depth} levels)"
        ) from exc
    except (
        InvalidDicomError,
        EOFError,
        struct.error,
        ValueError,
        KeyError,
        TypeError,
        OSError,
    ) as exc:
        raise FileRejected(f"malformed or truncated DICOM ({type(exc).__name__}: {exc})") from exc
    _check_file_meta(dataset)
    _check_uids(dataset)
    _check_pixel_data(dataset, data)
    return ValidFile(name=name, data=data, dataset=dataset)


def _check_structure(dataset: Dataset, *, size: int, depth: int, limit: int) -> None:
    """Reject element lengths beyond the file and sequences nested deeper than `limit`."""
    if depth > limit:
        raise FileRejected(f"sequences nested too deeply (more than {limit} levels)")
    for tag in list(dataset.keys()):
        raw = dataset.get_item(tag, keep_deferred=True)
        if isinstance(raw, RawDataElement) and raw.length != UNDEFINED_LENGTH:
            if raw.value is None:
                end = (raw.value_tell or 0) + raw.length
                if end > size:
                    raise FileRejected(
                        f"element {tag} claims {raw.length} bytes, beyond the end of the file "
                        "(truncated or malformed)"
                    )
            elif len(raw.value) < raw.length:
                raise FileRejected(
                    f"element {tag} claims {raw.length} bytes but the file ends after "
                    f"{len(raw.value)} (truncated)"
                )
        if raw is not None and _may_be_sequence(tag, raw):
            element = dataset[tag]
            if element.VR == "SQ":
                for item in element.value:
                    _check_structure(item, size=size, depth=depth + 1, limit=limit)


def _may_be_sequence(tag: int, raw) -> bool:
    if raw.VR == "SQ":
        return True
    if raw.VR is not None or tag == PIXEL_DATA:
        return False
    # Implicit VR: the dictionary says, or an undefined length (only sequences have one).
    try:
        return dictionary_VR(tag) == "SQ"
    except KeyError:
        return raw.length == UNDEFINED_LENGTH


def _check_file_meta(dataset: Dataset) -> None:
    meta = getattr(dataset, "file_meta", None)
    if meta is None or "TransferSyntaxUID" not in meta:
        raise FileRejected("file meta information has no TransferSyntaxUID (0002,0010)")


def _check_uids(dataset: Dataset) -> None:
    missing = [kw for kw in REQUIRED_UIDS if not str(dataset.get(kw, "") or "").strip()]
    if missing:
        raise FileRejected(f"missing required attribute(s): {', '.join(missing)}")
    for kw in REQUIRED_UIDS:
        value = str(dataset.get(kw)).strip()
        if len(value) > 64 or not UID_PATTERN.match(value):
            raise FileRejected(f"{kw} {value[:80]!r} is not a valid UID")


def _int_attr(dataset: Dataset, keyword: str, default: int | None = None) -> int | None:
    value = dataset.get(keyword, default)
    if value in (None, ""):
        return default
    try:
        return int(value)
    except (TypeError, ValueError) as exc:
        raise FileRejected(f"{keyword} {value!r} is not an integer") from exc


def _check_pixel_data(dataset: Dataset, data: bytes) -> None:
    """PixelData length must match Rows x Columns x SamplesPerPixel x BitsAllocated x frames."""
    raw = dataset.get_item(PIXEL_DATA, keep_deferred=True)
    if raw is None:
        return
    rows = _int_attr(dataset, "Rows")
    columns = _int_attr(dataset, "Columns")
    bits = _int_attr(dataset, "BitsAllocated")
    if not rows or not columns or not bits:
        raise FileRejected("PixelData present but Rows, Columns or BitsAllocated missing or zero")
    samples = _int_attr(dataset, "SamplesPerPixel", 1) or 1
    frames = _int_attr(dataset, "NumberOfFrames", 1) or 1
    transfer_syntax = UID(dataset.file_meta.TransferSyntaxUID)
    length = raw.length if isinstance(raw, RawDataElement) else len(raw.value or b"")
    if transfer_syntax.is_encapsulated or length == UNDEFINED_LENGTH:
        if length != UNDEFINED_LENGTH:
            raise FileRejected(
                f"transfer syntax {transfer_syntax.name} needs encapsulated PixelData "
                "(undefined length)"
            )
        _check_encapsulated(dataset, frames)
        return
    expected = math.ceil(rows * columns * samples * frames * bits / 8)
    if length not in (expected, expected + 1):
        raise FileRejected(
            f"PixelData has {length} bytes but Rows x Columns x SamplesPerPixel x "
            f"BitsAllocated/8 x NumberOfFrames = {rows} x {columns} x {samples} x "
            f"{bits}/8 x {frames} = {expected} bytes"
        )


def _check_encapsulated(dataset: Dataset, frames: int) -> None:
    try:
        buffer = io.BytesIO(dataset.PixelData)
        offsets = parse_basic_offsets(buffer)  # leaves `buffer` after the offset table
        fragments, _ = parse_fragments(buffer)
    except (ValueError, EOFError, TypeError, KeyError) as exc:
        raise FileRejected(f"encapsulated PixelData is malformed ({exc})") from exc
    if fragments == 0:
        raise FileRejected("encapsulated PixelData has no fragments")
    if offsets and len(offsets) != frames:
        raise FileRejected(
            f"encapsulated PixelData has {len(offsets)} frames in its offset table but "
            f"NumberOfFrames is {frames}"
        )
    if not offsets and frames > 1 and fragments < frames:
        raise FileRejected(
            f"encapsulated PixelData has {fragments} fragments for NumberOfFrames {frames}"
        )


def validate_sources(
    sources: Iterable[UploadSource], limits: Limits | None = None
) -> tuple[list[ValidFile], list[Rejection]]:
    """Validate every file and archive member; (valid files, rejections) in input order."""
    limits = limits or Limits.from_settings()
    valid: list[ValidFile] = []
    rejected: list[Rejection] = []
    for item in expand_sources(sources, limits):
        if isinstance(item, Rejection):
            rejected.append(item)
            continue
        name, data = item
        try:
            valid.append(validate_dicom(name, data, limits))
        except FileRejected as exc:
            rejected.append(Rejection(name, str(exc)))
    return valid, rejected
