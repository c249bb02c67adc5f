"""3D ResNet classifier (MONAI `ResNet`), e.g. for false-positive reduction on patches."""

from __future__ import annotations

from collections.abc import Sequence

import torch
from monai.networks.nets import ResNet

from ai_engine.networks.registry import register_network


@register_network("resnet3d")
def resnet3d(
    in_channels: int = 1,
    num_classes: int = 1,
    layers: Sequence[int] = (1, 1, 1, 1),
    block_inplanes: Sequence[int] = (16, 32, 64, 128),
    block: str = "basic",
    conv1_t_size: int = 3,
    conv1_t_stride: int = 1,
    no_max_pool: bool = True,
) -> torch.nn.Module:
    """A 3D ResNet; `layers=(1,1,1,1)` is ResNet-10-like, (2,2,2,2) ResNet-18.

    Args:
        in_channels: image channels.
        num_classes: outputs (1: a single logit for a binary problem).
        layers: residual blocks per stage.
        block_inplanes: feature maps per stage.
        block: "basic" or "bottleneck".
        conv1_t_size: kernel of the stem convolution (small patches want 3, not 7).
        conv1_t_stride: stride of the stem convolution.
        no_max_pool: skip the stem max-pool (for small patches).
    """
    return ResNet(
        block=block,
        layers=list(layers),
        block_inplanes=list(block_inplanes),
        spatial_dims=3,
        n_input_channels=in_channels,
        conv1_t_size=conv1_t_size,
        conv1_t_stride=conv1_t_stride,
        no_max_pool=no_max_pool,
        num_classes=num_classes,
    )
