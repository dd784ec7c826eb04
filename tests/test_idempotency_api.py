"""The Idempotency-Key contract over HTTP, on a test-only view whose effect is one countable audit entry.

Runs on SQLite (in-process fast lock) and on PostgreSQL + Redis (advisory lock, Redis fast lock).
"""

from __future__ import annotations

import json
import socket
import time
from collections.abc import Iterator
from typing import Any

import pytest
from django.conf import settings
from django.core.exceptions import ImproperlyConfigured
from django.db import connection
from django.http import HttpResponse
from django.test.utils import CaptureQueriesContext

from tenants.models import Tenant, User
from tests import idempotency_views
from tests.conftest import AppClient
from tests.factories import UserFactory
from tests.idempotency_views import effect_count
from wallet.idempotency.locks import fast_lock_backend, lock_name, reset_fast_locks
from wallet.idempotency.models import IdempotencyRecord

pytestmark = pytest.mark.urls("tests.idempotency_views")

WIDGETS = "/api/v1/test/widgets"
GADGETS = "/api/v1/test/gadgets"
BODY = {"name": "blue widget"}
KEY = "8e03978e-40d5-43e8-bc93-6894a57f9324"


@pytest.fixture(autouse=True)
def _clean_idempotency_state() -> Iterator[None]:
    reset_fast_locks()
    idempotency_views.EFFECT_HOOK = None
    yield
    idempotency_views.EFFECT_HOOK = None
    reset_fast_locks()


@pytest.fixture
def app_a(client_a: AppClient, user_a: User) -> AppClient:
    client_a.login_as(user_a)
    return client_a


def post(client: AppClient, *, key: str | None = KEY, body: Any = BODY, path: str = WIDGETS) -> HttpResponse:
    data = body if isinstance(body, str | bytes) else json.dumps(body)
    headers = {} if key is None else {"HTTP_IDEMPOTENCY_KEY": key}
    return client.post(path, data=data, content_type="application/json", **headers)


def records() -> int:
    return IdempotencyRecord.all_tenants.count()


# --- the header ------------------------------------------------------------------------------------------------


def test_missing_key_is_400_and_nothing_happens(app_a: AppClient) -> None:
    response = post(app_a, key=None)

    assert response.status_code == 400
    assert response["Content-Type"] == "application/problem+json"
    assert response.json()["code"] == "idempotency_key_missing"
    assert effect_count() == 0
    assert records() == 0


@pytest.mark.parametrize(
    "value",
    [
        "k" * 256,  # longer than 255 characters
        "",  # empty
        '""',  # an empty structured-field string
        '"k' + "k" * 255 + '"',  # 256 characters once unquoted
        '"unterminated',
        '"first", "second"',  # two keys
        "caf\u00e9",  # not ASCII
        "tab\there",  # a control character
    ],
)
def test_invalid_key_is_400_and_nothing_happens(app_a: AppClient, value: str) -> None:
    response = post(app_a, key=value)

    assert response.status_code == 400
    assert response.json()["code"] == "idempotency_key_invalid"
    assert effect_count() == 0
    assert records() == 0


def test_key_of_255_characters_is_accepted(app_a: AppClient) -> None:
    response = post(app_a, key="k" * 255)

    assert response.status_code == 201
    assert effect_count() == 1


def test_quoted_and_bare_forms_are_the_same_key(app_a: AppClient) -> None:
    first = post(app_a, key=f'"{KEY}"')  # the draft's sf-string form
    again = post(app_a, key=KEY)  # the bare form most clients send

    assert first.status_code == again.status_code == 201
    assert again["Idempotent-Replayed"] == "true"
    assert again.content == first.content
    assert effect_count() == 1


# --- first call and replays -------------------------------------------------------------------------------------


def test_first_call_runs_the_effect_and_a_retry_replays_its_response(app_a: AppClient) -> None:
    first = post(app_a)

    assert first.status_code == 201
    assert "Idempotent-Replayed" not in first
    assert first.json() == {"id": first.json()["id"], "name": "blue widget"}
    assert effect_count() == 1

    retry = post(app_a)

    assert retry.status_code == 201
    assert retry["Idempotent-Replayed"] == "true"
    assert retry.content == first.content
    assert retry["Content-Type"] == first["Content-Type"] == "application/json"
    assert retry["Location"] == first["Location"] == f"/api/v1/test/widgets/{first.json()['id']}"
    assert effect_count() == 1
    assert records() == 1


def test_whitespace_and_key_order_do_not_make_another_request(app_a: AppClient) -> None:
    first = post(app_a, body='{"name": "blue widget", "outcome": "created"}')
    retry = post(app_a, body='{\n  "outcome" : "created",\n  "name":"blue widget"\n}\n')

    assert retry.status_code == 201
    assert retry["Idempotent-Replayed"] == "true"
    assert retry.content == first.content
    assert effect_count() == 1


def test_changed_body_is_422_and_the_first_response_still_replays(app_a: AppClient) -> None:
    first = post(app_a)

    reused = post(app_a, body={"name": "red widget"})

    assert reused.status_code == 422
    assert reused.json()["code"] == "idempotency_key_reused"
    assert "Idempotent-Replayed" not in reused
    assert effect_count() == 1
    assert post(app_a).content == first.content


def test_changed_path_is_422(app_a: AppClient) -> None:
    post(app_a, path=WIDGETS)

    reused = post(app_a, path=GADGETS)

    assert reused.status_code == 422
    assert reused.json()["code"] == "idempotency_key_reused"
    assert effect_count() == 1


def test_changed_query_string_is_422(app_a: AppClient) -> None:
    post(app_a, path=f"{WIDGETS}?a=1&b=2")

    same = post(app_a, path=f"{WIDGETS}?b=2&a=1")  # same parameters in another order
    reused = post(app_a, path=f"{WIDGETS}?a=1&b=3")

    assert same.status_code == 201
    assert same["Idempotent-Replayed"] == "true"
    assert reused.status_code == 422
    assert effect_count() == 1


def test_same_key_from_another_user_or_tenant_is_independent(
    app_a: AppClient, client_b: AppClient, user_b: User, tenant_a: Tenant, client_a: AppClient
) -> None:
    amy = UserFactory(tenant=tenant_a, email="amy@example.com")
    app_amy = AppClient(client_a.app_key)
    app_amy.login_as(amy)
    client_b.login_as(user_b)

    alice = post(app_a)
    same_tenant = post(app_amy)
    other_tenant = post(client_b)

    for response in (alice, same_tenant, other_tenant):
        assert response.status_code == 201
        assert "Idempotent-Replayed" not in response
    assert len({alice.json()["id"], same_tenant.json()["id"], other_tenant.json()["id"]}) == 3
    assert effect_count() == 3
    # Each one replays only its own answer, and a different body is nobody else's business either.
    assert post(app_amy).content == same_tenant.content
    assert post(client_b).content == other_tenant.content
    assert post(app_a).content == alice.content
    assert post(app_amy, body={"name": "amy's widget"}).status_code == 422
    assert effect_count() == 3


# --- errors -------------------------------------------------------------------------------------------------------


def test_business_error_rolls_back_the_effect_and_is_replayed(app_a: AppClient) -> None:
    body = {"name": "blue widget", "outcome": "insufficient_funds"}

    first = post(app_a, body=body)

    assert first.status_code == 409
    assert first["Content-Type"] == "application/problem+json"
    assert first.json()["code"] == "insufficient_funds"
    assert first.json()["requested"] == "10"
    assert effect_count() == 0  # the effect's savepoint was rolled back
    assert records() == 1  # the answer was kept

    retry = post(app_a, body=body)

    assert retry.status_code == 409
    assert retry["Idempotent-Replayed"] == "true"
    assert retry.content == first.content
    assert retry["Content-Type"] == "application/problem+json"
    assert effect_count() == 0


def test_validation_error_is_the_key_s_answer_too(app_a: AppClient) -> None:
    first = post(app_a, body={"name": ""})
    retry = post(app_a, body={"name": ""})

    assert first.status_code == retry.status_code == 400
    assert first.json()["code"] == "validation_failed"
    assert retry["Idempotent-Replayed"] == "true"
    assert retry.content == first.content
    assert effect_count() == 0


def test_unexpected_exception_leaves_no_record_and_a_retry_runs_the_effect(app_a: AppClient) -> None:
    def crash() -> None:
        raise RuntimeError("the process died half-way")

    idempotency_views.EFFECT_HOOK = crash

    with pytest.raises(RuntimeError):
        post(app_a)

    assert effect_count() == 0
    assert records() == 0

    idempotency_views.EFFECT_HOOK = None
    retry = post(app_a)

    assert retry.status_code == 201
    assert "Idempotent-Replayed" not in retry
    assert effect_count() == 1


@pytest.mark.parametrize("lost", [True, False])
def test_a_lost_database_connection_is_503_outcome_unknown_and_the_retry_runs_once(
        app_a: AppClient, monkeypatch: pytest.MonkeyPatch, lost: bool) -> None:
    """A connection that breaks while the request runs may have lost a COMMIT's answer: 503 `outcome_unknown`,
    retry with the same key. A database error on a live connection (a deadlock) stays what it was."""
    from django.db import OperationalError

    from wallet.idempotency import api

    def broken() -> None:
        raise OperationalError("server closed the connection unexpectedly" if lost else "deadlock detected")

    idempotency_views.EFFECT_HOOK = broken
    real_connection_lost = api.connection_lost
    monkeypatch.setattr(api, "connection_lost", lambda used: lost)
    if lost:
        response = post(app_a)
        assert (response.status_code, response["Retry-After"]) == (503, "1")
        assert response.json()["code"] == "outcome_unknown"
    else:
        with pytest.raises(OperationalError):
            post(app_a)
    assert effect_count() == 0 and records() == 0
    idempotency_views.EFFECT_HOOK = None
    monkeypatch.setattr(api, "connection_lost", real_connection_lost)
    retry = post(app_a)
    assert retry.status_code == 201 and "Idempotent-Replayed" not in retry
    assert effect_count() == 1


@pytest.mark.skipif("postgresql" not in settings.DATABASES["default"]["ENGINE"], reason="PostgreSQL only")
@pytest.mark.django_db(transaction=True)
def test_a_database_connection_killed_mid_request_is_503_outcome_unknown(app_a: AppClient) -> None:
    """No stub: the request's PostgreSQL backend is terminated while the view runs. Django closes the broken
    connection and opens another as its atomic block ends; the answer is still 503 `outcome_unknown`, and the
    retry with the same key runs the effect once (nothing had committed)."""
    from tests.ledger_helpers import terminate_own_backend

    idempotency_views.EFFECT_HOOK = terminate_own_backend
    response = post(app_a)
    assert (response.status_code, response["Retry-After"]) == (503, "1")
    assert response.json()["code"] == "outcome_unknown"
    idempotency_views.EFFECT_HOOK = None
    assert effect_count() == 0 and records() == 0
    retry = post(app_a)
    assert retry.status_code == 201 and "Idempotent-Replayed" not in retry
    assert effect_count() == 1


@pytest.mark.parametrize(("outcome", "status", "code"), [("unavailable", 503, "service_unavailable"),
                                                         ("throttled", 429, "throttled")])
def test_retryable_errors_are_not_stored(app_a: AppClient, outcome: str, status: int, code: str) -> None:
    body = {"name": "blue widget", "outcome": outcome}

    first = post(app_a, body=body)
    retry = post(app_a, body=body)

    for response in (first, retry):
        assert response.status_code == status
        assert response.json()["code"] == code
        assert "Idempotent-Replayed" not in response  # the retry ran again
    assert effect_count() == 0
    assert records() == 0


# --- in flight --------------------------------------------------------------------------------------------------


def test_key_held_by_a_running_request_is_409_then_replays_once_completed(app_a: AppClient, tenant_a: Tenant,
                                                                            user_a: User) -> None:
    backend = fast_lock_backend()
    name = lock_name(tenant_id=tenant_a.pk, user_id=user_a.pk, key=KEY)
    assert backend.acquire(name, "another-request", 30) is True

    in_flight = post(app_a)

    assert in_flight.status_code == 409
    assert in_flight.json()["code"] == "idempotency_key_in_flight"
    assert in_flight["Retry-After"] == "1"
    assert effect_count() == 0

    backend.release(name, "another-request")
    first = post(app_a)
    assert backend.acquire(name, "a-late-holder", 30) is True  # e.g. a retry racing the release

    replay = post(app_a)
    reused = post(app_a, body={"name": "red widget"})

    assert first.status_code == replay.status_code == 201
    assert replay["Idempotent-Replayed"] == "true"
    assert replay.content == first.content
    assert reused.status_code == 422
    assert effect_count() == 1
    backend.release(name, "a-late-holder")


def _closed_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def test_unreachable_redis_falls_back_to_the_database(app_a: AppClient, settings: Any) -> None:
    settings.REDIS_URL = f"redis://127.0.0.1:{_closed_port()}/0"  # connection refused

    first = post(app_a)
    retry = post(app_a)

    assert first.status_code == retry.status_code == 201
    assert retry["Idempotent-Replayed"] == "true"
    assert retry.content == first.content
    assert effect_count() == 1
    assert fast_lock_backend().available is False  # backing off: the next requests skip Redis


def test_redis_that_never_answers_costs_one_short_timeout(app_a: AppClient, settings: Any) -> None:
    with socket.socket() as silent:  # accepts connections (kernel backlog) and never answers
        silent.bind(("127.0.0.1", 0))
        silent.listen(8)
        settings.REDIS_URL = f"redis://127.0.0.1:{silent.getsockname()[1]}/0"
        settings.IDEMPOTENCY_REDIS_TIMEOUT_SECONDS = 0.2

        started = time.monotonic()
        first = post(app_a)
        retry = post(app_a)
        elapsed = time.monotonic() - started

    assert first.status_code == retry.status_code == 201
    assert retry["Idempotent-Replayed"] == "true"
    assert effect_count() == 1
    assert 0.2 <= elapsed < 1.5  # one timeout, then Redis is skipped for the back-off period


def test_without_the_fast_lock_the_database_decides_alone(app_a: AppClient, settings: Any) -> None:
    settings.IDEMPOTENCY_FAST_LOCK = False

    first = post(app_a)
    retry = post(app_a)
    reused = post(app_a, body={"name": "red widget"})

    assert type(fast_lock_backend()).__name__ == "DisabledFastLock"
    assert first.status_code == retry.status_code == 201
    assert retry["Idempotent-Replayed"] == "true"
    assert retry.content == first.content
    assert reused.status_code == 422
    assert effect_count() == 1


# --- contract details ---------------------------------------------------------------------------------------------


def test_a_body_already_parsed_is_fingerprinted_from_its_data(app_a: AppClient) -> None:
    path = "/api/v1/test/preread-widgets"  # a permission class reads request.data before the view

    first = post(app_a, path=path)
    retry = post(app_a, path=path, body='{ "name" : "blue widget" }')
    reused = post(app_a, path=path, body={"name": "red widget"})

    assert first.status_code == retry.status_code == 201
    assert retry["Idempotent-Replayed"] == "true"
    assert retry.content == first.content
    assert reused.status_code == 422
    assert effect_count() == 1


def test_unauthenticated_use_is_a_programming_error(client_a: AppClient) -> None:
    with pytest.raises(ImproperlyConfigured, match="needs an authenticated user"):
        post(client_a, path="/api/v1/test/anonymous-widgets")

    assert effect_count() == 0


def test_schema_documents_the_required_header_once(client: Any, db: Any) -> None:
    document = json.loads(client.get("/api/schema/", HTTP_ACCEPT="application/vnd.oai.openapi+json").content)

    for path in (WIDGETS, GADGETS):
        parameters = [p for p in document["paths"][path]["post"].get("parameters", [])
                      if p["name"] == "Idempotency-Key"]
        assert len(parameters) == 1
        assert parameters[0]["in"] == "header"
        assert parameters[0]["required"] is True
        assert parameters[0]["schema"] == {"type": "string", "minLength": 1, "maxLength": 255}
    plain = document["paths"]["/api/v1/test/widgets-plain"]["post"].get("parameters", [])
    assert [p for p in plain if p["name"] == "Idempotency-Key"] == []


@pytest.mark.django_db(transaction=True)
def test_query_cost_of_the_happy_path_is_pinned(client_a: AppClient, user_a: User) -> None:
    client_a.login_as(user_a)
    post(client_a, key="warm-up")  # per-process caches (app key, token, session) warm, as in production
    client_a.post("/api/v1/test/widgets-plain", data=json.dumps(BODY), content_type="application/json")

    with CaptureQueriesContext(connection) as plain:
        client_a.post("/api/v1/test/widgets-plain", data=json.dumps(BODY), content_type="application/json")
    with CaptureQueriesContext(connection) as decorated:
        assert post(client_a).status_code == 201

    def verbs(context: CaptureQueriesContext) -> list[str]:
        return [query["sql"].split()[0].upper() for query in context.captured_queries]

    assert verbs(plain) == ["INSERT"]  # the effect
    if connection.vendor == "postgresql":
        # Added: the transaction, claim (advisory lock + pending record in one statement), the effect's
        # savepoint, complete.
        assert verbs(decorated) == ["BEGIN", "WITH", "SAVEPOINT", "INSERT", "RELEASE", "UPDATE", "COMMIT"]
    else:
        # SQLite: the IMMEDIATE transaction serialises writers; look up, insert, savepoint, complete.
        assert verbs(decorated) == ["BEGIN", "SELECT", "INSERT", "SAVEPOINT", "INSERT", "RELEASE", "UPDATE",
                                    "COMMIT"]
