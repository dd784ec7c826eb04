"""Staff branding API: owners and admins check, save and publish their tenant's draft; validation answers
problem+json with a pointer per failing field; other callers and other tenants get nothing."""

from __future__ import annotations

import copy
import json

from branding.selectors import draft_get, release_list
from tenants.models import Membership, Tenant, User
from tests.conftest import AppClient, app_key_of, make_staff
from tests.fixtures.branding.helpers import _branding_media, publish_sample  # noqa: F401 (autouse fixture)

DRAFT = "/api/v1/branding/draft"
CHECK = "/api/v1/branding/draft/check"
PUBLISH = "/api/v1/branding/releases"


def staff_client(tenant: Tenant, user: User) -> AppClient:
    client = AppClient(app_key_of(tenant))
    client.login_as(user)
    return client


def test_invalid_document_answers_problem_json_with_a_pointer_per_field(tenant_a: Tenant, owner_a: User) -> None:
    document = publish_sample(tenant_a, publish=False)
    bad = copy.deepcopy(document)
    bad["identity"]["android_application_id"] = "com.example.class"
    bad["colors"]["light"]["on_primary"] = "#8888FF"
    bad["runtime"]["stream_url"] = "ws://insecure.example.com"

    response = staff_client(tenant_a, owner_a).post(CHECK, {"content": bad}, format="json")

    assert response.status_code == 422
    assert response["Content-Type"] == "application/problem+json"
    body = json.loads(response.content)
    assert body["code"] == "branding_invalid" and body["type"] == "urn:wallet-bff:problem:branding_invalid"
    pointers = {(e["pointer"], e["code"]) for e in body["errors"]}
    assert pointers >= {("/identity/android_application_id", "invalid_application_id"),
                        ("/colors/light/on_primary", "contrast_too_low"),
                        ("/runtime/stream_url", "wss_required")}
    assert staff_client(tenant_a, owner_a).post(CHECK, {"content": document}, format="json").status_code == 204


def test_owner_saves_and_publishes_the_draft(tenant_a: Tenant, owner_a: User) -> None:
    document = publish_sample(tenant_a, publish=False)
    client = staff_client(tenant_a, owner_a)
    changed = copy.deepcopy(document)
    changed["identity"]["display_name"] = "API Wallet"

    saved = client.put(DRAFT, {"content": changed}, format="json")
    published = client.post(PUBLISH)
    again = client.post(PUBLISH)

    assert saved.status_code == 200 and json.loads(saved.content)["problems"] == []
    assert published.status_code == 201
    assert json.loads(published.content)["number"] == 1
    assert (again.status_code, json.loads(again.content)["code"]) == (409, "branding_unchanged")
    assert release_list(tenant=tenant_a).get().content["brand"]["identity"]["display_name"] == "API Wallet"


def test_an_incomplete_draft_is_saved_with_its_problems_and_not_published(tenant_a: Tenant, admin_a: User) -> None:
    client = staff_client(tenant_a, admin_a)

    saved = client.put(DRAFT, {"content": {"identity": {"display_name": "Half done"}}}, format="json")
    published = client.post(PUBLISH)

    problems = {p["pointer"] for p in json.loads(saved.content)["problems"]}
    assert {"/colors", "/identity/ios_bundle_id"} <= problems
    assert (published.status_code, json.loads(published.content)["code"]) == (422, "branding_invalid")
    assert not release_list(tenant=tenant_a).exists()


def test_app_users_and_viewers_cannot_manage_branding(tenant_a: Tenant, user_a: User) -> None:
    document = publish_sample(tenant_a, publish=False)
    viewer = make_staff(tenant_a, Membership.Role.VIEWER)

    for user in (user_a, viewer):
        client = staff_client(tenant_a, user)
        assert client.get(DRAFT).status_code == 403
        assert client.put(DRAFT, {"content": {}}, format="json").status_code == 403
        assert client.post(PUBLISH).status_code == 403
    assert AppClient(app_key_of(tenant_a)).get(DRAFT).status_code == 401
    assert draft_get(tenant=tenant_a).content == document
    assert not release_list(tenant=tenant_a).exists()


def test_tenant_b_owner_only_reaches_tenant_b_branding(tenant_a: Tenant, tenant_b: Tenant, owner_a: User,
                                                      owner_b: User) -> None:
    # given tenant A's draft, changed since release 1
    document = publish_sample(tenant_a)
    changed = copy.deepcopy(document)
    changed["colors"]["seed"] = "#006C4C"
    staff_client(tenant_a, owner_a).put(DRAFT, {"content": changed}, format="json")
    client = staff_client(tenant_b, owner_b)

    # when tenant B's owner reads, saves and publishes through tenant B's app
    read = client.get(DRAFT)
    client.put(DRAFT, {"content": {"identity": {"display_name": "B only"}}}, format="json")
    published = client.post(PUBLISH)

    # then it only ever saw and changed tenant B's (empty, then partial) draft
    assert json.loads(read.content)["content"] == {}
    assert b"Tenant A" not in read.content and str(tenant_a.pk).encode() not in read.content
    assert published.status_code == 422
    assert draft_get(tenant=tenant_a).content == changed
    assert [r.number for r in release_list(tenant=tenant_a)] == [1]
    assert draft_get(tenant=tenant_b).content == {"identity": {"display_name": "B only"}}


def test_a_tenant_a_token_with_tenant_b_app_key_is_refused(tenant_a: Tenant, tenant_b: Tenant,
                                                           owner_a: User) -> None:
    client = AppClient(app_key_of(tenant_b))
    client.login_as(owner_a)

    response = client.post(PUBLISH)

    assert (response.status_code, json.loads(response.content)["code"]) == (401, "token_tenant_mismatch")
