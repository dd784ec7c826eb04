"""Celery tasks of the Idempotency-Key layer."""

from __future__ import annotations

from celery import shared_task

from wallet.idempotency.services import idempotency_purge_expired


@shared_task(name="idempotency.purge_expired", ignore_result=True)
def purge_expired() -> int:
    """Delete expired idempotency records (all tenants). Safe to run twice or concurrently."""
    return idempotency_purge_expired()
