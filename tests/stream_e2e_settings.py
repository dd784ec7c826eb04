"""Settings of the slow-consumer server of `tests/test_stream_e2e.py`: development, with a small per-socket
buffer cap (the `STREAM_BUFFER_*` settings are not read from the environment by `wallet.settings`)."""

import os

from wallet.settings.development import *  # noqa: F403

STREAM_BUFFER_MAX_MESSAGES = int(os.environ.get("E2E_STREAM_BUFFER_MAX_MESSAGES", "16"))
STREAM_BUFFER_MAX_BYTES = int(os.environ.get("E2E_STREAM_BUFFER_MAX_BYTES", "16384"))
