"""What the image says around a candidate (`ai_engine.detection.context`): each number on
hand-made shapes whose answer is known - a nodule alone in the lung, a vessel, a nodule on a
vessel, the chest wall - and the same answers on another voxel spacing."""

from __future__ import annotations

import math

import numpy as np
import pytest

from ai_engine.detection.context import CONTEXT_FEATURES, context_features

HU = (-1000.0, 400.0)
LUNG, TISSUE = -850.0, 40.0


def _window(hu: np.ndarray) -> np.ndarray:
    return ((hu - HU[0]) / (HU[1] - HU[0])).astype(np.float32)


def _scene(shape_name: str, spacing=(1.0, 1.0, 1.0), size_mm=48.0, radius=3.0):
    """A windowed image with `shape_name` drawn at the centre (mm coordinates), and the
    centre in voxels (a whole voxel: odd sizes)."""
    spacing = np.asarray(spacing, dtype=float)
    n = 2 * np.round(size_mm / 2.0 / spacing).astype(int) + 1
    axes = [(np.arange(k) - (k - 1) / 2.0) * s for k, s in zip(n, spacing, strict=True)]
    x, y, z = np.meshgrid(*axes, indexing="ij")
    hu = np.full(x.shape, LUNG, dtype=np.float32)
    sphere = x**2 + y**2 + z**2 <= radius**2
    vessel = y**2 + z**2 <= 1.2**2  # a vessel 2.4 mm across along the first axis
    if shape_name == "nodule":
        hu[sphere] = TISSUE
    elif shape_name == "vessel":
        hu[vessel] = TISSUE
    elif shape_name == "attached":  # a nodule with a vessel running off one side
        hu[sphere | (vessel & (x > 0))] = TISSUE
    elif shape_name == "wall":  # the chest wall 1 mm beyond the centre
        hu[x >= -1.0] = TISSUE
    elif shape_name != "air":
        raise ValueError(shape_name)
    return _window(hu), (n - 1) / 2.0


def _features(shape_name, spacing=(1.0, 1.0, 1.0), diameter=6.0, blob=None, prob=None):
    image, centre = _scene(shape_name, spacing)
    prob = np.zeros_like(image) if prob is None else prob
    return context_features(image, blob, prob, centre, diameter, np.asarray(spacing), HU)


def test_every_feature_is_returned_in_order():
    assert tuple(_features("nodule")) == CONTEXT_FEATURES


def test_a_nodule_alone_a_vessel_and_a_nodule_on_a_vessel_differ_as_their_shapes_do():
    nodule, attached = _features("nodule"), _features("attached")
    vessel = _features("vessel", diameter=3.0)  # a region of the vessel's width
    # alone in the lung: nothing dense 2 mm outside it, round, only itself connected
    assert nodule["shell_tissue"] == 0.0
    assert nodule["blobness"] > 0.9
    assert abs(nodule["log_connected"]) < 0.3 and nodule["elongation"] < 0.2
    # a vessel: two spots on the shell, a tube's Hessian, long and much more connected
    assert 0.0 < vessel["shell_tissue"] < 0.2
    assert vessel["blobness"] < 0.1
    assert vessel["elongation"] > 2.0 and vessel["log_connected"] > 0.5
    # a nodule on a vessel: one spot, still round at its centre, between the two in length
    assert 0.0 < attached["shell_tissue"] < vessel["shell_tissue"]
    assert attached["blobness"] > 0.8
    assert nodule["elongation"] < attached["elongation"] < vessel["elongation"]
    # the chest wall fills half the shell
    assert _features("wall")["shell_tissue"] > 0.4


def test_the_solid_core_and_the_thickness_of_what_it_runs_on_into():
    """A nodule alone has a core of its radius and nothing beyond it; a vessel is as thick as
    what it runs on into (ratio 1, log 0); a nodule on a vessel has the nodule's core and is
    about twice as thick as its vessel (what a vessel junction is not)."""
    nodule, attached = _features("nodule"), _features("attached")
    vessel = _features("vessel", diameter=3.0)
    assert math.exp(nodule["log_core"]) - 0.5 == pytest.approx(3.0, abs=0.3)  # radius 3 mm
    assert nodule["core_to_neck"] == pytest.approx(nodule["log_core"] - math.log(0.5))
    assert math.exp(vessel["log_core"]) - 0.5 == pytest.approx(1.2, abs=0.3)  # 2.4 mm across
    assert vessel["core_to_neck"] == pytest.approx(0.0, abs=0.1)
    assert attached["log_core"] == pytest.approx(nodule["log_core"], abs=0.05)
    assert 0.4 < attached["core_to_neck"] < 0.9 < nodule["core_to_neck"]


def test_a_dark_centre_with_nothing_dense_gets_the_documented_values():
    air = _features("air")
    assert air["shell_tissue"] == 0.0
    assert air["blobness"] == -1.0  # no bright extremum
    assert air["log_connected"] == -3.0 and air["elongation"] == 0.0
    assert air["blob_max_3mm"] == 0.0 and air["prob_mass"] == 0.0
    assert air["log_core"] == pytest.approx(math.log(0.5)) and air["core_to_neck"] == 0.0
    assert air["fine_max_2mm"] == 0.0  # no fine filter given


@pytest.mark.parametrize("shape_name", ["nodule", "vessel", "attached"])
def test_the_numbers_are_in_millimetres_so_another_spacing_gives_the_same(shape_name):
    """Half-millimetre voxels give the 1 mm grid's numbers (a coarser axis than the 2.4 mm
    vessel is wide changes the vessel itself, not the units)."""
    iso = _features(shape_name)
    other = _features(shape_name, spacing=(0.5, 0.5, 0.5))
    assert other["shell_tissue"] == pytest.approx(iso["shell_tissue"], abs=0.05)
    assert other["blobness"] == pytest.approx(iso["blobness"], abs=0.15)
    assert other["log_connected"] == pytest.approx(iso["log_connected"], abs=0.25)
    assert other["elongation"] == pytest.approx(iso["elongation"], abs=0.4)
    assert other["log_core"] == pytest.approx(iso["log_core"], abs=0.1)
    assert other["core_to_neck"] == pytest.approx(iso["core_to_neck"], abs=0.1)


def test_blob_peaks_within_3_and_2_mm_and_probability_mass_in_cubic_millimetres():
    image, centre = _scene("nodule")
    c = np.rint(centre).astype(int)
    blob = np.zeros_like(image)
    blob[c[0] + 2, c[1], c[2]] = 0.9  # the filter's peak 2 mm off the centre: found
    blob[c[0], c[1] + 5, c[2]] = 1.5  # a stronger one 5 mm away: another structure's
    prob = np.zeros_like(image)
    prob[c[0] - 1 : c[0] + 2, c[1] - 1 : c[1] + 2, c[2] - 1 : c[2] + 2] = 1.0  # 27 mm^3
    prob[0, 0, 0] = 1.0  # far beyond the reach (radius + 6 mm)
    fine = np.zeros_like(image)
    fine[c[0], c[1], c[2] - 1] = 0.4  # the fine filter's peak 1 mm off: found
    fine[c[0], c[1] - 3, c[2]] = 0.8  # 3 mm away: beyond its 2 mm
    f = context_features(image, blob, prob, centre, 6.0, np.ones(3), HU, fine)
    assert f["blob_max_3mm"] == pytest.approx(0.9)
    assert f["fine_max_2mm"] == pytest.approx(0.4)
    assert f["prob_mass"] == pytest.approx(math.log1p(27.0))
    half = context_features(image[:, :, ::2], None, prob[:, :, ::2], centre / [1, 1, 2], 6.0,
                            np.array([1.0, 1.0, 2.0]), HU)  # fmt: skip
    assert half["blob_max_3mm"] == 0.0  # no blob channel
    assert half["prob_mass"] == pytest.approx(math.log1p(9 * 2.0))  # the middle slice: 9 of 2 mm^3


def test_a_candidate_at_the_edge_of_the_scan_reads_air_beyond_it():
    image, _ = _scene("wall")
    f = context_features(image, None, np.zeros_like(image), np.array([0.0, 0.0, 0.0]), 4.0,
                         np.ones(3), HU)  # fmt: skip
    assert set(f) == set(CONTEXT_FEATURES) and all(np.isfinite(v) for v in f.values())


def test_the_pipeline_sets_the_context_of_every_candidate():
    """Candidates from a probability map with two spheres, on a phantom, plus the blob channel's
    and the fine dot filter's maxima: each carries the context numbers, and they are what
    `context_features` gives at its centre (with the fine filter's response)."""
    from dataclasses import replace

    from ai_engine.data.phantoms import make_chest_ct
    from ai_engine.detection.pipeline import NoduleDetector
    from ai_engine.detection.transforms import preprocessing
    from ai_engine.networks import build_network
    from ai_engine.transforms.enhance import blob_response
    from tests.ai_engine.detection_support import TINY

    config = replace(TINY, blob_candidates=2, fine_blob_candidates=2)
    volume, nodules = make_chest_ct(31, shape=(96, 96, 32), n_nodules=2)
    pre = preprocessing(
        config.spacing_mm, config.hu_range, with_label=True, blob_sigmas_mm=config.blob_sigmas_mm
    )
    out = pre({"image": volume, "nodules": nodules})
    prob = out["label"][0].numpy().astype(np.float32)
    detector = NoduleDetector(config, build_network("unet3d", **config.unet_kwargs))
    cands, _labels, _centers = detector.candidates_from_probability(out["image"], prob)
    assert len(cands) >= 2 and {c.source for c in cands} == {"unet", "blob", "fine"}
    assert sum(c.source == "fine" for c in cands) == 2
    arrays = out["image"].numpy()
    fine = blob_response(arrays[0], [(0.75 / 1.5,) * 3])
    for c in cands:
        assert tuple(c.context) == CONTEXT_FEATURES
        expected = context_features(
            arrays[0], arrays[1], prob, c.center_voxel, c.diameter_mm,
            np.asarray(config.spacing_mm), config.hu_range, fine,
        )  # fmt: skip
        assert c.context == pytest.approx(expected)


def test_patches_of_one_edge_per_axis_as_the_context_cuts_them():
    """`extract_patches` with an edge per axis (the context's box on an anisotropic grid): the
    rounded centre sits at edge // 2 on each axis, the scan's outside is 0, and equal edges
    give the cube."""
    from ai_engine.detection.patches import extract_patches

    image = np.arange(10 * 12 * 8, dtype=np.float32).reshape(10, 12, 8)
    (patch,) = extract_patches(image, np.array([[4.6, 6.2, 0.0]]), (5, 7, 3))[:, 0]
    assert patch.shape == (5, 7, 3)
    assert patch[2, 3, 1] == image[5, 6, 0]
    assert np.array_equal(patch[:, :, 1:], image[3:8, 3:10, 0:2])
    assert (patch[:, :, 0] == 0).all()  # slice -1: beyond the scan
    cube = extract_patches(image, np.array([[5, 6, 4]]), 4)
    assert np.array_equal(cube, extract_patches(image, np.array([[5, 6, 4]]), (4, 4, 4)))
