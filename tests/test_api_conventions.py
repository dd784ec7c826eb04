"""API conventions: problem+json errors, body limits, request ids, JSON logs, schema and docs."""

from __future__ import annotations

import json
import logging

import pytest

from tests.conftest import AppClient


def test_malformed_json_is_400_problem(client_a: AppClient) -> None:
    response = client_a.post("/api/v1/auth/token", data="{bad", content_type="application/json")
    assert response.status_code == 400
    assert response["Content-Type"] == "application/problem+json"
    body = response.json()
    assert body["code"] == "malformed_json"
    assert body["type"] == "urn:wallet-bff:problem:malformed_json"
    assert body["status"] == 400
    assert body["instance"] == "/api/v1/auth/token"


def test_body_over_the_limit_is_413(client_a: AppClient, settings) -> None:
    limit = settings.API_MAX_BODY_BYTES
    payload = json.dumps({"email": "a@example.com", "password": "x" * (limit + 1)})
    response = client_a.post("/api/v1/auth/register", data=payload, content_type="application/json")
    assert response.status_code == 413
    assert response.json()["code"] == "payload_too_large"
    assert response.json()["limit"] == limit


def test_unsupported_media_type_is_415(client_a: AppClient) -> None:
    response = client_a.post("/api/v1/auth/token", data="email=a", content_type="application/x-www-form-urlencoded")
    assert response.status_code == 415
    assert response.json()["code"] == "unsupported_media_type"


def test_method_not_allowed_is_problem(client_a: AppClient, user_a) -> None:
    client_a.login_as(user_a)
    response = client_a.delete("/api/v1/me")
    assert response.status_code == 405
    assert response.json()["code"] == "method_not_allowed"


def test_request_id_is_echoed_or_generated(client_a: AppClient) -> None:
    echoed = client_a.get("/api/v1/me", HTTP_X_REQUEST_ID="abc-123")
    assert echoed["X-Request-ID"] == "abc-123"
    assert echoed.json()["request_id"] == "abc-123"
    generated = client_a.get("/api/v1/me", HTTP_X_REQUEST_ID="bad id with spaces\n")
    assert len(generated["X-Request-ID"]) == 32
    assert generated["X-Request-ID"] != "bad id with spaces\n"


def test_log_lines_are_json_with_request_id_tenant_and_user(client_a: AppClient, user_a, settings) -> None:
    settings.LOG_REQUESTS = True
    from wallet.core.logging import ContextFilter, JsonFormatter

    records: list[logging.LogRecord] = []

    class Capture(logging.Handler):
        def emit(self, record: logging.LogRecord) -> None:
            records.append(record)

    handler = Capture()
    handler.addFilter(ContextFilter())
    logger = logging.getLogger("wallet.request")
    logger.addHandler(handler)
    try:
        client_a.login_as(user_a)
        client_a.get("/api/v1/me", HTTP_X_REQUEST_ID="req-42")
    finally:
        logger.removeHandler(handler)
    line = json.loads(JsonFormatter().format(records[-1]))
    assert line["request_id"] == "req-42"
    assert line["tenant"] == "tenant-a"
    assert line["user"] == str(user_a.pk)
    assert line["status"] == 200
    assert line["path"] == "/api/v1/me"
    assert "timestamp" in line and line["levelname"] == "INFO"


def test_openapi_schema_and_docs_are_served(client) -> None:
    schema = client.get("/api/schema/", HTTP_ACCEPT="application/vnd.oai.openapi+json")
    assert schema.status_code == 200
    document = json.loads(schema.content)
    assert document["openapi"].startswith("3.")
    assert "/api/v1/auth/token" in document["paths"]
    assert "/api/v1/me" in document["paths"]
    docs = client.get("/api/docs/")
    assert docs.status_code == 200
    assert b"swagger-ui" in docs.content
    assert b"cdn.jsdelivr" not in docs.content  # assets are served locally


def test_pagination_caps_the_page_size() -> None:
    from wallet.core.pagination import Cursor

    assert Cursor.max_page_size == 200
    from rest_framework.test import APIRequestFactory

    request = APIRequestFactory().get("/x", {"limit": "100000"})
    from rest_framework.request import Request

    assert Cursor().get_page_size(Request(request)) == 200


@pytest.mark.parametrize("path", ["/healthz", "/readyz"])
def test_probes_need_no_app_key(client, db, path: str) -> None:
    assert client.get(path).status_code == 200
