"""Reads of the study index, always scoped to one project."""

from __future__ import annotations

from django.db.models import QuerySet

from imaging.models import QuarantinedFile, Series, Study
from projects.models import Project


def studies_of(*, project: Project) -> QuerySet[Study]:
    """The project's studies with their patient (one query per page, no N+1)."""
    return Study.objects.filter(project=project).select_related("patient")


def study_of(*, project: Project, study_instance_uid: str) -> Study:
    """One study of the project (Study.DoesNotExist otherwise: 404 for other projects)."""
    return studies_of(project=project).get(study_instance_uid=study_instance_uid)


def series_of(*, study: Study) -> QuerySet[Series]:
    return Series.objects.filter(study=study).order_by("series_number", "id")


def quarantined_files_of(*, project: Project) -> QuerySet[QuarantinedFile]:
    return QuarantinedFile.objects.filter(project=project)
