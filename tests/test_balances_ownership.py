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
