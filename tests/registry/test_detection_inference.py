"""Detection inference through the registry's one door (`inference.run_inference`) against a
real Orthanc: a CT uploaded to the project, a tiny trained two-stage detector; every nodule
finding carries the label mask and the false-positive classifier's Grad-CAM heat map, both
on the CT series grid voxel for voxel (what the viewer overlays)."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest

from ai_engine.data.phantoms import write_chest_ct
from ai_engine.io import load_nifti
from ai_engine.registry.inference import run_inference
from ai_engine.registry.models import ModelTask
from imaging.models import Study
from imaging.volumes import load_series_volume
from tests.ai_engine.test_detection import SHAPE, data, model  # noqa: F401 (module fixtures)
from tests.annotations.factories import make_version
from tests.worker.test_pipeline import upload

pytestmark = [pytest.mark.integration, pytest.mark.slow, pytest.mark.django_db]


@pytest.fixture(scope="module")
def permissive_detector(model, tmp_path_factory) -> Path:  # noqa: F811
    """The tiny trained detector with thresholds that let every candidate through: the
    untrained-ish U-Net then gives at least one candidate, so there is something to explain."""
    folder = tmp_path_factory.mktemp("detector") / "model"
    shutil.copytree(model, folder)
    manifest = json.loads((folder / "model.json").read_text())
    manifest["postprocessing"].update(candidate_threshold=0.0, finding_threshold=0.0)
    (folder / "model.json").write_text(json.dumps(manifest))
    return folder


def test_nodule_findings_carry_mask_and_heat_map_on_the_series_grid(
    orthanc, project, admin_client, permissive_detector, settings, tmp_path
):
    settings.MEDIA_ROOT = tmp_path / "media"
    write_chest_ct(tmp_path / "ct", seed=31, shape=SHAPE)
    study_uid = upload(admin_client, project, sorted((tmp_path / "ct").iterdir()))
    study = Study.objects.get(study_instance_uid=study_uid)
    version = make_version(project, task=ModelTask.NODULE_DETECTION)
    version.path = str(permissive_detector)
    version.save()

    out_dir = Path(settings.MEDIA_ROOT) / "jobs" / "1"
    findings = run_inference(version, study, out_dir=out_dir)

    assert findings, "thresholds of 0 must give at least one finding"
    series = study.series.get()
    source = load_series_volume(series)
    heat = load_nifti(Path(settings.MEDIA_ROOT) / findings[0].heatmap_path)
    mask = load_nifti(Path(settings.MEDIA_ROOT) / findings[0].mask_path)
    for overlay in (heat, mask):
        assert overlay.spatial_shape == source.spatial_shape
        assert np.allclose(overlay.affine, source.affine, atol=1e-4)
    hot = np.argwhere(np.asarray(heat.array).reshape(source.spatial_shape) > 0)
    assert len(hot), "the classifier's evidence must show somewhere"
    lo, hi = hot.min(axis=0), hot.max(axis=0)
    for finding in findings:
        assert (
            finding.kind == "nodule" and finding.series_instance_uid == series.series_instance_uid
        )
        assert finding.heatmap_path == findings[0].heatmap_path  # one map per series
        # The heat map was placed back around the finding: its centre lies within the
        # box of non-zero heat (not lost at the patch origin or on the resampled grid).
        centre = np.asarray(finding.center_voxel)
        assert np.all(centre >= lo - 1) and np.all(centre <= hi + 1), (centre, lo, hi)
        assert 0.0 <= finding.score <= 1.0
