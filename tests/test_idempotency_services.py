"""The Idempotency-Key layer below HTTP: key syntax, fingerprints, claim/complete, purge, settings, admin."""

from __future__ import annotations

from collections.abc import Iterator
from datetime import timedelta
from typing import Any

import pytest
from django.core.exceptions import ImproperlyConfigured
from django.db import transaction
from django.db.transaction import TransactionManagementError
from django.test import Client
from django.utils import timezone

from tenants.models import Membership, Tenant, User
from tests.conftest import make_staff
from wallet.idempotency import conf
from wallet.idempotency.api import (
    Claim,
    IdempotencyKeyInFlight,
    IdempotencyKeyInvalid,
    IdempotencyKeyMissing,
    IdempotencyKeyReused,
    idempotency_claim,
    idempotency_complete,
    parse_idempotency_key,
    request_fingerprint,
)
from wallet.idempotency.checks import check_idempotency_settings
from wallet.idempotency.fingerprint import canonical_body
from wallet.idempotency.locks import LocalFastLock
from wallet.idempotency.models import IdempotencyRecord
from wallet.idempotency.tasks import purge_expired

RECORDS = "/admin/idempotency/idempotencyrecord/"
FINGERPRINT = request_fingerprint(method="POST", path="/api/v1/transfers", body=b'{"amount": "10"}')


def claim(tenant: Tenant, user: User, key: str = "key-1", fingerprint: str = FINGERPRINT) -> Claim:
    return idempotency_claim(tenant=tenant, user=user, key=key, fingerprint=fingerprint, method="POST",
                             path="/api/v1/transfers")


def record_response(tenant: Tenant, user: User, key: str, body: bytes = b'{"id": "t1"}') -> IdempotencyRecord:
    with transaction.atomic():
        claimed = claim(tenant, user, key)
        idempotency_complete(claimed, status=201, body=body, content_type="application/json",
                             location="/api/v1/transfers/t1")
    return IdempotencyRecord.all_tenants.get(pk=claimed.record_id)


# --- key syntax ----------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("header", "key"),
    [
        ("abc", "abc"),
        ('"abc"', "abc"),
        ('  "abc"  ', "abc"),
        (r'"say \"hi\" \\ bye"', 'say "hi" \\ bye'),
        ("with inner space", "with inner space"),
        ("k" * 255, "k" * 255),
    ],
)
def test_keys_are_sf_strings_or_bare_values(header: str, key: str) -> None:
    assert parse_idempotency_key(header) == key


def test_missing_and_invalid_keys_raise_their_codes() -> None:
    with pytest.raises(IdempotencyKeyMissing):
        parse_idempotency_key(None)
    for header in ("", '""', "k" * 256, '"a\\x"', 'a"b', "\u00e9", '"a" ; b'):
        with pytest.raises(IdempotencyKeyInvalid):
            parse_idempotency_key(header)


# --- fingerprints -----------------------------------------------------------------------------------------------


def test_fingerprint_ignores_json_layout_but_not_content() -> None:
    def fingerprint(body: bytes, **parts: str) -> str:
        return request_fingerprint(**{"method": "POST", "path": "/p", "body": body, **parts})

    base = fingerprint(b'{"a": 1, "b": ["x", {"c": null}]}')

    assert fingerprint(b'{ "b" : [ "x" , { "c" : null } ] , "a" : 1 }\n') == base
    assert fingerprint(b'{"b": ["x", {"c": null}], "a": "1"}') != base  # a string is not a number
    assert fingerprint(b'{"b": [{"c": null}, "x"], "a": 1}') != base  # list order matters
    assert fingerprint(b'{"a": 1, "b": ["x", {"c": null}]}', method="PATCH") != base
    assert fingerprint(b'{"a": 1, "b": ["x", {"c": null}]}', path="/q") != base
    assert fingerprint(b'{"a": 1, "b": ["x", {"c": null}]}', query_string="x=1") != base


def test_canonical_json_keeps_numbers_exactly_and_hashes_other_bodies_raw() -> None:
    assert canonical_body(b'{"amount": 1.50}') == b'json:{"amount":1.50}'
    assert canonical_body(b'{"amount": 1.5}') == b'json:{"amount":1.5}'
    assert canonical_body(b'{"amount": 123456789012345678901234567890}') == (
        b'json:{"amount":123456789012345678901234567890}'
    )
    assert canonical_body('{"name": "caf\u00e9"}'.encode()) == canonical_body(b'{"name": "caf\\u00e9"}')
    assert canonical_body(b"amount=10&to=bob") == b"raw:amount=10&to=bob"
    assert canonical_body(b'{"amount": NaN}') == b'raw:{"amount": NaN}'
    assert canonical_body(b"") == b""


# --- claim and complete ------------------------------------------------------------------------------------------


def test_claim_outside_a_transaction_is_refused(transactional_db: Any, tenant_a: Tenant, user_a: User) -> None:
    with pytest.raises(TransactionManagementError):
        claim(tenant_a, user_a)

    assert IdempotencyRecord.all_tenants.count() == 0


def test_claim_complete_then_replay(tenant_a: Tenant, user_a: User) -> None:
    stored = record_response(tenant_a, user_a, "key-1")

    assert stored.response_status == 201
    assert stored.tenant_id == tenant_a.pk
    assert stored.user_id == user_a.pk
    assert stored.method == "POST"
    assert stored.path == "/api/v1/transfers"
    assert stored.fingerprint == FINGERPRINT
    assert stored.expires_at - stored.created_at == timedelta(hours=24)

    with transaction.atomic():
        again = claim(tenant_a, user_a, "key-1")

    assert again.is_replay
    assert again.stored is not None
    assert (again.stored.status, again.stored.body) == (201, b'{"id": "t1"}')
    assert (again.stored.content_type, again.stored.location) == ("application/json", "/api/v1/transfers/t1")
    with pytest.raises(ValueError), transaction.atomic():
        idempotency_complete(again, status=200, body=b"")


def test_claim_with_another_fingerprint_is_422(tenant_a: Tenant, user_a: User) -> None:
    record_response(tenant_a, user_a, "key-1")
    other = request_fingerprint(method="POST", path="/api/v1/transfers", body=b'{"amount": "11"}')

    with pytest.raises(IdempotencyKeyReused), transaction.atomic():
        claim(tenant_a, user_a, "key-1", fingerprint=other)


def test_a_key_claimed_twice_in_one_transaction_is_in_flight(tenant_a: Tenant, user_a: User) -> None:
    # A batch of requests in one transaction holding the same key twice must not run it twice.
    with transaction.atomic():
        first = claim(tenant_a, user_a, "key-1")
        with pytest.raises(IdempotencyKeyInFlight), transaction.atomic():
            claim(tenant_a, user_a, "key-1")
        idempotency_complete(first, status=201, body=b"{}")

    assert IdempotencyRecord.all_tenants.get().response_status == 201


def test_a_claim_completes_once(tenant_a: Tenant, user_a: User) -> None:
    with transaction.atomic():
        claimed = claim(tenant_a, user_a, "key-1")
        idempotency_complete(claimed, status=201, body=b"{}")
        with pytest.raises(TransactionManagementError):
            idempotency_complete(claimed, status=200, body=b"[]")

    assert bytes(IdempotencyRecord.all_tenants.get().response_body) == b"{}"


def test_a_committed_claim_without_response_answers_409_and_is_logged(
    tenant_a: Tenant, user_a: User, caplog: pytest.LogCaptureFixture
) -> None:
    with transaction.atomic():
        claim(tenant_a, user_a, "key-1")  # a caller's bug: never completed
    IdempotencyRecord.all_tenants.update(created_at=timezone.now() - timedelta(minutes=5))

    with caplog.at_level("ERROR", logger="wallet.idempotency"), pytest.raises(IdempotencyKeyInFlight), \
            transaction.atomic():
        claim(tenant_a, user_a, "key-1")

    assert "never completed" in caplog.text


def test_a_rolled_back_claim_leaves_nothing(tenant_a: Tenant, user_a: User) -> None:
    with pytest.raises(RuntimeError), transaction.atomic():
        claim(tenant_a, user_a, "key-1")
        raise RuntimeError("the effect failed")

    assert IdempotencyRecord.all_tenants.count() == 0
    with transaction.atomic():
        assert claim(tenant_a, user_a, "key-1").record_id is not None


# --- purge ------------------------------------------------------------------------------------------------------


def test_purge_removes_expired_records_only(tenant_a: Tenant, user_a: User, tenant_b: Tenant,
                                            user_b: User) -> None:
    expired_a = record_response(tenant_a, user_a, "old-a")
    expired_b = record_response(tenant_b, user_b, "old-b")
    fresh = record_response(tenant_a, user_a, "fresh")
    now = timezone.now()
    IdempotencyRecord.all_tenants.filter(pk__in=[expired_a.pk, expired_b.pk]).update(
        expires_at=now - timedelta(seconds=1)
    )

    deleted = purge_expired.apply().get()

    assert purge_expired.name == "idempotency.purge_expired"
    assert deleted == 2
    assert list(IdempotencyRecord.all_tenants.values_list("pk", flat=True)) == [fresh.pk]


def test_purge_works_in_batches(tenant_a: Tenant, user_a: User, settings: Any) -> None:
    settings.IDEMPOTENCY_PURGE_BATCH_SIZE = 2
    for number in range(5):
        record_response(tenant_a, user_a, f"key-{number}")
    IdempotencyRecord.all_tenants.update(expires_at=timezone.now() - timedelta(seconds=1))

    assert purge_expired.apply().get() == 5
    assert IdempotencyRecord.all_tenants.count() == 0


# --- settings -----------------------------------------------------------------------------------------------


def test_ttl_below_24_hours_is_refused(settings: Any) -> None:
    settings.IDEMPOTENCY_TTL_HOURS = 23

    with pytest.raises(ImproperlyConfigured, match="at least 24"):
        conf.ttl()
    assert [error.id for error in check_idempotency_settings()] == ["idempotency.E001"]


def test_longer_ttl_is_used(tenant_a: Tenant, user_a: User, settings: Any) -> None:
    settings.IDEMPOTENCY_TTL_HOURS = 48

    stored = record_response(tenant_a, user_a, "key-1")

    assert stored.expires_at - stored.created_at == timedelta(hours=48)
    assert check_idempotency_settings() == []


def test_local_fast_lock_is_owned_by_its_token_and_expires() -> None:
    lock = LocalFastLock()

    assert lock.acquire("idem:t:u:k", "first", 30) is True
    assert lock.acquire("idem:t:u:k", "second", 30) is False
    lock.release("idem:t:u:k", "second")  # not the holder: nothing happens
    assert lock.acquire("idem:t:u:k", "third", 30) is False
    lock.release("idem:t:u:k", "first")
    assert lock.acquire("idem:t:u:k", "fourth", 0.0) is True  # expires at once
    assert lock.acquire("idem:t:u:k", "fifth", 30) is True


# --- admin ----------------------------------------------------------------------------------------------------


@pytest.fixture
def records_of_both_tenants(tenant_a: Tenant, user_a: User, tenant_b: Tenant, user_b: User) -> Iterator[None]:
    record_response(tenant_a, user_a, "alice-key", body=b'{"secret": "alice-body"}')
    record_response(tenant_b, user_b, "bob-key", body=b'{"secret": "bob-body"}')
    yield


def staff_client(user: User) -> Client:
    client = Client()
    client.force_login(user)
    return client


def test_admin_lists_only_the_staff_tenant_s_records_and_bodies_only_for_managers(
    tenant_a: Tenant, records_of_both_tenants: None
) -> None:
    record = IdempotencyRecord.all_tenants.get(key="alice-key")
    detail = f"{RECORDS}{record.pk}/change/"
    owner = staff_client(make_staff(tenant_a, Membership.Role.OWNER))
    support = staff_client(make_staff(tenant_a, Membership.Role.SUPPORT))

    listing = owner.get(RECORDS)
    assert listing.status_code == 200
    assert [r.key for r in listing.context["cl"].result_list] == ["alice-key"]
    assert "alice-body" in owner.get(detail).content.decode()

    support_listing = support.get(RECORDS)
    assert [r.key for r in support_listing.context["cl"].result_list] == ["alice-key"]
    support_detail = support.get(detail)
    assert support_detail.status_code == 200
    assert "alice-key" in support_detail.content.decode()
    assert "alice-body" not in support_detail.content.decode()


def test_admin_is_read_only_and_hides_other_tenants(tenant_b: Tenant, records_of_both_tenants: None) -> None:
    alice_record = IdempotencyRecord.all_tenants.get(key="alice-key")
    owner_b = staff_client(make_staff(tenant_b, Membership.Role.OWNER))

    foreign = owner_b.get(f"{RECORDS}{alice_record.pk}/change/")
    listing = owner_b.get(RECORDS)

    assert foreign.status_code == 302  # "does not exist", as for a missing id
    assert foreign["Location"] == "/admin/"
    assert [r.key for r in listing.context["cl"].result_list] == ["bob-key"]
    assert owner_b.get(f"{RECORDS}add/").status_code == 403
    assert owner_b.post(f"{RECORDS}{alice_record.pk}/delete/", {"post": "yes"}).status_code == 403
    assert IdempotencyRecord.all_tenants.filter(pk=alice_record.pk).exists()


def _many(tenant: Tenant, *requests: tuple[User, str, str]) -> list[Any]:
    from wallet.idempotency.services import ClaimRequest, idempotency_claim_many

    return idempotency_claim_many(tenant=tenant, requests=[
        ClaimRequest(user=user, key=key, fingerprint=fingerprint, method="POST", path="/api/v1/transfers")
        for user, key, fingerprint in requests])


def test_claim_many_answers_each_key_on_its_own(tenant_a: Tenant, user_a: User) -> None:
    """One batch: a new key, a completed key (replay), a key of another request (422), the same key of
    another user (independent)."""
    from wallet.idempotency.services import Completion, idempotency_complete_many

    with transaction.atomic():
        (done,) = _many(tenant_a, (user_a, "done", "f1"))
        idempotency_complete_many([Completion(claim=done, status=201, body=b'{"ok":1}',
                                              content_type="application/json", location="/x")])
    with transaction.atomic():
        from tests.factories import UserFactory

        colleague = UserFactory(tenant=tenant_a)
        new, replay, reused, theirs = _many(tenant_a, (user_a, "new", "f2"), (user_a, "done", "f1"),
                                            (user_a, "done-elsewhere", "f3"), (colleague, "done", "f1"))
        assert new.record_id is not None and new.stored is None
        assert theirs.record_id is not None and theirs.stored is None  # another user's key space
        assert (replay.stored.status, replay.stored.body, replay.stored.location) == (201, b'{"ok":1}', "/x")
        assert reused.record_id is not None  # a fresh key: claimed
        idempotency_complete_many([Completion(claim=new, status=201, body=b"{}"),
                                   Completion(claim=reused, status=409, body=b"{}"),
                                   Completion(claim=theirs, status=201, body=b"{}")])
    with transaction.atomic():
        (changed,) = _many(tenant_a, (user_a, "done", "another-fingerprint"))
        assert getattr(changed, "code", "") == "idempotency_key_reused"
    with pytest.raises(ValueError):
        with transaction.atomic():
            _many(tenant_a, (user_a, "twice", "f"), (user_a, "twice", "f"))


def test_a_deferred_completion_stores_every_answer_or_fails_its_statement(tenant_a: Tenant, user_a: User) -> None:
    """The group commit defers its completions into the ledger's last statement: there the UPDATE checks
    itself, as the immediate form checks the row count."""
    from django.db import DatabaseError, connection

    from wallet.core.bulk import execute_together
    from wallet.idempotency.services import Completion, idempotency_complete_many, idempotency_stored_response

    if connection.vendor != "postgresql":
        pytest.skip("deferred statements are PostgreSQL's (elsewhere the completion runs at once)")
    with transaction.atomic():
        first, second = _many(tenant_a, (user_a, "d1", "f1"), (user_a, "d2", "f2"))
        deferred: list[Any] = []
        idempotency_complete_many([Completion(claim=first, status=201, body=b'{"n":1}'),
                                   Completion(claim=second, status=409, body=b'{"n":2}')], defer=deferred)
        assert len(deferred) == 1
        execute_together(connection, deferred)
    stored = idempotency_stored_response(tenant=tenant_a, user=user_a, key="d2", fingerprint="f2")
    assert stored is not None and (stored.status, stored.body) == (409, b'{"n":2}')
    with pytest.raises(DatabaseError, match="already completed: 1"), transaction.atomic():
        (third,) = _many(tenant_a, (user_a, "d3", "f3"))
        deferred = []
        idempotency_complete_many([Completion(claim=third, status=201, body=b"{}"),
                                   Completion(claim=first, status=201, body=b"{}")], defer=deferred)
        execute_together(connection, deferred)
    with pytest.raises(DatabaseError, match="already completed: 1"), transaction.atomic():
        deferred = []  # every claim completed already: the UPDATE matches nothing, the guard still runs
        idempotency_complete_many([Completion(claim=first, status=201, body=b"{}")], defer=deferred)
        execute_together(connection, deferred)
    with pytest.raises(DatabaseError, match="already completed: 1"), transaction.atomic():
        (fourth,) = _many(tenant_a, (user_a, "d4", "f4"))
        IdempotencyRecord.all_tenants.filter(pk=fourth.record_id).delete()  # gone
        deferred = []
        idempotency_complete_many([Completion(claim=fourth, status=201, body=b"{}")], defer=deferred)
        execute_together(connection, deferred)


@pytest.mark.django_db(transaction=True)
def test_claim_many_answers_409_for_a_key_another_transaction_holds(tenant_a: Tenant, user_a: User) -> None:
    """PostgreSQL: the advisory lock is tried, never waited for: 409 at once; SQLite serialises writers."""
    import threading

    from django.db import connection, connections

    if connection.vendor != "postgresql":
        pytest.skip("advisory locks are PostgreSQL's; SQLite transactions are serialised")
    held, release = threading.Event(), threading.Event()

    def holder() -> None:
        try:
            with transaction.atomic():
                _many(tenant_a, (user_a, "busy", "f"))
                held.set()
                release.wait(10)
        finally:
            connections.close_all()

    thread = threading.Thread(target=holder)
    thread.start()
    try:
        assert held.wait(10)
        with transaction.atomic():
            busy, free = _many(tenant_a, (user_a, "busy", "f"), (user_a, "free", "f"))
        assert getattr(busy, "code", "") == "idempotency_key_in_flight"
        assert busy.headers["Retry-After"] == "1"
        assert free.record_id is not None
    finally:
        release.set()
        thread.join(10)
