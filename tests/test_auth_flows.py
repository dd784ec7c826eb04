"""Registration, sign-in, refresh, logout and password change through the API."""

from __future__ import annotations

import pytest

from tenants import services
from tenants.models import AuthSession, Tenant, User
from tests.conftest import AppClient, app_key_of
from tests.factories import DEFAULT_PASSWORD

STRONG = "a-long-unusual-passphrase-42"


def _register(client: AppClient, email: str, password: str = STRONG):
    return client.post("/api/v1/auth/register", {"email": email, "password": password}, format="json")


def _login(client: AppClient, email: str, password: str):
    return client.post("/api/v1/auth/token", {"email": email, "password": password}, format="json")


def test_register_then_sign_in_and_read_me(client_a: AppClient, tenant_a: Tenant) -> None:
    response = _register(client_a, "Carol@Example.com")
    assert response.status_code == 201
    assert response.json()["email"] == "Carol@example.com"
    assert response.json()["tenant"] == "tenant-a"

    tokens = _login(client_a, "carol@EXAMPLE.com", STRONG)
    assert tokens.status_code == 200
    body = tokens.json()
    assert body["token_type"] == "Bearer" and body["expires_in"] > 0
    client_a.credentials(HTTP_X_APP_KEY=client_a.app_key, HTTP_AUTHORIZATION=f"Bearer {body['access']}")
    me = client_a.get("/api/v1/me")
    assert me.status_code == 200
    assert me.json()["id"] == response.json()["id"]


def test_duplicate_email_in_the_same_tenant_is_409(client_a: AppClient, user_a: User) -> None:
    response = _register(client_a, "ALICE@example.com")
    assert response.status_code == 409
    assert response.json()["code"] == "email_taken"
    assert User.objects.filter(tenant=user_a.tenant).count() == 1


def test_same_email_in_another_tenant_is_a_separate_user(client_b: AppClient, user_a: User) -> None:
    response = _register(client_b, "alice@example.com")
    assert response.status_code == 201
    other = User.objects.get(pk=response.json()["id"])
    assert other.pk != user_a.pk
    assert other.tenant.slug == "tenant-b"
    # Each signs in only to its own tenant, each with its own password.
    assert _login(client_b, "alice@example.com", STRONG).status_code == 200
    assert _login(client_b, "alice@example.com", DEFAULT_PASSWORD).status_code == 401


@pytest.mark.parametrize("password", ["short", "password123456", "12345678901234", "alice@example.com"])
def test_weak_password_is_refused(client_a: AppClient, tenant_a: Tenant, password: str) -> None:
    response = _register(client_a, "alice@example.com", password)
    assert response.status_code == 400
    assert response.json()["code"] == "password_too_weak"
    assert response.json()["errors"][0]["pointer"] == "/password"
    assert not User.objects.filter(tenant=tenant_a).exists()


def test_invalid_email_is_a_validation_error(client_a: AppClient) -> None:
    response = _register(client_a, "not-an-email")
    assert response.status_code == 400
    assert response.json()["code"] == "validation_failed"
    assert response.json()["errors"] == [{"pointer": "/email", "code": "invalid",
                                          "detail": "Enter a valid email address."}]


def test_missing_app_key_is_401(tenant_a: Tenant) -> None:
    response = _register(AppClient(None), "x@example.com")
    assert response.status_code == 401
    assert response.json()["code"] == "app_key_missing"
    assert response["Content-Type"] == "application/problem+json"


def test_unknown_and_revoked_app_keys_are_401(tenant_a: Tenant) -> None:
    assert _register(AppClient("app_nope"), "x@example.com").json()["code"] == "invalid_app_key"
    key = tenant_a and services.app_key_rotate(tenant=tenant_a, revoke_previous=True)[1][0]
    response = _register(AppClient(key.key), "x@example.com")
    assert response.status_code == 401
    assert response.json()["code"] == "invalid_app_key"


def test_suspended_tenant_is_403(client_a: AppClient, tenant_a: Tenant, user_a: User) -> None:
    client_a.login_as(user_a)
    services.tenant_set_status(tenant=tenant_a, status=Tenant.Status.SUSPENDED)
    for response in (client_a.get("/api/v1/me"), _register(client_a, "new@example.com")):
        assert response.status_code == 403
        assert response.json()["code"] == "tenant_suspended"


def test_unknown_email_and_wrong_password_answer_the_same(client_a: AppClient, user_a: User) -> None:
    unknown = _login(client_a, "nobody@example.com", "whatever-password")
    wrong = _login(client_a, "alice@example.com", "whatever-password")
    assert unknown.status_code == wrong.status_code == 401

    def strip(body: dict) -> dict:
        return {k: v for k, v in body.items() if k not in ("request_id",)}

    assert strip(unknown.json()) == strip(wrong.json())
    assert unknown.json()["code"] == "invalid_credentials"


def test_inactive_user_cannot_sign_in(client_a: AppClient, user_a: User) -> None:
    User.objects.filter(pk=user_a.pk).update(is_active=False)
    assert _login(client_a, "alice@example.com", DEFAULT_PASSWORD).json()["code"] == "invalid_credentials"


def test_login_is_throttled_per_account(client_a: AppClient, user_a: User, settings) -> None:
    settings.LOGIN_THROTTLE_PER_ACCOUNT = 3
    for _ in range(3):
        assert _login(client_a, "alice@example.com", "wrong-password").status_code == 401
    blocked = _login(client_a, "ALICE@example.com", DEFAULT_PASSWORD)  # even the right password, any case
    assert blocked.status_code == 429
    assert blocked.json()["code"] == "too_many_attempts"
    assert int(blocked["Retry-After"]) > 0
    # Another account from the same IP is not blocked by this account's limit.
    UserFactory_email = "zed@example.com"
    services.user_create(tenant=user_a.tenant, email=UserFactory_email, password=DEFAULT_PASSWORD)
    assert _login(client_a, UserFactory_email, DEFAULT_PASSWORD).status_code == 200


def test_login_is_throttled_per_ip(client_a: AppClient, user_a: User, settings) -> None:
    settings.LOGIN_THROTTLE_PER_IP = 4
    for index in range(4):
        assert _login(client_a, f"u{index}@example.com", "wrong-password").status_code == 401
    assert _login(client_a, "alice@example.com", DEFAULT_PASSWORD).status_code == 429
    other_ip = client_a.post("/api/v1/auth/token", {"email": "alice@example.com", "password": DEFAULT_PASSWORD},
                             format="json", REMOTE_ADDR="10.9.9.9")
    assert other_ip.status_code == 200


def test_throttle_of_one_tenant_does_not_block_the_same_email_in_another(
    client_a: AppClient, client_b: AppClient, user_a: User, tenant_b: Tenant, settings
) -> None:
    settings.LOGIN_THROTTLE_PER_ACCOUNT = 2
    services.user_create(tenant=tenant_b, email="alice@example.com", password=DEFAULT_PASSWORD)
    for _ in range(3):
        _login(client_a, "alice@example.com", "wrong-password")
    assert _login(client_b, "alice@example.com", DEFAULT_PASSWORD).status_code == 200


def test_refresh_rotates_tokens(client_a: AppClient, user_a: User) -> None:
    pair = client_a.login_as(user_a)
    client_a.credentials(HTTP_X_APP_KEY=client_a.app_key)
    rotated = client_a.post("/api/v1/auth/token/refresh", {"refresh": pair["refresh"]}, format="json")
    assert rotated.status_code == 200
    assert rotated.json()["refresh"] != pair["refresh"]
    client_a.credentials(HTTP_X_APP_KEY=client_a.app_key, HTTP_AUTHORIZATION=f"Bearer {rotated.json()['access']}")
    assert client_a.get("/api/v1/me").status_code == 200


def test_unknown_refresh_token_is_401(client_a: AppClient) -> None:
    response = client_a.post("/api/v1/auth/token/refresh", {"refresh": "rt_unknown"}, format="json")
    assert response.status_code == 401
    assert response.json()["code"] == "token_invalid"


def test_logout_with_access_token_revokes_the_session(client_a: AppClient, user_a: User) -> None:
    pair = client_a.login_as(user_a)
    assert client_a.post("/api/v1/auth/logout", {}, format="json").status_code == 204
    assert client_a.get("/api/v1/me").status_code == 401
    client_a.credentials(HTTP_X_APP_KEY=client_a.app_key)
    response = client_a.post("/api/v1/auth/token/refresh", {"refresh": pair["refresh"]}, format="json")
    assert response.json()["code"] == "token_revoked"


def test_logout_with_refresh_token_revokes_only_that_session(client_a: AppClient, user_a: User) -> None:
    other_device = AppClient(client_a.app_key)
    other_device.login_as(user_a)
    pair = client_a.login_as(user_a)
    client_a.credentials(HTTP_X_APP_KEY=client_a.app_key)
    assert client_a.post("/api/v1/auth/logout", {"refresh": pair["refresh"]}, format="json").status_code == 204
    client_a.credentials(HTTP_X_APP_KEY=client_a.app_key, HTTP_AUTHORIZATION=f"Bearer {pair['access']}")
    assert client_a.get("/api/v1/me").status_code == 401
    assert other_device.get("/api/v1/me").status_code == 200


def test_logout_without_any_token_is_401(client_a: AppClient) -> None:
    assert client_a.post("/api/v1/auth/logout", {}, format="json").status_code == 401


def test_password_change_revokes_every_session_and_issues_a_new_one(client_a: AppClient, user_a: User) -> None:
    other_device = AppClient(client_a.app_key)
    other_device.login_as(user_a)
    client_a.login_as(user_a)
    response = client_a.post("/api/v1/me/password",
                             {"current_password": DEFAULT_PASSWORD, "new_password": STRONG}, format="json")
    assert response.status_code == 200
    assert other_device.get("/api/v1/me").status_code == 401
    assert client_a.get("/api/v1/me").status_code == 401  # the old access token is dead too
    client_a.credentials(HTTP_X_APP_KEY=client_a.app_key, HTTP_AUTHORIZATION=f"Bearer {response.json()['access']}")
    assert client_a.get("/api/v1/me").status_code == 200
    assert _login(AppClient(client_a.app_key), "alice@example.com", STRONG).status_code == 200
    assert AuthSession.all_tenants.filter(user=user_a, revoked_at__isnull=True).count() == 2  # new + login


def test_password_change_needs_the_current_password(client_a: AppClient, user_a: User) -> None:
    client_a.login_as(user_a)
    response = client_a.post("/api/v1/me/password",
                             {"current_password": "nope-nope-nope", "new_password": STRONG}, format="json")
    assert response.status_code == 400
    assert response.json()["code"] == "wrong_password"
    weak = client_a.post("/api/v1/me/password",
                         {"current_password": DEFAULT_PASSWORD, "new_password": "123"}, format="json")
    assert weak.json()["code"] == "password_too_weak"
    assert client_a.get("/api/v1/me").status_code == 200


def test_app_key_rotation_keeps_old_keys_live_until_revoked(tenant_a: Tenant, user_a: User) -> None:
    old = app_key_of(tenant_a)
    new_key, previous = services.app_key_rotate(tenant=tenant_a)
    assert [k.key for k in previous] == [old]
    for key in (old, new_key.key):
        client = AppClient(key)
        client.login_as(user_a)
        assert client.get("/api/v1/me").status_code == 200


def test_me_output_matches_its_documented_serializer(client_a: AppClient, user_a: User) -> None:
    from tenants.api.views import UserOutputSerializer, user_output

    User.objects.filter(pk=user_a.pk).update(handle="alice_a", display_name="Alice")
    user_a.refresh_from_db()
    assert user_output(user_a) == dict(UserOutputSerializer(user_a).data)
    client_a.login_as(user_a)
    assert client_a.get("/api/v1/me").json() == dict(UserOutputSerializer(user_a).data)
