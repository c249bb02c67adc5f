"""Keeping the index true to Orthanc: the change-feed sync and reconcile.

`sync_orthanc_changes()` follows Orthanc's `/changes` feed from the sequence number stored
in `SyncState`, and indexes each study that became stable (StableStudy), whichever way it
reached Orthanc (STOW-RS, C-STORE, REST). A study already indexed stays in its project;
a new one goes to `settings.SYNC_DEFAULT_PROJECT`. The Celery beat task in
`imaging.tasks` calls it; tests and commands call it directly.

`reconcile()` compares the whole index with Orthanc and, with `repair=True`, fixes the
differences: studies in Orthanc not indexed, indexed studies Orthanc no longer has, and
studies whose instance counts differ.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field

from django.conf import settings
from django.db import transaction

from imaging.exceptions import OrthancNotFound, SyncNotConfigured
from imaging.models import Instance, Series, Study, SyncState
from imaging.orthanc import OrthancClient
from imaging.records import InstanceRecord
from imaging.services import index_records, remove_study_from_index, update_study_counts
from projects.models import Project

logger = logging.getLogger(__name__)

FEED = "orthanc-changes"


def default_sync_project() -> Project | None:
    """The project named by SYNC_DEFAULT_PROJECT, None when unset; error when unknown."""
    slug = settings.SYNC_DEFAULT_PROJECT
    if not slug:
        return None
    try:
        return Project.objects.get(slug=slug)
    except Project.DoesNotExist as exc:
        raise SyncNotConfigured(f"SYNC_DEFAULT_PROJECT={slug!r} names no project") from exc


def index_orthanc_study(
    *, orthanc_study_id: str, project: Project | None = None, client: OrthancClient | None = None
) -> Study | None:
    """(Re-)index one Orthanc study exactly as Orthanc holds it.

    The study stays in the project that owns it; otherwise it goes to `project` (or the
    sync default project). Index instances Orthanc no longer has are removed. Returns the
    study, or None when there is no project to put it in or Orthanc no longer has it.
    """
    client = client or OrthancClient()
    try:
        tags_by_instance = client.study_instances_tags(orthanc_study_id)
    except OrthancNotFound:
        return None
    records = [
        InstanceRecord.from_orthanc(tags, instance_id=instance_id, study_id=orthanc_study_id)
        for instance_id, tags in tags_by_instance.items()
    ]
    records = [r for r in records if r.study_instance_uid and r.sop_instance_uid]
    if not records:
        return None
    study_uid = records[0].study_instance_uid
    existing = Study.objects.filter(study_instance_uid=study_uid).select_related("project").first()
    target = existing.project if existing else (project or default_sync_project())
    if target is None:
        logger.warning("study %s is in Orthanc but no project is configured for it", study_uid)
        return None
    with transaction.atomic():
        index_records(project=target, records=records)
        study = Study.objects.get(study_instance_uid=study_uid)
        present = {r.sop_instance_uid for r in records}
        stale = Instance.objects.filter(series__study=study).exclude(sop_instance_uid__in=present)
        if stale.exists():
            stale.delete()
            Series.objects.filter(study=study, instances__isnull=True).delete()
            update_study_counts(study=study)
            study.refresh_from_db()
    return study


@dataclass
class SyncResult:
    since: int
    last: int
    indexed: list[str] = field(default_factory=list)
    skipped: list[str] = field(default_factory=list)


def sync_orthanc_changes(
    *, limit: int = 200, max_pages: int = 50, client: OrthancClient | None = None
) -> SyncResult:
    """Follow Orthanc's change feed from the stored sequence number; index stable studies.

    The sequence number is saved after each page, so a crash repeats at most one page
    (indexing is idempotent). The row is locked so two runs never process the same page.
    """
    client = client or OrthancClient()
    state, _ = SyncState.objects.get_or_create(name=FEED)
    result = SyncResult(since=state.last_seq, last=state.last_seq)
    for _ in range(max_pages):
        with transaction.atomic():
            state = SyncState.objects.select_for_update().get(pk=state.pk)
            page = client.changes(since=state.last_seq, limit=limit)
            study_ids = list(
                dict.fromkeys(
                    change["ID"]
                    for change in page.get("Changes", [])
                    if change.get("ChangeType") == "StableStudy"
                )
            )
            for orthanc_study_id in study_ids:
                study = index_orthanc_study(orthanc_study_id=orthanc_study_id, client=client)
                (result.indexed if study else result.skipped).append(orthanc_study_id)
            state.last_seq = int(page.get("Last", state.last_seq))
            state.save(update_fields=["last_seq", "updated_at"])
            result.last = state.last_seq
        if page.get("Done", True):
            break
    return result


@dataclass
class ReconcileReport:
    not_indexed: list[dict] = field(default_factory=list)
    missing_from_orthanc: list[dict] = field(default_factory=list)
    count_mismatches: list[dict] = field(default_factory=list)
    repaired: bool = False
    unassigned: list[str] = field(default_factory=list)

    @property
    def clean(self) -> bool:
        return not (self.not_indexed or self.missing_from_orthanc or self.count_mismatches)

    def as_dict(self) -> dict:
        return {
            "clean": self.clean,
            "repaired": self.repaired,
            "not_indexed": self.not_indexed,
            "missing_from_orthanc": self.missing_from_orthanc,
            "count_mismatches": self.count_mismatches,
            "unassigned": self.unassigned,
        }


def reconcile(
    *, repair: bool = False, project: Project | None = None, client: OrthancClient | None = None
) -> ReconcileReport:
    """Compare the index with Orthanc; with `repair`, make the index match Orthanc.

    Studies not indexed go to the project that owns their UID, else `project`, else the
    sync default project (listed as `unassigned` when there is none).
    """
    client = client or OrthancClient()
    report = ReconcileReport(repaired=repair)
    in_orthanc: dict[str, tuple[str, int]] = {}  # StudyInstanceUID -> (orthanc id, instances)
    for orthanc_study_id in client.studies():
        try:
            study = client.study(orthanc_study_id)
            count = int(client.study_statistics(orthanc_study_id)["CountInstances"])
        except OrthancNotFound:
            continue  # deleted while we looked
        uid = study.get("MainDicomTags", {}).get("StudyInstanceUID", "")
        in_orthanc[uid] = (orthanc_study_id, count)
    indexed = {
        s.study_instance_uid: s
        for s in Study.objects.select_related("project").only(
            "study_instance_uid", "orthanc_id", "number_of_instances", "project__slug"
        )
    }
    for uid, (orthanc_study_id, count) in sorted(in_orthanc.items()):
        study = indexed.get(uid)
        if study is None:
            report.not_indexed.append(
                {"study_instance_uid": uid, "orthanc_id": orthanc_study_id, "instances": count}
            )
        elif study.number_of_instances != count:
            report.count_mismatches.append(
                {
                    "study_instance_uid": uid,
                    "project": study.project.slug,
                    "index_instances": study.number_of_instances,
                    "orthanc_instances": count,
                }
            )
    for uid, study in sorted(indexed.items()):
        if uid not in in_orthanc:
            report.missing_from_orthanc.append(
                {"study_instance_uid": uid, "project": study.project.slug}
            )
    if repair:
        for item in report.not_indexed + report.count_mismatches:
            orthanc_study_id = in_orthanc[item["study_instance_uid"]][0]
            done = index_orthanc_study(
                orthanc_study_id=orthanc_study_id, project=project, client=client
            )
            if done is None:
                report.unassigned.append(item["study_instance_uid"])
        for item in report.missing_from_orthanc:
            study = Study.objects.filter(study_instance_uid=item["study_instance_uid"]).first()
            if study is not None:
                remove_study_from_index(study=study)
    return report
