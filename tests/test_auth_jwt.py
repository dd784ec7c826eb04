"""JWT attacks: every forged, misdirected, expired or replayed token gets 401."""

from __future__ import annotations

import base64
import json
import time
from datetime import UTC, datetime, timedelta

import jwt
import pytest
from cryptography.hazmat.primitives.asymmetric import rsa
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat

from tenants.auth.jwt import issue_access_token, keys
from tenants.models import User
from tests.conftest import AppClient


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def _claims_of(user: User, session_id: str = "00000000-0000-0000-0000-000000000000") -> dict:
    now = int(time.time())
    return {
        "iss": "wallet-bff", "aud": "wallet-app", "sub": str(user.pk), "tid": str(user.tenant_id),
        "sid": session_id, "ep": user.auth_epoch, "typ": "access", "iat": now, "nbf": now, "exp": now + 300,
        "jti": "x",
    }


def _me(client: AppClient, token: str):
    client.credentials(HTTP_X_APP_KEY=client.app_key, HTTP_AUTHORIZATION=f"Bearer {token}")
    return client.get("/api/v1/me")


@pytest.fixture
def live(client_a: AppClient, user_a: User) -> dict:
    """A genuine token pair of user A (its session is live)."""
    pair = client_a.login_as(user_a)
    claims = jwt.decode(pair["access"], options={"verify_signature": False})
    return {"pair": pair, "claims": claims}


def test_genuine_token_is_accepted(client_a: AppClient, live: dict) -> None:
    assert _me(client_a, live["pair"]["access"]).status_code == 200


def test_alg_none_is_refused(client_a: AppClient, live: dict) -> None:
    header = _b64(json.dumps({"alg": "none", "typ": "JWT"}).encode())
    payload = _b64(json.dumps(live["claims"]).encode())
    response = _me(client_a, f"{header}.{payload}.")
    assert response.status_code == 401
    assert response.json()["code"] == "token_invalid"


def test_hmac_signed_with_the_public_key_is_refused(client_a: AppClient, live: dict) -> None:
    # The classic confusion: sign HS256 using the server's public key as the HMAC secret.
    current, _ = keys()
    raw_public = current.public.public_bytes(Encoding.Raw, PublicFormat.Raw)
    pem_public = current.public.public_bytes(Encoding.PEM, PublicFormat.SubjectPublicKeyInfo)
    for secret in (raw_public, pem_public):
        header = _b64(json.dumps({"alg": "HS256", "typ": "JWT", "kid": current.kid}).encode())
        payload = _b64(json.dumps(live["claims"]).encode())
        import hashlib
        import hmac

        signature = _b64(hmac.new(secret, f"{header}.{payload}".encode(), hashlib.sha256).digest())
        response = _me(client_a, f"{header}.{payload}.{signature}")
        assert response.status_code == 401
        assert response.json()["code"] == "token_invalid"


def test_rs256_with_an_attacker_key_is_refused(client_a: AppClient, live: dict) -> None:
    attacker = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    token = jwt.encode(live["claims"], attacker, algorithm="RS256", headers={"kid": keys()[0].kid})
    response = _me(client_a, token)
    assert response.status_code == 401
    assert response.json()["code"] == "token_invalid"


def test_eddsa_with_an_attacker_key_is_refused(client_a: AppClient, live: dict) -> None:
    attacker = Ed25519PrivateKey.generate()
    token = jwt.encode(live["claims"], attacker, algorithm="EdDSA", headers={"kid": keys()[0].kid})
    assert _me(client_a, token).status_code == 401


def test_tampered_payload_is_refused(client_a: AppClient, live: dict, tenant_a) -> None:
    header, _, signature = live["pair"]["access"].split(".")
    claims = dict(live["claims"], sub="01a20000-0000-7000-8000-000000000000")
    payload = _b64(json.dumps(claims).encode())
    assert _me(client_a, f"{header}.{payload}.{signature}").status_code == 401


@pytest.mark.parametrize(("claim", "value"), [("aud", "someone-else"), ("iss", "evil"), ("typ", "refresh")])
def test_wrong_audience_issuer_or_type_is_refused(client_a: AppClient, live: dict, claim: str, value: str) -> None:
    current, _ = keys()
    claims = dict(live["claims"], **{claim: value})
    token = jwt.encode(claims, current.private, algorithm="EdDSA", headers={"kid": current.kid})
    response = _me(client_a, token)
    assert response.status_code == 401
    assert response.json()["code"] == "token_invalid"


def test_missing_required_claim_is_refused(client_a: AppClient, live: dict) -> None:
    current, _ = keys()
    claims = {k: v for k, v in live["claims"].items() if k != "tid"}
    token = jwt.encode(claims, current.private, algorithm="EdDSA", headers={"kid": current.kid})
    assert _me(client_a, token).status_code == 401


def test_expired_token_is_refused(client_a: AppClient, user_a: User, live: dict) -> None:
    token, _ = issue_access_token(
        user_id=str(user_a.pk), tenant_id=str(user_a.tenant_id), session_id=live["claims"]["sid"],
        auth_epoch=0, now=datetime.now(tz=UTC) - timedelta(hours=1),
    )
    response = _me(client_a, token)
    assert response.status_code == 401
    assert response.json()["code"] == "token_expired"


def test_another_tenants_token_is_refused(client_b: AppClient, live: dict) -> None:
    response = _me(client_b, live["pair"]["access"])
    assert response.status_code == 401
    assert response.json()["code"] == "token_tenant_mismatch"


def test_unknown_key_id_is_refused(client_a: AppClient, live: dict) -> None:
    current, _ = keys()
    token = jwt.encode(live["claims"], current.private, algorithm="EdDSA", headers={"kid": "0000000000000000"})
    assert _me(client_a, token).status_code == 401


def test_previous_signing_key_still_verifies_during_rotation(client_a: AppClient, user_a: User, settings,
                                                             live: dict) -> None:
    old_seed = _b64(b"\x01" * 32)
    new_seed = _b64(b"\x02" * 32)
    settings.JWT_SIGNING_KEY = old_seed
    old_token, _ = issue_access_token(user_id=str(user_a.pk), tenant_id=str(user_a.tenant_id),
                                      session_id=live["claims"]["sid"], auth_epoch=0)
    settings.JWT_SIGNING_KEY = new_seed
    assert _me(client_a, old_token).status_code == 401  # old key no longer trusted
    settings.JWT_PREVIOUS_SIGNING_KEYS = [old_seed]
    assert _me(client_a, old_token).status_code == 200


def test_reused_refresh_token_revokes_the_whole_family(client_a: AppClient, live: dict) -> None:
    client_a.credentials(HTTP_X_APP_KEY=client_a.app_key)
    first = live["pair"]["refresh"]
    rotated = client_a.post("/api/v1/auth/token/refresh", {"refresh": first}, format="json")
    assert rotated.status_code == 200
    second = rotated.json()

    replay = client_a.post("/api/v1/auth/token/refresh", {"refresh": first}, format="json")
    assert replay.status_code == 401
    assert replay.json()["code"] == "refresh_token_reused"

    # The thief's and the owner's newer tokens are dead too.
    after = client_a.post("/api/v1/auth/token/refresh", {"refresh": second["refresh"]}, format="json")
    assert after.status_code == 401
    assert after.json()["code"] == "token_revoked"
    assert _me(client_a, second["access"]).status_code == 401
    assert _me(client_a, live["pair"]["access"]).status_code == 401


def test_refresh_token_of_another_tenant_is_refused(client_b: AppClient, live: dict) -> None:
    response = client_b.post("/api/v1/auth/token/refresh", {"refresh": live["pair"]["refresh"]}, format="json")
    assert response.status_code == 401
    assert response.json()["code"] == "token_tenant_mismatch"


def test_malformed_authorization_header_is_refused(client_a: AppClient, live: dict) -> None:
    client_a.credentials(HTTP_X_APP_KEY=client_a.app_key, HTTP_AUTHORIZATION="Basic abc")
    assert client_a.get("/api/v1/me").status_code == 401
    client_a.credentials(HTTP_X_APP_KEY=client_a.app_key, HTTP_AUTHORIZATION="Bearer not.a.jwt")
    assert client_a.get("/api/v1/me").status_code == 401
    client_a.credentials(HTTP_X_APP_KEY=client_a.app_key)
    response = client_a.get("/api/v1/me")
    assert response.status_code == 401
    assert response.json()["code"] == "not_authenticated"


def test_the_auth_cache_drops_expired_entries(monkeypatch: pytest.MonkeyPatch, settings) -> None:
    """A long-lived process (the stream's) must not keep a user copy per socket it ever authenticated."""
    from tenants.auth import sessions

    settings.AUTH_CACHE_SECONDS = 2
    cache = sessions._AuthStateCache()
    clock = [1000.0]
    monkeypatch.setattr(sessions.time, "monotonic", lambda: clock[0])
    for i in range(50):
        cache.put((f"s{i}", "u", "t"), User(email=f"{i}@example.com"))
    assert len(cache._entries) == 50
    clock[0] += 3  # all expired
    cache.put(("fresh", "u", "t"), User(email="fresh@example.com"))
    assert list(cache._entries) == [("fresh", "u", "t")]
    assert cache.get(("fresh", "u", "t")).email == "fresh@example.com"
