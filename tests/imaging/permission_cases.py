"""Permission rows of the imaging API (upload, studies, series, quarantine)."""

from tests.imaging.factories import SeriesFactory, StudyFactory
from tests.support.permissions import Case, table


def _study(project):
    return {"study_uid": StudyFactory(project=project).study_instance_uid}


def _study_with_series(project):
    return {
        "study_uid": SeriesFactory(study=StudyFactory(project=project)).study.study_instance_uid
    }


CASES = [
    # An empty upload gets 400 for those allowed to upload (nothing reaches Orthanc).
    Case("upload", "POST", table(400, 403, 400), data=lambda p: {}, format="multipart"),
    Case("study-list", "GET", table(200, 200, 200)),
    Case("study-detail", "GET", table(200, 200, 200), setup=_study),
    # The study is not in Orthanc (index row only): Orthanc answers 404, the index row goes.
    Case("study-detail", "DELETE", table(204, 403, 403), setup=_study, needs=("orthanc",)),
    Case("series-list", "GET", table(200, 200, 200), setup=_study_with_series),
    Case("quarantine-list", "GET", table(200, 403, 403)),
]
