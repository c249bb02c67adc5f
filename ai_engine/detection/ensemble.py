"""Detection ensembles: several trained detection models as one model folder.

Each member is a detection model trained on its own (another seed, or other settings with the
same input). The ensemble's U-Net is the mean of the members' foreground probabilities and its
classifier the mean of their nodule probabilities (`ai_engine.networks.ensemble`); what was
chosen or fitted on one member's outputs is chosen and fitted again on the ensemble's: the
candidate threshold, peak distance and U-Net flips on the validation scans, the rescoring on
the training scans' candidates, the score combination on validation. The result is an
ordinary detection model folder (`made_by_params["ensemble_of"]` names the members and their
manifest digests), so `predict`, `evaluate`, the worker and the registry take it as they take
any other.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import asdict
from pathlib import Path
from typing import Any

from ai_engine.detection.config import DetectionConfig
from ai_engine.detection.pipeline import NoduleDetector
from ai_engine.detection.train import (
    DetectionTrainOptions,
    _log,
    _preprocess_items,
    check_calibration_items,
    choose_candidate_settings,
    component_network,
    detection_data_hash,
    finish_detector,
)
from ai_engine.errors import InputError, ModelFolderError
from ai_engine.modelfolder import manifest_digest
from ai_engine.networks.ensemble import MeanEnsemble

__all__ = ["SHARED_FIELDS", "ensemble_detector"]

#: what every member must share: the input both networks see and the classifier's patch
SHARED_FIELDS = ("spacing_mm", "hu_range", "body_threshold_hu", "blob_sigmas_mm", "fp_patch_size")


def _load_members(paths: Sequence[str | Path], device: str) -> list[NoduleDetector]:
    if len(paths) < 2:
        raise InputError(f"an ensemble needs at least 2 detection models, got {len(paths)}")
    resolved = [Path(p).resolve() for p in paths]
    if len(set(resolved)) != len(resolved):
        raise InputError("an ensemble member is named twice")
    members = []
    for path in paths:
        try:
            member = NoduleDetector.from_model_folder(path, device=device)
        except (ModelFolderError, FileNotFoundError) as exc:
            raise InputError(f"ensemble member {path}: {exc}") from None
        if member.classifier is None:
            raise InputError(f"ensemble member {path} has no false-positive classifier")
        members.append(member)
    first = members[0].config
    for path, member in zip(paths[1:], members[1:], strict=True):
        differ = [f for f in SHARED_FIELDS if getattr(member.config, f) != getattr(first, f)]
        if differ:
            raise InputError(
                f"ensemble member {path} differs from {paths[0]} in {differ}: the members must "
                "see the same input"
            )
    return members


def ensemble_detector(
    members: Sequence[str | Path],
    datalist: dict[str, list[dict[str, Any]]],
    out: str | Path,
    options: DetectionTrainOptions | None = None,
) -> Path:
    """Combine the detection model folders `members` into one model folder at `out`.

    The candidate settings are chosen on `datalist["validation"]` (each member's own are
    kept where there is none), the rescoring (`options.rescore`) is fitted on the candidates
    of `datalist["training"]`, and the score combination is chosen as `train_detector` chooses
    it. Nothing is trained: the networks are the members'.

    Raises:
        InputError: fewer than two members, a member named twice, a folder that is not a
            detection model with a classifier, members that see different inputs, no training
            scans, or `out` is one of the members.
    """
    opts = options or DetectionTrainOptions()
    out = Path(out)
    loaded = _load_members(members, opts.device)
    if any(out.resolve() == Path(m).resolve() for m in members):
        raise InputError("the output folder is one of the members: write the ensemble elsewhere")
    train_items = list(datalist.get("training", []))
    val_items = list(datalist.get("validation", []))
    calibration_items = list(datalist.get("calibration", []))
    if not train_items:
        raise InputError("the datalist has no 'training' items to fit the ensemble's rescoring")
    check_calibration_items(train_items, calibration_items)
    # the first member's settings, less what is fitted again on the ensemble's outputs
    config = DetectionConfig.from_dict(
        {**loaded[0].config.to_dict(), "rescore": None, "combine": "geometric"}
    )
    unet = MeanEnsemble([m.unet for m in loaded], "softmax").eval()
    classifier = MeanEnsemble([m.classifier for m in loaded], "sigmoid").eval()
    networks = {
        name: (
            "mean_ensemble",
            {"members": [component_network(m, name) for m in members], "output": output},
        )
        for name, output in (("candidates", "softmax"), ("fp_reduction", "sigmoid"))
    }
    _log(f"[ensemble] {len(loaded)} members; preprocessing {len(val_items)} validation scans")
    val_scans = _preprocess_items(val_items, config)
    info1: dict[str, Any] = {}
    if val_scans and opts.candidate_thresholds:
        info1 = choose_candidate_settings(unet, config, opts, val_scans)
    _log(f"[ensemble] preprocessing {len(train_items)} training scans for the rescoring")
    train_scans = _preprocess_items(train_items, config)
    return finish_detector(
        out,
        unet,
        classifier,
        config,
        opts,
        train_scans,
        val_scans,
        networks=networks,
        made_by_params={
            "ensemble_of": [
                {"path": str(Path(m).resolve()), "manifest_sha256": manifest_digest(m)}
                for m in members
            ],
            "options": asdict(opts),
            "candidates": info1,
            "fp_reduction": {},
        },
        training_data=detection_data_hash(train_items, val_items, calibration_items),
        calibration_items=calibration_items,
    )
