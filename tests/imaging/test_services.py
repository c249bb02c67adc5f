"""Units of imaging.services that need neither Orthanc nor the database."""

from __future__ import annotations

import contextlib
import copy
import io
from pathlib import Path

import pydicom
import pytest
from pydicom.errors import InvalidDicomError

from imaging.deid import DeidentificationError, deidentify
from imaging.records import InstanceRecord
from imaging.services import _batches, _encode, _Prepared, _ready_for_storage

TEST_FILES = sorted((Path(pydicom.__file__).parent / "data" / "test_files").glob("*.dcm"))


def _datasets():
    for path in TEST_FILES:
        try:
            ds = pydicom.dcmread(path)
        except (InvalidDicomError, OSError, ValueError, EOFError):
            continue
        if "SOPClassUID" in ds and "SOPInstanceUID" in ds:
            yield path.name, ds


def _dcmwrite(ds) -> bytes:
    buffer = io.BytesIO()
    pydicom.dcmwrite(buffer, _ready_for_storage(copy.deepcopy(ds)))
    return buffer.getvalue()


@pytest.mark.filterwarnings("ignore")
def test_encode_writes_the_same_bytes_as_dcmwrite():
    """Every pydicom test file that dcmwrite can write, as read and de-identified:
    explicit/implicit VR, big endian, deflated, encapsulated, multi-frame, sequences."""
    compared = 0
    for name, ds in _datasets():
        variants = [("as read", ds)]
        with contextlib.suppress(DeidentificationError):
            variants.append(("de-identified", deidentify(ds, uid_secret="s")))
        for variant, dataset in variants:
            try:
                expected = _dcmwrite(dataset)
            except (ValueError, TypeError, AttributeError):
                continue  # dcmwrite refuses it; so must _encode (it falls back to it)
            assert _encode(copy.deepcopy(dataset)) == expected, f"{name} {variant}"
            compared += 1
    assert compared > 100


def _prepared(n: int, size: int) -> list[_Prepared]:
    record = InstanceRecord.from_tags(lambda keyword: None)
    return [_Prepared(f"f{i}", b"x" * size, record) for i in range(n)]


def test_batches_are_bounded_by_count_and_bytes():
    sizes = [len(b) for b in _batches(_prepared(7, 10), max_instances=3, max_bytes=1000)]
    assert sizes == [3, 3, 1]
    by_bytes = list(_batches(_prepared(5, 400), max_instances=16, max_bytes=1000))
    assert [len(b) for b in by_bytes] == [2, 2, 1]
    # A file larger than the byte bound still goes, alone.
    assert [len(b) for b in _batches(_prepared(2, 5000), max_instances=16, max_bytes=1000)] == [
        1,
        1,
    ]
