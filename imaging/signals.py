"""Signals other apps connect to.

`study_indexed` is sent as `study_indexed.send(sender=Study, study=study, created=bool)`
inside `transaction.on_commit`: by ingest once per study per upload, after the study's
last batch is indexed (also when Orthanc failed mid-upload, for what it stored), and by
sync once per call that indexed a new or changed study. The worker connects AI inference
to it.
"""

from __future__ import annotations

from django.dispatch import Signal

study_indexed = Signal()
