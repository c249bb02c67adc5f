"""ai_engine.io: DICOM series / multi-frame / NIfTI loading, the voxel and LPS conventions,
multimodal stacks, and a table of inputs that must be rejected with a clear InputError."""

from __future__ import annotations

import shutil
from copy import deepcopy
from pathlib import Path

import nibabel as nib
import numpy as np
import pydicom
import pytest
from pydicom.data import get_testdata_file

from ai_engine.data.phantoms import (
    brain_mri_datasets,
    chest_ct_datasets,
    make_brain_mri,
    make_chest_ct,
)
from ai_engine.errors import InputError
from ai_engine.io import (
    LPS_TO_RAS,
    Volume,
    identify_mr_sequence,
    load_dicom_series,
    load_multimodal,
    load_volume,
    save_nifti,
)
from ai_engine.io.dicom_write import datasets_to_enhanced_multiframe, write_datasets

CT_SHAPE = (64, 64, 20)
MR_SHAPE = (40, 40, 16)


@pytest.fixture(scope="module")
def ct_case(tmp_path_factory):
    """A small chest CT phantom with two nodules, written as a DICOM series."""
    volume, nodules = make_chest_ct(3, shape=CT_SHAPE, n_nodules=2)
    datasets = chest_ct_datasets(volume, 3)
    folder = tmp_path_factory.mktemp("ct") / "series"
    write_datasets(datasets, folder)
    return folder, volume, nodules, datasets


@pytest.fixture(scope="module")
def mr_case(tmp_path_factory):
    volume, _grade, mask = make_brain_mri(4, shape=MR_SHAPE)
    case = tmp_path_factory.mktemp("mr") / "case"
    for name, datasets in brain_mri_datasets(volume, 4).items():
        write_datasets(datasets, case / name)
    return case, volume, mask


def test_series_loads_as_generated(ct_case):
    folder, volume, _, datasets = ct_case
    loaded = load_volume(folder)
    assert loaded.array.dtype == np.float32
    assert loaded.array.shape == CT_SHAPE
    np.testing.assert_array_equal(loaded.array, volume.array)  # HU after rescale intercept -1024
    np.testing.assert_allclose(loaded.affine, volume.affine, atol=1e-4)
    assert loaded.meta["modality"] == "CT"
    assert loaded.meta["units"] == "HU"
    assert loaded.meta["series_instance_uid"] == datasets[0].SeriesInstanceUID
    assert loaded.meta["study_instance_uid"] == datasets[0].StudyInstanceUID
    assert loaded.meta["spacing_irregular"] is False
    assert loaded.meta["sop_instance_uids"] == [ds.SOPInstanceUID for ds in datasets]


def test_index_convention_matches_pixel_array(ct_case):
    """array[i, j, k] == pixel_array_of_slice_k[j, i] * slope + intercept, and the affine
    puts voxel (0, 0, k) at slice k's ImagePositionPatient, +i along the row direction."""
    folder, _, _, _ = ct_case
    loaded = load_volume(folder)
    files = sorted(folder.iterdir())
    ds = pydicom.dcmread(files[5])
    k = loaded.meta["sop_instance_uids"].index(ds.SOPInstanceUID)
    expected = ds.pixel_array.T * float(ds.RescaleSlope) + float(ds.RescaleIntercept)
    np.testing.assert_array_equal(loaded.array[:, :, k], expected)
    np.testing.assert_allclose(
        loaded.voxel_to_lps([[0, 0, k]])[0], [float(v) for v in ds.ImagePositionPatient], atol=1e-3
    )
    step_i = loaded.voxel_to_lps([[1, 0, k]])[0] - loaded.voxel_to_lps([[0, 0, k]])[0]
    np.testing.assert_allclose(
        step_i,
        np.array(ds.ImageOrientationPatient[:3], float) * float(ds.PixelSpacing[1]),
        atol=1e-6,
    )


def test_shuffled_file_names_are_sorted_by_position(ct_case, tmp_path):
    folder, volume, _, _ = ct_case
    files = sorted(folder.iterdir())
    order = np.random.default_rng(0).permutation(len(files))
    for new_index, old in enumerate(order):
        shutil.copy(files[old], tmp_path / f"x{new_index:03d}")
    loaded = load_volume(tmp_path)
    np.testing.assert_array_equal(loaded.array, volume.array)
    np.testing.assert_allclose(loaded.affine, volume.affine, atol=1e-4)


def test_descending_slices_come_back_ascending(tmp_path):
    """A series written head-to-feet loads with k increasing in position; points still map."""
    volume, nodules = make_chest_ct(8, shape=(64, 64, 16), n_nodules=1)
    flipped_affine = volume.affine.copy()
    flipped_affine[:3, 3] = volume.voxel_to_lps([[0, 0, 15]])[0]
    flipped_affine[:3, 2] *= -1
    flipped = Volume(volume.array[:, :, ::-1], flipped_affine)
    write_datasets(chest_ct_datasets(flipped, 8), tmp_path / "s")
    loaded = load_volume(tmp_path / "s")
    np.testing.assert_array_equal(loaded.array, volume.array)
    np.testing.assert_allclose(loaded.affine, volume.affine, atol=1e-4)
    center = np.array([nodules[0]["center_lps_mm"]])
    k_flipped = flipped.lps_to_voxel(center)[0, 2]
    k_loaded = loaded.lps_to_voxel(center)[0, 2]
    assert k_flipped == pytest.approx(15 - k_loaded, abs=1e-3)


def test_list_of_files_and_list_of_datasets(ct_case):
    folder, volume, _, datasets = ct_case
    from_files = load_dicom_series(sorted(folder.iterdir())[::-1])
    from_datasets = load_dicom_series([pydicom.dcmread(p) for p in folder.iterdir()])
    in_memory = load_dicom_series(datasets)
    for loaded in (from_files, from_datasets, in_memory):
        np.testing.assert_array_equal(loaded.array, volume.array)


def test_voxel_lps_round_trip(ct_case):
    _, volume, nodules, _ = ct_case
    centers = np.array([n["center_lps_mm"] for n in nodules])
    np.testing.assert_allclose(
        volume.voxel_to_lps(volume.lps_to_voxel(centers)), centers, atol=1e-9
    )
    with pytest.raises(ValueError, match="N x 3"):
        volume.lps_to_voxel(np.zeros((2, 2)))


def test_enhanced_multiframe_matches_single_frames(ct_case, tmp_path):
    """Legacy-converted enhanced CT (PerFrameFunctionalGroupsSequence/PlanePositionSequence)."""
    _, volume, _, datasets = ct_case
    frames = 8  # a subset keeps the highdicom conversion quick
    multiframe = datasets_to_enhanced_multiframe(datasets[:frames])
    assert "PerFrameFunctionalGroupsSequence" in multiframe
    path = tmp_path / "mf" / "enhanced.dcm"
    path.parent.mkdir()
    multiframe.save_as(path, enforce_file_format=True)
    loaded = load_volume(path.parent)
    np.testing.assert_array_equal(loaded.array, volume.array[:, :, :frames])
    np.testing.assert_allclose(loaded.affine, volume.affine, atol=1e-4)
    assert sorted(loaded.meta["frame_numbers"]) == list(range(1, frames + 1))


def test_plain_multiframe_rt_dose():
    """pydicom's rtdose.dcm: one position plus GridFrameOffsetVector, DoseGridScaling."""
    path = get_testdata_file("rtdose.dcm")
    ds = pydicom.dcmread(path)
    loaded = load_dicom_series([path])
    assert loaded.array.shape == (ds.Columns, ds.Rows, ds.NumberOfFrames)
    offsets = np.array(ds.GridFrameOffsetVector, float)
    np.testing.assert_allclose(loaded.spacing[2], abs(offsets[1] - offsets[0]))
    frame0 = ds.pixel_array[int(np.argmin(offsets))]
    np.testing.assert_allclose(
        loaded.array[:, :, 0], frame0.T * float(ds.DoseGridScaling), rtol=1e-6
    )


@pytest.mark.parametrize(
    ("name", "modality"),
    [("CT_small.dcm", "CT"), ("MR_small.dcm", "MR")],
)
def test_pydicom_single_files(name, modality, tmp_path):
    path = Path(get_testdata_file(name))
    shutil.copy(path, tmp_path / name)
    ds = pydicom.dcmread(path)
    loaded = load_volume(tmp_path)
    assert loaded.meta["modality"] == modality
    assert loaded.array.shape == (ds.Columns, ds.Rows, 1)
    slope, intercept = float(ds.get("RescaleSlope", 1)), float(ds.get("RescaleIntercept", 0))
    np.testing.assert_allclose(loaded.array[:, :, 0], ds.pixel_array.T * slope + intercept)
    np.testing.assert_allclose(loaded.origin_lps_mm, [float(v) for v in ds.ImagePositionPatient])
    np.testing.assert_allclose(
        loaded.spacing[:2], [float(ds.PixelSpacing[1]), float(ds.PixelSpacing[0])]
    )


def test_uneven_spacing_is_flagged(ct_case, tmp_path):
    folder, _, _, _ = ct_case
    files = sorted(folder.iterdir())
    for path in files[:7] + files[8:]:  # one slice missing in the middle
        shutil.copy(path, tmp_path / path.name)
    loaded = load_volume(tmp_path)
    assert loaded.meta["spacing_irregular"] is True
    assert loaded.array.shape[2] == CT_SHAPE[2] - 1
    assert load_volume(folder).meta["spacing_irregular"] is False


def test_nifti_round_trip_keeps_lps(ct_case, tmp_path):
    _, volume, nodules, _ = ct_case
    path = save_nifti(volume, tmp_path / "ct.nii.gz")
    image = nib.load(str(path))
    np.testing.assert_allclose(image.affine, LPS_TO_RAS @ volume.affine, atol=1e-4)  # RAS on disk
    loaded = load_volume(path)
    np.testing.assert_array_equal(loaded.array, volume.array)
    np.testing.assert_allclose(loaded.affine, volume.affine, atol=1e-4)
    for nodule in nodules:
        center = np.array([nodule["center_lps_mm"]])
        np.testing.assert_allclose(
            loaded.lps_to_voxel(center), volume.lps_to_voxel(center), atol=1e-3
        )
        # nibabel's own RAS mapping of that voxel is the center with x and y negated
        ras = nib.affines.apply_affine(image.affine, volume.lps_to_voxel(center)[0])
        np.testing.assert_allclose(ras, center[0] * [-1, -1, 1], atol=1e-3)


def test_multimodal_from_series(mr_case):
    case, volume, _ = mr_case
    paths = {name: case / name for name in ("T1", "T1c", "T2", "FLAIR")}
    stacked = load_multimodal(paths)
    assert stacked.array.shape == (4, *MR_SHAPE)
    np.testing.assert_array_equal(stacked.array, volume.array)
    assert stacked.meta["channel_names"] == ["T1", "T1c", "T2", "FLAIR"]
    assert stacked.meta["missing_channels"] == []
    by_study_folder = load_multimodal(case)  # sequences identified from SeriesDescription
    np.testing.assert_array_equal(by_study_folder.array, volume.array)


def test_multimodal_missing_and_resampled(mr_case, tmp_path):
    """T1 absent: grid of T1c; T2 given as a NIfTI at half the in-plane resolution."""
    case, volume, _ = mr_case
    t2 = volume.channel("T2")
    coarse_affine = t2.affine.copy()
    coarse_affine[:3, :2] *= 2
    coarse = save_nifti(Volume(t2.array[::2, ::2, :], coarse_affine), tmp_path / "t2.nii.gz")
    stacked = load_multimodal({"T1c": case / "T1c", "T2": coarse, "FLAIR": None})
    assert stacked.meta["missing_channels"] == ["T1", "FLAIR"]
    assert stacked.meta["reference_channel"] == "T1c"
    assert stacked.array.shape == (4, *MR_SHAPE)
    assert not stacked.array[0].any() and not stacked.array[3].any()
    np.testing.assert_array_equal(stacked.array[1], volume.array[1])
    # at the coarse grid's own voxels the resampled T2 is the coarse value itself
    np.testing.assert_allclose(
        stacked.array[2][::2, ::2, :], t2.array[::2, ::2, :], rtol=1e-5, atol=1e-3
    )
    # and in between it interpolates linearly
    between = (t2.array[0:-2:2, :, :] + t2.array[2::2, :, :])[:, ::2, :] / 2
    np.testing.assert_allclose(stacked.array[2][1:-1:2, ::2, :], between, rtol=1e-5, atol=1e-3)


def test_multimodal_wrong_sequence_is_rejected(mr_case):
    case, _, _ = mr_case
    with pytest.raises(InputError, match="given as T1 but its header says it is FLAIR"):
        load_multimodal({"T1": case / "FLAIR"})
    with pytest.raises(InputError, match="unknown sequence names"):
        load_multimodal({"PD": case / "T1"})
    with pytest.raises(InputError, match="none of the sequences"):
        load_multimodal({"T1": None})


# ---------------------------------------------------------------------------------------
# bad input: what each gets


def _two_series(folder: Path, ct_case) -> None:
    _, _, _, datasets = ct_case
    write_datasets(datasets[:3], folder)
    other, _ = make_chest_ct(99, shape=(64, 64, 16), n_nodules=0)
    for i, ds in enumerate(chest_ct_datasets(other, 99)[:2]):
        ds.save_as(folder / f"other{i}.dcm", enforce_file_format=True)


def _edit_one(folder: Path, ct_case, edit) -> None:
    _, _, _, datasets = ct_case
    write_datasets(datasets[:4], folder)
    path = sorted(folder.iterdir())[2]
    ds = pydicom.dcmread(path)
    edit(ds)
    ds.save_as(path, enforce_file_format=True)


def _delete(keyword):
    return lambda ds: delattr(ds, keyword)


def _tilt(ds):
    ds.ImageOrientationPatient = [1, 0, 0, 0, 0.8, -0.6]


def _shrink(ds):
    ds.Rows, ds.Columns = 32, 32
    ds.PixelData = np.zeros((32, 32), np.int16).tobytes()


def _same_position(ds_folder: Path, ct_case) -> None:
    _, _, _, datasets = ct_case
    write_datasets(datasets[:3], ds_folder)
    dup = pydicom.dcmread(sorted(ds_folder.iterdir())[1])
    dup.SOPInstanceUID = dup.SOPInstanceUID[:-1] + ("1" if dup.SOPInstanceUID[-1] != "1" else "2")
    dup.save_as(ds_folder / "dup.dcm", enforce_file_format=True)


def _rt_structure_set(folder: Path, ct_case) -> None:
    """pydicom's rtstruct.dcm lacks file meta; give it one so only its kind is wrong."""
    folder.mkdir()
    ds = pydicom.dcmread(get_testdata_file("rtstruct.dcm"), force=True)
    ds.file_meta = pydicom.dataset.FileMetaDataset()
    ds.file_meta.TransferSyntaxUID = pydicom.uid.ImplicitVRLittleEndian
    ds.file_meta.MediaStorageSOPClassUID = ds.SOPClassUID
    ds.file_meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
    ds.preamble = b"\0" * 128
    ds.save_as(folder / "rtstruct.dcm", enforce_file_format=True)


BAD_INPUTS = {
    # case: (how to build the input under folder, expected InputError message part)
    "missing path": (None, "does not exist"),
    "empty folder": (lambda f, c: f.mkdir(), "holds no files"),
    "folder of folders": (lambda f, c: (f / "a" / "b").mkdir(parents=True), "subfolders"),
    "text file": (
        lambda f, c: (f.mkdir(), (f / "notes.txt").write_text("hello")),
        "not a DICOM file",
    ),
    "not .nii file": (
        lambda f, c: (f.parent.mkdir(exist_ok=True), f.write_text("x")),
        "neither a folder",
    ),
    "corrupt nifti": (
        lambda f, c: (f.mkdir(), (f / "x.nii.gz").write_bytes(b"garbage")),
        "x.nii.gz",
    ),
    "mixed series": (_two_series, "mixed series"),
    "non-image (RT structure set)": (_rt_structure_set, "not an image"),
    "non-image (SR)": (
        lambda f, c: (f.mkdir(), shutil.copy(get_testdata_file("test-SR.dcm"), f)),
        "not an image",
    ),
    "missing ImagePositionPatient": (
        lambda f, c: _edit_one(f, c, _delete("ImagePositionPatient")),
        "no ImagePositionPatient",
    ),
    "missing ImageOrientationPatient": (
        lambda f, c: _edit_one(f, c, _delete("ImageOrientationPatient")),
        "no ImageOrientationPatient",
    ),
    "missing PixelSpacing": (
        lambda f, c: _edit_one(f, c, _delete("PixelSpacing")),
        "no PixelSpacing",
    ),
    "different orientation": (lambda f, c: _edit_one(f, c, _tilt), "different orientations"),
    "different size": (lambda f, c: _edit_one(f, c, _shrink), "different image sizes"),
    "two slices at one position": (_same_position, "two images at one position"),
    "colour image": (
        lambda f, c: (f.mkdir(), shutil.copy(get_testdata_file("SC_rgb_small_odd.dcm"), f)),
        "colour image",
    ),
}


@pytest.mark.parametrize("case", list(BAD_INPUTS))
def test_bad_input_is_rejected_clearly(case, ct_case, tmp_path):
    build, message = BAD_INPUTS[case]
    target = tmp_path / ("input.txt" if case == "not .nii file" else "input")
    if build is not None:
        build(target, ct_case)
    if case == "corrupt nifti":
        target = target / "x.nii.gz"
    with pytest.raises(InputError, match=message):
        load_volume(target)


def test_empty_list_is_rejected():
    with pytest.raises(InputError, match="empty list"):
        load_dicom_series([])


def test_volume_validates_its_parts():
    with pytest.raises(ValueError, match="3D"):
        Volume(np.zeros((2, 2)), np.eye(4))
    with pytest.raises(ValueError, match="4x4"):
        Volume(np.zeros((2, 2, 2)), np.eye(3))
    with pytest.raises(ValueError, match="singular"):
        Volume(np.zeros((2, 2, 2)), np.diag([1.0, 0.0, 1.0, 1.0]))


@pytest.mark.parametrize(
    ("attributes", "expected"),
    [
        ({"SeriesDescription": "T1 AX SE"}, "T1"),
        ({"SeriesDescription": "T1c AX SE POST GD"}, "T1c"),
        ({"SeriesDescription": "AX T1 MPRAGE", "ContrastBolusAgent": "GADOBUTROL"}, "T1c"),
        ({"SeriesDescription": "Ax T1 +C"}, "T1c"),
        ({"SeriesDescription": "T2 AX TSE"}, "T2"),
        ({"SeriesDescription": "AX T2 FLAIR"}, "FLAIR"),
        ({"ProtocolName": "FLAIR"}, "FLAIR"),
        ({"SeriesDescription": "DWI b1000"}, None),
        ({}, None),
    ],
)
def test_identify_mr_sequence(attributes, expected):
    ds = pydicom.Dataset()
    for keyword, value in attributes.items():
        setattr(ds, keyword, value)
    assert identify_mr_sequence(ds) == expected


@pytest.mark.parametrize("slope", [1.0, 2.0])
def test_monochrome1_is_inverted_after_rescale(ct_case, slope):
    """PS3.3 C.7.6.3.1.2 / C.11.1: rescale the stored values, then invert MONOCHROME1 about
    the rescaled range of the stored values (signed 16 bits here), so higher is brighter."""
    _, _, _, datasets = ct_case
    monochrome2, monochrome1 = [], []
    for ds in datasets:
        for target, photometric in ((monochrome2, "MONOCHROME2"), (monochrome1, "MONOCHROME1")):
            copy = deepcopy(ds)
            copy.PhotometricInterpretation = photometric
            copy.RescaleSlope = slope
            target.append(copy)
    plain = load_dicom_series(monochrome2)
    inverted = load_dicom_series(monochrome1)
    lo, hi = slope * -32768 - 1024, slope * 32767 - 1024
    np.testing.assert_array_equal(inverted.array, np.float32(lo + hi) - plain.array)
    # The densest voxel of MONOCHROME2 is the darkest of the inverted MONOCHROME1 volume.
    assert np.argmax(plain.array) == np.argmin(inverted.array)
    np.testing.assert_array_equal(inverted.affine, plain.affine)
    assert plain.meta["inverted"] is False and plain.meta["units"] == "HU"
    assert inverted.meta["inverted"] is True
    assert inverted.meta["photometric_interpretation"] == "MONOCHROME1"
    assert inverted.meta["units"] == ""  # inverted values are no longer HU
    assert f"lo, hi = {lo:g}, {hi:g}" in inverted.meta["inversion"]
