"""Active learning: which unlabeled studies should a radiologist label next?

`score_studies(model_dir, [(key, Volume), ...], strategy="uncertainty" | "random")` ranks
studies with a tumor-grading or nodule-detection model folder: MC-dropout entropy (BALD as a
component) plus test-time-augmentation variance, traded against diversity of the network's
penultimate features (weight 0 by default: plain uncertainty order); or the foreground-aware
random baseline. No Django here: the registry (`ai_engine/registry/`) and the CLI
(`python -m ai_engine active-learning score`) call it. See docs/active_learning.md.
"""

from ai_engine.active_learning.diversity import (
    DEFAULT_DIVERSITY_WEIGHT,
    cosine_distances,
    diverse_order,
    information_density,
)
from ai_engine.active_learning.foreground import body_fraction, tissue_fraction
from ai_engine.active_learning.mc_dropout import (
    DEFAULT_INJECTED_P,
    find_head,
    mc_dropout,
    penultimate_features,
)
from ai_engine.active_learning.scoring import (
    STRATEGIES,
    TASKS,
    ActiveLearningInputError,
    StudyScore,
    missing_grades,
    score_studies,
)
from ai_engine.active_learning.uncertainty import (
    DEFAULT_TTA_WEIGHT,
    class_balance_weight,
    class_uncertainty,
    voxel_uncertainty,
)

__all__ = [
    "DEFAULT_DIVERSITY_WEIGHT",
    "DEFAULT_INJECTED_P",
    "DEFAULT_TTA_WEIGHT",
    "STRATEGIES",
    "TASKS",
    "ActiveLearningInputError",
    "StudyScore",
    "body_fraction",
    "class_balance_weight",
    "class_uncertainty",
    "cosine_distances",
    "diverse_order",
    "find_head",
    "information_density",
    "mc_dropout",
    "missing_grades",
    "penultimate_features",
    "score_studies",
    "tissue_fraction",
    "voxel_uncertainty",
]
