"""The one door from Django to ai_engine's predict functions: `run_inference(version, study)`.

`load_study_input(version, study)` picks the study's series that fit the model's task and
fetches them from Orthanc as the one Volume the task's models take (`imaging.volumes`):
the CT series in HU for detection, the T1/T1c/T2/FLAIR stack on the T1 grid for grading.
Inference and active-learning scoring (`ai_engine/registry/active_learning.py`) both load
through it. `run_inference` then runs the model folder's predict function and turns its
output into `FindingData` with heat maps (and masks) written as NIfTI on the series grid
under `out_dir`. Nothing else on the Django side imports ai_engine's detection or grading code.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
from django.conf import settings

from ai_engine.registry.exceptions import InferenceUnavailable, StudyNotReady
from ai_engine.registry.models import ModelTask, ModelVersion

if TYPE_CHECKING:
    from ai_engine.io import Volume
    from imaging.models import Series

Progress = Callable[[float, str], None]


@dataclass(frozen=True)
class FindingData:
    """One finding as the worker writes it (plain data; paths relative to MEDIA_ROOT)."""

    kind: str
    series_instance_uid: str
    center_lps_mm: list[float] | None = None
    center_voxel: list[float] | None = None
    diameter_mm: float | None = None
    score: float | None = None
    grade: int | None = None
    class_probabilities: dict[str, float] | None = None
    heatmap_path: str = ""
    mask_path: str = ""
    extra: dict[str, Any] = field(default_factory=dict)


def _noop(fraction: float, message: str = "") -> None:
    return None


def _relative(path: Path) -> str:
    return str(Path(path).resolve().relative_to(Path(settings.MEDIA_ROOT).resolve()))


def ct_series_for_detection(study):
    """The CT series with the most instances (the thin-slice chest series)."""
    series = study.series.filter(modality="CT").order_by("-number_of_instances", "pk").first()
    if series is None:
        raise StudyNotReady(f"Study {study.study_instance_uid} has no CT series.")
    return series


def mr_series_for_grading(study) -> dict[str, Any]:
    """{T1, T1c, T2, FLAIR: Series} identified from the indexed series descriptions."""
    from pydicom.dataset import Dataset

    from ai_engine.io.dicom import MR_SEQUENCES, identify_mr_sequence

    found: dict[str, Any] = {}
    for series in study.series.filter(modality="MR").order_by("series_number", "pk"):
        header = Dataset()
        header.SeriesDescription = series.series_description
        name = identify_mr_sequence(header)
        if name and name not in found:
            found[name] = series
    missing = [name for name in MR_SEQUENCES if name not in found]
    if missing:
        raise StudyNotReady(
            f"Study {study.study_instance_uid} lacks MR sequences {missing} for grading."
        )
    return found


def input_series(model_version: ModelVersion, study) -> list[Series]:
    """The series of `study` that `model_version`'s task reads (first one: the output grid).

    Database only (nothing is fetched). Raises StudyNotReady when the study lacks them and
    InferenceUnavailable for a task without inference.
    """
    from ai_engine.io.dicom import MR_SEQUENCES

    if model_version.task == ModelTask.NODULE_DETECTION:
        return [ct_series_for_detection(study)]
    if model_version.task == ModelTask.TUMOR_GRADING:
        found = mr_series_for_grading(study)
        return [found[name] for name in MR_SEQUENCES]
    raise InferenceUnavailable(f"No inference for task {model_version.task!r}.")


def load_study_input(
    model_version: ModelVersion, study, progress: Progress = _noop
) -> tuple[Series, Volume]:
    """The study's input Volume for `model_version`'s task, fetched from Orthanc.

    Returns `(series, volume)`: `series` is the series whose grid the volume (and so the
    model's output) is on. Detection: the CT series in HU. Grading: T1, T1c, T2 and FLAIR
    resampled onto the T1 grid and stacked as 4 channels (meta `channel_names`).
    `progress(fraction, message)` gets fractions of the loading alone (0 to <1). Raises
    StudyNotReady (series missing), `imaging.exceptions.OrthancUnavailable` (Orthanc
    unreachable), `OrthancError` and `ai_engine.errors.InputError` (series unreadable).
    """
    from ai_engine.io import Volume, resample_to_grid
    from ai_engine.io.dicom import MR_SEQUENCES
    from imaging.volumes import load_series_volume

    series = input_series(model_version, study)
    if model_version.task == ModelTask.NODULE_DETECTION:
        progress(0.0, f"Loading series {series[0].series_instance_uid} from Orthanc")
        return series[0], load_series_volume(series[0])
    volumes = {}
    for n, (name, one) in enumerate(zip(MR_SEQUENCES, series, strict=True)):
        progress(n / len(MR_SEQUENCES), f"Loading {name} from Orthanc")
        volumes[name] = load_series_volume(one)
    reference = volumes[MR_SEQUENCES[0]]
    stack = np.stack(
        [
            resample_to_grid(volumes[name], reference.affine, reference.spatial_shape)
            for name in MR_SEQUENCES
        ]
    )
    return series[0], Volume(stack, reference.affine, {"channel_names": list(MR_SEQUENCES)})


def _within(progress: Progress, low: float, high: float) -> Progress:
    """`progress` for a step that runs from `low` to `high` of the whole job."""

    def scaled(fraction: float, message: str = "") -> None:
        progress(low + (high - low) * fraction, message)

    return scaled


def run_inference(
    model_version: ModelVersion,
    study,
    *,
    out_dir: Path,
    progress: Progress = _noop,
) -> list[FindingData]:
    """Run `model_version` on `study`; heat maps and masks go under `out_dir` (in MEDIA_ROOT).

    Raises `imaging.exceptions.OrthancUnavailable` when Orthanc cannot be reached (the task
    retries) and `JobCancelled` from `progress` when the job was cancelled.
    """
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    if model_version.task == ModelTask.NODULE_DETECTION:
        return _run_detection(model_version, study, out_dir, progress)
    if model_version.task == ModelTask.TUMOR_GRADING:
        return _run_grading(model_version, study, out_dir, progress)
    raise InferenceUnavailable(f"No inference for task {model_version.task!r}.")


def _run_detection(
    version: ModelVersion, study, out_dir: Path, progress: Progress
) -> list[FindingData]:
    """Nodule detection on the study's CT series: one finding per detection, with the
    study's label mask and the false-positive classifier's Grad-CAM on each candidate
    patch placed back into one heat map on the series grid (shared by the study's nodule
    findings; no classifier in the model -> no heat map, said in `extra`)."""
    from ai_engine.detection.explain import explain_findings
    from ai_engine.detection.pipeline import NoduleDetector, findings_on_source
    from ai_engine.explain import save_heatmap
    from ai_engine.io import Volume, save_nifti

    series, volume = load_study_input(version, study, _within(progress, 0.05, 0.3))
    progress(0.3, "Detecting nodules")
    detector = NoduleDetector.from_model_folder(version.path)
    result = detector.detect(volume)
    findings, label_map = findings_on_source(result, volume, detector.config.finding_threshold)
    mask_path = heatmap_path = ""
    extra: dict[str, Any] = {}
    if findings:
        progress(0.7, "Explaining (Grad-CAM of the false-positive classifier)")
        if detector.classifier is not None:
            heat = explain_findings(detector, volume, findings, image=result.image)
            heatmap_file = out_dir / f"{series.series_instance_uid}-detection-gradcam.nii.gz"
            save_heatmap(heat, heatmap_file)
            heatmap_path = _relative(heatmap_file)
        else:
            extra["explanation"] = "the model has no false-positive classifier to explain"
        progress(0.85, "Writing masks")
        mask_file = out_dir / f"{series.series_instance_uid}-mask.nii.gz"
        save_nifti(Volume(label_map.astype(np.float32), volume.affine), mask_file, dtype=np.uint16)
        mask_path = _relative(mask_file)
    return [
        FindingData(
            kind="nodule",
            series_instance_uid=series.series_instance_uid,
            center_lps_mm=[float(v) for v in item["center_lps_mm"]],
            center_voxel=[float(v) for v in item["center_voxel"]],
            diameter_mm=float(item["diameter_mm"]),
            score=float(item["score"]),
            mask_path=mask_path,
            heatmap_path=heatmap_path,
            extra=dict(extra),
        )
        for item in findings
    ]


def _run_grading(
    version: ModelVersion, study, out_dir: Path, progress: Progress
) -> list[FindingData]:
    from ai_engine.explain import save_heatmap
    from ai_engine.grading.data import preprocess
    from ai_engine.grading.explain import explain_study
    from ai_engine.grading.model import load_grading_model

    # Loading the 4 sequences reports 0.05, 0.15, 0.25, 0.35.
    series, volume = load_study_input(version, study, _within(progress, 0.05, 0.45))
    progress(0.5, "Grading")
    model = load_grading_model(version.path)
    prepared = preprocess(volume, model.spatial_size, model.channels)
    prediction = model.grade(prepared)
    progress(0.7, "Explaining (Grad-CAM)")
    explanation = explain_study(model, prepared, grade=prediction["grade"])
    heatmap = out_dir / f"{series.series_instance_uid}-gradcam.nii.gz"
    save_heatmap(explanation.heat_source, heatmap)
    probabilities = {str(k): float(v) for k, v in prediction["probabilities"].items()}
    grade = int(prediction["grade"])
    return [
        FindingData(
            kind="grade",
            series_instance_uid=series.series_instance_uid,
            grade=grade,
            score=probabilities[str(grade)],
            class_probabilities=probabilities,
            heatmap_path=_relative(heatmap),
            extra={"missing_sequences": prediction["missing_sequences"]},
        )
    ]
