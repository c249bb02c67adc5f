from __future__ import annotations

from collections.abc import Mapping

from django.contrib.auth import get_user_model
from rest_framework import serializers

from projects.models import Membership, Project, Role
from projects.selectors import roles_of

User = get_user_model()


class StrictInputMixin:
    """For serializers of request bodies: a field the serializer does not know gets a 400
    naming it instead of being dropped (DRF's default), so a typo such as
    `retrain_after_label` or `coment` cannot answer 200 and change nothing. Read-only
    fields are known: a client may send back what it read."""

    def to_internal_value(self, data):
        if isinstance(data, Mapping):
            unknown = sorted(set(data) - set(self.fields))
            if unknown:
                allowed = sorted(n for n, f in self.fields.items() if not f.read_only)
                raise serializers.ValidationError(
                    {name: f"Unknown field; this request takes {allowed}." for name in unknown}
                )
        return super().to_internal_value(data)


class ProjectSerializer(StrictInputMixin, serializers.ModelSerializer):
    my_roles = serializers.SerializerMethodField()

    class Meta:
        model = Project
        fields = ["slug", "name", "description", "deidentify", "created_at", "my_roles"]
        read_only_fields = ["created_at", "my_roles"]

    def get_my_roles(self, project: Project) -> list[str]:
        return sorted(roles_of(self.context["request"].user, project))


class ProjectUpdateSerializer(ProjectSerializer):
    class Meta(ProjectSerializer.Meta):
        read_only_fields = ["slug", "created_at", "my_roles"]


class MembershipSerializer(StrictInputMixin, serializers.ModelSerializer):
    username = serializers.SlugRelatedField(
        source="user", slug_field="username", queryset=User.objects.all()
    )
    role = serializers.ChoiceField(choices=Role.choices)

    class Meta:
        model = Membership
        fields = ["id", "username", "role", "created_at"]
        read_only_fields = ["id", "created_at"]


class MembershipUpdateSerializer(StrictInputMixin, serializers.ModelSerializer):
    role = serializers.ChoiceField(choices=Role.choices)

    class Meta:
        model = Membership
        fields = ["id", "role"]
        read_only_fields = ["id"]


class MeSerializer(serializers.Serializer):
    username = serializers.CharField()
    is_staff = serializers.BooleanField()
    projects = serializers.DictField(child=serializers.ListField(child=serializers.CharField()))


class HealthQuerySerializer(serializers.Serializer):
    """`?deep=`: true/false, 1/0, yes/no; anything else is a 400 (not a silent shallow check)."""

    deep = serializers.BooleanField(
        default=False, help_text="Also round-trip a task through a Celery worker."
    )


class HealthSerializer(serializers.Serializer):
    status = serializers.ChoiceField(choices=["ok", "degraded"])
    components = serializers.DictField()
    down = serializers.ListField(child=serializers.CharField())
