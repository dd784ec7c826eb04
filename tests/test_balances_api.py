"""GET /api/v1/balances, the display-currency preference and linked bank accounts, over HTTP."""

from __future__ import annotations

from typing import Any

import pytest
from django.core.cache import cache

from tenants.models import Tenant, User
from tests.conftest import AppClient
from tests.factories import UserFactory
from tests.ledger_helpers import enable, fund
from wallet.balances.breaker import breakers_reset
from wallet.balances.models import LinkedBankAccount, ProviderConfig
from wallet.balances.services import snapshot_key
from wallet.events.models import OutboxEvent


@pytest.fixture(autouse=True)
def _fresh_breakers() -> None:
    breakers_reset()


@pytest.fixture
def alice(client_a: AppClient, user_a: User) -> AppClient:
    enable(user_a.tenant, "USD")
    enable(user_a.tenant, "EUR")
    fund(user_a, 12_345)
    fund(user_a, 1_000, "EUR")
    client_a.login_as(user_a)
    return client_a


def link(client: AppClient, ref: str, key: str | None = None) -> Any:
    return client.post("/api/v1/bank-accounts", {"account_ref": ref}, format="json",
                       HTTP_IDEMPOTENCY_KEY=key or f"link-{ref}")


def test_balances_show_ledger_accounts_in_the_display_currency(alice: AppClient) -> None:
    # given a user with 123.45 USD and 10.00 EUR in the wallet; when they read their balances
    response = alice.get("/api/v1/balances")

    # then every ledger account is there with its amount, and the total is in USD (sandbox EUR = 1.08 USD)
    assert response.status_code == 200, response.content
    body = response.json()
    assert (body["currency"], body["decimals"]) == ("USD", 2)
    [ledger] = body["sources"]
    assert (ledger["id"], ledger["kind"], ledger["status"], ledger["error"]) == ("ledger", "ledger", "fresh", None)
    entries = {e["asset"]: (e["amount"], e["decimals"], e["value"]) for e in ledger["entries"]}
    assert entries == {"USD": ("12345", 2, "123.45"), "EUR": ("1000", 2, "10.80")}
    assert body["total"] == {"value": "134.25", "complete": True}
    assert body["rates"]["status"] == "fresh"


def test_currency_parameter_and_preference(alice: AppClient) -> None:
    # when the user asks for EUR once, then sets EUR as their preference
    once = alice.get("/api/v1/balances?currency=eur").json()
    assert once["currency"] == "EUR"
    assert once["total"]["value"] == "124.31"  # 123.45 / 1.08 = 114.305..., + 10.00 -> 124.305... -> half-even
    assert alice.get("/api/v1/balances").json()["currency"] == "USD"
    response = alice.patch("/api/v1/balances/preferences", {"display_currency": "eur"}, format="json")
    assert response.status_code == 200
    assert response.json()["display_currency"] == "EUR"

    # then later reads are in EUR
    assert alice.get("/api/v1/balances").json()["currency"] == "EUR"
    assert alice.get("/api/v1/balances/preferences").json()["display_currency"] == "EUR"


def test_unknown_currency_is_refused(alice: AppClient) -> None:
    response = alice.get("/api/v1/balances?currency=XYZ")
    assert response.status_code == 400
    assert response.json()["code"] == "unsupported_currency"
    response = alice.patch("/api/v1/balances/preferences", {"display_currency": "ETH"}, format="json")
    assert response.json()["code"] == "unsupported_currency"


def test_link_list_and_remove_a_sandbox_bank_account(alice: AppClient, user_a: User) -> None:
    # when the user links a sandbox account
    response = link(alice, "sandbox-checking-1")
    assert response.status_code == 201, response.content
    account = response.json()
    assert (account["provider"], account["currency"], account["status"]) == ("sandbox", "USD", "active")
    assert response["Location"] == f"/api/v1/bank-accounts/{account['id']}"

    # then it is listed, and its balance joins the aggregate as a fresh source
    assert [a["id"] for a in alice.get("/api/v1/bank-accounts").json()["results"]] == [account["id"]]
    body = alice.get("/api/v1/balances").json()
    bank = next(s for s in body["sources"] if s["kind"] == "bank")
    assert (bank["id"], bank["status"]) == (f"bank:{account['id']}", "fresh")
    assert bank["entries"][0]["asset"] == "USD" and int(bank["entries"][0]["amount"]) >= 0

    # when it is removed, then it is gone from the list and from the balances
    assert alice.delete(f"/api/v1/bank-accounts/{account['id']}").status_code == 204
    assert alice.get("/api/v1/bank-accounts").json()["results"] == []
    assert [s["kind"] for s in alice.get("/api/v1/balances").json()["sources"]] == ["ledger"]
    assert alice.get(f"/api/v1/bank-accounts/{account['id']}").status_code == 404


def test_link_is_idempotent_and_refuses_unknown_closed_and_duplicate_accounts(alice: AppClient) -> None:
    first = link(alice, "sandbox-savings-eur", key="k1")
    replay = link(alice, "sandbox-savings-eur", key="k1")
    assert (first.status_code, replay.status_code) == (201, 201)
    assert replay["Idempotent-Replayed"] == "true" and replay.json() == first.json()
    assert first.json()["currency"] == "EUR"
    assert link(alice, "sandbox-savings-eur", key="k2").json()["code"] == "bank_account_already_linked"
    assert link(alice, "sandbox-missing-1").json()["code"] == "bank_account_not_found"
    assert link(alice, "sandbox-closed-1").json()["code"] == "bank_account_not_open"
    assert alice.post("/api/v1/bank-accounts", {"account_ref": "sandbox-x"}, format="json").status_code == 400
    assert LinkedBankAccount.all_tenants.count() == 1


def test_another_user_cannot_link_an_account_already_linked(alice: AppClient, tenant_a: Tenant) -> None:
    link(alice, "sandbox-shared")
    bob = UserFactory(tenant=tenant_a, email="bob@example.com")
    client = AppClient(alice.app_key)
    client.login_as(bob)
    response = link(client, "sandbox-shared")
    assert (response.status_code, response.json()["code"]) == (409, "bank_account_already_linked")


def test_warm_read_is_one_query_and_no_provider(alice: AppClient, user_a: User, django_assert_max_num_queries,
                                                 settings: Any) -> None:
    # given a fresh snapshot
    alice.get("/api/v1/balances")
    # when the provider is now broken (any call would fail), then a warm read still answers fresh
    ProviderConfig.all_tenants.create(tenant=user_a.tenant, kind="prices", provider="sandbox",
                                      options={"failure_rate": 1})
    with django_assert_max_num_queries(3):  # authentication (1), stream head (1)
        body = alice.get("/api/v1/balances").json()
    assert body["rates"]["status"] == "fresh"


def test_a_ledger_change_invalidates_the_snapshot_and_emits_balances_updated(alice: AppClient,
                                                                            user_a: User) -> None:
    before = alice.get("/api/v1/balances").json()
    assert cache.get(snapshot_key(user_a.tenant.pk, user_a.pk)) is not None

    fund(user_a, 55)
    after = alice.get("/api/v1/balances").json()

    usd = next(e for e in after["sources"][0]["entries"] if e["asset"] == "USD")
    assert usd["amount"] == "12400"
    assert after["total"]["value"] != before["total"]["value"]
    events = list(OutboxEvent.all_tenants.filter(type="balances.updated").values_list("data", flat=True))
    assert len(events) == 1
    assert events[0]["total"] == after["total"] and events[0]["currency"] == "USD"
    # and a read right after is served from the snapshot (the event it emitted does not invalidate it)
    alice.get("/api/v1/balances")
    assert OutboxEvent.all_tenants.filter(type="balances.updated").count() == 1


def test_links_and_preference_changes_move_the_stream_so_every_process_refreshes(alice: AppClient,
                                                                                  user_a: User) -> None:
    from wallet.balances import services

    alice.get("/api/v1/balances")
    key = snapshot_key(user_a.tenant.pk, user_a.pk)
    other_process_copy = dict(services._local_snapshots[key])

    # when the account is linked (as if by another process: this process keeps its old copy)
    link(alice, "sandbox-other-process")
    services._local_snapshots[key] = other_process_copy

    # then the stream head moved, so the old copy is not used: the new source is there
    assert [s["kind"] for s in alice.get("/api/v1/balances").json()["sources"]] == ["ledger", "bank"]
    types = list(OutboxEvent.all_tenants.filter(tenant=user_a.tenant).values_list("type", flat=True))
    assert "balances.sources_changed" in types
    alice.patch("/api/v1/balances/preferences", {"display_currency": "GBP"}, format="json")
    assert "balances.preference_changed" in OutboxEvent.all_tenants.values_list("type", flat=True)


def test_the_demo_user_sees_a_linked_sandbox_bank_account(db: Any) -> None:
    import io
    import json

    from django.core.management import call_command

    out = io.StringIO()
    call_command("seed_demo", "--json", stdout=out)
    creds = json.loads(out.getvalue())
    client = AppClient(creds["app_key"])
    tokens = client.post("/api/v1/auth/token", {"email": creds["app_user"]["email"],
                                                "password": creds["app_user"]["password"]}, format="json").json()
    client.credentials(HTTP_X_APP_KEY=creds["app_key"], HTTP_AUTHORIZATION=f"Bearer {tokens['access']}")

    body = client.get("/api/v1/balances").json()

    assert {s["kind"]: s["status"] for s in body["sources"]} == {"ledger": "fresh", "bank": "fresh"}
    assert body["total"]["complete"] is True
