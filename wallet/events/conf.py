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
from django.core.signals import setting_changed

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


# --- the stream (`/ws/v1/stream`) ----------------------------------------------------------------------------
# Read once per process (and again whenever a test changes a setting: Django's `setting_changed` signal), not
# through `django.conf.settings` per message: the lookups were ~20% of the server's CPU per delivery.
class StreamSettings:
    """The stream's limits and timers (docs/STREAM.md), with their defaults.

    - `STREAM_AUTH_TIMEOUT_SECONDS` (5): a socket without an `Authorization` header must send `auth` by then.
    - `STREAM_HEARTBEAT_SECONDS` (20): the server pings a socket the client has sent nothing on for this long.
    - `STREAM_IDLE_TIMEOUT_SECONDS` (60): a socket the client has sent nothing on for this long is closed.
    - `STREAM_MAX_MESSAGE_BYTES` (16384), `STREAM_RATE_PER_SECOND` (10), `STREAM_RATE_BURST` (30): client
      messages.
    - `STREAM_BUFFER_MAX_MESSAGES` (1000), `STREAM_BUFFER_MAX_BYTES` (1 MiB): the live messages a socket may
      have waiting for its client before it is closed as a slow consumer.
    - `STREAM_REPLAY_MAX_EVENTS` (1000): the furthest behind a client may resume from.
    - `STREAM_TICK_SECONDS` (1.0): how often the hub runs the heartbeats, idle and token-expiry checks that
      are due.
    - `STREAM_GC_TUNE` (True): the stream hub tunes the garbage collector of its process (see
      `wallet.events.hub.GcPolicy`); `STREAM_GC_THRESHOLD` ((50000, 20, 100)): `gc.set_threshold` then;
      `STREAM_GC_FREEZE_SECONDS` (5): while sockets connect, how often what is not frozen yet is collected
      and the rest (the new sockets) frozen; `STREAM_GC_THAW_CLOSED` (0: never): after this many closed
      sockets, one full collection of everything, frozen included (a pause of seconds at 10k sockets).
    """

    __slots__ = (
        "auth_timeout",
        "buffer_max_bytes",
        "buffer_max_messages",
        "gc_freeze_seconds",
        "gc_thaw_closed",
        "gc_threshold",
        "gc_tune",
        "heartbeat",
        "idle_timeout",
        "max_message_bytes",
        "rate_burst",
        "rate_per_second",
        "replay_max_events",
        "tick_seconds",
    )

    def __init__(self) -> None:
        def get(name: str, default: object) -> object:
            return getattr(settings, name, default)

        self.auth_timeout = float(get("STREAM_AUTH_TIMEOUT_SECONDS", 5.0))
        self.heartbeat = float(get("STREAM_HEARTBEAT_SECONDS", 20))
        self.idle_timeout = float(get("STREAM_IDLE_TIMEOUT_SECONDS", 60))
        self.max_message_bytes = int(get("STREAM_MAX_MESSAGE_BYTES", 16_384))
        self.rate_per_second = float(get("STREAM_RATE_PER_SECOND", 10))
        self.rate_burst = float(get("STREAM_RATE_BURST", 30))
        self.buffer_max_messages = int(get("STREAM_BUFFER_MAX_MESSAGES", 1000))
        self.buffer_max_bytes = int(get("STREAM_BUFFER_MAX_BYTES", 1_048_576))
        self.replay_max_events = int(get("STREAM_REPLAY_MAX_EVENTS", 1000))
        self.tick_seconds = float(get("STREAM_TICK_SECONDS", 1.0))
        self.gc_tune = bool(get("STREAM_GC_TUNE", True))
        self.gc_threshold = tuple(int(x) for x in get("STREAM_GC_THRESHOLD", (50_000, 20, 100)))  # type: ignore[attr-defined]
        self.gc_freeze_seconds = float(get("STREAM_GC_FREEZE_SECONDS", 5))
        self.gc_thaw_closed = int(get("STREAM_GC_THAW_CLOSED", 0))


_stream_settings: list[StreamSettings] = []


def stream_settings() -> StreamSettings:
    """The stream's settings, read once and kept until a `STREAM_*` setting changes."""
    if not _stream_settings:
        _stream_settings.append(StreamSettings())
    return _stream_settings[0]


def _forget_stream_settings(*, setting: str, **kwargs: object) -> None:
    if setting.startswith("STREAM_"):
        _stream_settings.clear()


setting_changed.connect(_forget_stream_settings, dispatch_uid="wallet.events.conf.stream_settings")


# The stream process's server flags (uvicorn's command line; `manage.py serve` passes the same as keywords):
# - websockets-sansio: measured against wsproto and the legacy implementation (docs/BENCHMARKS.md);
# - no permessage-deflate: browsers always offer it and uvicorn accepts it by default, which holds a
#   compressor and a decompressor per socket (about 40-50 KB) and costs 75% more CPU per delivery, for small
#   JSON events;
# - no protocol-level keepalive pings: the stream's own heartbeat (`STREAM_HEARTBEAT_SECONDS`, answered by
#   the client, with `STREAM_IDLE_TIMEOUT_SECONDS`) already finds dead peers; uvicorn's would add a timer
#   per socket and a second ping wave.
STREAM_UVICORN_FLAGS = ["--ws", "websockets-sansio", "--ws-per-message-deflate", "false", "--ws-ping-interval", "0"]
STREAM_UVICORN_OPTIONS = {"ws": "websockets-sansio", "ws_per_message_deflate": False, "ws_ping_interval": None}
