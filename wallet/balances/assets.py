"""The asset catalogue as the balances app needs it (codes, kinds, decimals), cached per process.

Assets are platform-wide rows that change a few times a year; a 60 s per-process copy keeps the database
out of the cold path's way.
"""

from __future__ import annotations

import threading
import time
from dataclasses import dataclass

from wallet.balances.providers.prices import PricedAsset
from wallet.ledger.models import Asset

_TTL_SECONDS = 60.0


@dataclass(frozen=True, slots=True)
class AssetInfo:
    code: str
    kind: str
    symbol: str  # ISO 4217 code for fiat, the token symbol for crypto
    decimals: int

    def priced(self) -> PricedAsset:
        return PricedAsset(code=self.code, kind=self.kind, symbol=self.symbol)


_cache: tuple[float, dict[str, AssetInfo]] | None = None
_lock = threading.Lock()


def asset_catalogue() -> dict[str, AssetInfo]:
    """Every asset by code."""
    global _cache
    cached = _cache
    if cached is not None and time.monotonic() - cached[0] < _TTL_SECONDS:
        return cached[1]
    with _lock:
        rows = {
            a.code: AssetInfo(code=a.code, kind=a.kind, decimals=a.decimals,
                              symbol=(a.currency_code or a.code) if a.kind == Asset.Kind.FIAT else a.symbol)
            for a in Asset.objects.all()
        }
        _cache = (time.monotonic(), rows)
        return rows


def asset_catalogue_clear() -> None:
    global _cache
    _cache = None


def display_currencies() -> dict[str, AssetInfo]:
    """Fiat assets, which may be chosen as the display currency, by ISO code."""
    return {info.symbol: info for info in asset_catalogue().values() if info.kind == Asset.Kind.FIAT}
