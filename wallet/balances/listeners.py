"""What the balances app does when the outbox relay has published committed events
(`wallet.events.relay.register_publish_listener`, registered in `BalancesConfig.ready`).

A ledger change (`account.balance_changed`) or a deposit (`deposit.*`) on a user's stream schedules
`balances.refresh_user` for that user, if they have a snapshot (a `SnapshotPosition` row: one query per
published batch), debounced: at most one task per user per `BALANCES_REFRESH_DEBOUNCE_SECONDS / 2`, run
`BALANCES_REFRESH_DEBOUNCE_SECONDS` after it was scheduled, so it reads every change published before it
was skipped (the relay publishes only committed events; the margin covers clock skew between the relay
and the worker). With eager Celery (the embedded default, tasks in process) the refresh runs at once in the
relay's thread, never skipped: a batch names each user once.
"""

from __future__ import annotations

import logging
import time

from celery import current_app

from wallet.balances import conf
from wallet.events.relay import PublishedEvent
from wallet.events.streams import USER_PREFIX

logger = logging.getLogger("wallet.balances")

BALANCE_EVENT_TYPES = frozenset({"account.balance_changed"})
BALANCE_EVENT_PREFIXES = ("deposit.",)

# (tenant id, stream) -> monotonic time until which a scheduled refresh covers new events.
_scheduled: dict[tuple[object, str], float] = {}
_SCHEDULED_MAX = 100_000


def moves_balances(event_type: str) -> bool:
    return event_type in BALANCE_EVENT_TYPES or event_type.startswith(BALANCE_EVENT_PREFIXES)


def on_events_published(events: list[PublishedEvent]) -> None:
    """Schedule the refresh of each user whose balances these events changed (publish listener)."""
    from wallet.balances.models import SnapshotPosition
    from wallet.balances.tasks import refresh_user

    wanted = {(event.tenant_id, event.stream) for event in events
              if event.stream.startswith(USER_PREFIX) and moves_balances(event.type)}
    eager = bool(current_app.conf.task_always_eager)
    now = time.monotonic()
    if not eager:
        wanted = {key for key in wanted if _scheduled.get(key, 0.0) <= now}
    if not wanted:
        return
    rows = (SnapshotPosition.all_tenants.filter(stream__in={stream for _, stream in wanted})
            .values_list("tenant_id", "user_id", "stream"))
    debounce = conf.refresh_debounce_seconds()
    for tenant_id, user_id, stream in rows:
        if (tenant_id, stream) not in wanted:
            continue
        kwargs = {"tenant_id": str(tenant_id), "user_id": str(user_id)}
        try:
            if eager:
                refresh_user.apply(kwargs=kwargs)
                continue
            refresh_user.apply_async(kwargs=kwargs, countdown=debounce)
        except Exception:  # one user's refresh must not stop the others; the scheduled refresh catches up
            logger.exception("balances refresh could not run", extra={"user": str(user_id)})
            continue
        if len(_scheduled) >= _SCHEDULED_MAX:
            _scheduled.clear()
        _scheduled[(tenant_id, stream)] = now + debounce / 2
