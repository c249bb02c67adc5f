"""Training of the two-stage nodule detector through `ai_engine.training.Trainer`.

Stage 1: the candidate U-Net on patches balanced between nodules and background
(`RandCropByPosNegLabeld`), Dice + cross-entropy, validated by the FROC CPM of its candidates.
Stage 2: the ResNet false-positive classifier on patches around mined candidates (U-Net hits
and misses on the training scans at a low threshold), reference nodules and random soft-tissue
points (vessels, chest wall), focal loss + 3D CutMix, validated by the CPM of the whole detector.
The result is one model folder with the components "candidates" and "fp_reduction".
"""

from __future__ import annotations

import itertools
import json
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from monai.losses import DiceCELoss, DiceFocalLoss, FocalLoss
from monai.transforms import (
    Compose,
    ConcatItemsd,
    DeleteItemsd,
    EnsureTyped,
    RandCropByPosNegLabeld,
    RandSpatialCropd,
    SelectItemsd,
    SpatialPadd,
)

from ai_engine.detection.config import DetectionConfig
from ai_engine.detection.paste import pasted_copies
from ai_engine.detection.patches import (
    balance,
    extract_patches,
    label_points,
    nodule_arrays,
    random_tissue_points,
)
from ai_engine.detection.pipeline import TASK, NoduleDetector
from ai_engine.detection.rescore import DEGREES, Rescorer, candidate_features, features_for
from ai_engine.detection.transforms import (
    CropCentersd,
    MinedNegativesd,
    component_indices,
    preprocessing,
)
from ai_engine.errors import InputError, ModelFolderError
from ai_engine.evaluation.froc import froc
from ai_engine.modelfolder import Component, read_manifest, save_model_folder
from ai_engine.networks import build_network
from ai_engine.training import (
    CutMixBatch,
    EpochLoader,
    TrainConfig,
    Trainer,
    intensity_augmentations,
    load_partial_weights,
    make_dataset,
    seed_everything,
    spatial_augmentations,
    training_data_hash,
)
from ai_engine.training.seg_aux import SegAuxLoss, TumorSegAux
from ai_engine.training.trainer import BEST_WEIGHTS


@dataclass
class DetectionTrainOptions:
    """Options of `train_detector` (the CLI flags map onto these).

    Attributes:
        epochs: U-Net epochs.
        steps_per_epoch: U-Net optimizer steps per epoch.
        batch_size: U-Net patches per micro-batch (2 patches per scan).
        lr: U-Net peak learning rate.
        fp_epochs: classifier epochs.
        fp_steps_per_epoch: classifier steps per epoch.
        fp_batch_size: classifier patches per micro-batch.
        fp_lr: classifier peak learning rate.
        accumulation_steps: micro-batches per optimizer step (both stages).
        warmup_steps: linear warm-up steps (both stages).
        early_stopping_patience: epochs without CPM improvement before stopping.
        seed: seed of everything.
        device: "cpu" or "cuda[:N]".
        max_steps: cap on optimizer steps per stage (quick runs).
        init_weights: a weights file for the U-Net, or a detection model folder (both stages).
        candidates_from: a detection model folder whose U-Net is kept as it is, with its
            preprocessing and candidate settings (`CANDIDATE_STAGE_FIELDS`: threshold, peak
            distance, test-time flips chosen when it was trained); only the classifier is
            trained (e.g. again on new labels, or with other classifier settings).
        resume: continue an interrupted run in the same `out` folder.
        pos_neg: (pos, neg) ratio of nodule-centred to background U-Net patches (1:1; 3:1
            taught the net that much of a patch is nodule: foreground all over the body).
        loss: U-Net loss, "dicece" (Dice + cross-entropy) or "dicefocal" (Dice + focal); the
            Dice is computed over the batch, on the nodule class only.
        batch_dice: the Dice over the whole batch (True) or per patch, averaged (False: a patch
            with a small nodule weighs as much as one with a large nodule).
        label_min_diameter_mm: the U-Net's target spheres are at least this wide.
        balanced_nodules: positive U-Net patches are centred on each nodule equally often
            (`CropCentersd`); False: uniformly over nodule voxels (MONAI's default, which
            shows the large nodules far more often than the small ones).
        small_nodule_weight: with `balanced_nodules`, nodules whose target sphere is narrower
            than `small_nodule_mm` are the centre of this many times as many positive patches
            as the others in the same scan (1: every nodule the same).
        small_nodule_mm: see `small_nodule_weight` (7: above the 6 mm `label_min_diameter_mm`
            the bench gives the small nodules' targets).
        hard_negative_fraction: with `balanced_nodules`, the share of background patches
            centred on soft tissue beside the lung (vessels) rather than anywhere in the body.
        mine_negatives_from: online hard-negative mining of the U-Net (with
            `balanced_nodules`): from this epoch on, every `mine_negatives_every` epochs, the
            U-Net being trained is run over the training scans and its false-positive regions
            (probability >= `mined_negative_threshold`, 2 voxels or more from every nodule
            sphere) become crop centres of a share `mined_negative_fraction` of the background
            patches (`MinedNegativesd`); None: off.
        mine_negatives_every: epochs between two minings.
        mined_negative_fraction: share of the background patches centred on mined regions
            (of scans that have any), in [0, 1).
        mined_negative_threshold: U-Net probability of a mined false-positive voxel.
        negative_min_hu: background U-Net patches are centred on voxels above this HU (inside
            the body); None: anywhere in the scan.
        candidate_thresholds: U-Net thresholds tried on the validation scans after stage 1;
            the one with the best candidate CPM becomes `config.candidate_threshold`
            (empty, or no validation scans: the configured threshold is kept).
        candidate_peak_distances: `config.candidate_peak_distance_mm` values tried with the
            thresholds (0: connected components); empty: the configured one is kept.
        try_test_time_flips: after stage 1, also try `config.test_time_flips` on the validation
            scans and keep it when it raises the candidates' CPM (it costs 4 U-Net passes).
        try_fp_test_time_flips: after stage 2, try the classifier with and without
            `config.fp_test_time_flips` with each combine mode and blob count, and keep the
            best on validation.
        combine_modes: score combinations tried on the validation scans after stage 2; the one
            with the best CPM becomes `config.combine` ("candidate": the classifier is not
            used); empty, or no validation scans: the configured one is kept.
        blob_candidate_counts: with `config.blob_candidates` > 0 (the count the classifier is
            trained with), the counts per scan tried at inference on the validation scans
            with each combine mode (those above the trained count are skipped); the best
            becomes `config.blob_candidates` (0: the classifier trained on them scores the
            U-Net's candidates alone).
        mining_threshold: U-Net probability threshold for mining classifier samples.
        random_negatives: random soft-tissue negatives per training scan.
        fp_gate_weight: weight of the gated classifier's nodule-mask loss (its gate logits
            against the nodule spheres of the patch, zero on patches without a nodule).
        fp_hard_prob: a mined false positive with at least this U-Net probability is a hard
            negative of the classifier (the bronchus ends and vessel ends that outrank nodules).
        fp_hard_fraction: the hard negatives are repeated to make about this share of the
            classifier's negatives (0: each once, as the other samples).
        fp_crop_jitter: the classifier's training patches are cut this many voxels wider on
            each side and randomly cropped back, so a candidate is up to this far off the
            patch centre (inference centres it; a 3-5 mm nodule is 1-2 voxels in radius).
        fp_focal_gamma: focusing parameter of the classifier's focal loss (0: plain binary
            cross-entropy; the focal term leaves well-classified samples little gradient, and
            the outputs of a short training stay near 0.5).
        fp_cutmix_prob: share of the classifier's batches mixed by 3D CutMix (0: none).
        rescore: after stage 2, fit the rescoring (`ai_engine.detection.rescore`: a logistic
            regression over both networks' logits and what the image says at and around the
            candidate) on the candidates of the training scans and of the datalist's
            "calibration" scans (labelled scans neither network trains on: there the networks'
            outputs are what they are on new scans), and use it as the final score
            ("rescored") unless the best fixed combination beats it on validation by more
            than `rescore_margin`.
        rescore_l2: L2 penalty of the rescoring's weights (standardised terms).
        rescore_degree: 2 (default): the rescoring weighs the features, their squares and
            their pairwise products; 1: the features alone (sessions 12-18).
        rescore_margin: how much better (validation CPM) a fixed combination must be to replace
            the rescoring. The validation scans of a small datalist cannot resolve much less
            (the bench's 48 validation nodules: one nodule at one operating point is 0.003,
            and its validation CPM stayed within 0.795-0.804 over every combination while 48
            other scans moved by 0.03), and the rescoring is fitted on ~20x as many candidates.
        elastic_prob: probability of the elastic deformation.
        ema_decay: both stages validate and keep an exponential moving average of their
            weights with this decay (`TrainConfig.ema_decay`); None: the weights as trained.
        paste_copies: both stages also train on this many copies of each training scan with
            `paste_per_scan` of the training set's nodules (at most `paste_max_diameter_mm`
            across) pasted into each, a share `paste_attached_share` of them against a vessel
            or the chest wall (`paste.pasted_copies`: the juxtavascular small nodules the
            U-Net misses are few in the data); 0: off.
        paste_per_scan: see `paste_copies`.
        paste_max_diameter_mm: see `paste_copies`.
        paste_attached_share: see `paste_copies`.
        progress: tqdm bars.
    """

    epochs: int = 20
    steps_per_epoch: int = 20
    batch_size: int = 4
    lr: float = 1e-2
    fp_epochs: int = 10
    fp_steps_per_epoch: int = 20
    fp_batch_size: int = 32
    fp_lr: float = 1e-3
    accumulation_steps: int = 1
    warmup_steps: int = 10
    early_stopping_patience: int | None = 6
    seed: int = 0
    device: str = "cpu"
    max_steps: int | None = None
    init_weights: str | None = None
    candidates_from: str | None = None
    resume: bool = False
    pos_neg: tuple[int, int] = (1, 1)
    loss: str = "dicece"
    negative_min_hu: float | None = -950.0
    batch_dice: bool = True
    label_min_diameter_mm: float = 0.0
    balanced_nodules: bool = True
    small_nodule_weight: int = 1
    small_nodule_mm: float = 7.0
    hard_negative_fraction: float = 0.5
    mine_negatives_from: int | None = None
    mine_negatives_every: int = 4
    mined_negative_fraction: float = 1 / 3
    mined_negative_threshold: float = 0.5
    candidate_thresholds: tuple[float, ...] = (0.05, 0.1, 0.2, 0.3, 0.5)
    candidate_peak_distances: tuple[float, ...] = (0.0, 3.0)
    try_test_time_flips: bool = True
    try_fp_test_time_flips: bool = True
    combine_modes: tuple[str, ...] = ("geometric", "product", "mean", "classifier", "candidate")
    blob_candidate_counts: tuple[int, ...] = (0, 8, 16)
    mining_threshold: float = 0.1
    random_negatives: int = 24
    fp_hard_prob: float = 0.5
    fp_hard_fraction: float = 0.0
    fp_crop_jitter: int = 4
    fp_gate_weight: float = 1.0
    fp_focal_gamma: float = 2.0
    fp_cutmix_prob: float = 0.3
    elastic_prob: float = 0.1
    ema_decay: float | None = None
    paste_copies: int = 0
    paste_per_scan: int = 4
    paste_max_diameter_mm: float = 8.0
    paste_attached_share: float = 0.75
    rescore: bool = True
    rescore_l2: float = 1.0
    rescore_degree: int = 2
    rescore_margin: float = 0.02
    progress: bool = True
    extra: dict[str, Any] = field(default_factory=dict)


def _log(message: str) -> None:
    print(message, flush=True)


def detection_data_hash(
    train_items: Sequence[dict[str, Any]],
    val_items: Sequence[dict[str, Any]],
    calibration_items: Sequence[dict[str, Any]] = (),
) -> dict[str, Any]:
    """The training-data hash of a detection model: its training and validation items, and
    its calibration items where it has any (a folder without them keeps its earlier hash)."""
    splits = {"training": train_items, "validation": val_items}
    if calibration_items:
        splits["calibration"] = calibration_items
    return training_data_hash(splits)


def check_calibration_items(
    train_items: Sequence[dict[str, Any]], calibration_items: Sequence[dict[str, Any]]
) -> None:
    """Refuse, before any training, calibration items that are not CT scans or that are also
    training scans (the networks' outputs there are not what they are on new scans).

    Raises:
        InputError: naming the first bad item's index.
    """
    training = {str(it.get("image")) for it in train_items}
    for i, item in enumerate(calibration_items):
        if "image" not in item:
            raise InputError(f"calibration[{i}] is not a CT item (it has no 'image')")
        if str(item["image"]) in training:
            raise InputError(
                f"calibration[{i}] ({item['image']}) is also a training scan: the rescoring "
                "needs scans the networks do not train on"
            )


def _preprocessed_one_at_a_time(
    items: Sequence[dict[str, Any]], config: DetectionConfig
) -> Iterator[dict[str, Any]]:
    """`_preprocess_items`, one scan at a time (the calibration scans are read once, and
    there may be many of them)."""
    for item in items:
        yield from _preprocess_items([item], config)


def _preprocess_items(
    items: Sequence[dict[str, Any]], config: DetectionConfig
) -> list[dict[str, Any]]:
    """Load and preprocess every scan once (image, sphere label, nodules) for mining/validation."""
    pre = preprocessing(
        config.spacing_mm,
        config.hu_range,
        with_label=True,
        blob_sigmas_mm=config.blob_sigmas_mm,
    )
    return [pre({"image": it["image"], "nodules": it.get("nodules", [])}) for it in items]


def detections_cpm(
    detector: NoduleDetector,
    scans: Sequence[dict[str, Any]],
    use_classifier: bool,
    cached: list[Any] | None = None,
) -> dict[str, float]:
    """CPM of `detector` on preprocessed `scans` (candidates reused from `cached` if given)."""
    points, nodules = [], []
    for i, scan in enumerate(scans):
        if cached is not None and i < len(cached):
            cands, _labels, centers_mm = cached[i]
        else:
            cands, _labels, centers_mm = detector.candidates(scan["image"])
        q = None
        if use_classifier and detector.classifier is not None:
            q = detector.classify(
                scan["image"], np.array([c.center_voxel for c in cands]).reshape(-1, 3)
            )
        points.append([d.as_point() for d in detector.finish(cands, centers_mm, q)])
        nodules.append(scan["nodules"])
    result = froc(points, nodules)
    return {"cpm": result.cpm, **{f"sens@{k}": v for k, v in result.sensitivity_at.items()}}


MinedBank = dict[int, tuple[np.ndarray, tuple[int, int, int]]]
#: crop-centre voxels drawn from each mined false-positive region
MINED_PER_REGION = 16


def mine_false_positives(
    detector: NoduleDetector,
    scans: Sequence[dict[str, Any]],
    threshold: float = 0.5,
    per_region: int = MINED_PER_REGION,
    margin_voxels: int = 2,
) -> MinedBank:
    """The U-Net's false-positive regions on preprocessed, labelled scans (`_preprocess_items`):
    voxels of probability >= `threshold` more than `margin_voxels` from every nodule sphere,
    `per_region` voxel indices spread over each connected region (so a small region weighs as
    much as a large one). Returns {scan index: ((N, 3) voxel indices, grid shape)}, the bank
    of `MinedNegativesd`."""
    from scipy import ndimage

    bank: MinedBank = {}
    was_training = detector.unet.training
    detector.unet.eval()
    try:
        for i, scan in enumerate(scans):
            prob = detector.probability(scan["image"])
            nodule = np.asarray(scan["label"])[0] > 0.5
            if nodule.any() and margin_voxels > 0:
                nodule = ndimage.binary_dilation(nodule, iterations=margin_voxels)
            flat = component_indices((prob >= threshold) & ~nodule, per_region)
            shape = tuple(int(v) for v in prob.shape)
            bank[i] = (np.stack(np.unravel_index(flat, shape), axis=1).astype(np.int64), shape)
    finally:
        detector.unet.train(was_training)
    return bank


def _save_bank(bank: MinedBank, path: Path) -> None:
    arrays = {f"ijk_{i}": ijk for i, (ijk, _shape) in bank.items()}
    arrays |= {f"shape_{i}": np.asarray(shape) for i, (_ijk, shape) in bank.items()}
    tmp = path.with_suffix(".tmp.npz")
    np.savez(tmp, **arrays)
    tmp.replace(path)


def _load_bank(path: Path) -> MinedBank:
    with np.load(path) as data:
        cases = [int(k.split("_", 1)[1]) for k in data.files if k.startswith("ijk_")]
        return {i: (data[f"ijk_{i}"], tuple(int(v) for v in data[f"shape_{i}"])) for i in cases}


def _window_level(config: DetectionConfig, hu: float) -> float:
    """`hu` on the [0, 1] scale of the HU window."""
    lo_hu, hi_hu = config.hu_range
    return float((hu - lo_hu) / (hi_hu - lo_hu))


def _background_level(config: DetectionConfig, opts: DetectionTrainOptions) -> float:
    """Background U-Net patches are centred above this window value (0: anywhere)."""
    if opts.negative_min_hu is None:
        return 0.0
    return _window_level(config, opts.negative_min_hu)


def _crop_centres(config: DetectionConfig, opts: DetectionTrainOptions) -> CropCentersd:
    """The U-Net's crop centres with `balanced_nodules`: body, lung and tissue levels on the
    window's scale, the hard-negative share and the small nodules' weight of `opts`."""
    return CropCentersd(
        body_threshold=_background_level(config, opts),
        lung_threshold=_window_level(config, -500.0),
        tissue_threshold=_window_level(config, -300.0),
        hard_fraction=opts.hard_negative_fraction,
        small_diameter_mm=opts.small_nodule_mm,
        small_weight=opts.small_nodule_weight,
    )


def _candidate_stage(
    train_items: list[dict[str, Any]],
    val_scans: list[dict[str, Any]],
    config: DetectionConfig,
    opts: DetectionTrainOptions,
    out: Path,
    train_scans: list[dict[str, Any]] | None = None,
) -> tuple[torch.nn.Module, dict[str, Any]]:
    """Train the U-Net. `train_scans` (the training items preprocessed, in the same order) are
    needed for online hard-negative mining (`opts.mine_negatives_from`)."""
    seed_everything(opts.seed)
    unet = build_network("unet3d", **config.unet_kwargs)
    transfer = None
    if opts.init_weights:
        transfer = _init_component(unet, opts.init_weights, "candidates")
    per_scan = 2
    centres: list[Any] = []
    index_keys: list[str] = []
    bank: MinedBank = {}
    mining = opts.mine_negatives_from is not None and opts.balanced_nodules
    if mining and train_scans is None:
        raise ValueError("hard-negative mining needs the preprocessed training scans")
    if opts.balanced_nodules:
        centres = [_crop_centres(config, opts)]
        index_keys = ["fg_indices", "bg_indices"]
    # Flattened (*.transforms): a nested Compose counts as random for CacheDataset, which then
    # cached nothing and loaded, resampled and labelled a DICOM series for every patch.
    transform = Compose(
        [
            *preprocessing(
                config.spacing_mm,
                config.hu_range,
                with_label=True,
                label_min_diameter_mm=opts.label_min_diameter_mm,
                blob_sigmas_mm=config.blob_sigmas_mm,
            ).transforms,
            SpatialPadd(keys=["image", "label"], spatial_size=config.patch_size),
            *centres,
            # nodule lists differ in length: no collate
            SelectItemsd(keys=["image", "label", *index_keys, *(["case"] if mining else [])]),
            # not cached: the bank changes while the U-Net trains
            *([MinedNegativesd(bank, opts.mined_negative_fraction)] if mining else []),
            RandCropByPosNegLabeld(
                keys=["image", "label"],
                label_key="label",
                spatial_size=config.patch_size,
                pos=opts.pos_neg[0],
                neg=opts.pos_neg[1],
                num_samples=per_scan,
                # background patches centred inside the body (lungs, vessels, chest wall), not
                # in the air around it, which inference never has to reject
                image_key="image" if opts.negative_min_hu is not None else None,
                image_threshold=_background_level(config, opts),
                fg_indices_key="fg_indices" if centres else None,
                bg_indices_key="bg_indices" if centres else None,
                allow_smaller=True,
            ),
            *spatial_augmentations(
                ["image", "label"], modes=["bilinear", "nearest"], elastic_prob=opts.elastic_prob
            ),
            *intensity_augmentations(["image"]),
            EnsureTyped(keys=["image", "label"], dtype=torch.float32, track_meta=False),
        ]
    )
    items = [{**it, "case": i} for i, it in enumerate(train_items)] if mining else train_items
    dataset = make_dataset(items, transform)
    loader = EpochLoader(dataset, batch_size=max(1, opts.batch_size // per_scan), seed=opts.seed)
    cfg = TrainConfig(
        epochs=opts.epochs,
        steps_per_epoch=opts.steps_per_epoch,
        lr=opts.lr,
        warmup_steps=opts.warmup_steps,
        accumulation_steps=opts.accumulation_steps,
        seed=opts.seed,
        device=opts.device,
        max_steps=opts.max_steps,
        early_stopping_patience=opts.early_stopping_patience,
        monitor="cpm" if val_scans else "train_loss",
        monitor_mode="max" if val_scans else "min",
        ema_decay=opts.ema_decay,
        progress=opts.progress,
    )
    detector = NoduleDetector(config, unet, None, device=opts.device)
    validate = _unet_validation(config, val_scans, opts.device)
    # Batch Dice on the nodule class only (background Dice is ~1 and only dilutes the gradient).
    if opts.loss == "dicefocal":
        loss = DiceFocalLoss(
            include_background=False, to_onehot_y=True, softmax=True, batch=opts.batch_dice
        )
    elif opts.loss == "dicece":
        loss = DiceCELoss(
            include_background=False, to_onehot_y=True, softmax=True, batch=opts.batch_dice
        )
    else:
        raise InputError(f"loss must be dicece or dicefocal, got {opts.loss!r}")
    bank_file = out / "work" / "candidates" / "mined_negatives.npz"
    mined_log: list[dict[str, int]] = []

    def mine(epoch: int) -> None:
        """Before each epoch: re-mine when due (from the weights the epoch starts with, so a
        resumed run mines the same); a run resumed between two minings reloads the last."""
        start, every = int(opts.mine_negatives_from or 0), max(1, opts.mine_negatives_every)
        if epoch >= start and (epoch - start) % every == 0:
            assert train_scans is not None
            bank.clear()
            bank.update(mine_false_positives(detector, train_scans, opts.mined_negative_threshold))
            bank_file.parent.mkdir(parents=True, exist_ok=True)
            _save_bank(bank, bank_file)
            n_scans = sum(1 for ijk, _ in bank.values() if len(ijk))
            regions = sum(len(ijk) for ijk, _ in bank.values()) // MINED_PER_REGION
            mined_log.append({"epoch": epoch, "regions": regions, "scans": n_scans})
            _log(
                f"[candidates] epoch {epoch}: mined {regions} false-positive regions on "
                f"{n_scans} of {len(bank)} training scans"
            )
        elif epoch > start and not bank and bank_file.is_file():
            bank.update(_load_bank(bank_file))

    trainer = Trainer(
        unet,
        loss,
        loader,
        cfg,
        out / "work" / "candidates",
        validate=validate,
        on_epoch_end=lambda e, line: _log(_epoch_line("candidates", line)),
        on_epoch_start=mine if mining else None,
    )
    info = {**_fit_keeping_best(trainer, unet, cfg, opts), "transfer": transfer}
    if mining:
        info["mined_negatives"] = mined_log
    return unet.eval(), info


def choose_candidate_threshold(
    detector: NoduleDetector,
    scans: Sequence[dict[str, Any]],
    thresholds: Sequence[float],
    peak_distances: Sequence[float] = (),
) -> tuple[float, dict[str, float]]:
    """The U-Net threshold with the best candidates-only CPM on `scans` (ties: the higher
    threshold, fewer candidates). With `peak_distances`, each is tried too and the best one is
    left in `detector.config.candidate_peak_distance_mm` (ties: the earlier). Returns
    (threshold, {threshold: cpm} or {"<threshold>@<distance>mm": cpm})."""
    probs = [detector.probability(s["image"]) for s in scans]
    saved = detector.config.candidate_threshold
    distances = list(peak_distances) or [detector.config.candidate_peak_distance_mm]
    table: dict[str, float] = {}
    best = (saved, -1.0, distances[0])
    try:
        for dist in distances:
            detector.config.candidate_peak_distance_mm = float(dist)
            for thr in sorted(thresholds, reverse=True):
                detector.config.candidate_threshold = float(thr)
                points = []
                for scan, prob in zip(scans, probs, strict=True):
                    cands, _labels, centers_mm = detector.candidates_from_probability(
                        scan["image"], prob
                    )
                    points.append([d.as_point() for d in detector.finish(cands, centers_mm, None)])
                cpm = froc(points, [s["nodules"] for s in scans]).cpm
                table[f"{thr:g}@{dist:g}mm" if peak_distances else f"{thr:g}"] = cpm
                if cpm > best[1]:
                    best = (float(thr), cpm, float(dist))
    finally:
        detector.config.candidate_threshold = saved
        detector.config.candidate_peak_distance_mm = best[2]
    return best[0], table


def choose_combine(
    detector: NoduleDetector,
    scans: Sequence[dict[str, Any]],
    modes: Sequence[str],
    blob_counts: Sequence[int] = (),
    fp_flips: Sequence[bool] = (),
) -> tuple[str, dict[str, float]]:
    """The score combination with the best whole-detector CPM on `scans` (ties: the earlier
    mode in `modes`). "candidate" ignores the classifier, so a classifier that makes the CPM
    worse than the U-Net alone is not used. With `blob_counts`, each count of blob candidates
    per scan is tried with each mode (ties: the smaller count) and the best one is left in
    `detector.config.blob_candidates`; with `fp_flips` (False, True), the classifier with and
    without test-time flips likewise (ties: the first), the best left in
    `detector.config.fp_test_time_flips`. Returns (mode, {mode: cpm}, or
    {"<mode>@<count>": cpm} with `blob_counts`, keys suffixed "+flips" for the flipped
    classifier)."""
    probs = [detector.probability(s["image"]) for s in scans]
    cfg = detector.config
    saved = (cfg.combine, cfg.blob_candidates, cfg.fp_test_time_flips)
    counts = sorted(set(blob_counts)) or [saved[1]]
    flip_options = list(dict.fromkeys(fp_flips)) or [saved[2]]
    table: dict[str, float] = {}
    best = (saved[0], -1.0, saved[1], saved[2])
    try:
        for count, flips in itertools.product(counts, flip_options):
            cfg.blob_candidates, cfg.fp_test_time_flips = int(count), bool(flips)
            per_scan = []
            for scan, prob in zip(scans, probs, strict=True):
                cands, _labels, centers_mm = detector.candidates_from_probability(
                    scan["image"], prob
                )
                q = detector.classify(
                    scan["image"], np.array([c.center_voxel for c in cands]).reshape(-1, 3)
                )
                per_scan.append((cands, centers_mm, q))
            for mode in modes:
                cfg.combine = mode
                points = [
                    [d.as_point() for d in detector.finish(cands, centers_mm, q)]
                    for cands, centers_mm, q in per_scan
                ]
                cpm = froc(points, [s["nodules"] for s in scans]).cpm
                key = f"{mode}@{count}" if blob_counts else mode
                table[key + ("+flips" if flips and fp_flips else "")] = cpm
                if cpm > best[1]:
                    best = (mode, cpm, int(count), bool(flips))
    finally:
        cfg.combine = saved[0]
        cfg.blob_candidates, cfg.fp_test_time_flips = best[2], best[3]
    return best[0], table


def keeps_rescoring(table: dict[str, float], margin: float) -> bool:
    """Whether the rescoring stays the final score: its validation CPM (`table["rescored"]`)
    is at most `margin` below the best fixed combination's (the other entries of a
    `choose_combine` table)."""
    fixed = max((v for k, v in table.items() if k != "rescored"), default=float("-inf"))
    return table["rescored"] >= fixed - margin


def fit_rescorer(
    detector: NoduleDetector, scans: Iterable[dict[str, Any]], l2: float = 1.0, degree: int = 1
) -> Rescorer:
    """Fit the rescoring on the candidates `detector` finds in preprocessed `scans` (its
    configured threshold, blob and fine candidates, the classifier unflipped), each labelled by
    the hit rule (centre within a nodule's radius), on `features_for` its fine candidates, with
    terms of `degree`. `scans` is read once, one scan at a time (a generator that preprocesses
    each keeps one in memory).

    Raises:
        ValueError: no candidate hits a nodule, or every one does.
    """
    names = features_for(bool(detector.config.fine_blob_candidates))
    flips = detector.config.fp_test_time_flips
    detector.config.fp_test_time_flips = False
    xs, ys = [], []
    try:
        for scan in scans:
            cands, _labels, centers_mm = detector.candidates(scan["image"])
            if not cands:
                continue
            q = detector.classify(
                scan["image"], np.array([c.center_voxel for c in cands]).reshape(-1, 3)
            )
            nod_mm, radii = nodule_arrays(scan["nodules"])
            xs.append(candidate_features(cands, q, names))
            ys.append(label_points(centers_mm, nod_mm, radii))
    finally:
        detector.config.fp_test_time_flips = flips
    if not xs:
        raise ValueError("rescoring needs positive and negative candidates")
    return Rescorer.fit(
        np.concatenate(xs), np.concatenate(ys), l2=l2, features=names, degree=degree
    )


def _epoch_line(stage: str, line: dict[str, Any]) -> str:
    val = " ".join(
        f"{k}={v:.3f}" for k, v in (line.get("val") or {}).items() if not k.startswith("sens")
    )
    return f"[{stage}] epoch {line['epoch'] + 1} step {line['step']} loss {line['train_loss']:.4f} {val}".rstrip()


def _init_component(module: torch.nn.Module, path: str, component: str) -> dict[str, Any]:
    """Partial load from a weights file, or from a detection model folder's component."""
    p = Path(path)
    if p.is_dir() and (p / "model.json").is_file():
        manifest = json.loads((p / "model.json").read_text())
        comp = manifest.get("components", {}).get(component)
        if comp is None:
            return {"skipped": f"{path} has no component {component!r}"}
        p = p / comp["file"]
    report = load_partial_weights(module, p)
    _log(f"[{component}] init from {p}: {report.summary()}")
    return {"path": str(p), **report.to_dict()}


def mine_classifier_samples(
    detector: NoduleDetector,
    scans: Sequence[dict[str, Any]],
    config: DetectionConfig,
    opts: DetectionTrainOptions,
    rng: np.random.Generator,
) -> list[dict[str, Any]]:
    """Classifier samples: mined U-Net candidates (labelled by the hit rule), the reference
    nodules (plus jittered copies) and random soft-tissue points. `"hard"` marks the mined
    false positives of U-Net probability >= `opts.fp_hard_prob`."""
    size = config.fp_patch_size + 2 * opts.fp_crop_jitter  # margin of the random crop
    lo_hu, hi_hu = config.hu_range
    tissue = ((-200 - lo_hu) / (hi_hu - lo_hu), (200 - lo_hu) / (hi_hu - lo_hu))
    samples: list[dict[str, Any]] = []
    saved = detector.config.candidate_threshold
    detector.config.candidate_threshold = opts.mining_threshold
    try:
        for scan in scans:
            image = scan["image"]
            affine_lps = np.diag([-1.0, -1.0, 1.0, 1.0]) @ np.asarray(
                image.affine, dtype=np.float64
            )
            nod_mm, radii = nodule_arrays(scan["nodules"])
            cands, _labels, centers_mm = detector.candidates(image)
            centers = [c.center_voxel for c in cands]
            labels = list(label_points(centers_mm, nod_mm, radii))
            # the misses the U-Net is sure of: the false positives the final ranking turns on
            hard = [
                y < 0.5 and c.prob >= opts.fp_hard_prob for c, y in zip(cands, labels, strict=True)
            ]
            inv = np.linalg.inv(affine_lps)
            for c_mm, r in zip(nod_mm, radii, strict=True):
                c_vox = inv[:3, :3] @ c_mm + inv[:3, 3]
                spacing = np.asarray(config.spacing_mm)
                for _ in range(3):
                    centers.append(c_vox + rng.uniform(-0.4, 0.4, 3) * min(r, 3.0) / spacing)
                    labels.append(1.0)
            rand = random_tissue_points(
                image.as_subclass(torch.Tensor).numpy(),
                opts.random_negatives,
                rng,
                *tissue,
                exclude_mm=nod_mm,
                exclude_radius_mm=radii,
                affine_vox_to_mm=affine_lps,
            )
            centers += list(rand)
            labels += [0.0] * len(rand)
            hard += [False] * (len(labels) - len(hard))
            if not centers:
                continue
            patches = extract_patches(image, np.array(centers), size)
            # the nodule spheres around each patch (the gated classifier's mask target)
            masks = (
                extract_patches(scan["label"], np.array(centers), size)
                if "label" in scan
                else np.zeros((len(centers), 1, size, size, size), np.float32)
            )
            samples += [
                {"image": patch, "mask": mask, "label": np.array([y], np.float32), "hard": h}
                for patch, mask, y, h in zip(patches, masks, labels, hard, strict=True)
            ]
    finally:
        detector.config.candidate_threshold = saved
    return samples


class _MaskChannelAux(torch.nn.Module):
    """Training wrapper of the gated classifier: the batch's last channel is the nodule mask
    (it went through crop, augmentation and CutMix with the image); the classifier sees the
    others, and `(logits, gate logits, mask)` go to the loss."""

    def __init__(self, aux: TumorSegAux) -> None:
        super().__init__()
        self.aux = aux

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, list[torch.Tensor], torch.Tensor]:
        logits, segs = self.aux(x[:, :-1])
        return logits, segs, x[:, -1:]


def _classifier_of(model: torch.nn.Module) -> torch.nn.Module:
    """The classifier inside the trained module (the gated one trains inside its wrappers)."""
    return model.aux.net if isinstance(model, _MaskChannelAux) else model


def _unet_validation(
    config: DetectionConfig, val_scans: list[dict[str, Any]], device: str
) -> Callable[[torch.nn.Module], dict[str, float]] | None:
    """The U-Net stage's validation: the candidates' CPM of the U-Net the trainer hands it
    (the raw weights or their moving average); None without validation scans."""
    if not val_scans:
        return None
    return lambda unet: detections_cpm(
        NoduleDetector(config, unet, None, device=device), val_scans, False
    )


def _classifier_validation(
    config: DetectionConfig, unet: torch.nn.Module, val_scans: list[dict[str, Any]], device: str
) -> Callable[[torch.nn.Module], dict[str, float]] | None:
    """The classifier stage's validation: the CPM of the fixed U-Net's candidates (found once)
    scored by the classifier inside the module the trainer hands it; None without scans."""
    if not val_scans:
        return None
    cached = [
        NoduleDetector(config, unet, None, device=device).candidates(s["image"]) for s in val_scans
    ]
    return lambda trained: detections_cpm(
        NoduleDetector(config, unet, _classifier_of(trained), device=device),
        val_scans,
        True,
        cached,
    )


def _fp_stage(
    unet: torch.nn.Module,
    train_scans: list[dict[str, Any]],
    val_scans: list[dict[str, Any]],
    config: DetectionConfig,
    opts: DetectionTrainOptions,
    out: Path,
) -> tuple[torch.nn.Module, dict[str, Any]]:
    rng = np.random.default_rng(opts.seed)
    detector = NoduleDetector(config, unet, None, device=opts.device)
    samples = mine_classifier_samples(detector, train_scans, config, opts, rng)
    hard = [bool(s.pop("hard")) for s in samples]
    n_pos = int(sum(float(s["label"][0]) for s in samples))
    _log(
        f"[fp_reduction] {len(samples)} samples ({n_pos} positive, {sum(hard)} hard negatives) "
        f"from {len(train_scans)} scans"
    )
    if n_pos == 0 or n_pos == len(samples):
        raise InputError(
            "the training scans give no nodule (or no background) samples: add annotated nodules"
        )
    samples = balance(samples, rng, hard=hard, hard_fraction=opts.fp_hard_fraction)
    seed_everything(opts.seed + 1)
    classifier = build_network("resnet3d", **config.fp_kwargs)
    transfer = (
        _init_component(classifier, opts.init_weights, "fp_reduction")
        if opts.init_weights
        else None
    )
    # The gated classifier's mask follows its patch through crop and spatial augmentation,
    # then rides along as the last image channel so that CutMix pastes it with the image;
    # `_MaskChannelAux` takes it off again.
    gated = config.fp_gate
    keys = ["image", "mask"] if gated else ["image"]
    transform = Compose(
        [
            RandSpatialCropd(keys=keys, roi_size=(config.fp_patch_size,) * 3, random_size=False),
            *spatial_augmentations(keys, elastic_prob=opts.elastic_prob),
            *intensity_augmentations(["image"]),
            *([ConcatItemsd(keys=keys, name="image", dim=0)] if gated else []),
            DeleteItemsd(keys="mask"),
            EnsureTyped(keys=["image", "label"], dtype=torch.float32, track_meta=False),
        ]
    )
    dataset = make_dataset(samples, transform, cache=False)
    loader = EpochLoader(
        dataset,
        batch_size=opts.fp_batch_size,
        seed=opts.seed + 1,
        drop_last=len(samples) > opts.fp_batch_size,
    )
    cfg = TrainConfig(
        epochs=opts.fp_epochs,
        steps_per_epoch=opts.fp_steps_per_epoch,
        lr=opts.fp_lr,
        warmup_steps=opts.warmup_steps,
        accumulation_steps=opts.accumulation_steps,
        seed=opts.seed + 1,
        device=opts.device,
        max_steps=opts.max_steps,
        early_stopping_patience=opts.early_stopping_patience,
        monitor="cpm" if val_scans else "train_loss",
        monitor_mode="max" if val_scans else "min",
        ema_decay=opts.ema_decay,
        progress=opts.progress,
    )
    validate = _classifier_validation(config, unet, val_scans, opts.device)
    focal = FocalLoss(use_softmax=False, gamma=opts.fp_focal_gamma)
    trained: torch.nn.Module = classifier
    loss_fn: Any = focal
    if gated:
        trained = _MaskChannelAux(TumorSegAux(classifier, ["gate.gate_logits"], [1]))
        seg_loss = SegAuxLoss()

        def loss_fn(out: Any, label: torch.Tensor) -> torch.Tensor:
            logits, segs, mask = out
            every = torch.ones(len(logits), device=logits.device)
            return focal(logits, label) + opts.fp_gate_weight * seg_loss(segs, mask, every)

    trainer = Trainer(
        trained,
        loss_fn,
        loader,
        cfg,
        out / "work" / "fp_reduction",
        validate=validate,
        batch_augment=CutMixBatch(alpha=1.0, prob=opts.fp_cutmix_prob)
        if opts.fp_cutmix_prob
        else None,
        on_epoch_end=lambda e, line: _log(_epoch_line("fp_reduction", line)),
    )
    fitted = _fit_keeping_best(trainer, trained, cfg, opts)
    if isinstance(trained, _MaskChannelAux):
        trained.aux.remove_hooks()  # the mask head is training-only; the folder keeps `classifier`
    info = {
        **fitted,
        "n_samples": len(samples),
        "n_positive_unique": n_pos,
        "n_hard_negative_unique": sum(hard),
        "transfer": transfer,
    }
    return classifier.eval(), info


def _check_options(opts: DetectionTrainOptions) -> None:
    """Refuse options out of their range before anything is written.

    Raises:
        InputError: the first option out of range, named with its value.
    """
    if opts.loss not in {"dicece", "dicefocal"}:
        raise InputError(f"loss must be dicece or dicefocal, got {opts.loss!r}")
    for name in ("mined_negative_threshold", "mining_threshold"):
        value = getattr(opts, name)
        if not 0.0 < value < 1.0:
            raise InputError(f"{name} is a U-Net probability in (0, 1), got {value}")
    if not 0.0 <= opts.fp_hard_prob <= 1.0:
        raise InputError(f"fp_hard_prob is a U-Net probability in [0, 1], got {opts.fp_hard_prob}")
    if opts.ema_decay is not None and not 0.0 < opts.ema_decay < 1.0:
        raise InputError(f"ema_decay must be in (0, 1), got {opts.ema_decay}")
    if opts.small_nodule_weight < 1:
        raise InputError(f"small_nodule_weight must be >= 1, got {opts.small_nodule_weight}")
    if opts.random_negatives < 0:
        raise InputError(f"random_negatives must be >= 0, got {opts.random_negatives}")
    if opts.paste_copies < 0 or opts.paste_per_scan < 1:
        raise InputError(
            f"paste_copies must be >= 0 and paste_per_scan >= 1, got {opts.paste_copies} and "
            f"{opts.paste_per_scan}"
        )
    if opts.paste_max_diameter_mm <= 0:
        raise InputError(f"paste_max_diameter_mm must be > 0, got {opts.paste_max_diameter_mm}")
    if not 0.0 <= opts.paste_attached_share <= 1.0:
        raise InputError(f"paste_attached_share must be in [0, 1], got {opts.paste_attached_share}")
    if opts.rescore_l2 < 0 or opts.rescore_margin < 0:
        raise InputError(
            f"rescore_l2 and rescore_margin must be >= 0, got {opts.rescore_l2} and "
            f"{opts.rescore_margin}"
        )
    if opts.rescore_degree not in DEGREES or isinstance(opts.rescore_degree, bool):
        raise InputError(f"rescore_degree must be one of {DEGREES}, got {opts.rescore_degree!r}")
    if opts.fp_crop_jitter < 0:
        raise InputError(f"fp_crop_jitter must be >= 0 voxels, got {opts.fp_crop_jitter}")
    if not 0.0 <= opts.fp_hard_fraction < 1.0:
        raise InputError(f"fp_hard_fraction must be in [0, 1), got {opts.fp_hard_fraction}")
    if opts.fp_gate_weight < 0:
        raise InputError(f"fp_gate_weight must be >= 0, got {opts.fp_gate_weight}")
    if opts.fp_focal_gamma < 0:
        raise InputError(f"fp_focal_gamma must be >= 0, got {opts.fp_focal_gamma}")
    if not 0.0 <= opts.fp_cutmix_prob <= 1.0:
        raise InputError(f"fp_cutmix_prob must be in [0, 1], got {opts.fp_cutmix_prob}")
    if opts.mine_negatives_from is not None:
        if not opts.balanced_nodules:
            raise InputError("hard-negative mining needs balanced_nodules (its crop centres)")
        if opts.mine_negatives_from < 0 or opts.mine_negatives_every < 1:
            raise InputError(
                "mine_negatives_from must be >= 0 and mine_negatives_every >= 1, got "
                f"{opts.mine_negatives_from} and {opts.mine_negatives_every}"
            )
        if not 0.0 <= opts.mined_negative_fraction < 1.0:
            raise InputError(
                f"mined_negative_fraction must be in [0, 1), got {opts.mined_negative_fraction}"
            )


def choose_candidate_settings(
    unet: torch.nn.Module,
    config: DetectionConfig,
    opts: DetectionTrainOptions,
    val_scans: Sequence[dict[str, Any]],
) -> dict[str, Any]:
    """After stage 1: the candidate threshold, peak distance and U-Net test-time flips with the
    best candidates-only CPM on `val_scans` (`opts.candidate_thresholds`,
    `opts.candidate_peak_distances`, `opts.try_test_time_flips`), set in `config`. Returns
    what was tried and chosen, for the model folder."""
    info: dict[str, Any] = {"candidate_threshold": {}}
    best: tuple[float, float, bool, float] | None = None
    for flips in (False, True) if opts.try_test_time_flips else (config.test_time_flips,):
        config.test_time_flips = flips
        probe = NoduleDetector(config, unet, None, device=opts.device)
        thr, table = choose_candidate_threshold(
            probe, val_scans, opts.candidate_thresholds, opts.candidate_peak_distances
        )
        info["candidate_threshold"][f"flips={flips}"] = table
        _log(f"[candidates] test-time flips {flips}: CPM by threshold(@peak distance) {table}")
        cpm = max(table.values())
        if best is None or cpm > best[1]:
            best = (thr, cpm, flips, probe.config.candidate_peak_distance_mm)
    assert best is not None
    config.candidate_threshold, _cpm, config.test_time_flips = best[:3]
    config.candidate_peak_distance_mm = best[3]
    info["candidate_threshold"]["chosen"] = best[0]
    info["test_time_flips"] = best[2]
    info["candidate_peak_distance_mm"] = best[3]
    _log(
        f"[candidates] threshold {best[0]:g}, peak distance {best[3]:g} mm, test-time flips "
        f"{best[2]} chosen on validation"
    )
    return info


def finish_detector(
    out: Path,
    unet: torch.nn.Module,
    classifier: torch.nn.Module,
    config: DetectionConfig,
    opts: DetectionTrainOptions,
    train_scans: Sequence[dict[str, Any]],
    val_scans: Sequence[dict[str, Any]],
    networks: dict[str, tuple[str, dict[str, Any]]],
    made_by_params: dict[str, Any],
    training_data: dict[str, Any],
    calibration_items: Sequence[dict[str, Any]] = (),
) -> Path:
    """After the networks (trained, or assembled into an ensemble): fit the rescoring on the
    candidates of the training scans and of `calibration_items` (datalist items, preprocessed
    here one at a time; `opts.rescore`), choose the score combination, blob candidates and
    classifier flips on validation, measure the validation CPM and write the model folder.

    Args:
        networks: the registered network name and arguments of "candidates" and
            "fp_reduction", which the folder stores to rebuild them.
        made_by_params: how the networks were made; the choices made here are added to its
            "fp_reduction" entry.
    """
    info = made_by_params.setdefault("fp_reduction", {})
    trained_blob_candidates = config.blob_candidates
    # the fine filter's candidates: only the rescoring scores them, so they stay only with it
    fine_candidates = config.fine_blob_candidates if opts.rescore else 0
    config.fine_blob_candidates = fine_candidates
    if opts.rescore:
        if calibration_items:
            _log(f"[rescore] candidates of {len(calibration_items)} calibration scans too")
        try:
            rescorer = fit_rescorer(
                NoduleDetector(config, unet, classifier, device=opts.device),
                itertools.chain(
                    train_scans, _preprocessed_one_at_a_time(calibration_items, config)
                ),
                opts.rescore_l2,
                opts.rescore_degree,
            )
        except ValueError as exc:  # no hit, or nothing but hits, among the candidates
            info["rescore"] = {"skipped": str(exc)}
            _log(f"[rescore] not fitted: {exc}")
            config.fine_blob_candidates = 0
        else:
            config.rescore = rescorer.to_dict()
            info["rescore"] = {
                "fitted": config.rescore,
                "training_scans": len(train_scans),
                "calibration_scans": len(calibration_items),
            }
            n = len(rescorer.features)  # the features' own terms come first
            weights = {
                name: round(float(w), 2)
                for name, w in zip(rescorer.features, rescorer.coef[:n], strict=True)
            }
            _log(
                f"[rescore] degree {rescorer.degree} fitted on {rescorer.n_samples} candidates "
                f"({rescorer.n_positive} hits) of {len(train_scans)} training and "
                f"{len(calibration_items)} calibration scans: weights of the features {weights}"
            )
    if val_scans and opts.combine_modes:
        blob_counts = (
            [n for n in opts.blob_candidate_counts if n <= config.blob_candidates]
            if config.blob_candidates
            else []
        )
        chooser = NoduleDetector(config, unet, classifier, device=opts.device)
        fp_flips = (False, True) if opts.try_fp_test_time_flips else ()
        config.fine_blob_candidates = 0  # the fixed combinations score the networks' alone
        mode, table = choose_combine(chooser, val_scans, opts.combine_modes, blob_counts, fp_flips)
        config.combine = mode
        config.blob_candidates = chooser.config.blob_candidates
        config.fp_test_time_flips = chooser.config.fp_test_time_flips
        if config.rescore is not None:
            # the rescoring as fitted: on the trained blob candidates, the classifier unflipped
            fixed = (mode, config.blob_candidates, config.fp_test_time_flips)
            config.combine, config.blob_candidates = "rescored", trained_blob_candidates
            config.fp_test_time_flips = False
            config.fine_blob_candidates = fine_candidates
            table["rescored"] = detections_cpm(chooser, val_scans, use_classifier=True)["cpm"]
            if not keeps_rescoring(table, opts.rescore_margin):
                config.combine, config.blob_candidates, config.fp_test_time_flips = fixed
                config.fine_blob_candidates = 0
            mode = config.combine
        info["combine"] = {
            "chosen": mode,
            "blob_candidates": config.blob_candidates,
            "fine_blob_candidates": config.fine_blob_candidates,
            "fp_test_time_flips": config.fp_test_time_flips,
            "validation_cpm": table,
        }
        _log(
            f"[fp_reduction] score combination {mode!r} with {config.blob_candidates} blob "
            f"and {config.fine_blob_candidates} fine candidates, classifier flips "
            f"{config.fp_test_time_flips}, chosen on validation (CPM {table})"
        )
    elif config.rescore is not None and not val_scans:  # nothing to compare it with
        config.combine, config.blob_candidates = "rescored", trained_blob_candidates
        config.fp_test_time_flips = False
    metrics: dict[str, Any] = {}
    if val_scans:
        det = NoduleDetector(config, unet, classifier, device=opts.device)
        metrics["validation"] = {
            "candidates": detections_cpm(det, val_scans, use_classifier=False),
            "detector": detections_cpm(det, val_scans, use_classifier=True),
            "n_images": len(val_scans),
            "n_nodules": sum(len(s["nodules"]) for s in val_scans),
        }
        _log(
            f"validation CPM: candidates {metrics['validation']['candidates']['cpm']:.3f}, "
            f"detector {metrics['validation']['detector']['cpm']:.3f}"
        )
    cfg_dict = config.to_dict()
    pre_keys = ("spacing_mm", "hu_range", "body_threshold_hu")
    extras = {
        "candidates": {"output": "2-class softmax logits", "roi_size": list(config.patch_size)},
        "fp_reduction": {"output": "nodule logit", "patch_size": config.fp_patch_size},
    }
    components = {}
    for name, (network, kwargs) in networks.items():
        module = unet if name == "candidates" else classifier
        components[name] = Component(
            network=network, network_kwargs=kwargs, module=module, extra=extras[name]
        )
    save_model_folder(
        out,
        task=TASK,
        made_by="trained",
        made_by_params=made_by_params,
        components=components,
        preprocessing={"orientation": "RAS", **{k: cfg_dict[k] for k in pre_keys}},
        postprocessing={k: v for k, v in cfg_dict.items() if k not in pre_keys},
        training_data=training_data,
        metrics=metrics,
        extra_files={
            "log_candidates.jsonl": out / "work" / "candidates" / "log.jsonl",
            "log_fp_reduction.jsonl": out / "work" / "fp_reduction" / "log.jsonl",
        },
    )
    return out


def train_detector(
    datalist: dict[str, list[dict[str, Any]]],
    out: str | Path,
    config: DetectionConfig | None = None,
    options: DetectionTrainOptions | None = None,
) -> Path:
    """Train both stages on `datalist["training"]` (validated on `"validation"`) and write a
    model folder to `out` (work files under `out/work`). The rescoring is fitted on the
    candidates of the training scans and of `"calibration"` (optional: labelled scans that
    neither network trains on).

    Raises:
        InputError: no training scans, no nodules at all.
    """
    # a copy: the threshold chosen on validation must not change the caller's config
    config = DetectionConfig.from_dict(config.to_dict()) if config else DetectionConfig()
    opts = options or DetectionTrainOptions()
    out = Path(out)
    train_items = list(datalist.get("training", []))
    val_items = list(datalist.get("validation", []))
    calibration_items = list(datalist.get("calibration", []))
    _check_options(opts)
    check_calibration_items(train_items, calibration_items)
    if not train_items:
        raise InputError("the datalist has no 'training' items")
    if not any(it.get("nodules") for it in train_items):
        raise InputError("no training scan has a nodule: the detector cannot learn what to find")
    if opts.candidates_from and Path(opts.candidates_from).resolve() == out.resolve():
        raise InputError("candidates_from is the output folder: write the new model elsewhere")
    kept_stage = (
        _load_candidate_stage(opts.candidates_from, opts.device) if opts.candidates_from else None
    )
    kept_network = (
        component_network(opts.candidates_from, "candidates") if opts.candidates_from else {}
    )
    if kept_stage is not None:  # its preprocessing too: the scans below are prepared for it
        config = config.with_candidate_stage_of(kept_stage[1])
    # the finer dot filter's candidates join after the networks, for the rescoring to score
    # (`finish_detector`); the U-Net's validation, the classifier's samples and its
    # validation see the networks' own candidates
    fine_candidates, config.fine_blob_candidates = config.fine_blob_candidates, 0
    given_items = train_items  # the copies pasted below are not part of the data hash
    if opts.paste_copies:
        train_items = train_items + pasted_copies(
            train_items,
            opts.paste_copies,
            opts.paste_per_scan,
            opts.paste_max_diameter_mm,
            opts.paste_attached_share,
            seed=opts.seed,
        )
        n_pasted = sum(n.get("pasted", False) for it in train_items for n in it["nodules"])
        _log(
            f"pasted {n_pasted} nodules into {len(train_items) - len(given_items)} copies of "
            f"the {len(given_items)} training scans"
        )
    torch.set_num_threads(max(1, min(torch.get_num_threads(), 16)))
    out.mkdir(parents=True, exist_ok=True)
    _log(f"preprocessing {len(val_items)} validation scans")
    val_scans = _preprocess_items(val_items, config)
    train_scans = None
    if opts.mine_negatives_from is not None:
        _log(f"preprocessing {len(train_items)} training scans for hard-negative mining")
        train_scans = _preprocess_items(train_items, config)
    if kept_stage is not None:
        unet = kept_stage[0]
        info1 = {"candidates_from": str(opts.candidates_from)}
        _log(f"[candidates] U-Net and candidate settings kept from {opts.candidates_from}")
    else:
        unet, info1 = _candidate_stage(train_items, val_scans, config, opts, out, train_scans)
    if val_scans and opts.candidate_thresholds and not opts.candidates_from:
        info1.update(choose_candidate_settings(unet, config, opts, val_scans))
    if train_scans is None:
        _log(f"preprocessing {len(train_items)} training scans for candidate mining")
        train_scans = _preprocess_items(train_items, config)
    classifier, info2 = _fp_stage(unet, train_scans, val_scans, config, opts, out)
    config.fine_blob_candidates = fine_candidates
    return finish_detector(
        out,
        unet,
        classifier,
        config,
        opts,
        train_scans,
        val_scans,
        networks={
            # a kept U-Net may be another network than this config builds (an ensemble's)
            "candidates": (
                (kept_network["name"], kept_network["kwargs"])
                if opts.candidates_from
                else ("unet3d", config.unet_kwargs)
            ),
            "fp_reduction": ("resnet3d", config.fp_kwargs),
        },
        made_by_params={"options": asdict(opts), "candidates": info1, "fp_reduction": info2},
        training_data=detection_data_hash(given_items, val_items, calibration_items),
        calibration_items=calibration_items,
    )


__all__ = [
    "BEST_WEIGHTS",
    "DetectionTrainOptions",
    "check_calibration_items",
    "choose_candidate_settings",
    "component_network",
    "detection_data_hash",
    "detections_cpm",
    "finish_detector",
    "fit_rescorer",
    "keeps_rescoring",
    "mine_classifier_samples",
    "mine_false_positives",
    "train_detector",
]


def component_network(path: str | Path, component: str) -> dict[str, Any]:
    """The network name and arguments of a model folder's component, as its manifest stores
    them (`{"name": ..., "kwargs": ...}`), to store it again in a folder that keeps it.

    Raises:
        InputError: the component is not a network the registry rebuilds (e.g. exported).
    """
    try:
        spec = read_manifest(path)["components"].get(component) or {}
    except (ModelFolderError, FileNotFoundError) as exc:
        raise InputError(str(exc)) from None
    network = spec.get("network")
    if not network or "name" not in network:
        raise InputError(f"{path}: its {component!r} is not a network to rebuild")
    return {"name": network["name"], "kwargs": network.get("kwargs", {})}


def _load_candidate_stage(path: str | Path, device: str) -> tuple[torch.nn.Module, DetectionConfig]:
    """The U-Net and configuration of a detection model folder (`candidates_from`)."""
    try:
        detector = NoduleDetector.from_model_folder(path, device=device)
    except (ModelFolderError, FileNotFoundError) as exc:
        raise InputError(f"candidates_from {path}: {exc}") from None
    return detector.unet, detector.config


def _fit_keeping_best(trainer, network: torch.nn.Module, cfg, opts) -> dict:
    """Run `trainer`, load its best weights back into `network`, summarise the run."""
    result = trainer.fit(resume=opts.resume)
    if result.best_weights is not None:
        network.load_state_dict(
            torch.load(result.best_weights, map_location=opts.device, weights_only=True)
        )
    return {
        "train_config": cfg.to_dict(),
        "best_metric": result.best_metric,
        "best_epoch": result.best_epoch,
        "steps": result.steps,
    }
