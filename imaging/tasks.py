"""Celery tasks of the imaging subsystem (thin: they call `imaging.sync`)."""

from __future__ import annotations

from imaging.exceptions import OrthancUnavailable
from imaging.sync import sync_orthanc_changes
from worker.celery import CPU_QUEUE, platform_task


@platform_task(queue=CPU_QUEUE, hard_time_limit_s=600, autoretry_for=(OrthancUnavailable,))
def sync_orthanc_changes_task(self) -> dict:
    """Beat task: index studies that became stable in Orthanc since the last run."""
    result = sync_orthanc_changes()
    return {"since": result.since, "last": result.last, "indexed": len(result.indexed)}
