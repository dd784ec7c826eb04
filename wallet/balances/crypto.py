"""Encryption at rest of provider credentials: MultiFernet over the keys in `BALANCES_CREDENTIAL_KEYS`.

The first key encrypts; every key decrypts, so rotation is: put a new key first, keep the old ones,
run `manage.py balances_rotate_credentials` (re-encrypts every row with the first key), then drop the
old keys. Without the variable (development, tests) one key is derived from SECRET_KEY; production
settings refuse to run without it.
"""

from __future__ import annotations

import base64
import hashlib
import json
from typing import Any

from cryptography.fernet import Fernet, InvalidToken, MultiFernet
from django.conf import settings
from django.core.exceptions import ImproperlyConfigured

from wallet.balances import conf

__all__ = ["InvalidToken", "credentials_decrypt", "credentials_encrypt", "credentials_rotate_token", "fernet"]


def _derived_key() -> bytes:
    digest = hashlib.sha256(b"wallet.balances.credentials:" + settings.SECRET_KEY.encode()).digest()
    return base64.urlsafe_b64encode(digest)


def fernet() -> MultiFernet:
    """The MultiFernet of the configured keys (read on every call: rotation needs no restart)."""
    raw = [key.strip() for key in conf.credential_keys().split(",") if key.strip()]
    if not raw:
        if getattr(settings, "PRODUCTION", False):
            raise ImproperlyConfigured("BALANCES_CREDENTIAL_KEYS must be set in production")
        raw = [_derived_key().decode()]
    try:
        return MultiFernet([Fernet(key.encode()) for key in raw])
    except ValueError as exc:
        raise ImproperlyConfigured(f"BALANCES_CREDENTIAL_KEYS holds a key that is not a Fernet key: {exc}") from exc


def credentials_encrypt(credentials: dict[str, Any]) -> str:
    """A token for `credentials` (empty dict: empty string)."""
    if not credentials:
        return ""
    return fernet().encrypt(json.dumps(credentials, sort_keys=True).encode()).decode()


def credentials_decrypt(token: str) -> dict[str, Any]:
    """The credentials in `token`; raises `InvalidToken` when no configured key opens it."""
    if not token:
        return {}
    return json.loads(fernet().decrypt(token.encode()))


def credentials_rotate_token(token: str) -> str:
    """`token` re-encrypted with the first key (MultiFernet.rotate)."""
    if not token:
        return ""
    return fernet().rotate(token.encode()).decode()
