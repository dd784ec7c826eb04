"""Reads of the outbox, for the stream's replay (resume from the last sequence number a client saw)."""

from __future__ import annotations

from tenants.models import Tenant
from wallet.events.models import OutboxEvent, StreamCursor

MAX_REPLAY_LIMIT = 1000


def events_after(*, tenant: Tenant, stream: str, after_seq: int, limit: int) -> list[OutboxEvent]:
    """The committed events of `tenant`'s `stream` with `seq > after_seq`, in seq order, at most `limit`
    (capped at 1,000), published or not.

    What it returns is gap-free from its first row on (a stream's events commit in seq order). The table
    may no longer hold the start of what a client missed (see `events_purge_published`): when
    `after_seq < stream_head(...)` and the first row's seq is not `after_seq + 1` (or there is no row), the
    client needs a full resync.
    """
    limit = max(0, min(int(limit), MAX_REPLAY_LIMIT))
    if limit == 0:
        return []
    return list(
        OutboxEvent.objects.for_tenant(tenant)
        .filter(stream=stream, seq__gt=after_seq)
        .order_by("seq")[:limit]
    )


def stream_head(*, tenant: Tenant, stream: str) -> int:
    """The sequence number of the last committed event of `tenant`'s `stream` (0 for a stream without
    events). Read from the stream cursor, so purged events still count."""
    head = (
        StreamCursor.objects.for_tenant(tenant).filter(stream=stream).values_list("last_seq", flat=True).first()
    )
    return head or 0
