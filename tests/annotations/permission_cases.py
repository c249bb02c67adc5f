"""Permission rows of the findings/feedback API: members read; radiologists give feedback."""

from pathlib import Path

from django.conf import settings

from annotations.models import Finding
from imaging.models import Series
from tests.annotations.factories import make_finding, make_study
from tests.support.permissions import Case, table

PERMISSION_FILE = "ai/permission-cases/map.nii.gz"


def _finding(project):
    return {"pk": make_finding(project).pk}


def _finding_with_files(project):
    path = Path(settings.MEDIA_ROOT) / PERMISSION_FILE
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(b"\x1f\x8b not really a NIfTI; only access is tested here")
    finding = make_finding(project)
    Finding.objects.filter(pk=finding.pk).update(
        heatmap_path=PERMISSION_FILE, mask_path=PERMISSION_FILE
    )
    return {"pk": finding.pk}


def _study(project):
    return {"study_uid": make_study(project).study_instance_uid}


def _missed_nodule(project):
    make_study(project)
    series = Series.objects.filter(study__project=project).first()
    return {
        "series_instance_uid": series.series_instance_uid,
        "kind": "nodule",
        "center_lps_mm": [10, 10, 3],
        "diameter_mm": 6,
    }


CASES = [
    Case("finding-list", "GET", table(200, 200, 200)),
    Case("finding-detail", "GET", table(200, 200, 200), setup=_finding),
    Case("finding-heatmap", "GET", table(200, 200, 200), setup=_finding_with_files),
    Case("finding-mask", "GET", table(200, 200, 200), setup=_finding_with_files),
    Case("finding-feedback", "GET", table(200, 200, 200), setup=_finding),
    Case(
        "finding-feedback",
        "POST",
        table(403, 201, 403),
        setup=_finding,
        data=lambda p: {"verdict": "accept", "time_spent_s": 12.5},
    ),
    Case("finding-feedback-history", "GET", table(200, 200, 200), setup=_finding),
    Case("study-findings", "GET", table(200, 200, 200), setup=_study),
    Case("added-finding-list", "GET", table(200, 200, 200)),
    Case(
        "added-finding-list", "POST", table(403, 201, 403), setup=lambda p: {}, data=_missed_nodule
    ),
]
