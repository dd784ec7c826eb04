"""The transactional outbox: one row per domain event, written in the transaction of the change it reports.

Nothing writes these tables but `wallet.events.services` (emit, purge) and `wallet.events.relay` (marking
rows published).
"""

from __future__ import annotations

from django.core.serializers.json import DjangoJSONEncoder
from django.db import models
from django.utils import timezone

from tenants.scoping import TenantOwned
from wallet.core.ids import uuid7


class OutboxEvent(TenantOwned):
    """A domain event of one stream (a user's or a whole tenant's), numbered `seq` = 1, 2, 3... in it.

    `id` (UUIDv7) is the id consumers deduplicate by; `(tenant, stream, seq)` is unique and contiguous
    (a rolled-back transaction leaves no gap). `published_at` is set once the relay has handed the event to
    the channel layer (at least once: a crash between the two re-publishes it).
    """

    # Indexed by the (tenant, stream, seq) constraint, which leads with it; no constraint to the tenant row
    # (every writer would key-share lock that one hot row).
    tenant = models.ForeignKey("tenants.Tenant", on_delete=models.PROTECT, related_name="+", db_index=False,
                               db_constraint=False)
    id = models.UUIDField(primary_key=True, default=uuid7, editable=False)
    stream = models.CharField(max_length=100)
    seq = models.BigIntegerField()
    type = models.CharField(max_length=100)
    # Non-JSON values (UUID, Decimal, datetime) are stored as DjangoJSONEncoder renders them: strings.
    data = models.JSONField(default=dict, encoder=DjangoJSONEncoder)
    created_at = models.DateTimeField(default=timezone.now)
    published_at = models.DateTimeField(null=True, blank=True)

    class Meta:
        constraints = [
            # Also the index of replay (`events_after`) and of the purge's per-stream rule.
            models.UniqueConstraint(fields=["tenant", "stream", "seq"], name="outbox_event_stream_seq_unique"),
        ]
        indexes = [
            # The relay's scan: only unpublished rows, in (tenant, stream, seq) order. Partial where the
            # database supports it (PostgreSQL, SQLite), so it stays as small as the relay's backlog.
            models.Index(
                fields=["tenant", "stream", "seq"],
                condition=models.Q(published_at__isnull=True),
                name="outbox_event_unpublished",
            ),
        ]

    def __str__(self) -> str:
        return f"{self.stream}#{self.seq} {self.type}"


class StreamCursor(TenantOwned):
    """The last sequence number allocated in a (tenant, stream): the stream's head.

    `events_emit` bumps it with one upsert per call; its row lock, held until commit, is what orders the
    commits of one stream (seq N+1 can only commit after seq N).
    """

    stream = models.CharField(max_length=100)
    last_seq = models.BigIntegerField(default=0)

    class Meta:
        constraints = [
            models.UniqueConstraint(fields=["tenant", "stream"], name="stream_cursor_unique"),
        ]

    def __str__(self) -> str:
        return f"{self.stream}@{self.last_seq}"
