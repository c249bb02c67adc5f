"""ai_engine.transforms: window presets, HU clip, resampling, orientation, normalisation,
and the Volume <-> MetaTensor bridge (a nodule center survives the round trip)."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from monai.data import MetaTensor
from monai.transforms import Compose, LoadImage

from ai_engine.data.phantoms import make_brain_mri, make_chest_ct
from ai_engine.io import LPS_TO_RAS, Volume, load_volume, save_nifti
from ai_engine.transforms import (
    CT_WINDOWS,
    CTWindow,
    CTWindowd,
    HUClip,
    HUClipd,
    LoadVolumed,
    MinMax,
    OrientRAS,
    OrientRASd,
    ResampleToSpacing,
    ResampleToSpacingd,
    ZScore,
    ZScored,
    lps_mm_to_voxel,
    metatensor_to_volume,
    volume_to_metatensor,
    voxel_to_lps_mm,
    window_range,
)

torch.set_num_threads(2)


@pytest.mark.parametrize("preset", sorted(CT_WINDOWS))
def test_window_presets_map_to_unit_range(preset):
    center, width = CT_WINDOWS[preset]
    hu = torch.tensor(
        [[center - width, center - width / 2, center, center + width / 2, center + width]]
    )
    out = CTWindow(preset)(hu)
    np.testing.assert_allclose(np.asarray(out), [[0.0, 0.0, 0.5, 1.0, 1.0]], atol=1e-6)
    out_d = CTWindowd("image", window=preset)({"image": hu})["image"]
    np.testing.assert_allclose(np.asarray(out_d), np.asarray(out))


def test_window_values_and_errors():
    assert window_range("lung") == (-1350.0, 150.0)
    assert window_range("mediastinum") == (-160.0, 240.0)
    assert window_range((50, 100)) == (0.0, 100.0)
    with pytest.raises(ValueError, match="unknown CT window 'liver'"):
        CTWindow("liver")
    with pytest.raises(ValueError, match="width must be positive"):
        CTWindow((0, 0))


def test_hu_clip():
    hu = torch.tensor([[-3000.0, -1024.0, -362.0, 300.0, 2000.0]])
    np.testing.assert_allclose(np.asarray(HUClip()(hu)), [[0.0, 0.0, 0.5, 1.0, 1.0]], atol=1e-6)
    np.testing.assert_allclose(
        np.asarray(HUClipd("x", a_min=-1000, a_max=0)({"x": hu})["x"])[0, 2], 0.638, atol=1e-6
    )
    with pytest.raises(ValueError, match="a_max"):
        HUClip(100, -100)


def _ct_metatensor(shape=(48, 48, 20), spacing=(0.7, 0.7, 2.0)):
    affine = np.diag([*spacing, 1.0])
    array = np.random.default_rng(0).normal(size=shape).astype(np.float32)
    return volume_to_metatensor(Volume(array, affine))


@pytest.mark.parametrize(
    ("target", "expected"),
    [
        ((1.4, 1.4, 2.0), (24, 24, 20)),
        ((0.7, 0.7, 1.0), (48, 48, 39)),
        ((2.1, 0.7, 4.0), (16, 48, 10)),
    ],
)
def test_resample_changes_shape_with_spacing(target, expected):
    tensor = _ct_metatensor()
    out = ResampleToSpacing(target)(tensor)
    assert out.shape[0] == 1
    assert all(abs(a - b) <= 1 for a, b in zip(out.shape[1:], expected, strict=True)), out.shape
    np.testing.assert_allclose(
        np.linalg.norm(np.asarray(out.affine)[:3, :3], axis=0), target, atol=1e-6
    )
    out_d = ResampleToSpacingd(["image", "label"], target, mode=["bilinear", "nearest"])(
        {"image": tensor, "label": tensor.clone()}
    )
    assert out_d["label"].shape == out.shape


def test_resample_rejects_bad_spacing():
    with pytest.raises(ValueError, match="three positive numbers"):
        ResampleToSpacing((1.0, 0.0, 1.0))


def test_orientation_to_ras_flips_lps_axes():
    tensor = _ct_metatensor()
    out = OrientRAS()(tensor)
    np.testing.assert_array_equal(np.asarray(out[0]), np.asarray(tensor[0]).copy()[::-1, ::-1, :])
    assert np.all(np.diag(np.asarray(out.affine))[:3] > 0)
    out_d = OrientRASd("image")({"image": tensor})["image"]
    np.testing.assert_array_equal(np.asarray(out_d), np.asarray(out))


def test_zscore_per_channel_and_minmax():
    volume, _, _ = make_brain_mri(1, shape=(40, 40, 16))
    tensor = volume_to_metatensor(volume)
    out = np.asarray(ZScore(nonzero=True)(tensor))
    for c in range(4):
        nonzero = np.asarray(tensor[c]) != 0
        assert abs(out[c][nonzero].mean()) < 1e-3
        assert abs(out[c][nonzero].std() - 1.0) < 1e-2
    out_d = np.asarray(ZScored("image", nonzero=True)({"image": tensor})["image"])
    np.testing.assert_allclose(out_d, out, atol=1e-5)
    scaled = np.asarray(MinMax()(tensor))
    np.testing.assert_allclose(scaled.reshape(4, -1).min(1), 0.0, atol=1e-6)
    np.testing.assert_allclose(scaled.reshape(4, -1).max(1), 1.0, atol=1e-6)


def test_metatensor_round_trip_is_exact():
    volume, _ = make_chest_ct(4, shape=(64, 64, 16))
    tensor = volume_to_metatensor(volume)
    assert tensor.shape == (1, 64, 64, 16)
    np.testing.assert_allclose(np.asarray(tensor.affine), LPS_TO_RAS @ volume.affine)
    back = metatensor_to_volume(tensor)
    np.testing.assert_array_equal(back.array, volume.array)
    np.testing.assert_allclose(back.affine, volume.affine)


def test_nodule_center_maps_through_transforms_and_back():
    """LPS center -> voxel in the RAS-oriented, resampled tensor -> LPS again; the voxel it
    lands on is bright nodule tissue."""
    for seed in range(30):
        volume, nodules = make_chest_ct(seed, shape=(96, 96, 32), n_nodules=2)
        solid = [n for n in nodules if n["kind"] == "solid" and n["diameter_mm"] >= 5]
        if solid:
            break
    center = np.array([solid[0]["center_lps_mm"]])
    pipeline = Compose([OrientRAS(), ResampleToSpacing((1.0, 1.0, 1.5)), HUClip()])
    out = pipeline(volume_to_metatensor(volume))
    voxel = lps_mm_to_voxel(out, center)
    np.testing.assert_allclose(voxel_to_lps_mm(out, voxel), center, atol=1e-6)
    value = float(out[0][tuple(np.rint(voxel[0]).astype(int))])
    lung_value = (-850 + 1024) / 1324
    assert value > lung_value + 0.2
    # the same point in the original grid holds the same tissue
    original = volume.array[tuple(np.rint(volume.lps_to_voxel(center)[0]).astype(int))]
    assert original > -500


@pytest.mark.filterwarnings("ignore:NvImgCodecPydicomReader")
def test_load_volumed_agrees_with_monai_nifti_reader(tmp_path):
    """Our LPS->RAS bridge gives the same affine as MONAI's own NIfTI loader."""
    volume, _ = make_chest_ct(6, shape=(64, 64, 16))
    path = save_nifti(volume, tmp_path / "ct.nii.gz")
    ours = LoadVolumed("image")({"image": str(path)})["image"]
    monai_loaded = LoadImage(reader="NibabelReader", image_only=True, ensure_channel_first=True)(
        str(path)
    )
    assert isinstance(ours, MetaTensor)
    np.testing.assert_allclose(np.asarray(ours.affine), np.asarray(monai_loaded.affine), atol=1e-4)
    np.testing.assert_allclose(np.asarray(ours), np.asarray(monai_loaded), atol=1e-3)
    np.testing.assert_allclose(load_volume(path).affine, volume.affine, atol=1e-4)
