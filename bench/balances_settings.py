"""The benchmark's production settings with the balances benchmark's URLs (bench/balances_urls.py)."""

from bench.settings import *  # noqa: F403

ROOT_URLCONF = "bench.balances_urls"
