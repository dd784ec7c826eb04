"""`manage.py watch_chains [--chain ID ...] [--until-idle]`: the chain watcher, one asyncio loop per chain."""

from __future__ import annotations

import logging
from typing import Any

from django.core.management.base import BaseCommand, CommandParser


class Command(BaseCommand):
    help = "Watch the enabled chains (or the ones named): deposits, confirmations, reorgs, relayed transactions."

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument("--chain", type=int, action="append", dest="chains", metavar="ID",
                            help="EVM chain id to watch (repeatable); default: every enabled chain")
        parser.add_argument("--until-idle", action="store_true",
                            help="catch up to the head once, then exit (scripts and tests)")

    def handle(self, *args: Any, chains: list[int] | None, until_idle: bool, **options: Any) -> None:
        # One line per JSON-RPC request would drown the watcher's own log.
        logging.getLogger("httpx").setLevel(logging.WARNING)
        if until_idle:
            from chains.models import Chain
            from chains.watcher import watcher_run_until_idle

            queryset = Chain.objects.filter(enabled=True)
            if chains:
                queryset = queryset.filter(chain_id__in=chains)
            for chain in queryset:
                result = watcher_run_until_idle(chain, max_ticks=10**9)
                self.stdout.write(f"chain {chain.chain_id}: cursor {result.cursor}, head {result.head}")
            return
        from chains.runner import run_forever

        run_forever(chains)
