"""Explanations for any classifier: Grad-CAM, Grad-CAM++, occlusion; heat maps on the source grid."""

from ai_engine.explain.cam import METHODS, explain, explain_patch_in_volume, find_target_layer
from ai_engine.explain.heatmap import (
    heatmap_to_source,
    key_slice,
    pointing_game,
    save_heatmap,
    save_key_slice_png,
)

__all__ = [
    "METHODS",
    "explain",
    "explain_patch_in_volume",
    "find_target_layer",
    "heatmap_to_source",
    "key_slice",
    "pointing_game",
    "save_heatmap",
    "save_key_slice_png",
]
