"""Banking providers: external fiat accounts and their balances.

`BankingProvider` is the contract; `SandboxBanking` (deterministic, no network; latency and failure rate
from the tenant's options) backs the embedded default and the benchmarks; `UnitBanking` speaks Unit's
JSON:API (https://www.unit.co/docs/api/: `GET /accounts/{id}` returns a `depositAccount` whose
`balance`, `available` and `hold` are integers in cents), authenticated with `Authorization: Bearer`.
"""

from __future__ import annotations

import asyncio
import hashlib
import random
import re
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any, Protocol, runtime_checkable

import httpx

from wallet.balances.providers.errors import (
    ProviderBadResponse,
    ProviderNotFound,
    ProviderTimeout,
    ProviderUnavailable,
)
from wallet.balances.providers.http import HttpAdapter


@dataclass(frozen=True, slots=True)
class BankAccount:
    """An external account as the provider describes it; amounts in the currency's smallest unit."""

    external_id: str
    name: str
    institution: str
    account_last4: str
    currency: str
    status: str  # "open", "frozen" or "closed"
    balance: int
    available: int
    hold: int
    as_of: datetime
    # The provider's customers who own the account (Unit: the `customer`, or the `customers` of a joint
    # account); empty when the adapter cannot tell (the sandbox), and then ownership is not checked.
    owners: tuple[str, ...] = ()


@runtime_checkable
class BankingProvider(Protocol):
    """Reads external bank accounts. Every method raises only `ProviderError`s and honours `timeout`."""

    name: str
    timeout: float

    async def account_get(self, external_id: str) -> BankAccount:
        """The account with its current balances; `ProviderNotFound` when the provider has no such id."""
        ...

    async def aclose(self) -> None:
        ...


SANDBOX_CURRENCIES = ("USD", "EUR", "GBP", "CHF", "JPY", "BRL")


class SandboxBanking:
    """Deterministic accounts: any id `sandbox-<anything>` exists; its balance is derived from a hash of
    the tenant and the id (so it is stable between calls), its currency from a `-eur`/`-gbp`/... suffix
    (default USD). Ids containing `closed` are closed, ids containing `missing` do not exist.

    Options (per tenant, `ProviderConfig.options`): `latency_ms` (default 0), `failure_rate` (0..1, the
    share of calls failing with `provider_unavailable`), `timeout_seconds` (default 5).
    """

    name = "sandbox"

    def __init__(self, *, tenant_key: str, latency_ms: float = 0, failure_rate: float = 0,
                 timeout: float = 5.0, rng: random.Random | None = None) -> None:
        self.tenant_key = tenant_key
        self.latency = max(0.0, float(latency_ms)) / 1000
        self.failure_rate = min(1.0, max(0.0, float(failure_rate)))
        self.timeout = timeout
        self.rng = rng or random.Random()

    async def account_get(self, external_id: str) -> BankAccount:
        try:
            return await asyncio.wait_for(self._account(external_id), timeout=self.timeout)
        except TimeoutError as exc:
            raise ProviderTimeout(f"no answer within {self.timeout:g}s", provider=self.name) from exc

    async def _account(self, external_id: str) -> BankAccount:
        if self.latency:
            await asyncio.sleep(self.latency)
        if self.failure_rate and self.rng.random() < self.failure_rate:
            raise ProviderUnavailable("simulated outage", provider=self.name, status=503)
        ref = external_id.strip().lower()
        if not ref.startswith("sandbox-") or "missing" in ref:
            raise ProviderNotFound(f"no account {external_id!r}", provider=self.name, status=404)
        currency = next((c for c in SANDBOX_CURRENCIES if ref.endswith("-" + c.lower())), "USD")
        digest = hashlib.sha256(f"{self.tenant_key}:{ref}".encode()).digest()
        balance = int.from_bytes(digest[:4], "big") % 10_000_000
        hold = balance // 20
        return BankAccount(
            external_id=external_id, name="Sandbox checking", institution="Sandbox Bank",
            account_last4=str(int.from_bytes(digest[4:8], "big") % 10_000).zfill(4), currency=currency,
            status="closed" if "closed" in ref else "open", balance=balance, available=balance - hold,
            hold=hold, as_of=datetime.now(UTC),
        )

    async def aclose(self) -> None:
        return None


_UNIT_ID = re.compile(r"[A-Za-z0-9_-]{1,64}")


class UnitBanking(HttpAdapter):
    """Unit (https://www.unit.co/docs/api/): deposit accounts read with `GET /accounts/{id}`.

    Options: `base_url` (default the sandbox, https://api.s.unit.sh), `timeout_seconds` (default 5).
    Credentials: `{"token": "<Unit API token>"}`, sent as `Authorization: Bearer <token>`.
    Errors are JSON:API error objects (`{"errors": [{"title", "status", "detail"}]}`); the HTTP status
    decides retryable vs terminal.
    """

    name = "unit"
    DEFAULT_BASE_URL = "https://api.s.unit.sh"
    MEDIA_TYPE = "application/vnd.api+json"

    def __init__(self, *, token: str, base_url: str = DEFAULT_BASE_URL, timeout: float = 5.0,
                 transport: httpx.AsyncBaseTransport | None = None) -> None:
        super().__init__(base_url=base_url, timeout=timeout, transport=transport,
                         headers={"Authorization": f"Bearer {token}", "Accept": self.MEDIA_TYPE,
                                  "Content-Type": self.MEDIA_TYPE})

    def error_detail(self, response: httpx.Response) -> str:
        try:
            errors = response.json().get("errors") or []
            first = errors[0]
            return str(first.get("detail") or first.get("title") or response.reason_phrase)[:200]
        except (ValueError, AttributeError, IndexError, TypeError):
            return response.reason_phrase or str(response.status_code)

    async def account_get(self, external_id: str) -> BankAccount:
        if not _UNIT_ID.fullmatch(external_id or ""):  # Unit's ids are digits; nothing that changes the path
            raise ProviderNotFound(f"invalid account id {external_id!r}", provider=self.name)
        document = await self.get_json(f"/accounts/{external_id}")
        return self.account_from_document(document)

    def account_from_document(self, document: Any) -> BankAccount:
        """A `BankAccount` from a JSON:API document whose `data` is a `depositAccount` resource."""
        try:
            data = document["data"]
            if data["type"] != "depositAccount":
                raise ProviderBadResponse(f"unsupported account type {data['type']!r}", provider=self.name)
            attributes = data["attributes"]
            balance, available, hold = (attributes[k] for k in ("balance", "available", "hold"))
            if not all(isinstance(v, int) and not isinstance(v, bool) for v in (balance, available, hold)):
                raise ProviderBadResponse("balances are not integers (cents)", provider=self.name)
            account_number = str(attributes.get("accountNumber") or "")
            return BankAccount(owners=self.owners_of(data),
                external_id=str(data["id"]), name=str(attributes.get("name") or ""), institution="Unit",
                account_last4=account_number[-4:], currency=str(attributes.get("currency") or "USD").upper(),
                status=str(attributes.get("status") or "").lower(), balance=balance, available=available,
                hold=hold, as_of=datetime.now(UTC),
            )
        except (KeyError, TypeError) as exc:
            raise ProviderBadResponse(f"not a depositAccount document: {exc!r}", provider=self.name) from exc

    @staticmethod
    def owners_of(data: dict[str, Any]) -> tuple[str, ...]:
        """The customer ids of a deposit account's relationships: `customer` (individual or business
        account) or `customers` (joint account), each `{"data": {"type": "customer", "id"}}` / a list."""
        relationships = data.get("relationships") or {}
        found: list[str] = []
        for name in ("customer", "customers"):
            linked = (relationships.get(name) or {}).get("data")
            for item in linked if isinstance(linked, list) else [linked]:
                if isinstance(item, dict) and item.get("id") is not None:
                    found.append(str(item["id"]))
        return tuple(found)
