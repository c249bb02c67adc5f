"""Projects (workspaces of studies, labels and models) and who may do what in them."""

from __future__ import annotations

import secrets

from django.conf import settings
from django.core.validators import RegexValidator
from django.db import models


class Role(models.TextChoices):
    """A member's role in one project. Roles do not nest: each view names the roles it admits."""

    ADMIN = "admin", "Admin"
    RADIOLOGIST = "radiologist", "Radiologist"
    ANNOTATOR = "annotator", "Annotator"


ALL_ROLES: frozenset[str] = frozenset(Role.values)


def _new_uid_secret() -> str:
    return secrets.token_hex(32)


slug_validator = RegexValidator(
    r"^[a-z0-9][a-z0-9-]{1,62}$",
    "Use 2-63 lowercase letters, digits and hyphens, starting with a letter or digit.",
)


class Project(models.Model):
    slug = models.SlugField(max_length=63, unique=True, validators=[slug_validator])
    name = models.CharField(max_length=200)
    description = models.TextField(blank=True)
    deidentify = models.BooleanField(
        default=True,
        help_text="Apply the DICOM PS3.15 Basic Application Level Confidentiality Profile on ingest.",
    )
    # Key for the keyed hash that maps source UIDs to project UIDs (consistent within a
    # project, different across projects). Never exposed through the API.
    uid_secret = models.CharField(max_length=64, default=_new_uid_secret, editable=False)
    members = models.ManyToManyField(
        settings.AUTH_USER_MODEL, through="Membership", related_name="projects"
    )
    created_at = models.DateTimeField(auto_now_add=True)

    class Meta:
        ordering = ["slug"]

    def __str__(self) -> str:
        return self.slug


class Membership(models.Model):
    project = models.ForeignKey(Project, on_delete=models.CASCADE, related_name="memberships")
    user = models.ForeignKey(
        settings.AUTH_USER_MODEL, on_delete=models.CASCADE, related_name="memberships"
    )
    role = models.CharField(max_length=20, choices=Role.choices)
    created_at = models.DateTimeField(auto_now_add=True)

    class Meta:
        ordering = ["project", "user"]
        constraints = [
            models.UniqueConstraint(fields=["project", "user"], name="one_membership_per_user"),
        ]

    def __str__(self) -> str:
        return f"{self.user} is {self.role} in {self.project}"
