"""Representations of findings and feedback, and the shapes of feedback requests."""

from __future__ import annotations

from rest_framework import serializers

from annotations.models import (
    AddedFinding,
    FeedbackHistory,
    Finding,
    FindingFeedback,
    FindingKind,
    Verdict,
)
from projects.serializers import StrictInputMixin


class FeedbackSerializer(serializers.ModelSerializer):
    radiologist = serializers.CharField(source="radiologist.username", read_only=True)

    class Meta:
        model = FindingFeedback
        fields = [
            "id",
            "finding",
            "radiologist",
            "verdict",
            "corrected_center_lps_mm",
            "corrected_diameter_mm",
            "corrected_grade",
            "comment",
            "time_spent_s",
            "created_at",
            "updated_at",
        ]
        read_only_fields = fields


class FeedbackHistorySerializer(serializers.ModelSerializer):
    class Meta:
        model = FeedbackHistory
        fields = [
            "verdict",
            "corrected_center_lps_mm",
            "corrected_diameter_mm",
            "corrected_grade",
            "comment",
            "time_spent_s",
            "recorded_at",
        ]
        read_only_fields = fields


class FindingSerializer(serializers.ModelSerializer):
    study_instance_uid = serializers.CharField(source="study.study_instance_uid", read_only=True)
    series_instance_uid = serializers.CharField(source="series.series_instance_uid", read_only=True)
    model = serializers.SerializerMethodField()
    has_heatmap = serializers.SerializerMethodField()
    has_mask = serializers.SerializerMethodField()
    feedback = FeedbackSerializer(many=True, read_only=True)

    class Meta:
        model = Finding
        fields = [
            "id",
            "study_instance_uid",
            "series_instance_uid",
            "job",
            "model",
            "index",
            "kind",
            "center_lps_mm",
            "center_voxel",
            "diameter_mm",
            "score",
            "grade",
            "class_probabilities",
            "has_heatmap",
            "has_mask",
            "feedback",
            "created_at",
        ]
        read_only_fields = fields

    def get_model(self, obj: Finding) -> dict:
        version = obj.model_version
        return {"id": version.pk, "task": version.task, "version": version.version}

    def get_has_heatmap(self, obj: Finding) -> bool:
        return bool(obj.heatmap_path)

    def get_has_mask(self, obj: Finding) -> bool:
        return bool(obj.mask_path)


class FeedbackInputSerializer(StrictInputMixin, serializers.Serializer):
    """Shape only; the service checks the verdict against the finding and the series geometry."""

    verdict = serializers.ChoiceField(choices=Verdict.choices)
    corrected_center_lps_mm = serializers.ListField(
        child=serializers.FloatField(), min_length=3, max_length=3, required=False, allow_null=True
    )
    corrected_diameter_mm = serializers.FloatField(required=False, allow_null=True)
    corrected_grade = serializers.IntegerField(required=False, allow_null=True)
    comment = serializers.CharField(required=False, allow_blank=True, max_length=5000, default="")
    time_spent_s = serializers.FloatField(required=False, allow_null=True)


class AddedFindingSerializer(serializers.ModelSerializer):
    study_instance_uid = serializers.CharField(source="study.study_instance_uid", read_only=True)
    series_instance_uid = serializers.CharField(source="series.series_instance_uid", read_only=True)
    radiologist = serializers.CharField(source="radiologist.username", read_only=True)

    class Meta:
        model = AddedFinding
        fields = [
            "id",
            "study_instance_uid",
            "series_instance_uid",
            "radiologist",
            "kind",
            "center_lps_mm",
            "diameter_mm",
            "grade",
            "comment",
            "time_spent_s",
            "created_at",
        ]
        read_only_fields = fields


class AddedFindingInputSerializer(StrictInputMixin, serializers.Serializer):
    series_instance_uid = serializers.CharField(max_length=64)
    kind = serializers.ChoiceField(choices=FindingKind.choices)
    center_lps_mm = serializers.ListField(
        child=serializers.FloatField(), min_length=3, max_length=3, required=False, allow_null=True
    )
    diameter_mm = serializers.FloatField(required=False, allow_null=True)
    grade = serializers.IntegerField(required=False, allow_null=True)
    comment = serializers.CharField(required=False, allow_blank=True, max_length=5000, default="")
    time_spent_s = serializers.FloatField(required=False, allow_null=True)
