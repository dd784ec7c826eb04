"""Fast JSON encoding shared by responses and logs."""

from __future__ import annotations

from typing import Any

import orjson


def _default(value: Any) -> Any:
    # Decimal, lazy translation strings and the like: their string form is the precise one.
    return str(value)


def dumps(value: Any) -> bytes:
    return orjson.dumps(value, default=_default)
