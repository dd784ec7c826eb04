"""Circuit breakers, one per provider key, shared by every request of the process.

Closed: calls go through; `failures` consecutive retryable failures open it. Open: calls are refused at
once (`provider_circuit_open`) until `reset_seconds` have passed. Half-open: one probe goes through; its
success closes the circuit, its failure opens it again for another `reset_seconds`.

Per process, not in Redis: the breaker is consulted on every source of every cold request, and a Redis
round trip there would cost more than the protection is worth on a fast path; each process learns of an
outage after `failures` of its own calls (a few requests), which bounds the extra load on a failing
provider to `failures x processes` calls per `reset_seconds`.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from enum import StrEnum

from wallet.balances import conf


class State(StrEnum):
    CLOSED = "closed"
    OPEN = "open"
    HALF_OPEN = "half_open"


class CircuitBreaker:
    def __init__(self, key: str, *, failures: int, reset_seconds: float,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.key = key
        self.failure_threshold = max(1, failures)
        self.reset_seconds = reset_seconds
        self.clock = clock
        self._lock = threading.Lock()
        self._state = State.CLOSED
        self._failures = 0
        self._opened_at = 0.0
        self._probe_in_flight = False

    @property
    def state(self) -> State:
        with self._lock:
            return self._current_state()

    def _current_state(self) -> State:
        if self._state is State.OPEN and self.clock() - self._opened_at >= self.reset_seconds:
            self._state = State.HALF_OPEN
            self._probe_in_flight = False
        return self._state

    def allow(self) -> bool:
        """May a call go through now? In half-open, only one (the probe) until it reports back."""
        with self._lock:
            state = self._current_state()
            if state is State.CLOSED:
                return True
            if state is State.HALF_OPEN and not self._probe_in_flight:
                self._probe_in_flight = True
                return True
            return False

    def record_success(self) -> None:
        with self._lock:
            self._state = State.CLOSED
            self._failures = 0
            self._probe_in_flight = False

    def record_failure(self) -> None:
        with self._lock:
            state = self._current_state()
            self._failures += 1
            if state is State.HALF_OPEN or self._failures >= self.failure_threshold:
                self._state = State.OPEN
                self._opened_at = self.clock()
                self._probe_in_flight = False


_breakers: dict[str, CircuitBreaker] = {}
_registry_lock = threading.Lock()


def breaker_for(key: str) -> CircuitBreaker:
    """The process-wide breaker of `key` (created closed, with the configured thresholds)."""
    breaker = _breakers.get(key)
    if breaker is None:
        with _registry_lock:
            breaker = _breakers.get(key)
            if breaker is None:
                breaker = CircuitBreaker(key, failures=conf.breaker_failures(),
                                         reset_seconds=conf.breaker_reset_seconds())
                _breakers[key] = breaker
    return breaker


def breakers_reset() -> None:
    """Forget every breaker (tests)."""
    with _registry_lock:
        _breakers.clear()
