"""The balances read model (refresh, cache, `balances.updated` events), bank-account links and the
display-currency preference.

The aggregate of a user is a *snapshot* in the shared cache (Redis in production, local memory on the
embedded default), keyed by tenant and user:

    {"v", "pos", "computed_at", "currency", "sources": [...], "rates": {...}, "fingerprint"}

It is served without touching any provider while (a) it is younger than `BALANCES_FRESH_SECONDS` and
(b) the user's event-stream head (`pos`, one indexed read) has not moved: every ledger change of the user
writes `account.balance_changed` to that stream, so a transfer or a deposit invalidates the snapshot
without the ledger knowing about this app. A refresh fetches every source concurrently, keeps the last
known entries of a failing source (`stale`) and emits `balances.updated` when the balances changed.
"""

from __future__ import annotations

import hashlib
import json
import logging
import time
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime
from decimal import Decimal
from typing import Any

from django.core.cache import cache
from django.db import IntegrityError, transaction
from django.utils import timezone

from tenants.models import Tenant, User
from wallet.balances import conf
from wallet.balances.assets import AssetInfo, asset_catalogue, display_currencies
from wallet.balances.errors import (
    BankAccountAlreadyLinked,
    BankAccountNotFound,
    BankAccountNotOpen,
    BankingNotConfigured,
    BankingUnavailable,
    UnsupportedCurrency,
)
from wallet.balances.models import BalancePreference, LinkedBankAccount, ProviderConfig
from wallet.balances.money import display_text, exact_sum, exact_value
from wallet.balances.providers.banking import BankAccount
from wallet.balances.providers.errors import ProviderError, ProviderNotConfigured, ProviderNotFound
from wallet.balances.providers.factory import banking_provider, breaker_key, price_provider, provider_configs
from wallet.balances.runner import Outcome, fetch_all, guarded, run_async
from wallet.balances.selectors import display_currency_of, stream_position
from wallet.balances.sources import sources_for
from wallet.events.services import EventSpec, events_emit, user_stream

logger = logging.getLogger("wallet.balances")

SNAPSHOT_VERSION = 1
EVENT_TYPE = "balances.updated"


def snapshot_key(tenant_id: Any, user_id: Any) -> str:
    return f"balances:snap:{SNAPSHOT_VERSION}:{_hex(tenant_id)}:{_hex(user_id)}"


def rates_key(tenant_id: Any, quote: str) -> str:
    return f"balances:rates:{SNAPSHOT_VERSION}:{_hex(tenant_id)}:{quote}"


def _hex(value: Any) -> str:
    value = getattr(value, "pk", value)
    return getattr(value, "hex", str(value))


def _iso(epoch: float | None) -> str | None:
    return None if epoch is None else datetime.fromtimestamp(epoch, UTC).isoformat().replace("+00:00", "Z")


def currency_info(code: str) -> AssetInfo:
    """The display currency `code` (ISO 4217, any case), or 400 `unsupported_currency`."""
    info = display_currencies().get(code.strip().upper())
    if info is None:
        raise UnsupportedCurrency(currency=code, supported=sorted(display_currencies()))
    return info


# --- rates ----------------------------------------------------------------------------------------------


def _rates_call(tenant: Tenant, quote: str, configs: dict[str, ProviderConfig]
                ) -> tuple[Callable[[], Awaitable[Outcome]] | None, str | None]:
    """The guarded price call for `quote` (to run beside the sources), or the configuration error code."""
    try:
        adapter = price_provider(tenant=tenant, config=configs.get(ProviderConfig.Kind.PRICES))
    except ProviderError as exc:
        return None, exc.code
    assets = [info.priced() for info in asset_catalogue().values()]
    key = breaker_key("prices", adapter.name, tenant)

    async def call() -> Outcome:
        try:
            return await guarded(key, conf.price_timeout(), lambda: adapter.rates(assets, quote))
        finally:
            await adapter.aclose()

    return call, None


def _rates_after(tenant: Tenant, quote: str, outcome: Outcome | None, error: str | None,
                 cached: dict[str, Any] | None, now: float) -> dict[str, Any]:
    """The rates to use after a price call (fresh), or the last known ones (stale), or none."""
    if outcome is not None and outcome.ok:
        rates = {"quote": quote, "as_of": now, "status": "fresh", "error": None,
                 "values": {code: str(rate) for code, rate in outcome.value.items()}}
        cache.set(rates_key(tenant.pk, quote), rates, conf.keep_seconds())
        return rates
    code = outcome.error if outcome is not None else error
    if cached is not None:
        return {**cached, "status": "stale", "error": code}
    return {"quote": quote, "as_of": None, "status": "unavailable", "error": code, "values": {}}


def rates_get(*, tenant: Tenant, quote: str) -> dict[str, Any]:
    """Rates into `quote`: cached while fresh, else from the tenant's price provider (within its timeout)."""
    now = time.time()
    cached = cache.get(rates_key(tenant.pk, quote))
    if cached is not None and now - cached["as_of"] < conf.rates_fresh_seconds():
        return cached
    call, error = _rates_call(tenant, quote, provider_configs(tenant=tenant))
    outcome = run_async(call, timeout=conf.price_timeout() + 2) if call is not None else None
    return _rates_after(tenant, quote, outcome, error, cached, now)


# --- the aggregate --------------------------------------------------------------------------------------


def _fingerprint(sources: list[dict[str, Any]]) -> str:
    """What `balances.updated` is about: the sources' statuses and amounts (not the rates, which move
    every minute, nor ages)."""
    shape = [[s["id"], s["status"], [[e["key"], e["asset"], e["amount"]] for e in s["entries"]]] for s in sources]
    return hashlib.sha256(json.dumps(shape, separators=(",", ":")).encode()).hexdigest()


def balances_refresh(*, tenant: Tenant, user: User, previous: dict[str, Any] | None = None,
                     position: int | None = None, sequential: bool = False) -> dict[str, Any]:
    """Fetch every source of the user (concurrently, each within its timeout), merge with the last known
    snapshot, store the new snapshot and emit `balances.updated` when balances changed; return it.

    `sequential` fetches one source after another (the benchmark's reference; never in production)."""
    if position is None:
        position = stream_position(tenant=tenant, user=user)
    if previous is None:
        previous = cache.get(snapshot_key(tenant.pk, user.pk))
        if previous is not None and previous.get("v") != SNAPSHOT_VERSION:
            previous = None
    currency = display_currency_of(tenant=tenant, user=user)
    sources = sources_for(tenant, user)
    now = time.time()
    cached_rates = cache.get(rates_key(tenant.pk, currency))
    rates_fresh = cached_rates is not None and now - cached_rates["as_of"] < conf.rates_fresh_seconds()
    extra: list[Callable[[], Awaitable[Outcome]]] = []
    rates_error = None
    if not rates_fresh:
        call, rates_error = _rates_call(tenant, currency, provider_configs(tenant=tenant))
        if call is not None:
            extra.append(call)
    longest = max([s.timeout for s in sources] + [conf.price_timeout()])
    outcomes, extra_outcomes = run_async(lambda: fetch_all(sources, extra, sequential=sequential),
                                         timeout=longest * (len(sources) + 1 if sequential else 1) + 2)
    now = time.time()
    if rates_fresh:
        rates = cached_rates
    else:
        rates = _rates_after(tenant, currency, extra_outcomes[0] if extra_outcomes else None, rates_error,
                             cached_rates, now)

    known = {s["id"]: s for s in (previous or {}).get("sources", []) if s["status"] != "unavailable"}
    merged = []
    for source, outcome in zip(sources, outcomes, strict=True):
        base = {"id": source.id, "kind": source.kind, "label": source.label}
        if outcome.ok:
            entries = [{"key": e.key, "asset": e.asset, "decimals": e.decimals, "amount": str(e.amount),
                        "label": e.label, "details": dict(e.details)} for e in outcome.value]
            merged.append({**base, "status": "fresh", "error": None, "as_of": now, "entries": entries})
        elif source.id in known:
            last = known[source.id]
            merged.append({**base, "status": "stale", "error": outcome.error, "as_of": last["as_of"],
                           "entries": last["entries"]})
        else:
            merged.append({**base, "status": "unavailable", "error": outcome.error, "as_of": None, "entries": []})

    snapshot = {"v": SNAPSHOT_VERSION, "pos": position, "computed_at": now, "currency": currency,
                "sources": merged, "rates": rates, "fingerprint": _fingerprint(merged)}
    if previous is not None and previous.get("fingerprint") != snapshot["fingerprint"]:
        body = balances_render(snapshot, quote=currency, rates=rates, now=now)
        data = {"currency": body["currency"], "total": body["total"], "as_of": body["as_of"],
                "sources": [{"id": s["id"], "status": s["status"], "error": s["error"]} for s in body["sources"]]}
        with transaction.atomic():
            rows = events_emit(tenant=tenant, events=[EventSpec(stream=user_stream(user.pk), type=EVENT_TYPE,
                                                                data=data)])
        # Our own event moved the head; anything else that landed meanwhile must still invalidate.
        seq = rows[0].seq
        snapshot["pos"] = seq if seq == position + 1 else position
    cache.set(snapshot_key(tenant.pk, user.pk), snapshot, conf.keep_seconds())
    return snapshot


def balances_render(snapshot: dict[str, Any], *, quote: str, rates: dict[str, Any], now: float) -> dict[str, Any]:
    """The API body of a snapshot in `quote` (values computed exactly, rounded once each)."""
    info = currency_info(quote)
    places = info.decimals
    rate_values = {code: Decimal(text) for code, text in rates["values"].items()}
    rate_values.setdefault(info.code, Decimal(1))
    parts: list[Decimal] = []
    complete = True
    sources = []
    for source in snapshot["sources"]:
        entries = []
        for entry in source["entries"]:
            rate = rate_values.get(entry["asset"])
            if rate is None:
                complete = False
                value = None
            else:
                exact = exact_value(int(entry["amount"]), entry["decimals"], rate)
                parts.append(exact)
                value = display_text(exact, places)
            entries.append({"key": entry["key"], "asset": entry["asset"], "decimals": entry["decimals"],
                            "amount": entry["amount"], "value": value, "label": entry["label"],
                            "details": entry["details"]})
        if source["status"] == "unavailable":
            complete = False
        as_of = source["as_of"]
        sources.append({"id": source["id"], "kind": source["kind"], "label": source["label"],
                        "status": source["status"], "error": source["error"], "as_of": _iso(as_of),
                        "age_seconds": None if as_of is None else max(0, int(now - as_of)), "entries": entries})
    return {
        "currency": info.symbol,
        "decimals": places,
        "as_of": _iso(snapshot["computed_at"]),
        "total": {"value": display_text(exact_sum(parts), places), "complete": complete},
        "rates": {"status": rates["status"], "as_of": _iso(rates["as_of"]), "error": rates["error"]},
        "sources": sources,
    }


def balances_read(*, tenant: Tenant, user: User, currency: str | None = None, refresh: bool = False,
                  sequential: bool = False) -> dict[str, Any]:
    """The user's balances in `currency` (default: their preference). From the cached snapshot when it is
    fresh and the user's stream has not moved (no provider touched); otherwise refreshed first."""
    if currency:
        currency_info(currency)
    position = stream_position(tenant=tenant, user=user)
    snapshot = cache.get(snapshot_key(tenant.pk, user.pk))
    now = time.time()
    if snapshot is not None and snapshot.get("v") != SNAPSHOT_VERSION:
        snapshot = None
    if (refresh or snapshot is None or snapshot["pos"] != position
            or now - snapshot["computed_at"] >= conf.fresh_seconds()):
        snapshot = balances_refresh(tenant=tenant, user=user, previous=snapshot, position=position,
                                    sequential=sequential)
        now = time.time()
    quote = currency.strip().upper() if currency else snapshot["currency"]
    rates = snapshot["rates"] if snapshot["rates"]["quote"] == quote else rates_get(tenant=tenant, quote=quote)
    return balances_render(snapshot, quote=quote, rates=rates, now=now)


def balances_invalidate(*, tenant_id: Any, user_id: Any) -> None:
    """Make the next read refresh (keeping the snapshot's last known values for `stale` answers)."""
    key = snapshot_key(tenant_id, user_id)
    snapshot = cache.get(key)
    if snapshot is not None:
        snapshot["computed_at"] = 0.0
        cache.set(key, snapshot, conf.keep_seconds())


def _invalidate_on_commit(tenant_id: Any, user_id: Any) -> None:
    # Now (the caller's next read in this transaction) and again at commit (a read that raced the commit
    # may have cached the old state meanwhile).
    balances_invalidate(tenant_id=tenant_id, user_id=user_id)
    transaction.on_commit(lambda: balances_invalidate(tenant_id=tenant_id, user_id=user_id))


# --- preference -----------------------------------------------------------------------------------------


def preference_set(*, tenant: Tenant, user: User, display_currency: str) -> BalancePreference:
    """Set the user's display currency (an ISO 4217 code of a fiat asset in the catalogue)."""
    info = currency_info(display_currency)
    with transaction.atomic():
        preference, _ = BalancePreference.all_tenants.update_or_create(
            user=user, defaults={"tenant": tenant, "display_currency": info.symbol, "updated_at": timezone.now()})
        _invalidate_on_commit(tenant.pk, user.pk)
    return preference


# --- linked bank accounts -------------------------------------------------------------------------------

_UNAVAILABLE_CODES = frozenset({"provider_timeout", "provider_unavailable", "provider_rate_limited",
                                "provider_circuit_open", "provider_auth_failed", "provider_bad_response",
                                "provider_bad_request", "source_failed"})


def bank_account_verify(*, tenant: Tenant, account_ref: str) -> tuple[str, BankAccount]:
    """Ask the tenant's banking provider about `account_ref` (within `BALANCES_LINK_TIMEOUT_SECONDS`);
    returns (provider name, account) or raises the API error for the user."""
    config = provider_configs(tenant=tenant).get(ProviderConfig.Kind.BANKING)
    try:
        adapter = banking_provider(tenant=tenant, config=config)
    except ProviderNotConfigured as exc:
        raise BankingNotConfigured() from exc
    except ProviderError as exc:
        raise BankingUnavailable(reason=exc.code) from exc
    key = breaker_key("banking", adapter.name, tenant)

    async def call() -> Outcome:
        try:
            return await guarded(key, conf.link_timeout(), lambda: adapter.account_get(account_ref))
        finally:
            await adapter.aclose()

    outcome = run_async(call, timeout=conf.link_timeout() + 2)
    if outcome.error == ProviderNotFound.code:
        raise BankAccountNotFound()
    if outcome.error is not None:
        raise BankingUnavailable(reason=outcome.error if outcome.error in _UNAVAILABLE_CODES else "provider_error")
    bank: BankAccount = outcome.value
    if bank.status != "open":
        raise BankAccountNotOpen(status=bank.status)
    return adapter.name, bank


def bank_account_link(*, tenant: Tenant, user: User, account_ref: str) -> LinkedBankAccount:
    """Link the provider's account `account_ref` to the user, after the provider confirmed it is open.
    One active link per provider account in a tenant (409 `bank_account_already_linked`)."""
    provider, bank = bank_account_verify(tenant=tenant, account_ref=account_ref)
    try:
        with transaction.atomic():
            account = LinkedBankAccount.all_tenants.create(
                tenant=tenant, user=user, provider=provider, external_id=bank.external_id, name=bank.name[:200],
                institution=bank.institution[:100], account_last4=bank.account_last4[-4:], currency=bank.currency,
            )
    except IntegrityError as exc:
        raise BankAccountAlreadyLinked() from exc
    _invalidate_on_commit(tenant.pk, user.pk)
    return account


def bank_account_remove(*, tenant: Tenant, account: LinkedBankAccount) -> LinkedBankAccount:
    """Unlink (kept as `removed` for the record; the provider account is not touched)."""
    with transaction.atomic():
        LinkedBankAccount.all_tenants.filter(pk=account.pk, tenant=tenant).update(
            status=LinkedBankAccount.Status.REMOVED, removed_at=timezone.now())
        account.refresh_from_db()
        _invalidate_on_commit(tenant.pk, account.user_id)
    return account
