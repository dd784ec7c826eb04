"""Adapters for the outside world the balances app reads: banking (external fiat accounts) and prices/FX.

Each kind has a typed Protocol, a sandbox adapter (no network) and a real HTTP adapter; every adapter
raises only `ProviderError` subclasses (see `errors`), and every call has a timeout.
"""
