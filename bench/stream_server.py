"""The stream server of bench/stream.py: `python -m uvicorn ARGS` plus a record of garbage-collector pauses.

    python bench/stream_server.py GC_STATS_FILE UVICORN_ARGS...

runs uvicorn's own command line (`uvicorn.main.main`) with UVICORN_ARGS, exactly as `python -m uvicorn
UVICORN_ARGS` would, in the same process; the only addition is a `gc.callbacks` hook that times every
collection, and a daemon thread that writes the totals to GC_STATS_FILE twice a second (JSON, replaced
atomically): per generation the number of collections, their total and their longest pause in ms.

Why: a full (generation 2) collection walks every tracked object of the process, so its pause grows with the
number of sockets held, and it stops the event loop, i.e. every delivery, while it runs. The callback costs
two Python calls per collection (a few microseconds each; collections happen at most a few thousand times a
second under load).

Options (environment), for diagnosis only: BENCH_STREAM_GC_FREEZE=1 loads the app, collects and calls
`gc.freeze()` before serving (what the stream process could do at start-up); BENCH_STREAM_GC_THRESHOLD=a,b,c
calls `gc.set_threshold(a, b, c)` before serving (CPython's default is 700,10,10); BENCH_STREAM_TRACEMALLOC=1 traces
allocations (slow) so that bench/stream.py can dump snapshots. The benchmark also asks, through a request file
beside the stats file, for a census of the tracked objects (`gc.get_objects()`, a pause of its own: it is
asked for outside the measured windows).
"""

from __future__ import annotations

import gc
import json
import os
import sys
import threading
import time
import tracemalloc
from collections import Counter
from pathlib import Path

_started: list[float] = [0.0]
_stats = {str(generation): {"count": 0, "total_ms": 0.0, "max_ms": 0.0} for generation in range(3)}


def _on_gc(phase: str, info: dict) -> None:
    if phase == "start":
        _started[0] = time.perf_counter()
        return
    elapsed = 1000 * (time.perf_counter() - _started[0])
    entry = _stats[str(info["generation"])]
    entry["count"] += 1
    entry["total_ms"] += elapsed
    if elapsed > entry["max_ms"]:
        entry["max_ms"] = elapsed


def _census() -> dict:
    """Objects tracked by the collector, per generation and frozen, and the 12 most common types (frozen ones
    included: the stream process freezes settled sockets, so the count is per socket whatever their state)."""
    frozen = gc.get_freeze_count()
    if frozen:
        gc.unfreeze()  # into the oldest generation, to be counted; frozen again below
    counts = {str(generation): len(gc.get_objects(generation)) for generation in range(3)}
    types = Counter(type(o).__name__ for o in gc.get_objects())
    if frozen:
        gc.freeze()
    return {"tracked": counts, "frozen": frozen, "types": types.most_common(12)}


def _answer(request: Path) -> None:
    """Requests from the benchmark, as files beside the stats file: `census` (see `_census`), or
    `snapshot` (tracemalloc, when BENCH_STREAM_TRACEMALLOC=1: the allocations alive now, by line)."""
    kind = request.read_text().strip()
    out = request.with_suffix(".answer")
    if kind == "census":
        answer = _census()
    elif kind == "thaw":
        # What the stream's GcPolicy does after STREAM_GC_THAW_CLOSED closed sockets: its pause, timed.
        started = time.perf_counter()
        gc.unfreeze()
        collected = gc.collect()
        gc.freeze()
        answer = {"ms": 1000 * (time.perf_counter() - started), "collected": collected,
                  "frozen": gc.get_freeze_count()}
    elif kind.startswith("snapshot ") and tracemalloc.is_tracing():
        tracemalloc.take_snapshot().dump(kind.split(" ", 1)[1])
        answer = {"dumped": kind.split(" ", 1)[1]}
    else:
        answer = {"error": f"unknown request {kind!r}"}
    request.unlink()
    temporary = out.with_suffix(".tmp")
    temporary.write_text(json.dumps(answer))
    os.replace(temporary, out)


def _writer(path: Path) -> None:
    temporary = path.with_suffix(".tmp")
    request = path.with_suffix(".request")
    written = None
    while True:
        time.sleep(0.5)
        snapshot = {generation: dict(values) for generation, values in _stats.items()}
        if snapshot != written:
            temporary.write_text(json.dumps(snapshot))
            os.replace(temporary, path)
            written = snapshot
        if request.exists():
            _answer(request)


def main() -> None:
    path = Path(sys.argv[1])
    gc.callbacks.append(_on_gc)
    freeze = os.environ.get("BENCH_STREAM_GC_FREEZE") == "1"
    trace = os.environ.get("BENCH_STREAM_TRACEMALLOC") == "1"
    if freeze or trace:
        # Load the app (Django setup, every import) before uvicorn does (it then finds it in sys.modules).
        sys.path.insert(0, os.getcwd())
        import wallet.asgi  # noqa: F401
    if freeze:
        # The suggested fix, tried from outside the app: move everything alive after start-up into the
        # permanent generation, which collections no longer walk.
        gc.collect()
        gc.freeze()
    threshold = os.environ.get("BENCH_STREAM_GC_THRESHOLD", "")
    if threshold:
        # The other suggested fix: fewer young collections (objects get time to die before promotion) and at
        # most one full collection per `threshold2` collections of generation 1.
        gc.set_threshold(*(int(x) for x in threshold.split(",")))
    if trace:
        tracemalloc.start(8)  # after start-up: what the sockets allocate, not the imports
    threading.Thread(target=_writer, args=(path,), daemon=True, name="gc-stats").start()
    from uvicorn.main import main as uvicorn_main

    sys.argv = ["uvicorn", *sys.argv[2:]]
    uvicorn_main()


if __name__ == "__main__":
    main()
