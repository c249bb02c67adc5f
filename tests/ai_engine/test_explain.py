"""Grad-CAM / Grad-CAM++ / occlusion heat maps, source geometry, pointing game."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from scipy import ndimage

from ai_engine.explain import (
    explain,
    explain_patch_in_volume,
    find_target_layer,
    heatmap_to_source,
    key_slice,
    pointing_game,
    save_heatmap,
    save_key_slice_png,
)
from ai_engine.grading.data import model_grid_affine
from ai_engine.io import Volume, load_volume
from ai_engine.networks import build_network

torch.set_num_threads(2)


class BlobScorer(torch.nn.Module):
    """Class 1 score = mean of a ReLU feature map that is high where the image is bright.

    A faithful explanation of class 1 must peak on the bright blob.
    """

    def __init__(self) -> None:
        super().__init__()
        self.features = torch.nn.Conv3d(1, 4, 3, padding=1)
        self.act = torch.nn.ReLU()
        self.pool = torch.nn.AdaptiveAvgPool3d(1)
        self.head = torch.nn.Linear(4, 2)
        with torch.no_grad():
            self.features.weight.zero_()
            self.features.weight[:, 0, 1, 1, 1] = 1.0  # identity-like features
            self.features.bias.fill_(-0.2)
            self.head.weight.copy_(torch.tensor([[-1.0] * 4, [1.0] * 4]))
            self.head.bias.zero_()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.pool(self.act(self.features(x))).flatten(1))


def _blob_image(shape=(24, 24, 24), center=(16, 6, 12), radius=3.0, seed=0):
    rng = np.random.default_rng(seed)
    grid = np.stack(np.meshgrid(*(np.arange(n) for n in shape), indexing="ij"))
    dist = np.sqrt(((grid - np.array(center)[:, None, None, None]) ** 2).sum(0))
    mask = dist <= radius
    image = 0.1 * rng.random(shape) + mask * 1.0
    return image[None].astype(np.float32), mask


@pytest.mark.parametrize("method", ["gradcam", "gradcampp", "occlusion"])
def test_heat_map_points_at_the_evidence(method):
    image, mask = _blob_image()
    heat, cls = explain(BlobScorer(), image, method=method, class_idx=1)
    assert cls == 1
    assert heat.shape == mask.shape
    assert pointing_game(heat, mask, tolerance_voxels=1)
    assert heat[mask].mean() > 3 * heat[~mask].mean()


def test_explain_defaults_to_predicted_class():
    image, _ = _blob_image()
    _, cls = explain(BlobScorer(), image)
    assert cls == 1  # the bright blob makes class 1 win


@pytest.mark.parametrize(
    ("name", "kwargs", "shape", "expected"),
    [
        # the detection FP classifier: a MONAI ResNet on 1-channel patches
        ("resnet3d", {"in_channels": 1, "num_classes": 1}, (1, 1, 32, 32, 32), "layer4"),
        ("resnet3d", {"in_channels": 4, "num_classes": 3}, (1, 4, 32, 32, 32), "layer4"),
        (
            "vit_classifier",
            {"in_channels": 4, "num_classes": 3, "img_size": 32, "num_layers": 1},
            (1, 4, 32, 32, 32),
            "token_grid",
        ),
    ],
)
def test_target_layer_for_registry_networks(name, kwargs, shape, expected):
    net = build_network(name, **kwargs).eval()
    assert find_target_layer(net, torch.zeros(shape)) == expected
    heat, _ = explain(net, torch.randn(shape[1:]), method="gradcam")
    assert heat.shape == shape[2:]
    assert np.isfinite(heat).all()


def test_target_layer_for_densenet_is_class_layers_relu():
    from monai.networks.nets import DenseNet

    net = DenseNet(3, 1, 2, init_features=4, growth_rate=4, block_config=(1, 1, 1, 1)).eval()
    assert find_target_layer(net, torch.zeros(1, 1, 64, 64, 64)) == "class_layers.relu"


def test_single_logit_fp_classifier_patch_in_volume():
    net = build_network("resnet3d", in_channels=1, num_classes=1).eval()
    patch = torch.randn(1, 16, 16, 16)
    heat, cls = explain_patch_in_volume(net, (40, 30, 20), (30, -4, 10), patch)
    assert cls == 0 and heat.shape == (40, 30, 20)
    outside = np.ones_like(heat, dtype=bool)
    outside[30:40, 0:12, 10:20] = False
    assert not heat[outside].any()  # nothing outside the (clipped) patch box
    assert heat[30:40, 0:12, 10:20].max() > 0
    # a patch entirely outside leaves the volume empty
    empty, _ = explain_patch_in_volume(net, (40, 30, 20), (50, 0, 0), patch)
    assert not empty.any()


def test_heatmap_back_on_source_grid_keeps_geometry(tmp_path):
    affine = np.array(
        [[0.0, 1.9, 0.0, -40.0], [-1.9, 0.0, 0.0, 30.0], [0.0, 0.0, 2.6, -20.0], [0, 0, 0, 1.0]]
    )  # rotated axes, anisotropic spacing, shifted origin
    source = Volume(
        np.random.default_rng(0).random((4, 40, 36, 24)), affine, {"missing_channels": []}
    )
    size = (20, 18, 16)
    model_affine = model_grid_affine(affine, source.spatial_shape, size)
    peak_model = np.array([14, 5, 9])
    heat = np.zeros(size, dtype=np.float32)
    heat[tuple(peak_model)] = 1.0
    heat = ndimage.gaussian_filter(heat, 1.5)  # a smooth map with one maximum
    back = heatmap_to_source(heat, model_affine, source)
    assert back.array.shape == source.spatial_shape
    np.testing.assert_allclose(back.affine, source.affine)
    # the peak lands at the same patient position (within one source voxel)
    peak_lps = Volume(heat, model_affine).voxel_to_lps(peak_model)[0]
    peak_back = np.unravel_index(int(np.argmax(back.array)), back.array.shape)
    got_lps = back.voxel_to_lps(np.array(peak_back))[0]
    assert np.linalg.norm(got_lps - peak_lps) <= np.linalg.norm(source.spacing) + 1e-6
    path = save_heatmap(back, tmp_path / "heat.nii.gz")
    loaded = load_volume(path)
    assert loaded.array.shape == source.spatial_shape
    np.testing.assert_allclose(loaded.affine, source.affine, atol=1e-4)
    png = save_key_slice_png(source.array[0], back.array, tmp_path / "key.png")
    assert png.read_bytes()[:4] == b"\x89PNG"
    assert key_slice(back.array) == peak_back[2]


def test_pointing_game_rules():
    mask = np.zeros((8, 8, 8), bool)
    mask[2:4, 2:4, 2:4] = True
    heat = np.zeros((8, 8, 8))
    assert not pointing_game(heat, mask)  # a flat map is a miss
    heat[3, 3, 3] = 1
    assert pointing_game(heat, mask)
    heat[5, 5, 5] = 2
    assert not pointing_game(heat, mask)
    assert pointing_game(heat, mask, tolerance_voxels=2)
    with pytest.raises(ValueError, match="shape"):
        pointing_game(heat, mask[:4])


class TokenBlobScorer(torch.nn.Module):
    """A token model: 4^3-voxel patches -> tokens (with a leading class token) -> blocks.

    Class 1 scores the mean over patch tokens of a feature that is high where the patch is
    bright. A faithful token-grid Grad-CAM must peak on the bright patch, i.e. the token
    layout (row-major patch order, class token skipped) must be undone correctly.
    """

    def __init__(self, grid=(4, 6, 5), patch=4) -> None:
        super().__init__()
        self.grid = grid
        self.embed = torch.nn.Conv3d(1, 4, patch, stride=patch)
        self.cls = torch.nn.Parameter(torch.zeros(1, 1, 4))
        self.block = torch.nn.Identity()
        self.head = torch.nn.Linear(4, 2)
        with torch.no_grad():
            self.embed.weight.fill_(1.0 / patch**3)
            self.embed.bias.fill_(-0.3)
            self.head.weight.copy_(torch.tensor([[-1.0] * 4, [1.0] * 4]))
            self.head.bias.zero_()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        tokens = self.embed(x).flatten(2).transpose(1, 2)  # (B, N, D) row-major
        tokens = torch.cat([self.cls.expand(x.shape[0], -1, -1), tokens], dim=1)
        tokens = self.block(torch.relu(tokens))
        return self.head(tokens[:, 1:].mean(dim=1))


@pytest.mark.parametrize("method", ["gradcam", "gradcampp"])
def test_token_grid_cam_is_aligned_with_the_image(method):
    shape = (16, 24, 20)  # a non-cubic grid catches transposed reshapes
    for center in [(2, 18, 10), (13, 5, 17), (9, 21, 2)]:
        image, _ = _blob_image(shape, center=center, radius=2.5)
        heat, cls = explain(TokenBlobScorer(), image, method=method, target_layer="block")
        assert cls == 1 and heat.shape == shape
        patch_of_peak = np.array(np.unravel_index(int(np.argmax(heat)), shape)) // 4
        assert tuple(patch_of_peak) == tuple(np.array(center) // 4)


def test_token_layer_without_grid_is_a_clear_error():
    model = TokenBlobScorer()
    del model.grid
    image, _ = _blob_image((16, 24, 20), center=(2, 18, 10))
    with pytest.raises(ValueError, match="grid"):
        explain(model, image, target_layer="block")


def test_trained_tiny_cnn_points_at_the_lesion_far_above_chance():
    """A tiny MONAI ResNet trained to tell 'bright blob somewhere' from 'none' must, by
    Grad-CAM, point at the blob on fresh images far more often than chance (the blob's
    volume fraction, ~1.5%)."""
    torch.manual_seed(0)
    rng = np.random.default_rng(0)
    shape = (16, 16, 16)

    def sample(positive: bool):
        center = rng.integers(3, 13, 3)
        image, mask = _blob_image(shape, center=tuple(center), radius=2.0, seed=rng.integers(1e9))
        image = image + rng.normal(0, 0.15, image.shape).astype(np.float32)
        if not positive:
            image = image - mask[None].astype(np.float32)
        return image.astype(np.float32), mask

    net = build_network(
        "resnet3d", in_channels=1, num_classes=2, block_inplanes=[4, 8, 8, 8], conv1_t_stride=1
    )
    opt = torch.optim.Adam(net.parameters(), lr=3e-3)
    for _ in range(40):
        labels = rng.integers(0, 2, 16)
        x = torch.from_numpy(np.stack([sample(bool(y))[0] for y in labels]))
        loss = torch.nn.functional.cross_entropy(net(x), torch.from_numpy(labels))
        opt.zero_grad()
        loss.backward()
        opt.step()
    net.eval()
    hits, fractions = [], []
    for _ in range(20):
        image, mask = sample(True)
        heat, _ = explain(net, image, class_idx=1, target_layer="layer1")
        hits.append(pointing_game(heat, mask))
        fractions.append(mask.mean())
    assert max(fractions) < 0.03
    assert sum(hits) >= 15, hits  # chance: P(>= 15 of 20 at p=0.03) ~ 1e-19


class _BoxGateLogits(torch.nn.Module):
    """Gate logits +10 inside a fixed box of the gate's grid, -10 elsewhere."""

    def __init__(self, box: tuple[slice, ...]) -> None:
        super().__init__()
        self.box = box

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        s = torch.full((x.shape[0], 1, *x.shape[2:]), -10.0)
        s[(slice(None), slice(None), *self.box)] = 10.0
        return s


@pytest.mark.parametrize(
    ("name", "kwargs", "gate_branch", "gate_grid"),
    [
        # GatedResNet: the gate sits on stage 1's grid (16^3 for a 32^3 input)
        ("resnet3d", {"block_inplanes": [8, 8, 8, 8], "conv1_t_stride": 2}, "gate.branch", 16),
        # gated ViT: the gate has the input's resolution (its logits replaced here)
        ("vit_classifier", {"img_size": 32, "patch_size": 4, "num_layers": 1}, "gate_logits", 32),
    ],
)
def test_grad_cam_on_a_tumor_gate_stays_inside_the_open_gate(name, kwargs, gate_branch, gate_grid):
    """What the gate closes cannot carry evidence: Grad-CAM on the gated map is ~0 there, and
    the gated map is the model's own Grad-CAM layer."""
    torch.manual_seed(0)
    net = build_network(name, in_channels=4, num_classes=3, tumor_gate=True, **kwargs).eval()
    scale = 32 // gate_grid
    box = (slice(4, 10), slice(8, 14), slice(2, 8))  # in voxels of the 32^3 input
    grid_box = tuple(slice(b.start // scale, b.stop // scale) for b in box)
    parent, _, attr = gate_branch.rpartition(".")
    setattr(net.get_submodule(parent) if parent else net, attr, _BoxGateLogits(grid_box))
    image = torch.randn(4, 32, 32, 32)
    inside = np.zeros((32, 32, 32), dtype=bool)
    inside[box] = True
    cube = ndimage.generate_binary_structure(3, 3)
    near = ndimage.binary_dilation(inside, cube, iterations=scale)  # upsampling blurs a cell
    layer = find_target_layer(net, image[None])
    assert layer == ("gate.gated" if name == "resnet3d" else "gated")
    heat, _ = explain(net, image)  # the predicted class
    assert heat.max() > 0  # centred logits: the predicted class has positive evidence
    assert heat[~near].max() < 0.02
    assert pointing_game(heat, inside, tolerance_voxels=scale)


def test_tumor_gate_normalised_pooling_is_the_gate_weighted_mean():
    from ai_engine.networks.gate import TumorGate

    gate = TumorGate(3, normalize=True)
    x = torch.randn(2, 3, 4, 4, 4)
    out = gate(x)
    g = torch.sigmoid(gate.branch(x))
    expected = (x * g).flatten(2).sum(2) / (g.flatten(2).sum(2) + 1.0)
    torch.testing.assert_close(out.flatten(2).mean(2), expected)
