"""The branding endpoints: the runtime answer (app key only, ETag and 304) and the bundle download with a
per-tenant read-only build token."""

from __future__ import annotations

import copy
import hashlib
import io
import json
import zipfile
from typing import Any

from django.core.management import call_command
from django.db import connection
from django.test.utils import CaptureQueriesContext

from branding import services
from branding.models import BuildToken
from tenants.models import Tenant
from tests.conftest import AppClient, app_key_of
from tests.fixtures.branding.helpers import _branding_media, publish_sample  # noqa: F401 (autouse fixture)

RUNTIME = "/api/v1/branding"


def bundle_url(number: int) -> str:
    return f"/api/v1/branding/releases/{number}/bundle.zip"


def problem(response: Any) -> tuple[int, str | None]:
    return response.status_code, json.loads(response.content).get("code")


# --- runtime ----------------------------------------------------------------------------------------------


def test_runtime_answers_the_current_release_with_an_etag_without_sign_in(tenant_a: Tenant) -> None:
    publish_sample(tenant_a)
    client = AppClient(app_key_of(tenant_a))

    response = client.get(RUNTIME)

    assert response.status_code == 200
    body = json.loads(response.content)
    assert body["release"] == 1
    assert body["identity"]["display_name"] == "Tenant A"
    assert body["colors"]["light"]["primary"].startswith("#")
    assert body["runtime"]["app_key"] == app_key_of(tenant_a)
    assert response["ETag"] == f'"r1-{body["content_hash"][:20]}"'
    assert "X-App-Key" in response["Vary"]


def test_if_none_match_gets_304_without_a_query(tenant_a: Tenant) -> None:
    publish_sample(tenant_a)
    client = AppClient(app_key_of(tenant_a))
    etag = client.get(RUNTIME)["ETag"]

    with CaptureQueriesContext(connection) as queries:
        response = client.get(RUNTIME, HTTP_IF_NONE_MATCH=etag)

    assert response.status_code == 304
    assert response.content == b""
    assert response["ETag"] == etag
    assert len(queries) == 0  # app key and current ETag both come from per-process caches
    assert client.get(RUNTIME, HTTP_IF_NONE_MATCH='"r0-stale"').status_code == 200
    assert client.get(RUNTIME, HTTP_IF_NONE_MATCH=f'"other", W/{etag}').status_code == 304


def test_a_new_release_changes_the_etag(tenant_a: Tenant) -> None:
    document = publish_sample(tenant_a)
    client = AppClient(app_key_of(tenant_a))
    old = client.get(RUNTIME)["ETag"]
    changed = copy.deepcopy(document)
    changed["features"]["fiat_enabled"] = False
    services.branding_draft_update(tenant=tenant_a, content=changed)
    services.branding_release_publish(tenant=tenant_a)

    response = client.get(RUNTIME, HTTP_IF_NONE_MATCH=old)

    assert response.status_code == 200
    assert response["ETag"] != old
    assert json.loads(response.content)["features"]["fiat_enabled"] is False


def test_runtime_is_per_tenant_and_404_when_unpublished(tenant_a: Tenant, tenant_b: Tenant) -> None:
    publish_sample(tenant_a)

    response = AppClient(app_key_of(tenant_b)).get(RUNTIME)

    assert problem(response) == (404, "branding_not_published")
    assert b"Tenant A" not in response.content


def test_runtime_needs_an_app_key(db: Any) -> None:
    assert problem(AppClient(None).get(RUNTIME))[0] == 401


# --- bundle with build tokens -----------------------------------------------------------------------------


def _token(tenant: Tenant) -> str:
    _, raw = services.build_token_create(tenant=tenant, label="ci")
    return raw


def test_a_build_token_downloads_the_reproducible_bundle(tenant_a: Tenant) -> None:
    publish_sample(tenant_a)
    client = AppClient(app_key_of(tenant_a))
    token = _token(tenant_a)

    first = client.get(bundle_url(1), HTTP_AUTHORIZATION=f"Bearer {token}")
    second = client.get(bundle_url(1), HTTP_AUTHORIZATION=f"Bearer {token}")

    assert first.status_code == 200
    assert first["Content-Type"] == "application/zip"
    assert first.content == second.content
    assert first["ETag"] == f'"{hashlib.sha256(first.content).hexdigest()}"'
    with zipfile.ZipFile(io.BytesIO(first.content)) as archive:
        manifest = json.loads(archive.read("manifest.json"))
    assert (manifest["tenant"], manifest["release"]) == ("tenant-a", 1)
    assert BuildToken.all_tenants.get(tenant=tenant_a).last_used_at is not None


def test_tenant_b_build_token_cannot_fetch_tenant_a_bundle(tenant_a: Tenant, tenant_b: Tenant) -> None:
    # given both tenants have release 1 and tenant B has a build token
    publish_sample(tenant_a)
    publish_sample(tenant_b)
    token_b = _token(tenant_b)

    # when B's token is used with A's app key, it is refused
    response = AppClient(app_key_of(tenant_a)).get(bundle_url(1), HTTP_AUTHORIZATION=f"Bearer {token_b}")
    assert problem(response) == (401, "build_token_invalid")
    assert response["WWW-Authenticate"].startswith("Bearer")

    # and with B's own app key it only ever gets B's release 1
    own = AppClient(app_key_of(tenant_b)).get(bundle_url(1), HTTP_AUTHORIZATION=f"Bearer {token_b}")
    with zipfile.ZipFile(io.BytesIO(own.content)) as archive:
        assert json.loads(archive.read("manifest.json"))["tenant"] == "tenant-b"
        assert b"Tenant A" not in archive.read("android/app/src/main/res/values/strings.xml")


def test_bundle_refuses_user_tokens_revoked_tokens_and_missing_releases(tenant_a: Tenant, user_a: Any) -> None:
    publish_sample(tenant_a)
    client = AppClient(app_key_of(tenant_a))
    token = _token(tenant_a)

    assert problem(client.get(bundle_url(1)))[1] == "build_token_invalid"
    signed_in = AppClient(app_key_of(tenant_a))
    signed_in.login_as(user_a)  # an app user's access token is not a build token
    assert problem(signed_in.get(bundle_url(1)))[1] == "build_token_invalid"
    assert problem(client.get(bundle_url(2), HTTP_AUTHORIZATION=f"Bearer {token}")) == (404, "not_found")

    services.build_token_revoke(tenant=tenant_a, token=BuildToken.all_tenants.get(tenant=tenant_a))
    assert problem(client.get(bundle_url(1), HTTP_AUTHORIZATION=f"Bearer {token}"))[1] == "build_token_invalid"


def test_build_tokens_are_stored_hashed_and_rotated_by_the_command(tenant_a: Tenant) -> None:
    out = io.StringIO()
    call_command("branding_build_token", "tenant-a", "--label", "ci", stdout=out)
    first = json.loads(out.getvalue())["token"]
    out = io.StringIO()
    call_command("branding_build_token", "tenant-a", "--rotate", stdout=out)
    second = json.loads(out.getvalue())["token"]

    rows = list(BuildToken.all_tenants.filter(tenant=tenant_a).order_by("created_at"))
    assert [r.token_hash for r in rows] == [hashlib.sha256(t.encode()).hexdigest() for t in (first, second)]
    assert all(first not in str(value) for r in rows for value in r.__dict__.values())
    assert rows[0].revoked_at is not None and rows[1].revoked_at is None


def test_head_answers_like_get_without_a_body(tenant_a: Tenant) -> None:
    publish_sample(tenant_a)
    client = AppClient(app_key_of(tenant_a))

    response = client.head(RUNTIME)

    assert response.status_code == 200
    assert response.content == b""
    assert response["ETag"] == client.get(RUNTIME)["ETag"]
