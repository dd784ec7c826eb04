"""Balance sources: the interface every kind of balance plugs into, and the registry of source factories.

A *source factory* is called in the request's thread, synchronously, with the tenant and the user; it may
read the database (the user's ledger accounts, linked bank accounts, linked addresses) and returns the
user's sources. A *source* then fetches its entries asynchronously (no ORM there: it runs on the event
loop, concurrently with the others) and is cut at its own `timeout`; its `provider` names the circuit
breaker it reports to.

Other apps plug in with one call, e.g. from `chains`' `AppConfig.ready()`:

    from wallet.balances.sources import register_source_factory
    register_source_factory("chains", chain_balance_sources)  # (tenant, user) -> iterable of sources

The money core never imports them (DESIGN.md: the core learns of chains through a source interface).

A source that only reads our own database (the ledger) sets `local = True` and implements a synchronous
`read()` instead of `fetch()`: it runs in the request thread while the remote sources are awaited, so its
queries cost no extra wall time.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol, runtime_checkable

from tenants.models import Tenant, User


@dataclass(frozen=True, slots=True)
class BalanceEntry:
    """One balance of one asset in a source. `amount` is an int in the asset's smallest unit (any size)."""

    key: str  # unique within the user's aggregate, stable between refreshes: "ledger:<account id>"
    asset: str  # asset code: "USD", "ETH:31337", "USDC:1"
    decimals: int
    amount: int
    label: str = ""
    details: Mapping[str, Any] = field(default_factory=dict)  # JSON-able, shown to the user (no secrets)


@runtime_checkable
class BalanceSource(Protocol):
    """One place balances come from, for one user."""

    id: str  # stable per user: "ledger", "bank:<linked account id>", "chain:<chain id>:<address>"
    kind: str  # "ledger", "bank", "chain", ...
    label: str  # what the app shows as the source's name
    provider: str  # circuit-breaker key: calls to the same provider share one breaker
    timeout: float  # seconds; the source is cut (and reported stale/unavailable) beyond it

    async def fetch(self) -> Sequence[BalanceEntry]:
        """The source's entries now. Raise `ProviderError`s for provider failures; never touch the ORM."""
        ...


SourceFactory = Callable[[Tenant, User], Iterable[BalanceSource]]

_factories: dict[str, SourceFactory] = {}
_lock = threading.Lock()


def register_source_factory(name: str, factory: SourceFactory) -> None:
    """Register (or replace) the factory called `name`. Idempotent, so `ready()` may call it twice."""
    with _lock:
        _factories[name] = factory


def unregister_source_factory(name: str) -> None:
    with _lock:
        _factories.pop(name, None)


def source_factories() -> dict[str, SourceFactory]:
    with _lock:
        return dict(_factories)


def sources_for(tenant: Tenant, user: User) -> list[BalanceSource]:
    """Every source of the user, from every registered factory, in registration order."""
    sources: list[BalanceSource] = []
    for factory in source_factories().values():
        sources.extend(factory(tenant, user))
    return sources
