"""Projects and memberships API: what works, what bad input gets, token and session login."""

from __future__ import annotations

import re

import pytest
from django.test import Client
from django.urls import reverse
from rest_framework.test import APIClient

from projects.models import Membership, Project, Role
from tests.conftest import client_for
from tests.factories import PASSWORD, MembershipFactory, UserFactory

pytestmark = pytest.mark.django_db


def test_staff_creates_a_project_and_becomes_its_admin():
    staff = UserFactory(username="staff-user", is_staff=True)
    response = client_for(staff).post(
        reverse("project-list"),
        {"slug": "lung-screening", "name": "Lung screening", "deidentify": True},
        format="json",
    )
    assert response.status_code == 201, response.data
    assert response.data["my_roles"] == ["admin"]
    project = Project.objects.get(slug="lung-screening")
    assert Membership.objects.get(project=project, user=staff).role == Role.ADMIN


def test_list_shows_only_the_users_own_projects(project, other_project, users):
    response = client_for(users["radiologist"]).get(reverse("project-list"))
    assert response.status_code == 200
    assert [p["slug"] for p in response.data["results"]] == [project.slug]
    assert response.data["results"][0]["my_roles"] == ["radiologist"]
    assert "uid_secret" not in response.data["results"][0]


def test_admin_adds_changes_and_removes_a_member(project, admin_client):
    newcomer = UserFactory(username="newcomer")
    members_url = reverse("membership-list", kwargs={"project": project.slug})
    created = admin_client.post(
        members_url, {"username": "newcomer", "role": "annotator"}, format="json"
    )
    assert created.status_code == 201, created.data
    detail = reverse(
        "membership-detail", kwargs={"project": project.slug, "pk": created.data["id"]}
    )
    assert admin_client.patch(detail, {"role": "radiologist"}, format="json").status_code == 200
    assert Membership.objects.get(project=project, user=newcomer).role == Role.RADIOLOGIST
    assert admin_client.delete(detail).status_code == 204
    assert not Membership.objects.filter(project=project, user=newcomer).exists()


def test_a_second_admin_allows_the_first_to_step_down(project, users, admin_client):
    MembershipFactory(project=project, role=Role.ADMIN)
    own = Membership.objects.get(project=project, user=users["admin"])
    url = reverse("membership-detail", kwargs={"project": project.slug, "pk": own.pk})
    assert admin_client.patch(url, {"role": "annotator"}, format="json").status_code == 200


# --- bad input: (case, request builder, status, a word the error must contain) ---------


def _own_admin_membership(project, users):
    return Membership.objects.get(project=project, user=users["admin"])


BAD_INPUT = [
    # Creating projects (as site staff).
    ("project: slug with spaces", "staff", "post", lambda p, u: (reverse("project-list"), {"slug": "Bad Slug!", "name": "x"}), 400, "slug"),
    ("project: slug of one character", "staff", "post", lambda p, u: (reverse("project-list"), {"slug": "a", "name": "x"}), 400, "slug"),
    ("project: uppercase slug", "staff", "post", lambda p, u: (reverse("project-list"), {"slug": "Lungs", "name": "x"}), 400, "slug"),
    ("project: duplicate slug", "staff", "post", lambda p, u: (reverse("project-list"), {"slug": p.slug, "name": "x"}), 400, "slug"),
    ("project: no name", "staff", "post", lambda p, u: (reverse("project-list"), {"slug": "no-name"}), 400, "name"),
    ("project: deidentify not a boolean", "staff", "post", lambda p, u: (reverse("project-list"), {"slug": "x-y", "name": "x", "deidentify": "perhaps"}), 400, "deidentify"),
    ("project: unknown field", "staff", "post", lambda p, u: (reverse("project-list"), {"slug": "x-y", "name": "x", "deidentified": False}), 400, "Unknown field"),
    # Adding members (as project admin).
    ("member: unknown username", "admin", "post", lambda p, u: (reverse("membership-list", kwargs={"project": p.slug}), {"username": "nobody-here", "role": "annotator"}), 400, "username"),
    ("member: already a member", "admin", "post", lambda p, u: (reverse("membership-list", kwargs={"project": p.slug}), {"username": u["annotator"].username, "role": "radiologist"}), 400, "already a member"),
    ("member: unknown role", "admin", "post", lambda p, u: (reverse("membership-list", kwargs={"project": p.slug}), {"username": u["non_member"].username, "role": "owner"}), 400, "role"),
    ("member: no role", "admin", "post", lambda p, u: (reverse("membership-list", kwargs={"project": p.slug}), {"username": u["non_member"].username}), 400, "role"),
    # Changing and removing members.
    ("member: change with an unknown field", "admin", "patch", lambda p, u: (reverse("membership-detail", kwargs={"project": p.slug, "pk": _own_admin_membership(p, u).pk}), {"rol": "radiologist"}), 400, "Unknown field"),
    ("member: change to unknown role", "admin", "patch", lambda p, u: (reverse("membership-detail", kwargs={"project": p.slug, "pk": _own_admin_membership(p, u).pk}), {"role": "superuser"}), 400, "role"),
    ("member: demote the last admin", "admin", "patch", lambda p, u: (reverse("membership-detail", kwargs={"project": p.slug, "pk": _own_admin_membership(p, u).pk}), {"role": "radiologist"}), 400, "at least one admin"),
    ("member: remove the last admin", "admin", "delete", lambda p, u: (reverse("membership-detail", kwargs={"project": p.slug, "pk": _own_admin_membership(p, u).pk}), None), 400, "at least one admin"),
    ("member: membership of another project", "admin", "get", lambda p, u: (reverse("membership-detail", kwargs={"project": p.slug, "pk": MembershipFactory().pk}), None), 404, "No"),
]  # fmt: skip


@pytest.mark.parametrize(
    ("case", "actor", "method", "build", "status", "word"), BAD_INPUT, ids=[c[0] for c in BAD_INPUT]
)
def test_bad_input(case, actor, method, build, status, word, project, users):
    user = UserFactory(username="staff-user", is_staff=True) if actor == "staff" else users[actor]
    url, data = build(project, users)
    admins_before = Membership.objects.filter(role=Role.ADMIN).count()
    response = getattr(client_for(user), method)(url, data, format="json")
    assert response.status_code == status, response.data
    assert word.lower() in str(response.data).lower(), response.data
    assert Membership.objects.filter(role=Role.ADMIN).count() == admins_before


# --- token authentication ----------------------------------------------------------------


def test_token_from_username_and_password_authenticates_api_calls(users):
    api = APIClient()
    response = api.post(
        reverse("auth-token"),
        {"username": users["radiologist"].username, "password": PASSWORD},
        format="json",
    )
    assert response.status_code == 200, response.data
    token = response.data["token"]
    assert re.fullmatch(r"[0-9a-f]{40}", token)

    anonymous = APIClient().get(reverse("me"))
    assert anonymous.status_code == 401
    api.credentials(HTTP_AUTHORIZATION=f"Token {token}")
    me = api.get(reverse("me"))
    assert me.status_code == 200
    assert me.data["username"] == users["radiologist"].username


@pytest.mark.parametrize(
    "body",
    [
        {"username": "admin-x", "password": "wrong-password"},
        {"username": "no-such-user", "password": PASSWORD},
        {"username": "admin-x"},
        {},
    ],
    ids=["wrong password", "unknown user", "no password", "empty"],
)
def test_token_refused_for_bad_credentials(body, users):
    body = {**body}
    if body.get("username") == "admin-x":
        body["username"] = users["admin"].username
    response = APIClient().post(reverse("auth-token"), body, format="json")
    assert response.status_code == 400
    assert "token" not in response.data


def test_a_wrong_token_gets_401(users):
    api = APIClient()
    api.credentials(HTTP_AUTHORIZATION="Token " + "0" * 40)
    assert api.get(reverse("me")).status_code == 401


# --- session login through Django's login page -------------------------------------------


def _csrf(html: str) -> str:
    match = re.search(r'name="csrfmiddlewaretoken" value="([^"]+)"', html)
    assert match, "login page has no CSRF token"
    return match.group(1)


def test_session_login_shows_the_users_projects(project, other_project, users):
    browser = Client(enforce_csrf_checks=True)
    assert browser.get("/").status_code == 302  # anonymous: to the login page

    page = browser.get("/accounts/login/")
    assert page.status_code == 200
    response = browser.post(
        "/accounts/login/",
        {
            "username": users["annotator"].username,
            "password": PASSWORD,
            "csrfmiddlewaretoken": _csrf(page.content.decode()),
        },
    )
    assert response.status_code == 302 and response["Location"] == "/"

    home = browser.get("/")
    assert home.status_code == 200
    html = home.content.decode()
    assert project.slug in html and "annotator" in html
    assert other_project.slug not in html


def test_session_login_with_a_wrong_password_stays_on_the_login_page(users):
    browser = Client(enforce_csrf_checks=True)
    page = browser.get("/accounts/login/")
    response = browser.post(
        "/accounts/login/",
        {
            "username": users["annotator"].username,
            "password": "not-the-password",
            "csrfmiddlewaretoken": _csrf(page.content.decode()),
        },
    )
    assert response.status_code == 200
    assert "did not match" in response.content.decode()
    assert browser.get("/").status_code == 302


def test_login_post_without_csrf_token_is_refused(users):
    browser = Client(enforce_csrf_checks=True)
    response = browser.post(
        "/accounts/login/", {"username": users["annotator"].username, "password": PASSWORD}
    )
    assert response.status_code == 403


# --- Django admin --------------------------------------------------------------------


@pytest.mark.parametrize(
    "url",
    [
        "/admin/",
        "/admin/projects/project/",
        "/admin/projects/project/add/",
        "/admin/projects/membership/",
        "/admin/projects/membership/add/",
        "/admin/projects/membership/?q=admin",
    ],
)
def test_admin_pages_for_site_staff(url, project, users):
    superuser = UserFactory(username="root", is_staff=True, is_superuser=True)
    browser = Client()
    browser.force_login(superuser)
    assert browser.get(url).status_code == 200


def test_admin_change_page_and_non_staff_refused(project, users):
    superuser = UserFactory(username="root", is_staff=True, is_superuser=True)
    browser = Client()
    browser.force_login(superuser)
    assert browser.get(f"/admin/projects/project/{project.pk}/change/").status_code == 200
    ordinary = Client()
    ordinary.force_login(users["admin"])  # project admin, not site staff
    response = ordinary.get("/admin/projects/project/")
    assert response.status_code == 302 and "/admin/login/" in response["Location"]


def test_staff_can_add_a_member_through_the_admin(project):
    superuser = UserFactory(username="root", is_staff=True, is_superuser=True)
    newcomer = UserFactory(username="via-admin")
    browser = Client()
    browser.force_login(superuser)
    response = browser.post(
        "/admin/projects/membership/add/",
        {"project": project.pk, "user": newcomer.pk, "role": "radiologist"},
    )
    assert response.status_code == 302, response.content.decode()[:2000]
    assert Membership.objects.get(project=project, user=newcomer).role == Role.RADIOLOGIST
