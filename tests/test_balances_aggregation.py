"""The aggregate: concurrent sources cut at their timeouts, stale/unavailable answers, the circuit breaker,
full precision and the one rounding."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Iterator, Sequence
from decimal import Decimal
from fractions import Fraction
from typing import Any

import pytest

from tenants.models import Tenant, User
from tests.conftest import AppClient
from tests.ledger_helpers import enable
from wallet.balances.breaker import CircuitBreaker, State, breaker_for, breakers_reset
from wallet.balances.money import display_text, exact_sum, exact_value
from wallet.balances.providers.errors import ProviderNotFound, ProviderUnavailable
from wallet.balances.services import balances_read
from wallet.balances.sources import BalanceEntry, register_source_factory, unregister_source_factory


class FakeSource:
    """A source that sleeps `delay` seconds, then returns `entries` or raises `error`; counts its calls."""

    kind = "test"

    def __init__(self, name: str, *, delay: float = 0.0, timeout: float = 1.0,
                 entries: list[BalanceEntry] | None = None, error: Exception | None = None,
                 provider: str | None = None) -> None:
        self.id = f"test:{name}"
        self.label = name
        self.provider = provider or f"test.{name}"
        self.timeout = timeout
        self.delay = delay
        self.entries = entries if entries is not None else [BalanceEntry(key=f"test:{name}", asset="USD",
                                                                        decimals=2, amount=100)]
        self.error = error
        self.calls = 0

    async def fetch(self) -> Sequence[BalanceEntry]:
        self.calls += 1
        if self.delay:
            await asyncio.sleep(self.delay)
        if self.error is not None:
            raise self.error
        return self.entries


@pytest.fixture
def plugged(db: Any) -> Iterator[list[FakeSource]]:
    """Sources plugged in through the registry, as the chains app will do."""
    sources: list[FakeSource] = []
    register_source_factory("test", lambda tenant, user: list(sources))
    breakers_reset()
    yield sources
    unregister_source_factory("test")
    breakers_reset()


@pytest.fixture
def tenant_user(user_a: User) -> tuple[Tenant, User]:
    enable(user_a.tenant, "USD")
    return user_a.tenant, user_a


def by_id(body: dict[str, Any]) -> dict[str, dict[str, Any]]:
    return {s["id"]: s for s in body["sources"]}


@pytest.mark.parametrize("mode", ["loop", "run"])
def test_four_sources_of_200ms_answer_in_well_under_400ms(plugged: list[FakeSource], tenant_user, mode: str,
                                                          settings: Any) -> None:
    settings.BALANCES_ASYNC_MODE = mode  # event-loop thread per process, or asyncio.run per request
    tenant, user = tenant_user
    plugged.extend(FakeSource(f"s{i}", delay=0.2) for i in range(4))
    balances_read(tenant=tenant, user=user)  # warms the process (event-loop thread, asset catalogue)

    started = time.monotonic()
    body = balances_read(tenant=tenant, user=user, refresh=True)
    elapsed = time.monotonic() - started

    assert elapsed < 0.33, f"four 200 ms sources took {elapsed * 1000:.0f} ms"
    assert [by_id(body)[f"test:s{i}"]["status"] for i in range(4)] == ["fresh"] * 4
    assert body["total"] == {"value": "4.00", "complete": True}
    # the same sources one after another take the sum: the test above can fail
    started = time.monotonic()
    balances_read(tenant=tenant, user=user, refresh=True, sequential=True)
    assert time.monotonic() - started >= 0.8


def test_a_hanging_source_is_cut_at_its_timeout_others_stay_fresh(plugged: list[FakeSource], tenant_user) -> None:
    tenant, user = tenant_user
    hanging = FakeSource("hang", timeout=0.3)
    plugged.extend([hanging, FakeSource("ok", delay=0.05)])
    first = balances_read(tenant=tenant, user=user)
    assert by_id(first)["test:hang"]["status"] == "fresh"

    # when the source starts hanging (60 s) and the user pulls to refresh
    hanging.delay = 60
    started = time.monotonic()
    body = balances_read(tenant=tenant, user=user, refresh=True)
    elapsed = time.monotonic() - started

    # then the answer comes at its timeout, with its last known value marked stale, the others fresh
    assert 0.3 <= elapsed < 0.6
    hang, ok = by_id(body)["test:hang"], by_id(body)["test:ok"]
    assert (hang["status"], hang["error"]) == ("stale", "provider_timeout")
    assert hang["entries"][0]["amount"] == "100" and hang["as_of"] == first["as_of"]
    assert hang["age_seconds"] is not None and hang["age_seconds"] >= 0
    assert ok["status"] == "fresh"
    assert body["total"]["value"] == "2.00"  # the stale value still counts


def test_a_source_failing_with_no_last_value_is_unavailable(plugged: list[FakeSource], tenant_user) -> None:
    tenant, user = tenant_user
    plugged.extend([FakeSource("down", error=ProviderUnavailable("503")), FakeSource("gone", delay=5, timeout=0.1),
                    FakeSource("unknown", error=ProviderNotFound("404")), FakeSource("ok")])

    body = balances_read(tenant=tenant, user=user)

    sources = by_id(body)
    assert [(sources[f"test:{n}"]["status"], sources[f"test:{n}"]["error"]) for n in ("down", "gone", "unknown")] == [
        ("unavailable", "provider_unavailable"), ("unavailable", "provider_timeout"),
        ("unavailable", "provider_not_found")]
    assert sources["test:down"]["entries"] == [] and sources["test:down"]["as_of"] is None
    assert body["total"] == {"value": "1.00", "complete": False}


def test_circuit_breaker_opens_stops_calls_half_opens_and_closes(plugged: list[FakeSource], tenant_user,
                                                                 settings: Any) -> None:
    tenant, user = tenant_user
    settings.BALANCES_BREAKER_FAILURES = 3
    settings.BALANCES_BREAKER_RESET_SECONDS = 0.3
    flaky = FakeSource("flaky", error=ProviderUnavailable("503"))
    plugged.append(flaky)

    # three failures open the circuit
    for _ in range(3):
        balances_read(tenant=tenant, user=user, refresh=True)
    assert breaker_for("test.flaky").state is State.OPEN
    # while open, the provider is not called at all
    body = balances_read(tenant=tenant, user=user, refresh=True)
    assert flaky.calls == 3
    assert by_id(body)["test:flaky"]["error"] == "provider_circuit_open"
    # after the reset time one probe goes through; it fails: open again
    time.sleep(0.35)
    balances_read(tenant=tenant, user=user, refresh=True)
    assert flaky.calls == 4 and breaker_for("test.flaky").state is State.OPEN
    # next probe succeeds: closed, fresh again
    time.sleep(0.35)
    flaky.error = None
    body = balances_read(tenant=tenant, user=user, refresh=True)
    assert flaky.calls == 5 and breaker_for("test.flaky").state is State.CLOSED
    assert by_id(body)["test:flaky"]["status"] == "fresh"


def test_breaker_lets_one_probe_through_when_half_open() -> None:
    now = [0.0]
    breaker = CircuitBreaker("b", failures=2, reset_seconds=10, clock=lambda: now[0])
    breaker.record_failure()
    assert breaker.state is State.CLOSED and breaker.allow()
    breaker.record_failure()
    assert breaker.state is State.OPEN and not breaker.allow()
    now[0] = 10.0
    assert breaker.state is State.HALF_OPEN
    assert breaker.allow() is True
    assert breaker.allow() is False  # only one probe in flight
    breaker.record_success()
    assert breaker.state is State.CLOSED and breaker.allow()


def test_2_pow_200_units_of_an_18_decimal_token_round_trip(plugged: list[FakeSource], tenant_user,
                                                           client_a: AppClient) -> None:
    _, user = tenant_user
    huge = 2**200
    plugged.append(FakeSource("token", entries=[BalanceEntry(key="test:token", asset="ETH", decimals=18,
                                                             amount=huge)]))
    client_a.login_as(user)

    cold = client_a.get("/api/v1/balances").json()
    warm = client_a.get("/api/v1/balances").json()  # from the cached snapshot

    for body in (cold, warm):
        [entry] = by_id(body)["test:token"]["entries"]
        assert (entry["amount"], entry["decimals"]) == (str(huge), 18)
        assert int(entry["amount"]) == huge
        # exact in integers: cents = huge x 3000 x 100 / 10^18, half to even (Decimal's default 28-digit
        # context could not even represent it)
        cents = half_even(huge * 3000 * 100, 10**18)
        assert entry["value"] == f"{cents // 100}.{cents % 100:02d}"


def test_conversion_rounds_once_half_even_at_the_end(plugged: list[FakeSource], tenant_user) -> None:
    tenant, user = tenant_user
    # two entries of 0.125 USD each (a provider reporting mills): each shows 0.12 (half to even), the
    # total is the exact 0.250 rounded once: 0.25, not 0.24
    plugged.append(FakeSource("mills", entries=[
        BalanceEntry(key="test:m1", asset="USD", decimals=3, amount=125),
        BalanceEntry(key="test:m2", asset="USD", decimals=3, amount=125),
        BalanceEntry(key="test:m3", asset="USD", decimals=3, amount=135),
    ]))

    body = balances_read(tenant=tenant, user=user)

    values = [e["value"] for e in by_id(body)["test:mills"]["entries"]]
    assert values == ["0.12", "0.12", "0.14"]
    assert body["total"]["value"] == "0.38"  # 0.385 exactly -> half to even -> 0.38


def test_money_rule_is_exact_then_half_even() -> None:
    assert display_text(exact_value(5, 3, Decimal(1)), 2) == "0.00"  # 0.005 -> 0.00 (even)
    assert display_text(exact_value(15, 3, Decimal(1)), 2) == "0.02"  # 0.015 -> 0.02 (even)
    assert display_text(exact_value(1, 0, Decimal("0.0067")), 0) == "0"  # JPY has no decimals
    parts = [exact_value(1, 2, Decimal("0.333333333333333333333333333333")) for _ in range(3)]
    assert display_text(exact_sum(parts), 2) == "0.01"
    assert Fraction(exact_value(2**256 - 1, 18, Decimal("3000.123456789"))) == Fraction(
        (2**256 - 1) * 3000123456789, 10**9 * 10**18)


def half_even(numerator: int, denominator: int) -> int:
    quotient, remainder = divmod(numerator, denominator)
    if 2 * remainder > denominator or (2 * remainder == denominator and quotient % 2):
        quotient += 1
    return quotient
