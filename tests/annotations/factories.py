"""Rows for registry and annotation tests: studies with geometry, versions, jobs, findings.

Findings made here are test fixtures for the API and services only; the integration tests
get theirs from a real model run by a real worker.
"""

from __future__ import annotations

import itertools

from pydicom.uid import generate_uid

from ai_engine.registry.models import Job, ModelTask, ModelVersion
from annotations.models import Finding, FindingKind
from imaging.models import Instance, Patient, Series, Study

_counter = itertools.count(1)


def make_study(
    project, *, modality: str = "CT", slices: int = 10, rows: int = 64, columns: int = 64
) -> Study:
    """A study with one series on a 0.7 mm x 0.7 mm x 1 mm grid starting at (0, 0, 0) LPS."""
    n = next(_counter)
    patient, _ = Patient.objects.get_or_create(project=project, patient_id=f"P{n}")
    study = Study.objects.create(
        project=project,
        patient=patient,
        study_instance_uid=generate_uid(),
        modalities_in_study=modality,
        number_of_series=1,
        number_of_instances=slices,
    )
    series = Series.objects.create(
        study=study,
        series_instance_uid=generate_uid(),
        modality=modality,
        series_number=1,
        number_of_instances=slices,
        rows=rows,
        columns=columns,
        pixel_spacing=[0.7, 0.7],
        slice_thickness=1.0,
        image_orientation_patient=[1, 0, 0, 0, 1, 0],
    )
    Instance.objects.bulk_create(
        Instance(
            series=series,
            sop_instance_uid=generate_uid(),
            sop_class_uid="1.2.840.10008.5.1.4.1.1.2",
            instance_number=k + 1,
            image_position_patient=[0.0, 0.0, float(k)],
        )
        for k in range(slices)
    )
    return study


def make_version(
    project,
    *,
    task: str = ModelTask.NODULE_DETECTION,
    status: str = "champion",
    metric: float = 0.5,
    version: int | None = None,
) -> ModelVersion:
    number = version or (ModelVersion.objects.filter(project=project, task=task).count() + 1)
    return ModelVersion.objects.create(
        project=project,
        task=task,
        version=number,
        status=status,
        provenance=ModelVersion.Provenance.TRAINED,
        path=f"/nonexistent/{project.slug}/{task}/{number}",
        validation_metric_name="cpm",
        validation_metric=metric,
        validation_set_hash="valset",
    )


def make_job(study: Study, version: ModelVersion, *, status: str = Job.Status.SUCCEEDED) -> Job:
    return Job.objects.create(
        project=study.project,
        kind=Job.Kind.INFERENCE,
        task=version.task,
        study=study,
        model_version=version,
        status=status,
    )


def make_finding(
    project,
    *,
    study: Study | None = None,
    kind: str = FindingKind.NODULE,
    index: int = 0,
    job: Job | None = None,
) -> Finding:
    study = study or make_study(project, modality="CT" if kind == FindingKind.NODULE else "MR")
    if job is None:
        task = ModelTask.NODULE_DETECTION if kind == FindingKind.NODULE else ModelTask.TUMOR_GRADING
        version = ModelVersion.objects.filter(project=project, task=task, status="champion").first()
        job = make_job(study, version or make_version(project, task=task))
    series = study.series.first()
    values = (
        {
            "center_lps_mm": [20.0, 20.0, 5.0],
            "center_voxel": [28.6, 28.6, 5.0],
            "diameter_mm": 8.0,
            "score": 0.9,
        }
        if kind == FindingKind.NODULE
        else {"grade": 2, "score": 0.7, "class_probabilities": {"1": 0.1, "2": 0.7, "3": 0.2}}
    )
    return Finding.objects.create(
        project=project,
        study=study,
        series=series,
        job=job,
        model_version=job.model_version,
        index=index,
        kind=kind,
        **values,
    )
