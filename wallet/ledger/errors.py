"""Ledger error codes (stable: the app branches on them)."""

from wallet.core.errors import error_class

InsufficientFunds = error_class("insufficient_funds", 409, "Insufficient funds")
AssetNotEnabled = error_class("asset_not_enabled", 400, "This asset is not offered by this app")
UnknownAsset = error_class("unknown_asset", 400, "Unknown asset")
RecipientNotFound = error_class("recipient_not_found", 404, "No user of this app has that email or handle")
RecipientIsSender = error_class("recipient_is_sender", 400, "You cannot send money to yourself")
TransferLimitExceeded = error_class("transfer_limit_exceeded", 422, "The amount exceeds the per-transfer maximum")
DailyLimitExceeded = error_class("daily_limit_exceeded", 409, "The amount exceeds your daily limit")
UnbalancedEntry = error_class("unbalanced_entry", 500, "Postings do not sum to zero")
HoldNotActive = error_class("hold_not_active", 409, "The hold is no longer active")
HoldAmountExceeded = error_class("hold_amount_exceeded", 409, "The amount exceeds what remains on the hold")
AlreadyReversed = error_class("already_reversed", 409, "This entry was already reversed")
NotReversible = error_class("not_reversible", 409, "A reversal cannot itself be reversed")
SandboxOnly = error_class("sandbox_only", 403, "Sandbox funding is disabled in production")
