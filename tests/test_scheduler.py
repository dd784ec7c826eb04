"""The in-process scheduler of the embedded default runs the beat schedule's tasks."""

from __future__ import annotations

import time
from datetime import timedelta

import pytest
from django.db import connections
from django.utils import timezone

from tenants.models import Tenant, User
from tests.conftest import celery_eager
from tests.ledger_helpers import account, enable, fund
from wallet.celery import app as celery_app
from wallet.core.scheduler import InProcessScheduler
from wallet.ledger import services
from wallet.ledger.models import Hold


@pytest.mark.django_db(transaction=True)
def test_expired_holds_are_voided_by_the_in_process_scheduler(tenant_a: Tenant, user_a: User) -> None:
    # The in-process scheduler belongs to the embedded default, where tasks run eagerly.
    with celery_eager(True):
        _expire_through_the_scheduler(tenant_a, user_a)


def _expire_through_the_scheduler(tenant_a: Tenant, user_a: User) -> None:
    enable(tenant_a, "USD")
    fund(user_a, 100)
    hold = services.hold_place(tenant=tenant_a, account=account(user_a), amount=40,
                               expires_at=timezone.now() - timedelta(seconds=1))
    scheduler = InProcessScheduler({"expire": {"task": "ledger.expire_holds_all", "schedule": 0.01}})
    scheduler.start()
    try:
        deadline = time.monotonic() + 10
        while Hold.all_tenants.get(pk=hold.pk).status == "active" and time.monotonic() < deadline:
            time.sleep(0.2)
    finally:
        scheduler.stop()
        scheduler.join(timeout=5)
        connections.close_all()
    assert Hold.all_tenants.get(pk=hold.pk).status == "expired"


def test_every_scheduled_task_exists() -> None:
    from django.conf import settings

    celery_app.loader.import_default_modules()
    missing = [entry["task"] for entry in settings.CELERY_BEAT_SCHEDULE.values()
               if entry["task"] not in celery_app.tasks]
    assert missing == []
    assert "branding.redeliver_pending_hooks" in {e["task"] for e in settings.CELERY_BEAT_SCHEDULE.values()}
