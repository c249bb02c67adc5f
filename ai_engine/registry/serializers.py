"""Representations of jobs, model versions, alerts, settings and the active-learning queue."""

from __future__ import annotations

from rest_framework import serializers

from ai_engine.registry.active_learning import ignored_options
from ai_engine.registry.models import (
    ActiveLearningScore,
    Job,
    ModelAlert,
    ModelTask,
    ModelVersion,
    ProjectAISettings,
)
from ai_engine.registry.selectors import queue_position
from ai_engine.registry.training import train_args_by_task_problem, train_args_problem
from projects.serializers import StrictInputMixin


class JobSerializer(serializers.ModelSerializer):
    study_instance_uid = serializers.CharField(
        source="study.study_instance_uid", read_only=True, default=None
    )
    queue_position = serializers.SerializerMethodField()
    created_by = serializers.CharField(source="created_by.username", read_only=True, default=None)

    class Meta:
        model = Job
        fields = [
            "id",
            "kind",
            "task",
            "status",
            "study_instance_uid",
            "model_version",
            "produced_version",
            "queue",
            "queue_position",
            "progress",
            "eta_at",
            "message",
            "error",
            "cancel_requested",
            "attempts",
            "lost_attempts",
            "attempt_started_at",
            "params",
            "result",
            "created_by",
            "created_at",
            "started_at",
            "finished_at",
        ]
        read_only_fields = fields

    def get_queue_position(self, obj: Job) -> int | None:
        return queue_position(job=obj)


def _strategy_field(**kwargs) -> serializers.ChoiceField:
    allowed = ", ".join(ActiveLearningScore.Strategy.values)
    return serializers.ChoiceField(
        choices=ActiveLearningScore.Strategy.choices,
        error_messages={"invalid_choice": f'"{{input}}" is not a strategy; use one of: {allowed}.'},
        **kwargs,
    )


class ScoringOptionsSerializer(serializers.Serializer):
    """Optional `params` of a scoring job (the defaults are ai_engine.active_learning's)."""

    mc_samples = serializers.IntegerField(
        min_value=2, max_value=64, required=False, help_text="MC-dropout passes per study."
    )
    tta = serializers.BooleanField(required=False, help_text="Add test-time-augmentation variance.")
    diversity_weight = serializers.FloatField(
        min_value=0.0, max_value=1.0, required=False, help_text="Weight of the diversity term."
    )
    seed = serializers.IntegerField(min_value=0, required=False)
    cold_start = serializers.BooleanField(
        required=False,
        help_text="Grading: queue by distance while the champion has not seen every grade "
        "(the default, true); false where the project's studies hold no case of some grade.",
    )


class JobCreateSerializer(StrictInputMixin, serializers.Serializer):
    """inference: `study` (StudyInstanceUID) and optional `task`, or `scope: "project"`
    for the whole project, no params; training: `task`, optional `params.train_args` (the
    task's extra `train` arguments for this run, checked as the settings' are); scoring:
    `task` and `strategy` (uncertainty, the default, or random), optional `params`
    mc_samples, tta, diversity_weight, seed, cold_start (only those that act on the run:
    `seed` on every one, the others on uncertainty runs, `cold_start` on tumor-grading
    ones). A field the job would not read is a 400."""

    kind = serializers.ChoiceField(choices=Job.Kind.choices)
    task = serializers.ChoiceField(choices=ModelTask.choices, required=False)
    study = serializers.CharField(max_length=64, required=False)
    scope = serializers.ChoiceField(
        choices=[("study", "study"), ("project", "project")], default="study"
    )
    strategy = _strategy_field(required=False, help_text="Scoring only: how studies are ranked.")
    params = serializers.DictField(required=False, default=dict)

    def validate(self, attrs: dict) -> dict:
        kind = attrs["kind"]
        if kind != Job.Kind.SCORING and "strategy" in attrs:
            raise serializers.ValidationError({"strategy": "Only scoring jobs take a strategy."})
        if kind != Job.Kind.INFERENCE:
            for field in ("study", "scope"):
                if field in self.initial_data:
                    raise serializers.ValidationError(
                        {field: f"Only inference jobs take a {field}; a {kind} job covers "
                         "the project's labelled or unlabelled studies of its task."}
                    )  # fmt: skip
        if kind == Job.Kind.INFERENCE:
            if attrs["scope"] == "study" and not attrs.get("study"):
                raise serializers.ValidationError(
                    {"study": "Name the study (StudyInstanceUID) or use scope=project."}
                )
            if attrs["scope"] == "project" and attrs.get("study"):
                raise serializers.ValidationError(
                    {"study": "scope=project covers every study; leave out study, or use "
                     "scope=study."}
                )  # fmt: skip
        elif not attrs.get("task"):
            raise serializers.ValidationError({"task": f"A {kind} job needs a task."})
        if kind == Job.Kind.INFERENCE and attrs["params"]:
            raise serializers.ValidationError({"params": "Inference jobs take no params."})
        if kind == Job.Kind.TRAINING:
            unknown = sorted(set(attrs["params"]) - {"train_args"})
            if unknown:
                raise serializers.ValidationError(
                    {"params": f"Unknown training params {unknown}; allowed: ['train_args']."}
                )
            if "train_args" in attrs["params"]:
                problem = train_args_problem(attrs["task"], attrs["params"]["train_args"])
                if problem:
                    raise serializers.ValidationError({"params": {"train_args": problem}})
        if kind == Job.Kind.SCORING:
            attrs.setdefault("strategy", ActiveLearningScore.Strategy.UNCERTAINTY)
            options = ScoringOptionsSerializer(data=attrs["params"])
            unknown = sorted(set(attrs["params"]) - set(options.fields))
            if unknown:
                raise serializers.ValidationError(
                    {
                        "params": f"Unknown scoring params {unknown}; allowed: "
                        f"{sorted(options.fields)} (the strategy goes in the top-level "
                        "`strategy` field)."
                    }
                )
            if not options.is_valid():
                raise serializers.ValidationError({"params": options.errors})
            attrs["params"] = dict(options.validated_data)
            ignored = ignored_options(
                task=attrs["task"], strategy=attrs["strategy"], options=attrs["params"]
            )
            if ignored:
                raise serializers.ValidationError({"params": ignored})
        return attrs


class AlertSerializer(serializers.ModelSerializer):
    class Meta:
        model = ModelAlert
        fields = ["id", "version", "message", "figures", "created_at", "resolved_at"]
        read_only_fields = fields


class ModelVersionSerializer(serializers.ModelSerializer):
    data_snapshot = serializers.SerializerMethodField()
    alert = serializers.SerializerMethodField()

    class Meta:
        model = ModelVersion
        fields = [
            "id",
            "task",
            "version",
            "status",
            "provenance",
            "parent",
            "data_snapshot",
            "metrics",
            "validation_metric_name",
            "validation_metric",
            "validation_set_hash",
            "baseline_acceptance",
            "baseline_agreement",
            "alert",
            "mlflow_run_id",
            "notes",
            "created_at",
            "promoted_at",
        ]
        read_only_fields = fields

    def get_data_snapshot(self, obj: ModelVersion) -> dict | None:
        snap = obj.data_snapshot
        if snap is None:
            return None
        return {"sha256": snap.sha256, "n_items": snap.n_items, "n_labels": snap.n_labels}

    def get_alert(self, obj: ModelVersion) -> dict | None:
        alert = next((a for a in obj.alerts.all() if a.resolved_at is None), None)
        return AlertSerializer(alert).data if alert else None


class RollbackSerializer(StrictInputMixin, serializers.Serializer):
    task = serializers.ChoiceField(choices=ModelTask.choices)


class AISettingsSerializer(StrictInputMixin, serializers.ModelSerializer):
    class Meta:
        model = ProjectAISettings
        fields = [
            "auto_inference",
            "retrain_after_labels",
            "monitoring_window",
            "alert_margin",
            "train_args",
            "updated_at",
        ]
        read_only_fields = ["updated_at"]
        extra_kwargs = {
            "alert_margin": {"min_value": 0.0, "max_value": 1.0},
            "monitoring_window": {"min_value": 1},
        }

    def validate_train_args(self, value):
        problem = train_args_by_task_problem(value)
        if problem:
            raise serializers.ValidationError(problem)
        return value


class ActiveLearningQuerySerializer(serializers.Serializer):
    """Query of the active-learning queue."""

    strategy = _strategy_field(
        default=ActiveLearningScore.Strategy.UNCERTAINTY, help_text="Which ranking to list."
    )
    task = serializers.ChoiceField(
        choices=ModelTask.choices, required=False, help_text="Only this task's queue."
    )


class QueueStudySerializer(serializers.Serializer):
    study_instance_uid = serializers.CharField()
    study_description = serializers.CharField()


class QueueModelVersionSerializer(serializers.Serializer):
    id = serializers.IntegerField()
    task = serializers.CharField()
    version = serializers.IntegerField()


class ActiveLearningScoreSerializer(serializers.ModelSerializer):
    """One study's place in the queue: rank 1 is the study to label first."""

    study = QueueStudySerializer(read_only=True)
    model_version = QueueModelVersionSerializer(read_only=True, allow_null=True)

    class Meta:
        model = ActiveLearningScore
        fields = [
            "rank",
            "study",
            "score",
            "strategy",
            "task",
            "components",
            "model_version",
            "job",
            "created_at",
        ]
        read_only_fields = fields


class MonitoringSerializer(serializers.Serializer):
    window = serializers.IntegerField()
    verdicts = serializers.IntegerField()
    acceptance = serializers.FloatField(allow_null=True)
    agreement = serializers.FloatField(allow_null=True)
    baseline_acceptance = serializers.FloatField(allow_null=True)
    baseline_agreement = serializers.FloatField(allow_null=True)
    alert = AlertSerializer(allow_null=True)
