"""The built-in asset catalogue (tenants enable the ones their app offers)."""

FIAT = [
    ("USD", "US Dollar", "$", 2), ("EUR", "Euro", "€", 2), ("GBP", "Pound Sterling", "£", 2),
    ("CHF", "Swiss Franc", "CHF", 2), ("JPY", "Yen", "¥", 0), ("BRL", "Brazilian Real", "R$", 2),
]
# (code, name, symbol, decimals, chain id, contract address)
CRYPTO = [
    ("ETH", "Ether", "ETH", 18, 1, ""),
    ("USDC:1", "USD Coin (Ethereum)", "USDC", 6, 1, "0xa0b86991c6218b36c1d19d4a2e9eb0ce3606eb48"),
    ("ETH:31337", "Ether (local dev chain)", "ETH", 18, 31337, ""),
]
