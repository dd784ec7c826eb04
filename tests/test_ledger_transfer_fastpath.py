"""The plain-Django path of `POST /api/v1/transfers` (wallet/ledger/api/views.py `transfers_view`): it takes
only bodies the DRF serializer would accept, reads them exactly as the serializer does, fingerprints them
as `@idempotent` does, and answers, stores and replays exactly as the DRF view; everything else goes to
the DRF view."""

from __future__ import annotations

import json
import threading
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from tenants.models import Tenant, User
from tests.conftest import AppClient, app_key_of
from tests.factories import UserFactory
from tests.ledger_helpers import balance, enable, fund
from wallet.core.errors import ApiError
from wallet.idempotency.fingerprint import canonical_body
from wallet.ledger.api import views
from wallet.ledger.models import Transfer

Serializer = views.TransferCreateApi.TransferCreateInputSerializer


def _drf_reading(body: bytes) -> dict[str, Any] | None:
    """What the DRF view makes of `body`: the validated values, or None when it refuses it."""
    try:
        data = json.loads(body.decode("utf-8"))
    except ValueError:
        return None
    serializer = Serializer(data=data)
    try:
        valid = serializer.is_valid()
    except ApiError:  # the amount field raises its own errors (distinct codes)
        return None
    return dict(serializer.validated_data) if valid else None


def _check_agrees(body: bytes) -> dict[str, Any] | None:
    plain = views._transfer_values_plain(body)
    drf = _drf_reading(body)
    if plain is not None:
        values, canonical = plain
        assert drf is not None, f"the fast path took a body DRF refuses: {body!r}"
        assert values == drf
        assert canonical == canonical_body(body)
        return values
    return None


GOOD = {"recipient": "bob@example.com", "asset": "USD", "amount": "125", "memo": "lunch"}


@pytest.mark.parametrize(("body", "taken"), [
    (GOOD, True),
    ({**GOOD, "recipient": "  bob@example.com \n", "memo": "  padded  "}, True),
    ({k: v for k, v in GOOD.items() if k != "memo"}, True),
    ({**GOOD, "memo": ""}, True),
    ({**GOOD, "memo": "café ☕ 𝄞"}, True),
    ({**GOOD, "amount": " 7 "}, True),
    ({**GOOD, "recipient": "@bobby"}, True),
    ({**GOOD, "memo": None}, False),
    ({**GOOD, "amount": 125}, False),
    ({**GOOD, "amount": 1.5}, False),
    ({**GOOD, "amount": "1.5"}, False),
    ({**GOOD, "amount": "0"}, False),
    ({**GOOD, "amount": "-5"}, False),
    ({**GOOD, "amount": "1e3"}, False),
    ({**GOOD, "recipient": "   "}, False),
    ({**GOOD, "recipient": "x" * 255}, False),
    ({**GOOD, "recipient": "x" * 254}, True),
    ({**GOOD, "memo": "m" * 201}, False),
    ({**GOOD, "memo": "m" * 200}, True),
    ({**GOOD, "memo": "nul\x00byte"}, False),
    ({**GOOD, "asset": 840}, False),
    ({**GOOD, "note": "unknown fields go to the DRF view"}, False),
    ([GOOD], False),
    ({k: v for k, v in GOOD.items() if k != "asset"}, False),
])
def test_the_fast_path_reads_a_body_as_the_serializer_does_or_leaves_it(body: Any, taken: bool) -> None:
    raw = json.dumps(body).encode()
    assert (_check_agrees(raw) is not None) is taken


@pytest.mark.parametrize("raw", [
    b'{"recipient": "bob@example.com", "asset": "USD", "amount": "1", "memo": "\\ud800"}',  # lone surrogate
    b'{"recipient": "bob@example.com", "asset": "USD", "amount": NaN}',
    b'{"recipient": "bob@example.com", "asset": "USD", "amount": "1", "memo": 1.0}',
    b'\xef\xbb\xbf{"recipient": "bob@example.com", "asset": "USD", "amount": "1"}',  # BOM
    b'{"recipient": "bob@example.com", "asset": "USD", "amount": "1"',  # truncated
    b'\xff\xfe{}',
    b"",
])
def test_odd_bodies_go_to_the_drf_view(raw: bytes) -> None:
    assert views._transfer_values_plain(raw) is None


def test_a_repeated_field_is_read_as_the_serializer_reads_it() -> None:
    raw = b'{"recipient": "bob@example.com", "asset": "USD", "amount": "1", "amount": "9"}'
    values = _check_agrees(raw)
    assert values is not None and values["amount"] == 9


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.dictionaries(st.sampled_from(["recipient", "asset", "amount", "memo", "other"]),
                       st.one_of(st.text(max_size=260), st.none(), st.integers(), st.booleans(),
                                 st.from_regex(r"\A\s*[0-9]{1,80}\s*\Z")), max_size=5))
def test_the_fast_path_never_reads_a_body_otherwise_than_the_serializer(body: dict[str, Any]) -> None:
    _check_agrees(json.dumps(body).encode())


# --- through the API --------------------------------------------------------------------------------------
@pytest.fixture
def alice(tenant_a: Tenant) -> User:
    enable(tenant_a, "USD")
    user = UserFactory(tenant=tenant_a, email="alice@example.com")
    bob = UserFactory(tenant=tenant_a, email="bob@example.com")
    User.objects.filter(pk=bob.pk).update(handle="bobby")
    fund(user, 1_000)
    return user


@pytest.fixture
def client(tenant_a: Tenant, alice: User) -> AppClient:
    client = AppClient(app_key_of(tenant_a))
    client.login_as(alice)
    return client


@pytest.fixture
def paths(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """Which path each request took: "fast" or "drf"."""
    taken: list[str] = []
    real_plain, real_drf = views._transfer_values_plain, views._transfers_drf

    def plain(body: bytes) -> Any:
        result = real_plain(body)
        if result is not None:
            taken.append("fast")
        return result

    def drf(request: Any, *args: Any, **kwargs: Any) -> Any:
        if request.method == "POST":
            taken.append("drf")
        return real_drf(request, *args, **kwargs)

    monkeypatch.setattr(views, "_transfer_values_plain", plain)
    monkeypatch.setattr(views, "_transfers_drf", drf)
    return taken


def _post(client: AppClient, body: dict[str, Any], key: str | None, **extra: Any) -> Any:
    headers = {"HTTP_IDEMPOTENCY_KEY": key} if key is not None else {}
    return client.post("/api/v1/transfers", data=json.dumps(body), content_type="application/json",
                       **headers, **extra)


def _without_request_id(response: Any) -> dict[str, Any]:
    body = json.loads(response.content)
    body.pop("request_id", None)
    return body


def test_a_transfer_by_the_fast_path_replays_through_the_drf_view_and_back(
        client: AppClient, alice: User, paths: list[str], monkeypatch: pytest.MonkeyPatch) -> None:
    tracked_plain = views._transfer_values_plain
    first = _post(client, GOOD, "k-1")
    assert first.status_code == 201 and paths == ["fast"]
    assert first["Allow"] == "GET, POST, HEAD, OPTIONS" and first["Location"].startswith("/api/v1/transfers/")

    monkeypatch.setattr(views, "_transfer_values_plain", lambda body: None)  # everything to DRF now
    again = _post(client, GOOD, "k-1")
    assert paths == ["fast", "drf"]
    assert again.status_code == 201 and again["Idempotent-Replayed"] == "true"
    assert again.content == first.content and again["Location"] == first["Location"]
    assert again["Allow"] == first["Allow"]
    changed = _post(client, {**GOOD, "amount": "126"}, "k-1")
    assert changed.status_code == 422 and json.loads(changed.content)["code"] == "idempotency_key_reused"

    second = _post(client, {**GOOD, "amount": "5"}, "k-2")  # by DRF first ...
    assert second.status_code == 201 and paths[-1] == "drf"
    monkeypatch.setattr(views, "_transfer_values_plain", tracked_plain)
    replay = _post(client, {**GOOD, "amount": "5"}, "k-2")  # ... replayed by the fast path
    assert paths[-1] == "fast"
    assert replay.status_code == 201 and replay["Idempotent-Replayed"] == "true"
    assert replay.content == second.content
    assert Transfer.all_tenants.count() == 2 and balance(alice)[0] == 1_000 - 125 - 5


@pytest.mark.parametrize(("body", "status", "code"), [
    ({**GOOD, "amount": "5000"}, 409, "insufficient_funds"),
    ({**GOOD, "recipient": "nobody@example.com"}, 404, "recipient_not_found"),
    ({**GOOD, "recipient": "alice@example.com"}, 400, "recipient_is_sender"),
    ({**GOOD, "asset": "XYZ"}, None, None),
])
def test_refusals_are_the_same_by_both_paths_and_are_stored(
        client: AppClient, paths: list[str], monkeypatch: pytest.MonkeyPatch, body: dict[str, Any],
        status: int | None, code: str | None) -> None:
    fast = _post(client, body, "fast-key")
    assert paths == ["fast"]
    monkeypatch.setattr(views, "_transfer_values_plain", lambda raw: None)
    drf = _post(client, body, "drf-key")
    assert fast.status_code == drf.status_code and (status is None or fast.status_code == status)
    assert _without_request_id(fast) == _without_request_id(drf)
    assert fast["Content-Type"] == drf["Content-Type"] == "application/problem+json"
    if code is not None:
        assert json.loads(fast.content)["code"] == code
    replay = _post(client, body, "fast-key")
    assert replay.status_code == fast.status_code and replay["Idempotent-Replayed"] == "true"
    assert Transfer.all_tenants.count() == 0


def test_an_unknown_recipient_is_reported_before_an_unknown_asset(client: AppClient, paths: list[str]) -> None:
    response = _post(client, {**GOOD, "recipient": "nobody@example.com", "asset": "XYZ"}, "k")
    assert paths == ["fast"]
    assert response.status_code == 404 and json.loads(response.content)["code"] == "recipient_not_found"


@pytest.mark.parametrize(("authorization", "key", "status", "code"), [
    (None, None, 400, "idempotency_key_missing"),
    (None, "", 400, "idempotency_key_invalid"),
    ("Bearer nope", "k", 401, None),
    ("Basic abc", "k", 401, None),
    ("", "k", 401, None),
])
def test_requests_the_fast_path_cannot_take_get_the_drf_views_answer(
        client: AppClient, tenant_a: Tenant, paths: list[str], authorization: str | None, key: str | None,
        status: int, code: str | None) -> None:
    if authorization is not None:
        client.credentials(HTTP_X_APP_KEY=app_key_of(tenant_a), HTTP_AUTHORIZATION=authorization)
    response = _post(client, GOOD, key)
    assert paths == ["drf"]
    assert response.status_code == status
    if code is not None:
        assert json.loads(response.content)["code"] == code


def test_a_handle_reaches_its_user_by_the_fast_path(client: AppClient, paths: list[str]) -> None:
    response = _post(client, {**GOOD, "recipient": "@BOBBY"}, "k")
    assert paths == ["fast"] and response.status_code == 201
    assert json.loads(response.content)["counterparty"]["handle"] == "bobby"


def test_another_tenants_user_is_not_a_recipient(client: AppClient, paths: list[str], tenant_b: Tenant) -> None:
    enable(tenant_b, "USD")
    UserFactory(tenant=tenant_b, email="carol@example.com")
    response = _post(client, {**GOOD, "recipient": "carol@example.com"}, "k")
    assert paths == ["fast"] and response.status_code == 404


def test_errors_after_queueing_are_rendered_by_the_fast_path_as_by_the_drf_view(
        client: AppClient, paths: list[str], monkeypatch: pytest.MonkeyPatch) -> None:
    assert _post(client, GOOD, "fast-key").status_code == 201
    assert _post(client, GOOD, "drf-key").status_code == 201
    fast = _post(client, {**GOOD, "amount": "7"}, "fast-key")  # the key of another request
    assert paths == ["fast", "fast", "fast"]
    monkeypatch.setattr(views, "_transfer_values_plain", lambda raw: None)
    drf = _post(client, {**GOOD, "amount": "7"}, "drf-key")
    assert fast.status_code == drf.status_code == 422
    assert json.loads(fast.content)["code"] == "idempotency_key_reused"
    assert _without_request_id(fast) == _without_request_id(drf)
    assert fast["Content-Type"] == drf["Content-Type"] == "application/problem+json"
    assert fast["Allow"] == drf["Allow"]


@pytest.mark.django_db(transaction=True)
def test_a_request_no_batch_takes_in_time_answers_503_with_retry_after_by_the_fast_path(
        client: AppClient, tenant_a: Tenant, alice: User, paths: list[str], settings: Any,
        monkeypatch: pytest.MonkeyPatch) -> None:
    from wallet.ledger import groupcommit

    settings.LEDGER_GROUP_COMMIT_WAIT_SECONDS = 0.2
    started, release = threading.Event(), threading.Event()
    real = groupcommit.execute_batch

    def hanging_once(tenant: Tenant, jobs: list[Any]) -> list[Any]:
        if not started.is_set():  # the committer hangs in its first batch (a dead connection, say)
            started.set()
            release.wait(10)
        return real(tenant, jobs)

    monkeypatch.setattr(groupcommit, "execute_batch", hanging_once)
    first: list[Any] = []
    other = AppClient(app_key_of(tenant_a))
    other.login_as(alice)
    thread = threading.Thread(target=lambda: first.append(_post(other, {**GOOD, "amount": "1"}, "first")))
    thread.start()
    try:
        assert started.wait(10)
        response = _post(client, GOOD, "stuck")
    finally:
        release.set()
        thread.join(10)
    assert paths == ["fast", "fast"]
    assert response.status_code == 503 and response["Retry-After"] == "1"
    assert json.loads(response.content)["code"] == "transfer_queue_timeout"
    assert response["Content-Type"] == "application/problem+json"
    assert first[0].status_code == 201  # the hung batch ends, and answers
    assert list(Transfer.all_tenants.values_list("memo", "amount")) == [("lunch", 1)]
    again = _post(client, GOOD, "stuck")  # nothing was stored: the retry runs
    assert again.status_code == 201 and not again.get("Idempotent-Replayed")


@pytest.mark.parametrize("change", ["validate", "validate_field", "source", "allow_null", "min_length", "amount"])
def test_a_serializer_rule_the_fast_path_does_not_know_stops_the_app(change: str) -> None:
    from django.core.exceptions import ImproperlyConfigured
    from rest_framework import serializers

    fields: dict[str, Any] = {
        "recipient": serializers.CharField(max_length=254), "asset": serializers.CharField(max_length=32),
        "amount": views.AmountField(), "memo": serializers.CharField(max_length=200, required=False,
                                                                     allow_blank=True, default=""),
    }
    if change == "source":
        fields["asset"] = serializers.CharField(max_length=32, source="code")
    elif change == "allow_null":
        fields["memo"] = serializers.CharField(max_length=200, required=False, allow_null=True, default="")
    elif change == "min_length":
        fields["recipient"] = serializers.CharField(max_length=254, min_length=3)
    elif change == "amount":
        fields["amount"] = views.AmountField(required=False)
    elif change == "validate":
        fields["validate"] = lambda self, attrs: attrs
    elif change == "validate_field":
        fields["validate_memo"] = lambda self, value: value
    assert views._plain_fields(Serializer) == views._TRANSFER_FIELDS  # the real one passes
    changed = type("Changed", (serializers.Serializer,), fields)
    with pytest.raises(ImproperlyConfigured):
        views._plain_fields(changed)
