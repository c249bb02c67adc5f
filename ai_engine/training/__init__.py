"""The one training module of ai_engine (every model trains through `Trainer`).

Pieces: `TrainConfig` (what a run does), `Trainer` (loop, schedule, accumulation, AMP on CUDA,
early stopping, checkpoint/resume, `log.jsonl`), `EpochLoader` + `make_dataset` (MONAI
CacheDataset, per-epoch seeding), `spatial_augmentations` / `intensity_augmentations` /
`CutMixBatch`, `load_partial_weights` (transfer learning), `training_data_hash`.
"""

from ai_engine.training.augment import CutMixBatch, intensity_augmentations, spatial_augmentations
from ai_engine.training.checkpoint import load_checkpoint, save_checkpoint
from ai_engine.training.config import TrainConfig
from ai_engine.training.data import EpochLoader, make_dataset, training_data_hash
from ai_engine.training.reproducibility import (
    capture_rng_state,
    derive_seed,
    restore_rng_state,
    seed_everything,
)
from ai_engine.training.trainer import (
    BEST_WEIGHTS,
    LAST_CHECKPOINT,
    LOG_FILE,
    Trainer,
    TrainResult,
    default_prepare_batch,
)
from ai_engine.training.transfer import TransferReport, load_partial_weights, read_state_dict

__all__ = [
    "BEST_WEIGHTS",
    "LAST_CHECKPOINT",
    "LOG_FILE",
    "CutMixBatch",
    "EpochLoader",
    "TrainConfig",
    "TrainResult",
    "Trainer",
    "TransferReport",
    "capture_rng_state",
    "default_prepare_batch",
    "derive_seed",
    "intensity_augmentations",
    "load_checkpoint",
    "load_partial_weights",
    "make_dataset",
    "read_state_dict",
    "restore_rng_state",
    "save_checkpoint",
    "seed_everything",
    "spatial_augmentations",
    "training_data_hash",
]
