"""Operator commands: create_tenant, rotate_app_key, seed_demo."""

from __future__ import annotations

import json
from io import StringIO

import pytest
from django.core.management import CommandError, call_command

from tenants.models import AppKey, AuditLogEntry, Membership, Tenant, User
from tests.conftest import AppClient


def _run(*args: str) -> dict:
    out = StringIO()
    call_command(*args, stdout=out)
    return json.loads(out.getvalue())


def test_create_tenant_prints_json_with_a_working_app_key(db) -> None:
    result = _run("create_tenant", "acme", "--name", "Acme Pay")
    assert result["slug"] == "acme"
    tenant = Tenant.objects.get(slug="acme")
    assert result["tenant_id"] == str(tenant.pk)
    assert AppKey.all_tenants.get(tenant=tenant).key == result["app_key"]
    response = AppClient(result["app_key"]).post(
        "/api/v1/auth/register", {"email": "u@acme.example", "password": "a-long-unusual-passphrase"}, format="json"
    )
    assert response.status_code == 201
    assert AuditLogEntry.objects.filter(tenant=tenant, action="tenant.create").exists()


def test_create_tenant_with_an_owner_prints_its_password_once(db, client) -> None:
    result = _run("create_tenant", "acme", "--name", "Acme", "--admin-email", "boss@acme.example")
    owner = User.objects.get(email="boss@acme.example")
    assert owner.tenant.slug == "acme" and owner.is_staff and not owner.is_superuser
    assert Membership.all_tenants.get(user=owner).role == "owner"
    assert owner.check_password(result["admin"]["password"])
    response = client.post("/admin/login/?next=/admin/", {"tenant": "acme", "username": "boss@acme.example",
                                                          "password": result["admin"]["password"]})
    assert response.status_code == 302 and response["Location"] == "/admin/"


@pytest.mark.parametrize("slug", ["Bad Slug", "-x", "x" * 51, "UPPER"])
def test_create_tenant_refuses_bad_slugs(db, slug: str) -> None:
    with pytest.raises(CommandError):
        call_command("create_tenant", slug, "--name", "X", stdout=StringIO())
    assert not Tenant.objects.exists()


def test_create_tenant_refuses_an_existing_slug(tenant_a: Tenant) -> None:
    with pytest.raises(CommandError, match="already exists"):
        call_command("create_tenant", "tenant-a", "--name", "Again", stdout=StringIO())


def test_rotate_app_key_keeps_or_revokes_previous_keys(tenant_a: Tenant) -> None:
    first = AppKey.all_tenants.get(tenant=tenant_a).key
    kept = _run("rotate_app_key", "tenant-a")
    assert kept["slug"] == "tenant-a" and kept["app_key"] != first
    assert [p["key"] for p in kept["previous_keys"]] == [first]
    assert AppKey.all_tenants.filter(tenant=tenant_a, revoked_at__isnull=True).count() == 2
    revoked = _run("rotate_app_key", "tenant-a", "--revoke-previous")
    live = AppKey.all_tenants.filter(tenant=tenant_a, revoked_at__isnull=True)
    assert [k.key for k in live] == [revoked["app_key"]]
    assert AppClient(first).get("/api/v1/me").json()["code"] == "invalid_app_key"


def test_rotate_app_key_of_an_unknown_tenant_fails(db) -> None:
    with pytest.raises(CommandError):
        call_command("rotate_app_key", "nope", stdout=StringIO())


def test_seed_demo_is_idempotent(db) -> None:
    first = _run("seed_demo", "--json")
    second = _run("seed_demo", "--json")
    assert first == second
    assert Tenant.objects.filter(slug="demo").count() == 1
    assert User.objects.filter(tenant__slug="demo").count() == 3
    client = AppClient(first["app_key"])
    tokens = client.post("/api/v1/auth/token", first["app_user"], format="json")
    assert tokens.status_code == 200


def test_seed_demo_refuses_production(db, settings) -> None:
    settings.PRODUCTION = True
    with pytest.raises(CommandError, match="production"):
        call_command("seed_demo", stdout=StringIO())
