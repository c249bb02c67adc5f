"""HTTP API of the imaging subsystem: upload, study index, delete, quarantine."""

from __future__ import annotations

from django.http import Http404
from django_filters.rest_framework import DjangoFilterBackend
from drf_spectacular.utils import extend_schema
from rest_framework import generics, status
from rest_framework.parsers import FormParser, MultiPartParser
from rest_framework.response import Response
from rest_framework.views import APIView

from imaging.exceptions import EmptyUpload, NothingAccepted
from imaging.filters import StudyFilter
from imaging.models import Study, UploadBatch
from imaging.selectors import quarantined_files_of, series_of, studies_of, study_of
from imaging.serializers import (
    IngestSummarySerializer,
    QuarantinedFileSerializer,
    SeriesSerializer,
    StudyDetailSerializer,
    StudySerializer,
    UploadSerializer,
)
from imaging.services import ingest_sources, study_delete
from imaging.validation import UploadSource
from projects.models import Role
from projects.permissions import (
    ADMIN_ONLY,
    MEMBERS_READ_ADMIN_WRITE,
    READ_METHODS,
    ProjectScopedMixin,
)
from projects.query import StrictOrderingFilter

# Uploading: project admins and annotators (radiologists read, they do not curate data).
UPLOADERS = {"POST": frozenset({Role.ADMIN, Role.ANNOTATOR})}


class UploadView(ProjectScopedMixin, APIView):
    """Upload DICOM files and .zip archives; every file is validated before it is stored.

    200 with the summary when at least one instance was accepted, already present or
    quarantined; 400 with the summary when every file was rejected; 503 when Orthanc is
    unreachable.
    """

    project_roles = UPLOADERS
    parser_classes = [MultiPartParser, FormParser]

    @extend_schema(request=UploadSerializer, responses={200: IngestSummarySerializer})
    def post(self, request, project: str):
        files = request.FILES.getlist("files") or list(request.FILES.values())
        if not files:
            raise EmptyUpload("No files: send DICOM files or .zip archives as multipart 'files'.")
        sources = [UploadSource(name=f.name, size=f.size, fileobj=f) for f in files]
        summary = ingest_sources(
            project=self.project,
            sources=sources,
            uploaded_by=request.user,
            source=UploadBatch.Source.API,
        )
        body = summary.as_dict()
        if not (summary.accepted or summary.already_present or summary.quarantined):
            raise NothingAccepted("No file was accepted; see 'rejected' for why.", extra=body)
        return Response(body, status=status.HTTP_200_OK)


class StudyListView(ProjectScopedMixin, generics.ListAPIView):
    """The project's studies: filter, search, order, paginate (a reading worklist)."""

    project_roles = {m: MEMBERS_READ_ADMIN_WRITE[m] for m in READ_METHODS}
    serializer_class = StudySerializer
    filter_backends = [DjangoFilterBackend, StrictOrderingFilter]
    filterset_class = StudyFilter
    ordering_fields = [
        "study_date",
        "created_at",
        "updated_at",
        "number_of_instances",
        "ai_status",
        "patient__patient_id",
        "accession_number",
    ]
    ordering = ["-study_date", "-id"]

    def get_queryset(self):
        return studies_of(project=self.project)


class StudyObjectMixin:
    lookup_url_kwarg = "study_uid"

    def get_study(self) -> Study:
        try:
            return study_of(project=self.project, study_instance_uid=self.kwargs["study_uid"])
        except Study.DoesNotExist as exc:
            raise Http404("No such study in this project.") from exc


class StudyDetailView(ProjectScopedMixin, StudyObjectMixin, generics.RetrieveDestroyAPIView):
    """A study with its series; project admins delete it (from Orthanc, then the index)."""

    project_roles = MEMBERS_READ_ADMIN_WRITE
    serializer_class = StudyDetailSerializer

    def get_object(self) -> Study:
        return self.get_study()

    def perform_destroy(self, instance: Study) -> None:
        study_delete(study=instance)


class SeriesListView(ProjectScopedMixin, StudyObjectMixin, generics.ListAPIView):
    """The series of one study."""

    project_roles = {m: MEMBERS_READ_ADMIN_WRITE[m] for m in READ_METHODS}
    serializer_class = SeriesSerializer
    pagination_class = None
    filter_backends: list = []

    def get_queryset(self):
        return series_of(study=self.get_study())


class QuarantineListView(ProjectScopedMixin, generics.ListAPIView):
    """Files held back for burned-in-text risk (project admins only)."""

    project_roles = {m: ADMIN_ONLY[m] for m in READ_METHODS}
    serializer_class = QuarantinedFileSerializer
    filter_backends: list = []

    def get_queryset(self):
        return quarantined_files_of(project=self.project)
