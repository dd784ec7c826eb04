"""The JSON log formatter (wallet/core/logging.py): its fast path writes what python-json-logger writes."""

from __future__ import annotations

import json
import logging
import sys
import uuid
from datetime import UTC, datetime
from decimal import Decimal
from typing import Any

import pytest
from pythonjsonlogger.json import JsonFormatter as Base

from wallet.core.logging import JsonFormatter


def _record(msg: Any = "request %s", args: tuple[Any, ...] = ("ü",), exc_info: Any = None,
            **extra: Any) -> logging.LogRecord:
    record = logging.LogRecord("wallet.request", logging.INFO, __file__, 1, msg, args, exc_info)
    record.__dict__.update(extra)
    return record


@pytest.mark.parametrize("extra", [
    {"request_id": "abc", "tenant": "t", "user": "5f1c", "method": "POST", "status": 201, "duration_ms": 12.3},
    {},  # no context at all: the fixed fields are null
    {"request_id": None, "when": datetime(2026, 11, 23, tzinfo=UTC), "id": uuid.uuid4(), "flags": [1, "a"],
     "nested": {"k": None}, "_private": "left out"},
    {"amount": Decimal("1.50")},  # orjson refuses it: python-json-logger writes it
    {"big": 2**70},  # beyond 64 bits: python-json-logger writes it
])
def test_the_fast_path_writes_what_python_json_logger_writes(extra: dict[str, Any]) -> None:
    formatter = JsonFormatter()
    fast, reference = formatter.format(_record(**extra)), Base.format(formatter, _record(**extra))
    fast_data, reference_data = json.loads(fast), json.loads(reference)
    fast_data.pop("timestamp"), reference_data.pop("timestamp")
    assert fast_data == reference_data
    assert list(json.loads(fast)) == list(json.loads(reference))  # the same keys in the same order


def test_records_with_an_exception_or_a_dict_message_go_through_python_json_logger() -> None:
    try:
        raise ValueError("boom")
    except ValueError:
        failing = _record(msg="failed", args=(), exc_info=sys.exc_info(), request_id="r")
    line = json.loads(JsonFormatter().format(failing))
    assert "ValueError: boom" in line["exc_info"] and line["message"] == "failed"
    assert json.loads(JsonFormatter().format(_record(msg={"event": "x"}, args=())))["event"] == "x"


def test_a_non_string_extra_key_is_written_as_python_json_logger_writes_it() -> None:
    record = _record()
    record.__dict__[1] = "one"
    formatter = JsonFormatter()
    assert json.loads(formatter.format(record))["1"] == "one"
