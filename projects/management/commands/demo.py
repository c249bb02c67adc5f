"""`python manage.py demo`: demo users, a demo project, and whatever demo data exists so far.

Safe to run again: users, the project and memberships are updated in place, the password
is kept in `var/demo/password`, and data steps skip what was already done. Steps that
depend on parts of the platform still being written (phantom studies, ingest, demo
models) run only when their module or command exists, and say when they are skipped.
"""

from __future__ import annotations

import importlib.util
import os
import secrets
import shutil
import subprocess
import sys
from pathlib import Path

from django.conf import settings
from django.contrib.auth import get_user_model
from django.core.management import call_command, get_commands
from django.core.management.base import BaseCommand, CommandError
from django.db import transaction

from projects.models import Membership, Project, Role

DEMO_USERS: dict[str, Role] = {
    "demo-admin": Role.ADMIN,
    "demo-radiologist": Role.RADIOLOGIST,
    "demo-annotator": Role.ANNOTATOR,
}
SUPERUSER = "admin"
# The demo's studies: (description, phantom kind, count, first seed, folder under var/demo).
# Chest CTs for the nodule detector; brain MRIs (T1, T1c, T2, FLAIR) for the tumour grader,
# from seed 100 on, away from the cases its demo model trains on (seeds 0-5).
PHANTOM_SETS: list[tuple[str, str, int, int, str]] = [
    ("phantom chest CTs", "chest-ct", 3, 0, "phantoms"),
    ("phantom brain MRIs", "brain-mri", 2, 100, "phantoms-mri"),
]

# Optional model steps: (description, module that must exist, commands after `python -m`).
# `{out}` is var/demo/models. A step runs only when its module exists and its last
# command's --out folder is still empty; each command is skipped when its --out exists.
MODEL_STEPS: list[tuple[str, str, list[list[str]]]] = [
    (
        "tiny tumor grading model",
        "ai_engine.grading.cli",
        [
            ["ai_engine", "phantoms", "--kind", "brain-mri", "--count", "6", "--quiet",
             "--out", "{out}/brain-mri"],
            ["ai_engine", "grading", "train", "--datalist", "{out}/brain-mri/datalist.json",
             "--epochs", "1", "--max-steps", "2", "--batch-size", "2",
             "--spatial-size", "32,32,32", "--quiet", "--out", "{out}/grading"],
        ],
    ),
    (
        "tiny lung-nodule detection model",
        "ai_engine.detection.cli",
        [["ai_engine", "detection", "train", "--demo", "--out", "{out}/detection"]],
    ),
]  # fmt: skip


def _module_exists(name: str) -> bool:
    try:
        return importlib.util.find_spec(name) is not None
    except ModuleNotFoundError:
        return False


class Command(BaseCommand):
    help = "Create demo users (one per role, plus superuser 'admin'), a demo project and demo data."

    def add_arguments(self, parser):
        parser.add_argument("--project", default="demo", help="slug of the demo project")
        parser.add_argument(
            "--password",
            default=os.environ.get("DEMO_PASSWORD", ""),
            help="password for every demo user (default: $DEMO_PASSWORD, else generated "
            "once and kept in var/demo/password)",
        )
        parser.add_argument("--no-data", action="store_true", help="users and project only")

    def handle(self, *args, project: str, password: str, no_data: bool, **options):
        demo_dir = Path(settings.VAR_DIR) / "demo"
        demo_dir.mkdir(parents=True, exist_ok=True)
        password = password or self._stored_password(demo_dir / "password")
        if len(password) < 12:
            raise CommandError("the demo password must have at least 12 characters")

        slug = project
        project_obj = self._users_and_project(slug, password)
        self.stdout.write(self.style.SUCCESS(f"project '{slug}' with users {self._user_list()}"))

        if not no_data:
            self._phantoms_and_ingest(project_obj, demo_dir)
            self._models(demo_dir)
            self.register_models(project_obj, demo_dir / "models")

        lines = [
            f"Demo users (password for all: {password}):",
            f"  {SUPERUSER:<18} site superuser (Django admin at /admin/)",
            *(
                f"  {name:<18} {role.value} in project '{slug}'"
                for name, role in DEMO_USERS.items()
            ),
        ]
        (Path(settings.VAR_DIR) / "demo-credentials.txt").write_text("\n".join(lines) + "\n")
        self.stdout.write("\n".join(lines))

    # -- users and project --------------------------------------------------------------
    def _stored_password(self, path: Path) -> str:
        if path.exists():
            return path.read_text().strip()
        password = secrets.token_urlsafe(12)
        path.write_text(password + "\n")
        path.chmod(0o600)
        return password

    @transaction.atomic
    def _users_and_project(self, slug: str, password: str) -> Project:
        User = get_user_model()
        project, _ = Project.objects.update_or_create(
            slug=slug,
            defaults={
                "name": "Demo project",
                "description": "Phantom chest CTs and brain MRIs, and demo models, made by `make demo`.",
            },
        )
        superuser, _ = User.objects.get_or_create(username=SUPERUSER)
        superuser.is_staff = superuser.is_superuser = True
        superuser.email = superuser.email or "admin@example.org"
        superuser.set_password(password)
        superuser.save()
        for username, role in DEMO_USERS.items():
            user, _ = User.objects.get_or_create(username=username)
            user.set_password(password)
            user.save()
            Membership.objects.update_or_create(project=project, user=user, defaults={"role": role})
        return project

    def _user_list(self) -> str:
        return ", ".join([SUPERUSER, *DEMO_USERS])

    # -- data ---------------------------------------------------------------------------
    def _skip(self, what: str, why: str) -> None:
        self.stdout.write(self.style.WARNING(f"skipped {what}: {why}"))

    def _phantoms_and_ingest(self, project: Project, demo_dir: Path) -> None:
        if not _module_exists("ai_engine.data.phantoms"):
            self._skip("phantom studies", "ai_engine.data.phantoms does not exist yet")
            return
        if "ingest" not in get_commands():
            self._skip("ingest", "the `ingest` management command does not exist yet")
            return
        for description, kind, count, seed, folder in PHANTOM_SETS:
            phantom_dir = demo_dir / folder
            if not (phantom_dir / "datalist.json").exists():
                shutil.rmtree(phantom_dir, ignore_errors=True)  # a half-written earlier attempt
                cmd = [
                    sys.executable, "-m", "ai_engine", "phantoms", "--kind", kind,
                    "--count", str(count), "--seed", str(seed), "--quiet", "--out", str(phantom_dir),
                ]  # fmt: skip
                if not self._run(f"{count} {description}", cmd):
                    continue
            else:
                self.stdout.write(f"{description}: already in {phantom_dir}")
            # The chest CTs' marker keeps its first name: a demo made before the MRIs came
            # does not ingest its CTs a second time.
            marker = demo_dir / f"ingested-{project.slug}{'' if kind == 'chest-ct' else '-' + kind}"
            if marker.exists():
                self.stdout.write(f"ingest: {description} already ingested into '{project.slug}'")
                continue
            # The series folders, as the phantoms' datalist names them: a CT case is one,
            # a brain MRI case four (T1, T1c, T2, FLAIR; its tumour mask is not DICOM).
            from ai_engine.data.datalist import load_datalist

            series = sorted(
                path
                for items in load_datalist(phantom_dir / "datalist.json").values()
                for item in items
                for path in ([item["image"]] if "image" in item else item["images"].values())
            )
            call_command("ingest", *series, project=project.slug, stdout=self.stdout)
            marker.write_text("done\n")
            self.stdout.write(self.style.SUCCESS(f"ingested {phantom_dir} into '{project.slug}'"))

    def _models(self, demo_dir: Path) -> None:
        out = demo_dir / "models"
        for description, module, commands in MODEL_STEPS:
            if not _module_exists(module):
                self._skip(description, f"{module} does not exist yet")
                continue
            for argv in commands:
                argv = [a.format(out=out) for a in argv]
                target = Path(argv[argv.index("--out") + 1])
                if target.exists() and any(target.iterdir()):
                    self.stdout.write(f"{description}: {target} already made")
                    continue
                shutil.rmtree(target, ignore_errors=True)
                if not self._run(description, [sys.executable, "-m", *argv]):
                    break

    def register_models(self, project: Project, models_dir: Path) -> None:
        """Put each demo model into the registry (it becomes champion, being the first) and
        queue inference on the project's studies, so findings appear once the worker runs."""
        from ai_engine.registry.exceptions import NoChampion
        from ai_engine.registry.models import ModelTask, ModelVersion
        from ai_engine.registry.services import (
            inference_queue_for_project,
            model_version_register,
        )

        folders = {
            ModelTask.NODULE_DETECTION: models_dir / "detection",
            ModelTask.TUMOR_GRADING: models_dir / "grading",
        }
        for task, folder in folders.items():
            if not (folder / "model.json").exists():
                self._skip(f"registering the {task} model", f"no model folder at {folder}")
                continue
            if ModelVersion.objects.filter(project=project, task=task).exists():
                self.stdout.write(f"{task}: a model version is registered already")
                continue
            version = model_version_register(
                project=project, task=task, source_dir=folder, provenance="trained"
            )
            self.stdout.write(f"{task}: registered version {version.version} ({version.status})")
            try:
                jobs = inference_queue_for_project(project=project, task=task)
            except NoChampion as exc:
                self._skip(f"inference with the {task} model", str(exc))
                continue
            self.stdout.write(f"{task}: {len(jobs)} inference job(s) queued")

    def _run(self, description: str, cmd: list[str]) -> bool:
        self.stdout.write(f"{description}: {' '.join(cmd[1:])}")
        done = subprocess.run(cmd, cwd=settings.BASE_DIR, capture_output=True, text=True)
        if done.returncode != 0:
            tail = (done.stderr or done.stdout).strip().splitlines()[-5:]
            self._skip(description, f"exit {done.returncode}: " + " | ".join(tail))
            return False
        self.stdout.write(self.style.SUCCESS(f"{description}: done"))
        return True
