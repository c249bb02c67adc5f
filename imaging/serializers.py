"""Serializers of the study index and the ingest summary (read-only: writes go through services)."""

from __future__ import annotations

from rest_framework import serializers

from imaging.models import QuarantinedFile, Series, Study


class SeriesSerializer(serializers.ModelSerializer):
    class Meta:
        model = Series
        fields = [
            "series_instance_uid",
            "modality",
            "body_part_examined",
            "series_description",
            "series_number",
            "series_date",
            "number_of_instances",
            "rows",
            "columns",
            "pixel_spacing",
            "slice_thickness",
            "spacing_between_slices",
            "image_orientation_patient",
            "frame_of_reference_uid",
            "manufacturer",
            "manufacturer_model_name",
        ]
        read_only_fields = fields


class StudySerializer(serializers.ModelSerializer):
    patient_id = serializers.CharField(source="patient.patient_id", read_only=True)
    patient_name = serializers.CharField(source="patient.patient_name", read_only=True)
    patient_sex = serializers.CharField(source="patient.patient_sex", read_only=True)
    patient_birth_date = serializers.DateField(source="patient.patient_birth_date", read_only=True)
    modalities_in_study = serializers.ListField(
        source="modalities", child=serializers.CharField(), read_only=True
    )

    class Meta:
        model = Study
        fields = [
            "study_instance_uid",
            "patient_id",
            "patient_name",
            "patient_sex",
            "patient_birth_date",
            "study_date",
            "study_time",
            "study_description",
            "accession_number",
            "modalities_in_study",
            "number_of_series",
            "number_of_instances",
            "ai_status",
            "created_at",
            "updated_at",
        ]
        read_only_fields = fields


class StudyDetailSerializer(StudySerializer):
    series = SeriesSerializer(many=True, read_only=True)

    class Meta(StudySerializer.Meta):
        fields = [*StudySerializer.Meta.fields, "series"]
        read_only_fields = fields


class QuarantinedFileSerializer(serializers.ModelSerializer):
    class Meta:
        model = QuarantinedFile
        fields = ["id", "reason", "original_name", "sha256", "stored_path", "created_at"]
        read_only_fields = fields


class UploadSerializer(serializers.Serializer):
    """Multipart form: one or more `files` (DICOM files or .zip archives)."""

    files = serializers.ListField(child=serializers.FileField(allow_empty_file=True))


class RejectionSerializer(serializers.Serializer):
    name = serializers.CharField()
    reason = serializers.CharField()


class IngestSummarySerializer(serializers.Serializer):
    """What `POST uploads` and `manage.py ingest` return."""

    accepted = serializers.IntegerField()
    already_present = serializers.IntegerField()
    rejected_count = serializers.IntegerField()
    quarantined_count = serializers.IntegerField()
    studies = serializers.ListField(child=serializers.DictField())
    rejected = RejectionSerializer(many=True)
    quarantined = RejectionSerializer(many=True)
