"""The balances read model kept up to date by events: the relay's listener schedules a refresh of each user
whose ledger balances changed, the refresh emits `balances.updated` when the aggregate changed, the
scheduled refresh covers streams that moved, and the warm path's per-process stream head never hides a
change beyond its bound. Runs on SQLite (`make test-quick`) and PostgreSQL (`make test`)."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest
from django.core.cache import cache
from django.db.models import F

from tenants.models import Tenant, User
from tests.conftest import AppClient, celery_eager
from tests.factories import UserFactory
from tests.ledger_helpers import asset, enable, fund
from wallet.balances import listeners, services
from wallet.balances.breaker import breakers_reset
from wallet.balances.models import SnapshotPosition
from wallet.balances.tasks import refresh_all
from wallet.events.models import OutboxEvent, StreamCursor
from wallet.events.relay import PublishedEvent, relay_once
from wallet.events.streams import user_stream
from wallet.ledger.services import transfer_create

pytestmark = pytest.mark.django_db(transaction=True)


@pytest.fixture(autouse=True)
def _isolated() -> Iterator[None]:
    breakers_reset()
    services.local_snapshots_clear()
    listeners._scheduled.clear()
    yield
    services.local_snapshots_clear()


@pytest.fixture
def eager() -> Iterator[None]:
    with celery_eager(True):
        yield


@pytest.fixture
def lazy() -> Iterator[None]:
    """Celery with a broker (production): tasks are sent, not run in process."""
    with celery_eager(False):
        yield


def updated_events(user: User) -> list[dict[str, Any]]:
    return list(OutboxEvent.all_tenants.filter(stream=user_stream(user.pk), type="balances.updated")
                .order_by("seq").values_list("data", flat=True))


def usd_amount(snapshot: dict[str, Any]) -> str:
    ledger = next(s for s in snapshot["sources"] if s["kind"] == "ledger")
    return next(e["amount"] for e in ledger["entries"] if e["asset"] == "USD")


def snapshot_of(user: User) -> dict[str, Any]:
    return cache.get(services.snapshot_key(user.tenant_id, user.pk))


@pytest.fixture
def people(tenant_a: Tenant, tenant_b: Tenant) -> dict[str, User]:
    enable(tenant_a, "USD")
    enable(tenant_b, "USD")
    people = {"sender": UserFactory(tenant=tenant_a), "recipient": UserFactory(tenant=tenant_a),
              "bystander": UserFactory(tenant=tenant_a), "other_tenant": UserFactory(tenant=tenant_b)}
    fund(people["sender"], 10_000)
    fund(people["other_tenant"], 10_000)
    for user in people.values():  # everyone has opened the home screen: each has a snapshot
        services.balances_read(tenant=user.tenant, user=user)
    relay_once()  # the funding events: the snapshots above already include them
    listeners._scheduled.clear()  # (with a broker, that scheduled tasks no worker runs here)
    return people


def test_a_transfer_refreshes_sender_and_recipient_and_emits_balances_updated(people: dict[str, User],
                                                                               eager: None) -> None:
    sender, recipient = people["sender"], people["recipient"]
    assert usd_amount(snapshot_of(sender)) == "10000"
    assert not OutboxEvent.all_tenants.filter(type="balances.updated").exists()

    # when a transfer commits and the relay publishes its events
    transfer_create(tenant=sender.tenant, sender=sender, recipient=recipient, asset=asset("USD"), amount=2_500)
    relay_once()

    # then both snapshots were refreshed without anyone reading, each with one balances.updated
    assert usd_amount(snapshot_of(sender)) == "7500"
    assert usd_amount(snapshot_of(recipient)) == "2500"
    [sent] = updated_events(sender)
    [received] = updated_events(recipient)
    assert sent["total"] == {"value": "75.00", "complete": True}
    assert received["total"] == {"value": "25.00", "complete": True}
    # and nobody else: not the bystander of the same tenant, not the user of another tenant
    assert updated_events(people["bystander"]) == []
    assert updated_events(people["other_tenant"]) == []
    # the snapshots record the head after their own event: the next read is warm (no refresh, no event)
    for user in (sender, recipient):
        head = StreamCursor.all_tenants.get(tenant=user.tenant, stream=user_stream(user.pk)).last_seq
        assert snapshot_of(user)["pos"] == head
        assert SnapshotPosition.all_tenants.get(user=user).position == head
    services.balances_read(tenant=sender.tenant, user=sender)
    assert len(updated_events(sender)) == 1
    # the refresh's own events reach the relay too, and cause no further refresh
    relay_once()
    assert len(updated_events(sender)) == 1 and len(updated_events(recipient)) == 1


def test_no_event_when_nothing_changed(people: dict[str, User], eager: None) -> None:
    sender, recipient = people["sender"], people["recipient"]
    transfer_create(tenant=sender.tenant, sender=sender, recipient=recipient, asset=asset("USD"), amount=100)
    # the sender reads first (the read refreshes and emits), then the relay's refresh finds nothing new
    services.balances_read(tenant=sender.tenant, user=sender)
    assert len(updated_events(sender)) == 1
    relay_once()
    assert len(updated_events(sender)) == 1
    assert len(updated_events(recipient)) == 1

    # a refresh of an unchanged aggregate (the head moved for another reason) emits nothing
    tenant = sender.tenant
    StreamCursor.all_tenants.filter(tenant=tenant, stream=user_stream(sender.pk)).update(last_seq=F("last_seq") + 1)
    listeners.on_events_published([PublishedEvent(tenant.pk, user_stream(sender.pk), 0, "deposit.confirmed", {})])
    assert snapshot_of(sender)["pos"] == StreamCursor.all_tenants.get(stream=user_stream(sender.pk)).last_seq
    assert len(updated_events(sender)) == 1


def test_only_balance_events_of_users_with_a_snapshot_schedule_a_refresh(people: dict[str, User], lazy: None,
                                                                         monkeypatch: pytest.MonkeyPatch) -> None:
    from wallet.balances.tasks import refresh_user

    calls: list[dict[str, Any]] = []
    monkeypatch.setattr(refresh_user, "apply_async", lambda **kw: calls.append(kw))
    monkeypatch.setattr(refresh_user, "apply", lambda **kw: calls.append(kw))
    sender, tenant = people["sender"], people["sender"].tenant
    newcomer = UserFactory(tenant=tenant)  # never read balances: nothing to refresh
    stream = user_stream(sender.pk)

    listeners.on_events_published([
        PublishedEvent(tenant.pk, stream, 10, "transfer.created", {}),
        PublishedEvent(tenant.pk, user_stream(newcomer.pk), 1, "account.balance_changed", {}),
        # the right user id under another tenant: not the same stream
        PublishedEvent(people["other_tenant"].tenant_id, stream, 3, "account.balance_changed", {}),
    ])
    assert calls == []
    listeners.on_events_published([PublishedEvent(tenant.pk, stream, 11, "account.balance_changed", {})])
    assert calls == [{"kwargs": {"tenant_id": str(tenant.pk), "user_id": str(sender.pk)}, "countdown": 1.0}]


def test_the_refresh_is_debounced_per_user_without_losing_a_change(people: dict[str, User], lazy: None,
                                                                   monkeypatch: pytest.MonkeyPatch,
                                                                   settings: Any) -> None:
    from wallet.balances.tasks import refresh_user

    settings.BALANCES_REFRESH_DEBOUNCE_SECONDS = 2
    calls: list[dict[str, Any]] = []
    monkeypatch.setattr(refresh_user, "apply_async", lambda **kw: calls.append(kw))
    clock = [1000.0]
    monkeypatch.setattr(listeners.time, "monotonic", lambda: clock[0])
    sender = people["sender"]
    event = PublishedEvent(sender.tenant_id, user_stream(sender.pk), 1, "account.balance_changed", {})

    listeners.on_events_published([event])
    clock[0] += 0.9  # within half the delay: the task scheduled above (runs at +2 s) reads this change too
    listeners.on_events_published([event])
    assert [call["countdown"] for call in calls] == [2]
    clock[0] += 0.2  # past half the delay: a new task
    listeners.on_events_published([event])
    assert [call["countdown"] for call in calls] == [2, 2]


def test_the_scheduled_refresh_covers_users_whose_stream_moved(people: dict[str, User], eager: None) -> None:
    sender, bystander = people["sender"], people["bystander"]
    assert refresh_all() == 0  # nothing moved, no bank links: nothing to do

    # when the sender's balance changes and no event-driven refresh takes it in (e.g. a lost task)
    fund(sender, 500)

    # then the scheduled refresh does
    assert refresh_all() == 1
    assert usd_amount(snapshot_of(sender)) == "10500"
    assert len(updated_events(sender)) == 1
    assert updated_events(bystander) == []
    assert refresh_all() == 0  # and once is enough


def test_a_change_committed_elsewhere_shows_within_the_head_check_bound(people: dict[str, User],
                                                                        monkeypatch: pytest.MonkeyPatch,
                                                                        settings: Any) -> None:
    from wallet.balances import selectors

    settings.BALANCES_HEAD_CHECK_SECONDS = 5
    clock = [1000.0]
    monkeypatch.setattr(selectors.time, "monotonic", lambda: clock[0])
    sender = people["sender"]
    tenant = sender.tenant
    selectors.stream_heads_forget()
    services.balances_read(tenant=tenant, user=sender)  # this process now holds the head

    # when another process commits a change (this process's commit listener does not hear of it)
    from wallet.events import services as events_services

    monkeypatch.setattr(events_services, "_commit_listeners", [])
    fund(sender, 1)
    monkeypatch.undo()
    monkeypatch.setattr(selectors.time, "monotonic", lambda: clock[0])

    # then within the bound the snapshot may still be served, and past it the change shows
    clock[0] += 4.9
    assert usd_amount(services.balances_read(tenant=tenant, user=sender)) == "10000"
    clock[0] += 0.2
    assert usd_amount(services.balances_read(tenant=tenant, user=sender)) == "10001"


def test_a_change_committed_by_this_process_shows_at_once(people: dict[str, User],
                                                          monkeypatch: pytest.MonkeyPatch, settings: Any) -> None:
    from wallet.balances import selectors

    settings.BALANCES_HEAD_CHECK_SECONDS = 3600
    monkeypatch.setattr(selectors.time, "monotonic", lambda: 1000.0)
    sender, recipient = people["sender"], people["recipient"]
    services.balances_read(tenant=sender.tenant, user=sender)
    services.balances_read(tenant=recipient.tenant, user=recipient)

    transfer_create(tenant=sender.tenant, sender=sender, recipient=recipient, asset=asset("USD"), amount=1)

    assert usd_amount(services.balances_read(tenant=sender.tenant, user=sender)) == "9999"
    assert usd_amount(services.balances_read(tenant=recipient.tenant, user=recipient)) == "1"


def test_a_snapshot_refreshed_by_another_process_is_served_without_a_refresh(people: dict[str, User],
                                                                            monkeypatch: pytest.MonkeyPatch,
                                                                            settings: Any) -> None:
    from wallet.balances import selectors
    from wallet.events import services as events_services

    settings.BALANCES_HEAD_CHECK_SECONDS = 3600
    monkeypatch.setattr(selectors.time, "monotonic", lambda: 1000.0)
    sender = people["sender"]
    tenant = sender.tenant
    selectors.stream_heads_forget()
    services.balances_read(tenant=tenant, user=sender)  # this process holds the head (N)
    key = services.snapshot_key(tenant.pk, sender.pk)

    # when another process changes the balance and refreshes the snapshot (its head then N+2: the change
    # and its balances.updated), and this process has no copy of the snapshot
    with monkeypatch.context() as elsewhere:
        elsewhere.setattr(events_services, "_commit_listeners", [])
        fund(sender, 7)
        refreshed = services.balances_refresh(tenant=tenant, user=sender)
    services._local_snapshots.pop(key)

    # then this process serves that snapshot: its copy of the head was behind, so it read the head again
    # instead of refreshing the aggregate once more
    body = services.balances_read(tenant=tenant, user=sender)
    assert usd_amount(body) == "10007"
    assert services._local_snapshots[key]["computed_at"] == refreshed["computed_at"]


def test_the_fast_path_answers_like_the_api_view(people: dict[str, User],
                                                 django_assert_max_num_queries: Any) -> None:
    from tests.conftest import app_key_of

    sender = people["sender"]
    client = AppClient(app_key_of(sender.tenant))
    client.login_as(sender)
    fast = client.get("/api/v1/balances")
    assert fast.status_code == 200 and fast["Content-Type"] == "application/json"
    through_drf = client.get("/api/v1/balances?currency=USD")  # a parameter: DRF's view answers
    assert through_drf.json()["total"] == fast.json()["total"]
    assert fast["Allow"] == through_drf["Allow"]
    with django_assert_max_num_queries(1):  # auth and the head are this process's copies: at most one read
        assert client.get("/api/v1/balances").json()["total"] == fast.json()["total"]

    # errors are the API's problem+json answers
    client.credentials(HTTP_X_APP_KEY=app_key_of(sender.tenant))
    anonymous = client.get("/api/v1/balances")
    assert (anonymous.status_code, anonymous["Content-Type"]) == (401, "application/problem+json")
    client.credentials(HTTP_X_APP_KEY=app_key_of(sender.tenant), HTTP_AUTHORIZATION="Bearer nonsense")
    assert (client.get("/api/v1/balances").json()["code"]) == "token_invalid"
    other = AppClient(app_key_of(people["other_tenant"].tenant))
    other.login_as(sender)  # a token of tenant A with tenant B's app key
    assert other.get("/api/v1/balances").json()["code"] == "token_tenant_mismatch"


def test_embedded_default_the_in_process_relay_refreshes_after_a_transfer(people: dict[str, User], eager: None,
                                                                          settings: Any) -> None:
    import time

    from wallet.events.relay import stop_in_process_relay

    # given the embedded default: the relay is a thread of this process, tasks run in process
    settings.CHANNEL_LAYERS = {"default": {"BACKEND": "channels.layers.InMemoryChannelLayer"}}
    settings.OUTBOX_RELAY_IN_PROCESS = True
    sender, recipient = people["sender"], people["recipient"]
    try:
        # when a transfer commits (its on-commit hook wakes the relay thread)
        transfer_create(tenant=sender.tenant, sender=sender, recipient=recipient, asset=asset("USD"),
                        amount=300)

        # then, without anyone calling the relay or reading, both get balances.updated
        deadline = time.monotonic() + 15
        while time.monotonic() < deadline and not (updated_events(sender) and updated_events(recipient)):
            time.sleep(0.02)
    finally:
        stop_in_process_relay()
    assert [e["total"]["value"] for e in updated_events(sender)] == ["97.00"]
    assert [e["total"]["value"] for e in updated_events(recipient)] == ["3.00"]
    assert updated_events(people["bystander"]) == []
