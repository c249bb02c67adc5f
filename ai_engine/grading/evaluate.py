"""Evaluate a grading model folder on datalist items: METRICS.json with pointing game."""

from __future__ import annotations

import json
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from ai_engine.errors import InputError, ModelFolderError
from ai_engine.evaluation.classification import classification_metrics
from ai_engine.explain import pointing_game
from ai_engine.grading.data import GRADES, grade_to_label, load_mask_on_source
from ai_engine.grading.explain import explain_study
from ai_engine.grading.model import GradingModel

__all__ = ["compare_folders", "evaluate_grading", "grading_calibration_batches", "write_metrics"]


def evaluate_grading(
    model: GradingModel,
    items: Sequence[dict[str, Any]],
    *,
    pointing: bool = True,
    method: str = "gradcam",
    tolerance_voxels: int = 0,
) -> dict[str, Any]:
    """Grade every item and score the model.

    Args:
        model: a loaded grading model (any format).
        items: datalist items with `images` and `grade` (and optionally `tumor_mask`).
        pointing: run the pointing game on items with a tumor mask (needs a model folder
            with PyTorch weights for Grad-CAM; skipped with a note otherwise).
        method: explanation method of the pointing game.
        tolerance_voxels: dilation of the mask (source voxels) in the pointing game.

    Returns:
        `classification_metrics` (calibrated probabilities) plus `ece_uncalibrated`,
        `pointing_game` (when masks are given), `per_case` and `seconds_per_study`.
    """
    logits, labels, per_case = [], [], []
    hits: list[bool] = []
    pointing_note = None
    seconds = 0.0
    warm = False
    for item in items:
        study = model.load(item["images"])
        if not warm:  # first call pays one-time costs (allocations, graph optimisation)
            model.logits(study.image[None])
            warm = True
        start = time.perf_counter()
        case_logits = model.logits(study.image[None])[0]
        seconds += time.perf_counter() - start
        logits.append(case_logits)
        labels.append(grade_to_label(item["grade"]))
        case: dict[str, Any] = {
            "grade": int(item["grade"]),
            "predicted": GRADES[int(np.argmax(case_logits))],
            "missing_sequences": list(study.missing_channels),
        }
        if pointing and item.get("tumor_mask") and pointing_note is None:
            try:
                expl = explain_study(model, study, method=method)
            except ModelFolderError as exc:
                pointing_note = str(exc)
            else:
                mask = load_mask_on_source(item["tumor_mask"], study.source)
                hit = pointing_game(expl.heat_source.array, mask, tolerance_voxels)
                hits.append(hit)
                case["pointing_hit"] = hit
        per_case.append(case)
    if not items:
        raise ValueError("no items to evaluate")
    logits_a = np.stack(logits)
    labels_a = np.asarray(labels)
    names = [str(g) for g in GRADES]
    metrics = classification_metrics(labels_a, model.probabilities(logits_a), names)
    metrics["ece_uncalibrated"] = classification_metrics(
        labels_a, model.probabilities(logits_a, calibrated=False), names
    )["ece"]
    metrics["temperature"] = model.temperature
    if hits:
        metrics["pointing_game"] = {
            "rate": float(np.mean(hits)),
            "hits": int(np.sum(hits)),
            "n": len(hits),
            "method": method,
            "tolerance_voxels": tolerance_voxels,
        }
    elif pointing_note:
        metrics["pointing_game_skipped"] = pointing_note
    metrics["seconds_per_study"] = seconds / len(items)
    metrics["model"] = {"path": str(model.folder.path), "made_by": model.folder.made_by}
    metrics["per_case"] = per_case
    return metrics


def write_metrics(metrics: dict[str, Any], path: str | Path) -> Path:
    """Write METRICS.json."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(metrics, indent=2) + "\n")
    return path


def grading_calibration_batches(
    model_dir: str | Path, datalist: str | Path, split: str = "training", count: int = 16
) -> list[np.ndarray]:
    """Preprocessed studies (one (1, C, *spatial) array each) for static quantization.

    Raises:
        InputError: the datalist split holds no items.
    """
    from ai_engine.data.datalist import load_datalist
    from ai_engine.grading.model import load_grading_model

    model = load_grading_model(model_dir)
    items = load_datalist(datalist).get(split, [])
    if not items:
        raise InputError(f"{datalist} has no {split!r} items for calibration")
    return [model.load(item["images"]).image[None] for item in items[: max(1, count)]]


def compare_folders(
    reference_dir: str | Path,
    candidate_dir: str | Path,
    datalist: str | Path,
    split: str = "testing",
) -> dict[str, Any]:
    """Metric change of a derived folder (quantized, distilled) against its reference.

    Returns:
        `{"reference": {...}, "candidate": {...}, "accuracy_drop", "macro_f1_drop"}` where
        each side has accuracy, macro-F1, ECE and seconds per study on this CPU.
    """
    from ai_engine.data.datalist import load_datalist
    from ai_engine.grading.model import load_grading_model
    from ai_engine.grading.train import grading_items

    items = grading_items(load_datalist(datalist).get(split, []), split)
    if not items:
        raise InputError(f"{datalist} has no {split!r} items to evaluate on")
    out: dict[str, Any] = {"split": split, "n": len(items)}
    for key, folder in (("reference", reference_dir), ("candidate", candidate_dir)):
        m = evaluate_grading(load_grading_model(folder), items, pointing=False)
        out[key] = {k: m[k] for k in ("accuracy", "macro_f1", "ece", "seconds_per_study")}
        out[key]["path"] = str(folder)
    out["accuracy_drop"] = out["reference"]["accuracy"] - out["candidate"]["accuracy"]
    out["macro_f1_drop"] = out["reference"]["macro_f1"] - out["candidate"]["macro_f1"]
    return out
