"""Write side of findings and feedback.

`findings_record` is called by the worker inside the transaction that finishes a job;
`feedback_submit` and `added_finding_create` by the API. Bad input raises an
`AnnotationError` (400 with the reason) before anything is written.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Sequence
from typing import TYPE_CHECKING, Any

from django.db import transaction

from annotations.exceptions import InvalidFeedback
from annotations.models import (
    GRADES,
    KIND_MODALITY,
    AddedFinding,
    FeedbackHistory,
    Finding,
    FindingFeedback,
    FindingKind,
    Verdict,
)
from annotations.selectors import series_geometry
from imaging.models import Series, Study

if TYPE_CHECKING:
    from ai_engine.registry.inference import FindingData
    from ai_engine.registry.models import Job

MAX_DIAMETER_MM = 300.0
MAX_TIME_SPENT_S = 24 * 3600.0


def findings_record(*, job: Job, findings: Sequence[FindingData]) -> list[Finding]:
    """Write a job's findings (call inside the transaction that marks the job succeeded)."""
    series_by_uid = {s.series_instance_uid: s for s in Series.objects.filter(study_id=job.study_id)}
    rows = []
    for index, data in enumerate(findings):
        series = series_by_uid.get(data.series_instance_uid)
        if series is None:
            raise ValueError(
                f"finding {index} names series {data.series_instance_uid} not in the study"
            )
        rows.append(
            Finding(
                project_id=job.project_id,
                study_id=job.study_id,
                series=series,
                job=job,
                model_version_id=job.model_version_id,
                index=index,
                kind=data.kind,
                center_lps_mm=data.center_lps_mm,
                center_voxel=data.center_voxel,
                diameter_mm=data.diameter_mm,
                score=data.score,
                grade=data.grade,
                class_probabilities=data.class_probabilities,
                heatmap_path=data.heatmap_path,
                mask_path=data.mask_path,
            )
        )
    return Finding.objects.bulk_create(rows)


# -- validation ---------------------------------------------------------------------------


def _check_point(value: Any, *, series: Series, field: str) -> list[float]:
    if not (isinstance(value, list | tuple) and len(value) == 3):
        raise InvalidFeedback(
            f"{field} must be [x, y, z] in patient LPS millimetres.", extra={"field": field}
        )
    try:
        point = [float(v) for v in value]
    except (TypeError, ValueError) as exc:
        raise InvalidFeedback(f"{field} must hold three numbers.", extra={"field": field}) from exc
    if not all(math.isfinite(v) for v in point):
        raise InvalidFeedback(f"{field} must hold finite numbers.", extra={"field": field})
    geometry = series_geometry(series=series)
    if not geometry.contains(point):
        voxel = [round(float(v), 1) for v in geometry.lps_to_voxel(point)]
        raise InvalidFeedback(
            f"{field} {point} lies outside series {series.series_instance_uid} "
            f"(voxel {voxel}, grid {list(geometry.shape)}).",
            extra={"field": field, "code": "invalid_geometry"},
        )
    return point


def _check_diameter(value: Any, *, field: str) -> float:
    try:
        diameter = float(value)
    except (TypeError, ValueError) as exc:
        raise InvalidFeedback(
            f"{field} must be a number of millimetres.", extra={"field": field}
        ) from exc
    if not (0 < diameter <= MAX_DIAMETER_MM):
        raise InvalidFeedback(
            f"{field} must be in (0, {MAX_DIAMETER_MM:g}] mm, got {diameter:g}.",
            extra={"field": field},
        )
    return diameter


def _check_grade(value: Any, *, field: str) -> int:
    if isinstance(value, bool) or value not in GRADES:
        raise InvalidFeedback(
            f"{field} must be one of {list(GRADES)}, got {value!r}.", extra={"field": field}
        )
    return int(value)


def _check_time_spent(value: Any) -> float | None:
    if value is None:
        return None
    try:
        seconds = float(value)
    except (TypeError, ValueError) as exc:
        raise InvalidFeedback(
            "time_spent_s must be a number of seconds.", extra={"field": "time_spent_s"}
        ) from exc
    if not (0 <= seconds <= MAX_TIME_SPENT_S) or not math.isfinite(seconds):
        raise InvalidFeedback(
            f"time_spent_s must be between 0 and {MAX_TIME_SPENT_S:g} s, got {seconds:g}.",
            extra={"field": "time_spent_s"},
        )
    return seconds


# -- feedback -----------------------------------------------------------------------------


def feedback_submit(
    *,
    finding: Finding,
    radiologist,
    verdict: str,
    corrected_center_lps_mm: Iterable[float] | None = None,
    corrected_diameter_mm: float | None = None,
    corrected_grade: int | None = None,
    comment: str = "",
    time_spent_s: float | None = None,
) -> FindingFeedback:
    """Record (or replace) a radiologist's verdict on a finding and keep it in the history.

    `correct` needs at least one correction that fits the finding's kind: a moved centre
    (inside the series) and/or a new diameter for a nodule, another grade for a grade.
    """
    if verdict not in Verdict.values:
        raise InvalidFeedback(
            f"verdict must be one of {Verdict.values}, got {verdict!r}.", extra={"field": "verdict"}
        )
    values: dict[str, Any] = {
        "verdict": verdict,
        "corrected_center_lps_mm": None,
        "corrected_diameter_mm": None,
        "corrected_grade": None,
        "comment": comment or "",
        "time_spent_s": _check_time_spent(time_spent_s),
    }
    has_correction = any(
        v is not None for v in (corrected_center_lps_mm, corrected_diameter_mm, corrected_grade)
    )
    if verdict != Verdict.CORRECT and has_correction:
        raise InvalidFeedback(
            "Corrections go with the verdict 'correct' only.", extra={"field": "verdict"}
        )
    if verdict == Verdict.CORRECT:
        if finding.kind == FindingKind.NODULE:
            if corrected_grade is not None:
                raise InvalidFeedback(
                    "A nodule has no grade to correct.", extra={"field": "corrected_grade"}
                )
            if corrected_center_lps_mm is None and corrected_diameter_mm is None:
                raise InvalidFeedback(
                    "Correcting a nodule needs corrected_center_lps_mm and/or corrected_diameter_mm.",
                    extra={"field": "verdict"},
                )
            if corrected_center_lps_mm is not None:
                values["corrected_center_lps_mm"] = _check_point(
                    corrected_center_lps_mm, series=finding.series, field="corrected_center_lps_mm"
                )
            if corrected_diameter_mm is not None:
                values["corrected_diameter_mm"] = _check_diameter(
                    corrected_diameter_mm, field="corrected_diameter_mm"
                )
        else:
            if corrected_center_lps_mm is not None or corrected_diameter_mm is not None:
                raise InvalidFeedback(
                    "A grade is corrected with corrected_grade only.", extra={"field": "verdict"}
                )
            grade = _check_grade(corrected_grade, field="corrected_grade")
            if grade == finding.grade:
                raise InvalidFeedback(
                    f"corrected_grade {grade} is the model's grade: use 'accept'.",
                    extra={"field": "corrected_grade"},
                )
            values["corrected_grade"] = grade
    with transaction.atomic():
        feedback, _ = FindingFeedback.objects.update_or_create(
            finding=finding, radiologist=radiologist, defaults=values
        )
        FeedbackHistory.objects.create(feedback=feedback, **values)
        project_id = finding.project_id
        transaction.on_commit(
            lambda: _after_label(project_id=project_id, version_id=finding.model_version_id)
        )
    return feedback


def added_finding_create(
    *,
    study: Study,
    series: Series,
    radiologist,
    kind: str,
    center_lps_mm: Iterable[float] | None = None,
    diameter_mm: float | None = None,
    grade: int | None = None,
    comment: str = "",
    time_spent_s: float | None = None,
) -> AddedFinding:
    """Record a finding the model missed (a nodule with centre and diameter, or a grade)."""
    if series.study_id != study.pk:
        raise InvalidFeedback("The series does not belong to the study.", extra={"field": "series"})
    if kind not in KIND_MODALITY:
        raise InvalidFeedback(
            f"kind must be one of {FindingKind.values}, got {kind!r}.", extra={"field": "kind"}
        )
    modality = KIND_MODALITY[kind]
    if series.modality != modality:
        raise InvalidFeedback(
            f"A {kind} is added on a {modality} series; this series is "
            f"{series.modality or 'of no recorded modality'}.",
            extra={"field": "series"},
        )
    values: dict[str, Any] = {
        "time_spent_s": _check_time_spent(time_spent_s),
        "comment": comment or "",
    }
    if kind == FindingKind.NODULE:
        if grade is not None:
            raise InvalidFeedback("A nodule has no grade.", extra={"field": "grade"})
        if center_lps_mm is None or diameter_mm is None:
            raise InvalidFeedback(
                "A nodule needs center_lps_mm and diameter_mm.", extra={"field": "center_lps_mm"}
            )
        values["center_lps_mm"] = _check_point(center_lps_mm, series=series, field="center_lps_mm")
        values["diameter_mm"] = _check_diameter(diameter_mm, field="diameter_mm")
    else:
        if center_lps_mm is not None or diameter_mm is not None:
            raise InvalidFeedback("A grade has no position or size.", extra={"field": "kind"})
        values["grade"] = _check_grade(grade, field="grade")
    with transaction.atomic():
        added = AddedFinding.objects.create(
            project_id=study.project_id,
            study=study,
            series=series,
            radiologist=radiologist,
            kind=kind,
            **values,
        )
        project_id = study.project_id
        transaction.on_commit(lambda: _after_label(project_id=project_id, version_id=None))
    return added


def _after_label(*, project_id: int, version_id: int | None) -> None:
    """After a label is committed: refresh monitoring figures and start retraining when due."""
    from ai_engine.registry import monitoring, services

    if version_id is not None:
        monitoring.version_check(version_id=version_id)
    services.retraining_start_if_due(project_id=project_id)
