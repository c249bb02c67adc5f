"""Read side of findings and feedback: series geometry, queries scoped to a project."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from django.db.models import QuerySet

from ai_engine.io.volume import affine_from_geometry
from annotations.exceptions import InvalidGeometry
from annotations.models import AddedFinding, FeedbackHistory, Finding, FindingFeedback
from imaging.models import Instance, Series
from projects.models import Project


@dataclass(frozen=True)
class SeriesGeometry:
    """The voxel grid of a series in patient space, from the study index (no Orthanc call)."""

    affine: np.ndarray  # voxel (i, j, k, 1) -> LPS mm, as ai_engine.io.Volume
    shape: tuple[int, int, int]  # (columns, rows, slices)

    def lps_to_voxel(self, point_lps_mm: list[float]) -> np.ndarray:
        homogeneous = np.append(np.asarray(point_lps_mm, dtype=np.float64), 1.0)
        return (np.linalg.inv(self.affine) @ homogeneous)[:3]

    def contains(self, point_lps_mm: list[float]) -> bool:
        """True when the point lies within the volume (voxel centres +- half a voxel)."""
        voxel = self.lps_to_voxel(point_lps_mm)
        upper = np.asarray(self.shape, dtype=np.float64) - 0.5
        return bool(np.all(voxel >= -0.5) and np.all(voxel <= upper))


def series_geometry(*, series: Series) -> SeriesGeometry:
    """Grid of `series` from its indexed PixelSpacing, orientation and slice positions."""
    positions = [
        p
        for p in Instance.objects.filter(series=series).values_list(
            "image_position_patient", flat=True
        )
        if p
    ]
    iop = series.image_orientation_patient
    if (
        not positions
        or not iop
        or not series.pixel_spacing
        or not series.rows
        or not series.columns
    ):
        raise InvalidGeometry(
            f"Series {series.series_instance_uid} has no geometry in the index "
            "(orientation, spacing or slice positions missing); it cannot take positions."
        )
    row_dir = np.asarray(iop[:3], dtype=np.float64)
    col_dir = np.asarray(iop[3:], dtype=np.float64)
    normal = np.cross(row_dir, col_dir)
    points = sorted((np.asarray(p, dtype=np.float64) for p in positions), key=lambda p: p @ normal)
    if len(points) > 1:
        step = (points[-1] - points[0]) / (len(points) - 1)
    else:
        step = normal * float(series.slice_thickness or series.spacing_between_slices or 1.0)
    affine = affine_from_geometry(points[0], iop, series.pixel_spacing, step)
    return SeriesGeometry(affine=affine, shape=(int(series.columns), int(series.rows), len(points)))


def findings_of_project(*, project: Project) -> QuerySet[Finding]:
    return (
        Finding.objects.filter(project=project)
        .select_related("series", "study", "model_version")
        .prefetch_related("feedback")
    )


def feedback_of_project(*, project: Project) -> QuerySet[FindingFeedback]:
    return FindingFeedback.objects.filter(finding__project=project).select_related(
        "finding", "radiologist"
    )


def feedback_history(*, feedback: FindingFeedback) -> QuerySet[FeedbackHistory]:
    return FeedbackHistory.objects.filter(feedback=feedback)


def added_findings_of_project(*, project: Project) -> QuerySet[AddedFinding]:
    return AddedFinding.objects.filter(project=project).select_related("series", "radiologist")
