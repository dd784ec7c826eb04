"""OpenAPI: the required `Idempotency-Key` header, as drf-spectacular parameters.

`@idempotent` attaches it to the operations it decorates; `idempotency_key_parameter` is there for any
other operation that needs it: `@extend_schema(parameters=[idempotency_key_parameter])`.
"""

from __future__ import annotations

from drf_spectacular.utils import OpenApiParameter

from wallet.idempotency.fingerprint import HEADER, MAX_KEY_LENGTH, REPLAYED_HEADER

IDEMPOTENCY_DESCRIPTION = (
    "A unique key per operation (a UUID is a good choice), sent again unchanged when the request is retried. "
    f"A structured-field string (`\"…\"`) or the bare value, 1 to {MAX_KEY_LENGTH} printable ASCII characters, "
    "scoped to the signed-in user. The first response (status and body) is kept at least 24 hours and a "
    f"retry gets it again with `{REPLAYED_HEADER}: true`. Errors: 400 `idempotency_key_missing`, "
    "400 `idempotency_key_invalid`, 422 `idempotency_key_reused` (same key, different method, path or "
    "body), 409 `idempotency_key_in_flight` (the first request is still running; retry shortly), 503 "
    "`outcome_unknown` (the database connection failed while the request ran: retry with the same key, which "
    "answers what happened)."
)

idempotency_key_parameter = OpenApiParameter(
    name=HEADER,
    location=OpenApiParameter.HEADER,
    required=True,
    type={"type": "string", "minLength": 1, "maxLength": MAX_KEY_LENGTH},
    description=IDEMPOTENCY_DESCRIPTION,
)
