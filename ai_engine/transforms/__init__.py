"""MONAI-style array and dict transforms for ai_engine (window presets, HU clip, resampling,
orientation, normalisation) and the Volume <-> MetaTensor bridge (LPS vs RAS)."""

from ai_engine.transforms.convert import (
    LoadVolume,
    LoadVolumed,
    lps_mm_to_voxel,
    lps_to_ras,
    metatensor_to_volume,
    ras_to_lps,
    volume_to_metatensor,
    voxel_to_lps_mm,
)
from ai_engine.transforms.enhance import BlobEnhanced, blob_response
from ai_engine.transforms.intensity import (
    CT_WINDOWS,
    NODULE_HU_RANGE,
    CTWindow,
    CTWindowd,
    HUClip,
    HUClipd,
    MinMax,
    MinMaxd,
    ZScore,
    ZScored,
    window_range,
)
from ai_engine.transforms.spatial import (
    NODULE_SPACING_MM,
    OrientRAS,
    OrientRASd,
    ResampleToSpacing,
    ResampleToSpacingd,
)

__all__ = [
    "CT_WINDOWS",
    "NODULE_HU_RANGE",
    "NODULE_SPACING_MM",
    "BlobEnhanced",
    "CTWindow",
    "CTWindowd",
    "HUClip",
    "HUClipd",
    "LoadVolume",
    "LoadVolumed",
    "MinMax",
    "MinMaxd",
    "OrientRAS",
    "OrientRASd",
    "ResampleToSpacing",
    "ResampleToSpacingd",
    "ZScore",
    "ZScored",
    "blob_response",
    "lps_mm_to_voxel",
    "lps_to_ras",
    "metatensor_to_volume",
    "ras_to_lps",
    "volume_to_metatensor",
    "voxel_to_lps_mm",
    "window_range",
]
