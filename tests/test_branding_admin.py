"""Branding in the admin, through real admin pages: editing the draft with uploads, the preview with
contrast problems inline, publishing, the diff of two releases, build tokens; and tenant B's staff can
neither see nor publish tenant A's branding."""

from __future__ import annotations

import copy
import json
from typing import Any

from django.contrib.messages import get_messages
from django.core.files.uploadedfile import SimpleUploadedFile
from django.test import Client

from branding import services
from branding.demo import app_icon_png
from branding.models import BrandingDraft, BrandingRelease, BuildToken, hash_token
from branding.selectors import draft_get, release_list
from tenants.models import AuditLogEntry, Membership, Tenant, User
from tests.conftest import make_staff
from tests.fixtures.branding.helpers import _branding_media, publish_sample  # noqa: F401 (autouse fixture)

DRAFTS = "/admin/branding/brandingdraft/"
RELEASES = "/admin/branding/brandingrelease/"
TOKENS = "/admin/branding/buildtoken/"


def admin_client(user: User) -> Client:
    client = Client()
    client.force_login(user)
    return client


def messages_of(response: Any) -> list[str]:
    return [str(m) for m in get_messages(response.wsgi_request)]


def _draft_post(content: dict[str, Any], **files: Any) -> dict[str, Any]:
    return {"content": json.dumps(content), "font_weight": "400", "font_style": "normal", **files}


def test_owner_edits_the_draft_with_an_upload_and_sees_problems(tenant_a: Tenant, owner_a: User) -> None:
    document = publish_sample(tenant_a, publish=False)
    draft = draft_get(tenant=tenant_a)
    client = admin_client(owner_a)
    changed = copy.deepcopy(document)
    changed["identity"]["display_name"] = "Renamed Wallet"
    changed["identity"]["android_application_id"] = "com.example.new"  # a Java keyword: a problem

    response = client.post(f"{DRAFTS}{draft.pk}/change/", _draft_post(
        changed, app_icon_file=SimpleUploadedFile("icon.png", app_icon_png((200, 30, 30)), "image/png")))

    assert response.status_code == 302, response.content[:2000]
    draft.refresh_from_db()
    assert draft.content["identity"]["display_name"] == "Renamed Wallet"
    assert draft.content["images"]["app_icon"] != document["images"]["app_icon"]  # the new upload's hash
    page = client.get(f"{DRAFTS}{draft.pk}/change/").content.decode()
    assert "/identity/android_application_id" in page and "invalid_application_id" in page


def test_a_bad_upload_is_refused_on_its_field_and_nothing_changes(tenant_a: Tenant, owner_a: User) -> None:
    document = publish_sample(tenant_a, publish=False)
    draft = draft_get(tenant=tenant_a)

    response = admin_client(owner_a).post(f"{DRAFTS}{draft.pk}/change/", _draft_post(
        document, logo_file=SimpleUploadedFile("x.svg", b'<svg xmlns="http://www.w3.org/2000/svg">'
                                               b'<script>alert(1)</script></svg>', "image/svg+xml")))

    assert response.status_code == 200
    errors = response.context["adminform"].form.errors
    assert "svg_script" in str(errors["logo_file"])
    assert draft_get(tenant=tenant_a).content == draft.content


def test_preview_renders_light_and_dark_with_contrast_problems_inline(tenant_a: Tenant, owner_a: User) -> None:
    document = publish_sample(tenant_a, publish=False)
    bad = copy.deepcopy(document)
    bad["colors"]["dark"] = {"on_surface": "#333333"}
    services.branding_draft_update(tenant=tenant_a, content=bad)
    draft = draft_get(tenant=tenant_a)

    response = admin_client(owner_a).get(f"{DRAFTS}{draft.pk}/preview/")

    html = response.content.decode()
    assert response.status_code == 200
    assert 'data-mode="light"' in html and 'data-mode="dark"' in html
    assert "Tenant A" in html
    assert "/colors/dark/on_surface" in html and "contrast_too_low" in html
    dark = html.split('data-mode="dark"')[1]
    assert 'class="flag"' in dark  # the failing pair is flagged on the dark phone
    assert "data:image/svg+xml;base64," in html  # the logo, through <img>


def test_owner_publishes_from_the_preview_and_the_action(tenant_a: Tenant, owner_a: User) -> None:
    document = publish_sample(tenant_a, publish=False)
    draft = draft_get(tenant=tenant_a)
    client = admin_client(owner_a)

    response = client.post(f"{DRAFTS}{draft.pk}/publish/")

    assert response.status_code == 302
    assert [r.number for r in release_list(tenant=tenant_a)] == [1]
    assert release_list(tenant=tenant_a).get().published_by == owner_a
    assert AuditLogEntry.objects.filter(tenant=tenant_a, action="admin.action.publish").count() == 1
    changed = copy.deepcopy(document)
    changed["colors"]["seed"] = "#006C4C"
    services.branding_draft_update(tenant=tenant_a, content=changed)
    client.post(DRAFTS, {"action": "publish_drafts", "_selected_action": [str(draft.pk)]})
    assert [r.number for r in release_list(tenant=tenant_a)] == [2, 1]


def test_viewer_cannot_publish(tenant_a: Tenant) -> None:
    publish_sample(tenant_a, publish=False)
    viewer = make_staff(tenant_a, Membership.Role.VIEWER)
    draft = draft_get(tenant=tenant_a)

    response = admin_client(viewer).post(f"{DRAFTS}{draft.pk}/publish/")

    assert response.status_code == 403
    assert not release_list(tenant=tenant_a).exists()


def test_diff_between_two_releases(tenant_a: Tenant, owner_a: User) -> None:
    document = publish_sample(tenant_a)
    changed = copy.deepcopy(document)
    changed["identity"]["display_name"] = "Second Name"
    services.branding_draft_update(tenant=tenant_a, content=changed)
    services.branding_release_publish(tenant=tenant_a)
    first, second = release_list(tenant=tenant_a).order_by("number")

    response = admin_client(owner_a).get(f"{RELEASES}diff/?a={first.pk}&b={second.pk}")

    html = response.content.decode()
    assert response.status_code == 200
    assert "/brand/identity/display_name" in html and "Second Name" in html and "Tenant A" in html
    assert "/brand/colors/seed" not in html  # unchanged fields are not listed


def test_build_token_created_in_admin_is_shown_once_and_stored_hashed(tenant_a: Tenant, owner_a: User) -> None:
    response = admin_client(owner_a).post(f"{TOKENS}add/", {"label": "github"}, follow=True)

    shown = [m for m in messages_of(response) if "copy it now" in m]
    assert len(shown) == 1
    raw = "bbt_" + shown[0].split("bbt_")[1].strip()
    token = BuildToken.all_tenants.get(tenant=tenant_a)
    assert token.token_hash == hash_token(raw) and token.label == "github"


# --- tenant B's staff ----------------------------------------------------------------------------------


def test_tenant_b_admin_cannot_see_or_publish_tenant_a_branding(tenant_a: Tenant, tenant_b: Tenant,
                                                                owner_b: User) -> None:
    # given tenant A's draft (changed since its release 1) and a build token
    document = publish_sample(tenant_a)
    changed = copy.deepcopy(document)
    changed["colors"]["seed"] = "#006C4C"
    services.branding_draft_update(tenant=tenant_a, content=changed)
    draft_a = draft_get(tenant=tenant_a)
    release_a = release_list(tenant=tenant_a).get()
    services.build_token_create(tenant=tenant_a, label="a-ci")
    client = admin_client(owner_b)

    # then tenant B's owner sees none of it in the lists
    for url in (DRAFTS, RELEASES, TOKENS):
        response = client.get(url)
        assert response.status_code == 200
        assert list(response.context["cl"].result_list) == [], url
    # nor on its pages, preview or diff
    assert client.get(f"{DRAFTS}{draft_a.pk}/change/").status_code in (302, 404)
    assert client.get(f"{DRAFTS}{draft_a.pk}/preview/").status_code == 404
    assert client.get(f"{RELEASES}diff/?a={release_a.pk}&b={release_a.pk}").status_code == 404
    page = client.get(f"{RELEASES}{release_a.pk}/change/")
    assert page.status_code in (302, 404) and b"Tenant A" not in page.content

    # and cannot publish it, by URL or by action, nor edit it
    assert client.post(f"{DRAFTS}{draft_a.pk}/publish/").status_code == 404
    client.post(DRAFTS, {"action": "publish_drafts", "_selected_action": [str(draft_a.pk)]})
    client.post(f"{DRAFTS}{draft_a.pk}/change/", _draft_post({"identity": {}}))
    client.post(TOKENS, {"action": "revoke", "_selected_action": [str(t.pk) for t in
                                                                  BuildToken.all_tenants.filter(tenant=tenant_a)]})
    assert [r.number for r in release_list(tenant=tenant_a)] == [1]
    assert BrandingRelease.all_tenants.filter(tenant=tenant_b).count() == 0
    assert BrandingDraft.all_tenants.get(pk=draft_a.pk).content == changed
    assert BuildToken.all_tenants.get(tenant=tenant_a).revoked_at is None


def test_only_managers_see_the_build_hooks_signing_secret(tenant_a: Tenant, owner_a: User) -> None:
    hook = services.build_hook_set(tenant=tenant_a, url="https://ci.example.com/brand-hook")
    url = f"/admin/branding/buildhook/{hook.pk}/change/"
    assert hook.secret in admin_client(owner_a).get(url).content.decode()
    for role in (Membership.Role.SUPPORT, Membership.Role.VIEWER):
        response = admin_client(make_staff(tenant_a, role)).get(url)
        assert response.status_code == 200
        assert hook.secret not in response.content.decode()
