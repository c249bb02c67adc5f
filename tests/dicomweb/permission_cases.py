"""Permission rows for every DICOMweb proxy route: members (any role) 200, others 404/401.

Each case stores one small series in the test Orthanc (`needs=("orthanc",)`) and indexes
it in the case's project, so a 200 means the proxy really reached Orthanc.
"""

from __future__ import annotations

from functools import cache

from django.conf import settings

from tests.dicomweb.dicom_factory import CtSeries, index_series, make_ct_series, store_series
from tests.support.permissions import Case, table


@cache
def _series() -> CtSeries:
    return make_ct_series(slices=2, rows=32, columns=32, patient_id="PERM-1")


def _stored(project) -> CtSeries:
    series = _series()
    store_series(
        series,
        url=settings.ORTHANC_URL,
        auth=(settings.ORTHANC_USERNAME, settings.ORTHANC_PASSWORD),
    )
    index_series(project, series)
    return series


def _project_study(project) -> dict[str, str]:
    _stored(project)
    return {}


def _study(project) -> dict[str, str]:
    series = _stored(project)
    return {"study": series.study_instance_uid}


def _series_kwargs(project) -> dict[str, str]:
    series = _stored(project)
    return {"study": series.study_instance_uid, "series": series.series_instance_uid}


def _instance(project) -> dict[str, str]:
    series = _stored(project)
    return {
        "study": series.study_instance_uid,
        "series": series.series_instance_uid,
        "instance": series.sop_instance_uids[0],
    }


def _frames(project) -> dict[str, str]:
    return {**_instance(project), "frames": "1"}


def _bulk(project) -> dict[str, str]:
    return {**_instance(project), "tag": "7fe00010"}


MEMBERS = table(200, 200, 200)
ORTHANC = ("orthanc",)

CASES = [
    *[
        Case(name, "GET", MEMBERS, setup=setup, needs=ORTHANC)
        for name, setup in (
            ("dicomweb-search-for-studies", _project_study),
            ("dicomweb-search-for-series", _study),
            ("dicomweb-search-for-study-instances", _study),
            ("dicomweb-search-for-instances", _series_kwargs),
            ("dicomweb-retrieve-study", _study),
            ("dicomweb-retrieve-series", _series_kwargs),
            ("dicomweb-retrieve-instance", _instance),
            ("dicomweb-retrieve-study-metadata", _study),
            ("dicomweb-retrieve-series-metadata", _series_kwargs),
            ("dicomweb-retrieve-instance-metadata", _instance),
            ("dicomweb-retrieve-instance-frames", _frames),
            ("dicomweb-retrieve-bulkdata", _bulk),
            *[
                (f"dicomweb-retrieve-{level}-{kind}", setup)
                for kind in ("rendered", "thumbnail")
                for level, setup in (
                    ("study", _study),
                    ("series", _series_kwargs),
                    ("instance", _instance),
                    ("frames", _frames),
                )
            ],
        )
    ],
]
