"""The real adapters at the HTTP edge (httpx.MockTransport) with the providers' documented payloads: what
they send (paths, documented auth headers), what they parse, and how provider errors map to our codes."""

from __future__ import annotations

import asyncio
import json
from collections.abc import Callable, Iterator
from decimal import Decimal, localcontext
from pathlib import Path
from typing import Any

import httpx
import pytest

from tenants.models import User
from tests.conftest import AppClient
from tests.ledger_helpers import enable
from wallet.balances.breaker import breakers_reset
from wallet.balances.crypto import credentials_encrypt
from wallet.balances.models import ProviderConfig
from wallet.balances.providers import factory
from wallet.balances.providers.banking import BankingProvider, SandboxBanking, UnitBanking
from wallet.balances.providers.errors import (
    ProviderAuthFailed,
    ProviderBadResponse,
    ProviderError,
    ProviderNotFound,
    ProviderRateLimited,
    ProviderTimeout,
    ProviderUnavailable,
)
from wallet.balances.providers.prices import CoinGeckoPrices, PricedAsset, PriceProvider, SandboxPrices

FIXTURES = Path(__file__).parent / "fixtures" / "balances"


def fixture(name: str) -> bytes:
    return (FIXTURES / name).read_bytes()


class Recorder:
    """A MockTransport handler answering from a route table, recording every request."""

    def __init__(self, routes: dict[str, Callable[[httpx.Request], httpx.Response]]) -> None:
        self.routes = routes
        self.requests: list[httpx.Request] = []

    def __call__(self, request: httpx.Request) -> httpx.Response:
        self.requests.append(request)
        handler = self.routes.get(request.url.path)
        if handler is None:
            return httpx.Response(404, json={"errors": [{"title": "Not Found", "status": "404"}]})
        return handler(request)

    @property
    def transport(self) -> httpx.MockTransport:
        return httpx.MockTransport(self)


def answer(status: int, name: str,
           content_type: str = "application/json") -> Callable[[httpx.Request], httpx.Response]:
    return lambda request: httpx.Response(status, content=fixture(name), headers={"Content-Type": content_type})


def run(coroutine: Any) -> Any:
    return asyncio.run(coroutine)


# --- Unit ------------------------------------------------------------------------------------------------


def unit(recorder: Recorder, token: str = "unit-token-123") -> UnitBanking:
    return UnitBanking(token=token, base_url="https://api.s.unit.sh", timeout=2, transport=recorder.transport)


def test_unit_reads_a_deposit_account_with_the_documented_auth_and_media_type() -> None:
    recorder = Recorder({"/accounts/42": answer(200, "unit_deposit_account.json", "application/vnd.api+json")})

    account = run(unit(recorder).account_get("42"))

    [request] = recorder.requests
    assert (request.method, str(request.url)) == ("GET", "https://api.s.unit.sh/accounts/42")
    assert request.headers["Authorization"] == "Bearer unit-token-123"
    assert request.headers["Accept"] == "application/vnd.api+json"
    assert (account.external_id, account.currency, account.status) == ("42", "USD", "open")
    assert (account.balance, account.available, account.hold) == (10000, 10000, 0)
    assert (account.name, account.account_last4, account.institution) == ("Peter Parker", "0002", "Unit")


@pytest.mark.parametrize(("status", "body", "error", "retryable"), [
    (404, "unit_error_not_found.json", ProviderNotFound, False),
    (401, "unit_error_unauthorized.json", ProviderAuthFailed, False),
    (403, "unit_error_unauthorized.json", ProviderAuthFailed, False),
    (429, "unit_error_not_found.json", ProviderRateLimited, True),
    (500, "unit_error_not_found.json", ProviderUnavailable, True),
    (503, "unit_error_not_found.json", ProviderUnavailable, True),
])
def test_unit_maps_provider_errors_to_our_codes(status: int, body: str, error: type[ProviderError],
                                                 retryable: bool) -> None:
    recorder = Recorder({"/accounts/4242": answer(status, body, "application/vnd.api+json")})

    with pytest.raises(error) as raised:
        run(unit(recorder).account_get("4242"))

    assert raised.value.retryable is retryable
    assert raised.value.status == status
    if status == 404:
        assert raised.value.detail == "Account 4242 not found"  # the JSON:API error's detail


def test_unit_timeouts_and_network_errors_are_retryable() -> None:
    def slow(request: httpx.Request) -> httpx.Response:
        raise httpx.ReadTimeout("timed out", request=request)

    def refused(request: httpx.Request) -> httpx.Response:
        raise httpx.ConnectError("connection refused", request=request)

    with pytest.raises(ProviderTimeout):
        run(unit(Recorder({"/accounts/1": slow})).account_get("1"))
    with pytest.raises(ProviderUnavailable):
        run(unit(Recorder({"/accounts/1": refused})).account_get("1"))


def test_unit_refuses_payloads_it_cannot_read() -> None:
    document = json.loads(fixture("unit_deposit_account.json"))
    document["data"]["attributes"]["balance"] = 100.5  # not cents
    bad = Recorder({"/accounts/42": lambda r: httpx.Response(200, json=document)})
    credit = json.loads(fixture("unit_deposit_account.json"))
    credit["data"]["type"] = "creditAccount"
    other = Recorder({"/accounts/42": lambda r: httpx.Response(200, json=credit)})
    garbage = Recorder({"/accounts/42": lambda r: httpx.Response(200, content=b"<html>")})

    for recorder in (bad, other, garbage):
        with pytest.raises(ProviderBadResponse):
            run(unit(recorder).account_get("42"))


def test_unit_never_builds_a_path_from_a_malformed_id() -> None:
    recorder = Recorder({})
    with pytest.raises(ProviderNotFound):
        run(unit(recorder).account_get("../customers"))
    assert recorder.requests == []


# --- CoinGecko -------------------------------------------------------------------------------------------

ASSETS = [PricedAsset("ETH", "crypto", "ETH"), PricedAsset("USDC:1", "crypto", "USDC"),
          PricedAsset("USD", "fiat", "USD"), PricedAsset("EUR", "fiat", "EUR"), PricedAsset("JPY", "fiat", "JPY"),
          PricedAsset("XYZ", "crypto", "XYZ")]


def coingecko_routes() -> dict[str, Callable[[httpx.Request], httpx.Response]]:
    return {"/api/v3/simple/price": answer(200, "coingecko_simple_price.json"),
            "/api/v3/exchange_rates": answer(200, "coingecko_exchange_rates.json")}


def test_coingecko_prices_crypto_and_fiat_exactly_with_the_demo_key_header() -> None:
    recorder = Recorder(coingecko_routes())
    adapter = CoinGeckoPrices(api_key="demo-key", transport=recorder.transport)

    rates = run(adapter.rates(ASSETS, "USD"))

    by_path = {r.url.path: r for r in recorder.requests}
    price_request = by_path["/api/v3/simple/price"]
    assert price_request.url.host == "api.coingecko.com"
    assert dict(price_request.url.params) == {"ids": "ethereum,usd-coin", "vs_currencies": "usd",
                                              "precision": "full"}
    assert all(r.headers["x-cg-demo-api-key"] == "demo-key" for r in recorder.requests)
    assert all("x-cg-pro-api-key" not in r.headers for r in recorder.requests)
    # JSON numbers are read as Decimal, digit for digit
    assert rates["ETH"] == Decimal("3245.12345678912")
    assert rates["USDC:1"] == Decimal("0.999834")
    assert rates["USD"] == Decimal(1)
    with localcontext() as context:  # the cross rate through BTC, to 50 significant digits
        context.prec = 50
        assert rates["EUR"] == Decimal("69255.135") / Decimal("63891.442")
    assert str(rates["EUR"]).startswith("1.08395010086014336630561570358671823371900105181")
    assert "XYZ" not in rates  # unknown to the provider: no rate rather than a guess


def test_coingecko_pro_plan_uses_its_root_and_header() -> None:
    recorder = Recorder(coingecko_routes())
    adapter = CoinGeckoPrices(api_key="pro-key", plan="pro", transport=recorder.transport)

    run(adapter.rates([PricedAsset("ETH", "crypto", "ETH")], "USD"))

    [request] = recorder.requests
    assert request.url.host == "pro-api.coingecko.com"
    assert request.headers["x-cg-pro-api-key"] == "pro-key"


@pytest.mark.parametrize(("status", "body", "error", "code"), [
    (401, "coingecko_error_missing_key.json", ProviderAuthFailed, "provider_auth_failed"),
    (429, "coingecko_error_rate_limited.json", ProviderRateLimited, "provider_rate_limited"),
    (503, "coingecko_error_rate_limited.json", ProviderUnavailable, "provider_unavailable"),
])
def test_coingecko_maps_errors(status: int, body: str, error: type[ProviderError], code: str) -> None:
    recorder = Recorder({"/api/v3/simple/price": answer(status, body)})
    with pytest.raises(error) as raised:
        run(CoinGeckoPrices(transport=recorder.transport).rates([PricedAsset("ETH", "crypto", "ETH")], "USD"))
    assert raised.value.code == code
    if status == 401:
        assert raised.value.detail == "10002 API Key Missing"


def test_coingecko_refuses_non_numeric_prices() -> None:
    recorder = Recorder({"/api/v3/simple/price": lambda r: httpx.Response(200, json={"ethereum": {"usd": "n/a"}})})
    with pytest.raises(ProviderBadResponse):
        run(CoinGeckoPrices(transport=recorder.transport).rates([PricedAsset("ETH", "crypto", "ETH")], "USD"))


# --- the contracts ---------------------------------------------------------------------------------------


def test_every_adapter_satisfies_its_protocol() -> None:
    recorder = Recorder({})
    assert isinstance(SandboxBanking(tenant_key="t"), BankingProvider)
    assert isinstance(unit(recorder), BankingProvider)
    assert isinstance(SandboxPrices(), PriceProvider)
    assert isinstance(CoinGeckoPrices(transport=recorder.transport), PriceProvider)


def test_sandbox_bank_is_deterministic_per_tenant_and_honours_its_failure_rate() -> None:
    first = run(SandboxBanking(tenant_key="a").account_get("sandbox-1"))
    again = run(SandboxBanking(tenant_key="a").account_get("sandbox-1"))
    other = run(SandboxBanking(tenant_key="b").account_get("sandbox-1"))
    assert (first.balance, first.available) == (again.balance, again.available)
    assert first.balance != other.balance
    with pytest.raises(ProviderUnavailable):
        run(SandboxBanking(tenant_key="a", failure_rate=1).account_get("sandbox-1"))
    with pytest.raises(ProviderTimeout):
        run(SandboxBanking(tenant_key="a", latency_ms=500, timeout=0.05).account_get("sandbox-1"))


# --- end to end: a tenant configured for Unit and CoinGecko ------------------------------------------------


@pytest.fixture
def unit_tenant(user_a: User) -> Iterator[Recorder]:
    """Tenant A uses Unit and CoinGecko (credentials encrypted in the database); the HTTP edge is mocked."""
    breakers_reset()
    enable(user_a.tenant, "USD")
    ProviderConfig.all_tenants.create(tenant=user_a.tenant, kind="banking", provider="unit",
                                      credentials_encrypted=credentials_encrypt({"token": "tenant-a-unit"}))
    ProviderConfig.all_tenants.create(tenant=user_a.tenant, kind="prices", provider="coingecko",
                                      credentials_encrypted=credentials_encrypt({"api_key": "tenant-a-cg"}))
    routes = {"/accounts/42": answer(200, "unit_deposit_account.json", "application/vnd.api+json"),
              "/accounts/4242": answer(404, "unit_error_not_found.json", "application/vnd.api+json"),
              **coingecko_routes()}
    recorder = Recorder(routes)
    factory.test_transport = recorder.transport
    yield recorder
    factory.test_transport = None
    breakers_reset()


def test_link_and_read_balances_through_unit_and_coingecko(unit_tenant: Recorder, client_a: AppClient,
                                                           user_a: User) -> None:
    from wallet.balances.services import bank_customer_set

    client_a.login_as(user_a)
    # onboarding recorded user_a as Unit's customer 45555, the owner of account 42 in the documented payload
    bank_customer_set(tenant=user_a.tenant, user=user_a, provider="unit", customer_ref="45555")

    linked = client_a.post("/api/v1/bank-accounts", {"account_ref": "42"}, format="json",
                           HTTP_IDEMPOTENCY_KEY="link-42")
    unknown = client_a.post("/api/v1/bank-accounts", {"account_ref": "4242"}, format="json",
                            HTTP_IDEMPOTENCY_KEY="link-4242")
    body = client_a.get("/api/v1/balances").json()

    assert linked.status_code == 201, linked.content
    assert (linked.json()["provider"], linked.json()["account_last4"]) == ("unit", "0002")
    assert unknown.json()["code"] == "bank_account_not_found"
    bank = next(s for s in body["sources"] if s["kind"] == "bank")
    entry = bank["entries"][0]
    assert (bank["status"], entry["amount"], entry["value"]) == ("fresh", "10000", "100.00")
    assert body["rates"]["status"] == "fresh"
    unit_calls = [r for r in unit_tenant.requests if r.url.host == "api.s.unit.sh"]
    assert unit_calls and all(r.headers["Authorization"] == "Bearer tenant-a-unit" for r in unit_calls)
    gecko_calls = [r for r in unit_tenant.requests if r.url.host == "api.coingecko.com"]
    assert gecko_calls and all(r.headers["x-cg-demo-api-key"] == "tenant-a-cg" for r in gecko_calls)
    # the credentials never reach a response
    for response in (linked, unknown):
        assert b"tenant-a-unit" not in response.content and b"tenant-a-cg" not in response.content
