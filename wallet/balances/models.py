"""Models of the balances app."""
