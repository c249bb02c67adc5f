"""Heat maps as viewer overlays: back on the source grid, as NIfTI, plus a key-slice PNG.

A heat map computed on the model's grid (maybe resampled, cropped or padded) is sampled
back onto the source series' grid in patient space, so the saved NIfTI has exactly the
source's shape and affine and overlays it voxel for voxel. The pointing game scores
faithfulness: a hit when the map's maximum lies inside the ground-truth mask.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
from scipy import ndimage

from ai_engine.io import Volume, resample_to_grid, save_nifti

__all__ = ["heatmap_to_source", "key_slice", "pointing_game", "save_heatmap", "save_key_slice_png"]


def heatmap_to_source(heat: np.ndarray, model_affine: np.ndarray, source: Volume) -> Volume:
    """Resample a heat map from the model's grid onto the source volume's grid.

    Args:
        heat: (X', Y', Z') map on the grid the model ran on.
        model_affine: voxel->LPS affine of that grid.
        source: the source series (scalar or channel stack); only its grid is used.

    Returns:
        A scalar Volume with `source.spatial_shape` and `source.affine` (zero outside the
        model grid's field of view).
    """
    heat_volume = Volume(np.asarray(heat, dtype=np.float32), model_affine)
    array = resample_to_grid(heat_volume, source.affine, source.spatial_shape, order=1)
    return Volume(array, source.affine.copy(), {"kind": "heatmap"})


def save_heatmap(heat: Volume, path: str | Path) -> Path:
    """Write a heat map Volume as NIfTI (float32, the source's geometry)."""
    return save_nifti(heat, path, dtype=np.float32)


def key_slice(heat: np.ndarray, axis: int = 2) -> int:
    """Index along `axis` of the slice holding the heat map's maximum."""
    index = np.unravel_index(int(np.argmax(heat)), heat.shape)
    return int(index[axis])


def save_key_slice_png(
    image: np.ndarray,
    heat: np.ndarray,
    path: str | Path,
    axis: int = 2,
    title: str | None = None,
    alpha: float = 0.45,
) -> Path:
    """PNG of the key slice: the source image in gray with the heat map overlaid.

    Args:
        image: (X, Y, Z) source image on the same grid as `heat`.
        heat: (X, Y, Z) heat map.
        path: output .png path.
        axis: slicing axis (2 = axial for an axial series).
        title: optional title (e.g. predicted grade and probability).
        alpha: opacity of the heat overlay.
    """
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    if image.shape != heat.shape:
        raise ValueError(f"image shape {image.shape} differs from heat shape {heat.shape}")
    index = key_slice(heat, axis)
    # array[i, j] has i across columns: transpose so the PNG looks like the DICOM slice.
    img = np.take(image, index, axis=axis).T
    hm = np.take(heat, index, axis=axis).T
    fig, ax = plt.subplots(figsize=(4, 4), dpi=100)
    ax.imshow(img, cmap="gray", interpolation="nearest")
    ax.imshow(np.ma.masked_less_equal(hm, 0.05), cmap="jet", alpha=alpha, vmin=0, vmax=1)
    ax.set_title(title or f"slice {index}", fontsize=9)
    ax.axis("off")
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, bbox_inches="tight")
    plt.close(fig)
    return path


def pointing_game(heat: np.ndarray, mask: np.ndarray, tolerance_voxels: int = 0) -> bool:
    """True when the heat map's maximum falls inside `mask`, or within `tolerance_voxels`
    of it (a cube neighbourhood: dilation with the full 3x3x3 structure).

    A flat map (no maximum) counts as a miss.
    """
    heat = np.asarray(heat)
    mask = np.asarray(mask) > 0
    if heat.shape != mask.shape:
        raise ValueError(f"heat shape {heat.shape} differs from mask shape {mask.shape}")
    if not mask.any() or float(heat.max()) <= float(heat.min()):
        return False
    if tolerance_voxels > 0:
        cube = ndimage.generate_binary_structure(mask.ndim, mask.ndim)
        mask = ndimage.binary_dilation(mask, structure=cube, iterations=int(tolerance_voxels))
    return bool(mask.flat[int(np.argmax(heat))])
