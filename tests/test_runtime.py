"""Interpreter settings of the serving processes (wallet/core/runtime.py)."""

from __future__ import annotations

import subprocess
import sys

import pytest


@pytest.mark.parametrize(("env", "expected"), [
    ({}, "(20000, 50, 100) 0.0005 True"),
    ({"WSGI_GC_THRESHOLD": "0", "WSGI_SWITCH_INTERVAL_MS": "2"}, "(700, 10, 10) 0.002 True"),
])
def test_process_tune_freezes_the_heap_and_sets_the_collector_and_the_switch_interval(
        env: dict[str, str], expected: str) -> None:
    code = ("import gc, sys; from wallet.core.runtime import process_tune; process_tune(); "
            "print(gc.get_threshold(), sys.getswitchinterval(), gc.get_freeze_count() > 0)")
    out = subprocess.run([sys.executable, "-c", code], env={**_base_env(), **env}, capture_output=True, text=True,
                         check=True)
    assert out.stdout.strip() == expected


def _base_env() -> dict[str, str]:
    import os

    return {key: value for key, value in os.environ.items() if not key.startswith("WSGI_")}
