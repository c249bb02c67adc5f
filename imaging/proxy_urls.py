"""URL map of the DICOMweb proxy: one DICOMweb root per project, `/dicom-web/projects/<slug>`.

Names follow the DICOMweb verbs (`dicomweb-search-for-studies`,
`dicomweb-retrieve-instance-frames`, ...). See docs/dicomweb-proxy.md.
"""

from __future__ import annotations

from django.urls import path, register_converter

from imaging import proxy


class UidConverter:
    """A DICOM UID: digits in dot-separated components (at most 64 characters)."""

    regex = r"[0-9]+(?:\.[0-9]+){0,31}"

    def to_python(self, value: str) -> str:
        if len(value) > 64:
            raise ValueError("a UID has at most 64 characters")
        return value

    def to_url(self, value: str) -> str:
        return value


class FrameListConverter:
    """A WADO-RS frame list: "1" or "1,2,3"."""

    regex = r"[0-9]{1,9}(?:,[0-9]{1,9}){0,999}"

    def to_python(self, value: str) -> str:
        return value

    def to_url(self, value: str) -> str:
        return value


class BulkTagConverter:
    """A bulk data path as Orthanc writes it: a tag, or tag/index/tag... into sequences."""

    regex = r"[0-9A-Fa-f]{8}(?:/[0-9]{1,6}/[0-9A-Fa-f]{8}){0,8}"

    def to_python(self, value: str) -> str:
        return value

    def to_url(self, value: str) -> str:
        return value


register_converter(UidConverter, "uid")
register_converter(FrameListConverter, "frames")
register_converter(BulkTagConverter, "bulktag")

ROOT = "dicom-web/projects/<slug:project>"
STUDY = f"{ROOT}/studies/<uid:study>"
SERIES = f"{STUDY}/series/<uid:series>"
INSTANCE = f"{SERIES}/instances/<uid:instance>"
FRAMES = f"{INSTANCE}/frames/<frames:frames>"
FRAMES_ROUTE_NAME = "dicomweb-retrieve-instance-frames"  # also matched by proxy_fastlane

urlpatterns = [
    # QIDO-RS
    path(f"{ROOT}/studies", proxy.SearchForStudies.as_view(), name="dicomweb-search-for-studies"),
    path(f"{STUDY}/series", proxy.SearchForSeries.as_view(), name="dicomweb-search-for-series"),
    path(
        f"{STUDY}/instances",
        proxy.SearchForStudyInstances.as_view(),
        name="dicomweb-search-for-study-instances",
    ),
    path(
        f"{SERIES}/instances",
        proxy.SearchForInstances.as_view(),
        name="dicomweb-search-for-instances",
    ),
    # WADO-RS retrieve (multipart/related DICOM)
    path(STUDY, proxy.RetrieveResource.as_view(), name="dicomweb-retrieve-study"),
    path(SERIES, proxy.RetrieveResource.as_view(), name="dicomweb-retrieve-series"),
    path(INSTANCE, proxy.RetrieveResource.as_view(), name="dicomweb-retrieve-instance"),
    # WADO-RS metadata (application/dicom+json)
    path(
        f"{STUDY}/metadata",
        proxy.RetrieveMetadata.as_view(),
        name="dicomweb-retrieve-study-metadata",
    ),
    path(
        f"{SERIES}/metadata",
        proxy.RetrieveMetadata.as_view(),
        name="dicomweb-retrieve-series-metadata",
    ),
    path(
        f"{INSTANCE}/metadata",
        proxy.RetrieveMetadata.as_view(),
        name="dicomweb-retrieve-instance-metadata",
    ),
    # WADO-RS frames and bulk data
    path(FRAMES, proxy.RetrieveInstanceFrames.as_view(), name=FRAMES_ROUTE_NAME),
    path(
        f"{INSTANCE}/bulk/<bulktag:tag>",
        proxy.RetrieveBulkdata.as_view(),
        name="dicomweb-retrieve-bulkdata",
    ),
    # WADO-RS rendered (Orthanc) and thumbnail (Orthanc's rendered, 128x128 viewport)
    *[
        path(f"{prefix}/{kind}", view.as_view(), name=f"dicomweb-retrieve-{level}-{kind}")
        for kind, view in (
            ("rendered", proxy.RetrieveRendered),
            ("thumbnail", proxy.RetrieveThumbnail),
        )
        for level, prefix in (
            ("study", STUDY),
            ("series", SERIES),
            ("instance", INSTANCE),
            ("frames", FRAMES),
        )
    ],
]
