"""In-process counters and gauges of the chains app (read by `metrics_snapshot()`, logged by the watcher).

The project has no metrics exporter yet; these are the numbers one would export (names in Prometheus style).
"""

from __future__ import annotations

import threading
from typing import Any

_lock = threading.Lock()
_values: dict[tuple[str, tuple[tuple[str, Any], ...]], float] = {}


def _key(name: str, labels: dict[str, Any]) -> tuple[str, tuple[tuple[str, Any], ...]]:
    return name, tuple(sorted(labels.items()))


def increment(name: str, amount: float = 1, **labels: Any) -> None:
    with _lock:
        key = _key(name, labels)
        _values[key] = _values.get(key, 0) + amount


def gauge(name: str, value: float, **labels: Any) -> None:
    with _lock:
        _values[_key(name, labels)] = value


def value(name: str, **labels: Any) -> float:
    with _lock:
        return _values.get(_key(name, labels), 0)


def metrics_snapshot() -> dict[str, float]:
    with _lock:
        return {name + ("{" + ",".join(f'{k}="{v}"' for k, v in labels) + "}" if labels else ""): v
                for (name, labels), v in _values.items()}
