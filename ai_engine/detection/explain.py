"""Explanations of detection findings: Grad-CAM of the false-positive classifier on each
finding's candidate patch, placed back into one 3D heat map on the SOURCE series' grid.

The classifier sees a cube cut around each finding's center on the detector's resampled RAS
grid (`NoduleDetector.classify`). Its Grad-CAM (`ai_engine.explain.explain`, i.e.
`monai.visualize.GradCAM`, for the classifier's single "nodule" logit) is a map on that cube;
the cube's voxel->LPS affine is known, so the map is sampled onto the part of the source grid
the cube covers (linear interpolation, `ai_engine.io.resample_to_grid`) and merged into the
output by maximum where cubes overlap. The result has the source's shape and affine voxel for
voxel: `ai_engine.explain.save_heatmap` writes it as NIfTI for the viewer to overlay.

Faithfulness: `pointing_game_detection` says, for each true-positive finding, whether the
maximum of its own map lies inside the reference nodule (a sphere in patient space).
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from monai.data import MetaTensor

from ai_engine.detection.patches import extract_patches
from ai_engine.detection.pipeline import Detection, NoduleDetector
from ai_engine.explain import explain
from ai_engine.io import resample_to_grid
from ai_engine.io.volume import LPS_TO_RAS, Volume
from ai_engine.transforms import lps_mm_to_voxel

__all__ = [
    "DEFAULT_TARGET_LAYER",
    "FindingHeat",
    "explain_findings",
    "finding_heatmaps",
    "pointing_game_detection",
]

# None: `find_target_layer`'s choice, `layer4` of MONAI's ResNet (1/8 of the patch's edge). With
# the default 24^3 patch that is a 3^3 map whose middle cell is centred on the candidate, so
# the map can point at a small nodule; an even cell count (e.g. 4^3 from 32^3) cannot.
DEFAULT_TARGET_LAYER: str | None = None


@dataclass
class FindingHeat:
    """The Grad-CAM map of one finding on a box of the source grid.

    Attributes:
        box: (lo, hi) source voxel corners (hi exclusive) the map covers.
        heat: float32 map of shape hi - lo, in [0, 1].
        peak_voxel: source voxel index of the map's maximum (None: flat map).
        peak_lps_mm: that voxel's position in patient space (None: flat map).
        classifier_prob: the classifier's probability on the patch the heat map explains
            (unflipped: with `fp_test_time_flips` the finding's score used the mean over
            the patch's 8 flips, so the two may differ a little).
    """

    box: tuple[tuple[int, int, int], tuple[int, int, int]]
    heat: np.ndarray
    peak_voxel: np.ndarray | None
    peak_lps_mm: np.ndarray | None
    classifier_prob: float


def _center_lps(finding: Detection | Mapping[str, Any]) -> np.ndarray:
    if isinstance(finding, Detection):
        return np.asarray(finding.center_lps_mm, dtype=np.float64)
    if "center_lps_mm" not in finding:
        raise ValueError("a finding needs 'center_lps_mm' (LPS mm)")
    return np.asarray(finding["center_lps_mm"], dtype=np.float64).reshape(3)


def finding_heatmaps(
    detector: NoduleDetector,
    source: Volume,
    findings: Sequence[Detection | Mapping[str, Any]],
    image: MetaTensor | None = None,
    method: str = "gradcam",
    target_layer: str | None = DEFAULT_TARGET_LAYER,
) -> Iterator[FindingHeat]:
    """One `FindingHeat` per finding, in order.

    Args:
        detector: a detector with a false-positive classifier.
        source: the series the findings were found on (its grid is the output grid).
        findings: FINDINGS entries (`{"center_lps_mm", ...}`) or `Detection`s.
        image: `detector.preprocess(source)` when already computed (else computed here).
        method: "gradcam" or "gradcampp" (see `ai_engine.explain.explain`).
        target_layer: classifier layer of the CAM.

    Raises:
        ValueError: the detector has no classifier, a finding has no center.
    """
    if detector.classifier is None:
        raise ValueError("the detector has no false-positive classifier to explain")
    if not findings:
        return
    pre = image if image is not None else detector.preprocess(source)
    size = detector.config.fp_patch_size
    res_lps = LPS_TO_RAS @ np.asarray(pre.affine, dtype=np.float64)  # resampled voxel -> LPS
    src_inv = np.linalg.inv(source.affine)
    shape = np.array(source.spatial_shape)
    centers_lps = np.stack([_center_lps(f) for f in findings])
    centers_vox = lps_mm_to_voxel(pre, centers_lps)
    patches = extract_patches(pre, centers_vox, size)
    origins = np.rint(centers_vox).astype(int) - size // 2  # as extract_patches cuts them
    classifier = detector.classifier
    for patch, origin in zip(patches, origins, strict=True):
        with torch.no_grad():
            x = torch.from_numpy(patch[None]).to(detector.device)
            prob = float(torch.sigmoid(classifier(x).float()).reshape(-1)[0])
        heat, _ = explain(classifier, patch, method, class_idx=0, target_layer=target_layer)
        patch_lps = res_lps.copy()
        patch_lps[:3, 3] = res_lps[:3, :3] @ origin + res_lps[:3, 3]
        corners = np.array(
            [[x, y, z] for x in (-1, size) for y in (-1, size) for z in (-1, size)], float
        )
        src_c = (corners @ patch_lps[:3, :3].T + patch_lps[:3, 3]) @ src_inv[:3, :3].T + src_inv[
            :3, 3
        ]
        lo = np.clip(np.floor(src_c.min(0)).astype(int), 0, shape)
        hi = np.clip(np.ceil(src_c.max(0)).astype(int) + 1, 0, shape)
        box = (tuple(int(v) for v in lo), tuple(int(v) for v in hi))
        if np.any(hi <= lo):  # the patch lies outside the source (cannot happen for findings)
            yield FindingHeat(box, np.zeros((0, 0, 0), np.float32), None, None, prob)
            continue
        grid = source.affine.copy()
        grid[:3, 3] = source.affine[:3, :3] @ lo + source.affine[:3, 3]
        local = resample_to_grid(
            Volume(heat.astype(np.float32), patch_lps),
            grid,
            tuple(int(v) for v in hi - lo),
            order=1,
        )
        peak_vox = peak_lps = None
        if local.size and float(local.max()) > float(local.min()):
            peak_vox = np.array(np.unravel_index(int(np.argmax(local)), local.shape)) + lo
            peak_lps = source.voxel_to_lps(peak_vox[None].astype(np.float64))[0]
        yield FindingHeat(box, local.astype(np.float32), peak_vox, peak_lps, prob)


def explain_findings(
    detector: NoduleDetector,
    source: Volume,
    findings: Sequence[Detection | Mapping[str, Any]],
    image: MetaTensor | None = None,
    method: str = "gradcam",
    target_layer: str | None = DEFAULT_TARGET_LAYER,
) -> Volume:
    """One heat map of all findings on the source grid (overlaps merged by maximum).

    Returns:
        A float32 `Volume` with `source.spatial_shape` and `source.affine` (zero where no
        finding's patch reaches; all zero without findings), meta `{"kind": "heatmap", ...}`;
        write it with `ai_engine.explain.save_heatmap`.
    """
    out = np.zeros(source.spatial_shape, dtype=np.float32)
    for item in finding_heatmaps(detector, source, findings, image, method, target_layer):
        if item.heat.size:
            box = tuple(slice(a, b) for a, b in zip(*item.box, strict=True))
            np.maximum(out[box], item.heat, out=out[box])
    meta = {
        "kind": "heatmap",
        "method": method,
        "explains": "fp_reduction",
        "n_findings": len(findings),
    }
    return Volume(out, source.affine.copy(), meta)


def pointing_game_detection(
    detector: NoduleDetector,
    source: Volume,
    findings: Sequence[Detection | Mapping[str, Any]],
    nodules: Sequence[Mapping[str, Any]],
    image: MetaTensor | None = None,
    method: str = "gradcam",
    target_layer: str | None = DEFAULT_TARGET_LAYER,
) -> dict[str, int]:
    """Pointing game on the true-positive findings of one scan.

    A finding is a true positive when its center lies within a reference nodule's radius
    (LUNA16's hit rule); it scores a hit when the maximum of its own heat map (on the source
    grid) lies within that nodule's radius too.

    Returns:
        `{"n_true_positive": ..., "n_hit": ...}`.
    """
    if not nodules or not findings:
        return {"n_true_positive": 0, "n_hit": 0}
    centers = np.array([n["center_lps_mm"] for n in nodules], dtype=np.float64).reshape(-1, 3)
    radii = np.array([float(n["diameter_mm"]) / 2.0 for n in nodules])
    tp_findings, tp_nodule = [], []
    for f in findings:
        dist = np.linalg.norm(centers - _center_lps(f), axis=1)
        k = int(np.argmin(dist))
        if dist[k] <= radii[k]:
            tp_findings.append(f)
            tp_nodule.append(k)
    hits = 0
    maps = finding_heatmaps(detector, source, tp_findings, image, method, target_layer)
    for item, k in zip(maps, tp_nodule, strict=True):
        if (
            item.peak_lps_mm is not None
            and np.linalg.norm(item.peak_lps_mm - centers[k]) <= radii[k]
        ):
            hits += 1
    return {"n_true_positive": len(tp_findings), "n_hit": hits}
