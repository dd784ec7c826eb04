"""Error codes of the balances API (stable: the app branches on them)."""

from wallet.core.errors import error_class

UnsupportedCurrency = error_class("unsupported_currency", 400, "This display currency is not supported")
BankAccountAlreadyLinked = error_class("bank_account_already_linked", 409, "This bank account is already linked")
BankAccountNotFound = error_class("bank_account_not_found", 422, "The bank does not know this account")
BankAccountNotOpen = error_class("bank_account_not_open", 422, "This bank account is not open")
BankingUnavailable = error_class("banking_unavailable", 503, "The bank could not be reached; try again")
BankingNotConfigured = error_class("banking_not_configured", 409, "This app has no banking provider")
BankCustomerTaken = error_class("bank_customer_taken", 409, "This bank customer belongs to another user")
