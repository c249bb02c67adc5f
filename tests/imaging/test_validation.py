"""The bad-input table: each kind of bad file or archive and what it gets.

Every row is uploaded through the API against a real Orthanc; the answer must be a 400
naming the reason, within a second, with nothing reaching Orthanc or the index.
"""

from __future__ import annotations

import io
import struct
import time
import zipfile
from collections.abc import Callable
from dataclasses import dataclass

import pytest
from pydicom.filewriter import write_dataset

from imaging.models import Instance, QuarantinedFile, Study, UploadBatch
from imaging.orthanc import OrthancClient
from imaging.validation import Limits, UploadSource, validate_sources
from tests.imaging.uploads import upload, zip_bytes
from tests.support.dicom_files import ct_series, to_bytes


def _good() -> bytes:
    return to_bytes(ct_series(1)[0])


def _no_file_meta() -> bytes:
    buffer = io.BytesIO()
    ds = ct_series(1)[0]
    from pydicom.filebase import DicomFileLike

    fp = DicomFileLike(buffer)
    fp.is_little_endian, fp.is_implicit_VR = True, False
    write_dataset(fp, ds)
    return buffer.getvalue()


def _without(keyword: str) -> bytes:
    ds = ct_series(1)[0]
    delattr(ds, keyword)
    return to_bytes(ds)


def _pixel_mismatch() -> bytes:
    ds = ct_series(1)[0]
    ds.Rows = 64  # PixelData holds 32 x 32
    return to_bytes(ds)


def _nested_sequences(depth: int) -> bytes:
    """A valid file followed by `depth` nested undefined-length sequences."""
    sq = struct.pack("<HH", 0x0008, 0x1140) + b"SQ\0\0" + struct.pack("<I", 0xFFFFFFFF)
    item = struct.pack("<HHI", 0xFFFE, 0xE000, 0xFFFFFFFF)
    end_item = struct.pack("<HHI", 0xFFFE, 0xE00D, 0)
    end_sq = struct.pack("<HHI", 0xFFFE, 0xE0DD, 0)
    ds = ct_series(1)[0]
    del ds.PixelData  # appended elements must come after (0008,1140) in tag order
    for keyword in list(ds.dir()):
        if ds.data_element(keyword).tag > 0x00081140:
            delattr(ds, keyword)
    return to_bytes(ds) + (sq + item) * depth + (end_item + end_sq) * depth


def _element_beyond_end() -> bytes:
    ds = ct_series(1)[0]
    del ds.PixelData
    return (
        to_bytes(ds)
        + struct.pack("<HH", 0x7FE0, 0x0010)
        + b"OW\0\0"
        + struct.pack("<I", 0x7FFFFFF0)
        + b"\0" * 16
    )


def _zip_bomb() -> bytes:
    return zip_bytes({"bomb.dcm": b"\0" * (20 * 1024 * 1024)})


def _raw_zip(name: str) -> bytes:
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w") as archive:
        archive.writestr(zipfile.ZipInfo(name), _good())
    return buffer.getvalue()


@dataclass
class Bad:
    id: str
    make: Callable[[], dict[str, bytes]]
    reason: str  # a phrase the rejection reason must contain
    settings: dict | None = None


BAD_INPUTS = [
    Bad("non-dicom", lambda: {"notes.txt": b"hello, not DICOM\n" * 50}, "not a DICOM file"),
    Bad("truncated", lambda: {"cut.dcm": _good()[:-700]}, "truncated"),
    Bad("no-file-meta", lambda: {"raw.dcm": _no_file_meta()}, "without file meta"),
    Bad("missing-study-uid", lambda: {"a.dcm": _without("StudyInstanceUID")}, "StudyInstanceUID"),
    Bad("missing-sop-class", lambda: {"a.dcm": _without("SOPClassUID")}, "SOPClassUID"),
    Bad("pixel-length-mismatch", lambda: {"a.dcm": _pixel_mismatch()}, "PixelData has 2048 bytes"),
    Bad(
        "oversized-file",
        lambda: {"big.dcm": _good()},
        "over the limit of 1000 bytes",
        {"UPLOAD_MAX_FILE_BYTES": 1000},
    ),
    Bad(
        "element-beyond-end", lambda: {"a.dcm": _element_beyond_end()}, "beyond the end of the file"
    ),
    Bad("deep-sequences", lambda: {"a.dcm": _nested_sequences(40)}, "nested too deeply"),
    Bad("very-deep-sequences", lambda: {"a.dcm": _nested_sequences(20000)}, "nested too deeply"),
    Bad("zip-bomb", lambda: {"bomb.zip": _zip_bomb()}, "compression ratio"),
    Bad("zip-dotdot", lambda: {"a.zip": _raw_zip("../../etc/x.dcm")}, "outside the archive"),
    Bad("zip-absolute", lambda: {"a.zip": _raw_zip("/etc/x.dcm")}, "absolute path"),
    Bad(
        "zip-too-many-members",
        lambda: {"a.zip": zip_bytes({f"m{i}.dcm": _good() for i in range(5)})},
        "5 members, over the limit of 3",
        {"INGEST_MAX_ARCHIVE_MEMBERS": 3},
    ),
    Bad(
        "zip-too-large",
        lambda: {"a.zip": zip_bytes({f"m{i}.dcm": _good() for i in range(3)})},
        "over the limit of 5000 bytes",
        {"INGEST_MAX_ARCHIVE_BYTES": 5000},
    ),
    Bad(
        "nested-zip",
        lambda: {"a.zip": zip_bytes({"inner.zip": zip_bytes({"x.dcm": _good()})})},
        "nested archives",
    ),
    Bad("broken-zip", lambda: {"a.zip": b"PK\x03\x04" + b"\0" * 100}, "not a readable zip"),
]


@pytest.mark.integration
@pytest.mark.parametrize("bad", BAD_INPUTS, ids=[b.id for b in BAD_INPUTS])
def test_bad_input_is_rejected_with_its_reason(bad: Bad, orthanc, project, admin_client, settings):
    for name, value in (bad.settings or {}).items():
        setattr(settings, name, value)
    files = bad.make()
    started = time.perf_counter()
    response = upload(admin_client, project, files)
    elapsed = time.perf_counter() - started
    assert response.status_code == 400, response.data
    assert response.data["code"] == "nothing_accepted"
    reasons = [r["reason"] for r in response.data["rejected"]]
    assert len(reasons) == 1 and bad.reason in reasons[0], reasons
    assert elapsed < 1.0, f"rejecting {bad.id} took {elapsed:.2f} s"
    assert OrthancClient().studies() == []
    assert not Study.objects.exists() and not Instance.objects.exists()
    assert not QuarantinedFile.objects.exists()


@pytest.mark.django_db
def test_empty_upload_is_400(project, admin_client):
    response = upload(admin_client, project, {})
    assert response.status_code == 400
    assert response.data["code"] == "empty_upload"
    assert not UploadBatch.objects.exists()


@pytest.mark.integration
def test_mixed_upload_accepts_good_files_and_lists_bad_ones(orthanc, project, admin_client):
    good = {f"g{i}.dcm": to_bytes(ds) for i, ds in enumerate(ct_series(2))}
    response = upload(admin_client, project, {**good, "bad.txt": b"nope" * 100})
    assert response.status_code == 200, response.data
    assert response.data["accepted"] == 2
    assert response.data["rejected"] == [
        {"name": "bad.txt", "reason": "not a DICOM file (no 128-byte preamble and 'DICM' prefix)"}
    ]
    assert len(OrthancClient().studies()) == 1


def test_validation_without_django_limits_defaults_are_sane():
    limits = Limits(
        max_file_bytes=10_000,
        max_archive_members=10,
        max_archive_bytes=100_000,
        max_compression_ratio=100,
        max_sequence_depth=16,
        defer_size=1024,
    )
    valid, rejected = validate_sources(
        [UploadSource(name="a.dcm", size=len(_good()), fileobj=io.BytesIO(_good()))], limits
    )
    assert len(valid) == 1 and rejected == []
    assert valid[0].dataset.Modality == "CT"
