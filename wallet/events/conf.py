"""Settings of the outbox and its relay, read at call time (so tests can override them) with their defaults.

- `OUTBOX_RELAY_IN_PROCESS` (default: `not REDIS_URL`): publish from a daemon thread of the committing
  process (the embedded default); off, a separate `manage.py relay_outbox` process publishes.
- `OUTBOX_POLL_SECONDS` (1.0): the relay's poll interval, a fallback behind LISTEN/NOTIFY and the
  in-process wake-up.
- `OUTBOX_RELAY_BATCH_SIZE` (500): events read, published and marked per relay batch.
- `OUTBOX_RETENTION_HOURS` (72): published events younger than this are kept for replay.
- `OUTBOX_RETAIN_PER_STREAM` (1000): the newest this-many events of every stream are kept whatever their age.
- `OUTBOX_NOTIFY` (True): on PostgreSQL with an out-of-process relay, `events_emit` sends a NOTIFY so that
  the relay publishes within milliseconds. PostgreSQL serialises the commits of notifying transactions (a
  database-wide lock held through the commit's WAL flush): with many small concurrent transactions, turn it
  off and lower `OUTBOX_POLL_SECONDS` instead (the relay then finds events by polling).
- `OUTBOX_NOTIFY_CHANNEL` ("wallet_outbox"): the PostgreSQL LISTEN/NOTIFY channel that wakes the relay.
"""

from __future__ import annotations

from django.conf import settings

# An arbitrary constant: the key of the PostgreSQL advisory lock that lets one relay run per database.
RELAY_ADVISORY_LOCK_KEY = 0x5741_4C4C_4554_5258  # "WALLETRX"


def relay_in_process() -> bool:
    """True when committed events are published by a daemon thread of this process (the embedded default:
    no Redis, in-memory channel layer, one process); False when `manage.py relay_outbox` runs apart."""
    value = getattr(settings, "OUTBOX_RELAY_IN_PROCESS", None)
    if value is None:
        return not getattr(settings, "REDIS_URL", "")
    return bool(value)


def poll_seconds() -> float:
    return float(getattr(settings, "OUTBOX_POLL_SECONDS", 1.0))


def relay_batch_size() -> int:
    return int(getattr(settings, "OUTBOX_RELAY_BATCH_SIZE", 500))


def retention_hours() -> float:
    return float(getattr(settings, "OUTBOX_RETENTION_HOURS", 72))


def retain_per_stream() -> int:
    return int(getattr(settings, "OUTBOX_RETAIN_PER_STREAM", 1000))


def notify() -> bool:
    return bool(getattr(settings, "OUTBOX_NOTIFY", True))


def notify_channel() -> str:
    return str(getattr(settings, "OUTBOX_NOTIFY_CHANNEL", "wallet_outbox"))
