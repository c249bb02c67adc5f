"""Training configuration shared by every model trained with `ai_engine.training`."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field, fields
from typing import Any


@dataclass
class TrainConfig:
    """What a training run does, independent of the network and the data.

    Attributes:
        epochs: number of epochs (an epoch is `steps_per_epoch` optimizer steps, or one pass over
            the training loader when that is None).
        steps_per_epoch: optimizer steps per epoch; with patch sampling an "epoch" is a fixed
            number of steps (the loader is cycled with fresh seeds when it runs out).
        lr: peak learning rate (reached at the end of the warm-up).
        weight_decay: AdamW weight decay.
        warmup_steps: linear warm-up length in optimizer steps, then cosine decay to `end_lr`.
        end_lr: learning rate at the end of the cosine schedule.
        accumulation_steps: micro-batches whose gradients are summed before one optimizer step.
        seed: seed of every random number generator (data order, augmentation, initialisation).
        device: "cpu", "cuda" or "cuda:N".
        amp: mixed precision (autocast float16 + GradScaler); used only when the device is CUDA.
        max_steps: stop after this many optimizer steps in total (quick runs, tests).
        early_stopping_patience: stop when the monitored metric has not improved for this many
            epochs (None: never).
        monitor: key of the validation result to select the best model on.
        monitor_mode: "max" or "min".
        grad_clip_norm: clip the gradient norm before each step (None: no clipping).
        ema_decay: keep an exponential moving average of the weights (Polyak averaging, updated
            after every optimizer step with this decay, e.g. 0.99: a window of ~100 steps);
            validation, the best weights and the result are the average's. None: off.
        progress: show a tqdm progress bar.
    """

    epochs: int = 10
    steps_per_epoch: int | None = None
    lr: float = 1e-3
    weight_decay: float = 1e-5
    warmup_steps: int = 0
    end_lr: float = 0.0
    accumulation_steps: int = 1
    seed: int = 0
    device: str = "cpu"
    amp: bool = True
    max_steps: int | None = None
    early_stopping_patience: int | None = None
    monitor: str = "val_loss"
    monitor_mode: str = "min"
    grad_clip_norm: float | None = None
    ema_decay: float | None = None
    progress: bool = True
    extra: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if self.epochs < 1:
            raise ValueError(f"epochs must be >= 1, got {self.epochs}")
        if self.accumulation_steps < 1:
            raise ValueError(f"accumulation_steps must be >= 1, got {self.accumulation_steps}")
        if self.steps_per_epoch is not None and self.steps_per_epoch < 1:
            raise ValueError(f"steps_per_epoch must be >= 1 or None, got {self.steps_per_epoch}")
        if self.max_steps is not None and self.max_steps < 1:
            raise ValueError(f"max_steps must be >= 1 or None, got {self.max_steps}")
        if self.monitor_mode not in {"max", "min"}:
            raise ValueError(f"monitor_mode must be 'max' or 'min', got {self.monitor_mode!r}")
        if self.lr <= 0:
            raise ValueError(f"lr must be > 0, got {self.lr}")
        if self.ema_decay is not None and not 0.0 < self.ema_decay < 1.0:
            raise ValueError(f"ema_decay must be in (0, 1) or None, got {self.ema_decay}")

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready copy (stored in checkpoints and model folders)."""
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> TrainConfig:
        """Inverse of `to_dict`; unknown keys are ignored so old checkpoints still load."""
        known = {f.name for f in fields(cls)}
        return cls(**{k: v for k, v in data.items() if k in known})
