"""De-identification of DICOM datasets on ingest.

Applies the DICOM PS3.15 Annex E Basic Application Level Confidentiality Profile
(Table E.1-1, transcribed in :mod:`imaging.deid_profile`) to a pydicom ``Dataset``,
replaces instance UIDs with a keyed hash that is stable within a project, records that
the patient identity was removed, and flags files whose pixels may carry burned-in text
so ingest can hold them in quarantine. Pure functions: no Django ORM, no network.

Public API: :func:`deidentify`, :func:`uid_map`, :func:`burned_in_text_risk`,
:class:`DeidentificationError`. ``docs/deidentification.md`` explains the choices.
"""

from __future__ import annotations

import copy
import datetime
import hashlib
import hmac
import re
from dataclasses import dataclass

from pydicom import Dataset, config
from pydicom.datadict import dictionary_VR
from pydicom.dataelem import DataElement, RawDataElement, empty_value_for_VR
from pydicom.dataset import FileMetaDataset
from pydicom.multival import MultiValue
from pydicom.sequence import Sequence
from pydicom.tag import BaseTag, Tag
from pydicom.uid import (
    PYDICOM_IMPLEMENTATION_UID,
    UID,
    EncapsulatedCDAStorage,
    EncapsulatedPDFStorage,
    ExplicitVRLittleEndian,
    MultiFrameGrayscaleByteSecondaryCaptureImageStorage,
    MultiFrameGrayscaleWordSecondaryCaptureImageStorage,
    MultiFrameSingleBitSecondaryCaptureImageStorage,
    MultiFrameTrueColorSecondaryCaptureImageStorage,
    SecondaryCaptureImageStorage,
    UID_dictionary,
    UltrasoundImageStorage,
    UltrasoundMultiFrameImageStorage,
)

from imaging.deid_profile import BASIC_PROFILE_ACTIONS, CURVE_GROUP_BASE, OVERLAY_GROUP_BASE
from imaging.exceptions import ImagingError

__all__ = [
    "BASIC_PROFILE_CODE",
    "DEIDENTIFICATION_METHOD",
    "MODIFIED_DATES_CODE",
    "DeidentificationError",
    "burned_in_text_risk",
    "date_shift_days",
    "deidentify",
    "resolve_action",
    "uid_map",
]


class DeidentificationError(ImagingError):
    """A dataset cannot be de-identified (e.g. it has no SOPInstanceUID)."""

    code = "deidentification_failed"


#: Values written to DeidentificationMethod (0012,0063). LO is limited to 64 characters,
#: so the description is split into two values (the attribute is VM 1-n).
DEIDENTIFICATION_METHOD: tuple[str, ...] = (
    "DICOM PS3.15 Annex E Basic Application Confidentiality Profile",
    "UIDs replaced by keyed hash (HMAC-SHA256, 2.25 root)",
)
#: CID 7050 code for the Basic Profile, written to DeidentificationMethodCodeSequence.
BASIC_PROFILE_CODE: tuple[str, str, str] = (
    "113100",
    "DCM",
    "Basic Application Confidentiality Profile",
)

_DUMMY_TEXT = "ANONYMIZED"
#: Dummy value per VR for the D action ("non-zero length, consistent with the VR").
_DUMMY_BY_VR: dict[str, object] = {
    "AE": _DUMMY_TEXT,
    "AS": "000Y",
    "CS": _DUMMY_TEXT,
    "DA": "19000101",
    "DS": "0",
    "DT": "19000101000000",
    "IS": "0",
    "LO": _DUMMY_TEXT,
    "LT": _DUMMY_TEXT,
    "PN": _DUMMY_TEXT,
    "SH": _DUMMY_TEXT,
    "ST": _DUMMY_TEXT,
    "TM": "000000",
    "UC": _DUMMY_TEXT,
    "UR": _DUMMY_TEXT,
    "UT": _DUMMY_TEXT,
    "FL": 0.0,
    "FD": 0.0,
    "SL": 0,
    "SS": 0,
    "SV": 0,
    "UL": 0,
    "US": 0,
    "UV": 0,
    "OB": b"\x00\x00",
    "OD": b"\x00" * 8,
    "OF": b"\x00" * 4,
    "OL": b"\x00" * 4,
    "OV": b"\x00" * 8,
    "OW": b"\x00\x00",
    "UN": b"\x00\x00",
}
#: VRs that can hold free text, names, dates or times: inside a sequence whose action
#: is D (e.g. Content Sequence) every such value is replaced by a dummy.
_FREE_TEXT_VRS = frozenset(
    {"AE", "AS", "DA", "DT", "LO", "LT", "PN", "SH", "ST", "TM", "UC", "UR", "UT"}
)
#: Coded-entry attributes (Code Sequence Macro) kept inside SR content trees and
#: graphic annotations: they name concepts from controlled terminologies, not people.
_CODED_ENTRY_KEYWORDS = frozenset(
    {
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
)
_CODED_CONTENT_SEQUENCES = frozenset({Tag("ContentSequence"), Tag("GraphicAnnotationSequence")})
#: UI attributes not listed in Table E.1-1 whose values name registered things (a
#: class, a coding scheme, a template), not instances: they are kept as they are.
_REGISTRY_UID_KEYWORDS = frozenset(
    {
        "CodingSchemeUID",
        "ContextUID",
        "ContextGroupExtensionCreatorUID",
        "CreatorVersionUID",
        "MappingResourceUID",
        "PrivateInformationCreatorUID",
        "SegmentationTemplateUID",
    }
)

#: CID 7050 code for the Retain Longitudinal Temporal Information with Modified Dates
#: Option (PS3.15 E.3.6), recorded when dates are shifted.
MODIFIED_DATES_CODE: tuple[str, str, str] = (
    "113107",
    "DCM",
    "Retain Longitudinal Temporal Information Modified Dates Option",
)
#: Bounds of the per-patient date shift, in days (dates move back by 1..3650 days).
DATE_SHIFT_MAX_DAYS = 3650
_DATE_VRS = frozenset({"DA", "DT"})
#: Stays empty even with shifted dates: a birth date gives the age, which identifies.
_TAG_PATIENT_BIRTH_DATE = Tag("PatientBirthDate")
#: Table E.1-1 actions resolved once per tag: (plain element, sequence).
_RESOLVED_ACTIONS: dict[int, tuple[str, str]] = {}
_TAG_PATIENT_NAME = Tag("PatientName")
_TAG_PATIENT_IDENTITY_REMOVED = Tag("PatientIdentityRemoved")
_TAG_LTI_MODIFIED = Tag("LongitudinalTemporalInformationModified")
_TAG_PATIENT_ID = Tag("PatientID")
_PREFIX_RE = re.compile(r"^[A-Za-z0-9_-]{1,32}$")


def uid_map(uid: str, *, uid_secret: str) -> str:
    """Map a source UID to the project's UID for it.

    The new UID is ``2.25.<n>`` where ``n`` is the first 128 bits of
    HMAC-SHA256(uid_secret, uid) with the version/variant bits of an RFC 9562 UUIDv8
    set, so it is a valid UUID-derived UID of at most 44 characters. The same source
    UID always gives the same result for one secret (a project) and, with overwhelming
    probability, a different one for another secret; the source cannot be recovered
    without the secret.

    Args:
        uid: the source UID; trailing NUL/space padding is ignored.
        uid_secret: the project's key (``Project.uid_secret``).

    Raises:
        ValueError: ``uid_secret`` or ``uid`` is empty.
    """
    if not uid_secret:
        raise ValueError("uid_secret must be a non-empty string")
    source = str(uid).strip("\x00 ")
    if not source:
        raise ValueError("uid must be a non-empty UID string")
    digest = bytearray(
        hmac.new(uid_secret.encode("utf-8"), source.encode("utf-8"), hashlib.sha256).digest()[:16]
    )
    digest[6] = (digest[6] & 0x0F) | 0x80  # UUID version 8 (custom)
    digest[8] = (digest[8] & 0x3F) | 0x80  # RFC 9562 variant
    return f"2.25.{int.from_bytes(digest, 'big')}"


def resolve_action(action: str, *, is_sequence: bool) -> str:
    """Resolve a Table E.1-1 action (possibly compound) to the one this platform applies.

    Without per-IOD module tables we cannot know whether an attribute is Type 1, 2 or 3
    in the object at hand, so compound actions take the option that is legal in every
    IOD and carries no identifying information (see docs/deidentification.md):

    - plain elements: ``X/Z`` -> ``Z``; ``X/D``, ``Z/D``, ``X/Z/D`` -> ``D``;
    - sequences: ``X/Z/U*`` -> ``U*`` (keep the items, replace their UIDs, clean them
      recursively, so references still resolve); ``X/Z``, ``X/Z/D`` -> ``Z`` (an empty
      sequence); ``X/D`` -> ``X`` (Operator Identification Sequence, the only such
      sequence, whose dummy would need a made-up person);
    - single actions are returned unchanged.
    """
    if is_sequence:
        return {"X/Z/U*": "U*", "X/Z": "Z", "X/Z/D": "Z", "X/D": "X", "Z/D": "Z"}.get(
            action, action
        )
    return {"X/Z": "Z", "X/D": "D", "Z/D": "D", "X/Z/D": "D", "X/Z/U*": "Z"}.get(action, action)


_RESOLVED_ACTIONS.update(
    {
        tag: (resolve_action(action, is_sequence=False), resolve_action(action, is_sequence=True))
        for tag, action in BASIC_PROFILE_ACTIONS.items()
    }
)


@dataclass(frozen=True)
class _Context:
    uid_secret: str
    #: Days every date moves back (Modified Dates Option); 0 when the option is off.
    shift_days: int = 0


# Clean Descriptors Option (PS3.15 E.3.5), restricted to descriptors the AI and worklist
# need: a descriptor keeps only the words of this vocabulary (sequence names, planes,
# body parts, contrast words), so free text such as a name typed into a description
# cannot survive. Everything else the profile removes stays removed.
CLEAN_DESCRIPTOR_KEYWORDS = ("StudyDescription", "SeriesDescription", "ProtocolName")
_SAFE_DESCRIPTOR_WORDS = frozenset(
    """
    T1 T1C T1CE T1GD T1W T1WI T2 T2W T2WI FLAIR T2FLAIR DWI ADC SWI GRE PD PDW MPRAGE SPGR
    SE TSE FSE EPI DTI PERFUSION DSC DCE STIR POST PRE GD GAD CONTRAST C+ CE WITH WITHOUT
    AX AXIAL COR CORONAL SAG SAGITTAL 3D 2D MIP MPR THIN THICK VOL VOLUME
    CT MR MRI PET CHEST THORAX LUNG LUNGS ABDOMEN PELVIS HEAD BRAIN NECK SPINE
    LOW DOSE LDCT SCREENING HRCT ANGIO CTA KERNEL SOFT TISSUE BONE MEDIASTINUM WINDOW
    PHANTOM ROUTINE STANDARD SHARP SMOOTH AND OF
    """.split()
)
CLEAN_DESCRIPTORS_CODE = ("113105", "DCM", "Clean Descriptors Option")


def clean_descriptor(text: str) -> str:
    """Keep only vocabulary words (and numbers of up to 4 digits) of a descriptor."""
    kept = []
    for word in re.split(r"[\s_^/,;:|()\[\]-]+", text or ""):
        if word.upper() in _SAFE_DESCRIPTOR_WORDS or re.fullmatch(
            r"\d{1,4}(\.\d{1,3})?(MM)?", word.upper()
        ):
            kept.append(word)
    return " ".join(kept)[:64]


def deidentify(
    ds: Dataset,
    *,
    uid_secret: str,
    patient_id_prefix: str = "ANON",
    clean_descriptors: bool = True,
    shift_dates: bool = True,
) -> Dataset:
    """Return a de-identified copy of ``ds`` (the input is never modified).

    Applies the Basic Profile action of every attribute in Table E.1-1 at every
    sequence depth, removes all private attributes, curve (50xx) and overlay (60xx)
    groups, replaces instance UIDs with :func:`uid_map` (references inside sequences get
    the same mapping, so they still resolve), sets PatientID to
    ``<prefix>-<keyed hash of the source PatientID>`` and PatientName to
    ``<prefix>^<same hash>`` (one patient's studies stay together within a project),
    and records PatientIdentityRemoved, DeidentificationMethod and
    DeidentificationMethodCodeSequence. The result has fresh file meta information
    (MediaStorageSOPInstanceUID equals the new SOPInstanceUID) and a zeroed preamble;
    the same input and secret always give byte-identical output.

    With ``clean_descriptors`` (the default) the Clean Descriptors Option is applied to
    Study/Series descriptions and ProtocolName instead of removing them: only words of a
    fixed vocabulary survive (e.g. "T1c", "FLAIR", "AXIAL", "CHEST"), so MRI sequences can
    still be identified after de-identification; the option is recorded (113105).

    With ``shift_dates`` (the default) the Retain Longitudinal Temporal Information with
    Modified Dates Option is applied: every DA value and the date part of every DT value
    (those the profile would empty or dummy, those it keeps, and those in cleaned
    sequences) moves back by :func:`date_shift_days` of the source PatientID, the same
    for all of a patient's studies in a project, so intervals between them survive. Times
    of day (TM, the time part of DT) are kept. PatientBirthDate stays empty and
    attributes the profile removes stay removed. A date that cannot be parsed gets the
    profile's own action. The option is recorded (113107) and
    LongitudinalTemporalInformationModified is set to MODIFIED.

    It does not look at pixel data: call :func:`burned_in_text_risk` first. Pixel Data
    and other values the profile keeps are shared with the input, not copied (their
    bytes are immutable); elements that change are new objects.

    Raises:
        DeidentificationError: the dataset has no SOPInstanceUID or no SOP Class, or an
            element of it cannot be parsed.
        ValueError: ``uid_secret`` is empty or ``patient_id_prefix`` is not 1-32 of
            ``A-Z a-z 0-9 _ -``.
    """
    if not isinstance(ds, Dataset):
        raise TypeError(f"ds must be a pydicom Dataset, not {type(ds).__name__}")
    if not uid_secret:
        raise ValueError("uid_secret must be a non-empty string")
    if not _PREFIX_RE.match(patient_id_prefix):
        raise ValueError(
            "patient_id_prefix must be 1-32 characters from A-Z, a-z, 0-9, '_' and '-'"
        )
    sop_instance_uid = str(ds.get("SOPInstanceUID", "") or "").strip("\x00 ")
    if not sop_instance_uid:
        raise DeidentificationError(
            "The file has no SOPInstanceUID, so it cannot be de-identified consistently; "
            "check that it is a DICOM composite object."
        )
    file_meta = getattr(ds, "file_meta", None) or FileMetaDataset()
    sop_class_uid = ds.get("SOPClassUID") or file_meta.get("MediaStorageSOPClassUID")
    if not sop_class_uid:
        raise DeidentificationError(
            "The file has no SOPClassUID (nor MediaStorageSOPClassUID); "
            "it is not a DICOM composite object."
        )
    transfer_syntax = file_meta.get("TransferSyntaxUID") or ExplicitVRLittleEndian

    source_patient_id = str(ds.get("PatientID", "") or "").strip()
    study_uid = str(ds.get("StudyInstanceUID", "") or "").strip("\x00 ")
    # A blank PatientID would put every such file under one pseudonym; derive the
    # pseudonym from the study instead so unrelated studies stay apart.
    pseudonym_source = (
        f"PatientID={source_patient_id}" if source_patient_id else f"Study={study_uid}"
    )
    pseudonym = _keyed_hex(pseudonym_source, uid_secret=uid_secret)

    descriptors = {}
    if clean_descriptors:
        for keyword in CLEAN_DESCRIPTOR_KEYWORDS:
            cleaned = clean_descriptor(str(ds.get(keyword, "") or ""))
            if cleaned:
                descriptors[keyword] = cleaned

    ctx = _Context(
        uid_secret=uid_secret,
        shift_days=_shift_days_for(pseudonym_source, uid_secret) if shift_dates else 0,
    )
    try:
        out = _clean_copy(ds, ctx, dummy_subtree=False, keep_codes=False)
    except DeidentificationError:
        raise
    except Exception as exc:
        # pydicom parses elements lazily: a malformed element or sequence only fails
        # here (OSError, ValueError, struct.error...). The file is refused, not stored.
        raise DeidentificationError(
            f"The file could not be de-identified because an element is malformed: {exc}"
        ) from exc

    out[_TAG_PATIENT_ID] = _element(_TAG_PATIENT_ID, "LO", f"{patient_id_prefix}-{pseudonym}")
    out[_TAG_PATIENT_NAME] = _element(_TAG_PATIENT_NAME, "PN", f"{patient_id_prefix}^{pseudonym}")
    out.SOPClassUID = sop_class_uid
    out[_TAG_PATIENT_IDENTITY_REMOVED] = _element(_TAG_PATIENT_IDENTITY_REMOVED, "CS", "YES")
    codes = [BASIC_PROFILE_CODE]
    _record_method(out)
    if clean_descriptors:
        for keyword, value in descriptors.items():
            setattr(out, keyword, value)
        codes.append(CLEAN_DESCRIPTORS_CODE)
    if shift_dates:
        out[_TAG_LTI_MODIFIED] = _element(_TAG_LTI_MODIFIED, "CS", "MODIFIED")
        codes.append(MODIFIED_DATES_CODE)
    _record_codes(out, codes)

    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = UID(str(sop_class_uid))
    meta.MediaStorageSOPInstanceUID = UID(out.SOPInstanceUID)
    meta.TransferSyntaxUID = UID(str(transfer_syntax))
    meta.ImplementationClassUID = PYDICOM_IMPLEMENTATION_UID
    out.file_meta = meta
    out.preamble = b"\x00" * 128
    return out


def _keyed_hex(value: str, *, uid_secret: str) -> str:
    """16 upper-case hex digits of HMAC-SHA256(uid_secret, value): a short pseudonym."""
    mac = hmac.new(uid_secret.encode("utf-8"), value.encode("utf-8"), hashlib.sha256)
    return mac.hexdigest()[:16].upper()


def _is_repeating_group_removed(tag: BaseTag) -> bool:
    """Curve Data (50xx) and Overlay (60xx) groups: removed whole (see the docs)."""
    return tag.group % 2 == 0 and (tag.group & 0xFF00) in (CURVE_GROUP_BASE, OVERLAY_GROUP_BASE)


def date_shift_days(patient_id: str, *, uid_secret: str, study_instance_uid: str = "") -> int:
    """Days (1..3650) that the Modified Dates Option moves a patient's dates back.

    Derived from HMAC-SHA256(uid_secret, "date-shift:PatientID=<id>"): the same patient
    gets the same shift within a project (intervals between studies survive), another
    project gets an unrelated one, and the shift cannot be learned without the secret.
    When ``patient_id`` is blank it is derived from ``study_instance_uid`` instead, as
    the pseudonym is (unrelated studies without an ID do not share a shift).
    """
    if not uid_secret:
        raise ValueError("uid_secret must be a non-empty string")
    patient_id = str(patient_id or "").strip()
    source = (
        f"PatientID={patient_id}"
        if patient_id
        else f"Study={str(study_instance_uid or '').strip(chr(0) + ' ')}"
    )
    return _shift_days_for(source, uid_secret)


def _shift_days_for(pseudonym_source: str, uid_secret: str) -> int:
    mac = hmac.new(
        uid_secret.encode("utf-8"), f"date-shift:{pseudonym_source}".encode(), hashlib.sha256
    )
    return 1 + int.from_bytes(mac.digest()[:8], "big") % DATE_SHIFT_MAX_DAYS


def _shift_date(text: str, days: int) -> str | None:
    """``YYYYMMDD`` moved back by ``days``; None when ``text`` is not such a date."""
    if len(text) != 8 or not text.isdigit():
        return None
    try:
        day = datetime.date(int(text[:4]), int(text[4:6]), int(text[6:]))
        day -= datetime.timedelta(days=days)
    except (ValueError, OverflowError):
        return None
    return f"{day.year:04d}{day.month:02d}{day.day:02d}"


def _shifted_value(value: object, vr: str, days: int) -> object | None:
    """A DA/DT value (or each of a multi-value) with its date moved back by ``days``.

    DT keeps everything after the date (time, fraction, UTC offset). Empty values stay
    empty; None when any value is not a full date (the caller then applies the profile).
    """
    values = list(value) if isinstance(value, MultiValue | list | tuple) else [value]
    out = []
    for item in values:
        text = str(item if item is not None else "").strip()
        if not text:
            out.append("")
            continue
        head, rest = (text, "") if vr == "DA" else (text[:8], text[8:])
        shifted = _shift_date(head, days)
        if shifted is None:
            return None
        out.append(shifted + rest)
    return out if len(out) != 1 else out[0]


#: Dataset attributes describing how it was read (encoding, character set): copied to a
#: de-identified dataset so its unchanged raw elements are written back byte for byte.
_ENCODING_ATTRIBUTES = (
    "_parent_encoding",
    "_read_little",
    "_read_implicit",
    "_read_charset",
    "_is_little_endian",
    "_is_implicit_VR",
    "is_undefined_length_sequence_item",
)


def _element(tag: BaseTag | int, vr: str, value: object) -> DataElement:
    """A new element for a value this module made (mapped UID, dummy, shifted date):
    pydicom's per-value regex validation is skipped, it costs more than the rest of
    de-identification and these values are valid by construction."""
    return DataElement(tag, vr, value, validation_mode=config.IGNORE)


def _new_like(src: Dataset) -> Dataset:
    """An empty Dataset with the encoding state of ``src`` (not its elements)."""
    out = Dataset()
    state = src.__dict__
    for name in _ENCODING_ATTRIBUTES:
        if name in state:
            out.__dict__[name] = state[name]
    return out


def _shared(elem: DataElement | RawDataElement) -> DataElement | RawDataElement:
    """An element to put in the output unchanged without tying it to the input.

    Raw (not yet parsed) elements are immutable and shared as they are, so kept values,
    Pixel Data above all, are neither parsed nor copied. A parsed element is copied
    (shallow: its str/bytes/number value is immutable; multi-values are copied).
    """
    if isinstance(elem, RawDataElement):
        return elem
    if isinstance(elem.value, MultiValue | list):
        return copy.deepcopy(elem)
    return copy.copy(elem)


def _clean_copy(src: Dataset, ctx: _Context, *, dummy_subtree: bool, keep_codes: bool) -> Dataset:
    """Apply the profile to ``src``: a new Dataset, recursing into sequence items.

    ``src`` is not changed (beyond pydicom parsing an element on access). Attributes the
    profile keeps are shared (see :func:`_shared`); only sequences, UIDs, dates and the
    attributes the table names are looked at.

    ``dummy_subtree`` is set inside a sequence whose action is D: there every free-text,
    name, date and time value is replaced by a dummy (``keep_codes`` spares coded
    entries inside SR content and graphic annotations); with the Modified Dates Option
    dates there are shifted and times kept instead.
    """
    out = _new_like(src)
    shift = ctx.shift_days
    for tag in list(src.keys()):
        if tag.is_private or _is_repeating_group_removed(tag):
            continue
        raw = src.get_item(tag)
        vr = _effective_vr(raw)
        is_sequence = vr == "SQ"
        actions = _RESOLVED_ACTIONS.get(tag)
        if actions is None:
            if is_sequence:
                out[tag] = _sequence_copy(src[tag], ctx, dummy_subtree, keep_codes)
            elif vr == "UI":
                elem = src[tag]
                if _is_registry_uid_element(elem):
                    out[tag] = _shared(elem)
                else:
                    out[tag] = _element(tag, vr, _map_uid_value(elem.value, ctx))
            elif shift and vr in _DATE_VRS:
                elem = src[tag]
                shifted = None if elem.is_empty else _shifted_value(elem.value, vr, shift)
                if shifted is not None:
                    out[tag] = _element(tag, vr, shifted)
                elif elem.is_empty:
                    out[tag] = _shared(elem)
                else:  # not a date: it could only leak the real one
                    value = _DUMMY_BY_VR[vr] if dummy_subtree else empty_value_for_VR(vr)
                    out[tag] = _element(tag, vr, value)
            elif dummy_subtree and vr in _FREE_TEXT_VRS and not (shift and vr == "TM"):
                elem = src[tag]
                if not elem.is_empty and not (keep_codes and elem.keyword in _CODED_ENTRY_KEYWORDS):
                    out[tag] = _element(tag, vr, _DUMMY_BY_VR[vr])
                else:
                    out[tag] = _shared(elem)
            else:
                out[tag] = _shared(raw)
            continue

        resolved = actions[1] if is_sequence else actions[0]
        if resolved == "X":
            continue
        if shift and resolved in ("Z", "D") and not is_sequence:
            if vr in _DATE_VRS and tag != _TAG_PATIENT_BIRTH_DATE:
                elem = src[tag]
                shifted = None if elem.is_empty else _shifted_value(elem.value, vr, shift)
                if shifted is not None:
                    out[tag] = _element(tag, vr, shifted)
                    continue
            elif vr == "TM":  # the time of day survives a shift by whole days
                out[tag] = _shared(raw)
                continue
        if resolved == "Z":
            out[tag] = _element(tag, vr, empty_value_for_VR(vr))
        elif resolved == "D":
            if is_sequence:
                codes = keep_codes or tag in _CODED_CONTENT_SEQUENCES
                out[tag] = _sequence_copy(src[tag], ctx, True, codes)
            else:
                out[tag] = _element(tag, vr, _DUMMY_BY_VR.get(vr, _DUMMY_TEXT))
        elif resolved == "U":
            elem = src[tag]
            if elem.is_empty:
                out[tag] = _shared(elem)
            else:
                out[tag] = _element(tag, vr, _map_uid_value(elem.value, ctx))
        elif resolved == "U*":
            out[tag] = _sequence_copy(src[tag], ctx, dummy_subtree, keep_codes)
        else:  # pragma: no cover - the table holds only the actions handled above
            raise DeidentificationError(f"Unknown profile action {resolved!r} for {tag}")
    return out


def _sequence_copy(
    elem: DataElement, ctx: _Context, dummy_subtree: bool, keep_codes: bool
) -> DataElement:
    """A new SQ element whose items are the cleaned copies of ``elem``'s items."""
    items = [
        _clean_copy(item, ctx, dummy_subtree=dummy_subtree, keep_codes=keep_codes)
        for item in elem.value
    ]
    new = _element(elem.tag, "SQ", Sequence(items))
    new.is_undefined_length = elem.is_undefined_length
    return new


def _effective_vr(elem: DataElement | RawDataElement) -> str:
    """The element's VR, taking the dictionary VR where the file gave UN or none
    (implicit VR raw elements have none)."""
    if not elem.VR or elem.VR == "UN" or " or " in elem.VR:
        try:
            vr = dictionary_VR(elem.tag)
        except KeyError:
            return elem.VR or "UN"
        return vr.split(" or ")[0]
    return elem.VR


def _is_registry_uid_element(elem: DataElement) -> bool:
    """True for UI attributes naming classes, transfer syntaxes, coding schemes etc."""
    keyword = elem.keyword
    if "Class" in keyword or "TransferSyntax" in keyword or keyword in _REGISTRY_UID_KEYWORDS:
        return True
    values = elem.value if isinstance(elem.value, MultiValue) else [elem.value]
    return all(not v or str(v) in UID_dictionary for v in values)


def _map_uid_value(value: object, ctx: _Context) -> object:
    """Map one UID or each UID of a multi-valued element; empty values stay empty."""
    if isinstance(value, MultiValue | list | tuple):
        return [_map_one_uid(v, ctx) for v in value]
    return _map_one_uid(value, ctx)


def _map_one_uid(value: object, ctx: _Context) -> str:
    text = str(value or "").strip("\x00 ")
    return uid_map(text, uid_secret=ctx.uid_secret) if text else ""


def _record_method(out: Dataset) -> None:
    """Record the profile in DeidentificationMethod(+CodeSequence), keeping prior entries."""
    previous = out.get("DeidentificationMethod")
    methods: list[str] = []
    if previous:
        methods = [str(v) for v in (previous if isinstance(previous, MultiValue) else [previous])]
    for method in DEIDENTIFICATION_METHOD:
        if method not in methods:
            methods.append(method)
    out.DeidentificationMethod = methods


_CODE_TAGS = {k: Tag(k) for k in ("CodeValue", "CodingSchemeDesignator", "CodeMeaning")}


def _record_codes(out: Dataset, codes: list[tuple[str, str, str]]) -> None:
    """Add each of `codes` to DeidentificationMethodCodeSequence unless it is there already
    (the sequence is written once, whatever the number of codes)."""
    items = list(out.get("DeidentificationMethodCodeSequence") or [])
    present = {(item.get("CodeValue"), item.get("CodingSchemeDesignator")) for item in items}
    for code_value, scheme, meaning in codes:
        if (code_value, scheme) in present:
            continue
        present.add((code_value, scheme))
        item = _new_like(out)  # written in the dataset's encoding without re-checking it
        for keyword, vr, value in (
            ("CodeValue", "SH", code_value),
            ("CodingSchemeDesignator", "SH", scheme),
            ("CodeMeaning", "LO", meaning),
        ):
            item[_CODE_TAGS[keyword]] = _element(_CODE_TAGS[keyword], vr, value)
        items.append(item)
    out[_TAG_CODE_SEQUENCE] = _element(_TAG_CODE_SEQUENCE, "SQ", Sequence(items))


_TAG_CODE_SEQUENCE = Tag("DeidentificationMethodCodeSequence")


_SECONDARY_CAPTURE_CLASSES = frozenset(
    {
        SecondaryCaptureImageStorage,
        MultiFrameSingleBitSecondaryCaptureImageStorage,
        MultiFrameGrayscaleByteSecondaryCaptureImageStorage,
        MultiFrameGrayscaleWordSecondaryCaptureImageStorage,
        MultiFrameTrueColorSecondaryCaptureImageStorage,
    }
)
_ULTRASOUND_CLASSES = frozenset(
    {
        UltrasoundImageStorage,
        UltrasoundMultiFrameImageStorage,
        "1.2.840.10008.5.1.4.1.1.6",  # Ultrasound Image Storage (Retired)
        "1.2.840.10008.5.1.4.1.1.3",  # Ultrasound Multi-frame Image Storage (Retired)
        "1.2.840.10008.5.1.4.1.1.6.2",  # Enhanced US Volume Storage
    }
)
_ENCAPSULATED_DOCUMENT_CLASSES = frozenset({EncapsulatedPDFStorage, EncapsulatedCDAStorage})
_SCREEN_IMAGE_TYPES = ("SCREEN SAVE", "DOSE INFO")
_DOSE_SCREEN_DESCRIPTIONS = ("dose report", "dose info", "patient protocol", "dose summary")


def burned_in_text_risk(ds: Dataset) -> str | None:
    """Say why the pixels of ``ds`` may carry identifying text, or None when no rule fires.

    Header rules cannot clean text burned into pixels, so ingest holds such files in
    quarantine. Rules, first match wins:

    1. BurnedInAnnotation (0028,0301) is YES;
    2. a screen capture or dose screen: ImageType contains SCREEN SAVE or DOSE INFO, or
       SeriesDescription names a dose report / patient protocol (vendors label these
       inconsistently, so BurnedInAnnotation NO does not clear them);
    3. a Secondary Capture SOP Class, or any ConversionType, without
       BurnedInAnnotation NO;
    4. ultrasound (Modality US or an Ultrasound SOP Class) without BurnedInAnnotation NO;
    5. an encapsulated document (PDF, CDA), whose content no header rule can clean.
    """
    burned_in = str(ds.get("BurnedInAnnotation", "") or "").strip().upper()
    if burned_in == "YES":
        return "BurnedInAnnotation is YES: the pixels carry burned-in text."

    image_type = ds.get("ImageType") or []
    if isinstance(image_type, str):
        image_type = image_type.split("\\")
    image_type_values = {str(v).strip().upper() for v in image_type}
    for value in _SCREEN_IMAGE_TYPES:
        if value in image_type_values:
            return (
                f"ImageType contains {value}: a screen capture, whose pixels usually show "
                "patient details."
            )
    description = str(ds.get("SeriesDescription", "") or "").lower()
    for phrase in _DOSE_SCREEN_DESCRIPTIONS:
        if phrase in description:
            return (
                f"SeriesDescription {ds.SeriesDescription!r} suggests a dose report screen, "
                "whose pixels usually show patient details."
            )

    sop_class = str(ds.get("SOPClassUID", "") or "").strip("\x00 ")
    cleared = burned_in == "NO"
    conversion_type = str(ds.get("ConversionType", "") or "").strip().upper()
    if not cleared and (sop_class in _SECONDARY_CAPTURE_CLASSES or conversion_type):
        kind = UID(sop_class).name if sop_class else "unknown SOP Class"
        detail = f", ConversionType {conversion_type}" if conversion_type else ""
        return (
            f"Secondary capture ({kind}{detail}) without BurnedInAnnotation NO: "
            "the pixels may carry burned-in text."
        )
    modality = str(ds.get("Modality", "") or "").strip().upper()
    if not cleared and (modality == "US" or sop_class in _ULTRASOUND_CLASSES):
        return (
            "Ultrasound image without BurnedInAnnotation NO: ultrasound screens usually "
            "show patient details."
        )
    if sop_class in _ENCAPSULATED_DOCUMENT_CLASSES:
        return (
            f"Encapsulated document ({UID(sop_class).name}): its content cannot be "
            "de-identified by header rules."
        )
    return None
