"""FROC evaluation of point detections against spherical reference nodules (LUNA16 rules).

A detection is a hit on a nodule when its center lies within the nodule's radius
(distance <= diameter / 2). Several hits on one nodule count once (the nodule takes the best
score among them, the other hits are neither TP nor FP); a detection that hits no nodule is a
false positive. Sweeping the score threshold gives (false positives per scan, sensitivity)
points; as in LUNA16's evaluation script, the sensitivity at 1/8 ... 8 FPs per scan is read
off that curve by linear interpolation, and the CPM is the mean of those seven values.

MONAI has `compute_froc_curve_data`, but it drops the lowest threshold (so the operating
point that keeps every detection never appears); the curve is built here and the reading at
the FP rates uses MONAI's `compute_froc_score` (np.interp).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from itertools import pairwise
from pathlib import Path
from typing import Any

import numpy as np
from monai.metrics import compute_froc_score

FP_RATES: tuple[float, ...] = (0.125, 0.25, 0.5, 1.0, 2.0, 4.0, 8.0)


def fp_rate_key(rate: float) -> str:
    """ "0.125", "0.25", "0.5", "1", "2", "4", "8" (the keys of METRICS.json)."""
    return f"{rate:g}"


@dataclass
class FROCResult:
    """FROC of one evaluation.

    Attributes:
        fps_per_scan: x of the curve (ascending), one point per distinct score threshold,
            starting at (0, sensitivity with no FP).
        sensitivity: y of the curve.
        thresholds: the score threshold of each point (inf for the first).
        sensitivity_at: sensitivity at each FP rate of `FP_RATES` (keyed like "0.125").
        cpm: mean of `sensitivity_at`.
        n_images: scans evaluated.
        n_nodules: reference nodules.
        n_detections: detections given.
        n_hit: nodules hit at the lowest threshold (all detections kept).
        n_false_positives: detections on no nodule (all kept).
        nodule_scores: each nodule's best hit score (-inf: never hit), scans in order.
    """

    fps_per_scan: list[float]
    sensitivity: list[float]
    thresholds: list[float]
    sensitivity_at: dict[str, float]
    cpm: float
    n_images: int
    n_nodules: int
    n_detections: int
    n_hit: int
    n_false_positives: int
    per_image: list[dict[str, Any]] = field(default_factory=list)
    nodule_scores: list[float] = field(default_factory=list)

    def to_metrics(self) -> dict[str, Any]:
        """The METRICS.json form (curve included)."""
        return {
            "cpm": self.cpm,
            "sensitivity": self.sensitivity_at,
            "n_images": self.n_images,
            "n_nodules": self.n_nodules,
            "n_detections": self.n_detections,
            "n_hit": self.n_hit,
            "n_false_positives": self.n_false_positives,
            "froc_curve": {
                "fps_per_scan": self.fps_per_scan,
                "sensitivity": self.sensitivity,
                "thresholds": [t if np.isfinite(t) else None for t in self.thresholds],
            },
        }


def match_detections(
    detections: Sequence[dict[str, Any]], nodules: Sequence[dict[str, Any]]
) -> tuple[list[float], list[float]]:
    """Match one scan's detections to its nodules.

    Args:
        detections: `{"center_lps_mm": [x, y, z], "score": s}` each.
        nodules: `{"center_lps_mm": [x, y, z], "diameter_mm": d}` each.

    Returns:
        (best hit score per nodule, -inf when missed; scores of the false positives).
    """
    best = [-np.inf] * len(nodules)
    fp_scores: list[float] = []
    if nodules:
        centers = np.array([n["center_lps_mm"] for n in nodules], dtype=np.float64).reshape(-1, 3)
        radii = np.array([float(n["diameter_mm"]) / 2.0 for n in nodules])
    for det in detections:
        score = float(det["score"])
        if not nodules:
            fp_scores.append(score)
            continue
        dist = np.linalg.norm(centers - np.asarray(det["center_lps_mm"], dtype=np.float64), axis=1)
        hits = np.flatnonzero(dist <= radii)
        if hits.size == 0:
            fp_scores.append(score)
        for h in hits:
            best[h] = max(best[h], score)
    return best, fp_scores


def froc(
    detections_per_scan: Sequence[Sequence[dict[str, Any]]],
    nodules_per_scan: Sequence[Sequence[dict[str, Any]]],
    fp_rates: Sequence[float] = FP_RATES,
) -> FROCResult:
    """FROC over scans (the two sequences are aligned: scan i's detections and nodules).

    Raises:
        ValueError: the sequences differ in length or there are no scans.
    """
    if len(detections_per_scan) != len(nodules_per_scan):
        raise ValueError(
            f"{len(detections_per_scan)} detection lists for {len(nodules_per_scan)} scans"
        )
    n_images = len(nodules_per_scan)
    if n_images == 0:
        raise ValueError("FROC needs at least one scan")
    tp_scores: list[float] = []
    fp_scores: list[float] = []
    per_image = []
    n_nodules = 0
    for dets, nods in zip(detections_per_scan, nodules_per_scan, strict=True):
        best, fps = match_detections(dets, nods)
        tp_scores += best
        fp_scores += fps
        n_nodules += len(nods)
        per_image.append(
            {
                "n_nodules": len(nods),
                "n_hit": int(np.isfinite(best).sum()),
                "n_false_positives": len(fps),
            }
        )
    tp = np.asarray(tp_scores, dtype=np.float64)
    fp = np.asarray(fp_scores, dtype=np.float64)
    # One point per distinct score, highest first; the first point keeps no detection.
    thresholds = sorted({*tp[np.isfinite(tp)].tolist(), *fp.tolist()}, reverse=True)
    xs, ys, ts = [0.0], [0.0], [float("inf")]
    for t in thresholds:
        x = float((fp >= t).sum()) / n_images
        y = float((tp >= t).sum()) / n_nodules if n_nodules else 0.0
        if x == xs[-1]:  # same FP count, higher sensitivity: keep only the better point
            ys[-1], ts[-1] = y, t
        else:
            xs.append(x)
            ys.append(y)
            ts.append(t)
    at = _read_at_rates(xs, ys, fp_rates)
    return FROCResult(
        fps_per_scan=xs,
        sensitivity=ys,
        thresholds=ts,
        sensitivity_at=at,
        cpm=float(np.mean(list(at.values()))),
        n_images=n_images,
        n_nodules=n_nodules,
        n_detections=sum(len(d) for d in detections_per_scan),
        n_hit=int(np.isfinite(tp).sum()),
        n_false_positives=len(fp),
        per_image=per_image,
        nodule_scores=tp.tolist(),
    )


def _read_at_rates(
    xs: Sequence[float], ys: Sequence[float], fp_rates: Sequence[float]
) -> dict[str, float]:
    # compute_froc_score expects the curve with FP rates descending (as MONAI builds it).
    xs_arr, ys_arr = np.asarray(xs, dtype=np.float64), np.asarray(ys, dtype=np.float64)
    return {
        fp_rate_key(r): float(compute_froc_score(xs_arr[::-1], ys_arr[::-1], (float(r),)))
        for r in fp_rates
    }


def subgroup_sensitivity(
    result: FROCResult, selected: Sequence[bool], fp_rates: Sequence[float] = FP_RATES
) -> dict[str, Any]:
    """Sensitivity of a subgroup of the nodules (`selected`, aligned with
    `result.nodule_scores`) at the whole evaluation's operating points: the thresholds that
    give 1/8 ... 8 false positives per scan over all scans, read off the curve as the CPM is.
    The subgroups' CPMs weighted by their nodule counts add up to the overall CPM.

    Returns:
        {"n_nodules", "n_hit" (at the lowest threshold), "sensitivity" {"0.125".."8"}, "cpm"};
        None for the sensitivities of an empty subgroup.
    """
    mask = np.asarray(selected, dtype=bool)
    if mask.shape != (len(result.nodule_scores),):
        raise ValueError(f"{mask.size} flags for {len(result.nodule_scores)} nodules")
    scores = np.asarray(result.nodule_scores, dtype=np.float64)[mask]
    n = int(mask.sum())
    if n == 0:
        return {"n_nodules": 0, "n_hit": 0, "sensitivity": None, "cpm": None}
    ys = [float((scores >= t).sum()) / n for t in result.thresholds]
    at = _read_at_rates(result.fps_per_scan, ys, fp_rates)
    return {
        "n_nodules": n,
        "n_hit": int(np.isfinite(scores).sum()),
        "sensitivity": at,
        "cpm": float(np.mean(list(at.values()))),
    }


#: nodule-diameter bins (mm) of `sensitivity_by_size`: < 3, 3-5, 5-8, 8-15, >= 15
SIZE_BINS_MM: tuple[float, ...] = (3.0, 5.0, 8.0, 15.0)


def sensitivity_by_size(
    result: FROCResult,
    diameters_mm: Sequence[float],
    bins_mm: Sequence[float] = SIZE_BINS_MM,
) -> dict[str, dict[str, Any]]:
    """`subgroup_sensitivity` per nodule-diameter bin (lower edge included), keyed like
    "3-5" ("<3" below the first edge, ">=15" above the last); empty bins are left out.
    `diameters_mm` follows the nodules in `result.nodule_scores` order."""
    d = np.asarray(diameters_mm, dtype=np.float64)
    edges = [-np.inf, *bins_mm, np.inf]
    out = {}
    for lo, hi in pairwise(edges):
        key = f"<{hi:g}" if lo == -np.inf else f">={lo:g}" if hi == np.inf else f"{lo:g}-{hi:g}"
        selected = (d >= lo) & (d < hi)
        if selected.any():
            out[key] = subgroup_sensitivity(result, selected)
    return out


def plot_froc(result: FROCResult, path: str | Path, title: str = "FROC") -> Path:
    """Draw the FROC curve (log FP axis, the seven FP rates marked) to a PNG (matplotlib Agg)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig, ax = plt.subplots(figsize=(6, 4.5), dpi=100)
    xs = np.maximum(np.asarray(result.fps_per_scan), 1e-3)
    ax.step(xs, result.sensitivity, where="post", color="tab:blue", label="FROC")
    rates = [float(k) for k in result.sensitivity_at]
    ax.plot(
        rates,
        list(result.sensitivity_at.values()),
        "o",
        color="tab:red",
        label="FP rates (interpolated)",
    )
    ax.set_xscale("log")
    ax.set_xlim(0.1, 10)
    ax.set_ylim(0, 1.02)
    ax.set_xlabel("false positives per scan")
    ax.set_ylabel("sensitivity")
    ax.set_title(
        f"{title}: CPM {result.cpm:.3f} ({result.n_nodules} nodules, {result.n_images} scans)"
    )
    ax.grid(True, which="both", alpha=0.3)
    ax.legend(loc="lower right")
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)
    return path
