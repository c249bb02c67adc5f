"""URL map: pages (home, a project's viewer), /api/... (DRF), /dicom-web/... (authorizing
DICOMweb proxy), admin, docs."""

from django.contrib import admin
from django.contrib.auth import views as auth_views
from django.urls import include, path
from drf_spectacular.views import SpectacularAPIView, SpectacularSwaggerView

from config.views import home, viewer

urlpatterns = [
    path("", home, name="home"),
    path("projects/<slug:project>/viewer/", viewer, name="viewer"),
    path("admin/", admin.site.urls),
    path("accounts/login/", auth_views.LoginView.as_view(), name="login"),
    path("accounts/logout/", auth_views.LogoutView.as_view(), name="logout"),
    path("api/schema", SpectacularAPIView.as_view(), name="api-schema"),
    path("api/docs", SpectacularSwaggerView.as_view(url_name="api-schema"), name="api-docs"),
    path("api/", include("projects.urls")),
    path("api/", include("imaging.urls")),
    path("api/", include("annotations.urls")),
    path("api/", include("ai_engine.registry.urls")),
    path("", include("imaging.proxy_urls")),
]
