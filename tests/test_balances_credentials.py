"""Provider credentials: encrypted at rest with rotatable keys, never shown back (admin, API); the scheduled
refresh; another user's or tenant's bank accounts and balances are never returned."""

from __future__ import annotations

import io
import json
from collections.abc import Iterator
from typing import Any

import pytest
from cryptography.fernet import Fernet, InvalidToken
from django.core.management import call_command
from django.core.management.base import CommandError
from django.test import Client

from tenants.models import Membership, Tenant, User
from tests.conftest import AppClient, app_key_of, celery_eager, make_staff
from tests.factories import UserFactory
from tests.ledger_helpers import enable, fund
from wallet.balances.crypto import credentials_decrypt, credentials_encrypt
from wallet.balances.models import ProviderConfig
from wallet.balances.services import bank_account_link
from wallet.balances.tasks import refresh_all
from wallet.events.models import OutboxEvent

SECRET = "unit-live-token-do-not-show"


def test_credentials_are_encrypted_at_rest_and_rotate(settings: Any, tenant_a: Tenant) -> None:
    old, new = Fernet.generate_key().decode(), Fernet.generate_key().decode()
    settings.BALANCES_CREDENTIAL_KEYS = old
    config = ProviderConfig.all_tenants.create(tenant=tenant_a, kind="banking", provider="unit",
                                               credentials_encrypted=credentials_encrypt({"token": SECRET}))
    stored = ProviderConfig.all_tenants.values_list("credentials_encrypted", flat=True).get(pk=config.pk)
    assert SECRET not in stored and credentials_decrypt(stored) == {"token": SECRET}

    # rotation: the new key first, the old one still accepted, then re-encrypt every row
    settings.BALANCES_CREDENTIAL_KEYS = f"{new},{old}"
    call_command("balances_rotate_credentials", stdout=io.StringIO())
    rotated = ProviderConfig.all_tenants.values_list("credentials_encrypted", flat=True).get(pk=config.pk)
    assert rotated != stored

    # the old key can go: the rows open with the new key alone, and no longer with the old one
    settings.BALANCES_CREDENTIAL_KEYS = new
    assert credentials_decrypt(rotated) == {"token": SECRET}
    settings.BALANCES_CREDENTIAL_KEYS = old
    with pytest.raises(InvalidToken):
        credentials_decrypt(rotated)


def test_rotation_refuses_rows_no_key_opens_and_changes_nothing(settings: Any, tenant_a: Tenant) -> None:
    settings.BALANCES_CREDENTIAL_KEYS = Fernet.generate_key().decode()
    config = ProviderConfig.all_tenants.create(tenant=tenant_a, kind="prices", provider="coingecko",
                                               credentials_encrypted=credentials_encrypt({"api_key": "k"}))
    settings.BALANCES_CREDENTIAL_KEYS = Fernet.generate_key().decode()  # the old key was dropped too early
    with pytest.raises(CommandError, match="nothing was changed"):
        call_command("balances_rotate_credentials")
    assert ProviderConfig.all_tenants.get(pk=config.pk).credentials_encrypted == config.credentials_encrypted


def test_admin_never_shows_credentials_and_stores_them_encrypted(tenant_a: Tenant) -> None:
    owner = make_staff(tenant_a, Membership.Role.OWNER)
    client = Client()
    client.force_login(owner)

    response = client.post("/admin/balances/providerconfig/add/", {
        "kind": "banking", "provider": "unit", "options": "{}", "enabled": "on",
        "credentials": json.dumps({"token": SECRET}),
    })
    assert response.status_code == 302, response.content.decode()[-2000:]
    config = ProviderConfig.all_tenants.get(tenant=tenant_a)
    assert credentials_decrypt(config.credentials_encrypted) == {"token": SECRET}

    page = client.get(f"/admin/balances/providerconfig/{config.pk}/change/").content.decode()
    listing = client.get("/admin/balances/providerconfig/").content.decode()
    for html in (page, listing):
        assert SECRET not in html
        assert config.credentials_encrypted not in html

    # saving without credentials keeps the stored ones
    client.post(f"/admin/balances/providerconfig/{config.pk}/change/", {
        "kind": "banking", "provider": "unit", "options": "{}", "enabled": "on", "credentials": ""})
    assert credentials_decrypt(ProviderConfig.all_tenants.get(pk=config.pk).credentials_encrypted) == {
        "token": SECRET}


def test_another_users_bank_accounts_and_balances_are_never_returned(user_a: User, user_b: User) -> None:
    # given alice with a linked account and funds, bob in the same tenant, carol in another tenant
    tenant = user_a.tenant
    enable(tenant, "USD")
    enable(user_b.tenant, "USD")
    fund(user_a, 777_777)
    mine = bank_account_link(tenant=tenant, user=user_a, account_ref="sandbox-alice-only")
    bob = UserFactory(tenant=tenant, email="bob-same-tenant@example.com")
    alice = AppClient(app_key_of(tenant))
    alice.login_as(user_a)
    alice.get("/api/v1/balances")  # alice's snapshot is in the cache

    for other, tenant_of_other in ((bob, tenant), (user_b, user_b.tenant)):
        client = AppClient(app_key_of(tenant_of_other))
        client.login_as(other)
        listed = client.get("/api/v1/bank-accounts")
        balances = client.get("/api/v1/balances")
        detail = client.get(f"/api/v1/bank-accounts/{mine.pk}")
        removed = client.delete(f"/api/v1/bank-accounts/{mine.pk}")

        # then neither sees alice's account, balance or link, and neither can remove it
        assert listed.json()["results"] == []
        assert [s["id"] for s in balances.json()["sources"]] == ["ledger"]
        for response in (listed, balances):
            assert str(mine.pk) not in response.content.decode() and "777777" not in response.content.decode()
        assert (detail.status_code, removed.status_code) == (404, 404)
    assert [s["kind"] for s in alice.get("/api/v1/balances").json()["sources"]] == ["ledger", "bank"]


@pytest.fixture
def eager() -> Iterator[None]:
    """Fan-out tasks run in process (under `make test` REDIS_URL is set, which turns eager mode off)."""
    with celery_eager(True):
        yield


def test_scheduled_refresh_updates_users_with_linked_accounts(user_a: User, eager: None, settings: Any) -> None:
    settings.BALANCES_CONFIG_CACHE_SECONDS = 0  # the config changes below must apply at once
    tenant = user_a.tenant
    enable(tenant, "USD")
    bank_account_link(tenant=tenant, user=user_a, account_ref="sandbox-refresh")
    config = ProviderConfig.all_tenants.create(tenant=tenant, kind="banking", provider="sandbox")
    assert refresh_all() == 1  # first snapshot (nothing to compare with: no event)
    assert not OutboxEvent.all_tenants.filter(type="balances.updated").exists()

    # when the bank starts failing, the scheduled refresh marks the source stale and says so on the stream
    config.options = {"failure_rate": 1}
    config.save()
    refresh_all()

    [event] = OutboxEvent.all_tenants.filter(type="balances.updated")
    bank = next(s for s in event.data["sources"] if s["id"].startswith("bank:"))
    assert (bank["status"], bank["error"]) == ("stale", "provider_unavailable")


def test_the_refresh_is_registered_with_the_scheduler(settings: Any) -> None:
    from django.conf import settings as live

    assert live.CELERY_BEAT_SCHEDULE["balances-refresh"]["task"] == "balances.refresh_all"
