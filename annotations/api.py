"""HTTP API of findings, feedback and added findings (all under /api/projects/<project>/).

Members read; radiologists give feedback and add missed findings. Objects are always looked
up inside the request's project, so another project's finding is a 404.
"""

from __future__ import annotations

from pathlib import Path

from django.conf import settings
from django.http import FileResponse
from django.shortcuts import get_object_or_404
from drf_spectacular.utils import extend_schema
from rest_framework import generics, status
from rest_framework.response import Response
from rest_framework.views import APIView

from annotations import selectors, services
from annotations.exceptions import HeatmapMissing
from annotations.models import FeedbackHistory, Finding
from annotations.serializers import (
    AddedFindingInputSerializer,
    AddedFindingSerializer,
    FeedbackHistorySerializer,
    FeedbackInputSerializer,
    FeedbackSerializer,
    FindingSerializer,
)
from imaging.models import Series, Study
from projects.models import ALL_ROLES, Role
from projects.permissions import READ_METHODS, ProjectScopedMixin

MEMBERS_READ_RADIOLOGISTS_WRITE = {
    **{m: ALL_ROLES for m in READ_METHODS},
    "POST": frozenset({Role.RADIOLOGIST}),
}
MEMBERS_READ = {m: ALL_ROLES for m in READ_METHODS}


class FindingListView(ProjectScopedMixin, generics.ListAPIView):
    """Findings of the project; filter with ?study=<StudyInstanceUID>, ?kind=, ?model_version=."""

    project_roles = MEMBERS_READ
    serializer_class = FindingSerializer
    filterset_fields = ["kind", "model_version"]
    ordering_fields = ["created_at", "score"]
    extra_query_params = {"study": "StudyInstanceUID: only this study's findings"}

    def get_queryset(self):
        queryset = selectors.findings_of_project(project=self.project)
        study_uid = self.request.query_params.get("study")
        if study_uid:
            queryset = queryset.filter(study__study_instance_uid=study_uid)
        return queryset


class StudyFindingListView(FindingListView):
    """Findings of one study (the viewer's overlay list)."""

    pagination_class = None
    extra_query_params: dict = {}  # the study is in the URL

    def get_queryset(self):
        if getattr(self, "swagger_fake_view", False):  # schema generation: no request
            return Finding.objects.none()
        study = get_object_or_404(
            Study, project=self.project, study_instance_uid=self.kwargs["study_uid"]
        )
        return selectors.findings_of_project(project=self.project).filter(study=study)


class FindingDetailView(ProjectScopedMixin, generics.RetrieveAPIView):
    project_roles = MEMBERS_READ
    serializer_class = FindingSerializer

    def get_queryset(self):
        return selectors.findings_of_project(project=self.project)


class FindingFileView(ProjectScopedMixin, APIView):
    """The finding's heat map (or mask) as NIfTI on the series grid, for project members."""

    project_roles = MEMBERS_READ
    field = "heatmap_path"

    @extend_schema(responses={(200, "application/gzip"): bytes})
    def get(self, request, project: str, pk: int):
        finding = get_object_or_404(Finding, project=self.project, pk=pk)
        relative = getattr(finding, self.field)
        media = Path(settings.MEDIA_ROOT).resolve()
        path = (media / relative).resolve() if relative else None
        if path is None or media not in path.parents or not path.is_file():
            raise HeatmapMissing(f"Finding {pk} has no {self.field.removesuffix('_path')} file.")
        return FileResponse(
            path.open("rb"),
            as_attachment=False,
            filename=path.name,
            content_type="application/gzip",
        )


class FindingMaskView(FindingFileView):
    field = "mask_path"


class FindingFeedbackView(ProjectScopedMixin, APIView):
    """GET every radiologist's current verdict on a finding; POST yours (replaces it)."""

    project_roles = MEMBERS_READ_RADIOLOGISTS_WRITE

    def _finding(self, pk: int) -> Finding:
        return get_object_or_404(
            Finding.objects.select_related("series"), project=self.project, pk=pk
        )

    @extend_schema(responses=FeedbackSerializer(many=True))
    def get(self, request, project: str, pk: int):
        finding = self._finding(pk)
        return Response(
            FeedbackSerializer(finding.feedback.select_related("radiologist"), many=True).data
        )

    @extend_schema(request=FeedbackInputSerializer, responses={201: FeedbackSerializer})
    def post(self, request, project: str, pk: int):
        finding = self._finding(pk)
        data = FeedbackInputSerializer(data=request.data)
        data.is_valid(raise_exception=True)
        feedback = services.feedback_submit(
            finding=finding, radiologist=request.user, **data.validated_data
        )
        return Response(FeedbackSerializer(feedback).data, status=status.HTTP_201_CREATED)


class FeedbackHistoryView(ProjectScopedMixin, generics.ListAPIView):
    """Every verdict the given radiologist (?radiologist=username, default: you) gave on a finding."""

    project_roles = MEMBERS_READ
    serializer_class = FeedbackHistorySerializer
    pagination_class = None
    extra_query_params = {"radiologist": "username (default: you)"}

    def get_queryset(self):
        if getattr(self, "swagger_fake_view", False):  # schema generation: no request
            return FeedbackHistory.objects.none()
        finding = get_object_or_404(Finding, project=self.project, pk=self.kwargs["pk"])
        username = self.request.query_params.get("radiologist") or self.request.user.username
        feedback = finding.feedback.filter(radiologist__username=username).first()
        if feedback is None:
            return finding.feedback.none()
        return selectors.feedback_history(feedback=feedback)


class AddedFindingListView(ProjectScopedMixin, APIView):
    """Findings the model missed: members list them, radiologists add them."""

    project_roles = MEMBERS_READ_RADIOLOGISTS_WRITE
    extra_query_params = {"study": "StudyInstanceUID: only this study's added findings"}

    @extend_schema(responses=AddedFindingSerializer(many=True))
    def get(self, request, project: str):
        queryset = selectors.added_findings_of_project(project=self.project)
        study_uid = request.query_params.get("study")
        if study_uid:
            queryset = queryset.filter(study__study_instance_uid=study_uid)
        return Response(AddedFindingSerializer(queryset, many=True).data)

    @extend_schema(request=AddedFindingInputSerializer, responses={201: AddedFindingSerializer})
    def post(self, request, project: str):
        data = AddedFindingInputSerializer(data=request.data)
        data.is_valid(raise_exception=True)
        values = dict(data.validated_data)
        series = get_object_or_404(
            Series.objects.select_related("study"),
            study__project=self.project,
            series_instance_uid=values.pop("series_instance_uid"),
        )
        added = services.added_finding_create(
            study=series.study, series=series, radiologist=request.user, **values
        )
        return Response(AddedFindingSerializer(added).data, status=status.HTTP_201_CREATED)
