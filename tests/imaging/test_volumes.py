"""Series retrieved from Orthanc by WADO-RS as ai_engine Volumes."""

from __future__ import annotations

import numpy as np
import pytest

from imaging.exceptions import OrthancUnavailable
from imaging.models import Series
from imaging.volumes import load_series_volume
from tests.imaging.uploads import dicom_files, upload
from tests.support.dicom_files import ct_series
from tests.support.orthanc import free_port

pytestmark = pytest.mark.integration


def test_load_series_volume(orthanc, project, admin_client):
    source = ct_series(4, rows=24, columns=20)
    assert upload(admin_client, project, dicom_files(source)).status_code == 200
    volume = load_series_volume(Series.objects.get())
    assert volume.array.shape == (20, 24, 4)
    for k, ds in enumerate(source):  # array[i, j, k] == pixel_array of slice k [j, i]
        np.testing.assert_array_equal(volume.array[:, :, k], ds.pixel_array.T.astype(np.float32))
    np.testing.assert_allclose(volume.affine[:3, 3], [-100, -100, 0])
    np.testing.assert_allclose(np.diag(volume.affine)[:3], [0.8, 0.8, 2.5])


def test_monochrome1_series_is_inverted_after_rescale(orthanc, project, admin_client):
    """Through ingest (de-identified), Orthanc and WADO-RS: rescale, then invert MONOCHROME1."""
    source = ct_series(3, rows=16, columns=12)
    for ds in source:
        ds.PhotometricInterpretation = "MONOCHROME1"
        ds.RescaleSlope = 2
        ds.RescaleIntercept = -1024
    assert upload(admin_client, project, dicom_files(source)).status_code == 200
    volume = load_series_volume(Series.objects.get())
    lo, hi = 2 * -32768 - 1024, 2 * 32767 - 1024  # signed 16-bit stored range, rescaled
    for k, ds in enumerate(source):
        rescaled = ds.pixel_array.T.astype(np.float32) * 2 - 1024
        np.testing.assert_array_equal(volume.array[:, :, k], np.float32(lo + hi) - rescaled)
    assert volume.meta["photometric_interpretation"] == "MONOCHROME1"
    assert volume.meta["inverted"] is True and volume.meta["units"] == ""


def test_load_series_volume_orthanc_down(orthanc, project, admin_client, settings):
    upload(admin_client, project, dicom_files(ct_series(2)))
    settings.ORTHANC_URL = f"http://127.0.0.1:{free_port()}"
    with pytest.raises(OrthancUnavailable):
        load_series_volume(Series.objects.get())
