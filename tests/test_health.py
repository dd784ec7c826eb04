"""Readiness: the database and, when configured, Redis."""

from __future__ import annotations

import socket


def _closed_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def test_readyz_reports_ok(client, db) -> None:
    response = client.get("/readyz")
    assert response.status_code == 200
    assert response.json()["checks"]["database"] == "ok"


def test_readyz_is_503_naming_redis_when_it_is_down(client, db, settings) -> None:
    settings.REDIS_URL = f"redis://127.0.0.1:{_closed_port()}/0"
    response = client.get("/readyz")
    assert response.status_code == 503
    assert response.json()["failing"] == ["redis"]
    assert response.json()["checks"] == {"database": "ok", "redis": "fail"}


def test_readyz_is_503_naming_the_database_when_it_is_down(client, db, monkeypatch) -> None:
    from wallet.core import health

    def broken() -> str:
        return "OperationalError"

    monkeypatch.setattr(health, "_check_database", broken)
    response = client.get("/readyz")
    assert response.status_code == 503
    assert response.json()["failing"] == ["database"]


def test_healthz_answers_without_the_database(client) -> None:
    assert client.get("/healthz").json() == {"status": "ok"}
