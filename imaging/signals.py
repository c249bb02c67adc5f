"""Signals other apps connect to.

`study_indexed` is sent as `study_indexed.send(sender=Study, study=study, created=bool)`
inside `transaction.on_commit` each time ingest or sync indexes a new or changed study
(the worker connects AI inference to it).
"""

from __future__ import annotations

from django.dispatch import Signal

study_indexed = Signal()
