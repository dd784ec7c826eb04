"""The key itself (header syntax and validation) and the fingerprint of the request it was used for.

Header syntax: the draft defines `Idempotency-Key` as an RFC 8941 sf-string (`Idempotency-Key: "abc"`).
Most clients in the wild (Stripe's libraries among them) send the bare value (`Idempotency-Key: abc`), so
both are accepted and mean the same key. Either way the key is 1 to 255 printable ASCII characters.

Fingerprint: SHA-256 over the method, the path, the query string (parameters sorted by name) and the body.
A JSON body is parsed and re-serialised canonically (keys sorted, no insignificant whitespace, numbers
kept exactly as written), so whitespace and key order do not make a retry look like another request; any
other body is hashed as raw bytes.
"""

from __future__ import annotations

import hashlib
import json
from decimal import Decimal
from typing import Any
from urllib.parse import parse_qsl, urlencode

from wallet.idempotency.errors import IdempotencyKeyInvalid, IdempotencyKeyMissing

HEADER = "Idempotency-Key"
HEADER_META = "HTTP_IDEMPOTENCY_KEY"
REPLAYED_HEADER = "Idempotent-Replayed"
MAX_KEY_LENGTH = 255

_PRINTABLE = frozenset(chr(code) for code in range(0x20, 0x7F))


def validate_idempotency_key(key: str) -> str:
    """Return `key` if it is 1-255 printable ASCII characters; raise 400 `idempotency_key_invalid`."""
    if not key:
        raise IdempotencyKeyInvalid("The Idempotency-Key header is empty.")
    if len(key) > MAX_KEY_LENGTH:
        raise IdempotencyKeyInvalid(f"The Idempotency-Key may not exceed {MAX_KEY_LENGTH} characters.",
                                    max_length=MAX_KEY_LENGTH)
    if not _PRINTABLE.issuperset(key):
        raise IdempotencyKeyInvalid("The Idempotency-Key may contain only printable ASCII characters.")
    return key


def _unquote_sf_string(value: str) -> str:
    """The content of an RFC 8941 sf-string (`"..."` with `\\"` and `\\\\` escapes)."""
    out: list[str] = []
    index, end = 1, len(value)
    while index < end:
        char = value[index]
        if char == "\\":
            if index + 1 >= end or value[index + 1] not in '"\\':
                raise IdempotencyKeyInvalid("The Idempotency-Key is not a valid structured-field string.")
            out.append(value[index + 1])
            index += 2
            continue
        if char == '"':
            if index != end - 1:  # text after the closing quote, e.g. two keys: "a", "b"
                raise IdempotencyKeyInvalid("Send exactly one Idempotency-Key.")
            return "".join(out)
        out.append(char)
        index += 1
    raise IdempotencyKeyInvalid("The Idempotency-Key string has no closing quote.")


def parse_idempotency_key(header_value: str | None) -> str:
    """The key carried by an `Idempotency-Key` header value (sf-string or bare), validated.

    Raises 400 `idempotency_key_missing` when there is no header and 400 `idempotency_key_invalid` when
    it is empty, too long or not printable ASCII.
    """
    if header_value is None:
        raise IdempotencyKeyMissing()
    value = header_value.strip(" \t")
    if value.startswith('"'):
        value = _unquote_sf_string(value)
    elif '"' in value or "\\" in value:
        raise IdempotencyKeyInvalid("The Idempotency-Key is not a valid structured-field string.")
    return validate_idempotency_key(value)


def key_digest(key: str) -> str:
    """Hex SHA-256 of a key: what leaves the database (Redis lock names), never the key itself."""
    return hashlib.sha256(key.encode("ascii")).hexdigest()


# --- fingerprint -------------------------------------------------------------------------------------------


class _NotJson(ValueError):
    pass


def _reject_constant(name: str) -> Any:
    raise _NotJson(name)  # NaN, Infinity: not JSON


def _canonical(value: Any, out: list[str]) -> None:
    if isinstance(value, dict):
        out.append("{")
        for position, name in enumerate(sorted(value)):
            if position:
                out.append(",")
            out.append(json.dumps(name))
            out.append(":")
            _canonical(value[name], out)
        out.append("}")
    elif isinstance(value, list):
        out.append("[")
        for position, item in enumerate(value):
            if position:
                out.append(",")
            _canonical(item, out)
        out.append("]")
    elif isinstance(value, str):
        out.append(json.dumps(value))  # ensure_ascii: every escape spelling of a character is the same
    elif value is True:
        out.append("true")
    elif value is False:
        out.append("false")
    elif value is None:
        out.append("null")
    else:  # int or Decimal: exactly as written (1.50 stays 1.50, no float rounding)
        out.append(str(value))


def canonical_body(body: bytes) -> bytes:
    """A JSON body in canonical form (prefixed `json:`), any other body as it is (prefixed `raw:`)."""
    if not body:
        return b""
    try:
        return canonical_parsed(json.loads(body, parse_float=Decimal, parse_constant=_reject_constant))
    except (ValueError, RecursionError):  # not JSON (or absurdly deep): the raw bytes are the identity
        return b"raw:" + body


def canonical_parsed(value: Any) -> bytes:
    """`canonical_body(body)` from `value`, the body already parsed as `canonical_body` parses it (JSON
    with Decimal floats); the caller skips a second parse."""
    out: list[str] = []
    _canonical(value, out)
    return b"json:" + "".join(out).encode("ascii")


def canonical_data(data: Any) -> bytes:
    """Canonical form of an already parsed body (used when the raw body can no longer be read)."""
    out: list[str] = []
    _canonical(json.loads(json.dumps(data, default=str), parse_float=Decimal), out)
    return b"json:" + "".join(out).encode("ascii")


def canonical_query(query_string: str) -> str:
    """Query parameters sorted by name (the order of repeated values is kept: it may matter)."""
    if not query_string:
        return ""
    pairs = parse_qsl(query_string, keep_blank_values=True)
    return urlencode(sorted(pairs, key=lambda pair: pair[0]))


def request_fingerprint(*, method: str, path: str, body: bytes, query_string: str = "",
                        canonical: bytes | None = None) -> str:
    """Hex SHA-256 identifying a request: method, path, sorted query and canonical body.

    Each part is length-prefixed, so no two different requests can run together into the same input.
    `canonical` replaces `canonical_body(body)` when the caller already has it.
    """
    parts = (
        method.upper().encode("ascii"),
        path.encode("utf-8", "surrogateescape"),
        canonical_query(query_string).encode("utf-8", "surrogateescape"),
        canonical_body(body) if canonical is None else canonical,
    )
    digest = hashlib.sha256(b"idempotency-fingerprint-v1")
    for part in parts:
        digest.update(b"%d:" % len(part))
        digest.update(part)
    return digest.hexdigest()


def advisory_lock_id(*, tenant_id: Any, user_id: Any, key: str) -> int:
    """A signed 64-bit PostgreSQL advisory lock id for (tenant, user, key).

    A collision between two different keys could only make one of two simultaneous requests answer 409
    (a retryable answer), never skip a check: the record's unique constraint stays the final arbiter.
    """
    material = f"idempotency\0{tenant_id}\0{user_id}\0{key}".encode()
    return int.from_bytes(hashlib.sha256(material).digest()[:8], "big", signed=True)
