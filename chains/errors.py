"""Chains error codes (stable: the app branches on them)."""

from wallet.core.errors import error_class

ChainNotEnabled = error_class("chain_not_enabled", 404, "This chain is not offered by this app")
SiweMalformed = error_class("siwe_malformed", 400, "The sign-in message is not a valid EIP-4361 message")
SiweNonceInvalid = error_class("siwe_nonce_invalid", 400, "The nonce is unknown, used or expired")
SiweDomainMismatch = error_class("siwe_domain_mismatch", 400, "The message is for another domain")
SiweUriMismatch = error_class("siwe_uri_mismatch", 400, "The message is for another URI")
SiweChainMismatch = error_class("siwe_chain_mismatch", 400, "The message is for another chain")
SiweExpired = error_class("siwe_expired", 400, "The message has expired")
SiweNotYetValid = error_class("siwe_not_yet_valid", 400, "The message is not valid yet")
SiweSignatureInvalid = error_class("siwe_signature_invalid", 400, "The signature does not match the address")
AddressAlreadyLinked = error_class("address_already_linked", 409, "This address is already linked to an account")
DepositXpubInUse = error_class("deposit_xpub_in_use", 409,
                               "Another app already derives its deposit addresses from this xpub on this chain")
DepositAddressTaken = error_class("deposit_address_taken", 409,
                                  "Another app's key already derived this deposit address; ask the app's operator")
DepositAddressesDisabled = error_class("deposit_addresses_disabled", 409,
                                       "This app has no deposit addresses on this chain")
TransactionMalformed = error_class("transaction_malformed", 400, "The raw transaction cannot be decoded")
TransactionWrongChain = error_class("transaction_wrong_chain", 400, "The transaction is signed for another chain")
TransactionSenderNotLinked = error_class("transaction_sender_not_linked", 403,
                                         "The transaction's sender is not one of your linked addresses")
TransactionRejected = error_class("transaction_rejected", 422, "The node refused the transaction")
ChainUnavailable = error_class("chain_unavailable", 503, "The chain's RPC endpoints do not answer")
ActivityDirectionInvalid = error_class("activity_direction_invalid", 400, "direction must be `in` or `out`")
