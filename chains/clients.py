"""One RPC client per chain (and URL list), shared by the process's threads."""

from __future__ import annotations

import threading

from chains.conf import setting
from chains.models import Chain
from chains.rpc import RpcClient

_clients: dict[tuple[int, tuple[str, ...]], RpcClient] = {}
_lock = threading.Lock()


def client_for(chain: Chain) -> RpcClient:
    """The process's RPC client of `chain` (a new one when its URLs change in the registry)."""
    key = (chain.chain_id, tuple(chain.rpc_urls))
    with _lock:
        client = _clients.get(key)
        if client is None:
            # Forget the client of the old URLs without closing it: another thread (the watcher, a request)
            # may hold it still; each of them asks again (the watcher at every tick) and gets this one.
            for old in [k for k in _clients if k[0] == chain.chain_id]:
                _clients.pop(old)
            client = RpcClient(chain.rpc_urls, timeout=setting("CHAINS_RPC_TIMEOUT_SECONDS"),
                               retries=setting("CHAINS_RPC_RETRIES"), backoff=setting("CHAINS_RPC_BACKOFF_SECONDS"))
            _clients[key] = client
        return client


def clients_reset() -> None:
    """Forget every client (tests that restart nodes)."""
    with _lock:
        for client in _clients.values():
            client.close()
        _clients.clear()
