"""Price and FX providers: the price of one whole unit of an asset in a quote (display) currency.

`PriceProvider` is the contract; `SandboxPrices` (a fixed table, no network) backs the embedded default;
`CoinGeckoPrices` reads CoinGecko's public API (https://docs.coingecko.com/): `/simple/price` for crypto
assets and `/exchange_rates` (BTC-based rates of fiat and crypto currencies) for fiat cross rates, with
the documented `x-cg-demo-api-key` / `x-cg-pro-api-key` header. JSON numbers are read as `Decimal`, so
no rate goes through a binary float.
"""

from __future__ import annotations

import asyncio
import random
from collections.abc import Sequence
from dataclasses import dataclass
from decimal import Decimal, localcontext
from typing import Any, Protocol, runtime_checkable

import httpx

from wallet.balances.providers.errors import (
    ProviderBadResponse,
    ProviderNotConfigured,
    ProviderTimeout,
    ProviderUnavailable,
)
from wallet.balances.providers.http import HttpAdapter

RATE_PRECISION = 50  # significant digits of derived (divided) rates


@dataclass(frozen=True, slots=True)
class PricedAsset:
    """What a price provider needs to know about an asset."""

    code: str  # our asset code: "USD", "ETH", "USDC:1"
    kind: str  # "fiat" or "crypto"
    symbol: str  # "USD" for fiat (ISO 4217), "ETH", "USDC" for crypto


@runtime_checkable
class PriceProvider(Protocol):
    """Prices of assets in a quote currency. Raises only `ProviderError`s and honours `timeout`."""

    name: str
    timeout: float

    async def rates(self, assets: Sequence[PricedAsset], quote: str) -> dict[str, Decimal]:
        """`{asset code: price of one whole unit in quote}`; assets the provider does not price are left out."""
        ...

    async def aclose(self) -> None:
        ...


# Sandbox prices in USD of one whole unit (fixed, so tests and demos are reproducible).
SANDBOX_USD = {
    "USD": Decimal("1"), "EUR": Decimal("1.08"), "GBP": Decimal("1.27"), "CHF": Decimal("1.13"),
    "JPY": Decimal("0.0067"), "BRL": Decimal("0.18"), "ETH": Decimal("3000"), "USDC": Decimal("1"),
    "BTC": Decimal("60000"),
}


def _divide(numerator: Decimal, denominator: Decimal) -> Decimal:
    with localcontext() as context:
        context.prec = RATE_PRECISION
        return numerator / denominator


class SandboxPrices:
    """A fixed USD table; cross rates divide two of its entries. Options: `latency_ms`, `failure_rate`,
    `timeout_seconds` like the sandbox bank."""

    name = "sandbox"

    def __init__(self, *, latency_ms: float = 0, failure_rate: float = 0, timeout: float = 5.0,
                 rng: random.Random | None = None) -> None:
        self.latency = max(0.0, float(latency_ms)) / 1000
        self.failure_rate = min(1.0, max(0.0, float(failure_rate)))
        self.timeout = timeout
        self.rng = rng or random.Random()

    async def rates(self, assets: Sequence[PricedAsset], quote: str) -> dict[str, Decimal]:
        try:
            return await asyncio.wait_for(self._rates(assets, quote), timeout=self.timeout)
        except TimeoutError as exc:
            raise ProviderTimeout(f"no answer within {self.timeout:g}s", provider=self.name) from exc

    async def _rates(self, assets: Sequence[PricedAsset], quote: str) -> dict[str, Decimal]:
        if self.latency:
            await asyncio.sleep(self.latency)
        if self.failure_rate and self.rng.random() < self.failure_rate:
            raise ProviderUnavailable("simulated outage", provider=self.name, status=503)
        quote_usd = SANDBOX_USD.get(quote.upper())
        if quote_usd is None:
            return {}
        out = {}
        for asset in assets:
            usd = SANDBOX_USD.get(asset.symbol.upper())
            if usd is not None:
                out[asset.code] = Decimal(1) if asset.symbol.upper() == quote.upper() else _divide(usd, quote_usd)
        return out

    async def aclose(self) -> None:
        return None


# CoinGecko coin ids of our crypto symbols (tenants may add more in options["coin_ids"]).
COINGECKO_IDS = {"ETH": "ethereum", "USDC": "usd-coin", "BTC": "bitcoin"}


class CoinGeckoPrices(HttpAdapter):
    """CoinGecko. Options: `plan` ("demo", the default, root https://api.coingecko.com/api/v3, header
    `x-cg-demo-api-key`; or "pro", root https://pro-api.coingecko.com/api/v3, header `x-cg-pro-api-key`),
    `base_url` (overrides the root), `coin_ids` ({symbol: coin id}), `timeout_seconds` (default 5).
    Credentials: `{"api_key": "..."}` (the demo plan also works keyless, rate-limited per IP).
    """

    name = "coingecko"
    ROOTS = {"demo": "https://api.coingecko.com/api/v3", "pro": "https://pro-api.coingecko.com/api/v3"}
    HEADERS = {"demo": "x-cg-demo-api-key", "pro": "x-cg-pro-api-key"}

    def __init__(self, *, api_key: str = "", plan: str = "demo", base_url: str = "", timeout: float = 5.0,
                 coin_ids: dict[str, str] | None = None, transport: httpx.AsyncBaseTransport | None = None) -> None:
        if plan not in self.ROOTS:
            raise ProviderNotConfigured(f"unknown CoinGecko plan {plan!r}", provider=self.name)
        if plan == "pro" and not api_key:
            raise ProviderNotConfigured("the pro plan needs an api_key", provider=self.name)
        headers = {"Accept": "application/json"}
        if api_key:
            headers[self.HEADERS[plan]] = api_key
        super().__init__(base_url=base_url or self.ROOTS[plan], headers=headers, timeout=timeout,
                         transport=transport)
        self.coin_ids = {**COINGECKO_IDS, **{k.upper(): v for k, v in (coin_ids or {}).items()}}

    def parse(self, response: httpx.Response) -> Any:
        return response.json(parse_float=Decimal)

    def error_detail(self, response: httpx.Response) -> str:
        # Documented shapes: {"status": {"error_code", "error_message"}} (401/429) or {"error": "..."}.
        try:
            body = response.json()
            status = body.get("status") if isinstance(body, dict) else None
            if isinstance(status, dict):
                return f"{status.get('error_code', '')} {status.get('error_message', '')}".strip()[:200]
            if isinstance(body, dict) and body.get("error"):
                return str(body["error"])[:200]
        except ValueError:
            pass
        return response.reason_phrase or str(response.status_code)

    async def rates(self, assets: Sequence[PricedAsset], quote: str) -> dict[str, Decimal]:
        quote_lower = quote.lower()
        crypto = {a.code: self.coin_ids[a.symbol.upper()] for a in assets
                  if a.kind == "crypto" and a.symbol.upper() in self.coin_ids}
        fiat = [a for a in assets if a.kind == "fiat"]
        calls = []
        if crypto:
            calls.append(self.get_json("/simple/price", params={
                "ids": ",".join(sorted(set(crypto.values()))), "vs_currencies": quote_lower, "precision": "full",
            }))
        if any(a.symbol.upper() != quote.upper() for a in fiat):
            calls.append(self.get_json("/exchange_rates"))
        answers = await asyncio.gather(*calls)
        out: dict[str, Decimal] = {}
        position = 0
        if crypto:
            prices = answers[position]
            position += 1
            for code, coin_id in crypto.items():
                value = (prices.get(coin_id) or {}).get(quote_lower) if isinstance(prices, dict) else None
                if value is not None:
                    out[code] = self._decimal(value)
        table = answers[position].get("rates") if position < len(answers) and isinstance(answers[position], dict) \
            else None
        for asset in fiat:
            if asset.symbol.upper() == quote.upper():
                out[asset.code] = Decimal(1)
            elif isinstance(table, dict):
                base, target = table.get(asset.symbol.lower()), table.get(quote_lower)
                if isinstance(base, dict) and isinstance(target, dict) and base.get("value"):
                    # Both are "units per 1 BTC": 1 base = target/base quote.
                    out[asset.code] = _divide(self._decimal(target["value"]), self._decimal(base["value"]))
        return out

    def _decimal(self, value: Any) -> Decimal:
        if isinstance(value, bool) or not isinstance(value, int | Decimal | str):
            raise ProviderBadResponse(f"price {value!r} is not a number", provider=self.name)
        try:
            result = Decimal(value)
        except ArithmeticError as exc:
            raise ProviderBadResponse(f"price {value!r} is not a number", provider=self.name) from exc
        if not result.is_finite() or result < 0:
            raise ProviderBadResponse(f"price {value!r} is not a finite positive number", provider=self.name)
        return result
