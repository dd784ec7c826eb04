"""JSON-lines logging with the request id, tenant and user on every line."""

from __future__ import annotations

import logging
from typing import Any

from pythonjsonlogger.json import JsonFormatter as _JsonFormatter

from wallet.core.context import request_id_var, tenant_var, user_id_var


class ContextFilter(logging.Filter):
    """Copy the request context onto each record so that every log line carries it."""

    def filter(self, record: logging.LogRecord) -> bool:
        if not hasattr(record, "request_id"):
            record.request_id = request_id_var.get()
        if not hasattr(record, "tenant"):
            record.tenant = getattr(tenant_var.get(), "slug", None)
        if not hasattr(record, "user"):
            record.user = user_id_var.get()
        return True


class JsonFormatter(_JsonFormatter):
    """One JSON object per line: time, level, logger, message, request id, tenant, user and extras."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        kwargs.setdefault("timestamp", True)
        super().__init__(
            "%(levelname)s %(name)s %(message)s %(request_id)s %(tenant)s %(user)s", *args, **kwargs
        )
