"""The durable record of an Idempotency-Key: written in the same transaction as the request's effect."""

from __future__ import annotations

from django.conf import settings
from django.db import models
from django.utils import timezone

from tenants.scoping import TenantOwned
from wallet.idempotency import checks  # noqa: F401  (registers the system checks; see checks.py)


class IdempotencyRecord(TenantOwned):
    """One key of one (tenant, user): the request it was first used for and the response to replay.

    The row is inserted when the first request claims the key, with `response_status` NULL, and completed
    in the same transaction as the effect. Other transactions therefore only ever see completed rows; a
    committed row with a NULL status means a caller claimed a key and never completed it (a bug).
    """

    id = models.BigAutoField(primary_key=True)
    user = models.ForeignKey(settings.AUTH_USER_MODEL, on_delete=models.CASCADE, related_name="+")
    key = models.CharField(max_length=255)
    method = models.CharField(max_length=16)
    path = models.TextField()
    # Hex SHA-256 of the method, path, query and canonical body (see `fingerprint.request_fingerprint`).
    fingerprint = models.CharField(max_length=64)
    response_status = models.PositiveSmallIntegerField(null=True, blank=True)
    # Exactly the bytes that were sent, so a replay is byte-identical. May hold personal data.
    response_body = models.BinaryField(default=b"")
    response_content_type = models.CharField(max_length=255, blank=True, default="")
    response_location = models.TextField(blank=True, default="")
    created_at = models.DateTimeField(default=timezone.now)
    expires_at = models.DateTimeField(db_index=True)

    class Meta:
        constraints = [
            models.UniqueConstraint(fields=["tenant", "user", "key"], name="idempotency_record_unique_key"),
        ]
        verbose_name = "idempotency record"

    def __str__(self) -> str:
        return f"{self.key} ({self.method} {self.path})"

    @property
    def is_complete(self) -> bool:
        return self.response_status is not None
