"""In-process periodic tasks for the embedded default (production runs Celery beat instead).

Reads the same `CELERY_BEAT_SCHEDULE` (entries whose `schedule` is a number of seconds or a timedelta)
and runs each task in process at its interval, in one daemon thread.
"""

from __future__ import annotations

import logging
import threading
import time
from datetime import timedelta
from typing import Any

from django.conf import settings

logger = logging.getLogger("wallet.scheduler")


class InProcessScheduler(threading.Thread):
    def __init__(self, schedule: dict[str, dict[str, Any]] | None = None) -> None:
        super().__init__(name="in-process-beat", daemon=True)
        self.schedule = schedule if schedule is not None else settings.CELERY_BEAT_SCHEDULE
        self.stopping = threading.Event()

    def _interval(self, entry: dict[str, Any]) -> float:
        value = entry["schedule"]
        return value.total_seconds() if isinstance(value, timedelta) else float(value)

    def run(self) -> None:
        from celery import current_app

        # Task modules are imported by a worker at start-up; in process nothing else imports them.
        current_app.loader.import_default_modules()
        due = {name: time.monotonic() + self._interval(entry) for name, entry in self.schedule.items()}
        while not self.stopping.wait(1.0):
            now = time.monotonic()
            for name, entry in self.schedule.items():
                if now < due[name]:
                    continue
                due[name] = now + self._interval(entry)
                try:
                    current_app.tasks[entry["task"]].apply(args=entry.get("args", ()),
                                                          kwargs=entry.get("kwargs", {}))
                except Exception:
                    logger.exception("scheduled task failed", extra={"task": entry["task"]})

    def stop(self) -> None:
        self.stopping.set()
