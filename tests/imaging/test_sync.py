"""Change-feed sync and reconcile against a real Orthanc (studies stored into it directly)."""

from __future__ import annotations

import json
import time

import pytest
import requests
from django.core.management import CommandError, call_command

from imaging.models import Instance, Study, SyncState
from imaging.orthanc import OrthancClient
from imaging.services import update_study_counts
from imaging.signals import study_indexed
from imaging.sync import FEED, reconcile, sync_orthanc_changes
from imaging.tasks import sync_orthanc_changes_task
from tests.imaging.factories import StudyFactory
from tests.imaging.uploads import dicom_files, upload
from tests.support.dicom_files import ct_series, to_bytes

pytestmark = pytest.mark.integration


def store_directly(orthanc, datasets) -> str:
    """REST POST /instances, bypassing the platform (as a modality or script would)."""
    for ds in datasets:
        r = requests.post(
            f"{orthanc.url}/instances",
            data=to_bytes(ds),
            auth=(orthanc.username, orthanc.password),
            timeout=10,
        )
        r.raise_for_status()
    return r.json()["ParentStudy"]


def wait_until_stable(orthanc_study_id: str, timeout_s: float = 10) -> None:
    client = OrthancClient()
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if client.study(orthanc_study_id)["IsStable"]:
            return
        time.sleep(0.2)
    raise AssertionError("study did not become stable")


def test_sync_indexes_a_study_stored_directly_into_orthanc(
    orthanc, project, settings, django_capture_on_commit_callbacks
):
    settings.SYNC_DEFAULT_PROJECT = project.slug
    source = ct_series(3, patient_id="DIRECT-1")
    orthanc_study_id = store_directly(orthanc, source)
    wait_until_stable(orthanc_study_id)
    received = []
    handler = lambda sender, study, created, **kw: received.append((study.pk, created))  # noqa: E731
    study_indexed.connect(handler)
    try:
        with django_capture_on_commit_callbacks(execute=True):
            result = sync_orthanc_changes(limit=5)  # small pages: the loop must follow "Done"
    finally:
        study_indexed.disconnect(handler)
    study = Study.objects.get(study_instance_uid=source[0].StudyInstanceUID)
    assert study.project == project and study.orthanc_id == orthanc_study_id
    assert (study.number_of_series, study.number_of_instances) == (1, 3)
    assert study.patient.patient_id == "DIRECT-1"
    assert study.series.get().orthanc_id == OrthancClient().study(orthanc_study_id)["Series"][0]
    assert orthanc_study_id in result.indexed
    assert received == [(study.pk, True)]
    state = SyncState.objects.get(name=FEED)
    assert state.last_seq == result.last == OrthancClient().last_change()

    # Nothing new: the next run starts from the stored sequence number and changes nothing.
    again = sync_orthanc_changes()
    assert again.since == state.last_seq and again.indexed == []
    assert Instance.objects.count() == 3


def test_sync_keeps_an_indexed_study_in_its_project(
    orthanc, project, other_project, admin_client, settings
):
    upload(admin_client, project, dicom_files(ct_series(2)))
    study = Study.objects.get()
    settings.SYNC_DEFAULT_PROJECT = other_project.slug
    wait_until_stable(study.orthanc_id)
    sync_orthanc_changes()
    study.refresh_from_db()
    assert study.project == project and study.number_of_instances == 2
    assert Study.objects.count() == 1


def test_sync_without_a_default_project_indexes_nothing_but_advances(orthanc, db, settings):
    settings.SYNC_DEFAULT_PROJECT = ""
    orthanc_study_id = store_directly(orthanc, ct_series(1))
    wait_until_stable(orthanc_study_id)
    result = sync_orthanc_changes()
    assert orthanc_study_id in result.skipped and not Study.objects.exists()


def test_sync_task_runs_eagerly(orthanc, project, settings):
    settings.SYNC_DEFAULT_PROJECT = project.slug
    orthanc_study_id = store_directly(orthanc, ct_series(2))
    wait_until_stable(orthanc_study_id)
    outcome = sync_orthanc_changes_task.apply().get()
    assert outcome["indexed"] == 1 and Study.objects.get().number_of_instances == 2


def test_reconcile_reports_and_repairs(orthanc, project, admin_client, settings, capsys):
    settings.SYNC_DEFAULT_PROJECT = ""
    upload(admin_client, project, dicom_files(ct_series(3)))  # indexed, then an instance lost
    mismatched = Study.objects.get()
    Instance.objects.filter(series__study=mismatched).first().delete()
    update_study_counts(study=mismatched)
    direct = ct_series(2, patient_id="DIRECT-2")
    store_directly(orthanc, direct)  # in Orthanc, not indexed
    ghost = StudyFactory(project=project)  # indexed, not in Orthanc

    with pytest.raises(CommandError) as excinfo:
        call_command("reconcile")
    assert excinfo.value.returncode == 1
    report = json.loads(capsys.readouterr().out)
    assert report["clean"] is False
    assert [s["study_instance_uid"] for s in report["not_indexed"]] == [direct[0].StudyInstanceUID]
    assert report["missing_from_orthanc"] == [
        {"study_instance_uid": ghost.study_instance_uid, "project": project.slug}
    ]
    assert report["count_mismatches"] == [
        {
            "study_instance_uid": mismatched.study_instance_uid,
            "project": project.slug,
            "index_instances": 2,
            "orthanc_instances": 3,
        }
    ]

    call_command("reconcile", "--repair", "--project", project.slug)
    capsys.readouterr()
    assert reconcile().clean
    assert not Study.objects.filter(pk=ghost.pk).exists()
    mismatched.refresh_from_db()
    assert mismatched.number_of_instances == 3
    assert Study.objects.get(study_instance_uid=direct[0].StudyInstanceUID).project == project
    call_command("reconcile")  # exits 0 when clean
    assert json.loads(capsys.readouterr().out)["clean"] is True
