"""`python manage.py reconcile [--repair] [--project SLUG]`: compare the index with Orthanc.

Prints a JSON report (studies in Orthanc not indexed, indexed studies missing from Orthanc,
instance-count mismatches). Without `--repair` it exits 1 when there are differences; with
`--repair` it fixes them and exits 0 (1 if some study had no project to go to).
"""

from __future__ import annotations

import json

from django.core.management.base import BaseCommand, CommandError

from imaging.exceptions import ImagingError
from imaging.sync import reconcile
from projects.models import Project


class Command(BaseCommand):
    help = "Report (and with --repair, fix) differences between the study index and Orthanc."

    def add_arguments(self, parser):
        parser.add_argument("--repair", action="store_true", help="make the index match Orthanc")
        parser.add_argument(
            "--project",
            help="project for unindexed studies (default: SYNC_DEFAULT_PROJECT)",
        )

    def handle(self, *args, repair: bool, project: str | None, **options):
        target = None
        if project:
            try:
                target = Project.objects.get(slug=project)
            except Project.DoesNotExist as exc:
                raise CommandError(f"no project with slug {project!r}", returncode=2) from exc
        try:
            report = reconcile(repair=repair, project=target)
        except ImagingError as exc:
            raise CommandError(exc.message, returncode=3) from exc
        self.stdout.write(json.dumps(report.as_dict(), indent=2))
        if report.unassigned or (not repair and not report.clean):
            raise CommandError("index and Orthanc differ", returncode=1)
