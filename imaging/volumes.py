"""Series from Orthanc as `ai_engine.io.Volume`s (WADO-RS retrieve, then `load_dicom_series`)."""

from __future__ import annotations

import requests

from imaging.exceptions import OrthancError, OrthancUnavailable
from imaging.models import Series
from imaging.orthanc import OrthancClient


def load_series_volume(series: Series, *, client: OrthancClient | None = None):
    """Retrieve every instance of `series` by WADO-RS into memory and stack them.

    Returns an `ai_engine.io.Volume` (float32 (X, Y, Z) in HU, LPS affine). The pixel rule
    is `load_dicom_series`'s, the same as for files on disk: rescale first, then a
    MONOCHROME1 series is inverted about the rescaled range of its stored values so higher
    values are brighter as in MONOCHROME2 (PS3.3 C.7.6.3.1.2, C.11.1); the Volume's meta
    says so (`photometric_interpretation`, `inverted`, `inversion`; `units` is then empty).
    Raises OrthancUnavailable / OrthancError when Orthanc cannot serve the series, and
    `ai_engine.errors.InputError` when the instances do not form one image volume.
    """
    from ai_engine.io import load_dicom_series

    client = client or OrthancClient()
    try:
        dicomweb = client.dicomweb()
        dicomweb.set_http_retry_params(retry=False)
        datasets = dicomweb.retrieve_series(
            study_instance_uid=series.study.study_instance_uid,
            series_instance_uid=series.series_instance_uid,
        )
    except (requests.ConnectionError, requests.Timeout) as exc:
        raise OrthancUnavailable(
            f"Orthanc at {client.url} is unreachable ({type(exc).__name__}); try again later."
        ) from exc
    except requests.HTTPError as exc:
        status = exc.response.status_code if exc.response is not None else "?"
        raise OrthancError(
            f"Orthanc could not return series {series.series_instance_uid} (HTTP {status})."
        ) from exc
    return load_dicom_series(datasets)
