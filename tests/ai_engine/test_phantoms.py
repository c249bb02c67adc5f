"""Phantom generators and the phantoms CLI: determinism, anatomy and nodules, grade
appearance, DICOM attributes, what the CLI writes and how it refuses bad arguments."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pydicom
import pytest
from scipy import ndimage

from ai_engine.cli import main
from ai_engine.data.datalist import load_datalist
from ai_engine.data.phantoms import (
    brain_mri_datasets,
    chest_ct_datasets,
    make_brain_mri,
    make_chest_ct,
)
from ai_engine.io import load_multimodal, load_volume
from ai_engine.io.dicom_write import write_datasets

REPO = Path(__file__).resolve().parents[2]


def _sphere_mask(volume, center_lps_mm, radius_mm):
    """Voxels whose centres lie within `radius_mm` of the centre."""
    x, y, z = np.meshgrid(*(np.arange(n) for n in volume.spatial_shape), indexing="ij", sparse=True)
    center = volume.lps_to_voxel(np.array([center_lps_mm]))[0]
    s = volume.spacing
    return ((x - center[0]) * s[0]) ** 2 + ((y - center[1]) * s[1]) ** 2 + (
        (z - center[2]) * s[2]
    ) ** 2 <= radius_mm**2


def test_chest_ct_is_deterministic():
    a, nodules_a = make_chest_ct(11, shape=(64, 64, 16))
    b, nodules_b = make_chest_ct(11, shape=(64, 64, 16))
    c, _ = make_chest_ct(12, shape=(64, 64, 16))
    np.testing.assert_array_equal(a.array, b.array)
    np.testing.assert_array_equal(a.affine, b.affine)
    assert nodules_a == nodules_b
    assert not np.array_equal(a.array, c.array)
    uids_a = [
        (d.StudyInstanceUID, d.SeriesInstanceUID, d.SOPInstanceUID)
        for d in chest_ct_datasets(a, 11)
    ]
    uids_b = [
        (d.StudyInstanceUID, d.SeriesInstanceUID, d.SOPInstanceUID)
        for d in chest_ct_datasets(b, 11)
    ]
    uids_c = [
        (d.StudyInstanceUID, d.SeriesInstanceUID, d.SOPInstanceUID)
        for d in chest_ct_datasets(c, 12)
    ]
    assert uids_a == uids_b
    assert not set(uids_a) & set(uids_c)


def test_brain_mri_is_deterministic():
    a, grade_a, mask_a = make_brain_mri(5, shape=(40, 40, 16))
    b, grade_b, mask_b = make_brain_mri(5, shape=(40, 40, 16))
    np.testing.assert_array_equal(a.array, b.array)
    np.testing.assert_array_equal(mask_a, mask_b)
    assert grade_a == grade_b
    series_a = {k: v[0].SeriesInstanceUID for k, v in brain_mri_datasets(a, 5).items()}
    assert series_a == {k: v[0].SeriesInstanceUID for k, v in brain_mri_datasets(b, 5).items()}
    assert len(set(series_a.values())) == 4


@pytest.fixture(scope="module")
def chest_cases():
    """Default-size chest CTs (the size the CLI writes) with nodules."""
    return [make_chest_ct(0, n_nodules=4), make_chest_ct(1, n_nodules=3)]


def test_chest_ct_geometry_and_tissues(chest_cases):
    for volume, _ in chest_cases:
        assert volume.array.shape == (160, 160, 64)
        spacing = volume.spacing
        assert 0.6 <= spacing[0] == spacing[1] <= 0.9
        assert 1.0 <= spacing[2] <= 2.5
        hu = volume.array
        assert np.all(hu == np.rint(hu))  # what DICOM int16 storage gives back
        corner = hu[:8, :8, :]
        assert abs(float(corner.mean()) + 1000) < 10  # air outside the body
        assert (hu > 500).sum() > 500  # ribs and spine
        lung_like = (hu > -950) & (hu < -750)
        assert lung_like.mean() > 0.1


def test_nodules_are_inside_the_lungs_and_visible(chest_cases):
    total = 0
    for volume, nodules in chest_cases:
        hu = volume.array
        lung_hu = float(np.median(hu[(hu > -950) & (hu < -750)]))
        for nodule in nodules:
            total += 1
            d = nodule["diameter_mm"]
            assert 3.0 <= d <= 30.0
            assert nodule["kind"] in ("solid", "part-solid")
            inner = _sphere_mask(volume, nodule["center_lps_mm"], d / 2 * 0.6)
            assert inner.sum() > 0
            assert float(hu[inner].mean()) > lung_hu + 250, nodule  # visible against lung
            shell = _sphere_mask(volume, nodule["center_lps_mm"], d / 2 + 2.5) & ~_sphere_mask(
                volume, nodule["center_lps_mm"], d / 2 + 1.0
            )
            assert float((hu[shell] < -600).mean()) > 0.6, nodule  # surrounded by lung
    assert len(chest_cases[0][1]) == 4 and len(chest_cases[1][1]) == 3
    assert total >= 7


def test_part_solid_nodules_have_ground_glass_halo():
    for seed in range(40):
        volume, nodules = make_chest_ct(seed, shape=(96, 96, 32), n_nodules=6)
        part_solid = [n for n in nodules if n["kind"] == "part-solid" and n["diameter_mm"] >= 8]
        if part_solid:
            break
    else:
        pytest.fail("no part-solid nodule of 8 mm or more in 40 seeds")
    nodule = part_solid[0]
    r = nodule["diameter_mm"] / 2
    halo = _sphere_mask(volume, nodule["center_lps_mm"], r * 0.9) & ~_sphere_mask(
        volume, nodule["center_lps_mm"], r * 0.7
    )
    assert -700 < float(np.median(volume.array[halo])) < -250


def test_vessel_cross_sections_look_like_small_nodules():
    """Without nodules, lungs still hold small round bright spots in single slices (vessels)."""
    volume, nodules = make_chest_ct(21, n_nodules=0)
    assert nodules == []
    smooth = ndimage.gaussian_filter(volume.array, 0.7)
    lung = smooth < -600
    pixel_area = volume.spacing[0] * volume.spacing[1]
    spots = 0
    for k in range(volume.array.shape[2]):
        bright = smooth[:, :, k] > -400
        labels, n = ndimage.label(bright)
        if n == 0:
            continue
        sizes = (
            ndimage.sum_labels(np.ones_like(bright), labels, index=np.arange(1, n + 1)) * pixel_area
        )
        for index in np.flatnonzero((sizes >= 1.0) & (sizes <= 30.0)) + 1:  # 1-6 mm across
            spot = labels == index
            around = ndimage.binary_dilation(spot, iterations=3) & ~ndimage.binary_dilation(
                spot, iterations=1
            )
            if lung[:, :, k][around].mean() > 0.85:  # isolated in lung, as a nodule would be
                spots += 1
    assert spots >= 20


def test_chest_ct_dicom_attributes(tmp_path):
    volume, _ = make_chest_ct(2, shape=(64, 64, 16))
    datasets = chest_ct_datasets(volume, 2)
    path = write_datasets(datasets, tmp_path / "s")[0]
    assert path.read_bytes()[128:132] == b"DICM"
    ds = pydicom.dcmread(path)
    assert ds.Modality == "CT"
    assert ds.SOPClassUID == pydicom.uid.CTImageStorage
    assert float(ds.RescaleIntercept) == -1024 and float(ds.RescaleSlope) == 1
    assert ds.PixelRepresentation == 1 and ds.BitsAllocated == 16
    assert ds.BodyPartExamined == "CHEST"
    assert ds.WindowCenter and ds.WindowWidth
    for keyword in (
        "PatientName",
        "PatientID",
        "PatientBirthDate",
        "PatientSex",
        "InstitutionName",
        "AccessionNumber",
        "StudyDate",
        "ReferringPhysicianName",
    ):
        assert str(ds.get(keyword, "")).strip(), keyword
    for keyword in (
        "FrameOfReferenceUID",
        "ImagePositionPatient",
        "ImageOrientationPatient",
        "PixelSpacing",
        "SliceThickness",
    ):
        assert keyword in ds
    assert ds.file_meta.TransferSyntaxUID == pydicom.uid.ExplicitVRLittleEndian


def _lesion_stats(seed, grade):
    volume, g, mask = make_brain_mri(seed, grade=grade)
    assert g == grade
    t1, t1c, _t2, flair = volume.array
    core = (mask == 1) | (mask == 3)
    edema = mask == 2
    brain_far = (mask == 0) & (flair > 0.5 * np.median(flair[core]))  # bright-enough tissue
    return {
        "core_voxels": int(core.sum()),
        "edema_voxels": int(edema.sum()),
        "enhancing_fraction": float((mask == 3).sum() / max(core.sum(), 1)),
        # enhancement as seen in the images: T1c over T1 (same scale) in the tumor core
        "t1c_over_t1": float(t1c[core].mean() / t1[core].mean()),
        # edema is bright on FLAIR compared with normal tissue
        "flair_edema_contrast": float(flair[edema].mean() / np.median(flair[brain_far]))
        if edema.any()
        else 0.0,
    }


def test_grade_shows_in_appearance():
    stats = {grade: [_lesion_stats(seed, grade) for seed in (100,)] for grade in (1, 2, 3)}

    def mean(grade, key):
        return float(np.mean([s[key] for s in stats[grade]]))

    for s in stats[1]:
        assert s["enhancing_fraction"] == 0.0
        assert s["t1c_over_t1"] == pytest.approx(1.0, abs=0.1)  # non-enhancing
    for s in stats[2]:
        assert 0.0 < s["enhancing_fraction"] < 0.6  # patchy
        assert s["edema_voxels"] > 0
    for s in stats[3]:
        assert s["flair_edema_contrast"] > 1.2
        assert s["enhancing_fraction"] > 0.3  # rim
        assert s["t1c_over_t1"] > 1.3
    assert mean(1, "core_voxels") < mean(2, "core_voxels") < mean(3, "core_voxels")
    assert mean(1, "edema_voxels") < mean(2, "edema_voxels") < mean(3, "edema_voxels")
    assert mean(1, "t1c_over_t1") < mean(2, "t1c_over_t1") < mean(3, "t1c_over_t1")


def test_grade3_has_necrotic_core_bright_on_t2():
    volume, _, mask = make_brain_mri(7, grade=3)
    t2 = volume.array[2]
    assert (mask == 1).any() and (mask == 3).any()
    assert t2[mask == 1].mean() > t2[mask == 3].mean()


def test_bad_phantom_arguments():
    with pytest.raises(ValueError, match="grade"):
        make_brain_mri(0, grade=4)
    with pytest.raises(ValueError, match="shape"):
        make_chest_ct(0, shape=(10, 10, 4))
    with pytest.raises(ValueError, match="n_nodules"):
        make_chest_ct(0, shape=(64, 64, 16), n_nodules=7)


# ---------------------------------------------------------------------------------------
# CLI


def _cli(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "ai_engine", "phantoms", *args],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=120,
    )


def test_cli_writes_chest_ct_cases_and_datalist(tmp_path):
    out = tmp_path / "ct"
    result = _cli(
        "--kind",
        "chest-ct",
        "--count",
        "3",
        "--seed",
        "7",
        "--out",
        str(out),
        "--shape",
        "64,64,16",
        "--split",
        "0.34,0.33,0.33",
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == str(out / "datalist.json")
    raw = json.loads((out / "datalist.json").read_text())
    assert {len(raw[s]) for s in ("training", "validation", "testing")} == {1}
    data = load_datalist(out / "datalist.json")
    items = data["training"] + data["validation"] + data["testing"]
    by_case = {Path(item["image"]).name: item for item in items}
    assert sorted(by_case) == ["ct_00007", "ct_00008", "ct_00009"]
    for name, item in by_case.items():
        seed = int(name.split("_")[1])
        expected_volume, expected_nodules = make_chest_ct(seed, shape=(64, 64, 16))
        loaded = load_volume(item["image"])
        np.testing.assert_array_equal(loaded.array, expected_volume.array)
        assert [n["center_lps_mm"] for n in item["nodules"]] == [
            n["center_lps_mm"] for n in expected_nodules
        ]


def test_cli_writes_brain_mri_cases(tmp_path):
    out = tmp_path / "mr"
    result = _cli(
        "--kind",
        "brain-mri",
        "--count",
        "1",
        "--seed",
        "3",
        "--out",
        str(out),
        "--shape",
        "32,32,16",
    )
    assert result.returncode == 0, result.stderr
    item = load_datalist(out / "datalist.json")["training"][0]
    assert set(item["images"]) == {"T1", "T1c", "T2", "FLAIR"}
    volume, grade, mask = make_brain_mri(3, shape=(32, 32, 16))
    assert item["grade"] == grade
    stacked = load_multimodal(item["images"])
    np.testing.assert_array_equal(stacked.array, volume.array)
    loaded_mask = load_volume(item["tumor_mask"])
    np.testing.assert_array_equal(loaded_mask.array, mask)
    np.testing.assert_allclose(loaded_mask.affine, stacked.affine, atol=1e-4)  # same grid as T1


CLI_BAD_ARGS = {
    # case: (arguments, exit code, message part in stderr)
    "unknown kind": (["--kind", "knee-xr", "--count", "1"], 2, "--kind 'knee-xr'"),
    "count 0": (["--kind", "chest-ct", "--count", "0"], 2, "--count 0"),
    "count negative": (["--kind", "chest-ct", "--count", "-3"], 2, "--count -3"),
    "count not a number": (["--kind", "chest-ct", "--count", "many"], 2, "invalid int value"),
    "split of two": (["--kind", "chest-ct", "--count", "1", "--split", "0.5,0.5"], 2, "--split"),
    "split not summing to 1": (
        ["--kind", "chest-ct", "--count", "1", "--split", "0.7,0.2,0.2"],
        2,
        "summing to 1",
    ),
    "split not numbers": (
        ["--kind", "chest-ct", "--count", "1", "--split", "a,b,c"],
        2,
        "three numbers",
    ),
    "shape too small": (["--kind", "chest-ct", "--count", "1", "--shape", "8,8,8"], 2, "--shape"),
    "missing --out": (["--kind", "chest-ct", "--count", "1", "--no-out"], 2, "--out"),
}


@pytest.mark.parametrize("case", list(CLI_BAD_ARGS))
def test_cli_rejects_bad_arguments(case, tmp_path, capsys):
    """In-process through `ai_engine.cli.main` (what `python -m ai_engine` runs); the
    subprocess path is covered by the tests around it."""
    args, code, message = CLI_BAD_ARGS[case]
    out = tmp_path / "out"
    if "--no-out" in args:
        args = [a for a in args if a != "--no-out"]
    else:
        args = [*args, "--out", str(out)]
    try:
        returned = main(["phantoms", *args])
    except SystemExit as exc:  # argparse's own errors
        returned = exc.code
    assert returned == code
    assert message in capsys.readouterr().err
    assert not (out / "datalist.json").exists()
    assert not out.exists() or not any(out.iterdir())  # nothing half-written


def test_cli_refuses_to_overwrite_a_datalist(tmp_path, capsys):
    out = tmp_path / "out"
    out.mkdir()
    (out / "datalist.json").write_text("{}")
    assert main(["phantoms", "--kind", "chest-ct", "--count", "1", "--out", str(out)]) == 2
    assert "already holds a datalist.json" in capsys.readouterr().err
    assert (out / "datalist.json").read_text() == "{}"


def test_cli_subprocess_exits_non_zero_with_message(tmp_path):
    result = _cli("--kind", "chest-ct", "--count", "0", "--out", str(tmp_path / "new"))
    assert result.returncode == 2
    assert "error: --count 0: expected 1 to" in result.stderr
    assert not (tmp_path / "new").exists()
