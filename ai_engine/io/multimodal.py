"""Stack MRI sequences (T1, T1c, T2, FLAIR) into one channel-first Volume on a shared grid."""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path

import numpy as np
from scipy import ndimage

from ai_engine.errors import InputError
from ai_engine.io.dicom import MR_SEQUENCES, identify_mr_sequence
from ai_engine.io.volume import Volume


def resample_to_grid(
    volume: Volume,
    affine: np.ndarray,
    shape: tuple[int, int, int],
    order: int = 1,
    cval: float = 0.0,
) -> np.ndarray:
    """Sample a scalar Volume on the voxel grid (`affine`, `shape`) of another, in patient space.

    Voxels of the target grid that fall outside `volume` get `cval`. Linear by default
    (`order=0` for label maps).
    """
    if volume.array.ndim != 3:
        raise ValueError("resample_to_grid takes a scalar (X, Y, Z) volume")
    if np.allclose(volume.affine, affine, atol=1e-4) and volume.array.shape == tuple(shape):
        return volume.array.copy()
    target_to_source = np.linalg.inv(volume.affine) @ np.asarray(affine, dtype=np.float64)
    matrix, offset = target_to_source[:3, :3], target_to_source[:3, 3]
    # "nearest" so grid points that land exactly on the source's edge keep their value;
    # points more than half a voxel outside the source are set to cval below.
    out = ndimage.affine_transform(
        volume.array, matrix, offset=offset, output_shape=tuple(shape), order=order, mode="nearest"
    ).astype(np.float32)
    inside = np.ones(tuple(shape), dtype=bool)
    grids = np.ogrid[tuple(slice(0, n) for n in shape)]
    for axis in range(3):
        coord = offset[axis] + sum(matrix[axis, d] * grids[d].astype(np.float32) for d in range(3))
        inside &= (coord >= -0.5) & (coord <= volume.array.shape[axis] - 0.5)
    out[~inside] = cval
    return out


def load_multimodal(
    paths: Mapping[str, str | Path | None] | str | Path,
    channels: tuple[str, ...] = MR_SEQUENCES,
    check_sequence: bool = True,
) -> Volume:
    """Load MRI sequences as a (C, X, Y, Z) Volume in `channels` order, on one grid.

    Args:
        paths: {"T1": path, "T1c": path, "T2": path, "FLAIR": path} (each a series folder or a
            NIfTI file; absent or None means missing), or one study folder whose subfolders are
            series: each is identified by `identify_mr_sequence` (SeriesDescription etc.).
        channels: the channel names and their order.
        check_sequence: raise when a DICOM series given for one name is identified as another
            (e.g. a FLAIR series passed as T1). Series that cannot be identified are accepted.

    The grid is that of the first present channel; the others are resampled onto it (linear).
    Missing channels are zero-filled and listed in `meta["missing_channels"]`.
    """
    from ai_engine.io import load_volume  # the package-level dispatcher (DICOM or NIfTI)

    if isinstance(paths, str | Path):
        paths = _find_sequences(Path(paths), channels)
    unknown = sorted(set(paths) - set(channels))
    if unknown:
        raise InputError(f"unknown sequence names {unknown}; expected some of {list(channels)}")
    loaded: dict[str, Volume] = {}
    for name in channels:
        path = paths.get(name)
        if path is None or path == "":
            continue
        volume = load_volume(path)
        if volume.array.ndim != 3:
            raise InputError(
                f"{name}: {path} holds a {volume.array.ndim}D stack; one scalar volume per sequence expected"
            )
        found = volume.meta.get("mr_sequence")
        if check_sequence and found and found != name:
            raise InputError(f"{path} was given as {name} but its header says it is {found}")
        loaded[name] = volume
    if not loaded:
        raise InputError(f"none of the sequences {list(channels)} was given")
    reference = loaded[next(n for n in channels if n in loaded)]
    shape = reference.spatial_shape
    stack = np.zeros((len(channels), *shape), dtype=np.float32)
    for index, name in enumerate(channels):
        if name in loaded:
            stack[index] = resample_to_grid(loaded[name], reference.affine, shape)
    missing = [n for n in channels if n not in loaded]
    meta = {
        "source": reference.meta.get("source", ""),
        "modality": "MR",
        "channel_names": list(channels),
        "missing_channels": missing,
        "study_instance_uid": reference.meta.get("study_instance_uid", ""),
        "series_instance_uids": {
            n: v.meta.get("series_instance_uid", "") for n, v in loaded.items()
        },
        "spacing_irregular": any(bool(v.meta.get("spacing_irregular")) for v in loaded.values()),
        "reference_channel": next(n for n in channels if n in loaded),
    }
    return Volume(stack, reference.affine.copy(), meta)


def _find_sequences(study: Path, channels: tuple[str, ...]) -> dict[str, Path]:
    """Map sequence names to the subfolders of a study folder by their DICOM headers."""
    import pydicom

    if not study.is_dir():
        raise InputError(f"{study} is not a folder of series folders")
    found: dict[str, Path] = {}
    for sub in sorted(p for p in study.iterdir() if p.is_dir()):
        first = next(
            (f for f in sorted(sub.iterdir()) if f.is_file() and not f.name.startswith(".")), None
        )
        if first is None:
            continue
        try:
            header = pydicom.dcmread(first, stop_before_pixels=True)
        except Exception:
            continue
        name = identify_mr_sequence(header)
        if name in channels:
            if name in found:
                raise InputError(
                    f"{study}: two series identified as {name}: {found[name].name} and {sub.name}"
                )
            found[name] = sub
    if not found:
        raise InputError(
            f"{study}: no subfolder holds a series identified as one of {list(channels)}"
        )
    return found
