"""3D DenseNet-121 classifier (MONAI `DenseNet121`)."""

from __future__ import annotations

import torch
from monai.networks.nets import DenseNet121

from ai_engine.networks.registry import register_network


@register_network("densenet121_3d")
def densenet121_3d(
    in_channels: int = 1, num_classes: int = 2, dropout_prob: float = 0.0
) -> torch.nn.Module:
    """MONAI's DenseNet-121 in 3D (GradCAM target layer: `class_layers.relu`)."""
    return DenseNet121(
        spatial_dims=3, in_channels=in_channels, out_channels=num_classes, dropout_prob=dropout_prob
    )
