"""Delivery of the release hook: a POST signed per Standard Webhooks, through a transport that refuses
private destinations at connect time.

The URL was checked when saved, but a name can resolve elsewhere later (DNS rebinding). So every
connection resolves the host itself, checks every address it resolves to, and connects to a checked
address; TLS still verifies the certificate against the host name (SNI) and the Host header keeps the
name, because httpcore sends both from the URL. Redirects are not followed. Hosts listed in
BRANDING_HOOK_ALLOW_HOSTS skip the address check (tests, on-premises CI).
"""

from __future__ import annotations

import ipaddress
import json
import logging
import socket
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

import httpcore
import httpx
from standardwebhooks.webhooks import Webhook

from branding import conf
from branding.validation import is_public_address


class HookError(Exception):
    """Base of build-hook delivery errors."""

    retryable = False


class HookAddressRefused(HookError):
    """The hook's host resolves to a loopback, private, link-local or metadata address."""


class HookRetryable(HookError):
    """A timeout, a network error or a 5xx/429: worth retrying."""

    retryable = True


class HookRejected(HookError):
    """The receiver answered 4xx (or a redirect, which is not followed)."""


class VettedBackend(httpcore.NetworkBackend):
    """httpcore's sync backend, connecting only to addresses that pass the public-address check."""

    def __init__(self, allow_hosts: list[str]) -> None:
        self._inner = httpcore.SyncBackend()
        self._allow = {h.lower() for h in allow_hosts}

    def connect_tcp(self, host: str, port: int, timeout: float | None = None, local_address: str | None = None,
                    socket_options: Any = None) -> httpcore.NetworkStream:
        addresses = vetted_addresses(host, port, allow=host.lower() in self._allow)
        last: Exception | None = None
        for address in addresses:
            try:
                return self._inner.connect_tcp(address, port, timeout=timeout, local_address=local_address,
                                               socket_options=socket_options)
            except httpcore.ConnectError as exc:
                last = exc
        raise httpcore.ConnectError(f"could not connect to {host}:{port}: {last}")

    def connect_unix_socket(self, *args: Any, **kwargs: Any) -> httpcore.NetworkStream:
        raise httpcore.ConnectError("unix sockets are not allowed for build hooks")

    def sleep(self, seconds: float) -> None:
        self._inner.sleep(seconds)


def vetted_addresses(host: str, port: int, *, allow: bool = False) -> list[str]:
    """Resolve `host` and return its addresses, refusing the lot if any one is not public."""
    try:
        infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)
    except socket.gaierror as exc:
        raise httpcore.ConnectError(f"cannot resolve {host}: {exc}") from exc
    addresses = list(dict.fromkeys(info[4][0] for info in infos))
    if not allow:
        for address in addresses:
            if not is_public_address(ipaddress.ip_address(address.split("%", 1)[0])):
                # The address stays in the server's log: the message is stored on the delivery, which the
                # tenant's staff read (it would map their host names to our internal addresses).
                logging.getLogger("branding.hook").warning("hook host refused", extra={"host": host,
                                                                                       "address": address})
                raise HookAddressRefused(f"{host} does not resolve to a public address only")
    return addresses


def hook_client(timeout: float | None = None) -> httpx.Client:
    transport = httpx.HTTPTransport(retries=0, trust_env=False)
    transport._pool._network_backend = VettedBackend(conf.hook_allow_hosts())
    return httpx.Client(transport=transport, follow_redirects=False, trust_env=False,
                        timeout=timeout or conf.hook_timeout_seconds())


@dataclass(frozen=True)
class HookPayload:
    """The body of `branding.released` hook calls (typed; see docs/BRANDING.md)."""

    type: str
    timestamp: str
    data: dict[str, Any]


def sign_and_post(*, url: str, secret: str, message_id: str, payload: dict[str, Any],
                  client: httpx.Client | None = None) -> int:
    """POST `payload` signed per Standard Webhooks (`webhook-id`, `webhook-timestamp`, `webhook-signature`).
    Returns the status code; raises `HookRetryable` / `HookRejected` / `HookAddressRefused`."""
    body = json.dumps(payload, sort_keys=True, separators=(",", ":"))
    now = datetime.now(tz=UTC)
    signature = Webhook(secret).sign(message_id, now, body)
    headers = {"content-type": "application/json", "webhook-id": message_id,
               "webhook-timestamp": str(int(now.timestamp())), "webhook-signature": signature,
               "user-agent": "wallet-bff-branding-hook/1"}
    owned = client is None
    client = client or hook_client()
    try:
        response = client.post(url, content=body.encode(), headers=headers)
    except HookAddressRefused:
        raise
    except (httpx.TimeoutException, httpx.NetworkError, httpx.RemoteProtocolError) as exc:
        cause = exc.__context__ if isinstance(exc.__context__, HookAddressRefused) else None
        if cause is not None:
            raise cause from exc
        raise HookRetryable(f"{type(exc).__name__}: {exc}") from exc
    finally:
        if owned:
            client.close()
    if 200 <= response.status_code < 300:
        return response.status_code
    if response.status_code >= 500 or response.status_code in (408, 429):
        raise HookRetryable(f"HTTP {response.status_code}")
    raise HookRejected(f"HTTP {response.status_code}" + (" (redirects are not followed)"
                                                          if 300 <= response.status_code < 400 else ""))
