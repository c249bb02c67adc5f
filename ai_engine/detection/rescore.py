"""Rescoring: the final score of a candidate from everything the pipeline knows about it.

A logistic regression over a few numbers per candidate, fitted on the training scans'
candidates after both networks are trained (what CAD systems did before CNNs, on top of
them): the U-Net's and the classifier's logits, the HU at the candidate's centre, its size,
whether the U-Net or the blob filter proposed it, and what the image and the probability map
say around it (`ai_engine.detection.context`: the blob filter's peak, dense tissue running on
past it, its shape). The fixed combinations of `candidates.combine_scores` (sqrt(p q),
(p + q) / 2, ...) weigh the two probabilities alike and ignore the rest; the most confident
false positives of the bench's detector (bronchus ends and vessels with U-Net probability 1.0)
have a blob response at their centre of 0.05-0.31 against 0.3-1.1 for nine in ten nodules,
which neither network's output carries to the score. Since session 19 the regression also
weighs the features' squares and pairwise products (`degree` 2: an attached nodule is a solid
core *and* a confident classifier, which no sum of single-feature weights says), and training
fits it on the candidates of labelled scans that neither network trained on too (the
datalist's "calibration" split), where the networks' outputs are as confident as on new scans.
Pure numpy; the fitted weights are a small dict in the model folder, with the names of the
features they weigh.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import asdict, dataclass

import numpy as np

from ai_engine.detection.candidates import Candidate
from ai_engine.detection.context import CONTEXT_FEATURES

#: what is read at the candidate itself: U-Net and classifier logits, blob response and
#: HU / 1000 at the centre, log diameter (mm), log voxel count, 1 for a blob-filter candidate
#: (session 12's rescoring weighed exactly these; its model folders still load)
CENTRE_FEATURES = ("logit_p", "logit_q", "blob", "hu", "log_diameter", "log_voxels", "from_blob")
#: what tells the finer dot filter's candidates (`DetectionConfig.fine_blob_candidates`): 1 for
#: one of them, and that filter's peak near each candidate
FINE_FEATURES = ("from_fine", "fine_max_2mm")
#: every feature a rescoring may weigh
KNOWN_FEATURES = (*CENTRE_FEATURES, "from_fine", *CONTEXT_FEATURES)
#: what training fits now: the centre's blob response gives way to the peak within 3 mm; the
#: fine filter's two numbers only where its candidates are on (`features_for`)
FEATURES = (*(f for f in CENTRE_FEATURES if f != "blob"), "from_fine", *CONTEXT_FEATURES)


def features_for(fine_candidates: bool) -> tuple[str, ...]:
    """The features training fits: `FEATURES`, less `FINE_FEATURES` without fine candidates
    (the columns would be all zero)."""
    return FEATURES if fine_candidates else tuple(f for f in FEATURES if f not in FINE_FEATURES)


_EPS = 1e-6


def candidate_features(
    cands: Sequence[Candidate], q: np.ndarray, names: Sequence[str] = FEATURES
) -> np.ndarray:
    """(N, len(names)) features of the candidates; `q` the classifier's probabilities.

    Raises:
        ValueError: `q` does not match the candidates, an unknown name, or a candidate without
            the context the pipeline sets (`NoduleDetector.candidates_from_probability`).
    """
    unknown = [n for n in names if n not in KNOWN_FEATURES]
    if unknown:
        raise ValueError(f"unknown rescoring features {unknown}; known: {list(KNOWN_FEATURES)}")
    if len(cands) == 0:
        return np.zeros((0, len(names)))
    p = np.clip([c.prob for c in cands], _EPS, 1 - _EPS)
    qq = np.clip(np.asarray(q, dtype=np.float64).reshape(-1), _EPS, 1 - _EPS)
    if len(qq) != len(cands):
        raise ValueError(f"{len(qq)} classifier probabilities for {len(cands)} candidates")
    at_centre = {
        "logit_p": lambda: np.log(p / (1 - p)),
        "logit_q": lambda: np.log(qq / (1 - qq)),
        "blob": lambda: [c.center_blob for c in cands],
        "hu": lambda: [c.center_hu / 1000.0 for c in cands],
        "log_diameter": lambda: np.log([max(c.diameter_mm, _EPS) for c in cands]),
        "log_voxels": lambda: np.log([max(c.n_voxels, 1) for c in cands]),
        "from_blob": lambda: [float(c.source == "blob") for c in cands],
        "from_fine": lambda: [float(c.source == "fine") for c in cands],
    }
    columns = []
    for name in names:
        if name in at_centre:
            columns.append(np.asarray(at_centre[name](), dtype=np.float64))
            continue
        missing = sum(name not in c.context for c in cands)
        if missing:
            raise ValueError(
                f"{missing} of {len(cands)} candidates have no {name!r}: their context is set by "
                "NoduleDetector.candidates_from_probability"
            )
        columns.append(np.array([c.context[name] for c in cands], dtype=np.float64))
    return np.stack(columns, axis=1)


#: degrees of the regression's terms: 1 (the features, sessions 12-18) or 2 (also their
#: squares and pairwise products: an attached nodule is told by the solid core *and* the
#: classifier together, which a sum of single-feature weights cannot say)
DEGREES = (1, 2)


def _check_degree(degree: object) -> None:
    if degree not in DEGREES or isinstance(degree, bool):
        raise ValueError(f"rescorer degree must be one of {DEGREES}, got {degree!r}")


def expand_terms(x: np.ndarray, degree: int) -> np.ndarray:
    """The regression's terms of feature rows `x` (N, n): the features themselves (degree 1);
    for degree 2 also their squares and their pairwise products, in `term_names` order.

    Raises:
        ValueError: a degree not in `DEGREES`.
    """
    _check_degree(degree)
    x = np.asarray(x, dtype=np.float64)
    if degree == 1:
        return x
    i, j = np.triu_indices(x.shape[1], 1)
    return np.hstack([x, x**2, x[:, i] * x[:, j]])


def term_names(features: Sequence[str], degree: int) -> list[str]:
    """Names of `expand_terms`' columns: "a", then "a^2" and "a*b" for degree 2.

    Raises:
        ValueError: a degree not in `DEGREES`.
    """
    _check_degree(degree)
    names = list(features)
    if degree == 1:
        return names
    i, j = np.triu_indices(len(names), 1)
    return [
        *names,
        *(f"{n}^2" for n in names),
        *(f"{names[a]}*{names[b]}" for a, b in zip(i, j, strict=True)),
    ]


@dataclass
class Rescorer:
    """Logistic regression on standardised terms of the features (a dict in the model folder).

    Attributes:
        features: the names of the features it weighs, in order (`KNOWN_FEATURES`; training
            fits `FEATURES`, session 12's folders hold `CENTRE_FEATURES`).
        mean, scale: standardisation of each term (`expand_terms` of the features).
        coef, intercept: the weights on the standardised terms.
        n_samples, n_positive: what it was fitted on.
        degree: 1, the features alone (folders written before session 19), or 2: also their
            squares and pairwise products (`term_names`).
    """

    features: list[str]
    mean: list[float]
    scale: list[float]
    coef: list[float]
    intercept: float
    n_samples: int = 0
    n_positive: int = 0
    degree: int = 1

    def __post_init__(self) -> None:
        names = list(self.features)
        unknown = [n for n in names if n not in KNOWN_FEATURES]
        if not names or unknown or len(set(names)) != len(names):
            raise ValueError(
                f"rescorer features {names} are not distinct names of {list(KNOWN_FEATURES)}"
            )
        n = len(term_names(names, self.degree))
        if not (len(self.mean) == len(self.scale) == len(self.coef) == n):
            raise ValueError(
                f"rescorer of degree {self.degree} on {len(names)} features needs {n} means, "
                "scales and weights"
            )

    @classmethod
    def fit(
        cls,
        x: np.ndarray,
        y: np.ndarray,
        l2: float = 1.0,
        iterations: int = 50,
        features: Sequence[str] = FEATURES,
        degree: int = 1,
    ) -> Rescorer:
        """Fit by Newton's method (iteratively reweighted least squares) with an L2 penalty of
        `l2` / 2 * |w|^2 on the weights (not the intercept); `x` holds the `features` columns,
        expanded to the terms of `degree` (`expand_terms`) and standardised.

        Raises:
            ValueError: no positive or no negative sample, shapes that do not match, or a
                degree not in `DEGREES`.
        """
        _check_degree(degree)  # before the shapes: a bad degree is the caller's first fault
        x = np.asarray(x, dtype=np.float64)
        y = np.asarray(y, dtype=np.float64).reshape(-1)
        if x.ndim != 2 or x.shape[1] != len(features) or len(x) != len(y):
            raise ValueError(f"features {x.shape} and labels {y.shape} do not match")
        x = expand_terms(x, degree)
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
            features=list(features),
            mean=mean.tolist(),
            scale=scale.tolist(),
            coef=w[1:].tolist(),
            intercept=float(w[0]),
            n_samples=len(y),
            n_positive=n_pos,
            degree=degree,
        )

    def predict(self, x: np.ndarray) -> np.ndarray:
        """Probability that each candidate (row of `candidate_features`) is a nodule."""
        x = expand_terms(
            np.asarray(x, dtype=np.float64).reshape(-1, len(self.features)), self.degree
        )
        z = (x - np.asarray(self.mean)) / np.asarray(self.scale)
        return 1.0 / (1.0 + np.exp(-(z @ np.asarray(self.coef) + self.intercept)))

    def score(self, cands: Sequence[Candidate], q: np.ndarray) -> np.ndarray:
        """The final scores of `cands` given the classifier's probabilities `q`."""
        return self.predict(candidate_features(cands, q, self.features))

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
