"""Access tokens: EdDSA (Ed25519) JWTs, verified against an allow-list of exactly one algorithm.

Only `EdDSA` is accepted, so `alg: none` and HMAC-with-the-public-key confusion are refused before any
key is used. Issuer, audience, expiry and the token type are checked; the key id (`kid`) selects the
current key or a previous one still accepted during rotation.
"""

from __future__ import annotations

import base64
import hashlib
import uuid
from dataclasses import dataclass
from datetime import UTC, datetime
from functools import lru_cache
from typing import Any

import jwt
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey
from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat
from django.conf import settings

from tenants.errors import TokenExpired, TokenInvalid

ALGORITHM = "EdDSA"
ACCESS_TYPE = "access"


@dataclass(frozen=True)
class SigningKey:
    kid: str
    private: Ed25519PrivateKey
    public: Ed25519PublicKey


def _seed(value: str) -> bytes:
    padded = value + "=" * (-len(value) % 4)
    seed = base64.urlsafe_b64decode(padded)
    if len(seed) != 32:
        raise ValueError("JWT signing keys are base64url-encoded 32-byte Ed25519 seeds")
    return seed


def _key_from_seed(seed: bytes) -> SigningKey:
    private = Ed25519PrivateKey.from_private_bytes(seed)
    public = private.public_key()
    raw = public.public_bytes(Encoding.Raw, PublicFormat.Raw)
    return SigningKey(kid=hashlib.sha256(raw).hexdigest()[:16], private=private, public=public)


@lru_cache(maxsize=8)
def _keys(signing: str, previous: tuple[str, ...], secret_key: str) -> tuple[SigningKey, dict[str, Any]]:
    if signing:
        current = _key_from_seed(_seed(signing))
    else:
        current = _key_from_seed(hashlib.sha256(b"wallet-bff/jwt/" + secret_key.encode()).digest())
    verify = {current.kid: current.public}
    for value in previous:
        key = _key_from_seed(_seed(value))
        verify[key.kid] = key.public
    return current, verify


def keys() -> tuple[SigningKey, dict[str, Any]]:
    return _keys(settings.JWT_SIGNING_KEY, tuple(settings.JWT_PREVIOUS_SIGNING_KEYS), settings.SECRET_KEY)


def public_jwks() -> dict[str, Any]:
    """The verification keys as a JWK set (for services that verify our tokens themselves)."""
    _, verify = keys()
    out = []
    for kid, public in verify.items():
        raw = public.public_bytes(Encoding.Raw, PublicFormat.Raw)
        out.append({"kty": "OKP", "crv": "Ed25519", "alg": ALGORITHM, "use": "sig", "kid": kid,
                    "x": base64.urlsafe_b64encode(raw).rstrip(b"=").decode()})
    return {"keys": out}


def issue_access_token(*, user_id: str, tenant_id: str, session_id: str, auth_epoch: int,
                       now: datetime | None = None) -> tuple[str, datetime]:
    """Sign an access token for one user of one tenant; returns the token and its expiry."""
    current, _ = keys()
    issued = now or datetime.now(tz=UTC)
    expires = issued + settings.JWT_ACCESS_TTL
    claims = {
        "iss": settings.JWT_ISSUER,
        "aud": settings.JWT_AUDIENCE,
        "sub": user_id,
        "tid": tenant_id,
        "sid": session_id,
        "ep": auth_epoch,
        "typ": ACCESS_TYPE,
        "iat": int(issued.timestamp()),
        "nbf": int(issued.timestamp()),
        "exp": int(expires.timestamp()),
        "jti": uuid.uuid4().hex,
    }
    token = jwt.encode(claims, current.private, algorithm=ALGORITHM, headers={"kid": current.kid})
    return token, expires


_REQUIRED = ["exp", "iat", "nbf", "iss", "aud", "sub", "tid", "sid", "typ", "ep"]


def decode_access_token(token: str) -> dict[str, Any]:
    """Verify signature, algorithm, issuer, audience, time claims and type; return the claims."""
    _, verify = keys()
    try:
        header = jwt.get_unverified_header(token)
    except jwt.PyJWTError as exc:
        raise TokenInvalid() from exc
    if header.get("alg") != ALGORITHM:
        raise TokenInvalid("Unsupported token algorithm.")
    public = verify.get(header.get("kid", ""))
    if public is None:
        raise TokenInvalid("Unknown signing key.")
    try:
        claims = jwt.decode(
            token, public, algorithms=[ALGORITHM], audience=settings.JWT_AUDIENCE,
            issuer=settings.JWT_ISSUER, leeway=settings.JWT_LEEWAY_SECONDS,
            options={"require": _REQUIRED},
        )
    except jwt.ExpiredSignatureError as exc:
        raise TokenExpired() from exc
    except jwt.PyJWTError as exc:
        raise TokenInvalid() from exc
    if claims.get("typ") != ACCESS_TYPE:
        raise TokenInvalid("Not an access token.")
    return claims


class _VerifiedTokenCache:
    """Remembers tokens whose signature already verified in this process (Ed25519 verification costs
    ~140 us here; an app reuses one access token for minutes). Expiry is still checked on every hit;
    revocation is checked by the caller against the database on every request."""

    def __init__(self, max_entries: int = 20_000) -> None:
        self.max_entries = max_entries
        self._entries: dict[str, dict[str, Any]] = {}

    def get(self, token: str) -> dict[str, Any] | None:
        claims = self._entries.get(token)
        if claims is None:
            return None
        if claims["exp"] + settings.JWT_LEEWAY_SECONDS < datetime.now(tz=UTC).timestamp():
            self._entries.pop(token, None)
            raise TokenExpired()
        return claims

    def put(self, token: str, claims: dict[str, Any]) -> None:
        if len(self._entries) >= self.max_entries:
            self._entries.clear()  # cheap and bounded; the next requests re-verify
        self._entries[token] = claims

    def clear(self) -> None:
        self._entries.clear()


verified_tokens = _VerifiedTokenCache()


def verify_access_token(token: str) -> dict[str, Any]:
    """`decode_access_token` with the per-process cache of verified signatures."""
    claims = verified_tokens.get(token)
    if claims is None:
        claims = decode_access_token(token)
        verified_tokens.put(token, claims)
    return claims
