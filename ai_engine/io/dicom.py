"""Load one DICOM series (single-frame files, enhanced or plain multi-frame) as a `Volume`.

Slices are sorted by their position along the slice normal, rescale slope/intercept is
applied per slice (HU for CT), MONOCHROME1 images are inverted after the rescale (so higher
values are brighter, as in MONOCHROME2; `meta["inverted"]` says so), and uneven slice spacing is detected and reported in
`meta["spacing_irregular"]` (the slices are kept as they are, not resampled: the affine uses
the mean step, so resample before relying on positions in such a series).
Anything that is not exactly one image series with consistent geometry raises `InputError`.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pydicom
from pydicom.dataset import Dataset
from pydicom.errors import InvalidDicomError

from ai_engine.errors import InputError
from ai_engine.io.volume import Volume, affine_from_geometry

#: Refuse series larger than this many voxels (guards memory against hostile headers).
MAX_VOXELS = 2048 * 2048 * 2048 // 8
#: Slice gaps differing from the median gap by more than this fraction are "irregular".
IRREGULAR_TOLERANCE = 0.01
#: Names that `identify_mr_sequence` returns, in channel order for multimodal stacks.
MR_SEQUENCES = ("T1", "T1c", "T2", "FLAIR")

DicomSource = str | Path | Sequence[str | Path | Dataset]


@dataclass
class _Frame:
    """One 2D image with its geometry: a single-frame instance or one frame of a multi-frame."""

    source: str
    sop_instance_uid: str
    frame_number: int  # 1-based; 1 for single-frame instances
    ipp: np.ndarray
    iop: np.ndarray
    pixel_spacing: np.ndarray
    rows: int
    columns: int
    slope: float
    intercept: float
    pixels: Callable[[], np.ndarray]
    #: MONOCHROME1: (lo, hi), the rescaled range of the stored values; the rescaled value v
    #: becomes lo + hi - v. None for MONOCHROME2 (and anything else).
    invert: tuple[float, float] | None = None


def load_dicom_series(source: DicomSource) -> Volume:
    """Load one DICOM image series as a float32 (X, Y, Z) `Volume` with an LPS affine.

    Args:
        source: a folder holding the files of one series, or a list of file paths, or a list
            of pydicom Datasets (e.g. instances retrieved from Orthanc).

    Raises:
        InputError: empty input, non-DICOM files, non-image objects, several series, several
            orientations or matrix sizes, missing ImagePositionPatient/ImageOrientationPatient,
            two slices at one position.
    """
    datasets = _read_all(source)
    _check_one_image_series(datasets)
    multi = [ds for _, ds in datasets if int(ds.get("NumberOfFrames", 1) or 1) > 1]
    if multi and len(datasets) > 1:
        raise InputError(
            f"{len(datasets)} instances where one is multi-frame: a series of several "
            "multi-frame instances is not supported; load them one at a time"
        )
    if multi:
        name, ds = datasets[0]
        frames = _frames_of_multiframe(name, ds)
        for frame in frames:
            frame.invert = _monochrome1_range(ds, frame.slope, frame.intercept)
    else:
        frames = [_frame_of_single(name, ds) for name, ds in datasets]
        for frame, (_, ds) in zip(frames, datasets, strict=True):
            frame.invert = _monochrome1_range(ds, frame.slope, frame.intercept)
    return _stack(frames, datasets[0][1])


def _monochrome1_range(ds: Dataset, slope: float, intercept: float) -> tuple[float, float] | None:
    """For a MONOCHROME1 image, the range of its rescaled stored values; else None.

    PS3.3 C.7.6.3.1.2: in MONOCHROME1 "the minimum sample value is intended to be displayed
    as white after any VOI gray scale transformations have been performed", and the grayscale
    pipeline (PS3.3 C.11.1, PS3.4 N.2) applies the Modality LUT (rescale) to the stored
    values first. So the rescale is applied as it is and the inversion comes after it, about
    the range the rescaled stored values can take (BitsStored, PixelRepresentation): the
    same mapping for every image of the series whatever its content.
    """
    if str(ds.get("PhotometricInterpretation", "")).strip().upper() != "MONOCHROME1":
        return None
    bits = int(ds.get("BitsStored", 0) or ds.get("BitsAllocated", 0) or 16)
    if int(ds.get("PixelRepresentation", 0) or 0):
        stored = (-(2 ** (bits - 1)), 2 ** (bits - 1) - 1)
    else:
        stored = (0, 2**bits - 1)
    ends = sorted(slope * value + intercept for value in stored)
    return float(ends[0]), float(ends[1])


def identify_mr_sequence(ds: Dataset) -> str | None:
    """Guess which of T1, T1c, T2, FLAIR an MR series is from its header, or None.

    Looks at SeriesDescription, ProtocolName and SequenceName (the phantoms put the exact name
    in SeriesDescription and SequenceName), and at ContrastBolusAgent for post-contrast T1.
    """
    text = " ".join(
        str(ds.get(keyword, "") or "")
        for keyword in ("SeriesDescription", "ProtocolName", "SequenceName")
    ).upper()
    if "FLAIR" in text:
        return "FLAIR"
    if re.search(r"T2", text):
        return "T2"
    if re.search(r"T1", text) or "MPRAGE" in text:
        post = re.search(r"T1C|T1\+C|T1CE|POST|GD|GAD|CONTRAST|\+C\b|\bCE\b", text)
        if post or str(ds.get("ContrastBolusAgent", "") or "").strip():
            return "T1c"
        return "T1"
    return None


def _read_all(source: DicomSource) -> list[tuple[str, Dataset]]:
    if isinstance(source, str | Path):
        folder = Path(source)
        if not folder.exists():
            raise InputError(f"{folder} does not exist")
        if not folder.is_dir():
            raise InputError(f"{folder} is not a folder of DICOM files")
        files = sorted(p for p in folder.iterdir() if p.is_file() and not p.name.startswith("."))
        if not files:
            subdirs = sorted(p.name for p in folder.iterdir() if p.is_dir())
            hint = f" (it has subfolders {subdirs[:5]}: pass one series folder)" if subdirs else ""
            raise InputError(f"{folder} holds no files{hint}")
        items: Sequence[str | Path | Dataset] = files
    else:
        items = list(source)
        if not items:
            raise InputError("no DICOM instances given (empty list)")
    out: list[tuple[str, Dataset]] = []
    for item in items:
        if isinstance(item, Dataset):
            out.append((f"dataset {item.get('SOPInstanceUID', len(out))}", item))
            continue
        path = Path(item)
        try:
            out.append((str(path), pydicom.dcmread(path)))
        except InvalidDicomError:
            raise InputError(f"{path} is not a DICOM file (no DICM header)") from None
        except FileNotFoundError:
            raise InputError(f"{path} does not exist") from None
        except IsADirectoryError:
            raise InputError(f"{path} is a folder, not a DICOM file") from None
        except Exception as exc:  # truncated or corrupt files raise many kinds
            raise InputError(f"{path} could not be read as DICOM: {exc}") from None
    return out


def _check_one_image_series(datasets: list[tuple[str, Dataset]]) -> None:
    for name, ds in datasets:
        if "PixelData" not in ds:
            sop = ds.get("SOPClassUID")
            kind = getattr(sop, "name", None) or str(sop or "unknown SOP class")
            raise InputError(f"{name} is not an image (it is a {kind} object without PixelData)")
        if int(ds.get("SamplesPerPixel", 1) or 1) != 1:
            raise InputError(
                f"{name} is a colour image (SamplesPerPixel > 1); only grayscale is supported"
            )
    series = {str(ds.get("SeriesInstanceUID", "")) for _, ds in datasets}
    if len(series) > 1:
        listed = ", ".join(sorted(series)[:4])
        raise InputError(
            f"mixed series: {len(series)} SeriesInstanceUIDs in one input ({listed}); give one series"
        )


def _required(name: str, ds: Dataset, keyword: str, where: str = "") -> Any:
    value = ds.get(keyword)
    if value is None or (hasattr(value, "__len__") and len(value) == 0):
        raise InputError(f"{name} has no {keyword}{where}: cannot place it in patient space")
    return value


def _rescale(ds: Dataset) -> tuple[float, float]:
    slope = ds.get("RescaleSlope", None)
    intercept = ds.get("RescaleIntercept", None)
    if slope is None and "DoseGridScaling" in ds:  # RT Dose stores Gy via DoseGridScaling
        slope = ds.DoseGridScaling
    return float(slope if slope not in (None, "") else 1.0), float(
        intercept if intercept not in (None, "") else 0.0
    )


def _frame_of_single(name: str, ds: Dataset) -> _Frame:
    ipp = np.asarray(_required(name, ds, "ImagePositionPatient"), dtype=np.float64)
    iop = np.asarray(_required(name, ds, "ImageOrientationPatient"), dtype=np.float64)
    spacing = np.asarray(_required(name, ds, "PixelSpacing"), dtype=np.float64)
    slope, intercept = _rescale(ds)
    return _Frame(
        source=name,
        sop_instance_uid=str(ds.get("SOPInstanceUID", "")),
        frame_number=1,
        ipp=ipp,
        iop=iop,
        pixel_spacing=spacing,
        rows=int(ds.Rows),
        columns=int(ds.Columns),
        slope=slope,
        intercept=intercept,
        pixels=lambda ds=ds: _decode(name, ds),
    )


def _decode(name: str, ds: Dataset) -> np.ndarray:
    try:
        return np.asarray(ds.pixel_array)
    except Exception as exc:
        raise InputError(f"{name}: pixel data could not be decoded: {exc}") from None


def _group_item(
    ds: Dataset, group: Dataset | None, shared: Dataset | None, seq: str
) -> Dataset | None:
    """A functional group macro item from the per-frame item, else from the shared one."""
    for holder in (group, shared):
        if holder is not None and seq in holder and len(holder[seq].value) > 0:
            return holder[seq].value[0]
    return None


def _frames_of_multiframe(name: str, ds: Dataset) -> list[_Frame]:
    n_frames = int(ds.NumberOfFrames)
    rows, columns = int(ds.Rows), int(ds.Columns)
    if rows * columns * n_frames > MAX_VOXELS:
        raise InputError(f"{name}: {n_frames} frames of {rows}x{columns} is larger than the limit")
    cache: dict[str, np.ndarray] = {}

    def frame_pixels(index: int) -> Callable[[], np.ndarray]:
        def get() -> np.ndarray:
            if "all" not in cache:
                cache["all"] = _decode(name, ds).reshape(n_frames, rows, columns)
            return cache["all"][index]

        return get

    sop = str(ds.get("SOPInstanceUID", ""))
    per_frame = ds.get("PerFrameFunctionalGroupsSequence")
    if per_frame is not None:
        if len(per_frame) != n_frames:
            raise InputError(
                f"{name}: PerFrameFunctionalGroupsSequence has {len(per_frame)} items for {n_frames} frames"
            )
        shared_seq = ds.get("SharedFunctionalGroupsSequence")
        shared = shared_seq[0] if shared_seq else None
        frames = []
        for index, group in enumerate(per_frame):
            where = f" for frame {index + 1}"
            position = _group_item(ds, group, shared, "PlanePositionSequence")
            orientation = _group_item(ds, group, shared, "PlaneOrientationSequence")
            measures = _group_item(ds, group, shared, "PixelMeasuresSequence")
            if position is None:
                raise InputError(f"{name} has no PlanePositionSequence/ImagePositionPatient{where}")
            if orientation is None:
                raise InputError(
                    f"{name} has no PlaneOrientationSequence/ImageOrientationPatient{where}"
                )
            if measures is None:
                raise InputError(f"{name} has no PixelMeasuresSequence/PixelSpacing{where}")
            transform = _group_item(ds, group, shared, "PixelValueTransformationSequence")
            slope, intercept = _rescale(transform if transform is not None else ds)
            frames.append(
                _Frame(
                    source=name,
                    sop_instance_uid=sop,
                    frame_number=index + 1,
                    ipp=np.asarray(
                        _required(name, position, "ImagePositionPatient", where), dtype=np.float64
                    ),
                    iop=np.asarray(
                        _required(name, orientation, "ImageOrientationPatient", where),
                        dtype=np.float64,
                    ),
                    pixel_spacing=np.asarray(
                        _required(name, measures, "PixelSpacing", where), dtype=np.float64
                    ),
                    rows=rows,
                    columns=columns,
                    slope=slope,
                    intercept=intercept,
                    pixels=frame_pixels(index),
                )
            )
        return frames
    # Plain multi-frame (e.g. RT Dose, NM): one position plus offsets along the normal.
    ipp = np.asarray(_required(name, ds, "ImagePositionPatient"), dtype=np.float64)
    iop = np.asarray(_required(name, ds, "ImageOrientationPatient"), dtype=np.float64)
    spacing = np.asarray(_required(name, ds, "PixelSpacing"), dtype=np.float64)
    normal = np.cross(iop[:3], iop[3:])
    if ds.get("GridFrameOffsetVector"):
        offsets = np.asarray(ds.GridFrameOffsetVector, dtype=np.float64)
        if len(offsets) != n_frames:
            raise InputError(
                f"{name}: GridFrameOffsetVector has {len(offsets)} values for {n_frames} frames"
            )
        if offsets[0] != 0:  # relative form starts at 0; absolute form holds z positions
            offsets = offsets - offsets[0]
    elif ds.get("SpacingBetweenSlices"):
        offsets = np.arange(n_frames) * float(ds.SpacingBetweenSlices)
    else:
        raise InputError(
            f"{name} is multi-frame without per-frame positions (no PerFrameFunctionalGroupsSequence, "
            "GridFrameOffsetVector or SpacingBetweenSlices)"
        )
    slope, intercept = _rescale(ds)
    return [
        _Frame(
            name,
            sop,
            i + 1,
            ipp + offsets[i] * normal,
            iop,
            spacing,
            rows,
            columns,
            slope,
            intercept,
            frame_pixels(i),
        )
        for i in range(n_frames)
    ]


def _stack(frames: list[_Frame], first: Dataset) -> Volume:
    ref = frames[0]
    for frame in frames[1:]:
        if (frame.rows, frame.columns) != (ref.rows, ref.columns):
            raise InputError(
                f"different image sizes in one series: {frame.source} is {frame.rows}x{frame.columns}, "
                f"{ref.source} is {ref.rows}x{ref.columns}"
            )
        if not np.allclose(frame.iop, ref.iop, atol=1e-4):
            raise InputError(
                f"different orientations in one series: {frame.source} has ImageOrientationPatient "
                f"{frame.iop.tolist()}, {ref.source} has {ref.iop.tolist()}"
            )
        if not np.allclose(frame.pixel_spacing, ref.pixel_spacing, atol=1e-4):
            raise InputError(
                f"different PixelSpacing in one series: {frame.source} vs {ref.source}"
            )
    if ref.rows * ref.columns * len(frames) > MAX_VOXELS:
        raise InputError(
            f"series of {len(frames)} images of {ref.rows}x{ref.columns} is larger than the limit"
        )
    normal = np.cross(ref.iop[:3], ref.iop[3:])
    if np.linalg.norm(normal) < 0.9:
        raise InputError(
            f"{ref.source}: ImageOrientationPatient {ref.iop.tolist()} is not two unit vectors"
        )
    positions = np.array([float(np.dot(f.ipp, normal)) for f in frames])
    order = np.argsort(positions, kind="stable")
    frames = [frames[i] for i in order]
    positions = positions[order]
    gaps = np.diff(positions)
    if len(gaps) and gaps.min() < 1e-3:
        at = int(np.argmin(gaps))
        raise InputError(
            f"two images at one position ({positions[at]:.3f} mm along the normal): {frames[at].source} and "
            f"{frames[at + 1].source} (duplicate instances, or several stacks/time points in one series)"
        )
    irregular = False
    if len(frames) > 1:
        step = (frames[-1].ipp - frames[0].ipp) / (len(frames) - 1)
        median_gap = float(np.median(gaps))
        irregular = bool(
            np.max(np.abs(gaps - median_gap)) > max(1e-2, IRREGULAR_TOLERANCE * median_gap)
        )
    else:
        thickness = float(
            first.get("SpacingBetweenSlices", 0) or first.get("SliceThickness", 0) or 1.0
        )
        step = normal * thickness
    affine = affine_from_geometry(frames[0].ipp, ref.iop, ref.pixel_spacing, step)
    array = np.empty((ref.columns, ref.rows, len(frames)), dtype=np.float32)
    for k, frame in enumerate(frames):
        pixels = frame.pixels()
        if pixels.shape != (ref.rows, ref.columns):
            raise InputError(
                f"{frame.source}: pixel data shape {pixels.shape} does not match Rows/Columns"
            )
        array[:, :, k] = pixels.T.astype(np.float32) * np.float32(frame.slope) + np.float32(
            frame.intercept
        )
        if frame.invert is not None:  # rescale, then interpret (see _monochrome1_range)
            array[:, :, k] = np.float32(sum(frame.invert)) - array[:, :, k]
    modality = str(first.get("Modality", ""))
    meta: dict[str, Any] = {
        "source": "dicom",
        "modality": modality,
        "series_instance_uid": str(first.get("SeriesInstanceUID", "")),
        "study_instance_uid": str(first.get("StudyInstanceUID", "")),
        "frame_of_reference_uid": str(first.get("FrameOfReferenceUID", "")),
        "series_description": str(first.get("SeriesDescription", "")),
        "body_part_examined": str(first.get("BodyPartExamined", "")),
        "sop_instance_uids": [f.sop_instance_uid for f in frames],
        "frame_numbers": [f.frame_number for f in frames],
        "slice_positions_mm": positions.tolist(),
        "spacing_irregular": irregular,
        "units": "HU" if modality == "CT" else "",
        "photometric_interpretation": str(first.get("PhotometricInterpretation", "")),
        "inverted": False,
    }
    inverted = [f for f in frames if f.invert is not None]
    if inverted:
        lo, hi = inverted[0].invert  # type: ignore[misc]
        meta["inverted"] = True
        meta["inversion"] = (
            "MONOCHROME1: value = lo + hi - (RescaleSlope * stored + RescaleIntercept), "
            f"lo, hi = {lo:g}, {hi:g} (rescaled range of the stored values), so higher values "
            "are brighter as in MONOCHROME2"
        )
        if meta["units"]:  # inverted values are no longer in the rescale's units
            meta["units"] = ""
    if modality == "MR":
        meta["mr_sequence"] = identify_mr_sequence(first)
    return Volume(array, affine, meta)
