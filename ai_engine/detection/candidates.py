"""Candidates: regions of the U-Net's foreground probability map around its local maxima
(connected components split by a watershed from the peaks)."""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
from scipy import ndimage


@dataclass
class Candidate:
    """One candidate on the resampled (RAS) grid.

    Attributes:
        center_voxel: centroid weighted by a power of the probability (fractional voxel
            indices, resampled grid).
        diameter_mm: equivalent-sphere diameter of the component.
        prob: highest foreground probability in the component.
        component: label of the component in the label map returned with it.
        n_voxels: component size.
        bbox: (lo, hi) voxel corners of the component (hi exclusive).
        source: "unet" (a region of the probability map), "blob" (a maximum of the blob
            channel) or "fine" (of the finer dot filter, `DetectionConfig.fine_blob_sigma_mm`).
        center_hu, center_blob: the image's HU and blob response at the centre voxel (set by
            the pipeline, `NoduleDetector.candidates_from_probability`; rescoring uses them).
        context: what the image says around it (`ai_engine.detection.context`; set there too).
    """

    center_voxel: np.ndarray
    diameter_mm: float
    prob: float
    component: int
    n_voxels: int
    bbox: tuple[tuple[int, int, int], tuple[int, int, int]]
    source: str = "unet"
    center_hu: float = 0.0
    center_blob: float = 0.0
    context: dict[str, float] = field(default_factory=dict)


def extract_candidates(
    prob: np.ndarray,
    spacing_mm: np.ndarray,
    threshold: float = 0.5,
    min_voxels: int = 1,
    max_candidates: int | None = None,
    peak_distance_mm: float = 0.0,
    center_power: float = 1.0,
) -> tuple[list[Candidate], np.ndarray]:
    """Candidate regions of `prob >= threshold`.

    With `peak_distance_mm` 0 each connected component (26-connectivity) is one candidate.
    Otherwise every local maximum of `prob` (the highest value within +-`peak_distance_mm` on
    each axis; a plateau is one maximum) seeds a region, and a watershed of `-prob` inside the
    thresholded mask splits the components between the seeds: a small nodule touching a vessel
    or another nodule keeps its own candidate and centre instead of being merged into the
    larger blob (whose probability-weighted centre then lies on neither). A component without
    a local maximum of its own (a higher peak lies within the distance outside it) is seeded
    at its highest voxel.

    Args:
        prob: (X, Y, Z) foreground probability.
        spacing_mm: voxel size along X, Y, Z.
        threshold: probability threshold.
        min_voxels: drop smaller regions.
        max_candidates: keep the most probable ones.
        peak_distance_mm: half-width of the local-maximum window (0: components only).
        center_power: the center is the centroid weighted by prob ** center_power (higher:
            nearer the confident core, less pulled by a vessel stump at lower probability).

    Returns:
        (candidates sorted by prob, highest first; int32 label map whose value k marks the
        voxels of the candidate with `component == k`).
    """
    spacing_mm = np.asarray(spacing_mm, dtype=np.float64)
    structure = np.ones((3, 3, 3), bool)
    mask = prob >= threshold
    labels, n = ndimage.label(mask, structure=structure)
    if n and peak_distance_mm > 0:
        from skimage.segmentation import watershed

        half = np.maximum(np.ceil(peak_distance_mm / spacing_mm).astype(int), 1)
        peaks = mask & (prob >= ndimage.maximum_filter(prob, size=tuple(2 * half + 1)))
        markers, n_markers = ndimage.label(peaks, structure=structure)
        seeded = np.zeros(n + 1, bool)
        seeded[labels[peaks]] = True
        for k in np.flatnonzero(~seeded[1:]) + 1:
            pos = ndimage.maximum_position(prob, labels, k)
            n_markers += 1
            markers[pos] = n_markers
        labels = watershed(-prob, markers, mask=mask, connectivity=3)
        n = int(n_markers)
    if n == 0:
        return [], labels.astype(np.int32)
    index = np.arange(1, n + 1)
    sizes, peaks, centers = _region_stats(prob, labels, n, center_power)
    boxes = ndimage.find_objects(labels, max_label=n)
    voxel_mm3 = float(np.prod(spacing_mm))
    out = []
    for k, size, peak, center, box in zip(index, sizes, peaks, centers, boxes, strict=True):
        if size < min_voxels or box is None:
            continue
        diameter = float((6.0 * size * voxel_mm3 / np.pi) ** (1.0 / 3.0))
        out.append(
            Candidate(
                center_voxel=np.asarray(center, dtype=np.float64),
                diameter_mm=diameter,
                prob=float(peak),
                component=int(k),
                n_voxels=int(size),
                bbox=(tuple(s.start for s in box), tuple(s.stop for s in box)),  # type: ignore[arg-type]
            )
        )
    out.sort(key=lambda c: -c.prob)
    if max_candidates is not None:
        out = out[:max_candidates]
    return out, labels.astype(np.int32)


def _region_stats(
    prob: np.ndarray, labels: np.ndarray, n: int, center_power: float
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Voxel count, highest probability and prob ** center_power weighted centroid of regions
    1..n, read from the labelled voxels only: `ndimage.maximum` and `center_of_mass` over a
    CT-sized grid sort or sweep all of it (about 20 s of a 512 x 512 x 300 scan's inference)."""
    where = np.nonzero(labels)
    lab = labels[where]
    values = prob[where].astype(np.float64)
    sizes = np.bincount(lab, minlength=n + 1)[1:].astype(np.float64)
    peaks = np.full(n + 1, -np.inf)
    np.maximum.at(peaks, lab, values)
    weights = values**center_power
    total = np.bincount(lab, weights=weights, minlength=n + 1)[1:]
    weighted = total > 0  # else (threshold 0, a region of probability 0): the plain centroid
    centers = np.empty((n, 3))
    for d, axis in enumerate(where):
        moment = np.bincount(lab, weights=weights * axis, minlength=n + 1)[1:]
        plain = np.bincount(lab, weights=axis.astype(np.float64), minlength=n + 1)[1:]
        centers[:, d] = np.where(
            weighted, moment / np.where(weighted, total, 1.0), plain / np.maximum(sizes, 1.0)
        )
    return sizes, peaks[1:], centers


def combine_scores(
    p_candidate: np.ndarray, p_classifier: np.ndarray, mode: str = "geometric"
) -> np.ndarray:
    """Final score from the candidate probability and the classifier probability.

    Modes: "geometric" sqrt(p q), "product" p q, "mean" (p + q) / 2, "classifier" q and
    "candidate" p (the classifier is ignored: chosen on validation when it does not help).
    """
    p = np.asarray(p_candidate, dtype=np.float64)
    q = np.asarray(p_classifier, dtype=np.float64)
    if mode == "geometric":
        return np.sqrt(p * q)
    if mode == "product":
        return p * q
    if mode == "mean":
        return (p + q) / 2.0
    if mode == "classifier":
        return q
    if mode == "candidate":
        return p
    raise ValueError(f"unknown combine mode {mode!r}")


def merge_close(
    centers_mm: np.ndarray, radii_mm: np.ndarray, scores: np.ndarray
) -> list[list[int]]:
    """Greedy merge: highest score first; a detection whose center lies within the radius of a
    kept one (the larger of the two radii) joins it.

    Returns:
        Groups of indices; the first index of each group is the kept detection.
    """
    order = np.argsort(-np.asarray(scores), kind="stable")
    centers_mm = np.asarray(centers_mm, dtype=np.float64).reshape(-1, 3)
    radii_mm = np.asarray(radii_mm, dtype=np.float64)
    groups: list[list[int]] = []
    for i in order:
        for group in groups:
            k = group[0]
            if np.linalg.norm(centers_mm[i] - centers_mm[k]) <= max(radii_mm[i], radii_mm[k]):
                group.append(int(i))
                break
        else:
            groups.append([int(i)])
    return groups


def add_blob_candidates(
    candidates: list[Candidate],
    labels: np.ndarray,
    blob: np.ndarray,
    inside: np.ndarray,
    prob: np.ndarray,
    spacing_mm: np.ndarray,
    n: int,
    window: int = 5,
    min_separation_mm: float = 3.0,
    source: str = "blob",
) -> tuple[list[Candidate], np.ndarray]:
    """Add the `n` strongest local maxima of the blob channel (or of another dot-filter
    response: `source` names it in each new candidate) as candidates.

    The dot filter reaches small nodules that touch a vessel or the chest wall, which a U-Net
    trained on a few dozen of them scores low; the false-positive classifier then decides
    between them and the vessel ends the filter also finds. A maximum (the highest response
    within a `window`^3 box, inside `inside`) closer than the radius of an existing candidate,
    or than `min_separation_mm`, to its centre is that candidate again and is skipped. Each new
    candidate's region (its mask and size) is the voxels around the peak (within 6 mm) where
    the response is at least half the peak, connected to it; its centre is the peak refined
    by its 3^3 neighbours; its probability is the U-Net's highest in the region.

    Args:
        candidates: the U-Net's candidates (kept first, unchanged).
        labels: their int32 label map (a copy with the new regions is returned).
        blob: (X, Y, Z) blob response.
        inside: (X, Y, Z) bool, where a candidate may lie (dense voxels: a nodule centre).
        prob: (X, Y, Z) U-Net foreground probability.
        spacing_mm: voxel size along X, Y, Z.
        n: maxima to add at most.
        window: edge of the local-maximum box (voxels).
        min_separation_mm: a maximum nearer than this to a kept candidate is skipped.
        source: the new candidates' `Candidate.source`.

    Returns:
        (candidates sorted by prob, highest first; the label map with the new regions).
    """
    spacing_mm = np.asarray(spacing_mm, dtype=np.float64)
    if n <= 0:
        return candidates, labels
    peaks = np.argwhere((blob >= ndimage.maximum_filter(blob, size=window)) & (blob > 0) & inside)
    if len(peaks) == 0:
        return candidates, labels
    order = np.argsort(-blob[tuple(peaks.T)], kind="stable")
    kept_mm = [np.asarray(c.center_voxel) * spacing_mm for c in candidates]
    kept_r = [max(c.diameter_mm / 2.0, min_separation_mm) for c in candidates]
    labels = labels.copy()
    next_label = int(labels.max()) + 1
    half = np.maximum(np.ceil(6.0 / spacing_mm).astype(int), 1)  # 12 mm box: up to ~8 mm blobs
    out = list(candidates)
    structure = np.ones((3, 3, 3), bool)
    added = 0
    for idx in order:
        if added >= n:
            break
        peak = peaks[idx]
        p_mm = peak * spacing_mm
        if any(np.linalg.norm(p_mm - c) <= r for c, r in zip(kept_mm, kept_r, strict=True)):
            continue
        lo = np.maximum(peak - half, 0)
        hi = np.minimum(peak + half + 1, blob.shape)
        box = tuple(slice(int(a), int(b)) for a, b in zip(lo, hi, strict=True))
        local = blob[box]
        region, _ = ndimage.label(local >= 0.5 * blob[tuple(peak)], structure=structure)
        mine = region == region[tuple(peak - lo)]
        free = mine & (labels[box] == 0)
        if not free.any():  # all of it already belongs to another candidate
            continue
        labels[box][free] = next_label
        size = int(mine.sum())
        # the centre: the peak, refined by the response-weighted mean of its 3^3 neighbours (the
        # half-maximum region may run along a vessel the nodule touches and pull a centroid off)
        near = tuple(slice(max(int(a) - 1, 0), int(a) + 2) for a in peak)
        center = np.array([s.start for s in near], dtype=np.float64) + np.array(
            ndimage.center_of_mass(blob[near]), dtype=np.float64
        )
        diameter = float((6.0 * size * float(np.prod(spacing_mm)) / np.pi) ** (1.0 / 3.0))
        nz = np.argwhere(free) + lo
        out.append(
            Candidate(
                center_voxel=center,
                diameter_mm=diameter,
                prob=float(prob[box][mine].max()),
                component=next_label,
                n_voxels=int(free.sum()),
                bbox=(tuple(int(v) for v in nz.min(0)), tuple(int(v) + 1 for v in nz.max(0))),  # type: ignore[arg-type]
                source=source,
            )
        )
        kept_mm.append(center * spacing_mm)
        kept_r.append(max(diameter / 2.0, min_separation_mm))
        next_label += 1
        added += 1
    out.sort(key=lambda c: -c.prob)
    return out, labels
