"""Shared fixtures: tenants, users, app clients and a clean cache per test."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from typing import Any

import pytest
from django.core.cache import cache
from rest_framework.test import APIClient

from tenants import services
from tenants.auth.jwt import verified_tokens
from tenants.auth.sessions import auth_state_cache, session_start
from tenants.models import Membership, Tenant, User
from tenants.selectors import app_key_cache
from tests.factories import TenantFactory, UserFactory
from wallet.ledger.groupcommit import committers_stop


@pytest.fixture(autouse=True)
def _fast_and_isolated(settings: Any) -> Iterator[None]:
    # Argon2 is the production hasher; tests hash hundreds of passwords.
    settings.PASSWORD_HASHERS = ["django.contrib.auth.hashers.MD5PasswordHasher"]
    settings.LOG_REQUESTS = False
    # Tests that want the in-process outbox relay thread turn it on; it would otherwise outlive its test.
    settings.OUTBOX_RELAY_IN_PROCESS = False
    cache.clear()
    app_key_cache.clear()
    verified_tokens.clear()
    auth_state_cache.clear()
    yield
    cache.clear()
    # Transfer committer threads keep a connection to the test database: end them with their test.
    committers_stop()


@pytest.fixture(scope="session", autouse=True)
def _close_stray_connections(django_db_setup: Any, django_db_blocker: Any) -> Iterator[None]:
    """Threads of async tests (asgiref's executor) keep their own connections; end them before the test
    database is dropped, or PostgreSQL refuses to drop a database in use."""
    yield
    from django.db import connection

    if connection.vendor == "postgresql":
        with django_db_blocker.unblock(), connection.cursor() as cursor:
            cursor.execute("SELECT pg_terminate_backend(pid) FROM pg_stat_activity "
                           "WHERE datname = current_database() AND pid <> pg_backend_pid()")


class AppClient(APIClient):
    """An API client for one tenant's app: sends its X-App-Key on every request."""

    def __init__(self, app_key: str | None, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.app_key = app_key
        if app_key is not None:
            self.credentials(HTTP_X_APP_KEY=app_key)

    def login_as(self, user: User) -> dict[str, Any]:
        """Authenticate as `user` with a real token pair; returns it."""
        pair = session_start(user=user).as_response()
        self.credentials(HTTP_X_APP_KEY=self.app_key, HTTP_AUTHORIZATION=f"Bearer {pair['access']}")
        return pair


@pytest.fixture
def tenant_a(db: Any) -> Tenant:
    return TenantFactory(slug="tenant-a", name="Tenant A")


@pytest.fixture
def tenant_b(db: Any) -> Tenant:
    return TenantFactory(slug="tenant-b", name="Tenant B")


def app_key_of(tenant: Tenant) -> str:
    from tenants.models import AppKey

    return AppKey.all_tenants.filter(tenant=tenant, revoked_at__isnull=True).order_by("created_at").first().key


@pytest.fixture
def user_a(tenant_a: Tenant) -> User:
    return UserFactory(tenant=tenant_a, email="alice@example.com")


@pytest.fixture
def user_b(tenant_b: Tenant) -> User:
    return UserFactory(tenant=tenant_b, email="bob@example.com")


@pytest.fixture
def client_a(tenant_a: Tenant) -> AppClient:
    return AppClient(app_key_of(tenant_a))


@pytest.fixture
def client_b(tenant_b: Tenant) -> AppClient:
    return AppClient(app_key_of(tenant_b))


def make_staff(tenant: Tenant, role: str, email: str | None = None) -> User:
    user, _ = services.staff_create(tenant=tenant, email=email or f"{role}@{tenant.slug}.example", role=role,
                                    password="staff-password-123")
    return user


@pytest.fixture
def owner_a(tenant_a: Tenant) -> User:
    return make_staff(tenant_a, Membership.Role.OWNER)


@pytest.fixture
def admin_a(tenant_a: Tenant) -> User:
    return make_staff(tenant_a, Membership.Role.ADMIN)


@pytest.fixture
def owner_b(tenant_b: Tenant) -> User:
    return make_staff(tenant_b, Membership.Role.OWNER)


@pytest.fixture
def superuser(db: Any) -> User:
    return User.objects.create_superuser(username="root", email="root@platform.example",
                                         password="root-password-123")


@contextlib.contextmanager
def celery_eager(on: bool) -> Iterator[None]:
    """Celery's `task_always_eager` set to `on` for the block: True runs tasks in process (the embedded
    default), False sends them to the broker (production). Under `make test` REDIS_URL is set, which
    turns eager mode off."""
    from wallet.celery import app as celery_app

    before = celery_app.conf.task_always_eager
    celery_app.conf.task_always_eager = on
    try:
        yield
    finally:
        celery_app.conf.task_always_eager = before


@pytest.fixture
def payers(tenant_a: Tenant) -> list[User]:
    """Twelve users of tenant A with 10,000 USD each, and bob@example.com to pay (the group commit's tests)."""
    from tests.ledger_helpers import enable, fund

    enable(tenant_a, "USD")
    users = [UserFactory(tenant=tenant_a, email=f"payer{i}@example.com") for i in range(12)]
    UserFactory(tenant=tenant_a, email="bob@example.com")
    for user in users:
        fund(user, 10_000)
    return users
