"""Linking a bank account checks, where the adapter can tell (Unit names the account's customers), that the
account belongs to the user's customer at the bank. Unit is faked at the HTTP edge only, with the
documented `depositAccount` payload."""

from __future__ import annotations

import asyncio
import copy
import json
from pathlib import Path
from typing import Any

import httpx
import pytest

from tenants.models import Tenant, User
from tests.conftest import AppClient
from tests.factories import UserFactory
from wallet.balances import services
from wallet.balances.breaker import breakers_reset
from wallet.balances.errors import BankCustomerTaken
from wallet.balances.models import LinkedBankAccount, ProviderConfig
from wallet.balances.providers.banking import UnitBanking

FIXTURES = Path(__file__).parent / "fixtures" / "balances"
DOCUMENT = json.loads((FIXTURES / "unit_deposit_account.json").read_text())  # account 42 of customer 45555


def unit_serving(document: dict[str, Any]) -> UnitBanking:
    def handler(request: httpx.Request) -> httpx.Response:
        if request.url.path == f"/accounts/{document['data']['id']}":
            return httpx.Response(200, json=document, headers={"Content-Type": "application/vnd.api+json"})
        return httpx.Response(404, json={"errors": [{"status": "404", "title": "Not Found"}]})

    return UnitBanking(token="t", timeout=2, transport=httpx.MockTransport(handler))


def test_unit_reads_the_owners_of_an_account_and_of_a_joint_account() -> None:
    assert asyncio.run(unit_serving(DOCUMENT).account_get("42")).owners == ("45555",)
    joint = copy.deepcopy(DOCUMENT)
    joint["data"]["relationships"] = {"customers": {"data": [{"type": "customer", "id": "45555"},
                                                             {"type": "customer", "id": "45556"}]}}
    assert asyncio.run(unit_serving(joint).account_get("42")).owners == ("45555", "45556")


@pytest.fixture
def unit_tenant(tenant_a: Tenant, settings: Any, monkeypatch: pytest.MonkeyPatch) -> ProviderConfig:
    settings.BALANCES_CONFIG_CACHE_SECONDS = 0
    breakers_reset()
    config = ProviderConfig.all_tenants.create(tenant=tenant_a, kind="banking", provider="unit")
    monkeypatch.setattr(services, "banking_provider", lambda **_: unit_serving(DOCUMENT))
    return config


def link(client: AppClient, ref: str) -> Any:
    return client.post("/api/v1/bank-accounts", {"account_ref": ref}, format="json",
                       HTTP_IDEMPOTENCY_KEY=f"link-{ref}-{id(client)}")


def test_only_the_owner_at_the_bank_can_link_the_account(unit_tenant: ProviderConfig, client_a: AppClient,
                                                         user_a: User) -> None:
    tenant = user_a.tenant
    client_a.login_as(user_a)
    stranger = UserFactory(tenant=tenant)
    services.bank_customer_set(tenant=tenant, user=stranger, provider="unit", customer_ref="99999")
    other_client = AppClient(client_a.app_key)
    other_client.login_as(stranger)

    # a user the bank does not know as the account's customer: the answer for an unknown account
    refused = link(other_client, "42")
    assert (refused.status_code, refused.json()["code"]) == (422, "bank_account_not_found")
    # nor does a user without any customer at the bank get it
    assert link(client_a, "42").json()["code"] == "bank_account_not_found"
    assert not LinkedBankAccount.all_tenants.exists()

    # when onboarding records that user_a is customer 45555, the link goes through
    services.bank_customer_set(tenant=tenant, user=user_a, provider="unit", customer_ref="45555")
    response = client_a.post("/api/v1/bank-accounts", {"account_ref": "42"}, format="json",
                             HTTP_IDEMPOTENCY_KEY="link-42-again")
    assert response.status_code == 201
    assert LinkedBankAccount.all_tenants.get().user_id == user_a.pk


def test_a_customer_belongs_to_one_user_and_the_check_can_be_turned_off(unit_tenant: ProviderConfig,
                                                                        client_a: AppClient, user_a: User) -> None:
    tenant = user_a.tenant
    services.bank_customer_set(tenant=tenant, user=user_a, provider="unit", customer_ref="45555")
    with pytest.raises(BankCustomerTaken):
        services.bank_customer_set(tenant=tenant, user=UserFactory(tenant=tenant), provider="unit",
                                   customer_ref="45555")

    # a tenant whose onboarding does not record customers yet turns the check off explicitly
    unit_tenant.options = {"verify_owner": False}
    unit_tenant.save()
    someone = UserFactory(tenant=tenant)
    client_a.login_as(someone)
    assert link(client_a, "42").status_code == 201


def test_a_closed_account_of_another_customer_answers_not_found(tenant_a: Tenant, settings: Any,
                                                                monkeypatch: pytest.MonkeyPatch,
                                                                client_a: AppClient, user_a: User) -> None:
    """The owner check comes before the status check: a stranger learns nothing of the account, not even
    that it exists and is closed; its owner hears that it is closed."""
    settings.BALANCES_CONFIG_CACHE_SECONDS = 0
    breakers_reset()
    ProviderConfig.all_tenants.create(tenant=tenant_a, kind="banking", provider="unit")
    closed = copy.deepcopy(DOCUMENT)
    closed["data"]["attributes"]["status"] = "Closed"
    monkeypatch.setattr(services, "banking_provider", lambda **_: unit_serving(closed))
    client_a.login_as(user_a)
    services.bank_customer_set(tenant=tenant_a, user=user_a, provider="unit", customer_ref="99999")
    assert link(client_a, "42").json()["code"] == "bank_account_not_found"
    services.bank_customer_set(tenant=tenant_a, user=UserFactory(tenant=tenant_a), provider="unit",
                               customer_ref="45555")
    owner = UserFactory(tenant=tenant_a)
    LinkedBankAccount.all_tenants.all().delete()
    from wallet.balances.models import BankCustomer

    BankCustomer.all_tenants.filter(customer_ref="45555").update(user=owner)
    client_a.login_as(owner)
    response = link(client_a, "42")
    assert response.status_code == 422 and response.json()["code"] != "bank_account_not_found"


def test_a_unit_account_without_its_owners_is_refused(unit_tenant: ProviderConfig, client_a: AppClient,
                                                      user_a: User, monkeypatch: pytest.MonkeyPatch) -> None:
    """Unit names an account's customers; a document without them fails closed (not open to everyone)."""
    anonymous = copy.deepcopy(DOCUMENT)
    anonymous["data"]["relationships"] = {}
    monkeypatch.setattr(services, "banking_provider", lambda **_: unit_serving(anonymous))
    services.bank_customer_set(tenant=user_a.tenant, user=user_a, provider="unit", customer_ref="45555")
    client_a.login_as(user_a)
    assert link(client_a, "42").json()["code"] == "bank_account_not_found"
    assert not LinkedBankAccount.all_tenants.exists()


@pytest.mark.parametrize("ref", ["42#", "..", "42%2F..", "42/x", "a b", ""])
def test_unit_refuses_account_ids_that_change_the_path(ref: str) -> None:
    from wallet.balances.providers.errors import ProviderNotFound

    with pytest.raises(ProviderNotFound):
        asyncio.run(unit_serving(DOCUMENT).account_get(ref))


def test_a_provider_cannot_be_pointed_at_another_host(tenant_a: Tenant) -> None:
    """`options.base_url` would carry the stored token to wherever it points (or to an internal address):
    only HTTPS to the provider's own hosts is accepted, in the adapter factory and in the admin form."""
    from wallet.balances.admin import ProviderConfigForm
    from wallet.balances.providers.errors import ProviderNotConfigured
    from wallet.balances.providers.factory import provider_base_url

    assert provider_base_url("unit", {"base_url": "https://api.unit.co/"}) == "https://api.unit.co"
    assert provider_base_url("coingecko", {}) == ""
    for url in ("https://evil.example", "http://api.unit.co", "https://169.254.169.254",
                "https://api.unit.co:8443", "https://user@api.unit.co"):
        with pytest.raises(ProviderNotConfigured):
            provider_base_url("unit", {"base_url": url})
    form = ProviderConfigForm(data={"tenant": tenant_a.pk, "kind": "banking", "provider": "unit", "enabled": True,
                                    "options": json.dumps({"base_url": "https://evil.example"})})
    from wallet.core.context import tenant_scope

    with tenant_scope(tenant_a):
        assert not form.is_valid()
    assert "not an allowed unit endpoint" in str(form.errors["options"])
