"""A thin JSON-RPC client per chain over httpx: timeouts, retries with backoff, failover across URLs ranked
by health (back to the primary once it recovers), batching, and `eth_getLogs` range splitting.

Exception tree: `RpcError` (base) <- `RpcUnavailable` (every URL failed at the transport or with 5xx:
retry later) and `RpcResponseError` (the node answered with a JSON-RPC error: terminal for that call).
"""

from __future__ import annotations

import itertools
import logging
import re
import threading
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import httpx
import orjson

logger = logging.getLogger("chains.rpc")


class RpcError(Exception):
    """Base of the RPC client's errors."""


class RpcUnavailable(RpcError):
    """No URL answered (timeouts, connection errors, HTTP 5xx, malformed bodies): retry later."""


class RpcResponseError(RpcError):
    """The node answered with a JSON-RPC error object."""

    def __init__(self, code: int, message: str, data: Any = None) -> None:
        super().__init__(f"{code}: {message}")
        self.code = code
        self.message = message
        self.data = data


# Phrases nodes use when a log query is too large (Alchemy, Infura, QuickNode, geth, erigon, anvil...).
_TOO_LARGE = ("more than", "too many", "range", "limit exceeded", "response size", "query timeout",
              "block range", "exceed")


def is_range_too_large(error: RpcResponseError) -> bool:
    text = error.message.lower()
    return (error.code in (-32005, -32602, -32600, -32000, -32001) and any(p in text for p in _TOO_LARGE)) \
        or error.code == -32005


@dataclass
class Endpoint:
    url: str
    rank: int  # configured order: 0 is the primary
    failures: int = 0
    down_until: float = 0.0
    calls: int = 0
    errors: int = 0
    latency_ms: float = 0.0

    def healthy(self, now: float) -> bool:
        return now >= self.down_until


@dataclass
class RpcStats:
    calls: int = 0
    batches: int = 0
    failovers: int = 0
    splits: int = 0
    by_url: dict[str, int] = field(default_factory=dict)


class RpcClient:
    """JSON-RPC over HTTP with failover. Thread-safe; one per chain.

    Endpoint choice: the lowest-ranked healthy URL (so the primary is used whenever it is up). A URL that
    fails is marked down for `backoff * 2**(failures-1)` seconds (capped); after that it is tried again
    first, and one success clears its record: that is how the client returns to the primary.
    """

    def __init__(self, urls: Sequence[str], *, timeout: float = 10.0, retries: int = 2, backoff: float = 0.5,
                 max_backoff: float = 30.0, transport: httpx.BaseTransport | None = None) -> None:
        if not urls:
            raise ValueError("an RPC client needs at least one URL")
        self.endpoints = [Endpoint(url=u, rank=i) for i, u in enumerate(urls)]
        self.timeout = timeout
        self.retries = retries
        self.backoff = backoff
        self.max_backoff = max_backoff
        self.stats = RpcStats()
        self._ids = itertools.count(1)
        self.trace_span: int | None = None  # the largest trace_filter range the node accepted (learned)
        self._lock = threading.Lock()
        self._http = httpx.Client(timeout=httpx.Timeout(timeout, connect=min(timeout, 3.0)), transport=transport,
                                  headers={"Content-Type": "application/json"}, trust_env=False)

    def close(self) -> None:
        self._http.close()

    # --- endpoint health --------------------------------------------------------------------------------
    def _ordered(self) -> list[Endpoint]:
        now = time.monotonic()
        with self._lock:
            healthy = sorted((e for e in self.endpoints if e.healthy(now)), key=lambda e: e.rank)
            down = sorted((e for e in self.endpoints if not e.healthy(now)), key=lambda e: e.down_until)
        return healthy + down

    def _mark_failed(self, endpoint: Endpoint, reason: str) -> None:
        with self._lock:
            endpoint.failures += 1
            endpoint.errors += 1
            delay = min(self.max_backoff, self.backoff * 2 ** (endpoint.failures - 1))
            endpoint.down_until = time.monotonic() + delay
        logger.warning("rpc endpoint failed", extra={"url": endpoint.url, "reason": reason, "down_for_s": delay})

    def _mark_ok(self, endpoint: Endpoint, elapsed: float) -> None:
        with self._lock:
            if endpoint.failures:
                logger.info("rpc endpoint recovered", extra={"url": endpoint.url})
            endpoint.failures = 0
            endpoint.down_until = 0.0
            endpoint.calls += 1
            endpoint.latency_ms = 0.8 * endpoint.latency_ms + 0.2 * elapsed * 1000 if endpoint.latency_ms \
                else elapsed * 1000

    @property
    def current_url(self) -> str:
        return self._ordered()[0].url

    # --- transport --------------------------------------------------------------------------------------
    def _post(self, payload: Any) -> Any:
        body = orjson.dumps(payload)
        last: Exception | None = None
        for attempt in range(self.retries + 1):
            for position, endpoint in enumerate(self._ordered()):
                started = time.monotonic()
                try:
                    response = self._http.post(endpoint.url, content=body)
                    if response.status_code >= 500 or response.status_code == 429:
                        raise RpcUnavailable(f"HTTP {response.status_code}")
                    if response.status_code >= 400 and not response.content.startswith((b"{", b"[")):
                        raise RpcUnavailable(f"HTTP {response.status_code}")
                    decoded = orjson.loads(response.content)
                except (httpx.TransportError, RpcUnavailable, orjson.JSONDecodeError) as exc:
                    last = exc
                    self._mark_failed(endpoint, f"{type(exc).__name__}: {exc}")
                    continue
                self._mark_ok(endpoint, time.monotonic() - started)
                if position:
                    self.stats.failovers += 1
                self.stats.by_url[endpoint.url] = self.stats.by_url.get(endpoint.url, 0) + 1
                return decoded
            if attempt < self.retries:
                time.sleep(min(self.max_backoff, self.backoff * 2 ** attempt))
        raise RpcUnavailable(f"no RPC endpoint answered: {last}")

    @staticmethod
    def _result(reply: Any) -> Any:
        if not isinstance(reply, dict):
            raise RpcUnavailable(f"malformed JSON-RPC reply: {reply!r:.200}")
        error = reply.get("error")
        if error is not None:
            raise RpcResponseError(int(error.get("code", 0)), str(error.get("message", "")), error.get("data"))
        return reply.get("result")

    def call(self, method: str, params: Sequence[Any] = ()) -> Any:
        """One JSON-RPC call; raises `RpcResponseError` for an error reply, `RpcUnavailable` when no URL answers."""
        self.stats.calls += 1
        return self._result(self._post({"jsonrpc": "2.0", "id": next(self._ids), "method": method,
                                        "params": list(params)}))

    def batch(self, calls: Sequence[tuple[str, Sequence[Any]]], *, max_batch: int = 500,
              raise_errors: bool = True) -> list[Any]:
        """Several calls in JSON-RPC batches of at most `max_batch`; results in the order given.

        With `raise_errors=False` an item's error is returned in its place as an `RpcResponseError`.
        """
        results: list[Any] = []
        for start in range(0, len(calls), max_batch):
            chunk = calls[start:start + max_batch]
            with self._lock:
                first = next(self._ids)
                self._ids = itertools.count(first + len(chunk))
            ids = list(range(first, first + len(chunk)))
            payload = [{"jsonrpc": "2.0", "id": i, "method": m, "params": list(p)} for i, (m, p) in zip(ids, chunk,
                                                                                                      strict=True)]
            self.stats.batches += 1
            self.stats.calls += len(chunk)
            replies = self._post(payload)
            if isinstance(replies, dict):  # some nodes answer a whole batch with one error object
                error = RpcResponseError(int((replies.get("error") or {}).get("code", 0)),
                                         str((replies.get("error") or {}).get("message", "")))
                if raise_errors:
                    raise error
                results.extend([error] * len(chunk))
                continue
            by_id = {r.get("id"): r for r in replies if isinstance(r, dict)}
            for i in ids:
                reply = by_id.get(i)
                if reply is None:
                    raise RpcUnavailable(f"batch reply is missing id {i}")
                try:
                    results.append(self._result(reply))
                except RpcResponseError as exc:
                    if raise_errors:
                        raise
                    results.append(exc)
        return results

    # --- helpers ----------------------------------------------------------------------------------------
    def get_logs(self, *, from_block: int, to_block: int, address: str | list[str] | None = None,
                 topics: list[Any] | None = None, min_span: int = 1) -> list[dict[str, Any]]:
        """`eth_getLogs` over [from_block, to_block], halving the range whenever the node says it is too
        large (and recursing), so a dense range never fails the scan."""
        query: dict[str, Any] = {"fromBlock": hex(from_block), "toBlock": hex(to_block)}
        if address:
            query["address"] = address
        if topics is not None:
            query["topics"] = topics
        try:
            return self.call("eth_getLogs", [query])
        except RpcResponseError as exc:
            if not is_range_too_large(exc) or to_block - from_block + 1 <= min_span:
                raise
        self.stats.splits += 1
        middle = (from_block + to_block) // 2
        return (self.get_logs(from_block=from_block, to_block=middle, address=address, topics=topics)
                + self.get_logs(from_block=middle + 1, to_block=to_block, address=address, topics=topics))


    def trace_filter(self, *, from_block: int, to_block: int, from_addresses: list[str] | None = None,
                     to_addresses: list[str] | None = None) -> list[dict[str, Any]]:
        """`trace_filter` (Parity/OpenEthereum style: erigon, reth, nethermind, anvil) over [from_block, to_block],
        traces whose sender is in `from_addresses` OR whose recipient is in `to_addresses` (every trace when
        both are None). A node that limits the range (anvil: 300 blocks) says so once: the span is learned and
        the range is asked for in one JSON-RPC batch of sub-ranges. Raises `RpcResponseError` when the node
        has no such method (see `is_unsupported`)."""
        while True:
            span = self.trace_span or to_block - from_block + 1
            calls = []
            for start in range(from_block, to_block + 1, span):
                query: dict[str, Any] = {"fromBlock": hex(start), "toBlock": hex(min(to_block, start + span - 1))}
                if from_addresses is not None:
                    query["fromAddress"] = from_addresses
                if to_addresses is not None:
                    query["toAddress"] = to_addresses
                calls.append(("trace_filter", [query]))
            replies = self.batch(calls, raise_errors=False, max_batch=100)
            error = next((r for r in replies if isinstance(r, RpcResponseError)), None)
            if error is None:
                return [trace for reply in replies for trace in (reply or ())]
            if not is_range_too_large(error) or span <= 1:
                raise error
            self.stats.splits += 1
            limit = _LIMIT.search(error.message.lower())
            learned = int(next(g for g in limit.groups() if g)) if limit else 0
            # "limited to 300" counts the distance (to - from), so a span of 300 blocks is always accepted.
            self.trace_span = min(span // 2, learned) if 0 < learned < span else max(1, span // 2)


_LIMIT = re.compile(r"limited to (\d+)|max(?:imum)?(?: block)?(?: range)?(?: is| of)? (\d+)")


def is_unsupported(error: RpcResponseError) -> bool:
    """The node does not have this method (or has it disabled)."""
    text = error.message.lower()
    return error.code in (-32601, -32004) or "not found" in text or "not supported" in text \
        or "does not exist" in text or "not available" in text or "unsupported" in text


def to_int(value: str | int | None) -> int:
    if value is None:
        return 0
    return value if isinstance(value, int) else int(value, 16)
