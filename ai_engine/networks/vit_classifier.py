"""A 3D Vision Transformer classifier with a spatial token grid for Grad-CAM.

MONAI's `ViT` classifies from a class token and returns `(logits, hidden_states)`, which
neither Grad-CAM nor the exporters take directly. This wrapper runs MONAI's ViT as an
encoder, reshapes the final patch tokens back into their (D, gx, gy, gz) grid (the
`token_grid` layer, an identity Grad-CAM can hook), global-average-pools the grid and
classifies with a linear head. It returns logits only.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
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
        self.token_grid = torch.nn.Identity()
        self.head = torch.nn.Linear(hidden_size, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        tokens, _ = self.encoder(x)  # (B, N, D), already layer-normed
        grid = tokens.transpose(1, 2).reshape(tokens.shape[0], tokens.shape[2], *self.grid)
        grid = self.token_grid(grid)
        return self.head(grid.flatten(2).mean(dim=2))


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
    )
