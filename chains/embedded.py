"""`manage.py serve` (the embedded default of `make run`): the local dev chain and the watcher in process."""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass
from typing import Any

from django.conf import settings

from chains.conf import setting

logger = logging.getLogger("chains.embedded")


@dataclass
class EmbeddedChains:
    devchain: Any = None
    watcher: Any = None

    def stop(self) -> None:
        if self.watcher is not None:
            self.watcher.stop()
        if self.devchain is not None:
            self.devchain.stop()


def embedded_chains_start(out: Any) -> EmbeddedChains:
    """Start anvil (unless CHAINS_DEV_CHAIN=0 or in production) and the watcher (unless
    CHAINS_WATCH_IN_PROCESS=0). Never fatal: the product serves without them, with a warning."""
    running = EmbeddedChains()
    logging.getLogger("httpx").setLevel(logging.WARNING)  # one line per JSON-RPC request would drown the log
    if not getattr(settings, "PRODUCTION", False) and os.environ.get("CHAINS_DEV_CHAIN", "1") != "0":
        from chains.devchain import devchain_register, devchain_start

        running.devchain = devchain_start()
        if running.devchain is not None:
            try:
                devchain_register(running.devchain.url)
                out.write(f"  Dev chain      {running.devchain.url} (chain id 31337, anvil)\n")
            except Exception:
                logger.exception("could not register the local dev chain")
    if setting("CHAINS_WATCH_IN_PROCESS"):
        from chains.runner import WatcherThread

        running.watcher = WatcherThread().start()
        out.write("  Chain watcher  in process\n")
    out.flush()
    return running
