"""The production settings, plus the bench-only URLs (a bare JSON view beside the real API)."""

from wallet.settings.production import *  # noqa: F403

ROOT_URLCONF = "bench.urls"
