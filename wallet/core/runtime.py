"""Interpreter settings for the long-lived processes that serve money movements (web workers, writers)."""

from __future__ import annotations

import gc
import os
import sys


def process_tune(*, switch_interval_ms: float | None = None) -> None:
    """Call once the app is loaded (after `django.setup()` and the URL conf).

    - `gc.freeze()`: Django, the URL conf, the models and whatever else was loaded at start-up live as long
      as the process; frozen, they are out of every later collection's walk. A batch of 256 transfers
      allocates enough to trigger full collections, and each one walked the whole start-up heap: the
      batch's locked window went from ~70-75 ms to ~62 ms with the heap frozen (in process, PostgreSQL).
    - Collections less often (`WSGI_GC_THRESHOLD`, default 20000 container allocations between young
      collections, then 50 and 100; CPython's are 700, 10, 10; 0 keeps CPython's): a transfer request
      allocates a few thousand objects, nearly all freed by reference counting, and the young collections
      every few requests cost ~2% of a worker's CPU under bench-ledger's load (~300 ms of collections per
      worker in 15 s, ~50 ms with these thresholds, measured with `gc.callbacks`).
    - The GIL switch interval (`WSGI_SWITCH_INTERVAL_MS`, default 0.5 ms; CPython's is 5 ms): in a threaded
      worker, a thread back from I/O, such as a transfer committer returning from PostgreSQL with its
      batch's locks held, waits at most this long while another thread parses a request.
    """
    if switch_interval_ms is None:
        switch_interval_ms = float(os.environ.get("WSGI_SWITCH_INTERVAL_MS", "0.5"))
    sys.setswitchinterval(switch_interval_ms / 1000)
    threshold = int(os.environ.get("WSGI_GC_THRESHOLD", "20000"))
    if threshold > 0:
        gc.set_threshold(threshold, 50, 100)
    gc.collect()
    gc.freeze()
