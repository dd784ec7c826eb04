"""Build a tenant's adapters from its `ProviderConfig` rows (credentials decrypted only here, in memory)."""

from __future__ import annotations

import time
from typing import Any
from urllib.parse import urlsplit

import httpx
from django.conf import settings

from tenants.models import Tenant
from wallet.balances import conf
from wallet.balances.crypto import InvalidToken, credentials_decrypt
from wallet.balances.models import ProviderConfig
from wallet.balances.providers.banking import BankingProvider, SandboxBanking, UnitBanking
from wallet.balances.providers.errors import ProviderAuthFailed, ProviderNotConfigured
from wallet.balances.providers.prices import CoinGeckoPrices, PriceProvider, SandboxPrices

# Tests set this to an httpx.MockTransport so that real adapters built from configs never reach the network.
test_transport: httpx.AsyncBaseTransport | None = None


_configs: dict[Any, tuple[float, dict[str, ProviderConfig]]] = {}


# The hosts each real adapter may be pointed at with `options.base_url`. The option is tenant-editable
# (admin), the credentials it carries are not readable: any other host could receive the stored token, or
# be an internal address (SSRF). The platform extends the list with BALANCES_PROVIDER_HOSTS (settings).
PROVIDER_HOSTS: dict[str, frozenset[str]] = {
    ProviderConfig.Provider.UNIT: frozenset({"api.s.unit.sh", "api.unit.co"}),
    ProviderConfig.Provider.COINGECKO: frozenset({"api.coingecko.com", "pro-api.coingecko.com"}),
}


def provider_base_url(provider: str, options: dict[str, Any]) -> str:
    """`options.base_url`, or "" for the adapter's default; refused unless HTTPS to an allowed host."""
    url = str(options.get("base_url") or "")
    if not url:
        return ""
    parts = urlsplit(url)
    extra = getattr(settings, "BALANCES_PROVIDER_HOSTS", {}).get(provider, ())
    if parts.scheme != "https" or parts.hostname not in PROVIDER_HOSTS.get(provider, frozenset()) | set(extra) \
            or parts.username or parts.password or parts.port not in (None, 443):
        raise ProviderNotConfigured(f"base_url {url!r} is not an allowed {provider} endpoint", provider=provider)
    return url.rstrip("/")


def provider_configs(*, tenant: Tenant) -> dict[str, ProviderConfig]:
    """The tenant's enabled configs by kind: one query, reused by the process for
    `BALANCES_CONFIG_CACHE_SECONDS` (a changed config applies everywhere within that time)."""
    ttl = conf.config_cache_seconds()
    cached = _configs.get(tenant.pk)
    now = time.monotonic()
    if cached is not None and now - cached[0] < ttl:
        return cached[1]
    configs = {c.kind: c for c in ProviderConfig.objects.for_tenant(tenant).filter(enabled=True)}
    if ttl > 0:
        if len(_configs) > 10_000:
            _configs.clear()
        _configs[tenant.pk] = (now, configs)
    return configs


def provider_configs_clear() -> None:
    _configs.clear()


def breaker_key(kind: str, provider: str, tenant: Tenant) -> str:
    """Circuit-breaker key: per provider and tenant, so one tenant's revoked key does not cut off others."""
    return f"{kind}.{provider}.{tenant.pk.hex}"


def _timeout(options: dict[str, Any]) -> float:
    return float(options.get("timeout_seconds") or 5.0)


def _credentials(config: ProviderConfig) -> dict[str, Any]:
    try:
        return credentials_decrypt(config.credentials_encrypted)
    except InvalidToken as exc:
        # A key was dropped before the rows were rotated: report it, never crash the aggregate.
        raise ProviderAuthFailed("stored credentials cannot be decrypted with the configured keys",
                                 provider=config.provider) from exc


def _sandbox_allowed() -> bool:
    return not getattr(settings, "PRODUCTION", False)


def banking_provider(*, tenant: Tenant, config: ProviderConfig | None) -> BankingProvider:
    """The tenant's banking adapter; the sandbox when it has none (except in production)."""
    if config is None:
        if not _sandbox_allowed():
            raise ProviderNotConfigured("no banking provider configured", provider="banking")
        return SandboxBanking(tenant_key=tenant.pk.hex)
    options = config.options or {}
    if config.provider == ProviderConfig.Provider.SANDBOX:
        return SandboxBanking(tenant_key=tenant.pk.hex, latency_ms=options.get("latency_ms", 0),
                              failure_rate=options.get("failure_rate", 0), timeout=_timeout(options))
    if config.provider == ProviderConfig.Provider.UNIT:
        token = _credentials(config).get("token")
        if not token:
            raise ProviderAuthFailed("no Unit token configured", provider="unit")
        return UnitBanking(token=token, base_url=provider_base_url(config.provider, options)
                           or UnitBanking.DEFAULT_BASE_URL,
                           timeout=_timeout(options), transport=test_transport)
    raise ProviderNotConfigured(f"{config.provider} is not a banking provider", provider=config.provider)


def price_provider(*, tenant: Tenant, config: ProviderConfig | None) -> PriceProvider:
    """The tenant's price adapter; the sandbox when it has none (except in production)."""
    if config is None:
        if not _sandbox_allowed():
            raise ProviderNotConfigured("no price provider configured", provider="prices")
        return SandboxPrices()
    options = config.options or {}
    if config.provider == ProviderConfig.Provider.SANDBOX:
        return SandboxPrices(latency_ms=options.get("latency_ms", 0), failure_rate=options.get("failure_rate", 0),
                             timeout=_timeout(options))
    if config.provider == ProviderConfig.Provider.COINGECKO:
        return CoinGeckoPrices(api_key=_credentials(config).get("api_key", ""), plan=options.get("plan", "demo"),
                               base_url=provider_base_url(config.provider, options), timeout=_timeout(options),
                               coin_ids=options.get("coin_ids"), transport=test_transport)
    raise ProviderNotConfigured(f"{config.provider} is not a price provider", provider=config.provider)
