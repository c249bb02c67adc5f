"""The pages: the landing page (who you are, your projects) and a project's viewer."""

import json

from django.conf import settings
from django.contrib.auth.decorators import login_required
from django.middleware.csrf import get_token
from django.shortcuts import render

from annotations.models import KIND_MODALITY
from projects.permissions import resolve_project
from projects.selectors import projects_visible_to, roles_of

# What `make frontend` builds (frontend/, Vite) and Django serves as static files.
VIEWER_BUNDLE = settings.BASE_DIR / "frontend" / "dist" / "viewer" / "viewer.js"


@login_required
def home(request):
    projects = [
        {"project": p, "roles": sorted(roles_of(request.user, p))}
        for p in projects_visible_to(request.user)
    ]
    return render(request, "home.html", {"projects": projects})


@login_required
def viewer(request, project: str):
    """The Cornerstone3D viewer for one project: the page only hosts it; the data comes
    from the API and the DICOMweb proxy, which check the user's role on every request."""
    found = resolve_project(request.user, project)  # 404 for non-members, as the API
    context = {
        "project": found,
        "roles": " ".join(sorted(roles_of(request.user, found))),
        "csrf_token": get_token(request),
        # What a radiologist may add on a series of each modality: the API's rule, so the
        # viewer offers exactly what the API accepts.
        "additions": json.dumps({modality: kind for kind, modality in KIND_MODALITY.items()}),
    }
    if not VIEWER_BUNDLE.exists():
        return render(request, "viewer_missing.html", context, status=503)
    return render(request, "viewer.html", context)
