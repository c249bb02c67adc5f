"""Train a tumor-grading model with the shared trainer, calibrate it and write its model folder."""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from monai.losses import FocalLoss
from monai.transforms import Compose

from ai_engine.calibration import apply_temperature, expected_calibration_error, fit_temperature
from ai_engine.data.datalist import load_datalist
from ai_engine.deploy.distill import DistillationLoss
from ai_engine.errors import InputError
from ai_engine.evaluation.classification import classification_metrics
from ai_engine.grading.config import TASK, GradingConfig
from ai_engine.grading.data import (
    GRADES,
    LoadGradingStudyd,
    RandChannelDropoutd,
    grade_to_label,
)
from ai_engine.modelfolder import Component, save_model_folder
from ai_engine.networks import build_network
from ai_engine.training import (
    BEST_WEIGHTS,
    LOG_FILE,
    EpochLoader,
    TrainConfig,
    Trainer,
    default_prepare_batch,
    intensity_augmentations,
    load_partial_weights,
    make_dataset,
    seed_everything,
    spatial_augmentations,
    training_data_hash,
)
from ai_engine.training.seg_aux import SegAuxLoss, TumorSegAux, layer_channels

__all__ = [
    "GradingLoss",
    "class_weights_from_labels",
    "grading_items",
    "predict_logits",
    "preprocessing_record",
    "train_grading",
]

logger = logging.getLogger(__name__)
CLASS_NAMES = [str(g) for g in GRADES]
TEMPERATURE_BOUNDS = (0.05, 20.0)
#: Prior std of log T for the calibration fit (`ai_engine.calibration.fit_temperature`).
TEMPERATURE_PRIOR_STD = 0.5


class GradingLoss(torch.nn.Module):
    """MONAI focal loss with class weights, taking (B, C) logits and (B,) class indices."""

    def __init__(self, gamma: float = 2.0, weight: Sequence[float] | None = None) -> None:
        super().__init__()
        self.focal = FocalLoss(
            gamma=gamma,
            weight=list(weight) if weight is not None else None,
            use_softmax=True,
            to_onehot_y=True,
        )

    def forward(self, logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        return self.focal(logits, labels.long().view(-1, 1))


def class_weights_from_labels(labels: Sequence[int], num_classes: int = len(GRADES)) -> list[float]:
    """Inverse class frequencies normalised to mean 1 (absent classes get the largest weight)."""
    counts = np.bincount(np.asarray(labels, dtype=np.int64), minlength=num_classes).astype(
        np.float64
    )
    inv = np.where(counts > 0, 1.0 / np.maximum(counts, 1), 0.0)
    inv[counts == 0] = inv.max() if inv.max() > 0 else 1.0
    return [float(w) for w in inv / inv.mean()]


def grading_items(
    items: Sequence[dict[str, Any]], where: str, need_grade: bool = True
) -> list[dict[str, Any]]:
    """Check datalist items for grading: MRI `images`, a grade 1|2|3 when `need_grade`.

    Raises:
        InputError: an item has no `images`, or a missing or invalid grade.
    """
    out = []
    for index, item in enumerate(items):
        if "images" not in item:
            raise InputError(
                f"{where}[{index}]: a grading item needs 'images' (T1, T1c, T2, FLAIR)"
            )
        if need_grade or "grade" in item:
            if "grade" not in item:
                raise InputError(f"{where}[{index}]: 'grade' is missing (1, 2 or 3)")
            try:
                grade_to_label(item["grade"])
            except InputError as exc:
                raise InputError(f"{where}[{index}]: {exc}") from None
        out.append(dict(item))
    return out


def label_counts(labels: Sequence[int]) -> dict[str, int]:
    """How many training studies of each grade (class indices in, grades as keys out): the
    folder's `made_by_params["label_counts"]`, from which active learning tells a model that
    has not seen every grade (`ai_engine.active_learning.scoring`, cold start)."""
    return {str(g): sum(int(label) == i for label in labels) for i, g in enumerate(GRADES)}


def preprocessing_record(config: GradingConfig) -> dict[str, Any]:
    """The `preprocessing` entry of a grading model folder."""
    return {
        "channels": list(config.channels),
        "spatial_size": list(config.spatial_size),
        "grid": "study field of view resampled (linear) onto spatial_size voxels",
        "intensity": "z-score per channel over non-zero voxels; missing sequences zero",
        "reference_grid": "first present sequence (T1 when given)",
    }


def _split(splits: dict[str, list[dict[str, Any]]], seed: int) -> tuple[list[dict], list[dict]]:
    train = grading_items(splits.get("training", []), "training")
    val = grading_items(splits.get("validation", []), "validation")
    if not train:
        raise InputError("the datalist has no 'training' items")
    if not val:
        if len(train) < 5:
            raise InputError(
                "give a 'validation' split or at least 5 training items to split one off"
            )
        order = np.random.default_rng(seed).permutation(len(train))
        n_val = max(1, len(train) // 5)
        val = [train[i] for i in order[:n_val]]
        train = [train[i] for i in order[n_val:]]
    return train, val


def predict_logits(
    model: Callable[[torch.Tensor], torch.Tensor], dataset: Any, batch_size: int = 4
) -> tuple[np.ndarray, np.ndarray]:
    """Logits and labels of every item of a (cached) dataset, in order."""
    logits, labels = [], []
    device = (
        next(model.parameters()).device
        if isinstance(model, torch.nn.Module)
        else torch.device("cpu")
    )
    with torch.no_grad():
        for start in range(0, len(dataset), batch_size):
            samples = [dataset[i] for i in range(start, min(start + batch_size, len(dataset)))]
            x = torch.stack(
                [torch.as_tensor(s["image"]).as_subclass(torch.Tensor) for s in samples]
            ).float()
            logits.append(model(x.to(device)).detach().cpu().numpy())
            labels.extend(int(s["label"]) for s in samples)
    return np.concatenate(logits).astype(np.float64), np.asarray(labels, dtype=np.int64)


def _hash_items(items: Sequence[dict[str, Any]]) -> list[dict[str, Any]]:
    return [{**{k: v for k, v in it.items() if k != "images"}, **it["images"]} for it in items]


def train_grading(
    datalist: str | Path,
    out_dir: str | Path,
    config: GradingConfig,
    train_config: TrainConfig,
    *,
    pretrained: str | Path | None = None,
    resume: bool = False,
    teacher: Callable[[torch.Tensor], torch.Tensor] | None = None,
    distillation: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """Train, calibrate on validation and write a grading model folder.

    The shared `Trainer` runs the loop (schedule, accumulation, early stopping, checkpoints
    and resume in `out_dir/training/`). After training the best weights are reloaded, a
    temperature is fitted on the validation logits, and `out_dir` becomes a model folder.

    Args:
        datalist: datalist with `training` (and `validation`) grading items.
        out_dir: the model folder to write.
        config: network, grid, loss and augmentation settings.
        train_config: the shared trainer's settings (its `monitor` should be a key returned
            by validation: "val_loss", "val_accuracy" or "val_macro_f1").
        pretrained: a local state dict / checkpoint for transfer learning (partial load).
        resume: continue from `out_dir/training/last.pt`.
        teacher: for knowledge distillation, a model giving the teacher's logits of a batch;
            the loss becomes `DistillationLoss` (temperature-scaled KL + the focal loss).
        distillation: `{"temperature", "alpha", ...}` of the distillation loss, recorded in
            the folder (which is then marked `made_by: distilled`).

    Returns:
        Summary: validation metrics before/after calibration, temperature, history.
    """
    out_dir = Path(out_dir)
    splits = load_datalist(datalist)
    train_items, val_items = _split(splits, train_config.seed)
    seed_everything(train_config.seed)
    keys = ["image"]
    # Auxiliary tumor segmentation when the training items carry masks (seg_aux.py).
    use_aux = (
        config.seg_aux_weight > 0
        and bool(config.aux_layers)
        and any(it.get("tumor_mask") for it in train_items)
    )
    spatial_keys = ["image", "tumor"] if use_aux else keys
    train_tf: list[Any] = [
        LoadGradingStudyd(config.spatial_size, config.channels, with_tumor=use_aux)
    ]
    if config.augment:
        train_tf += spatial_augmentations(spatial_keys, rotate_degrees=10.0, elastic_prob=0.0)
        train_tf += intensity_augmentations(keys, contrast_prob=0.0)
    if config.channel_dropout_prob > 0:
        train_tf.append(RandChannelDropoutd(keys, prob=config.channel_dropout_prob))
    train_ds = make_dataset(train_items, Compose(train_tf))
    val_ds = make_dataset(
        val_items, Compose([LoadGradingStudyd(config.spatial_size, config.channels)])
    )

    train_labels = [grade_to_label(it["grade"]) for it in train_items]
    weights = config.class_weights or class_weights_from_labels(train_labels)
    loss_fn = GradingLoss(config.focal_gamma, weights)

    kwargs = config.build_kwargs()
    model = build_network(config.network, **kwargs)
    transfer = None
    if pretrained is not None:
        transfer = load_partial_weights(model, pretrained)
        logger.info("transfer learning: %s", transfer.summary())

    train_loss: Callable[[Any, Any], torch.Tensor] = loss_fn
    prepare_batch = default_prepare_batch
    kd = None
    if teacher is not None:
        distillation = dict(distillation or {})
        kd = DistillationLoss(
            temperature=float(distillation.get("temperature", 4.0)),
            alpha=float(distillation.get("alpha", 0.7)),
            hard_loss=loss_fn,
        )
    trained: torch.nn.Module = model
    if use_aux:
        layers = list(config.aux_layers)
        example = torch.zeros((1, len(config.channels), *config.spatial_size))
        trained = TumorSegAux(model, layers, layer_channels(model, layers, example))
    seg_loss = SegAuxLoss()
    if teacher is not None or use_aux:

        def prepare_batch(batch: Any, device: torch.device) -> tuple[torch.Tensor, Any]:
            x, y = default_prepare_batch(batch, device)
            target: dict[str, torch.Tensor] = {"label": y}
            if teacher is not None:
                with torch.no_grad():
                    target["teacher"] = torch.as_tensor(teacher(x)).float().to(device)
            if use_aux:
                for key in ("tumor", "tumor_weight"):
                    value = torch.as_tensor(batch[key]).as_subclass(torch.Tensor)
                    target[key] = value.float().to(device)
            return x, target

        def train_loss(out: Any, target: dict[str, torch.Tensor]) -> torch.Tensor:
            logits, segs = out if use_aux else (out, None)
            if kd is not None:
                loss = kd(logits, target["teacher"], target["label"])
            else:
                loss = loss_fn(logits, target["label"])
            if segs is not None:
                aux = seg_loss(segs, target["tumor"], target["tumor_weight"])
                loss = loss + config.seg_aux_weight * aux
            return loss

    def validate(evaluated: torch.nn.Module) -> dict[str, float]:
        # the trained module (the raw weights or their moving average), maybe inside the
        # segmentation wrapper: grade with the network itself
        net = evaluated.net if isinstance(evaluated, TumorSegAux) else evaluated
        logits, labels = predict_logits(net, val_ds, config.batch_size)
        loss = float(loss_fn(torch.as_tensor(logits, dtype=torch.float32), torch.as_tensor(labels)))
        metrics = classification_metrics(labels, apply_temperature(logits, 1.0), CLASS_NAMES)
        return {
            "val_loss": loss,
            "val_accuracy": metrics["accuracy"],
            "val_macro_f1": metrics["macro_f1"],
        }

    loader = EpochLoader(train_ds, config.batch_size, shuffle=True, seed=train_config.seed)
    work = out_dir / "training"
    trainer = Trainer(
        trained,
        train_loss,
        loader,
        train_config,
        work,
        validate=validate,
        prepare_batch=prepare_batch,
    )
    result = trainer.fit(resume=resume)
    best = result.best_weights or (work / BEST_WEIGHTS)
    if best.is_file():
        trained.load_state_dict(torch.load(best, map_location=trainer.device, weights_only=True))
    if isinstance(trained, TumorSegAux):
        trained.remove_hooks()  # the heads are training-only; the folder keeps `model`
    model.eval()

    val_logits, val_labels = predict_logits(model, val_ds, config.batch_size)
    # MAP temperature: the validation set is small and the best epoch was chosen on it, so
    # it flatters the model; the prior on log T keeps a near-perfect validation set from
    # pushing T to its bound (which made the held-out ECE worse).
    temperature = fit_temperature(
        val_logits, val_labels, bounds=TEMPERATURE_BOUNDS, prior_std=TEMPERATURE_PRIOR_STD
    )
    calibration_note = (
        f"temperature scaling on validation (MAP, log T ~ N(0, {TEMPERATURE_PRIOR_STD}^2))"
    )
    uncal = classification_metrics(val_labels, apply_temperature(val_logits, 1.0), CLASS_NAMES)
    cal = classification_metrics(
        val_labels, apply_temperature(val_logits, temperature), CLASS_NAMES
    )
    cal["ece_uncalibrated"] = uncal["ece"]
    train_losses = [h["train_loss"] for h in result.history]

    save_model_folder(
        out_dir,
        task=TASK,
        components={
            "model": Component(
                format="state_dict",
                network=config.network,
                network_kwargs=kwargs,
                module=model.cpu(),
                extra={
                    "input": "(B, 4, *spatial_size) z-scored",
                    "output": "logits of grades 1, 2, 3",
                },
            )
        },
        made_by="distilled" if teacher is not None else "trained",
        made_by_params={
            "distillation": distillation,
            "train_config": train_config.to_dict(),
            "grading_config": config.to_dict(),
            "class_weights": weights,
            "label_counts": label_counts(train_labels),
            "pretrained": str(pretrained) if pretrained else None,
            "transfer": transfer.to_dict() if transfer else None,
            "best_epoch": result.best_epoch,
            "steps": result.steps,
            "stopped_early": result.stopped_early,
            "seg_aux": {"layers": list(config.aux_layers), "weight": config.seg_aux_weight}
            if use_aux
            else None,
        },
        preprocessing=preprocessing_record(config),
        postprocessing={
            "temperature": temperature,
            "grades": list(GRADES),
            "calibration": calibration_note,
        },
        training_data=training_data_hash(
            {"training": _hash_items(train_items), "validation": _hash_items(val_items)},
            path_keys=config.channels,
        ),
        metrics={"validation": cal},
        parent=(distillation or {}).get("parent") if teacher is not None else None,
        extra={"grading_config": config.to_dict(), "cam_target_layer": config.cam_layer},
        extra_files={LOG_FILE: work / LOG_FILE},
    )
    return {
        "model_folder": str(out_dir),
        "temperature": temperature,
        "calibration": calibration_note,
        "validation": cal,
        "validation_ece_before": uncal["ece"],
        "validation_ece_after": expected_calibration_error(
            apply_temperature(val_logits, temperature), val_labels
        ),
        "train_losses": train_losses,
        "best_epoch": result.best_epoch,
        "steps": result.steps,
    }
