"""Tenant scoping: scoped managers, access_* helpers, tasks and the request context."""

from __future__ import annotations

import uuid

import pytest

from tenants.models import AppKey, AuthSession, Tenant, User
from tenants.scoping import TenantScopeError, access_by_id
from tenants.selectors import access_user_by_id
from tenants.tasks import TenantTask
from wallet.celery import app as celery_app
from wallet.core.context import all_tenants_scope, current_tenant, tenant_scope
from wallet.core.errors import NotFound


def test_scoped_manager_refuses_to_run_without_a_tenant(tenant_a: Tenant) -> None:
    with pytest.raises(TenantScopeError):
        list(AppKey.objects.all())


def test_scoped_manager_returns_only_the_current_tenants_rows(tenant_a: Tenant, tenant_b: Tenant) -> None:
    with tenant_scope(tenant_a):
        assert {k.tenant_id for k in AppKey.objects.all()} == {tenant_a.pk}
        assert AppKey.objects.count() == 1
        # An explicit other tenant inside A's scope finds nothing rather than B's rows.
        assert not AppKey.objects.filter(tenant=tenant_b).exists()
    with all_tenants_scope():
        assert AppKey.objects.count() == 2
    assert AppKey.objects.for_tenant(tenant_b).get().tenant_id == tenant_b.pk


def test_related_managers_are_scoped_too(user_a: User, tenant_a: Tenant, tenant_b: Tenant) -> None:
    from tenants.auth.sessions import session_start

    session_start(user=user_a)
    with tenant_scope(tenant_b):
        assert user_a.auth_sessions.count() == 0
    with tenant_scope(tenant_a):
        assert user_a.auth_sessions.count() == 1


def test_access_helpers_answer_404_for_foreign_missing_and_malformed_ids(user_a: User, user_b: User,
                                                                        tenant_a: Tenant) -> None:
    assert access_user_by_id(tenant=tenant_a, user_id=user_a.pk) == user_a
    for bad in (user_b.pk, uuid.uuid4(), "not-a-uuid", None):
        with pytest.raises(NotFound):
            access_user_by_id(tenant=tenant_a, user_id=bad)
    key_b = AppKey.all_tenants.get(tenant=user_b.tenant)
    with pytest.raises(NotFound):
        access_by_id(AppKey, tenant=tenant_a, object_id=key_b.pk)


def test_context_is_restored_after_a_scope(tenant_a: Tenant, tenant_b: Tenant) -> None:
    assert current_tenant() is None
    with tenant_scope(tenant_a):
        with tenant_scope(tenant_b):
            assert current_tenant() == tenant_b
        assert current_tenant() == tenant_a
    assert current_tenant() is None


@celery_app.task(base=TenantTask, name="tests.count_sessions")
def count_sessions(*, tenant_id: str) -> dict:
    return {"tenant": current_tenant().slug, "sessions": AuthSession.objects.count()}


def test_tasks_run_in_the_tenant_they_are_given(user_a: User, user_b: User, tenant_a: Tenant,
                                               tenant_b: Tenant) -> None:
    from tenants.auth.sessions import session_start

    session_start(user=user_a)
    session_start(user=user_a)
    session_start(user=user_b)
    assert count_sessions.apply(kwargs={"tenant_id": str(tenant_a.pk)}).get() == {"tenant": "tenant-a",
                                                                                  "sessions": 2}
    assert count_sessions.apply(kwargs={"tenant_id": str(tenant_b.pk)}).get() == {"tenant": "tenant-b",
                                                                                  "sessions": 1}
    assert current_tenant() is None  # nothing left behind for the next task


def test_tasks_without_a_tenant_id_are_refused(db) -> None:
    with pytest.raises(TypeError, match="tenant_id"):
        count_sessions.apply(kwargs={}).get()
