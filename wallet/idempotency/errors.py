"""Error codes of the Idempotency-Key layer (stable: the app branches on them).

Statuses follow the IETF httpapi draft "The Idempotency-Key HTTP Header Field": a missing key is 400, a
key reused with another request is 422, a key whose first request still runs is 409.
"""

from wallet.core.errors import error_class

IdempotencyKeyMissing = error_class(
    "idempotency_key_missing", 400, "The Idempotency-Key header is required for this operation"
)
IdempotencyKeyInvalid = error_class(
    "idempotency_key_invalid", 400, "The Idempotency-Key header must be 1 to 255 printable ASCII characters"
)
IdempotencyKeyReused = error_class(
    "idempotency_key_reused", 422, "This Idempotency-Key was already used for a different request"
)
IdempotencyKeyInFlight = error_class(
    "idempotency_key_in_flight", 409, "A request with this Idempotency-Key is still being processed"
)
