"""Calibrated class probabilities: temperature scaling and the expected calibration error.

Temperature scaling (Guo et al., ICML 2017) divides a classifier's logits by one scalar
`T > 0` fitted on held-out (validation) data by minimising the negative log-likelihood. It
keeps the predicted class (argmax) unchanged and only fixes over- or under-confidence.
The ECE is the top-label version: predictions binned by confidence, the weighted mean
|accuracy - confidence| over bins, computed with `monai.metrics.calibration_binning`.
"""

from __future__ import annotations

import numpy as np
import torch
from monai.metrics import calibration_binning

__all__ = ["apply_temperature", "expected_calibration_error", "fit_temperature"]


def expected_calibration_error(
    probs: np.ndarray | torch.Tensor, labels: np.ndarray | torch.Tensor, n_bins: int = 10
) -> float:
    """Top-label expected calibration error in [0, 1].

    Args:
        probs: N x C class probabilities.
        labels: N true class indices.
        n_bins: number of equal-width confidence bins on [0, 1].
    """
    probs_t = torch.as_tensor(np.asarray(probs), dtype=torch.float32)
    labels_t = torch.as_tensor(np.asarray(labels), dtype=torch.int64).reshape(-1)
    if probs_t.ndim != 2 or probs_t.shape[0] != labels_t.shape[0]:
        raise ValueError(
            f"probs must be N x C with N={labels_t.shape[0]}, got {tuple(probs_t.shape)}"
        )
    if labels_t.numel() == 0:
        return float("nan")
    confidence, predicted = probs_t.max(dim=1)
    correct = (predicted == labels_t).float()
    mean_p, mean_gt, counts = calibration_binning(
        confidence.view(1, 1, -1), correct.view(1, 1, -1), num_bins=n_bins
    )
    gap = torch.nan_to_num((mean_p - mean_gt).abs(), nan=0.0)
    return float((gap * counts).sum() / counts.sum())


def apply_temperature(logits: np.ndarray | torch.Tensor, temperature: float) -> np.ndarray:
    """Softmax of `logits / temperature` as an N x C float64 array."""
    if not temperature > 0:
        raise ValueError(f"temperature must be > 0, got {temperature}")
    logits_t = torch.as_tensor(np.asarray(logits), dtype=torch.float64)
    return torch.softmax(logits_t / float(temperature), dim=1).numpy()


def fit_temperature(
    logits: np.ndarray | torch.Tensor,
    labels: np.ndarray | torch.Tensor,
    bounds: tuple[float, float] = (0.05, 20.0),
    prior_std: float | None = None,
) -> float:
    """Fit the temperature minimising the NLL of `softmax(logits / T)` on held-out data.

    The NLL is smooth and unimodal in log T, so a bounded scalar search over log T
    (`scipy.optimize.minimize_scalar`) finds it in a few dozen evaluations.

    With `prior_std`, the fit is the maximum a posteriori T under a normal prior
    `log T ~ N(0, prior_std^2)`: it minimises `mean NLL + (log T / prior_std)^2 / (2 N)`.
    A small validation set on which the model makes (almost) no mistake then no longer
    drives T to its lower bound (the plain NLL falls monotonically as T -> 0 when every
    case is right, i.e. T is not identified and the fit would make the model as
    overconfident as allowed); with a few hundred cases the data outweigh the prior.

    Args:
        logits: N x C raw outputs of the classifier on the validation set.
        labels: N true class indices.
        bounds: allowed range of T.
        prior_std: standard deviation of the prior on log T (None: plain maximum likelihood).

    Returns:
        The fitted temperature (1.0 when `logits` is empty).
    """
    from scipy.optimize import minimize_scalar
    from scipy.special import log_softmax

    z = np.asarray(logits.detach().cpu() if torch.is_tensor(logits) else logits, dtype=np.float64)
    y = np.asarray(
        labels.detach().cpu() if torch.is_tensor(labels) else labels, dtype=np.int64
    ).reshape(-1)
    if z.ndim != 2 or z.shape[0] != y.shape[0]:
        raise ValueError(f"logits must be N x C with N={y.shape[0]}, got {z.shape}")
    if y.size == 0:
        return 1.0
    rows = np.arange(y.size)

    if prior_std is not None and not prior_std > 0:
        raise ValueError(f"prior_std must be > 0 or None, got {prior_std}")
    penalty = 0.0 if prior_std is None else 1.0 / (2.0 * prior_std**2 * y.size)

    def nll(log_t: float) -> float:
        data = float(-log_softmax(z / np.exp(log_t), axis=1)[rows, y].mean())
        return data + penalty * log_t**2

    result = minimize_scalar(
        nll,
        bounds=(np.log(bounds[0]), np.log(bounds[1])),
        method="bounded",
        options={"xatol": 1e-4},
    )
    temperature = float(np.exp(result.x))
    return temperature if np.isfinite(temperature) else 1.0
