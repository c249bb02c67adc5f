"""Tests of imaging.deid: the PS3.15 Basic Profile, UID mapping and the quarantine rules.

Inputs: real DICOM files shipped with pydicom (CT, MR, US, SC, SR, RT, overlays, big
endian, compressed), the chest CT phantom of ai_engine.data.phantoms, and a hand-built
CT pair full of identifying attributes, private tags, curves, overlays and nested
sequences that reference each other.
"""

from __future__ import annotations

import copy
import datetime
import io
import re
from collections import Counter
from pathlib import Path

import pydicom
import pytest
from pydicom import Dataset
from pydicom.data import get_testdata_file
from pydicom.datadict import get_entry
from pydicom.dataelem import DataElement, RawDataElement
from pydicom.multival import MultiValue
from pydicom.sequence import Sequence
from pydicom.tag import Tag
from pydicom.uid import UID, ExplicitVRLittleEndian, generate_uid

from imaging.deid import (
    BASIC_PROFILE_CODE,
    CLEAN_DESCRIPTOR_KEYWORDS,
    CLEAN_DESCRIPTORS_CODE,
    DEIDENTIFICATION_METHOD,
    MODIFIED_DATES_CODE,
    DeidentificationError,
    burned_in_text_risk,
    clean_descriptor,
    date_shift_days,
    deidentify,
    resolve_action,
    uid_map,
)
from imaging.deid_profile import BASIC_PROFILE_ACTIONS, BASIC_PROFILE_BY_KEYWORD
from imaging.exceptions import ImagingError

SECRET = "project-a-0123456789abcdef"
OTHER_SECRET = "project-b-fedcba9876543210"
PREFIX = "ANON"
UID_RE = re.compile(r"^(0|[1-9][0-9]*)(\.(0|[1-9][0-9]*))*$")

#: Real files shipped with pydicom: image IODs of several modalities and encodings, an
#: SR with a content tree, an RT plan full of references, overlays and private tags.
PYDICOM_FILES = [
    "CT_small.dcm",
    "MR_small.dcm",
    "MR_small_bigendian.dcm",
    "MR_small_implicit.dcm",
    "MR_small_jp2klossless.dcm",
    "JPEG2000.dcm",
    "JPEG-lossy.dcm",
    "SC_rgb_small_odd.dcm",
    "ExplVR_BigEnd.dcm",
    "examples_jpeg2k.dcm",
    "examples_overlay.dcm",
    "693_J2KI.dcm",
    "test-SR.dcm",
    "rtplan.dcm",
    "rtdose_rle_1frame.dcm",
    "dicomdirtests/77654033/CT2/17106",
    "dicomdirtests/98892003/MR1/4919",
]
_DATA_DIR = Path(get_testdata_file("CT_small.dcm")).parent

# What resolve_action must do with each compound action, written out from the policy in
# docs/deidentification.md (legal in every IOD, no identifying content left).
COMPOUND_POLICY = {
    ("X/Z", False): "Z",
    ("X/D", False): "D",
    ("Z/D", False): "D",
    ("X/Z/D", False): "D",
    ("X/Z", True): "Z",
    ("X/Z/D", True): "Z",
    ("X/D", True): "X",
    ("X/Z/U*", True): "U*",
}
DUMMIES = {"ANONYMIZED", "19000101", "000000", "19000101000000", "0", "000Y"}
FREE_TEXT_VRS = {"AE", "AS", "DA", "DT", "LO", "LT", "PN", "SH", "ST", "TM", "UC", "UR", "UT"}
CODED = {
    "CodeValue",
    "CodingSchemeDesignator",
    "CodingSchemeVersion",
    "CodeMeaning",
    "LongCodeValue",
    "URNCodeValue",
    "ContextIdentifier",
    "ContextGroupVersion",
    "ContextGroupLocalVersion",
    "MappingResource",
    "MappingResourceName",
    "MappingResourceUID",
    "TemplateIdentifier",
}
ADDED_AT_TOP = {
    "PatientIdentityRemoved",
    "DeidentificationMethod",
    "DeidentificationMethodCodeSequence",
    "PatientName",
    "PatientID",
    "SOPClassUID",
    "LongitudinalTemporalInformationModified",
}


# ---------------------------------------------------------------------------------------
# inputs


def _read_pydicom_file(name: str) -> Dataset:
    path = _DATA_DIR / name if "/" in name else Path(get_testdata_file(name))
    return pydicom.dcmread(path)


def _identifying_ct(
    instance: int, *, study_uid: str, series_uid: str, frame_uid: str, refs: list[str]
) -> Dataset:
    """A small CT instance carrying every kind of identifying content we know of."""
    ds = Dataset()
    ds.SpecificCharacterSet = "ISO_IR 100"
    ds.ImageType = ["ORIGINAL", "PRIMARY", "AXIAL"]
    ds.SOPClassUID = pydicom.uid.CTImageStorage
    ds.SOPInstanceUID = f"1.2.826.0.1.3680043.9.7001.{instance}"
    ds.StudyDate, ds.SeriesDate, ds.AcquisitionDate, ds.ContentDate = ["20240311"] * 4
    ds.StudyTime, ds.SeriesTime, ds.AcquisitionTime, ds.ContentTime = ["101500"] * 4
    ds.AcquisitionDateTime = "20240311101500"
    ds.AccessionNumber = "ACC7741902"
    ds.Modality = "CT"
    ds.Manufacturer = "ACME"
    ds.InstitutionName = "St Elsewhere Hospital"
    ds.InstitutionAddress = "12 Harbour Road, Portsmouth"
    ds.InstitutionCodeSequence = [_code("STELS-01", "99HOSP", "St Elsewhere")]
    ds.ReferringPhysicianName = "Kildare^James"
    ds.ReferringPhysicianTelephoneNumbers = "555-0100"
    ds.StationName = "CTROOM3"
    ds.StudyDescription = "CT chest for Mr Smith"
    ds.SeriesDescription = "Axial 1mm"
    ds.InstitutionalDepartmentName = "Radiology East"
    ds.PhysiciansOfRecord = "House^Gregory"
    ds.PerformingPhysicianName = "Grey^Meredith"
    ds.NameOfPhysiciansReadingStudy = "Quincy^Jack"
    ds.OperatorsName = "Tech^Tina"
    ds.OperatorIdentificationSequence = [_person("Tech^Tina", "EMP-4411")]
    ds.AdmittingDiagnosesDescription = "Suspected carcinoma"
    ds.ReferencedStudySequence = [_ref(pydicom.uid.UID("1.2.840.10008.3.1.2.3.1"), study_uid)]
    ds.ReferencedPerformedProcedureStepSequence = [
        _ref(pydicom.uid.UID("1.2.840.10008.3.1.2.3.3"), "1.2.826.0.1.3680043.9.7001.900")
    ]
    ds.ReferencedPatientSequence = [
        _ref(pydicom.uid.UID("1.2.840.10008.3.1.2.1.1"), "1.2.826.0.1.3680043.9.7001.901")
    ]
    if refs:
        ds.ReferencedImageSequence = [_ref(pydicom.uid.CTImageStorage, uid) for uid in refs]
        ds.SourceImageSequence = [_ref(pydicom.uid.CTImageStorage, refs[0])]
    ds.DerivationDescription = "Reformatted by Dr Smith"
    ds.PatientName = "Smith^John^Q"
    ds.PatientID = "MRN-00412977"
    ds.IssuerOfPatientID = "St Elsewhere MRN"
    ds.PatientBirthDate = "19570704"
    ds.PatientBirthTime = "0830"
    ds.PatientSex = "M"
    ds.OtherPatientIDs = "NHS-9434765919"
    ds.OtherPatientIDsSequence = [_other_id("NHS-9434765919")]
    ds.OtherPatientNames = "Smyth^Jon"
    ds.PatientAge = "066Y"
    ds.PatientSize = "1.82"
    ds.PatientWeight = "91"
    ds.PatientAddress = "4 Privet Drive, Little Whinging"
    ds.PatientTelephoneNumbers = "555-0199"
    ds.MilitaryRank = "Major"
    ds.EthnicGroup = "Martian"
    ds.Occupation = "Wizard"
    ds.AdditionalPatientHistory = "Smoker since 1975, lives with wife Jane"
    ds.PatientComments = "Allergic to penicillin"
    ds.ContrastBolusAgent = "Omnipaque 350"
    ds.DeviceSerialNumber = "SN-883421"
    ds.ProtocolName = "Chest Smith special"
    ds.StudyInstanceUID = study_uid
    ds.SeriesInstanceUID = series_uid
    ds.StudyID = "S-20240311-7"
    ds.SeriesNumber = 3
    ds.InstanceNumber = instance
    ds.FrameOfReferenceUID = frame_uid
    ds.PositionReferenceIndicator = ""
    ds.ImageComments = "Patient moved, call John on 555-0199"
    ds.AcquisitionUID = f"1.2.826.0.1.3680043.9.7001.500.{instance}"  # UI not in the table
    ds.IrradiationEventUID = f"1.2.826.0.1.3680043.9.7001.600.{instance}"
    ds.RequestAttributesSequence = [_request()]
    ds.VerifyingObserverSequence = [_verifier()]
    ds.SamplesPerPixel = 1
    ds.PhotometricInterpretation = "MONOCHROME2"
    ds.Rows = ds.Columns = 4
    ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 16, 12, 11, 0
    ds.PixelData = bytes(range(instance, instance + 32))
    ds.IconImageSequence = [Dataset()]
    ds.IconImageSequence[0].Rows = 1
    # private block with a name in it
    block = ds.private_block(0x0009, "ACME PRIVATE", create=True)
    block.add_new(0x10, "LO", "Smith^John")
    block.add_new(0x11, "UI", "1.2.826.0.1.3680043.9.7001.777")
    # curve (50xx) and overlay (60xx) groups carrying text
    ds.add(DataElement(0x50000005, "US", 2))
    ds.add(DataElement(0x50003000, "OW", b"\x01\x02\x03\x04"))
    ds.add(DataElement(0x50002500, "LO", "Curve by Dr Smith"))
    ds.add(DataElement(0x60000010, "US", 4))
    ds.add(DataElement(0x60000011, "US", 4))
    ds.add(DataElement(0x60000040, "CS", "G"))
    ds.add(DataElement(0x60000050, "SS", [1, 1]))
    ds.add(DataElement(0x60000100, "US", 1))
    ds.add(DataElement(0x60000102, "US", 0))
    ds.add(DataElement(0x60003000, "OW", b"\xff\x00"))
    ds.add(DataElement(0x60004000, "LT", "SMITH JOHN 1957"))
    ds.add(DataElement(0xFFFCFFFC, "OB", b"\x00" * 4))  # Data Set Trailing Padding
    ds.file_meta = pydicom.dataset.FileMetaDataset()
    ds.file_meta.MediaStorageSOPClassUID = ds.SOPClassUID
    ds.file_meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
    ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds.file_meta.SourceApplicationEntityTitle = "CTROOM3"
    ds.preamble = b"II*\x00" + b"\x00" * 124  # a TIFF header, as dual-personality files have
    return ds


def _code(value: str, scheme: str, meaning: str) -> Dataset:
    item = Dataset()
    item.CodeValue, item.CodingSchemeDesignator, item.CodeMeaning = value, scheme, meaning
    return item


def _ref(sop_class: str, sop_instance: str) -> Dataset:
    item = Dataset()
    item.ReferencedSOPClassUID = sop_class
    item.ReferencedSOPInstanceUID = sop_instance
    return item


def _person(name: str, employee_id: str) -> Dataset:
    item = Dataset()
    item.PersonIdentificationCodeSequence = [_code(employee_id, "99HOSP", name)]
    item.InstitutionName = "St Elsewhere Hospital"
    return item


def _other_id(value: str) -> Dataset:
    item = Dataset()
    item.PatientID = value
    item.IssuerOfPatientID = "NHS"
    return item


def _request() -> Dataset:
    item = Dataset()
    item.RequestedProcedureID = "RP-5531"
    item.ScheduledProcedureStepID = "SPS-5531"
    item.RequestedProcedureDescription = "CT chest, Smith"
    item.RequestingPhysician = "Welby^Marcus"
    item.ReferencedStudySequence = [_ref("1.2.840.10008.3.1.2.3.1", "1.2.3.4.5.6.7.8.9.1")]
    return item


def _verifier() -> Dataset:
    item = Dataset()
    item.VerifyingObserverName = "Casey^Ben"
    item.VerifyingOrganization = "St Elsewhere Hospital"
    item.VerificationDateTime = "20240312093000"
    item.VerifyingObserverIdentificationCodeSequence = [_code("DOC-12", "99HOSP", "Casey")]
    # a coded person identifier inside a D sequence: its codes identify, so they go too
    item.PersonIdentificationCodeSequence = [_code("EMP-7781", "99HOSP", "Casey^Ben")]
    return item


@pytest.fixture(scope="module")
def identifying_pair() -> tuple[Dataset, Dataset]:
    """Two instances of one series; the second references the first."""
    study, series, frame = (
        "1.2.826.0.1.3680043.9.7001.1000",
        "1.2.826.0.1.3680043.9.7001.1001",
        "1.2.826.0.1.3680043.9.7001.1002",
    )
    first = _identifying_ct(1, study_uid=study, series_uid=series, frame_uid=frame, refs=[])
    second = _identifying_ct(
        2, study_uid=study, series_uid=series, frame_uid=frame, refs=[first.SOPInstanceUID]
    )
    return first, second


@pytest.fixture(scope="module")
def phantom_pair() -> tuple[Dataset, Dataset]:
    """Two slices of the DATA engineer's chest CT phantom (smallest allowed matrix)."""
    phantoms = pytest.importorskip("ai_engine.data.phantoms")
    volume, _ = phantoms.make_chest_ct(11, shape=(64, 64, 16))
    datasets = phantoms.chest_ct_datasets(volume, 11)
    return datasets[0], datasets[1]


def _all_inputs(identifying_pair, phantom_pair) -> list[tuple[str, Dataset]]:
    cases = [(name, _read_pydicom_file(name)) for name in PYDICOM_FILES]
    cases += [("identifying-1", identifying_pair[0]), ("identifying-2", identifying_pair[1])]
    cases += [("phantom-1", phantom_pair[0]), ("phantom-2", phantom_pair[1])]
    return cases


# ---------------------------------------------------------------------------------------
# the checker: every Table E.1-1 attribute of the input against its action


def _values(value) -> list:
    return list(value) if isinstance(value, MultiValue | list) else [value]


def _is_empty(elem: DataElement) -> bool:
    return elem.value is None or elem.value == "" or elem.value == [] or elem.value == b""


def _check_item(
    original: Dataset,
    output: Dataset,
    seen: Counter,
    *,
    top: bool,
    dummy_subtree: bool,
    keep_codes: bool,
    shift: int | None = None,
) -> None:
    """Assert the action of every attribute of ``original`` on ``output``, recursively.

    ``shift``: the patient's date shift when the Modified Dates Option is on (dates the
    profile empties, dummies or keeps must be moved back by exactly that many days, times
    kept); None checks the plain Basic Profile.
    """
    for elem in original:
        tag = elem.tag
        name = elem.keyword or str(tag)
        if tag.is_private:
            assert tag not in output, f"private {tag} left"
            seen["private"] += 1
            continue
        if tag.group % 2 == 0 and (tag.group & 0xFF00) in (0x5000, 0x6000):
            assert tag not in output, f"curve/overlay {tag} left"
            seen["curve/overlay"] += 1
            continue
        if top and elem.keyword in ADDED_AT_TOP:
            continue
        if top and elem.keyword in CLEAN_DESCRIPTOR_KEYWORDS:
            # Clean Descriptors Option: only vocabulary words survive; with none, the
            # profile's own action applies.
            cleaned = clean_descriptor(str(elem.value or ""))
            if cleaned:
                assert output[tag].value == cleaned, name
                seen["C-descriptor"] += 1
                continue
        vr = elem.VR if elem.VR not in ("UN",) else get_entry(tag)[0]
        action = BASIC_PROFILE_ACTIONS.get(int(tag))
        if action is None:
            _check_unlisted(
                elem,
                output,
                seen,
                dummy_subtree=dummy_subtree,
                keep_codes=keep_codes,
                shift=shift,
            )
            continue
        seen[action] += 1
        is_sequence = vr == "SQ"
        resolved = resolve_action(action, is_sequence=is_sequence)
        assert COMPOUND_POLICY.get((action, is_sequence), action) == resolved
        if resolved == "X":
            assert tag not in output, f"{name} ({action}) should be removed"
            continue
        assert tag in output, f"{name} ({action}) should be present"
        new = output[tag]
        if shift is not None and not is_sequence and resolved in ("Z", "D"):
            if vr in ("DA", "DT") and elem.keyword != "PatientBirthDate":
                expected = None if _is_empty(elem) else _expected_shift(elem.value, vr, shift)
                if expected is not None:  # else (empty, not a date) the profile's action
                    assert _values(new.value) == _values(expected), (
                        f"{name} {elem.value!r} should move back {shift} days, is {new.value!r}"
                    )
                    seen["date-shifted"] += 1
                    continue
            elif vr == "TM":
                assert new.value == elem.value, f"{name}: times are kept with shifted dates"
                seen["time-kept"] += 1
                continue
        if resolved == "Z":
            assert _is_empty(new), f"{name} ({action}) should be empty, is {new.value!r}"
        elif resolved == "D" and not is_sequence:
            assert not _is_empty(new), f"{name} ({action}) needs a dummy"
            assert new.value != elem.value or str(elem.value) in DUMMIES, f"{name} kept"
        elif resolved == "D":
            assert len(new.value) == len(elem.value)
            codes = keep_codes or elem.keyword in ("ContentSequence", "GraphicAnnotationSequence")
            for old_item, new_item in zip(elem.value, new.value, strict=True):
                _check_item(
                    old_item,
                    new_item,
                    seen,
                    top=False,
                    dummy_subtree=True,
                    keep_codes=codes,
                    shift=shift,
                )
        elif resolved == "U":
            expected = [uid_map(v, uid_secret=SECRET) if v else "" for v in _values(elem.value)]
            assert _values(new.value) == expected, f"{name} not mapped"
        elif resolved == "U*":
            assert len(new.value) == len(elem.value)
            for old_item, new_item in zip(elem.value, new.value, strict=True):
                _check_item(
                    old_item,
                    new_item,
                    seen,
                    top=False,
                    dummy_subtree=dummy_subtree,
                    keep_codes=keep_codes,
                    shift=shift,
                )
        else:  # pragma: no cover
            pytest.fail(f"unexpected action {resolved}")


def _check_unlisted(
    elem: DataElement,
    output: Dataset,
    seen: Counter,
    *,
    dummy_subtree: bool,
    keep_codes: bool,
    shift: int | None = None,
) -> None:
    """Attributes the table does not name: kept (K), except instance UIDs and D subtrees."""
    tag = elem.tag
    assert tag in output, f"{elem.keyword or tag} is not in the table and must be kept"
    new = output[tag]
    if elem.VR == "SQ":
        assert len(new.value) == len(elem.value)
        for old_item, new_item in zip(elem.value, new.value, strict=True):
            _check_item(
                old_item,
                new_item,
                seen,
                top=False,
                dummy_subtree=dummy_subtree,
                keep_codes=keep_codes,
                shift=shift,
            )
        return
    if elem.VR == "UI" and not _is_empty(elem):
        registry = _is_registry_keyword(elem.keyword) or all(
            str(v) in pydicom.uid.UID_dictionary for v in _values(elem.value)
        )
        if registry:
            assert new.value == elem.value, f"registry UID {elem.keyword} changed"
            seen["K-registry-uid"] += 1
        else:
            expected = [uid_map(v, uid_secret=SECRET) for v in _values(elem.value)]
            assert _values(new.value) == expected, f"instance UID {elem.keyword} not mapped"
            seen["U-unlisted"] += 1
        return
    if shift is not None and elem.VR in ("DA", "DT") and not _is_empty(elem):
        expected = _expected_shift(elem.value, elem.VR, shift)
        if expected is None:  # not a date: emptied (or a dummy in a D subtree)
            assert _is_empty(new) or str(new.value) in DUMMIES, elem.keyword
        else:
            assert _values(new.value) == _values(expected), f"{elem.keyword} not shifted"
            seen["date-shifted-K"] += 1
        return
    if shift is not None and dummy_subtree and elem.VR == "TM":
        assert new.value == elem.value, f"{elem.keyword}: times are kept with shifted dates"
        seen["time-kept"] += 1
        return
    if (
        dummy_subtree
        and elem.VR in FREE_TEXT_VRS
        and not _is_empty(elem)
        and not (keep_codes and elem.keyword in CODED)
    ):
        assert not _is_empty(new) and (new.value != elem.value or str(elem.value) in DUMMIES)
        seen["D-subtree"] += 1
        return
    assert new.value == elem.value, f"{elem.keyword or tag} should be kept"
    seen["K"] += 1


def _expected_shift(value, vr: str, days: int):
    """``value`` (DA or DT, possibly multi-valued) with its dates ``days`` earlier, or None
    when a value has no full YYYYMMDD date."""
    out = []
    for item in _values(value):
        text = str(item).strip()
        if not text:
            out.append("")
            continue
        if not re.fullmatch(r"\d{8}", text[:8]) or (vr == "DA" and len(text) != 8):
            return None
        try:
            day = datetime.date(int(text[:4]), int(text[4:6]), int(text[6:8]))
        except ValueError:
            return None
        moved = day - datetime.timedelta(days=days)
        out.append(f"{moved.year:04d}{moved.month:02d}{moved.day:02d}" + text[8:])
    return out[0] if len(out) == 1 else out


def _shift_of(ds: Dataset, secret: str = SECRET) -> int:
    return date_shift_days(
        str(ds.get("PatientID", "") or ""),
        uid_secret=secret,
        study_instance_uid=str(ds.get("StudyInstanceUID", "") or ""),
    )


def _is_registry_keyword(keyword: str) -> bool:
    """UI attributes that name classes, syntaxes or coding schemes rather than instances."""
    return (
        "Class" in keyword
        or "TransferSyntax" in keyword
        or keyword in ("CodingSchemeUID", "ContextUID", "MappingResourceUID")
    )


def _write(ds: Dataset) -> bytes:
    buffer = io.BytesIO()
    pydicom.dcmwrite(buffer, ds, enforce_file_format=True)
    return buffer.getvalue()


def _leak_candidates(ds: Dataset, *, shifted_dates: bool = False) -> set[str]:
    """Identifying strings of ``ds``: values of attributes the table removes, empties or
    dummies, and every instance UID, minus values that also sit in attributes the
    profile keeps (those are legitimately still there). With ``shifted_dates`` every
    real date is identifying (all of them move) and times are kept."""
    identifying: set[str] = set()
    kept: set[str] = set()

    def visit(dataset: Dataset, elem: DataElement) -> None:
        if elem.VR == "SQ" or elem.tag.group == 0x0002:
            return
        action = BASIC_PROFILE_ACTIONS.get(int(elem.tag))
        values = [str(v).strip() for v in _values(elem.value) if isinstance(v, str | UID)]
        values = [v for v in values if len(v) >= 6 and v not in DUMMIES]
        if elem.VR == "UI":
            registry = _is_registry_keyword(elem.keyword) or all(
                v in pydicom.uid.UID_dictionary for v in values
            )
            if not registry:
                identifying.update(values)
            return
        if shifted_dates and elem.VR == "TM":
            kept.update(values)
            return
        if shifted_dates and elem.VR in ("DA", "DT"):
            identifying.update(values)
            return
        if dataset is ds and elem.keyword in CLEAN_DESCRIPTOR_KEYWORDS:
            identifying.update(values)
            kept.update(clean_descriptor(v) for v in values)
        elif action is not None or elem.tag.is_private or elem.VR == "PN":
            identifying.update(values)
        else:
            kept.update(values)

    ds.walk(visit)
    return {v for v in identifying if not any(v in k for k in kept if k)}


# ---------------------------------------------------------------------------------------
# (a) every Basic Profile attribute of every input; (b) no private tags; (d) write/read;
# (f) input unchanged


@pytest.mark.filterwarnings("ignore:Invalid value for VR UI")  # rtdose_rle_1frame.dcm's own UID
@pytest.mark.parametrize("shift_dates", [False, True], ids=["basic", "modified-dates"])
def test_profile_applied_to_every_input(identifying_pair, phantom_pair, shift_dates) -> None:
    seen: Counter = Counter()
    for name, original in _all_inputs(identifying_pair, phantom_pair):
        before = copy.deepcopy(original)
        preamble_before = getattr(original, "preamble", None)
        output = deidentify(
            original, uid_secret=SECRET, patient_id_prefix=PREFIX, shift_dates=shift_dates
        )
        shift = _shift_of(original) if shift_dates else None

        # (f) the input is untouched
        assert original == before, name
        assert getattr(original, "file_meta", None) == getattr(before, "file_meta", None)
        assert getattr(original, "preamble", None) == preamble_before

        # (a) every attribute against its action, recursively
        _check_item(
            original,
            output,
            seen,
            top=True,
            dummy_subtree=False,
            keep_codes=False,
            shift=shift,
        )

        # identity attributes and the record of the method
        pseudonym = output.PatientID.removeprefix(f"{PREFIX}-")
        assert re.fullmatch(r"[0-9A-F]{16}", pseudonym), (name, output.PatientID)
        assert output.PatientName == f"{PREFIX}^{pseudonym}"
        assert output.PatientIdentityRemoved == "YES"
        assert list(output.DeidentificationMethod)[-2:] == list(DEIDENTIFICATION_METHOD)
        codes = [
            (i.CodeValue, i.CodingSchemeDesignator, i.CodeMeaning)
            for i in output.DeidentificationMethodCodeSequence
        ]
        assert BASIC_PROFILE_CODE in codes
        assert (MODIFIED_DATES_CODE in codes) == shift_dates
        if shift_dates:
            assert output.LongitudinalTemporalInformationModified == "MODIFIED"

        # (b) no private attribute anywhere
        privates = [e.tag for e in output.iterall() if e.tag.is_private]
        assert privates == [], name

        # (d) writes as a DICOM file, reads back, pixels unchanged, meta consistent
        data = _write(output)
        back = pydicom.dcmread(io.BytesIO(data))
        assert back.SOPInstanceUID == output.SOPInstanceUID
        assert back.file_meta.MediaStorageSOPInstanceUID == back.SOPInstanceUID
        assert back.file_meta.MediaStorageSOPClassUID == original.SOPClassUID
        assert back.preamble == b"\x00" * 128
        assert "SourceApplicationEntityTitle" not in back.file_meta
        if "PixelData" in original:
            assert back.PixelData == original.PixelData, name

        # no identifying string or source instance UID anywhere in the written file
        leaks = [
            v
            for v in _leak_candidates(original, shifted_dates=shift_dates)
            if v.encode("latin-1", "ignore") in data
        ]
        assert leaks == [], f"{name} leaks {leaks}"

    # the inputs exercise every kind of action of the table, so the checks above are real
    for action in ("X", "Z", "D", "U", "X/Z", "X/D", "Z/D", "X/Z/D", "X/Z/U*"):
        assert seen[action] > 0, f"no input exercised action {action}: {seen}"
    for kind in ("private", "curve/overlay", "K", "U-unlisted", "K-registry-uid", "D-subtree"):
        assert seen[kind] > 0, f"no input exercised {kind}: {seen}"
    if shift_dates:
        for kind in ("date-shifted", "date-shifted-K", "time-kept"):
            assert seen[kind] > 0, f"no input exercised {kind}: {seen}"


def test_identifying_instance_spot_checks(identifying_pair) -> None:
    """Literal expectations on the hand-built instance, independent of the checker
    (plain Basic Profile; the dates option has its own spot checks below)."""
    original = identifying_pair[1]
    out = deidentify(original, uid_secret=SECRET, shift_dates=False)
    for keyword in (
        "InstitutionAddress",
        "OtherPatientIDs",
        "OtherPatientIDsSequence",
        "OtherPatientNames",
        "PatientAddress",
        "PatientTelephoneNumbers",
        "PatientAge",
        "PatientSize",
        "PatientWeight",
        "PerformingPhysicianName",
        "NameOfPhysiciansReadingStudy",
        "PhysiciansOfRecord",
        "ImageComments",
        "IconImageSequence",
        "RequestAttributesSequence",
        "ReferencedPatientSequence",
        "OperatorIdentificationSequence",
        "IssuerOfPatientID",
        "DerivationDescription",
        "AdditionalPatientHistory",
        "PatientComments",
        "MilitaryRank",
        "EthnicGroup",
        "Occupation",
    ):
        assert keyword not in out, keyword
    assert 0xFFFCFFFC not in out
    for keyword in ("AccessionNumber", "StudyID", "PatientBirthDate", "PatientSex"):
        assert out[keyword].value == "", keyword
    assert out.ReferringPhysicianName == ""
    assert out.StudyDate == "" and out.StudyTime == ""
    assert out.ReferencedStudySequence == Sequence([])
    assert out.InstitutionCodeSequence == Sequence([])
    assert out.InstitutionName == "ANONYMIZED"
    assert out.OperatorsName == "ANONYMIZED"
    assert out.DeviceSerialNumber == "ANONYMIZED"
    assert out.SeriesDate == "19000101"
    assert out.VerifyingObserverSequence[0].VerifyingObserverName == "ANONYMIZED"
    assert out.VerifyingObserverSequence[0].VerificationDateTime == "19000101000000"
    assert out.VerifyingObserverSequence[0].VerifyingObserverIdentificationCodeSequence == []
    person_code = out.VerifyingObserverSequence[0].PersonIdentificationCodeSequence[0]
    assert (person_code.CodeValue, person_code.CodeMeaning) == ("ANONYMIZED", "ANONYMIZED")
    assert not [e for e in out if e.tag.group in (0x5000, 0x6000)]
    assert out.Manufacturer == "ACME" and out.Modality == "CT"  # not in the table: kept
    assert out.AcquisitionUID == uid_map(original.AcquisitionUID, uid_secret=SECRET)
    assert out.ImageType == original.ImageType
    assert "Smith" not in str(out) and "MRN-00412977" not in str(out)


# ---------------------------------------------------------------------------------------
# Retain Longitudinal Temporal Information with Modified Dates Option (113107)


def test_modified_dates_spot_checks(identifying_pair) -> None:
    """Literal expectations: every date moves back by the patient's shift, times stay."""
    original = identifying_pair[1]
    out = deidentify(original, uid_secret=SECRET)
    shift = date_shift_days(original.PatientID, uid_secret=SECRET)
    assert 1 <= shift <= 3650
    moved = datetime.date(2024, 3, 11) - datetime.timedelta(days=shift)
    day = moved.strftime("%Y%m%d")
    # Z (StudyDate), X/D (SeriesDate), X/Z (AcquisitionDate), Z/D (ContentDate), X/Z/D (DT)
    for keyword in ("StudyDate", "SeriesDate", "AcquisitionDate", "ContentDate"):
        assert out[keyword].value == day, keyword
    assert out.AcquisitionDateTime == day + "101500"
    for keyword in ("StudyTime", "SeriesTime", "AcquisitionTime", "ContentTime"):
        assert out[keyword].value == "101500", keyword
    # a DT inside a D sequence: shifted too, its time part kept
    verified = datetime.date(2024, 3, 12) - datetime.timedelta(days=shift)
    assert out.VerifyingObserverSequence[0].VerificationDateTime == (
        verified.strftime("%Y%m%d") + "093000"
    )
    # age is identifying: the birth date stays empty, birth time removed
    assert out.PatientBirthDate == "" and "PatientBirthTime" not in out
    assert out.LongitudinalTemporalInformationModified == "MODIFIED"
    codes = [
        (i.CodeValue, i.CodingSchemeDesignator) for i in out.DeidentificationMethodCodeSequence
    ]
    assert ("113107", "DCM") in codes and ("113100", "DCM") in codes
    assert "20240311" not in str(out) and "20240312" not in str(out)


def _study_of(ds: Dataset, *, study_uid: str, when: str) -> Dataset:
    """A copy of ``ds`` as an instance of another study of the same patient on ``when``."""
    other = copy.deepcopy(ds)
    other.StudyInstanceUID = study_uid
    other.SeriesInstanceUID = study_uid + ".1"
    other.SOPInstanceUID = study_uid + ".1.1"
    other.StudyDate = other.SeriesDate = other.ContentDate = when
    other.AcquisitionDateTime = when + "083000"
    return other


def test_two_studies_of_one_patient_keep_their_interval(identifying_pair) -> None:
    first = _study_of(
        identifying_pair[0], study_uid="1.2.826.0.1.3680043.9.7001.5", when="20230105"
    )
    second = _study_of(
        identifying_pair[0], study_uid="1.2.826.0.1.3680043.9.7001.6", when="20240229"
    )
    a, b = (deidentify(ds, uid_secret=SECRET) for ds in (first, second))
    assert a.PatientID == b.PatientID
    interval = datetime.date(2024, 2, 29) - datetime.date(2023, 1, 5)

    def day(value: str) -> datetime.date:
        return datetime.datetime.strptime(value[:8], "%Y%m%d").date()

    for keyword in ("StudyDate", "SeriesDate", "ContentDate", "AcquisitionDateTime"):
        assert day(b[keyword].value) - day(a[keyword].value) == interval, keyword
        assert a[keyword].value != first[keyword].value, keyword
    shift = datetime.date(2023, 1, 5) - day(a.StudyDate)
    assert shift.days == date_shift_days(first.PatientID, uid_secret=SECRET)


def test_date_shift_depends_on_patient_and_project(identifying_pair) -> None:
    ids = [f"MRN-{n:05d}" for n in range(40)]
    here = [date_shift_days(i, uid_secret=SECRET) for i in ids]
    there = [date_shift_days(i, uid_secret=OTHER_SECRET) for i in ids]
    assert all(1 <= d <= 3650 for d in here + there)
    assert here == [date_shift_days(i, uid_secret=SECRET) for i in ids]  # stable
    assert len(set(here)) > 30  # spread over patients, not one constant
    assert sum(a != b for a, b in zip(here, there, strict=True)) >= 38  # per project
    original = identifying_pair[0]
    a = deidentify(original, uid_secret=SECRET)
    b = deidentify(original, uid_secret=OTHER_SECRET)
    assert date_shift_days(original.PatientID, uid_secret=SECRET) != date_shift_days(
        original.PatientID, uid_secret=OTHER_SECRET
    )
    assert a.StudyDate != b.StudyDate
    # a blank PatientID takes the study, like the pseudonym
    blank = copy.deepcopy(original)
    blank.PatientID = ""
    assert deidentify(blank, uid_secret=SECRET).StudyDate == _expected_shift(
        original.StudyDate,
        "DA",
        date_shift_days("", uid_secret=SECRET, study_instance_uid=original.StudyInstanceUID),
    )


@pytest.mark.parametrize(
    ("keyword", "value", "expected"),
    [
        ("StudyDate", "2024", ""),  # Z, not a full date: the profile's action
        ("SeriesDate", "20241399", "19000101"),  # X/D, no such day: the dummy
        ("AcquisitionDateTime", "2024", "19000101000000"),  # X/Z/D, DT without a day
        ("InstanceCreationDate", "garbage", ""),  # kept by the profile: emptied, not leaked
        ("AcquisitionDateTime", "20240311101500.123456+0100", None),  # suffix kept
        ("CalibrationDate", ["20240101", "20240201"], None),  # every value of a VM 2
    ],
)
@pytest.mark.filterwarnings("ignore:Invalid value for VR DA")
def test_odd_dates(identifying_pair, keyword, value, expected) -> None:
    original = copy.deepcopy(identifying_pair[0])
    setattr(original, keyword, value)
    out = deidentify(original, uid_secret=SECRET)
    shift = date_shift_days(original.PatientID, uid_secret=SECRET)
    if expected is None:
        vr = original[keyword].VR
        expected = _expected_shift(original[keyword].value, vr, shift)
        assert expected is not None and _values(expected) != _values(original[keyword].value)
    assert _values(out[keyword].value) == _values(expected)


def test_shift_dates_off_gives_the_basic_profile(identifying_pair) -> None:
    out = deidentify(identifying_pair[0], uid_secret=SECRET, shift_dates=False)
    assert out.StudyDate == "" and out.SeriesDate == "19000101" and out.StudyTime == ""
    assert "LongitudinalTemporalInformationModified" not in out
    codes = [i.CodeValue for i in out.DeidentificationMethodCodeSequence]
    assert "113107" not in codes


def test_kept_values_are_shared_not_copied_and_input_untouched(phantom_pair) -> None:
    """Pixel Data of the output is the input's bytes object (no copy), and changing the
    output does not reach the input."""
    data = _write(phantom_pair[0])
    original = pydicom.dcmread(io.BytesIO(data))
    out = deidentify(original, uid_secret=SECRET)
    assert out.PixelData is original.PixelData
    before = copy.deepcopy(original)
    out.ImageType = ["DERIVED"]
    out.Manufacturer = "changed"
    out.PixelSpacing = [9, 9]
    assert original == before


# ---------------------------------------------------------------------------------------
# (c) UID consistency


def _series_uids(ds: Dataset) -> tuple[str, str, str]:
    return ds.StudyInstanceUID, ds.SeriesInstanceUID, ds.FrameOfReferenceUID


@pytest.mark.parametrize("source", ["identifying_pair", "phantom_pair", "pydicom_series"])
def test_instances_of_one_series_stay_together(source, request) -> None:
    if source == "pydicom_series":
        first = _read_pydicom_file("dicomdirtests/77654033/CT2/17106")
        second = _read_pydicom_file("dicomdirtests/77654033/CT2/17136")
    else:
        first, second = request.getfixturevalue(source)
    assert _series_uids(first) == _series_uids(second)  # precondition of the test
    out1, out2 = (deidentify(ds, uid_secret=SECRET) for ds in (first, second))
    assert _series_uids(out1) == _series_uids(out2)
    assert out1.SOPInstanceUID != out2.SOPInstanceUID
    assert out1.PatientID == out2.PatientID and out1.PatientName == out2.PatientName
    assert set(_series_uids(out1)).isdisjoint(_series_uids(first))


def test_references_between_instances_resolve(identifying_pair) -> None:
    first, second = identifying_pair
    out1, out2 = (deidentify(ds, uid_secret=SECRET) for ds in identifying_pair)
    assert second.ReferencedImageSequence[0].ReferencedSOPInstanceUID == first.SOPInstanceUID
    assert out2.ReferencedImageSequence[0].ReferencedSOPInstanceUID == out1.SOPInstanceUID
    assert out2.SourceImageSequence[0].ReferencedSOPInstanceUID == out1.SOPInstanceUID
    assert out2.ReferencedImageSequence[0].ReferencedSOPClassUID == pydicom.uid.CTImageStorage


def test_references_inside_sr_content_tree_are_mapped() -> None:
    original = _read_pydicom_file("test-SR.dcm")
    out = deidentify(original, uid_secret=SECRET)
    source: list[str] = []
    mapped: list[str] = []
    original.walk(
        lambda _d, e: source.append(e.value) if e.keyword == "ReferencedSOPInstanceUID" else None
    )
    out.walk(
        lambda _d, e: mapped.append(e.value) if e.keyword == "ReferencedSOPInstanceUID" else None
    )
    assert source, "the SR should reference images"
    assert mapped == [uid_map(uid, uid_secret=SECRET) for uid in source]


def test_same_secret_same_uids_other_secret_different(identifying_pair) -> None:
    original = identifying_pair[1]
    a1 = deidentify(original, uid_secret=SECRET)
    a2 = deidentify(original, uid_secret=SECRET)
    b = deidentify(original, uid_secret=OTHER_SECRET)
    keys = ("StudyInstanceUID", "SeriesInstanceUID", "SOPInstanceUID", "FrameOfReferenceUID")
    assert [a1[k].value for k in keys] == [a2[k].value for k in keys]
    for key in keys:
        assert a1[key].value != b[key].value, key
    assert a1.PatientID == a2.PatientID != b.PatientID
    assert _write(a1) == _write(a2)  # byte-identical: longitudinally consistent


def test_new_uids_are_valid(identifying_pair) -> None:
    out = deidentify(identifying_pair[1], uid_secret=SECRET)
    uids: list[str] = []
    out.walk(lambda _d, e: uids.extend(map(str, _values(e.value))) if e.VR == "UI" else None)
    uids.append(out.file_meta.MediaStorageSOPInstanceUID)
    assert len(uids) > 10
    for value in uids:
        assert len(value) <= 64 and UID_RE.match(value), value
        assert UID(value).is_valid, value


def test_uid_map_properties() -> None:
    source = "1.2.840.113619.2.55.3.604688119.971.1097761216.563"
    mapped = uid_map(source, uid_secret=SECRET)
    assert mapped.startswith("2.25.") and UID_RE.match(mapped) and len(mapped) <= 44
    assert uid_map(source + "\x00", uid_secret=SECRET) == mapped  # padding ignored
    assert uid_map(source, uid_secret=OTHER_SECRET) != mapped
    assert uid_map(source + "1", uid_secret=SECRET) != mapped
    # the 2.25 integer is an RFC 9562 UUIDv8
    value = int(mapped.removeprefix("2.25."))
    assert (value >> 76) & 0xF == 8 and (value >> 62) & 0x3 == 0b10
    many = {uid_map(generate_uid(entropy_srcs=[str(i)]), uid_secret=SECRET) for i in range(500)}
    assert len(many) == 500
    with pytest.raises(ValueError, match="uid_secret"):
        uid_map(source, uid_secret="")
    with pytest.raises(ValueError, match="uid"):
        uid_map("  ", uid_secret=SECRET)


# ---------------------------------------------------------------------------------------
# errors and arguments


def test_dataset_without_sop_instance_uid_is_refused(identifying_pair) -> None:
    broken = copy.deepcopy(identifying_pair[0])
    del broken.SOPInstanceUID
    with pytest.raises(DeidentificationError, match="SOPInstanceUID") as caught:
        deidentify(broken, uid_secret=SECRET)
    assert isinstance(caught.value, ImagingError)


def test_malformed_element_is_refused_not_crashing() -> None:
    ds = Dataset()
    ds.SOPClassUID = pydicom.uid.CTImageStorage
    ds.SOPInstanceUID = "1.2.826.0.1.3680043.9.7001.3"
    tag = Tag("ReferencedImageSequence")
    ds._dict[tag] = RawDataElement(tag, "SQ", 5, b"\x01\x02\x03\x04\x05", 0, True, True)
    with pytest.raises(DeidentificationError, match="malformed"):
        deidentify(ds, uid_secret=SECRET)


def test_bad_arguments_are_refused(identifying_pair) -> None:
    with pytest.raises(ValueError, match="uid_secret"):
        deidentify(identifying_pair[0], uid_secret="")
    with pytest.raises(ValueError, match="patient_id_prefix"):
        deidentify(identifying_pair[0], uid_secret=SECRET, patient_id_prefix="A^B")
    with pytest.raises(TypeError):
        deidentify("not a dataset", uid_secret=SECRET)  # type: ignore[arg-type]


def test_blank_patient_id_gets_a_pseudonym_per_study(identifying_pair) -> None:
    a = copy.deepcopy(identifying_pair[0])
    b = copy.deepcopy(identifying_pair[0])
    a.PatientID = b.PatientID = ""
    b.StudyInstanceUID = "1.2.826.0.1.3680043.9.7001.2000"
    out_a, out_b = deidentify(a, uid_secret=SECRET), deidentify(b, uid_secret=SECRET)
    assert out_a.PatientID != out_b.PatientID
    assert out_a.PatientID.startswith("ANON-")


# ---------------------------------------------------------------------------------------
# the transcribed table


def test_profile_table_transcription() -> None:
    assert len(BASIC_PROFILE_ACTIONS) >= 450
    for tag in BASIC_PROFILE_ACTIONS:
        get_entry(tag)  # every tag is a real DICOM attribute (KeyError otherwise)
    # spot checks against PS3.15 Table E.1-1
    expected = {
        "PatientName": "Z",
        "PatientID": "Z",
        "PatientBirthDate": "Z",
        "PatientSex": "Z",
        "PatientAge": "X",
        "OtherPatientIDs": "X",
        "AccessionNumber": "Z",
        "StudyDate": "Z",
        "SeriesDate": "X/D",
        "ContentDate": "Z/D",
        "AcquisitionDateTime": "X/Z/D",
        "InstitutionName": "X/Z/D",
        "InstitutionAddress": "X",
        "ReferringPhysicianName": "Z",
        "StudyInstanceUID": "U",
        "SeriesInstanceUID": "U",
        "SOPInstanceUID": "U",
        "FrameOfReferenceUID": "U",
        "ReferencedSOPInstanceUID": "U",
        "MediaStorageSOPInstanceUID": "U",
        "ReferencedImageSequence": "X/Z/U*",
        "SourceImageSequence": "X/Z/U*",
        "ContentSequence": "D",
        "IconImageSequence": "X",
        "StudyDescription": "X",
        "ProtocolName": "X/D",
        "DeviceSerialNumber": "X/Z/D",
    }
    for keyword, action in expected.items():
        assert BASIC_PROFILE_BY_KEYWORD[keyword] == action, keyword


@pytest.mark.parametrize(("action", "is_sequence"), list(COMPOUND_POLICY))
def test_compound_actions_resolve_to_the_documented_choice(action, is_sequence) -> None:
    assert resolve_action(action, is_sequence=is_sequence) == COMPOUND_POLICY[(action, is_sequence)]


# ---------------------------------------------------------------------------------------
# (e) burned-in text


def _image(sop_class: str, modality: str | None = "CT", **attributes) -> Dataset:
    ds = Dataset()
    ds.SOPClassUID = sop_class
    ds.SOPInstanceUID = "1.2.3.4"
    if modality is not None:
        ds.Modality = modality
    for keyword, value in attributes.items():
        setattr(ds, keyword, value)
    return ds


CT, MR, SC = pydicom.uid.CTImageStorage, pydicom.uid.MRImageStorage, "1.2.840.10008.5.1.4.1.1.7"
US, US_MF = pydicom.uid.UltrasoundImageStorage, pydicom.uid.UltrasoundMultiFrameImageStorage
SC_TRUE_COLOR = pydicom.uid.MultiFrameTrueColorSecondaryCaptureImageStorage

BURNED_IN_CASES = [
    # (case, dataset, expected reason substring or None)
    ("plain CT", _image(CT), None),
    ("plain MR", _image(MR, "MR"), None),
    ("CT flagged NO", _image(CT, BurnedInAnnotation="NO"), None),
    ("CT flagged YES", _image(CT, BurnedInAnnotation="YES"), "BurnedInAnnotation is YES"),
    ("flag with padding", _image(MR, "MR", BurnedInAnnotation="YES "), "BurnedInAnnotation"),
    ("SC unflagged", _image(SC, "OT"), "Secondary capture"),
    ("SC flagged NO", _image(SC, "OT", BurnedInAnnotation="NO"), None),
    ("SC flagged YES", _image(SC, "OT", BurnedInAnnotation="YES"), "BurnedInAnnotation"),
    ("multi-frame SC", _image(SC_TRUE_COLOR, "OT"), "Secondary capture"),
    ("ConversionType on MR", _image(MR, "MR", ConversionType="SD"), "ConversionType SD"),
    ("US unflagged", _image(US, "US"), "Ultrasound"),
    ("US multi-frame, no modality", _image(US_MF, None), "Ultrasound"),
    ("US modality, other class", _image(SC, "US", BurnedInAnnotation="NO"), None),
    ("US flagged NO", _image(US, "US", BurnedInAnnotation="NO"), None),
    ("screen save", _image(CT, ImageType=["DERIVED", "SECONDARY", "SCREEN SAVE"]), "SCREEN SAVE"),
    (
        "screen save flagged NO",
        _image(CT, ImageType=["DERIVED", "SECONDARY", "SCREEN SAVE"], BurnedInAnnotation="NO"),
        "SCREEN SAVE",
    ),
    ("dose info", _image(CT, ImageType=["DERIVED", "SECONDARY", "DOSE INFO"]), "DOSE INFO"),
    ("dose report", _image(CT, SeriesDescription="Dose Report"), "dose report"),
    ("patient protocol", _image(CT, SeriesDescription="PATIENT PROTOCOL"), "dose report"),
    ("PDF", _image(pydicom.uid.EncapsulatedPDFStorage, "DOC"), "Encapsulated document"),
]


@pytest.mark.parametrize(
    ("ds", "expected"),
    [(ds, expected) for _, ds, expected in BURNED_IN_CASES],
    ids=[case for case, _, _ in BURNED_IN_CASES],
)
def test_burned_in_text_risk_table(ds, expected) -> None:
    reason = burned_in_text_risk(ds)
    if expected is None:
        assert reason is None
    else:
        assert reason is not None and expected in reason


@pytest.mark.parametrize(
    ("name", "quarantined"),
    [
        ("CT_small.dcm", False),
        ("MR_small.dcm", False),
        ("ExplVR_BigEnd.dcm", True),  # ultrasound
        ("examples_jpeg2k.dcm", True),  # ultrasound
        ("SC_rgb_small_odd.dcm", True),  # secondary capture, ConversionType SYN
        ("JPEG2000.dcm", True),  # secondary capture, ConversionType WSD
    ],
)
def test_burned_in_text_risk_on_real_files(name, quarantined) -> None:
    assert (burned_in_text_risk(_read_pydicom_file(name)) is not None) is quarantined


@pytest.mark.parametrize(
    ("description", "expected"),
    [
        ("T1c AXIAL post", "T1c AXIAL post"),
        ("FLAIR for John Smith", "FLAIR"),
        ("Dr Jones chest 1.25mm", "chest 1.25mm"),
        ("Smith^John", ""),
        ("", ""),
    ],
)
def test_clean_descriptors_keep_only_vocabulary_words(description, expected) -> None:
    assert clean_descriptor(description) == expected


def test_clean_descriptors_option_is_recorded_and_can_be_turned_off(identifying_pair) -> None:
    ds = copy.deepcopy(identifying_pair[0])
    ds.SeriesDescription = "T2 FLAIR axial for Jane Doe"
    out = deidentify(ds, uid_secret=SECRET)
    assert out.SeriesDescription == "T2 FLAIR axial"
    codes = [
        (i.CodeValue, i.CodingSchemeDesignator, i.CodeMeaning)
        for i in out.DeidentificationMethodCodeSequence
    ]
    assert CLEAN_DESCRIPTORS_CODE in codes
    strict = deidentify(ds, uid_secret=SECRET, clean_descriptors=False)
    assert "SeriesDescription" not in strict
    codes = [i.CodeValue for i in strict.DeidentificationMethodCodeSequence]
    assert CLEAN_DESCRIPTORS_CODE[0] not in codes
