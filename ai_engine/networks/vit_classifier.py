"""A 3D Vision Transformer classifier with a spatial token grid for Grad-CAM.

MONAI's `ViT` classifies from a class token and returns `(logits, hidden_states)`, which
neither Grad-CAM nor the exporters take directly. This wrapper runs MONAI's ViT as an
encoder, reshapes the final patch tokens back into their (D, gx, gy, gz) grid (the
`token_grid` layer, an identity Grad-CAM can hook), global-average-pools the grid and
classifies with a linear head. It returns logits only. With `tumor_gate=True` the pooling
is weighted by a voxel-level tumor gate predicted from the tokens (see `ViTClassifier`).
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from monai.networks.nets import ViT

from ai_engine.networks.registry import register_network

__all__ = ["ViTClassifier", "vit_classifier"]


class ViTClassifier(torch.nn.Module):
    """ViT encoder + mean-pooled token grid + linear head.

    Args:
        in_channels: input channels (4 for T1, T1c, T2, FLAIR).
        num_classes: output classes.
        img_size: spatial input size; every dimension must be a multiple of `patch_size`.
        patch_size: edge of the cubic patches (tokens).
        hidden_size: token width.
        mlp_dim: width of the transformer MLPs.
        num_layers: transformer blocks.
        num_heads: attention heads (must divide `hidden_size`).
        dropout_rate: dropout in the transformer.
        spatial_dims: 3 (or 2).
        tumor_gate: a voxel-level tumor gate (see `ai_engine.networks.gate`): a small conv
            branch on the token grid plus a per-token linear decoder predict gate logits for
            every voxel (`gate_logits`, (B, 1, *img_size),
            supervised with a tumor mask in training); the tokens, repeated over their voxels,
            are weighted by the normalised gate (`gated`, (B, D, *img_size), the Grad-CAM
            layer), mean-pooled and classified, so Grad-CAM is each voxel's exact share of
            the class score at the input's resolution, not the token grid's. Logits are then
            centred over classes.
        gate_offset: offset (voxels) of the gate normalisation `sum(g) + offset`; a gated
            volume well below it is shrunk, so the pooled vector keeps a lesion-size cue.
    """

    cam_target_layer = "token_grid"

    def __init__(
        self,
        in_channels: int,
        num_classes: int,
        img_size: Sequence[int] | int,
        patch_size: int = 8,
        hidden_size: int = 96,
        mlp_dim: int = 192,
        num_layers: int = 4,
        num_heads: int = 4,
        dropout_rate: float = 0.0,
        spatial_dims: int = 3,
        tumor_gate: bool = False,
        gate_offset: float = 1.0,
    ) -> None:
        super().__init__()
        size = [img_size] * spatial_dims if isinstance(img_size, int) else list(img_size)
        if len(size) != spatial_dims or any(s % patch_size for s in size):
            raise ValueError(
                f"img_size {size} must have {spatial_dims} values, each a multiple of "
                f"patch_size {patch_size}"
            )
        self.grid = tuple(s // patch_size for s in size)
        self.encoder = ViT(
            in_channels=in_channels,
            img_size=size,
            patch_size=patch_size,
            hidden_size=hidden_size,
            mlp_dim=mlp_dim,
            num_layers=num_layers,
            num_heads=num_heads,
            classification=False,
            dropout_rate=dropout_rate,
            spatial_dims=spatial_dims,
        )
        self.patch_size = int(patch_size)
        self.gate_offset = float(gate_offset)
        self.gate_decoder: torch.nn.Linear | None = None
        if tumor_gate:
            if spatial_dims != 3:
                raise ValueError("tumor_gate needs spatial_dims=3")
            # gate logits = a token-grid branch (3x3x3 context of neighbouring tokens) repeated
            # over each token's voxels + per-token detail of its patch_size^3 voxels (a
            # linear "unpatchify", zero at the start so training starts from the token gate)
            self.gate_branch = torch.nn.Sequential(
                torch.nn.Conv3d(hidden_size, 16, 3, padding=1),
                torch.nn.ReLU(inplace=True),
                torch.nn.Conv3d(16, 1, 1),
            )
            self.gate_decoder = torch.nn.Linear(hidden_size, self.patch_size**3)
            torch.nn.init.zeros_(self.gate_decoder.weight)
            torch.nn.init.zeros_(self.gate_decoder.bias)
            self.gate_logits = torch.nn.Identity()  # (B, 1, *img_size): supervised by a mask
            self.gated = torch.nn.Identity()  # (B, D, *img_size): Grad-CAM target
            self.cam_target_layer = "gated"
        self.token_grid = torch.nn.Identity()
        self.head = torch.nn.Linear(hidden_size, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        tokens, _ = self.encoder(x)  # (B, N, D), already layer-normed
        b, _, d = tokens.shape
        grid = self.token_grid(tokens.transpose(1, 2).reshape(b, d, *self.grid))
        if self.gate_decoder is None:
            return self.head(grid.flatten(2).mean(dim=2))
        p = self.patch_size
        gx, gy, gz = self.grid
        s = self.gate_decoder(tokens).reshape(b, gx, gy, gz, p, p, p)
        s = s.permute(0, 1, 4, 2, 5, 3, 6).reshape(b, 1, gx * p, gy * p, gz * p)
        s = s + F.interpolate(self.gate_branch(grid), size=s.shape[2:], mode="nearest")
        g = torch.sigmoid(self.gate_logits(s))
        # normalised: the mean of the gated map is the gate-weighted mean of the tokens
        n = g[0].numel()
        g = g * (n / (g.flatten(1).sum(dim=1) + self.gate_offset)).view(b, 1, 1, 1, 1)
        fine = F.interpolate(grid, size=g.shape[2:], mode="nearest")
        gated = self.gated(fine * g)
        logits = self.head(gated.flatten(2).mean(dim=2))
        if logits.shape[1] > 1:
            # centred over classes (softmax unchanged): the predicted class has a
            # non-negative total, so its class activation map has evidence to show
            logits = logits - logits.mean(dim=1, keepdim=True)
        return logits


@register_network("vit_classifier")
def vit_classifier(
    in_channels: int = 4,
    num_classes: int = 3,
    img_size: Sequence[int] | int = 48,
    patch_size: int = 8,
    hidden_size: int = 96,
    mlp_dim: int = 192,
    num_layers: int = 4,
    num_heads: int = 4,
    dropout_rate: float = 0.0,
    tumor_gate: bool = False,
    gate_offset: float = 1.0,
) -> torch.nn.Module:
    """Registry builder of `ViTClassifier` (3D); Grad-CAM target layer `token_grid`."""
    return ViTClassifier(
        in_channels=in_channels,
        num_classes=num_classes,
        img_size=img_size,
        patch_size=patch_size,
        hidden_size=hidden_size,
        mlp_dim=mlp_dim,
        num_layers=num_layers,
        num_heads=num_heads,
        dropout_rate=dropout_rate,
        tumor_gate=tumor_gate,
        gate_offset=gate_offset,
    )
