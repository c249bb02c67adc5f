"""Small 3D U-Net (MONAI `UNet` with residual units) for candidate segmentation."""

from __future__ import annotations

from collections.abc import Sequence

import torch
from monai.networks.nets import UNet

from ai_engine.networks.registry import register_network


@register_network("unet3d")
def unet3d(
    in_channels: int = 1,
    out_channels: int = 2,
    channels: Sequence[int] = (16, 32, 64, 128),
    strides: Sequence[int] = (2, 2, 2),
    num_res_units: int = 1,
    norm: str = "batch",
    dropout: float = 0.0,
) -> torch.nn.Module:
    """A 3D U-Net; `len(strides) == len(channels) - 1` (input size divisible by prod(strides)).

    Args:
        in_channels: image channels.
        out_channels: classes of the softmax output (2: background, foreground).
        channels: feature maps per level, shallow to deep.
        strides: down-sampling stride between levels.
        num_res_units: residual units per block.
        norm: normalisation ("batch", "instance").
        dropout: dropout probability.
    """
    return UNet(
        spatial_dims=3,
        in_channels=in_channels,
        out_channels=out_channels,
        channels=tuple(channels),
        strides=tuple(strides),
        num_res_units=num_res_units,
        norm=norm,
        dropout=dropout,
    )
