"""Settings of the chains app, read from Django settings with environment defaults."""

from __future__ import annotations

import os
from typing import Any

from django.conf import settings

DEFAULTS: dict[str, Any] = {
    # Sign-In with Ethereum: the domain and URI the messages must name; empty: the request's host.
    "CHAINS_SIWE_DOMAIN": os.environ.get("CHAINS_SIWE_DOMAIN", ""),
    "CHAINS_SIWE_URI": os.environ.get("CHAINS_SIWE_URI", ""),
    "CHAINS_SIWE_NONCE_TTL_SECONDS": int(os.environ.get("CHAINS_SIWE_NONCE_TTL_SECONDS", "600")),
    # How often expired nonces are purged (the `chains-purge-siwe-nonces` beat entry).
    "CHAINS_SIWE_PURGE_SECONDS": float(os.environ.get("CHAINS_SIWE_PURGE_SECONDS", "3600")),
    "CHAINS_SIWE_CLOCK_SKEW_SECONDS": int(os.environ.get("CHAINS_SIWE_CLOCK_SKEW_SECONDS", "60")),
    "CHAINS_RPC_TIMEOUT_SECONDS": float(os.environ.get("CHAINS_RPC_TIMEOUT_SECONDS", "10")),
    "CHAINS_RPC_RETRIES": int(os.environ.get("CHAINS_RPC_RETRIES", "2")),
    "CHAINS_RPC_BACKOFF_SECONDS": float(os.environ.get("CHAINS_RPC_BACKOFF_SECONDS", "0.5")),
    # Watched addresses at or below this count are filtered by the node (topics); above, by a set in Python.
    "CHAINS_LOG_FILTER_MAX_ADDRESSES": int(os.environ.get("CHAINS_LOG_FILTER_MAX_ADDRESSES", "200")),
    # Blocks per tick of the watcher (bounded work per transaction; catch-up just takes more ticks).
    "CHAINS_MAX_BLOCKS_PER_TICK": int(os.environ.get("CHAINS_MAX_BLOCKS_PER_TICK", "2000")),
    # Catching up, how many chunks ahead the watcher asks the node for (worker threads) while it commits one.
    "CHAINS_SCAN_PREFETCH": int(os.environ.get("CHAINS_SCAN_PREFETCH", "2")),
    "CHAINS_BALANCE_CACHE_SECONDS": float(os.environ.get("CHAINS_BALANCE_CACHE_SECONDS", "15")),
    # `make run`: the local dev chain's RPC URL (seed_demo registers it) and whether serve runs the watcher.
    "CHAINS_DEV_RPC_URL": os.environ.get("CHAINS_DEV_RPC_URL", ""),
    "CHAINS_WATCH_IN_PROCESS": os.environ.get("CHAINS_WATCH_IN_PROCESS", "1") == "1",
}


def setting(name: str) -> Any:
    return getattr(settings, name, DEFAULTS[name])
