"""The one training loop of ai_engine: every model (detection, grading, ...) trains through it.

What it does: warm-up + cosine learning rate, gradient accumulation, mixed precision on CUDA,
early stopping on a validation metric, an optional moving average of the weights (EMA), a
checkpoint each epoch with everything needed to resume
(model, optimizer, scheduler, scaler, counters, RNG states), a tqdm bar and a JSON line per
epoch in `log.jsonl`.
"""

from __future__ import annotations

import json
import math
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from monai.optimizers import WarmupCosineSchedule

from ai_engine.training.checkpoint import load_checkpoint, save_checkpoint
from ai_engine.training.config import TrainConfig
from ai_engine.training.data import EpochLoader
from ai_engine.training.reproducibility import (
    capture_rng_state,
    derive_seed,
    restore_rng_state,
)

LAST_CHECKPOINT = "last.pt"
BEST_WEIGHTS = "best_weights.pt"
LOG_FILE = "log.jsonl"

Batch = Any
PrepareBatch = Callable[[Batch, torch.device], tuple[torch.Tensor, torch.Tensor]]
Validate = Callable[[torch.nn.Module], Mapping[str, float]]
BatchAugment = Callable[[torch.Tensor, torch.Tensor], tuple[torch.Tensor, torch.Tensor]]


def ema_update(decay: float) -> Callable[[list, list, torch.Tensor], None]:
    """The `multi_avg_fn` of an exponential moving average of the weights whose decay ramps up
    as min(decay, (1 + n) / (10 + n)) after n updates: the first steps' near-random weights
    are forgotten within a few dozen steps, whatever `decay` (a short run, e.g. a classifier
    of 200 steps, still gets an average of its trained weights)."""

    def update(averaged: list, current: list, num_averaged: torch.Tensor) -> None:
        n = float(num_averaged)
        d = min(decay, (1.0 + n) / (10.0 + n))
        for avg, cur in zip(averaged, current, strict=True):
            if avg.is_floating_point():
                avg.lerp_(cur.to(avg.dtype), 1.0 - d)
            else:  # integer buffers (e.g. BatchNorm's batch count): the latest
                avg.copy_(cur)

    return update


def default_prepare_batch(batch: Batch, device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
    """`(batch["image"], batch["label"])` moved to `device` (plain tensors, no metadata)."""
    image = torch.as_tensor(batch["image"]).as_subclass(torch.Tensor)
    label = torch.as_tensor(batch["label"]).as_subclass(torch.Tensor)
    return image.to(device, non_blocking=True), label.to(device, non_blocking=True)


@dataclass
class TrainResult:
    """Outcome of `Trainer.fit`.

    Attributes:
        history: one dict per epoch (the lines of `log.jsonl`).
        best_metric: best value of the monitored metric (None without validation).
        best_epoch: epoch of `best_metric` (the last epoch without validation).
        best_weights: path of the best state dict.
        steps: optimizer steps taken in total.
        stopped_early: True when early stopping ended the run.
    """

    history: list[dict[str, Any]] = field(default_factory=list)
    best_metric: float | None = None
    best_epoch: int = -1
    best_weights: Path | None = None
    steps: int = 0
    stopped_early: bool = False


class Trainer:
    """Train `model` with `loss_fn` on batches from `train_loader`.

    Args:
        model: the network (moved to `config.device`).
        loss_fn: `loss_fn(output, target) -> scalar tensor`.
        train_loader: an `EpochLoader` (deterministic per epoch).
        config: the run's `TrainConfig`.
        out_dir: where `last.pt`, `best_weights.pt` and `log.jsonl` go.
        validate: `validate(model) -> {"metric": value, ...}` run after each epoch (model in eval
            mode, no grad); must contain `config.monitor` unless that is "train_loss".
        prepare_batch: turns a loader batch into `(inputs, targets)` on the device.
        batch_augment: optional `(inputs, targets) -> (inputs, targets)` on the training batch
            (e.g. `CutMixBatch`); reseeded each epoch when it has `set_random_state`.
        optimizer: defaults to AdamW(lr, weight_decay).
        on_epoch_end: optional callback `(epoch, log_line)`.
        on_epoch_start: optional callback `(epoch)` before the epoch's first step (e.g. to
            re-mine training samples with the current weights; it must not draw from the
            global random state, so that a resumed run repeats the same steps).
    """

    def __init__(
        self,
        model: torch.nn.Module,
        loss_fn: Callable[[torch.Tensor, torch.Tensor], torch.Tensor],
        train_loader: EpochLoader,
        config: TrainConfig,
        out_dir: str | Path,
        *,
        validate: Validate | None = None,
        prepare_batch: PrepareBatch = default_prepare_batch,
        batch_augment: BatchAugment | None = None,
        optimizer: torch.optim.Optimizer | None = None,
        on_epoch_end: Callable[[int, dict[str, Any]], None] | None = None,
        on_epoch_start: Callable[[int], None] | None = None,
    ) -> None:
        self.config = config
        self.device = torch.device(config.device)
        if self.device.type == "cuda" and not torch.cuda.is_available():
            raise ValueError(f"device {config.device!r} requested but CUDA is not available")
        self.model = model.to(self.device)
        self.loss_fn = loss_fn
        self.train_loader = train_loader
        self.out_dir = Path(out_dir)
        self.validate = validate
        self.prepare_batch = prepare_batch
        self.batch_augment = batch_augment
        self.on_epoch_end = on_epoch_end
        self.on_epoch_start = on_epoch_start
        self.optimizer = optimizer or torch.optim.AdamW(
            self.model.parameters(), lr=config.lr, weight_decay=config.weight_decay
        )
        self.steps_per_epoch = config.steps_per_epoch or max(
            1, len(train_loader) // config.accumulation_steps
        )
        total = config.epochs * self.steps_per_epoch
        if config.max_steps is not None:
            total = min(total, config.max_steps)
        self.total_steps = max(1, total)
        self.scheduler = WarmupCosineSchedule(
            self.optimizer,
            warmup_steps=min(config.warmup_steps, self.total_steps - 1),
            t_total=self.total_steps,
            end_lr=config.end_lr,
        )
        self.use_amp = bool(config.amp and self.device.type == "cuda")
        self.scaler = torch.amp.GradScaler("cuda", enabled=self.use_amp)
        self.ema: torch.optim.swa_utils.AveragedModel | None = None
        if config.ema_decay is not None:
            self.ema = torch.optim.swa_utils.AveragedModel(
                self.model, multi_avg_fn=ema_update(config.ema_decay), use_buffers=True
            )
        self.epoch = 0  # next epoch to run
        self.step = 0  # optimizer steps done
        self.best_metric: float | None = None
        self.best_train_loss = math.inf
        self.best_epoch = -1
        self.bad_epochs = 0
        self.history: list[dict[str, Any]] = []

    @property
    def evaluated_model(self) -> torch.nn.Module:
        """The weights validated and kept as the best: the moving average when there is one."""
        return self.ema.module if self.ema is not None else self.model

    # ----------------------------------------------------------------- checkpoints
    def state_dict(self) -> dict[str, Any]:
        """Everything needed to resume: weights, optimizer, scheduler, scaler, counters, RNGs."""
        return {
            "model": self.model.state_dict(),
            "optimizer": self.optimizer.state_dict(),
            "scheduler": self.scheduler.state_dict(),
            "scaler": self.scaler.state_dict(),
            "epoch": self.epoch,
            "step": self.step,
            "best_metric": self.best_metric,
            "best_epoch": self.best_epoch,
            "best_train_loss": self.best_train_loss,
            "bad_epochs": self.bad_epochs,
            "rng": capture_rng_state(),
            "config": self.config.to_dict(),
            **({"ema": self.ema.state_dict()} if self.ema is not None else {}),
        }

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        """Inverse of `state_dict` (restores the RNG states last)."""
        self.model.load_state_dict(state["model"])
        self.optimizer.load_state_dict(state["optimizer"])
        self.scheduler.load_state_dict(state["scheduler"])
        self.scaler.load_state_dict(state["scaler"])
        if self.ema is not None:
            if "ema" not in state:
                raise ValueError("the checkpoint has no moving average of the weights (ema_decay)")
            self.ema.load_state_dict(state["ema"])
        self.epoch = int(state["epoch"])
        self.step = int(state["step"])
        self.best_metric = state["best_metric"]
        self.best_epoch = int(state["best_epoch"])
        self.best_train_loss = float(state.get("best_train_loss", math.inf))
        self.bad_epochs = int(state["bad_epochs"])
        restore_rng_state(state["rng"])

    def resume(self) -> bool:
        """Load `out_dir/last.pt` and the log lines written so far. False when there is none."""
        path = self.out_dir / LAST_CHECKPOINT
        if not path.is_file():
            return False
        # CPU: the RNG states must stay CPU tensors; weights and optimizer state move on load.
        self.load_state_dict(load_checkpoint(path, map_location="cpu"))
        log = self.out_dir / LOG_FILE
        if log.is_file():
            lines = [json.loads(x) for x in log.read_text().splitlines() if x.strip()]
            self.history = [x for x in lines if x.get("epoch", -1) < self.epoch]
            # Drop lines of an epoch that ran after the checkpoint (a crash mid-save).
            log.write_text("".join(json.dumps(x) + "\n" for x in self.history))
        return True

    # ----------------------------------------------------------------- training
    def _is_better(self, value: float, train_loss: float) -> bool:
        """Strictly better on the monitored metric; a tie goes to the lower training loss
        (a validation metric that stays flat early on must not pin the best epoch to 0)."""
        if self.best_metric is None:
            return True
        if value == self.best_metric:
            return train_loss < self.best_train_loss
        if self.config.monitor_mode == "max":
            return value > self.best_metric
        return value < self.best_metric

    def _train_epoch(self, epoch: int) -> dict[str, Any]:
        cfg = self.config
        self.model.train()
        if self.batch_augment is not None and hasattr(self.batch_augment, "set_random_state"):
            self.batch_augment.set_random_state(derive_seed(cfg.seed, "batch_augment", epoch))
        steps_left = self.steps_per_epoch
        if cfg.max_steps is not None:
            steps_left = min(steps_left, cfg.max_steps - self.step)
        endless = cfg.steps_per_epoch is not None
        losses: list[float] = []
        running = 0.0
        micro = 0
        bar = None
        if cfg.progress:
            from tqdm.auto import tqdm

            bar = tqdm(total=steps_left, desc=f"epoch {epoch + 1}/{cfg.epochs}", leave=False)
        self.optimizer.zero_grad(set_to_none=True)
        for batch in self.train_loader.batches(epoch, endless=endless):
            if steps_left <= 0:
                break
            inputs, targets = self.prepare_batch(batch, self.device)
            if self.batch_augment is not None:
                inputs, targets = self.batch_augment(inputs, targets)
            with torch.autocast(
                device_type=self.device.type, dtype=torch.float16, enabled=self.use_amp
            ):
                output = self.model(inputs)
                loss = self.loss_fn(output, targets)
            if not torch.isfinite(loss):
                raise FloatingPointError(f"non-finite loss {loss.item()} at step {self.step}")
            self.scaler.scale(loss / cfg.accumulation_steps).backward()
            running += float(loss.detach()) / cfg.accumulation_steps
            micro += 1
            if micro % cfg.accumulation_steps:
                continue
            if cfg.grad_clip_norm is not None:
                self.scaler.unscale_(self.optimizer)
                torch.nn.utils.clip_grad_norm_(self.model.parameters(), cfg.grad_clip_norm)
            self.scaler.step(self.optimizer)
            self.scaler.update()
            self.optimizer.zero_grad(set_to_none=True)
            self.scheduler.step()
            if self.ema is not None:
                self.ema.update_parameters(self.model)
            self.step += 1
            steps_left -= 1
            losses.append(running)
            running = 0.0
            if bar is not None:
                bar.update(1)
                bar.set_postfix(loss=f"{losses[-1]:.4f}")
        if bar is not None:
            bar.close()
        return {
            "train_loss": float(sum(losses) / len(losses)) if losses else math.nan,
            "step_losses": losses,
        }

    def fit(self, *, resume: bool = False) -> TrainResult:
        """Run (or, with `resume`, continue) training; returns the history and the best epoch."""
        cfg = self.config
        self.out_dir.mkdir(parents=True, exist_ok=True)
        if resume:
            self.resume()
        elif (self.out_dir / LOG_FILE).exists():
            (self.out_dir / LOG_FILE).unlink()
        stopped_early = False
        patience = cfg.early_stopping_patience
        while self.epoch < cfg.epochs:
            if cfg.max_steps is not None and self.step >= cfg.max_steps:
                break
            if patience is not None and self.bad_epochs >= patience:  # resumed after stopping
                stopped_early = True
                break
            epoch = self.epoch
            t0 = time.perf_counter()
            if self.on_epoch_start is not None:
                self.on_epoch_start(epoch)
            line: dict[str, Any] = {"epoch": epoch, **self._train_epoch(epoch)}
            line["step"] = self.step
            line["lr"] = float(self.optimizer.param_groups[0]["lr"])
            if self.validate is not None:
                self.evaluated_model.eval()
                with torch.no_grad():
                    val = {k: float(v) for k, v in self.validate(self.evaluated_model).items()}
                line["val"] = val
                metric = val.get(cfg.monitor, line.get(cfg.monitor))
            else:
                metric = line["train_loss"] if cfg.monitor == "train_loss" else None
            if metric is not None and not (isinstance(metric, float) and math.isnan(metric)):
                if self._is_better(float(metric), line["train_loss"]):
                    self.best_metric = float(metric)
                    self.best_train_loss = line["train_loss"]
                    self.best_epoch = epoch
                    self.bad_epochs = 0
                    torch.save(self.evaluated_model.state_dict(), self.out_dir / BEST_WEIGHTS)
                else:
                    self.bad_epochs += 1
            elif metric is None:
                self.best_epoch = epoch
                torch.save(self.evaluated_model.state_dict(), self.out_dir / BEST_WEIGHTS)
            line["best_metric"] = self.best_metric
            line["best_epoch"] = self.best_epoch
            line["time_s"] = round(time.perf_counter() - t0, 3)
            self.epoch = epoch + 1
            save_checkpoint(self.out_dir / LAST_CHECKPOINT, self.state_dict())
            with (self.out_dir / LOG_FILE).open("a") as fh:
                fh.write(json.dumps(line) + "\n")
            self.history.append(line)
            if self.on_epoch_end is not None:
                self.on_epoch_end(epoch, line)
            if (
                cfg.early_stopping_patience is not None
                and self.bad_epochs >= cfg.early_stopping_patience
            ):
                stopped_early = True
                break
        return TrainResult(
            history=list(self.history),
            best_metric=self.best_metric,
            best_epoch=self.best_epoch,
            best_weights=(self.out_dir / BEST_WEIGHTS)
            if (self.out_dir / BEST_WEIGHTS).exists()
            else None,
            steps=self.step,
            stopped_early=stopped_early,
        )
