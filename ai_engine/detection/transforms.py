"""Detection preprocessing as MONAI dict transforms: load a CT, orient, resample, window,
and draw nodule spheres as a label map on the resampled grid."""

from __future__ import annotations

from collections.abc import Hashable, Iterator, Mapping
from contextlib import contextmanager
from typing import Any

import numpy as np
import torch
from monai.data import MetaTensor
from monai.transforms import (
    Compose,
    EnsureTyped,
    MapTransform,
    RandomizableTrait,
    ScaleIntensityRanged,
)

from ai_engine.errors import AIEngineError, InputError
from ai_engine.io import load_volume
from ai_engine.io.volume import Volume
from ai_engine.transforms import (
    BlobEnhanced,
    OrientRASd,
    ResampleToSpacingd,
    lps_mm_to_voxel,
    volume_to_metatensor,
)


@contextmanager
def input_errors_unwrapped() -> Iterator[None]:
    """Re-raise an `AIEngineError` that MONAI wrapped in "applying transform" RuntimeErrors, so
    the CLI prints its message instead of a traceback."""
    try:
        yield
    except RuntimeError as exc:
        cause: BaseException | None = exc
        while cause is not None and not isinstance(cause, AIEngineError):
            cause = cause.__cause__
        if cause is not None:
            raise cause from None
        raise


def check_ct(volume: Volume, source: object = "") -> None:
    """Refuse volumes that are not CT (DICOM Modality other than CT) or not scalar.

    NIfTI files carry no modality; they are accepted when their values look like HU.

    Raises:
        InputError: not a CT.
    """
    where = f"{source}: " if source else ""
    modality = str(volume.meta.get("modality", "") or "")
    if modality and modality != "CT":
        raise InputError(f"{where}modality is {modality!r}, the nodule detector needs a CT series")
    if volume.array.ndim != 3:
        raise InputError(f"{where}expected one scalar CT volume, got shape {volume.array.shape}")
    if not modality and (volume.array.min() > -500 or volume.array.max() > 5000):
        raise InputError(f"{where}values do not look like Hounsfield units (no air below -500 HU)")


def load_ct(path: object) -> Volume:
    """`ai_engine.io.load_volume` + `check_ct`."""
    volume = load_volume(str(path))
    check_ct(volume, path)
    return volume


class LoadCTd(MapTransform):
    """Load the CT at `data[key]` (path or `Volume`) as a channel-first RAS MetaTensor.

    The source geometry is kept under `"<key>_source"`: `{"affine_lps", "shape"}`.
    """

    def __init__(self, keys: Any = "image", allow_missing_keys: bool = False) -> None:
        super().__init__(keys, allow_missing_keys)

    def __call__(self, data: Mapping[Hashable, Any]) -> dict[Hashable, Any]:
        out = dict(data)
        for key in self.key_iterator(out):
            value = out[key]
            volume = value if isinstance(value, Volume) else load_ct(value)
            if isinstance(value, Volume):
                check_ct(volume)
            out[key] = volume_to_metatensor(volume)
            out[f"{key}_source"] = {
                "affine_lps": volume.affine.tolist(),
                "shape": list(volume.spatial_shape),
            }
        return out


class NoduleSphereMaskd(MapTransform):
    """Label map of nodule spheres on the grid of `ref_key` (after resampling).

    Each voxel whose center lies within a nodule's radius (in mm, patient space) is 1. The
    voxel->mm map is the reference tensor's affine, so the spheres are round whatever the
    spacing. At least the voxel nearest each center is marked, so tiny nodules never vanish.

    Args:
        keys: output key(s) of the label map.
        ref_key: the image whose grid the mask follows.
        nodules_key: list of `{"center_lps_mm", "diameter_mm"}`.
        min_diameter_mm: smaller nodules are drawn as spheres of this diameter (a training
            target that gives a 3 mm nodule more than a couple of voxels at 1.5 mm).
    """

    def __init__(
        self,
        keys: Any = "label",
        ref_key: str = "image",
        nodules_key: str = "nodules",
        min_diameter_mm: float = 0.0,
    ) -> None:
        super().__init__(keys)
        self.ref_key = ref_key
        self.nodules_key = nodules_key
        self.min_diameter_mm = float(min_diameter_mm)

    def __call__(self, data: Mapping[Hashable, Any]) -> dict[Hashable, Any]:
        out = dict(data)
        ref = out[self.ref_key]
        if not isinstance(ref, MetaTensor):
            raise TypeError(f"{self.ref_key!r} must be a MetaTensor with an affine")
        mask = sphere_mask(ref, out.get(self.nodules_key, []), self.min_diameter_mm)
        for key in self.keys:  # output keys: they need not exist yet
            meta = {k: v for k, v in ref.meta.items() if k != "affine"}
            out[key] = MetaTensor(
                torch.from_numpy(mask[None]), affine=ref.affine.clone(), meta=meta
            )
        return out


def sphere_mask(
    ref: MetaTensor, nodules: list[dict[str, Any]], min_diameter_mm: float = 0.0
) -> np.ndarray:
    """float32 0/1 (X, Y, Z) mask of the nodule spheres on `ref`'s (C, X, Y, Z) grid (spheres
    at least `min_diameter_mm` across)."""
    shape = tuple(int(n) for n in ref.shape[-3:])
    mask = np.zeros(shape, dtype=np.float32)
    if not nodules:
        return mask
    affine = np.asarray(ref.affine, dtype=np.float64)
    spacing = np.linalg.norm(affine[:3, :3], axis=0)
    for nodule in nodules:
        center = lps_mm_to_voxel(ref, np.asarray(nodule["center_lps_mm"], dtype=np.float64))[0]
        radius_mm = max(float(nodule["diameter_mm"]), min_diameter_mm) / 2.0
        r_vox = radius_mm / spacing
        lo = np.maximum(np.floor(center - r_vox).astype(int), 0)
        hi = np.minimum(np.ceil(center + r_vox).astype(int) + 1, shape)
        if np.any(hi <= lo):
            continue
        grids = np.meshgrid(*[np.arange(a, b) for a, b in zip(lo, hi, strict=True)], indexing="ij")
        offs = np.stack([g - c for g, c in zip(grids, center, strict=True)], axis=-1)
        dist = np.linalg.norm(offs @ affine[:3, :3].T, axis=-1)
        box = tuple(slice(a, b) for a, b in zip(lo, hi, strict=True))
        mask[box] = np.maximum(mask[box], (dist <= radius_mm).astype(np.float32))
        nearest = np.clip(np.rint(center).astype(int), 0, np.array(shape) - 1)
        mask[tuple(nearest)] = 1.0
    return mask


def preprocessing(
    spacing_mm: tuple[float, float, float],
    hu_range: tuple[float, float],
    with_label: bool = False,
    label_min_diameter_mm: float = 0.0,
    blob_sigmas_mm: tuple[float, ...] = (),
) -> Compose:
    """Load CT -> orient RAS -> resample to `spacing_mm` -> HU window to [0, 1] (-> blob
    channel at `blob_sigmas_mm`) (-> spheres at least `label_min_diameter_mm` across)."""
    steps: list[Any] = [
        LoadCTd(keys="image"),
        OrientRASd(keys="image"),
        ResampleToSpacingd(keys="image", pixdim=spacing_mm, mode="bilinear"),
        ScaleIntensityRanged(
            keys="image", a_min=hu_range[0], a_max=hu_range[1], b_min=0.0, b_max=1.0, clip=True
        ),
    ]
    if blob_sigmas_mm:
        steps.append(BlobEnhanced(keys="image", sigmas_mm=blob_sigmas_mm))
    if with_label:
        steps.append(
            NoduleSphereMaskd(
                keys="label",
                ref_key="image",
                nodules_key="nodules",
                min_diameter_mm=label_min_diameter_mm,
            )
        )
    steps.append(
        EnsureTyped(keys=["image", "label"] if with_label else ["image"], dtype=torch.float32)
    )
    return Compose(steps)


def spread_indices(idx: np.ndarray, n: int) -> np.ndarray:
    """`n` entries evenly spread over `idx` (repeating when it is shorter)."""
    if len(idx) == 0 or n <= 0:
        return idx[:0]
    return idx[np.linspace(0, len(idx) - 1, n).round().astype(int)]


def component_indices(
    mask: np.ndarray,
    per_component: int,
    small_voxels: float = 0.0,
    small_weight: int = 1,
) -> np.ndarray:
    """Flat indices into `mask`, `per_component` spread evenly over each 26-connected
    component, so that every component is drawn equally often whatever its size; components
    of fewer than `small_voxels` voxels get `small_weight` times as many (drawn that much more
    often)."""
    from scipy import ndimage

    components, n = ndimage.label(mask, structure=np.ones((3, 3, 3), bool))
    if n == 0:
        return np.zeros(0, dtype=np.int64)
    flat = components.ravel()
    order = np.argsort(flat, kind="stable")
    bounds = np.searchsorted(flat[order], np.arange(1, n + 2))
    parts = []
    for k in range(n):
        members = order[bounds[k] : bounds[k + 1]]
        count = per_component * (small_weight if len(members) < small_voxels else 1)
        parts.append(spread_indices(members, count))
    return np.concatenate(parts).astype(np.int64)


class CropCentersd(MapTransform):
    """Crop-centre indices for `RandCropByPosNegLabeld` (`fg_indices_key`, `bg_indices_key`)
    that give every nodule the same chance and put half of the background patches on hard
    negatives.

    MONAI's default draws positive centres uniformly over the nodule voxels, so a 20 mm nodule
    (about 2,500 voxels at 1.5 mm) is the centre of a patch 70 times as often as a 4 mm one
    (drawn as a 6 mm sphere, 33 voxels): the small nodules, 40 % of them, were hardly seen.
    Here each connected component of the label contributes `per_nodule` indices. Background
    indices are body voxels (image >= `body_threshold`) outside the label; a fraction
    `hard_fraction` of them are soft-tissue voxels next to the lung (image >=
    `tissue_threshold` within 2 voxels of lung, image < `lung_threshold`): vessel
    cross-sections, the false positives of the same size and density as small nodules.

    Args:
        label_key: the nodule label map (1, X, Y, Z).
        image_key: the windowed image (1, X, Y, Z).
        fg_key, bg_key: output keys (flat indices into the spatial shape).
        per_nodule: indices per nodule (evenly spread over its voxels).
        body_threshold, lung_threshold, tissue_threshold: window values (0-1) of the body, the
            lung and soft tissue.
        hard_fraction: share of the background indices on soft tissue beside the lung, in
            [0, 1).
        max_background: at most this many background indices of each kind (evenly spread).
        small_diameter_mm, small_weight: label components smaller than a sphere of
            `small_diameter_mm` (from the label's voxel size; 1 mm voxels without an affine)
            get `small_weight` times the positive indices of the others (1: all the same).
    """

    def __init__(
        self,
        label_key: str = "label",
        image_key: str = "image",
        fg_key: str = "fg_indices",
        bg_key: str = "bg_indices",
        per_nodule: int = 64,
        body_threshold: float = 0.0,
        lung_threshold: float = 0.5,
        tissue_threshold: float = 0.5,
        hard_fraction: float = 0.5,
        max_background: int = 20000,
        small_diameter_mm: float = 7.0,
        small_weight: int = 1,
    ) -> None:
        super().__init__([label_key, image_key])
        self.label_key, self.image_key = label_key, image_key
        self.fg_key, self.bg_key = fg_key, bg_key
        self.per_nodule = int(per_nodule)
        self.body_threshold = float(body_threshold)
        self.lung_threshold = float(lung_threshold)
        self.tissue_threshold = float(tissue_threshold)
        self.hard_fraction = float(hard_fraction)
        self.max_background = int(max_background)
        self.small_diameter_mm = float(small_diameter_mm)
        self.small_weight = int(small_weight)
        if self.small_weight < 1:
            raise ValueError(f"small_weight must be >= 1, got {small_weight}")
        if self.per_nodule < 1:
            raise ValueError(f"per_nodule must be >= 1, got {per_nodule}")
        if not 0.0 <= self.hard_fraction < 1.0:
            # 1 would leave no ordinary background at all (and the share is a ratio of the two)
            raise ValueError(f"hard_fraction must be in [0, 1), got {hard_fraction}")

    def __call__(self, data: Mapping[Hashable, Any]) -> dict[Hashable, Any]:
        from scipy import ndimage

        out = dict(data)
        affine = getattr(out[self.label_key], "affine", None)
        voxel_mm3 = (
            float(np.prod(np.linalg.norm(np.asarray(affine, dtype=np.float64)[:3, :3], axis=0)))
            if affine is not None
            else 1.0
        )
        label = np.asarray(out[self.label_key])[0] > 0.5
        image = np.asarray(out[self.image_key])[0]
        small_voxels = np.pi / 6.0 * self.small_diameter_mm**3 / voxel_mm3
        fg = component_indices(label, self.per_nodule, small_voxels, self.small_weight)
        body = np.flatnonzero((image >= self.body_threshold) & ~label)
        hard_mask = (
            (image >= self.tissue_threshold)
            & ndimage.binary_dilation(image < self.lung_threshold, iterations=2)
            & ~label
        )
        hard = np.flatnonzero(hard_mask)
        n_body = min(len(body), self.max_background)
        n_hard = 0
        if len(hard) and 0 < self.hard_fraction < 1:
            n_hard = round(n_body * self.hard_fraction / (1.0 - self.hard_fraction))
        bg = np.concatenate([spread_indices(body, n_body), spread_indices(hard, n_hard)])
        out[self.fg_key] = fg
        out[self.bg_key] = bg.astype(np.int64)
        return out


class MinedNegativesd(MapTransform, RandomizableTrait):
    """Put a share of the background crop centres (`bg_key`, from `CropCentersd`) on the
    U-Net's own false positives of its training scans (online hard-negative mining).

    `bank` maps a training scan's index (the item's `case_key`, removed here) to the voxel
    indices (N, 3) of its false-positive regions and the shape of the grid they index (the
    preprocessed scan), as `train.mine_false_positives` finds them while the network trains.
    The bank changes during training, so this transform is marked random (`RandomizableTrait`)
    and `CacheDataset` leaves it, and what follows, out of its cache.
    A scan the bank has nothing for keeps its centres. The grid may since have been padded
    symmetrically (`SpatialPadd`): the indices are shifted by half the added size.

    Args:
        bank: scan index -> ((N, 3) voxel indices, grid shape) (shared, mutable).
        fraction: share of the background centres on the mined voxels, in [0, 1).
    """

    def __init__(
        self,
        bank: Mapping[int, tuple[np.ndarray, tuple[int, int, int]]],
        fraction: float,
        case_key: str = "case",
        image_key: str = "image",
        bg_key: str = "bg_indices",
    ) -> None:
        super().__init__([case_key, bg_key])
        if not 0.0 <= fraction < 1.0:
            raise ValueError(f"fraction must be in [0, 1), got {fraction}")
        self.bank, self.fraction = bank, float(fraction)
        self.case_key, self.image_key, self.bg_key = case_key, image_key, bg_key

    def __call__(self, data: Mapping[Hashable, Any]) -> dict[Hashable, Any]:
        out = dict(data)
        entry = self.bank.get(int(out.pop(self.case_key)))
        bg = np.asarray(out[self.bg_key])
        if entry is None or len(entry[0]) == 0 or self.fraction == 0.0 or len(bg) == 0:
            return out
        shape = np.array(out[self.image_key].shape[-3:])
        offset = np.maximum((shape - np.asarray(entry[1])) // 2, 0)  # SpatialPadd's "before"
        ijk = np.clip(np.asarray(entry[0], dtype=np.int64).reshape(-1, 3) + offset, 0, shape - 1)
        flat = np.ravel_multi_index(tuple(ijk.T), tuple(int(v) for v in shape))
        n_mined = round(len(bg) * self.fraction / (1.0 - self.fraction))
        out[self.bg_key] = np.concatenate([bg, spread_indices(flat, n_mined)]).astype(np.int64)
        return out
