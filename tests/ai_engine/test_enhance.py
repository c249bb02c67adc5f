"""The blob-enhancement channel (`ai_engine.transforms.enhance`): the Hessian dot filter that
tells a small nodule from a vessel cut across, and how the detector carries it."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from monai.data import MetaTensor
from scipy import ndimage

from ai_engine.transforms.enhance import BlobEnhanced, blob_response, symmetric_eigenvalues


def test_closed_form_eigenvalues_match_lapack():
    rng = np.random.default_rng(0)
    a = rng.normal(size=(500, 3, 3))
    a = a + a.transpose(0, 2, 1)
    a[:5] = np.diag([2.0, 2.0, 2.0])  # a multiple of the identity (p = 0)
    a[5:10] = np.diag([1.0, 1.0, -3.0])  # a repeated eigenvalue
    t = torch.from_numpy(a)
    got = torch.stack(
        symmetric_eigenvalues(
            t[:, 0, 0], t[:, 1, 1], t[:, 2, 2], t[:, 0, 1], t[:, 0, 2], t[:, 1, 2]
        ),
        dim=1,
    ).numpy()
    assert np.allclose(got, np.linalg.eigvalsh(a), atol=1e-9)


def _grid(shape=(40, 40, 40)):
    return np.meshgrid(*(np.arange(n, dtype=np.float32) for n in shape), indexing="ij")


def _ball(center, radius, shape=(40, 40, 40)):
    x, y, z = _grid(shape)
    d = np.sqrt((x - center[0]) ** 2 + (y - center[1]) ** 2 + (z - center[2]) ** 2)
    return np.clip(radius + 0.5 - d, 0.0, 1.0)


def _tube_along_z(center_xy, radius, shape=(40, 40, 40)):
    x, y, _ = _grid(shape)
    d = np.sqrt((x - center_xy[0]) ** 2 + (y - center_xy[1]) ** 2)
    return np.clip(radius + 0.5 - d, 0.0, 1.0)


SCALES = [(1.0,) * 3, (1.5,) * 3, (2.5,) * 3]


def test_a_ball_responds_and_a_tube_of_the_same_width_hardly_does():
    """The property the channel exists for: same width, same contrast, in a slice both are
    a bright disc; in 3D only the ball is bright in every direction."""
    background = 0.1
    ball = background + 0.6 * _ball((20, 20, 20), 2.5)
    tube = background + 0.6 * _tube_along_z((20, 20), 2.5)
    r_ball = blob_response(ball, SCALES)
    r_tube = blob_response(tube, SCALES)
    assert r_ball[20, 20, 20] == pytest.approx(r_ball.max())  # peaks at the centre
    assert r_ball.max() > 5 * r_tube.max()
    # nothing bright: nothing enhanced; a dark blob (l3 > 0) is not a nodule either
    assert blob_response(np.full((24, 24, 24), 0.4, np.float32), SCALES).max() == 0.0
    assert blob_response(0.7 - 0.6 * _ball((20, 20, 20), 2.5), SCALES).max() < 1e-3 * r_ball.max()


def test_slabs_give_exactly_the_one_pass_response():
    """The Hessian runs on slabs with 2 slices of margin: any slab thickness (1 slice, a
    thickness that leaves a short last slab, the whole volume) gives the same numbers."""
    rng = np.random.default_rng(0)
    image = ndimage.gaussian_filter(rng.random((30, 26, 23)).astype(np.float32), 1.5)
    scales = [(1.5, 1.5, 1.5), (2.0, 1.5, 1.0)]
    whole = blob_response(image, scales, slab=23)
    assert whole.max() > 0
    for slab in (1, 2, 5, 16):
        np.testing.assert_array_equal(blob_response(image, scales, slab=slab), whole)
    with pytest.raises(ValueError, match="slab must be >= 1 slice, got 0"):
        blob_response(image, scales, slab=0)


def test_blob_enhanced_appends_a_channel_in_mm_and_keeps_the_geometry():
    """Sigmas are mm: on an anisotropic grid (1 x 1 x 2 mm) the ball drawn in mm still
    peaks at its centre. The channel is scaled and clipped to [0, 2]; the affine stays."""
    x, y, z = _grid((40, 40, 20))
    d = np.sqrt((x - 20) ** 2 + (y - 20) ** 2 + ((z - 10) * 2.0) ** 2)  # mm
    image = 0.1 + 0.15 * np.clip(3.0 + 0.5 - d, 0.0, 1.0)  # faint: below the clip
    affine = torch.diag(torch.tensor([1.0, 1.0, 2.0, 1.0], dtype=torch.float64))
    tensor = MetaTensor(torch.from_numpy(image[None].astype(np.float32)), affine=affine)
    out = BlobEnhanced("image", sigmas_mm=(1.5, 2.25, 3.75))({"image": tensor})["image"]
    assert isinstance(out, MetaTensor) and tuple(out.shape) == (2, 40, 40, 20)
    assert torch.equal(out.affine, affine)
    assert torch.equal(out[0], tensor[0])
    channel = out[1].numpy()
    assert np.unravel_index(int(np.argmax(channel)), channel.shape) == (20, 20, 10)
    assert channel.min() >= 0.0 and 0.1 < channel.max() < 2.0
    bright = BlobEnhanced("image", sigmas_mm=(1.5,))({"image": tensor * 20})["image"][1]
    assert float(bright.max()) == 2.0  # clipped
    with pytest.raises(ValueError, match="sigmas_mm"):
        BlobEnhanced("image", sigmas_mm=())
    with pytest.raises(ValueError, match="sigmas_mm"):
        BlobEnhanced("image", sigmas_mm=(1.0, -1.0))


def test_detector_config_carries_the_channel_and_old_folders_load_without_it():
    from ai_engine.detection.config import DetectionConfig
    from ai_engine.detection.patches import extract_patches

    cfg = DetectionConfig(unet_channels=(4, 8, 16), patch_size=(32, 32, 32))
    assert cfg.blob_sigmas_mm and cfg.in_channels == 2
    assert cfg.unet_kwargs["in_channels"] == 2 and cfg.fp_kwargs["in_channels"] == 2
    old = {k: v for k, v in cfg.to_dict().items() if k != "blob_sigmas_mm"}
    assert DetectionConfig.from_dict(old).in_channels == 1  # a folder written before
    assert DetectionConfig.from_dict(cfg.to_dict()).blob_sigmas_mm == cfg.blob_sigmas_mm
    with pytest.raises(ValueError, match="blob_sigmas_mm"):
        DetectionConfig(blob_sigmas_mm=(0.0,))
    # classifier patches keep every channel, in register
    image = np.stack([np.arange(1000, dtype=np.float32).reshape(10, 10, 10)] * 2)
    image[1] *= -1
    patches = extract_patches(image, np.array([[5, 5, 5], [0, 0, 0]]), 4)
    assert patches.shape == (2, 2, 4, 4, 4)
    assert np.array_equal(patches[:, 1], -patches[:, 0])
    assert patches[0, 0, 2, 2, 2] == image[0, 5, 5, 5] and patches[1, 0, 0, 0, 0] == 0.0
