"""The landing page: who you are, your projects, where the API and viewer are."""

from django.contrib.auth.decorators import login_required
from django.shortcuts import render

from projects.selectors import projects_visible_to, roles_of


@login_required
def home(request):
    projects = [
        {"project": p, "roles": sorted(roles_of(request.user, p))}
        for p in projects_visible_to(request.user)
    ]
    return render(request, "home.html", {"projects": projects})
