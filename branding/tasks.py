"""Branding tasks: delivering the release hook (thin, idempotent, retried with backoff)."""

from __future__ import annotations

import logging

from celery import shared_task
from django.utils import timezone

from tenants.tasks import TenantTask

logger = logging.getLogger("branding.hook")


@shared_task(base=TenantTask, name="branding.deliver_release_hook", bind=True)
def deliver_release_hook(self: TenantTask, *, tenant_id: str, delivery_id: str) -> str:
    """POST the release to the tenant's build hook. Safe to run twice: a delivered one is skipped.
    Retries timeouts, network errors, 429 and 5xx with exponential backoff up to
    BRANDING_HOOK_MAX_RETRIES; a refused address or a 4xx fails at once."""
    from branding import conf
    from branding.hook import HookError, sign_and_post
    from branding.models import HookDelivery
    from wallet.core.context import current_tenant

    tenant = current_tenant()
    delivery = HookDelivery.objects.for_tenant(tenant).select_related("release").filter(pk=delivery_id).first()
    if delivery is None or delivery.status == HookDelivery.Status.DELIVERED:
        return "skipped"
    from branding.selectors import build_hook_get

    hook = build_hook_get(tenant=tenant)
    if hook is None or not hook.enabled:
        HookDelivery.all_tenants.filter(pk=delivery.pk).update(status=HookDelivery.Status.FAILED,
                                                               last_error="hook removed or disabled")
        return "failed"
    release = delivery.release
    payload = {
        "type": "branding.released",
        "timestamp": release.published_at.isoformat().replace("+00:00", "Z"),
        "data": {"tenant": tenant.slug, "release": release.number, "content_hash": release.content_hash,
                 "bundle_path": f"/api/v1/branding/releases/{release.number}/bundle.zip"},
    }
    attempts = delivery.attempts + 1
    try:
        status = sign_and_post(url=delivery.url, secret=hook.secret, message_id=f"msg_brel_{release.pk.hex}",
                               payload=payload)
    except HookError as error:
        retry = error.retryable and self.request.retries < conf.hook_max_retries()
        HookDelivery.all_tenants.filter(pk=delivery.pk).update(
            attempts=attempts, last_error=str(error)[:500],
            status=HookDelivery.Status.PENDING if retry else HookDelivery.Status.FAILED)
        logger.warning("branding hook delivery failed", extra={"delivery": str(delivery.pk), "error": str(error),
                                                               "retry": retry})
        if retry:
            raise self.retry(countdown=min(2 ** self.request.retries * 5, 600), max_retries=conf.hook_max_retries(),
                             exc=error) from error
        return "failed"
    HookDelivery.all_tenants.filter(pk=delivery.pk).update(
        attempts=attempts, status=HookDelivery.Status.DELIVERED, response_status=status,
        delivered_at=timezone.now(), last_error="")
    return "delivered"


@shared_task(name="branding.redeliver_pending_hooks")
def redeliver_pending_hooks(older_than_seconds: int = 3600) -> int:
    """Re-enqueue hook deliveries still pending long after their release (the broker lost the task, or
    the embedded mode could not retry). Scheduled every 15 minutes (`branding-redeliver-hooks` in
    CELERY_BEAT_SCHEDULE). Receivers deduplicate by `webhook-id`, which stays the same."""
    from datetime import timedelta

    from branding.models import HookDelivery

    cutoff = timezone.now() - timedelta(seconds=older_than_seconds)
    pending = HookDelivery.all_tenants.filter(status=HookDelivery.Status.PENDING, created_at__lt=cutoff)
    count = 0
    for delivery_id, tenant_id in pending.values_list("pk", "tenant_id")[:500]:
        deliver_release_hook.apply_async(kwargs={"tenant_id": str(tenant_id), "delivery_id": str(delivery_id)})
        count += 1
    return count
