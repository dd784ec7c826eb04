"""The balances read model (refresh, cache, `balances.updated` events), bank-account links and the
display-currency preference.

The aggregate of a user is a *snapshot* in the shared cache (Redis in production, local memory on the
embedded default), keyed by tenant and user:

    {"v", "pos", "computed_at", "currency", "sources": [...], "rates": {...}, "fingerprint"}

It is served without touching any provider while (a) it is younger than `BALANCES_FRESH_SECONDS` and
(b) the user's event-stream head (`pos`) has not moved: every ledger change of the user writes
`account.balance_changed` to that stream, so a transfer or a deposit invalidates the snapshot without the
ledger knowing about this app. The head is one indexed read, or this process's copy of it for at most
`BALANCES_HEAD_CHECK_SECONDS` (voided at once by this process's own commits). A refresh fetches every
source concurrently, keeps the last known entries of a failing source (`stale`) and emits
`balances.updated` when the balances changed; the relay's listener (`listeners.py`) schedules one after
each ledger change or deposit, and the scheduled refresh covers bank balances and moved streams.
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
from django.db import DatabaseError, IntegrityError, transaction
from django.utils import timezone

from tenants.models import Tenant, User
from wallet.balances import conf
from wallet.balances.assets import AssetInfo, asset_catalogue, display_currencies
from wallet.balances.errors import (
    BankAccountAlreadyLinked,
    BankAccountNotFound,
    BankAccountNotOpen,
    BankCustomerTaken,
    BankingNotConfigured,
    BankingUnavailable,
    UnsupportedCurrency,
)
from wallet.balances.models import (
    BalancePreference,
    BankCustomer,
    LinkedBankAccount,
    ProviderConfig,
    SnapshotPosition,
)
from wallet.balances.money import display_text, exact_sum, exact_value
from wallet.balances.providers.banking import BankAccount
from wallet.balances.providers.errors import ProviderError, ProviderNotConfigured, ProviderNotFound
from wallet.balances.providers.factory import banking_provider, breaker_key, price_provider, provider_configs
from wallet.balances.runner import Outcome, fetch_all, guarded, read_local, run_async, start
from wallet.balances.selectors import display_currency_of, stream_heads_forget, stream_position
from wallet.balances.sources import sources_for
from wallet.core.jsonutil import dumps
from wallet.events.services import EventSpec, events_emit, user_stream

logger = logging.getLogger("wallet.balances")

SNAPSHOT_VERSION = 1
EVENT_TYPE = "balances.updated"
SOURCES_CHANGED = "balances.sources_changed"
PREFERENCE_CHANGED = "balances.preference_changed"

# Per-process copies of snapshots (the shared cache holds the same): a warm read then costs one database
# round trip (the stream head) and no Redis round trip. A copy is only used while its `pos` equals the
# head, so anything that must invalidate it in every process moves the user's stream (an event).
_local_snapshots: dict[str, dict[str, Any]] = {}
_LOCAL_MAX = 20_000


def _remember(key: str, snapshot: dict[str, Any]) -> None:
    if len(_local_snapshots) >= _LOCAL_MAX:
        _local_snapshots.clear()
    _local_snapshots[key] = snapshot


def local_snapshots_clear() -> None:
    _local_snapshots.clear()
    _local_rates.clear()
    _rendered.clear()
    stream_heads_forget()


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


_local_rates: dict[str, dict[str, Any]] = {}


def _rates_cached(tenant: Tenant, quote: str) -> dict[str, Any] | None:
    """The last rates into `quote` this process knows (then the shared cache's)."""
    key = rates_key(tenant.pk, quote)
    rates = _local_rates.get(key)
    if rates is None or time.time() - rates["as_of"] >= conf.rates_fresh_seconds():
        shared = cache.get(key)
        if shared is not None:
            rates = shared
            _local_rates[key] = shared
    return rates


def _rates_after(tenant: Tenant, quote: str, outcome: Outcome | None, error: str | None,
                 cached: dict[str, Any] | None, now: float) -> dict[str, Any]:
    """The rates to use after a price call (fresh), or the last known ones (stale), or none."""
    if outcome is not None and outcome.ok:
        rates = {"quote": quote, "as_of": now, "status": "fresh", "error": None,
                 "values": {code: str(rate) for code, rate in outcome.value.items()}}
        key = rates_key(tenant.pk, quote)
        cache.set(key, rates, conf.keep_seconds())
        if len(_local_rates) > 10_000:
            _local_rates.clear()
        _local_rates[key] = rates
        return rates
    code = outcome.error if outcome is not None else error
    if cached is not None:
        return {**cached, "status": "stale", "error": code}
    return {"quote": quote, "as_of": None, "status": "unavailable", "error": code, "values": {}}


def rates_get(*, tenant: Tenant, quote: str) -> dict[str, Any]:
    """Rates into `quote`: cached while fresh, else from the tenant's price provider (within its timeout)."""
    now = time.time()
    cached = _rates_cached(tenant, quote)
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
    # Order matters for latency: the remote sources start as soon as they are known, the price call as
    # soon as the quote is; the other reads (stream head, ledger, last snapshot) run while they are in
    # flight. The stream head is read before the ledger: a change landing between the two only makes the
    # next read refresh again.
    sources = sources_for(tenant, user)
    local = [s for s in sources if getattr(s, "local", False)]
    remote = [s for s in sources if not getattr(s, "local", False)]
    longest = max([s.timeout for s in remote] + [conf.price_timeout()])
    overlap = not sequential and conf.async_mode() == "loop"
    remote_pending = start(lambda: fetch_all(remote)) if overlap else None

    currency = display_currency_of(tenant=tenant, user=user)
    now = time.time()
    cached_rates = _rates_cached(tenant, currency)
    rates_fresh = cached_rates is not None and now - cached_rates["as_of"] < conf.rates_fresh_seconds()
    price_call, rates_error = (None, None) if rates_fresh else _rates_call(tenant, currency,
                                                                           provider_configs(tenant=tenant))
    price_pending = start(price_call) if overlap and price_call is not None else None

    if position is None:
        position = stream_position(tenant=tenant, user=user)
    local_outcomes = [read_local(s) for s in local]
    key = snapshot_key(tenant.pk, user.pk)
    if previous is None:
        previous = cache.get(key)
        if previous is not None and previous.get("v") != SNAPSHOT_VERSION:
            previous = None

    if overlap:
        assert remote_pending is not None
        remote_outcomes, _ = remote_pending.result(longest + 2)
        price_outcome = price_pending.result(longest + 2) if price_pending is not None else None
    else:
        extra = [price_call] if price_call is not None else []
        remote_outcomes, extra_outcomes = run_async(
            lambda: fetch_all(remote, extra, sequential=sequential),
            timeout=longest * (len(remote) + 1 if sequential else 1) + 2)
        price_outcome = extra_outcomes[0] if extra_outcomes else None
    local_iter, remote_iter = iter(local_outcomes), iter(remote_outcomes)
    outcomes = [next(local_iter) if getattr(source, "local", False) else next(remote_iter) for source in sources]
    now = time.time()
    rates = cached_rates if rates_fresh else _rates_after(tenant, currency, price_outcome, rates_error,
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
    _position_record(tenant, user, snapshot, previous)
    cache.set(key, snapshot, conf.keep_seconds())
    _remember(key, snapshot)
    return snapshot


def _position_record(tenant: Tenant, user: User, snapshot: dict[str, Any], previous: dict[str, Any] | None) -> None:
    """Keep the user's `SnapshotPosition` row in step with the snapshot: one upsert when the position moved
    (or on a first snapshot, or once the row is older than half of `BALANCES_KEEP_SECONDS`); nothing on a
    refresh that found the stream where it was (pull to refresh, the scheduled bank refresh)."""
    now = snapshot["computed_at"]
    recorded = (previous or {}).get("recorded_at")
    if (previous is not None and previous.get("pos") == snapshot["pos"] and recorded is not None
            and now - recorded < conf.keep_seconds() / 2):
        snapshot["recorded_at"] = recorded
        return
    try:
        with transaction.atomic():  # a savepoint inside a caller's transaction
            SnapshotPosition.all_tenants.bulk_create(
                [SnapshotPosition(tenant=tenant, user_id=user.pk, stream=user_stream(user.pk),
                                  position=snapshot["pos"], refreshed_at=datetime.fromtimestamp(now, UTC))],
                update_conflicts=True, unique_fields=["user"], update_fields=["position", "refreshed_at"])
    except DatabaseError:  # e.g. the user was just deleted: the answer does not depend on this row
        logger.warning("could not record the snapshot position", exc_info=True, extra={"user": str(user.pk)})
        return
    snapshot["recorded_at"] = now


def balances_refresh_if_moved(*, tenant: Tenant, user: User) -> bool:
    """Refresh the user's snapshot if they have one and their stream moved past it (what the event-driven
    refresh does); returns whether it refreshed."""
    if not SnapshotPosition.objects.for_tenant(tenant).filter(user_id=user.pk).exists():
        return False
    position = stream_position(tenant=tenant, user=user)
    previous = cache.get(snapshot_key(tenant.pk, user.pk))
    if previous is not None and previous.get("v") != SNAPSHOT_VERSION:
        previous = None
    if previous is not None and previous["pos"] == position:
        return False
    balances_refresh(tenant=tenant, user=user, previous=previous, position=position)
    return True


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
    snapshot, now = _snapshot_for_read(tenant, user, currency, refresh, sequential)
    return _render_for(tenant, user, snapshot, currency, now)[1]


def balances_read_json(*, tenant: Tenant, user: User, currency: str | None = None,
                       refresh: bool = False) -> bytes:
    """`balances_read` as the JSON bytes of the API body (encoded once per snapshot, rates and second)."""
    snapshot, now = _snapshot_for_read(tenant, user, currency, refresh, False)
    entry = _render_for(tenant, user, snapshot, currency, now)
    if entry[2] is None:
        entry[2] = dumps(entry[1])
    return entry[2]


def _snapshot_for_read(tenant: Tenant, user: User, currency: str | None, refresh: bool,
                       sequential: bool) -> tuple[dict[str, Any], float]:
    if currency:
        currency_info(currency)
    if refresh:  # pull to refresh: no need to validate anything first
        return balances_refresh(tenant=tenant, user=user, sequential=sequential), time.time()
    # The head: one indexed read, or this process's copy of it when read within BALANCES_HEAD_CHECK_SECONDS
    # (a change committed by this process voids the copy at once; see selectors.stream_position).
    position = stream_position(tenant=tenant, user=user, max_age=conf.head_check_seconds())
    key = snapshot_key(tenant.pk, user.pk)
    now = time.time()
    fresh = conf.fresh_seconds()

    def usable(candidate: dict[str, Any] | None) -> bool:
        return candidate is not None and candidate["pos"] == position and now - candidate["computed_at"] < fresh

    snapshot = _local_snapshots.get(key)
    if not usable(snapshot):
        shared = cache.get(key)
        if shared is not None and shared.get("v") != SNAPSHOT_VERSION:
            shared = None
        if shared is not None:
            snapshot = shared
            _remember(key, shared)
            if shared["pos"] > position:
                # Taken after a head this process has not seen yet (another process refreshed it): the
                # copy of the head is behind, read it again rather than refresh for nothing.
                position = stream_position(tenant=tenant, user=user, max_age=conf.head_check_seconds(),
                                           reread=True)
        if not usable(snapshot):
            snapshot = balances_refresh(tenant=tenant, user=user, previous=snapshot, position=position,
                                        sequential=sequential)
            now = time.time()
    assert snapshot is not None
    return snapshot, now


# (snapshot key, quote) -> [marker, body, its JSON bytes or None]
_rendered: dict[tuple[str, str], list[Any]] = {}


def _render_for(tenant: Tenant, user: User, snapshot: dict[str, Any], currency: str | None,
                now: float) -> list[Any]:
    """[marker, body, JSON or None] for `snapshot` in `currency`; the same snapshot, rates and second render
    once per process (ages are whole seconds)."""
    quote = currency.strip().upper() if currency else snapshot["currency"]
    rates = snapshot["rates"] if snapshot["rates"]["quote"] == quote else rates_get(tenant=tenant, quote=quote)
    marker = (snapshot["computed_at"], snapshot["pos"], rates["as_of"], rates["status"], int(now))
    cache_key = (snapshot_key(tenant.pk, user.pk), quote)
    hit = _rendered.get(cache_key)
    if hit is not None and hit[0] == marker:
        return hit
    entry = [marker, balances_render(snapshot, quote=quote, rates=rates, now=now), None]
    if len(_rendered) >= _LOCAL_MAX:
        _rendered.clear()
    _rendered[cache_key] = entry
    return entry


def balances_invalidate(*, tenant_id: Any, user_id: Any) -> None:
    """Make the next read refresh (keeping the snapshot's last known values for `stale` answers)."""
    key = snapshot_key(tenant_id, user_id)
    _local_snapshots.pop(key, None)
    snapshot = cache.get(key)
    if snapshot is not None:
        snapshot["computed_at"] = 0.0
        cache.set(key, snapshot, conf.keep_seconds())


def _invalidate_on_commit(tenant_id: Any, user_id: Any) -> None:
    # Now (the caller's next read in this transaction) and again at commit (a read that raced the commit
    # may have cached the old state meanwhile).
    balances_invalidate(tenant_id=tenant_id, user_id=user_id)
    transaction.on_commit(lambda: balances_invalidate(tenant_id=tenant_id, user_id=user_id))


def _emit(tenant: Tenant, user_id: Any, event_type: str, data: dict[str, Any]) -> None:
    """An event on the user's stream (in the caller's transaction): the app hears of it, and it moves the
    stream head, which invalidates the user's cached snapshot in every process."""
    events_emit(tenant=tenant, events=[EventSpec(stream=user_stream(user_id), type=event_type, data=data)])


# --- preference -----------------------------------------------------------------------------------------


def preference_set(*, tenant: Tenant, user: User, display_currency: str) -> BalancePreference:
    """Set the user's display currency (an ISO 4217 code of a fiat asset in the catalogue)."""
    info = currency_info(display_currency)
    with transaction.atomic():
        preference, _ = BalancePreference.all_tenants.update_or_create(
            user=user, defaults={"tenant": tenant, "display_currency": info.symbol, "updated_at": timezone.now()})
        _emit(tenant, user.pk, PREFERENCE_CHANGED, {"display_currency": info.symbol})
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
    return adapter.name, bank


def bank_account_link(*, tenant: Tenant, user: User, account_ref: str) -> LinkedBankAccount:
    """Link the provider's account `account_ref` to the user, after the provider confirmed it is open and,
    when it names the account's owners, that the user's customer (`BankCustomer`) is one of them. One
    active link per provider account in a tenant (409 `bank_account_already_linked`)."""
    provider, bank = bank_account_verify(tenant=tenant, account_ref=account_ref)
    _check_owner(tenant, user, provider, bank)  # first: another customer's account says nothing of its status
    if bank.status != "open":
        raise BankAccountNotOpen(status=bank.status)
    try:
        with transaction.atomic():
            account = LinkedBankAccount.all_tenants.create(
                tenant=tenant, user=user, provider=provider, external_id=bank.external_id, name=bank.name[:200],
                institution=bank.institution[:100], account_last4=bank.account_last4[-4:], currency=bank.currency,
            )
            _emit(tenant, user.pk, SOURCES_CHANGED, {"bank_account_id": str(account.pk), "change": "linked"})
    except IntegrityError as exc:
        raise BankAccountAlreadyLinked() from exc
    _invalidate_on_commit(tenant.pk, user.pk)
    return account


# Adapters whose account documents name the owners (Unit's customer relationships); the sandbox names none.
_PROVIDERS_NAMING_OWNERS = frozenset({"unit"})


def _check_owner(tenant: Tenant, user: User, provider: str, bank: BankAccount) -> None:
    """Refuse an account whose owners at the provider do not include the user's customer there. An adapter
    that cannot tell (no owners: the sandbox) is not checked; nor is a tenant whose banking config sets
    `options.verify_owner = false` (its onboarding does not record customers yet). The refusal is the
    answer for an unknown account (422 `bank_account_not_found`): no probing other people's accounts."""
    config = provider_configs(tenant=tenant).get(ProviderConfig.Kind.BANKING)
    if config is not None and (config.options or {}).get("verify_owner") is False:
        return
    if not bank.owners:
        if provider in _PROVIDERS_NAMING_OWNERS:  # a document without its owners: fail closed
            logger.warning("bank account without owners at a provider that names them",
                           extra={"user": str(user.pk), "provider": provider})
            raise BankAccountNotFound()
        return
    owned = BankCustomer.objects.for_tenant(tenant).filter(user=user, provider=provider,
                                                           customer_ref__in=bank.owners).exists()
    if not owned:
        logger.info("bank account not owned by the user", extra={"user": str(user.pk), "provider": provider})
        raise BankAccountNotFound()


def bank_customer_set(*, tenant: Tenant, user: User, provider: str, customer_ref: str) -> BankCustomer:
    """Record who the user is at the tenant's banking provider (onboarding); replaces a previous one. 409
    `bank_customer_taken` when another user of the tenant has that customer."""
    try:
        with transaction.atomic():
            customer, _ = BankCustomer.all_tenants.update_or_create(
                tenant=tenant, user=user, provider=provider, defaults={"customer_ref": customer_ref.strip()})
    except IntegrityError as exc:
        raise BankCustomerTaken() from exc
    return customer


def bank_account_remove(*, tenant: Tenant, account: LinkedBankAccount) -> LinkedBankAccount:
    """Unlink (kept as `removed` for the record; the provider account is not touched)."""
    with transaction.atomic():
        LinkedBankAccount.all_tenants.filter(pk=account.pk, tenant=tenant).update(
            status=LinkedBankAccount.Status.REMOVED, removed_at=timezone.now())
        account.refresh_from_db()
        _emit(tenant, account.user_id, SOURCES_CHANGED, {"bank_account_id": str(account.pk), "change": "removed"})
        _invalidate_on_commit(tenant.pk, account.user_id)
    return account
