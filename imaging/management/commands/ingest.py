"""`python manage.py ingest PATH... --project SLUG`: files, folders (recursive) and .zip archives.

Prints the ingest summary as JSON (the same one the upload API returns) and exits 1 when
any file was rejected, 2 on a usage error (unknown project, missing path, no files), 3
when Orthanc failed mid-way: what it stored before is indexed, and the JSON printed then
says so (the summary so far and `not_stored`).
"""

from __future__ import annotations

import json
from pathlib import Path

from django.core.management.base import BaseCommand, CommandError

from imaging.exceptions import ImagingError
from imaging.models import UploadBatch
from imaging.services import ingest_sources
from imaging.validation import UploadSource
from projects.models import Project


def collect_sources(paths: list[str]) -> list[UploadSource]:
    sources: list[UploadSource] = []
    for raw in paths:
        path = Path(raw)
        if path.is_dir():
            sources.extend(
                UploadSource.from_path(p) for p in sorted(path.rglob("*")) if p.is_file()
            )
        elif path.is_file():
            sources.append(UploadSource.from_path(path))
        else:
            raise CommandError(f"{raw}: no such file or folder", returncode=2)
    return sources


class Command(BaseCommand):
    help = "Validate, de-identify, store in Orthanc and index DICOM files, folders and zips."

    def add_arguments(self, parser):
        parser.add_argument("paths", nargs="+", help="DICOM files, folders or .zip archives")
        parser.add_argument("--project", required=True, help="project slug")

    def handle(self, *args, paths: list[str], project: str, **options):
        try:
            target = Project.objects.get(slug=project)
        except Project.DoesNotExist as exc:
            raise CommandError(f"no project with slug {project!r}", returncode=2) from exc
        sources = collect_sources(paths)
        if not sources:
            raise CommandError("no files found under the given paths", returncode=2)
        try:
            summary = ingest_sources(project=target, sources=sources, source=UploadBatch.Source.CLI)
        except ImagingError as exc:
            if exc.extra:  # Orthanc failed mid-upload: what was stored, what was not.
                self.stdout.write(json.dumps(exc.extra, indent=2, default=str))
            raise CommandError(exc.message, returncode=3) from exc
        self.stdout.write(json.dumps(summary.as_dict(), indent=2, default=str))
        if summary.rejected:
            raise CommandError(f"{len(summary.rejected)} file(s) rejected", returncode=1)
