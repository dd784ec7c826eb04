"""Liveness (`/healthz`) and readiness (`/readyz`) probes."""

from __future__ import annotations

import logging

from django.conf import settings
from django.db import connections
from django.http import HttpRequest, JsonResponse
from django.views.decorators.http import require_GET

logger = logging.getLogger("wallet.health")


@require_GET
def healthz(request: HttpRequest) -> JsonResponse:
    """The process answers: nothing else is checked."""
    return JsonResponse({"status": "ok"})


def _check_database() -> str | None:
    try:
        with connections["default"].cursor() as cursor:
            cursor.execute("SELECT 1")
            cursor.fetchone()
    except Exception as exc:
        logger.warning("readiness: database unreachable", extra={"error": str(exc)})
        return type(exc).__name__
    return None


def _check_redis() -> str | None:
    if not settings.REDIS_URL:
        return None
    import redis

    try:
        client = redis.Redis.from_url(settings.REDIS_URL, socket_timeout=1, socket_connect_timeout=1)
        try:
            client.ping()
        finally:
            client.close()
    except Exception as exc:
        logger.warning("readiness: redis unreachable", extra={"error": str(exc)})
        return type(exc).__name__
    return None


@require_GET
def readyz(request: HttpRequest) -> JsonResponse:
    """Ready when the database (and Redis, when configured) answer; 503 naming the failing part."""
    checks = {"database": _check_database(), "redis": _check_redis()}
    failing = {name: error for name, error in checks.items() if error}
    body = {
        "status": "unavailable" if failing else "ok",
        "checks": {name: ("fail" if name in failing else ("skipped" if name == "redis" and not
                   settings.REDIS_URL else "ok")) for name in checks},
    }
    if failing:
        body.update({"code": "not_ready", "failing": sorted(failing)})
        response = JsonResponse(body, status=503)
        return response
    return JsonResponse(body)
