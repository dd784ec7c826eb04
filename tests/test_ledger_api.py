"""The money API: assets, accounts, entries, transfers and holds over HTTP."""

from __future__ import annotations

import uuid

import pytest

from tenants.models import Tenant, User
from tests.conftest import AppClient
from tests.factories import UserFactory
from tests.ledger_helpers import balance, enable, fund
from wallet.ledger.models import Transfer


@pytest.fixture
def bob(tenant_a: Tenant) -> User:
    return UserFactory(tenant=tenant_a, email="bob@example.com")


@pytest.fixture
def alice(client_a: AppClient, user_a: User) -> AppClient:
    enable(user_a.tenant, "USD", max_per_transfer=50_000)
    enable(user_a.tenant, "ETH")
    fund(user_a, 10_000)
    client_a.login_as(user_a)
    return client_a


def _send(client: AppClient, body: dict, key: str | None = "k-1"):
    headers = {"HTTP_IDEMPOTENCY_KEY": key} if key is not None else {}
    return client.post("/api/v1/transfers", body, format="json", **headers)


def test_assets_lists_what_the_tenant_offers(alice: AppClient) -> None:
    body = alice.get("/api/v1/assets").json()
    assert [a["code"] for a in body["results"]] == ["USD", "ETH"]
    usd = body["results"][0]
    assert usd == {"code": "USD", "kind": "fiat", "name": "US Dollar", "symbol": "$", "decimals": 2,
                   "chain_id": None, "contract_address": "", "max_per_transfer": "50000",
                   "daily_limit_per_user": None}


def test_accounts_are_created_when_first_needed(alice: AppClient) -> None:
    body = alice.get("/api/v1/accounts").json()
    assets = {a["asset"]: a for a in body["results"]}
    assert set(assets) == {"USD", "ETH"}
    assert (assets["USD"]["posted"], assets["USD"]["held"], assets["USD"]["available"]) == ("10000", "0", "10000")
    assert assets["ETH"]["available"] == "0" and assets["ETH"]["decimals"] == 18


def test_transfer_by_email_then_read_it_back(alice: AppClient, bob: User) -> None:
    response = _send(alice, {"recipient": "BOB@example.com", "asset": "usd", "amount": "2500", "memo": "rent"})
    assert response.status_code == 201, response.json()
    body = response.json()
    assert response["Location"] == f"/api/v1/transfers/{body['id']}"
    assert (body["direction"], body["amount"], body["decimals"], body["asset"]) == ("out", "2500", 2, "USD")
    assert body["counterparty"] == {"id": str(bob.pk), "display_name": "", "handle": None}
    assert balance(bob) == (2_500, 0, 2_500)
    detail = alice.get(f"/api/v1/transfers/{body['id']}").json()
    assert detail == body
    listed = alice.get("/api/v1/transfers").json()["results"]
    assert [t["id"] for t in listed] == [body["id"]]


def test_transfer_by_handle(alice: AppClient, bob: User) -> None:
    User.objects.filter(pk=bob.pk).update(handle="bobby")
    assert _send(alice, {"recipient": "@Bobby", "asset": "USD", "amount": "1"}).status_code == 201


def test_the_recipient_sees_it_as_incoming(alice: AppClient, bob: User, tenant_a: Tenant) -> None:
    transfer_id = _send(alice, {"recipient": "bob@example.com", "asset": "USD", "amount": "5"}).json()["id"]
    client = AppClient(alice.app_key)
    client.login_as(bob)
    body = client.get(f"/api/v1/transfers/{transfer_id}").json()
    assert body["direction"] == "in"
    assert body["counterparty"]["id"] == str(User.objects.get(email="alice@example.com", tenant=tenant_a).pk)


@pytest.mark.parametrize(("amount", "code"), [
    (1.5, "amount_float"), (100, "amount_not_string"), ("1e3", "amount_exponent"), ("-5", "amount_negative"),
    ("0", "amount_zero"), ("12.5", "amount_too_precise"), (str(2**256), "amount_too_large"), ("ten", "amount_invalid"),
])
def test_bad_amounts_have_distinct_codes(alice: AppClient, bob: User, amount, code: str) -> None:
    response = _send(alice, {"recipient": "bob@example.com", "asset": "USD", "amount": amount}, key=uuid.uuid4().hex)
    assert response.status_code == 400
    assert response.json()["code"] == code
    assert balance(bob) == (0, 0, 0)


def test_insufficient_funds_is_409_with_the_available_amount(alice: AppClient, bob: User) -> None:
    response = _send(alice, {"recipient": "bob@example.com", "asset": "USD", "amount": "10001"})
    assert response.status_code == 409
    body = response.json()
    assert (body["code"], body["available"], body["requested"], body["decimals"]) == (
        "insufficient_funds", "10000", "10001", 2)
    assert not Transfer.all_tenants.exists()


def test_refusals_over_http(alice: AppClient, bob: User, user_a: User) -> None:
    cases = [
        ({"recipient": "nobody@example.com", "asset": "USD", "amount": "1"}, 404, "recipient_not_found"),
        ({"recipient": user_a.email, "asset": "USD", "amount": "1"}, 400, "recipient_is_sender"),
        ({"recipient": "bob@example.com", "asset": "EUR", "amount": "1"}, 400, "asset_not_enabled"),
        ({"recipient": "bob@example.com", "asset": "DOGE", "amount": "1"}, 400, "unknown_asset"),
        ({"recipient": "bob@example.com", "asset": "USD", "amount": "50001"}, 422, "transfer_limit_exceeded"),
    ]
    for body, status, code in cases:
        response = _send(alice, body, key=uuid.uuid4().hex)
        assert (response.status_code, response.json()["code"]) == (status, code)


def test_idempotency_key_is_required_and_replays(alice: AppClient, bob: User) -> None:
    body = {"recipient": "bob@example.com", "asset": "USD", "amount": "100"}
    missing = _send(alice, body, key=None)
    assert (missing.status_code, missing.json()["code"]) == (400, "idempotency_key_missing")
    first = _send(alice, body, key="pay-1")
    again = _send(alice, body, key="pay-1")
    assert first.status_code == again.status_code == 201
    assert again.json() == first.json()
    assert again["Idempotent-Replayed"] == "true"
    assert balance(bob) == (100, 0, 100)
    changed = _send(alice, {**body, "amount": "101"}, key="pay-1")
    assert (changed.status_code, changed.json()["code"]) == (422, "idempotency_key_reused")


def test_entries_are_paginated_and_filtered(alice: AppClient, bob: User) -> None:
    for index in range(3):
        _send(alice, {"recipient": "bob@example.com", "asset": "USD", "amount": str(index + 1)}, key=f"e-{index}")
    account_id = next(a["id"] for a in alice.get("/api/v1/accounts").json()["results"] if a["asset"] == "USD")
    page = alice.get(f"/api/v1/accounts/{account_id}/entries", {"limit": 2}).json()
    assert [e["amount"] for e in page["results"]] == ["-3", "-2"]
    rest = alice.get(page["next"]).json()
    assert [e["amount"] for e in rest["results"]] == ["-1", "10000"]
    assert rest["next"] is None
    funding = alice.get(f"/api/v1/accounts/{account_id}/entries", {"type": "funding"}).json()["results"]
    assert [(e["type"], e["amount"]) for e in funding] == [("funding", "10000")]
    bad = alice.get(f"/api/v1/accounts/{account_id}/entries", {"since": "yesterday"})
    assert (bad.status_code, bad.json()["code"]) == (400, "validation_failed")


def test_another_users_account_is_404(alice: AppClient, bob: User) -> None:
    fund(bob, 5)
    client = AppClient(alice.app_key)
    client.login_as(bob)
    bob_account = client.get("/api/v1/accounts").json()["results"][0]["id"]
    response = alice.get(f"/api/v1/accounts/{bob_account}/entries")
    assert (response.status_code, response.json()["code"]) == (404, "not_found")
    assert alice.get("/api/v1/accounts/not-a-uuid/entries").status_code == 404


def test_holds_over_http(alice: AppClient) -> None:
    placed = alice.post("/api/v1/holds", {"asset": "USD", "amount": "400", "expires_in_seconds": 60},
                        format="json", HTTP_IDEMPOTENCY_KEY="h-1")
    assert placed.status_code == 201, placed.json()
    hold = placed.json()
    assert (hold["amount"], hold["remaining"], hold["status"]) == ("400", "400", "active")
    usd = next(a for a in alice.get("/api/v1/accounts").json()["results"] if a["asset"] == "USD")
    assert (usd["posted"], usd["held"], usd["available"]) == ("10000", "400", "9600")
    posted = alice.post(f"/api/v1/holds/{hold['id']}/post", {"amount": "150"}, format="json",
                        HTTP_IDEMPOTENCY_KEY="h-2").json()
    assert (posted["remaining"], posted["status"]) == ("250", "active")
    voided = alice.post(f"/api/v1/holds/{hold['id']}/void", {}, format="json", HTTP_IDEMPOTENCY_KEY="h-3").json()
    assert voided["status"] == "voided"
    again = alice.post(f"/api/v1/holds/{hold['id']}/void", {}, format="json", HTTP_IDEMPOTENCY_KEY="h-4")
    assert (again.status_code, again.json()["code"]) == (409, "hold_not_active")
    usd = next(a for a in alice.get("/api/v1/accounts").json()["results"] if a["asset"] == "USD")
    assert (usd["posted"], usd["held"], usd["available"]) == ("9850", "0", "9850")
    assert [h["id"] for h in alice.get("/api/v1/holds").json()["results"]] == [hold["id"]]
