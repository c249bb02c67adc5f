"""Networks of ai_engine, one per file, built by name: `build_network("unet3d", ...)`.

Registered: `unet3d`, `resnet3d`, `densenet121_3d`, `vit_classifier` (MONAI ViT + token grid; needs `einops`),
`mean_ensemble` (the mean of trained members' probabilities). Add a network by writing a file
with a builder decorated by `@register_network(name)` and importing it here.
"""

from ai_engine.networks import (  # noqa: F401  (registers)
    densenet3d,
    ensemble,
    resnet3d,
    unet3d,
    vit_classifier,
)
from ai_engine.networks.registry import available_networks, build_network, register_network

__all__ = ["available_networks", "build_network", "register_network"]
