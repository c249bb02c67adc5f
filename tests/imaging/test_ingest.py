"""Ingest end to end against a real Orthanc: API and CLI, de-identification, quarantine,
idempotence, ownership across projects, Orthanc down."""

from __future__ import annotations

import io
import json
from pathlib import Path

import pytest
from django.core.management import CommandError, call_command

from imaging.deid import deidentify
from imaging.exceptions import OrthancUnavailable
from imaging.models import Instance, Patient, QuarantinedFile, Series, Study, UploadBatch
from imaging.orthanc import OrthancClient
from imaging.services import ingest_sources
from imaging.signals import study_indexed
from imaging.validation import UploadSource
from tests.factories import ProjectFactory
from tests.imaging.uploads import dicom_files, upload, zip_bytes
from tests.support.dicom_files import ct_series, to_bytes, write_series
from tests.support.orthanc import free_port

pytestmark = pytest.mark.integration


@pytest.fixture
def signals():
    received = []

    def handler(sender, study, created, **kwargs):
        received.append((study.study_instance_uid, created))

    study_indexed.connect(handler)
    yield received
    study_indexed.disconnect(handler)


def test_upload_deidentifies_stores_and_indexes(
    orthanc, project, annotator_client, signals, django_capture_on_commit_callbacks
):
    source = ct_series(4, patient_id="MRN-123", patient_name="Doe^Jane")
    with django_capture_on_commit_callbacks(execute=True):
        response = upload(annotator_client, project, dicom_files(source))
    assert response.status_code == 200, response.data
    body = response.data
    assert (body["accepted"], body["already_present"], body["rejected"]) == (4, 0, [])

    study = Study.objects.get(project=project)
    # De-identified: new UIDs, no source patient identity anywhere in the index.
    assert study.study_instance_uid != source[0].StudyInstanceUID
    assert study.patient.patient_id != "MRN-123" and "Doe" not in study.patient.patient_name
    assert body["studies"][0]["study_instance_uid"] == study.study_instance_uid
    assert body["studies"][0]["series"][0]["number_of_instances"] == 4
    assert (study.number_of_series, study.number_of_instances) == (1, 4)
    assert study.modalities == ["CT"]
    # The index holds what the de-identified files say (policy owned by imaging.deid).
    expected = deidentify(source[0], uid_secret=project.uid_secret)
    assert study.study_instance_uid == expected.StudyInstanceUID
    assert study.study_description == expected.get("StudyDescription", "")
    assert study.patient.patient_id == expected.PatientID
    series = study.series.get()
    assert series.rows == 32 and series.pixel_spacing == [0.8, 0.8]
    assert series.image_orientation_patient == [1, 0, 0, 0, 1, 0]
    assert series.slice_thickness == 2.5 and series.body_part_examined == "CHEST"
    positions = sorted(i.image_position_patient[2] for i in Instance.objects.filter(series=series))
    assert positions == [0.0, 2.5, 5.0, 7.5]

    # Orthanc holds exactly that, under the ids the index computed.
    client = OrthancClient()
    assert client.studies() == [study.orthanc_id]
    orthanc_study = client.study(study.orthanc_id)
    assert orthanc_study["MainDicomTags"]["StudyInstanceUID"] == study.study_instance_uid
    assert orthanc_study["PatientMainDicomTags"]["PatientID"] == study.patient.patient_id
    assert orthanc_study["Series"] == [series.orthanc_id]
    assert client.study_statistics(study.orthanc_id)["CountInstances"] == 4
    assert signals == [(study.study_instance_uid, True)]
    assert UploadBatch.objects.get().accepted == 4


def test_uploading_again_changes_nothing(
    orthanc, project, admin_client, signals, django_capture_on_commit_callbacks
):
    files = dicom_files(ct_series(3))
    assert upload(admin_client, project, files).status_code == 200
    study = Study.objects.get()
    before = (study.updated_at, Instance.objects.count(), Series.objects.count())
    signals.clear()
    with django_capture_on_commit_callbacks(execute=True):
        response = upload(admin_client, project, files)
    assert response.status_code == 200
    assert (response.data["accepted"], response.data["already_present"]) == (0, 3)
    study.refresh_from_db()
    assert (study.updated_at, Instance.objects.count(), Series.objects.count()) == before
    assert OrthancClient().study_statistics(study.orthanc_id)["CountInstances"] == 3
    assert signals == []


def test_zip_upload_two_series(orthanc, project, admin_client):
    first = ct_series(3, series_number=1)
    second = ct_series(2, study_uid=first[0].StudyInstanceUID, series_number=2, modality="PT")
    archive = zip_bytes(
        {f"dir/a{i}.dcm": to_bytes(ds) for i, ds in enumerate(first)}
        | {f"dir/b{i}.dcm": to_bytes(ds) for i, ds in enumerate(second)}
    )
    response = upload(admin_client, project, {"study.zip": archive})
    assert response.status_code == 200, response.data
    assert response.data["accepted"] == 5
    study = Study.objects.get()
    assert study.modalities == ["CT", "PT"]
    assert sorted(s.number_of_instances for s in study.series.all()) == [2, 3]


def test_without_deidentification_uids_are_kept_and_other_projects_refused(
    orthanc, project, admin_client, users
):
    project.deidentify = False
    project.save()
    source = ct_series(2, patient_id="MRN-9")
    assert upload(admin_client, project, dicom_files(source)).status_code == 200
    study = Study.objects.get()
    assert study.study_instance_uid == source[0].StudyInstanceUID
    assert study.patient.patient_id == "MRN-9"

    other = ProjectFactory(deidentify=False)
    other.memberships.create(user=users["admin"], role="admin")
    extra = ct_series(1, study_uid=source[0].StudyInstanceUID)
    response = upload(admin_client, other, dicom_files(extra))
    assert response.status_code == 400
    assert "already belongs to another project" in response.data["rejected"][0]["reason"]
    assert Study.objects.get().project == project
    assert OrthancClient().study_statistics(study.orthanc_id)["CountInstances"] == 2


def test_burned_in_text_goes_to_quarantine(orthanc, project, admin_client, settings, tmp_path):
    settings.MEDIA_ROOT = tmp_path
    risky = ct_series(1)[0]
    risky.BurnedInAnnotation = "YES"
    response = upload(admin_client, project, {"risky.dcm": to_bytes(risky)})
    assert response.status_code == 200, response.data
    assert response.data["quarantined_count"] == 1 and response.data["accepted"] == 0
    quarantined = QuarantinedFile.objects.get()
    assert "BurnedInAnnotation" in quarantined.reason
    stored = Path(tmp_path) / quarantined.stored_path
    assert stored.read_bytes() == to_bytes(risky)
    assert stored.parent == Path(tmp_path) / "quarantine" / project.slug
    assert OrthancClient().studies() == [] and not Study.objects.exists()

    listed = admin_client.get(f"/api/projects/{project.slug}/quarantine")
    assert listed.status_code == 200
    assert listed.data["results"][0]["original_name"] == "risky.dcm"


def test_orthanc_down_gives_503_and_indexes_nothing(project, admin_client, settings, db):
    settings.ORTHANC_URL = f"http://127.0.0.1:{free_port()}"
    response = upload(admin_client, project, dicom_files(ct_series(2)))
    assert response.status_code == 503
    assert response.data["code"] == "orthanc_unavailable"
    assert not Study.objects.exists() and not Patient.objects.exists()


def test_cli_ingests_files_folders_and_zips(orthanc, project, tmp_path, capsys):
    project.deidentify = False
    project.save()
    folder_series = ct_series(3)
    write_series(folder_series, tmp_path / "folder" / "nested")
    zipped = ct_series(2, study_uid=folder_series[0].StudyInstanceUID, series_number=2)
    archive = tmp_path / "more.zip"
    archive.write_bytes(zip_bytes({f"z{i}.dcm": to_bytes(ds) for i, ds in enumerate(zipped)}))
    single = tmp_path / "single.dcm"
    single.write_bytes(to_bytes(ct_series(1)[0]))

    call_command(
        "ingest", str(tmp_path / "folder"), str(archive), str(single), "--project", project.slug
    )
    summary = json.loads(capsys.readouterr().out)
    assert summary["accepted"] == 6 and summary["rejected"] == []
    assert len(summary["studies"]) == 2
    assert Study.objects.filter(project=project).count() == 2
    assert UploadBatch.objects.get().source == "cli"


def test_cli_exits_non_zero_and_reports_rejections(orthanc, project, tmp_path, capsys):
    good = tmp_path / "good.dcm"
    good.write_bytes(to_bytes(ct_series(1)[0]))
    bad = tmp_path / "bad.dcm"
    bad.write_bytes(b"garbage" * 40)
    with pytest.raises(CommandError) as excinfo:
        call_command("ingest", str(good), str(bad), "--project", project.slug)
    assert excinfo.value.returncode == 1
    summary = json.loads(capsys.readouterr().out)
    assert summary["accepted"] == 1
    assert summary["rejected"] == [
        {"name": str(bad), "reason": "not a DICOM file (no 128-byte preamble and 'DICM' prefix)"}
    ]


def test_cli_with_orthanc_down_exits_3_and_prints_what_was_not_stored(
    project, settings, db, tmp_path, capsys
):
    settings.ORTHANC_URL = f"http://127.0.0.1:{free_port()}"
    write_series(ct_series(2), tmp_path / "series")
    with pytest.raises(CommandError) as excinfo:
        call_command("ingest", str(tmp_path / "series"), "--project", project.slug)
    assert excinfo.value.returncode == 3
    partial = json.loads(capsys.readouterr().out)
    assert partial["accepted"] == 0 and len(partial["not_stored"]) == 2
    assert not Study.objects.exists()


@pytest.mark.django_db
def test_cli_usage_errors(tmp_path, project):
    with pytest.raises(CommandError, match="no project"):
        call_command("ingest", str(tmp_path), "--project", "nope")
    with pytest.raises(CommandError, match="no such file"):
        call_command("ingest", str(tmp_path / "missing"), "--project", project.slug)
    with pytest.raises(CommandError, match="no files"):
        call_command("ingest", str(tmp_path), "--project", project.slug)


class StopsOrthancAfterFirstBatch(OrthancClient):
    """The real client; once Orthanc confirmed the first STOW-RS batch, Orthanc stops."""

    def __init__(self, server, **kwargs):
        super().__init__(**kwargs)
        self.server = server
        self.batches = 0

    def store_instances(self, instances):
        response = super().store_instances(instances)
        self.batches += 1
        if self.batches == 1:
            self.server.stop()
        return response


def test_orthanc_down_mid_ingest_keeps_index_and_orthanc_consistent(
    orthanc, project, settings, signals, django_capture_on_commit_callbacks
):
    settings.INGEST_STOW_BATCH_INSTANCES = 2
    files = dicom_files(ct_series(6))
    sources = [
        UploadSource(name, len(data), fileobj=io.BytesIO(data)) for name, data in files.items()
    ]
    client = StopsOrthancAfterFirstBatch(orthanc)
    with (
        django_capture_on_commit_callbacks(execute=True),
        pytest.raises(OrthancUnavailable) as excinfo,
    ):
        ingest_sources(project=project, sources=sources, client=client)
    # The error carries the summary so far and the files that were not stored.
    extra = excinfo.value.extra
    assert extra["accepted"] == 2 and extra["rejected"] == []
    assert extra["not_stored"] == ["slice002.dcm", "slice003.dcm", "slice004.dcm", "slice005.dcm"]
    study = Study.objects.get()
    assert extra["studies"][0]["study_instance_uid"] == study.study_instance_uid
    assert (study.number_of_instances, Instance.objects.count()) == (2, 2)
    assert signals == [(study.study_instance_uid, True)]  # once, for what was indexed
    assert UploadBatch.objects.get().accepted == 2
    orthanc.start()  # what Orthanc holds is exactly what is indexed
    assert OrthancClient().study_statistics(study.orthanc_id)["CountInstances"] == 2


def test_failure_preparing_the_next_batch_indexes_the_batch_in_flight(
    orthanc, project, settings, tmp_path
):
    settings.INGEST_STOW_BATCH_INSTANCES = 2
    settings.MEDIA_ROOT = tmp_path / "not-a-folder"
    settings.MEDIA_ROOT.write_bytes(b"")  # quarantine cannot write under it: OSError
    source = ct_series(3)
    source[2].BurnedInAnnotation = "YES"  # third file: the first of batch 2, quarantined
    files = dicom_files(source)
    sources = [
        UploadSource(name, len(data), fileobj=io.BytesIO(data)) for name, data in files.items()
    ]
    with pytest.raises(OSError):
        ingest_sources(project=project, sources=sources)
    study = Study.objects.get()  # batch 1 was handed to Orthanc: stored and indexed
    assert (study.number_of_instances, Instance.objects.count()) == (2, 2)
    assert OrthancClient().study_statistics(study.orthanc_id)["CountInstances"] == 2
    assert UploadBatch.objects.get().accepted == 2 and not QuarantinedFile.objects.exists()


def test_signal_once_per_study_after_its_last_batch(
    orthanc, project, settings, signals, django_capture_on_commit_callbacks
):
    settings.INGEST_STOW_BATCH_INSTANCES = 2
    first, second = ct_series(5), ct_series(1)
    files = dicom_files(first) | dicom_files(second, prefix="other")
    sources = [
        UploadSource(name, len(data), fileobj=io.BytesIO(data)) for name, data in files.items()
    ]
    with django_capture_on_commit_callbacks(execute=True):
        summary = ingest_sources(project=project, sources=sources)
    assert summary.accepted == 6
    counts = dict(Study.objects.values_list("study_instance_uid", "number_of_instances"))
    assert sorted(counts.values()) == [1, 5]
    assert sorted(signals) == sorted((uid, True) for uid in counts)  # 3 batches, 2 signals


def test_non_deidentified_files_are_stored_byte_for_byte(orthanc, project, admin_client):
    project.deidentify = False
    project.save()
    source = ct_series(2)
    files = dicom_files(source)
    assert upload(admin_client, project, files).status_code == 200
    client = OrthancClient()
    for ds, data in zip(source, files.values(), strict=True):
        (hit,) = [h for h in client.lookup(ds.SOPInstanceUID) if h["Type"] == "Instance"]
        assert client.request("GET", f"/instances/{hit['ID']}/file").content == data
        # The index knows the stored encoding (the proxy labels raw frames with it).
        instance = Instance.objects.get(sop_instance_uid=ds.SOPInstanceUID)
        assert instance.transfer_syntax_uid == ds.file_meta.TransferSyntaxUID
