"""Nodule copy-paste (`ai_engine.detection.paste`): a pasted nodule is its donor's sphere on
the target's grid, sites touch a dense structure (or keep clear of it) inside the lung, and
the copies are new items that leave the originals alone, drawn the same for the same seed."""

from __future__ import annotations

import numpy as np
import pytest
from scipy import ndimage

from ai_engine.data.phantoms import make_chest_ct
from ai_engine.detection.paste import (
    DENSE_HU,
    lung_air,
    paste_nodule,
    paste_sites,
    pasted_copies,
)
from ai_engine.errors import InputError
from ai_engine.io.volume import Volume


def _chest(shape=(60, 60, 30), spacing=(1.0, 1.0, 1.0)) -> Volume:
    """A box of soft tissue (+40 HU) in air with a slab of lung (-850 HU) inside and one
    vessel (a +40 HU cylinder, radius 2 mm) running along z through the lung's middle."""
    hu = np.full(shape, -1000.0, np.float32)
    hu[5:-5, 5:-5, :] = 40.0
    hu[12:-12, 12:-12, :] = -850.0
    i, j = np.meshgrid(np.arange(shape[0]), np.arange(shape[1]), indexing="ij")
    vessel = (i * spacing[0] - 30.0) ** 2 + (j * spacing[1] - 30.0) ** 2 <= 2.0**2
    hu[vessel] = 40.0
    return Volume(hu, np.diag([*spacing, 1.0]))


def test_lung_air_is_the_air_inside_the_body_not_around_it():
    chest = _chest()
    lung = lung_air(chest.array)
    assert lung[30, 20, 10] and lung[15, 15, 0]  # lung
    assert not lung[2, 2, 10]  # the air around the body
    assert not lung[30, 30, 10] and not lung[8, 30, 10]  # the vessel, the wall


@pytest.mark.parametrize("radius", [1.5, 2.5])
def test_attached_sites_touch_a_dense_voxel_and_free_ones_keep_clear(radius):
    chest = _chest()
    dense = chest.array > DENSE_HU
    distance = ndimage.distance_transform_edt(~dense)  # 1 mm voxels
    attached = paste_sites(chest, radius, attached=True)
    free = paste_sites(chest, radius, attached=False)
    assert len(attached) > 20 and len(free) > 20
    d_att = distance[tuple(attached.T)]
    assert np.all(d_att <= radius + 0.5 + 1e-6)
    assert np.any(d_att == 0) and np.any(d_att >= radius - 0.5)  # on a vessel, or touching it
    assert np.all(distance[tuple(free.T)] >= radius + 1.5)
    lung = lung_air(chest.array)
    assert lung[tuple(free.T)].all()
    # around the vessel (not only along the wall): attached sites on it and beside it
    to_vessel = np.hypot(attached[:, 0] - 30.0, attached[:, 1] - 30.0)
    assert np.any(to_vessel <= 1.0) and np.any(np.abs(to_vessel - (2.0 + radius)) <= 1.0)
    # never in the wall's depth or the air around the body (the box around them is no lung)
    assert np.all((attached[:, :2] >= 10) & (attached[:, :2] < 50))


def test_a_pasted_nodule_is_its_donors_sphere_on_the_targets_grid():
    """Donor: a 10 mm sphere of +30 HU on 0.7 x 0.7 x 2 mm voxels; target: lung on 1 mm voxels.
    Where the donor's voxels around a point all lie in its sphere the target becomes the
    donor's HU; beyond radius + 0.5 mm it is untouched; between, it is a blend of the two."""
    spacing_d = np.array([0.7, 0.7, 2.0])
    donor_hu = np.full((60, 60, 20), -850.0, np.float32)
    grid = np.stack(np.meshgrid(*[np.arange(n) for n in donor_hu.shape], indexing="ij"), -1)
    donor_center_vox = np.array([30.0, 30.0, 10.0])
    donor_hu[np.linalg.norm((grid - donor_center_vox) * spacing_d, axis=-1) <= 5.0] = 30.0
    donor_affine = np.diag([*spacing_d, 1.0])
    donor_affine[:3, 3] = [-50.0, 10.0, 5.0]
    donor = Volume(donor_hu, donor_affine)
    donor_center = donor.voxel_to_lps(donor_center_vox[None])[0]

    target = np.full((40, 40, 40), -850.0, np.float32)
    target_affine = np.eye(4)
    center = np.array([20.3, 19.6, 20.0])
    paste_nodule(target, target_affine, donor, donor_center, 5.0, center)
    tgrid = np.stack(np.meshgrid(*[np.arange(n) for n in target.shape], indexing="ij"), -1)
    dist = np.linalg.norm(tgrid - center, axis=-1)
    core = dist <= 5.0 - np.linalg.norm(spacing_d)  # trilinear reach
    assert core.sum() > 20 and np.allclose(target[core], 30.0)
    assert np.all(target[dist > 5.5] == -850.0)
    edge = (dist > 4.0) & (dist < 5.5)
    assert target[edge].min() >= -850.0 and target[edge].max() <= 30.0


def test_pasted_copies_add_nodules_to_new_items_and_leave_the_originals():
    items = []
    for seed in (3, 4):
        volume, nodules = make_chest_ct(seed, shape=(96, 96, 32), n_nodules=3)
        items.append({"image": volume, "nodules": [dict(n) for n in nodules]})
    before = [(it["image"].array.copy(), [dict(n) for n in it["nodules"]]) for it in items]
    copies = pasted_copies(items, copies=2, per_scan=3, max_diameter_mm=30.0, seed=1)
    assert len(copies) == 4
    for (array, nodules), item in zip(before, items, strict=True):  # originals unchanged
        assert np.array_equal(item["image"].array, array) and item["nodules"] == nodules
    donors = {n["diameter_mm"] for it in items for n in it["nodules"]}
    n_pasted = 0
    for k, copy in enumerate(copies):
        original = items[k // 2]
        assert copy["nodules"][: len(original["nodules"])] == original["nodules"]
        pasted = [n for n in copy["nodules"] if n.get("pasted")]
        assert 1 <= len(pasted) <= 3
        n_pasted += len(pasted)
        assert {n["diameter_mm"] for n in pasted} <= donors
        centers = np.array([n["center_lps_mm"] for n in copy["nodules"]])
        radii = np.array([n["diameter_mm"] / 2 for n in copy["nodules"]])
        for i in range(len(original["nodules"]), len(centers)):  # 2 mm from every other sphere
            gap = np.linalg.norm(centers - centers[i], axis=1) - radii - radii[i]
            assert np.all(np.delete(gap, i) >= 2.0 - 1e-3)
        changed = copy["image"].array != original["image"].array
        assert changed.any()
        # only near the pasted spheres
        vox = np.argwhere(changed)
        lps = copy["image"].voxel_to_lps(vox)
        near = np.min(
            [
                np.linalg.norm(lps - n["center_lps_mm"], axis=1) - n["diameter_mm"] / 2
                for n in pasted
            ],
            axis=0,
        )
        assert near.max() <= 0.5 + 1e-6
    assert n_pasted >= 8
    again = pasted_copies(items, copies=2, per_scan=3, max_diameter_mm=30.0, seed=1)
    for a, b in zip(copies, again, strict=True):
        assert np.array_equal(a["image"].array, b["image"].array) and a["nodules"] == b["nodules"]
    other = pasted_copies(items, copies=2, per_scan=3, max_diameter_mm=30.0, seed=2)
    assert any(a["nodules"] != b["nodules"] for a, b in zip(copies, other, strict=True))


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"copies": -1}, "paste copies must be >= 0 and per scan >= 1, got -1, 4"),
        ({"copies": 1, "per_scan": 0}, "paste copies must be >= 0 and per scan >= 1, got 1, 0"),
        ({"copies": 1, "attached_share": 1.5}, "paste attached share must be in [0, 1], got 1.5"),
        ({"copies": 1, "max_diameter_mm": 1.0}, "no training nodule is at most 1.0 mm across"),
    ],
)
def test_bad_paste_settings_are_refused(kwargs, message):
    volume, nodules = make_chest_ct(5, shape=(64, 64, 16), n_nodules=2)
    with pytest.raises(InputError, match=message.replace("[", r"\[").replace("]", r"\]")):
        pasted_copies([{"image": volume, "nodules": nodules}], **kwargs)


def test_no_copies_no_work():
    assert pasted_copies([{"image": "never/loaded", "nodules": []}], copies=0) == []


@pytest.mark.parametrize("share", [0.0, 1.0])
def test_the_attached_share_and_the_largest_donor_decide_what_is_pasted(share):
    """All attached (share 1: each centre within its radius of a dense voxel of the scan) or
    all free (share 0: aerated lung, radius + 1.5 mm or more from every dense voxel); no donor
    over `max_diameter_mm`, though the scans hold larger nodules."""
    volume, nodules = make_chest_ct(3, shape=(96, 96, 32), n_nodules=4)
    small = min(n["diameter_mm"] for n in nodules)
    assert max(n["diameter_mm"] for n in nodules) > small  # a larger one to leave out
    items = [{"image": volume, "nodules": nodules}]
    (copy,) = pasted_copies(
        items, copies=1, per_scan=4, max_diameter_mm=small, attached_share=share
    )
    pasted = [n for n in copy["nodules"] if n.get("pasted")]
    assert pasted and all(n["diameter_mm"] == small for n in pasted)
    assert all(n["attached"] is bool(share) for n in pasted)
    dense_mm = ndimage.distance_transform_edt(volume.array <= DENSE_HU, sampling=volume.spacing)
    for n in pasted:
        ijk = np.rint(volume.lps_to_voxel(np.array([n["center_lps_mm"]]))[0]).astype(int)
        distance, radius = dense_mm[tuple(ijk)], n["diameter_mm"] / 2
        if share:
            assert distance <= radius + 0.5 * volume.spacing.max() + 1e-6
        else:
            assert distance >= radius + 1.5
