"""The outbox admin: read-only, and tenant staff see only their own tenant's events."""

from __future__ import annotations

import pytest
from django.db import transaction
from django.test import Client

from tenants.models import Membership, Tenant, User
from tests.conftest import make_staff
from wallet.events.models import OutboxEvent
from wallet.events.services import EventSpec, events_emit, user_stream

CHANGELIST = "/admin/events/outboxevent/"

pytestmark = pytest.mark.django_db


@pytest.fixture(autouse=True)
def _no_in_process_relay(settings) -> None:
    settings.OUTBOX_RELAY_IN_PROCESS = False


def emit_one(tenant: Tenant, user: User, event_type: str) -> OutboxEvent:
    with transaction.atomic():
        return events_emit(tenant=tenant, events=[EventSpec(user_stream(user), event_type, {"secret": event_type})])[0]


def admin_client(user: User) -> Client:
    client = Client()
    client.force_login(user)
    return client


def changelist_pks(client: Client) -> set[str]:
    response = client.get(CHANGELIST)
    assert response.status_code == 200
    return {str(obj.pk) for obj in response.context["cl"].result_list}


def test_tenant_staff_see_only_their_tenants_events(tenant_a: Tenant, tenant_b: Tenant, user_a: User,
                                                    user_b: User) -> None:
    # given an event in each tenant
    mine, theirs = emit_one(tenant_a, user_a, "a.event"), emit_one(tenant_b, user_b, "b.event")
    viewer = make_staff(tenant_a, Membership.Role.VIEWER)
    # when / then
    assert changelist_pks(admin_client(viewer)) == {str(mine.pk)}
    client = admin_client(make_staff(tenant_a, Membership.Role.OWNER))
    assert changelist_pks(client) == {str(mine.pk)}
    assert client.get(f"{CHANGELIST}{mine.pk}/change/").status_code == 200
    foreign = client.get(f"{CHANGELIST}{theirs.pk}/change/")
    assert foreign.status_code in (302, 404)
    assert "b.event" not in foreign.content.decode()


def test_a_superuser_sees_every_tenant(tenant_a: Tenant, tenant_b: Tenant, user_a: User, user_b: User,
                                       superuser: User) -> None:
    events = {str(emit_one(tenant_a, user_a, "a").pk), str(emit_one(tenant_b, user_b, "b").pk)}
    assert changelist_pks(admin_client(superuser)) == events


def test_nobody_adds_changes_or_deletes(tenant_a: Tenant, user_a: User, superuser: User) -> None:
    # given
    event = emit_one(tenant_a, user_a, "a.event")
    owner = make_staff(tenant_a, Membership.Role.OWNER)
    for user in (owner, superuser):
        client = admin_client(user)
        # when / then
        assert client.get(f"{CHANGELIST}add/").status_code == 403
        assert client.post(f"{CHANGELIST}add/", {"stream": user_stream(user_a), "seq": 9, "type": "forged",
                                                  "data": "{}"}).status_code == 403
        page = client.get(f"{CHANGELIST}{event.pk}/change/")
        assert page.status_code == 200
        assert page.context["has_change_permission"] is False
        assert client.post(f"{CHANGELIST}{event.pk}/change/", {"type": "changed"}).status_code == 403
        assert client.get(f"{CHANGELIST}{event.pk}/delete/").status_code == 403
        assert client.post(f"{CHANGELIST}{event.pk}/delete/", {"post": "yes"}).status_code == 403
    assert list(OutboxEvent.all_tenants.values_list("pk", "type", "seq")) == [(event.pk, "a.event", 1)]


def test_search_by_stream_or_id(tenant_a: Tenant, user_a: User, superuser: User) -> None:
    # given
    event = emit_one(tenant_a, user_a, "a.event")
    client = admin_client(superuser)
    # when / then
    for query, expected in ((user_stream(user_a), {str(event.pk)}), (str(event.pk), {str(event.pk)}),
                            ("a.event", {str(event.pk)}), ("not-a-uuid", set())):
        response = client.get(CHANGELIST, {"q": query})
        assert response.status_code == 200
        assert {str(obj.pk) for obj in response.context["cl"].result_list} == expected
