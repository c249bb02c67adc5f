"""Diversity-aware batch ordering: greedy max-min (k-center) selection traded against uncertainty.

Labelling the five most uncertain studies is wasteful when they are five near-copies of one
case. The queue is therefore built greedily: at each step every remaining study i has

    d_i  = min over already-queued s of  cosine_distance(e_i, e_s)   (e: penultimate features)
    obj_i = (1 - w) * u_i + w * u_max * d_i / max_j d_j

and the study with the largest objective is queued next (ties: the earlier input). `u` is the
study's uncertainty, `u_max` the pool's largest (so both terms share one scale), `w` the
diversity weight. With w = 0 the order is plain uncertainty; with w = 1 it is the k-center
greedy order of Sener & Savarese (2018) seeded with the most uncertain study. The first pick
is the most uncertain study (nothing is queued yet, every d_i counts as maximal), unless
`reference` embeddings are given: the studies already labelled. Then d_i starts as the
distance to the nearest labelled study, so the first pick (the only one when an annotator
takes the queue one study at a time) already weighs how unlike the labelled set a study is:
the core-set criterion of Sener & Savarese, where a repeat scan of a labelled patient is
close to its sibling and moves down.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

__all__ = [
    "DEFAULT_DIVERSITY_WEIGHT",
    "DiverseOrder",
    "cosine_distances",
    "diverse_order",
    "information_density",
]

#: `score_studies`' default w: 0, the plain uncertainty order. On the grading benchmark
#: (bench/bench_active_learning.py: labelling batches of 3 studies, imbalanced pools with
#: repeat scans) w = 0.5 did no better than random sampling while w = 0 beat it in every
#: seed (docs/active_learning.md). The diversity term pays off when many studies are
#: labelled per model update; pass a weight for such batches.
DEFAULT_DIVERSITY_WEIGHT = 0.0


def cosine_distances(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """1 - cosine similarity between the rows of `a` (n, d) and of `b` (m, d): (n, m).

    A zero vector has distance 1 to everything (no direction to compare).
    """
    a = np.asarray(a, dtype=np.float64)
    b = np.asarray(b, dtype=np.float64)
    na = np.linalg.norm(a, axis=1, keepdims=True)
    nb = np.linalg.norm(b, axis=1, keepdims=True)
    sim = (a / np.where(na > 0, na, 1.0)) @ (b / np.where(nb > 0, nb, 1.0)).T
    sim[(na[:, 0] == 0)[:, None] | (nb[:, 0] == 0)[None, :]] = 0.0
    return np.clip(1.0 - sim, 0.0, 2.0)


def information_density(embeddings: np.ndarray) -> np.ndarray:
    """Each study's mean cosine similarity to the other studies of the pool, clipped to [0, 1]
    (Settles & Craven 2008): high where the pool is dense, low for an outlier. A pool of one
    study gives it 1.
    """
    e = np.asarray(embeddings, dtype=np.float64)
    n = len(e)
    if n < 2:
        return np.ones(n)
    sim = 1.0 - cosine_distances(e, e)
    np.fill_diagonal(sim, 0.0)
    return np.clip(sim.sum(axis=1) / (n - 1), 0.0, 1.0)


@dataclass
class DiverseOrder:
    """Result of `diverse_order`.

    Attributes:
        order: study indices, label first.
        objective: the objective of each study when it was picked (indexed like the input).
        diversity: its normalised distance d_i / max_j d_j at that moment (1 for the first
            without reference).
        min_distance: its raw cosine distance to the nearest study queued before it (or
            reference study); NaN for the first pick without reference.
    """

    order: list[int]
    objective: np.ndarray
    diversity: np.ndarray
    min_distance: np.ndarray


def diverse_order(
    uncertainty: np.ndarray,
    embeddings: np.ndarray,
    weight: float,
    reference: np.ndarray | None = None,
) -> DiverseOrder:
    """Greedy uncertainty + max-min-distance order of all studies (see the module docstring).

    Args:
        uncertainty: (n,) u of each study.
        embeddings: (n, d) features of each study.
        weight: w in [0, 1].
        reference: optional (m, d) features of the studies already labelled: distances
            count from them as from studies queued before.

    Raises:
        ValueError: `weight` outside [0, 1] or mismatched shapes.
    """
    u = np.asarray(uncertainty, dtype=np.float64)
    e = np.asarray(embeddings, dtype=np.float64)
    n = len(u)
    if not 0.0 <= weight <= 1.0:
        raise ValueError(f"diversity weight must be in [0, 1], got {weight}")
    if e.ndim != 2 or e.shape[0] != n:
        raise ValueError(f"expected ({n}, d) embeddings, got {e.shape}")
    ref = None if reference is None else np.asarray(reference, dtype=np.float64)
    if ref is not None and ref.size == 0:
        ref = None
    if ref is not None and (ref.ndim != 2 or ref.shape[1] != e.shape[1]):
        raise ValueError(f"expected (m, {e.shape[1]}) reference embeddings, got {ref.shape}")
    u_max = float(u.max()) if n and u.max() > 0 else 1.0
    remaining = np.ones(n, dtype=bool)
    nearest = np.full(n, np.inf) if ref is None else cosine_distances(e, ref).min(axis=1)
    objective = np.zeros(n)
    diversity = np.ones(n)
    min_distance = np.full(n, np.nan)
    order: list[int] = []
    for _ in range(n):
        if order or ref is not None:
            d = nearest.copy()
            d_max = float(d[remaining].max())
            d_norm = d / d_max if d_max > 0 else np.zeros(n)
        else:
            d_norm = np.ones(n)
        obj = (1.0 - weight) * u + weight * u_max * d_norm
        obj[~remaining] = -np.inf
        pick = int(np.argmax(obj))  # first maximum: ties keep the input order
        order.append(pick)
        objective[pick] = obj[pick]
        diversity[pick] = d_norm[pick]
        min_distance[pick] = nearest[pick] if order[:-1] or ref is not None else np.nan
        remaining[pick] = False
        nearest = np.minimum(nearest, cosine_distances(e, e[pick : pick + 1])[:, 0])
    return DiverseOrder(order, objective, diversity, min_distance)
