"""Stream names and the channel-layer groups they are published to.

A stream is `user:<user uuid hex>` (one end user's events) or `tenant:<tenant uuid hex>` (events for a
whole tenant). Groups follow the Channels rules (ASCII letters, digits, `.-_`, under 100 characters):
`u.<tenant hex>.<user hex>` for a user stream, `t.<tenant hex>` for a tenant stream. The tenant is part of
every group name, so a socket can only ever join groups of its own tenant.
"""

from __future__ import annotations

import re
import uuid
from typing import Any

USER_PREFIX = "user:"
TENANT_PREFIX = "tenant:"
_STREAM_RE = re.compile(r"^(user|tenant):([0-9a-f]{32})$")


class InvalidStreamError(ValueError):
    """A stream name that is not `user:<32 hex>` or `tenant:<32 hex>` (or a tenant stream of another
    tenant)."""


def _hex(value: Any) -> str:
    """The 32-character lowercase hex of a UUID, a UUID string or a model instance with a UUID pk."""
    value = getattr(value, "pk", value)
    return value.hex if isinstance(value, uuid.UUID) else uuid.UUID(str(value)).hex


def user_stream(user_id: Any) -> str:
    """The stream of one end user: `user:<user uuid hex>` (accepts a UUID, its string, or a user)."""
    return USER_PREFIX + _hex(user_id)


def tenant_stream(tenant_id: Any) -> str:
    """The stream of a whole tenant: `tenant:<tenant uuid hex>` (accepts a UUID, its string, or a tenant)."""
    return TENANT_PREFIX + _hex(tenant_id)


def parse_stream(stream: str) -> tuple[str, str]:
    """`("user" | "tenant", hex)` of a well-formed stream name; raises `InvalidStreamError` otherwise."""
    match = _STREAM_RE.match(stream) if isinstance(stream, str) else None
    if match is None:
        raise InvalidStreamError(f"invalid stream {stream!r}: expected 'user:<32 hex>' or 'tenant:<32 hex>'")
    return match.group(1), match.group(2)


def user_group(tenant_id: Any, user_id: Any) -> str:
    """The group of a user's stream: `u.<tenant hex>.<user hex>` (what a user's socket joins)."""
    return f"u.{_hex(tenant_id)}.{_hex(user_id)}"


def tenant_group(tenant_id: Any) -> str:
    """The group of a tenant's stream: `t.<tenant hex>` (what every socket of the tenant joins)."""
    return f"t.{_hex(tenant_id)}"


def group_for_stream(tenant_hex: str, stream: str) -> str:
    """The group that the events of `stream` (of the tenant whose id hex is `tenant_hex`) go to."""
    kind, ident = parse_stream(stream)
    return f"u.{tenant_hex}.{ident}" if kind == "user" else f"t.{tenant_hex}"
