"""Error codes of the Idempotency-Key layer (stable: the app branches on them).

Statuses follow the IETF httpapi draft "The Idempotency-Key HTTP Header Field": a missing key is 400, a
key reused with another request is 422, a key whose first request still runs is 409.
"""

from wallet.core.errors import ServiceUnavailable, error_class

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


class OutcomeUnknown(ServiceUnavailable):
    """The database connection broke (or the database could not be reached) while the request ran: its
    transaction committed or it did not, and only the key's record can tell. A retry with the same
    Idempotency-Key replays the answer if it committed and runs the request if it did not, so the client is
    told to do exactly that (rather than a 500, after which a client might retry with a new key)."""

    code = "outcome_unknown"
    title = "The database connection failed while the request ran; retry it with the same Idempotency-Key"

    def __init__(self, retry_after: int = 1) -> None:
        super().__init__(retry_after=retry_after)
        self.headers["Retry-After"] = str(retry_after)
