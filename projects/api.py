"""HTTP API of projects, memberships, the current user, tokens and health."""

from __future__ import annotations

from django.db import IntegrityError, transaction
from drf_spectacular.utils import extend_schema
from rest_framework import generics, status
from rest_framework.authtoken.views import ObtainAuthToken
from rest_framework.exceptions import ValidationError
from rest_framework.permissions import AllowAny, IsAdminUser, IsAuthenticated
from rest_framework.response import Response
from rest_framework.views import APIView

from projects.health import platform_health
from projects.models import Membership, Project
from projects.permissions import ADMIN_ONLY, MEMBERS_READ_ADMIN_WRITE, ProjectScopedMixin
from projects.query import StrictQueryMixin
from projects.selectors import projects_visible_to, roles_of
from projects.serializers import (
    HealthQuerySerializer,
    HealthSerializer,
    MembershipSerializer,
    MembershipUpdateSerializer,
    MeSerializer,
    ProjectSerializer,
    ProjectUpdateSerializer,
)


class HealthView(StrictQueryMixin, APIView):
    """Database, Redis and Orthanc, each up or down; 503 naming what is down.

    `?deep=1` also sends a `health_ping` task through the broker and waits for a Celery
    worker's answer (component `worker`).
    """

    permission_classes = [AllowAny]
    authentication_classes: list = []
    query_serializer = HealthQuerySerializer

    @extend_schema(
        parameters=[HealthQuerySerializer],
        responses={200: HealthSerializer, 503: HealthSerializer},
    )
    def get(self, request):
        components = platform_health(deep=self.query["deep"])
        down = sorted(name for name, health in components.items() if not health.up)
        body = {
            "status": "degraded" if down else "ok",
            "components": {name: health.as_dict() for name, health in components.items()},
            "down": down,
        }
        return Response(body, status=status.HTTP_503_SERVICE_UNAVAILABLE if down else 200)


class TokenView(StrictQueryMixin, ObtainAuthToken):
    """POST username and password, get the API token (for the CLI and scripts)."""

    permission_classes = [AllowAny]


class MeView(StrictQueryMixin, APIView):
    permission_classes = [IsAuthenticated]

    @extend_schema(responses=MeSerializer)
    def get(self, request):
        projects = {
            p.slug: sorted(roles_of(request.user, p)) for p in projects_visible_to(request.user)
        }
        return Response(
            {
                "username": request.user.username,
                "is_staff": request.user.is_staff,
                "projects": projects,
            }
        )


class ProjectListView(StrictQueryMixin, generics.ListCreateAPIView):
    """Projects the user is a member of. Creating a project is for site staff."""

    serializer_class = ProjectSerializer
    lookup_field = "slug"

    def get_permissions(self):
        if self.request.method == "POST":
            return [IsAdminUser()]
        return [IsAuthenticated()]

    def get_queryset(self):
        return projects_visible_to(self.request.user)

    def perform_create(self, serializer):
        project = serializer.save()
        Membership.objects.get_or_create(
            project=project, user=self.request.user, defaults={"role": "admin"}
        )


class ProjectDetailView(ProjectScopedMixin, generics.RetrieveUpdateAPIView):
    """A project; its admins may edit name, description and de-identification."""

    project_roles = MEMBERS_READ_ADMIN_WRITE
    serializer_class = ProjectUpdateSerializer

    def get_object(self) -> Project:
        return self.project


class MembershipListView(ProjectScopedMixin, generics.ListCreateAPIView):
    """Members of a project and their roles; project admins add members."""

    project_roles = MEMBERS_READ_ADMIN_WRITE
    serializer_class = MembershipSerializer
    pagination_class = None

    def get_queryset(self):
        if getattr(self, "swagger_fake_view", False):  # schema generation: no request project
            return Membership.objects.none()
        return Membership.objects.filter(project=self.project).select_related("user")

    def perform_create(self, serializer):
        user = serializer.validated_data["user"]
        if Membership.objects.filter(project=self.project, user=user).exists():
            raise ValidationError({"username": "This user is already a member."})
        try:
            with (
                transaction.atomic()
            ):  # a savepoint: a racing duplicate must not poison the request
                serializer.save(project=self.project)
        except IntegrityError as exc:
            raise ValidationError({"username": "This user is already a member."}) from exc


class MembershipDetailView(ProjectScopedMixin, generics.RetrieveUpdateDestroyAPIView):
    """Change a member's role or remove them (project admins only)."""

    project_roles = ADMIN_ONLY
    serializer_class = MembershipUpdateSerializer
    http_method_names = ["get", "patch", "delete", "head", "options"]

    def get_queryset(self):
        if getattr(self, "swagger_fake_view", False):  # schema generation: no request project
            return Membership.objects.none()
        return Membership.objects.filter(project=self.project)

    def perform_destroy(self, instance: Membership) -> None:
        remaining_admins = Membership.objects.filter(project=self.project, role="admin").exclude(
            pk=instance.pk
        )
        if instance.role == "admin" and not remaining_admins.exists():
            raise ValidationError({"detail": "A project must keep at least one admin."})
        instance.delete()

    def perform_update(self, serializer):
        instance = serializer.instance
        if instance.role == "admin" and serializer.validated_data.get("role") != "admin":
            others = Membership.objects.filter(project=self.project, role="admin").exclude(
                pk=instance.pk
            )
            if not others.exists():
                raise ValidationError({"role": "A project must keep at least one admin."})
        serializer.save()
