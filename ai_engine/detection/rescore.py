"""Rescoring: the final score of a candidate from everything the pipeline knows about it.

A logistic regression over a few numbers per candidate, fitted on the training scans'
candidates after both networks are trained (what CAD systems did before CNNs, on top of
them): the U-Net's and the classifier's logits, the blob-filter response and the HU at the
candidate's centre, its size, and whether the U-Net or the blob filter proposed it. The fixed
combinations of `candidates.combine_scores` (sqrt(p q), (p + q) / 2, ...) weigh the two
probabilities alike and ignore the rest; the most confident false positives of the bench's
detector (bronchus ends and vessels with U-Net probability 1.0) have a blob response at their
centre of 0.05-0.31 against 0.3-1.1 for nine in ten nodules, which neither network's output
carries to the score. Pure numpy; the fitted weights are a small dict in the model folder.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import asdict, dataclass

import numpy as np

from ai_engine.detection.candidates import Candidate

#: the features, in order: U-Net and classifier logits, blob response and HU / 1000 at the
#: centre, log diameter (mm), log voxel count, 1 for a blob-filter candidate
FEATURES = ("logit_p", "logit_q", "blob", "hu", "log_diameter", "log_voxels", "from_blob")
_EPS = 1e-6


def candidate_features(cands: Sequence[Candidate], q: np.ndarray) -> np.ndarray:
    """(N, len(FEATURES)) features of the candidates; `q` the classifier's probabilities."""
    if len(cands) == 0:
        return np.zeros((0, len(FEATURES)))
    p = np.clip([c.prob for c in cands], _EPS, 1 - _EPS)
    qq = np.clip(np.asarray(q, dtype=np.float64).reshape(-1), _EPS, 1 - _EPS)
    if len(qq) != len(cands):
        raise ValueError(f"{len(qq)} classifier probabilities for {len(cands)} candidates")
    return np.stack(
        [
            np.log(p / (1 - p)),
            np.log(qq / (1 - qq)),
            [c.center_blob for c in cands],
            [c.center_hu / 1000.0 for c in cands],
            np.log([max(c.diameter_mm, _EPS) for c in cands]),
            np.log([max(c.n_voxels, 1) for c in cands]),
            [float(c.source == "blob") for c in cands],
        ],
        axis=1,
    ).astype(np.float64)


@dataclass
class Rescorer:
    """Logistic regression on standardised `FEATURES` (stored as a dict in the model folder).

    Attributes:
        features: the feature names it was fitted on (checked against `FEATURES`).
        mean, scale: standardisation of each feature.
        coef, intercept: the weights on the standardised features.
        n_samples, n_positive: what it was fitted on.
    """

    features: list[str]
    mean: list[float]
    scale: list[float]
    coef: list[float]
    intercept: float
    n_samples: int = 0
    n_positive: int = 0

    def __post_init__(self) -> None:
        if list(self.features) != list(FEATURES):
            raise ValueError(
                f"rescorer features {self.features} are not this version's {list(FEATURES)}"
            )
        n = len(FEATURES)
        if not (len(self.mean) == len(self.scale) == len(self.coef) == n):
            raise ValueError(f"rescorer needs {n} means, scales and weights")

    @classmethod
    def fit(cls, x: np.ndarray, y: np.ndarray, l2: float = 1.0, iterations: int = 50) -> Rescorer:
        """Fit by Newton's method (iteratively reweighted least squares) with an L2 penalty of
        `l2` / 2 * |w|^2 on the weights (not the intercept).

        Raises:
            ValueError: no positive or no negative sample, or shapes that do not match.
        """
        x = np.asarray(x, dtype=np.float64)
        y = np.asarray(y, dtype=np.float64).reshape(-1)
        if x.ndim != 2 or x.shape[1] != len(FEATURES) or len(x) != len(y):
            raise ValueError(f"features {x.shape} and labels {y.shape} do not match")
        n_pos = int((y > 0.5).sum())
        if n_pos == 0 or n_pos == len(y):
            raise ValueError("rescoring needs positive and negative candidates")
        mean = x.mean(0)
        scale = x.std(0)
        scale[scale < 1e-9] = 1.0
        z = np.hstack([np.ones((len(x), 1)), (x - mean) / scale])
        w = np.zeros(z.shape[1])
        penalty = np.full(z.shape[1], float(l2))
        penalty[0] = 0.0
        for _ in range(iterations):
            s = 1.0 / (1.0 + np.exp(-(z @ w)))
            grad = z.T @ (s - y) + penalty * w
            hess = (z * (s * (1 - s))[:, None]).T @ z + np.diag(penalty) + 1e-9 * np.eye(len(w))
            step = np.linalg.solve(hess, grad)
            w -= step
            if np.max(np.abs(step)) < 1e-8:
                break
        return cls(
            features=list(FEATURES),
            mean=mean.tolist(),
            scale=scale.tolist(),
            coef=w[1:].tolist(),
            intercept=float(w[0]),
            n_samples=len(y),
            n_positive=n_pos,
        )

    def predict(self, x: np.ndarray) -> np.ndarray:
        """Probability that each candidate (row of `candidate_features`) is a nodule."""
        x = np.asarray(x, dtype=np.float64).reshape(-1, len(FEATURES))
        z = (x - np.asarray(self.mean)) / np.asarray(self.scale)
        return 1.0 / (1.0 + np.exp(-(z @ np.asarray(self.coef) + self.intercept)))

    def score(self, cands: Sequence[Candidate], q: np.ndarray) -> np.ndarray:
        """The final scores of `cands` given the classifier's probabilities `q`."""
        return self.predict(candidate_features(cands, q))

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict) -> Rescorer:
        """Raises:
        ValueError: not a rescorer's dict (keys missing or unknown, other features)."""
        try:
            return cls(**data)
        except TypeError as exc:
            raise ValueError(f"not a fitted rescoring: {exc}") from None
