from django.urls import path

from projects import api

urlpatterns = [
    path("health", api.HealthView.as_view(), name="health"),
    path("auth/token", api.TokenView.as_view(), name="auth-token"),
    path("me", api.MeView.as_view(), name="me"),
    path("projects", api.ProjectListView.as_view(), name="project-list"),
    path("projects/<slug:project>", api.ProjectDetailView.as_view(), name="project-detail"),
    path(
        "projects/<slug:project>/members",
        api.MembershipListView.as_view(),
        name="membership-list",
    ),
    path(
        "projects/<slug:project>/members/<int:pk>",
        api.MembershipDetailView.as_view(),
        name="membership-detail",
    ),
]
