"""`manage.py serve`: the whole product in one process (the embedded default of `make run`).

HTTP and websockets through uvicorn on the ASGI application, periodic tasks in process. Ctrl-C stops it
all. Production runs granian (HTTP, WSGI), daphne/uvicorn (websockets), Celery workers and beat instead.
"""

from __future__ import annotations

from typing import Any

from django.conf import settings
from django.core.management.base import BaseCommand, CommandParser


class Command(BaseCommand):
    help = "Serve HTTP and websockets in one process, with periodic tasks in process."

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument("--host", default="127.0.0.1")
        parser.add_argument("--port", type=int, default=8000)

    def handle(self, *args: Any, host: str, port: int, **options: Any) -> None:
        import warnings

        import uvicorn

        # WhiteNoise serves the admin's static files through sync iterators in development; harmless.
        warnings.filterwarnings("ignore", message="StreamingHttpResponse must consume synchronous")

        from wallet.core.scheduler import InProcessScheduler
        from wallet.events.conf import STREAM_UVICORN_OPTIONS

        base = f"http://{host}:{port}"
        self.stdout.write(
            "\nWallet BFF is serving:\n"
            f"  API            {base}/api/v1/\n"
            f"  API docs       {base}/api/docs/\n"
            f"  OpenAPI schema {base}/api/schema/\n"
            f"  Admin          {base}/admin/\n"
            f"  Stream         ws://{host}:{port}/ws/v1/stream\n"
            f"  Health         {base}/healthz  {base}/readyz\n"
            "Press Ctrl-C to stop.\n"
        )
        self.stdout.flush()
        scheduler = None
        if settings.CELERY_TASK_ALWAYS_EAGER:
            scheduler = InProcessScheduler()
            scheduler.start()
        # The local dev chain (anvil) and the chain watcher, in process (chains/devchain.py, chains/runner.py).
        from chains.embedded import embedded_chains_start

        chains = embedded_chains_start(self.stdout)
        try:
            uvicorn.run("wallet.asgi:application", host=host, port=port, lifespan="off",
                        log_level="warning", access_log=False, **STREAM_UVICORN_OPTIONS)
        finally:
            chains.stop()
            if scheduler is not None:
                scheduler.stop()
