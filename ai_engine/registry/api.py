"""HTTP API of jobs, model versions, promotion, monitoring, AI settings and active learning.

All under /api/projects/<project>/: members read; admins create and cancel jobs, promote
and roll back, trigger retraining and change settings.
"""

from __future__ import annotations

from django.shortcuts import get_object_or_404
from drf_spectacular.utils import extend_schema
from rest_framework import generics, status
from rest_framework.response import Response
from rest_framework.views import APIView

from ai_engine.registry import active_learning, monitoring, selectors, services, training
from ai_engine.registry.models import ActiveLearningScore, Job, ModelVersion
from ai_engine.registry.serializers import (
    ActiveLearningQuerySerializer,
    ActiveLearningScoreSerializer,
    AISettingsSerializer,
    AlertSerializer,
    JobCreateSerializer,
    JobSerializer,
    ModelVersionSerializer,
    MonitoringSerializer,
    RollbackSerializer,
)
from imaging.models import Study
from projects.models import ALL_ROLES
from projects.permissions import (
    ADMIN_ONLY,
    MEMBERS_READ_ADMIN_WRITE,
    READ_METHODS,
    ProjectScopedMixin,
)

MEMBERS_READ = {m: ALL_ROLES for m in READ_METHODS}
ADMIN_POST = {"POST": ADMIN_ONLY["POST"]}


class JobListView(ProjectScopedMixin, generics.ListCreateAPIView):
    """Jobs of the project (filter ?status=, ?kind=, ?task=); admins queue inference,
    batch inference (scope=project), training or scoring."""

    project_roles = MEMBERS_READ_ADMIN_WRITE
    serializer_class = JobSerializer
    filterset_fields = ["status", "kind", "task"]

    def get_queryset(self):
        return selectors.jobs_of_project(project=self.project)

    @extend_schema(
        request=JobCreateSerializer,
        responses={201: JobSerializer(many=True), 200: JobSerializer(many=True)},
    )
    def post(self, request, project: str):
        data = JobCreateSerializer(data=request.data)
        data.is_valid(raise_exception=True)
        values = data.validated_data
        kind, task = values["kind"], values.get("task")
        if kind == Job.Kind.INFERENCE and values["scope"] == "project":
            pairs = services.inference_queue_for_project(
                project=self.project, task=task, created_by=request.user
            )
            jobs, created = [job for job, _ in pairs], any(new for _, new in pairs)
        elif kind == Job.Kind.INFERENCE:
            study = get_object_or_404(
                Study, project=self.project, study_instance_uid=values["study"]
            )
            versions = services.champions_for_study(study=study)
            if task:
                versions = [v for v in versions if v.task == task]
            if not versions:
                from ai_engine.registry.exceptions import NoChampion

                raise NoChampion(
                    f"No champion model fits study {study.study_instance_uid} "
                    f"(modalities {study.modalities_in_study or 'unknown'})."
                )
            pairs = [
                services.inference_job_create(study=study, model_version=v, created_by=request.user)
                for v in versions
            ]
            jobs, created = [job for job, _ in pairs], any(new for _, new in pairs)
        elif kind == Job.Kind.SCORING:
            job, created = active_learning.scoring_job_create(
                project=self.project,
                task=task,
                strategy=values["strategy"],
                options=values["params"],
                created_by=request.user,
            )
            jobs = [job]
        else:
            job, created = training.training_job_create(
                project=self.project,
                task=task,
                train_args=values["params"].get("train_args"),
                created_by=request.user,
            )
            jobs = [job]
        return Response(
            JobSerializer(jobs, many=True).data,
            status=status.HTTP_201_CREATED if created else status.HTTP_200_OK,
        )


class JobDetailView(ProjectScopedMixin, generics.RetrieveAPIView):
    project_roles = MEMBERS_READ
    serializer_class = JobSerializer

    def get_queryset(self):
        return selectors.jobs_of_project(project=self.project)


class JobCancelView(ProjectScopedMixin, APIView):
    """Cancel a queued job, or ask a running one to stop; 409 when it already finished."""

    project_roles = ADMIN_POST

    @extend_schema(request=None, responses=JobSerializer)
    def post(self, request, project: str, pk: int):
        job = get_object_or_404(Job, project=self.project, pk=pk)
        job = services.job_cancel(job=job, by=request.user)
        return Response(JobSerializer(job).data)


class ModelVersionListView(ProjectScopedMixin, generics.ListAPIView):
    """Every model version of the project (filter ?task=, ?status=)."""

    project_roles = MEMBERS_READ
    serializer_class = ModelVersionSerializer
    filterset_fields = ["task", "status"]

    def get_queryset(self):
        return selectors.versions_of_project(project=self.project).prefetch_related("alerts")


class ModelVersionDetailView(ProjectScopedMixin, generics.RetrieveAPIView):
    """One model version with its metrics, provenance and alerts."""

    project_roles = MEMBERS_READ
    serializer_class = ModelVersionSerializer

    def get_queryset(self):
        return selectors.versions_of_project(project=self.project).prefetch_related("alerts")


class ModelVersionPromoteView(ProjectScopedMixin, APIView):
    project_roles = ADMIN_POST

    @extend_schema(request=None, responses=ModelVersionSerializer)
    def post(self, request, project: str, pk: int):
        version = get_object_or_404(ModelVersion, project=self.project, pk=pk)
        version = services.model_version_promote(version=version, by=request.user)
        return Response(ModelVersionSerializer(version).data)


class ModelVersionRollbackView(ProjectScopedMixin, APIView):
    """Give the championship of a task back to the version the current champion replaced."""

    project_roles = ADMIN_POST

    @extend_schema(request=RollbackSerializer, responses=ModelVersionSerializer)
    def post(self, request, project: str):
        data = RollbackSerializer(data=request.data)
        data.is_valid(raise_exception=True)
        version = services.model_version_rollback(
            project=self.project, task=data.validated_data["task"], by=request.user
        )
        return Response(ModelVersionSerializer(version).data)


class ModelVersionMonitoringView(ProjectScopedMixin, APIView):
    """Rolling acceptance and agreement of a version against its baseline, with any open alert."""

    project_roles = MEMBERS_READ

    @extend_schema(responses=MonitoringSerializer)
    def get(self, request, project: str, pk: int):
        version = get_object_or_404(ModelVersion, project=self.project, pk=pk)
        window = services.ai_settings_for(project=self.project).monitoring_window
        figures = monitoring.version_figures(version=version, window=window)
        alert = version.alerts.filter(resolved_at__isnull=True).first()
        return Response(
            {
                "window": window,
                "verdicts": figures.n,
                "acceptance": figures.acceptance,
                "agreement": figures.agreement,
                "baseline_acceptance": version.baseline_acceptance,
                "baseline_agreement": version.baseline_agreement,
                "alert": AlertSerializer(alert).data if alert else None,
            }
        )


class AlertListView(ProjectScopedMixin, generics.ListAPIView):
    """Open monitoring alerts of the project's model versions."""

    project_roles = MEMBERS_READ
    serializer_class = AlertSerializer
    pagination_class = None

    def get_queryset(self):
        return selectors.open_alerts(project=self.project)


class AISettingsView(ProjectScopedMixin, generics.RetrieveUpdateAPIView):
    project_roles = MEMBERS_READ_ADMIN_WRITE
    serializer_class = AISettingsSerializer
    http_method_names = ["get", "patch", "head", "options"]

    def get_object(self):
        return services.ai_settings_for(project=self.project)


class ActiveLearningQueueView(ProjectScopedMixin, generics.ListAPIView):
    """The ranked queue of studies to label next, as the last scoring run of each task left it.

    `?strategy=uncertainty` (default) or `random`; `?task=` for one task's queue. Rank 1 is
    the study to label first; `components` are the parts of its score; `job` the run.
    """

    project_roles = MEMBERS_READ
    serializer_class = ActiveLearningScoreSerializer
    filter_backends: list = []  # the query is checked by its query_serializer
    query_serializer = ActiveLearningQuerySerializer

    @extend_schema(parameters=[ActiveLearningQuerySerializer])
    def get(self, request, *args, **kwargs):
        return super().get(request, *args, **kwargs)

    def get_queryset(self):
        if getattr(self, "swagger_fake_view", False):
            return ActiveLearningScore.objects.none()
        return selectors.active_learning_queue(
            project=self.project,
            strategy=self.query["strategy"],
            task=self.query.get("task"),
        )
