"""Fetching sources concurrently, each cut at its own timeout and guarded by its provider's breaker,
from synchronous (WSGI) code.

`run_async` runs a coroutine to completion from a sync view, either on one event-loop thread per process
(`BALANCES_ASYNC_MODE=loop`, the default: no loop set-up per request, and connection pools could live
across requests) or with `asyncio.run` per call (`run`). bench/balances.py measures both.
"""

from __future__ import annotations

import asyncio
import logging
import os
import threading
import time
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from typing import Any, TypeVar

from wallet.balances import conf
from wallet.balances.breaker import breaker_for
from wallet.balances.providers.errors import CircuitOpen, ProviderError, ProviderTimeout
from wallet.balances.sources import BalanceEntry, BalanceSource

logger = logging.getLogger("wallet.balances")

T = TypeVar("T")


@dataclass(slots=True)
class Outcome:
    """What one guarded call produced: a value, or an error code."""

    value: Any = None
    error: str | None = None
    elapsed: float = 0.0

    @property
    def ok(self) -> bool:
        return self.error is None


async def guarded(provider: str, timeout: float, call: Callable[[], Awaitable[T]]) -> Outcome:
    """Run `call()` under `provider`'s breaker, cut at `timeout`; never raises."""
    started = time.monotonic()
    breaker = breaker_for(provider)
    if not breaker.allow():
        return Outcome(error=CircuitOpen.code)
    try:
        value = await asyncio.wait_for(call(), timeout=timeout)
    except TimeoutError:
        breaker.record_failure()
        return Outcome(error=ProviderTimeout.code, elapsed=time.monotonic() - started)
    except ProviderError as exc:
        # A terminal error is an answer: the provider is up, so it closes a half-open circuit.
        breaker.record_failure() if exc.retryable else breaker.record_success()
        return Outcome(error=exc.code, elapsed=time.monotonic() - started)
    except Exception:
        breaker.record_failure()
        logger.exception("balance source failed", extra={"provider": provider})
        return Outcome(error="source_failed", elapsed=time.monotonic() - started)
    breaker.record_success()
    return Outcome(value=value, elapsed=time.monotonic() - started)


async def fetch_all(sources: Sequence[BalanceSource], extra: Sequence[Callable[[], Awaitable[Outcome]]] = (),
                    *, sequential: bool = False) -> tuple[list[Outcome], list[Outcome]]:
    """Every source's outcome (entries as a list) and every `extra` call's outcome, all concurrently
    (or one after another with `sequential`, the benchmark's reference)."""

    def source_call(source: BalanceSource) -> Awaitable[Outcome]:
        async def fetch() -> list[BalanceEntry]:
            return list(await source.fetch())

        return guarded(source.provider, source.timeout, fetch)

    calls = [source_call(s) for s in sources] + [call() for call in extra]
    try:
        if sequential:
            results = [await c for c in calls]
        else:
            results = list(await asyncio.gather(*calls))
    finally:
        closers = [s.aclose() for s in sources if hasattr(s, "aclose")]
        if closers:
            await asyncio.gather(*closers, return_exceptions=True)
    return results[:len(sources)], results[len(sources):]


def read_local(source: BalanceSource) -> Outcome:
    started = time.monotonic()
    try:
        entries = list(source.read())  # type: ignore[attr-defined]
    except Exception:
        logger.exception("local balance source failed", extra={"source": source.id})
        return Outcome(error="source_failed", elapsed=time.monotonic() - started)
    return Outcome(value=entries, elapsed=time.monotonic() - started)


class _LoopThread:
    def __init__(self) -> None:
        self.pid = os.getpid()
        self.loop = asyncio.new_event_loop()
        self.thread = threading.Thread(target=self.loop.run_forever, name="balances-loop", daemon=True)
        self.thread.start()


_loop_thread: _LoopThread | None = None
_loop_lock = threading.Lock()


def _loop() -> asyncio.AbstractEventLoop:
    global _loop_thread
    current = _loop_thread
    # A forked worker (gunicorn) inherits the object but not the thread: start its own.
    if current is None or current.pid != os.getpid() or not current.thread.is_alive():
        with _loop_lock:
            current = _loop_thread
            if current is None or current.pid != os.getpid() or not current.thread.is_alive():
                current = _LoopThread()
                _loop_thread = current
    return current.loop


def run_async(factory: Callable[[], Awaitable[T]], *, timeout: float, mode: str | None = None) -> T:
    """Run `factory()` to completion from synchronous code and return its result. `timeout` is a safety
    net only (every call inside already has its own)."""
    mode = mode or conf.async_mode()
    if mode == "run":
        return asyncio.run(_as_coroutine(factory))
    future = asyncio.run_coroutine_threadsafe(_as_coroutine(factory), _loop())
    return future.result(timeout)


class Pending:
    """A coroutine started on the process's event-loop thread; `result()` waits for it."""

    def __init__(self, factory: Callable[[], Awaitable[Any]]) -> None:
        self.future = asyncio.run_coroutine_threadsafe(_as_coroutine(factory), _loop())

    def result(self, timeout: float) -> Any:
        return self.future.result(timeout)


def start(factory: Callable[[], Awaitable[Any]]) -> Pending:
    """Start `factory()` on the event-loop thread now and return at once (the caller does its own
    synchronous work meanwhile)."""
    return Pending(factory)


async def _as_coroutine(factory: Callable[[], Awaitable[T]]) -> T:
    return await factory()
