"""Small helpers for the few raw SQL statements on the hot path (PostgreSQL and SQLite)."""

from __future__ import annotations


def quote_identifier(name: str) -> str:
    """An SQL identifier in double quotes (the standard form PostgreSQL and SQLite share)."""
    return '"' + name.replace('"', '""') + '"'
