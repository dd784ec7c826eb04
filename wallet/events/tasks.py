"""Celery tasks of the outbox."""

from __future__ import annotations

from celery import shared_task

from wallet.events.services import events_purge_published


@shared_task(name="events.purge_published", ignore_result=True, acks_late=True)
def purge_published() -> int:
    """Delete old published events (across tenants), keeping what replay needs: see
    `wallet.events.services.events_purge_published` for exactly what is kept. Safe to run twice."""
    return events_purge_published()
