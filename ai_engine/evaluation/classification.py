"""Metrics of a multi-class classifier: accuracy, macro-F1, per-class AUC, confusion, ECE.

Every function takes plain arrays: `labels` as N class indices (0..C-1) and `probs` as an
N x C array of class probabilities (rows sum to 1). AUC comes from
`monai.metrics.compute_roc_auc` (one-vs-rest per class) and ECE from
`ai_engine.calibration.expected_calibration_error`, so all reports use the same definitions.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
import torch
from monai.metrics import compute_roc_auc

from ai_engine.calibration import expected_calibration_error

__all__ = ["classification_metrics", "confusion_matrix", "macro_f1", "per_class_auc"]


def _check(labels: np.ndarray, probs: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    labels = np.asarray(labels, dtype=np.int64).reshape(-1)
    probs = np.asarray(probs, dtype=np.float64)
    if probs.ndim != 2 or probs.shape[0] != labels.shape[0]:
        raise ValueError(f"probs must be N x C with N={labels.shape[0]}, got shape {probs.shape}")
    if labels.size and (labels.min() < 0 or labels.max() >= probs.shape[1]):
        raise ValueError(f"labels must lie in 0..{probs.shape[1] - 1}, got {sorted(set(labels))}")
    return labels, probs


def confusion_matrix(labels: Sequence[int], preds: Sequence[int], num_classes: int) -> np.ndarray:
    """C x C counts; row = true class, column = predicted class."""
    matrix = np.zeros((num_classes, num_classes), dtype=np.int64)
    np.add.at(matrix, (np.asarray(labels, dtype=np.int64), np.asarray(preds, dtype=np.int64)), 1)
    return matrix


def macro_f1(confusion: np.ndarray) -> float:
    """Unweighted mean over classes of F1; a class never predicted nor present scores 0."""
    tp = np.diag(confusion).astype(np.float64)
    fp = confusion.sum(axis=0) - tp
    fn = confusion.sum(axis=1) - tp
    denom = 2 * tp + fp + fn
    f1 = np.divide(2 * tp, denom, out=np.zeros_like(tp), where=denom > 0)
    return float(f1.mean())


def per_class_auc(labels: np.ndarray, probs: np.ndarray) -> list[float | None]:
    """One-vs-rest ROC AUC per class; None where a class is absent or is the only one present."""
    labels, probs = _check(labels, probs)
    out: list[float | None] = []
    for c in range(probs.shape[1]):
        positives = labels == c
        if positives.all() or not positives.any():
            out.append(None)
            continue
        auc = compute_roc_auc(
            torch.as_tensor(probs[:, c]), torch.as_tensor(positives.astype(np.float32))
        )
        out.append(float(auc))
    return out


def classification_metrics(
    labels: Sequence[int] | np.ndarray,
    probs: np.ndarray,
    class_names: Sequence[str] | None = None,
    n_bins: int = 10,
) -> dict[str, Any]:
    """All grading metrics as a JSON-ready dict.

    Args:
        labels: N true class indices.
        probs: N x C probabilities.
        class_names: names used as keys of the per-class AUC (default "0", "1", ...).
        n_bins: number of equal-width confidence bins of the ECE.

    Returns:
        `{"n", "accuracy", "macro_f1", "auc": {name: auc|None}, "auc_macro", "ece",
        "confusion": [[...]], "class_names"}`.
    """
    labels, probs = _check(np.asarray(labels), probs)
    num_classes = probs.shape[1]
    names = [str(n) for n in (class_names or range(num_classes))]
    if len(names) != num_classes:
        raise ValueError(f"class_names has {len(names)} names for {num_classes} classes")
    preds = probs.argmax(axis=1)
    confusion = confusion_matrix(labels, preds, num_classes)
    aucs = per_class_auc(labels, probs)
    valid = [a for a in aucs if a is not None]
    return {
        "n": int(labels.size),
        "accuracy": float((preds == labels).mean()) if labels.size else float("nan"),
        "macro_f1": macro_f1(confusion),
        "auc": dict(zip(names, aucs, strict=True)),
        "auc_macro": float(np.mean(valid)) if valid else None,
        "ece": expected_calibration_error(probs, labels, n_bins=n_bins),
        "confusion": confusion.tolist(),
        "class_names": names,
    }
