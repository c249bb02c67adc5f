"""Evaluation of a detection model folder on a datalist split: METRICS.json + FROC PNG."""

from __future__ import annotations

import json
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from ai_engine.detection.pipeline import NoduleDetector
from ai_engine.errors import InputError
from ai_engine.evaluation.froc import froc, plot_froc, sensitivity_by_size


def evaluate_detector(
    detector: NoduleDetector,
    items: Sequence[dict[str, Any]],
    use_classifier: bool = True,
    progress: bool = False,
) -> dict[str, Any]:
    """Run `detector` on every item (`{"image", "nodules"}`) and compute FROC metrics.

    Returns:
        METRICS dict: cpm, sensitivity{"0.125".."8"}, n_images, n_nodules, counts, the curve,
        per-scan seconds, `by_size` (the sensitivities of each nodule-diameter bin at the
        overall operating points, `ai_engine.evaluation.froc.sensitivity_by_size`), plus
        `"_result"` (the `FROCResult`, removed before writing).
    """
    if not items:
        raise InputError("nothing to evaluate: the split has no items")
    points, nodules, seconds = [], [], []
    iterator: Any = items
    if progress:
        from tqdm.auto import tqdm

        iterator = tqdm(items, desc="evaluate", leave=False)
    for item in iterator:
        t0 = time.perf_counter()
        result = detector.detect(item["image"], use_classifier=use_classifier)
        seconds.append(time.perf_counter() - t0)
        points.append([d.as_point() for d in result.detections])
        nodules.append(item.get("nodules", []))
    res = froc(points, nodules)
    metrics = res.to_metrics()
    metrics["seconds_per_scan"] = float(np.mean(seconds))
    diameters = [float(n["diameter_mm"]) for nods in nodules for n in nods]
    metrics["by_size"] = sensitivity_by_size(res, diameters)
    metrics["_result"] = res
    return metrics


def write_metrics(
    metrics: dict[str, Any], out: str | Path, title: str = "FROC"
) -> tuple[Path, Path]:
    """Write METRICS.json and the FROC curve PNG beside it (same stem, `.png`)."""
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    result = metrics.get("_result")
    clean = {k: v for k, v in metrics.items() if k != "_result"}
    out.write_text(json.dumps(clean, indent=2) + "\n")
    png = out.with_suffix(".png")
    if result is not None:
        plot_froc(result, png, title=title)
    return out, png
