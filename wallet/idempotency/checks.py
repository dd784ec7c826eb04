"""System checks: refuse settings that would break the idempotency guarantees at start-up.

Registered when `wallet.idempotency.models` is imported (the app's `apps.py` has no `ready()`), so
`manage.py check`, `runserver`, `migrate` and the test runner all run them.
"""

from __future__ import annotations

from typing import Any

from django.core import checks
from django.core.exceptions import ImproperlyConfigured

from wallet.idempotency import conf


@checks.register(checks.Tags.compatibility)
def check_idempotency_settings(app_configs: Any = None, **kwargs: Any) -> list[checks.CheckMessage]:
    """`IDEMPOTENCY_*` settings are numbers in range; the TTL is at least 24 hours."""
    errors: list[checks.CheckMessage] = []
    for number, (reader, hint) in enumerate(
        (
            (conf.ttl, f"Keys must be kept at least {conf.MIN_TTL_HOURS} hours (the API promises it)."),
            (conf.lock_ttl_seconds, "The fast lock must outlive a request."),
            (conf.redis_timeout_seconds, None),
            (conf.redis_backoff_seconds, None),
            (conf.purge_batch_size, None),
        ),
        start=1,
    ):
        try:
            reader()
        except ImproperlyConfigured as exc:
            errors.append(checks.Error(str(exc), hint=hint, id=f"idempotency.E00{number}"))
    return errors
