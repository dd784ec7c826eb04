"""`manage.py relay_outbox`: the outbox relay as its own process (production, with Redis).

Publishes committed outbox events to the channel layer until SIGTERM or SIGINT, woken by PostgreSQL
LISTEN/NOTIFY with a poll fallback. Several may run: one holds the lock and works, the others stand by.
"""

from __future__ import annotations

import signal
import threading
from typing import Any

from django.core.management.base import BaseCommand, CommandParser

from wallet.events import conf
from wallet.events.relay import relay_forever, relay_once


class Command(BaseCommand):
    help = "Publish committed outbox events to the channel layer (runs until SIGTERM/SIGINT)."

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument("--once", action="store_true",
                            help="Publish what is pending (batch after batch) and exit.")
        parser.add_argument("--poll", type=float, default=None,
                            help="Poll interval in seconds (default: OUTBOX_POLL_SECONDS, 1.0).")
        parser.add_argument("--batch-size", type=int, default=None,
                            help="Events per batch (default: OUTBOX_RELAY_BATCH_SIZE, 500).")
        parser.add_argument("--no-listen", action="store_true",
                            help="Poll only, without PostgreSQL LISTEN/NOTIFY.")

    def handle(self, *args: Any, once: bool, poll: float | None, batch_size: int | None, no_listen: bool,
               **options: Any) -> None:
        if once:
            limit = batch_size or conf.relay_batch_size()
            total = 0
            while (count := relay_once(limit=limit)) > 0:
                total += count
                if count < limit:
                    break
            self.stdout.write(f"published {total} event(s)")
            return
        stop_event = threading.Event()

        def stop(signum: int, frame: Any) -> None:
            stop_event.set()

        signal.signal(signal.SIGTERM, stop)
        signal.signal(signal.SIGINT, stop)
        self.stdout.write("outbox relay running; SIGTERM or Ctrl-C stops it")
        self.stdout.flush()
        relay_forever(stop_event, poll_seconds=poll, batch_size=batch_size, listen=False if no_listen else None)
