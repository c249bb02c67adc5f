"""The tiny detector configuration the detection tests share: the mechanics, quickly."""

from __future__ import annotations

from ai_engine.detection.config import DetectionConfig

TINY = DetectionConfig(
    spacing_mm=(1.5, 1.5, 1.5),  # coarser than the default
    patch_size=(32, 32, 32),
    sw_roi_size=(32, 32, 32),
    unet_channels=(4, 8, 16),
    fp_patch_size=16,
    fp_channels=(4, 8, 8, 8),
    sw_batch_size=1,
)
